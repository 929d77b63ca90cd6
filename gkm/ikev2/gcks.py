"""The G-IKEv2 key server engine (RFC 9838 GCKS side, sans-I/O), and the demultiplexer that lets
one UDP socket (848) serve GDOI and G-IKEv2 members of the same groups.

:class:`GcksEngine` is one :class:`~.sa_init.SaInitResponder` (IKE_SA_INIT + the ML-KEM-768
IKE_INTERMEDIATE, cookies, bounded half-open state) feeding one
:class:`~.gcks_registration.GsaAuthResponder` (GSA_AUTH for every IKE SA, keyed by its SPIs, bounded
by ``GcksAuthConfig.max_sas``), with the engine interface msecd's ``EngineShell`` drives
(``receive_datagram``, ``handle_timer``, ``commit``, ``datagrams_to_send``, ``next_event``,
``get_timer``).  Registrations are group-committed as GDOI's are: those of a burst are
enrolled in one durable store commit at ``commit(now)`` and answered after it.
Its events are GDOI's ``MemberRegistered`` / ``MemberRefused`` (the key server shell records a
G-IKEv2 member as it records a GDOI one) and the IKEv2 events of :mod:`.events`.

Decisions:

* A group whose policy does not list ``g-ikev2`` in ``protocols`` refuses the member after it
  authenticated, with AUTHORIZATION_FAILED (RFC 9838 §2.3.1 lists it for "not authorized to
  join the group"); an unauthenticated peer learns nothing about the group.
* An IKE SA stops counting as half-open (``SaInitResponder.established``) once the GCKS has
  answered its GSA_AUTH (a registration: after the commit); until then a retransmitted IKE_SA_INIT request still gets its
  response.  The GSA_AUTH responder keeps the SA ``sa_lifetime`` seconds for retransmissions.
* A group with ``g_ikev2_rekey = "inband"`` keeps its members' IKE SAs after GSA_AUTH
  (:class:`~.inband.InbandRekeyer`): their answers to GSA_INBAND_REKEY go there, and the shell
  calls :meth:`GcksEngine.inband_rekey` after each committed rekey of the group.
* Housekeeping runs every :data:`HOUSEKEEPING_S` seconds while any state is held: expiry of
  half-open and finished SAs, and the cookie secret's rotation every :data:`COOKIE_ROTATION_S`.

:class:`ProtocolDemux` routes each datagram by the ISAKMP/IKE header's version octet (offset
17 in both: RFC 2408 §3.1, RFC 7296 §3.1): major version 2 to the G-IKEv2 engine, anything
else to the GDOI engine exactly as before.  msecd puts it in front of GDOI's engine only when
some group lists ``g-ikev2`` (``gkm.daemon.engines``): a key server that did not opt in
answers no IKEv2 exchange (no key exchange work for anyone), as before.  With ``[keyserver]
g_ikev2_port`` msecd gives G-IKEv2 sockets of its own, which pass only IKEv2 datagrams (and the
GDOI sockets only the others) before the demultiplexer (``gkm.daemon.keyserver``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from gkm.gdoi.provider import GroupKeysProvider
from gkm.wire.header import is_ikev2
from policy.model import GroupPolicy, Identity

from .outputs import Outputs
from .constants import ExchangeType, HeaderFlags
from .events import SaInitEstablished
from .inband import InbandRekeyer
from .gcks_registration import GcksAuthConfig, GsaAuthResponder
from .sa_init import SaInitConfig, SaInitResponder

log = logging.getLogger("gkm.ikev2")

__all__ = ["GcksEngine", "ProtocolDemux", "PROTOCOL", "serves_g_ikev2", "HOUSEKEEPING_S", "COOKIE_ROTATION_S"]

PROTOCOL = "g-ikev2"
HOUSEKEEPING_S = 5.0
COOKIE_ROTATION_S = 300.0
_EXCHANGE_OFFSET = 18
_FLAGS_OFFSET = 19


def serves_g_ikev2(group: GroupPolicy) -> bool:
    return PROTOCOL in group.protocols


class GcksEngine(Outputs):
    """IKE_SA_INIT then GSA_AUTH for every G-IKEv2 member (module docstring)."""

    def __init__(self, sa_init: SaInitConfig, auth: GcksAuthConfig, groups: Iterable[GroupPolicy],
                 keys: GroupKeysProvider, *,
                 admit: Callable[[GroupPolicy, Identity, Any], str | None] | None = None,
                 cookie_threshold: int = 64, max_half_open: int = 4096) -> None:
        self.sa_init = SaInitResponder(sa_init, cookie_threshold=cookie_threshold, max_half_open=max_half_open)
        self.auth = GsaAuthResponder(auth, {g.group_id: g for g in groups}, keys, admit=self._admit)
        self.inband = InbandRekeyer(self.auth.groups.get, keys, wall_time_offset=auth.wall_time_offset,
                                    max_sas=auth.max_sas)
        self._admit_hook = admit
        super().__init__()
        self._next: float | None = None  # the next housekeeping: fixed, not pushed by traffic
        self._rotated_at: float | None = None

    def _admit(self, group: GroupPolicy, identity: Identity, certificate) -> str | None:
        """``certificate``: the member's, whose key made its AUTH (None with a PSK), for the
        key server's CRL check."""
        if not serves_g_ikev2(group):
            return f"the group is not served over G-IKEv2 (protocols = {', '.join(group.protocols)})"
        return self._admit_hook(group, identity, certificate) if self._admit_hook is not None else None

    def update_groups(self, groups: Iterable[GroupPolicy]) -> None:
        self.auth.groups = {g.group_id: g for g in groups}
        self.inband._group = self.auth.groups.get

    def inband_rekey(self, group_id: int, roster: Iterable[str], now: float) -> int:
        """The group's keys or members changed (committed): GSA_INBAND_REKEY to each member of
        an in-band group whose IKE SA is kept (:mod:`.inband`); ``roster``: the store's member
        keys.  Returns the number of members rekeyed (or excluded)."""
        self._tick(now)
        n = self.inband.rekey(group_id, roster, now)
        self._take_inband()
        return n

    @property
    def half_open(self) -> int:
        return self.sa_init.half_open

    @property
    def serving(self) -> bool:
        """Some group lists g-ikev2."""
        return any(serves_g_ikev2(g) for g in self.auth.groups.values())

    # -- inputs
    def receive_datagram(self, data: bytes, addr: Any, now: float, local: Any = None) -> None:
        """``local``: the (address, port) the datagram arrived on (NAT detection, :mod:`.sa_init`)."""
        self._tick(now)
        if len(data) <= _FLAGS_OFFSET:  # up to the flags octet: not an IKE header (28 octets)
            return
        if data[_EXCHANGE_OFFSET] in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE):
            self.sa_init.receive_datagram(data, addr, now, local)
            self._out += self.sa_init.datagrams_to_send()
            while (ev := self.sa_init.next_event()) is not None:
                if isinstance(ev, SaInitEstablished):
                    self.auth.add_sa(ev, now)
                self._events.append(ev)
            return
        if data[_FLAGS_OFFSET] & HeaderFlags.RESPONSE and self.inband.holds(data[:8], data[8:16]):
            self.inband.receive_datagram(data, addr, now)  # a member's answer to a GSA_INBAND_REKEY
            self._take_inband()
            return
        self.auth.receive_datagram(data, addr, now)
        self._take_auth()

    def _take_auth(self) -> None:
        for spi_i, peer in self.auth.answered:  # the IKE SA is no longer half-open (keyed by IKE_SA_INIT's address)
            self.sa_init.established(spi_i, peer)
        self.auth.answered.clear()
        self._out += self.auth.datagrams_to_send()
        while (ev := self.auth.next_event()) is not None:
            self._events.append(ev)
        while self.auth.kept:
            self.inband.keep(self.auth.kept.pop(0))

    def _take_inband(self) -> None:
        self._out += self.inband.datagrams_to_send()
        while (ev := self.inband.next_event()) is not None:
            self._events.append(ev)

    def _tick(self, now: float) -> None:
        if self._next is None:
            self._next = now + HOUSEKEEPING_S
        if self._rotated_at is None:
            self._rotated_at = now

    def handle_timer(self, now: float) -> None:
        self._tick(now)
        t = self.inband.get_timer()
        if t is not None and t <= now:
            self.inband.handle_timer(now)
            self._take_inband()
        if now < self._next:
            return
        self._next = now + HOUSEKEEPING_S
        self.sa_init.expire(now)
        self.auth.expire(now, keep=self.inband.holds)
        if now - self._rotated_at >= COOKIE_ROTATION_S:
            self.sa_init.rotate_cookie_secret()
            self._rotated_at = now

    def commit(self, now: float) -> None:
        """The shell's durable step after a burst of datagrams, before it takes the outputs:
        the registrations (GSA_AUTH, GSA_REGISTRATION) checked since are enrolled in one store
        commit and only then answered (group commit, as GDOI's: :meth:`.GsaAuthResponder.commit`)."""
        self._tick(now)
        self.auth.commit(now)
        self._take_auth()

    # -- outputs
    def get_timer(self) -> float | None:
        t = self.inband.get_timer()
        if self._next is None or not (self.sa_init.half_open or self.auth.sa_count):
            return t
        return self._next if t is None else min(t, self._next)


