"""G-IKEv2 inside msecd's engines, in memory with real crypto and a real key store: the key
server's one engine (GDOI and G-IKEv2 behind the header version demultiplexer, one keys
provider) and the member's G-IKEv2 registration (the MemberRegistration interface), both built
by ``gkm.daemon.engines.GdoiFactory`` from policy."""

from __future__ import annotations

import dataclasses

import pytest

from gkm.daemon.engines import GdoiFactory
from gkm.gdoi.events import MemberRefused, MemberRegistered, Registered, RegistrationFailed
from gkm.ikev2 import NotifyType
from gkm.ikev2.gcks import ProtocolDemux
from gkm.ikev2.events import GikeRegistered
from gkm.ikev2.member_registration import GikeRegistration
from gkm.ikev2.member_rekey import GikePushReceiver
from gkm.store import KeyStore
from tests.unit.test_gdoi_support import GID, KS, NOW, group_policy, ks_settings, member_group

GM = ("192.0.2.10", 848)


def drain(engine) -> list:
    out = []
    while (e := engine.next_event()) is not None:
        out.append(e)
    return out


def both_groups(tmp_path, protocols=("gdoi", "g-ikev2")):
    return [dataclasses.replace(group_policy(tmp_path), protocols=protocols),
            dataclasses.replace(group_policy(tmp_path, gid=GID + 1), protocols=("gdoi",))]


def key_server(tmp_path, groups):
    f = GdoiFactory(kernel=False)
    return f, f.keyserver(ks_settings(tmp_path, groups), KeyStore(tmp_path / "state"), NOW)


def run(ks, member, addr=GM, now=NOW, rounds=12, drop=None):
    """Datagrams both ways until quiet; ``drop(n, data)`` loses the n-th key server answer."""
    n = 0
    for _ in range(rounds):
        moved = False
        for d, a in member.datagrams_to_send():
            assert a == KS
            ks.receive_datagram(d, addr, now)
            moved = True
        ks.commit(now)  # the shell's durable step (GDOI group commit)
        for d, a in ks.datagrams_to_send():
            assert a == addr
            moved = True
            n += 1
            if drop is None or not drop(n, d):
                member.receive_datagram(d, KS, now)
        if not moved:
            break
    return drain(member), drain(ks)


def test_gdoi_and_g_ikev2_members_get_the_same_keys(tmp_path):
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    assert isinstance(ks, ProtocolDemux)
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW)
    assert isinstance(gi, GikeRegistration)
    em, eg = run(ks, gi)
    assert [type(e) for e in em] == [GikeRegistered] and em[0].group_id == GID
    reg = [e for e in eg if isinstance(e, MemberRegistered)]
    assert len(reg) == 1 and reg[0].identity.value == "gm1"
    # the member engine gets the Rekey SA as its KEK, the SEQ before the next GSA_REKEY, and
    # the factory builds its GSA_REKEY receiver from the registration
    assert em[0].kek.spi == gi.gsa.rekey_sa.spi and em[0].seq == gi.gsa.rekey_sa.initial_message_id == 0
    assert em[0].teks == gi.gsa.registered.teks and em[0].gsa is gi.gsa
    assert isinstance(f.push_receiver(member_group(tmp_path, "gm1"), em[0]), GikePushReceiver)
    gd = f.member(member_group(tmp_path, "gm2"), KS, NOW)
    assert not isinstance(gd, GikeRegistration)
    em2, eg2 = run(ks, gd, addr=("192.0.2.11", 848))
    got = [e for e in em2 if isinstance(e, Registered)]
    assert len(got) == 1
    assert [t.spi for t in got[0].teks] == [t.spi for t in em[0].teks] == list(reg[0].tek_spis)
    assert [t.keymat for t in got[0].teks] == [t.keymat for t in em[0].teks]
    assert got[0].kek.spi == gi.gsa.registered.kek.spi  # one KEK for both protocols
    assert f.provider.store.member_count(GID) == 2
    store = f.provider.store  # each member recorded with the protocol it registered with
    assert (store.member(GID, "key-id:gm1").protocol, store.member(GID, "key-id:gm2").protocol) == ("g-ikev2", "gdoi")
    assert ks.half_open == 0  # the IKE SA stopped being half-open once GSA_AUTH was answered


