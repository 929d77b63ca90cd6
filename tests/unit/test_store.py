"""gkm.store: the key server's SQLite state, with real files in tmp_path."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gkm.lkh import LkhTree
from gkm.store import (
    DB_NAME,
    SCHEMA_VERSION,
    KeyState,
    KeyStore,
    SchemaVersionError,
    StoreError,
    StoreLocked,
)

REPO = Path(__file__).resolve().parents[2]
KEK_SPI = bytes(range(16))


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state):
    s = KeyStore(state)
    yield s
    s.close()


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def with_group(s: KeyStore, gid: int = 7, kek: bool = True) -> None:
    s.add_group(gid, b"\x01" * 32)
    if kek:
        s.add_kek(gid, KEK_SPI, "aes-256-keywrap", os.urandom(32), created=100, expires=200, state=KeyState.CURRENT)


# ---------------------------------------------------------------------------------------------
# Files


def test_modes_even_with_permissive_umask(state):
    old = os.umask(0)
    try:
        s = KeyStore(state)
        with_group(s)
        s.next_seq(7)
    finally:
        os.umask(old)
    try:
        assert mode(state) == 0o700
        names = {p.name for p in state.iterdir()}
        assert {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"} <= names
        for p in state.iterdir():
            assert mode(p) == 0o600, p
    finally:
        s.close()


def test_existing_loose_directory_is_tightened(state):
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    with KeyStore(state):
        assert mode(state) == 0o700


def test_existing_loose_database_is_tightened(state):
    with KeyStore(state) as s:
        with_group(s)
    os.chmod(state / DB_NAME, 0o644)
    with KeyStore(state) as s:
        assert s.group(7) is not None
    assert mode(state / DB_NAME) == 0o600


def test_single_writer_lock(state):
    with KeyStore(state):
        with pytest.raises(StoreLocked):
            KeyStore(state)
    KeyStore(state).close()  # released on close


def test_closed_store_refuses(state):
    s = KeyStore(state)
    s.close()
    with pytest.raises(StoreError):
        s.groups()


def test_wal_and_full_sync(store):
    db = store._conn
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_refused_untouched(state):
    KeyStore(state).close()
    raw = sqlite3.connect(state / DB_NAME)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        KeyStore(state)
    raw = sqlite3.connect(state / DB_NAME)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    raw.close()
    # and the lock was released by the failed open
    with pytest.raises(SchemaVersionError):
        KeyStore(state)


# ---------------------------------------------------------------------------------------------
# Groups, keys, SEQ


def test_groups(store):
    store.add_group(1, b"a" * 32)
    store.add_group(2, b"b" * 32)
    with pytest.raises(StoreError):
        store.add_group(1, b"c" * 32)
    store.set_policy_digest(2, b"d" * 32)
    assert [(g.group_id, g.policy_digest) for g in store.groups()] == [(1, b"a" * 32), (2, b"d" * 32)]
    store.remove_group(1)
    assert store.group(1) is None
    with pytest.raises(StoreError):
        store.remove_group(1)


def test_seq_monotonic_durable_and_per_kek(state):
    with KeyStore(state) as s:
        with_group(s)
        assert s.current_seq(7) == 0  # RFC 6407 3.2: zero before the first push
        seqs = [s.next_seq(7) for _ in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
    with KeyStore(state) as s:
        assert s.current_seq(7) == 5
        assert s.next_seq(7) == 6
        # a new KEK starts again at 1 (RFC 6407 5.7); the old one keeps its value
        s.add_kek(7, b"\xee" * 16, "aes-256-keywrap", os.urandom(32), created=150, expires=300)
        s.activate_kek(7, b"\xee" * 16)
        assert s.current_seq(7) == 0
        assert s.next_seq(7) == 1
        old = [k for k in s.keks(7) if k.spi == KEK_SPI][0]
        assert old.state is KeyState.OLD and old.seq == 6


def test_next_seq_refuses_inside_transaction_and_without_kek(store):
    with_group(store, 1, kek=False)
    with pytest.raises(StoreError, match="no current KEK"):
        store.next_seq(1)
    with pytest.raises(StoreError, match="unknown group"):
        store.next_seq(99)
    with_group(store, 2)
    with store.transaction():
        with pytest.raises(StoreError, match="outside"):
            store.next_seq(2)
    assert store.current_seq(2) == 0


def test_seq_exhaustion(store):
    with_group(store)
    store._conn.execute("UPDATE kek SET seq = 4294967295")
    with pytest.raises(StoreError, match="exhausted"):
        store.next_seq(7)


def test_kek_one_current(store):
    with_group(store)
    store.add_kek(7, b"\x02" * 16, "aes", os.urandom(32), created=150, expires=300, state=KeyState.CURRENT)
    assert store.current_kek(7).spi == b"\x02" * 16
    assert [k.state for k in store.keks(7)] == [KeyState.OLD, KeyState.CURRENT]
    with pytest.raises(StoreError):
        store.activate_kek(7, b"\x09" * 16)
    store.delete_kek(7, KEK_SPI)
    assert len(store.keks(7)) == 1


def test_tek_rotation_states(store):
    with_group(store)
    a = store.add_tek(7, 0x1000, "aes-gcm-16", os.urandom(36), created=100, expires=400, state=KeyState.CURRENT)
    b = store.add_tek(7, 0x2000, "aes-cbc+hmac-sha256", os.urandom(32), auth_key=os.urandom(32), created=300, expires=700)
    assert store.tek(7, 0x2000).state is KeyState.NEXT
    with pytest.raises(StoreError):
        store.add_tek(7, 0x1000, "aes-gcm-16", os.urandom(36), created=1, expires=2)
    with pytest.raises(StoreError):
        store.add_tek(7, 0, "aes-gcm-16", os.urandom(36), created=1, expires=2)
    current = store.rotate_teks(7)
    assert [t.spi for t in current] == [0x2000]
    assert current[0].key == b.key and current[0].auth_key == b.auth_key
    assert store.tek(7, 0x1000).state is KeyState.OLD
    with pytest.raises(StoreError, match="no next"):
        store.rotate_teks(7)
    assert store.purge_teks(7, now=399) == []
    assert store.purge_teks(7, now=400) == [0x1000]
    assert store.tek(7, 0x1000) is None
    store.set_tek_state(7, 0x2000, KeyState.OLD)
    assert store.teks(7, KeyState.CURRENT) == []
    with pytest.raises(StoreError):
        store.set_tek_state(7, 0x3000, KeyState.OLD)
    assert a.key != b.key


def test_restart_keeps_current_keys(state):
    with KeyStore(state) as s:
        with_group(s)
        kek = s.current_kek(7)
        tek = s.add_tek(7, 0xabc, "aes-gcm-16", os.urandom(36), created=1, expires=9, state=KeyState.CURRENT)
    with KeyStore(state) as s:
        assert s.current_kek(7) == kek
        assert s.teks(7, KeyState.CURRENT) == [tek]


def test_keys_are_blobs_and_never_in_reprs(store):
    with_group(store)
    tek = store.add_tek(7, 0x10, "aes-gcm-16", os.urandom(36), auth_key=os.urandom(20), created=1, expires=2)
    kek = store.current_kek(7)
    for obj, secret in ((tek, tek.key), (tek, tek.auth_key), (kek, kek.key)):
        assert secret.hex() not in repr(obj) and repr(secret) not in repr(obj)
    assert store._conn.execute("SELECT typeof(key), typeof(auth_key) FROM tek").fetchone() == ("blob", "blob")
    assert store._conn.execute("SELECT typeof(key) FROM kek").fetchone() == ("blob",)


def test_transaction_rolls_back_on_error(store):
    with_group(store)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_tek(7, 0x10, "aes-gcm-16", os.urandom(36), created=1, expires=2)
            with store.transaction():  # nested joins the outer one
                store.add_member(7, "gm1", "192.0.2.1", registered_at=5)
            raise RuntimeError("boom")
    assert store.teks(7) == [] and store.members(7) == []


# ---------------------------------------------------------------------------------------------
# Members and LKH


def test_members_add_remove_list(store):
    with_group(store)
    store.add_member(7, "gm-b", "192.0.2.2", registered_at=10, leaf=1)
    store.add_member(7, "gm-a", "2001:db8::1", registered_at=11, leaf=0)
    store.add_member(7, "gm-c", "192.0.2.3", registered_at=12)
    with pytest.raises(StoreError):
        store.add_member(7, "gm-a", "192.0.2.9", registered_at=13)
    with pytest.raises(StoreError):
        store.add_member(7, "gm-d", "192.0.2.9", registered_at=13, leaf=1)
    assert [m.identity for m in store.members(7)] == ["gm-a", "gm-b", "gm-c"]
    assert store.member(7, "gm-a").address == "2001:db8::1"
    assert store.remove_member(7, "gm-b") is True
    assert store.remove_member(7, "gm-b") is False
    assert store.member_count(7) == 2
    with pytest.raises(StoreError):
        store.add_member(99, "x", "y", registered_at=1)


def _register(s: KeyStore, tree: LkhTree, gid: int, member: str):
    with s.transaction():
        r = tree.join(member)
        s.add_member(gid, member, "192.0.2.1", registered_at=1, leaf=r.leaf)
        s.save_lkh(gid, tree)
    return r


def _evict(s: KeyStore, tree: LkhTree, gid: int, members: list[str]):
    with s.transaction():
        u = tree.evict(members)
        s.remove_members(gid, members)
        s.save_lkh(gid, tree)
    return u


def test_lkh_round_trip_across_reopen(state):
    with KeyStore(state) as s:
        with_group(s)
        assert s.load_lkh(7) is None
        tree = LkhTree(degree=3)
        views = {}
        for i in range(700):
            r = _register(s, tree, 7, f"gm{i}")
            if r.update:
                for v in views.values():
                    v.apply(r.update)
            views[f"gm{i}"] = r.view()
        u = _evict(s, tree, 7, ["gm3", "gm500"])
        for m in ("gm3", "gm500"):
            views.pop(m)
        for v in views.values():
            v.apply(u)
    with KeyStore(state) as s:
        again = s.load_lkh(7)
        assert again.group_key() == tree.group_key()
        assert again.meta() == tree.meta()
        for m in ("gm0", "gm699", "gm4"):
            assert again.path(m) == tree.path(m) == views[m].path
        # the reloaded tree carries on: evict, members follow
        u2 = _evict(s, again, 7, ["gm4"])
        views.pop("gm4")
        for v in views.values():
            v.apply(u2)
            assert v.group_key == again.group_key()
        r = _register(s, again, 7, "late")
        assert r.leaf == 3  # vacated leaves reused
    with KeyStore(state) as s:
        assert s.load_lkh(7).path("late") == again.path("late")


def test_lkh_incremental_save_writes_few_chunks(store):
    with_group(store)
    tree = LkhTree.build([f"m{i}" for i in range(5000)])
    with store.transaction():
        store._conn.executemany("INSERT INTO members (group_id, identity, address, registered_at, leaf) VALUES (7, ?, '192.0.2.1', 1, ?)", tree.members())
        store.save_lkh(7, tree)
    rows = store._conn.execute("SELECT COUNT(*) FROM lkh_chunk").fetchone()[0]
    assert rows > 20
    changes = store._conn.total_changes
    _evict(store, tree, 7, ["m1234"])
    # one member row + tree row + about one chunk per level + the state generation row
    assert store._conn.total_changes - changes <= 2 + tree.depth + 1 + 1


def test_lkh_save_refuses_mismatch_and_rollback_keeps_dirty(store):
    with_group(store)
    tree = LkhTree.build(["a", "b", "c"])
    with pytest.raises(StoreError, match="members"):
        store.save_lkh(7, tree)  # members table not updated
    assert store.load_lkh(7) is None
    with store.transaction():
        for m, leaf in tree.members():
            store.add_member(7, m, "192.0.2.1", registered_at=1, leaf=leaf)
        store.save_lkh(7, tree)
    with pytest.raises(RuntimeError):
        with store.transaction():
            tree.evict(["b"])
            store.remove_member(7, "b")
            store.save_lkh(7, tree)
            raise RuntimeError("crash before commit")
    # rolled back: the stored tree is the old one, and the in-memory tree is still dirty
    assert store.load_lkh(7).group_key() != tree.group_key()
    with store.transaction():
        store.remove_member(7, "b")
        store.save_lkh(7, tree)
    assert store.load_lkh(7).group_key() == tree.group_key()
    # members table edited behind the tree's back: load refuses
    store._conn.execute("DELETE FROM members WHERE identity = 'a'")
    with pytest.raises(StoreError, match="members"):
        store.load_lkh(7)


# ---------------------------------------------------------------------------------------------
# Killed processes


def _child(state: Path, body: str) -> subprocess.Popen:
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from gkm.store import KeyStore, KeyState
        s = KeyStore({str(state)!r})
        """
    ) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_seq_survives_sigkill(state):
    with KeyStore(state) as s:
        with_group(s)
    p = _child(state, """
        while True:
            print(s.next_seq(7), flush=True)
        """)
    last = 0
    try:
        for line in p.stdout:
            last = int(line)
            if last >= 200:
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with KeyStore(state) as s:
        # every SEQ handed out before the kill is durable; the next one is new
        assert s.current_seq(7) >= last
        assert s.next_seq(7) > last


