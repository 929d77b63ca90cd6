"""The key server's group controller (gkm.group) on a fake clock, over a real store filled by
real registrations (in-process GROUPKEY-PULL) and read by real members' PushReceivers: every
state and input (refused ones change nothing), the commit protocol (no datagram before the
commit; a failed commit sends nothing), automatic TEK and KEK rotation, purges, policy
changes, the eviction batch window, the change log replayed onto an empty store, and a
controller rebuilt from the store (a restart) that evicts again."""

from __future__ import annotations

import dataclasses

import pytest

from gkm.gdoi.push import Evicted, PushRejected, Rekeyed, TeksDeleted
from gkm.group import (ControllerRefused, ControllerState, EvictionScheduled, GroupController,
                       GroupRekeyed, KeysAnnounced, KeysPurged, KeysRotated, MembersEvicted)
from gkm.group.changes import (DenyAdded, KekActivated, KekAdded, KekDeleted, LkhSaved,
                               MembersRemoved, SeqReserved, TekAdded, TekStateChanged,
                               TeksPurged)
from gkm.group.state import GroupState
from gkm.group.storage import apply, load_state
from gkm.store import KeyState, KeyStore
from policy.model import kek_rekey_lead, tek_rekey_lead
from tests.unit.group_driver import commit, controller, signer_of
from tests.unit.test_gdoi_push import WALL, Setup, events
from tests.unit.test_gdoi_support import GID, NOW


def _snapshot(ctl: GroupController):
    """Everything an input could change, to check that a refused one changed nothing."""
    s = ctl.group_state
    tree = None if s.tree is None else (s.tree.meta(), list(s.tree.export_chunks()))
    return (ctl.state, ctl.policy, s.rows(), tree, ctl.pending_changes(), ctl.get_timer())


def _refused(ctl, call):
    before = _snapshot(ctl)
    with pytest.raises(ControllerRefused):
        call(ctl)
    assert _snapshot(ctl) == before


def _store_rows(store: KeyStore, gid=GID):
    return load_state(store, gid).rows()


def _tree(store: KeyStore, gid=GID):
    t = store.load_lkh(gid)
    return None if t is None else (t.meta(), sorted(t.export_chunks()), sorted(t.members()))


def _receive(r, pushes, now=NOW):
    for p in pushes:
        r.receive_datagram(p.data, None, now)
    return events(r)


# ------------------------------------------------------------------ states and refusals


def test_no_keys_refuses_rekey_and_evict_only_denies(tmp_path):
    s = Setup(tmp_path, who=())
    ctl = controller(s.store, s.group, WALL)
    assert ctl.state is ControllerState.NO_KEYS and ctl.get_timer() is None
    _refused(ctl, lambda c: c.rekey(WALL))
    _refused(ctl, lambda c: c.committed(WALL))
    _refused(ctl, lambda c: c.commit_failed())
    ctl.handle_timer(WALL + 10**6)  # nothing is due without keys
    assert ctl.pending_changes() == ()
    r = ctl.evict(["key-id:gm9"], "pre-emptive", WALL)
    assert r.mode == "none" and r.not_members == ("key-id:gm9",)
    assert ctl.pending_changes() == (DenyAdded(GID, "key-id:gm9", WALL, "pre-emptive"),)
    commit(s.store, ctl, WALL)
    assert [d.identity for d in s.store.denied(GID)] == ["key-id:gm9"]
    # the same identity again: nothing new to write
    assert ctl.evict(["key-id:gm9"], "again", WALL).mode == "none" and not ctl.pending_changes()


def test_invalid_inputs_change_nothing(tmp_path):
    s = Setup(tmp_path, who=("gm1",), lkh=True)
    ctl = controller(s.store, s.group, WALL)
    assert ctl.state is ControllerState.READY
    _refused(ctl, lambda c: c.evict([], "why", WALL))
    _refused(ctl, lambda c: c.evict([""], "why", WALL))
    _refused(ctl, lambda c: c.evict(["key-id:gm1"], "", WALL))
    _refused(ctl, lambda c: c.update_policy(dataclasses.replace(s.group, group_id=GID + 1), WALL))
    _refused(ctl, lambda c: c.resync(GroupState.empty(GID + 1), WALL))
    _refused(ctl, lambda c: c.committed(WALL))
    no_kek = dataclasses.replace(s.group, kek=None)
    c2 = GroupController(no_kek, load_state(s.store, GID), now=WALL)
    _refused(c2, lambda c: c.rekey(WALL))
    c3 = GroupController(s.group, load_state(s.store, GID), now=WALL, signer_error="no file")
    with pytest.raises(ControllerRefused, match="cannot load the PUSH signing key: no file"):
        c3.rekey(WALL)
    assert c3.get_timer() is None  # nothing it could send: no rotation deadline either
    assert s.store.current_seq(GID) == 0


