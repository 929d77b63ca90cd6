"""The group controller's eviction over a real store and real registrations (in-process GROUPKEY-PULL): the
remaining members' PushReceivers take both PUSHes (LKH update + new KEK, then the new TEKs
under it); the evicted one is told Evicted and cannot read the second; the first PUSH, which
the evicted member can decrypt, holds no new TEK key; the store says who is gone and why."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gkm.gdoi.push import Evicted, PushRejected, Rekeyed
from gkm.store import KeyState
from tests.unit.test_gdoi_push import WALL, Setup, events
from tests.unit.group_driver import drive
from tests.unit.test_gdoi_support import GID, NOW


def _evict(s, group, ids, reason):
    result, pushes, _, _ = drive(s.store, group, lambda c: c.evict(ids, reason, WALL), WALL)
    return result, [(p.seq, p.data) for p in pushes]


def test_evict_one_of_three(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    rs = {w: s.receiver(w) for w in s.regs}
    old = s.kek()
    old_teks = {t.spi for t in s.store.teks(GID, KeyState.CURRENT)}
    seq0 = s.store.current_seq(GID)
    plan, pushes = _evict(s, s.group, ["key-id:gm3", "key-id:ghost"], "lost")
    assert plan.evicted == ("key-id:gm3",) and plan.not_members == ("key-id:ghost",)
    assert plan.mode == "lkh" and [seq for seq, _ in pushes] == [seq0 + 1, 1]
    (_, lkh_push), (_, tek_push) = pushes
    new_teks = s.store.teks(GID, KeyState.CURRENT)
    assert {t.spi for t in new_teks} == set(plan.tek_spis) and not set(plan.tek_spis) & old_teks

    # what the evicted member can read: the first PUSH under the old KEK holds no TEK key
    dec = Cipher(algorithms.AES(old.keymat[16:]), modes.CBC(old.keymat[:16])).decryptor()
    plain = dec.update(lkh_push[28:]) + dec.finalize()
    assert all(t.key not in plain for t in new_teks)
    new_kek = s.store.current_kek(GID)
    assert new_kek.spi != old.spi and new_kek.key[16:] not in plain

    for w in ("gm1", "gm2"):
        r = rs[w]
        r.receive_datagram(lkh_push, None, NOW)
        r.receive_datagram(tek_push, None, NOW)
        evs = events(r)
        rekeyed = [e for e in evs if isinstance(e, Rekeyed)]
        assert not any(isinstance(e, (Evicted, PushRejected)) for e in evs), evs
        assert rekeyed[0].new_kek and rekeyed[0].kek.spi == new_kek.spi
        assert rekeyed[-1].seq == 1 and {t.spi for t in rekeyed[-1].teks} == set(plan.tek_spis)
    g3 = rs["gm3"]
    g3.receive_datagram(lkh_push, None, NOW)
    g3.receive_datagram(tek_push, None, NOW)
    ev = events(g3)
    assert ev[0] == Evicted(GID) and all(isinstance(e, PushRejected) for e in ev[1:]), ev

    assert {m.identity for m in s.store.members(GID)} == {"key-id:gm1", "key-id:gm2"}
    assert [(d.identity, d.reason) for d in s.store.denied(GID)] == [
        ("key-id:ghost", "lost"), ("key-id:gm3", "lost")]
    tree = s.store.load_lkh(GID)
    assert len(tree) == 2 and "key-id:gm3" not in tree


def test_evicting_nobody_registered_only_denies(tmp_path):
    s = Setup(tmp_path, who=("gm1",), lkh=True)
    seq0 = s.store.current_seq(GID)
    plan, pushes = _evict(s, s.group, ["key-id:later"], "pre-emptive")
    assert plan.evicted == () and pushes == [] and s.store.current_seq(GID) == seq0
    assert [d.identity for d in s.store.denied(GID)] == ["key-id:later"]


def test_large_batch_goes_out_in_parts_within_max_push_size(tmp_path):
    """600 more members on the group's tree (as registrations would put them), 200 of them
    evicted at once with max_push_size 2048: the LKH update leaves in parts with consecutive
    SEQs, no datagram over 2048 bytes, and a registered member's receiver ends with the new KEK
    and the new TEKs."""
    import dataclasses
    import random

    from gkm.gdoi.push import LkhPartReceived

    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=True)
    group = dataclasses.replace(s.group, kek=dataclasses.replace(s.group.kek, max_push_size=2048))
    tree = s.store.load_lkh(GID)
    r = s.receiver("gm1")
    extra = [f"key-id:x{i}" for i in range(600)]
    for i in extra:
        joined = tree.join(i)
        if joined.update is not None:  # the tree grew a level: gm1 learns the new root
            r.lkh_view.apply(joined.update)
        s.store.add_member(GID, i, "192.0.2.200", registered_at=WALL, leaf=joined.leaf)
    s.store.save_lkh(GID, tree)
    seq0 = s.store.current_seq(GID)
    gone = random.Random(3).sample(extra, 200)
    plan, pushes = _evict(s, group, gone, "batch")
    seqs = [seq for seq, _ in pushes]
    assert len(seqs) > 4 and seqs[:-1] == list(range(seq0 + 1, seq0 + len(seqs))) and seqs[-1] == 1
    assert max(len(d) for _, d in pushes) <= 2048
    for _, data in pushes:
        r.receive_datagram(data, None, NOW)
    evs = events(r)
    assert all(isinstance(e, LkhPartReceived) for e in evs[:len(seqs) - 2]), evs
    rekeyed = [e for e in evs if isinstance(e, Rekeyed)]
    assert len(rekeyed) == 2 and rekeyed[0].new_kek and rekeyed[0].kek.spi == s.store.current_kek(GID).spi
    assert {t.spi for t in rekeyed[1].teks} == set(plan.tek_spis)
    assert len(s.store.load_lkh(GID)) == 402
