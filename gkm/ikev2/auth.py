"""The AUTH payload of IKE_AUTH / GSA_AUTH (RFC 7296 §2.15, RFC 9242 §3.3.2, RFC 7427).

::

    InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, IDi body) [| IntAuth]
    ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, IDr body) [| IntAuth]
    PSK:       AUTH = prf(prf(secret, "Key Pad for IKEv2"), SignedOctets)        (method 2)
    signature: AUTH = len(AlgorithmIdentifier) | AlgorithmIdentifier | signature  (method 14)

``IntAuth`` is :meth:`.intauth.IntAuth.octets` (empty without IKE_INTERMEDIATE).  The ID body
is the payload without its generic header (ID Type, RESERVED, data).

Digital signatures (RFC 7427, the only signature method msec speaks: it names the algorithm
in the payload instead of tying it to the key): ECDSA P-256/SHA-256 (DER ``Ecdsa-Sig-Value``,
RFC 7427 §3), RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (RFC 7427 §A.4.3),
Ed25519 (RFC 8420: PureEdDSA over the signed octets).  The AlgorithmIdentifier a verifier
accepts is one of the exact DER blobs below: any other encoding (other parameters, other
hash) is refused as unsupported rather than parsed.  Which algorithm a signer uses follows
from its key.  Both IKE_SA_INIT messages announce SHA2-256/384/512 and Identity in
SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4, :class:`~.sa_init.SaInitConfig`); the peer's list is
not consulted, since every signature here uses SHA-256 or Ed25519 (Identity).

Certificates: X.509 in CERT payloads of encoding 4, leaf first; the chain is checked with
:func:`gkm.ike.auth.validate_chain` against the trust anchors, the ID payload must name the
leaf (:func:`gkm.ike.auth.id_matches_certificate`), and the identity used for authorization
is the verified certificate's subject, never the ID payload alone (as in GDOI,
:func:`gkm.gdoi.pull.peer_identity`).  Failures raise :class:`AuthFailed`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gkm.ike.auth import AuthError, id_matches_certificate, validate_chain
from gkm.ike.config import CertCredential, Identity

from .keys import IkeKeys, prf
from .rekey_auth import SIGNATURE_ALGORITHMS

__all__ = [
    "AuthFailed", "PskAuth", "CertAuth", "signed_octets", "psk_auth", "sign", "verify_signature",
    "verify_certificate", "ALGORITHM_IDS",
]

KEY_PAD = b"Key Pad for IKEv2"


class AuthFailed(Exception):
    """Authentication failed (the peer is told AUTHENTICATION_FAILED); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PskAuth:
    """Authenticate with a pre-shared key under ``identity`` (ID_KEY_ID text on the wire)."""

    identity: Identity
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class CertAuth:
    """Authenticate with a certificate; ``identity`` defaults to its subject DN."""

    credential: CertCredential
    identity: Identity | None = None

    @property
    def id(self) -> Identity:
        return self.identity or Identity.dn(self.credential.certificate.subject)


def signed_octets(message: bytes, peer_nonce: bytes, keys: IkeKeys, initiator: bool, id_body: bytes, intauth: bytes) -> bytes:
    """RFC 7296 §2.15 signed octets of the side that sent ``message`` (its IKE_SA_INIT
    message), plus RFC 9242's IntAuth octets."""
    sk_p = keys.sk_pi if initiator else keys.sk_pr
    return message + peer_nonce + prf(keys.suite.prf, sk_p, id_body) + intauth


def psk_auth(prf_id: int, secret: bytes, octets: bytes) -> bytes:
    return prf(prf_id, prf(prf_id, secret, KEY_PAD), octets)