def test_group_without_g_ikev2_refuses_with_authorization_failed(tmp_path):
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1", gid=GID + 1), protocol="g-ikev2"), KS, NOW)
    em, eg = run(ks, gi)
    assert [type(e) for e in em] == [RegistrationFailed]
    assert em[0].notify == NotifyType.AUTHORIZATION_FAILED and "AUTHORIZATION_FAILED" in em[0].reason
    refused = [e for e in eg if isinstance(e, MemberRefused)]
    assert len(refused) == 1 and "not served over G-IKEv2 (protocols = gdoi)" in refused[0].reason
    assert f.provider.store.member_count(GID + 1) == 0


def test_gdoi_only_key_server_is_the_gdoi_engine_alone(tmp_path):
    """No group lists g-ikev2: the engine of before, IKEv2 answered by nobody; a reload that
    adds g-ikev2 to a group needs a new engine (and one that removes it too)."""
    from gkm.gdoi import KeyServerEngine
    groups = both_groups(tmp_path, protocols=("gdoi",))
    f, ks = key_server(tmp_path, groups)
    assert type(ks) is KeyServerEngine
    em, _eg = run(ks, f.member(member_group(tmp_path, "gm2"), KS, NOW))
    assert any(isinstance(e, Registered) for e in em)
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW)
    em, eg = run(ks, gi, addr=("192.0.2.12", 848))
    assert em == [] and eg == [] and gi.state == "sa_init"  # unanswered: it will time out
    assert f.update_keyserver_groups(ks, groups)
    assert not f.update_keyserver_groups(ks, both_groups(tmp_path))
    _f2, dual = key_server(tmp_path / "2", both_groups(tmp_path))
    assert not f.update_keyserver_groups(dual, groups)
    assert f.update_keyserver_groups(dual, both_groups(tmp_path))


def test_lost_answers_are_retransmitted(tmp_path):
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW)
    lost = {1, 3}  # the IKE_SA_INIT answer, then (after the retransmission) the IKE_INTERMEDIATE one
    em, _ = run(ks, gi, drop=lambda n, d: n in lost)
    assert em == [] and gi.get_timer() == NOW + 1.0
    t = NOW
    for _ in range(6):
        t = gi.get_timer()
        gi.handle_timer(t)
        em, eg = run(ks, gi, now=t, drop=lambda n, d: False)
        if em:
            break
    assert [type(e) for e in em] == [GikeRegistered]
    assert len([e for e in eg if isinstance(e, MemberRegistered)]) == 1


def test_silent_key_server_times_out(tmp_path):
    gi = GdoiFactory(kernel=False).member(
        dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW)
    sent = len(gi.datagrams_to_send())
    while (t := gi.get_timer()) is not None:
        gi.handle_timer(t)
        sent += len(gi.datagrams_to_send())
    ev = drain(gi)
    assert [type(e) for e in ev] == [RegistrationFailed] and "no answer" in ev[0].reason
    # the request and retransmissions after 1, 2, 4 and 8 s; the next (at 31 s) is past the deadline
    assert t is None and sent == 5
    assert gi.state == "failed"


@pytest.mark.parametrize("junk", [b"", b"\x00" * 17, b"\x00" * 17 + b"\x20" + b"\x00" * 10,
                                  b"\x00" * 17 + b"\x20\x2a"])  # 19 octets: up to the exchange type
def test_demux_drops_short_or_broken_ikev2(tmp_path, junk):
    _f, ks = key_server(tmp_path, both_groups(tmp_path))
    ks.receive_datagram(junk, GM, NOW)
    assert ks.datagrams_to_send() == [] and drain(ks) == []


def test_key_server_admit_hook_applies_to_g_ikev2(tmp_path):
    """The shell's own refusals (deny list) reach G-IKEv2 members too; with a PSK the hook
    gets no certificate."""
    seen = []

    def admit(group, identity, sa):
        seen.append((group.group_id, identity.value, sa.peer_certificate))
        return "key-id:gm1 was evicted"

    f = GdoiFactory(kernel=False)
    ks = f.keyserver(ks_settings(tmp_path, both_groups(tmp_path)), KeyStore(tmp_path / "state"), NOW, admit=admit)
    em, eg = run(ks, f.member(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW))
    assert seen == [(GID, "gm1", None)]
    assert [type(e) for e in em] == [RegistrationFailed] and em[0].notify == NotifyType.AUTHORIZATION_FAILED
    assert any(isinstance(e, MemberRefused) and "was evicted" in e.reason for e in eg)


