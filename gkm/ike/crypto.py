"""IKEv1 phase 1 cryptography: PRF, Diffie-Hellman groups, key derivation, IVs, CBC bodies.

Everything here is a pure function of its arguments (plus ``os.urandom`` for key generation);
no state, no clock.  References: RFC 2409 section 5 and Appendix B (SKEYID family, HASH_I/R,
IVs, key expansion), RFC 3526 (MODP-2048), RFC 5903 (ECP groups: KE = x||y, shared secret = x),
RFC 4868 (SHA-2 hash attribute values 4/5/6), RFC 3602 (AES-CBC).

Names follow RFC 2409: ``gxi``/``gxr`` are the KE payload bodies as sent, ``gxy`` the shared
secret, ``ni_b``/``nr_b`` the nonce payload bodies, ``cky_i``/``cky_r`` the 8-byte cookies.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Callable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding as _Encoding
from cryptography.hazmat.primitives.serialization import PublicFormat as _PublicFormat

__all__ = [
    "CryptoError",
    "HashAlg",
    "EncAlg",
    "Prf",
    "KeyedPrf",
    "prf_of",
    "DhGroup",
    "DhPrivate",
    "dh_group",
    "skeyid_psk",
    "skeyid_sig",
    "skeyid_dae",
    "expand_key",
    "hash_i",
    "hash_r",
    "hash_i_input",
    "hash_r_input",
    "phase1_iv",
    "phase2_iv",
    "cbc_encrypt",
    "cbc_decrypt",
    "Phase1Keys",
    "derive_phase1_keys",
]


class CryptoError(Exception):
    """A cryptographic input was invalid (bad public value, bad ciphertext length...)."""


class HashAlg(enum.IntEnum):
    """RFC 2409 Appendix A hash algorithm attribute (class 2) values; RFC 4868 section 4."""

    MD5 = 1
    SHA1 = 2
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6

    @property
    def hashlib_name(self) -> str:
        return _HASHLIB_NAMES[self]

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]

    @property
    def weak(self) -> bool:
        return self in (HashAlg.MD5, HashAlg.SHA1)


_HASHLIB_NAMES = {
    HashAlg.MD5: "md5",
    HashAlg.SHA1: "sha1",
    HashAlg.SHA2_256: "sha256",
    HashAlg.SHA2_384: "sha384",
    HashAlg.SHA2_512: "sha512",
}
_DIGEST_SIZES = {HashAlg.MD5: 16, HashAlg.SHA1: 20, HashAlg.SHA2_256: 32, HashAlg.SHA2_384: 48, HashAlg.SHA2_512: 64}


class EncAlg(enum.IntEnum):
    """RFC 2409 Appendix A encryption algorithm attribute (class 1) values."""

    DES_CBC = 1
    TDES_CBC = 5
    AES_CBC = 7

    @property
    def block_size(self) -> int:
        return 16 if self is EncAlg.AES_CBC else 8

    @property
    def weak(self) -> bool:
        return self is EncAlg.DES_CBC


_TRANS_5C = bytes(x ^ 0x5C for x in range(256))
_TRANS_36 = bytes(x ^ 0x36 for x in range(256))
_CONSTRUCTORS = {h: getattr(hashlib, n) for h, n in _HASHLIB_NAMES.items()}


class KeyedPrf:
    """HMAC (RFC 2104) with one key, for many messages: the inner and outer hash states after the
    padded key are computed once and copied per call.  Same output as ``hmac.digest``, several
    times cheaper than it for the short inputs of IKE (``hmac.digest`` sets up an OpenSSL HMAC
    context each call).  No key material in ``repr``."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, new: Callable[..., "hashlib._Hash"], key: bytes) -> None:
        inner, outer = new(), new()
        block = inner.block_size
        if len(key) > block:
            key = new(key).digest()
        key = key.ljust(block, b"\0")
        inner.update(key.translate(_TRANS_36))
        outer.update(key.translate(_TRANS_5C))
        self._inner = inner
        self._outer = outer

    def __repr__(self) -> str:
        return "<KeyedPrf>"

    def __call__(self, data: bytes) -> bytes:
        h = self._inner.copy()
        h.update(data)
        o = self._outer.copy()
        o.update(h.digest())
        return o.digest()


