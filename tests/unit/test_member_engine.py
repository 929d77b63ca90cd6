"""gkm.gdoi.member.MemberEngine with a fake clock: every (state, input) pair, the refused ones
leaving the state unchanged, and make before break against the real installer on the
in-memory kernel (at most two SAs per TEK policy, the sender switched after the activation
delay, the old SA gone after the deactivation delay)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import replace

import pytest

from gkm.gdoi.events import Registered, RegistrationFailed
from gkm.gdoi.keys import GroupTek
from gkm.gdoi.policy_wire import GapDelays
from gkm.gdoi.member import (
    ActivateOutbound, CloseRegistration, GroupRekeyed, InstallSas, Joined, LeftGroup,
    ForgetState, ListenForPush, MemberEngine, ResyncScheduled, MemberState, OpenRegistration, OutboundSwitched,
    RefusedInput, RegistrationAttemptFailed, RemoveSas, SasRemoved, SaveState, StopListening, Timing,
)
from gkm.gdoi.push import Evicted, KekDeleted, LkhPartReceived, PushRejected, Rekeyed, TeksDeleted
from policy.model import (
    AddressPreservation, KeyServerAddress, MemberGroup, Mode, PskCredential, SaDirection,
    TrafficSelector,
)
from xfrm.groupsa import GroupSaInstaller
from xfrm.memory import MemoryXfrm

N = ipaddress.ip_network
GID = 1001
KS = (KeyServerAddress("10.0.0.1"), KeyServerAddress("10.0.0.2"))
SEL = TrafficSelector(N("10.1.0.0/16"), N("239.1.1.1/32"), 17, 0, 5000)
SEL2 = TrafficSelector(N("10.1.0.0/16"), N("239.1.1.2/32"), 17, 0, 5000)
TIMING = Timing(backoff=(1.0, 8.0), jitter=True, reregister_fraction=0.5, reregister_min=10.0,
                activation_delay=2.0, deactivation_delay=5.0)


def tek(spi: int, sel: TrafficSelector = SEL, life: int = 100,
        direction=SaDirection.SYMMETRIC) -> GroupTek:
    return GroupTek(GID, spi, sel, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION,
                    direction, "aes-gcm-128", bytes([spi & 0xFF]) * 20, b"", life)


class Kek:
    """The parts of a GroupKek the engine reads."""

    def __init__(self, spi=b"K" * 16, dst="239.192.0.1", port=848, life=1000):
        self.spi, self.dst, self.dst_port, self.lifetime_s = spi, N(f"{dst}/32"), port, life


class FakeRegistration:
    """Answers the first datagram with the queued outcome; times out at now + 5."""

    def __init__(self, outcome, now):
        self.outcome = outcome
        self.out = [(b"PULL", ("10.0.0.1", 848))]
        self.events = []
        self.deadline = now + 5

    def receive_datagram(self, data, addr, now):
        self.events.append(self.outcome)
        self.deadline = None

    def handle_timer(self, now):
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self.events.append(RegistrationFailed(GID, "no answer from key server"))

    def datagrams_to_send(self):
        out, self.out = self.out, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def get_timer(self):
        return self.deadline


class FakePush:
    """Emits whatever events the test queues when a datagram arrives (the real classes)."""

    def receiver_state(self):
        return None  # the engine's KEK, SEQ and LKH path rebuild it, as GDOI's PushReceiver

    def __init__(self, kek):
        self.kek = kek
        self.queue = []
        self.events = []
        self.acks = []  # what datagrams_to_send gives after the next datagram
        self.out = []
        self.ack_address = None

    def acknowledge_as(self, address):
        self.ack_address = address

    def receive_datagram(self, data, addr, now):
        self.events.extend(self.queue)
        self.queue = []
        self.out, self.acks = self.acks, []

    def datagrams_to_send(self):
        out, self.out = self.out, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None


def registered(*teks, kek=None, seq=0):
    return Registered(GID, tuple(teks), kek, seq, None, ("10.0.0.1", 848))


class World:
    """A fake clock, the engine, and a shell that performs SA actions on a real installer
    over the in-memory kernel, recording the most SAs ever held per selector."""

    def __init__(self, outcome=None, adopted=frozenset(), auto_kernel=True):
        self.now = 1000.0
        self.outcome = outcome if outcome is not None else registered(tek(0x100), kek=Kek())
        self.port = MemoryXfrm()
        self.gsa = GroupSaInstaller(self.port, local=["10.1.0.5"])
        self.pushes = []
        self.max_per_selector = 0
        self.auto_kernel = auto_kernel
        self.actions = []
        self.events = []
        self.saved = None  # the last SaveState's snapshot (None after ForgetState)
        group = MemberGroup(GID, KS, PskCredential("gm1", b"0" * 32), name="g")
        self.e = MemberEngine(group, new_registration=self._reg, new_push_receiver=self._push,
                              random=lambda: 0.5, timing=TIMING, adopted=adopted)

    def _reg(self, group, addr, now):
        return FakeRegistration(self.outcome, now)

    def _push(self, group, reg):
        p = FakePush(reg.kek)
        self.pushes.append(p)
        return p

    def drain(self):
        """Pull every action (performing the SA ones on the kernel) and event."""
        while True:
            act = self.e.next_action()
            if act is None:
                break
            self.actions.append(act)
            if self.auto_kernel and isinstance(act, (InstallSas, ActivateOutbound, RemoveSas)):
                self.perform(act)
            elif isinstance(act, ListenForPush):
                self.e.push_listening(self.now)
            elif isinstance(act, SaveState):
                self.saved = act.snapshot
                self.e.state_saved(act, self.now)
            elif isinstance(act, ForgetState):
                self.saved = None
        while (ev := self.e.next_event()) is not None:
            self.events.append(ev)
        return self

    def perform(self, act):
        match act:
            case InstallSas():
                self.gsa.install(GID, act.teks, switch=act.switch)
            case ActivateOutbound():
                self.gsa.send_on(GID, act.spi)
            case RemoveSas():
                self.gsa.remove(GID, act.spis)
        per = Counter(s.selector for s in self.port.dump_states())
        self.max_per_selector = max([self.max_per_selector, *per.values()])
        self.e.sas_installed(act, self.now)

    def take(self, kind):
        got = [a for a in self.actions if isinstance(a, kind)]
        self.actions = [a for a in self.actions if not isinstance(a, kind)]
        return got

    def register(self):
        self.e.start(self.now)
        self.drain()
        self.e.registration_opened(("10.0.0.1", 848), self.now)
        assert self.e.datagrams_to_send() == [(b"PULL", ("10.0.0.1", 848))]
        self.e.receive_registration(b"reply", ("10.0.0.1", 848), self.now)
        return self.drain()

    def advance(self, to):
        """Run the engine's timers up to ``to``."""
        while (t := self.e.get_timer()) is not None and t <= to:
            self.now = max(self.now, t)
            self.e.handle_timer(self.now)
            self.drain()
        self.now = to
        return self

    def push(self, *events):
        p = self.pushes[-1]
        p.queue = list(events)
        self.e.receive_push(b"push", ("10.0.0.1", 848), self.now)
        return self.drain()

    def sending(self):
        return dict(self.gsa.installed(GID).sending).get(SEL)

    def kernel_spis(self):
        return {s.spi for s in self.port.dump_states()}


