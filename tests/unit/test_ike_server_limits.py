"""Phase1Server resource limits against one abusive source: the per-source share of the exchanges
waiting for message 5 (each cost a DH), fair reclaiming when that table is full, the bounds on
established SAs per identity and per address, and the rate limit on notifications to
unverified (spoofable) sources."""

from __future__ import annotations

import os

from gkm.ike import AuthMethod, MainMode, Phase1Deleted, Phase1Established, Phase1Server, PskStore, Role, State
from gkm.ike import _msg as m
from tests.unit.ike_data.helpers import KS_ADDR, PSK, T0, config, events

PSK_ = AuthMethod.PRE_SHARED_KEY
ATTACKER = "198.51.100.66"


def _hosts(n: int, prefix: str = "192.0.2.") -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def _server(hosts, **kw) -> Phase1Server:
    store = PskStore({h: PSK for h in hosts})
    return Phase1Server(config(PSK_, role="ks", psk_store=store, **kw))


def _gm(**kw) -> MainMode:
    return MainMode(config(PSK_, role="gm", **kw), Role.INITIATOR, KS_ADDR)


def _to_message3(srv: Phase1Server, host: str, now: float, port: int = 500) -> MainMode:
    """One initiator at ``host`` through message 3 (the key server has spent its DH); it never
    sends message 5."""
    gm = _gm()
    gm.start(now)
    addr = (host, port)
    for _ in range(2):  # message 1 -> 2, message 3 -> 4
        for d, _a in gm.datagrams_to_send():
            srv.receive_datagram(d, addr, now)
        for d, a in srv.datagrams_to_send():
            if a == addr:
                gm.receive_datagram(d, KS_ADDR, now)
    gm.datagrams_to_send()  # message 5 is withheld
    return gm


def _register(srv: Phase1Server, host: str, now: float, port: int = 500, **kw) -> MainMode:
    from gkm.ike import Identity

    kw.setdefault("local_id", Identity.ip(host))  # a PSK found by address authenticates that address
    gm = _gm(**kw)
    gm.start(now)
    addr = (host, port)
    for _ in range(4):
        for d, _a in gm.datagrams_to_send():
            srv.receive_datagram(d, addr, now)
        for d, a in srv.datagrams_to_send():
            if a == addr:
                gm.receive_datagram(d, KS_ADDR, now)
    return gm


def test_one_source_gets_only_its_share_of_the_dh_slots():
    """A source flooding message 3s (valid cookies and KE, never a message 5) holds at most
    max_pending_per_peer exchanges; the rest of its message 3s are dropped before any DH, and
    every other source still completes."""
    legit = _hosts(20)
    srv = _server([ATTACKER, *legit], max_pending=40, max_pending_per_peer=8)
    for i in range(60):
        _to_message3(srv, ATTACKER, T0, port=1000 + i)
    assert srv.pending_count == 8
    assert srv.stats["dropped_pending_peer_limit"] == 52
    for h in legit:
        assert _register(srv, h, T0 + 0.1).state is State.ESTABLISHED
    assert srv.pending_count == 8


def test_full_table_reclaims_the_oldest_exchange_of_the_heaviest_source():
    srv = _server(["192.0.2.1", "192.0.2.2", "192.0.2.3"], max_pending=10, max_pending_per_peer=6)
    heavy = [_to_message3(srv, "192.0.2.1", T0 + i * 0.001, port=1000 + i) for i in range(6)]
    light = [_to_message3(srv, "192.0.2.2", T0 + 0.01 + i * 0.001, port=2000 + i) for i in range(4)]
    assert srv.pending_count == 10 and all(g.state is State.MM5_SENT for g in heavy + light)
    # the table is full: a third source takes the oldest exchange of the heaviest one
    gm = _register(srv, "192.0.2.3", T0 + 0.1)
    assert gm.state is State.ESTABLISHED
    assert srv.stats["reclaimed_pending"] == 1
    oldest = (heavy[0].icookie, heavy[0].rcookie)
    assert oldest not in srv._exchanges
    assert all((g.icookie, g.rcookie) in srv._exchanges for g in heavy[1:] + light)
    # equal shares are not churned: the heavy source (5 now) may not take back from itself,
    # and the light one (4) may not take from the heavy one (5) either: 5 <= 4 + 1
    srv.stats.clear()
    _to_message3(srv, "192.0.2.2", T0 + 0.2, port=2100)
    assert srv.stats["reclaimed_pending"] == 0
    # a reclaimed exchange's late message 5 is an unknown cookie pair, nothing breaks
    for d, _a in heavy[0].datagrams_to_send():
        srv.receive_datagram(d, ("192.0.2.1", 1000), T0 + 0.3)
    assert srv.datagrams_to_send() == []


