"""ESP algorithms msec installs, by Linux crypto-API name, with their key and ICV rules.

Only these are accepted on install; anything else is refused with :class:`InvalidArgument`
before it reaches the kernel. Decoded states may carry other algorithms (installed by someone
else); they decode fine and are simply never produced by msec.

* AEAD ``rfc4106(gcm(aes))`` (RFC 4106): key 16/24/32 bytes + 4 byte salt, ICV 8/12/16 bytes.
* AEAD ``rfc7539esp(chacha20,poly1305)`` (RFC 7634): key 32 bytes + 4 byte salt, ICV 16 bytes.
* ``cbc(aes)`` (RFC 3602) key 16/24/32 bytes, with ``hmac(sha256|sha384|sha512)`` truncated
  per RFC 4868: key length = hash length (32/48/64 bytes), ICV 128/192/256 bits.
"""

from __future__ import annotations

from .errors import InvalidArgument
from .model import Aead, Auth, Cipher

__all__ = [
    "AES_GCM", "CHACHA20_POLY1305", "AES_CBC", "HMAC_SHA256", "HMAC_SHA384", "HMAC_SHA512",
    "aes_gcm", "chacha20_poly1305", "aes_cbc", "hmac_sha2", "check_algorithms",
]

AES_GCM = "rfc4106(gcm(aes))"
CHACHA20_POLY1305 = "rfc7539esp(chacha20,poly1305)"
AES_CBC = "cbc(aes)"
HMAC_SHA256 = "hmac(sha256)"
HMAC_SHA384 = "hmac(sha384)"
HMAC_SHA512 = "hmac(sha512)"

# name -> (allowed key lengths in bytes, allowed ICV lengths in bits)
AEADS: dict[str, tuple[frozenset[int], frozenset[int]]] = {
    AES_GCM: (frozenset({20, 28, 36}), frozenset({64, 96, 128})),
    CHACHA20_POLY1305: (frozenset({36}), frozenset({128})),
}
CIPHERS: dict[str, frozenset[int]] = {AES_CBC: frozenset({16, 24, 32})}
# name -> (key length in bytes, truncation in bits), RFC 4868 section 2.1
AUTHS: dict[str, tuple[int, int]] = {
    HMAC_SHA256: (32, 128),
    HMAC_SHA384: (48, 192),
    HMAC_SHA512: (64, 256),
}


def aes_gcm(key: bytes, icv_bytes: int = 16) -> Aead:
    """AES-GCM for ESP; ``key`` is the AES key followed by the 4 byte salt."""
    aead = Aead(AES_GCM, key, icv_bytes * 8)
    _check_aead(aead, "aead")
    return aead


def chacha20_poly1305(key: bytes) -> Aead:
    """ChaCha20-Poly1305 for ESP; ``key`` is the 32 byte key followed by the 4 byte salt."""
    aead = Aead(CHACHA20_POLY1305, key, 128)
    _check_aead(aead, "aead")
    return aead


def aes_cbc(key: bytes) -> Cipher:
    cipher = Cipher(AES_CBC, key)
    _check_cipher(cipher, "cipher")
    return cipher


def hmac_sha2(bits: int, key: bytes) -> Auth:
    """HMAC-SHA-256/384/512 truncated to half its length (RFC 4868)."""
    name = {256: HMAC_SHA256, 384: HMAC_SHA384, 512: HMAC_SHA512}.get(bits)
    if name is None:
        raise InvalidArgument("auth.name", f"no HMAC-SHA2 with {bits} bits (256, 384, 512)")
    auth = Auth(name, key, AUTHS[name][1])
    _check_auth(auth, "auth")
    return auth


def check_algorithms(aead: Aead | None, cipher: Cipher | None, auth: Auth | None,
                     where: str = "state") -> None:
    """Refuse a combination msec does not install: exactly an AEAD, or cbc(aes) + HMAC."""
    if aead is not None:
        if cipher is not None or auth is not None:
            raise InvalidArgument(f"{where}.aead", "an AEAD excludes cipher and auth")
        _check_aead(aead, f"{where}.aead")
        return
    if cipher is None or auth is None:
        raise InvalidArgument(f"{where}.aead", "need an AEAD, or a cipher and an auth")
    _check_cipher(cipher, f"{where}.cipher")
    _check_auth(auth, f"{where}.auth")


def _check_aead(aead: Aead, where: str) -> None:
    rule = AEADS.get(aead.name)
    if rule is None:
        raise InvalidArgument(f"{where}.name", f"unknown AEAD {aead.name!r} "
                              f"(known: {', '.join(sorted(AEADS))})")
    keys, icvs = rule
    if len(aead.key) not in keys:
        raise InvalidArgument(f"{where}.key", f"{aead.name} takes a key of "
                              f"{'/'.join(map(str, sorted(keys)))} bytes (with salt), "
                              f"got {len(aead.key)}")
    if aead.icv_bits not in icvs:
        raise InvalidArgument(f"{where}.icv_bits", f"{aead.name} takes an ICV of "
                              f"{'/'.join(map(str, sorted(icvs)))} bits, got {aead.icv_bits}")


def _check_cipher(cipher: Cipher, where: str) -> None:
    keys = CIPHERS.get(cipher.name)
    if keys is None:
        raise InvalidArgument(f"{where}.name", f"unknown cipher {cipher.name!r} "
                              f"(known: {', '.join(sorted(CIPHERS))})")
    if len(cipher.key) not in keys:
        raise InvalidArgument(f"{where}.key", f"{cipher.name} takes a key of "
                              f"{'/'.join(map(str, sorted(keys)))} bytes, got {len(cipher.key)}")


def _check_auth(auth: Auth, where: str) -> None:
    rule = AUTHS.get(auth.name)
    if rule is None:
        raise InvalidArgument(f"{where}.name", f"unknown auth {auth.name!r} "
                              f"(known: {', '.join(sorted(AUTHS))})")
    key_len, trunc = rule
    if len(auth.key) != key_len:
        raise InvalidArgument(f"{where}.key", f"{auth.name} takes a key of {key_len} bytes "
                              f"(RFC 4868), got {len(auth.key)}")
    if auth.trunc_bits != trunc:
        raise InvalidArgument(f"{where}.trunc_bits", f"{auth.name} is truncated to {trunc} "
                              f"bits (RFC 4868), got {auth.trunc_bits}")