def test_admit_hook_gets_the_certificate_of_a_g_ikev2_member(tmp_path):
    """For the key server's CRL check: the certificate whose key signed the member's GSA_AUTH
    (the one the authorized subject came from); its refusal refuses the member."""
    seen = []

    def admit(group, identity, sa):
        seen.append((identity.value, sa.peer_certificate.subject.rfc4514_string()))
        return "certificate CN=gm1 revoked on 2026-01-01 (CRL ca.crl)"

    f = GdoiFactory(kernel=False)
    ks = f.keyserver(ks_settings(tmp_path, both_groups(tmp_path), cert=True), KeyStore(tmp_path / "state"), NOW,
                     admit=admit)
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1", cert=True), protocol="g-ikev2"), KS, NOW)
    em, eg = run(ks, gi)
    assert len(seen) == 1 and seen[0][0] == seen[0][1] and "CN=gm1" in seen[0][1]
    assert [type(e) for e in em] == [RegistrationFailed]
    assert any(isinstance(e, MemberRefused) and "revoked" in e.reason for e in eg)


def test_half_open_state_expires_under_steady_traffic(tmp_path):
    """Housekeeping runs on a fixed schedule: datagrams arriving more often than it runs do
    not postpone it, so abandoned IKE SAs go after their lifetime."""
    from gkm.ikev2.gcks import HOUSEKEEPING_S
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW)
    for d, _a in gi.datagrams_to_send():
        ks.receive_datagram(d, GM, NOW)  # IKE_SA_INIT answered, the member never goes on
    ks.datagrams_to_send()
    assert ks.half_open == 1
    t, deadline = NOW, ks.get_timer()
    assert deadline == NOW + HOUSEKEEPING_S
    while t < NOW + 40:
        t += 1.0
        ks.receive_datagram(b"\x00" * 17 + b"\x20" + b"\x00" * 10, ("192.0.2.99", 848), t)  # noise
        if (d := ks.get_timer()) is not None and d <= t:
            ks.handle_timer(t)
    assert ks.half_open == 0 and ks.get_timer() is None


def _controller_step(f, ctl, call):
    """One user call on the group controller, committed to the key server's store as msecd's
    group shell does; its PUSHes."""
    from gkm.group.storage import apply
    result = call()
    apply(f.provider.store, ctl.pending_changes())
    ctl.committed(NOW)
    f.keys_changed(None, GID)
    return result, ctl.datagrams_to_send()


def _deliver(pushes, receivers) -> dict:
    """Every datagram of every PUSH (both protocols) to every receiver, as the multicast does."""
    out = {}
    for who, rx in receivers.items():
        for p in pushes:
            for d in p.datagrams:
                rx.receive_datagram(d, KS, NOW)
        out[who] = drain(rx)
    return out


