"""GROUPKEY-PULL between in-process members and a key server (PSK and ECDSA certificates)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from gkm.gdoi import MemberRefused, MemberRegistered, Registered, RegistrationFailed, RegistrationState
from gkm.ike import Phase1Established
from gkm.store import KeyState, KeyStore
from policy.model import AddressPreservation, Mode, SaDirection
from tests.unit.test_gdoi_support import (
    GID, KS, NOW, events, group_policy, key_server, member, member_addr, pump, register, store_snapshot,
)


def _registered(m) -> Registered:
    evs = [e for e in events(m)]
    assert len(evs) == 1 and isinstance(evs[0], Registered), evs
    return evs[0]


@pytest.mark.parametrize("cert", [False, True], ids=["psk", "ecdsa"])
def test_registration_both_sides_agree(tmp_path, cert):
    ks, store = key_server(tmp_path, cert=cert)
    who = ["gm1", "gm2"]
    ms = {member_addr(i): member(tmp_path, w, cert=cert) for i, w in enumerate(who)}
    register(ks, ms)
    regs = {a: _registered(m) for a, m in ms.items()}
    kev = [e for e in events(ks) if not isinstance(e, Phase1Established)]
    assert sorted(type(e).__name__ for e in kev) == ["MemberRegistered", "MemberRegistered"]
    assert all(m.state is RegistrationState.REGISTERED for m in ms.values())

    teks = {t.algorithm.split("/")[0]: t for t in store.teks(GID, KeyState.CURRENT)}
    kek = store.current_kek(GID)
    policy = group_policy(tmp_path)
    for (addr, reg), w in zip(regs.items(), who):
        assert reg.group_id == GID and reg.seq == 0 and reg.key_server == KS
        assert [t.spi for t in reg.teks] == [teks["video"].spi, teks["control"].spi]
        video, control = reg.teks
        # keys: member's view == store (AES-GCM: key || salt, kept whole as the kernel takes it)
        assert video.keymat == teks["video"].key and len(video.keymat) == 16 + 4 and video.auth_key == b""
        assert control.keymat == teks["control"].key and control.auth_key == teks["control"].auth_key
        assert len(control.keymat) == 32 and len(control.auth_key) == 64
        # selectors, mode, direction from policy
        sel = video.selector
        assert sel.src == ipaddress.ip_network("10.0.0.0/8") and sel.dst == ipaddress.ip_network("239.1.1.1/32")
        assert (sel.protocol, sel.src_port, sel.dst_port) == (17, 0, 5004)
        assert video.mode is Mode.TUNNEL and video.address_preservation is AddressPreservation.SOURCE_AND_DESTINATION
        assert video.suite == "aes-gcm-128" and control.suite == "aes-cbc-256-hmac-sha512"
        assert video.direction is SaDirection.SYMMETRIC
        sender = w == "gm1" and not cert  # the control TEK's sender rule is psk:gm1
        assert control.direction is (SaDirection.SENDER_ONLY if sender else SaDirection.RECEIVER_ONLY)
        assert 3590 <= video.lifetime_s <= 3600
        # KEK
        assert reg.kek.spi == kek.spi and reg.kek.iv + reg.kek.key == kek.key
        assert reg.kek.dst == ipaddress.ip_network("239.192.0.1/32") and reg.kek.dst_port == 848
        assert reg.kek.src == ipaddress.ip_network(KS[0] + "/32") and reg.kek.cipher == "aes-cbc-128"
        assert reg.kek.signature == "ecdsa-p256" and reg.kek.signing_public_key
        assert reg.lkh is None
        # secrets stay out of repr
        assert video.keymat.hex() not in repr(reg) and reg.kek.key.hex() not in repr(reg)
    want = ["dn:CN=gm1,O=msec test", "dn:CN=gm2,O=msec test"] if cert else ["key-id:gm1", "key-id:gm2"]
    assert [m.identity for m in store.members(GID)] == want
    assert [m.address for m in store.members(GID)] == [member_addr(0)[0], member_addr(1)[0]]
    assert [t.name for t in policy.teks] == ["video", "control"]


def test_registration_with_lkh_download_array(tmp_path):
    ks, store = key_server(tmp_path, lkh=True)
    ms = {member_addr(i): member(tmp_path, w) for i, w in enumerate(["gm1", "gm2"])}
    register(ks, ms)
    regs = [_registered(m) for m in ms.values()]
    tree = store.load_lkh(GID)
    assert tree is not None and len(tree) == 2
    for reg, w in zip(regs, ["gm1", "gm2"]):
        path = tree.path(f"key-id:{w}")
        assert [(k.level, k.handle, key) for k, key in path] == list(reg.lkh.keys)
    # both share the group key (last of the array)
    assert regs[0].lkh.keys[-1][2] == regs[1].lkh.keys[-1][2]
    ev = [e for e in events(ks) if isinstance(e, MemberRegistered)]
    assert len(ev) == 2  # a binary tree of depth 1 holds both: no update for gm1


@pytest.mark.parametrize("cert", [False, True], ids=["psk", "ecdsa"])
def test_unauthorized_identity_gets_notify_and_no_state(tmp_path, caplog, cert):
    ks, store = key_server(tmp_path, cert=cert)
    before = store_snapshot(store)
    m = member(tmp_path, "intruder", cert=cert)
    with caplog.at_level(logging.WARNING, logger="gkm.gdoi"):
        register(ks, {member_addr(0): m})
    (fail,) = events(m)
    assert isinstance(fail, RegistrationFailed) and fail.notify == 24 and "AUTHENTICATION-FAILED" in fail.reason
    refused = [e for e in events(ks) if isinstance(e, MemberRefused)]
    want = "CN=intruder,O=msec test" if cert else "intruder"
    assert len(refused) == 1 and refused[0].identity.value == want and refused[0].group_id == GID
    assert refused[0].cause == "not_authorized"
    assert store_snapshot(store) == before
    assert any(f"refused {'dn' if cert else 'key-id'} '{want}'" in r.getMessage() for r in caplog.records)
    assert not any("secret" in r.getMessage() for r in caplog.records)


def test_unknown_group_refused(tmp_path):
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1", gid=999)
    register(ks, {member_addr(0): m})
    (fail,) = events(m)
    assert isinstance(fail, RegistrationFailed) and fail.notify == 18
    assert store.group(999) is None and store.group(GID) is None


def test_wrong_psk_fails_phase1(tmp_path):
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1", secret=b"not the right key at all 123")
    register(ks, {member_addr(0): m})
    for t in (NOW + 40, NOW + 80):
        m.handle_timer(t)
        ks.handle_timer(t)
    evs = events(m)
    assert len(evs) == 1 and isinstance(evs[0], RegistrationFailed) and "phase 1" in evs[0].reason
    assert store.group(GID) is None


def test_restart_same_teks(tmp_path):
    ks, store = key_server(tmp_path)
    m1 = member(tmp_path, "gm1")
    register(ks, {member_addr(0): m1})
    r1 = _registered(m1)
    store.close()
    ks2, store2 = key_server(tmp_path)
    m2 = member(tmp_path, "gm2")
    register(ks2, {member_addr(1): m2})
    r2 = _registered(m2)
    assert [(t.spi, t.keymat, t.auth_key) for t in r1.teks] == [(t.spi, t.keymat, t.auth_key) for t in r2.teks]
    assert (r1.kek.spi, r1.kek.key, r1.kek.iv) == (r2.kek.spi, r2.kek.key, r2.kek.iv)
    assert len(store2.members(GID)) == 2
    store2.close()


def test_no_state_before_message3(tmp_path):
    """Message 3 lost: the key server has answered message 1 but changed nothing."""
    ks, store = key_server(tmp_path)
    before = store_snapshot(store)
    m = member(tmp_path, "gm1", max_retransmits=0, retransmit_timeout=1.0)
    pull_up = []

    def drop(direction, n, data):
        if direction == "up" and data[18] == 32:
            pull_up.append(data)
            return len(pull_up) == 2  # message 3
        return False

    register(ks, {member_addr(0): m}, drop=drop)
    assert ks.pending_count == 1
    assert store_snapshot(store) == before
    # the exchange times out on both sides, still without state
    m.handle_timer(NOW + 5)
    (fail,) = events(m)
    assert isinstance(fail, RegistrationFailed)
    ks.handle_timer(NOW + 31)
    assert ks.pending_count == 0 and store_snapshot(store) == before


def test_lost_message4_retransmitted_message3_answered(tmp_path):
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    downs = []

    def drop(direction, n, data):
        if direction == "down" and data[18] == 32:
            downs.append(data)
            return len(downs) == 2  # message 4 lost once
        return False

    register(ks, {member_addr(0): m}, drop=drop)
    assert events(m) == []
    m.handle_timer(NOW + 1.5)  # retransmits message 3
    pump(ks, {member_addr(0): m}, NOW + 1.5)
    _registered(m)
    assert len(store.members(GID)) == 1  # answered from the stored message 4, not registered twice
    assert len([e for e in events(ks) if isinstance(e, MemberRegistered)]) == 1


def test_retransmitted_message1_gets_same_message2(tmp_path):
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    downs = []

    def drop(direction, n, data):
        if direction == "down" and data[18] == 32:
            downs.append(data)
            return len(downs) == 1
        return False

    register(ks, {member_addr(0): m}, drop=drop)
    m.handle_timer(NOW + 1.5)
    log = pump(ks, {member_addr(0): m}, NOW + 1.5)
    _registered(m)
    msg2s = [d for (dr, _a, d) in log if dr == "down"][:1]
    assert msg2s == downs


def test_pending_exchange_bound(tmp_path):
    ks, store = key_server(tmp_path, max_pending=2, max_pending_per_sa=8)
    ms = {member_addr(i): member(tmp_path, w, max_retransmits=0) for i, w in enumerate(["gm1", "gm2", "gm1"])}

    def drop(direction, n, data):  # every message 3 is lost: exchanges stay pending
        return direction == "up" and data[18] == 32 and len(data) <= 28 + 64

    register(ks, ms, drop=drop)
    assert ks.pending_count == 2
    assert ks.pull.stats["dropped_full"] == 1
    assert store.group(GID) is None


def test_key_server_not_authorized_by_member(tmp_path):
    from tests.unit.test_gdoi_support import member_group
    from gkm.gdoi import MemberRegistration, phase1_config
    from policy.model import Decision

    ks, store = key_server(tmp_path)
    mg = member_group(tmp_path, "gm1")
    m = MemberRegistration(phase1_config(mg, key_server=KS), GID, KS,
                           authorize_key_server=lambda who: Decision(False, f"{who} is not our key server"))
    register(ks, {member_addr(0): m})
    (fail,) = events(m)
    assert isinstance(fail, RegistrationFailed) and "not authorized" in fail.reason
    assert store.group(GID) is None


def test_reregistration_same_identity_one_record(tmp_path):
    ks, store = key_server(tmp_path, lkh=True)
    m1 = member(tmp_path, "gm1")
    register(ks, {member_addr(0): m1})
    r1 = _registered(m1)
    m2 = member(tmp_path, "gm1")  # the same member after a reboot, from another address
    register(ks, {member_addr(1): m2}, NOW + 10)
    r2 = _registered(m2)
    assert [t.spi for t in r1.teks] == [t.spi for t in r2.teks]
    (rec,) = store.members(GID)
    assert rec.identity == "key-id:gm1" and rec.address == member_addr(1)[0]
    assert r1.lkh.keys == r2.lkh.keys  # same leaf, same path
    assert len(store.load_lkh(GID)) == 1


def test_member_refuses_policy_and_deletes_phase1(tmp_path):
    """A suite the member did not ask for: RegistrationFailed, Delete of the phase 1 SA sent
    (RFC 6407 section 3.3), and the key server registered nobody."""
    from gkm.ike import Phase1Deleted

    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1", allowed_suites=frozenset({"aes-cbc-128-hmac-sha256"}))
    register(ks, {member_addr(0): m})
    (fail,) = events(m)
    assert isinstance(fail, RegistrationFailed) and "aes-gcm-128 was not asked for" in fail.reason
    kev = events(ks)
    assert any(isinstance(e, Phase1Deleted) for e in kev)
    assert not any(isinstance(e, MemberRegistered) for e in kev)
    assert store.group(GID) is None and ks.pending_count == 0


def test_group_commit(tmp_path, monkeypatch):
    """Messages 3 read before the output is pulled are enrolled in one store transaction (one
    fsync'ed commit), and their messages 4 leave only after it."""
    ks, store = key_server(tmp_path)
    ms = {member_addr(i): member(tmp_path, w) for i, w in enumerate(["gm1", "gm2", "gm3"])}
    for m in ms.values():
        m.start(NOW)
    held = []

    def drop(direction, n, data):
        if direction == "up" and data[18] == 32 and len(data) == 28 + 48:  # message 3: HASH only
            held.append(data)
            return True
        return False

    pump(ks, ms, drop=drop)
    assert len(held) == 3 and ks.pending_count == 3
    outermost = []
    real = store.transaction

    def counting():
        outermost.append(not store.in_transaction)
        return real()

    monkeypatch.setattr(store, "transaction", counting)
    for addr, data in zip(ms, held):
        ks.receive_datagram(data, addr, NOW)
    assert outermost == [] and store.group(GID) is None  # nothing before the commit
    assert ks.datagrams_to_send() == [] and outermost == []  # taking the output commits nothing
    ks.commit(NOW)  # the shell's explicit durable step: one commit for the three
    out = ks.datagrams_to_send()
    assert len(out) == 3 and outermost.count(True) == 1
    assert len(store.members(GID)) == 3
    for data, to in out:
        ms[to].receive_datagram(data, KS, NOW)
    regs = [_registered(m) for m in ms.values()]
    # all three saw the tentative keys of message 2; the first enrollment persisted exactly those
    assert len({tuple(t.spi for t in r.teks) for r in regs}) == 1
    assert sorted(t.spi for t in regs[0].teks) == sorted(t.spi for t in store.teks(GID))


def test_store_failure_registers_nobody_then_retry(tmp_path, monkeypatch):
    """The enrollment's commit fails: nobody is registered, no message 4 leaves; the exchange
    goes back to pending, so the member's retransmitted message 3 registers it."""
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store, "add_member", boom)
    register(ks, {member_addr(0): m})
    assert events(m) == [] and store.group(GID) is None
    assert ks.pull.stats["store_error"] == 1 and ks.pending_count == 1
    assert not [e for e in events(ks) if isinstance(e, MemberRegistered)]
    monkeypatch.undo()
    m.handle_timer(NOW + 1.5)  # retransmits message 3
    pump(ks, {member_addr(0): m}, NOW + 1.5)
    assert isinstance(_registered(m), Registered) and len(store.members(GID)) == 1


