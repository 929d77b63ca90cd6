"""GSA_INBAND_REKEY (RFC 9838 §2.4.2), the GCKS side, sans-I/O: the rekeys of a group whose
policy says ``g_ikev2_rekey = "inband"`` reach each G-IKEv2 member in one acknowledged exchange
over the IKE SA its registration kept.

::

    GM (responder)                GCKS (initiator)
                          <--    HDR, SK{GSA, KD, [D], [N]}
    HDR, SK{}             -->

:class:`InbandRekeyer` holds those IKE SAs (:class:`KeptSa`, handed over by
:class:`~.gcks_registration.GsaAuthResponder` after a successful registration of such a group) and,
when the shell says the group's keys changed (:meth:`InbandRekeyer.rekey`, after the group
controller's change records are committed), sends each member its group's current policy and
keys "built in the same manner as in a registration exchange" (§2.4.2.1).

Decisions (``docs/decisions/g-ikev2.md``):

* Contents: the GSA of the group's current TEKs and their SA_KEYs wrapped under the IKE SA's
  GSK_w, as at registration, without a Rekey SA (RFC 9838 table 11: no WRAP_KEY, AUTH_KEY,
  GSA_INITIAL_MESSAGE_ID or GSA_NEXT_SPI with in-band rekeys), and a Delete (ESP) of the TEKs
  this member was given that are no longer current, so it retires them on the group's
  deactivation delay (make before break, as a PUSH's deletes).  A member no longer in the
  group's roster (evicted, dissolved, deleted) gets Delete ESP SPI 0 and Delete GIKE_UPDATE
  SPI 0 (§2.4.3: excluded from the group); the IKE SA is forgotten after its answer.
* Reliability is IKEv2's (RFC 7296 §2.1, window size 1): the request again after
  :data:`RETRANSMIT_S`, doubling, :data:`MAX_RETRANSMITS` times; then the member is given up
  (:class:`~.events.InbandRekeyFailed`) and its IKE SA forgotten: it registers again when its
  TEKs near their end (its member engine does that without a rekey).  A rekey while one is
  outstanding waits for its answer and then sends the keys current at that moment (each
  in-band rekey carries the whole group state, so only the latest matters).
* Message IDs: the GCKS's own requests on the IKE SA, from 0 (RFC 7296 §2.2).
* Where: to the address and port the member's registration came from (its IKE SA's); the
  member keeps that socket open for this.
* Bounded: at most ``max_sas`` IKE SAs kept (the oldest forgotten, counted); a member's new
  registration replaces its old IKE SA.  State is soft: after a key server restart no IKE SA
  is kept, so members are not rekeyed in band until they register again (their TEKs' end).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gkm.gdoi.provider import Enrollment, GroupKeysProvider
from policy.model import GroupPolicy, Identity

from .outputs import Outputs
from .constants import ExchangeType, KeyWrap, NotifyType, ProtocolId
from .errors import WireError
from .events import InbandRekeyAcknowledged, InbandRekeyFailed, SaInitEstablished
from .gsa_map import group_payloads, transport_mode, unicast_gsk_w
from .message import Header, decode_message
from .payloads import Delete, Notify
from .sk import SkCipher, protect, unprotect

log = logging.getLogger("gkm.ikev2")

__all__ = ["InbandRekeyer", "KeptSa", "RETRANSMIT_S", "MAX_RETRANSMITS", "inband_kwa", "EXCLUDED"]

RETRANSMIT_S = 1.0
MAX_RETRANSMITS = 5
#: §2.4.3: the member is excluded from the group (every Data-Security SA and the Rekey SA)
EXCLUDED = (Delete(ProtocolId.ESP, 4, (bytes(4),)), Delete(ProtocolId.GIKE_UPDATE, 16, (bytes(16),)))


def inband_kwa(negotiated: int) -> int:
    """The key wrap algorithm of an in-band member's SA keys: the one IKE_SA_INIT negotiated,
    else KW_5649_256 (what a member reads without a Rekey SA, :func:`~.gsa_map.read_group`)."""
    return negotiated or KeyWrap.KW_5649_256


@dataclass(slots=True)
class KeptSa:
    """An IKE SA the GCKS keeps for a member of an in-band group."""

    est: SaInitEstablished = field(repr=False)
    group_id: int
    member: str  # the store's key of the member (gkm.gdoi.pull.member_key)
    identity: Identity
    given: frozenset[int] = frozenset()  # TEK SPIs the member holds from us
    next_mid: int = 0  # our next request's Message ID
    request: bytes = field(default=b"", repr=False)  # outstanding
    sending: frozenset[int] = frozenset()  # the TEK SPIs the outstanding request gives
    attempts: int = 0
    deadline: float | None = None
    stale: bool = False  # the group's keys changed after the outstanding request was built
    excluded: bool = False
    acknowledged: int | None = None  # the Message ID of the last request it answered
    address: Any = None  # the member's, if its GSA_AUTH came from elsewhere than IKE_SA_INIT (NAT-T)

    @property
    def peer(self) -> tuple:
        return self.address if self.address is not None else self.est.peer


class InbandRekeyer(Outputs):
    def __init__(self, groups: Callable[[int], GroupPolicy | None], keys: GroupKeysProvider, *,
                 wall_time_offset: float = 0.0, max_sas: int = 4096) -> None:
        self._group = groups
        self.keys = keys
        self.wall_time_offset = wall_time_offset
        self.max_sas = max_sas
        self._sas: OrderedDict[tuple[bytes, bytes], KeptSa] = OrderedDict()
        self._by_member: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        super().__init__()
        self.stats: Counter[str] = Counter()

    # -- inputs
    def keep(self, sa: KeptSa) -> None:
        """A member of an in-band group registered on ``sa`` (its previous IKE SA, if any, is
        forgotten: the member replaced everything it had, RFC 9838 §2.3.3)."""
        key = (sa.est.spi_i, sa.est.spi_r)
        same = self._sas.get(key)
        if same is not None and (same.group_id, same.member) == (sa.group_id, sa.member):
            # registered again over the same IKE SA (GSA_REGISTRATION): its Message IDs and any
            # outstanding request go on
            same.given, same.excluded = sa.given, False
            return
        old = self._by_member.pop((sa.group_id, sa.member), None)
        if old is not None:
            self._sas.pop(old, None)
        while len(self._sas) >= self.max_sas:
            _k, gone = self._sas.popitem(last=False)
            self._by_member.pop((gone.group_id, gone.member), None)
            self.stats["evicted"] += 1
        self._sas[key] = sa
        self._by_member[(sa.group_id, sa.member)] = key

    def holds(self, spi_i: bytes, spi_r: bytes) -> bool:
        return (bytes(spi_i), bytes(spi_r)) in self._sas

    def rekey(self, group_id: int, roster: Iterable[str], now: float) -> int:
        """The group's keys or roster changed (committed): every kept IKE SA of the group gets
        the current keys, or its exclusion if its member is not in ``roster`` (the store's
        member keys).  Returns how many exchanges were started or queued."""
        members = set(roster)
        n = 0
        for sa in [s for s in self._sas.values() if s.group_id == group_id and not s.excluded]:
            if sa.member not in members:
                sa.excluded = True
            n += 1
            if sa.request:
                sa.stale = True  # sent when the outstanding one is answered
            else:
                self._send(sa, now)
        return n

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        try:
            h = decode_message(data).header
        except WireError:
            self.stats["dropped"] += 1
            return
        sa = self._sas.get((h.spi_i, h.spi_r))
        if sa is None or addr != sa.peer or not h.response or not h.initiator:
            self.stats["dropped"] += 1
            return
        if h.exchange != ExchangeType.GSA_INBAND_REKEY or not sa.request or h.message_id != sa.next_mid:
            self.stats["dropped"] += 1  # a late copy of an answer already taken, or not ours
            return
        try:
            msg = unprotect(data, SkCipher.for_sender(sa.est.keys, initiator=True))
        except WireError:
            self.stats["dropped"] += 1
            return
        mid, sa.next_mid, sa.request, sa.deadline, sa.attempts = sa.next_mid, sa.next_mid + 1, b"", None, 0
        sa.acknowledged = mid
        errors = [n for n in msg.all(Notify) if n.is_error]
        if errors:
            name = NotifyType(errors[0].type).name if errors[0].type in NotifyType._value2member_map_ else str(errors[0].type)
            return self._give_up(sa, f"the member refused the in-band rekey: {name}")
        self.stats["acknowledged"] += 1
        self._events.append(InbandRekeyAcknowledged(sa.group_id, sa.member, mid, tuple(sorted(sa.sending))))
        if sa.excluded:
            self._drop(sa)
            return
        sa.given = sa.sending
        if sa.stale:
            self._send(sa, now)

    def handle_timer(self, now: float) -> None:
        for sa in [s for s in self._sas.values() if s.deadline is not None and s.deadline <= now]:
            if sa.attempts >= MAX_RETRANSMITS:
                self._give_up(sa, f"no answer to GSA_INBAND_REKEY (Message ID {sa.next_mid}) after "
                                  f"{sa.attempts + 1} transmissions")
                continue
            sa.attempts += 1
            sa.deadline = now + RETRANSMIT_S * (2 ** sa.attempts)
            self.stats["retransmitted"] += 1
            self._out.append((sa.request, sa.peer))

    # -- outputs (and Outputs')
    def get_timer(self) -> float | None:
        t = [s.deadline for s in self._sas.values() if s.deadline is not None]
        return min(t) if t else None

    @property
    def sa_count(self) -> int:
        return len(self._sas)

    def members(self, group_id: int) -> dict[str, dict]:
        """Per member of the group with a kept IKE SA: what ``msecctl members`` shows."""
        return {s.member: {"inband_acknowledged": s.acknowledged, "inband_pending": bool(s.request),
                           "inband_attempts": s.attempts if s.request else 0}
                for s in self._sas.values() if s.group_id == group_id and not s.excluded}

    def pending(self, group_id: int) -> int:
        """In-band rekeys of the group not answered yet."""
        return sum(1 for s in self._sas.values() if s.group_id == group_id and s.request)

    # -- internals
    def _send(self, sa: KeptSa, now: float) -> None:
        sa.stale = False
        group = self._group(sa.group_id)
        if group is None or not group.inband_rekey:
            sa.excluded = True
        if sa.excluded:
            payloads, sa.sending = EXCLUDED, frozenset()
        else:
            try:
                payloads, sa.sending = self._contents(group, sa, now)
            except Exception as e:  # store or policy trouble: ours; the member keeps its keys
                log.error("g-ikev2 gcks: group %s: in-band rekey of %s not built: %r", sa.group_id, sa.identity, e)
                return self._give_up(sa, f"in-band rekey not built: {e}")
        h = Header(sa.est.spi_i, sa.est.spi_r, ExchangeType.GSA_INBAND_REKEY, 0, sa.next_mid)
        sa.request = protect(h, payloads, SkCipher.for_message(sa.est.keys, h))
        sa.attempts, sa.deadline = 0, now + RETRANSMIT_S
        self.stats["sent"] += 1
        self._out.append((sa.request, sa.peer))

    def _contents(self, group: GroupPolicy, sa: KeptSa, now: float) -> tuple[tuple, frozenset[int]]:
        wall = int(now + self.wall_time_offset)
        keys = self.keys.peek(group, wall)
        kwa = inband_kwa(sa.est.kwa)
        gsa, kd = group_payloads(group, keys, Enrollment(None), unicast_gsk_w(sa.est.keys, kwa), kwa, wall, None)
        current = frozenset(t.spi for t in keys.teks)
        gone = sorted(sa.given - current)
        payloads: tuple = (gsa, kd)
        if gone:
            payloads += (Delete(ProtocolId.ESP, 4, tuple(s.to_bytes(4, "big") for s in gone)),)
        if transport_mode(group):
            payloads += (Notify(0, NotifyType.USE_TRANSPORT_MODE),)
        return payloads, current

    def _give_up(self, sa: KeptSa, reason: str) -> None:
        self.stats["failed"] += 1
        log.warning("g-ikev2 gcks: group %s: member %s: %s", sa.group_id, sa.identity, reason)
        self._events.append(InbandRekeyFailed(sa.group_id, sa.member, reason))
        self._drop(sa)

    def _drop(self, sa: KeptSa) -> None:
        self._sas.pop((sa.est.spi_i, sa.est.spi_r), None)
        if self._by_member.get((sa.group_id, sa.member)) == (sa.est.spi_i, sa.est.spi_r):
            del self._by_member[(sa.group_id, sa.member)]
