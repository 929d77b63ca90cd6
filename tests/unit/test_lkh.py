"""gkm.lkh: the logical key hierarchy (RFC 2627) and the member view."""

from __future__ import annotations

import math

import pytest
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from gkm.lkh import (
    CHUNK_NODES,
    JoinResult,
    KeyId,
    LkhEntry,
    LkhError,
    LkhEvicted,
    LkhMemberView,
    LkhOutOfSync,
    LkhStaleUpdate,
    LkhTree,
    LkhUpdate,
    LkhUpdateError,
)


def closure(known: dict[int, bytes], updates) -> dict[int, bytes]:
    """Every key derivable from ``known`` (handle -> key) and the published updates."""
    known = dict(known)
    entries = [e for u in updates for e in u.entries]
    changed = True
    while changed:
        changed = False
        for e in entries:
            if e.new.handle not in known and e.wrap.handle in known:
                try:
                    known[e.new.handle] = aes_key_unwrap(known[e.wrap.handle], e.wrapped)
                except InvalidUnwrap:  # pragma: no cover - would be a bug in the server
                    raise AssertionError(f"server produced an entry that does not unwrap: {e}")
                changed = True
    return known


def grow(tree: LkhTree, views: dict, member) -> JoinResult:
    r = tree.join(member)
    if r.update is not None:
        for v in views.values():
            v.apply(r.update)
    views[member] = r.view()
    return r


def all_current(tree: LkhTree) -> dict[int, bytes]:
    """handle -> key of every node that holds a live key (vacated leaves excluded)."""
    out = {}
    for level, lv in enumerate(tree._levels):
        for index in range(len(lv)):
            if level == 0 and lv.counts[index] == 0:
                continue
            kid = tree.key_id(level, index)
            out[kid.handle] = tree._key(level, index)
    return out


# ---------------------------------------------------------------------------------------------
# Basic behaviour


@pytest.mark.parametrize("degree", [2, 3, 4, 16])
@pytest.mark.parametrize("backward", [False, True])
def test_joins_then_evictions_keep_members_in_sync(degree, backward):
    tree = LkhTree(degree=degree, backward_secrecy=backward)
    views: dict = {}
    for m in range(40):
        grow(tree, views, f"m{m}")
    for v in views.values():
        assert v.group_key == tree.group_key()
    gone = {m: views.pop(m) for m in ("m0", "m7", "m39", "m20")}
    update = tree.evict(list(gone))
    for v in views.values():
        v.apply(update)
        assert v.group_key == tree.group_key()
    for m, v in gone.items():
        before = v.path
        with pytest.raises(LkhEvicted):
            v.apply(update)
        assert v.path == before  # atomic


def test_path_is_leaf_to_root_and_matches_view():
    tree = LkhTree.build(range(100), degree=2)
    path = tree.path(42)
    assert [kid.level for kid, _ in path] == list(range(tree.depth + 1))
    assert path[0][0].index == 42
    assert path[-1] == tree.group_key()
    assert tree.depth == math.ceil(math.log2(100))


def test_build_matches_join_shape():
    built = LkhTree.build(range(37), degree=3)
    joined = LkhTree(degree=3)
    for m in range(37):
        joined.join(m)
    assert [len(lv) for lv in built._levels] == [len(lv) for lv in joined._levels]
    assert [list(lv.counts) for lv in built._levels] == [list(lv.counts) for lv in joined._levels]


def test_key_ids_unique_across_history():
    tree = LkhTree.build(range(64))
    seen = set(all_current(tree))
    total = len(seen)
    for batch in ([1], [2, 3], [40, 41, 63]):
        u = tree.evict(batch)
        for e in u.entries:
            seen.add(e.new.handle)
        for h in all_current(tree):
            seen.add(h)
    handles = [tree._levels[lv].handles[i] for lv in range(tree.depth + 1) for i in range(len(tree._levels[lv]))]
    assert len(handles) == len(set(handles))
    assert len(seen) > total


