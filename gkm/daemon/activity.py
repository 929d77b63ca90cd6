"""What msecd did since it started: the event counts behind the metrics endpoint
(:mod:`.metrics`) and the live stream behind ``msecctl monitor``.

The role shells hand every engine event they log to :class:`Activity` as well (one call each,
on the event loop): it counts the few things the daemon's state does not already hold
(registrations and refusals per group, phase 1 failures, rekeys sent, PUSHes rejected) and
turns the events an operator watches (registrations, refusals, rekeys, evictions, expiries)
into :class:`Notice` records for the subscribers.  Nothing here does I/O.

Subscribers (``msecctl monitor``, through the control socket) each get a bounded queue: a
notice is put without waiting; a subscriber whose queue is full is dropped (it gets one last
``dropped`` notice and its connection is closed by the control server), so a slow or stopped
reader never holds the daemon up or makes it buffer without bound.

Labels are few-valued words, never free text: a refusal's cause (``MemberRefused.cause``), a
rejected PUSH's cause (``PushRejected.cause``), the notification a phase 1 failure carried.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from gkm.events import Event
from gkm.gdoi.events import MemberRefused, MemberRegistered
from gkm.gdoi.member import GroupRekeyed as MemberRekeyed
from gkm.gdoi.member import Joined, LeftGroup, RegistrationAttemptFailed, SasRemoved
from gkm.gdoi.pull import member_key
from gkm.gdoi.push import PushRejected
from gkm.group import EvictionScheduled, GroupRekeyed, KeysPurged, KeysRotated, MembersEvicted
from gkm.ike.events import Phase1Failed
from gkm.wire.constants import NotifyType

from .report import fmt_addr

__all__ = ["Activity", "Notice", "Subscription", "SUBSCRIBER_QUEUE", "notice_text",
           "phase1_reason"]

#: notices a subscriber may have waiting before it is dropped
SUBSCRIBER_QUEUE = 1024


def _spis(spis) -> list[str]:
    return [f"0x{s:08x}" for s in spis]


def phase1_reason(notify: int | None) -> str:
    """A phase 1 failure's metric label: the notification sent or received, in lower case
    (``authentication_failed``, ``no_proposal_chosen``, ...), ``none`` (a timeout, nothing
    said) or ``other`` (a private type)."""
    if notify is None:
        return "none"
    try:
        return NotifyType(notify).name.lower()
    except ValueError:
        return "other"


@dataclass(frozen=True, slots=True)
class Notice:
    """One line of ``msecctl monitor``: when (Unix seconds), what (``event``), which role and
    group, and a few printable fields (identities, addresses, SPIs, reasons: never keys)."""

    at: float
    event: str
    role: str
    group: int | None
    fields: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event, "role": self.role, "group": self.group,
                **self.fields}

    def text(self) -> str:
        return notice_text(self.as_json())


def notice_text(obj: dict[str, Any]) -> str:
    """One notice (as the control socket sends it) as a line: UTC time, role, group, event,
    then ``key=value`` for each field that says something."""
    at = obj.get("at")
    t = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
         if isinstance(at, (int, float)) else "-")
    group = obj.get("group")
    where = f"group {group}" if group is not None else "-"
    rest = " ".join(f"{k}={_word(v)}" for k, v in obj.items()
                    if k not in ("at", "event", "role", "group") and v not in (None, [], ""))
    return f"{t} {obj.get('role', '-')} {where} {obj.get('event', '?')}" + \
        (f" {rest}" if rest else "")


def _word(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    s = str(v)
    return f'"{s}"' if (" " in s or not s) else s


class Subscription:
    """One subscriber's bounded queue; ``dropped`` once it overflowed (nothing more is put)."""

    def __init__(self, activity: "Activity", maxsize: int) -> None:
        self._activity = activity
        self.queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize)
        self.dropped = False

    def put(self, n: Notice) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(n)
        except asyncio.QueueFull:
            self.dropped = True
            self._activity.unsubscribe(self)
            self._activity.subscribers_dropped += 1
            # the last word: room for it is made by discarding the oldest waiting notice
            self.queue.get_nowait()
            self.queue.put_nowait(Notice(n.at, "dropped", "daemon", None, {
                "reason": f"more than {self.queue.maxsize} notices waiting: the reader is too "
                          "slow; msecd dropped this subscription"}))

    async def get(self) -> Notice:
        return await self.queue.get()

    def close(self) -> None:
        self._activity.unsubscribe(self)