def snapshot(e: MemberEngine):
    return (e.state, e.ks_index, e.failures, e.next_attempt, e.key_server, e.last_error,
            e.rekeys, e.last_seq, e.listen_error,
            [(h.spi, h.installed, h.outbound, h.activate_at, h.retire_at, h.removing)
             for h in e.held], dict(e._pending), list(e._actions), list(e._events),
            e._listen, e._listen_pending, e._open_pending, e.registration is None)


def resyncs(w: "World", why: str = "") -> bool:
    """The member noticed a missed rekey: it registers again after the jitter the injected
    random gives (0.5 * resync_spread), not at once."""
    ev = [e for e in w.events if isinstance(e, ResyncScheduled)][-1]
    assert ev.in_s == 0.5 * TIMING.resync_spread and why in ev.reason
    assert w.e.state is MemberState.REGISTERED and w.e.next_attempt == w.now + ev.in_s
    w.advance(w.now + ev.in_s)
    return w.e.state is MemberState.CONNECTING


# ------------------------------------------------------------------------ each state

def in_state(state: MemberState) -> World:
    w = World()
    if state is MemberState.IDLE:
        return w
    if state is MemberState.CONNECTING:
        w.e.start(w.now)
        return w.drain()
    if state is MemberState.REGISTERING:
        w.e.start(w.now)
        w.drain()
        w.e.registration_opened(("10.0.0.1", 848), w.now)
        return w.drain()
    if state is MemberState.REGISTERED:
        return w.register()
    if state is MemberState.BACKOFF:
        w.e.start(w.now)
        w.drain()
        w.e.registration_unavailable("no route", w.now)
        w.drain()
        w.e.registration_unavailable("no route", w.now)
        return w.drain()
    w.register()
    w.e.stop(w.now)
    return w.drain()


def test_every_state_is_reachable():
    for st in MemberState:
        assert in_state(st).e.state is st


