"""The Encrypted (SK) payload, RFC 7296 §3.14: protect and unprotect whole messages.

::

    SK body = IV | E(inner payload chain | padding | pad length) | ICV

* AES-CBC (RFC 3602) + HMAC-SHA2 (RFC 4868): 16-byte random IV; the chain is padded to the
  block size (padding bytes zero); the ICV is the truncated HMAC under SK_a over the whole
  message from the IKE header through the ciphertext, checked in constant time before
  anything is decrypted.
* AES-GCM with a 16-byte ICV (RFC 5282): key = SK_e minus its last 4 bytes, nonce = those 4
  salt bytes | the 8-byte explicit IV; no padding (pad length 0); the associated data is the
  message from the IKE header through the SK generic payload header (RFC 5282 §5.1).

Which keys: the sender uses SK_ei/SK_ai when it is the original initiator (the I flag of the
header it writes, RFC 7296 §2.14), SK_er/SK_ar otherwise: :meth:`SkCipher.for_message`.
A failed check raises :class:`ProtectionError` (a :class:`~gkm.wire.errors.WireError` naming
"SK"), whose reason never includes key or plaintext bytes.  Errors in the decrypted chain
carry offsets into the plaintext chain.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .constants import HEADER_LENGTH, Encr
from .errors import WireError
from .keys import AEAD, GCM_SALT, INTEG, IkeKeys
from .message import Header, Message, decode_message, decode_payloads, encode_payloads
from .payloads import Encrypted

BLOCK = 16
GCM_IV = 8
GCM_ICV = 16
_GEN = struct.Struct("!BBH")


class ProtectionError(WireError):
    """The SK payload failed its integrity check or cannot be decrypted."""


@dataclass(frozen=True, slots=True)
class SkCipher:
    """One direction's SK algorithms and keys."""

    encr: Encr | int
    integ: int | None
    enc_key: bytes = field(repr=False)
    integ_key: bytes = field(repr=False, default=b"")

    @classmethod
    def for_sender(cls, keys: IkeKeys, initiator: bool) -> "SkCipher":
        s = keys.suite
        if initiator:
            return cls(s.encr, s.integ, keys.sk_ei, keys.sk_ai)
        return cls(s.encr, s.integ, keys.sk_er, keys.sk_ar)

    @classmethod
    def for_message(cls, keys: IkeKeys, header: Header) -> "SkCipher":
        return cls.for_sender(keys, header.initiator)

    @property
    def aead(self) -> bool:
        return self.encr in AEAD

    @property
    def overhead(self) -> tuple[int, int]:
        """(IV bytes, ICV bytes)."""
        if self.aead:
            return GCM_IV, GCM_ICV
        return BLOCK, INTEG[self.integ][2]


def protect(header: Header, inner: tuple, cipher: SkCipher, *, outer: tuple = (), iv: bytes | None = None) -> bytes:
    """The datagram: header, ``outer`` payloads in the clear, then SK holding ``inner``."""
    first, chain = encode_payloads(inner)
    iv_len, icv_len = cipher.overhead
    iv = os.urandom(iv_len) if iv is None else iv
    if len(iv) != iv_len:
        raise WireError("SK", -1, f"IV of {len(iv)} bytes, need {iv_len}")
    if cipher.aead:
        plain = chain + b"\x00"  # no padding, pad length 0
    else:
        pad = -(len(chain) + 1) % BLOCK
        plain = chain + bytes(pad) + bytes((pad,))
    outer_np, outer_bytes = encode_payloads(outer + (Encrypted(first, b""),))
    sk_len = 4 + iv_len + len(plain) + icv_len
    total = HEADER_LENGTH + len(outer_bytes) + sk_len - 4  # outer_bytes already has the empty SK's header
    if sk_len > 0xFFFF or total > 0xFFFF:
        raise WireError("SK", -1, f"message of {total} bytes")
    head = header.encode(outer_np, total) + outer_bytes[:-4] + _GEN.pack(first, 0, sk_len)
    if cipher.aead:
        key, salt = cipher.enc_key[:-GCM_SALT], cipher.enc_key[-GCM_SALT:]
        sealed = AESGCM(key).encrypt(salt + iv, plain, head)
        return head + iv + sealed
    enc = Cipher(algorithms.AES(cipher.enc_key), modes.CBC(iv)).encryptor()
    body = head + iv + enc.update(plain) + enc.finalize()
    name, _, n = INTEG[cipher.integ]
    return body + hmac.new(cipher.integ_key, body, name).digest()[:n]


def unprotect(data: bytes, cipher: SkCipher) -> Message:
    """Check and decrypt; the Message holds the clear payloads before SK followed by the inner ones."""
    return unprotect_chain(data, cipher)[0]


def unprotect_chain(data: bytes, cipher: SkCipher) -> tuple[Message, bytes]:
    """:func:`unprotect` plus the decrypted inner chain as sent (GSA_REKEY signatures cover it,
    RFC 9838 §2.4.1)."""
    msg = decode_message(data)
    sk = msg.encrypted
    if sk is None:
        raise WireError("SK", HEADER_LENGTH, "no SK payload")
    data = bytes(data)
    iv_len, icv_len = cipher.overhead
    body = sk.body
    sk_start = len(data) - len(body)
    if len(body) < iv_len + icv_len + (1 if cipher.aead else BLOCK):
        raise ProtectionError("SK", sk_start, f"SK payload of {len(body)} bytes is too short")
    iv = body[:iv_len]
    if cipher.aead:
        key, salt = cipher.enc_key[:-GCM_SALT], cipher.enc_key[-GCM_SALT:]
        try:
            plain = AESGCM(key).decrypt(salt + iv, body[iv_len:], data[:sk_start])
        except InvalidTag:
            raise ProtectionError("SK", sk_start, "integrity check failed (AES-GCM tag)") from None
    else:
        name, _, n = INTEG[cipher.integ]
        want = hmac.new(cipher.integ_key, data[:-icv_len], name).digest()[:n]
        if not hmac.compare_digest(want, data[-icv_len:]):
            raise ProtectionError("SK", len(data) - icv_len, "integrity check failed (ICV)")
        ct = body[iv_len:-icv_len]
        if len(ct) % BLOCK:
            raise ProtectionError("SK", sk_start + iv_len, f"ciphertext of {len(ct)} bytes is not a multiple of {BLOCK}")
        dec = Cipher(algorithms.AES(cipher.enc_key), modes.CBC(iv)).decryptor()
        plain = dec.update(ct) + dec.finalize()
    pad = plain[-1]
    if pad + 1 > len(plain):
        raise ProtectionError("SK", sk_start + iv_len, f"pad length {pad} exceeds the {len(plain)} decrypted bytes")
    chain = plain[: len(plain) - pad - 1]
    inner = decode_payloads(chain, sk.first_payload, 0, len(chain))
    return Message(msg.header, msg.payloads[:-1] + inner), chain


__all__ = ["ProtectionError", "SkCipher", "protect", "unprotect", "unprotect_chain"]
