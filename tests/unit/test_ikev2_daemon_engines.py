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


@pytest.mark.parametrize("junk", [b"", b"\x00" * 17, b"\x00" * 17 + b"\x20" + b"\x00" * 10])
def test_demux_drops_short_or_broken_ikev2(tmp_path, junk):
    _f, ks = key_server(tmp_path, both_groups(tmp_path))
    ks.receive_datagram(junk, GM, NOW)
    assert ks.datagrams_to_send() == [] and drain(ks) == []


def test_key_server_admit_hook_applies_to_g_ikev2(tmp_path):
    """The shell's own refusals (deny list) reach G-IKEv2 members too; the hook gets no phase
    1 SA certificate (GSA_AUTH does not hand it over yet)."""
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


def test_certificate_member_refused_over_g_ikev2_when_crls_are_configured(tmp_path):
    groups = both_groups(tmp_path)
    settings = ks_settings(tmp_path, groups, cert=True)
    f = GdoiFactory(kernel=False)
    crl = tmp_path / "ca.crl"
    crl.write_bytes(b"")  # not read here: the role loads CRLs; the engine only knows they exist
    for crls, want in (((), GikeRegistered), ((crl,), RegistrationFailed)):
        store = KeyStore(tmp_path / f"state{len(crls)}")
        ks = f.keyserver(dataclasses.replace(settings, crl_files=crls), store, NOW)
        gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1", cert=True), protocol="g-ikev2"), KS, NOW)
        em, eg = run(ks, gi)
        assert [type(e) for e in em] == [want], em
    assert any(isinstance(e, MemberRefused) and "CRL checks of G-IKEv2 certificates" in e.reason for e in eg)


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


@pytest.mark.parametrize("mlkem, methods, exchanges", [
    ("optional", (19, 36), 3),  # the default profile: ECDH P-256 then ML-KEM-768 over IKE_INTERMEDIATE
    ("no", (19,), 2),  # sa_init_config("no"): ECDH only, no IKE_INTERMEDIATE
])
def test_member_registration_takes_an_sa_init_config(tmp_path, mlkem, methods, exchanges):
    from gkm.ikev2.constants import ExchangeType, KeyExchangeMethod
    from gkm.ikev2.profile import sa_init_config

    _f, ks = key_server(tmp_path, both_groups(tmp_path))
    group = dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2")
    gi = GikeRegistration(group, KS, sa_init=sa_init_config(mlkem) if mlkem != "optional" else None)
    requests = []
    gi.start(NOW)
    for _ in range(6):
        out = gi.datagrams_to_send()
        if not out:
            break
        for d, _a in out:
            requests.append(d[18])  # the exchange type
            ks.receive_datagram(d, GM, NOW)
        for d, _a in ks.datagrams_to_send():
            gi.receive_datagram(d, KS, NOW)
    em = drain(gi)
    assert [type(e) for e in em] == [GikeRegistered]
    assert gi.gsa_auth.sa.methods == methods
    assert len(requests) == exchanges and (KeyExchangeMethod.ML_KEM_768 in methods) == (ExchangeType.IKE_INTERMEDIATE in requests)
    assert any(isinstance(e, MemberRegistered) for e in drain(ks))
