"""Registrations enrolled in one batch (one store commit): the group's keys are checked and
persisted once, then each further member is one upsert (KeyStore.put_member); the result is
the same as enrolling them one by one."""

from __future__ import annotations

import random

import pytest

from gkm.gdoi import StoreKeysProvider
from gkm.store import KeyStore, StoreError
from tests.unit.test_gdoi_support import GID, group_policy, store_snapshot

NOW = 1_780_000_000


def test_put_member_replaces_refuses_leaf_and_unknown_group(tmp_path):
    st = KeyStore(tmp_path / "s")
    st.add_group(1, b"d")
    st.put_member(1, "a", "192.0.2.1", registered_at=5)
    m = st.put_member(1, "a", "192.0.2.2", registered_at=6)
    assert [(x.identity, x.address, x.registered_at, x.leaf) for x in st.members(1)] == [("a", "192.0.2.2", 6, None)]
    assert m == st.member(1, "a")
    with pytest.raises(StoreError):
        st.put_member(2, "a", "192.0.2.1", registered_at=1)
    st.add_member(1, "b", "192.0.2.3", registered_at=1, leaf=4)
    with pytest.raises(StoreError):
        st.put_member(1, "b", "192.0.2.9", registered_at=9)
    assert st.member(1, "b").leaf == 4 and st.member(1, "b").address == "192.0.2.3"


def _enroll_all(tmp_path, name, batch: bool, members):
    store = KeyStore(tmp_path / name)
    prov = StoreKeysProvider(store, random=random.Random(7).randbytes)  # same keys in both stores
    g = group_policy(tmp_path)
    keys = prov.peek(g, NOW)
    out = []
    if batch:
        with prov.batch():
            for who, addr in members:
                out.append(prov.enroll(g, keys, who, addr, NOW))
    else:
        for who, addr in members:
            out.append(prov.enroll(g, keys, who, addr, NOW))
    return store, out


def test_batch_enroll_same_as_one_by_one(tmp_path):
    members = [("key-id:gm1", "192.0.2.1"), ("key-id:gm2", "192.0.2.2"), ("key-id:gm1", "192.0.2.3"),
               ("key-id:gm3", "192.0.2.4")]
    a, ea = _enroll_all(tmp_path, "a", True, members)
    b, eb = _enroll_all(tmp_path, "b", False, members)
    assert store_snapshot(a) == store_snapshot(b)
    assert ea == eb
    assert [m.identity for m in a.members(GID)] == ["key-id:gm1", "key-id:gm2", "key-id:gm3"]
    assert a.member(GID, "key-id:gm1").address == "192.0.2.3"


def test_batch_rolled_back_as_a_whole(tmp_path):
    store = KeyStore(tmp_path / "s")
    prov = StoreKeysProvider(store)
    g = group_policy(tmp_path)
    keys = prov.peek(g, NOW)
    with pytest.raises(RuntimeError):
        with prov.batch():
            prov.enroll(g, keys, "key-id:gm1", "192.0.2.1", NOW)
            prov.enroll(g, keys, "key-id:gm2", "192.0.2.2", NOW)
            raise RuntimeError("commit failed")
    assert store.group(GID) is None
    # the next batch checks and persists the keys again
    with prov.batch():
        prov.enroll(g, keys, "key-id:gm2", "192.0.2.2", NOW)
    assert [m.identity for m in store.members(GID)] == ["key-id:gm2"]