def test_committing_refuses_inputs_and_holds_datagrams(tmp_path):
    s = Setup(tmp_path, who=("gm1",))
    ctl = controller(s.store, s.group, WALL)
    r = ctl.rekey(WALL)
    assert ctl.state is ControllerState.COMMITTING and ctl.get_timer() is None
    assert ctl.datagrams_to_send() == [] and ctl.next_event() is None  # not before the commit
    changes = ctl.pending_changes()
    assert isinstance(changes[0], SeqReserved) and changes[0].seq == 1
    for call in (lambda c: c.rekey(WALL), lambda c: c.evict(["key-id:gm1"], "x", WALL),
                 lambda c: c.update_policy(s.group, WALL),
                 lambda c: c.resync(load_state(s.store, GID), WALL)):
        _refused(ctl, call)
    ctl.handle_timer(WALL + 10**6)  # ignored while committing
    assert ctl.pending_changes() == changes
    assert s.store.current_seq(GID) == 0  # the controller wrote nothing itself
    pushes, evs = commit(s.store, ctl, WALL)
    assert ctl.state is ControllerState.READY and [p.seq for p in pushes] == list(r.seqs) == [1]
    assert evs == [GroupRekeyed(GID, "operator", (1,), r.tek_spis, (), None)]
    assert s.store.current_seq(GID) == 1
    assert {t.spi for t in s.store.teks(GID, KeyState.CURRENT)} == set(r.tek_spis)
    got = _receive(s.receiver(), pushes)
    assert isinstance(got[0], Rekeyed) and {t.spi for t in got[0].teks} == set(r.tek_spis)


def test_failed_commit_sends_nothing_and_waits_for_resync(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=True)
    ctl = controller(s.store, s.group, WALL)
    before = _store_rows(s.store), _tree(s.store)
    ctl.evict(["key-id:gm2"], "gone", WALL)
    ctl.commit_failed()  # e.g. disk full: the shell's transaction rolled back
    assert ctl.state is ControllerState.STALE and ctl.datagrams_to_send() == []
    assert ctl.next_event() is None and ctl.get_timer() is None
    for call in (lambda c: c.rekey(WALL), lambda c: c.evict(["key-id:gm2"], "x", WALL),
                 lambda c: c.update_policy(s.group, WALL), lambda c: c.committed(WALL),
                 lambda c: c.commit_failed()):
        with pytest.raises(ControllerRefused):
            call(ctl)
    ctl.handle_timer(WALL + 10**6)
    assert (_store_rows(s.store), _tree(s.store)) == before
    ctl.resync(load_state(s.store, GID), WALL)
    assert ctl.state is ControllerState.READY
    r = ctl.evict(["key-id:gm2"], "gone", WALL)
    pushes, _ = commit(s.store, ctl, WALL)
    assert r.mode == "lkh" and len(pushes) == 2
    assert [e for e in _receive(s.receiver("gm1"), pushes) if isinstance(e, Rekeyed)][-1].seq == 1


# ------------------------------------------------------------------ rotation


def test_tek_rotated_before_expiry_and_purged_after(tmp_path):
    s = Setup(tmp_path, who=("gm1",))
    ctl = controller(s.store, s.group, WALL)
    video = s.group.teks[0]
    cur = {t.algorithm.split("/")[0]: t for t in s.store.teks(GID, KeyState.CURRENT)}
    due = cur["video"].expires - tek_rekey_lead(s.group, video)
    assert tek_rekey_lead(s.group, video) == 360  # a tenth of the hour
    assert ctl.get_timer() == min(due, cur["control"].expires - 360)
    ctl.handle_timer(due - 1)
    assert ctl.pending_changes() == ()  # early: nothing
    ctl.handle_timer(due)
    pushes, evs = commit(s.store, ctl, due)
    (ev,) = evs
    assert isinstance(ev, KeysRotated) and ev.new_kek is None and len(ev.tek_spis) == 2
    assert set(ev.replaced) == {cur["video"].spi, cur["control"].spi}
    assert {t.spi for t in s.store.teks(GID, KeyState.CURRENT)} == set(ev.tek_spis)
    assert {t.spi for t in s.store.teks(GID, KeyState.OLD)} == set(ev.replaced)
    (got,) = _receive(s.receiver(), pushes)
    assert isinstance(got, Rekeyed) and got.seq == 1 and {t.spi for t in got.teks} == set(ev.tek_spis)
    # next deadline: the old TEKs' expiry (purge), then the new ones' rotation
    assert ctl.get_timer() == cur["video"].expires
    ctl.handle_timer(cur["video"].expires)
    assert ctl.pending_changes() == (TeksPurged(GID, tuple(sorted(
        ev.replaced, key=lambda x: (s.store.tek(GID, x).created, x)))),)
    _, evs = commit(s.store, ctl, cur["video"].expires)
    assert isinstance(evs[0], KeysPurged) and set(evs[0].tek_spis) == set(ev.replaced)
    assert s.store.teks(GID, KeyState.OLD) == []
    new_due = WALL + 0  # the new TEKs were made at `due`
    assert ctl.get_timer() == due + video.lifetime_s - 360 + new_due - WALL


