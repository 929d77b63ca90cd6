"""IKEv2 key derivation (RFC 7296 §2.13, §2.14) and the RFC 9370 §2.2.2 update after each
additional key exchange (IKE_INTERMEDIATE, e.g. ML-KEM-768 after ECDH).

::

    SKEYSEED = prf(Ni | Nr, g^ir)
    {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
    SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)          # RFC 9370, after key exchange n
    {SK_d(n) | ...} = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)
    SK_d' = prf+(PPK, SK_d), SK_pi' = prf+(PPK, SK_pi), SK_pr' = prf+(PPK, SK_pr)  # RFC 8784 §3

PRFs are the HMAC ones (RFC 2104 / RFC 4868): the whole ``Ni | Nr`` is the key (§2.14 halves
nonces only for fixed-key-size PRFs, which msec does not offer).  Key sizes: SK_d/SK_pi/SK_pr
the PRF output size (§2.13 "preferred key size"); SK_a the integrity key size; SK_e the cipher
key, plus 4 salt bytes for AES-GCM (RFC 5282 §7.1).  Keys never appear in ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace

from .constants import Encr, Integ, Prf

_HASHES = {Prf.HMAC_SHA1: "sha1", Prf.HMAC_SHA2_256: "sha256", Prf.HMAC_SHA2_384: "sha384", Prf.HMAC_SHA2_512: "sha512"}
#: Integrity transform -> (hash, key bytes, ICV bytes) (RFC 4868 §2.1, RFC 2404).
INTEG = {
    Integ.HMAC_SHA1_96: ("sha1", 20, 12),
    Integ.HMAC_SHA2_256_128: ("sha256", 32, 16),
    Integ.HMAC_SHA2_384_192: ("sha384", 48, 24),
    Integ.HMAC_SHA2_512_256: ("sha512", 64, 32),
}
AEAD = frozenset((Encr.AES_GCM_16,))
GCM_SALT = 4


class KeyDerivationError(ValueError):
    """An unsupported algorithm or an impossible key length (a configuration error)."""


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    try:
        return hmac.new(key, data, _HASHES[prf_id]).digest()
    except KeyError:
        raise KeyDerivationError(f"unsupported PRF {prf_id}") from None


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), at most 255 blocks."""
    out, t, n = [], b"", 0
    size = 0
    while size < length:
        n += 1
        if n > 255:
            raise KeyDerivationError(f"prf+ cannot produce {length} bytes with PRF {prf_id}")
        t = prf(prf_id, key, t + seed + bytes((n,)))
        out.append(t)
        size += len(t)
    return b"".join(out)[:length]


def prf_size(prf_id: int) -> int:
    try:
        return hashlib.new(_HASHES[prf_id]).digest_size
    except KeyError:
        raise KeyDerivationError(f"unsupported PRF {prf_id}") from None


def encr_key_size(encr_id: int, key_bits: int) -> int:
    if encr_id not in (Encr.AES_CBC, Encr.AES_GCM_16) or key_bits not in (128, 192, 256):
        raise KeyDerivationError(f"unsupported cipher {encr_id} with {key_bits}-bit key")
    return key_bits // 8 + (GCM_SALT if encr_id in AEAD else 0)


def integ_key_size(integ_id: int | None) -> int:
    if integ_id in (None, Integ.NONE):
        return 0
    try:
        return INTEG[integ_id][1]
    except KeyError:
        raise KeyDerivationError(f"unsupported integrity algorithm {integ_id}") from None


@dataclass(frozen=True, slots=True)
class Suite:
    """The negotiated IKE SA algorithms needed to derive and use keys."""

    prf: Prf | int
    encr: Encr | int
    key_bits: int
    integ: Integ | int | None = None

    def __post_init__(self) -> None:
        aead = self.encr in AEAD
        if aead != (self.integ in (None, Integ.NONE)):
            raise KeyDerivationError("an AEAD cipher takes no integrity algorithm, any other cipher needs one (RFC 7296 §3.3)")
        prf_size(self.prf), encr_key_size(self.encr, self.key_bits), integ_key_size(self.integ)


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """SKEYSEED's seven keys.  ``repr`` shows only sizes."""

    suite: Suite
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def skeyseed(prf_id: int, ni: bytes, nr: bytes, shared_secret: bytes) -> bytes:
    return prf(prf_id, ni + nr, shared_secret)


def _split(suite: Suite, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    p = prf_size(suite.prf)
    a = integ_key_size(suite.integ)
    e = encr_key_size(suite.encr, suite.key_bits)
    km = prf_plus(suite.prf, seed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    cuts, pos = [], 0
    for n in (p, a, a, e, e, p, p):
        cuts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(suite, *cuts)


def derive_ike_keys(suite: Suite, ni: bytes, nr: bytes, shared_secret: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """Keys of a new IKE SA after IKE_SA_INIT (RFC 7296 §2.14)."""
    return _split(suite, skeyseed(suite.prf, ni, nr, shared_secret), ni, nr, spi_i, spi_r)


def additional_skeyseed(prf_id: int, sk_d: bytes, shared_secret: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) (RFC 9370 §2.2.2); the same formula as the
    IKE SA rekey SKEYSEED of RFC 7296 §2.18 with the new nonces."""
    return prf(prf_id, sk_d, shared_secret + ni + nr)


def update_ike_keys(keys: IkeKeys, shared_secret: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """All keys after one more key exchange in IKE_INTERMEDIATE (RFC 9370 §2.2.2); ``ni``/``nr``
    are the IKE_SA_INIT nonces, ``shared_secret`` SK(n) (the ML-KEM shared key)."""
    seed = additional_skeyseed(keys.suite.prf, keys.sk_d, shared_secret, ni, nr)
    return _split(keys.suite, seed, ni, nr, spi_i, spi_r)


def ppk_update(keys: IkeKeys, ppk: bytes) -> IkeKeys:
    """The keys after mixing in a post-quantum preshared key (RFC 8784 §3): SK_d, SK_pi and
    SK_pr become ``prf+(PPK, SK_x)`` of the PRF's preferred key size; SK_e and SK_a (what
    protected IKE_SA_INIT's followers already) are unchanged."""
    n = prf_size(keys.suite.prf)
    return replace(keys, sk_d=prf_plus(keys.suite.prf, ppk, keys.sk_d, n),
                   sk_pi=prf_plus(keys.suite.prf, ppk, keys.sk_pi, n),
                   sk_pr=prf_plus(keys.suite.prf, ppk, keys.sk_pr, n))
