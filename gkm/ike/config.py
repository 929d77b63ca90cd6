"""Phase 1 configuration: proposals, identities, credentials.  Immutable, validated once.

A :class:`Phase1Config` is what one IKE endpoint (initiator or responder) needs.  Weak
algorithms (DES, MD5, SHA-1, groups below 14) are refused unless ``allow_weak=True``, and then
logged with a warning.  The responder accepts an offer only if it equals one of its own proposals
(life duration: the offer's may be shorter), trying its own proposals in order.

A peer's SA life duration of 0 (in seconds; RFC 2409 gives 0 no meaning, and some
implementations send it for "no limit") is read as "the peer proposes no lifetime of its own":
the SA gets the local proposal's lifetime.  It never means an SA that does not expire.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from .crypto import SUPPORTED_GROUPS, EncAlg, HashAlg

log = logging.getLogger("gkm.ike")

__all__ = [
    "ConfigError",
    "AuthMethod",
    "Proposal",
    "Identity",
    "IdType",
    "PskStore",
    "CertCredential",
    "Phase1Config",
]


class ConfigError(ValueError):
    def __init__(self, key_path: str, reason: str) -> None:
        super().__init__(f"{key_path}: {reason}")
        self.key_path = key_path
        self.reason = reason


class AuthMethod(enum.IntEnum):
    """RFC 2409 Appendix A class 3; ECDSA values from RFC 4754 section 8."""

    PRE_SHARED_KEY = 1
    RSA_SIG = 3
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11

    @property
    def is_signature(self) -> bool:
        return self is not AuthMethod.PRE_SHARED_KEY


# attribute classes, RFC 2409 Appendix A
A_ENC, A_HASH, A_AUTH, A_GROUP, A_LIFE_TYPE, A_LIFE_DURATION, A_PRF, A_KEY_LENGTH = 1, 2, 3, 4, 11, 12, 13, 14
LIFE_SECONDS = 1
WEAK_GROUPS = frozenset({1, 2, 5})


@dataclass(frozen=True, slots=True)
class Proposal:
    """One phase 1 transform: cipher, hash (and HMAC PRF), auth method, DH group, SA lifetime (s).

    ``life_seconds`` 0 only in a peer's transform: no lifetime proposed (see the module docstring)."""

    auth: AuthMethod
    group: int
    hash: HashAlg = HashAlg.SHA2_256
    enc: EncAlg = EncAlg.AES_CBC
    key_bits: int = 128
    life_seconds: int = 86400

    def __post_init__(self) -> None:
        if self.enc is EncAlg.AES_CBC and self.key_bits not in (128, 192, 256):
            raise ConfigError("proposal.key_bits", f"AES key length {self.key_bits}")
        if not 0 <= self.life_seconds <= 0xFFFFFFFF:
            raise ConfigError("proposal.life_seconds", f"out of range: {self.life_seconds}")

    @property
    def weak(self) -> bool:
        return self.hash.weak or self.enc.weak or self.group in WEAK_GROUPS or self.group < 14

    @property
    def supported(self) -> bool:
        return self.group in SUPPORTED_GROUPS and self.enc is EncAlg.AES_CBC

    @property
    def key_len(self) -> int:
        return self.key_bits // 8

    def attributes(self) -> list[tuple[int, int]]:
        attrs = [
            (A_ENC, int(self.enc)),
            (A_HASH, int(self.hash)),
            (A_AUTH, int(self.auth)),
            (A_GROUP, self.group),
            (A_LIFE_TYPE, LIFE_SECONDS),
            (A_LIFE_DURATION, self.life_seconds),
        ]
        if self.enc is EncAlg.AES_CBC:
            attrs.append((A_KEY_LENGTH, self.key_bits))
        return attrs

    @classmethod
    def from_attributes(cls, attrs: tuple[tuple[int, int], ...]) -> "Proposal":
        """Parse a received transform; ValueError on unknown or missing values."""
        d: dict[int, int] = {}
        life = 86400
        life_type = None
        for t, v in attrs:
            if t == A_LIFE_TYPE:
                life_type = v
            elif t == A_LIFE_DURATION:
                if life_type == LIFE_SECONDS:
                    life = v
            elif t in (A_ENC, A_HASH, A_AUTH, A_GROUP, A_KEY_LENGTH):
                if t in d:
                    raise ValueError(f"attribute {t} repeated")
                d[t] = v
            elif t == A_PRF:
                raise ValueError("PRF attribute not supported")
            else:
                raise ValueError(f"attribute class {t} not supported")
        for need in (A_ENC, A_HASH, A_AUTH, A_GROUP):
            if need not in d:
                raise ValueError(f"attribute class {need} missing")
        enc = EncAlg(d[A_ENC])
        key_bits = d.get(A_KEY_LENGTH, 128 if enc is EncAlg.AES_CBC else 0)
        return cls(AuthMethod(d[A_AUTH]), d[A_GROUP], HashAlg(d[A_HASH]), enc, key_bits, life)

    def agreed(self, offer: "Proposal") -> "Proposal":
        """The SA's transform when ``offer`` :meth:`matches` this local one: the offer, with
        this proposal's lifetime if the offer proposes none (0)."""
        if offer.life_seconds == 0:
            return Proposal(offer.auth, offer.group, offer.hash, offer.enc, offer.key_bits, self.life_seconds)
        return offer

    def matches(self, offer: "Proposal") -> bool:
        """Does a peer's offer equal this local proposal (a shorter lifetime is fine)?"""
        return (
            offer.auth == self.auth
            and offer.group == self.group
            and offer.hash == self.hash
            and offer.enc == self.enc
            and offer.key_bits == self.key_bits
            and offer.life_seconds <= self.life_seconds
        )