@dataclass(frozen=True, slots=True)
class Prf:
    """prf = HMAC with the negotiated hash (RFC 2409 section 4: no PRF attribute defined)."""

    hash_alg: HashAlg

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return KeyedPrf(_CONSTRUCTORS[self.hash_alg], key)(data)

    def keyed(self, key: bytes) -> KeyedPrf:
        """``prf(key, .)`` for several messages under the same key."""
        return KeyedPrf(_CONSTRUCTORS[self.hash_alg], key)

    def hash(self, data: bytes) -> bytes:
        """The plain hash, used for the phase 1 and phase 2 IVs."""
        return _CONSTRUCTORS[self.hash_alg](data).digest()

    @property
    def size(self) -> int:
        return self.hash_alg.digest_size


_PRFS = {h: Prf(h) for h in HashAlg}


def prf_of(hash_alg: HashAlg) -> Prf:
    """The (immutable, shared) :class:`Prf` of a hash algorithm."""
    return _PRFS[hash_alg]


# --------------------------------------------------------------------------------------------
# Diffie-Hellman groups

_MODP2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)  # RFC 3526 section 3, generator 2


class DhPrivate:
    """An ephemeral private key; ``public`` is the KE payload body.  No secret in repr."""

    __slots__ = ("group", "public", "_key")

    def __init__(self, group: "DhGroup", public: bytes, key: object) -> None:
        self.group = group
        self.public = public
        self._key = key

    def __repr__(self) -> str:
        return f"<DhPrivate group={self.group.id}>"

    def exchange(self, peer_public: bytes) -> bytes:
        """g^xy as used in SKEYID: MODP fixed prime length, ECP the x coordinate (RFC 5903)."""
        return self.group._exchange(self._key, peer_public)


class DhGroup:
    """One Oakley group.  ``public_len`` is the exact KE body length."""

    def __init__(self, id: int, name: str, public_len: int, weak: bool = False) -> None:
        self.id = id
        self.name = name
        self.public_len = public_len
        self.weak = weak

    def __repr__(self) -> str:
        return f"<DhGroup {self.id} {self.name}>"

    def generate(self) -> DhPrivate:
        raise NotImplementedError

    def check_public(self, public: bytes) -> None:
        raise NotImplementedError

    def _exchange(self, key: object, peer_public: bytes) -> bytes:
        raise NotImplementedError


