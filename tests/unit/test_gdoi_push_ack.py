"""GROUPKEY-PUSH-ACK (RFC 8263): the codec against the RFC's formulas, strict decoding, and
both roles end to end: a unicast group's KEK asks for ACKs in the PULL, the member's
PushReceiver answers a real PUSH, the key server's RekeyDelivery verifies the answer."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress

import pytest
from cryptography.hazmat.primitives import serialization

from gkm import wire
from gkm.gdoi.provider import KekKeys, load_signing_public_key
from gkm.gdoi.push import PushReceiver, build_push
from gkm.gdoi.push_ack import (ACK_KEK_SHA256, ACK_KEK_SHA512, PushAckError, ack_key,
                               build_push_ack, decode_push_ack, verify_push_ack)
from gkm.group import Push, RekeyAcknowledged, RekeyDelivery
from gkm.wire import ExchangeType, Hash, Header, IdType, Identification, Sequence
from gkm.wire.constants import KekAttr
from tests.unit.test_gdoi_push import WALL, _registered
from tests.unit.test_gdoi_support import GID, NOW, events, group_policy, key_server, member, \
    member_addr, register

SPI = bytes(range(16))
BASE = bytes(range(32, 48))


def test_ack_key_and_hash_are_the_rfc_formulas():
    # ack_key = prf(base_key, "GROUPKEY-PUSH ACK" NUL | SPI | L), L = 512 for HMAC-SHA-256
    want = hmac.new(BASE, b"GROUPKEY-PUSH ACK\x00" + SPI + b"\x02\x00", hashlib.sha256).digest()
    assert ack_key(BASE, SPI) == want
    want512 = hmac.new(BASE, b"GROUPKEY-PUSH ACK\x00" + SPI + b"\x04\x00",
                       hashlib.sha512).digest()
    assert ack_key(BASE, SPI, ACK_KEK_SHA512) == want512
    data = build_push_ack(spi=SPI, seq=7, address="192.0.2.77", key=want)
    # HDR: cookies = SPI, NP = HASH (8), version 1.0, exchange 35, flags 0, Message ID 0
    assert data[:16] == SPI and data[16] == 8 and data[17] == 0x10 and data[18] == 35
    assert data[19] == 0 and data[20:24] == bytes(4)
    assert int.from_bytes(data[24:28], "big") == len(data)
    # HASH = prf(ack_key, SEQ | ID), over both payloads with their generic headers
    seq_id = (bytes([5, 0, 0, 8]) + (7).to_bytes(4, "big")
              + bytes([0, 0, 0, 12, 1, 0, 0, 0]) + ipaddress.ip_address("192.0.2.77").packed)
    assert data[28:32] == bytes([18, 0, 0, 36])
    assert data[32:64] == hmac.new(want, seq_id, hashlib.sha256).digest()
    assert data[64:] == seq_id
    ack = decode_push_ack(data)
    assert (ack.spi, ack.seq, str(ack.address)) == (SPI, 7, "192.0.2.77")
    assert verify_push_ack(ack, want) and not verify_push_ack(ack, bytes(32))


def test_the_wire_example_has_the_layout_the_codec_builds():
    header, payloads = wire.examples.push_ack()
    assert [type(p) for p in payloads] == [Hash, Sequence, Identification]
    ack = decode_push_ack(wire.encode_message(header, payloads))
    assert ack.seq == 7 and str(ack.address) == "192.0.2.77"


def _msg(payloads, **hdr) -> bytes:
    h = Header(SPI[:8], SPI[8:], hdr.pop("exchange", ExchangeType.GROUPKEY_PUSH_ACK), **hdr)
    return wire.encode_message(h, payloads)


GOOD = (Hash(bytes(32)), Sequence(3), Identification.of(IdType.IPV4_ADDR, "10.0.0.1"))


@pytest.mark.parametrize("data, reason", [
    (_msg(GOOD, exchange=ExchangeType.GROUPKEY_PUSH), "is not GROUPKEY-PUSH-ACK"),
    (_msg(GOOD, message_id=1), "Message ID must be 0"),
    (_msg(GOOD[1:]), "are not [Hash, Sequence, Identification]"),
    (_msg(GOOD + (Hash(bytes(32)),)), "are not [Hash, Sequence, Identification]"),
    (_msg((Hash(bytes(20)),) + GOOD[1:]), "HASH of 20 bytes"),
    (_msg(GOOD[:2] + (Identification.of(IdType.FQDN, "gm.example"),)), "is not an IP address"),
    (_msg(GOOD[:2] + (Identification.of(IdType.IPV4_ADDR, "10.0.0.1", 17, 848),)),
     "Protocol ID and Port must be 0"),
    (_msg((GOOD[0], Sequence(0), GOOD[2])), "SEQ 0"),
    (_msg(GOOD)[:-1], "malformed"),
    (_msg(GOOD) + b"\x00", "malformed"),
    (b"", "malformed"),
])
def test_decoding_is_strict(data, reason):
    with pytest.raises(PushAckError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode_push_ack(data)


class Unicast:
    """A real GROUPKEY-PULL of a group in unicast delivery mode, then real PUSHes."""

    def __init__(self, tmp_path, mode="unicast"):
        g = group_policy(tmp_path)
        self.group = dataclasses.replace(g, kek=dataclasses.replace(g.kek, rekey_delivery=mode))
        self.ks, self.store = key_server(tmp_path, [self.group])
        m = member(tmp_path, "gm1")
        register(self.ks, {member_addr(0): m})
        self.reg = _registered(m)
        self.signing_key = serialization.load_pem_private_key(
            self.group.kek.signing_key.read_bytes(), None)
        self.pub = load_signing_public_key(self.group.kek.signing_key)

    def push(self, **kw) -> tuple[Push, bytes]:
        k = self.store.current_kek(GID)
        seq = self.store.next_seq(GID)
        data = build_push(self.group, kek=KekKeys(k.spi, k.algorithm, k.key, k.expires, self.pub),
                          signing_key=self.signing_key, seq=seq, now=WALL, deletes=[0x1234], **kw)
        return Push(seq, k.spi, data), k.key[16:]  # aes-cbc-128: IV (16) || key


def test_unicast_group_asks_for_acks_and_the_member_answers_what_the_key_server_verifies(
        tmp_path):
    u = Unicast(tmp_path)
    assert u.reg.kek.ack_requested == ACK_KEK_SHA256
    r = PushReceiver(GID, u.reg.kek, u.reg.lkh, u.reg.seq, teks=u.reg.teks)
    r.acknowledge_as("10.9.9.9")
    push, base = u.push()
    ks_addr = ("192.0.2.1", 40123)
    r.receive_datagram(push.data, ks_addr, NOW)
    events(r)
    (ack, to), = r.datagrams_to_send()
    assert to == ks_addr
    a = decode_push_ack(ack)
    assert (a.spi, a.seq, str(a.address)) == (push.kek_spi, push.seq, "10.9.9.9")
    # the key server's side: the delivery that sent the PUSH takes the ACK
    d = RekeyDelivery(GID, u.group.kek)
    d.submit([push], [("key-id:gm1", "10.9.9.9")], {push.kek_spi: base}, NOW)
    d.receive_ack(ack, ("10.9.9.9", 848), NOW)
    assert d.next_event() == RekeyAcknowledged(GID, "key-id:gm1", push.seq)
    assert d.members()["key-id:gm1"]["last_acked_seq"] == push.seq
    # a copy of the PUSH (its ACK was lost, the key server sent it again): the same ACK again
    r.receive_datagram(push.data, ks_addr, NOW)
    assert r.datagrams_to_send() == [(ack, ks_addr)]
    assert r.stats["duplicates"] == 1 and r.stats["acks"] == 2


def test_no_ack_without_a_request_or_without_our_address(tmp_path):
    u = Unicast(tmp_path, mode="multicast")
    assert u.reg.kek.ack_requested == 0
    r = PushReceiver(GID, u.reg.kek, u.reg.lkh, u.reg.seq, teks=u.reg.teks)
    r.acknowledge_as("10.9.9.9")
    push, _ = u.push()
    r.receive_datagram(push.data, ("192.0.2.1", 848), NOW)
    assert r.datagrams_to_send() == []
    (tmp_path / "u").mkdir()
    u = Unicast(tmp_path / "u")
    r = PushReceiver(GID, u.reg.kek, u.reg.lkh, u.reg.seq, teks=u.reg.teks)
    push, _ = u.push()
    r.receive_datagram(push.data, ("192.0.2.1", 848), NOW)
    assert r.datagrams_to_send() == [] and r.stats["accepted"] == 1


def test_a_refused_push_is_not_acknowledged(tmp_path):
    u = Unicast(tmp_path)
    r = PushReceiver(GID, u.reg.kek, u.reg.lkh, u.reg.seq, teks=u.reg.teks)
    r.acknowledge_as("10.9.9.9")
    push, _ = u.push()
    bad = bytearray(push.data)
    bad[-1] ^= 1
    r.receive_datagram(bytes(bad), ("192.0.2.1", 848), NOW)
    assert r.datagrams_to_send() == [] and r.stats["rejected"] == 1


def test_the_sa_kek_attribute(tmp_path):
    u = Unicast(tmp_path)
    from gkm.gdoi import policy_wire as pw
    sak = pw.sa_kek(u.group.kek, SPI, None, 100, 256)
    assert (KekAttr.KEK_ACK_REQUESTED, ACK_KEK_SHA256) in [tuple(a) for a in sak.attributes]
    assert pw.read_sa_kek(sak).ack_requested == ACK_KEK_SHA256
    m = dataclasses.replace(u.group.kek, rekey_delivery="multicast")
    assert KekAttr.KEK_ACK_REQUESTED not in [a[0] for a in pw.sa_kek(m, SPI, None, 100, 256).attributes]