class IdType(enum.IntEnum):
    """RFC 2407 section 4.6.2.1 (the phase 1 subset we use)."""

    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    KEY_ID = 11


@dataclass(frozen=True, slots=True)
class Identity:
    """An ID payload's type and data (protocol/port 0/0 on the wire)."""

    type: int
    data: bytes

    @classmethod
    def ip(cls, address: str) -> "Identity":
        a = ipaddress.ip_address(address)
        return cls(IdType.IPV4_ADDR if a.version == 4 else IdType.IPV6_ADDR, a.packed)

    @classmethod
    def fqdn(cls, name: str) -> "Identity":
        return cls(IdType.FQDN, name.encode("ascii"))

    @classmethod
    def user_fqdn(cls, email: str) -> "Identity":
        return cls(IdType.USER_FQDN, email.encode("ascii"))

    @classmethod
    def dn(cls, name: x509.Name) -> "Identity":
        return cls(IdType.DER_ASN1_DN, name.public_bytes())

    @classmethod
    def key_id(cls, data: bytes) -> "Identity":
        return cls(IdType.KEY_ID, bytes(data))

    def __str__(self) -> str:
        try:
            t = IdType(self.type)
        except ValueError:
            return f"ID{self.type}:{self.data.hex()}"
        if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if t in (IdType.FQDN, IdType.USER_FQDN):
            return self.data.decode("ascii", "replace")
        if t is IdType.KEY_ID and self.data.isascii() and self.data.decode("ascii").isprintable():
            return f"key-id:{self.data.decode('ascii')}"  # PSK identities are configured as text
        return f"{t.name}:{self.data.hex()}"


def _addr_key(addr: object) -> str:
    if isinstance(addr, tuple):
        addr = addr[0]
    return str(ipaddress.ip_address(addr))


