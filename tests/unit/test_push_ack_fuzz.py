"""Fuzzing GROUPKEY-PUSH-ACK reception (RFC 8263): mutated ACKs into the decoder and into the
key server's RekeyDelivery.  The decoder raises only PushAckError; the delivery never raises,
answers anything but the genuine ACK with AckRefused and changes no member's state for it.
MSEC_FUZZ_ITERATIONS inputs (tools/fuzz target ``push_ack`` runs the same check)."""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

from gkm.gdoi.push_ack import PushAckError, ack_key, build_push_ack, decode_push_ack
from gkm.group import AckRefused, Push, RekeyAcknowledged, RekeyDelivery
from policy.model import KekPolicy
from policy.suites import KEK_CIPHERS, SIGNATURE_SUITES

from .test_wire_fuzz import _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000"))
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "8263"))
SPI, KEY = bytes(range(1, 17)), bytes(range(40, 56))
HOST = "10.0.0.1"


def _delivery() -> RekeyDelivery:
    kek = KekPolicy(KEK_CIPHERS["aes-cbc-128"], SIGNATURE_SUITES["ecdsa-p256"], Path("k.pem"),
                    ipaddress.ip_address("239.192.0.1"), rekey_delivery="unicast")
    d = RekeyDelivery(1, kek)
    d.submit([Push(s, SPI, b"p%d" % s) for s in (5, 6)], [("key-id:gm1", HOST)], {SPI: KEY}, 0.0)
    d.datagrams_to_send()
    return d


def seeds() -> list[bytes]:
    k = ack_key(KEY, SPI)
    return [build_push_ack(spi=SPI, seq=s, address=HOST, key=k) for s in (5, 6)] + \
        [build_push_ack(spi=SPI, seq=5, address="2001:db8::1", key=k)]


def check(data: bytes, d: RekeyDelivery, genuine: set[bytes], failures: list) -> bool:
    try:
        decode_push_ack(data)
        decoded = True
    except PushAckError:
        decoded = False
    except Exception as e:  # noqa: BLE001 - what we hunt
        failures.append((data.hex(), f"decoder: {e!r}"))
        return False
    before = d.members()
    try:
        d.receive_ack(data, (HOST, 848), 1.0)
    except Exception as e:  # noqa: BLE001
        failures.append((data.hex(), f"delivery: {e!r}"))
        return decoded
    evs = []
    while (ev := d.next_event()) is not None:
        evs.append(ev)
    if data in genuine:
        return decoded
    if d.members() != before:
        failures.append((data.hex(), "a forged or malformed ACK changed a member's state"))
    if any(not isinstance(e, AckRefused) for e in evs) or any(
            isinstance(e, RekeyAcknowledged) for e in evs):
        failures.append((data.hex(), f"events {evs!r}"))
    return decoded


def test_fuzz_push_ack():
    rng = random.Random(SEED)
    s = seeds()
    lengths = [_length_fields(x) for x in s]
    genuine = set(s)
    d = _delivery()
    failures: list = []
    decoded = 0
    for i in range(ITERATIONS):
        if i % 5000 == 0:
            d = _delivery()  # fresh pending state now and then
        data = mutate(rng, s, lengths)
        decoded += check(data, d, genuine, failures)
        assert not failures, failures[0]
    assert decoded > ITERATIONS // 100  # the mutations reach past the decoder
