"""Key server state in SQLite: groups, KEKs, TEKs, the LKH tree, members, rekey SEQ.

Everything the GCKS must not forget across a restart lives here, behind an API in protocol
terms (no SQL outside this module).

Durability rule: *written before anything that depends on it is sent.*  Every public method
that changes state commits before it returns (unless called inside :meth:`KeyStore.transaction`,
in which case the outermost ``with`` block commits).  The database runs in WAL mode with
``synchronous=FULL``: a commit returns only after the WAL is fsync'ed, so a committed SEQ, TEK
or LKH key survives a crash or power loss.  In particular :meth:`KeyStore.next_seq` refuses to
run inside an open transaction: it commits the increment durably and only then returns the
number the caller may put in a GROUPKEY-PUSH.

Files: the state directory is created 0700 (an existing one is tightened to 0700 and must be
owned by us); the database and its ``-wal``/``-shm`` files are created under ``umask 077``,
then chmod'ed 0600 and verified.  ``secure_delete`` is on, so deleted keys are overwritten in
the file.  Keys are stored as BLOBs; no key material appears in any ``repr`` and this module
logs nothing.

Concurrency: one writer, the daemon.  :class:`KeyStore` takes an exclusive ``flock`` on
``<state_dir>/gcks.lock`` and a second opener (another daemon) gets :class:`StoreLocked`.
Other tools ask the daemon over its control socket, never open the database.  A
:class:`KeyStore` is not thread-safe; use it from the daemon's event loop thread.

Schema versioning: ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`.  An empty database is
initialised; an older one is migrated (:data:`_MIGRATIONS`, in one transaction); a newer one is refused with
:class:`SchemaVersionError` before anything is written.

SEQ (RFC 6407 sections 3.2 and 5.7): the sequence number belongs to a KEK (Rekey SA): 0 before
the first GROUPKEY-PUSH, 1 for the first push under that KEK, +1 per push, and a new KEK starts
again from 0.  :meth:`KeyStore.current_seq` is the value for a GROUPKEY-PULL's SEQ payload.

LKH: the tree is stored as its scalar metadata plus fixed-size chunks of node handles and keys
(:data:`gkm.lkh.CHUNK_NODES` nodes per row); :meth:`KeyStore.save_lkh` writes only the chunks
changed since the last save (an eviction from a million-member tree rewrites ~depth chunks, a
few hundred KB).  The member -> leaf map is the ``members`` table: save the tree and the member
changes in one :meth:`KeyStore.transaction`.

State anchor (:mod:`gkm.store_anchor`): the database carries a random ``store_id`` and a
``generation`` (table ``store_meta``) that every commit changing keys, SEQ, the LKH tree or the
deny list raises in the same transaction; after such a commit the store writes both, and each
group's current KEK SPI and SEQ, to the anchor file, apart from the database.  Opening a
database that is missing, empty, another one, or behind its anchor raises
:class:`StateRegressed` (what happened, how to recover) unless ``accept_state``, which serves
it, raising each group's SEQ above the last one the anchor says was sent.

Errors: an unreadable or corrupt database raises :class:`StoreCorrupt` at open (``PRAGMA
quick_check``); a write that fails because the file system is full raises :class:`StoreFull`
(which file, how much space is left), after rolling back: nothing changed, and the same call
works again once there is space.
"""

from __future__ import annotations

import enum
import fcntl
import os
import sqlite3
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from gkm.lkh import LkhError, LkhTree
from gkm.store_anchor import (ANCHOR_NAME, Anchor, AnchorError, GroupMark, compare, read_anchor,
                              write_anchor)

__all__ = [
    "SCHEMA_VERSION",
    "DB_NAME",
    "KeyState",
    "Group",
    "Kek",
    "Tek",
    "Member",
    "Denied",
    "KeyStore",
    "StoreError",
    "StoreLocked",
    "SchemaVersionError",
    "StoreCorrupt",
    "StoreFull",
    "StateRegressed",
]

SCHEMA_VERSION = 3
DB_NAME = "gcks.sqlite3"
LOCK_NAME = "gcks.lock"
SEQ_MAX = 0xFFFFFFFF  # the SEQ payload's field is 32 bits

