"""Established SAs (Informational both ways, phase 2 hand-off, lifetime) and flood resistance."""

from __future__ import annotations

import os
import struct

from gkm.ike import (
    AuthMethod, DeleteRequest, InformationalReceived, MainMode, Notification, Phase1Deleted, Phase1Established,
    Phase1Server, Phase2Datagram, Role, State, build_informational, parse_informational,
)
from gkm.ike import _msg as m
from tests.unit.ike_data.helpers import GM_ADDR, KS_ADDR, T0, config, events, pair, pump

NOW = T0 + 0.01


def _up(method=AuthMethod.PRE_SHARED_KEY, **kw):
    ini, srv = pair(config(method, role="gm"), config(method, role="ks", **kw))
    pump(ini, srv, NOW)
    (ie,), (se,) = events(ini), events(srv)
    assert isinstance(ie, Phase1Established) and isinstance(se, Phase1Established)
    return ini, srv, ie.sa, se.sa


def test_informational_both_directions_and_replay():
    ini, srv, isa, ssa = _up()
    srv.send_informational(ssa.spi, NOW, notifications=(Notification(16384, 1, ssa.spi, b"hello"),))
    (d, addr), = srv.datagrams_to_send()
    assert addr == GM_ADDR and d[18] == m.EXCH_INFO and d[19] & m.FLAG_E
    ini.receive_datagram(d, KS_ADDR, NOW)
    (ev,) = events(ini)
    assert isinstance(ev, InformationalReceived) and ev.notifications[0].data == b"hello"
    ini.receive_datagram(d, KS_ADDR, NOW)  # replay: dropped
    assert events(ini) == []
    ini.send_informational(NOW, notifications=(Notification(24578, 1, isa.spi),))
    (d, _), = ini.datagrams_to_send()
    srv.receive_datagram(d, GM_ADDR, NOW)
    (ev,) = events(srv)
    assert isinstance(ev, InformationalReceived) and ev.notifications[0].type == 24578
    # a flipped bit fails HASH(1) (or decryption) and is dropped
    bad = bytearray(build_informational(isa, (Notification(16384, 1, b""),)))
    bad[-20] ^= 1
    srv.receive_datagram(bytes(bad), GM_ADDR, NOW)
    assert events(srv) == []


def test_hash1_layout():
    """HASH(1) = prf(SKEYID_a, M-ID | N payload incl. generic header), RFC 2409 section 5.7."""
    _ini, _srv, isa, _ = _up()
    fixed = iter([b"\x00\x00\x01\x02"])
    d = build_informational(isa, (Notification(24578, 1, isa.spi),), random=lambda n: next(fixed))
    assert struct.unpack("!I", d[20:24])[0] == 0x102
    pt = isa.decrypt(isa.phase2_iv(0x102), d[28:])
    hlen = struct.unpack("!H", pt[2:4])[0]
    nlen = struct.unpack("!H", pt[hlen + 2 : hlen + 4])[0]
    assert pt[4:hlen] == isa.hash_a(b"\x00\x00\x01\x02" + pt[hlen : hlen + nlen])
    assert parse_informational(isa, d)[0] == 0x102


def test_delete_from_initiator_and_from_server():
    ini, srv, isa, ssa = _up()
    ini.delete(NOW)
    assert isinstance(events(ini)[0], Phase1Deleted) and ini.state is State.DELETED
    for d, _ in ini.datagrams_to_send():
        srv.receive_datagram(d, GM_ADDR, NOW)
    evs = events(srv)
    assert isinstance(evs[0], InformationalReceived) and isinstance(evs[1], Phase1Deleted)
    assert "peer deleted" in evs[1].reason and srv.sa(ssa.spi) is None
    ini, srv, isa, ssa = _up()
    srv.delete_sa(ssa.spi, NOW)
    assert isinstance(events(srv)[0], Phase1Deleted)
    for d, _ in srv.datagrams_to_send():
        ini.receive_datagram(d, KS_ADDR, NOW)
    assert isinstance(events(ini)[-1], Phase1Deleted) and ini.state is State.DELETED


def test_groupkey_pull_handed_to_phase2():
    ini, srv, isa, ssa = _up(AuthMethod.ECDSA_256)
    pull = m.build(isa.icookie, isa.rcookie, m.EXCH_PULL, m.FLAG_E, 0x11223344, [(m.HASH, b"\0" * 32)])
    srv.receive_datagram(pull, GM_ADDR, NOW)
    (ev,) = events(srv)
    assert isinstance(ev, Phase2Datagram) and ev.exchange == 32 and ev.message_id == 0x11223344 and ev.sa.spi == isa.spi
    assert ev.data == pull
    # what GROUPKEY-PULL needs is on the SA
    assert ssa.skeyid_a == isa.skeyid_a and ssa.enc_key == isa.enc_key and len(ssa.phase2_iv(1)) == 16
    assert ssa.peer_certificate is not None and isa.peer_certificate is not None


def test_lifetime_expiry():
    ini, srv, isa, ssa = _up()
    assert srv.get_timer() == isa.expires_at == NOW + 86400
    srv.handle_timer(NOW + 86400)
    ini.handle_timer(NOW + 86400)
    assert "lifetime" in events(srv)[0].reason and "lifetime" in events(ini)[0].reason
    assert srv.sa(ssa.spi) is None and srv.get_timer() is None


