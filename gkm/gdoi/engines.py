"""Composition engines the daemon (and a load tester) drive: phase 1 + GROUPKEY-PULL.

Both have the shape of every msec engine: inputs ``receive_datagram(data, addr, now)`` and
``handle_timer(now)`` (plus ``start(now)`` for the member), outputs pulled with
``datagrams_to_send()`` (``[(bytes, addr)]``), ``next_event()`` and ``get_timer()`` (an absolute
deadline in the caller's clock, or None).  No I/O, no clock reads, no exception escapes.

* :class:`MemberRegistration` -- one member registering in one group with one key server:
  Main Mode as initiator, key server authorization (GPAD, RFC 6407 section 3.1), then
  GROUPKEY-PULL.  Events: :class:`Registered` or :class:`RegistrationFailed` (exactly one),
  preceded by ``Phase1Established`` when asked for (``report_phase1``: the daemon's key log).
  On a refusal of the key server's policy it deletes the phase 1 SA (RFC 6407 section 3.3).
* :class:`KeyServerEngine` -- the key server for all groups and members: a
  :class:`gkm.ike.Phase1Server` and a :class:`gkm.gdoi.pull.PullResponder`.  Events:
  :class:`MemberRegistered`, :class:`MemberRefused`; phase 1 events (``Phase1Established``,
  ``Phase1Failed``, ``Phase1Deleted``, ``InformationalReceived``) are passed through for logs.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import logging
import os
from collections import deque
from typing import Any, Callable, Iterable

from gkm.ike import (
    InformationalReceived,
    MainMode,
    Phase1Config,
    Phase1Deleted,
    Phase1Established,
    Phase1Failed,
    Phase1Server,
    Phase2Datagram,
    Role,
)
from gkm.ike.mainmode import State as MainModeState
from gkm.ike.mainmode import notify_name
from gkm.wire.constants import ExchangeType
from policy.model import Decision, GroupPolicy, Identity

from .events import Registered, RegistrationFailed
from .provider import GroupKeysProvider
from .pull import PullInitiator, PullResponder, PullState, peer_identity

log = logging.getLogger("gkm.gdoi")

__all__ = ["MemberRegistration", "KeyServerEngine", "RegistrationState"]


class RegistrationState(enum.Enum):
    START = "START"
    PHASE1 = "PHASE1"
    PULL = "PULL"
    REGISTERED = "REGISTERED"
    FAILED = "FAILED"


class MemberRegistration:
    """Register in ``group_id`` at ``ks_addr``.

    ``authorize_key_server(identity) -> Decision``: is the authenticated peer this group's key
    server (e.g. ``MemberGroup.accepts_key_server``)?  None accepts whoever completed phase 1.
    ``allowed_suites``: ESP suite names accepted in the SA TEKs (None: every suite of
    policy.suites).  ``pull_options`` go to :class:`PullInitiator` (nonce size, retransmission).
    ``report_phase1``: pass ``Phase1Established`` on as an event when Main Mode is up.
    """

    def __init__(
        self,
        phase1: Phase1Config,
        group_id: int,
        ks_addr: Any,
        *,
        authorize_key_server: Callable[[Identity], Decision] | None = None,
        allowed_suites: frozenset[str] | None = None,
        random: Callable[[int], bytes] = os.urandom,
        report_phase1: bool = False,
        **pull_options: Any,
    ) -> None:
        self.group_id = group_id
        self._report_phase1 = report_phase1
        self.ks_addr = ks_addr
        self.state = RegistrationState.START
        self._authorize = authorize_key_server
        self._allowed = allowed_suites
        self._random = random
        self._pull_options = pull_options
        self.phase1 = MainMode(phase1, Role.INITIATOR, ks_addr, random=random)
        self.pull: PullInitiator | None = None
        self.result: Registered | None = None
        self._events: deque = deque()
        self._out: list[tuple[bytes, Any]] = []

    # -- inputs

    def start(self, now: float) -> None:
        self.phase1.start(now)
        self.state = RegistrationState.PHASE1
        self._pump(now)

    def reregister(self, now: float) -> None:
        """Register again (e.g. a GROUPKEY-PUSH was missed): a new GROUPKEY-PULL on the same
        phase 1 SA while it lives (RFC 6407 section 3: several PULLs may share one), else a new
        Main Mode first.  Ends, as :meth:`start` does, with one Registered/RegistrationFailed."""
        if self.state in (RegistrationState.START, RegistrationState.PHASE1, RegistrationState.PULL):
            raise RuntimeError(f"reregister() while {self.state.value}")
        self.result = None
        if self.phase1.state is MainModeState.ESTABLISHED and self.phase1.sa is not None:
            self._start_pull(self.phase1.sa, now)
            return
        self.phase1 = MainMode(self.phase1.config, Role.INITIATOR, self.ks_addr, random=self._random)
        self.pull = None
        self.start(now)

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        try:
            if addr != self.ks_addr:
                log.info("gdoi member group %s: dropped datagram from %r (not the key server %r)", self.group_id, addr, self.ks_addr)
                return
            self.phase1.receive_datagram(data, addr, now)
            self._pump(now)
        except Exception as exc:  # pragma: no cover - the engines contain their errors
            log.exception("gdoi member group %s: internal error", self.group_id)
            self._fail(f"internal error: {exc!r}", None, now)

    def handle_timer(self, now: float) -> None:
        try:
            self.phase1.handle_timer(now)
            if self.pull is not None:
                self.pull.handle_timer(now)
            self._pump(now)
        except Exception as exc:  # pragma: no cover
            log.exception("gdoi member group %s: timer error", self.group_id)
            self._fail(f"internal error: {exc!r}", None, now)

    # -- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out = self._out + self.phase1.datagrams_to_send()
        self._out = []
        if self.pull is not None:
            out += self.pull.datagrams_to_send()
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.state in (RegistrationState.REGISTERED, RegistrationState.FAILED):
            return self.phase1.get_timer()  # phase 1 SA lifetime only
        t = [x for x in (self.phase1.get_timer(), self.pull.get_timer() if self.pull else None) if x is not None]
        return min(t) if t else None

    @property
    def phase1_sa(self):
        return self.phase1.sa

    # -- internals

    def _fail(self, reason: str, notify: int | None, now: float, *, delete: bool = False) -> None:
        if self.state in (RegistrationState.REGISTERED, RegistrationState.FAILED):
            return
        self.state = RegistrationState.FAILED
        if self.pull is not None and self.pull.state not in (PullState.DONE, PullState.FAILED):
            self.pull.fail(reason, notify)
            self.pull.next_event()  # replaced by the event below
        if delete and self.phase1.sa is not None:
            try:
                self.phase1.delete(now, f"registration failed: {reason}")
            except Exception:  # pragma: no cover
                log.exception("gdoi member: phase 1 delete failed")
        self._events.append(RegistrationFailed(self.group_id, reason, notify))

    def _pump(self, now: float) -> None:
        while (ev := self.phase1.next_event()) is not None:
            if isinstance(ev, Phase1Established):
                self._established(ev, now)
            elif isinstance(ev, Phase1Failed):
                self._fail(f"phase 1 failed: {ev.reason}", ev.notify, now)
            elif isinstance(ev, Phase1Deleted):
                self._fail(f"phase 1 SA deleted: {ev.reason}", None, now)
            elif isinstance(ev, Phase2Datagram):
                if ev.exchange == ExchangeType.GROUPKEY_PULL and self.pull is not None:
                    self.pull.receive_datagram(ev.data, ev.peer_addr, now)
                else:
                    log.info("gdoi member group %s: exchange %d under the phase 1 SA ignored", self.group_id, ev.exchange)
            elif isinstance(ev, InformationalReceived):
                errors = [n for n in ev.notifications if n.type < 16384]
                if errors and self.state is RegistrationState.PULL:
                    n = errors[0]
                    self._fail(f"key server refused: {notify_name(n.type)}", n.type, now, delete=False)
        if self.pull is not None:
            while (ev := self.pull.next_event()) is not None:
                if isinstance(ev, Registered):
                    ksid = None
                    try:
                        ksid = peer_identity(self.phase1.sa)
                    except ValueError:
                        pass
                    ev = dataclasses.replace(ev, key_server_id=ksid)
                    self.result = ev
                    self.state = RegistrationState.REGISTERED
                    self._events.append(ev)
                elif isinstance(ev, RegistrationFailed):
                    # a reply we refused: tell the key server with a Delete (RFC 6407 section 3.3)
                    self._fail(ev.reason, ev.notify, now, delete=self.pull.refused)

    def _established(self, ev: Phase1Established, now: float) -> None:
        sa = ev.sa
        if self._report_phase1:
            self._events.append(ev)
        if self._authorize is not None:
            try:
                who = peer_identity(sa)
                decision = self._authorize(who)
            except ValueError as e:
                decision = Decision(False, f"key server identity not usable: {e}")
            if not decision.allowed:
                log.warning("gdoi member group %s: key server %r not authorized: %s", self.group_id, sa.peer_addr, decision.reason)
                self._fail(f"key server not authorized: {decision.reason}", None, now, delete=True)
                return
        self._start_pull(sa, now)

    def _start_pull(self, sa, now: float) -> None:
        self.pull = PullInitiator(sa, self.group_id, allowed_suites=self._allowed, random=self._random, **self._pull_options)
        self.pull.start(now)
        self.state = RegistrationState.PULL


class KeyServerEngine:
    """All GROUPKEY-PULL registrations of one key server, over UDP 848.

    ``groups``: the key server's GroupPolicy values; ``keys``: the group keys provider (e.g.
    :class:`~gkm.gdoi.provider.StoreKeysProvider`); ``phase1``: from
    :func:`gkm.gdoi.phase1.phase1_config`.  ``responder_options`` go to
    :class:`PullResponder` (bounds, ``rekey_source``); its ``wall_time_offset`` defaults to
    the phase 1 one, ``rekey_source`` (the SA KEK source, where PUSH comes from) to the key
    server's phase 1 ID when that is an address (port 848).
    """

    def __init__(
        self,
        groups: Iterable[GroupPolicy],
        keys: GroupKeysProvider,
        phase1: Phase1Config,
        *,
        random: Callable[[int], bytes] = os.urandom,
        **responder_options: Any,
    ) -> None:
        responder_options.setdefault("wall_time_offset", phase1.wall_time_offset)
        if "rekey_source" not in responder_options:
            # default: the address the key server authenticates as, if it is one (SA KEK SRC ID)
            lid = phase1.local_id
            if lid is not None and lid.type in (1, 5):  # ID_IPV4_ADDR, ID_IPV6_ADDR
                responder_options["rekey_source"] = (str(ipaddress.ip_address(lid.data)), 848)
        self.phase1 = Phase1Server(phase1, random=random)
        self.pull = PullResponder({g.group_id: g for g in groups}, keys, random=random, **responder_options)
        self._events: deque = deque()

    @property
    def half_open(self) -> int:
        """Phase 1 exchanges waiting for the peer's message 3 (bounded: ``Phase1Server``)."""
        return self.phase1.half_open_count

    def update_groups(self, groups: Iterable[GroupPolicy]) -> None:
        """New policies (configuration reload); pending exchanges keep the policy they started with."""
        self.pull.groups = {g.group_id: g for g in groups}

    # -- inputs

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        try:
            self.phase1.receive_datagram(data, addr, now)
            self._pump(now)
        except Exception:  # pragma: no cover - the engines contain their errors
            log.exception("gdoi ks: internal error on datagram from %r", addr)

    def handle_timer(self, now: float) -> None:
        try:
            self.phase1.handle_timer(now)
            self.pull.handle_timer(now)
            self._pump(now)
        except Exception:  # pragma: no cover
            log.exception("gdoi ks: timer error")

    def commit(self, now: float) -> None:
        """The durable step the shell performs after feeding a burst of datagrams, before it
        takes the outputs: the registrations completed since, in one store commit."""
        try:
            self.pull.commit()
        except Exception:  # pragma: no cover - the responder contains store errors itself
            log.exception("gdoi ks: commit error")

    # -- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        return self.phase1.datagrams_to_send() + self.pull.datagrams_to_send()

    def next_event(self):
        if self._events:
            return self._events.popleft()
        return self.pull.next_event()

    def get_timer(self) -> float | None:
        t = [x for x in (self.phase1.get_timer(), self.pull.get_timer()) if x is not None]
        return min(t) if t else None

    @property
    def pending_count(self) -> int:
        return self.pull.pending_count

    # -- internals

    def _pump(self, now: float) -> None:
        while (ev := self.phase1.next_event()) is not None:
            if isinstance(ev, Phase2Datagram):
                if ev.exchange == ExchangeType.GROUPKEY_PULL:
                    self.pull.receive(ev.sa, ev.data, ev.peer_addr, now)
                else:
                    log.info("gdoi ks: exchange %d from %r not handled", ev.exchange, ev.peer_addr)
                continue
            if isinstance(ev, Phase1Deleted):
                self.pull.forget_sa(ev.icookie + ev.rcookie)
            self._events.append(ev)