_SCHEMA = """
CREATE TABLE groups (
    group_id      INTEGER PRIMARY KEY,
    policy_digest BLOB NOT NULL
);
CREATE TABLE kek (
    group_id   INTEGER NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    spi        BLOB NOT NULL,
    algorithm  TEXT NOT NULL,
    key        BLOB NOT NULL,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('next', 'current', 'old')),
    seq        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, spi)
);
CREATE UNIQUE INDEX kek_one_current ON kek(group_id) WHERE state = 'current';
CREATE TABLE tek (
    group_id   INTEGER NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    spi        INTEGER NOT NULL,
    algorithm  TEXT NOT NULL,
    key        BLOB NOT NULL,
    auth_key   BLOB,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('next', 'current', 'old')),
    PRIMARY KEY (group_id, spi)
);
CREATE TABLE lkh_tree (
    group_id         INTEGER PRIMARY KEY REFERENCES groups(group_id) ON DELETE CASCADE,
    degree           INTEGER NOT NULL,
    key_len          INTEGER NOT NULL,
    backward_secrecy INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    next_handle      INTEGER NOT NULL,
    leaves           INTEGER NOT NULL,
    depth            INTEGER NOT NULL,
    members          INTEGER NOT NULL
);
CREATE TABLE lkh_chunk (
    group_id INTEGER NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    level    INTEGER NOT NULL,
    chunk    INTEGER NOT NULL,
    handles  BLOB NOT NULL,
    keys     BLOB NOT NULL,
    PRIMARY KEY (group_id, level, chunk)
);
CREATE TABLE members (
    group_id      INTEGER NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    identity      TEXT NOT NULL,
    address       TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    leaf          INTEGER,
    protocol      TEXT NOT NULL DEFAULT 'gdoi',
    PRIMARY KEY (group_id, identity)
);
CREATE UNIQUE INDEX members_leaf ON members(group_id, leaf) WHERE leaf IS NOT NULL;
CREATE TABLE denied (
    group_id INTEGER NOT NULL,
    identity TEXT NOT NULL,
    at       INTEGER NOT NULL,
    reason   TEXT NOT NULL,
    PRIMARY KEY (group_id, identity)
);
CREATE TABLE sender_ids (
    group_id INTEGER PRIMARY KEY,
    next     INTEGER NOT NULL
);
"""

# Migrations from version N to N+1, applied in order inside one transaction.
_MIGRATIONS: dict[int, str] = {
    # 1 -> 2: the deny list (evicted identities stay refused until lifted)
    1: """CREATE TABLE denied (
    group_id INTEGER NOT NULL,
    identity TEXT NOT NULL,
    at       INTEGER NOT NULL,
    reason   TEXT NOT NULL,
    PRIMARY KEY (group_id, identity)
);
""",
    # 2 -> 3: the protocol a member registered with (GDOI or G-IKEv2): which rekey datagram
    # its unicast copies carry, and what msecctl members shows
    # and each group's Sender-ID counter (RFC 9838 section 2.5.1, G-IKEv2 senders)
    2: """ALTER TABLE members ADD COLUMN protocol TEXT NOT NULL DEFAULT 'gdoi';
CREATE TABLE sender_ids (
    group_id INTEGER PRIMARY KEY,
    next     INTEGER NOT NULL
);
""",
}


class StoreError(Exception):
    """The key store cannot do what was asked (unknown group, bad state, I/O policy...)."""


class StoreLocked(StoreError):
    """Another process holds the state directory."""


class SchemaVersionError(StoreError):
    """The database was written by a newer msec (unknown schema version)."""


class StoreCorrupt(StoreError):
    """The database file is not a readable msec database (damaged, or not SQLite at all)."""


class StoreFull(StoreError):
    """A write failed because the file system holding the state is full; nothing changed."""


class StateRegressed(StoreError):
    """The database is missing, empty, another one, or older than its anchor says."""


# Kept apart from the versioned schema (created if missing at every open), so other additions
# to the schema and this one do not have to agree on a version number.
_META = """CREATE TABLE IF NOT EXISTS store_meta (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    store_id   BLOB NOT NULL,
    generation INTEGER NOT NULL
)"""
_SQLITE_FULL = 13


