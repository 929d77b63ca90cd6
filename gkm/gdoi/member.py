"""The member engine: one group member's whole life in one group, sans-I/O.

:class:`MemberEngine` owns the registration attempts (a :class:`~gkm.gdoi.engines.MemberRegistration`
per attempt), key-server failover, backoff with jitter (randomness injected), re-registration
timing, the GROUPKEY-PUSH receiver (:class:`~gkm.gdoi.push.PushReceiver`) and the group's SA
plan.  It does no I/O: the shell feeds it datagrams, time and the kernel's answers, and pulls

* ``datagrams_to_send()``: ``[(bytes, addr)]`` for the registration socket;
* ``push_datagrams_to_send()``: ``[(bytes, addr)]`` for the rekey socket (GROUPKEY-PUSH-ACKs,
  RFC 8263: sent from the port the PUSH came to, to the address and port it came from);
* ``next_action()``: what the shell must do, in order (:class:`MemberAction` subclasses:
  open/close the registration socket, listen for PUSH, install/activate/remove SAs);
* ``next_event()``: what happened, for logs (:class:`~gkm.events.MemberEvent` subclasses);
* ``get_timer()``: the next deadline (the shell calls ``handle_timer(now)`` then).

The shell answers every action that can fail: ``registration_opened(addr)`` /
``registration_unavailable(reason)`` for :class:`OpenRegistration` (and reports
``registration_unreachable(reason)`` when the network says the key server cannot be reached), ``push_listening()`` /
``push_listen_failed(reason)`` for :class:`ListenForPush`, ``sas_installed(action)`` /
``sa_failed(action, reason)`` for :class:`InstallSas`, :class:`ActivateOutbound` and
:class:`RemoveSas`.  The kernel's EXPIRE events come in as ``sa_expired(spi, hard)``.
A call that does not fit the state (an answer to no pending action, a second ``start``) raises
:class:`RefusedInput` and changes nothing; datagrams and kernel events that do not fit are
dropped.

Make before break (RFC 6407 section 5.2, GAP ATD/DTD), per TEK policy (selector):

* a rekey's new TEKs are installed at once, inbound and outbound states, but the outbound
  policy stays on the current SPI (``InstallSas(switch=False)``): every member can decrypt the
  new SPI before anyone sends on it;
* after the activation time delay (ATD), ``ActivateOutbound(spi)`` moves the sender to the new
  SA;
* the previous TEK is removed after the deactivation delay (DTD, at least the ATD: senders
  have switched) or at its expiry, whichever comes first; a sending TEK that goes while its
  successor still waits for its activation time hands the outbound policy over first;
* never more than two SAs per selector: a TEK arriving while two are held makes the oldest go
  first (after the sender moved off it).

ATD and DTD are the key server's (the GAP payload of GROUPKEY-PULL message 2 and of each
GROUPKEY-PUSH, ``Registered.gap`` / ``Rekeyed.gap``): the last values it sent apply, to this
rekey and to later ones without a GAP; ``Timing.activation_delay``/``deactivation_delay``
only stand in until a key server sent any (``activation_delay``/``deactivation_delay``
properties: what applies now).

A registration installs its TEKs and switches at once (they are the key server's current
ones).  ``TeksDeleted`` removes the SAs; ``KekDeleted`` stops PUSH reception and registers
again; ``Evicted`` removes every SA of the group at once (an evicted member keeps no key in
use), stops PUSH reception and registers again after a backoff (the key server refuses it
unless its eviction was lifted).  A soft expiry of a current TEK with no successor means a
PUSH was missed: register again now.

Saved state (:mod:`.member_state`): after a registration and after each PUSH that changed
keys the engine asks for a :class:`SaveState` (before that input's SA actions); ``resume``
starts from one instead of registering.  GDOI and G-IKEv2 members take the same path: the
snapshot holds the KEK (or the Rekey SA as a ``GroupKek``), SEQ, LKH path and TEKs, plus what
the PUSH receiver itself gives (``receiver_state()``: None for GROUPKEY-PUSH, the GSA_REKEY
receiver's :class:`~.member_state.GikeRekeyState` for G-IKEv2), and ``resume`` hands the
factory a :class:`ResumedRegistration` carrying it back.  A snapshot saved under another
protocol than the group's is discarded (the member registers).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from gkm.events import MemberEvent
from gkm.ike.events import Phase1Established, Phase1SA
from policy.model import MemberGroup, TrafficSelector

from .events import Registered, RegistrationFailed
from .keys import GroupKek, GroupTek, LkhKeys
from .member_state import GikeRekeyState, MemberSnapshot, SavedTek
from .push import (Evicted, KekDeleted, LkhPartReceived, PushRejected, PushReceiver, Rekeyed, TeksDeleted,
                   TeksRefreshed)

__all__ = [
    "MemberEngine", "MemberState", "RefusedInput", "HeldTek",
    "MemberAction", "OpenRegistration", "CloseRegistration", "HoldRegistration", "ListenForPush", "StopListening",
    "InstallSas", "ActivateOutbound", "RemoveSas", "SaveState", "ForgetState",
    "Joined", "StateRestored", "StateDiscarded", "StateSaveFailed", "ResyncScheduled",
    "RegistrationAttemptFailed", "GroupRekeyed", "OutboundSwitched", "SasRemoved",
    "SaActionFailed", "PushListenFailed", "LeftGroup", "Phase1Up", "ResumedRegistration",
]


class RefusedInput(Exception):
    """An input that does not fit the engine's state; the state is unchanged."""


class MemberState(enum.Enum):
    IDLE = "idle"  # not started
    CONNECTING = "connecting"  # OpenRegistration asked for, not answered yet
    REGISTERING = "registering"  # a MemberRegistration runs
    REGISTERED = "registered"
    BACKOFF = "backoff"  # waiting before the next round over the key servers
    STOPPED = "stopped"


