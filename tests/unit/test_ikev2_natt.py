"""NAT traversal (RFC 7296 §2.23): the NAT_DETECTION hashes (computed here independently with
hashlib), the UDP 4500 non-ESP marker both ways, the IKE_SA_INIT engines with addresses that do
and do not match."""

from __future__ import annotations

import hashlib
import ipaddress
import struct

import pytest

from gkm.ikev2 import NotifyType, decode_message
from gkm.ikev2.errors import WireError
from gkm.ikev2.events import SaInitEstablished
from gkm.ikev2.natt import Kind, NatStatus, frame, nat_hash, unframe
from gkm.ikev2.payloads import Notify
from gkm.ikev2.sa_init import SaInitConfig, SaInitInitiator, SaInitResponder
from tests.unit.test_ikev2_sa_init import GCM

SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8")


def sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


# ------------------------------------------------------------------------------- the hashes

def test_nat_detection_hash_is_sha1_of_spis_address_and_port():
    want = sha1(SPI_I, SPI_R, bytes([192, 0, 2, 7]), struct.pack("!H", 500))
    assert nat_hash(SPI_I, SPI_R, ("192.0.2.7", 500)) == want
    v6 = ipaddress.ip_address("2001:db8::7").packed
    assert nat_hash(SPI_I, bytes(8), ("2001:db8::7", 4500)) == sha1(SPI_I, bytes(8), v6, b"\x11\x94")
    assert nat_hash(SPI_I, bytes(8), ("fe80::1%eth0", 500)) == sha1(SPI_I, bytes(8), ipaddress.ip_address("fe80::1").packed,
                                                                   b"\x01\xf4")
    assert nat_hash(SPI_I, SPI_R, ("192.0.2.7", 501)) != want


def test_notify_of_a_wrong_length_is_refused_by_the_codec():
    from gkm.ikev2.message import Header, encode_message
    from gkm.ikev2.constants import ExchangeType, HeaderFlags
    h = Header(SPI_I, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlags.INITIATOR, 0)
    for ntype in (NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP):
        ok = encode_message(h, [Notify(0, ntype, b"", bytes(20))])
        assert decode_message(ok).get(Notify).data == bytes(20)
        for n in (0, 19, 21, 32):
            bad = encode_message(h, [Notify(0, ntype, b"", bytes(n))])
            with pytest.raises(WireError) as e:
                decode_message(bad)
            assert e.value.payload == "N" and e.value.offset == 28 + 4 + 4
            assert f"{ntype.name} data of {n} bytes" in e.value.reason


# ------------------------------------------------------------------------------- framing

def test_marker_framing_both_ways():
    msg = bytes(range(40))
    assert frame(msg) == b"\x00\x00\x00\x00" + msg
    got = unframe(frame(msg))
    assert got.kind is Kind.IKE and got.message == msg
    assert unframe(b"\xff") .kind is Kind.KEEPALIVE
    assert unframe(b"\x00\x00\x10\x01" + bytes(20)).kind is Kind.ESP  # an SPI: ESP-in-UDP


@pytest.mark.parametrize("data, offset, why", [
    (b"", 0, "0 byte(s)"), (b"\x00", 0, "1 byte(s)"), (b"\xfe", 0, "1 byte(s)"), (b"\xff\xff", 0, "2 byte(s)"),
    (b"\x00\x00\x00", 0, "3 byte(s)"), (bytes(4), 4, "followed by 0 byte(s)"), (bytes(31), 4, "followed by 27"),
    (b"\x01\x02\x03\x04\x05", 4, "ESP SPI followed by 1 byte(s)"),
])
def test_odd_datagrams_are_wire_errors(data, offset, why):
    with pytest.raises(WireError) as e:
        unframe(data)
    assert e.value.payload == "UDP-4500" and e.value.offset == offset and why in e.value.reason


def test_unframe_never_raises_anything_else():
    import random
    rnd = random.Random(4500)
    for n in range(0, 64):
        for _ in range(50):
            data = bytes(rnd.choice((0, 0, 0xff, rnd.randrange(256))) for _ in range(n))
            try:
                unframe(data)
            except WireError:
                pass


# ------------------------------------------------------------------------------- IKE_SA_INIT

R_PUB = ("198.51.100.1", 500)  # the responder as the initiator addresses it
I_LOCAL = ("10.0.0.2", 40000)  # the initiator's own address