REFUSED = {
    "start": (lambda w: w.e.start(w.now), [s for s in MemberState if s is not MemberState.IDLE]),
    "registration_opened": (lambda w: w.e.registration_opened(("10.0.0.1", 848), w.now),
                            [s for s in MemberState if s is not MemberState.CONNECTING]),
    "registration_unavailable": (lambda w: w.e.registration_unavailable("x", w.now),
                                 [s for s in MemberState if s is not MemberState.CONNECTING]),
    "push_listening": (lambda w: w.e.push_listening(w.now), list(MemberState)),
    "push_listen_failed": (lambda w: w.e.push_listen_failed("x", w.now), list(MemberState)),
    "sas_installed (no such action)": (
        lambda w: w.e.sas_installed(InstallSas(99, (tek(0x999),), True), w.now),
        list(MemberState)),
    "sa_failed (no such action)": (
        lambda w: w.e.sa_failed(RemoveSas(99, (0x100,), "x"), "x", w.now), list(MemberState)),
    "sas_installed (not an SA action)": (
        lambda w: w.e.sas_installed(CloseRegistration(), w.now), list(MemberState)),
    "reconfigure": (lambda w: w.e.reconfigure(w.e.group, w.now), [MemberState.STOPPED]),
    "reconfigure (other group)": (
        lambda w: w.e.reconfigure(replace(w.e.group, group_id=7), w.now), list(MemberState)),
}


@pytest.mark.parametrize("state", list(MemberState), ids=lambda s: s.value)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_inputs_leave_the_state_unchanged(state, name):
    call, refused_in = REFUSED[name]
    w = in_state(state)
    if state not in refused_in:
        return  # accepted there: covered by the transition tests below
    before = snapshot(w.e)
    with pytest.raises(RefusedInput):
        call(w)
    assert snapshot(w.e) == before


@pytest.mark.parametrize("state", list(MemberState), ids=lambda s: s.value)
def test_stray_datagrams_and_kernel_events_change_nothing_where_they_do_not_fit(state):
    w = in_state(state)
    before = snapshot(w.e)
    if state is not MemberState.REGISTERING:
        w.e.receive_registration(b"late", ("10.0.0.1", 848), w.now)
    w.e.sa_expired(0xDEAD, True, w.now)  # not ours
    if state in (MemberState.IDLE, MemberState.CONNECTING, MemberState.BACKOFF,
                 MemberState.STOPPED):
        w.e.receive_push(b"push", ("10.0.0.1", 848), w.now)  # no receiver
    w.e.handle_timer(w.now)  # nothing due
    assert snapshot(w.e) == before


@pytest.mark.parametrize("state", list(MemberState), ids=lambda s: s.value)
def test_stop_from_every_state(state):
    w = in_state(state)
    had_listen = w.e._listen is not None
    connecting = state in (MemberState.CONNECTING, MemberState.REGISTERING)
    w.actions = []
    w.e.stop(w.now)
    w.drain()
    assert w.e.state is MemberState.STOPPED and w.e.get_timer() is None
    kinds = [type(a) for a in w.actions]
    assert (CloseRegistration in kinds) == connecting
    assert (StopListening in kinds) == had_listen
    w.e.stop(w.now)  # again: nothing more
    assert w.e.next_action() is None


# ------------------------------------------------------------------ registration path

def test_start_asks_for_the_first_key_server():
    w = in_state(MemberState.IDLE)
    w.e.start(w.now)
    w.drain()
    assert w.take(OpenRegistration) == [OpenRegistration(KS[0])]
    assert w.e.state is MemberState.CONNECTING and w.e.key_server == "10.0.0.1:848"


def test_a_g_ikev2_member_without_receiver_state_saves_nothing():
    """A G-IKEv2 member's saved state needs its GSA_REKEY receiver's (receiver_state()): a
    receiver that gives none (as GDOI's) leaves nothing to save; a restart registers again."""
    w = World()
    w.e.group = replace(w.e.group, protocol="g-ikev2")
    w.register()
    kinds = [type(a) for a in w.actions]
    assert kinds == [OpenRegistration, CloseRegistration, InstallSas, ListenForPush]
    assert w.e.snapshot(w.now) is None and w.saved is None


def test_registration_installs_switches_listens_and_plans_the_refresh():
    w = World().register()
    assert w.e.state is MemberState.REGISTERED
    kinds = [type(a) for a in w.actions]
    assert kinds == [OpenRegistration, CloseRegistration, SaveState, InstallSas, ListenForPush]
    (inst,) = w.take(InstallSas)
    assert inst.switch and [t.spi for t in inst.teks] == [0x100]
    assert w.take(ListenForPush) == [ListenForPush("239.192.0.1", 848, None)]
    assert w.sending() == 0x100 and w.kernel_spis() == {0x100}
    assert [type(e) for e in w.events] == [Joined]
    # re-register at half the remaining lifetime (100 s TEK), at least 10 s away
    assert w.e.next_attempt == w.now + 50
    assert w.e.kek_spi == b"K" * 16 and w.e.last_seq == 0


