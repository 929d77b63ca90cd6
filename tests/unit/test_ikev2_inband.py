"""GSA_INBAND_REKEY (RFC 9838 §2.4.2) in memory with real crypto, the real key store and the
real group controller: a group with ``g_ikev2_rekey = "inband"`` registers its G-IKEv2 members
without a Rekey SA, keeps their IKE SAs, and gives each rekey and eviction to each of them in
one acknowledged exchange, while its GDOI members get the GROUPKEY-PUSH as before."""

from __future__ import annotations

import dataclasses

import pytest

from gkm.gdoi.events import Registered
from gkm.gdoi.push import Evicted, PushReceiver, PushRejected, Rekeyed, TeksDeleted, TeksRefreshed
from gkm.group.storage import load_state
from gkm.ikev2.events import GikeRegistered, InbandRekeyAcknowledged, InbandRekeyFailed
from gkm.ikev2.inband import MAX_RETRANSMITS
from gkm.ikev2.member_inband import InbandReceiver
from tests.unit.test_gdoi_support import GID, KS, NOW, ks_settings, member_group
from tests.unit.test_ikev2_daemon_engines import _controller_step, both_groups, drain, key_server, run

ADDR = {"gm1": ("192.0.2.41", 848), "gm2": ("192.0.2.42", 848), "gm3": ("192.0.2.43", 848)}


def inband_groups(tmp_path):
    g, other = both_groups(tmp_path)
    return [dataclasses.replace(g, g_ikev2_rekey="inband"), other]


def setup(tmp_path):
    groups = inband_groups(tmp_path)
    f, ks = key_server(tmp_path, groups)
    regs, rx = {}, {}
    for who, proto in (("gm1", "g-ikev2"), ("gm2", "gdoi"), ("gm3", "g-ikev2")):
        mg = dataclasses.replace(member_group(tmp_path, who), protocol=proto)
        em, _eg = run(ks, f.member(mg, KS, NOW), addr=ADDR[who])
        [regs[who]] = [e for e in em if isinstance(e, Registered)]
        rx[who] = f.push_receiver(mg, regs[who])
    g = groups[0]
    ctl = f.group_controller(g, load_state(f.provider.store, GID), NOW, signer=f.push_signer(g))
    return f, ks, ctl, regs, rx


def roster(f) -> list[str]:
    return [m.identity for m in f.provider.store.members(GID)]


def exchange(ks, rx, now=NOW, lose=()):
    """The key server's in-band requests to each member, the members' answers back; returns
    (member events by name, key server events).  ``lose``: members whose request is lost."""
    by_addr = {ADDR[w]: w for w in rx}
    got = {w: [] for w in rx}
    for data, addr in ks.datagrams_to_send():
        who = by_addr[addr]
        if who in lose:
            continue
        rx[who].receive_datagram(data, KS, now)
        got[who] += drain(rx[who])
        for answer, to in rx[who].datagrams_to_send():
            assert to == KS
            ks.receive_datagram(answer, addr, now)
    return got, drain(ks)


def test_inband_members_register_without_a_rekey_sa_and_the_gcks_keeps_their_ike_sas(tmp_path):
    f, ks, _ctl, regs, rx = setup(tmp_path)
    for who in ("gm1", "gm3"):
        r = regs[who]
        assert isinstance(r, GikeRegistered) and r.kek is None and r.inband and r.gsa.ike is not None
        assert isinstance(rx[who], InbandReceiver)
    assert regs["gm2"].kek is not None and isinstance(rx["gm2"], PushReceiver)  # GDOI: as before
    assert ks.g_ikev2.inband.sa_count == 2