def test_vacated_leaves_are_reused_lowest_first_with_fresh_keys():
    tree = LkhTree.build(range(16))
    old_leaf_key = tree.path(9)[0]
    tree.evict([9, 3])
    assert tree._key(0, 9) == bytes(32)  # the evicted leaf key is wiped
    r = tree.join("new-a")
    assert r.leaf == 3
    r2 = tree.join("new-b")
    assert r2.leaf == 9
    assert r2.path[0][0].handle != old_leaf_key[0].handle
    assert r2.path[0][1] != old_leaf_key[1]
    assert len(tree._levels[0]) == 16  # no growth while vacancies remain
    r3 = tree.join("new-c")
    assert r3.leaf == 16


def test_join_without_backward_secrecy_needs_no_update_unless_tree_grows():
    tree = LkhTree(degree=2)
    updates = [tree.join(m).update for m in range(9)]
    # Growth happens at 2 -> 3 (depth 1 -> 2), 4 -> 5, 8 -> 9 members.
    grew = [i for i, u in enumerate(updates) if u is not None]
    assert grew == [2, 4, 8]
    assert all(len(updates[i].entries) == 1 for i in grew)


def test_backward_secrecy_join_renews_path():
    tree = LkhTree.build(range(8), backward_secrecy=True)
    old_root = tree.group_key()
    r = tree.join("late")
    assert tree.group_key()[0] != old_root[0]
    assert r.update is not None
    assert r.path[-1] == tree.group_key()


def test_restore_round_trip_and_dirty_chunks():
    tree = LkhTree.build(range(3 * CHUNK_NODES + 5), degree=2, key_len=16)
    tree.evict([7, 600])
    tree.join("x")
    state = (tree.meta(), list(tree.export_chunks()), list(tree.members()))
    again = LkhTree.restore(*state)
    assert again.group_key() == tree.group_key()
    assert again.path("x") == tree.path("x")
    assert again.path(5) == tree.path(5)
    assert again.meta() == tree.meta()
    assert again._vacant == [600]
    assert [list(lv.counts) for lv in again._levels] == [list(lv.counts) for lv in tree._levels]
    # after mark_clean, one eviction dirties about one chunk per level
    tree.mark_clean()
    tree.evict([5])
    dirty = list(tree.export_chunks(dirty_only=True))
    assert 0 < len(dirty) <= tree.depth + 1
    # keep restoring from old full state + the dirty chunks gives the new tree
    merged = {(lv, c): (h, k) for lv, c, h, k in state[1]}
    merged.update({(lv, c): (h, k) for lv, c, h, k in dirty})
    again2 = LkhTree.restore(tree.meta(), [(lv, c, h, k) for (lv, c), (h, k) in merged.items()], tree.members())
    assert again2.group_key() == tree.group_key()


@pytest.mark.parametrize("degree,batch", [(2, [5]), (2, [0, 1, 77, 200]), (3, [4, 5, 6, 130])])
def test_eviction_renews_exactly_the_evicted_paths(degree, batch):
    """Every ancestor of an evicted leaf gets a new key and a new (larger) handle, also the
    nodes no member is left under; every other node keeps its key; the vacated leaves are
    zeroed; the new keys differ from one another."""
    tree = LkhTree.build(range(300), degree=degree)
    before = {(level, i): (tree.key_id(level, i).handle, tree._key(level, i))
              for level, lv in enumerate(tree._levels) for i in range(len(lv))}
    first_new = tree.next_handle
    on_path = set()
    for leaf in batch:
        index = leaf
        for level in range(1, tree.depth + 1):
            index //= degree
            on_path.add((level, index))
    tree.evict(batch)
    new_keys = set()
    for (level, i), (handle, key) in before.items():
        now_handle, now_key = tree.key_id(level, i).handle, tree._key(level, i)
        if (level, i) in on_path:
            assert now_handle >= first_new and now_key != key, (level, i)
            new_keys.add(now_key)
        elif level == 0 and i in batch:
            assert now_key == bytes(tree.key_len)
        else:
            assert (now_handle, now_key) == (handle, key), (level, i)
    assert len(new_keys) == len(on_path)
    assert tree.next_handle == first_new + len(on_path)