def test_failover_then_backoff_with_injected_jitter_then_retry():
    w = in_state(MemberState.CONNECTING)
    w.e.registration_unavailable("no route", w.now)
    w.drain()
    assert w.e.state is MemberState.CONNECTING and w.take(OpenRegistration)[-1].key_server == KS[1]
    w.e.registration_unavailable("no route", w.now)
    w.drain()
    # a whole round failed: backoff base 1 s * (0.75 + 0.5 * 0.5)
    assert w.e.state is MemberState.BACKOFF and w.e.next_attempt == w.now + 1.0
    assert [e.retry_in for e in w.events if isinstance(e, RegistrationAttemptFailed)] == [0.0, 1.0]
    w.advance(w.now + 0.5)
    assert w.e.state is MemberState.BACKOFF
    w.advance(w.now + 0.5)
    assert w.e.state is MemberState.CONNECTING and w.e.key_server == "10.0.0.1:848"
    # the second failed round doubles the delay
    for _ in range(2):
        w.e.registration_unavailable("no route", w.now)
        w.drain()
    assert w.e.next_attempt == w.now + 2.0


def test_an_unreachable_key_server_fails_over_at_once_not_after_the_timeout():
    w = in_state(MemberState.REGISTERING)
    assert w.e.key_server == "10.0.0.1:848"
    w.e.registration_unreachable("Connection refused", w.now)
    w.drain()
    assert w.take(CloseRegistration) and w.take(OpenRegistration)[-1].key_server == KS[1]
    assert w.e.state is MemberState.CONNECTING and w.e.registration is None
    (ev,) = [e for e in w.events if isinstance(e, RegistrationAttemptFailed)]
    assert ev.reason == "key server unreachable: Connection refused" and ev.retry_in == 0.0
    assert ev.key_server == "10.0.0.1:848"  # the one that failed, not the next
    for state in (MemberState.CONNECTING, MemberState.REGISTERED, MemberState.BACKOFF):
        w = in_state(state)
        before = snapshot(w.e)
        w.e.registration_unreachable("late ICMP", w.now)
        assert snapshot(w.e) == before  # outside a registration: dropped


def test_backoff_is_capped_and_jitter_comes_from_the_injected_random():
    w = World()
    w.e._random = lambda: 0.0
    w.e.failures = 10
    assert w.e._backoff() == 8.0 * 0.75
    w.e._random = lambda: 0.999
    assert 9.99 < w.e._backoff() <= 10.0


def test_registration_refused_or_timed_out_moves_to_the_next_key_server():
    w = World(outcome=RegistrationFailed(GID, "not authorized"))
    w.register()
    assert w.e.state is MemberState.CONNECTING and w.e.last_error == "not authorized"
    assert w.take(OpenRegistration)[-1].key_server == KS[1]
    w.e.registration_opened(("10.0.0.2", 848), w.now)
    w.drain()
    w.advance(w.now + 5)  # the fake registration times out
    assert w.e.state is MemberState.BACKOFF and w.e.last_error == "no answer from key server"


def test_registration_engine_that_cannot_be_made_is_a_failed_attempt():
    w = in_state(MemberState.CONNECTING)

    def broken(group, addr, now):
        raise ValueError("credentials unusable")
    w.e._new_registration = broken
    w.e.registration_opened(("10.0.0.1", 848), w.now)
    w.drain()
    assert "credentials unusable" in w.e.last_error and w.e.state is MemberState.CONNECTING


def test_refresh_registers_again_and_keeps_what_is_held():
    w = World().register()
    w.actions = []
    w.advance(w.e.next_attempt)
    assert w.e.state is MemberState.CONNECTING and w.e.refreshing
    w.e.registration_opened(("10.0.0.1", 848), w.now)
    w.e.receive_registration(b"reply", ("10.0.0.1", 848), w.now)
    w.drain()
    assert w.e.registrations == 2 and w.e.state is MemberState.REGISTERED
    assert w.kernel_spis() == {0x100} and len(w.e.held) == 1
    # the same rekey address: no second socket
    assert not w.take(ListenForPush) and not w.take(StopListening)
    assert [e.refresh for e in w.events if isinstance(e, Joined)] == [False, True]


def test_registration_without_kek_listens_for_nothing():
    w = World(outcome=registered(tek(0x100))).register()
    assert not w.take(ListenForPush) and w.e.kek_spi is None


def test_install_failure_retries_after_a_backoff():
    w = World(auto_kernel=False)
    w.register()
    (inst,) = w.take(InstallSas)
    w.e.sa_failed(inst, "EPROTONOSUPPORT: no esp4", w.now)
    w.drain()
    assert w.e.held == [] and "no esp4" in w.e.last_error
    assert w.e.next_attempt == w.now + 1.0
    with pytest.raises(RefusedInput):  # answered once only
        w.e.sas_installed(inst, w.now)


