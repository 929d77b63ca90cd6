"""Key exchange methods for IKE_SA_INIT and the RFC 9370 additional exchanges.

* ECP256 (RFC 5903 §7): the KE data is x | y (64 bytes); the shared secret is x (32 bytes).
* Curve25519 (RFC 8031 §2): 32-byte public values; an all-zero shared secret is refused.
* ML-KEM-768 (draft-ietf-ipsecme-ikev2-mlkem, FIPS 203): the initiator sends its 1184-byte
  encapsulation key, the responder answers with the 1088-byte ciphertext; the shared secret is
  the 32-byte ML-KEM shared key.

A peer's value that is not valid for the method raises :class:`KexError` (a WireError naming
"KE"), never another exception.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from .constants import KeyExchangeMethod
from .errors import WireError

SUPPORTED = (KeyExchangeMethod.ECP256, KeyExchangeMethod.CURVE25519, KeyExchangeMethod.ML_KEM_768)
_SIZES = {KeyExchangeMethod.ECP256: 64, KeyExchangeMethod.CURVE25519: 32}
MLKEM768_EK = 1184
MLKEM768_CT = 1088


class KexError(WireError):
    def __init__(self, reason: str) -> None:
        super().__init__("KE", -1, reason)


class KeyShare:
    """One side's ephemeral key for ``method``.  ``public`` is what goes in its KE payload
    (for ML-KEM the initiator's encapsulation key)."""

    __slots__ = ("method", "_key", "public")

    def __init__(self, method: KeyExchangeMethod | int) -> None:
        self.method = method
        if method == KeyExchangeMethod.ECP256:
            self._key = ec.generate_private_key(ec.SECP256R1())
            self.public = self._key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        elif method == KeyExchangeMethod.CURVE25519:
            self._key = x25519.X25519PrivateKey.generate()
            self.public = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        elif method == KeyExchangeMethod.ML_KEM_768:
            self._key = mlkem.MLKEM768PrivateKey.generate()
            self.public = self._key.public_key().public_bytes_raw()
        else:
            raise KexError(f"unsupported key exchange method {method}")

    def __repr__(self) -> str:
        return f"KeyShare({self.method!r})"

    def shared_secret(self, peer: bytes) -> bytes:
        """ECDH with the peer's public value, or ML-KEM decapsulation of the responder's ciphertext."""
        try:
            if self.method == KeyExchangeMethod.ML_KEM_768:
                if len(peer) != MLKEM768_CT:
                    raise KexError(f"ML-KEM-768 ciphertext of {len(peer)} bytes, need {MLKEM768_CT}")
                return self._key.decapsulate(peer)
            if len(peer) != _SIZES[self.method]:
                raise KexError(f"{len(peer)}-byte key share for method {int(self.method)}, need {_SIZES[self.method]}")
            if self.method == KeyExchangeMethod.ECP256:
                point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
                return self._key.exchange(ec.ECDH(), point)
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except KexError:
            raise
        except ValueError as e:  # not on the curve, all-zero X25519 result, bad ciphertext
            raise KexError(f"invalid key share: {e}") from None


def respond(method: KeyExchangeMethod | int, peer: bytes) -> tuple[bytes, bytes]:
    """The responder's side: ``(KE data to send, shared secret)``."""
    if method == KeyExchangeMethod.ML_KEM_768:
        if len(peer) != MLKEM768_EK:
            raise KexError(f"ML-KEM-768 encapsulation key of {len(peer)} bytes, need {MLKEM768_EK}")
        try:
            ss, ct = mlkem.MLKEM768PublicKey.from_public_bytes(peer).encapsulate()
        except ValueError as e:
            raise KexError(f"invalid ML-KEM-768 encapsulation key: {e}") from None
        return ct, ss
    share = KeyShare(method)
    return share.public, share.shared_secret(peer)