@dataclass(frozen=True)
class PskStore:
    """Pre-shared keys, each belonging to exactly one identity: a key authenticates its owner and
    nobody else.

    ``by_id``: the key of each identity (an ID payload value, e.g. ID_KEY_ID ``gm1``).
    ``address_ids``: peer address -> the identity in ``by_id`` whose key a peer at that address
    uses (the key server's PSK entries with ``addresses``).  ``by_address``: a key for a peer
    address with no named owner; it belongs to that address.

    Responder (:meth:`candidates`): in Main Mode the key must be picked before the peer's ID can
    be decrypted (RFC 2409 section 5.4), so the source address (unauthenticated) selects the
    key, else each key listed by identity is tried (at most ``max_trials``).  Whichever key
    verifies HASH_I, the peer must present that key's owner as its ID: ``by_id``/``address_ids``
    keys their identity, ``by_address`` keys the ID_IPV4_ADDR/ID_IPV6_ADDR of that address.  So a
    member that holds one key cannot claim another member's identity.

    Initiator (:meth:`for_responder`): the key is picked by the address we chose to contact (or
    the configured peer identity); its owner, when known, is the identity the responder must
    present.  An unnamed ``by_address`` key is shared with that one responder only, so whatever
    ID it presents is authenticated by the key; authorization (``peer_id``, the member's
    key-server rules) decides whether that ID is acceptable.
    """

    by_address: Mapping[str, bytes] = field(default_factory=dict)
    by_id: Mapping[Identity, bytes] = field(default_factory=dict)
    address_ids: Mapping[str, Identity] = field(default_factory=dict)
    max_trials: int = 16

    def __post_init__(self) -> None:
        norm = {}
        for a, k in self.by_address.items():
            try:
                norm[_addr_key(a)] = bytes(k)
            except ValueError as exc:
                raise ConfigError(f"psk.by_address[{a}]", str(exc)) from None
        object.__setattr__(self, "by_address", norm)
        owners = {}
        for a, ident in self.address_ids.items():
            try:
                owners[_addr_key(a)] = ident
            except ValueError as exc:
                raise ConfigError(f"psk.address_ids[{a}]", str(exc)) from None
            if ident not in self.by_id:
                raise ConfigError(f"psk.address_ids[{a}]", f"{ident} has no key in by_id")
            if _addr_key(a) in norm:
                raise ConfigError(f"psk.address_ids[{a}]", "address also has an unnamed key")
        object.__setattr__(self, "address_ids", owners)
        object.__setattr__(self, "by_id", dict(self.by_id))
        for k in list(norm.values()) + list(self.by_id.values()):
            if len(k) == 0:
                raise ConfigError("psk", "empty pre-shared key")

    def __repr__(self) -> str:
        return f"PskStore(<{len(self.by_address)} by address, {len(self.by_id)} by id>)"

    @staticmethod
    def _host(addr: object) -> str | None:
        host = addr[0] if isinstance(addr, tuple) else addr
        try:
            return _addr_key(host)
        except ValueError:
            return None

    def candidates(self, addr: object) -> list[tuple[bytes, Identity]]:
        """Responder: the keys to try for a message 5 from ``addr``, each with its owner."""
        host = self._host(addr)
        if host is not None:
            owner = self.address_ids.get(host)
            if owner is not None:
                return [(self.by_id[owner], owner)]
            k = self.by_address.get(host)
            if k is not None:
                return [(k, Identity.ip(host))]
        return [(v, i) for i, v in itertools.islice(self.by_id.items(), self.max_trials)]

    def selected_by_address(self, addr: object) -> bool:
        """Does the source address alone select the key (no trial decryption)?"""
        host = self._host(addr)
        return host is not None and (host in self.address_ids or host in self.by_address)

    def untried(self, addr: object) -> int:
        """How many keys :meth:`candidates` leaves out for ``addr`` (over ``max_trials``)."""
        if self.selected_by_address(addr):
            return 0
        return max(0, len(self.by_id) - self.max_trials)

    def for_responder(self, addr: object, peer_id: Identity | None) -> tuple[bytes, Identity | None] | None:
        """Initiator: (key, its owner or None) for the responder at ``addr``."""
        if peer_id is not None and peer_id in self.by_id:
            return self.by_id[peer_id], peer_id
        host = self._host(addr)
        if host is None:
            return None
        owner = self.address_ids.get(host)
        if owner is not None:
            return self.by_id[owner], owner
        k = self.by_address.get(host)
        return (k, None) if k is not None else None


