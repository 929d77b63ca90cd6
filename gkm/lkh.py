"""Logical Key Hierarchy (RFC 2627 section 5.4), sans-I/O and pure.

The key server holds an :class:`LkhTree`; each member holds an :class:`LkhMemberView` (its
path keys, leaf to root).  The root key is the group KEK.  Nothing here touches sockets, files
or clocks; randomness comes from ``os.urandom`` (injectable for tests).

Shape of the tree
-----------------
A complete ``degree``-ary tree stored *implicitly*, level by level, leaves first:

* node ``(level, index)``; leaves are level 0; the parent of ``(l, i)`` is ``(l + 1, i // d)``;
  the root is the single node of the top level.  Numbering from the leaves (not from the root, as
  a heap would) means growing the tree by one level on top renumbers nothing.
* per level, three flat buffers: ``keys`` (a ``bytearray``, ``key_len`` bytes per node),
  ``handles`` (``array('I')``, the node's current key handle) and ``counts``
  (``array('I')``, members below the node).  A million-member binary tree is ~2 M nodes in
  a few flat buffers (~64 MB of keys for 32-byte keys + 16 MB of handles and counts), plus
  one dict ``member -> leaf`` and one list ``leaf -> member``: no per-node Python objects.
* keys are generated in bulk (:meth:`LkhTree.build`) or one by one on rekey.

Key identifiers
---------------
A :class:`KeyId` is ``(level, index, handle)``.  ``handle`` is a 32-bit value drawn from a
tree-wide counter: every key ever generated for the tree has a distinct handle, so a handle
alone names one key of one node, and a node's next key always has a larger handle than its
previous one (members use this as a freshness check).  Handles never wrap: when the counter is
exhausted the tree must be rebuilt (:class:`LkhError`), i.e. every member re-registers.

Wire mapping (RFC 6407 section 5.6.3)
-------------------------------------
* LKH_DOWNLOAD_ARRAY (registration, inside the phase-1 protected GROUPKEY-PULL): the member's
  path, leaf first, culminating in the group KEK (:meth:`LkhTree.path`), one LKH Key per node:
  ``LKH ID = level``, ``Key Handle = handle``, ``Key Data = key`` in clear.
* LKH_UPDATE_ARRAY (GROUPKEY-PUSH): :meth:`LkhUpdate.chains` groups the entries into chains in
  which each key is wrapped under the key before it, which is exactly the RFC's layout: the
  array header carries ``(LKH ID, Key Handle)`` of the key wrapping the first LKH Key, each LKH
  Key carries ``(LKH ID, Key Handle)`` of the *new* key and ``Key Data`` = the wrapped new key.
  So an entry ``(wrapping key ID, new key ID, wrapped key)`` maps one to one onto the RFC's
  fields.  :meth:`LkhUpdate.wire_size` counts the bytes that layout takes.
* The RFC's LKH ID is 16 bits, too small to name the ~2 M nodes of a million-member tree.  RFC
  6407 leaves its choice to the GCKS; we put the *level* there, and the handle (unique across
  the tree) in Key Handle.  A member only needs the level: its keys form an array indexed by
  level, and "decrypt the key using the key prior to it in the key array" (RFC 6407 section
  4.4) is exactly how :class:`LkhMemberView` applies an update.  The node index is kept in
  :class:`KeyId` for the server and for tests; members never rely on it.

Why AES key wrap (RFC 3394)
---------------------------
Each new node key is encrypted under a child's key with AES key wrap (``cryptography``'s
``aes_key_wrap``): it is the NIST/IETF construction designed for exactly this job (encrypting
uniformly random keys under a KEK), it is deterministic and needs no IV or nonce management
(every wrapped plaintext is a fresh random key, so determinism leaks nothing), it costs only
8 bytes over the key (vs 16+ for CBC with an explicit IV, 28 for GCM), and its 64-bit integrity
check lets a member detect a tampered or mis-addressed entry (wrong key) instead of installing
garbage.  RFC 5649 (padded) is not needed: key lengths are 16, 24 or 32 bytes.
Consequences for the wire: Key Data carries the 24/32/40-byte wrapped key with no IV, so the
LKH Key's Key Type cannot be KEK_ALG_AES (which RFC 6407 defines as AES-CBC); we use
:data:`KEY_TYPE_AES_KEYWRAP` from the private-use range (128-255).
Limits: key wrap authenticates each entry only against holders of the wrapping key (a member
sharing that key could forge), and does not bind the key IDs.  The authenticity of an update as
a whole is the GROUPKEY-PUSH signature (SIG) over the KD payload, checked by ``gkm.gdoi``
before :meth:`LkhMemberView.apply` is called; the member view adds structural checks (levels,
handle freshness, integrity of every unwrap) and is atomic (all or nothing).

Secrecy
-------
* Forward secrecy (evicted members cannot read the future): :meth:`LkhTree.evict` gives a new
  key to every ancestor of every evicted leaf, each wrapped only under the keys of its children
  that still have members (new keys for children that were themselves renewed), never under a
  key an evicted member held.  Vacated leaves are zeroed and reused by later joins with a fresh
  leaf key.
* Backward secrecy (a joining member cannot read the past) is a policy flag: when set,
  :meth:`LkhTree.join` renews every ancestor of the new leaf that already had members, each new
  key wrapped under the node's previous key (RFC 2627 section 5.4 join), and hands the new member
  only the renewed keys.  When the tree grows a level, the new root is always sent to the existing
  members wrapped under the old root (the group KEK changes on that join in any case).
  Without the flag a joiner receives the current keys of its path, and those keys wrapped earlier
  group keys in past rekey messages: whoever recorded them can recover group keys back to the
  last renewal of each node on the path.  That is what "no backward secrecy" means here.

Ordering: every update carries an ``epoch`` (tree generation, +1 per update).  A member view
refuses updates at or below its epoch (replay) and above epoch + 1 (it missed one and must
re-register).  On the wire the GDOI SEQ plays the replay role; ``gkm.gdoi`` passes the epoch.
"""

