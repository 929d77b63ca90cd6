"""A member's G-IKEv2 registration with the interface of GDOI's ``MemberRegistration``
(``start``, ``receive_datagram``, ``handle_timer``, ``datagrams_to_send``, ``next_event``,
``get_timer``), so ``gkm.gdoi.member.MemberEngine`` and the SA installer take a G-IKEv2
registration as they take a GDOI one: it ends with one GDOI ``Registered`` (built by
:class:`~.registration.GsaAuthInitiator` from the GSA/KD) or one ``RegistrationFailed``.

IKE_SA_INIT (+ the ML-KEM-768 IKE_INTERMEDIATE, :mod:`.profile`) with
:class:`~.sa_init.SaInitInitiator`, then GSA_AUTH with :class:`~.registration.GsaAuthInitiator`.

Decisions:

* Retransmission as GDOI's GROUPKEY-PULL does it: the outstanding request again after 1 s,
  doubling, at most :data:`MAX_RETRANSMITS` times; the whole registration fails after
  :data:`EXCHANGE_TIMEOUT` seconds (the member engine then tries the next key server).
* ML-KEM-768 (RFC 9370, over IKE_INTERMEDIATE) as the member group's ``mlkem`` says:
  ``optional`` (default) offers it with NONE, ``required`` offers it alone (a GCKS that does not
  choose it fails the registration), ``off`` does not offer it (a group whose key server
  requires it then refuses the member at GSA_AUTH with NO_PROPOSAL_CHOSEN).
* GROUP_SENDER is sent when the member's configuration says ``sender = true``: the TEKs are then
  installed both ways (the key server refuses a sender its policy does not let send), otherwise
  inbound only.  A sender of a group with a counter-mode TEK gets its Sender-IDs from the key
  server (GM_SENDER_ID, RFC 9838 §2.5.1) and keeps them for its GSA_REKEY receiver.
* The member engine gets a :class:`~.events.GikeRegistered`: GDOI's ``Registered`` (the TEKs,
  the Rekey SA as a ``GroupKek``, the SEQ before the next GSA_REKEY) with the whole
  :class:`~.events.GsaRegistered` (Rekey SA, AUTH_KEY, Key Path), from which msecd's factory
  builds the GSA_REKEY receiver (:class:`~.member_rekey.GikePushReceiver`).  ``lkh`` is None:
  a G-IKEv2 member's LKH path is its Key Path, inside the receiver.
* NAT traversal (RFC 7296 §2.23, :mod:`.natt`): with ``local`` (our address and port toward
  the key server, from the shell) IKE_SA_INIT does NAT detection.  A key server on UDP 4500
  is spoken to with the non-ESP marker from the first message; one on UDP 500 behind which
  (or in front of which) a NAT was detected is left for UDP 4500 after IKE_SA_INIT (the
  float): GSA_AUTH and what follows go to port 4500 with the marker.  Datagrams from port 4500
  without the marker (ESP, keepalives, junk) are dropped.  Only the destination port changes:
  msecd's registration socket keeps its ephemeral source port (a member host's 500 and 4500
  are strongSwan's).  A key server on any other port (848) is not floated: no marker there.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from gkm.gdoi.events import RegistrationFailed
from policy.model import MemberGroup

from .errors import WireError
from .events import GikeRegistered, GsaRegistered, GsaRegistrationFailed, SaInitEstablished, SaInitFailed
from .natt import IKE_PORT, NATT_PORT, Kind, frame, unframe
from .profile import sa_init_config
from .registration import GsaAuthInitiator, GsaRegistrationInitiator, member_auth_config
from .sa_init import SaInitInitiator

log = logging.getLogger("gkm.ikev2")

__all__ = ["GikeRegistration", "RETRANSMIT_TIMEOUT", "MAX_RETRANSMITS", "EXCHANGE_TIMEOUT"]

RETRANSMIT_TIMEOUT = 1.0
MAX_RETRANSMITS = 5
EXCHANGE_TIMEOUT = 30.0
#: a member group's ``mlkem`` setting -> what its IKE_SA_INIT offers (SaInitConfig.mlkem)
_MLKEM = {"off": "no", "optional": "optional", "required": "required"}


class GikeRegistration:
    """One G-IKEv2 registration of ``group`` with the key server at ``key_server``."""

    def __init__(self, group: MemberGroup, key_server: tuple[str, int], *, wall_time_offset: float = 0.0,
                 local: tuple[str, int] | None = None) -> None:
        self.group_id = group.group_id
        #: where our requests go: the configured key server, or its port 4500 after the float
        self.ks_addr = (key_server[0], key_server[1])
        self._auth_config = member_auth_config(group, sender=group.sender, wall_time_offset=wall_time_offset)
        self.sa_init = SaInitInitiator(sa_init_config(_MLKEM[group.mlkem], ppk=group.ppk is not None), self.ks_addr, local)
        #: NAT detection's result once IKE_SA_INIT is done (None: not done or no local address)
        self.nat = None
        self.floated = False
        self.dropped = 0  # datagrams from the key server's port 4500 that were not IKE
        self.gsa_auth: GsaAuthInitiator | None = None
        self.gsa: GsaRegistered | None = None  # the result, for a GSA_REKEY receiver
        self.state = "idle"
        self._events: list = []
        self._out: list[tuple[bytes, Any]] = []
        self._deadline: float | None = None
        self._retx_at: float | None = None
        self._retx_n = 0
        self._retx_gap = RETRANSMIT_TIMEOUT

    @classmethod
    def over(cls, group: MemberGroup, gsa: GsaRegistered, peer_mid: int, *,
             wall_time_offset: float = 0.0) -> "GikeRegistration":
        """``group``'s registration again by GSA_REGISTRATION over the IKE SA an in-band
        registration kept (``gsa``; ``peer_mid``: the GCKS's next request's Message ID on it):
        no IKE_SA_INIT, no AUTH; the same events, retransmission and timeout."""
        if gsa.ike is None or gsa.registered.key_server_id is None:
            raise ValueError("the registration kept no IKE SA")
        self = cls(group, gsa.ike.peer, wall_time_offset=wall_time_offset)
        self.gsa_auth = GsaRegistrationInitiator(self._auth_config, gsa.ike, gsa.next_mid,
                                                 gsa.registered.key_server_id, peer_mid, ppk=gsa.ppk)
        return self

    def _current(self):
        return self.gsa_auth if self.gsa_auth is not None else self.sa_init

    def start(self, now: float) -> None:
        self._deadline = now + EXCHANGE_TIMEOUT
        if self.gsa_auth is not None:  # over a kept IKE SA (over)
            self.state = "gsa_auth"
            self.gsa_auth.start(now)
        else:
            self.state = "sa_init"
            self.sa_init.start(now)
        self._collect()
        self._sent(now)

    def _sent(self, now: float) -> None:
        """A new request went out: the retransmission schedule starts again."""
        self._retx_n, self._retx_gap = 0, RETRANSMIT_TIMEOUT
        self._retx_at = now + self._retx_gap

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if self.state not in ("sa_init", "gsa_auth") or addr != self.ks_addr:
            return
        if addr[1] == NATT_PORT:
            try:
                got = unframe(data)
            except WireError:
                got = None
            if got is None or got.kind is not Kind.IKE:
                if got is None or got.kind is Kind.ESP:
                    self.dropped += 1
                return
            data = got.message
        self._current().receive_datagram(data, addr, now)
        self._pump(now)
        if self._collect():  # a new request (COOKIE, IKE_INTERMEDIATE, GSA_AUTH) went out
            self._sent(now)

    def _collect(self) -> int:
        out = self.sa_init.datagrams_to_send()
        if self.gsa_auth is not None:
            out += self.gsa_auth.datagrams_to_send()
        self._out += [(frame(d) if a[1] == NATT_PORT else d, a) for d, a in out]
        return len(out)

    def handle_timer(self, now: float) -> None:
        if self.state not in ("sa_init", "gsa_auth"):
            return
        if now >= self._deadline:
            return self._fail(f"no answer from the key server within {EXCHANGE_TIMEOUT:g} s "
                              f"({'IKE_SA_INIT' if self.state == 'sa_init' else 'GSA_AUTH'})")
        if self._retx_at is not None and now >= self._retx_at:
            if self._retx_n >= MAX_RETRANSMITS:
                self._retx_at = None  # wait for the deadline
                return
            self._current().retransmit()
            self._collect()
            self._retx_n += 1
            self._retx_gap *= 2
            self._retx_at = now + self._retx_gap

    def _pump(self, now: float) -> None:
        if self.gsa_auth is None:
            while (ev := self.sa_init.next_event()) is not None:
                match ev:
                    case SaInitEstablished():
                        self.state = "gsa_auth"
                        self.nat = ev.nat
                        if ev.nat is not None and ev.nat.detected and self.ks_addr[1] == IKE_PORT:
                            # RFC 7296 §2.23: the float, before GSA_AUTH
                            self.ks_addr = (self.ks_addr[0], NATT_PORT)
                            self.floated = True
                            log.info("g-ikev2 member group %s: %s: GSA_AUTH to %r with the non-ESP marker",
                                     self.group_id, ev.nat.describe(), self.ks_addr)
                            ev = replace(ev, peer=self.ks_addr)
                        self.gsa_auth = GsaAuthInitiator(self._auth_config, ev)
                        self.gsa_auth.start(now)
                        break
                    case SaInitFailed():
                        return self._fail(f"IKE_SA_INIT failed: {ev.reason}")
        if self.gsa_auth is not None:
            while (ev := self.gsa_auth.next_event()) is not None:
                match ev:
                    case GsaRegistered():
                        self.state = "registered"
                        self.gsa = ev
                        r = ev.registered
                        self._events.append(GikeRegistered(r.group_id, r.teks, r.kek, r.seq, None, r.key_server,
                                                           r.key_server_id, r.phase1_spi, r.gap,
                                                           inband=ev.ike is not None, gsa=ev,
                                                           nat_keepalive=self._keepalive_to(ev)))
                    case GsaRegistrationFailed():
                        self._fail(ev.reason, ev.notify)

    def _keepalive_to(self, ev: GsaRegistered):
        """Where NAT-keepalives go while an in-band registration keeps its IKE SA: the key
        server's UDP 4500, when a NAT is in front of us (RFC 3948 §2.3: the host behind it
        sends them; 0xFF means nothing on other ports)."""
        sa = ev.ike
        if sa is None or sa.peer[1] != NATT_PORT or sa.nat is None or not sa.nat.initiator_behind_nat:
            return None
        return sa.peer

    def _fail(self, reason: str, notify: int | None = None) -> None:
        if self.state in ("registered", "failed"):
            return
        self.state = "failed"
        self._events.append(RegistrationFailed(self.group_id, f"G-IKEv2: {reason}", notify))

    # -- outputs
    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        self._collect()
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        if self.state not in ("sa_init", "gsa_auth"):
            return None
        return min(t for t in (self._deadline, self._retx_at) if t is not None)
