"""Phase 1 signature authentication: sign/verify HASH_I/R, certificate chains, ID vs certificate.

RSA (RFC 2409 section 5.1): PKCS#1 v1.5 type 1 over the bare HASH, no DigestInfo.
ECDSA (RFC 4754): signature = r||s, each left-padded to the curve's coordinate size; the signed
value is HASH_I/R computed with the HMAC of the curve's hash (SHA-256/384/512 for P-256/384/521)
and is given to ECDSA as the digest (strongSwan's convention; see docs/decisions/wire.md §2).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtensionOID

from .config import AuthMethod, CertCredential, Identity, IdType, key_fits_method
from .crypto import HashAlg, Prf, prf_of

__all__ = ["AuthError", "signature_prf", "sign", "verify", "validate_chain", "id_matches_certificate"]


class AuthError(Exception):
    """Authentication failed; ``notify`` is the RFC 2408 notify type to report."""

    def __init__(self, reason: str, notify: int = 24) -> None:  # 24 AUTHENTICATION-FAILED
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


_ECDSA = {
    AuthMethod.ECDSA_256: (HashAlg.SHA2_256, hashes.SHA256(), 32),
    AuthMethod.ECDSA_384: (HashAlg.SHA2_384, hashes.SHA384(), 48),
    AuthMethod.ECDSA_521: (HashAlg.SHA2_512, hashes.SHA512(), 66),
}


#: signature algorithm objects, built once (they are immutable)
_ECDSA_PREHASHED = {method: ec.ECDSA(utils.Prehashed(alg)) for method, (_h, alg, _s) in _ECDSA.items()}
_PKCS1 = padding.PKCS1v15()
_NO_DIGEST_INFO = utils.NoDigestInfo()


def signature_prf(method: AuthMethod, negotiated: Prf) -> Prf:
    """The PRF used for the HASH_I/R that is signed: the curve's hash for ECDSA."""
    if method in _ECDSA:
        return prf_of(_ECDSA[method][0])
    return negotiated


def sign(credential: CertCredential, method: AuthMethod, digest: bytes) -> bytes:
    key = credential.private_key
    if method is AuthMethod.RSA_SIG and isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, _PKCS1, _NO_DIGEST_INFO)
    if method in _ECDSA and isinstance(key, ec.EllipticCurvePrivateKey):
        size = _ECDSA[method][2]
        der = key.sign(digest, _ECDSA_PREHASHED[method])
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise AuthError(f"local key cannot sign with {method.name}")


def verify(public_key: object, method: AuthMethod, digest: bytes, signature: bytes) -> None:
    """Raise AuthError(INVALID-SIGNATURE) unless ``signature`` is valid over ``digest``."""
    if not key_fits_method(public_key, method):
        raise AuthError(f"peer certificate key does not fit {method.name}", 25)
    try:
        if method is AuthMethod.RSA_SIG:
            public_key.verify(signature, digest, _PKCS1, _NO_DIGEST_INFO)  # type: ignore[union-attr]
            return
        size = _ECDSA[method][2]
        if len(signature) != 2 * size:
            raise AuthError(f"ECDSA signature length {len(signature)} != {2 * size}", 25)
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        public_key.verify(utils.encode_dss_signature(r, s), digest, _ECDSA_PREHASHED[method])  # type: ignore[union-attr]
    except (InvalidSignature, ValueError) as exc:
        raise AuthError(f"invalid {method.name} signature", 25) from exc


def _ee_policy() -> xv.ExtensionPolicy:
    # Leaf certificates of IKE peers rarely carry the web-PKI extensions (SAN, EKU serverAuth/
    # clientAuth); accept any extension set, then check key usage ourselves.
    return xv.ExtensionPolicy.permit_all()


#: trust anchors -> (Unix second, verifier for that second).  The verifier compares validity at
#: whole seconds (``PolicyBuilder.time`` drops the fraction; tested), so one built for the second
#: of ``when`` decides exactly as a fresh one would, and building one (store indexing, loading the
#: anchors' keys on first use) costs more than a third of a verification.
_VERIFIERS: dict[tuple[x509.Certificate, ...], tuple[int, xv.ClientVerifier]] = {}


def _verifier(anchors: tuple[x509.Certificate, ...], when: datetime) -> xv.ClientVerifier:
    second = when.replace(microsecond=0)
    key = int(second.timestamp())
    hit = _VERIFIERS.get(anchors)
    if hit is not None and hit[0] == key:
        return hit[1]
    verifier = (
        xv.PolicyBuilder()
        .store(xv.Store(list(anchors)))
        .time(second)
        .extension_policies(ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy())
        .build_client_verifier()
    )
    if len(_VERIFIERS) >= 16:
        _VERIFIERS.clear()
    _VERIFIERS[anchors] = (key, verifier)
    return verifier


def validate_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchors: tuple[x509.Certificate, ...],
    when: datetime,
) -> None:
    """Path validation against the trust anchors at time ``when``; AuthError on failure."""
    if not anchors:
        raise AuthError("no trust anchors configured", 22)
    # Explicit validity check first for a readable reason.
    if when < leaf.not_valid_before_utc:
        raise AuthError(f"certificate {leaf.subject.rfc4514_string()} not yet valid", 20)
    if when > leaf.not_valid_after_utc:
        raise AuthError(f"certificate {leaf.subject.rfc4514_string()} expired", 20)
    try:
        _verifier(tuple(anchors), when).verify(leaf, intermediates)
    except xv.VerificationError as exc:
        raise AuthError(f"certificate {leaf.subject.rfc4514_string()} not trusted: {exc}", 22) from exc
    except Exception as exc:  # malformed certificates can raise ValueError and friends
        raise AuthError(f"certificate validation error: {exc}", 20) from exc
    try:
        ku = leaf.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return
    if not ku.digital_signature and not ku.content_commitment:
        raise AuthError("certificate key usage does not allow digital signatures", 20)


def id_matches_certificate(identity: Identity, cert: x509.Certificate) -> bool:
    """RFC 4945 style: DN equals the subject, or FQDN/email/IP is in the subjectAltName."""
    if identity.type == IdType.DER_ASN1_DN:
        return identity.data == cert.subject.public_bytes()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if identity.type == IdType.FQDN:
        want = identity.data.decode("ascii", "replace").lower().rstrip(".")
        return any(n.lower().rstrip(".") == want for n in san.get_values_for_type(x509.DNSName))
    if identity.type == IdType.USER_FQDN:
        want = identity.data.decode("ascii", "replace").lower()
        return any(n.lower() == want for n in san.get_values_for_type(x509.RFC822Name))
    if identity.type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        try:
            want_ip = ipaddress.ip_address(identity.data)
        except ValueError:
            return False
        return want_ip in san.get_values_for_type(x509.IPAddress)
    return False
