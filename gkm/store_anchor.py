"""The key server's state anchor: a small file, kept apart from the SQLite database, that says
how far the database had got.  It detects a database that went back in time.

Why: a key server whose database was deleted, truncated, or restored from an older copy (a
backup, a snapshot rollback) would otherwise start silently from that state: new keys and SEQ 1
after a deletion, an old SEQ and old keys after a restore.  Members then reject its
GROUPKEY-PUSHes as replays (RFC 6407 section 3.2: a SEQ not above the last one seen), or hold
keys it no longer knows; a restore from before an eviction even brings back a KEK the evicted
member knows.  So the key server refuses to serve from such a state until an operator says so
(``msecd --accept-state``), and says exactly what it found.

What is anchored: the database's random ``store_id`` (a different database is noticed), its
``generation`` (a counter the store raises, in the same transaction, with every commit that
changes keys, SEQ, the LKH tree or the deny list; member rows alone do not raise it, so the
registration hot path writes no extra file) and, per group, the current KEK's SPI and SEQ (to
say what a regression means and to lift the SEQ on ``--accept-state``).

Writing: after the database commit returned (so the anchor is never ahead of what is durable:
a failed commit cannot make a good database look regressed), to a temporary file created 0600
in the anchor's directory, fsync'ed, renamed over the anchor, and the directory fsync'ed.  A
crash between the commit and the rename leaves the anchor one step behind, which is accepted
(only a database *behind* its anchor is a regression).  Default location
``<state_dir>/gcks.anchor``; ``[daemon] state_anchor`` puts it elsewhere (a file system a
snapshot of the state directory does not roll back).

Pure functions here (:func:`compare`) decide; :class:`gkm.store.KeyStore` does the I/O.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .durable import replace_file

__all__ = ["ANCHOR_NAME", "Anchor", "GroupMark", "AnchorError", "read_anchor", "write_anchor",
           "compare"]

ANCHOR_NAME = "gcks.anchor"
_FORMAT = "msec-gcks-anchor/1"


class AnchorError(Exception):
    """The anchor file exists but cannot be read or understood."""


@dataclass(frozen=True, slots=True)
class GroupMark:
    kek_spi: str | None  # hex, the current KEK's SPI (None: no KEK)
    seq: int  # the last SEQ reserved under it


@dataclass(frozen=True, slots=True)
class Anchor:
    store_id: str  # hex
    generation: int
    written: int  # wall seconds
    groups: dict[int, GroupMark] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "store_id": self.store_id,
                           "generation": self.generation, "written": self.written,
                           "groups": {str(g): {"kek_spi": m.kek_spi, "seq": m.seq}
                                      for g, m in sorted(self.groups.items())}},
                          sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Anchor":
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            groups = {}
            for g, m in d["groups"].items():
                spi, seq = m["kek_spi"], m["seq"]
                if not (spi is None or isinstance(spi, str)) or not isinstance(seq, int):
                    raise ValueError(f"group {g}: bad entry")
                groups[int(g)] = GroupMark(spi, seq)
            store_id, gen, written = d["store_id"], d["generation"], d["written"]
            if not isinstance(store_id, str) or not isinstance(gen, int) \
                    or not isinstance(written, int):
                raise ValueError("bad store_id, generation or written")
            return cls(store_id, gen, written, groups)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise AnchorError(str(e)) from None


def read_anchor(path: Path) -> Anchor | None:
    """The anchor at ``path``; None if there is none.  AnchorError if it is unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise AnchorError(str(e)) from None
    return Anchor.from_json(text)


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Replace the anchor atomically and durably (file 0600, fsync, rename, directory fsync).
    OSError (e.g. ENOSPC) leaves the previous anchor in place."""
    replace_file(path, anchor.to_json().encode(), 0o600)


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _groups_text(anchor: Anchor, db: dict[int, GroupMark] | None) -> str:
    parts = []
    for gid, m in sorted(anchor.groups.items()):
        if m.kek_spi is None:
            continue
        have = db.get(gid) if db is not None else None
        if have is None:
            parts.append(f"group {gid}: SEQ {m.seq} already sent under KEK {m.kek_spi[:16]}, "
                         "none in the database")
        elif have.kek_spi != m.kek_spi:
            parts.append(f"group {gid}: the anchor's KEK {m.kek_spi[:16]} (SEQ {m.seq}) is "
                         f"not the database's {str(have.kek_spi)[:16]} (SEQ {have.seq})")
        elif have.seq < m.seq:
            parts.append(f"group {gid}: SEQ {have.seq} in the database, {m.seq} already sent")
    return ("; ".join(parts) + ". ") if parts else ""


def compare(anchor: Anchor, db_path: Path, anchor_path: Path, *, store_id: str | None,
            generation: int, groups: dict[int, GroupMark] | None, why_empty: str = "") -> str | None:
    """Why the database (``store_id``/``generation``/``groups``; ``store_id`` None: missing or
    empty, ``why_empty`` says which) is not the state the anchor recorded, or None if it is
    (same store, generation not behind).  The text says what happened and how to recover."""
    recorded = (f"{anchor_path} records generation {anchor.generation} of database "
                f"{anchor.store_id[:16]}, written {_when(anchor.written)}")
    accept = ("To serve from this database anyway, start msecd once with --accept-state (each "
              "group's SEQ is raised above the last one sent, so members accept the next "
              "GROUPKEY-PUSH; then 'msecctl rekey GROUP' gives them keys this key server "
              "knows, and evictions made after that copy must be made again).")
    if store_id is None:
        if anchor.generation == 0:
            return None
        return (f"key server state {db_path} is {why_empty or 'missing'}, but {recorded}: the "
                "database was deleted or truncated.  Starting from an empty state would hand "
                "out new keys and restart every SEQ at 1, so members would reject its "
                "GROUPKEY-PUSHes as replays and keep keys it no longer knows.  "
                f"{_groups_text(anchor, None)}Restore the database from a backup, or start "
                "msecd once with --accept-state to begin again with new keys (members register "
                "again when their TEKs expire, or at once when restarted).")
    if store_id != anchor.store_id:
        return (f"key server state {db_path} is database {store_id[:16]}, but {recorded}: this "
                "is not the database this key server last used (replaced by another one).  "
                f"{_groups_text(anchor, groups)}Put the right database back, or: {accept}")
    if generation < anchor.generation:
        return (f"key server state {db_path} is at generation {generation}, but {recorded}: "
                "the database was restored from an older copy (a backup or a snapshot "
                "rollback) and lacks the key, SEQ and eviction changes made since.  "
                f"{_groups_text(anchor, groups)}Serving it would reuse SEQs members already "
                "saw (they reject such GROUPKEY-PUSHes) and may bring back replaced keys.  "
                f"Restore the newest copy, or: {accept}")
    return None