def test_pending_share_frees_when_exchanges_complete_or_expire():
    srv = _server([ATTACKER], max_pending_per_peer=4)
    for i in range(4):
        _to_message3(srv, ATTACKER, T0, port=1000 + i)
    assert srv.pending_count == 4
    srv.handle_timer(T0 + 31)  # exchange_timeout
    assert srv.pending_count == 0 and srv._pending.heaviest() is None
    assert _register(srv, ATTACKER, T0 + 32).state is State.ESTABLISHED


def test_sas_per_identity_bounded_oldest_replaced():
    """One authenticated member opening SA after SA (no INITIAL-CONTACT) keeps at most
    max_sa_per_identity; each new one beyond deletes the oldest, with a Delete to the peer."""
    srv = _server(["192.0.2.1"], max_sa_per_identity=3)
    gms = [_register(srv, "192.0.2.1", T0 + i, port=1000 + i, initial_contact=False) for i in range(5)]
    assert all(g.state is State.ESTABLISHED for g in gms)
    evs = events(srv)
    deleted = [e for e in evs if isinstance(e, Phase1Deleted)]
    assert [e.icookie for e in deleted] == [gms[0].icookie, gms[1].icookie]
    assert all("more than 3 phase 1 SAs for this identity" in e.reason for e in deleted)
    assert len(srv.established()) == 3
    assert {s.icookie for s in srv.established()} == {g.icookie for g in gms[2:]}
    assert srv.stats["replaced_sa"] == 2


def test_sas_per_address_bounded_oldest_replaced():
    from gkm.ike import Identity

    ids = {Identity.key_id(f"gm{i}".encode()): b"key of gm%d" % i for i in range(4)}  # four members, one address
    srv = Phase1Server(config(PSK_, role="ks", psk_store=PskStore({}, ids), max_sa_per_address=2,
                              max_sa_per_identity=100))
    gms = [_register(srv, "192.0.2.1", T0 + i, port=1000 + i, initial_contact=False,
                     local_id=Identity.key_id(f"gm{i}".encode()), psk=b"key of gm%d" % i) for i in range(4)]
    assert all(g.state is State.ESTABLISHED for g in gms)
    assert {s.icookie for s in srv.established()} == {g.icookie for g in gms[2:]}
    deleted = [e for e in events(srv) if isinstance(e, Phase1Deleted)]
    assert len(deleted) == 2 and all("for this address" in e.reason for e in deleted)
    # the indexes forget what is gone
    for s in list(srv.established()):
        srv.delete_sa(s.spi, T0 + 10)
    assert srv._sa_by_id == {} and srv._sa_by_host == {} and srv._by_peer == {}


def _bad_message1() -> bytes:
    """A message 1 whose only proposal the key server refuses (DH group 14 vs 19)."""
    gm = MainMode(config(PSK_, 14, role="gm"), Role.INITIATOR, KS_ADDR)
    gm.start(T0)
    (d, _a), = gm.datagrams_to_send()
    return d


def test_notifications_to_unverified_sources_rate_limited():
    """A spoofed message-1 flood with an unacceptable proposal: the key server answers a few
    (a real misconfigured peer learns NO-PROPOSAL-CHOSEN), not one per datagram."""
    srv = Phase1Server(config(PSK_, role="ks"))
    template = _bad_message1()
    sent = 0
    for i in range(5000):
        srv.receive_datagram(os.urandom(8) + template[8:], (f"10.{i >> 8 & 255}.{i & 255}.1", 500), T0 + i * 0.0002)
        sent += len(srv.datagrams_to_send())
    # one second of flood: the burst plus about NOTIFY_RATE more
    assert sent <= Phase1Server.NOTIFY_BURST + Phase1Server.NOTIFY_RATE * 1.0 + 1
    assert sent >= Phase1Server.NOTIFY_BURST
    assert srv.stats["notify_suppressed"] == 5000 - sent
    assert len([e for e in events(srv)]) == sent
    # per source: one notification per NOTIFY_SOURCE_INTERVAL
    srv = Phase1Server(config(PSK_, role="ks"))
    answers = []
    for i in range(30):
        srv.receive_datagram(os.urandom(8) + template[8:], ("192.0.2.9", 500), T0 + i * 1.0)
        answers += srv.datagrams_to_send()
    assert len(answers) == 3  # t = 0, 10, 20
    (hdr_data, _a) = answers[0]
    assert m.decode_header(hdr_data).exchange == m.EXCH_INFO
    assert len(srv._notified) == 1


def test_limits_validated():
    import pytest

    from gkm.ike.config import ConfigError

    for name in ("max_pending_per_peer", "max_sa_per_identity", "max_sa_per_address"):
        with pytest.raises(ConfigError, match=name):
            config(PSK_, role="ks", **{name: 0})
    assert isinstance(config(PSK_, role="ks").max_pending_per_peer, int)


def test_established_event_still_first():
    srv = _server(["192.0.2.1"])
    _register(srv, "192.0.2.1", T0)
    assert [type(e) for e in events(srv)] == [Phase1Established]