def test_rekey_and_eviction_reach_inband_members_acknowledged(tmp_path):
    f, ks, ctl, regs, rx = setup(tmp_path)
    old = {t.spi for t in regs["gm1"].teks}

    result, pushes = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    assert pushes and all(p.gike is None for p in pushes)  # no GSA_REKEY twin for in-band groups
    assert ks.g_ikev2.inband_rekey(GID, roster(f), NOW) == 2
    got, ks_events = exchange(ks, {w: rx[w] for w in ("gm1", "gm3")})
    gdoi = [e for p in pushes for e in (rx["gm2"].receive_datagram(p.data, KS, NOW), drain(rx["gm2"]))[1]]
    [gdoi_rk] = [e for e in gdoi if isinstance(e, Rekeyed)]
    for who in ("gm1", "gm3"):
        [ref] = [e for e in got[who] if isinstance(e, TeksRefreshed)]
        new = {t.spi: t.keymat for t in ref.teks}
        assert set(result.tek_spis) <= set(new), who
        # the same keys as the GDOI member's PUSH
        assert all(new[t.spi] == t.keymat for t in gdoi_rk.teks), who
        assert ref.seq == 1  # Message ID 0 on the GCKS's side of the IKE SA
        # the TEKs it was given at registration retire (on the group's deactivation delay)
        [dele] = [e for e in got[who] if isinstance(e, TeksDeleted)]
        assert set(dele.spis) == old - set(new), who
    ref1 = dataclasses.make_dataclass("R", ["teks_spis"])([t.spi for t in got["gm1"][0].teks])
    acks = [e for e in ks_events if isinstance(e, InbandRekeyAcknowledged)]
    assert sorted(a.member for a in acks) == ["key-id:gm1", "key-id:gm3"]
    assert all(set(result.tek_spis) <= set(a.tek_spis) for a in acks)
    assert ks.g_ikev2.inband.pending(GID) == 0

    ev, pushes = _controller_step(f, ctl, lambda: ctl.evict(["key-id:gm3"], "test", NOW))
    assert ks.g_ikev2.inband_rekey(GID, roster(f), NOW) == 2
    got, ks_events = exchange(ks, {w: rx[w] for w in ("gm1", "gm3")})
    assert [type(e) for e in got["gm3"]] == [Evicted]  # Delete GIKE_UPDATE SPI 0: excluded
    [ref] = [e for e in got["gm1"] if isinstance(e, TeksRefreshed)]
    assert {t.spi for t in ref.teks} == set(ev.tek_spis)
    [dele] = [e for e in got["gm1"] if isinstance(e, TeksDeleted)]
    assert set(dele.spis) == set(ref1.teks_spis) - set(ev.tek_spis)  # the ones before retire
    assert len([e for e in ks_events if isinstance(e, InbandRekeyAcknowledged)]) == 2
    assert ks.g_ikev2.inband.sa_count == 1  # the excluded member's IKE SA is forgotten
    # the evicted member's IKE SA gets nothing more
    _r, _p = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    assert ks.g_ikev2.inband_rekey(GID, roster(f), NOW) == 1
    assert [a for _d, a in ks.datagrams_to_send()] == [ADDR["gm1"]]


def test_lost_requests_are_retransmitted_then_the_member_is_given_up(tmp_path):
    f, ks, ctl, _regs, rx = setup(tmp_path)
    _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    first = dict((a, d) for d, a in ks.datagrams_to_send())
    # gm1's request is lost once; the copy is byte-identical and answered
    t = ks.get_timer()
    assert t == NOW + 1.0
    ks.handle_timer(t)
    again = dict((a, d) for d, a in ks.datagrams_to_send())
    assert again == first  # both unanswered: both sent again, unchanged
    rx["gm1"].receive_datagram(again[ADDR["gm1"]], KS, t)
    assert [type(e) for e in drain(rx["gm1"])] == [TeksRefreshed, TeksDeleted]
    [(answer, _to)] = rx["gm1"].datagrams_to_send()
    # a copy of the same request (the answer was lost) gets the same answer, nothing re-applied
    rx["gm1"].receive_datagram(again[ADDR["gm1"]], KS, t)
    assert [(type(e), e.duplicate) for e in drain(rx["gm1"])] == [(PushRejected, True)]
    assert rx["gm1"].datagrams_to_send() == [(answer, KS)]
    ks.receive_datagram(answer, ADDR["gm1"], t)
    assert [type(e) for e in drain(ks)] == [InbandRekeyAcknowledged]
    # gm3 never answers: given up after the retransmissions, its IKE SA forgotten
    n, events = 2, []  # the first transmission and the copy above
    while (t := ks.g_ikev2.inband.get_timer()) is not None:  # (housekeeping goes on: SAs kept)
        ks.handle_timer(t)
        n += len(ks.datagrams_to_send())
        events += drain(ks)
    assert n == 1 + MAX_RETRANSMITS
    [failed] = [e for e in events if isinstance(e, InbandRekeyFailed)]
    assert isinstance(failed, InbandRekeyFailed) and failed.member == "key-id:gm3"
    assert ks.g_ikev2.inband.sa_count == 1


