"""The values a group controller takes and gives (besides change records and events): its
states, its refusal, the signing key the shell loads for it, its datagrams and the results of
its user calls."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ControllerRefused", "ControllerState", "Signer", "Push", "RekeyResult",
           "EvictionResult"]


class ControllerRefused(Exception):
    """An input the controller refuses; nothing changed."""


class ControllerState(enum.Enum):
    NO_KEYS = "no keys"          # no member registered yet (or every key deleted)
    READY = "ready"
    COMMITTING = "committing"    # change records wait for the shell's commit
    STALE = "stale"              # a commit failed: waits for resync()


@dataclass(frozen=True, slots=True)
class Signer:
    """The group's PUSH signing key, loaded by the shell: the private key object and the DER
    SubjectPublicKeyInfo sent in KEK packets."""

    private_key: Any = field(repr=False)
    public_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Push:
    """One GROUPKEY-PUSH datagram: its SEQ under KEK ``kek_spi``; ``gike``: the same rekey as a
    G-IKEv2 GSA_REKEY (Message ID SEQ - 1 on the Rekey SA of that KEK) for a group that serves
    G-IKEv2 members (:mod:`gkm.ikev2.group_rekey`), sent wherever ``data`` is sent."""

    seq: int
    kek_spi: bytes
    data: bytes = field(repr=False)
    gike: bytes | None = field(default=None, repr=False)

    @property
    def datagrams(self) -> tuple[bytes, ...]:
        """What goes out for this rekey step: the PUSH, and its GSA_REKEY twin if any."""
        return (self.data,) if self.gike is None else (self.data, self.gike)


@dataclass(frozen=True, slots=True)
class RekeyResult:
    seqs: tuple[int, ...]
    tek_spis: tuple[int, ...]
    new_kek: bytes | None = None


@dataclass(frozen=True, slots=True)
class EvictionResult:
    """What an eviction request did or will do: ``evicted`` (registered members that leave),
    ``not_members`` (only put on the deny list), ``mode`` (see :class:`MembersEvicted`;
    ``"scheduled"``: waits for the batch window until ``scheduled_at``; ``"none"``: nobody
    registered), ``error`` (the rekey could not be built now: the members stay on the deny
    list and leave at the next rekey the controller can send)."""

    evicted: tuple[str, ...]
    not_members: tuple[str, ...]
    mode: str
    seqs: tuple[int, ...] = ()
    tek_spis: tuple[int, ...] = ()
    scheduled_at: float | None = None
    error: str | None = None