from __future__ import annotations

import heapq
import hmac
import os
from array import array
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator, NamedTuple, Sequence

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

__all__ = [
    "KEY_TYPE_AES_KEYWRAP",
    "LKH_VERSION",
    "KeyId",
    "LkhEntry",
    "LkhUpdate",
    "JoinResult",
    "LkhTree",
    "LkhMemberView",
    "LkhError",
    "LkhUpdateError",
    "LkhEvicted",
    "LkhStaleUpdate",
    "LkhOutOfSync",
    "CHUNK_NODES",
]

#: LKH data format version in the RFC 6407 arrays.
LKH_VERSION = 1
#: Key Type for LKH keys whose Key Data is an RFC 3394 wrapped key (RFC 6407 private use range).
KEY_TYPE_AES_KEYWRAP = 128
#: Nodes per persisted chunk (see :meth:`LkhTree.export_chunks`).
CHUNK_NODES = 256

_MAX_HANDLE = 0xFFFFFFFF
_KEYWRAP_OVERHEAD = 8
# RFC 6407 sizes: ISAKMP TLV attribute header, LKH_UPDATE_ARRAY header, LKH Key header.
_ATTR_HDR = 4
_UPDATE_ARRAY_HDR = 12
_LKH_KEY_HDR = 16

assert array("I").itemsize == 4
# KeyId and LkhEntry are NamedTuples: tuple.__new__ builds them without the Python-level
# __new__ (an eviction of 1,000 members makes ~60,000 of them)
_tnew = tuple.__new__


# --------------------------------------------------------------------------------------------
# Errors


class LkhError(Exception):
    """Misuse of the tree (unknown or duplicate member, bad parameters, handle space exhausted)."""


class LkhUpdateError(LkhError):
    """An update is malformed or not authentic; the member view is left unchanged."""


class LkhEvicted(LkhUpdateError):
    """The update renews the group key but this member cannot derive it: it was evicted."""


class LkhStaleUpdate(LkhUpdateError):
    """The update is not newer than the member's state (replayed or duplicated)."""


class LkhOutOfSync(LkhUpdateError):
    """The member missed at least one update; it must re-register (GROUPKEY-PULL)."""


# --------------------------------------------------------------------------------------------
# Value types


class KeyId(NamedTuple):
    """Identity of one key of one node: level (0 = leaf), index in the level, key handle."""

    level: int
    index: int
    handle: int


class LkhEntry(NamedTuple):
    """One wrapped key: ``new`` key wrapped (RFC 3394) under the key named ``wrap``."""

    wrap: KeyId
    new: KeyId
    wrapped: bytes