def test_a_rekey_while_one_is_outstanding_waits_and_sends_the_latest_keys(tmp_path):
    f, ks, ctl, _regs, rx = setup(tmp_path)
    _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    pending = ks.datagrams_to_send()
    r2, _p = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    assert ks.datagrams_to_send() == []  # window size 1: after the answer
    for data, addr in pending:
        who = "gm1" if addr == ADDR["gm1"] else "gm3"
        rx[who].receive_datagram(data, KS, NOW)
        drain(rx[who])
        [(answer, _to)] = rx[who].datagrams_to_send()
        ks.receive_datagram(answer, addr, NOW)
    got, _ev = exchange(ks, {w: rx[w] for w in ("gm1", "gm3")})
    for who in ("gm1", "gm3"):
        [ref] = [e for e in got[who] if isinstance(e, TeksRefreshed)]
        assert set(r2.tek_spis) <= {t.spi for t in ref.teks} and ref.seq == 2, who


@pytest.mark.parametrize("damage", ["flip", "other_sa", "truncated"])
def test_member_drops_what_is_not_an_authentic_request_on_its_ike_sa(tmp_path, damage):
    f, ks, ctl, _regs, rx = setup(tmp_path)
    _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    req = {a: d for d, a in ks.datagrams_to_send()}
    data = req[ADDR["gm1"]]
    bad = {"flip": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:], "other_sa": req[ADDR["gm3"]],
           "truncated": data[:40]}[damage]
    rx["gm1"].receive_datagram(bad, KS, NOW)
    assert drain(rx["gm1"]) == [] and rx["gm1"].datagrams_to_send() == []
    rx["gm1"].receive_datagram(data, ("192.0.2.99", 848), NOW)  # not the IKE SA's peer
    assert drain(rx["gm1"]) == [] and rx["gm1"].datagrams_to_send() == []
    rx["gm1"].receive_datagram(data, KS, NOW)  # the real one still works
    assert [type(e) for e in drain(rx["gm1"])] == [TeksRefreshed, TeksDeleted]


def test_gcks_drops_answers_that_are_not_authentic(tmp_path):
    f, ks, ctl, _regs, rx = setup(tmp_path)
    _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    req = {a: d for d, a in ks.datagrams_to_send()}
    rx["gm1"].receive_datagram(req[ADDR["gm1"]], KS, NOW)
    [(answer, _to)] = rx["gm1"].datagrams_to_send()
    ks.receive_datagram(answer[:-1] + bytes([answer[-1] ^ 1]), ADDR["gm1"], NOW)
    ks.receive_datagram(answer, ADDR["gm3"], NOW)  # from another address
    assert drain(ks) == [] and ks.g_ikev2.inband.pending(GID) == 2
    ks.receive_datagram(answer, ADDR["gm1"], NOW)
    assert [type(e) for e in drain(ks)] == [InbandRekeyAcknowledged]