def test_rekey_socket_that_cannot_be_bound_is_reported():
    w = World()
    w.e.start(w.now)
    w.drain()
    w.e.registration_opened(("10.0.0.1", 848), w.now)
    w.e.receive_registration(b"r", ("10.0.0.1", 848), w.now)
    while (a := w.e.next_action()) is not None:
        if isinstance(a, InstallSas):
            w.perform(a)
        elif isinstance(a, ListenForPush):
            w.e.push_listen_failed("Address already in use", w.now)
    assert w.e.listen_error == "cannot receive GROUPKEY-PUSH on port 848: Address already in use"
    assert w.e.state is MemberState.REGISTERED  # the keys work; PUSH does not


def test_reconfigure_registers_again_from_the_first_key_server():
    w = in_state(MemberState.BACKOFF)
    w.actions = []
    w.e.reconfigure(w.e.group, w.now)
    w.drain()
    assert w.e.state is MemberState.CONNECTING and w.take(OpenRegistration) == [
        OpenRegistration(KS[0])]


# ----------------------------------------------------------------- make before break

def test_rekey_installs_inbound_now_switches_after_atd_retires_after_dtd():
    w = World().register()
    t0 = w.now
    w.actions = []
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    (inst,) = w.take(InstallSas)
    assert not inst.switch and [t.spi for t in inst.teks] == [0x200]
    assert w.kernel_spis() == {0x100, 0x200} and w.sending() == 0x100  # inbound first
    ev = next(e for e in w.events if isinstance(e, GroupRekeyed))
    assert ev.seq == 1 and ev.activate_at == t0 + 2.0
    roles = {h.spi: h.role for h in w.e.held}
    assert roles == {0x100: "previous", 0x200: "next"}
    w.advance(t0 + 1.9)
    assert w.sending() == 0x100
    w.advance(t0 + 2.0)
    assert [a.spi for a in w.take(ActivateOutbound)] == [0x200]
    assert w.sending() == 0x200 and any(isinstance(e, OutboundSwitched) for e in w.events)
    assert {h.spi: h.role for h in w.e.held} == {0x100: "previous", 0x200: "current"}
    w.advance(t0 + 4.9)
    assert w.kernel_spis() == {0x100, 0x200}
    w.advance(t0 + 5.0)
    assert w.kernel_spis() == {0x200} and [h.spi for h in w.e.held] == [0x200]
    assert w.max_per_selector == 2
    assert w.e.rekeys == 1 and w.e.last_seq == 1


def test_receive_only_member_never_switches_anything():
    w = World(outcome=registered(tek(0x100, direction=SaDirection.RECEIVER_ONLY),
                                 kek=Kek())).register()
    w.push(Rekeyed(GID, (tek(0x200, direction=SaDirection.RECEIVER_ONLY),), Kek(), 1))
    w.advance(w.now + 10)
    assert not w.take(ActivateOutbound) and w.kernel_spis() == {0x200}


def test_rekeys_in_quick_succession_never_hold_more_than_two_per_policy():
    w = World().register()
    for i, spi in enumerate((0x200, 0x300, 0x400, 0x500), 1):
        w.push(Rekeyed(GID, (tek(spi),), Kek(), i))
        assert len(w.kernel_spis()) <= 2
        w.advance(w.now + 1.0)  # faster than the activation delay
    assert w.max_per_selector == 2
    w.advance(w.now + 20)
    assert w.kernel_spis() == {0x500} and w.sending() == 0x500


def test_rotations_over_a_long_run_keep_two_at_most_and_end_with_one():
    w = World(outcome=registered(tek(0x100, life=20), kek=Kek())).register()
    spi = 0x100
    for i in range(1, 8):  # a rekey every 15 s for 20 s TEKs
        w.advance(w.now + 15)
        spi += 0x100
        w.push(Rekeyed(GID, (tek(spi, life=20),), Kek(), i))
        assert w.sending() == spi - 0x100
    w.advance(w.now + 6)
    assert w.max_per_selector == 2 and w.kernel_spis() == {spi} and w.sending() == spi
    assert len(w.port.dump_policies()) == 2  # one outbound, one inbound


def test_a_new_selector_by_rekey_gets_its_policies_and_the_old_one_goes_at_expiry():
    w = World(outcome=registered(tek(0x100, life=30), kek=Kek())).register()
    w.push(Rekeyed(GID, (tek(0x200, sel=SEL2, life=100),), Kek(), 1))
    # nothing was sent on SEL2 before: its outbound policy names the new TEK at once
    assert dict(w.gsa.installed(GID).sending) == {SEL: 0x100, SEL2: 0x200}
    w.advance(w.now + 30)  # SEL's TEK expires: its states and policies go
    assert w.kernel_spis() == {0x200}
    assert {p.selector.dst for p in w.port.dump_policies()} == {N("239.1.1.2/32")}


def test_teks_deleted_removes_them_and_registers_when_none_is_left():
    w = World().register()
    w.push(TeksDeleted(GID, (0x100,)))  # no successor: at once
    assert w.kernel_spis() == set() and resyncs(w, "deleted every TEK")
    w = World().register()
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    w.push(TeksDeleted(GID, (0x100,)))  # superseded: on its deactivation schedule
    assert w.kernel_spis() == {0x100, 0x200}
    w.advance(w.now + 5)
    assert w.kernel_spis() == {0x200} and w.e.state is MemberState.REGISTERED
    w.push(TeksDeleted(GID, (), True))
    assert w.kernel_spis() == set() and resyncs(w)