def test_exported_chunks_are_copies():
    """A change record holds the chunks as they were: later changes to the tree (evictions,
    a join growing a level's buffer) leave an export already taken as it was."""
    tree = LkhTree.build(range(2 * CHUNK_NODES), degree=2)
    taken = list(tree.export_chunks())
    frozen = [(lv, c, bytes(h), bytes(k)) for lv, c, h, k in taken]
    tree.evict([3, CHUNK_NODES + 1])
    tree.join("grows")  # appends to the level buffers (no export may hold them)
    tree.join("grows-2")
    assert [(lv, c, bytes(h), bytes(k)) for lv, c, h, k in taken] == frozen
    assert all(type(h) is bytes and type(k) is bytes for _lv, _c, h, k in taken)


def test_restore_refuses_inconsistent_state():
    tree = LkhTree.build(range(10))
    chunks = list(tree.export_chunks())
    with pytest.raises(LkhError, match="missing"):
        LkhTree.restore(tree.meta(), chunks[1:], tree.members())
    with pytest.raises(LkhError, match="depth"):
        LkhTree.restore({**tree.meta(), "depth": 9}, chunks, tree.members())
    with pytest.raises(LkhError, match="leaf"):
        LkhTree.restore(tree.meta(), chunks, [("a", 1), ("b", 1)])
    bad = [(lv, c, h, k[:-1]) if lv == 0 else (lv, c, h, k) for lv, c, h, k in chunks]
    with pytest.raises(LkhError):
        LkhTree.restore(tree.meta(), bad, tree.members())


def test_misuse_errors():
    tree = LkhTree.build(["a", "b"])
    with pytest.raises(LkhError):
        tree.join("a")
    with pytest.raises(LkhError):
        tree.evict(["zz"])
    with pytest.raises(LkhError):
        tree.evict([])
    with pytest.raises(LkhError):
        tree.evict(["a", "a"])
    assert "a" in tree and len(tree) == 2  # failed evictions changed nothing
    with pytest.raises(LkhError):
        LkhTree(degree=1)
    with pytest.raises(LkhError):
        LkhTree(key_len=20)
    with pytest.raises(LkhError):
        LkhTree.build(["a", "a"])


def test_handle_space_exhaustion_is_an_error():
    tree = LkhTree.build(range(4))
    tree._next_handle = 0xFFFFFFFF
    before = tree.group_key()
    with pytest.raises(LkhError, match="exhausted"):
        tree.evict([0])
    with pytest.raises(LkhError, match="exhausted"):
        tree.join("x")
    assert tree.group_key() == before and 0 in tree and "x" not in tree


def test_no_key_material_in_reprs():
    tree = LkhTree.build(range(4))
    r = tree.join("x")
    u = tree.evict([0])
    view = r.view()
    texts = [repr(tree), repr(r), repr(u), repr(view), str(tree.group_key()[0])]
    for level in range(tree.depth + 1):
        for index in range(len(tree._levels[level])):
            key = tree._key(level, index)
            for t in texts:
                assert key.hex() not in t and repr(key) not in t


# ---------------------------------------------------------------------------------------------
# Message size


@pytest.mark.parametrize("degree", [2, 4])
def test_single_eviction_size_is_logarithmic(degree):
    n = 1 << 14
    tree = LkhTree.build(range(n), degree=degree, key_len=32)
    u = tree.evict([12345])
    depth = tree.depth
    assert len(u.entries) == (degree - 1) + degree * (depth - 1)
    # every entry: 16-byte LKH Key header + 40-byte wrapped key, plus array headers
    assert u.wire_size() <= len(u.entries) * 56 + len(u.chains()) * 16
    assert u.wire_size() < 4096


def test_batch_eviction_size_bound():
    tree = LkhTree.build(range(4096), degree=2)
    batch = list(range(0, 4096, 41))
    u = tree.evict(batch)
    assert len(u.entries) <= len(batch) * (1 + 2 * (tree.depth - 1))


@pytest.mark.slow
def test_evicting_one_of_a_million_costs_a_few_kilobytes():
    tree = LkhTree.build(range(1_000_000))
    u = tree.evict([777_777])
    assert u.wire_size() < 4096
    assert len(u.entries) == 39


