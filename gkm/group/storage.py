"""The shell side of a group controller's durable state: read a group's state out of the key
server's store (:func:`load_state`) and apply a controller's change records to it
(:func:`apply`, one transaction).  The only module of :mod:`gkm.group` that touches the store."""

from __future__ import annotations

from typing import Iterable

from gkm.store import KeyStore

from .changes import (Change, DenyAdded, GroupCreated, KekActivated, KekAdded, KekDeleted,
                      LkhDeleted, LkhSaved, MemberRecorded, MembersRemoved, SeqReserved,
                      TekAdded, TekStateChanged, TeksPurged)
from .state import GroupState

__all__ = ["apply", "load_state"]


def load_state(store: KeyStore, group_id: int) -> GroupState:
    """Group ``group_id`` as the store holds it (an empty state if the store does not know it)."""
    foreign = frozenset(t.spi for g in store.groups() if g.group_id != group_id
                        for t in store.teks(g.group_id))
    g = store.group(group_id)
    if g is None:
        return GroupState.empty(group_id, foreign_spis=foreign)
    return GroupState(
        group_id=group_id, exists=True, policy_digest=g.policy_digest,
        teks={t.spi: t for t in store.teks(group_id)},
        keks={k.spi: k for k in store.keks(group_id)},
        members={m.identity: m for m in store.members(group_id)},
        denied={d.identity: d for d in store.denied(group_id)},
        tree=store.load_lkh(group_id), tree_saved=True, foreign_spis=foreign,
        generation=store.generation)


def apply(store: KeyStore, changes: Iterable[Change]) -> None:
    """Write ``changes`` in order, in one transaction (durable when this returns; on any
    error nothing was written and the error is raised: StoreError and its kinds)."""
    with store.transaction():
        for c in changes:
            _apply_one(store, c)


def _apply_one(store: KeyStore, c: Change) -> None:
    match c:
        case GroupCreated():
            store.add_group(c.group_id, c.policy_digest)
        case TekAdded():
            store.add_tek(c.group_id, c.spi, c.label, c.key, auth_key=c.auth_key,
                          created=c.created, expires=c.expires, state=c.state)
        case TekStateChanged():
            store.set_tek_state(c.group_id, c.spi, c.state)
        case TeksPurged():
            store.delete_teks(c.group_id, c.spis)
        case KekAdded():
            store.add_kek(c.group_id, c.spi, c.algorithm, c.key, created=c.created,
                          expires=c.expires, state=c.state)
        case KekActivated():
            store.activate_kek(c.group_id, c.spi)
        case KekDeleted():
            store.delete_kek(c.group_id, c.spi)
        case SeqReserved():
            store.set_seq(c.group_id, c.kek_spi, c.seq)
        case MemberRecorded():
            store.add_member(c.group_id, c.identity, c.address, registered_at=c.registered_at,
                             leaf=c.leaf, protocol=c.protocol)
        case MembersRemoved():
            store.remove_members(c.group_id, c.identities)
        case DenyAdded():
            store.deny(c.group_id, c.identity, at=c.at, reason=c.reason)
        case LkhSaved():
            store.save_lkh_chunks(c.group_id, dict(c.meta), c.chunks, members=c.members,
                                  full=c.full)
        case LkhDeleted():
            store.delete_lkh(c.group_id)
        case _:
            raise TypeError(f"not a group change record: {c!r}")
