"""A G-IKEv2 member's GSA_INBAND_REKEY (RFC 9838 §2.4.2) over the IKE SA its registration
kept, sans-I/O, behind the interface of GDOI's :class:`~gkm.gdoi.push.PushReceiver` so the
member engine (the SA plan, make before break, re-registration) follows it as it follows a PUSH.

The GCKS is the initiator of these exchanges, the member the responder: each request
``HDR, SK{GSA, KD, [D], [N]}`` is answered ``HDR, SK{}`` (or ``SK{N(error)}``), from the
registration's socket to the address it came from.

Events: :class:`~gkm.gdoi.push.TeksRefreshed` (the GSA and KD read as at registration,
:func:`~.gsa_map.read_group`), :class:`~gkm.gdoi.push.TeksDeleted` (Delete ESP), and
:class:`~gkm.gdoi.push.Evicted` for Delete GIKE_UPDATE SPI 0 (§2.4.3: excluded from the group);
:class:`~gkm.gdoi.push.PushRejected` for a retransmitted request (``duplicate``, answered with
the stored response) and for an authentic request that cannot be used (``resync``: answered
with NO_PROPOSAL_CHOSEN or INVALID_SYNTAX, and the member registers again).

Decisions:

* Only the IKE SA's peer (address and port) is listened to; anything that is not an
  authentic GSA_INBAND_REKEY request on this IKE SA with the next Message ID is dropped without
  a trace (a copy of the last request gets the last answer: RFC 7296 §2.1).
* Not resumable: the IKE SA is not saved; a restarted member registers again.
"""

from __future__ import annotations

import logging
from typing import Any

from gkm.gdoi.push import Evicted, PushRejected, TeksDeleted, TeksRefreshed
from policy.model import MemberGroup

from .outputs import Outputs
from .constants import ExchangeType, HeaderFlags, NotifyType, ProtocolId
from .errors import WireError
from .events import GsaRegistered
from .gsa import GroupSa, KeyDownload
from .gsa_map import MappingError, read_group
from .message import Header, decode_message
from .natt import NATT_PORT, Kind, frame, unframe
from .payloads import Delete, Notify
from .sk import SkCipher, protect, unprotect

log = logging.getLogger("gkm.ikev2")

__all__ = ["InbandReceiver"]