def test_chains_map_onto_update_arrays():
    tree = LkhTree.build(range(32))
    u = tree.evict([5])
    chains = u.chains()
    assert sum(len(c) for c in chains) == len(u.entries)
    for chain in chains:
        for prev, nxt in zip(chain, chain[1:]):
            assert nxt.wrap.handle == prev.new.handle
    # the longest chain climbs from the sibling leaf to the root
    longest = max(chains, key=len)
    assert len(longest) == tree.depth
    assert longest[0].wrap.level == 0 and longest[-1].new == tree.group_key()[0]


# ---------------------------------------------------------------------------------------------
# Member view: malformed, unauthentic, stale updates


def _setup():
    tree = LkhTree.build(range(16))
    view = LkhMemberView(tree.path(0), epoch=tree.epoch)
    update = tree.evict([15])
    return tree, view, update


def _tamper(update: LkhUpdate, n: int, **changes) -> LkhUpdate:
    entries = list(update.entries)
    entries[n] = entries[n]._replace(**changes)
    return LkhUpdate(update.epoch, tuple(entries))


def _mine(update: LkhUpdate, view: LkhMemberView) -> int:
    held = {kid.handle for kid, _ in view.path}
    return next(i for i, e in enumerate(update.entries) if e.wrap.handle in held)


def test_member_view_applies_in_any_entry_order():
    tree, view, update = _setup()
    shuffled = LkhUpdate(update.epoch, tuple(reversed(update.entries)))
    view.apply(shuffled)
    assert view.group_key == tree.group_key()


def test_tampered_wrapped_key_is_refused_atomically():
    tree, view, update = _setup()
    n = _mine(update, view)
    w = bytearray(update.entries[n].wrapped)
    w[3] ^= 1
    before = view.path
    with pytest.raises(LkhUpdateError, match="integrity"):
        view.apply(_tamper(update, n, wrapped=bytes(w)))
    assert view.path == before and view.epoch == update.epoch - 1
    view.apply(update)
    assert view.group_key == tree.group_key()


def test_wrong_length_and_bad_levels_refused():
    tree, view, update = _setup()
    with pytest.raises(LkhUpdateError, match="bytes"):
        view.apply(_tamper(update, 0, wrapped=update.entries[0].wrapped[:-8]))
    e = update.entries[0]
    with pytest.raises(LkhUpdateError, match="cannot be wrapped"):
        view.apply(_tamper(update, 0, new=e.new._replace(level=e.wrap.level + 2)))
    with pytest.raises(LkhUpdateError, match="cannot be wrapped"):
        view.apply(_tamper(update, 0, new=e.new._replace(level=e.wrap.level - 1)))
    with pytest.raises(LkhUpdateError):
        view.apply(LkhUpdate(update.epoch, (("not", "an", "entry"),)))
    view.apply(update)


def test_entry_redirected_to_another_held_key_fails_integrity():
    tree, view, update = _setup()
    n = _mine(update, view)
    e = update.entries[n]
    other = view.path[1][0] if e.wrap.level == 0 else view.path[0][0]
    with pytest.raises(LkhUpdateError):
        view.apply(_tamper(update, n, wrap=other))


def test_old_handle_refused():
    tree, view, update = _setup()
    n = _mine(update, view)
    e = update.entries[n]
    held = view.path[e.new.level][0]
    with pytest.raises(LkhUpdateError, match="older"):
        view.apply(_tamper(update, n, new=e.new._replace(handle=held.handle - 1)))


def test_replay_and_gap_detected():
    tree, view, update = _setup()
    view.apply(update)
    with pytest.raises(LkhStaleUpdate):
        view.apply(update)
    u2 = tree.evict([14])
    u3 = tree.evict([13])
    with pytest.raises(LkhOutOfSync):
        view.apply(u3)
    view.apply(u2)
    view.apply(u3)
    assert view.group_key == tree.group_key()


def test_member_view_rejects_bad_path():
    with pytest.raises(LkhError):
        LkhMemberView([], epoch=0)
    with pytest.raises(LkhError):
        LkhMemberView([(KeyId(1, 0, 1), bytes(32))], epoch=0)
    with pytest.raises(LkhError):
        LkhMemberView([(KeyId(0, 0, 1), bytes(7))], epoch=0)