def test_member_engine_rekeyed_in_band_registers_again_over_its_ike_sa(tmp_path):
    """The real member engine: an in-band registration keeps its socket (HoldRegistration, no
    rekey socket), takes in-band rekeys from it, and registers again by GSA_REGISTRATION over
    the same IKE SA (no new socket, no IKE_SA_INIT), even after the GCKS expired the IKE SAs it
    does not keep; in-band rekeys then go on with the next Message ID."""
    from gkm.gdoi.member import CloseRegistration, HoldRegistration, InstallSas, ListenForPush, OpenRegistration
    from gkm.gdoi.events import MemberRegistered
    from tests.unit.test_ikev2_member_state import Member
    f, ks = key_server(tmp_path, inband_groups(tmp_path))
    m = Member(f, ks, tmp_path, "gm1", ADDR["gm1"]).register()
    assert m.e.inband and [type(a) for a in m.actions].count(HoldRegistration) == 1
    assert not any(isinstance(a, (ListenForPush, CloseRegistration)) for a in m.actions)
    g = inband_groups(tmp_path)[0]
    ctl = f.group_controller(g, load_state(f.provider.store, GID), NOW, signer=f.push_signer(g))

    def rekey_in_band() -> set[int]:
        r, _p = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
        ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
        start = len(m.actions)
        for d, _a in ks.datagrams_to_send():
            m.e.receive_registration(d, KS, NOW)
        m.drain()  # its answer goes back to the key server
        assert len([e for e in drain(ks) if isinstance(e, InbandRekeyAcknowledged)]) == 1
        installed = {t.spi for a in m.actions[start:] if isinstance(a, InstallSas) for t in a.teks}
        assert set(r.tek_spis) <= installed
        return installed

    rekey_in_band()
    ks.handle_timer(NOW + 600)  # housekeeping: the IKE SAs not kept are forgotten, this one stays
    opened = [type(a) for a in m.actions].count(OpenRegistration)
    m.e.handle_timer(m.e.next_attempt)
    m.drain()
    assert m.e.registrations == 2 and m.e.inband
    assert [type(a) for a in m.actions].count(OpenRegistration) == opened  # the same socket
    assert ks.half_open == 0 and ks.g_ikev2.inband.sa_count == 1
    assert any(isinstance(e, MemberRegistered) for e in drain(ks))
    rekey_in_band()  # the GCKS's Message IDs go on on the same IKE SA: accepted


def test_registering_again_falls_back_to_a_new_ike_sa_when_the_gcks_forgot_it(tmp_path):
    """After a key server restart no IKE SA is kept: the GSA_REGISTRATION goes unanswered and
    the member registers at once on a new IKE SA with the same key server (no backoff)."""
    from gkm.gdoi.member import OpenRegistration, RegistrationAttemptFailed
    from gkm.ikev2.member_registration import EXCHANGE_TIMEOUT
    from tests.unit.test_ikev2_member_state import Member
    f, ks = key_server(tmp_path, inband_groups(tmp_path))
    m = Member(f, ks, tmp_path, "gm1", ADDR["gm1"]).register()
    store = f.provider.store
    m.ks = ks2 = f.keyserver(ks_settings(tmp_path, inband_groups(tmp_path)), store, NOW)  # restarted
    t = m.e.next_attempt
    m.e.handle_timer(t)
    for d, _a in m.e.datagrams_to_send():
        ks2.receive_datagram(d, ADDR["gm1"], t)
    assert ks2.datagrams_to_send() == []  # an IKE SA it does not know: dropped
    opened = [type(a) for a in m.actions].count(OpenRegistration)
    m.e.handle_timer(t + EXCHANGE_TIMEOUT + 1)
    m.drain()
    assert [type(a) for a in m.actions].count(OpenRegistration) == opened + 1
    assert any(isinstance(e, RegistrationAttemptFailed) and "new IKE SA" in e.reason for e in m.events)
    assert m.e.registrations == 2 and m.e.inband


def test_a_group_no_longer_in_band_tells_its_kept_members_they_are_excluded(tmp_path):
    """A reload to ``g_ikev2_rekey = "gsa_rekey"``: the members rekeyed in band so far are
    told (excluded), so they register again and get a Rekey SA; their IKE SAs are forgotten."""
    f, ks, ctl, _regs, rx = setup(tmp_path)
    g, other = inband_groups(tmp_path)
    ks.update_groups([dataclasses.replace(g, g_ikev2_rekey="gsa_rekey"), other])
    assert ks.g_ikev2.inband_rekey(GID, roster(f), NOW) == 2
    got, ks_events = exchange(ks, {w: rx[w] for w in ("gm1", "gm3")})
    assert [type(e) for e in got["gm1"]] == [Evicted] == [type(e) for e in got["gm3"]]
    assert ks.g_ikev2.inband.sa_count == 0
