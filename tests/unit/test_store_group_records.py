"""The KeyStore methods the group controller's change records use (gkm.group.storage):
set_seq only moves forward, delete_teks, save_lkh_chunks checks the member count and restores
to the same tree as save_lkh."""

from __future__ import annotations

import pytest

from gkm.lkh import LkhTree
from gkm.store import SEQ_MAX, KeyState, KeyStore, StoreError

K = b"K" * 16


def _store(tmp_path):
    st = KeyStore(tmp_path / "s")
    st.add_group(1, b"d")
    st.add_kek(1, K, "aes-cbc-128", b"k" * 32, created=1, expires=10, state=KeyState.CURRENT)
    return st


def test_set_seq_moves_forward_only(tmp_path):
    st = _store(tmp_path)
    st.set_seq(1, K, 5)
    assert st.current_seq(1) == 5
    gen = st.generation
    for bad in (5, 4, 0, SEQ_MAX + 1):
        with pytest.raises(StoreError):
            st.set_seq(1, K, bad)
    with pytest.raises(StoreError, match="no KEK"):
        st.set_seq(1, b"X" * 16, 9)
    assert st.current_seq(1) == 5 and st.generation == gen  # refused: nothing written
    assert st.next_seq(1) == 6
    st.close()


def test_delete_teks(tmp_path):
    st = _store(tmp_path)
    for spi in (300, 301, 302):
        st.add_tek(1, spi, "a/b", b"t" * 20, created=1, expires=10)
    assert st.delete_teks(1, [300, 302, 999]) == 2
    assert [t.spi for t in st.teks(1)] == [301]
    st.close()


def test_save_lkh_chunks_is_save_lkh_from_values(tmp_path):
    st = _store(tmp_path)
    tree = LkhTree()
    for i in range(5):
        j = tree.join(f"m{i}")
        st.add_member(1, f"m{i}", "192.0.2.1", registered_at=1, leaf=j.leaf)
    with pytest.raises(StoreError, match="members table maps 5"):
        st.save_lkh_chunks(1, tree.meta(), tree.export_chunks(), members=4, full=True)
    st.save_lkh_chunks(1, tree.meta(), tree.export_chunks(), members=5, full=True)
    back = st.load_lkh(1)
    assert back.meta() == tree.meta() and sorted(back.export_chunks()) == sorted(tree.export_chunks())
    tree.mark_clean()
    tree.evict(["m2"])
    st.remove_member(1, "m2")
    st.save_lkh_chunks(1, tree.meta(), tree.export_chunks(dirty_only=True), members=4,
                       full=False)
    back = st.load_lkh(1)
    assert back.meta() == tree.meta() and sorted(back.export_chunks()) == sorted(tree.export_chunks())
    st.close()