def test_forged_entry_without_key_cannot_reach_member():
    # An outsider (no key) cannot produce an entry a member accepts: random bytes fail the
    # key-wrap integrity check.
    import os

    tree, view, update = _setup()
    leaf = view.path[0][0]
    forged = LkhEntry(leaf, KeyId(1, 0, 10**6), os.urandom(40))
    with pytest.raises(LkhUpdateError, match="integrity"):
        view.apply(LkhUpdate(update.epoch, (forged,) + update.entries))


def test_wire_field_round_trip_drives_a_member():
    """Through the RFC 6407 field values only (no node indices): download, update arrays."""
    tree = LkhTree.build(range(1000), degree=2)
    r = tree.join("wire")
    view = LkhMemberView.from_download_array(r.download_array(), epoch=r.epoch)
    assert [lvl for lvl, _, _ in r.download_array()] == list(range(tree.depth + 1))
    for batch in ([3], [10, 11, 500, 999], [7]):
        u = tree.evict(batch)
        arrays = u.to_arrays()
        assert len(arrays) == len(u.chains())
        for (lvl, handle), keys in arrays:
            assert 0 <= lvl <= 0xFFFF and 0 < handle <= 0xFFFFFFFF
            assert all(len(data) == 40 for _, _, data in keys)
        view.apply(LkhUpdate.from_arrays(u.epoch, arrays))
        assert view.group_key[1] == tree.group_key()[1]
        assert view.group_key[0].handle == tree.group_key()[0].handle
    # and an evicted member driven the same way is refused
    gone = LkhMemberView.from_download_array(
        [(k.level, k.handle, key) for k, key in tree.path(42)], epoch=tree.epoch)
    u = tree.evict([42])
    with pytest.raises(LkhEvicted):
        gone.apply(LkhUpdate.from_arrays(u.epoch, u.to_arrays()))
    view.apply(LkhUpdate.from_arrays(u.epoch, u.to_arrays()))
    assert view.group_key[1] == tree.group_key()[1]


def test_truncated_update_refused():
    tree = LkhTree.build(range(16))
    view = LkhMemberView(tree.path(14), epoch=tree.epoch)  # sibling of the evicted leaf
    update = tree.evict([15])
    # drop the entries that renew the root: the member would renew lower keys only
    root_level = tree.depth
    cut = LkhUpdate(update.epoch, tuple(e for e in update.entries if e.new.level != root_level))
    with pytest.raises(LkhUpdateError, match="incomplete"):
        view.apply(cut)
    view.apply(update)
    assert view.group_key == tree.group_key()


def test_two_new_keys_for_one_level_refused():
    tree, view, update = _setup()
    n = _mine(update, view)
    e = update.entries[n]
    dup = e._replace(new=e.new._replace(handle=e.new.handle + 1000))
    with pytest.raises(LkhUpdateError, match="second"):
        view.apply(LkhUpdate(update.epoch, update.entries + (dup,)))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_evicting_every_member_gives_an_update_for_nobody_that_evicts_each(n):
    """The tree becomes empty: the root is renewed and wrapped for no one; every former member
    is told evicted (not "no change"), and the next joiner gets the renewed root."""
    ids = [f"m{i}" for i in range(n)]
    tree = LkhTree.build(ids)
    views = {m: LkhMemberView(tree.path(m), epoch=tree.epoch) for m in ids}
    old_root = tree.group_key()
    update = tree.evict(ids)
    assert update.entries == () and len(tree) == 0
    new_root = tree.group_key()
    assert new_root[0].handle > old_root[0].handle and new_root[1] != old_root[1]
    for m, v in views.items():
        before = (v.path, v.epoch)
        with pytest.raises(LkhEvicted):
            v.apply(update)
        assert (v.path, v.epoch) == before
    jr = tree.join("next")
    assert jr.update is None and jr.path[-1] == tree.group_key() == new_root
    joined = jr.view()
    other = tree.join("other")
    if other.update is not None:
        joined.apply(other.update)
    upd = tree.evict(["other"])
    joined.apply(upd)
    assert joined.group_key == tree.group_key()