class ProtocolDemux:
    """One key server engine over two: GDOI (IKEv1 header, version 0x10) and G-IKEv2 (0x20).
    ``gdoi`` is the ``KeyServerEngine``; ``g_ikev2`` a :class:`GcksEngine`."""

    def __init__(self, gdoi: Any, g_ikev2: GcksEngine) -> None:
        self.gdoi = gdoi
        self.g_ikev2 = g_ikev2

    def update_groups(self, groups: Iterable[GroupPolicy]) -> None:
        groups = list(groups)
        self.gdoi.update_groups(groups)
        self.g_ikev2.update_groups(groups)

    @property
    def half_open(self) -> int:
        return self.gdoi.half_open + self.g_ikev2.half_open

    def receive_datagram(self, data: bytes, addr: Any, now: float, local: Any = None) -> None:
        if is_ikev2(data):
            self.g_ikev2.receive_datagram(data, addr, now, local)
        else:  # IKEv1 and anything else: GDOI's decoders decide (and count) as before
            self.gdoi.receive_datagram(data, addr, now)

    def handle_timer(self, now: float) -> None:
        for e in (self.gdoi, self.g_ikev2):
            t = e.get_timer()
            if t is not None and t <= now:
                e.handle_timer(now)

    def commit(self, now: float) -> None:
        self.gdoi.commit(now)
        self.g_ikev2.commit(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        return self.gdoi.datagrams_to_send() + self.g_ikev2.datagrams_to_send()

    def next_event(self):
        ev = self.gdoi.next_event()
        return ev if ev is not None else self.g_ikev2.next_event()

    def get_timer(self) -> float | None:
        t = [x for x in (self.gdoi.get_timer(), self.g_ikev2.get_timer()) if x is not None]
        return min(t) if t else None