# -------------------------------------------------------------------------------- RFC 7427


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    return bytes((tag, n)) + body if n < 128 else bytes((tag, 0x81, n)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray((40 * parts[0] + parts[1],))
    for p in parts[2:]:
        chunk = [p & 0x7F]
        while p > 0x7F:
            p >>= 7
            chunk.append(0x80 | (p & 0x7F))
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


_NULL = b"\x05\x00"
_SHA256 = _der(0x30, _oid("2.16.840.1.101.3.4.2.1") + _NULL)
_PSS_SHA256 = _der(0x30, _oid("1.2.840.113549.1.1.10") + _der(0x30, (
    _der(0xA0, _SHA256)
    + _der(0xA1, _der(0x30, _oid("1.2.840.113549.1.1.8") + _SHA256))
    + _der(0xA2, _der(0x02, b"\x20")))))

#: algorithm name -> the DER AlgorithmIdentifier sent and accepted (RFC 7427 Appendix A, RFC 8420;
#: ECDSA and Ed25519 the ones GSA_REKEY signs with, :data:`.rekey_auth.SIGNATURE_ALGORITHMS`)
ALGORITHM_IDS: dict[str, bytes] = {
    "ecdsa-p256-sha256": SIGNATURE_ALGORITHMS["ecdsa-p256-sha256"].algorithm_identifier,
    "rsa-pss-sha256": _PSS_SHA256,
    "ed25519": SIGNATURE_ALGORITHMS["ed25519"].algorithm_identifier,
}
_BY_BLOB = {v: k for k, v in ALGORITHM_IDS.items()}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _algorithm_for(key) -> str:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.name != "secp256r1":
            raise AuthFailed(f"ECDSA curve {key.curve.name} is not supported (P-256 only)")
        return "ecdsa-p256-sha256"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa-pss-sha256"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    raise AuthFailed(f"unsupported key type {type(key).__name__}")


def sign(private_key, octets: bytes) -> bytes:
    """AUTH data for method 14 (DIGITAL_SIGNATURE)."""
    name = _algorithm_for(private_key)
    blob = ALGORITHM_IDS[name]
    if name == "ecdsa-p256-sha256":
        sig = private_key.sign(octets, ec.ECDSA(hashes.SHA256()))
    elif name == "rsa-pss-sha256":
        sig = private_key.sign(octets, _PSS, hashes.SHA256())
    else:
        sig = private_key.sign(octets)
    return bytes((len(blob),)) + blob + sig


def verify_signature(public_key, auth_data: bytes, octets: bytes) -> str:
    """Check method 14 AUTH data; returns the algorithm name, raises :class:`AuthFailed`."""
    if not auth_data or len(auth_data) < 1 + auth_data[0]:
        raise AuthFailed("AUTH data shorter than its AlgorithmIdentifier length")
    n = auth_data[0]
    name = _BY_BLOB.get(bytes(auth_data[1 : 1 + n]))
    if name is None:
        raise AuthFailed("unsupported signature AlgorithmIdentifier")
    if _algorithm_for(public_key) != name:
        raise AuthFailed(f"the certificate's key cannot verify {name}")
    sig = bytes(auth_data[1 + n :])
    try:
        if name == "ecdsa-p256-sha256":
            public_key.verify(sig, octets, ec.ECDSA(hashes.SHA256()))
        elif name == "rsa-pss-sha256":
            public_key.verify(sig, octets, _PSS, hashes.SHA256())
        else:
            public_key.verify(sig, octets)
    except (InvalidSignature, ValueError):
        raise AuthFailed(f"invalid {name} signature") from None
    return name


def verify_certificate(certs: list[bytes], peer_id: Identity, anchors: tuple[x509.Certificate, ...], when: datetime) -> x509.Certificate:
    """The verified leaf of ``certs`` (DER, leaf first) that ``peer_id`` names."""
    if not certs:
        raise AuthFailed("signature authentication without a certificate")
    try:
        chain = [x509.load_der_x509_certificate(c) for c in certs]
    except ValueError as e:
        raise AuthFailed(f"malformed certificate: {e}") from None
    try:
        validate_chain(chain[0], chain[1:], anchors, when)
    except AuthError as e:
        raise AuthFailed(e.reason) from None
    if not id_matches_certificate(peer_id, chain[0]):
        raise AuthFailed(f"{describe(peer_id)} does not name the certificate {chain[0].subject.rfc4514_string()}")
    return chain[0]


def describe(identity: Identity) -> str:
    """An identity the peer sent, for a reason or log line: never raises (``Identity.__str__``
    does on an address of the wrong length)."""
    try:
        return f"ID {identity}"
    except ValueError:
        return f"ID type {identity.type} with {len(identity.data)} bytes"


def compare(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)