def test_rekey_and_lkh_eviction_reach_g_ikev2_and_gdoi_members(tmp_path):
    """One group served over both protocols, its group controller on the same store: every
    PUSH has its GSA_REKEY twin; a rekey gives G-IKEv2 and GDOI members the same new TEKs, an
    LKH eviction of a G-IKEv2 member leaves it out (Evicted, no new key) while the other
    G-IKEv2 member and the GDOI member get the same TEKs under the new KEK.  Each receiver
    drops the other protocol's datagrams without an event."""
    from gkm.gdoi.push import Evicted, PushReceiver, PushRejected, Rekeyed, TeksDeleted
    from gkm.group.storage import load_state
    groups = both_groups(tmp_path)
    f, ks = key_server(tmp_path, groups)
    regs = {}
    for i, (who, proto) in enumerate((("gm1", "g-ikev2"), ("gm2", "gdoi"), ("gm3", "g-ikev2"))):
        mg = dataclasses.replace(member_group(tmp_path, who), protocol=proto)
        em, _eg = run(ks, f.member(mg, KS, NOW), addr=(f"192.0.2.{20 + i}", 848))
        [regs[who]] = [e for e in em if isinstance(e, Registered)]
        assert isinstance(regs[who], GikeRegistered) == (proto == "g-ikev2")
    rx = {who: f.push_receiver(member_group(tmp_path, who), r) for who, r in regs.items()}
    assert [type(r) for r in rx.values()] == [GikePushReceiver, PushReceiver, GikePushReceiver]
    g = groups[0]
    ctl = f.group_controller(g, load_state(f.provider.store, GID), NOW, signer=f.push_signer(g))

    result, pushes = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    assert len(pushes) == 1 and pushes[0].gike is not None
    got = _deliver(pushes, rx)
    for who, evs in got.items():
        [rk] = [e for e in evs if isinstance(e, Rekeyed)]
        assert [t.spi for t in rk.teks] == list(result.tek_spis), who
        assert rk.seq == pushes[0].seq, who  # GSA_REKEY Message ID = SEQ - 1
    assert [t.keymat for t in got["gm1"][0].teks] == [t.keymat for t in got["gm2"][0].teks]
    assert rx["gm1"].stats["other_protocol"] == rx["gm2"].stats["other_protocol"] == 1

    ev, pushes = _controller_step(f, ctl, lambda: ctl.evict(["key-id:gm3"], "test", NOW))
    assert ev.mode == "lkh" and [p.gike is not None for p in pushes] == [True] * len(pushes)
    got = _deliver(pushes, rx)
    # excluded by the first message; the TEK message on the new Rekey SA is refused quietly
    assert type(got["gm3"][0]) is Evicted
    assert {(type(e), e.cause) for e in got["gm3"][1:]} == {(PushRejected, "not_member")}
    new = {}
    for who in ("gm1", "gm2"):
        rks = [e for e in got[who] if isinstance(e, Rekeyed)]
        assert rks[0].new_kek and rks[-1].kek.spi == pushes[-1].kek_spi, who
        new[who] = [(t.spi, t.keymat) for e in rks for t in e.teks]
        assert [t for t, _k in new[who]] == list(ev.tek_spis), who
        assert any(isinstance(e, TeksDeleted) for e in got[who]), who  # the old TEKs retire
    assert new["gm1"] == new["gm2"]
    # the evicted member's receiver takes nothing more
    again = _deliver(pushes, {"gm3": rx["gm3"]})["gm3"]
    assert not [e for e in again if isinstance(e, Rekeyed)]


def test_g_ikev2_sender_installs_both_ways_and_a_non_sender_inbound_only(tmp_path):
    """``sender = true`` sends GROUP_SENDER: TEKs both ways; without it, inbound only (a sender
    the policy does not let send is refused: test_ikev2_registration)."""
    from policy.model import SaDirection
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    for i, (who, sender, want) in enumerate((("gm1", True, SaDirection.SYMMETRIC),
                                             ("gm3", False, SaDirection.RECEIVER_ONLY))):
        mg = dataclasses.replace(member_group(tmp_path, who), protocol="g-ikev2", sender=sender)
        em, _eg = run(ks, f.member(mg, KS, NOW), addr=(f"192.0.2.{30 + i}", 848))
        [reg] = em
        assert isinstance(reg, GikeRegistered) and {t.direction for t in reg.teks} == {want}, who


def test_g_ikev2_senders_get_their_own_sender_ids_and_counter_mode_teks_in_rekeys(tmp_path):
    """RFC 9838 §2.5.1: a group with an AES-GCM TEK gives each sender registration one new
    Sender-ID from the group's counter (a receiver none); with it, the sender's GSA_REKEY
    receiver installs the rekey's counter-mode TEK instead of withholding it (§2.4.4)."""
    from gkm.gdoi.push import PushRejected, Rekeyed
    from gkm.group.storage import load_state
    groups = both_groups(tmp_path)
    f, ks = key_server(tmp_path, groups)
    regs = {}
    for i, (who, sender) in enumerate((("gm1", True), ("gm3", True), ("gm2", False), ("gm1", True))):
        mg = dataclasses.replace(member_group(tmp_path, who), protocol="g-ikev2", sender=sender)
        em, _eg = run(ks, f.member(mg, KS, NOW), addr=(f"192.0.2.{40 + i}", 848))
        [reg] = em
        regs[(who, i)] = reg
        assert isinstance(reg, GikeRegistered), em
    assert [r.gsa.sender_ids for r in regs.values()] == [(0,), (1,), (), (2,)]  # new ones each time
    g = groups[0]
    ctl = f.group_controller(g, load_state(f.provider.store, GID), NOW, signer=f.push_signer(g))
    result, pushes = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    for key in (("gm3", 1), ("gm2", 2)):
        rx = f.push_receiver(member_group(tmp_path, key[0]), regs[key])
        rx.receive_datagram(pushes[0].gike, KS, NOW)
        evs = drain(rx)
        [rk] = [e for e in evs if isinstance(e, Rekeyed)]
        assert sorted(t.spi for t in rk.teks) == sorted(result.tek_spis), key
        assert not [e for e in evs if isinstance(e, PushRejected)], (key, evs)