def test_kek_rotated_within_its_lead_under_the_old_kek(tmp_path):
    s = Setup(tmp_path, who=("gm1",))
    r = s.receiver()
    ctl = controller(s.store, s.group, WALL)
    k = s.store.current_kek(GID)
    due = k.expires - kek_rekey_lead(s.group.kek)
    # the TEKs (1 h) come first: rotate them every time they are due until the KEK's turn
    now = WALL
    while (t := ctl.get_timer()) < due:
        now = t
        ctl.handle_timer(now)
        _receive(r, commit(s.store, ctl, now)[0])
        if s.store.teks(GID, KeyState.OLD):
            ctl.handle_timer(max(x.expires for x in s.store.teks(GID, KeyState.OLD)))
            commit(s.store, ctl, now)
    ctl.handle_timer(due)
    pushes, evs = commit(s.store, ctl, due)
    (ev,) = [e for e in evs if isinstance(e, KeysRotated)]
    new = s.store.current_kek(GID)
    assert ev.new_kek == new.spi != k.spi and new.seq == 0 and len(pushes) == 1
    assert pushes[0].kek_spi == k.spi  # sent under the old KEK (RFC 6407 section 4)
    got = [e for e in _receive(r, pushes) if isinstance(e, Rekeyed)]
    assert got[0].new_kek and got[0].kek.spi == new.spi
    # the next PUSH goes under the new KEK with SEQ 1, and the member takes it
    res = ctl.rekey(due + 1)
    pushes, _ = commit(s.store, ctl, due + 1)
    assert res.seqs == (1,) and pushes[0].kek_spi == new.spi
    assert [e.seq for e in _receive(r, pushes) if isinstance(e, Rekeyed)] == [1]
    # the old KEK row goes when it expires
    ctl.handle_timer(k.expires)
    assert KekDeleted(GID, k.spi) in ctl.pending_changes()


def test_rotation_after_downtime_goes_out_at_once(tmp_path):
    """A key server down past a TEK's rotation time rotates at its first timer."""
    s = Setup(tmp_path, who=("gm1",))
    t = s.store.teks(GID, KeyState.CURRENT)[0]
    late = t.expires - 10
    ctl = controller(s.store, s.group, late)
    assert ctl.get_timer() < late
    ctl.handle_timer(late)
    _, evs = commit(s.store, ctl, late)
    assert isinstance(evs[0], KeysRotated)


# ------------------------------------------------------------------ policy changes


