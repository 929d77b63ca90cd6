"""The key store's state anchor (gkm.store_anchor) with the real SQLite: a database deleted,
truncated, replaced or restored from an older copy is refused with what happened and how to
recover; --accept-state serves it with the SEQ raised; a corrupt database and a full file
system give clear errors (StoreCorrupt, StoreFull), nothing changed, and recovery works."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from gkm.store import (DB_NAME, KeyState, KeyStore, StateRegressed, StoreCorrupt, StoreFull)
from gkm.store_anchor import ANCHOR_NAME


def _group(store: KeyStore, gid: int = 1001) -> None:
    store.add_group(gid, b"d" * 32)
    store.add_kek(gid, bytes(range(16)), "aes-cbc-128", b"k" * 16, created=1, expires=10**10,
                  state=KeyState.CURRENT)
    store.add_tek(gid, 0x1234, "rtp/aes-gcm-128", b"t" * 20, created=1, expires=10**10,
                  state=KeyState.CURRENT)


def _seqs(state, n: int) -> None:
    with KeyStore(state) as s:
        for _ in range(n):
            s.next_seq(1001)


def test_anchor_is_written_private_and_follows_key_changes_only(tmp_path):
    state = tmp_path / "state"
    with KeyStore(state) as s:
        _group(s)
        g0 = s.generation
        a = json.loads((state / ANCHOR_NAME).read_text())
        assert a["generation"] == g0 and a["groups"]["1001"]["seq"] == 0
        assert stat.S_IMODE((state / ANCHOR_NAME).stat().st_mode) == 0o600
        s.put_member(1001, "key-id:gm1", "192.0.2.1:848", registered_at=5)
        assert s.generation == g0  # member rows alone: no anchor write on the hot path
        assert s.next_seq(1001) == 1
        a = json.loads((state / ANCHOR_NAME).read_text())
        assert a["generation"] == g0 + 1 and a["groups"]["1001"]["seq"] == 1
        assert a["groups"]["1001"]["kek_spi"] == bytes(range(16)).hex()
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_deleted_or_truncated_database_is_refused(tmp_path, how):
    state = tmp_path / "state"
    with KeyStore(state) as s:
        _group(s)
    _seqs(state, 3)
    if how == "deleted":
        (state / DB_NAME).unlink()
    else:
        (state / DB_NAME).write_bytes(b"")
    with pytest.raises(StateRegressed) as e:
        KeyStore(state)
    text = str(e.value)
    assert "deleted or truncated" in text and ("missing" if how == "deleted" else "empty (0 bytes)") in text
    assert "group 1001: SEQ 3 already sent" in text and "--accept-state" in text
    assert (state / DB_NAME).exists() == (how == "truncated")  # refused before creating anything
    # the operator accepts: fresh state, new anchor; the next start is normal
    with KeyStore(state, accept_state=True) as s:
        assert s.groups() == [] and "deleted or truncated" in s.accepted[0]
    with KeyStore(state) as s:
        assert s.groups() == []


def test_database_restored_from_an_older_copy_is_refused_then_accepted_with_seq_raised(tmp_path):
    state = tmp_path / "state"
    with KeyStore(state) as s:
        _group(s)
        s.next_seq(1001)
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(state / DB_NAME, backup)  # closed: the WAL is checkpointed into the file
    _seqs(state, 4)  # SEQ 5 sent since
    shutil.copy(backup, state / DB_NAME)
    with pytest.raises(StateRegressed) as e:
        KeyStore(state)
    text = str(e.value)
    assert "restored from an older copy" in text
    assert "group 1001: SEQ 1 in the database, 5 already sent" in text
    with KeyStore(state, accept_state=True) as s:
        assert s.current_seq(1001) == 5
        assert "SEQ raised from 1 to 5" in s.accepted[-1]
        assert s.next_seq(1001) == 6  # members, who saw 5, accept it
    with KeyStore(state) as s:
        assert s.current_seq(1001) == 6 and s.accepted == []


def test_another_database_is_refused(tmp_path):
    state, other = tmp_path / "state", tmp_path / "other"
    with KeyStore(state) as s:
        _group(s)
    with KeyStore(other) as s:
        _group(s)
        for _ in range(3):
            s.next_seq(1001)
    shutil.copy(other / DB_NAME, state / DB_NAME)
    with pytest.raises(StateRegressed, match="not the database this key server last used"):
        KeyStore(state)


def test_anchor_kept_apart_from_the_state_dir(tmp_path):
    state, anchor = tmp_path / "state", tmp_path / "elsewhere" / "ks.anchor"
    anchor.parent.mkdir()
    with KeyStore(state, anchor=anchor) as s:
        _group(s)
        s.next_seq(1001)
    assert anchor.exists() and not (state / ANCHOR_NAME).exists()
    shutil.rmtree(state)  # a whole state directory lost (or rolled back) is still noticed
    with pytest.raises(StateRegressed, match="deleted or truncated"):
        KeyStore(state, anchor=anchor)


def test_unreadable_anchor_is_refused(tmp_path):
    state = tmp_path / "state"
    with KeyStore(state) as s:
        _group(s)
    (state / ANCHOR_NAME).write_text("{not json")
    with pytest.raises(StateRegressed, match="unreadable"):
        KeyStore(state)
    with KeyStore(state, accept_state=True) as s:
        assert s.group(1001) is not None
    with KeyStore(state):
        pass


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_corrupt_database_gets_a_clear_error(tmp_path, damage):
    state = tmp_path / "state"
    with KeyStore(state) as s:
        _group(s)
        with s.transaction():
            for i in range(300):
                s.add_member(1001, f"m{i}", "192.0.2.1:848", registered_at=1)
    db = state / DB_NAME
    if damage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:  # keep the header, overwrite the table pages
        data = bytearray(db.read_bytes())
        data[4096:] = b"\xff" * (len(data) - 4096)
        db.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as e:
        KeyStore(state)
    assert str(db) in str(e.value) and "not a usable msec database" in str(e.value)
    assert "backup" in str(e.value)


def test_full_file_system_is_store_full_nothing_changed_and_recovers(tmp_path):
    """SQLITE_FULL from the real SQLite (its page limit: the same error a full disk gives)."""
    state = tmp_path / "state"
    with KeyStore(state) as s:
        _group(s)
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
        s._conn.execute(f"PRAGMA max_page_count = {pages}")
        seq = s.current_seq(1001)
        with pytest.raises(StoreFull) as e:
            with s.transaction():
                for i in range(2000):
                    s.add_member(1001, f"member-{i:05d}-" + "x" * 100, "192.0.2.1:848", registered_at=1)
                s.next_seq  # noqa: B018 (never reached)
        text = str(e.value)
        assert text.startswith("disk full: cannot write the key server state") and str(s.path) in text
        assert "bytes free" in text
        assert s.member_count(1001) == 0 and s.current_seq(1001) == seq and not s.in_transaction
        s._conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
        s.put_member(1001, "key-id:gm1", "192.0.2.1:848", registered_at=2)
        assert s.next_seq(1001) == seq + 1