class _ModpGroup(DhGroup):
    def __init__(self, id: int, name: str, p: int, g: int) -> None:
        super().__init__(id, name, (p.bit_length() + 7) // 8)
        self.p = p
        self.g = g
        self._params = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from cryptography.hazmat.primitives.asymmetric import dh

                self._params = dh.DHParameterNumbers(p, g).parameters()
        except Exception:  # pragma: no cover - FFDH removed from a future cryptography
            self._params = None

    def generate(self) -> DhPrivate:
        if self._params is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                key = self._params.generate_private_key()
                y = key.public_key().public_numbers().y
            return DhPrivate(self, y.to_bytes(self.public_len, "big"), key)
        # Fallback: plain modular exponentiation with a 512-bit exponent (> 2x the 112-bit
        # strength of MODP-2048, RFC 3526 section 8).
        x = int.from_bytes(os.urandom(64), "big") | 1 << 511
        return DhPrivate(self, pow(self.g, x, self.p).to_bytes(self.public_len, "big"), x)

    def check_public(self, public: bytes) -> None:
        if len(public) != self.public_len:
            raise CryptoError(f"group {self.id}: KE length {len(public)} != {self.public_len}")
        y = int.from_bytes(public, "big")
        if not 1 < y < self.p - 1:
            raise CryptoError(f"group {self.id}: public value out of range")

    def _exchange(self, key: object, peer_public: bytes) -> bytes:
        self.check_public(peer_public)
        y = int.from_bytes(peer_public, "big")
        if isinstance(key, int):
            z = pow(y, key, self.p)
            return z.to_bytes(self.public_len, "big")
        from cryptography.hazmat.primitives.asymmetric import dh

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = dh.DHPublicNumbers(y, self._params.parameter_numbers()).public_key()
            z = key.exchange(peer)
        return z.rjust(self.public_len, b"\0")


class _EcpGroup(DhGroup):
    def __init__(self, id: int, name: str, curve: ec.EllipticCurve) -> None:
        self.coord_len = (curve.key_size + 7) // 8
        super().__init__(id, name, 2 * self.coord_len)
        self.curve = curve

    def generate(self) -> DhPrivate:
        key = ec.generate_private_key(self.curve)
        point = key.public_key().public_bytes(
            encoding=_Encoding.X962, format=_PublicFormat.UncompressedPoint
        )
        return DhPrivate(self, point[1:], key)

    def _load(self, public: bytes) -> ec.EllipticCurvePublicKey:
        if len(public) != self.public_len:
            raise CryptoError(f"group {self.id}: KE length {len(public)} != {self.public_len}")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(self.curve, b"\x04" + public)
        except ValueError as exc:
            raise CryptoError(f"group {self.id}: public value not on the curve") from exc

    def check_public(self, public: bytes) -> None:
        self._load(public)

    def _exchange(self, key: object, peer_public: bytes) -> bytes:
        peer = self._load(peer_public)
        return key.exchange(ec.ECDH(), peer)  # type: ignore[attr-defined]

    def private_from_scalar(self, scalar: int) -> DhPrivate:
        """Deterministic key for known-answer tests only."""
        key = ec.derive_private_key(scalar, self.curve)
        point = key.public_key().public_bytes(_Encoding.X962, _PublicFormat.UncompressedPoint)
        return DhPrivate(self, point[1:], key)


_GROUPS: dict[int, DhGroup] = {
    14: _ModpGroup(14, "MODP-2048", _MODP2048_P, 2),
    19: _EcpGroup(19, "ECP-256", ec.SECP256R1()),
    20: _EcpGroup(20, "ECP-384", ec.SECP384R1()),
    21: _EcpGroup(21, "ECP-521", ec.SECP521R1()),
}


def dh_group(group_id: int) -> DhGroup:
    """The supported group with this Group Description value; KeyError otherwise."""
    return _GROUPS[group_id]


SUPPORTED_GROUPS = frozenset(_GROUPS)

# --------------------------------------------------------------------------------------------
# Key derivation (RFC 2409 section 5, Appendix B)


def skeyid_psk(prf: Prf, psk: bytes, ni_b: bytes, nr_b: bytes) -> bytes:
    """SKEYID = prf(pre-shared-key, Ni_b | Nr_b)."""
    return prf(psk, ni_b + nr_b)


def skeyid_sig(prf: Prf, ni_b: bytes, nr_b: bytes, gxy: bytes) -> bytes:
    """SKEYID = prf(Ni_b | Nr_b, g^xy) for signature authentication."""
    return prf(ni_b + nr_b, gxy)


def skeyid_dae(prf: Prf, skeyid: bytes, gxy: bytes, cky_i: bytes, cky_r: bytes) -> tuple[bytes, bytes, bytes]:
    """(SKEYID_d, SKEYID_a, SKEYID_e)."""
    return _skeyid_dae(prf.keyed(skeyid), gxy, cky_i, cky_r)


def _skeyid_dae(k: KeyedPrf, gxy: bytes, cky_i: bytes, cky_r: bytes) -> tuple[bytes, bytes, bytes]:
    tail = gxy + cky_i + cky_r
    d = k(tail + b"\x00")
    a = k(d + tail + b"\x01")
    e = k(a + tail + b"\x02")
    return d, a, e


def expand_key(prf: Prf, skeyid_e: bytes, key_len: int) -> bytes:
    """The cipher key from SKEYID_e, expanded when too short (RFC 2409 Appendix B)."""
    if len(skeyid_e) >= key_len:
        return skeyid_e[:key_len]
    out = b""
    k = prf.keyed(skeyid_e)
    block = k(b"\x00")
    while True:
        out += block
        if len(out) >= key_len:
            return out[:key_len]
        block = k(block)


def hash_i_input(gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idii_b: bytes) -> bytes:
    """What HASH_I is computed over: g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b."""
    return gxi + gxr + cky_i + cky_r + sai_b + idii_b


def hash_r_input(gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idir_b: bytes) -> bytes:
    """What HASH_R is computed over: g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b."""
    return gxr + gxi + cky_r + cky_i + sai_b + idir_b


def hash_i(prf: Prf, skeyid: bytes, gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idii_b: bytes) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)."""
    return prf(skeyid, hash_i_input(gxi, gxr, cky_i, cky_r, sai_b, idii_b))


def hash_r(prf: Prf, skeyid: bytes, gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idir_b: bytes) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)."""
    return prf(skeyid, hash_r_input(gxi, gxr, cky_i, cky_r, sai_b, idir_b))