def test_a_delete_in_the_push_that_brings_the_successor_waits_for_the_deactivation_delay():
    w = World().register()
    t0 = w.now
    w.push(TeksDeleted(GID, (0x100,)), Rekeyed(GID, (tek(0x200),), Kek(), 1))  # D before SA
    assert w.kernel_spis() == {0x100, 0x200} and w.sending() == 0x100
    w.advance(t0 + 2.0)
    assert w.sending() == 0x200
    w.advance(t0 + 5.0)
    assert w.kernel_spis() == {0x200}


def test_a_reload_that_moves_the_tek_policy_leaves_no_stale_sa():
    """The key server rolls to a TEK on another selector and deletes the old one: the old
    selector's SA and policies go at once, the new one is sent on at once (nothing was sent
    on its selector before)."""
    w = World().register()
    w.push(Rekeyed(GID, (tek(0x200, sel=SEL2),), Kek(), 1), TeksDeleted(GID, (0x100,)))
    assert w.kernel_spis() == {0x200}
    assert {p.selector.dst for p in w.port.dump_policies()} == {N("239.1.1.2/32")}
    assert dict(w.gsa.installed(GID).sending) == {SEL2: 0x200}


def test_kek_deleted_stops_listening_and_registers_again():
    w = World().register()
    w.actions = []
    w.push(KekDeleted(GID, b"K" * 16))
    assert w.take(StopListening) and w.take(ForgetState) and resyncs(w, "deleted the KEK")
    assert any(isinstance(e, LeftGroup) for e in w.events) and w.e.kek_spi is None
    assert w.kernel_spis() == {0x100}  # the TEKs still work until replaced


def test_evicted_member_removes_every_sa_at_once_and_backs_off():
    w = World().register()
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    w.actions = []
    w.push(Evicted(GID))
    assert w.kernel_spis() == set() and w.port.dump_policies() == []
    assert w.take(StopListening) and w.e.state is MemberState.BACKOFF
    assert w.e.last_error == "evicted from the group" and w.e.held == []
    assert any(isinstance(e, SasRemoved) and e.reason == "evicted from the group"
               for e in w.events)
    w.e.receive_push(b"more", ("10.0.0.1", 848), w.now)  # no receiver any more
    assert w.e.next_action() is None


def test_lkh_parts_are_events_until_the_last_part_rekeys():
    w = World().register()
    before = snapshot(w.e)
    w.push(LkhPartReceived(GID, 5, 1, 2))
    assert w.events[-1] == LkhPartReceived(GID, 5, 1, 2)
    assert snapshot(w.e)[:10] == before[:10] and w.e.rekeys == 0
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 6, new_kek=True))
    assert w.e.rekeys == 1 and w.e.last_seq == 6


def test_rejected_push_is_only_an_event():
    w = World().register()
    before = snapshot(w.e)
    w.push(PushRejected(GID, "SEQ 1 not greater than 1 (replay)"))
    assert isinstance(w.events[-1], PushRejected)
    assert snapshot(w.e)[:10] == before[:10]


def test_kernel_soft_expiry_without_successor_registers_again():
    w = World().register()
    w.e.sa_expired(0x100, False, w.now)
    w.drain()
    assert resyncs(w, "about to expire")
    w2 = World().register()
    w2.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    w2.e.sa_expired(0x200, False, w2.now)  # the new one has no successor, but is not current
    w2.e.sa_expired(0x100, False, w2.now)  # superseded: a successor exists
    assert w2.e.state is MemberState.REGISTERED


def test_kernel_hard_expiry_cleans_policies_and_registers_when_nothing_is_left():
    w = World().register()
    w.port.expire(w.port.dump_states()[0].id)
    w.e.sa_expired(0x100, True, w.now)
    w.drain()
    assert w.port.dump_policies() == [] and w.e.held == []
    assert resyncs(w, "expired with no successor")


def test_adopted_sas_not_renewed_go_after_the_deactivation_delay():
    w = World(adopted=frozenset({0x100, 0x77}))
    w.register()
    assert w.e.adopted == {0x77}
    w.advance(w.now + 4.9)
    assert not [a for a in w.actions if isinstance(a, RemoveSas)]
    w.advance(w.now + 0.1)
    assert [a.spis for a in w.take(RemoveSas)] == [(0x77,)] and w.e.adopted == frozenset()


