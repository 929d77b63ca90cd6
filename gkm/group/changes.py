"""The change records of a group controller: what the key server's durable state of one group
becomes, one typed, frozen value per step, in order.

A :class:`~gkm.group.controller.GroupController` never writes anything.  Every decision it
makes that must survive a crash (a new key, a key's new state, a reserved SEQ, a member gone, a
deny entry, the LKH tree's new keys) is appended to its log as one of these records; the shell
applies a batch of them to the store in one transaction (:func:`gkm.group.storage.apply`) and
only then tells the controller ``committed(now)``, which releases the datagrams that depend on
them.  Records are values: they hold the bytes written (keys, tree chunks), never a reference
to a live object, so a log replayed onto a store holding the state it started from (or onto an
empty store, after the :func:`checkpoint` of a controller) gives the same store.

``repr`` never shows key material (SPIs, states and counts only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gkm.store import KeyState

__all__ = [
    "Change", "GroupCreated", "TekAdded", "TekStateChanged", "TeksPurged", "KekAdded",
    "KekActivated", "KekDeleted", "SeqReserved", "MemberRecorded", "MembersRemoved",
    "DenyAdded", "LkhSaved", "LkhDeleted",
]


class Change:
    """Base of every change record; each is about one group (``group_id``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class GroupCreated(Change):
    group_id: int
    policy_digest: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TekAdded(Change):
    """A TEK row (``label`` = ``"<TekPolicy.name>/<suite>"``, ``gkm.gdoi.provider.tek_label``)."""

    group_id: int
    spi: int
    label: str
    key: bytes = field(repr=False)
    auth_key: bytes | None = field(repr=False)
    created: int
    expires: int
    state: KeyState


@dataclass(frozen=True, slots=True)
class TekStateChanged(Change):
    group_id: int
    spi: int
    state: KeyState


@dataclass(frozen=True, slots=True)
class TeksPurged(Change):
    """TEK rows deleted (expired, or deleted by a PUSH)."""

    group_id: int
    spis: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KekAdded(Change):
    group_id: int
    spi: bytes
    algorithm: str
    key: bytes = field(repr=False)  # KEK_ALGORITHM_KEY = IV || key
    created: int
    expires: int
    state: KeyState


@dataclass(frozen=True, slots=True)
class KekActivated(Change):
    """``spi`` becomes the current KEK (the previous current one: old); its SEQ starts at 0."""

    group_id: int
    spi: bytes


@dataclass(frozen=True, slots=True)
class KekDeleted(Change):
    group_id: int
    spi: bytes


@dataclass(frozen=True, slots=True)
class SeqReserved(Change):
    """The last SEQ used (or about to be sent) under KEK ``kek_spi`` is ``seq``."""

    group_id: int
    kek_spi: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class MemberRecorded(Change):
    """A member's row (checkpoints only: registrations write members themselves today)."""

    group_id: int
    identity: str
    address: str
    registered_at: int
    leaf: int | None
    protocol: str = "gdoi"


@dataclass(frozen=True, slots=True)
class MembersRemoved(Change):
    group_id: int
    identities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DenyAdded(Change):
    group_id: int
    identity: str
    at: int
    reason: str


@dataclass(frozen=True, slots=True)
class LkhSaved(Change):
    """The LKH tree's metadata and the chunks that changed (all of them with ``full``), as
    ``gkm.lkh.LkhTree.meta()`` / ``export_chunks()`` give them; ``members``: the tree's member
    count, which the store checks against the members table."""

    group_id: int
    meta: tuple[tuple[str, int], ...]
    chunks: tuple[tuple[int, int, bytes, bytes], ...] = field(repr=False)
    members: int
    full: bool


@dataclass(frozen=True, slots=True)
class LkhDeleted(Change):
    group_id: int
