"""Events pulled from the GDOI engines (frozen values; no key material in ``repr``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gkm.events import KeyServerEvent, MemberEvent
from gkm.lkh import LkhUpdate
from policy.model import Identity

from .keys import GroupKek, GroupTek, LkhKeys
from .policy_wire import GapDelays

Address = Any

__all__ = ["Registered", "RegistrationFailed", "MemberRegistered", "MemberRefused",
           "REFUSAL_CAUSES"]


@dataclass(frozen=True, slots=True)
class Registered(MemberEvent):
    """Member: GROUPKEY-PULL completed.  Hand ``teks`` to the group SA installer, keep ``kek``,
    ``seq`` (reject PUSH with SEQ <= it for ``kek.spi``) and ``lkh`` for GROUPKEY-PUSH;
    ``gap``: the group's activation/deactivation delays (None: the key server sent no GAP);
    ``inband``: rekeys come over the registration's own SA (G-IKEv2 GSA_INBAND_REKEY, no KEK):
    the member keeps that socket open and answers them; ``nat_keepalive``: where to send
    NAT-keepalives while it does (G-IKEv2 behind a NAT, on UDP 4500; None: none)."""

    group_id: int
    teks: tuple[GroupTek, ...]
    kek: GroupKek | None
    seq: int | None
    lkh: LkhKeys | None
    key_server: Address
    key_server_id: Identity | None = None
    phase1_spi: bytes = b""
    gap: GapDelays | None = None
    inband: bool = False
    nat_keepalive: Address | None = None


@dataclass(frozen=True, slots=True)
class RegistrationFailed(MemberEvent):
    """Member: registration ended without keys (phase 1 failure, refusal, timeout, bad reply)."""

    group_id: int
    reason: str
    notify: int | None = None  # notification type sent or received, if any


@dataclass(frozen=True, slots=True)
class MemberRegistered(KeyServerEvent):
    """Key server: a member completed GROUPKEY-PULL (its record and keys are persisted)."""

    group_id: int
    identity: Identity
    addr: Address
    tek_spis: tuple[int, ...] = ()
    lkh_update: LkhUpdate | None = field(default=None, repr=False)  # to PUSH to the other members
    #: G-IKEv2: GSA_AUTH mixed a post-quantum preshared key into the IKE SA's keys (RFC 8784)
    ppk: bool = False


@dataclass(frozen=True, slots=True)
class MemberRefused(KeyServerEvent):
    """Key server: a GROUPKEY-PULL was refused (unknown group, not authorized); the member was told.
    ``cause``: one of :data:`REFUSAL_CAUSES` (a metric label; ``reason`` says it in words)."""

    group_id: int
    identity: Identity | None
    addr: Address
    reason: str
    notify: int | None = None
    cause: str = "not_authorized"


#: why a key server refused a registration, in few words (``MemberRefused.cause``);
#: ``mlkem_required``: G-IKEv2, the group requires ML-KEM-768 and the IKE SA was made without it
REFUSAL_CAUSES = ("bad_group_id", "unknown_group", "identity_unusable", "not_authorized",
                  "not_admitted", "mlkem_required", "ppk_required")
