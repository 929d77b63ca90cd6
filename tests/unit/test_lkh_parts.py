"""gkm.lkh_parts: splitting an LKH update to a byte budget and applying its parts in order."""

from __future__ import annotations

import pytest

from gkm.lkh import LkhError, LkhEvicted, LkhMemberView, LkhTree, LkhUpdate
from gkm.lkh_parts import LkhPartOutOfOrder, apply_part, split_lkh_update


def _tree(n=512, gone=range(0, 512, 7)):
    tree = LkhTree.build(range(n))
    views = {m: LkhMemberView(tree.path(m), epoch=tree.epoch) for m in range(n)}
    update = tree.evict(list(gone))
    return tree, views, update


def test_parts_fit_the_budget_and_keep_order():
    _tree_, _views, update = _tree()
    for budget in (200, 1000, 4000):
        parts = split_lkh_update(update, budget)
        assert len(parts) > 1 and all(p.wire_size() <= budget for p in parts)
        assert all(p.epoch == update.epoch for p in parts)
        assert [e for p in parts for e in p.entries] == list(update.entries)
    assert split_lkh_update(update, update.wire_size()) == [update]


@pytest.mark.parametrize("degree", [2, 3])
def test_parts_carry_the_chains_and_sizes_they_would_compute(degree):
    """The splitter hands each part the chains and size it worked out while sizing it; they
    are what LkhUpdate computes for the same entries from scratch (what goes on the wire)."""
    tree = LkhTree.build(range(700), degree=degree)
    update = tree.evict(list(range(0, 700, 5)))
    assert update.min_wire_size() <= update.wire_size()
    for budget in (200, 1500, 8000):
        for p in split_lkh_update(update, budget):
            fresh = LkhUpdate(p.epoch, p.entries)
            assert p.chains() == fresh.chains() and p.wire_size() == fresh.wire_size() <= budget
            assert fresh.min_wire_size() <= fresh.wire_size()


def test_budget_too_small_or_entries_not_bottom_up():
    _tree_, _views, update = _tree()
    with pytest.raises(LkhError, match="cannot hold one entry"):
        split_lkh_update(update, 20)
    with pytest.raises(LkhError, match="entry 0 alone needs 72 bytes, over the 60 byte budget"):
        split_lkh_update(update, 60)
    with pytest.raises(LkhError, match="not bottom-up"):
        split_lkh_update(LkhUpdate(update.epoch, tuple(reversed(update.entries))), 1000)


def test_out_of_order_parts_refused_nothing_changes():
    tree, views, update = _tree()
    parts = split_lkh_update(update, 1000)
    n = len(parts)
    v = views[1]
    path, epoch = v.path, v.epoch
    with pytest.raises(LkhPartOutOfOrder, match=f"part 2/{n} without parts 1..1"):
        apply_part(v, parts[1], 2, n)
    p1 = apply_part(v, parts[0], 1, n)
    assert v.path == path and v.epoch == epoch and p1.applied == 1
    with pytest.raises(LkhPartOutOfOrder, match=f"part 3/{n} of epoch {update.epoch}, expected part 2/{n}"):
        apply_part(v, parts[2], 3, n, p1)
    with pytest.raises(LkhPartOutOfOrder, match="part 1/"):
        apply_part(v, parts[0], 1, n, p1)
    assert v.path == path and p1.applied == 1
    partial = p1
    for i in range(2, n + 1):
        partial = apply_part(v, parts[i - 1], i, n, partial)
    assert partial is None
    assert v.group_key[1] == tree.group_key()[1] and v.epoch == update.epoch


def test_evicted_member_learns_it_at_the_last_part():
    _tree_, views, update = _tree()
    parts = split_lkh_update(update, 1000)
    v, partial = views[7], None
    for i, p in enumerate(parts[:-1], 1):
        partial = apply_part(v, p, i, len(parts), partial)
    with pytest.raises(LkhEvicted):
        apply_part(v, parts[-1], len(parts), len(parts), partial)
    assert v.epoch == update.epoch - 1


def test_the_update_of_an_emptied_tree_is_one_part_that_evicts():
    tree = LkhTree.build(["a"])
    view = LkhMemberView(tree.path("a"), epoch=tree.epoch)
    update = tree.evict(["a"])
    assert split_lkh_update(update, 100) == [update]
    before = (view.path, view.epoch)
    with pytest.raises(LkhEvicted):
        apply_part(view, update, 1, 1)
    # an empty part of a larger update is malformed, not an eviction
    with pytest.raises(LkhError) as e:
        apply_part(view, update, 1, 2)
    assert not isinstance(e.value, LkhEvicted)
    assert (view.path, view.epoch) == before