def test_spoofed_flood_bounded_and_legitimate_exchange_completes():
    srv = Phase1Server(config(AuthMethod.PRE_SHARED_KEY, role="ks", max_half_open=500, max_half_open_per_peer=8))
    gm = MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR)
    gm.start(T0)
    (mm1, _), = gm.datagrams_to_send()
    template = mm1
    srv.receive_datagram(mm1, GM_ADDR, T0)
    (mm2, _), = srv.datagrams_to_send()
    # 2000 spoofed message 1s from 2000 addresses, plus 50 from one address
    for i in range(2000):
        spoof = os.urandom(8) + template[8:]
        srv.receive_datagram(spoof, (f"10.{i >> 8}.{i & 255}.1", 848), T0 + 0.001)
    for i in range(50):
        srv.receive_datagram(os.urandom(8) + template[8:], ("10.99.99.99", 848), T0 + 0.001)
    srv.datagrams_to_send()
    assert srv.half_open_count <= 500
    assert srv.stats["dropped_peer_limit"] == 50 - 8
    assert srv.stats["evicted_half_open"] >= 1500
    assert events(srv) == []
    # the legitimate half-open exchange was evicted (FIFO): its message 3 is dropped, the
    # initiator's retransmitted message 1 gets the same cookie, and it completes
    gm.receive_datagram(mm2, KS_ADDR, T0)
    pump(gm, srv, T0 + 0.002)
    assert gm.state is State.MM3_SENT
    gm2 = MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR)
    gm2.start(T0 + 0.003)
    pump(gm2, srv, T0 + 0.003)
    assert gm2.state is State.ESTABLISHED
    # everything half-open expires
    srv.handle_timer(T0 + 11)
    assert srv.half_open_count == 0


def test_pending_limit_protects_dh():
    srv = Phase1Server(config(AuthMethod.PRE_SHARED_KEY, role="ks", max_pending=1))
    gms = [MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR) for _ in range(2)]
    for g in gms:
        g.start(T0)
        (d, _), = g.datagrams_to_send()
        srv.receive_datagram(d, GM_ADDR, T0)
        (d, _), = srv.datagrams_to_send()
        g.receive_datagram(d, KS_ADDR, T0)
    for g in gms:
        (d, _), = g.datagrams_to_send()
        srv.receive_datagram(d, GM_ADDR, T0)
    assert srv.pending_count == 1 and srv.stats["dropped_pending_full"] == 1


def test_initial_contact_replaces_older_sa_of_the_same_peer():
    ini1, srv, isa1, ssa1 = _up()
    assert ssa1.initial_contact
    ini2 = MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR)
    ini2.start(NOW)
    pump(ini2, srv, NOW)
    evs = events(srv)
    assert isinstance(evs[0], Phase1Established) and isinstance(evs[1], Phase1Deleted)
    assert evs[1].icookie == ssa1.icookie and "INITIAL-CONTACT" in evs[1].reason
    assert srv.sa(ssa1.spi) is None and len(srv.established()) == 1
    # without INITIAL-CONTACT both stay
    quiet = config(AuthMethod.PRE_SHARED_KEY, role="gm", initial_contact=False)
    ini3 = MainMode(quiet, Role.INITIATOR, KS_ADDR)
    ini3.start(NOW)
    pump(ini3, srv, NOW)
    (ev,) = events(srv)
    assert not ev.sa.initial_contact and len(srv.established()) == 2


def test_initial_contact_index_forgets_deleted_sas():
    """The (identity, host) index behind INITIAL-CONTACT drops SAs that are gone, and another
    host with the same identity (certificates: the ID is not bound to the address) is not
    touched."""
    method = AuthMethod.ECDSA_256
    _ini1, srv, _isa1, ssa1 = _up(method)
    srv.delete_sa(ssa1.spi, NOW)
    srv.datagrams_to_send()
    assert [type(e) for e in events(srv)] == [Phase1Deleted]
    assert srv._by_peer == {}
    ini2 = MainMode(config(method, role="gm"), Role.INITIATOR, KS_ADDR)
    ini2.start(NOW)
    pump(ini2, srv, NOW)
    (ev,) = events(srv)  # nothing else to replace
    assert isinstance(ev, Phase1Established) and len(srv._by_peer) == 1
    other = ("192.0.2.11", 848)
    ini3 = MainMode(config(method, role="gm"), Role.INITIATOR, KS_ADDR)
    ini3.start(NOW)
    for _ in range(3):
        for d, _a in ini3.datagrams_to_send():
            srv.receive_datagram(d, other, NOW)
        for d, _a in srv.datagrams_to_send():
            ini3.receive_datagram(d, KS_ADDR, NOW)
    (ev,) = events(srv)
    assert isinstance(ev, Phase1Established) and ev.sa.initial_contact
    assert len(srv.established()) == 2 and len(srv._by_peer) == 2


def test_informational_replay_refused_after_the_seen_cache_overflowed():
    """More Informationals than the M-ID cache holds: the oldest are forgotten one by one, so
    every recent one still cannot be replayed (the cache was once emptied wholesale)."""
    from gkm.ike.mainmode import MAX_SEEN_INFORMATIONALS

    ini, srv, isa, ssa = _up()
    mids = iter(range(1, 1 << 20))
    sent = [build_informational(ssa, (Notification(16384, 1, ssa.spi, b"n"),), random=lambda n: struct.pack("!I", next(mids)))
            for _ in range(MAX_SEEN_INFORMATIONALS + 10)]
    for d in sent:
        ini.receive_datagram(d, KS_ADDR, NOW)
    assert len(events(ini)) == len(sent)
    for d in sent[-MAX_SEEN_INFORMATIONALS:][:: 97] + sent[-3:]:
        ini.receive_datagram(d, KS_ADDR, NOW)  # each was seen and is still remembered
    assert events(ini) == [] and ini.state is State.ESTABLISHED
    assert len(ini._seen_mids) == MAX_SEEN_INFORMATIONALS
