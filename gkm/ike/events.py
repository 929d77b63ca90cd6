"""Events pulled from the phase 1 engines, and the established ISAKMP SA they carry."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from gkm.events import Phase1Event
from . import crypto
from .config import Identity, Proposal
from .crypto import EncAlg, Prf

Address = Any  # whatever the caller passes as addr (e.g. ("192.0.2.1", 848))


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"

    __hash__ = object.__hash__  # identity hash, in C (members are singletons compared by identity)


@dataclass(frozen=True, slots=True)
class Phase1SA:
    """An established ISAKMP SA: everything GROUPKEY-PULL (RFC 6407 §3.2) needs.

    ``skeyid_a`` keys HASH(1..4); ``enc_key`` (expanded from ``skeyid_e``) with ``cipher`` encrypts
    the PULL messages; ``last_block`` is the last CBC block of Main Mode, from which each phase 2 or
    Informational exchange derives its first IV with :meth:`phase2_iv`; ``skeyid_d`` is kept for
    completeness (GDOI does not derive keys from it).  ``repr`` shows no key material.

    ``peer_id`` is the ID payload the peer presented; ``authenticated_id`` is the identity of the
    credential that authenticated it, which is what authorization must use: the owner of the
    pre-shared key (the engine refuses a peer whose ID is not that owner), or the subject DN of
    the peer's verified certificate (whose subject or subjectAltName the ID must match).  A later
    G-IKEv2 engine fills it the same way, so GROUPKEY-PULL authorizes only what a key proved.
    """

    icookie: bytes
    rcookie: bytes
    role: Role
    peer_addr: Address
    proposal: Proposal
    prf: Prf
    cipher: EncAlg
    skeyid_d: bytes = field(repr=False)
    skeyid_a: bytes = field(repr=False)
    skeyid_e: bytes = field(repr=False)
    enc_key: bytes = field(repr=False)
    last_block: bytes = field(repr=False)
    local_id: Identity
    peer_id: Identity
    authenticated_id: Identity
    peer_certificate: x509.Certificate | None
    established_at: float
    expires_at: float
    initial_contact: bool = False  # the peer sent INITIAL-CONTACT (RFC 2407 §4.6.3.3) in message 5

    def __repr__(self) -> str:
        return (
            f"Phase1SA({self.icookie.hex()}:{self.rcookie.hex()} {self.role.value} peer={self.peer_addr!r} "
            f"id={self.peer_id} {self.proposal.auth.name} group {self.proposal.group} {self.prf.hash_alg.name})"
        )

    @property
    def spi(self) -> bytes:
        return self.icookie + self.rcookie

    @property
    def block_size(self) -> int:
        return self.cipher.block_size

    def phase2_iv(self, message_id: int) -> bytes:
        """First IV of the exchange with this M-ID (RFC 2409 Appendix B)."""
        return crypto.phase2_iv(self.prf, self.last_block, message_id, self.cipher.block_size)

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        return crypto.cbc_encrypt(self.cipher, self.enc_key, iv, plaintext)

    def decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        return crypto.cbc_decrypt(self.cipher, self.enc_key, iv, ciphertext)

    def hash_a(self, data: bytes) -> bytes:
        """prf(SKEYID_a, data): HASH(1..4) of phase 2 and Informational exchanges."""
        return self.prf(self.skeyid_a, data)


@dataclass(frozen=True, slots=True)
class Phase1Established(Phase1Event):
    sa: Phase1SA


@dataclass(frozen=True, slots=True)
class Phase1Failed(Phase1Event):
    """The exchange ended without an SA.  ``notify`` is the type sent or received, if any."""

    icookie: bytes
    rcookie: bytes
    peer_addr: Address
    reason: str
    notify: int | None = None


@dataclass(frozen=True, slots=True)
class Phase1Deleted(Phase1Event):
    """An established SA is gone (peer Delete, local delete, lifetime)."""

    icookie: bytes
    rcookie: bytes
    peer_addr: Address
    reason: str


@dataclass(frozen=True, slots=True)
class Notification:
    type: int
    protocol: int
    spi: bytes
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    protocol: int
    spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class InformationalReceived(Phase1Event):
    """An authenticated (HASH(1)) Informational exchange under an established SA."""

    icookie: bytes
    rcookie: bytes
    peer_addr: Address
    message_id: int
    notifications: tuple[Notification, ...]
    deletes: tuple[DeleteRequest, ...]


@dataclass(frozen=True, slots=True)
class Phase2Datagram(Phase1Event):
    """A message under an established SA with an exchange type phase 1 does not handle
    (GROUPKEY-PULL, 32).  The GDOI engine takes it from here."""

    sa: Phase1SA
    exchange: int
    message_id: int
    data: bytes
    peer_addr: Address


Event = Phase1Established | Phase1Failed | Phase1Deleted | InformationalReceived | Phase2Datagram