def test_os_exit_after_commit_and_kill_inside_transaction(state):
    with KeyStore(state) as s:
        with_group(s)
    p = _child(state, """
        s.add_tek(7, 0x111, "aes-gcm-16", b"k" * 36, created=1, expires=2, state=KeyState.CURRENT)
        os._exit(0)
        """)
    assert p.wait() == 0
    p = _child(state, """
        with s.transaction():
            s.add_tek(7, 0x222, "aes-gcm-16", b"j" * 36, created=1, expires=2)
            s.add_member(7, "gm", "192.0.2.1", registered_at=1)
            print("inside", flush=True)
            time.sleep(60)
        """)
    try:
        assert p.stdout.readline().strip() == "inside"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with KeyStore(state) as s:
        assert [t.spi for t in s.teks(7)] == [0x111]
        assert s.tek(7, 0x111).key == b"k" * 36
        assert s.members(7) == []


def test_lkh_survives_sigkill_after_commit(state):
    with KeyStore(state) as s:
        with_group(s)
    p = _child(state, """
        from gkm.lkh import LkhTree
        tree = LkhTree.build([f"m{i}" for i in range(300)])
        with s.transaction():
            for m, leaf in tree.members():
                s.add_member(7, m, "192.0.2.1", registered_at=1, leaf=leaf)
            s.save_lkh(7, tree)
        with s.transaction():
            tree.evict(["m7"])
            s.remove_member(7, "m7")
            s.save_lkh(7, tree)
        kid, key = tree.group_key()
        print(kid.handle, key.hex(), flush=True)
        time.sleep(60)
        """)
    try:
        handle, key = p.stdout.readline().split()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with KeyStore(state) as s:
        tree = s.load_lkh(7)
        kid, k = tree.group_key()
        assert (kid.handle, k.hex()) == (int(handle), key)
        assert "m7" not in tree and len(tree) == 299