def test_new_sas_per_identity_rate_limited_and_address_held_before_dh():
    """An authenticated member completing phase 1 over and over (here with INITIAL-CONTACT,
    so the per-identity bound never stops it) used to get every SA: each one a DH and a whole
    exchange on the key server.  Beyond its burst the new SA is deleted at once (Delete to the
    peer, Phase1Failed instead of Phase1Established) and its address's message 3s are dropped
    before any DH until the bucket refills; other addresses are not affected."""
    from gkm.ike import Phase1Failed

    srv = _server([ATTACKER, "192.0.2.1"], sa_burst_per_identity=4, sa_rate_per_identity=0.5)
    gms = [_register(srv, ATTACKER, T0, port=1000 + i) for i in range(4)]
    assert all(g.state is State.ESTABLISHED for g in gms)
    events(srv)
    over = _register(srv, ATTACKER, T0, port=2000)
    assert over.state is State.DELETED  # it got message 6, then the Delete
    evs = events(srv)
    assert not any(isinstance(e, Phase1Established) for e in evs)
    (failed,) = [e for e in evs if isinstance(e, Phase1Failed)]
    assert failed.icookie == over.icookie and "new phase 1 SAs for this identity" in failed.reason
    assert srv.stats["refused_sa_rate"] == 1
    assert over.icookie not in {s.icookie for s in srv.established()}
    # held: the next message 3s from that address cost no DH (no message 4)
    for i in range(10):
        gm = _to_message3(srv, ATTACKER, T0 + 0.1, port=3000 + i)
        assert gm.state is State.MM3_SENT
    assert srv.stats["dropped_sa_rate"] == 10 and srv.pending_count == 0
    # another address is not held
    assert _register(srv, "192.0.2.1", T0 + 0.1).state is State.ESTABLISHED
    # 1 / 0.5 s later the bucket has a token again: one more SA, then one DH per 2 s
    assert _register(srv, ATTACKER, T0 + 2.1, port=4000).state is State.ESTABLISHED
    assert _to_message3(srv, ATTACKER, T0 + 2.2, port=4001).state is State.MM3_SENT
    assert srv.stats["dropped_sa_rate"] == 11
    assert _register(srv, ATTACKER, T0 + 4.2, port=4002).state is State.ESTABLISHED
    assert srv.stats["refused_sa_rate"] == 1
    # burst / rate = 8 s after the refusal the address is no longer paced (its bucket decides)
    assert _register(srv, ATTACKER, T0 + 8.1, port=5000).state is State.ESTABLISHED
    assert ATTACKER not in srv._held


def test_sa_rate_bookkeeping_bounded():
    srv = _server([f"10.0.{i >> 8}.{i & 255}" for i in range(40)], sa_burst_per_identity=1, sa_rate_per_identity=0.01)
    srv.SA_RATE_IDENTITIES = 16
    from gkm.ike import Identity

    for i in range(40):
        h = f"10.0.{i >> 8}.{i & 255}"
        for j in range(2):  # the second is over the rate: its host is held
            _register(srv, h, T0 + i, port=1000 + j, local_id=Identity.ip(h))
    assert len(srv._sa_tokens) == 16 and len(srv._held) == 16


def test_checked_message1_cache_keeps_every_check():
    """Message 1s are remembered by the bytes after their cookies: a zero initiator cookie with
    a known body is still refused, a retransmission still gets the stored message 2, and
    message 2 is the same bytes the engine would build."""
    srv = _server(["192.0.2.1"])
    gm = _gm()
    gm.start(T0)
    (mm1, _a), = gm.datagrams_to_send()
    srv.receive_datagram(mm1, ("192.0.2.1", 500), T0)
    (mm2, _a), = srv.datagrams_to_send()
    assert len(srv._mm1_checked) == 1
    srv.receive_datagram(bytes(8) + mm1[8:], ("192.0.2.7", 500), T0)
    assert srv.datagrams_to_send() == [] and srv.stats["dropped_bad_mm1"] == 1
    srv.receive_datagram(mm1, ("192.0.2.1", 500), T0 + 0.5)
    assert srv.datagrams_to_send() == [(mm2, ("192.0.2.1", 500))] and srv.stats["duplicate_mm1"] == 1
    other = os.urandom(8) + mm1[8:]  # a second member with the same configuration: cached
    srv.receive_datagram(other, ("192.0.2.1", 501), T0)
    (mm2b, _a), = srv.datagrams_to_send()
    assert mm2b[:8] == other[:8] and mm2b[16:] == mm2[16:] and len(srv._mm1_checked) == 1
    assert m.build(mm2b[:8], mm2b[8:16], m.EXCH_MAIN, 0, 0, [(m.SA, m.decode_chain(mm2b[28:], m.SA, 28)[0][1])]) == mm2b
    gm.receive_datagram(mm2, KS_ADDR, T0)
    assert gm.state is State.MM3_SENT
    assert _register(srv, "192.0.2.1", T0 + 1, port=600).state is State.ESTABLISHED
