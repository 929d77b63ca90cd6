"""Property-based tests of gkm.lkh: after any sequence of joins and evictions every member
agrees with the server, evicted members (even colluding) learn no current key, joiners learn no
past group key, and eviction cost stays logarithmic."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gkm.lkh import LkhEvicted, LkhTree
from tests.unit.test_lkh import all_current, closure


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    degree=st.integers(2, 4),
    backward=st.booleans(),
    initial=st.integers(0, 12),
    data=st.data(),
)
def test_any_sequence_of_joins_and_evictions(degree, backward, initial, data):
    tree = LkhTree.build([f"i{n}" for n in range(initial)], degree=degree, backward_secrecy=backward)
    views = {m: type_view(tree, m) for m, _ in tree.members()}
    tenure_keys: dict[int, dict[int, bytes]] = {}  # tenure -> handle -> key held at start
    tenure_of: dict[str, int] = {}
    joined_after: dict[int, list] = {}  # tenure -> group keys it must never derive
    departed: set[int] = set()
    updates = []
    roots = [tree.group_key()]
    for m in views:
        t = len(tenure_keys)
        tenure_keys[t] = {kid.handle: key for kid, key in tree.path(m)}
        tenure_of[m] = t
    counter = 0
    for _ in range(data.draw(st.integers(1, 14), label="steps")):
        current = sorted(views)
        if current and data.draw(st.booleans(), label="evict?"):
            batch = data.draw(st.lists(st.sampled_from(current), min_size=1, max_size=min(4, len(current)), unique=True), label="batch")
            depth = tree.depth
            update = tree.evict(batch)
            updates.append(update)
            assert len(update.entries) <= len(batch) * ((degree - 1) + degree * (depth - 1))
            gone_views = {m: views.pop(m) for m in batch}
            for m, gone in gone_views.items():
                departed.add(tenure_of.pop(m))
                if views:  # someone remains, so the group key was sent and must be out of reach
                    try:
                        gone.apply(update)
                    except LkhEvicted:
                        pass
                    else:
                        raise AssertionError(f"evicted {m} applied the update")
            for v in views.values():
                v.apply(update)
        else:
            # rejoin an old name sometimes, else a new one
            name = data.draw(st.sampled_from([f"j{counter}"] + [f"i{n}" for n in range(initial) if f"i{n}" not in views]), label="joiner")
            counter += 1
            r = tree.join(name)
            if r.update is not None:
                updates.append(r.update)
                for v in views.values():
                    v.apply(r.update)
            views[name] = r.view()
            t = len(tenure_keys)
            tenure_keys[t] = {kid.handle: key for kid, key in r.path}
            tenure_of[name] = t
            # Roots the joiner must never derive: all earlier ones, and with backward secrecy
            # also the one current just before it joined.
            # With backward secrecy the joiner must never derive any group key that existed
            # before it joined.  (Without it, nothing is promised: the node keys it receives
            # wrapped earlier group keys in recorded rekey messages.)
            if backward:
                joined_after[t] = list(roots)
        roots.append(tree.group_key())
        # every current member agrees with the server, key by key along its path
        for m, v in views.items():
            assert v.group_key == tree.group_key()
            assert v.path == tree.path(m)

    # Forward secrecy: the coalition of every departed tenure, with every update ever sent,
    # derives no key the server currently uses.
    coalition: dict[int, bytes] = {}
    for t in departed:
        coalition.update(tenure_keys[t])
    learned = closure(coalition, updates)
    live = all_current(tree)
    leaked = {h for h in learned if h in live and learned[h] == live[h]}
    assert not leaked, f"departed members derive current keys {leaked}"
    if views:
        assert tree.group_key()[0].handle not in learned

    # Backward secrecy.
    for t, n_before in joined_after.items():
        known = closure(tenure_keys[t], updates)
        for kid, key in n_before:
            assert known.get(kid.handle) != key, f"tenure {t} derives an older group key {kid}"

    # Key handles are unique across the whole history: one handle, one node, one key.
    owner: dict[int, tuple] = {}
    for u in updates:
        for e in u.entries:
            for kid in (e.wrap, e.new):
                assert owner.setdefault(kid.handle, (kid.level, kid.index)) == (kid.level, kid.index)

def type_view(tree: LkhTree, member):
    from gkm.lkh import LkhMemberView

    return LkhMemberView(tree.path(member), epoch=tree.epoch, degree=tree.degree)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), degree=st.integers(2, 6), data=st.data())
def test_restore_after_random_history_is_identical(n, degree, data):
    tree = LkhTree.build(range(n), degree=degree, key_len=16)
    victims = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    if victims:
        tree.evict(victims)
    for j in range(data.draw(st.integers(0, 5))):
        tree.join(f"x{j}")
    again = LkhTree.restore(tree.meta(), tree.export_chunks(), tree.members())
    assert again.group_key() == tree.group_key()
    assert again.meta() == tree.meta()
    for m, _ in tree.members():
        assert again.path(m) == tree.path(m)
