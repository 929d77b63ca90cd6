"""The key server's group controller: one per group, sans-I/O (the shape of aioquic's
``QuicConnection``).  It owns the group's key timeline (TEK and KEK deadlines), its LKH tree,
its SEQ, and builds the GROUPKEY-PUSH datagrams of every rekey (RFC 6407 section 4).

Inputs: user calls (:meth:`GroupController.rekey`, :meth:`~GroupController.evict`,
:meth:`~GroupController.update_policy` on reload), :meth:`~GroupController.handle_timer`, and
:meth:`~GroupController.resync` with the group's state as the store holds it (registrations,
which still write the store themselves, gkm.gdoi.provider, change it behind the controller).
Outputs: :meth:`~GroupController.pending_changes`, then, after the shell's commit,
:meth:`~GroupController.datagrams_to_send`, :meth:`~GroupController.next_event` and
:meth:`~GroupController.get_timer`.  No output getter does I/O or changes durable state.

The change log (decision; what key server redundancy will build on)
--------------------------------------------------------------------
Every durable effect of a decision is a typed record (:mod:`gkm.group.changes`: new TEK, TEK
state change or purge, new KEK, KEK activation, SEQ reserved, members removed, deny entry,
LKH tree saved, ...), appended in order to the controller's log and applied at once to the
controller's own in-memory state (:meth:`gkm.group.state.GroupState.apply`).  The shell
applies the pending records to the store in ONE transaction (:func:`gkm.group.storage.apply`)
and then calls :meth:`~GroupController.committed`; only then are the PUSH datagrams that
depend on them released.  If the commit fails, :meth:`~GroupController.commit_failed`: the
datagrams are dropped, nothing was sent, and the controller refuses everything until the
shell gives it the store's state again (:meth:`~GroupController.resync`).

So a SEQ, a key or a tree node is never on the wire before it is durable, and the records
alone, applied in order, reproduce the store: :meth:`~GroupController.checkpoint` gives the
records that rebuild the group from an empty store, the log after it everything since.
Key server redundancy will keep exactly this shape: one writer (controller) per group,
elected; its records replicated (etcd) before ``committed``; a standby builds its controller
from the checkpoint plus the replicated log and takes over with the same tree, SEQ and keys.

Time: ``now`` is Unix seconds (the keys' expiry times are absolute, persisted and sent as
remaining lifetimes, so they must survive a restart); the shell re-reads the clock when a
timer fires, and a deadline found early or late is simply taken again at the next
``get_timer``.

Rotation (policy ``[keyserver.group.kek]``): a TEK's successor is pushed
``policy.tek_rekey_lead`` seconds before it expires, the KEK's ``kek_rekey_lead`` before it
expires; a PUSH sent while the KEK is within its lead carries the new KEK too (sent under the
old one, RFC 6407 section 4), so members never hold an expired Rekey SA.  Old TEKs and KEKs are
purged from the state when they expire.  Evictions wait for the batch window
(``evict_batch_window``) and leave together; identities on the deny list that are still
registered are exactly the evictions not done yet, so a crash between the deny entry and the
rekey loses nothing (the rekey goes out at the next start).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable

from gkm.events import Event
from gkm.gdoi.keys import new_kek_keymat, new_tek_keymat, random_spi
from gkm.gdoi.provider import KekKeys, TekKeys, tek_label
from gkm.gdoi.push import build_push, lkh_kek_keymat, lkh_update_parts
from gkm.ikev2.gcks import serves_g_ikev2
from gkm.ikev2.group_rekey import gsa_rekey, signature_for
from gkm.wire.errors import WireError
from gkm.store import SEQ_MAX, Kek, KeyState, Tek
from policy.model import GroupPolicy, TekPolicy, kek_rekey_lead, tek_rekey_lead

from .changes import (Change, DenyAdded, GroupCreated, KekActivated, KekAdded, KekDeleted,
                      LkhDeleted, LkhSaved, MemberRecorded, MembersRemoved, SeqReserved,
                      TekAdded, TekStateChanged, TeksPurged)
from .events import (EvictionScheduled, GroupDissolved, GroupRekeyed, KeysAnnounced, KeysPurged,
                     KeysRotated, MembersEvicted)
from .state import GroupState
from .values import (ControllerRefused, ControllerState, EvictionResult, Push, RekeyResult,
                     Signer)

__all__ = ["GroupController", "ControllerState", "ControllerRefused", "Signer", "Push",
           "RekeyResult", "EvictionResult"]


def _name_of(t: Tek) -> str:
    return t.algorithm.split("/", 1)[0]


def _suite_of(t: Tek) -> str:
    return t.algorithm.split("/", 1)[1] if "/" in t.algorithm else ""


class GroupController:
    def __init__(self, policy: GroupPolicy, state: GroupState, *, now: float,
                 signer: Signer | None = None, signer_error: str | None = None,
                 random: Callable[[int], bytes] = os.urandom,
                 rekey_source: tuple[str, int] | None = None) -> None:
        if state.group_id != policy.group_id:
            raise ValueError(f"state of group {state.group_id} for group {policy.group_id}")
        self.policy = policy
        self._state = state
        self._signer = signer
        self._signer_error = signer_error
        self._random = random
        #: the GSA_REKEY source selector (G-IKEv2 registration's: the key server's address)
        self._rekey_source = rekey_source
        self._pending: list[Change] = []
        self._pending_pushes: list[Push] = []
        self._pending_events: list[Event] = []
        self._out: list[Push] = []
        self._events: deque[Event] = deque()
        self._stale = False
        self._batch_at: float | None = None
        self._schedule_leftovers(now)

    def __repr__(self) -> str:
        return f"GroupController(group={self.group_id}, {self.state.value})"

    # -- what it holds ----------------------------------------------------------------------
    @property
    def group_id(self) -> int:
        return self.policy.group_id

    @property
    def group_state(self) -> GroupState:
        """The controller's view of the group's durable state (read only for the shell)."""
        return self._state

    @property
    def state(self) -> ControllerState:
        if self._stale:
            return ControllerState.STALE
        if self._pending:
            return ControllerState.COMMITTING
        if not self._state.teks_in(KeyState.CURRENT, KeyState.NEXT) \
                and self._state.current_kek() is None:
            return ControllerState.NO_KEYS
        return ControllerState.READY

    def current_tek_spis(self) -> frozenset[int]:
        return frozenset(t.spi for t in self._state.teks_in(KeyState.CURRENT))

    def pending_evictions(self) -> tuple[str, ...]:
        """Registered members on the deny list: evicted, rekey not sent yet (in deny order;
        the deny list is walked, not the membership, which may hold millions)."""
        members = self._state.members
        return tuple(i for i in self._state.denied if i in members)

    # -- shell protocol ---------------------------------------------------------------------
    def pending_changes(self) -> tuple[Change, ...]:
        """The records to write, in order, in one transaction, before :meth:`committed`."""
        return tuple(self._pending)

    def committed(self, now: float) -> None:
        """The shell wrote :meth:`pending_changes` durably: release their datagrams/events."""
        if self.state is not ControllerState.COMMITTING:
            raise ControllerRefused(f"group {self.group_id}: nothing to commit "
                                    f"({self.state.value})")
        if self._state.tree is not None and any(isinstance(c, LkhSaved) for c in self._pending):
            self._state.tree.mark_clean()
        self._out.extend(self._pending_pushes)
        self._events.extend(self._pending_events)
        self._pending, self._pending_pushes, self._pending_events = [], [], []

    def commit_failed(self) -> None:
        """The commit failed (nothing written): drop the datagrams; resync() before anything."""
        if self.state is not ControllerState.COMMITTING:
            raise ControllerRefused(f"group {self.group_id}: nothing to commit "
                                    f"({self.state.value})")
        self._pending, self._pending_pushes, self._pending_events = [], [], []
        self._stale = True

    def resync(self, state: GroupState, now: float) -> None:
        """The group as the store holds it now (after registrations, or a failed commit)."""
        if self.state is ControllerState.COMMITTING:
            raise ControllerRefused(f"group {self.group_id}: resync while changes wait for "
                                    "their commit")
        if state.group_id != self.group_id:
            raise ControllerRefused(f"state of group {state.group_id} for group "
                                    f"{self.group_id}")
        self._state = state
        self._stale = False
        self._pending, self._pending_pushes, self._pending_events = [], [], []
        self._schedule_leftovers(now)

    def datagrams_to_send(self) -> list[Push]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The next deadline (Unix seconds): batch window end, a key's purge, a rotation."""
        if self.state in (ControllerState.COMMITTING, ControllerState.STALE):
            return None
        when = [w for w in (self._batch_at, self._purge_deadline(), self._rotation_deadline())
                if w is not None]
        return min(when) if when else None

    def checkpoint(self) -> list[Change]:
        """Records that rebuild this group's state on an empty store (then the log since)."""
        s, gid = self._state, self.group_id
        out: list[Change] = [GroupCreated(gid, s.policy_digest)] if s.exists else []
        keks = sorted(s.keks.values(), key=lambda k: (k.state is KeyState.CURRENT, k.created))
        for k in keks:
            out.append(KekAdded(gid, k.spi, k.algorithm, k.key, k.created, k.expires, k.state))
            if k.seq:
                out.append(SeqReserved(gid, k.spi, k.seq))
        for t in s.teks_in(KeyState.OLD, KeyState.CURRENT, KeyState.NEXT):
            out.append(TekAdded(gid, t.spi, t.algorithm, t.key, t.auth_key, t.created,
                                t.expires, t.state))
        for m in s.members.values():
            out.append(MemberRecorded(gid, m.identity, m.address, m.registered_at, m.leaf,
                                      m.protocol))
        for d in s.denied.values():
            out.append(DenyAdded(gid, d.identity, d.at, d.reason))
        if s.tree is not None:
            out.append(LkhSaved(gid, tuple(s.tree.meta().items()),
                                tuple(s.tree.export_chunks()), len(s.tree), True))
        return out


    # -- user calls -------------------------------------------------------------------------
    # Each input either logs all of its records or none: one that fails half-way (a SEQ
    # exhausted, an LKH update too large to split) leaves the controller STALE, its records
    # dropped, the store untouched, until the shell reads the store again (resync).
    def _atomic(self, fn, *args):
        had = len(self._pending)
        try:
            return fn(*args)
        except BaseException:
            if len(self._pending) > had or self._stale:
                self._stale = True
            raise

    def rekey(self, now: float) -> "RekeyResult":
        """``msecctl rekey``: new TEKs for every TEK policy by one PUSH (and a new KEK with
        them if the current one is within its lead time)."""
        return self._atomic(self._rekey, now)

    def announce(self, now: float) -> "RekeyResult":
        """The current keys again, in one PUSH under the current KEK with a fresh SEQ; nothing
        new is made.  The shell calls it when the key server starts: a PUSH is committed
        before it is sent, so one may have been lost with the process (kill -9 between the
        commit and the send).  Members that missed it install its TEKs now; the others hold
        them already and only take the SEQ.  Refused (ControllerRefused) without keys."""
        return self._atomic(self._announce, now)

    def evict(self, identities: Iterable[str], reason: str, now: float) -> "EvictionResult":
        """Evict registered members (store keys ``kind:value``) and put every named identity
        on the deny list (persistent; ``msecctl deny lift``).  Within the batch window the
        rekey waits (``mode="scheduled"``); otherwise it goes out now with every eviction
        still pending."""
        return self._atomic(self._evict, identities, reason, now)

    def update_policy(self, policy: GroupPolicy, now: float, *, signer: Signer | None = None,
                      signer_error: str | None = None) -> "RekeyResult | None":
        """A reload gave the group a new policy.  TEK policies removed: their TEKs are deleted
        by PUSH; TEK policies whose suite, selector or mode changed, and new ones: new TEKs by
        the same PUSH (the changed ones' old TEKs deleted); a new KEK cipher or PUSH signing key:
        a new KEK in it (signed with the previous key, the one members know).
        Without a KEK (or keys) nothing can be pushed: the TEKs concerned are retired and
        registrations get new ones.  Lifetimes and lead times apply from the next rotation."""
        return self._atomic(self._update_policy, policy, now, signer, signer_error)

    def dissolve(self, now: float) -> GroupDissolved:
        """The group is being deleted: one PUSH deleting the KEK and every TEK at the members
        (if one can be sent), the members removed from the state.  The controller is dropped
        after this; the deny list stays in the store."""
        return self._atomic(self._dissolve, now)

    def plan_policy(self, policy: GroupPolicy) -> tuple[list[Tek], list[TekPolicy], bool]:
        """What :meth:`update_policy` with ``policy`` would replace, changing nothing
        (``msecctl reload --check``): the TEKs retired (policy removed, or its suite, selector
        or mode changed), the TEK policies that get new TEKs, and whether the KEK cipher
        changed (a new KEK).  A new signing key also brings a new KEK (not seen here)."""
        old_tps = {tp.name: tp for tp in self.policy.teks}
        new_tps = {tp.name: tp for tp in policy.teks}
        live = self._state.teks_in(KeyState.CURRENT, KeyState.NEXT)
        retire: list[Tek] = []
        for t in live:
            name = _name_of(t)
            tp, was = new_tps.get(name), old_tps.get(name)
            if tp is None or tp.suite.name != _suite_of(t) or (
                    was is not None and (was.selector != tp.selector or was.mode != tp.mode)):
                retire.append(t)
        have = {_name_of(t) for t in live if t not in retire}
        fresh = [tp for tp in policy.teks if tp.name not in have]
        kek = self._state.current_kek()
        kek_cipher_changed = (policy.kek is not None and kek is not None
                              and kek.algorithm != policy.kek.cipher.name)
        return retire, fresh, kek_cipher_changed

    def handle_timer(self, now: float) -> None:
        """Whatever is due at ``now``: a batch of evictions, purges, rotations."""
        return self._atomic(self._handle_timer, now)

    # -- the inputs' bodies -----------------------------------------------------------------
    def _rekey(self, now: float) -> RekeyResult:
        self._need_input_state()
        kek = self._need_push()
        result = self._rotation_push(now, kek, list(self.policy.teks), self._replaceable(),
                                     force_kek=False)
        self._pending_events.append(GroupRekeyed(self.group_id, "operator", result.seqs,
                                                 result.tek_spis, (), result.new_kek))
        return result

    def _announce(self, now: float) -> RekeyResult:
        self._need_input_state()
        kek = self._need_push()
        t, gid = int(now), self.group_id
        teks = [TekKeys(tp.name, x.spi, tp.suite.name, x.key, x.auth_key or b"", x.expires)
                for x in self._replaceable()
                if (tp := self._tek_policy(x)) is not None and x.expires > t]
        if not teks:
            raise ControllerRefused(f"group {gid} has no current TEK to announce")
        (seq,) = self._seqs(kek, 1)
        data = build_push(self.policy, kek=self._kek_keys(kek),
                          signing_key=self._signer.private_key, seq=seq, new_teks=teks,
                          new_kek=None, deletes=(), now=t)
        gike = self._gike(self._kek_keys(kek), seq, t, teks=teks)
        self._log(SeqReserved(gid, kek.spi, seq))
        self._pending_pushes.append(Push(seq, kek.spi, data, gike))
        spis = tuple(tk.spi for tk in teks)
        self._pending_events.append(KeysAnnounced(gid, seq, spis))
        return RekeyResult((seq,), spis, None)

    def _evict(self, identities: Iterable[str], reason: str, now: float) -> EvictionResult:
        self._need_input_state()
        ids = list(dict.fromkeys(identities))
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise ControllerRefused("evict needs one or more identities (kind:value)")
        if not isinstance(reason, str) or not reason:
            raise ControllerRefused("evict needs a reason")
        s, gid, t = self._state, self.group_id, int(now)
        gone = tuple(i for i in ids if i in s.members)
        not_members = tuple(i for i in ids if i not in s.members)
        for i in ids:
            if i not in s.denied:
                self._log(DenyAdded(gid, i, t, reason))
        if not gone:
            return EvictionResult((), not_members, "none")
        window = self.policy.kek.evict_batch_s if self.policy.kek is not None else 0
        if window > 0 and self._can_push():
            if self._batch_at is None:
                self._batch_at = now + window
            self._pending_events.append(EvictionScheduled(gid, gone, self._batch_at))
            return EvictionResult(gone, not_members, "scheduled", scheduled_at=self._batch_at)
        done = self._evict_pending(now)
        if isinstance(done, str):
            return EvictionResult(gone, not_members, "pending", error=done)
        return EvictionResult(gone, not_members, done.mode, done.seqs, done.tek_spis)

    def _update_policy(self, policy: GroupPolicy, now: float, signer: Signer | None,
                       signer_error: str | None) -> RekeyResult | None:
        self._need_input_state()
        if policy.group_id != self.group_id:
            raise ControllerRefused(f"policy of group {policy.group_id} for group "
                                    f"{self.group_id}")
        s, gid = self._state, self.group_id
        live = s.teks_in(KeyState.CURRENT, KeyState.NEXT)
        retire, fresh, kek_cipher_changed = self.plan_policy(policy)
        kek = s.current_kek()
        was = self.policy, self._signer, self._signer_error
        # a new PUSH signing key: members verify with the public key their KEK came with, so
        # the old key signs one last PUSH that brings a new KEK with the new public key
        old_signer = self._signer
        signer_changed = (old_signer is not None and signer is not None
                          and old_signer.public_key != signer.public_key)
        self.policy, self._signer, self._signer_error = policy, signer, signer_error
        if not live or not (retire or fresh or kek_cipher_changed or signer_changed):
            return None
        if not self._can_push():
            for t in retire:
                self._log(TekStateChanged(gid, t.spi, KeyState.OLD))
            return None
        deleted = tuple(t.spi for t in retire)
        try:
            result = self._rotation_push(now, kek, fresh, retire,
                                         force_kek=kek_cipher_changed or signer_changed,
                                         deletes=deleted,
                                         sign_with=old_signer if signer_changed else None)
        except BaseException:
            self.policy, self._signer, self._signer_error = was  # refused: nothing changed
            raise
        if deleted:
            self._log(TeksPurged(gid, deleted))
        self._pending_events.append(GroupRekeyed(gid, "policy", result.seqs, result.tek_spis,
                                                 deleted, result.new_kek))
        return result

    def _handle_timer(self, now: float) -> None:
        if self.state in (ControllerState.COMMITTING, ControllerState.STALE):
            return
        if self._batch_at is not None and now >= self._batch_at:
            self._batch_at = None
            if self.pending_evictions() and not isinstance(self._evict_pending(now), str):
                return  # the eviction's rekey replaced every key; purges come next time
        self._purge(now)
        if self._can_push():
            kek = self._state.current_kek()
            due = [t for t in self._replaceable() if self._tek_due(t, now)]
            kek_due = now >= kek.expires - kek_rekey_lead(self.policy.kek)
            if due or kek_due:
                tps = {tp.name: tp for tp in self.policy.teks}
                result = self._rotation_push(now, kek, [tps[_name_of(t)] for t in due], due,
                                             force_kek=kek_due)
                self._pending_events.append(KeysRotated(self.group_id, result.seqs[0],
                                                        result.tek_spis,
                                                        tuple(t.spi for t in due),
                                                        result.new_kek))

    # -- internals: checks ------------------------------------------------------------------
    def _need_input_state(self) -> None:
        st = self.state
        if st is ControllerState.COMMITTING:
            raise ControllerRefused(f"group {self.group_id}: the previous change is not "
                                    "committed yet")
        if st is ControllerState.STALE:
            raise ControllerRefused(f"group {self.group_id}: the last commit failed; the "
                                    "state must be read again first")

    def _need_push(self) -> Kek:
        """The current KEK, or why no PUSH can be sent."""
        gid = self.group_id
        if self.policy.kek is None:
            raise ControllerRefused(f"group {gid} has no KEK policy ([keyserver.group.kek]): "
                                    "no GROUPKEY-PUSH")
        k = self._state.current_kek()
        if k is None or k.algorithm != self.policy.kek.cipher.name:
            raise ControllerRefused(f"group {gid} has no keys yet: no member has registered")
        if self._signer is None:
            raise ControllerRefused(f"group {gid}: cannot load the PUSH signing key: "
                                    f"{self._signer_error or 'not loaded'}")
        return k

    def _can_push(self) -> bool:
        k = self._state.current_kek()
        return (self.policy.kek is not None and self._signer is not None and k is not None
                and k.algorithm == self.policy.kek.cipher.name)

    def _replaceable(self) -> list[Tek]:
        """Current TEKs whose policy still exists (rotation replaces them)."""
        names = {tp.name for tp in self.policy.teks}
        return [t for t in self._state.teks_in(KeyState.CURRENT, KeyState.NEXT)
                if _name_of(t) in names]

    def _tek_policy(self, t: Tek) -> TekPolicy | None:
        return next((tp for tp in self.policy.teks if tp.name == _name_of(t)), None)

    def _tek_due(self, t: Tek, now: float) -> bool:
        tp = self._tek_policy(t)
        return tp is not None and now >= t.expires - tek_rekey_lead(self.policy, tp)

    def _rotation_deadline(self) -> float | None:
        if not self._can_push():
            return None
        when = [t.expires - tek_rekey_lead(self.policy, tp) for t in self._replaceable()
                if (tp := self._tek_policy(t)) is not None]
        k = self._state.current_kek()
        when.append(k.expires - kek_rekey_lead(self.policy.kek))
        return min(when)

    def _purge_deadline(self) -> float | None:
        s = self._state
        when = [t.expires for t in s.teks_in(KeyState.OLD)]
        when += [k.expires for k in s.keks.values() if k.state is KeyState.OLD]
        return min(when) if when else None

    def _schedule_leftovers(self, now: float) -> None:
        """Deny-listed members still registered (a crash, a failed rekey): evict them soon."""
        if self.pending_evictions() and self._batch_at is None:
            self._batch_at = now

    # -- internals: building ----------------------------------------------------------------
    def _log(self, c: Change) -> None:
        self._pending.append(c)
        self._state.apply(c)

    def _kek_keys(self, k: Kek) -> KekKeys:
        return KekKeys(k.spi, k.algorithm, k.key, k.expires, self._signer.public_key)

    def _new_teks(self, policies: list[TekPolicy], now: int) -> list[TekKeys]:
        used: set[int] = set()
        out = []
        for tp in policies:
            spi = random_spi(lambda x: self._state.spi_taken(x) or x in used, self._random)
            used.add(spi)
            enc, auth = new_tek_keymat(tp.suite, self._random)
            out.append(TekKeys(tp.name, spi, tp.suite.name, enc, auth, now + tp.lifetime_s))
        return out

    def _new_kek_spi(self) -> bytes:
        while True:
            spi = self._random(16)
            if any(spi[:8]) and any(spi[8:]) and spi not in self._state.keks:
                return spi

    def _seqs(self, kek: Kek, n: int) -> list[int]:
        if kek.seq + n > SEQ_MAX:
            raise ControllerRefused(f"group {self.group_id}: SEQ exhausted under the current "
                                    "KEK")
        return list(range(kek.seq + 1, kek.seq + n + 1))

    def _add_teks(self, teks: list[TekKeys], now: int) -> None:
        for tk in teks:
            self._log(TekAdded(self.group_id, tk.spi, tek_label(tk.name, tk.suite),
                               tk.enc_keymat, tk.auth_key or None, now, tk.expires,
                               KeyState.CURRENT))

    def _rotation_push(self, now: float, kek: Kek, policies: list[TekPolicy],
                       replaced: list[Tek], *, force_kek: bool,
                       deletes: tuple[int, ...] = (),
                       sign_with: Signer | None = None) -> RekeyResult:
        """One PUSH under the current KEK: new TEKs for ``policies`` (``replaced`` retired),
        ``deletes``, and a new KEK when forced or when the current one is within its lead.
        ``sign_with``: the key members know, when the group's signing key just changed (the
        new KEK brings the new public key)."""
        gid, t, pol = self.group_id, int(now), self.policy
        (seq,) = self._seqs(kek, 1)
        with_kek = force_kek or now >= kek.expires - kek_rekey_lead(pol.kek)
        teks = self._new_teks(policies, t)
        new_kek = None
        if with_kek:
            spi = self._new_kek_spi()
            new_kek = KekKeys(spi, pol.kek.cipher.name,
                              new_kek_keymat(pol.kek.cipher, self._random),
                              t + pol.kek.lifetime_s, self._signer.public_key)
        signer = sign_with or self._signer
        data = build_push(pol, kek=self._kek_keys(kek), signing_key=signer.private_key,
                          seq=seq, new_teks=teks, new_kek=new_kek, deletes=deletes, now=t)
        gike = self._gike(self._kek_keys(kek), seq, t, teks=teks, deletes=deletes,
                          new_kek=new_kek, signer=signer,
                          auth_key=self._signer.public_key if sign_with is not None else None)
        self._log(SeqReserved(gid, kek.spi, seq))
        if new_kek is not None:
            self._log(KekAdded(gid, new_kek.spi, new_kek.cipher, new_kek.keymat, t,
                               new_kek.expires, KeyState.NEXT))
            self._log(KekActivated(gid, new_kek.spi))
        for old in replaced:
            self._log(TekStateChanged(gid, old.spi, KeyState.OLD))
        self._add_teks(teks, t)
        self._pending_pushes.append(Push(seq, kek.spi, data, gike))
        return RekeyResult((seq,), tuple(tk.spi for tk in teks),
                           new_kek.spi if new_kek is not None else None)

    # -- internals: G-IKEv2 (gkm.ikev2.group_rekey) ------------------------------------------
    def _gike(self, kek: KekKeys, seq: int, t: int, *, signer: Signer | None = None,
              **rekey) -> bytes | None:
        """The GSA_REKEY twin of the PUSH with ``seq`` under ``kek``, None when the group has
        no G-IKEv2 members to send it to (not served, rekeyed in band instead, or a signing
        key they cannot verify)."""
        signer = signer or self._signer
        if (not serves_g_ikev2(self.policy) or self.policy.inband_rekey or signer is None
                or signature_for(signer.private_key) is None):
            return None
        tree = self._state.tree
        return gsa_rekey(self.policy, kek=kek, seq=seq, signing_key=signer.private_key, now=t,
                         rekey_source=self._rekey_source,
                         lkh_key_bytes=tree.key_len if tree is not None else None, **rekey)

    def _gike_lkh(self, old: KekKeys, seq: int, t: int, new: KekKeys, tree, update
                  ) -> tuple[bytes | None, bool]:
        """An LKH eviction as GSA_REKEY: (the message under the old Rekey SA, whether the TEK
        message under the new one follows).  One that does not fit one datagram (RFC 9838 has
        no split; some 1,200 WRAP_KEYs fit) deletes the Rekey SA and every TEK instead: the
        G-IKEv2 members register again and get the new keys, the evicted ones are refused."""
        try:
            return self._gike(old, seq, t, new_kek=new, lkh=(tree, update)), True
        except WireError:
            return self._gike(old, seq, t, delete_all=True), False

    def _purge(self, now: float) -> None:
        s, gid = self._state, self.group_id
        teks = tuple(t.spi for t in s.teks_in(KeyState.OLD) if t.expires <= now)
        keks = tuple(k.spi for k in s.keks.values()
                     if k.state is KeyState.OLD and k.expires <= now)
        if teks:
            self._log(TeksPurged(gid, teks))
        for spi in keks:
            self._log(KekDeleted(gid, spi))
        if teks or keks:
            self._pending_events.append(KeysPurged(gid, teks, keks))

    def _dissolve(self, now: float) -> GroupDissolved:
        self._need_input_state()
        s, gid = self._state, self.group_id
        members = tuple(sorted(s.members))
        seq = None
        if self._can_push():
            kek = s.current_kek()
            (seq,) = self._seqs(kek, 1)
            data = build_push(self.policy, kek=self._kek_keys(kek),
                              signing_key=self._signer.private_key, seq=seq, deletes=[0],
                              delete_kek=True, now=int(now))
            gike = self._gike(self._kek_keys(kek), seq, int(now), delete_all=True)
            self._log(SeqReserved(gid, kek.spi, seq))
            self._log(KekDeleted(gid, kek.spi))
            self._pending_pushes.append(Push(seq, kek.spi, data, gike))
        if members:
            self._log(MembersRemoved(gid, members))
        for tek in s.teks_in(KeyState.CURRENT, KeyState.NEXT):
            self._log(TekStateChanged(gid, tek.spi, KeyState.OLD))
        if s.tree is not None:
            self._log(LkhDeleted(gid))
        ev = GroupDissolved(gid, members, seq)
        self._pending_events.append(ev)
        return ev

    def _evict_pending(self, now: float) -> MembersEvicted | str:
        """Evict every registered member on the deny list now; the event, or why the rekey
        cannot be built (nothing of the eviction logged then; the deny entries stay)."""
        s, gid, t = self._state, self.group_id, int(now)
        gone = self.pending_evictions()
        reasons = tuple(dict.fromkeys(s.denied[i].reason for i in gone))
        self._batch_at = None
        kek = s.current_kek() if self.policy.kek is not None else None
        if kek is None:
            # no Rekey SA: nothing can be pushed; they leave the store (refused from now on)
            # but keep the current TEKs until those expire
            self._log(MembersRemoved(gid, gone))
            ev = MembersEvicted(gid, gone, reasons, "no-kek")
            self._pending_events.append(ev)
            return ev
        try:
            self._need_push()
        except ControllerRefused as e:
            return str(e)
        tree = s.tree
        if tree is not None and all(s.members[i].leaf is not None and i in tree for i in gone):
            ev = self._evict_lkh(now, kek, gone, reasons)
        else:
            ev = self._evict_all(t, kek, gone, reasons)
        self._pending_events.append(ev)
        return ev

    def _evict_all(self, t: int, kek: Kek, gone: tuple[str, ...],
                   reasons: tuple[str, ...]) -> MembersEvicted:
        """No LKH path for them: one PUSH deleting the KEK and every TEK; every member
        registers again and the evicted ones are refused."""
        gid, s = self.group_id, self._state
        (seq,) = self._seqs(kek, 1)
        data = build_push(self.policy, kek=self._kek_keys(kek),
                          signing_key=self._signer.private_key, seq=seq, deletes=[0],
                          delete_kek=True, now=t)
        gike = self._gike(self._kek_keys(kek), seq, t, delete_all=True)
        self._log(MembersRemoved(gid, gone))
        for tek in s.teks_in(KeyState.CURRENT, KeyState.NEXT):
            self._log(TekStateChanged(gid, tek.spi, KeyState.OLD))
        self._log(SeqReserved(gid, kek.spi, seq))
        self._log(KekDeleted(gid, kek.spi))
        if s.tree is not None:
            self._log(LkhDeleted(gid))
        self._pending_pushes.append(Push(seq, kek.spi, data, gike))
        return MembersEvicted(gid, gone, reasons, "rekey-all", (seq,))

    def _evict_lkh(self, now: float, kek: Kek, gone: tuple[str, ...],
                   reasons: tuple[str, ...]) -> MembersEvicted:
        """RFC 2627 / RFC 6407 section 4.4: under the current KEK, the LKH update and the new
        KEK's SA (its key derived from the new tree root, which the evicted members cannot
        compute), in parts with consecutive SEQs when one datagram of ``max_push_size``
        cannot hold it; then under the new KEK (SEQ 1) new TEKs for every TEK policy and the
        deletion of the old ones.

        Evicting the last members (decision; RFC 2627 and RFC 6407 say nothing of an empty
        tree): the same rekey.  :meth:`gkm.lkh.LkhTree.evict` renews every node of the
        evicted paths, the root included, and wraps the new keys for nobody, so the update has
        no entries; the PUSH under the current KEK still carries the new SA KEK (derived from
        the new root) with an LKH key packet holding no LKH_UPDATE_ARRAY, and the TEK PUSH
        under the new KEK follows (it reaches nobody).  A member receiving an update that
        gives it no way to the new group key is evicted (:class:`gkm.gdoi.push.Evicted`,
        :meth:`gkm.lkh.LkhMemberView.apply`), so the evicted members hear "evicted", back off
        and hold no new key.  Not a KEK Delete: that tells a member "re-register now" rather
        than "you are out", and it would end the Rekey SA and the tree, while this way the
        group keeps a tree with a root, a KEK and TEKs none of the evicted members ever held,
        and the next member to register simply joins that tree."""
        gid, s, t, pol = self.group_id, self._state, int(now), self.policy
        tree = s.tree
        old_kk = self._kek_keys(kek)
        old_spis = [x.spi for x in s.teks_in(KeyState.CURRENT, KeyState.NEXT)]
        update = tree.evict(list(gone))
        try:
            _, root_key = tree.group_key()
            spi = self._new_kek_spi()
            new_kk = KekKeys(spi, pol.kek.cipher.name,
                             lkh_kek_keymat(root_key, spi, pol.kek.cipher.name),
                             t + pol.kek.lifetime_s, self._signer.public_key)
            # G-IKEv2 first, while the tree's keys are exactly the update's (lkh_map)
            gike_first, gike_teks = self._gike_lkh(old_kk, kek.seq + 1, t, new_kk, tree, update)
            teks = self._new_teks(list(pol.teks), t)
            parts = lkh_update_parts(pol, update, kek=old_kk, new_kek=new_kk,
                                     signing_key=self._signer.private_key,
                                     signing_public_key=self._signer.public_key, now=t)
            seqs = self._seqs(kek, len(parts))
            pushes = [Push(seq, kek.spi, build_push(
                pol, kek=old_kk, signing_key=self._signer.private_key,
                signing_public_key=self._signer.public_key, seq=seq,
                new_kek=new_kk, lkh_update=part, lkh_root_key=root_key,
                lkh_part=(i, len(parts)), now=t), gike_first if i == 1 else None)
                for i, (seq, part) in enumerate(zip(seqs, parts), 1)]
            pushes.append(Push(1, spi, build_push(
                pol, kek=new_kk, signing_key=self._signer.private_key, seq=1, new_teks=teks,
                deletes=old_spis, now=t),
                self._gike(new_kk, 1, t, teks=teks, deletes=old_spis) if gike_teks else None))
        except (ValueError, ControllerRefused):
            self._stale = True  # the tree changed in memory only: read the store again
            raise
        self._log(MembersRemoved(gid, gone))
        self._log(LkhSaved(gid, tuple(tree.meta().items()),
                           tuple(tree.export_chunks(dirty_only=s.tree_saved)), len(tree),
                           not s.tree_saved))
        self._log(SeqReserved(gid, kek.spi, seqs[-1]))
        self._log(KekAdded(gid, spi, new_kk.cipher, new_kk.keymat, t, new_kk.expires,
                           KeyState.NEXT))
        self._log(KekActivated(gid, spi))
        for x in old_spis:
            self._log(TekStateChanged(gid, x, KeyState.OLD))
        self._add_teks(teks, t)
        self._log(SeqReserved(gid, spi, 1))
        self._pending_pushes.extend(pushes)
        return MembersEvicted(gid, gone, reasons, "lkh", tuple(p.seq for p in pushes),
                              tuple(tk.spi for tk in teks))