def test_failed_remove_and_activate_are_reported_and_the_plan_moves_on():
    w = World(auto_kernel=False)
    w.register()
    w.e.sas_installed(w.take(InstallSas)[0], w.now)
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    w.e.sas_installed(w.take(InstallSas)[0], w.now)
    w.advance(w.now + 2)
    (act,) = w.take(ActivateOutbound)
    w.e.sa_failed(act, "ENOMEM", w.now)
    assert next(h for h in w.e.held if h.spi == 0x200).activate_at is None
    w.advance(w.now + 3)
    (rm,) = w.take(RemoveSas)
    w.e.sa_failed(rm, "ENOMEM", w.now)
    assert [h.spi for h in w.e.held] == [0x200]


def test_push_during_a_refresh_is_taken_and_the_plan_runs_on():
    w = World().register()
    w.advance(w.e.next_attempt)
    assert w.e.state is MemberState.CONNECTING
    t0 = w.now
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    assert w.kernel_spis() == {0x100, 0x200} and w.e.rekeys == 1
    w.e.registration_opened(("10.0.0.1", 848), w.now)
    w.drain()
    assert w.e.state is MemberState.REGISTERING
    w.push(Rekeyed(GID, (tek(0x300),), Kek(), 2))  # still REGISTERING: taken too
    w.advance(t0 + 1.0)
    assert w.e.rekeys == 2 and len(w.kernel_spis()) == 2 and w.max_per_selector == 2
    # the registration now brings the key server's current TEK, held already: nothing new
    w.outcome = registered(tek(0x300), kek=Kek(), seq=2)
    w.e.registration.outcome = w.outcome
    w.e.receive_registration(b"reply", ("10.0.0.1", 848), w.now)
    w.drain()
    assert w.e.state is MemberState.REGISTERED and w.kernel_spis() == {0x200, 0x300}
    w.advance(w.now + 10)
    assert w.kernel_spis() == {0x300} and w.sending() == 0x300


def test_kernel_expiry_while_connecting_removes_but_does_not_start_a_second_attempt():
    w = World().register()
    w.advance(w.e.next_attempt)
    w.actions = []
    w.port.expire(w.port.dump_states()[0].id)
    w.e.sa_expired(0x100, True, w.now)
    w.drain()
    assert w.e.state is MemberState.CONNECTING and not w.take(OpenRegistration)
    assert w.e.held == [] and w.port.dump_policies() == []


def test_hard_expiry_of_an_sa_already_being_removed_is_ignored():
    w = World(auto_kernel=False).register()
    w.e.sas_installed(w.take(InstallSas)[0], w.now)
    w.e.handle_timer(w.now + 100)  # lifetime over: RemoveSas asked, not answered yet
    w.drain()
    (rm,) = w.take(RemoveSas)
    before = snapshot(w.e)
    w.e.sa_expired(0x100, True, w.now + 100)
    assert snapshot(w.e) == before
    w.e.sas_installed(rm, w.now + 100)
    assert w.e.held == []


def test_a_tek_that_runs_out_without_successor_is_removed_and_the_member_registers():
    w = World(outcome=registered(tek(0x100, life=20), kek=Kek())).register()
    assert w.e.next_attempt == w.now + 10  # at least reregister_min; the fake refuses nothing
    w.e.next_attempt = None  # say the refresh was lost: the lifetime still ends
    w.advance(w.now + 20)
    assert w.kernel_spis() == set() and resyncs(w, "expired with no successor")


# ------------------------------------------------------- the key server's GAP (ATD / DTD)

def test_the_gap_of_the_registration_sets_when_senders_switch_and_when_the_old_sa_goes():
    """Registered.gap (GROUPKEY-PULL message 2's GAP) replaces Timing's stand-ins (2 s / 5 s
    here): a rekey without a GAP of its own switches after 7 s, drops the old SA after 13 s."""
    w = World(outcome=replace(registered(tek(0x100), kek=Kek()), gap=GapDelays(7, 13))).register()
    assert (w.e.activation_delay, w.e.deactivation_delay) == (7, 13)
    t0 = w.now
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    ev = next(e for e in w.events if isinstance(e, GroupRekeyed))
    assert ev.activate_at == t0 + 7
    w.advance(t0 + 6.9)
    assert w.sending() == 0x100 and w.kernel_spis() == {0x100, 0x200}
    w.advance(t0 + 7)
    assert w.sending() == 0x200
    w.advance(t0 + 12.9)
    assert w.kernel_spis() == {0x100, 0x200}
    w.advance(t0 + 13)
    assert w.kernel_spis() == {0x200} and w.max_per_selector == 2