def test_reload_removing_and_changing_teks(tmp_path):
    from policy.suites import ESP_SUITES

    s = Setup(tmp_path, who=("gm1",))
    r = s.receiver()
    ctl = controller(s.store, s.group, WALL)
    assert ctl.update_policy(s.group, WALL, signer=signer_of(s.group)) is None  # no change
    assert ctl.pending_changes() == ()
    cur = {t.algorithm.split("/")[0]: t.spi for t in s.store.teks(GID, KeyState.CURRENT)}
    # control removed, video's suite changed: delete both, one new TEK for video
    video = dataclasses.replace(s.group.teks[0], suite=ESP_SUITES["aes-gcm-256"])
    new = dataclasses.replace(s.group, teks=(video,))
    # the plan (msecctl reload --check) says it and changes nothing
    before = _snapshot(ctl)
    retire, fresh, new_kek = ctl.plan_policy(new)
    assert {t.spi for t in retire} == {cur["video"], cur["control"]}
    assert [tp.name for tp in fresh] == ["video"] and not new_kek
    assert _snapshot(ctl) == before
    longer = dataclasses.replace(s.group.teks[0], lifetime_s=s.group.teks[0].lifetime_s * 2)
    assert ctl.plan_policy(dataclasses.replace(s.group, teks=(longer, *s.group.teks[1:]))) == \
        ([], [], False)  # a lifetime applies from the next rotation
    res = ctl.update_policy(new, WALL, signer=signer_of(s.group))
    pushes, evs = commit(s.store, ctl, WALL)
    assert len(res.tek_spis) == 1 and len(pushes) == 1
    (ev,) = evs
    assert isinstance(ev, GroupRekeyed) and ev.cause == "policy"
    assert set(ev.deleted) == {cur["video"], cur["control"]}
    (t,) = s.store.teks(GID)  # the deleted ones are gone from the store too
    assert t.spi == res.tek_spis[0] and t.algorithm == "video/aes-gcm-256"
    got = _receive(r, pushes)
    assert any(isinstance(e, TeksDeleted) and set(e.spis) == set(ev.deleted) for e in got) \
        or any(isinstance(e, Rekeyed) and set(e.deleted) == set(ev.deleted) for e in got), got
    # a selector change rolls the TEK too
    moved = dataclasses.replace(video, selector=dataclasses.replace(video.selector, dst_port=6000))
    res2 = ctl.update_policy(dataclasses.replace(new, teks=(moved,)), WALL,
                             signer=signer_of(s.group))
    commit(s.store, ctl, WALL)
    assert [t.spi for t in s.store.teks(GID)] == list(res2.tek_spis)


def test_reload_without_kek_retires_changed_teks(tmp_path):
    from policy.suites import ESP_SUITES

    s = Setup(tmp_path, who=("gm1",))
    no_kek = dataclasses.replace(s.group, kek=None)
    ctl = GroupController(no_kek, load_state(s.store, GID), now=WALL)
    video = dataclasses.replace(no_kek.teks[0], suite=ESP_SUITES["aes-gcm-256"])
    assert ctl.update_policy(dataclasses.replace(no_kek, teks=(video, no_kek.teks[1])),
                             WALL) is None
    (c,) = ctl.pending_changes()
    assert isinstance(c, TekStateChanged) and c.state is KeyState.OLD
    commit(s.store, ctl, WALL)
    assert len(s.store.teks(GID, KeyState.CURRENT)) == 1


# ------------------------------------------------------------------ eviction


def test_eviction_without_lkh_deletes_kek_and_teks(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=False)
    r = s.receiver("gm1")
    ctl = controller(s.store, s.group, WALL)
    res = ctl.evict(["key-id:gm2"], "lost laptop", WALL)
    pushes, evs = commit(s.store, ctl, WALL)
    assert res.mode == "rekey-all" and len(pushes) == 1
    assert evs == [MembersEvicted(GID, ("key-id:gm2",), ("lost laptop",), "rekey-all", (1,))]
    assert s.store.current_kek(GID) is None and s.store.teks(GID, KeyState.CURRENT) == []
    assert ctl.state is ControllerState.NO_KEYS
    got = _receive(r, pushes)
    assert got and not any(isinstance(e, PushRejected) for e in got), got