# ---------------------------------------------------------------- ML-KEM-768 group policy


def mlkem_groups(tmp_path, mlkem="required"):
    return [dataclasses.replace(g, mlkem=mlkem) if g.group_id == GID else g for g in both_groups(tmp_path)]


def g_ikev2_member(tmp_path, who="gm1", mlkem="optional"):
    return dataclasses.replace(member_group(tmp_path, who), protocol="g-ikev2", mlkem=mlkem)


def test_group_requiring_mlkem_admits_members_that_offer_it(tmp_path):
    """``mlkem = "required"``: a member offering ML-KEM-768 (optional, the default, or required)
    registers; its IKE SA had the RFC 9370 additional key exchange."""
    from gkm.ikev2 import KeyExchangeMethod
    f, ks = key_server(tmp_path, mlkem_groups(tmp_path))
    for i, mlkem in enumerate(("optional", "required")):
        gi = f.member(g_ikev2_member(tmp_path, "gm1" if i == 0 else "gm3", mlkem), KS, NOW)
        em, eg = run(ks, gi, addr=(f"192.0.2.{40 + i}", 848))
        assert [type(e) for e in em] == [GikeRegistered], em
        assert gi.gsa_auth.sa.methods == (KeyExchangeMethod.ECP256, KeyExchangeMethod.ML_KEM_768)
        assert len([e for e in eg if isinstance(e, MemberRegistered)]) == 1
    assert f.provider.store.member_count(GID) == 2