@dataclass(frozen=True)
class LkhUpdate:
    """Rekey material for the remaining members, entries ordered bottom-up."""

    epoch: int
    entries: tuple[LkhEntry, ...]

    def __repr__(self) -> str:
        return f"LkhUpdate(epoch={self.epoch}, entries={len(self.entries)}, bytes={self.wire_size()})"

    def chains(self) -> tuple[tuple[LkhEntry, ...], ...]:
        """Entries grouped as RFC 6407 LKH_UPDATE_ARRAYs: in each chain, the first entry is
        wrapped under a key the receivers already hold (named in the array header) and every
        following entry is wrapped under the new key of the entry before it.  Computed once
        and kept on the (immutable) update: the key server sizes, splits and encodes it."""
        done = self.__dict__.get("_chains")
        if done is not None:
            return done
        chains: list[list[LkhEntry]] = []
        tail_of: dict[int, list[LkhEntry]] = {}
        for e in self.entries:
            chain = tail_of.pop(e.wrap.handle, None)
            if chain is None:
                chain = []
                chains.append(chain)
            chain.append(e)
            # Several entries carry the same new key (one per child); let the longest chain
            # continue with the entry wrapped under that key.
            other = tail_of.get(e.new.handle)
            if other is None or len(other) < len(chain):
                tail_of[e.new.handle] = chain
        done = tuple(map(tuple, chains))
        object.__setattr__(self, "_chains", done)
        return done

    def to_arrays(self) -> list[tuple[tuple[int, int], list[tuple[int, int, bytes]]]]:
        """The RFC 6407 LKH_UPDATE_ARRAY field values, one per chain:
        ``((LKH ID, Key Handle) of the key wrapping the first LKH Key,
        [(LKH ID, Key Handle, Key Data = wrapped key), ...])``, LKH ID being the node's level.
        (Key Type :data:`KEY_TYPE_AES_KEYWRAP`, dates zero: the codec's business.)"""
        return [
            ((chain[0].wrap.level, chain[0].wrap.handle), [(e.new.level, e.new.handle, e.wrapped) for e in chain])
            for chain in self.chains()
        ]

    @classmethod
    def from_arrays(cls, epoch: int, arrays: Iterable[tuple[tuple[int, int], Sequence[tuple[int, int, bytes]]]]) -> "LkhUpdate":
        """Inverse of :meth:`to_arrays` for a member: node indices are not on the wire and are
        set to -1 (members position keys by level)."""
        entries = []
        for (lvl, handle), keys in arrays:
            wrap = KeyId(lvl, -1, handle)
            for new_level, new_handle, data in keys:
                new = KeyId(new_level, -1, new_handle)
                entries.append(LkhEntry(wrap, new, bytes(data)))
                wrap = new
        return cls(epoch, tuple(entries))

    @classmethod
    def with_chains(cls, epoch: int, entries: tuple[LkhEntry, ...], chains: Sequence[Sequence[LkhEntry]],
                    wire_size: int) -> "LkhUpdate":
        """An update whose :meth:`chains` and :meth:`wire_size` the caller computed already, as
        those would (:mod:`gkm.lkh_parts` does while it sizes each part of a split)."""
        u = cls(epoch, entries)
        object.__setattr__(u, "_chains", tuple(map(tuple, chains)))
        object.__setattr__(u, "_wire_size", wire_size)
        return u

    def min_wire_size(self) -> int:
        """A lower bound of :meth:`wire_size` without grouping the entries (one array, empty
        keys): enough to tell that a 20,000-entry update does not fit one datagram."""
        return _ATTR_HDR + _UPDATE_ARRAY_HDR + _LKH_KEY_HDR * len(self.entries)

    def wire_size(self) -> int:
        """Bytes of the KD payload's LKH key packet: one TLV LKH_UPDATE_ARRAY per chain.
        Kept on the (immutable) update: the key server asks more than once per eviction."""
        size = self.__dict__.get("_wire_size")
        if size is None:
            # per chain a TLV header and an array header, per entry an LKH Key header and data
            size = (len(self.chains()) * (_ATTR_HDR + _UPDATE_ARRAY_HDR)
                    + sum(_LKH_KEY_HDR + len(e.wrapped) for e in self.entries))
            object.__setattr__(self, "_wire_size", size)
        return size


@dataclass(frozen=True)
class JoinResult:
    """What :meth:`LkhTree.join` returns.

    ``path``: the new member's keys, leaf first, root (group KEK) last, for its
    LKH_DOWNLOAD_ARRAY.  ``update``: rekey material for the *existing* members (None when they
    need none).  ``epoch``: the tree epoch the new member starts at.
    """

    leaf: int
    path: tuple[tuple[KeyId, bytes], ...] = field(repr=False)
    update: LkhUpdate | None
    epoch: int
    degree: int

    def download_array(self) -> list[tuple[int, int, bytes]]:
        """RFC 6407 LKH_DOWNLOAD_ARRAY field values, leaf first: (LKH ID = level, Key Handle,
        Key Data = key in clear; the GROUPKEY-PULL that carries it is encrypted)."""
        return [(kid.level, kid.handle, key) for kid, key in self.path]

    def view(self) -> "LkhMemberView":
        return LkhMemberView(self.path, epoch=self.epoch, degree=self.degree)


# --------------------------------------------------------------------------------------------
# Server side


class _Level:
    __slots__ = ("keys", "handles", "counts")

    def __init__(self, keys: bytearray, handles: array, counts: array):
        self.keys = keys
        self.handles = handles
        self.counts = counts

    def __len__(self) -> int:
        return len(self.handles)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _top_for(slots: int, degree: int) -> int:
    """Smallest top level (>= 1) whose root covers ``slots`` leaves."""
    top, span = 1, degree
    while span < slots:
        top += 1
        span *= degree
    return top


