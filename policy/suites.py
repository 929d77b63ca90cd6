"""Algorithm tables: the one place where a suite name meets its protocol and kernel numbers.

Both mappings read this module and nothing else: the GDOI wire mapping (SA TEK / SA KEK
attributes, KD key lengths) and the XFRM installer (crypto-API names, key and ICV/truncation
bits). A suite is chosen in the configuration by its name (the dictionary keys below).

Sources
-------
- ESP transform IDs (SA TEK "Transform ID"): IANA "IPsec ESP Transform Identifiers",
  RFC 2407 section 4.4.4 plus ESP_AES_CBC = 12 (RFC 3602 section 5.1) and
  ESP_AES_GCM_16 = 20 (RFC 4106 section 8.3, 16-octet ICV).
- RFC 2407 SA attribute "Key Length" (class 6) carries the AES key length in bits; for GCM the
  4-octet salt is *not* counted (RFC 4106 section 8.4), but it is part of the KEYMAT carried in
  the KD payload's TEK_ALGORITHM_KEY (RFC 6407 section 5.6.1, RFC 4106 section 8.1).
- RFC 2407 SA attribute "Authentication Algorithm" (class 5): HMAC-SHA2-256 = 5, -384 = 6,
  -512 = 7 (RFC 4868 section 2.4, "IKE Phase 2"). The HMAC key is as long as the hash output
  (RFC 4868 section 2.1.1; RFC 6407 section 5.6.1.2) and the ICV is truncated to half of it
  (RFC 4868 section 2.1.1: 128, 192, 256 bits).
- KEK_ALGORITHM (RFC 6407 section 5.3.2): KEK_ALG_AES = 3 is AES in CBC mode. RFC 6407 defines
  no AES-GCM KEK algorithm, so none is offered here (a configuration asking for one gets an
  explanation, see `KEK_CIPHERS_REFUSED`).
- SIG_ALGORITHM / SIG_HASH_ALGORITHM (RFC 6407 sections 5.3.5, 5.3.6): SIG_ALG_RSA = 1 is
  RSASSA-PKCS1-v1_5; SIG_ALG_ECDSA-256/384/521 = 4/5/6 imply their hash. RSA-PSS has no code point.

Kernel names are Linux crypto-API names as XFRM expects them in `xfrm_algo`,
`xfrm_algo_auth` (with `alg_trunc_len`) and `xfrm_algo_aead` (with `alg_icv_len`); the AEAD key
given to the kernel is key || salt, so its length in bits includes the 32 salt bits.

A note on AES-GCM in multi-sender groups: all senders share one key, and GCM must never see a
(key, nonce) pair twice. RFC 6054 solves this with per-sender IDs; msec does not implement that
yet. Linux's `seqiv` IV generator XORs the sequence number with a random per-SA value, so senders'
IVs collide only with small probability. Use AES-CBC + HMAC, or short TEK lifetimes, when that is
not good enough; see `EspSuite.counter_mode`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "EspTransformId",
    "AuthAlgorithm",
    "KekAlgorithm",
    "SigAlgorithm",
    "SigHashAlgorithm",
    "XfrmAlgorithm",
    "EspSuite",
    "KekCipher",
    "SignatureSuite",
    "ESP_SUITES",
    "KEK_CIPHERS",
    "KEK_CIPHERS_REFUSED",
    "SIGNATURE_SUITES",
    "SIGNATURE_SUITES_REFUSED",
    "GCM_SALT_BYTES",
    "PHASE1_CIPHERS",
    "PHASE1_HASHES",
    "PHASE1_DH_GROUPS",
    "PHASE1_AUTH",
    "PHASE1_REFUSED",
]

GCM_SALT_BYTES = 4
"""RFC 4106 section 8.1: the salt that follows the AES key in GCM KEYMAT."""


class EspTransformId(enum.IntEnum):
    """IANA IPsec ESP Transform Identifiers (the SA TEK payload's Transform ID octet)."""

    ESP_AES_CBC = 12  # RFC 3602
    ESP_AES_GCM_16 = 20  # RFC 4106, 16-octet ICV


class AuthAlgorithm(enum.IntEnum):
    """RFC 2407 section 4.5 "Authentication Algorithm" attribute values (RFC 4868 section 2.4)."""

    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class KekAlgorithm(enum.IntEnum):
    """RFC 6407 section 5.3.2 KEK_ALGORITHM."""

    KEK_ALG_AES = 3  # AES-CBC


class SigAlgorithm(enum.IntEnum):
    """RFC 6407 section 5.3.6 SIG_ALGORITHM."""

    SIG_ALG_RSA = 1  # RSASSA-PKCS1-v1_5
    SIG_ALG_ECDSA_256 = 4
    SIG_ALG_ECDSA_384 = 5
    SIG_ALG_ECDSA_521 = 6


class SigHashAlgorithm(enum.IntEnum):
    """RFC 6407 section 5.3.5 SIG_HASH_ALGORITHM."""

    SIG_HASH_SHA256 = 3
    SIG_HASH_SHA384 = 4
    SIG_HASH_SHA512 = 5


@dataclass(frozen=True, slots=True)
class XfrmAlgorithm:
    """One XFRM algorithm: crypto-API name, key length given to the kernel, ICV/truncation bits.

    `icv_bits` is `alg_icv_len` for AEAD and `alg_trunc_len` for authentication; 0 for
    plain encryption.
    """

    name: str
    key_bits: int
    icv_bits: int = 0


@dataclass(frozen=True, slots=True)
class EspSuite:
    """An ESP TEK suite in protocol terms, plus its XFRM rendering.

    Exactly one of `xfrm_aead` or (`xfrm_enc`, `xfrm_auth`) is set.
    """

    name: str
    transform_id: EspTransformId
    key_length_bits: int  # RFC 2407 "Key Length" attribute (AES key only)
    auth_algorithm: AuthAlgorithm | None  # RFC 2407 "Authentication Algorithm"; None for AEAD
    enc_key_bytes: int  # TEK_ALGORITHM_KEY length in the KD payload (GCM: key + salt)
    integrity_key_bytes: int  # TEK_INTEGRITY_KEY length; 0 for AEAD
    icv_bytes: int
    xfrm_aead: XfrmAlgorithm | None = None
    xfrm_enc: XfrmAlgorithm | None = None
    xfrm_auth: XfrmAlgorithm | None = None

    @property
    def aead(self) -> bool:
        return self.xfrm_aead is not None

    @property
    def counter_mode(self) -> bool:
        """True when the cipher must never reuse an IV under one key (GCM); see module doc."""
        return self.transform_id == EspTransformId.ESP_AES_GCM_16

    @property
    def keymat_bytes(self) -> int:
        """Total key material per TEK (encryption key, salt and integrity key)."""
        return self.enc_key_bytes + self.integrity_key_bytes


def _gcm(bits: int) -> EspSuite:
    return EspSuite(
        name=f"aes-gcm-{bits}",
        transform_id=EspTransformId.ESP_AES_GCM_16,
        key_length_bits=bits,
        auth_algorithm=None,
        enc_key_bytes=bits // 8 + GCM_SALT_BYTES,
        integrity_key_bytes=0,
        icv_bytes=16,
        xfrm_aead=XfrmAlgorithm("rfc4106(gcm(aes))", bits + 8 * GCM_SALT_BYTES, 128),
    )


_HMAC = {
    256: AuthAlgorithm.HMAC_SHA2_256,
    384: AuthAlgorithm.HMAC_SHA2_384,
    512: AuthAlgorithm.HMAC_SHA2_512,
}


def _cbc(bits: int, sha: int) -> EspSuite:
    return EspSuite(
        name=f"aes-cbc-{bits}-hmac-sha{sha}",
        transform_id=EspTransformId.ESP_AES_CBC,
        key_length_bits=bits,
        auth_algorithm=_HMAC[sha],
        enc_key_bytes=bits // 8,
        integrity_key_bytes=sha // 8,  # RFC 4868 2.1.1: key length = output length
        icv_bytes=sha // 16,  # RFC 4868 2.1.1: truncated to half the output
        xfrm_enc=XfrmAlgorithm("cbc(aes)", bits),
        xfrm_auth=XfrmAlgorithm(f"hmac(sha{sha})", sha, sha // 2),
    )


ESP_SUITES: Mapping[str, EspSuite] = MappingProxyType(
    {
        s.name: s
        for s in (
            _gcm(128),
            _gcm(256),
            *(_cbc(bits, sha) for bits in (128, 256) for sha in (256, 384, 512)),
        )
    }
)
"""TEK suites by configuration name."""


@dataclass(frozen=True, slots=True)
class KekCipher:
    """The cipher protecting GROUPKEY-PUSH messages (RFC 6407 sections 5.3.2, 5.3.3)."""

    name: str
    algorithm: KekAlgorithm
    key_length_bits: int  # KEK_KEY_LENGTH
    block_bytes: int = 16  # IV length for CBC

    @property
    def key_bytes(self) -> int:
        return self.key_length_bits // 8


KEK_CIPHERS: Mapping[str, KekCipher] = MappingProxyType(
    {
        "aes-cbc-128": KekCipher("aes-cbc-128", KekAlgorithm.KEK_ALG_AES, 128),
        "aes-cbc-256": KekCipher("aes-cbc-256", KekAlgorithm.KEK_ALG_AES, 256),
    }
)

KEK_CIPHERS_REFUSED: Mapping[str, str] = MappingProxyType(
    {
        name: "RFC 6407 defines no AES-GCM KEK_ALGORITHM (KEK_ALG_AES is CBC)"
        for name in ("aes-gcm-128", "aes-gcm-256")
    }
)
"""Names people will try, with the reason they are refused."""


@dataclass(frozen=True, slots=True)
class SignatureSuite:
    """How GROUPKEY-PUSH messages are signed (RFC 6407 sections 5.3.5 to 5.3.7).

    `hash_algorithm` is sent as SIG_HASH_ALGORITHM; for ECDSA it is implicit in the algorithm
    (RFC 6407 section 5.3.5) and kept here for the signer. `key_type` is "rsa" or "ec";
    `curve` names the EC curve (cryptography's name) and `min_key_bits` the RSA minimum.
    """

    name: str
    algorithm: SigAlgorithm
    hash_algorithm: SigHashAlgorithm
    hash_name: str  # hashlib / cryptography name
    key_type: str
    curve: str | None = None
    min_key_bits: int = 0

    @property
    def hash_implicit(self) -> bool:
        return self.key_type == "ec"


SIGNATURE_SUITES: Mapping[str, SignatureSuite] = MappingProxyType(
    {
        "rsa-pkcs1-sha256": SignatureSuite(
            "rsa-pkcs1-sha256", SigAlgorithm.SIG_ALG_RSA, SigHashAlgorithm.SIG_HASH_SHA256,
            "sha256", "rsa", min_key_bits=2048,
        ),
        "rsa-pkcs1-sha384": SignatureSuite(
            "rsa-pkcs1-sha384", SigAlgorithm.SIG_ALG_RSA, SigHashAlgorithm.SIG_HASH_SHA384,
            "sha384", "rsa", min_key_bits=2048,
        ),
        "rsa-pkcs1-sha512": SignatureSuite(
            "rsa-pkcs1-sha512", SigAlgorithm.SIG_ALG_RSA, SigHashAlgorithm.SIG_HASH_SHA512,
            "sha512", "rsa", min_key_bits=2048,
        ),
        "ecdsa-p256": SignatureSuite(
            "ecdsa-p256", SigAlgorithm.SIG_ALG_ECDSA_256, SigHashAlgorithm.SIG_HASH_SHA256,
            "sha256", "ec", curve="secp256r1",
        ),
        "ecdsa-p384": SignatureSuite(
            "ecdsa-p384", SigAlgorithm.SIG_ALG_ECDSA_384, SigHashAlgorithm.SIG_HASH_SHA384,
            "sha384", "ec", curve="secp384r1",
        ),
        "ecdsa-p521": SignatureSuite(
            "ecdsa-p521", SigAlgorithm.SIG_ALG_ECDSA_521, SigHashAlgorithm.SIG_HASH_SHA512,
            "sha512", "ec", curve="secp521r1",
        ),
    }
)

SIGNATURE_SUITES_REFUSED: Mapping[str, str] = MappingProxyType(
    {
        name: "RFC 6407 has no SIG_ALGORITHM value for RSA-PSS (SIG_ALG_RSA is PKCS#1 v1.5)"
        for name in ("rsa-pss", "rsa-pss-sha256", "rsa-pss-sha384", "rsa-pss-sha512")
    }
)


# --------------------------------------------------------------------------- phase 1 (Main Mode)
# IKEv1 phase 1 suites by configuration name: RFC 2409 Appendix A attribute values (Encryption
# Algorithm AES-CBC = 7 with Key Length in bits, RFC 3602; Hash Algorithm SHA2-256/384/512 =
# 4/5/6, RFC 4868, also the HMAC PRF; Group Description, RFC 3526 / RFC 5903). gkm.gdoi.phase1
# turns them into the engine's proposals.

PHASE1_CIPHERS: Mapping[str, int] = MappingProxyType(
    {"aes-cbc-128": 128, "aes-cbc-192": 192, "aes-cbc-256": 256})
"""Phase 1 cipher name -> AES key length in bits (AES-CBC is the only cipher)."""

PHASE1_HASHES: Mapping[str, int] = MappingProxyType({"sha2-256": 4, "sha2-384": 5, "sha2-512": 6})
"""Phase 1 hash (and HMAC PRF) name -> Hash Algorithm attribute value."""

PHASE1_DH_GROUPS: Mapping[int, str] = MappingProxyType(
    {19: "ECP-256", 20: "ECP-384", 21: "ECP-521", 14: "MODP-2048"})
"""Diffie-Hellman groups by Group Description number. A key server pays a DH per message 3,
so the expensive ones (21, and 14 at several times the cost of 19) are a flood's best lever."""

PHASE1_AUTH = ("psk", "certificate")
"""Key server phase 1 authentication kinds; with "certificate" the method follows the key
(RSA signatures, ECDSA-256/384/521 with P-256/384/521)."""

PHASE1_REFUSED: Mapping[str, str] = MappingProxyType({
    "des": "DES is broken", "3des": "3DES has 64-bit blocks (Sweet32)",
    "aes-cbc": "name the key length: aes-cbc-128, aes-cbc-192 or aes-cbc-256",
    "md5": "MD5 is broken", "sha1": "SHA-1 is deprecated for IKE (RFC 8247)",
    "1": "MODP-768 is broken", "2": "MODP-1024 is too weak (RFC 8247)",
    "5": "MODP-1536 is too weak (RFC 8247)",
})
"""Phase 1 names and groups refused with a reason (weak; the engine could negotiate some)."""
