"""GSA_REKEY digital signatures (RFC 9838 §2.4.1, AUTH payload as RFC 7427 §3).

::

    AUTH data        = ASN.1 Length (1) | AlgorithmIdentifier (DER) | signature
    DataToAuthenticate = A | P
    A = IKE header with Length = len(A) + len(P) | SK header with Payload Length = len(P) + 4
    P = the inner payload chain in clear, the AUTH payload's signature bytes zeroed

Decisions the RFC leaves open:

* "The Authentication Data field is zeroed": the zeroed field has the length of the signature
  that replaces it, so every length in A and P is the final one.  Ed25519 signatures have a
  fixed length; DER ECDSA signatures vary by a byte or two, so the signer signs with a
  placeholder of the expected length and signs again (fresh randomness) until the signature
  has that length.  The verifier zeroes the received signature bytes in place.
* Algorithms: Ed25519 (RFC 8420) and ECDSA P-256/SHA-256, P-384/SHA-384 (RFC 7427 Appendix A
  AlgorithmIdentifiers).  The member learns the AlgorithmIdentifier at registration (the GCAUTH
  transform's Signature Algorithm Identifier attribute, whose number RFC 9838 leaves to IANA,
  so it is a parameter here) and the AUTH payload's must equal it byte for byte.
* The public key (AUTH_KEY, DER SubjectPublicKeyInfo) must be of the algorithm's key type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_der_public_key

from .constants import HEADER_LENGTH, AuthMethod, PayloadType
from .message import Header
from .payloads import Authentication

_GEN = struct.Struct("!BBH")


class RekeyAuthError(ValueError):
    """The AUTH payload is malformed, of another algorithm, or its signature does not verify."""


@dataclass(frozen=True, slots=True)
class SignatureAlgorithm:
    name: str
    algorithm_identifier: bytes  # DER AlgorithmIdentifier (RFC 7427 Appendix A)
    curve: type | None  # ec curve class, None for Ed25519
    hash: type | None
    size: int  # expected signature length (first placeholder)


SIGNATURE_ALGORITHMS = {
    a.name: a
    for a in (
        SignatureAlgorithm("ed25519", bytes.fromhex("300506032b6570"), None, None, 64),
        SignatureAlgorithm("ecdsa-p256-sha256", bytes.fromhex("300a06082a8648ce3d040302"), ec.SECP256R1, hashes.SHA256, 71),
        SignatureAlgorithm("ecdsa-p384-sha384", bytes.fromhex("300a06082a8648ce3d040303"), ec.SECP384R1, hashes.SHA384, 103),
    )
}

#: policy.suites.SIGNATURE_SUITES names (GroupKek.signature) -> the GSA_REKEY algorithm.
FOR_SIGNATURE_SUITE = {"ecdsa-p256": SIGNATURE_ALGORITHMS["ecdsa-p256-sha256"],
                       "ecdsa-p384": SIGNATURE_ALGORITHMS["ecdsa-p384-sha384"]}


def _auth_data(alg: SignatureAlgorithm, signature: bytes) -> bytes:
    return bytes((len(alg.algorithm_identifier),)) + alg.algorithm_identifier + signature


def signed_data(header: Header, first_payload: int, chain: bytes) -> bytes:
    """A | P for the inner chain ``chain`` (already zeroed)."""
    a = header.encode(PayloadType.SK, HEADER_LENGTH + 4 + len(chain)) + _GEN.pack(first_payload, 0, 4 + len(chain))
    return a + chain


def check_key(alg: SignatureAlgorithm, key) -> None:
    """Raises :class:`RekeyAuthError` unless ``key`` (a loaded key) is of ``alg``'s type."""
    if alg.curve is None:
        ok = isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey))
    else:
        ok = isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, alg.curve)
    if not ok:
        raise RekeyAuthError(f"key does not fit signature algorithm {alg.name}")


def sign_chain(alg: SignatureAlgorithm, private_key, header: Header, inner: tuple, encode) -> Authentication:
    """The AUTH payload for ``inner`` (payloads before AUTH; AUTH goes last).  ``encode`` is
    :func:`~.message.encode_payloads`."""
    check_key(alg, private_key)
    size = alg.size
    for _ in range(64):
        placeholder = Authentication(AuthMethod.DIGITAL_SIGNATURE, _auth_data(alg, bytes(size)))
        first, chain = encode(inner + (placeholder,))
        data = signed_data(header, first, chain)
        if alg.curve is None:
            sig = private_key.sign(data)
        else:
            sig = private_key.sign(data, ec.ECDSA(alg.hash()))
        if len(sig) == size:
            return Authentication(AuthMethod.DIGITAL_SIGNATURE, _auth_data(alg, sig))
        size = len(sig)
    raise RekeyAuthError("no signature of a stable length")  # pragma: no cover - probability ~2**-64


def _find_auth(chain: bytes, first: int) -> tuple[int, int]:
    """(start, end) of the single AUTH payload's body in the (already decoded, so well-formed) chain."""
    pos, np, found = 0, first, None
    while np:
        nnp, _flags, length = _GEN.unpack_from(chain, pos)
        if np == PayloadType.AUTH:
            if found is not None:
                raise RekeyAuthError("more than one AUTH payload")
            found = (pos + 4, pos + length)
        pos += length
        np = nnp
    if found is None:
        raise RekeyAuthError("no AUTH payload, the group's authentication method is digital signature")
    return found


def verify_chain(alg: SignatureAlgorithm, public_key_der: bytes, header: Header, first_payload: int, chain: bytes) -> None:
    """Raises :class:`RekeyAuthError` unless the AUTH payload in ``chain`` verifies."""
    start, end = _find_auth(chain, first_payload)
    if chain[start] != AuthMethod.DIGITAL_SIGNATURE:
        raise RekeyAuthError(f"AUTH method {chain[start]}, must be Digital Signature (14)")
    n = len(alg.algorithm_identifier)
    p = start + 4
    if end - p < 1 + n or chain[p] != n or chain[p + 1 : p + 1 + n] != alg.algorithm_identifier:
        raise RekeyAuthError(f"AUTH AlgorithmIdentifier is not the group's ({alg.name})")
    sig_start = p + 1 + n
    sig = chain[sig_start:end]
    if not sig:
        raise RekeyAuthError("empty signature")
    zeroed = chain[:sig_start] + bytes(end - sig_start) + chain[end:]
    data = signed_data(header, first_payload, zeroed)
    try:
        key = load_der_public_key(public_key_der)
    except ValueError:
        raise RekeyAuthError("AUTH_KEY is not a DER SubjectPublicKeyInfo") from None
    check_key(alg, key)
    try:
        if alg.curve is None:
            key.verify(sig, data)
        else:
            key.verify(sig, data, ec.ECDSA(alg.hash()))
    except InvalidSignature:
        raise RekeyAuthError("signature does not verify") from None


__all__ = ["FOR_SIGNATURE_SUITE", "RekeyAuthError", "SignatureAlgorithm", "SIGNATURE_ALGORITHMS", "check_key", "sign_chain", "verify_chain", "signed_data"]