class LkhTree:
    """The key server's LKH tree for one group.  Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        degree: int = 2,
        key_len: int = 32,
        backward_secrecy: bool = False,
        random: Callable[[int], bytes] = os.urandom,
    ):
        if not 2 <= degree <= 256:
            raise LkhError(f"degree must be in 2..256, not {degree}")
        if key_len not in (16, 24, 32):
            raise LkhError(f"key_len must be 16, 24 or 32 (AES), not {key_len}")
        self.degree = degree
        self.key_len = key_len
        self.backward_secrecy = backward_secrecy
        self.epoch = 0
        self._random = random
        self._next_handle = 1
        self._leaf_of: dict[Hashable, int] = {}
        self._member_at: list[Hashable | None] = []
        self._vacant: list[int] = []  # heap of vacated leaf indices: reuse the lowest first
        self._dirty: set[tuple[int, int]] = set()
        self._levels: list[_Level] = [self._new_level(0, 0), self._new_level(1, 1)]

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        members: Iterable[Hashable],
        *,
        degree: int = 2,
        key_len: int = 32,
        backward_secrecy: bool = False,
        random: Callable[[int], bytes] = os.urandom,
    ) -> "LkhTree":
        """A tree with ``members`` on leaves 0..n-1, every key generated in bulk."""
        tree = cls(degree=degree, key_len=key_len, backward_secrecy=backward_secrecy, random=random)
        ids = list(members)
        n = len(ids)
        leaf_of = dict(zip(ids, range(n)))
        if len(leaf_of) != n:
            raise LkhError("duplicate member IDs")
        tree._leaf_of = leaf_of
        tree._member_at = ids
        top = _top_for(n, degree)
        levels = []
        span = 1
        for level in range(top + 1):
            size = _ceil_div(n, span) if level < top else 1
            lv = tree._new_level(level, size)
            if size:
                full, rest = divmod(n, span)
                counts = array("I", [span]) * min(full, size)
                if len(counts) < size:
                    counts.append(rest)
                lv.counts = counts
            levels.append(lv)
            span *= degree
        tree._levels = levels
        tree._dirty = {(lv, c) for lv in range(top + 1) for c in range(_ceil_div(len(levels[lv]), CHUNK_NODES))}
        return tree

    def _alloc_handles(self, count: int) -> int:
        first = self._next_handle
        if first + count - 1 > _MAX_HANDLE:
            raise LkhError("key handle space exhausted: rebuild the tree (members re-register)")
        self._next_handle = first + count
        return first

    def _reserve(self, count: int) -> None:
        """Fail before changing anything if ``count`` more handles are not available."""
        if self._next_handle + count - 1 > _MAX_HANDLE:
            raise LkhError("key handle space exhausted: rebuild the tree (members re-register)")

    def _new_level(self, level: int, size: int) -> _Level:
        first = self._alloc_handles(size)
        keys = bytearray(size * self.key_len)
        step = 1 << 20  # fill in 1 MiB slices: no second full-size copy at build time
        for off in range(0, len(keys), step):
            keys[off:off + step] = self._random(min(step, len(keys) - off))
        return _Level(
            keys,
            array("I", range(first, first + size)),
            array("I", bytes(4 * size)),
        )

    # -- inspection ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"LkhTree(members={len(self._leaf_of)}, leaves={len(self._levels[0])}, "
            f"depth={self.depth}, degree={self.degree}, epoch={self.epoch})"
        )

    def __len__(self) -> int:
        return len(self._leaf_of)

    def __contains__(self, member_id: Hashable) -> bool:
        return member_id in self._leaf_of

    @property
    def depth(self) -> int:
        """Level of the root (number of keys on a path minus one)."""
        return len(self._levels) - 1

    @property
    def next_handle(self) -> int:
        return self._next_handle

    def members(self) -> Iterator[tuple[Hashable, int]]:
        """(member ID, leaf) pairs."""
        return iter(self._leaf_of.items())

    def leaf_of(self, member_id: Hashable) -> int:
        try:
            return self._leaf_of[member_id]
        except KeyError:
            raise LkhError(f"unknown member {member_id!r}") from None

    def _key(self, level: int, index: int) -> bytes:
        k = self.key_len
        return bytes(self._levels[level].keys[index * k:(index + 1) * k])

    def key(self, kid: KeyId) -> bytes:
        """The current key of node ``kid`` (for re-wrapping an update in another format, e.g.
        G-IKEv2's RFC 5649 WRAP_KEYs); refuses a key ID the node no longer has."""
        if self._levels[kid.level].handles[kid.index] != kid.handle:
            raise LkhError(f"key {kid} is not the node's current key")
        return self._key(kid.level, kid.index)

    def key_id(self, level: int, index: int) -> KeyId:
        return KeyId(level, index, self._levels[level].handles[index])

    def group_key(self) -> tuple[KeyId, bytes]:
        """The root: the group KEK."""
        top = self.depth
        return self.key_id(top, 0), self._key(top, 0)

    def path(self, member_id: Hashable) -> tuple[tuple[KeyId, bytes], ...]:
        """The member's keys, leaf first, for its LKH_DOWNLOAD_ARRAY."""
        index = self.leaf_of(member_id)
        d, k = self.degree, self.key_len
        out = []
        for level, lv in enumerate(self._levels):
            out.append((KeyId(level, index, lv.handles[index]), bytes(lv.keys[index * k:(index + 1) * k])))
            index //= d
        return tuple(out)

    def node_count(self) -> int:
        return sum(len(lv) for lv in self._levels)

    # -- mutation helpers ------------------------------------------------------------------

    def _renew(self, level: int, index: int) -> bytes:
        """Fresh key and handle for a node; returns the new key."""
        k = self.key_len
        lv = self._levels[level]
        key = self._random(k)
        lv.keys[index * k:(index + 1) * k] = key
        lv.handles[index] = self._alloc_handles(1)
        self._dirty.add((level, index // CHUNK_NODES))
        return key

    def _append_node(self, level: int) -> None:
        lv = self._levels[level]
        lv.keys += self._random(self.key_len)
        lv.handles.append(self._alloc_handles(1))
        lv.counts.append(0)
        self._dirty.add((level, (len(lv) - 1) // CHUNK_NODES))

    def _wrap(self, wrap: KeyId, new: KeyId, new_key: bytes) -> LkhEntry:
        return LkhEntry(wrap, new, aes_key_wrap(self._key(wrap.level, wrap.index), new_key))

    # -- join ------------------------------------------------------------------------------

    def join(self, member_id: Hashable) -> JoinResult:
        """Place a member on a leaf (the lowest vacated one, else a new one).

        Returns its path keys and, when existing members must learn new keys (backward
        secrecy policy, or the tree grew a level), an update for them.
        """
        if member_id in self._leaf_of:
            raise LkhError(f"member {member_id!r} already in the tree")
        d = self.degree
        self._reserve(2 * (self.depth + 2))
        entries: list[LkhEntry] = []
        grown: set[int] = set()
        if self._vacant:
            leaf = heapq.heappop(self._vacant)
            self._renew(0, leaf)
            self._member_at[leaf] = member_id
        else:
            leaf = len(self._levels[0])
            slots = leaf + 1
            # Grow on top first: the old root becomes child 0 of a new root.
            while d ** self.depth < slots:
                old_top = self.depth
                self._levels.append(self._new_level(old_top + 1, 1))
                self._levels[-1].counts[0] = self._levels[old_top].counts[0]
                self._dirty.add((old_top + 1, 0))
                grown.add(old_top + 1)
            # New nodes from the leaf up, only where the leaf starts a new subtree.
            self._append_node(0)
            index = leaf
            for level in range(1, self.depth):
                index //= d
                if index < len(self._levels[level]):
                    break
                self._append_node(level)
            self._member_at.append(member_id)
        # Bottom-up over the ancestors that already have members: with backward secrecy each
        # gets a new key wrapped under its previous key (RFC 2627 5.4 join); a root created by
        # growth is fresh and goes to the existing members wrapped under the old root's
        # (possibly just renewed) key.
        # Nodes nobody holds yet (count 0) are renewed too under backward secrecy: the joiner
        # must not learn a key that existed before it joined, even one nobody held.
        index = leaf
        for level in range(1, self.depth + 1):
            index //= d
            if self._levels[level].counts[index] == 0:
                if self.backward_secrecy and level not in grown:
                    self._renew(level, index)
                continue
            if level in grown:
                entries.append(self._wrap(self.key_id(level - 1, 0), self.key_id(level, 0), self._key(level, 0)))
            elif self.backward_secrecy:
                old, old_key = self.key_id(level, index), self._key(level, index)
                new_key = self._renew(level, index)
                entries.append(LkhEntry(old, self.key_id(level, index), aes_key_wrap(old_key, new_key)))
        self._leaf_of[member_id] = leaf
        index = leaf
        for level in range(self.depth + 1):
            self._levels[level].counts[index] += 1
            index //= d
        self._dirty.add((0, leaf // CHUNK_NODES))
        update = None
        if entries:
            self.epoch += 1
            update = LkhUpdate(self.epoch, tuple(entries))
        return JoinResult(leaf, self.path(member_id), update, self.epoch, d)

    # -- evict -----------------------------------------------------------------------------

    def evict(self, member_ids: Sequence[Hashable]) -> LkhUpdate:
        """Remove members (a batch) and renew every key on their paths.

        Each renewed key is wrapped under the current key of each child that still has
        members (a child renewed in this batch contributes its new key), so every remaining
        member can climb from its leaf to the new root, and no evicted member can.
        Cost: at most (d - 1) + d * (depth - 1) entries per evicted member, fewer when paths
        share ancestors.
        """
        ids = list(member_ids)
        if not ids:
            raise LkhError("nothing to evict")
        if len(set(ids)) != len(ids):
            raise LkhError("duplicate member IDs in eviction batch")
        leaves = [self.leaf_of(m) for m in ids]  # validate all before changing anything
        levels = self._levels
        depth = len(levels) - 1
        self._reserve(len(leaves) * depth)
        d, k = self.degree, self.key_len
        leaf_level = levels[0]
        dead = bytes(k)
        dirty = self._dirty
        counts = [lv.counts for lv in levels]
        for m, leaf in zip(ids, leaves):
            del self._leaf_of[m]
            self._member_at[leaf] = None
            leaf_level.keys[leaf * k:(leaf + 1) * k] = dead  # the leaf key is dead
            dirty.add((0, leaf // CHUNK_NODES))
            heapq.heappush(self._vacant, leaf)
            index = leaf
            for c in counts:
                c[index] -= 1
                index //= d
        # The nodes to renew, level by level, each level's in index order: the order of the
        # entries (bottom-up, as gkm.lkh_parts needs) and of the new handles.  Knowing them
        # all first lets one call draw every new key and one allocation give every handle.
        plan: list[list[int]] = []
        renew = sorted({leaf // d for leaf in leaves})
        for _level in range(1, depth + 1):
            plan.append(renew)
            # sorted input, non-decreasing parents: dropping repeats keeps them sorted
            parents = [renew[0] // d]
            for index in renew:
                p = index // d
                if p != parents[-1]:
                    parents.append(p)
            renew = parents
        total = sum(map(len, plan))
        fresh = self._random(total * k)
        if len(fresh) != total * k:
            raise LkhError(f"random source gave {len(fresh)} bytes, asked for {total * k}")
        handle = self._alloc_handles(total)
        entries: list[LkhEntry] = []
        append = entries.append
        new, wrap = _tnew, aes_key_wrap
        pos = 0
        for level, indices in enumerate(plan, 1):
            lv, below = levels[level], levels[level - 1]
            keys, handles = lv.keys, lv.handles
            b_keys, b_handles, b_counts = below.keys, below.handles, below.counts
            n_below, b_level = len(b_counts), level - 1
            dirty.update({(level, index // CHUNK_NODES) for index in indices})
            for index in indices:
                new_key = fresh[pos:pos + k]
                pos += k
                keys[index * k:(index + 1) * k] = new_key
                handles[index] = handle
                new_id = new(KeyId, (level, index, handle))
                handle += 1
                # wrapped under each child's current key: the new one if the child was
                # renewed at the level below (already written), never an evicted leaf's
                lo = index * d
                for child in range(lo, lo + d if lo + d <= n_below else n_below):
                    if b_counts[child]:
                        at = child * k
                        append(new(LkhEntry, (new(KeyId, (b_level, child, b_handles[child])), new_id,
                                              wrap(b_keys[at:at + k], new_key))))
        self.epoch += 1
        return LkhUpdate(self.epoch, tuple(entries))

    # -- persistence -----------------------------------------------------------------------

    def meta(self) -> dict[str, int]:
        """Small scalar state; with :meth:`export_chunks` and the member map, the whole tree."""
        return {
            "degree": self.degree,
            "key_len": self.key_len,
            "backward_secrecy": int(self.backward_secrecy),
            "epoch": self.epoch,
            "next_handle": self._next_handle,
            "leaves": len(self._levels[0]),
            "depth": self.depth,
        }

    def export_chunks(self, dirty_only: bool = False) -> Iterator[tuple[int, int, bytes, bytes]]:
        """``(level, chunk, handles, keys)`` per run of :data:`CHUNK_NODES` nodes; with
        ``dirty_only``, only the chunks changed since :meth:`mark_clean`."""
        k = self.key_len
        if dirty_only:
            wanted: dict[int, list[int]] = {}
            for level, chunk in sorted(self._dirty):
                wanted.setdefault(level, []).append(chunk)
        else:
            wanted = {lv: list(range(_ceil_div(len(self._levels[lv]), CHUNK_NODES))) for lv in range(len(self._levels))}
        for level, chunks in wanted.items():
            lv = self._levels[level]
            n = len(lv)
            # one copy per chunk (slicing the buffers themselves would copy twice); the views
            # live only while one level is copied, never across a yield: the caller may grow
            # the tree meanwhile
            with memoryview(lv.handles) as handles, memoryview(lv.keys) as keys:
                out = [(level, c, handles[c * CHUNK_NODES:min(n, (c + 1) * CHUNK_NODES)].tobytes(),
                        keys[c * CHUNK_NODES * k:min(n, (c + 1) * CHUNK_NODES) * k].tobytes())
                       for c in chunks]
            yield from out

    def mark_clean(self) -> None:
        self._dirty.clear()

    @classmethod
    def restore(
        cls,
        meta: dict[str, int],
        chunks: Iterable[tuple[int, int, bytes, bytes]],
        members: Iterable[tuple[Hashable, int]],
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> "LkhTree":
        """Inverse of :meth:`meta` + :meth:`export_chunks` + :meth:`members`.  Raises
        :class:`LkhError` on any inconsistency (missing chunk, bad sizes, leaf out of range)."""
        tree = cls(
            degree=meta["degree"], key_len=meta["key_len"],
            backward_secrecy=bool(meta["backward_secrecy"]), random=random,
        )
        d, k = tree.degree, tree.key_len
        n, depth = meta["leaves"], meta["depth"]
        if depth != _top_for(n, d):
            raise LkhError(f"stored depth {depth} does not match {n} leaves of degree {d}")
        tree.epoch = meta["epoch"]
        tree._next_handle = meta["next_handle"]
        sizes = []
        span = 1
        for level in range(depth + 1):
            sizes.append(_ceil_div(n, span) if level < depth else 1)
            span *= d
        parts: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        for level, chunk, handles, keys in chunks:
            parts[(level, chunk)] = (handles, keys)
        levels = []
        for level, size in enumerate(sizes):
            h, kb = array("I"), bytearray()
            for chunk in range(_ceil_div(size, CHUNK_NODES)):
                try:
                    handles, keys = parts.pop((level, chunk))
                except KeyError:
                    raise LkhError(f"missing LKH chunk level {level} chunk {chunk}") from None
                h.frombytes(handles)
                kb += keys
            if len(h) != size or len(kb) != size * k:
                raise LkhError(f"LKH level {level}: {len(h)} handles, {len(kb)} key bytes for {size} nodes")
            levels.append(_Level(kb, h, array("I", bytes(4 * size))))
        if parts:
            raise LkhError(f"unexpected LKH chunks {sorted(parts)[:3]}")
        tree._levels = levels
        tree._member_at = [None] * n
        counts0 = levels[0].counts
        for member_id, leaf in members:
            if not 0 <= leaf < n or tree._member_at[leaf] is not None or member_id in tree._leaf_of:
                raise LkhError(f"bad or duplicate leaf {leaf} for member {member_id!r}")
            tree._member_at[leaf] = member_id
            tree._leaf_of[member_id] = leaf
            counts0[leaf] = 1
        for level in range(1, depth + 1):
            below, cur = levels[level - 1].counts, levels[level].counts
            for child, c in enumerate(below):
                if c:
                    cur[child // d] += c
        tree._vacant = [i for i, m in enumerate(tree._member_at) if m is None]
        heapq.heapify(tree._vacant)
        return tree


# --------------------------------------------------------------------------------------------
# Member side


class LkhMemberView:
    """A member's keys: one per level, leaf (level 0) first, group KEK last."""

    @classmethod
    def from_download_array(cls, keys: Sequence[tuple[int, int, bytes]], *, epoch: int) -> "LkhMemberView":
        """From RFC 6407 LKH_DOWNLOAD_ARRAY values (see :meth:`JoinResult.download_array`)."""
        return cls([(KeyId(level, -1, handle), bytes(key)) for level, handle, key in keys], epoch=epoch)

    def __init__(self, path: Sequence[tuple[KeyId, bytes]], *, epoch: int, degree: int = 2):
        if not path:
            raise LkhError("empty LKH path")
        for level, (kid, key) in enumerate(path):
            if kid.level != level or len(key) not in (16, 24, 32):
                raise LkhError(f"bad LKH path at position {level}")
        self._path: list[tuple[KeyId, bytes]] = [(kid, bytes(key)) for kid, key in path]
        self.epoch = epoch
        self.degree = degree

    def __repr__(self) -> str:
        return f"LkhMemberView(depth={len(self._path) - 1}, epoch={self.epoch}, group_key={self._path[-1][0]})"

    @property
    def group_key(self) -> tuple[KeyId, bytes]:
        return self._path[-1]

    @property
    def path(self) -> tuple[tuple[KeyId, bytes], ...]:
        return tuple(self._path)

    def apply(self, update: LkhUpdate) -> None:
        """Unwrap, bottom-up, every entry wrapped under a key this member holds (or has just
        unwrapped) and install the new keys.  All or nothing: on any error the view is left
        unchanged.  Raises :class:`LkhStaleUpdate`, :class:`LkhOutOfSync`,
        :class:`LkhEvicted` or :class:`LkhUpdateError` (malformed / integrity failure).
        An update split over several messages goes through :mod:`gkm.lkh_parts` instead."""
        self._check_epoch(update)
        self._check_not_empty(update)
        by_wrap, top_touched = self._index(update)
        path = list(self._path)
        renewed: set[int] = set()
        changed_top = self._climb(path, by_wrap, renewed)
        self._check_complete(renewed, top_touched, changed_top)
        self._path = path
        self.epoch = update.epoch

    # The steps of apply, shared with gkm.lkh_parts (parts of one update applied one by one).

    def _check_epoch(self, update: LkhUpdate) -> None:
        if update.epoch <= self.epoch:
            raise LkhStaleUpdate(f"update epoch {update.epoch} not newer than {self.epoch}")
        if update.epoch != self.epoch + 1:
            raise LkhOutOfSync(f"update epoch {update.epoch}, expected {self.epoch + 1}: re-register")

    @staticmethod
    def _check_not_empty(update: LkhUpdate) -> None:
        """An update without entries is what :meth:`LkhTree.evict` returns when nobody is
        left: the root was renewed (every node of an evicted path is) and wrapped for no one.
        No member can derive the new group key from it, so whoever receives it is evicted."""
        if not update.entries:
            raise LkhEvicted("the update renews the group key for nobody (the tree is empty): evicted")

    def _index(self, update: LkhUpdate) -> tuple[dict[int, list[tuple[int, LkhEntry]]], bool]:
        """Structural checks of every entry; the entries by wrapping key handle, and whether
        the update renews the group key (an entry at the top level or above).  The result
        depends only on the (immutable) update, the key length and the depth, so it is kept
        on the update: many views applying one update (a simulation, a test) check it once."""
        key_len = len(self._path[0][1])
        top = len(self._path) - 1
        cache = update.__dict__.setdefault("_member_index", {})
        hit = cache.get((key_len, top))
        if hit is not None:
            return hit
        by_wrap: dict[int, list[tuple[int, LkhEntry]]] = {}
        top_touched = False
        for n, e in enumerate(update.entries):
            if not (isinstance(e, LkhEntry) and isinstance(e.wrap, KeyId) and isinstance(e.new, KeyId)):
                raise LkhUpdateError(f"entry {n}: not an LKH entry")
            w, nw = e.wrap, e.new
            if w.handle <= 0 or nw.handle <= 0 or w.level < 0 or nw.level not in (w.level, w.level + 1):
                raise LkhUpdateError(f"entry {n}: key {nw} cannot be wrapped under {w}")
            if nw.handle == w.handle:
                raise LkhUpdateError(f"entry {n}: key wrapped under itself")
            if len(e.wrapped) != key_len + _KEYWRAP_OVERHEAD:
                raise LkhUpdateError(f"entry {n}: wrapped key is {len(e.wrapped)} bytes, expected {key_len + _KEYWRAP_OVERHEAD}")
            by_wrap.setdefault(w.handle, []).append((n, e))
            if nw.level >= top:
                top_touched = True
        cache[(key_len, top)] = (by_wrap, top_touched)
        return by_wrap, top_touched

    def _climb(self, path: list[tuple[KeyId, bytes]], by_wrap: dict[int, list[tuple[int, LkhEntry]]],
               renewed: set[int]) -> bool:
        """Unwrap into ``path`` (a copy of this view's path), leaf first, every entry wrapped
        under a key of ``path`` (``by_wrap`` is only read); ``renewed`` collects the levels given a new key (and is
        checked against: one new key per level).  Returns whether the group key changed."""
        top = len(self._path) - 1
        changed_top = False
        i = 0
        while i < len(path):
            held, key = path[i]
            # (get, not pop: a handle names one key of one level, so each is met once)
            todo = by_wrap.get(held.handle, ())
            renewed_here = False
            for n, e in todo:
                if e.wrap.level != i:
                    raise LkhUpdateError(f"entry {n}: wrapping key {e.wrap} is at level {i} in this member's path")
                try:
                    new_key = aes_key_unwrap(key, e.wrapped)
                except InvalidUnwrap:
                    raise LkhUpdateError(f"entry {n}: integrity check failed unwrapping {e.new} under {e.wrap} (tampered or unauthentic)") from None
                pos = e.new.level
                if pos < len(path):
                    old = path[pos][0]
                    if e.new.handle == old.handle:
                        if not hmac.compare_digest(new_key, path[pos][1]):
                            raise LkhUpdateError(f"entry {n}: conflicting keys for {e.new}")
                        continue
                    if pos in renewed:
                        raise LkhUpdateError(f"entry {n}: second new key {e.new} for level {pos}")
                    if e.new.handle < old.handle:
                        raise LkhUpdateError(f"entry {n}: key {e.new} is older than held {old}")
                    if pos == i:
                        renewed_here = True
                elif pos == len(path):
                    # The tree grew a level: the new root, wrapped under our old root.
                    pass
                else:  # pragma: no cover - excluded by the level check above
                    raise LkhUpdateError(f"entry {n}: level {pos} beyond path")
                new_entry = (e.new, new_key)
                renewed.add(pos)
                if pos < len(path):
                    path[pos] = new_entry
                else:
                    path.append(new_entry)
                if pos >= top:
                    changed_top = True
            if not renewed_here:
                i += 1
        return changed_top

    def _check_complete(self, renewed: set[int], top_touched: bool, changed_top: bool) -> None:
        top = len(self._path) - 1
        if top_touched and not changed_top:
            raise LkhEvicted("the update renews the group key and none of this member's keys can unwrap it (evicted)")
        # A renewed node implies renewed ancestors (eviction and backward-secret joins renew
        # whole paths up to the root): a gap means the update was truncated or forged.
        if renewed and min(renewed) <= top:
            missing = [lvl for lvl in range(min(renewed), top + 1) if lvl not in renewed]
            if missing:
                raise LkhUpdateError(f"incomplete update: new key at level {min(renewed)} but none at levels {missing}")
