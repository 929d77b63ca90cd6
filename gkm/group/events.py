"""Events of the key server's group controllers (:mod:`gkm.group.controller`): frozen values,
subclasses of :class:`gkm.events.KeyServerEvent`; no key material, SPIs and SEQs only."""

from __future__ import annotations

from dataclasses import dataclass

from gkm.events import KeyServerEvent

__all__ = ["GroupControllerEvent", "GroupRekeyed", "KeysRotated", "MembersEvicted",
           "EvictionScheduled", "KeysPurged", "KeysAnnounced", "GroupDissolved",
           "RekeyAcknowledged", "RekeyUnacknowledged", "MemberLost", "AckRefused"]


class GroupControllerEvent(KeyServerEvent):
    """A group controller's event (always about one group, ``group_id``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class GroupRekeyed(GroupControllerEvent):
    """New TEKs went out by GROUPKEY-PUSH on request: ``cause`` is ``"operator"`` (``msecctl
    rekey``) or ``"policy"`` (a reload changed or removed TEK policies; ``deleted``: the TEK
    SPIs the PUSH deleted)."""

    group_id: int
    cause: str
    seqs: tuple[int, ...]
    tek_spis: tuple[int, ...]
    deleted: tuple[int, ...] = ()
    new_kek: bytes | None = None


@dataclass(frozen=True, slots=True)
class KeysRotated(GroupControllerEvent):
    """Automatic rotation: TEKs nearing expiry (``tek_spis``: their successors) and/or the KEK
    (``new_kek``: its successor's SPI) replaced by one GROUPKEY-PUSH under the current KEK."""

    group_id: int
    seq: int
    tek_spis: tuple[int, ...]
    replaced: tuple[int, ...]
    new_kek: bytes | None = None


@dataclass(frozen=True, slots=True)
class MembersEvicted(GroupControllerEvent):
    """Members left the group.  ``mode``: ``"lkh"`` (new KEK by LKH update, new TEKs under
    it), ``"rekey-all"`` (no LKH: the KEK and every TEK deleted, members register again),
    ``"no-kek"`` (no Rekey SA: nothing pushed, they keep the TEKs until those expire)."""

    group_id: int
    evicted: tuple[str, ...]
    reasons: tuple[str, ...]
    mode: str
    seqs: tuple[int, ...] = ()
    tek_spis: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EvictionScheduled(GroupControllerEvent):
    """Evictions wait for the batch window: they go out together at ``at`` (Unix seconds)."""

    group_id: int
    identities: tuple[str, ...]
    at: float


@dataclass(frozen=True, slots=True)
class KeysPurged(GroupControllerEvent):
    """Expired keys deleted from the key server's state."""

    group_id: int
    tek_spis: tuple[int, ...] = ()
    kek_spis: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class KeysAnnounced(GroupControllerEvent):
    """The group's current keys sent again, nothing new made (at a key server start: the
    last PUSH may have been committed but not sent when the process died)."""

    group_id: int
    seq: int
    tek_spis: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GroupDissolved(GroupControllerEvent):
    """The group was deleted (``msecctl group delete``): one GROUPKEY-PUSH (``seq``) deleted
    the KEK and every TEK at its members; ``seq`` is None when nothing could be pushed (no
    KEK, no keys yet, no signing key: members keep the TEKs until they expire)."""

    group_id: int
    members: tuple[str, ...]
    seq: int | None


# -- rekey delivery (gkm.group.delivery) ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RekeyAcknowledged(GroupControllerEvent):
    """A member acknowledged every PUSH of its pending rekey (the last one: ``seq``)."""

    group_id: int
    identity: str
    seq: int


@dataclass(frozen=True, slots=True)
class RekeyUnacknowledged(GroupControllerEvent):
    """A member left a rekey (PUSHes ``seqs``) unacknowledged after every retransmission, or
    a newer rekey superseded it; ``missed``: rekeys missed in a row now."""

    group_id: int
    identity: str
    seqs: tuple[int, ...]
    missed: int


@dataclass(frozen=True, slots=True)
class MemberLost(GroupControllerEvent):
    """A member missed ``missed`` rekeys in a row: no PUSH is sent to it until it registers
    again."""

    group_id: int
    identity: str
    missed: int


@dataclass(frozen=True, slots=True)
class AckRefused(GroupControllerEvent):
    """A datagram on a rekey socket that is no valid GROUPKEY-PUSH-ACK of this group; nothing
    changed.  ``source``: "host:port"."""

    group_id: int
    source: str
    reason: str
