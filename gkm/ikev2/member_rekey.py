"""A G-IKEv2 member's GSA_REKEY reception behind the interface of GDOI's
:class:`~gkm.gdoi.push.PushReceiver`, so :class:`gkm.gdoi.member.MemberEngine` (the SA plan,
make before break, re-registration) follows GSA_REKEY exactly as it follows GROUPKEY-PUSH.

:class:`GikePushReceiver` wraps a :class:`~.rekey.RekeyReceiver` built from the registration's
:class:`~.events.GsaRegistered` and turns its events into the member engine's:

* :class:`~.rekey.RekeyApplied` -> :class:`~gkm.gdoi.push.Rekeyed` (new TEKs, the Rekey SA in
  force as a :class:`~gkm.gdoi.keys.GroupKek`, SEQ = Message ID + 1 as the key server counts
  it, the ATD/DTD) when it brings TEKs or a new Rekey SA, then
  :class:`~gkm.gdoi.push.TeksDeleted` for its deletes and :class:`~gkm.gdoi.push.KekDeleted`
  when it deletes the Rekey SA;
* :class:`~.rekey.RekeyExcluded` -> :class:`~gkm.gdoi.push.Evicted`;
* :class:`~.rekey.RekeyRejected` -> :class:`~gkm.gdoi.push.PushRejected` (copies of the last
  message as duplicates); :class:`~.rekey.RekeyMissed` and a TEK withheld for want of a
  Sender-ID -> ``PushRejected(resync=True)``: register again.

Decisions:

* GDOI and G-IKEv2 rekeys of a group share its rekey address and port.  Each receiver drops
  the other protocol's datagrams by the header's version octet (offset 17 in both headers)
  before anything else, counted as ``other_protocol``, with no event: in a group serving both
  protocols every member receives both, and neither is an attack.
* No ACKs: GSA_REKEY is one-way (RFC 9838 §2.4).  :meth:`acknowledge_as` does nothing.
* Resumable: :meth:`receiver_state` gives what the member's saved state keeps of the receiver
  (:class:`~gkm.gdoi.member_state.GikeRekeyState`: the Rekey SA in force, the next Message ID
  and the digest of the last GSA_REKEY applied, AUTH_KEY, the Key Path, the Sender-IDs) and
  :meth:`GikePushReceiver.resumed` rebuilds an equal receiver from it, so a restarted member
  takes the next GSA_REKEY (an LKH eviction included) and refuses replays as the one before
  the restart would have.
* A GSA_REKEY that changes only AUTH_KEY is a :class:`~gkm.gdoi.push.Rekeyed` without TEKs (the
  Rekey SA in force, as the member engine sees it, has a new signing key), so the member engine
  saves its state again: a restarted member then checks signatures with the new key.
"""

from __future__ import annotations

import logging
from typing import Any

from gkm.gdoi.keys import GroupKek
from gkm.gdoi.member_state import GikeRekeyState
from gkm.gdoi.policy_wire import GapDelays
from gkm.gdoi.push import Evicted, KekDeleted, PushRejected, Rekeyed, TeksDeleted
from gkm.wire.header import is_ikev2
from policy.model import AddressPreservation, MemberGroup, Mode, SaDirection

from .constants import GcAuth
from .events import GsaRegistered
from .rekey import MemberConfig, RekeyApplied, RekeyExcluded, RekeyMissed, RekeyReceiver, RekeyRejected
from .rekey_sa import RekeySa

log = logging.getLogger("gkm.ikev2")

__all__ = ["GikePushReceiver"]