def test_a_pushs_gap_applies_to_its_rekey_and_stays_for_later_ones():
    w = World(outcome=replace(registered(tek(0x100), kek=Kek()), gap=GapDelays(7, 13))).register()
    t0 = w.now
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1, gap=GapDelays(1, 3)))
    w.advance(t0 + 1)
    assert w.sending() == 0x200 and w.kernel_spis() == {0x100, 0x200}
    w.advance(t0 + 3)
    assert w.kernel_spis() == {0x200}
    # a GAP with the DTD only keeps the ATD it had; a rekey without GAP keeps both
    w.push(Rekeyed(GID, (tek(0x300),), Kek(), 2, gap=GapDelays(None, 4)))
    assert (w.e.activation_delay, w.e.deactivation_delay) == (1, 4)
    t1 = w.now
    w.advance(t1 + 1)
    assert w.sending() == 0x300
    w.advance(t1 + 4)
    assert w.kernel_spis() == {0x300}
    w.push(Rekeyed(GID, (tek(0x400),), Kek(), 3))
    assert (w.e.activation_delay, w.e.deactivation_delay) == (1, 4)
    assert w.max_per_selector == 2


def test_a_dtd_shorter_than_the_atd_still_keeps_the_old_sa_until_senders_switched():
    """RFC 6407 section 5.4.1 lets ATD and DTD be independent; a receiver never drops the
    SA its senders still use."""
    w = World().register()
    t0 = w.now
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1, gap=GapDelays(4, 2)))
    w.advance(t0 + 3.9)
    assert w.kernel_spis() == {0x100, 0x200} and w.sending() == 0x100
    w.advance(t0 + 4)
    assert w.sending() == 0x200 and w.kernel_spis() == {0x200}


def test_a_sending_tek_that_expires_before_its_successors_activation_hands_over_first():
    """The rekey came later than the ATD before the old TEK's end: at its expiry the sender
    moves to the (installed) successor before the old SA goes, so it always has one."""
    w = World(outcome=replace(registered(tek(0x100, life=10), kek=Kek()),
                              gap=GapDelays(8, 9))).register()
    t0 = w.now
    w.advance(t0 + 5)
    w.push(Rekeyed(GID, (tek(0x200, life=100),), Kek(), 1))
    assert w.sending() == 0x100
    w.actions = []
    w.advance(t0 + 10)  # 0x100's lifetime is over, 3 s before 0x200's activation time
    kinds = [(type(a).__name__, getattr(a, "spi", None) or getattr(a, "spis", None))
             for a in w.actions if isinstance(a, (ActivateOutbound, RemoveSas))]
    assert kinds == [("ActivateOutbound", 0x200), ("RemoveSas", (0x100,))]
    assert w.sending() == 0x200 and w.kernel_spis() == {0x200}
    assert {h.spi: h.role for h in w.e.held} == {0x200: "current"}
    w.actions = []
    w.advance(t0 + 30)
    assert not w.take(ActivateOutbound)  # nothing left to do at the old activation time
    assert w.e.state is MemberState.REGISTERED


def test_phase1_established_is_passed_on_as_phase1_up_before_joined():
    """A registration engine asked to report its phase 1 SA (the daemon's key log) does so
    first; the member engine passes it on as Phase1Up and carries on as before."""
    from gkm.gdoi.member import Phase1Up
    from gkm.ike import Phase1Established

    sa = object()  # the engine only passes the SA on
    w = World(outcome=registered(tek(0x100), kek=Kek()))
    made = w.e._new_registration

    def reporting(group, addr, now):
        reg = made(group, addr, now)
        reg.events.append(Phase1Established(sa))
        return reg

    w.e._new_registration = reporting
    w.register()
    assert [type(e) for e in w.events] == [Phase1Up, Joined]
    assert w.events[0] == Phase1Up(GID, sa) and w.e.state is MemberState.REGISTERED


# ------------------------------------------------------------------------ GROUPKEY-PUSH-ACK

def test_acks_leave_through_the_rekey_socket_even_when_the_push_deletes_the_kek():
    """The shell's local address reaches the receiver (the ACK's ID); what the receiver
    answers comes out of push_datagrams_to_send, also for a PUSH whose KEK Delete drops the
    receiver (RFC 8263 section 4)."""
    w = World()
    w.e.start(w.now)
    w.drain()
    w.e.registration_opened(("10.0.0.1", 848), w.now, local_address="10.1.0.5")
    w.e.receive_registration(b"reply", ("10.0.0.1", 848), w.now)
    w.drain()
    p = w.pushes[-1]
    assert p.ack_address == "10.1.0.5"
    p.acks = [(b"ACK1", ("10.0.0.1", 40000))]
    w.push(Rekeyed(GID, (tek(0x200),), Kek(), 1))
    assert w.e.push_datagrams_to_send() == [(b"ACK1", ("10.0.0.1", 40000))]
    assert w.e.push_datagrams_to_send() == []
    p.acks = [(b"ACK2", ("10.0.0.1", 40000))]
    w.push(KekDeleted(GID, b"K" * 16))
    assert w.e.push is None  # the Rekey SA is gone, its ACK still leaves
    assert w.e.push_datagrams_to_send() == [(b"ACK2", ("10.0.0.1", 40000))]


def test_no_local_address_no_ack_address():
    w = World().register()
    assert w.pushes[-1].ack_address is None