def test_eviction_without_kek_only_removes_members(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2"))
    no_kek = dataclasses.replace(s.group, kek=None)
    ctl = GroupController(no_kek, load_state(s.store, GID), now=WALL)
    res = ctl.evict(["key-id:gm2"], "gone", WALL)
    assert res.mode == "no-kek"
    pushes, evs = commit(s.store, ctl, WALL)
    assert pushes == [] and evs[0].mode == "no-kek"
    assert [m.identity for m in s.store.members(GID)] == ["key-id:gm1"]
    assert len(s.store.teks(GID, KeyState.CURRENT)) == 2  # kept until they expire


def test_batch_window_collects_evictions_into_one_rekey(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    group = dataclasses.replace(s.group, kek=dataclasses.replace(s.group.kek, evict_batch_s=5))
    r = s.receiver("gm1")
    ctl = controller(s.store, group, WALL)
    a = ctl.evict(["key-id:gm2"], "one", WALL)
    assert a.mode == "scheduled" and a.scheduled_at == WALL + 5
    pushes, evs = commit(s.store, ctl, WALL)
    assert pushes == [] and evs == [EvictionScheduled(GID, ("key-id:gm2",), WALL + 5)]
    b = ctl.evict(["key-id:gm3"], "two", WALL + 2)
    assert b.scheduled_at == WALL + 5  # the window does not move
    commit(s.store, ctl, WALL + 2)
    assert ctl.get_timer() == WALL + 5 and ctl.pending_evictions() == ("key-id:gm2", "key-id:gm3")
    ctl.handle_timer(WALL + 4)
    assert ctl.pending_changes() == ()
    ctl.handle_timer(WALL + 5)
    pushes, evs = commit(s.store, ctl, WALL + 5)
    (ev,) = evs
    assert ev.evicted == ("key-id:gm2", "key-id:gm3") and ev.reasons == ("one", "two")
    assert ev.mode == "lkh" and len(pushes) == 2
    assert [m.identity for m in s.store.members(GID)] == ["key-id:gm1"]
    assert not any(isinstance(e, (Evicted, PushRejected)) for e in _receive(r, pushes))


def test_denied_members_left_registered_are_evicted_at_start(tmp_path):
    """A crash between the deny entry and the rekey (or a window that never closed): the
    next controller finds them and evicts them at its first timer."""
    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=True)
    s.store.deny(GID, "key-id:gm2", at=WALL, reason="crash test")
    ctl = controller(s.store, s.group, WALL + 1)
    assert ctl.get_timer() == WALL + 1
    ctl.handle_timer(WALL + 1)
    _, evs = commit(s.store, ctl, WALL + 1)
    assert evs[0].evicted == ("key-id:gm2",) and evs[0].mode == "lkh"


# ------------------------------------------------------------------ log and restart


def test_change_log_replayed_onto_an_empty_store_gives_the_same_store(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    ctl = controller(s.store, s.group, WALL)
    log = ctl.checkpoint()
    now = WALL
    for step in (lambda c: c.rekey(now), lambda c: c.evict(["key-id:gm3"], "a", now),
                 lambda c: c.evict(["key-id:zz"], "b", now)):
        step(ctl)
        log += ctl.pending_changes()
        commit(s.store, ctl, now)
    t = s.store.teks(GID, KeyState.CURRENT)[0]
    now = t.expires - 360
    ctl.handle_timer(now)
    log += ctl.pending_changes()
    commit(s.store, ctl, now)
    now = t.expires
    ctl.handle_timer(now)
    log += ctl.pending_changes()
    commit(s.store, ctl, now)
    kinds = {type(c) for c in log}
    assert {TekAdded, TekStateChanged, TeksPurged, KekAdded, KekActivated, SeqReserved,
            MembersRemoved, DenyAdded, LkhSaved} <= kinds
    other = KeyStore(tmp_path / "replica")
    apply(other, log)
    assert _store_rows(other) == _store_rows(s.store)
    assert _tree(other) == _tree(s.store)
    assert other.current_seq(GID) == s.store.current_seq(GID)


def test_restart_gives_the_same_tree_seq_and_keys_and_evicts_again(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    r1 = s.receiver("gm1")
    ctl = controller(s.store, s.group, WALL)
    ctl.evict(["key-id:gm3"], "first", WALL)
    pushes, _ = commit(s.store, ctl, WALL)
    _receive(r1, pushes)
    before = ctl.group_state
    tree = (before.tree.meta(), sorted(before.tree.export_chunks()), sorted(before.tree.members()))
    # "restart": the store closed and opened again, a new controller from it
    path = s.store.state_dir
    s.store.close()
    store = KeyStore(path)
    again = controller(store, s.group, WALL + 1)
    st = again.group_state
    assert st.rows() == before.rows()
    assert (st.tree.meta(), sorted(st.tree.export_chunks()), sorted(st.tree.members())) == tree
    assert st.current_kek().seq == before.current_kek().seq == 1
    res = again.evict(["key-id:gm2"], "second", WALL + 1)
    pushes, _ = commit(store, again, WALL + 1)
    assert res.mode == "lkh"
    got = _receive(r1, pushes)
    rekeyed = [e for e in got if isinstance(e, Rekeyed)]
    assert not any(isinstance(e, (Evicted, PushRejected)) for e in got), got
    assert rekeyed[-1].seq == 1 and {t.spi for t in rekeyed[-1].teks} == set(res.tek_spis)
    assert [m.identity for m in store.members(GID)] == ["key-id:gm1"]


# ------------------------------------------------------------------ the whole table

#: (state, input) -> "ok" (accepted), "refused" (ControllerRefused, nothing changed) or
#: "ignored" (accepted, changes nothing)
TABLE = {
    ControllerState.NO_KEYS: {"rekey": "refused", "evict": "ok", "update_policy": "ok",
                              "handle_timer": "ignored", "resync": "ok",
                              "committed": "refused", "commit_failed": "refused"},
    ControllerState.READY: {"rekey": "ok", "evict": "ok", "update_policy": "ok",
                            "handle_timer": "ok", "resync": "ok", "committed": "refused",
                            "commit_failed": "refused"},
    ControllerState.COMMITTING: {"rekey": "refused", "evict": "refused",
                                 "update_policy": "refused", "handle_timer": "ignored",
                                 "resync": "refused", "committed": "ok", "commit_failed": "ok"},
    ControllerState.STALE: {"rekey": "refused", "evict": "refused", "update_policy": "refused",
                            "handle_timer": "ignored", "resync": "ok", "committed": "refused",
                            "commit_failed": "refused"},
}


def _in_state(tmp_path, state):
    s = Setup(tmp_path, who=() if state is ControllerState.NO_KEYS else ("gm1", "gm2"),
              lkh=True)
    ctl = controller(s.store, s.group, WALL)
    if state in (ControllerState.COMMITTING, ControllerState.STALE):
        ctl.rekey(WALL)
    if state is ControllerState.STALE:
        ctl.commit_failed()
    assert ctl.state is state
    return s, ctl


@pytest.mark.parametrize("state", list(TABLE), ids=lambda s: s.name)
@pytest.mark.parametrize("name", list(TABLE[ControllerState.READY]))
def test_every_state_and_input(tmp_path, state, name):
    s, ctl = _in_state(tmp_path, state)
    t = s.store.teks(GID, KeyState.CURRENT)
    late = (t[0].expires if t else WALL) - 1  # a rotation is due (READY)
    inputs = {
        "rekey": lambda c: c.rekey(WALL),
        "evict": lambda c: c.evict(["key-id:gm2"], "test", WALL),
        "update_policy": lambda c: c.update_policy(s.group, WALL, signer=signer_of(s.group)),
        "handle_timer": lambda c: c.handle_timer(late),
        "resync": lambda c: c.resync(load_state(s.store, GID), WALL),
        "committed": lambda c: c.committed(WALL),
        "commit_failed": lambda c: c.commit_failed(),
    }
    want = TABLE[state][name]
    if want == "refused":
        _refused(ctl, inputs[name])
        return
    before = _snapshot(ctl)
    inputs[name](ctl)
    if want == "ignored":
        assert _snapshot(ctl) == before
    elif name in ("rekey", "evict", "handle_timer"):
        assert ctl.state is ControllerState.COMMITTING  # something to commit
        commit(s.store, ctl, WALL)
        assert ctl.state is state  # NO_KEYS: only a deny entry was written


def test_an_input_failing_half_way_leaves_the_store_untouched(tmp_path):
    """SEQ exhausted under the current KEK: a rekey is refused before anything; an eviction
    whose tree already changed in memory leaves the controller STALE, its deny entries and
    tree changes dropped, until it reads the store again."""
    from gkm.store import SEQ_MAX

    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=True)
    s.store.set_seq(GID, s.store.current_kek(GID).spi, SEQ_MAX)
    ctl = controller(s.store, s.group, WALL)
    _refused(ctl, lambda c: c.rekey(WALL))
    before = _store_rows(s.store), _tree(s.store)
    with pytest.raises(ControllerRefused, match="SEQ exhausted"):
        ctl.evict(["key-id:gm2"], "x", WALL)
    assert ctl.state is ControllerState.STALE and ctl.datagrams_to_send() == []
    assert (_store_rows(s.store), _tree(s.store)) == before
    ctl.resync(load_state(s.store, GID), WALL)
    assert ctl.state is ControllerState.READY and ctl.pending_changes() == ()
    assert _tree(s.store) == (ctl.group_state.tree.meta(),
                              sorted(ctl.group_state.tree.export_chunks()),
                              sorted(ctl.group_state.tree.members()))


def test_reload_with_a_new_signing_key_hands_members_the_new_public_key(tmp_path):
    """The old key signs one PUSH with a new KEK carrying the new public key; members take it
    and then accept PUSHes signed with the new key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from gkm.group import Signer

    s = Setup(tmp_path, who=("gm1",))
    r = s.receiver()
    ctl = controller(s.store, s.group, WALL)
    key = ec.generate_private_key(ec.SECP256R1())
    new = Signer(key, key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    res = ctl.update_policy(s.group, WALL, signer=new)
    pushes, evs = commit(s.store, ctl, WALL)
    assert res is not None and res.new_kek == s.store.current_kek(GID).spi and not res.tek_spis
    got = [e for e in _receive(r, pushes) if isinstance(e, Rekeyed)]
    assert got and got[0].new_kek, got
    ctl.rekey(WALL + 1)
    pushes, _ = commit(s.store, ctl, WALL + 1)
    assert [e.seq for e in _receive(r, pushes) if isinstance(e, Rekeyed)] == [1]


# ------------------------------------------------------------------ key server crash


def _restarted(s, now):
    path = s.store.state_dir
    s.store.close()
    s.store = KeyStore(path)
    return controller(s.store, s.group, now)


def test_announce_after_a_crash_between_commit_and_send_converges_with_a_new_seq(tmp_path):
    """kill -9 after the store commit, before the PUSH left: the restarted key server sends
    the committed keys again under a fresh SEQ; members that missed the lost PUSH install
    them, members that got it take only the SEQ; no SEQ is used twice."""
    s = Setup(tmp_path, who=("gm1", "gm2"))
    got, missed = s.receiver("gm1"), s.receiver("gm2")
    ctl = controller(s.store, s.group, WALL)
    r = ctl.rekey(WALL)
    pushes, _ = commit(s.store, ctl, WALL)  # durable: SEQ 1, the new TEKs
    _receive(got, pushes)  # one member got it before the process died; the other did not
    again = _restarted(s, WALL + 5)
    a = again.announce(WALL + 5)
    pushes2, evs = commit(s.store, again, WALL + 5)
    assert a.seqs == (2,) and [p.seq for p in pushes2] == [2] and a.new_kek is None
    assert set(a.tek_spis) == set(r.tek_spis)  # the committed keys, nothing new made
    assert evs == [KeysAnnounced(GID, 2, a.tek_spis)] and s.store.current_seq(GID) == 2
    for rcv in (got, missed):
        (ev,) = [e for e in _receive(rcv, pushes2, WALL + 5) if isinstance(e, Rekeyed)]
        assert ev.seq == 2 and {t.spi for t in ev.teks} == set(r.tek_spis)
    assert got.kek.spi == missed.kek.spi and got.last_seq == missed.last_seq == 2


def test_a_crash_before_the_commit_leaves_no_trace(tmp_path):
    s = Setup(tmp_path, who=("gm1",))
    before = _store_rows(s.store)
    ctl = controller(s.store, s.group, WALL)
    r = ctl.rekey(WALL)  # the process dies here: records made, never applied
    again = _restarted(s, WALL + 1)
    assert _store_rows(s.store) == before and s.store.current_seq(GID) == 0
    a = again.announce(WALL + 1)
    commit(s.store, again, WALL + 1)
    assert a.seqs == (1,) and not set(a.tek_spis) & set(r.tek_spis)  # never handed out


def test_announce_without_keys_is_refused(tmp_path):
    s = Setup(tmp_path, who=())
    _refused(controller(s.store, s.group, WALL), lambda c: c.announce(WALL))


@pytest.mark.parametrize("lkh", [True, False])
def test_dissolve_deletes_kek_and_teks_at_every_member(tmp_path, lkh):
    """msecctl group delete: one PUSH that every member accepts, deleting KEK and TEKs; the
    members leave the store (not the deny list: a group created again admits them)."""
    from gkm.group import GroupDissolved

    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=lkh)
    receivers = [s.receiver("gm1"), s.receiver("gm2")]
    ctl = controller(s.store, s.group, WALL)
    ev = ctl.dissolve(WALL)
    pushes, evs = commit(s.store, ctl, WALL)
    assert len(pushes) == 1 and evs == [ev] == [GroupDissolved(GID, ("key-id:gm1", "key-id:gm2"),
                                                               ev.seq)]
    assert ev.seq is not None
    assert s.store.current_kek(GID) is None and s.store.teks(GID, KeyState.CURRENT) == []
    assert s.store.members(GID) == [] and s.store.denied(GID) == []
    for r in receivers:
        got = _receive(r, pushes)
        assert any(isinstance(e, TeksDeleted) for e in got), got
        assert not any(isinstance(e, PushRejected) for e in got), got


def test_dissolve_without_kek_pushes_nothing(tmp_path):
    s = Setup(tmp_path, who=("gm1",))
    no_kek = dataclasses.replace(s.group, kek=None)
    ctl = GroupController(no_kek, load_state(s.store, GID), now=WALL)
    ev = ctl.dissolve(WALL)
    pushes, _evs = commit(s.store, ctl, WALL)
    assert pushes == [] and ev.seq is None and ev.members == ("key-id:gm1",)
    assert s.store.members(GID) == []


# ------------------------------------------------------------------ evicting the last members


def _evict_now(s, who, reason="test"):
    ctl = controller(s.store, s.group, WALL)
    ctl.evict(list(who), reason, WALL)
    pushes, evs = commit(s.store, ctl, WALL)
    (ev,) = evs
    return ctl, pushes, ev


def _register_more(s, who):
    """Register new members through the key server engine (its keys provider re-reads the
    store, as the daemon's shell makes it after a controller's commit)."""
    from tests.unit.test_gdoi_support import member, member_addr, register
    s.ks.pull.keys.invalidate(GID)
    ms = {member_addr(10 + i): member(s.tmp_path, w) for i, w in enumerate(who)}
    register(s.ks, ms)
    for w, m in zip(who, ms.values()):
        s.regs[w] = _registered_of(m)


def _registered_of(m):
    from tests.unit.test_gdoi_push import _registered
    return _registered(m)


def _setup(tmp_path, who):
    s = Setup(tmp_path, who=who, lkh=True)
    s.tmp_path = tmp_path
    return s


@pytest.mark.parametrize("who", [("gm1",), ("gm1", "gm2", "gm3")], ids=["only-member", "all-in-one-batch"])
def test_evicting_every_member_tells_each_it_is_evicted_and_the_next_joins_a_working_tree(tmp_path, caplog, who):
    s = _setup(tmp_path, who)
    rs = {w: s.receiver(w) for w in who}
    old_kek = s.kek()
    ctl, pushes, ev = _evict_now(s, [f"key-id:{w}" for w in who])
    # the decision (controller docstring): the usual LKH rekey, its update wrapped for nobody
    assert ev.mode == "lkh" and len(pushes) == 2 and s.store.members(GID) == []
    tree = s.store.load_lkh(GID)
    assert len(tree) == 0
    new_kek = s.store.current_kek(GID)
    assert new_kek.spi != old_kek.spi and new_kek.spi == pushes[1].kek_spi
    with caplog.at_level("DEBUG", logger="gkm.gdoi"):
        for w, r in rs.items():
            caplog.clear()
            assert _receive(r, pushes) == [Evicted(GID), PushRejected(
                GID, "evicted from the group: re-register", cause="not_member")]
            assert r.evicted and r.kek.spi == old_kek.spi  # no new key held
            assert r.lkh_view.path == tuple(
                (k, key) for k, key in s.receiver(w).lkh_view.path)  # its old keys, nothing new
            warnings = [m.getMessage() for m in caplog.records if m.levelname == "WARNING"]
            assert warnings == [f"gdoi member group {GID}: evicted by LKH update (SEQ {pushes[0].seq})"]
    # the next members to register join the renewed tree and its KEK, and follow rekeys
    # (the deny list is lifted for two of them: they come back as new members)
    for w in ("gm1", "gm2"):
        s.store.lift(GID, f"key-id:{w}")
    _register_more(s, ("gm1", "gm2"))
    assert s.regs["gm1"].kek.spi == new_kek.spi
    tree = s.store.load_lkh(GID)
    assert s.regs["gm1"].lkh.keys[-1][2] == tree.group_key()[1]
    r8 = s.receiver("gm1")
    ctl, pushes, ev = _evict_now(s, ["key-id:gm2"])
    evs = _receive(r8, pushes)
    assert [type(e) for e in evs] == [Rekeyed, TeksDeleted, Rekeyed], evs
    assert r8.kek.spi == s.store.current_kek(GID).spi
    # the earlier evicted receivers read none of it
    for r in rs.values():
        assert all(isinstance(e, PushRejected) for e in _receive(r, pushes))


@pytest.mark.parametrize("who,gone", [
    (("gm1", "gm2"), ("gm2",)),
    (("gm1", "gm2", "gm3"), ("gm2", "gm3")),
    (("gm1", "gm2", "gm3"), ("gm1", "gm3")),
], ids=["two-one-evicted", "three-down-to-the-first", "three-down-to-the-middle"])
def test_evicting_down_to_one_member_it_follows_the_others_are_evicted(tmp_path, who, gone):
    s = _setup(tmp_path, who)
    rs = {w: s.receiver(w) for w in who}
    ctl, pushes, ev = _evict_now(s, [f"key-id:{w}" for w in gone])
    assert ev.mode == "lkh"
    (left,) = [w for w in who if w not in gone]
    evs = _receive(rs[left], pushes)
    assert [type(e) for e in evs] == [Rekeyed, TeksDeleted, Rekeyed], evs
    assert rs[left].kek.spi == s.store.current_kek(GID).spi
    assert rs[left].lkh_view.group_key[1] == s.store.load_lkh(GID).group_key()[1]
    for w in gone:
        assert _receive(rs[w], pushes)[0] == Evicted(GID)
        assert rs[w].kek.spi != s.store.current_kek(GID).spi