class InbandReceiver(Outputs):
    """GSA_INBAND_REKEY for one group on the registration's IKE SA (module docstring)."""

    kek = None  # no Rekey SA: the exchange's answer is the acknowledgement

    def __init__(self, group: MemberGroup, gsa: GsaRegistered) -> None:
        if gsa.ike is None:
            raise ValueError("the registration kept no IKE SA")
        self.group_id = group.group_id
        self.sa = gsa.ike
        self.sender = group.sender
        self.transport = gsa.transport
        self.gsa = gsa
        self._expect = gsa.peer_mid  # the GCKS's next request's Message ID (RFC 7296 §2.2)
        self._last: tuple[bytes, bytes] = (b"", b"")  # the last request and our answer
        self.stats = {"accepted": 0, "rejected": 0, "duplicates": 0, "acks": 0, "other_protocol": 0}
        super().__init__()

    # -- the PushReceiver interface
    def receiver_state(self) -> None:
        """Nothing to save: the IKE SA is not kept across a restart (the member registers again)."""
        return None

    def reregistration(self, group: MemberGroup, wall_time_offset: float = 0.0):
        """Registering again: GSA_REGISTRATION over this IKE SA (RFC 9838 §2.4.3: "the group
        member may use the GSA_REGISTRATION exchange to re-register")."""
        from .member_registration import GikeRegistration
        return GikeRegistration.over(group, self.gsa, self._expect, wall_time_offset=wall_time_offset)

    def acknowledge_as(self, address: str) -> None:
        """The answer of the exchange is the acknowledgement; no address goes into it."""

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        data = bytes(data)
        sa = self.sa
        if addr != sa.peer:
            return
        try:
            if sa.peer[1] == NATT_PORT:  # the registration floated: the non-ESP marker (RFC 7296 §2.23)
                got = unframe(data)
                if got.kind is not Kind.IKE:
                    return
                data = got.message
            h = decode_message(data).header
        except WireError:
            return
        if ((h.spi_i, h.spi_r) != (sa.spi_i, sa.spi_r) or h.response or h.initiator
                or h.exchange != ExchangeType.GSA_INBAND_REKEY):
            return
        if h.message_id == self._expect - 1 and self._last[0] == data:
            self.stats["duplicates"] += 1
            self._out.append((self._last[1], sa.peer))
            self._events.append(PushRejected(self.group_id, "a copy of the last GSA_INBAND_REKEY", duplicate=True,
                                             cause="duplicate"))
            return
        if h.message_id != self._expect:
            return
        try:
            msg = unprotect(data, SkCipher.for_sender(sa.keys, initiator=False))
        except WireError:
            return  # not from the holder of the keys
        self._expect += 1
        try:
            events = self._read(msg, h.message_id)
        except MappingError as e:
            self.stats["rejected"] += 1
            log.warning("g-ikev2 member group %s: GSA_INBAND_REKEY %d not usable: %s", self.group_id, h.message_id, e)
            self._answer(data, h.message_id, (Notify(0, NotifyType.NO_PROPOSAL_CHOSEN),))
            self._events.append(PushRejected(self.group_id, f"GSA_INBAND_REKEY: {e}", resync=True))
            return
        self.stats["accepted"] += 1
        self.stats["acks"] += 1
        self._answer(data, h.message_id, ())
        self._events += events

    def _answer(self, request: bytes, mid: int, payloads: tuple) -> None:
        h = Header(self.sa.spi_i, self.sa.spi_r, ExchangeType.GSA_INBAND_REKEY,
                   HeaderFlags.INITIATOR | HeaderFlags.RESPONSE, mid)
        response = protect(h, payloads, SkCipher.for_message(self.sa.keys, h))
        if self.sa.peer[1] == NATT_PORT:
            response = frame(response)
        self._last = (request, response)
        self._out.append((response, self.sa.peer))

    def _read(self, msg, mid: int) -> list:
        gid = self.group_id
        deletes = msg.all(Delete)
        out: list = []
        zero_rekey = any(d.protocol == ProtocolId.GIKE_UPDATE and any(not any(s) for s in d.spis) for d in deletes)
        if zero_rekey:
            log.info("g-ikev2 member group %s: excluded from the group by GSA_INBAND_REKEY %d", gid, mid)
            return [Evicted(gid)]
        gsa, kd = msg.get(GroupSa), msg.get(KeyDownload)
        if (gsa is None) != (kd is None):
            raise MappingError("GSA without KD or KD without GSA")
        if gsa is not None:
            transport = any(n.type == NotifyType.USE_TRANSPORT_MODE for n in msg.all(Notify))
            got = read_group(gid, gsa, kd, self.sa.keys, sender=self.sender, transport=transport,
                             negotiated_kwa=self.sa.kwa)
            if got.kek is not None:
                raise MappingError("a Rekey SA in GSA_INBAND_REKEY (msec's GCKS rekeys in band without one)")
            out.append(TeksRefreshed(gid, got.teks, mid + 1, got.gap))
        spis: list[int] = []
        everything = False
        for d in deletes:
            if d.protocol != ProtocolId.ESP or d.spi_size != 4:
                raise MappingError(f"Delete of protocol {int(d.protocol)} with {d.spi_size}-octet SPIs")
            for s in d.spis:
                if not any(s):
                    everything = True
                else:
                    spis.append(int.from_bytes(s, "big"))
        if spis or everything:
            out.append(TeksDeleted(gid, tuple(spis), everything))
        if not out:
            raise MappingError("GSA_INBAND_REKEY without GSA/KD or Delete")
        return out
