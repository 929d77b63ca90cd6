"""NAT traversal (RFC 7296 §2.23): the NAT_DETECTION hashes (computed here independently with
hashlib), the UDP 4500 non-ESP marker both ways, the IKE_SA_INIT engines with addresses that do
and do not match, a member's float from 500 to 4500 through a simulated NAT, and msecd's UDP
4500 socket (marker stripped and added, ESP counted, keepalives quiet)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import struct

import pytest

from gkm.daemon.adapter import EngineShell, UdpEndpoint
from gkm.daemon.engines import GdoiFactory
from gkm.gdoi.events import MemberRegistered
from gkm.ikev2 import NotifyType, decode_message
from gkm.ikev2.errors import WireError
from gkm.ikev2.events import GikeRegistered, SaInitEstablished
from gkm.ikev2.member_registration import GikeRegistration
from gkm.ikev2.natt import Kind, NatStatus, frame, nat_hash, unframe
from gkm.ikev2.payloads import Notify
from gkm.ikev2.sa_init import SaInitConfig, SaInitInitiator, SaInitResponder
from gkm.store import KeyStore
from tests.unit.test_daemon_adapter import ScriptedEngine, _udp_client
from tests.unit.test_gdoi_support import GID, NOW, ks_settings, member_group
from tests.unit.test_ikev2_daemon_engines import both_groups
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


# ------------------------------------------------------------------------------- the float

KS_IP = "192.0.2.1"


class Nat:
    """A NAT in front of the member: each destination (port) gets its own mapping, as a
    symmetric NAT does, so the float shows up at the key server as another source port."""

    def __init__(self, public="203.0.113.9"):
        self.public, self.maps = public, {}

    def out(self, dest):
        return self.maps.setdefault(dest, (self.public, 61000 + len(self.maps)))


def run_through(ks, gi, nat: Nat | None, *, rounds=14):
    """Shuttle datagrams between a member registration and a key server engine, as msecd's
    sockets would: UDP 4500 datagrams are unframed before the engine and framed after it.
    Returns (member events, key server events, what went to which key server port)."""
    seen = []
    back = {}
    for _ in range(rounds):
        moved = False
        for d, a in gi.datagrams_to_send():
            moved = True
            seen.append((a[1], d))
            src = nat.out(a) if nat is not None else ("10.0.0.2", 40000)
            back[src] = a
            if a[1] == 4500:
                got = unframe(d)
                assert got.kind is Kind.IKE
                d = got.message
            ks.receive_datagram(d, src, NOW, (KS_IP, a[1]))
        ks.commit(NOW)
        for d, peer in ks.datagrams_to_send():
            moved = True
            ks_addr = back[peer]
            gi.receive_datagram(frame(d) if ks_addr[1] == 4500 else d, ks_addr, NOW)
        if not moved:
            break
    evs = []
    while (e := gi.next_event()) is not None:
        evs.append(e)
    kevs = []
    while (e := ks.next_event()) is not None:
        kevs.append(e)
    return evs, kevs, seen


def gike(tmp_path, port):
    return GikeRegistration(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), (KS_IP, port),
                            local=("10.0.0.2", 40000))


def key_server(tmp_path):
    f = GdoiFactory(kernel=False)
    return f.keyserver(ks_settings(tmp_path, both_groups(tmp_path)), KeyStore(tmp_path / "state"), NOW)


def test_member_behind_a_nat_floats_to_4500_for_gsa_auth(tmp_path):
    ks, gi = key_server(tmp_path), gike(tmp_path, 500)
    gi.start(NOW)
    em, ek, seen = run_through(ks, gi, Nat())
    assert [type(e) for e in em] == [GikeRegistered] and em[0].group_id == GID
    assert gi.floated and gi.nat == NatStatus(initiator_behind_nat=True) and gi.ks_addr == (KS_IP, 4500)
    ports = [p for p, _d in seen]
    assert ports[:2] == [500, 500]  # IKE_SA_INIT, IKE_INTERMEDIATE (ML-KEM-768)
    assert set(ports[2:]) == {4500}  # GSA_AUTH and after: port 4500, with the marker
    assert all(d[:4] == bytes(4) for p, d in seen if p == 4500)
    assert all(d[:4] != bytes(4) for p, d in seen if p == 500)  # SPIi first: no marker on 500
    [reg] = [e for e in ek if isinstance(e, MemberRegistered)]
    assert reg.addr == ("203.0.113.9", 61001)  # the 4500 mapping: the SA moved there
    assert ks.half_open == 0  # the half-open SA was found under IKE_SA_INIT's address


def test_member_without_a_nat_stays_on_500(tmp_path):
    ks, gi = key_server(tmp_path), gike(tmp_path, 500)
    gi.start(NOW)
    em, ek, seen = run_through(ks, gi, None)
    assert [type(e) for e in em] == [GikeRegistered]
    assert not gi.floated and gi.nat == NatStatus() and {p for p, _d in seen} == {500}


def test_member_configured_on_4500_uses_the_marker_from_the_start(tmp_path):
    ks, gi = key_server(tmp_path), gike(tmp_path, 4500)
    gi.start(NOW)
    em, ek, seen = run_through(ks, gi, Nat())
    assert [type(e) for e in em] == [GikeRegistered]
    assert {p for p, _d in seen} == {4500} and all(d[:4] == bytes(4) for _p, d in seen)
    assert gi.nat.initiator_behind_nat and not gi.floated


def test_no_float_from_848(tmp_path):
    """G-IKEv2 on the GDOI port: no marker there, so no float even behind a NAT."""
    ks, gi = key_server(tmp_path), gike(tmp_path, 848)
    gi.start(NOW)
    em, ek, seen = run_through(ks, gi, Nat())
    assert [type(e) for e in em] == [GikeRegistered]
    assert gi.nat.initiator_behind_nat and not gi.floated and {p for p, _d in seen} == {848}


def test_member_drops_what_is_not_ike_on_4500(tmp_path):
    gi = gike(tmp_path, 4500)
    gi.start(NOW)
    gi.datagrams_to_send()
    for junk in (b"\xff", b"\x01\x02\x03\x04" + bytes(20), b"", bytes(3), bytes(10)):
        gi.receive_datagram(junk, (KS_IP, 4500), NOW)
    assert gi.state == "sa_init" and gi.next_event() is None and gi.dropped == 4  # the keepalive quietly


def test_gcks_takes_gsa_auth_from_another_address_only_when_it_verifies(tmp_path):
    ks, gi = key_server(tmp_path), gike(tmp_path, 500)
    gi.start(NOW)
    nat = Nat()
    # IKE_SA_INIT + IKE_INTERMEDIATE through the NAT, then hold GSA_AUTH back
    for _ in range(2):
        for d, a in gi.datagrams_to_send():
            ks.receive_datagram(d, nat.out(a), NOW, (KS_IP, 500))
        for d, _peer in ks.datagrams_to_send():
            gi.receive_datagram(d, (KS_IP, 500), NOW)
    [(auth, a)] = gi.datagrams_to_send()
    assert a == (KS_IP, 4500)
    msg = unframe(auth).message
    tampered = msg[:-1] + bytes([msg[-1] ^ 1])
    ks.receive_datagram(tampered, ("198.51.100.66", 4444), NOW, (KS_IP, 4500))  # not verified: dropped
    assert ks.datagrams_to_send() == []
    ks.receive_datagram(msg, ("203.0.113.9", 62000), NOW, (KS_IP, 4500))
    ks.commit(NOW)
    [(answer, peer)] = ks.datagrams_to_send()
    assert peer == ("203.0.113.9", 62000)
    gi.receive_datagram(frame(answer), (KS_IP, 4500), NOW)
    assert isinstance(gi.next_event(), GikeRegistered)


# ------------------------------------------------------------------------------- msecd's socket

class LocalEngine(ScriptedEngine):
    def receive_datagram(self, data, addr, now, local=None):
        self.locals = getattr(self, "locals", []) + [local]
        super().receive_datagram(data, addr, now)


def test_udp_4500_endpoint_strips_and_adds_the_marker():
    async def run():
        loop = asyncio.get_running_loop()
        eng = LocalEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None)
        tr, ep = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(shell, natt=True, local=("127.0.0.1", 4500)), local_addr=("127.0.0.1", 0))
        ctr, replies = await _udp_client(loop, tr.get_extra_info("sockname")[1])
        ike = bytes(4) + b"I" * 28
        for d in (b"\xff", b"\x01\x02\x03\x04" + bytes(30), bytes(2), ike):
            ctr.sendto(d)
        assert await asyncio.wait_for(replies.get(), 30) == bytes(4) + b"echo:" + b"I" * 28
        assert [d for d, _a in eng.received] == [b"I" * 28] and eng.locals == [("127.0.0.1", 4500)]
        assert ep.dropped == {"esp": 1, "malformed": 1}  # the keepalive is not counted
        ctr.close()
        shell.close()
    asyncio.run(run())


def test_key_server_sockets_for_g_ikev2_on_500(tmp_path):
    from gkm.daemon.keyserver import _listen_keys
    groups = both_groups(tmp_path)
    s = dataclasses.replace(ks_settings(tmp_path, groups), g_ikev2_port=500)
    keys = _listen_keys(s)
    assert list(keys) == [(KS_IP, 848), (KS_IP, 500), (KS_IP, 4500)]
    assert [(k.natt, k.local) for k in keys.values()] == [(False, True), (False, True), (True, True)]
    # the default (848 shared with GDOI): no 4500; a GDOI-only key server is told no address
    assert list(_listen_keys(ks_settings(tmp_path, groups))) == [(KS_IP, 848)]
    gdoi = dataclasses.replace(ks_settings(tmp_path, both_groups(tmp_path, protocols=("gdoi",))), g_ikev2_port=500)
    assert [(k, v.natt, v.local) for k, v in _listen_keys(gdoi).items()] == [((KS_IP, 848), False, False)]
    shared = dataclasses.replace(ks_settings(tmp_path, groups), port=500)  # G-IKEv2 on GDOI's 500
    assert list(_listen_keys(shared)) == [(KS_IP, 500), (KS_IP, 4500)]


def test_wildcard_socket_learns_its_local_address_from_the_route():
    """A key server socket bound to 0.0.0.0 tells the engine the route's source address toward
    the peer, for IKE_SA_INIT requests only (NAT detection needs nothing else)."""
    from gkm.ikev2.constants import ExchangeType, HeaderFlags
    from gkm.ikev2.message import Header, encode_message

    init = encode_message(Header(SPI_I, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlags.INITIATOR, 0), [])
    auth = encode_message(Header(SPI_I, SPI_R, ExchangeType.GSA_AUTH, HeaderFlags.INITIATOR, 1), [])

    async def run():
        loop = asyncio.get_running_loop()
        eng = LocalEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None)
        tr, ep = await loop.create_datagram_endpoint(lambda: UdpEndpoint(shell), local_addr=("0.0.0.0", 0))
        port = tr.get_extra_info("sockname")[1]
        ep.local = ("0.0.0.0", port)
        ctr, replies = await _udp_client(loop, port)
        for d in (init, auth):
            ctr.sendto(d)
            await asyncio.wait_for(replies.get(), 30)
        assert eng.locals == [("127.0.0.1", port), None]
        ctr.close()
        shell.close()
    asyncio.run(run())
