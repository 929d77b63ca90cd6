"""Fuzzing the GSA_REKEY receiver: mutated datagrams (which the ICV stops) and mutated inner
payload chains validly encrypted under the Rekey SA (which reach the GSA/KD/Delete checks).
The receiver never raises, emits only its four event types, and a refused input leaves its
state unchanged.  MSEC_FUZZ_ITERATIONS/10 inputs per mode (each one decrypts)."""

from __future__ import annotations

import os
import random
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gkm.ikev2.constants import HEADER_LENGTH, ExchangeType, PayloadType
from gkm.ikev2.constants import GcAuth, ProtocolId
from gkm.ikev2.message import Header
from gkm.ikev2.payloads import Delete
from gkm.ikev2.sk import unprotect_chain
from gkm.ikev2.rekey import RekeyApplied, RekeyExcluded, RekeyMissed, RekeyReceiver, RekeyRejected, RekeySender

from .test_ikev2_rekey import CONFIG, rekey_sa, tek
from .test_wire_fuzz import _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000")) // 10
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "9838"))
EVENTS = (RekeyApplied, RekeyRejected, RekeyExcluded, RekeyMissed)


def corpus():
    """(Rekey SA, datagrams, their inner chains): TEKs, a new Rekey SA, deletes, GW policy."""
    sa = rekey_sa()
    tx = RekeySender(sa, gcauth=GcAuth.IMPLICIT)
    builds = [
        dict(teks=((tek(), (0x1001,)), (tek(0x2000, "aes-cbc-256-hmac-sha512"), ())), atd_s=2, dtd_s=9),
        dict(deletes=(Delete(ProtocolId.ESP, 4, (b"\x00\x00\x10\x00",)),)),
        dict(new_rekey_sa=rekey_sa(next_spis=(os.urandom(16),))),
    ]
    datagrams, chains = [], []
    for b in builds:
        tx.rekey_sa, tx.message_id = sa, 0
        d = tx.build(**b)
        datagrams.append(d)
        rx = RekeyReceiver(CONFIG, sa, gcauth=GcAuth.IMPLICIT)
        _msg, chain = unprotect_chain(d, sa.cipher)
        chains.append(bytes([d[HEADER_LENGTH]]) + chain)  # first inner type | chain
        assert isinstance(rx.receive(d)[0], RekeyApplied)
    return sa, datagrams, chains


def seal(sa, first_and_chain: bytes, message_id: int = 3) -> bytes:
    """A GSA_REKEY whose SK (AES-GCM) holds ``chain`` as is, however malformed."""
    first, chain = first_and_chain[0], first_and_chain[1:]
    iv = os.urandom(8)
    plain = chain + b"\x00"
    sk_len = 4 + 8 + len(plain) + 16
    spi_i, spi_r = sa.header_spis
    head = Header(spi_i, spi_r, ExchangeType.GSA_REKEY, 0, message_id).encode(PayloadType.SK, HEADER_LENGTH + sk_len)
    head += struct.pack("!BBH", first, 0, sk_len)
    key, salt = sa.keys.gsk_e[:-4], sa.keys.gsk_e[-4:]
    return head + iv + AESGCM(key).encrypt(salt + iv, plain, head)


def chain_lengths(first_and_chain: bytes) -> list[int]:
    """Offsets of the inner payloads' generic length fields."""
    out, pos, np = [], 1, first_and_chain[0]
    while np and pos + 4 <= len(first_and_chain):
        out.append(pos + 2)
        np, length = first_and_chain[pos], struct.unpack_from("!H", first_and_chain, pos + 2)[0]
        if length < 4:
            break
        pos += length
    return out


def run_one(rx: RekeyReceiver, data: bytes, failures: list) -> bool:
    before = rx.state()
    try:
        evs = rx.receive(data)
    except Exception as e:  # noqa: BLE001 - what we hunt
        failures.append((data.hex(), repr(e)))
        return False
    if len(evs) != 1 or not isinstance(evs[0], EVENTS):
        failures.append((data.hex(), f"events {evs!r}"))
        return False
    if isinstance(evs[0], (RekeyRejected, RekeyMissed)) and rx.state() != before:
        failures.append((data.hex(), "state changed on a refused input"))
    return isinstance(evs[0], (RekeyApplied, RekeyExcluded))


def test_fuzz_datagrams():
    rng = random.Random(SEED)
    sa, datagrams, _ = corpus()
    lengths = [_length_fields(d) for d in datagrams]
    failures: list = []
    for _ in range(ITERATIONS):
        run_one(RekeyReceiver(CONFIG, sa, gcauth=GcAuth.IMPLICIT), mutate(rng, datagrams, lengths), failures)
    assert not failures, failures[:3]


def test_fuzz_encrypted_content():
    rng = random.Random(SEED + 1)
    sa, _, chains = corpus()
    lengths = [chain_lengths(c) for c in chains]
    failures: list = []
    accepted = 0
    for _ in range(ITERATIONS):
        data = mutate(rng, chains, lengths)
        if not data:
            continue
        accepted += run_one(RekeyReceiver(CONFIG, sa, gcauth=GcAuth.IMPLICIT), seal(sa, data), failures)
    assert not failures, failures[:3]
    assert accepted  # some mutations stay valid: the content really reached the checks