class Activity:
    """Event counts per group (read by the metrics collector on the loop) and subscribers."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.ks_registrations: Counter[int] = Counter()
        self.ks_refusals: Counter[tuple[int, str]] = Counter()
        self.phase1_failures: Counter[str] = Counter()
        self.rekeys_sent: Counter[tuple[int, str]] = Counter()
        self.evictions: Counter[int] = Counter()
        self.member_failures: Counter[int] = Counter()
        self.push_rejected: Counter[tuple[int, str]] = Counter()
        self._subscribers: set[Subscription] = set()
        self.subscribers_dropped = 0

    # -- subscribers
    def subscribe(self, maxsize: int = SUBSCRIBER_QUEUE) -> Subscription:
        s = Subscription(self, maxsize)
        self._subscribers.add(s)
        return s

    def unsubscribe(self, s: Subscription) -> None:
        self._subscribers.discard(s)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _notify(self, event: str, role: str, group: int | None, **fields: Any) -> None:
        if not self._subscribers:
            return
        n = Notice(self.clock(), event, role, group, fields)
        for s in list(self._subscribers):
            s.put(n)

    # -- inputs: the shells' events
    def keyserver_event(self, ev: Event) -> None:
        match ev:
            case MemberRegistered():
                self.ks_registrations[ev.group_id] += 1
                self._notify("registered", "keyserver", ev.group_id, member=member_key(ev.identity),
                             address=fmt_addr(ev.addr), teks=_spis(ev.tek_spis))
            case MemberRefused():
                self.ks_refusals[(ev.group_id, ev.cause)] += 1
                self._notify("refused", "keyserver", ev.group_id,
                             member=member_key(ev.identity) if ev.identity is not None
                             else None,
                             address=fmt_addr(ev.addr), cause=ev.cause, reason=ev.reason)
            case Phase1Failed():
                reason = phase1_reason(ev.notify)
                self.phase1_failures[reason] += 1
                self._notify("phase1_failed", "keyserver", None, address=fmt_addr(ev.peer_addr),
                             cause=reason, reason=ev.reason)

    def group_event(self, group_id: int, ev: Event, sent_to: list[str]) -> None:
        """A group controller's event (``sent_to``: where its PUSH went)."""
        match ev:
            case GroupRekeyed():
                self.rekeys_sent[(group_id, ev.cause)] += 1
                self._notify("rekeyed", "keyserver", group_id, cause=ev.cause,
                             seq=list(ev.seqs), teks=_spis(ev.tek_spis), sent_to=sent_to)
            case KeysRotated():
                self.rekeys_sent[(group_id, "rotation")] += 1
                self._notify("rekeyed", "keyserver", group_id, cause="rotation", seq=[ev.seq],
                             teks=_spis(ev.tek_spis), replaced=_spis(ev.replaced),
                             new_kek=ev.new_kek.hex() if ev.new_kek else None, sent_to=sent_to)
            case MembersEvicted():
                self.evictions[group_id] += len(ev.evicted)
                if ev.seqs:
                    self.rekeys_sent[(group_id, "eviction")] += 1
                self._notify("evicted", "keyserver", group_id, members=list(ev.evicted),
                             reason="; ".join(ev.reasons), mode=ev.mode, seq=list(ev.seqs),
                             teks=_spis(ev.tek_spis), sent_to=sent_to)
            case EvictionScheduled():
                self._notify("eviction_scheduled", "keyserver", group_id,
                             members=list(ev.identities), at=ev.at)
            case KeysPurged():
                self._notify("expired", "keyserver", group_id, teks=_spis(ev.tek_spis),
                             keks=[k.hex() for k in ev.kek_spis])

    def member_event(self, ev: Event) -> None:
        match ev:
            case Joined():
                self._notify("registered", "member", ev.group_id, key_server=ev.key_server,
                             teks=_spis(ev.spis),
                             again=True if ev.refresh else None)
            case RegistrationAttemptFailed():
                self.member_failures[ev.group_id] += 1
                self._notify("registration_failed", "member", ev.group_id,
                             key_server=ev.key_server, reason=ev.reason,
                             retry_in=round(ev.retry_in, 1))
            case MemberRekeyed():
                self._notify("rekeyed", "member", ev.group_id, seq=[ev.seq],
                             teks=_spis(ev.spis), new_kek=ev.new_kek)
            case PushRejected(duplicate=True):
                pass  # the expected second copy (multicast and unicast): not worth a line
            case PushRejected():
                self.push_rejected[(ev.group_id, ev.cause)] += 1
                self._notify("push_rejected", "member", ev.group_id, cause=ev.cause,
                             reason=ev.reason)
            case LeftGroup():
                self._notify("left", "member", ev.group_id, reason=ev.reason)
            case SasRemoved():
                self._notify("sas_removed", "member", ev.group_id, spis=_spis(ev.spis),
                             reason=ev.reason)

    def sa_expired(self, group_id: int, spi: int, hard: bool) -> None:
        """The kernel said a member SA reached its soft or hard lifetime."""
        self._notify("expired", "member", group_id, spi=f"0x{spi:08x}",
                     limit="hard" if hard else "soft")