def phase1_iv(prf: Prf, gxi: bytes, gxr: bytes, block_size: int) -> bytes:
    """IV for the first encrypted phase 1 message: hash(g^xi | g^xr) truncated."""
    return prf.hash(gxi + gxr)[:block_size]


def phase2_iv(prf: Prf, last_p1_block: bytes, message_id: int | bytes, block_size: int) -> bytes:
    """IV for a phase 2 / Informational exchange: hash(last phase 1 CBC block | M-ID)."""
    mid = message_id if isinstance(message_id, bytes) else struct.pack("!I", message_id)
    return prf.hash(last_p1_block + mid)[:block_size]


def _cipher(enc: EncAlg, key: bytes, iv: bytes) -> Cipher:
    if enc is EncAlg.AES_CBC:
        return Cipher(algorithms.AES(key), modes.CBC(iv))
    raise CryptoError(f"cipher {enc!r} not supported")


def cbc_encrypt(enc: EncAlg, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """Zero-pad to the block size (RFC 2409 Appendix B) and CBC-encrypt."""
    bs = enc.block_size
    pad = (-len(plaintext)) % bs
    e = _cipher(enc, key, iv).encryptor()
    return e.update(plaintext + b"\0" * pad) + e.finalize()


def cbc_decrypt(enc: EncAlg, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """CBC-decrypt; the caller finds the payload chain's end by walking lengths."""
    bs = enc.block_size
    if not ciphertext or len(ciphertext) % bs:
        raise CryptoError(f"ciphertext length {len(ciphertext)} not a multiple of {bs}")
    d = _cipher(enc, key, iv).decryptor()
    return d.update(ciphertext) + d.finalize()


@dataclass(frozen=True, slots=True)
class Phase1Keys:
    """SKEYID family plus the expanded cipher key.  repr shows no key material.
    ``skeyid_prf`` is prf(SKEYID, .) keyed once (for HASH_I and HASH_R), if the deriver kept it."""

    skeyid: bytes
    skeyid_d: bytes
    skeyid_a: bytes
    skeyid_e: bytes
    enc_key: bytes
    skeyid_prf: KeyedPrf | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return "Phase1Keys(<redacted>)"


def derive_phase1_keys(
    prf: Prf,
    *,
    psk: bytes | None,
    ni_b: bytes,
    nr_b: bytes,
    gxy: bytes,
    cky_i: bytes,
    cky_r: bytes,
    key_len: int,
) -> Phase1Keys:
    """All phase 1 keys.  ``psk`` None means signature authentication."""
    skeyid = skeyid_psk(prf, psk, ni_b, nr_b) if psk is not None else skeyid_sig(prf, ni_b, nr_b, gxy)
    keyed = prf.keyed(skeyid)
    d, a, e = _skeyid_dae(keyed, gxy, cky_i, cky_r)
    return Phase1Keys(skeyid, d, a, e, expand_key(prf, e, key_len), keyed)