@dataclass(frozen=True)
class CertCredential:
    """Our certificate, its private key and the intermediates to send (leaf first)."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    def __repr__(self) -> str:
        return f"CertCredential({self.certificate.subject.rfc4514_string()})"

    def supports(self, method: AuthMethod) -> bool:
        return key_fits_method(self.private_key.public_key(), method)

    @cached_property
    def der_chain(self) -> tuple[bytes, ...]:
        """DER of the certificate and the chain, leaf first (encoded once, sent in every exchange)."""
        return tuple(c.public_bytes(Encoding.DER) for c in (self.certificate, *self.chain))


_CURVE_FOR = {AuthMethod.ECDSA_256: "secp256r1", AuthMethod.ECDSA_384: "secp384r1", AuthMethod.ECDSA_521: "secp521r1"}


def key_fits_method(public_key: object, method: AuthMethod) -> bool:
    if method is AuthMethod.RSA_SIG:
        return isinstance(public_key, rsa.RSAPublicKey)
    if method in _CURVE_FOR:
        return isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == _CURVE_FOR[method]
    return False


@dataclass(frozen=True)
class Phase1Config:
    """Everything one endpoint needs for Main Mode.  Times are seconds.

    ``wall_time_offset``: added to the engine's ``now`` to get Unix time for certificate validity
    (the engine reads no clock; a daemon passes its wall clock minus its monotonic clock).
    """

    proposals: tuple[Proposal, ...]
    local_id: Identity | None = None
    psk: PskStore | None = None
    credential: CertCredential | None = None
    trust_anchors: tuple[x509.Certificate, ...] = ()
    peer_id: Identity | None = None  # required peer identity (initiator: the responder's)
    allow_weak: bool = False
    send_cert_request: bool = True
    initial_contact: bool = True  # initiator: send INITIAL-CONTACT in message 5 (RFC 2407 §4.6.3.3)
    wall_time_offset: float = 0.0
    nonce_size: int = 32
    # initiator retransmission: first timeout, multiplied by 2 up to max_retransmits times
    retransmit_timeout: float = 1.0
    max_retransmits: int = 5
    exchange_timeout: float = 30.0
    # responder resource limits
    half_open_timeout: float = 10.0
    max_half_open: int = 20000
    max_pending: int = 2000  # exchanges past MM3 (DH done) not yet authenticated
    max_half_open_per_peer: int = 64
    # per source address share of max_pending: one address cannot hold every DH slot (a full
    # table reclaims the oldest exchange of the heaviest source, see gkm.ike.server)
    max_pending_per_peer: int = 64
    # established ISAKMP SAs (about 9 KB each, kept for their lifetime): a new one beyond
    # either bound replaces the oldest of that identity / source address
    max_sa_per_identity: int = 32
    max_sa_per_address: int = 512
    # new phase 1 SAs per authenticated identity: a token bucket (burst, then per second); an
    # identity beyond it has its new SA deleted at once and its source address may not start
    # another Diffie-Hellman until the bucket refills (see gkm.ike.server)
    sa_burst_per_identity: int = 32
    sa_rate_per_identity: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "proposals", tuple(self.proposals))
        object.__setattr__(self, "trust_anchors", tuple(self.trust_anchors))
        if not self.proposals:
            raise ConfigError("proposals", "at least one proposal is needed")
        for i, p in enumerate(self.proposals):
            where = f"proposals[{i}]"
            if p.life_seconds == 0:
                raise ConfigError(where, "a local proposal needs a lifetime (0 is only read from peers)")
            if not p.supported:
                raise ConfigError(where, f"group {p.group} / cipher {p.enc.name} not implemented")
            if p.weak:
                if not self.allow_weak:
                    raise ConfigError(where, "weak algorithm (DES, MD5, SHA-1 or group < 14); set allow_weak")
                log.warning("phase 1 %s allows a weak algorithm: %s", where, p)
            if p.auth is AuthMethod.PRE_SHARED_KEY:
                if self.psk is None:
                    raise ConfigError(where, "pre-shared key proposal without a PskStore")
                if self.local_id is None:
                    raise ConfigError("local_id", "needed with pre-shared keys")
            else:
                if self.credential is None:
                    raise ConfigError(where, "signature proposal without a certificate credential")
                if not self.credential.supports(p.auth):
                    raise ConfigError(where, f"certificate key does not fit {p.auth.name}")
                if not self.trust_anchors:
                    raise ConfigError("trust_anchors", "signature authentication needs trust anchors")
        limits = {"max_half_open": self.max_half_open, "max_pending": self.max_pending,
                  "max_half_open_per_peer": self.max_half_open_per_peer,
                  "max_pending_per_peer": self.max_pending_per_peer,
                  "max_sa_per_identity": self.max_sa_per_identity, "max_sa_per_address": self.max_sa_per_address,
                  "sa_burst_per_identity": self.sa_burst_per_identity}
        for name, value in limits.items():
            if value < 1:
                raise ConfigError(name, "must be at least 1")
        if not self.sa_rate_per_identity > 0:
            raise ConfigError("sa_rate_per_identity", "must be more than 0 (new SAs per second)")
        if not 8 <= self.nonce_size <= 256:
            raise ConfigError("nonce_size", "must be 8..256 (RFC 2409 section 5)")

    def identity_for(self, method: AuthMethod) -> Identity:
        if self.local_id is not None:
            return self.local_id
        if self.credential is None:
            raise ConfigError("local_id", "no local identity and no certificate")
        return self._certificate_identity

    @cached_property
    def _certificate_identity(self) -> Identity:
        assert self.credential is not None
        return Identity.dn(self.credential.certificate.subject)