def shuttle(ini, resp, *, seen_from, r_local, rounds=6):
    """The initiator's datagrams reach the responder from ``seen_from`` (a NAT's mapping, or
    the initiator's own address) at ``r_local``; the answers come back."""
    for _ in range(rounds):
        moved = False
        for d, a in ini.datagrams_to_send():
            moved = True
            resp.receive_datagram(d, seen_from, 0.0, r_local)
        for d, a in resp.datagrams_to_send():
            assert a == seen_from
            moved = True
            ini.receive_datagram(d, R_PUB, 0.0)
        if not moved:
            break
    out = []
    for e in (ini, resp):
        evs = []
        while (ev := e.next_event()) is not None:
            evs.append(ev)
        out.append(evs)
    return out


def nat_notifies(message: bytes) -> dict:
    msg = decode_message(message)
    return {int(n.type): bytes(n.data) for n in msg.all(Notify)
            if n.type in (NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP)}


def ip_port(addr) -> bytes:
    return ipaddress.ip_address(addr[0]).packed + struct.pack("!H", addr[1])


@pytest.mark.parametrize("seen_from, r_local, want", [
    (I_LOCAL, R_PUB, NatStatus(False, False)),  # no NAT
    (("203.0.113.9", 61000), R_PUB, NatStatus(True, False)),  # the initiator behind a NAT
    (I_LOCAL, ("192.168.1.5", 500), NatStatus(False, True)),  # the responder behind a (port-forwarding) NAT
    (("203.0.113.9", 40000), ("192.168.1.5", 500), NatStatus(True, True)),  # the address alone differs: both
], ids=["none", "initiator", "responder", "both"])
@pytest.mark.parametrize("mlkem", ["no", "optional"])
def test_sa_init_detects_nat(seen_from, r_local, want, mlkem):
    ini = SaInitInitiator(SaInitConfig(GCM, mlkem=mlkem), R_PUB, I_LOCAL)
    resp = SaInitResponder(SaInitConfig(GCM, mlkem=mlkem))
    ini.start(0.0)
    ei, er = shuttle(ini, resp, seen_from=seen_from, r_local=r_local)
    [a], [b] = [e for e in ei if isinstance(e, SaInitEstablished)], [e for e in er if isinstance(e, SaInitEstablished)]
    assert a.nat == want == b.nat and a.nat.detected == (want != NatStatus())
    # the hashes, independently: request with SPIr zero, response with both SPIs
    req, res = nat_notifies(a.message1), nat_notifies(a.message2)
    assert req == {16388: sha1(a.spi_i, bytes(8), ip_port(I_LOCAL)), 16389: sha1(a.spi_i, bytes(8), ip_port(R_PUB))}
    assert res == {16388: sha1(a.spi_i, a.spi_r, ip_port(r_local)), 16389: sha1(a.spi_i, a.spi_r, ip_port(seen_from))}


def test_sa_init_without_local_addresses_does_no_nat_detection():
    ini = SaInitInitiator(SaInitConfig(GCM, mlkem="no"), R_PUB)  # no local: no notifies
    resp = SaInitResponder(SaInitConfig(GCM, mlkem="no"))
    ini.start(0.0)
    [a], [b] = shuttle(ini, resp, seen_from=I_LOCAL, r_local=R_PUB)
    assert a.nat is None and b.nat is None and nat_notifies(a.message1) == nat_notifies(a.message2) == {}
    # a responder that is not told its address answers a NAT-detecting initiator without them
    ini = SaInitInitiator(SaInitConfig(GCM, mlkem="no"), R_PUB, I_LOCAL)
    ini.start(0.0)
    [a], [b] = shuttle(ini, resp, seen_from=I_LOCAL, r_local=None)
    assert a.nat is None and b.nat is None and nat_notifies(a.message2) == {}


def test_sa_init_request_with_a_bad_nat_notify_is_dropped():
    ini = SaInitInitiator(SaInitConfig(GCM, mlkem="no"), R_PUB, I_LOCAL)
    resp = SaInitResponder(SaInitConfig(GCM, mlkem="no"))
    ini.start(0.0)
    [(req, _)] = ini.datagrams_to_send()
    src = sha1(ini.spi_i, bytes(8), ip_port(I_LOCAL))
    i = req.index(src)
    bad = bytearray(req[:i] + src[:19] + req[i + 20:])  # 19 bytes of hash: lengths fixed up
    struct.pack_into("!I", bad, 24, len(bad))
    p = i - 8  # the Notify's generic header
    struct.pack_into("!H", bad, p + 2, struct.unpack_from("!H", bad, p + 2)[0] - 1)
    with pytest.raises(WireError):
        decode_message(bytes(bad))
    resp.receive_datagram(bytes(bad), I_LOCAL, 0.0, R_PUB)
    assert resp.datagrams_to_send() == [] and resp.next_event() is None and resp.half_open == 0