class GikePushReceiver:
    """GSA_REKEY for one group, with the PushReceiver interface (module docstring)."""

    def __init__(self, group: MemberGroup, gsa: GsaRegistered) -> None:
        reg = gsa.registered
        if gsa.rekey_sa is None or reg.kek is None:
            raise ValueError("the registration brought no Rekey SA")
        tek = reg.teks[0] if reg.teks else None
        mode = tek.mode if tek is not None else Mode.TUNNEL
        preservation = tek.address_preservation if tek is not None else AddressPreservation.SOURCE_AND_DESTINATION
        direction = tek.direction if tek is not None else SaDirection.RECEIVER_ONLY
        self._start(group, reg.kek, RekeyReceiver(
            MemberConfig(group.group_id, mode, preservation, direction, gsa.sender_ids), gsa.rekey_sa,
            gcauth=GcAuth.DIGITAL_SIGNATURE, signature=gsa.signature, auth_key=gsa.auth_key, key_path=gsa.key_path))

    @classmethod
    def resumed(cls, group: MemberGroup, kek: GroupKek, state: GikeRekeyState) -> "GikePushReceiver":
        """The receiver a restarted member goes on with: ``state`` from its saved state, ``kek``
        the saved member engine's view of the Rekey SA (its addresses and ports)."""
        if kek.spi != state.rekey_sa.spi:
            raise ValueError("the saved KEK is not the saved Rekey SA")
        self = cls.__new__(cls)
        config = MemberConfig(group.group_id, state.mode, state.address_preservation, state.direction,
                              state.sender_ids)
        self._start(group, _group_kek(kek, state.rekey_sa, state.auth_key), RekeyReceiver(
            config, state.rekey_sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=state.signature,
            auth_key=state.auth_key, key_path=state.key_path, expected_message_id=state.expected_message_id,
            last_digest=state.last_digest))
        return self

    def _start(self, group: MemberGroup, kek: GroupKek, rx: RekeyReceiver) -> None:
        self.group_id = group.group_id
        self._rx = rx
        self.kek: GroupKek = kek
        self.stats = {"accepted": 0, "rejected": 0, "duplicates": 0, "acks": 0, "other_protocol": 0}
        self._events: list = []

    def reregistration(self, group: MemberGroup, wall_time_offset: float = 0.0) -> None:
        """No IKE SA is kept to register again over: a new registration."""
        return None

    def receiver_state(self) -> GikeRekeyState | None:
        """What the member's saved state keeps of this receiver (None once it has no Rekey SA:
        excluded or deleted, the member registers again)."""
        rx = self._rx
        if rx.excluded or rx.rekey_sa is None:
            return None
        c = rx.config
        return GikeRekeyState(rx.rekey_sa, rx.expected_message_id, rx.last_digest, rx.signature, rx.auth_key,
                              rx.key_path, c.sender_ids, c.mode, c.address_preservation, c.direction)

    # -- the PushReceiver interface the member engine uses
    def acknowledge_as(self, address: str) -> None:
        """GSA_REKEY has no acknowledgement (RFC 9838 §2.4)."""

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        return []

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        data = bytes(data)
        if not is_ikev2(data):
            self.stats["other_protocol"] += 1
            return
        ended = self._rx.excluded or self._rx.rekey_sa is None
        try:
            self._take(self._rx.receive(data), ended, addr)
        except Exception as e:  # noqa: BLE001 - no exception escapes an input (the receiver's own
            # are events already; this would be a mapping bug): dropped, counted, logged
            self.stats["rejected"] += 1
            log.error("g-ikev2 member group %s: GSA_REKEY from %r: internal error %r", self.group_id, addr, e)
            self._events.append(PushRejected(self.group_id, f"GSA_REKEY: internal error: {type(e).__name__}",
                                             cause="internal"))

    def _take(self, events, ended: bool, addr: Any) -> None:
        for ev in events:
            match ev:
                case RekeyApplied():
                    self.stats["accepted"] += 1
                    self._applied(ev)
                case RekeyExcluded():
                    self.stats["accepted"] += 1
                    log.info("g-ikev2 member group %s: excluded by GSA_REKEY %d: %s", self.group_id,
                             ev.message_id, ev.reason)
                    self._events.append(Evicted(self.group_id))
                case RekeyRejected(duplicate=True):
                    self.stats["duplicates"] += 1
                    self._events.append(PushRejected(self.group_id, ev.reason, duplicate=True, cause="duplicate"))
                case RekeyRejected():
                    self.stats["rejected"] += 1
                    cause = "not_member" if ended else _cause(ev.reason)
                    log.log(logging.DEBUG if ended else logging.WARNING,
                            "g-ikev2 member group %s: GSA_REKEY from %r dropped: %s", self.group_id, addr, ev.reason)
                    self._events.append(PushRejected(self.group_id, f"GSA_REKEY: {ev.reason}", cause=cause))
                case RekeyMissed():
                    self.stats["rejected"] += 1
                    self._events.append(PushRejected(self.group_id, f"GSA_REKEY on the announced Rekey SA "
                                                     f"{ev.spi.hex()}: a rekey was missed", resync=True))

    def _applied(self, ev: RekeyApplied) -> None:
        gid, seq = self.group_id, ev.message_id + 1
        sa = ev.rekey_sa or self._rx.rekey_sa  # None once a GSA_REKEY deleted it
        if sa is not None and (ev.rekey_sa is not None or ev.auth_key_changed):
            self.kek = _group_kek(self.kek, sa, self._rx.auth_key)
        gap = GapDelays(ev.atd_s, ev.dtd_s) if (ev.atd_s, ev.dtd_s) != (None, None) else None
        if ev.teks or ev.rekey_sa is not None or gap is not None or ev.auth_key_changed:
            self._events.append(Rekeyed(gid, ev.teks, self.kek, seq, None, ev.rekey_sa is not None, gap))
        if ev.deleted_spis or ev.delete_all_teks:
            self._events.append(TeksDeleted(gid, tuple(ev.deleted_spis), ev.delete_all_teks))
        if ev.rekey_sa_deleted:
            self._events.append(KekDeleted(gid, self.kek.spi))
        if ev.reregister:
            self._events.append(PushRejected(gid, "a counter-mode TEK came without a Sender-ID for this member",
                                             resync=True))


#: RekeyRejected reasons (gkm.ikev2.rekey, in its check order) -> gkm.gdoi.push.PUSH_REJECT_CAUSES
_CAUSES = (("malformed", "malformed"), ("exchange", "malformed"), ("SPI", "wrong_kek"), ("R flag", "malformed"),
           ("replayed", "replay"), ("GSA_REKEY must", "malformed"), ("integrity", "signature"),
           ("authentication", "signature"), ("internal", "internal"))


def _cause(reason: str) -> str:
    return next((c for prefix, c in _CAUSES if reason.startswith(prefix)), "content")


def _group_kek(old: GroupKek, sa: RekeySa, auth_key: bytes) -> GroupKek:
    """The member engine's view of the Rekey SA in force (addresses: the registration's)."""
    return GroupKek(old.group_id, sa.spi, old.src, old.src_port, old.dst, old.dst_port, old.cipher,
                    sa.keys.gsk_e, b"", old.signature, auth_key, sa.lifetime_s)
