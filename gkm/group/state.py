"""A group's durable state as a group controller holds it in memory: the rows the key server's
store holds for the group (``gkm.store`` value types), its LKH tree, and the TEK SPIs of the
other groups (SPIs are unique across the store).  :meth:`GroupState.apply` is the in-memory
twin of :func:`gkm.group.storage.apply`: the controller applies each change record it logs to
its own state, so after the shell's commit both hold the same thing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gkm.lkh import LkhTree
from gkm.store import Denied, Kek, KeyState, Member, Tek

from .changes import (Change, DenyAdded, GroupCreated, KekActivated, KekAdded, KekDeleted,
                      LkhDeleted, LkhSaved, MemberRecorded, MembersRemoved, SeqReserved,
                      TekAdded, TekStateChanged, TeksPurged)

__all__ = ["GroupState"]


@dataclass
class GroupState:
    group_id: int
    exists: bool = False
    policy_digest: bytes = field(default=b"", repr=False)
    teks: dict[int, Tek] = field(default_factory=dict)
    keks: dict[bytes, Kek] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict, repr=False)
    denied: dict[str, Denied] = field(default_factory=dict, repr=False)
    tree: LkhTree | None = field(default=None, repr=False)
    #: False until the tree's every chunk was saved once (the next LkhSaved is a full one)
    tree_saved: bool = True
    foreign_spis: frozenset[int] = field(default=frozenset(), repr=False)
    #: the store's generation this state was read at (None: not read from a store)
    generation: int | None = None

    @classmethod
    def empty(cls, group_id: int, *, foreign_spis: frozenset[int] = frozenset()) -> "GroupState":
        return cls(group_id, foreign_spis=foreign_spis)

    # -- queries
    def current_kek(self) -> Kek | None:
        return next((k for k in self.keks.values() if k.state is KeyState.CURRENT), None)

    def teks_in(self, *states: KeyState) -> list[Tek]:
        return sorted((t for t in self.teks.values() if t.state in states),
                      key=lambda t: (t.created, t.spi))

    def spi_taken(self, spi: int) -> bool:
        return spi in self.teks or spi in self.foreign_spis

    def rows(self) -> dict:
        """Everything but the tree's keys, comparable (tests: replay and restart)."""
        return {"exists": self.exists, "digest": self.policy_digest,
                "teks": sorted(self.teks.values(), key=lambda t: t.spi),
                "keks": sorted(self.keks.values(), key=lambda k: k.spi),
                "members": sorted(self.members.values(), key=lambda m: m.identity),
                "denied": sorted(self.denied.values(), key=lambda d: d.identity)}

    # -- the in-memory twin of gkm.group.storage.apply
    def apply(self, c: Change) -> None:
        gid = self.group_id
        match c:
            case GroupCreated():
                self.exists, self.policy_digest = True, c.policy_digest
            case TekAdded():
                self.teks[c.spi] = Tek(gid, c.spi, c.label, c.key, c.auth_key, c.created,
                                       c.expires, c.state)
            case TekStateChanged():
                self.teks[c.spi] = dataclasses.replace(self.teks[c.spi], state=c.state)
            case TeksPurged():
                for s in c.spis:
                    self.teks.pop(s, None)
            case KekAdded():
                if c.state is KeyState.CURRENT:
                    self._demote_current_kek()
                self.keks[c.spi] = Kek(gid, c.spi, c.algorithm, c.key, c.created, c.expires,
                                       c.state, 0)
            case KekActivated():
                self._demote_current_kek()
                self.keks[c.spi] = dataclasses.replace(self.keks[c.spi],
                                                       state=KeyState.CURRENT, seq=0)
            case KekDeleted():
                self.keks.pop(c.spi, None)
            case SeqReserved():
                self.keks[c.kek_spi] = dataclasses.replace(self.keks[c.kek_spi], seq=c.seq)
            case MemberRecorded():
                self.members[c.identity] = Member(gid, c.identity, c.address, c.registered_at,
                                                  c.leaf, c.protocol)
            case MembersRemoved():
                for i in c.identities:
                    self.members.pop(i, None)
            case DenyAdded():
                self.denied.setdefault(c.identity, Denied(gid, c.identity, c.at, c.reason))
            case LkhSaved():
                self.tree_saved = True
            case LkhDeleted():
                self.tree, self.tree_saved = None, True
            case _:
                raise TypeError(f"not a group change record: {c!r}")

    def _demote_current_kek(self) -> None:
        k = self.current_kek()
        if k is not None:
            self.keks[k.spi] = dataclasses.replace(k, state=KeyState.OLD)