# ------------------------------------------------------------------------------ actions

class MemberAction:
    """Something the shell must do for the engine."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class OpenRegistration(MemberAction):
    """Resolve ``key_server``, open a UDP socket towards it (one registration at a time per
    key server and identity); answer ``registration_opened(addr)`` or
    ``registration_unavailable(reason)``."""

    key_server: Any  # policy.model.KeyServerAddress


@dataclass(frozen=True, slots=True)
class CloseRegistration(MemberAction):
    """Close the registration socket (and release what OpenRegistration took)."""


@dataclass(frozen=True, slots=True)
class HoldRegistration(MemberAction):
    """Keep the registration socket open after the registration (release the per key server
    lock only): the key server rekeys this group over the registration's SA (G-IKEv2
    GSA_INBAND_REKEY); datagrams on it still go to ``receive_registration``.  ``keepalive``:
    send NAT-keepalives (one 0xFF octet, RFC 3948 §2.3) there periodically (None: none)."""

    keepalive: Any = None


@dataclass(frozen=True, slots=True)
class ListenForPush(MemberAction):
    """Receive GROUPKEY-PUSH on UDP ``port``, joined to ``address`` if it is multicast (on
    ``interface``); the socket is exclusively the daemon's.  Answer ``push_listening()`` or
    ``push_listen_failed(reason)``."""

    address: str
    port: int
    interface: str | None = None


@dataclass(frozen=True, slots=True)
class StopListening(MemberAction):
    """Stop receiving GROUPKEY-PUSH for this group."""


@dataclass(frozen=True, slots=True)
class InstallSas(MemberAction):
    """Install ``teks`` (states and policies). ``switch``: move the outbound policies to the new
    sending TEKs now (registration) or not (rekey: :class:`ActivateOutbound` does it later; a
    selector without an outbound policy gets one at once)."""

    ref: int
    teks: tuple[GroupTek, ...]
    switch: bool


@dataclass(frozen=True, slots=True)
class ActivateOutbound(MemberAction):
    """Send on the sending TEK ``spi`` from now on (its selector's outbound policy names it)."""

    ref: int
    spi: int


@dataclass(frozen=True, slots=True)
class RemoveSas(MemberAction):
    """Remove the states ``spis`` and the policies left without a purpose."""

    ref: int
    spis: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class SaveState(MemberAction):
    """Keep ``snapshot`` durably (0600, written and synced before the call returns) as this
    group's saved state, replacing the last one; answer ``state_saved(action)`` or
    ``state_save_failed(action, reason)``.  It comes before the SA actions of the same input:
    the kernel never holds keys a restarted member would not know about."""

    ref: int
    snapshot: MemberSnapshot


@dataclass(frozen=True, slots=True)
class ResumedRegistration(Registered):
    """What ``resume`` hands ``new_push_receiver``: the saved state as the registration it
    stands for (the TEKs still in use, the KEK, SEQ, LKH path) and, for a G-IKEv2 member, its
    GSA_REKEY receiver's saved state (``gike``; None: GDOI)."""

    gike: GikeRekeyState | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ForgetState(MemberAction):
    """Delete this group's saved state (evicted, KEK deleted: a restart must register)."""


# ------------------------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class Phase1Up(MemberEvent):
    """The phase 1 SA of a registration attempt is up (the daemon's key log records its keys;
    ``sa``'s repr shows none)."""

    group_id: int
    sa: Phase1SA


@dataclass(frozen=True, slots=True)
class Joined(MemberEvent):
    """Registered with ``key_server``; ``spis``: the TEKs received; ``refresh``: we held keys."""

    group_id: int
    key_server: str
    spis: tuple[int, ...]
    refresh: bool


@dataclass(frozen=True, slots=True)
class StateRestored(MemberEvent):
    """A restarted member took its saved state: no registration, PUSH accepted from SEQ > ``seq``."""

    group_id: int
    key_server: str
    seq: int
    spis: tuple[int, ...]
    adopted: tuple[int, ...]  # of these, the SPIs the kernel still held
    protocol: str = "gdoi"  # the registration protocol the state was saved under


@dataclass(frozen=True, slots=True)
class StateDiscarded(MemberEvent):
    """The saved state was unusable (missing, corrupt, stale): a fresh registration."""

    group_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StateSaveFailed(MemberEvent):
    group_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResyncScheduled(MemberEvent):
    """The member noticed a missed rekey (``reason``) and registers again in ``in_s`` seconds
    (random jitter: members that missed the same rekey do not come back in lockstep)."""

    group_id: int
    reason: str
    in_s: float


@dataclass(frozen=True, slots=True)
class RegistrationAttemptFailed(MemberEvent):
    group_id: int
    key_server: str
    reason: str
    retry_in: float  # seconds until the next attempt (0: the next key server at once)


@dataclass(frozen=True, slots=True)
class GroupRekeyed(MemberEvent):
    group_id: int
    seq: int
    spis: tuple[int, ...]
    new_kek: bool
    activate_at: float | None  # when senders switch to the new TEKs


@dataclass(frozen=True, slots=True)
class OutboundSwitched(MemberEvent):
    group_id: int
    spi: int


@dataclass(frozen=True, slots=True)
class SasRemoved(MemberEvent):
    group_id: int
    spis: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class SaActionFailed(MemberEvent):
    group_id: int
    what: str
    reason: str


@dataclass(frozen=True, slots=True)
class PushListenFailed(MemberEvent):
    group_id: int
    port: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeftGroup(MemberEvent):
    """The key server ended this member's keys (evicted, KEK deleted); it registers again."""

    group_id: int
    reason: str


# ----------------------------------------------------------------------------- the plan

@dataclass(slots=True)
class HeldTek:
    """One TEK in the member's kernel (or being installed), with its timeline."""

    tek: GroupTek
    received_at: float
    expires_at: float
    installed: bool = False
    outbound: bool = False  # the selector's outbound policy names it
    activate_at: float | None = None  # a sending TEK waiting for its activation time
    retire_at: float | None = None  # superseded: removed then
    removing: bool = False

    @property
    def spi(self) -> int:
        return self.tek.spi

    @property
    def selector(self) -> TrafficSelector:
        return self.tek.selector

    @property
    def role(self) -> str:
        """current / next (waiting for its activation) / previous (superseded)."""
        if self.retire_at is not None:
            return "previous"
        if self.activate_at is not None or not self.installed:
            return "next"
        return "current"


@dataclass(frozen=True, slots=True)
class Timing:
    backoff: tuple[float, float] = (1.0, 60.0)  # first delay, cap (doubling per failed round)
    jitter: bool = True  # delay * (0.75 .. 1.25)
    reregister_fraction: float = 0.8  # of the current keys' remaining lifetime
    reregister_min: float = 30.0
    activation_delay: float = 2.0  # GAP ATD until the key server gives one
    deactivation_delay: float = 6.0  # GAP DTD until the key server gives one
    max_per_selector: int = 2  # current + previous
    resync_spread: float = 5.0  # a missed rekey: register again within [0, this) seconds


class MemberEngine:
    """One ``[[member.group]]``: registration, failover, PUSH, the SA plan (module docstring).

    ``new_registration(group, addr, now)`` returns a started engine with the
    MemberRegistration interface; ``new_push_receiver(group, registered)`` a PushReceiver;
    ``random()`` a float in [0, 1) for jitter; ``adopted``: SPIs an earlier daemon left in the
    kernel for this group (retired once a registration brought the current TEKs).
    """

    def __init__(
        self,
        group: MemberGroup,
        *,
        new_registration: Callable[[MemberGroup, Any, float], Any],
        new_push_receiver: Callable[[MemberGroup, Registered], PushReceiver],
        random: Callable[[], float],
        timing: Timing = Timing(),
        adopted: frozenset[int] = frozenset(),
    ) -> None:
        self.group = group
        self.group_id = group.group_id
        self._new_registration = new_registration
        self._new_push_receiver = new_push_receiver
        self._random = random
        self.timing = timing
        self.state = MemberState.IDLE
        self.ks_index = 0
        self.failures = 0  # consecutive failed rounds over all key servers
        self.key_server: str | None = None
        self.last_error: str | None = None
        self.registered_at: float | None = None
        self.registrations = 0
        self.rekeys = 0
        self.last_seq: int | None = None
        self.kek_expires_at: float | None = None
        self.restored = False  # running on a saved state (no registration since the start)
        self.state_error: str | None = None  # the last save that failed
        self._kek: GroupKek | None = None  # for the saved state: the Rekey SA in force,
        self._push_seq = 0  # the SEQ a PUSH must exceed under it,
        self._lkh: LkhKeys | None = None  # the LKH path,
        self._save_pending: dict[int, SaveState] = {}
        self.next_attempt: float | None = None
        self.listen_error: str | None = None
        self.adopted = frozenset(adopted)
        self.adopted_retire_at: float | None = None  # when the adopted SAs not renewed go
        self.held: list[HeldTek] = []
        self.gap_delays: tuple[float | None, float | None] = (None, None)  # the key server's
        self.registration: Any = None
        self.push: PushReceiver | None = None
        self._listen: ListenForPush | None = None  # what we listen on (or asked for)
        self._listen_pending = False
        self._open_pending = False
        self._pending: dict[int, MemberAction] = {}  # SA actions awaiting an answer
        self._ref = 0
        self._actions: deque[MemberAction] = deque()
        self._events: deque[MemberEvent] = deque()
        #: our address toward the key server (the shell's, at registration_opened): the ID of
        #: our GROUPKEY-PUSH-ACKs (RFC 8263 section 3.4)
        self.local_address: str | None = None
        self._push_out: list[tuple[bytes, Any]] = []
        #: the registration socket stays open for in-band rekeys (HoldRegistration); their
        #: answers leave by it
        self._held = False
        self._held_out: list[tuple[bytes, Any]] = []

    # -- outputs ------------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._held_out = self._held_out, []
        if self.registration is None:
            return out
        return out + self.registration.datagrams_to_send()

    def push_datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._push_out = self._push_out, []
        return out

    def next_action(self) -> MemberAction | None:
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> MemberEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.state is MemberState.STOPPED:
            return None
        t = [self.next_attempt, self.adopted_retire_at]
        if self.push is not None:
            t.append(self.kek_expires_at)
        if self.state is MemberState.REGISTERING and self.registration is not None:
            t.append(self.registration.get_timer())
        for h in self.held:
            if h.installed and not h.removing:
                t += [h.activate_at, h.retire_at, h.expires_at]
        t = [x for x in t if x is not None]
        return min(t) if t else None

    @property
    def inband(self) -> bool:
        """Rekeys come over the registration's own SA, kept open (G-IKEv2 GSA_INBAND_REKEY)."""
        return self._held

    @property
    def kek_spi(self) -> bytes | None:
        """The cookies a PUSH for this group carries (the current KEK's SPI)."""
        return self.push.kek.spi if self.push is not None else None

    @property
    def activation_delay(self) -> float:
        """The GAP ATD that applies now: the key server's last, else ``Timing``'s."""
        atd = self.gap_delays[0]
        return self.timing.activation_delay if atd is None else atd

    @property
    def deactivation_delay(self) -> float:
        """The GAP DTD that applies now: the key server's last, else ``Timing``'s."""
        dtd = self.gap_delays[1]
        return self.timing.deactivation_delay if dtd is None else dtd

    def _take_gap(self, gap) -> None:
        if gap is None:
            return
        atd, dtd = self.gap_delays
        self.gap_delays = (atd if gap.activation_s is None else float(gap.activation_s),
                           dtd if gap.deactivation_s is None else float(gap.deactivation_s))

    @property
    def refreshing(self) -> bool:
        return bool(self.held or self.adopted)

    # -- user calls ---------------------------------------------------------------------------
    def start(self, now: float) -> None:
        if self.state is not MemberState.IDLE:
            raise RefusedInput(f"start() while {self.state.value}")
        self._connect(now)

    def resume(self, saved: MemberSnapshot, now: float, *,
               local_address: str | None = None) -> None:
        """Start from a saved state (a restarted member): no registration; the TEKs still
        valid are installed again (idempotent for what the kernel kept: traffic does not
        stop), PUSH is received from SEQ > the saved one (and acknowledged as
        ``local_address``, our address toward the key server, when the KEK asks for ACKs).  A state that does not fit (another
        group, a key server not configured any more, the KEK or every TEK expired) is
        discarded with :class:`StateDiscarded` and the member registers as ``start`` does."""
        if self.state is not MemberState.IDLE:
            raise RefusedInput(f"resume() while {self.state.value}")
        why = self._unusable(saved, now)
        if why is not None:
            self._events.append(StateDiscarded(self.group_id, why))
            self._connect(now)
            return
        # what is still in use: not expired, not retired (an SA left of a retired one is
        # adopted and goes after the deactivation delay)
        kept = [t for t in saved.teks if t.expires_at > now
                and (t.retire_at is None or t.retire_at > now)]
        self.key_server = saved.key_server
        self.local_address = local_address
        self.gap_delays = saved.gap
        self.state = MemberState.REGISTERED
        self.restored = True
        self.registered_at = now
        self._kek, self._push_seq, self._lkh = saved.kek, saved.seq, saved.lkh
        self.last_seq = saved.seq
        self.kek_expires_at = saved.kek_expires_at
        spis = {t.tek.spi for t in kept}
        for t in kept:
            self.held.append(HeldTek(t.tek, now, t.expires_at, outbound=t.outbound,
                                     activate_at=t.activate_at, retire_at=t.retire_at))
        in_kernel = tuple(sorted(self.adopted & spis))
        self.adopted -= spis  # the rest: left by an earlier daemon, not ours any more
        self.adopted_retire_at = now + self.deactivation_delay if self.adopted else None
        # the remaining lifetime, so an SA the kernel lost comes back with the right one
        teks = tuple(dataclasses.replace(t.tek, lifetime_s=max(1, int(t.expires_at - now)))
                     for t in kept)
        self._sa_action(lambda ref: InstallSas(ref, teks, False))
        self._events.append(StateRestored(self.group_id, saved.key_server, saved.seq,
                                          tuple(sorted(spis)), in_kernel, saved.protocol))
        self._listen_for_push(ResumedRegistration(self.group_id, tuple(t.tek for t in kept),
                                                  saved.kek, saved.seq, saved.lkh, None,
                                                  gike=saved.gike))
        self._plan_reregistration(now)

    def _unusable(self, saved: MemberSnapshot, now: float) -> str | None:
        if saved.group_id != self.group_id:
            return f"saved state of group {saved.group_id}"
        if saved.protocol != self.group.protocol:
            return f"saved by a {saved.protocol} member, the group is {self.group.protocol} now"
        if saved.key_server not in {str(k) for k in self.group.key_servers}:
            return f"key server {saved.key_server} is not configured any more"
        if saved.kek_expires_at <= now:
            return "stale: its KEK expired"
        if not any(t.expires_at > now and (t.retire_at is None or t.retire_at > now)
                   for t in saved.teks):
            return "stale: every TEK expired"
        return None

    def stop(self, now: float) -> None:
        """Stop everything; the SAs stay in the kernel (traffic flows across a restart)."""
        if self.state is MemberState.STOPPED:
            return
        self._close_registration()
        self._stop_listening()
        self.next_attempt = None
        self.state = MemberState.STOPPED

    def reconfigure(self, group: MemberGroup, now: float) -> None:
        """A reload changed what registration depends on: register again from the first key
        server (the SAs held stay until the registration replaces them)."""
        if self.state is MemberState.STOPPED or group.group_id != self.group_id:
            raise RefusedInput(f"reconfigure() while {self.state.value}"
                               if self.state is MemberState.STOPPED else "another group id")
        self.group = group
        self.ks_index = 0
        self.failures = 0
        self._close_registration()
        self._stop_listening()
        self._connect(now)

    # -- the shell's answers ------------------------------------------------------------------
    def registration_opened(self, addr: Any, now: float, local_address: str | None = None) -> None:
        """``local_address``: the address our datagrams to ``addr`` leave from (the ID of our
        GROUPKEY-PUSH-ACKs; None: unknown, no ACKs)."""
        if self.state is not MemberState.CONNECTING or not self._open_pending:
            raise RefusedInput(f"registration_opened() while {self.state.value}")
        self._open_pending = False
        self.local_address = local_address
        try:
            self.registration = self._new_registration(self.group, addr, now)
        except Exception as e:  # engine construction (credentials, ...)
            self._close_registration()
            self._failed(f"{type(e).__name__}: {e}", now)
            return
        self.state = MemberState.REGISTERING
        self._pump_registration(now)

    def registration_unavailable(self, reason: str, now: float) -> None:
        if self.state is not MemberState.CONNECTING or not self._open_pending:
            raise RefusedInput(f"registration_unavailable() while {self.state.value}")
        self._open_pending = False
        self._actions.append(CloseRegistration())
        self._failed(reason, now)

    def registration_unreachable(self, reason: str, now: float) -> None:
        """The network says the key server cannot be reached (ICMP port or host unreachable
        on the registration socket): the next key server now, not after the exchange
        timeout.  Outside a registration it is dropped, like a stray datagram."""
        if self.state is not MemberState.REGISTERING or self.registration is None:
            return
        self._close_registration()
        self._failed(f"key server unreachable: {reason}", now)

    def push_listening(self, now: float) -> None:
        if not self._listen_pending:
            raise RefusedInput("push_listening() without ListenForPush")
        self._listen_pending = False
        self.listen_error = None

    def push_listen_failed(self, reason: str, now: float) -> None:
        if not self._listen_pending or self._listen is None:
            raise RefusedInput("push_listen_failed() without ListenForPush")
        self._listen_pending = False
        port = self._listen.port
        self._listen = None
        self.listen_error = f"cannot receive GROUPKEY-PUSH on port {port}: {reason}"
        self._events.append(PushListenFailed(self.group_id, port, reason))

    def sas_installed(self, action: MemberAction, now: float) -> None:
        act = self._answer(action)
        match act:
            case InstallSas():
                spis = {t.spi for t in act.teks}
                fresh = [h for h in self.held if h.spi in spis and not h.installed]
                for h in fresh:
                    h.installed = True
                    if act.switch and h.tek.sends:
                        self._now_outbound(h, now)
                    elif h.activate_at is None and h.tek.sends \
                            and not self._sending_on(h.selector, but=h):
                        h.outbound = True  # a new selector: its policy names it at once
            case ActivateOutbound():
                h = self._find(act.spi)
                if h is not None:
                    self._now_outbound(h, now)
                    self._events.append(OutboundSwitched(self.group_id, act.spi))
            case RemoveSas():
                gone = set(act.spis)
                self.held = [h for h in self.held if h.spi not in gone]
                self.adopted -= gone
                self._events.append(SasRemoved(self.group_id, act.spis, act.reason))

    def state_saved(self, action: MemberAction, now: float) -> None:
        self._answer_save(action)
        self.state_error = None

    def state_save_failed(self, action: MemberAction, reason: str, now: float) -> None:
        """The keys work on; the older saved state is deleted (resumed, it would retire the
        SAs it does not know), so a restart before the next successful save registers."""
        self._answer_save(action)
        self.state_error = f"cannot save the group state: {reason}"
        self._events.append(StateSaveFailed(self.group_id, reason))
        self._actions.append(ForgetState())

    def _answer_save(self, action: MemberAction) -> None:
        if not isinstance(action, SaveState) or self._save_pending.get(action.ref) != action:
            raise RefusedInput(f"{type(action).__name__} is not a pending SaveState")
        del self._save_pending[action.ref]

    def sa_failed(self, action: MemberAction, reason: str, now: float) -> None:
        act = self._answer(action)
        match act:
            case InstallSas():
                spis = {t.spi for t in act.teks}
                self.held = [h for h in self.held if h.spi not in spis]
                self.last_error = f"SA installation failed: {reason}"
                self._events.append(SaActionFailed(self.group_id, "install", reason))
                if self.state is MemberState.REGISTERED:  # try a fresh registration later
                    self.failures += 1
                    self._schedule(self._backoff(), now, MemberState.REGISTERED)
            case ActivateOutbound():
                h = self._find(act.spi)
                if h is not None:
                    h.activate_at = None  # the kernel keeps sending on the previous SA
                self._events.append(SaActionFailed(self.group_id, "activate", reason))
            case RemoveSas():
                # the kernel may still hold them: drop them from the plan anyway (their hard
                # lifetime removes the states), and say so
                gone = set(act.spis)
                self.held = [h for h in self.held if h.spi not in gone]
                self._events.append(SaActionFailed(self.group_id, "remove", reason))

    # -- datagrams and kernel events ----------------------------------------------------------
    def receive_registration(self, data: bytes, addr: Any, now: float) -> None:
        if self._held and self.state is MemberState.REGISTERED and self.push is not None:
            self._receive_rekey(data, addr, now, self._held_out)  # an in-band rekey
            return
        if self.state is not MemberState.REGISTERING or self.registration is None:
            return  # a late reply to a closed attempt
        self.registration.receive_datagram(data, addr, now)
        self._pump_registration(now)

    def receive_push(self, data: bytes, addr: Any, now: float) -> None:
        if self._held:
            return  # rekeys come over the registration's SA, not to the rekey port
        self._receive_rekey(data, addr, now, self._push_out)

    def _receive_rekey(self, data: bytes, addr: Any, now: float, out: list) -> None:
        if self.push is None or self.state is MemberState.STOPPED:
            return
        receiver = self.push  # KekDeleted/Evicted drop it, its last events still count
        mark = len(self._actions)  # the saved state goes before this PUSH's SA actions
        changed = False
        receiver.receive_datagram(data, addr, now)
        # ACKs first: RFC 8263 section 4 sends one even for a PUSH deleting its KEK
        out += receiver.datagrams_to_send()
        events = []
        while (ev := receiver.next_event()) is not None:
            events.append(ev)
        # one PUSH's new TEKs first, then its deletes: a TEK deleted in the PUSH that brings
        # its successor retires after the deactivation delay (make before break)
        events.sort(key=lambda ev: 0 if isinstance(ev, (Rekeyed, TeksRefreshed)) else 1)
        for ev in events:
            match ev:
                case Rekeyed() | TeksRefreshed():
                    changed = True
                    self._rekeyed(ev, now)
                case TeksDeleted():
                    changed = True
                    self._teks_deleted(ev, now)
                case KekDeleted():
                    self._kek_deleted(now)
                case Evicted():
                    self._evicted(now)
                case PushRejected(resync=True):
                    # authentic, but this member cannot apply it (an LKH update out of
                    # sequence): it missed a rekey
                    self._events.append(ev)
                    self._register_now(now, f"a rekey could not be applied: {ev.reason}")
                case PushRejected() | LkhPartReceived():
                    # a part of a split LKH update changes only the receiver's pending keys;
                    # the last part brings Rekeyed (or Evicted)
                    self._events.append(ev)
        if self.push is None and receiver is not None and self._kek is not None:
            self._forget(mark)
        elif changed and self.push is not None:
            self._save(now, mark)

    def sa_expired(self, spi: int, hard: bool, now: float) -> None:
        """The kernel's XFRM_MSG_EXPIRE for one of the group's SPIs."""
        h = self._find(spi)
        if h is None or h.removing or self.state is MemberState.STOPPED:
            return
        if hard:
            # the state is gone; remove what is left (policies naming it)
            self._remove([h], "expired in the kernel")
            if not any(x.selector == h.selector for x in self.held if not x.removing):
                self._register_now(now, "a TEK expired with no successor")
        elif h.role == "current" and not any(
                x.selector == h.selector and x is not h and x.retire_at is None
                for x in self.held):
            self._register_now(now, "a TEK is about to expire and no rekey came")

    def handle_timer(self, now: float) -> None:
        if self.state is MemberState.STOPPED:
            return
        if self.state is MemberState.REGISTERING and self.registration is not None:
            self.registration.handle_timer(now)
            self._pump_registration(now)
        if self.next_attempt is not None and now >= self.next_attempt \
                and self.state in (MemberState.BACKOFF, MemberState.REGISTERED):
            self.next_attempt = None
            self._connect(now)
        if self.push is not None and self.kek_expires_at is not None \
                and now >= self.kek_expires_at:
            # no PUSH can come any more (the rekey that renewed the KEK was missed)
            self.push = None
            self._stop_listening()
            self._forget(len(self._actions))
            self._register_now(now, "the KEK expired with no rekey")
        if self.adopted_retire_at is not None and now >= self.adopted_retire_at:
            stale = tuple(sorted(self.adopted))
            self.adopted_retire_at = None
            self.adopted = frozenset()
            self._sa_action(lambda ref: RemoveSas(ref, stale, "left by an earlier msecd"))
        for h in list(self.held):
            if not h.installed or h.removing:
                continue
            if h.expires_at <= now:
                self._remove([h], "lifetime over")
                if not any(x.selector == h.selector for x in self.held if not x.removing):
                    self._register_now(now, "a TEK expired with no successor")
            elif h.retire_at is not None and h.retire_at <= now:
                self._remove([h], "deactivation delay over")
            elif h.activate_at is not None and h.activate_at <= now:
                h.activate_at = None
                self._sa_action(lambda ref: ActivateOutbound(ref, h.spi))

    # -- registration -------------------------------------------------------------------------
    def _connect(self, now: float) -> None:
        if self._held:
            # in band: register again over the kept IKE SA (G-IKEv2 GSA_REGISTRATION), on
            # its socket; else, or if that fails (_pump_registration), on a new one
            again = self.push.reregistration(self.group) if self.push is not None else None
            if again is not None:
                self.state = MemberState.REGISTERING
                self.next_attempt = None
                self.registration = again  # held and registering: over the held SA
                again.start(now)
                self._pump_registration(now)
                return
            self._close_registration()
        ks = self.group.key_servers[self.ks_index % len(self.group.key_servers)]
        self.key_server = str(ks)
        self.state = MemberState.CONNECTING
        self.next_attempt = None
        self._open_pending = True
        self._actions.append(OpenRegistration(ks))

    def _close_registration(self) -> None:
        if self.registration is not None or self._open_pending or self._held \
                or self.state in (MemberState.CONNECTING, MemberState.REGISTERING):
            self._actions.append(CloseRegistration())
        self.registration = None
        self._open_pending = False
        self._held = False

    def _pump_registration(self, now: float) -> None:
        reg = self.registration
        while reg is not None and (ev := reg.next_event()) is not None:
            match ev:
                case Phase1Established():
                    self._events.append(Phase1Up(self.group_id, ev.sa))
                case Registered():
                    self._registered(ev, now)
                    return
                case RegistrationFailed() if self._held:
                    # GSA_REGISTRATION over the kept IKE SA failed (the key server forgot it,
                    # restarted...): at once on a new IKE SA, with the same key server
                    self._close_registration()
                    self._events.append(RegistrationAttemptFailed(
                        self.group_id, self.key_server or "?",
                        f"{ev.reason}; registering on a new IKE SA", 0.0))
                    self._connect(now)
                    return
                case RegistrationFailed():
                    self._close_registration()
                    self._failed(ev.reason, now)
                    return

    def _failed(self, reason: str, now: float) -> None:
        self.last_error = reason
        failed_ks = self.key_server or "?"  # _connect below names the next one
        self.ks_index += 1
        if self.ks_index % len(self.group.key_servers) == 0:
            self.failures += 1  # a whole round failed: back off
            delay = self._backoff()
            self._schedule(delay, now, MemberState.BACKOFF)
        else:
            delay = 0.0
            self._connect(now)
        self._events.append(RegistrationAttemptFailed(self.group_id, failed_ks, reason, delay))

    def _backoff(self) -> float:
        base, cap = self.timing.backoff
        d = min(cap, base * (2 ** max(0, self.failures - 1)))
        return d * (0.75 + 0.5 * self._random()) if self.timing.jitter else d

    def _schedule(self, delay: float, now: float, state: MemberState) -> None:
        self.state = state
        self.next_attempt = now + delay

    def _register_now(self, now: float, why: str) -> None:
        """A missed rekey: register again after a random delay in [0, resync_spread) (none
        without jitter), or at the next attempt already planned if that is sooner."""
        if self.state not in (MemberState.REGISTERED, MemberState.BACKOFF):
            return
        self.last_error = why
        delay = self.timing.resync_spread * self._random() if self.timing.jitter else 0.0
        if delay <= 0:
            self._connect(now)
            return
        at = now + delay
        if self.next_attempt is not None and self.next_attempt <= at:
            return
        self.next_attempt = at
        self._events.append(ResyncScheduled(self.group_id, why, delay))

    def _registered(self, ev: Registered, now: float) -> None:
        refresh = self.refreshing
        self.restored = False
        if ev.inband and ev.kek is None:
            self.registration, self._open_pending = None, False  # the socket stays open
        else:
            self._close_registration()
        mark = len(self._actions)  # the saved state goes before the SA actions
        self.registrations += 1
        self.failures = 0
        self.registered_at = now
        self.last_error = None
        self.state = MemberState.REGISTERED
        self._events.append(Joined(self.group_id, self.key_server or "?",
                                   tuple(t.spi for t in ev.teks), refresh))
        self._take_gap(ev.gap)
        self._take_teks(ev.teks, now, switch=True)
        if self.adopted:  # what an earlier daemon left: superseded by what we just got
            self.adopted -= {t.spi for t in ev.teks}
            self.adopted_retire_at = now + self.deactivation_delay if self.adopted \
                else None
        if ev.kek is not None:
            self.last_seq = ev.seq
            self.kek_expires_at = now + ev.kek.lifetime_s
            self._kek, self._push_seq, self._lkh = ev.kek, int(ev.seq or 0), ev.lkh
            self._listen_for_push(ev)
            if self.push is not None:
                self._save(now, mark)
        else:
            self.push = None
            self.kek_expires_at = None
            self._stop_listening()
            if self._kek is not None:
                self._forget(mark)
            self._kek = None
            if ev.inband:
                self._hold_registration(ev)
        self._plan_reregistration(now)

    def _hold_registration(self, ev: Registered) -> None:
        try:
            self.push = self._new_push_receiver(self.group, ev)
        except Exception as e:
            self.listen_error = f"cannot receive in-band rekeys: {e}"
            self._actions.append(CloseRegistration())
            return
        self._held = True
        self._actions.append(HoldRegistration(ev.nat_keepalive))

    def _listen_for_push(self, ev: Registered) -> None:
        try:
            self.push = self._new_push_receiver(self.group, ev)
            if self.local_address is not None:
                self.push.acknowledge_as(self.local_address)
        except Exception as e:
            self.push = None
            self.listen_error = f"cannot receive GROUPKEY-PUSH: {e}"
            self._stop_listening()
            return
        want = ListenForPush(str(ev.kek.dst.network_address), int(ev.kek.dst_port),
                             self.group.interface)
        if want != self._listen:
            self._stop_listening()
            self._listen = want
            self._listen_pending = True
            self._actions.append(want)

    # -- the saved state ----------------------------------------------------------------------
    def snapshot(self, now: float) -> MemberSnapshot | None:
        """What a restarted member needs (None: nothing worth keeping, no Rekey SA, or a
        G-IKEv2 member whose GSA_REKEY receiver is gone)."""
        if self._kek is None or self.kek_expires_at is None or self.key_server is None:
            return None
        gike = self.push.receiver_state() if self.push is not None else None
        if gike is None and self.group.protocol != "gdoi":
            return None
        teks = tuple(SavedTek(h.tek, h.expires_at, h.outbound, h.activate_at, h.retire_at)
                     for h in self.held if not h.removing)
        return MemberSnapshot(self.group_id, self.key_server, self._kek, self.kek_expires_at,
                              self._push_seq, self._lkh, self.gap_delays, teks, now, gike)

    def _save(self, now: float, at: int) -> None:
        snap = self.snapshot(now)
        if snap is None:
            return
        self._ref += 1
        act = SaveState(self._ref, snap)
        self._save_pending[act.ref] = act
        self._actions.insert(min(at, len(self._actions)), act)

    def _forget(self, at: int) -> None:
        self._kek = None
        self._actions.insert(min(at, len(self._actions)), ForgetState())

    def _plan_reregistration(self, now: float) -> None:
        """Pull again well before the current keys (or the KEK) expire, in case no PUSH comes
        (at least ``reregister_min`` apart: a key server without rotation hands out the same
        keys with less and less lifetime left)."""
        ends = [h.expires_at for h in self.held if h.role != "previous" and not h.removing]
        if self.kek_expires_at is not None:
            ends.append(self.kek_expires_at)
        if not ends:
            self.next_attempt = None
            return
        t = self.timing
        self.next_attempt = now + max(t.reregister_min, (min(ends) - now) * t.reregister_fraction)

    def _stop_listening(self) -> None:
        if self._listen is not None:
            self._actions.append(StopListening())
        self._listen = None
        self._listen_pending = False

    # -- PUSH ---------------------------------------------------------------------------------
    def _rekeyed(self, ev: Rekeyed | TeksRefreshed, now: float) -> None:
        """A PUSH (or GSA_REKEY) accepted, or an in-band rekey (``TeksRefreshed``: the group's
        current TEKs, no KEK): the new TEKs come in on the activation delay."""
        self.rekeys += 1
        self.last_seq = ev.seq
        new_kek = False
        if isinstance(ev, Rekeyed):
            new_kek = ev.new_kek
            # the receiver's: SEQ restarts under a new KEK (RFC 6407 sections 4, 4.3)
            self._kek, self._push_seq = ev.kek, 0 if new_kek else ev.seq
            if ev.lkh is not None:
                self._lkh = ev.lkh
            if new_kek:
                self.kek_expires_at = now + ev.kek.lifetime_s
        self._take_gap(ev.gap)
        activate_at = now + self.activation_delay
        new = self._take_teks(ev.teks, now, switch=False, activate_at=activate_at)
        self._events.append(GroupRekeyed(self.group_id, ev.seq, tuple(t.spi for t in ev.teks),
                                         new_kek, activate_at if new else None))
        if self.state is MemberState.REGISTERED:
            self._plan_reregistration(now)

    def _teks_deleted(self, ev: TeksDeleted, now: float) -> None:
        """Deleted TEKs with a newer TEK of the same policy held retire on their deactivation
        schedule (the successor's arrival set it); the others go at once."""
        drop = []
        for h in self.held:
            if h.removing or not (ev.all or h.spi in ev.spis):
                continue
            if ev.all or h.retire_at is None:
                drop.append(h)
        if drop:
            self._remove(drop, "deleted by the key server")
        if not any(not h.removing for h in self.held):
            self._register_now(now, "the key server deleted every TEK")

    def _kek_deleted(self, now: float) -> None:
        self.push = None
        self._stop_listening()
        self._events.append(LeftGroup(self.group_id, "the key server deleted the KEK"))
        self._register_now(now, "the key server deleted the KEK")

    def _evicted(self, now: float) -> None:
        self.push = None
        self._stop_listening()
        if self._held:
            self._close_registration()
        gone = [h for h in self.held if not h.removing]
        if gone:
            self._remove(gone, "evicted from the group")
        if self.adopted:
            spis = tuple(sorted(self.adopted))
            self._sa_action(lambda ref: RemoveSas(ref, spis, "evicted from the group"))
            self.adopted = frozenset()
            self.adopted_retire_at = None
        self.last_error = "evicted from the group"
        self._events.append(LeftGroup(self.group_id, "evicted from the group"))
        if self.state in (MemberState.REGISTERED, MemberState.BACKOFF):
            self.failures += 1
            self._schedule(self._backoff(), now, MemberState.BACKOFF)

    # -- the SA plan --------------------------------------------------------------------------
    def _take_teks(self, teks, now: float, *, switch: bool,
                   activate_at: float | None = None) -> list[HeldTek]:
        """Plan and ask for the installation of the TEKs not held yet; returns them."""
        known = {h.spi for h in self.held}
        new = [t for t in teks if t.spi not in known]
        if not new:
            if switch and teks:  # a registration: the kernel holds them? (idempotent)
                self._sa_action(lambda ref: InstallSas(ref, tuple(teks), True))
            return []
        cap = self.timing.max_per_selector
        fresh: list[HeldTek] = []
        for t in new:
            same = [h for h in self.held if h.selector == t.selector and not h.removing]
            # room for the newcomer: the oldest go first (after the sender moved off them)
            while len(same) >= cap:
                oldest = same.pop(0)
                self._remove([oldest], "superseded (at most two SAs per TEK policy)")
            for h in same:  # what the newcomer supersedes
                if h.retire_at is None:
                    delay = max(self.deactivation_delay, self.activation_delay)
                    h.retire_at = min(h.expires_at, now + delay) if not switch \
                        else min(h.expires_at, now + self.deactivation_delay)
                    h.activate_at = None
            h = HeldTek(t, now, now + t.lifetime_s)
            if not switch and t.sends and any(x.outbound for x in same):
                h.activate_at = activate_at
            self.held.append(h)
            fresh.append(h)
        batch = tuple(teks) if switch else tuple(h.tek for h in fresh)
        self._sa_action(lambda ref: InstallSas(ref, batch, switch))
        return fresh

    def _now_outbound(self, h: HeldTek, now: float) -> None:
        for x in self.held:
            if x.selector == h.selector and x is not h:
                x.outbound = False
        h.outbound = True
        h.activate_at = None

    def _sending_on(self, sel: TrafficSelector, but: HeldTek) -> bool:
        return any(x.outbound for x in self.held if x.selector == sel and x is not but)

    def _remove(self, hs: list[HeldTek], reason: str) -> None:
        for h in hs:
            h.removing = True
        for h in hs:
            if h.outbound:  # hand the outbound policy to an installed successor first
                succ = next((x for x in self.held if x.selector == h.selector and x.tek.sends
                             and x.installed and not x.removing), None)
                if succ is not None:
                    succ.activate_at = None
                    self._sa_action(lambda ref, s=succ.spi: ActivateOutbound(ref, s))
        spis = tuple(h.spi for h in hs)
        self._sa_action(lambda ref: RemoveSas(ref, spis, reason))

    def _find(self, spi: int) -> HeldTek | None:
        return next((h for h in self.held if h.spi == spi), None)

    def _sa_action(self, make: Callable[[int], MemberAction]) -> None:
        self._ref += 1
        act = make(self._ref)
        self._pending[self._ref] = act
        self._actions.append(act)

    def _answer(self, action: MemberAction) -> MemberAction:
        ref = action.ref if isinstance(action, (InstallSas, ActivateOutbound, RemoveSas)) else None
        if ref is None or self._pending.get(ref) != action:
            raise RefusedInput(f"{type(action).__name__} is not a pending SA action")
        return self._pending.pop(ref)