def _is_full(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and (
        getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(e))


class KeyState(str, enum.Enum):
    """Life cycle of a KEK or TEK: distributed ahead (next), in use (current), draining (old)."""

    NEXT = "next"
    CURRENT = "current"
    OLD = "old"


@dataclass(frozen=True)
class Group:
    group_id: int
    policy_digest: bytes


@dataclass(frozen=True)
class Kek:
    group_id: int
    spi: bytes  # the Rekey SA's ISAKMP cookie pair (16 bytes)
    algorithm: str
    key: bytes = field(repr=False)
    created: int
    expires: int
    state: KeyState
    seq: int  # last SEQ used in a GROUPKEY-PUSH under this KEK (0: none yet)


@dataclass(frozen=True)
class Tek:
    group_id: int
    spi: int
    algorithm: str
    key: bytes = field(repr=False)
    auth_key: bytes | None = field(repr=False)
    created: int
    expires: int
    state: KeyState


@dataclass(frozen=True)
class Member:
    group_id: int
    identity: str
    address: str
    registered_at: int
    leaf: int | None
    protocol: str = "gdoi"  # the registration protocol: "gdoi" or "g-ikev2"


@dataclass(frozen=True, slots=True)
class Denied:
    """An identity the group refuses (evicted), since when and why."""

    group_id: int
    identity: str
    at: int
    reason: str


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise StoreError(f"state directory {path} is owned by uid {st.st_uid}, not {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            raise StoreError(f"cannot make state directory {path} mode 0700")


def _ensure_private_file(path: Path) -> None:
    if not path.exists():
        return
    os.chmod(path, 0o600)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) != 0o600 or st.st_uid != os.geteuid():
        raise StoreError(f"{path} is not a private (0600, ours) file")


class KeyStore:
    """The GCKS's persistent state.  ``KeyStore(state_dir)`` opens (creating if needed)."""

    def __init__(self, state_dir: str | os.PathLike[str], *,
                 anchor: str | os.PathLike[str] | None = None, accept_state: bool = False,
                 on_anchor_error: Callable[[str], None] | None = None):
        """``anchor``: the anchor file (default ``<state_dir>/gcks.anchor``).  ``accept_state``:
        serve the database even if it is missing, empty, another one or behind the anchor (what
        was accepted is in :attr:`accepted`).  ``on_anchor_error(text)``: the anchor could not
        be written after a commit (the commit stands; the next one tries again)."""
        self.state_dir = Path(state_dir)
        _ensure_private_dir(self.state_dir)
        self.path = self.state_dir / DB_NAME
        self.anchor_path = Path(anchor) if anchor is not None else self.state_dir / ANCHOR_NAME
        #: what ``accept_state`` accepted (the refusal text, then what was changed), else empty
        self.accepted: list[str] = []
        #: why the anchor could not be written last time (None: it is up to date)
        self.anchor_error: str | None = None
        self._on_anchor_error = on_anchor_error
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._depth = 0
        self._on_commit: list[Callable[[], None]] = []
        self._keys_changed = False
        self._store_id = b""
        self._generation = 0
        old_umask = os.umask(0o077)
        try:
            self._lock_fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise StoreLocked(f"{self.state_dir} is in use by another process") from None
            anchor_rec = self._read_anchor(accept_state)
            why_empty = self._missing_or_empty()
            if why_empty and anchor_rec is not None:
                problem = compare(anchor_rec, self.path, self.anchor_path, store_id=None,
                                  generation=0, groups=None, why_empty=why_empty)
                if problem is not None:
                    if not accept_state:
                        raise StateRegressed(problem)
                    self.accepted.append(problem)
                    for leftover in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                        leftover.unlink(missing_ok=True)  # a journal without its database
                anchor_rec = None
            try:
                self._open_db()
            except sqlite3.DatabaseError as e:
                if _is_full(e):
                    raise StoreFull(self._full_text(e)) from None
                raise StoreCorrupt(
                    f"key server state {self.path} is not a usable msec database ({e}).  "
                    "Restore it from a backup; or move it (and its -wal/-shm files) away and "
                    "start msecd once with --accept-state to begin again with new keys") from None
            if anchor_rec is not None:
                self._check_anchor(anchor_rec, accept_state)
            if anchor_rec is None or anchor_rec.store_id != self._store_id.hex() \
                    or anchor_rec.generation != self._generation:
                self._write_anchor()
                if self.anchor_error is not None:
                    raise StoreError(f"cannot write the state anchor {self.anchor_path}: "
                                     f"{self.anchor_error}")
        except BaseException:
            self.close()
            raise
        finally:
            os.umask(old_umask)
        for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"), self.state_dir / LOCK_NAME):
            _ensure_private_file(p)

    def _open_db(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path}: schema version {version} is newer than this msec supports "
                f"({SCHEMA_VERSION}); run a newer msec or restore a backup"
            )
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA secure_delete=ON")
        problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("integrity check: " + "; ".join(problems))
        self._migrate(version)
        with self.transaction():
            db.execute(_META)
            row = db.execute("SELECT store_id, generation FROM store_meta WHERE id = 1").fetchone()
            if row is None:
                row = (os.urandom(16), 0)
                db.execute("INSERT INTO store_meta VALUES (1, ?, ?)", row)
        self._store_id, self._generation = bytes(row[0]), row[1]
        # Make sure -wal and -shm exist now (created under our umask), then verify all three.
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _missing_or_empty(self) -> str:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return "missing"
        return "empty (0 bytes)" if size == 0 else ""

    def _read_anchor(self, accept_state: bool) -> Anchor | None:
        try:
            return read_anchor(self.anchor_path)
        except AnchorError as e:
            problem = (f"state anchor {self.anchor_path} is unreadable ({e}); if the database "
                       f"{self.path} is the right one, start msecd once with --accept-state "
                       "(a new anchor is written)")
            if not accept_state:
                raise StateRegressed(problem) from None
            self.accepted.append(problem)
            return None

    def _marks(self) -> dict[int, GroupMark]:
        marks = {g: GroupMark(None, 0) for (g,) in self._conn.execute("SELECT group_id FROM groups")}
        for g, spi, seq in self._conn.execute("SELECT group_id, spi, seq FROM kek WHERE state = 'current'"):
            marks[g] = GroupMark(bytes(spi).hex(), seq)
        return marks

    def _check_anchor(self, anchor: Anchor, accept_state: bool) -> None:
        marks = self._marks()
        problem = compare(anchor, self.path, self.anchor_path, store_id=self._store_id.hex(),
                          generation=self._generation, groups=marks)
        if problem is None:
            return
        if not accept_state:
            raise StateRegressed(problem)
        self.accepted.append(problem)
        with self.transaction():
            for gid, m in sorted(anchor.groups.items()):
                have = marks.get(gid)
                if m.kek_spi is not None and have is not None and have.kek_spi == m.kek_spi \
                        and have.seq < m.seq:
                    self._conn.execute("UPDATE kek SET seq = ? WHERE group_id = ? AND state = 'current'",
                                       (m.seq, gid))
                    self.accepted.append(f"group {gid}: SEQ raised from {have.seq} to {m.seq}, "
                                         "the last one sent")
            self._keys_changed = True
            self._generation = max(self._generation, anchor.generation)
            self._conn.execute("UPDATE store_meta SET generation = ? WHERE id = 1", (self._generation,))

    def _write_anchor(self) -> None:
        anchor = Anchor(self._store_id.hex(), self._generation, int(time.time()), self._marks())
        try:
            write_anchor(self.anchor_path, anchor)
        except OSError as e:
            self.anchor_error = (f"{e.strerror or e} (the database {self.path} is committed; the "
                                 "anchor is written again at the next change)")
            if self._on_anchor_error is not None:
                self._on_anchor_error(f"cannot write the state anchor {self.anchor_path}: "
                                      f"{self.anchor_error}")
        else:
            self.anchor_error = None

    def _full_text(self, e: BaseException) -> str:
        try:
            vfs = os.statvfs(self.state_dir)
            free = f"{vfs.f_bavail * vfs.f_frsize} bytes free"
        except OSError:
            free = "free space unknown"
        return (f"disk full: cannot write the key server state {self.path} (or its -wal "
                f"journal) in {self.state_dir} ({free}; SQLite: {e}); nothing was changed, "
                "and it works again once there is space")

    @property
    def generation(self) -> int:
        """The database's state generation (see :mod:`gkm.store_anchor`)."""
        return self._generation

    def _keys(self) -> None:
        """The current transaction changes keys, SEQ, the LKH tree or the deny list: raise the
        generation with it and write the anchor after the commit."""
        self._keys_changed = True

    def _migrate(self, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            if version == 0:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            else:
                for v in range(version, SCHEMA_VERSION):
                    for stmt in _MIGRATIONS[v].split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- life cycle ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"KeyStore({str(self.state_dir)!r})"

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("key store is closed")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator["KeyStore"]:
        """Group several changes atomically; the outermost block commits (durably) on exit
        and rolls back on an exception.  Nested blocks join the outer transaction.  A full
        file system raises :class:`StoreFull` (rolled back, nothing changed)."""
        db = self._conn
        if self._depth == 0:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _is_full(e):
                    raise StoreFull(self._full_text(e)) from None
                raise
        self._depth += 1
        try:
            yield self
        except BaseException as exc:
            self._depth -= 1
            if self._depth == 0:
                self._rollback()
                if _is_full(exc):
                    raise StoreFull(self._full_text(exc)) from None
            raise
        else:
            self._depth -= 1
            if self._depth == 0:
                try:
                    if self._keys_changed:
                        db.execute("UPDATE store_meta SET generation = generation + 1 WHERE id = 1")
                    db.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    self._rollback()
                    if _is_full(e):
                        raise StoreFull(self._full_text(e)) from None
                    raise
                if self._keys_changed:
                    self._keys_changed = False
                    self._generation += 1
                    self._write_anchor()
                callbacks, self._on_commit = self._on_commit, []
                for cb in callbacks:
                    cb()

    def _rollback(self) -> None:
        self._on_commit.clear()
        self._keys_changed = False
        if self._conn.in_transaction:  # SQLite may have rolled back already (e.g. SQLITE_FULL)
            self._conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    # -- groups ----------------------------------------------------------------------------

    def add_group(self, group_id: int, policy_digest: bytes) -> Group:
        with self.transaction():
            self._keys()
            try:
                self._conn.execute("INSERT INTO groups VALUES (?, ?)", (group_id, bytes(policy_digest)))
            except sqlite3.IntegrityError:
                raise StoreError(f"group {group_id} already exists") from None
        return Group(group_id, bytes(policy_digest))

    def set_policy_digest(self, group_id: int, policy_digest: bytes) -> None:
        with self.transaction():
            self._need_group(group_id)
            self._conn.execute("UPDATE groups SET policy_digest = ? WHERE group_id = ?", (bytes(policy_digest), group_id))

    def group(self, group_id: int) -> Group | None:
        row = self._conn.execute("SELECT group_id, policy_digest FROM groups WHERE group_id = ?", (group_id,)).fetchone()
        return Group(row[0], row[1]) if row else None

    def groups(self) -> list[Group]:
        return [Group(g, d) for g, d in self._conn.execute("SELECT group_id, policy_digest FROM groups ORDER BY group_id")]

    def remove_group(self, group_id: int) -> None:
        """Forget a group and everything under it (keys are overwritten: secure_delete)."""
        with self.transaction():
            self._keys()
            self._need_group(group_id)
            self._conn.execute("DELETE FROM groups WHERE group_id = ?", (group_id,))

    def _need_group(self, group_id: int) -> None:
        if self._conn.execute("SELECT 1 FROM groups WHERE group_id = ?", (group_id,)).fetchone() is None:
            raise StoreError(f"unknown group {group_id}")

    # -- KEK and SEQ -----------------------------------------------------------------------

    _KEK_COLS = "group_id, spi, algorithm, key, created, expires, state, seq"

    def add_kek(self, group_id: int, spi: bytes, algorithm: str, key: bytes, *, created: int, expires: int, state: KeyState = KeyState.NEXT) -> Kek:
        state = KeyState(state)
        with self.transaction():
            self._keys()
            self._need_group(group_id)
            if state is KeyState.CURRENT:
                self._conn.execute("UPDATE kek SET state = 'old' WHERE group_id = ? AND state = 'current'", (group_id,))
            try:
                self._conn.execute(
                    "INSERT INTO kek VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    (group_id, bytes(spi), algorithm, bytes(key), created, expires, state.value),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"group {group_id}: KEK SPI {bytes(spi).hex()} already exists") from None
        return Kek(group_id, bytes(spi), algorithm, bytes(key), created, expires, state, 0)

    def keks(self, group_id: int, state: KeyState | None = None) -> list[Kek]:
        q = f"SELECT {self._KEK_COLS} FROM kek WHERE group_id = ?"
        args: tuple = (group_id,)
        if state is not None:
            q += " AND state = ?"
            args += (KeyState(state).value,)
        return [self._kek(r) for r in self._conn.execute(q + " ORDER BY created, spi", args)]

    def current_kek(self, group_id: int) -> Kek | None:
        row = self._conn.execute(f"SELECT {self._KEK_COLS} FROM kek WHERE group_id = ? AND state = 'current'", (group_id,)).fetchone()
        return self._kek(row) if row else None

    @staticmethod
    def _kek(r) -> Kek:
        return Kek(r[0], r[1], r[2], r[3], r[4], r[5], KeyState(r[6]), r[7])

    def activate_kek(self, group_id: int, spi: bytes) -> None:
        """Make a KEK current (the previous current one becomes old); its SEQ starts at 0."""
        with self.transaction():
            self._keys()
            if self._conn.execute("SELECT 1 FROM kek WHERE group_id = ? AND spi = ?", (group_id, bytes(spi))).fetchone() is None:
                raise StoreError(f"group {group_id}: no KEK {bytes(spi).hex()}")
            self._conn.execute("UPDATE kek SET state = 'old' WHERE group_id = ? AND state = 'current'", (group_id,))
            self._conn.execute("UPDATE kek SET state = 'current', seq = 0 WHERE group_id = ? AND spi = ?", (group_id, bytes(spi)))

    def delete_kek(self, group_id: int, spi: bytes) -> None:
        with self.transaction():
            self._keys()
            self._conn.execute("DELETE FROM kek WHERE group_id = ? AND spi = ?", (group_id, bytes(spi)))

    def current_seq(self, group_id: int) -> int:
        """The most recently used SEQ of the group's current KEK (0 if none sent yet or no
        KEK): the value a GROUPKEY-PULL's SEQ payload carries."""
        self._need_group(group_id)
        row = self._conn.execute("SELECT seq FROM kek WHERE group_id = ? AND state = 'current'", (group_id,)).fetchone()
        return row[0] if row else 0

    def next_seq(self, group_id: int) -> int:
        """Reserve the SEQ for the next GROUPKEY-PUSH under the current KEK.  The increment is
        committed and fsync'ed before this returns, so a crash can never lead to a SEQ being
        sent twice.  Must not be called inside :meth:`transaction`."""
        if self.in_transaction:
            raise StoreError("next_seq must commit on its own: call it outside transaction()")
        with self.transaction():
            self._keys()
            row = self._conn.execute("SELECT spi, seq FROM kek WHERE group_id = ? AND state = 'current'", (group_id,)).fetchone()
            if row is None:
                self._need_group(group_id)
                raise StoreError(f"group {group_id} has no current KEK (no Rekey SA, no SEQ)")
            spi, seq = row
            if seq >= SEQ_MAX:
                raise StoreError(f"group {group_id}: SEQ exhausted for the current KEK; activate a new KEK")
            self._conn.execute("UPDATE kek SET seq = ? WHERE group_id = ? AND spi = ?", (seq + 1, group_id, spi))
        return seq + 1

    # -- TEKs ------------------------------------------------------------------------------

    _TEK_COLS = "group_id, spi, algorithm, key, auth_key, created, expires, state"

    def add_tek(
        self, group_id: int, spi: int, algorithm: str, key: bytes, *, auth_key: bytes | None = None,
        created: int, expires: int, state: KeyState = KeyState.NEXT,
    ) -> Tek:
        state = KeyState(state)
        if not 0 < spi <= 0xFFFFFFFF:
            raise StoreError(f"TEK SPI {spi} out of range")
        with self.transaction():
            self._keys()
            self._need_group(group_id)
            try:
                self._conn.execute(
                    "INSERT INTO tek VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (group_id, spi, algorithm, bytes(key), None if auth_key is None else bytes(auth_key), created, expires, state.value),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"group {group_id}: TEK SPI {spi:#010x} already exists") from None
        return Tek(group_id, spi, algorithm, bytes(key), auth_key, created, expires, state)

    def teks(self, group_id: int, state: KeyState | None = None) -> list[Tek]:
        q = f"SELECT {self._TEK_COLS} FROM tek WHERE group_id = ?"
        args: tuple = (group_id,)
        if state is not None:
            q += " AND state = ?"
            args += (KeyState(state).value,)
        return [Tek(r[0], r[1], r[2], r[3], r[4], r[5], r[6], KeyState(r[7])) for r in self._conn.execute(q + " ORDER BY created, spi", args)]

    def tek(self, group_id: int, spi: int) -> Tek | None:
        r = self._conn.execute(f"SELECT {self._TEK_COLS} FROM tek WHERE group_id = ? AND spi = ?", (group_id, spi)).fetchone()
        return Tek(r[0], r[1], r[2], r[3], r[4], r[5], r[6], KeyState(r[7])) if r else None

    def set_tek_state(self, group_id: int, spi: int, state: KeyState) -> None:
        state = KeyState(state)
        with self.transaction():
            self._keys()
            cur = self._conn.execute("UPDATE tek SET state = ? WHERE group_id = ? AND spi = ?", (state.value, group_id, spi))
            if cur.rowcount != 1:
                raise StoreError(f"group {group_id}: no TEK {spi:#010x}")

    def rotate_teks(self, group_id: int) -> list[Tek]:
        """Make before break: current TEKs become old and next ones become current, atomically.
        Returns the new current TEKs.  Refuses when there is no next TEK."""
        with self.transaction():
            self._keys()
            self._need_group(group_id)
            if not self._conn.execute("SELECT 1 FROM tek WHERE group_id = ? AND state = 'next'", (group_id,)).fetchone():
                raise StoreError(f"group {group_id}: no next TEK to rotate to")
            self._conn.execute("UPDATE tek SET state = 'old' WHERE group_id = ? AND state = 'current'", (group_id,))
            self._conn.execute("UPDATE tek SET state = 'current' WHERE group_id = ? AND state = 'next'", (group_id,))
        return self.teks(group_id, KeyState.CURRENT)

    def purge_teks(self, group_id: int, now: int) -> list[int]:
        """Delete old TEKs whose lifetime is over; returns their SPIs (to remove from XFRM)."""
        with self.transaction():
            self._keys()
            spis = [r[0] for r in self._conn.execute(
                "SELECT spi FROM tek WHERE group_id = ? AND state = 'old' AND expires <= ? ORDER BY spi", (group_id, now))]
            self._conn.execute("DELETE FROM tek WHERE group_id = ? AND state = 'old' AND expires <= ?", (group_id, now))
        return spis

    # -- members ---------------------------------------------------------------------------

    def add_member(self, group_id: int, identity: str, address: str, *, registered_at: int, leaf: int | None = None,
                   protocol: str = "gdoi") -> Member:
        with self.transaction():
            self._need_group(group_id)
            try:
                self._conn.execute("INSERT INTO members VALUES (?, ?, ?, ?, ?, ?)",
                                   (group_id, identity, address, registered_at, leaf, protocol))
            except sqlite3.IntegrityError:
                raise StoreError(f"group {group_id}: member {identity!r} or leaf {leaf} already registered") from None
        return Member(group_id, identity, address, registered_at, leaf, protocol)

    def put_member(self, group_id: int, identity: str, address: str, *, registered_at: int,
                   protocol: str = "gdoi") -> Member:
        """Record a member without an LKH leaf, replacing its earlier record (re-registration):
        :meth:`remove_member` + :meth:`add_member` in one statement.  For the registration hot
        path, inside a :meth:`transaction` whose caller checked that the group exists (an
        unknown group still fails, by the foreign key).  Refuses, changing nothing, when the
        member's earlier record has a leaf (LKH: the tree must be updated with it)."""
        with self.transaction():
            try:
                cur = self._conn.execute(
                    "INSERT INTO members VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT (group_id, identity) DO UPDATE "
                    "SET address = excluded.address, registered_at = excluded.registered_at, "
                    "protocol = excluded.protocol WHERE leaf IS NULL",
                    (group_id, identity, address, registered_at, protocol))
            except sqlite3.IntegrityError:
                raise StoreError(f"unknown group {group_id}") from None
            if cur.rowcount != 1:
                raise StoreError(f"group {group_id}: member {identity!r} has an LKH leaf")
        return Member(group_id, identity, address, registered_at, None, protocol)

    def remove_members(self, group_id: int, identities: Iterable[str]) -> int:
        """Forget members; returns how many were removed."""
        ids = list(identities)
        with self.transaction():
            n = 0
            for identity in ids:
                n += self._conn.execute("DELETE FROM members WHERE group_id = ? AND identity = ?", (group_id, identity)).rowcount
        return n

    def remove_member(self, group_id: int, identity: str) -> bool:
        return self.remove_members(group_id, [identity]) == 1

    def member(self, group_id: int, identity: str) -> Member | None:
        r = self._conn.execute(
            "SELECT group_id, identity, address, registered_at, leaf, protocol FROM members WHERE group_id = ? AND identity = ?",
            (group_id, identity)).fetchone()
        return Member(*r) if r else None

    def members(self, group_id: int) -> list[Member]:
        return [Member(*r) for r in self._conn.execute(
            "SELECT group_id, identity, address, registered_at, leaf, protocol FROM members WHERE group_id = ? ORDER BY identity",
            (group_id,))]

    def member_count(self, group_id: int) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM members WHERE group_id = ?", (group_id,)).fetchone()[0]

    # -- Sender-IDs (RFC 9838 section 2.5.1) ------------------------------------------------

    def allocate_sender_ids(self, group_id: int, n: int, limit: int) -> tuple[int, ...]:
        """The next ``n`` Sender-IDs of the group's counter (from 0, never handed out twice,
        durable with the transaction), all below ``limit``; StoreError when they would not
        be (the counter is exhausted: nothing allocated)."""
        if n < 1:
            raise StoreError(f"allocate {n} Sender-IDs?")
        with self.transaction():
            row = self._conn.execute("SELECT next FROM sender_ids WHERE group_id = ?", (group_id,)).fetchone()
            first = row[0] if row else 0
            if first + n > limit:
                raise StoreError(f"group {group_id}: Sender-IDs exhausted ({first} of {limit} allocated)")
            self._conn.execute("INSERT INTO sender_ids VALUES (?, ?) ON CONFLICT (group_id) DO UPDATE "
                               "SET next = excluded.next", (group_id, first + n))
            self._keys()
        return tuple(range(first, first + n))

    # -- deny list (evicted members) --------------------------------------------------------

    def deny(self, group_id: int, identity: str, *, at: int, reason: str) -> None:
        """Refuse ``identity`` in ``group_id`` from now on (kept across restarts, whatever the
        policy says) until :meth:`lift`; a second deny keeps the first one's time and reason."""
        with self.transaction():
            self._keys()
            self._conn.execute("INSERT OR IGNORE INTO denied VALUES (?, ?, ?, ?)", (group_id, identity, at, reason))

    def lift(self, group_id: int, identity: str) -> bool:
        """Take ``identity`` off the group's deny list; False if it was not on it."""
        with self.transaction():
            self._keys()
            return self._conn.execute("DELETE FROM denied WHERE group_id = ? AND identity = ?",
                                      (group_id, identity)).rowcount == 1

    def denied(self, group_id: int, identity: str | None = None) -> list[Denied]:
        """The group's deny list (one identity's entry, or none, with ``identity``)."""
        if identity is not None:
            rows = self._conn.execute("SELECT group_id, identity, at, reason FROM denied WHERE group_id = ? AND identity = ?",
                                      (group_id, identity))
        else:
            rows = self._conn.execute("SELECT group_id, identity, at, reason FROM denied WHERE group_id = ? ORDER BY identity",
                                      (group_id,))
        return [Denied(*r) for r in rows]

    # -- LKH -------------------------------------------------------------------------------

    def save_lkh(self, group_id: int, tree: LkhTree, *, full: bool = False) -> None:
        """Persist the tree: its metadata and the chunks changed since the last save (all of
        them the first time or with ``full``).  The members table must already map every
        member of the tree to its leaf (same transaction); a count mismatch is refused."""
        with self.transaction():
            self._keys()
            self._need_group(group_id)
            db = self._conn
            first = db.execute("SELECT 1 FROM lkh_tree WHERE group_id = ?", (group_id,)).fetchone() is None
            in_table = db.execute("SELECT COUNT(*) FROM members WHERE group_id = ? AND leaf IS NOT NULL", (group_id,)).fetchone()[0]
            if in_table != len(tree):
                raise StoreError(f"group {group_id}: LKH tree has {len(tree)} members, members table maps {in_table} to leaves")
            m = tree.meta()
            db.execute(
                "INSERT OR REPLACE INTO lkh_tree VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (group_id, m["degree"], m["key_len"], m["backward_secrecy"], m["epoch"], m["next_handle"], m["leaves"], m["depth"], len(tree)),
            )
            if first or full:
                db.execute("DELETE FROM lkh_chunk WHERE group_id = ?", (group_id,))
            db.executemany(
                "INSERT OR REPLACE INTO lkh_chunk VALUES (?, ?, ?, ?, ?)",
                ((group_id, lv, c, h, k) for lv, c, h, k in tree.export_chunks(dirty_only=not (first or full))),
            )
            self._on_commit.append(tree.mark_clean)

    def load_lkh(self, group_id: int) -> LkhTree | None:
        """The group's tree as last saved (None if it has none)."""
        db = self._conn
        row = db.execute(
            "SELECT degree, key_len, backward_secrecy, epoch, next_handle, leaves, depth, members FROM lkh_tree WHERE group_id = ?",
            (group_id,)).fetchone()
        if row is None:
            return None
        keys = ("degree", "key_len", "backward_secrecy", "epoch", "next_handle", "leaves", "depth")
        meta = dict(zip(keys, row[:7]))
        chunks = db.execute("SELECT level, chunk, handles, keys FROM lkh_chunk WHERE group_id = ?", (group_id,))
        members = db.execute("SELECT identity, leaf FROM members WHERE group_id = ? AND leaf IS NOT NULL", (group_id,)).fetchall()
        if len(members) != row[7]:
            raise StoreError(f"group {group_id}: LKH tree saved with {row[7]} members, members table maps {len(members)}")
        try:
            tree = LkhTree.restore(meta, chunks, members)
        except LkhError as e:
            raise StoreError(f"group {group_id}: stored LKH tree is inconsistent: {e}") from None
        tree.mark_clean()
        return tree

    def delete_lkh(self, group_id: int) -> None:
        with self.transaction():
            self._keys()
            self._conn.execute("DELETE FROM lkh_chunk WHERE group_id = ?", (group_id,))
            self._conn.execute("DELETE FROM lkh_tree WHERE group_id = ?", (group_id,))

    # -- group controller records (gkm.group.storage applies them) -------------------------

    def set_seq(self, group_id: int, kek_spi: bytes, seq: int) -> None:
        """Record ``seq`` as the last SEQ used under KEK ``kek_spi`` (a group controller
        reserved it; durable with the rest of its transaction, before the PUSH is sent).
        Refuses a SEQ that does not move forward or does not fit the SEQ payload."""
        if not 0 < seq <= SEQ_MAX:
            raise StoreError(f"group {group_id}: SEQ {seq} out of range")
        with self.transaction():
            self._keys()
            row = self._conn.execute("SELECT seq FROM kek WHERE group_id = ? AND spi = ?",
                                     (group_id, bytes(kek_spi))).fetchone()
            if row is None:
                raise StoreError(f"group {group_id}: no KEK {bytes(kek_spi).hex()}")
            if seq <= row[0]:
                raise StoreError(f"group {group_id}: SEQ {seq} is not after {row[0]}")
            self._conn.execute("UPDATE kek SET seq = ? WHERE group_id = ? AND spi = ?",
                               (seq, group_id, bytes(kek_spi)))

    def delete_teks(self, group_id: int, spis: Iterable[int]) -> int:
        """Delete TEK rows by SPI (any state); returns how many were deleted."""
        with self.transaction():
            self._keys()
            return sum(self._conn.execute("DELETE FROM tek WHERE group_id = ? AND spi = ?",
                                          (group_id, int(s))).rowcount for s in spis)

    def save_lkh_chunks(self, group_id: int, meta: dict[str, int],
                        chunks: Iterable[tuple[int, int, bytes, bytes]], *, members: int,
                        full: bool) -> None:
        """:meth:`save_lkh` from the tree's exported values (``LkhTree.meta()``,
        ``export_chunks()``; every chunk with ``full``) instead of the tree object: what a
        replayed change log holds."""
        with self.transaction():
            self._keys()
            self._need_group(group_id)
            db = self._conn
            in_table = db.execute("SELECT COUNT(*) FROM members WHERE group_id = ? AND leaf IS NOT NULL", (group_id,)).fetchone()[0]
            if in_table != members:
                raise StoreError(f"group {group_id}: LKH tree has {members} members, members table maps {in_table} to leaves")
            m = meta
            db.execute(
                "INSERT OR REPLACE INTO lkh_tree VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (group_id, m["degree"], m["key_len"], m["backward_secrecy"], m["epoch"], m["next_handle"], m["leaves"], m["depth"], members),
            )
            if full:
                db.execute("DELETE FROM lkh_chunk WHERE group_id = ?", (group_id,))
            db.executemany("INSERT OR REPLACE INTO lkh_chunk VALUES (?, ?, ?, ?, ?)",
                           ((group_id, lv, c, h, k) for lv, c, h, k in chunks))