def test_missing_signing_key_is_logged_not_raised(tmp_path, caplog):
    ks, store = key_server(tmp_path)
    (tmp_path / "push-signing.pem").unlink()
    m = member(tmp_path, "gm1", max_retransmits=0)
    with caplog.at_level(logging.ERROR, logger="gkm.gdoi"):
        register(ks, {member_addr(0): m})
    assert ks.pull.stats["keys_unavailable"] == 1 and ks.pull.stats["internal_error"] == 0
    assert any("keys unavailable" in r.getMessage() for r in caplog.records)
    assert store.group(GID) is None and ks.pending_count == 0


def test_reregister_on_same_phase1_sa_then_new_one(tmp_path):
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    register(ks, {member_addr(0): m})
    r1 = _registered(m)
    spi = m.phase1_sa.spi
    m.reregister(NOW + 5)
    pump(ks, {member_addr(0): m}, NOW + 5)
    r2 = _registered(m)
    assert m.phase1_sa.spi == spi and [t.spi for t in r2.teks] == [t.spi for t in r1.teks]
    assert len([e for e in events(ks) if isinstance(e, MemberRegistered)]) == 2
    # the phase 1 SA is deleted by the key server: the next reregister runs Main Mode again
    ks.phase1.delete_sa(spi, NOW + 6)
    pump(ks, {member_addr(0): m}, NOW + 6)
    assert events(m) == []  # already registered: nothing to report
    m.reregister(NOW + 7)
    pump(ks, {member_addr(0): m}, NOW + 7)
    r3 = _registered(m)
    assert m.phase1_sa.spi != spi and [t.spi for t in r3.teks] == [t.spi for t in r1.teks]
    with pytest.raises(RuntimeError):
        m2 = member(tmp_path, "gm2")
        m2.start(NOW)
        m2.reregister(NOW)


def test_rekey_source_defaults_to_phase1_address(tmp_path):
    from gkm.gdoi import KeyServerEngine, StoreKeysProvider, phase1_config
    from tests.unit.test_gdoi_support import ks_settings

    groups = [group_policy(tmp_path)]
    store = KeyStore(tmp_path / "s")
    ks = KeyServerEngine(groups, StoreKeysProvider(store), phase1_config(ks_settings(tmp_path, groups)))
    m = member(tmp_path, "gm1")
    register(ks, {member_addr(0): m})
    reg = _registered(m)
    assert reg.kek.src == ipaddress.ip_network(KS[0] + "/32") and reg.kek.src_port == 848