def test_group_requiring_mlkem_refuses_a_member_without_it(tmp_path, caplog):
    """A member that does not offer ML-KEM-768 (``mlkem = "off"``) gets its IKE SA (the group
    is named only in GSA_AUTH) and is then refused with NO_PROPOSAL_CHOSEN, a reason on both
    sides, and nothing recorded in the store."""
    from tests.unit.test_gdoi_support import store_snapshot
    f, ks = key_server(tmp_path, mlkem_groups(tmp_path))
    before = store_snapshot(f.provider.store)
    gi = f.member(g_ikev2_member(tmp_path, mlkem="off"), KS, NOW)
    with caplog.at_level("WARNING", logger="gkm.ikev2"):
        em, eg = run(ks, gi)
    assert gi.gsa_auth.sa.methods == (19,)  # ECDH alone: no IKE_INTERMEDIATE
    assert [type(e) for e in em] == [RegistrationFailed]
    assert em[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert "refused: NO_PROPOSAL_CHOSEN: the group requires the ML-KEM-768 key exchange" in em[0].reason
    assert "made without it (ECP256)" in em[0].reason
    [refused] = [e for e in eg if isinstance(e, MemberRefused)]
    assert refused.cause == "mlkem_required" and refused.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert refused.identity.value == "gm1" and refused.group_id == GID
    assert refused.reason == ("group test (1234) requires the ML-KEM-768 key exchange (RFC 9370): the "
                              "member's IKE SA was made without it (ECP256)")
    assert not any(isinstance(e, MemberRegistered) for e in eg)
    assert any("refused" in r.message and "requires the ML-KEM-768" in r.message and "NO_PROPOSAL_CHOSEN" in r.message
               for r in caplog.records if r.name == "gkm.ikev2" and "gcks" in r.message)
    assert f.provider.store.member_count(GID) == 0
    assert store_snapshot(f.provider.store) == before
    assert ks.half_open == 0  # answered: not half-open any more


def test_group_not_requiring_mlkem_admits_members_with_and_without_it(tmp_path):
    from gkm.ikev2 import KeyExchangeMethod
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    assert ks.g_ikev2.auth.groups[GID].mlkem == "optional"
    for i, (mlkem, methods) in enumerate((("off", (KeyExchangeMethod.ECP256,)),
                                          ("optional", (KeyExchangeMethod.ECP256, KeyExchangeMethod.ML_KEM_768)))):
        gi = f.member(g_ikev2_member(tmp_path, ("gm1", "gm3")[i], mlkem), KS, NOW)
        em, _eg = run(ks, gi, addr=(f"192.0.2.{50 + i}", 848))
        assert [type(e) for e in em] == [GikeRegistered], em
        assert gi.gsa_auth.sa.methods == methods
    assert f.provider.store.member_count(GID) == 2


def test_reload_that_requires_mlkem_applies_to_later_registrations(tmp_path):
    """The requirement is read at each GSA_AUTH: a reload (update_keyserver_groups, the same
    engine) turns it on for the next registrations; members already registered stay."""
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    em, _ = run(ks, f.member(g_ikev2_member(tmp_path, "gm1", "off"), KS, NOW))
    assert [type(e) for e in em] == [GikeRegistered]
    assert f.update_keyserver_groups(ks, mlkem_groups(tmp_path))
    em, eg = run(ks, f.member(g_ikev2_member(tmp_path, "gm3", "off"), KS, NOW), addr=("192.0.2.61", 848))
    assert [type(e) for e in em] == [RegistrationFailed] and em[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert [e.cause for e in eg if isinstance(e, MemberRefused)] == ["mlkem_required"]
    assert f.provider.store.member_count(GID) == 1
    assert f.update_keyserver_groups(ks, both_groups(tmp_path))
    em, _ = run(ks, f.member(g_ikev2_member(tmp_path, "gm3", "off"), KS, NOW), addr=("192.0.2.62", 848))
    assert [type(e) for e in em] == [GikeRegistered]


def test_member_requiring_mlkem_refuses_a_gcks_that_does_not_choose_it(tmp_path):
    """``mlkem = "required"`` on the member: ML-KEM-768 offered alone (no NONE); a GCKS that
    does not choose it ends the registration before any GSA_AUTH."""
    from gkm.ikev2 import profile
    from gkm.ikev2.gcks_registration import gcks_auth_config
    from gkm.ikev2.gcks import GcksEngine
    f, _ = key_server(tmp_path, both_groups(tmp_path))
    groups = both_groups(tmp_path)
    classic = GcksEngine(profile.sa_init_config(mlkem="no"), gcks_auth_config(ks_settings(tmp_path, groups)),
                         groups, f.provider)
    em, eg = run(classic, f.member(g_ikev2_member(tmp_path, mlkem="required"), KS, NOW))
    assert [type(e) for e in em] == [RegistrationFailed], em
    assert "NO_PROPOSAL_CHOSEN" in em[0].reason  # the GCKS found no proposal without ML-KEM
    assert f.provider.store.member_count(GID) == 0
    em, _ = run(classic, f.member(g_ikev2_member(tmp_path, mlkem="off"), KS, NOW), addr=("192.0.2.70", 848))
    assert [type(e) for e in em] == [GikeRegistered]


def test_listen_sockets_of_a_g_ikev2_port_of_its_own(tmp_path):
    """``g_ikev2_port``: every listen address gets a second socket that takes IKEv2 datagrams
    only, and the GDOI socket the others; without a group serving G-IKEv2 (or without the
    setting) one socket per address takes everything, as before."""
    from gkm.daemon.keyserver import _listen_keys
    groups = both_groups(tmp_path)
    gi = GdoiFactory(kernel=False).member(g_ikev2_member(tmp_path), KS, NOW)
    [(ike, _)] = gi.datagrams_to_send()
    gd = GdoiFactory(kernel=False).member(member_group(tmp_path, "gm2"), KS, NOW)
    [(f_msg, _)] = gd.datagrams_to_send()
    settings = dataclasses.replace(ks_settings(tmp_path, groups), g_ikev2_port=500)
    keys = _listen_keys(settings)
    assert list(keys) == [(KS[0], 848), (KS[0], 500), (KS[0], 4500)]  # 4500: NAT traversal (test_ikev2_natt)
    gdoi_only, ikev2_only = keys[(KS[0], 848)][1], keys[(KS[0], 500)][1]
    assert gdoi_only(f_msg) and not gdoi_only(ike)
    assert ikev2_only(ike) and not ikev2_only(f_msg) and not ikev2_only(b"")
    for s in (ks_settings(tmp_path, groups),
              dataclasses.replace(ks_settings(tmp_path, both_groups(tmp_path, protocols=("gdoi",))), g_ikev2_port=500)):
        assert {k: v[1] for k, v in _listen_keys(s).items()} == {(KS[0], 848): None}


@pytest.mark.parametrize("mlkem, methods, exchanges", [
    ("optional", (19, 36), 3),  # the default profile: ECDH P-256 then ML-KEM-768 over IKE_INTERMEDIATE
    ("off", (19,), 2),  # ECDH only, no IKE_INTERMEDIATE
])
def test_member_registration_offers_what_its_mlkem_setting_says(tmp_path, mlkem, methods, exchanges):
    from gkm.ikev2.constants import ExchangeType, KeyExchangeMethod

    _f, ks = key_server(tmp_path, both_groups(tmp_path))
    group = dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2", mlkem=mlkem)
    gi = GikeRegistration(group, KS)
    requests = []
    gi.start(NOW)
    for _ in range(6):
        out = gi.datagrams_to_send()
        if not out:
            break
        for d, _a in out:
            requests.append(d[18])  # the exchange type
            ks.receive_datagram(d, GM, NOW)
        ks.commit(NOW)  # the shell's durable step, before it takes the answers
        for d, _a in ks.datagrams_to_send():
            gi.receive_datagram(d, KS, NOW)
    em = drain(gi)
    assert [type(e) for e in em] == [GikeRegistered]
    assert gi.gsa_auth.sa.methods == methods
    assert len(requests) == exchanges and (KeyExchangeMethod.ML_KEM_768 in methods) == (ExchangeType.IKE_INTERMEDIATE in requests)
    assert any(isinstance(e, MemberRegistered) for e in drain(ks))


def test_gsa_auths_read_together_are_enrolled_in_one_commit_and_answered_after_it(tmp_path):
    """Group commit through msecd's engine (ProtocolDemux -> GcksEngine): members in lockstep,
    the shell's burst then ``commit``; their GSA_AUTHs share one store commit, nothing is
    answered before it, and the IKE SAs stop being half-open once answered."""
    from tests.unit.test_ikev2_registration import _count_transactions
    f, ks = key_server(tmp_path, both_groups(tmp_path))
    who = ("gm1", "gm2", "gm3")
    members = {("192.0.2.%d" % (20 + i), 848): f.member(g_ikev2_member(tmp_path, w), KS, NOW) for i, w in enumerate(who)}
    commits = _count_transactions(f.provider.store)
    seen, events = [], []
    for _ in range(6):
        inbox = [(d, a) for a, m in members.items() for d, _to in m.datagrams_to_send()]
        if not inbox:
            break
        gsa_auth = {d[18] for d, _a in inbox} == {39}  # the round of the three GSA_AUTHs
        for d, a in inbox:
            ks.receive_datagram(d, a, NOW)
        events += drain(ks)
        if gsa_auth:
            assert ks.datagrams_to_send() == [] and ks.half_open == 3
            assert not any(isinstance(e, MemberRegistered) for e in events)
        before = commits[0]
        ks.commit(NOW)
        if gsa_auth:
            seen.append(commits[0] - before)
            assert ks.half_open == 0
        for d, a in ks.datagrams_to_send():
            members[a].receive_datagram(d, KS, NOW)
    assert seen == [1]  # one round of GSA_AUTHs, one store commit
    assert all(isinstance(e, GikeRegistered) for m in members.values() for e in drain(m))
    events += drain(ks)
    assert [e.identity.value for e in events if isinstance(e, MemberRegistered)] == list(who)
    assert f.provider.store.member_count(GID) == 3
