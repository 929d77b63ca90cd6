"""IKEv2 header (RFC 7296 §3.1), generic payload chain (§3.2) and whole messages.

::

    SPIi (8) | SPIr (8) | Next Payload | MjVer|MnVer | Exchange Type | Flags | Message ID | Length

Reading::

    msg = decode_message(datagram)        # Message(header, payloads); SK stays framed
    sk = msg.encrypted                    # Encrypted(first_payload, body) or None
    inner = decode_payloads(plain, sk.first_payload, 0, len(plain))   # after sk.unprotect

Rules (decisions where RFC 7296 leaves a choice):

* Major version must be 2; other majors are refused (the engine answers INVALID_MAJOR_VERSION,
  §2.5).  The minor version is kept and not checked.  Reserved flag bits are ignored on receipt
  and dropped (§3.1 "MUST be ignored"), so ``Header.flags`` holds only I, V, R.
* The Length field must equal the datagram length: one message per datagram, no trailing bytes.
* The critical bit (§2.5, §3.2): a payload of unknown type with the bit set makes the whole
  message fail with :class:`~.errors.UnsupportedCriticalPayload`; without it the payload is
  skipped and kept as :class:`~.payloads.UnknownPayload`.  For the types RFC 7296 and RFC 9838
  define the bit is ignored (and re-encoded as zero), except for CP/EAP/GSPM/SKF, which this
  codec keeps opaque with their bit.  The 7 RESERVED bits of the generic header are ignored.
* SK must be the last payload (§3.14): its Next Payload names the first inner payload and no
  byte may follow it.  Inner payloads are decoded with :func:`decode_payloads` after
  decryption, where a second SK is refused.

Bounds: at most :data:`MAX_PAYLOADS` payloads per chain; every element takes at least 4 bytes of
input; nothing is allocated from a count field; the reader never recurses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Union

from .constants import HEADER_LENGTH, IKEV2_VERSION, ExchangeType, HeaderFlags, PayloadType
from .errors import UnsupportedCriticalPayload, WireError
from .gsa import GroupSa, KeyDownload
from .payloads import (
    Authentication, Certificate, CertificateRequest, Delete, Encrypted, IdGroup, IdInitiator, IdResponder,
    KeyExchange, Nonce, Notify, SecurityAssociation, TsInitiator, TsResponder, UnknownPayload, VendorId,
)

Payload = Union[
    SecurityAssociation, KeyExchange, IdInitiator, IdResponder, IdGroup, Certificate, CertificateRequest,
    Authentication, Nonce, Notify, Delete, VendorId, TsInitiator, TsResponder, GroupSa, KeyDownload,
    Encrypted, UnknownPayload,
]

MAX_MESSAGE_LENGTH = 65535
MAX_PAYLOADS = 128
_HEADER = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")
_KNOWN_FLAGS = HeaderFlags.INITIATOR | HeaderFlags.VERSION | HeaderFlags.RESPONSE
_EXCHANGE = ExchangeType._value2member_map_
_NAMES = {t: t.name for t in PayloadType}
_DECODERS = {
    cls.TYPE: cls.decode
    for cls in (
        SecurityAssociation, KeyExchange, IdInitiator, IdResponder, IdGroup, Certificate, CertificateRequest,
        Authentication, Nonce, Notify, Delete, VendorId, TsInitiator, TsResponder, GroupSa, KeyDownload,
    )
}
#: Defined types this codec keeps opaque (their critical bit is kept, never refused).
_OPAQUE = frozenset((PayloadType.CP, PayloadType.EAP, PayloadType.GSPM, PayloadType.SKF))


@dataclass(frozen=True, slots=True)
class Header:
    """Header fields chosen by the sender (Next Payload and Length follow from the chain)."""

    spi_i: bytes
    spi_r: bytes
    exchange: ExchangeType | int
    flags: int = 0
    message_id: int = 0
    version: int = IKEV2_VERSION

    @property
    def initiator(self) -> bool:
        """I flag: the sender is the original initiator of the IKE SA."""
        return bool(self.flags & HeaderFlags.INITIATOR)

    @property
    def response(self) -> bool:
        return bool(self.flags & HeaderFlags.RESPONSE)

    def encode(self, next_payload: int, length: int) -> bytes:
        if len(self.spi_i) != 8 or len(self.spi_r) != 8:
            raise WireError("header", -1, "SPIs must be 8 bytes each")
        if self.version >> 4 != 2:
            raise WireError("header", -1, f"major version must be 2, not {self.version >> 4}")
        if self.flags & ~_KNOWN_FLAGS:
            raise WireError("header", -1, f"reserved flag bits 0x{self.flags:02x}")
        try:
            return _HEADER.pack(self.spi_i, self.spi_r, next_payload, self.version, self.exchange, self.flags,
                                self.message_id, length)
        except struct.error as e:
            raise WireError("header", -1, str(e)) from None


def decode_header(data: bytes) -> tuple[Header, int, int]:
    """``(header, next_payload, length)``; the length is returned unchecked."""
    if len(data) < HEADER_LENGTH:
        raise WireError("header", 0, f"truncated: {len(data)} of {HEADER_LENGTH} bytes")
    spi_i, spi_r, np, version, exchange, flags, message_id, length = _HEADER.unpack_from(data, 0)
    if version >> 4 != 2:
        raise WireError("header", 17, f"unsupported major version {version >> 4} (RFC 7296 §2.5)")
    return Header(spi_i, spi_r, _EXCHANGE.get(exchange, exchange), flags & _KNOWN_FLAGS, message_id, version), np, length


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    payloads: tuple[Payload, ...]

    @property
    def encrypted(self) -> Encrypted | None:
        last = self.payloads[-1] if self.payloads else None
        return last if type(last) is Encrypted else None

    @property
    def unknown(self) -> tuple[UnknownPayload, ...]:
        return tuple(p for p in self.payloads if type(p) is UnknownPayload)

    def get(self, cls: type, default=None):
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return default

    def all(self, cls: type) -> tuple:
        return tuple(p for p in self.payloads if isinstance(p, cls))

    def types(self) -> tuple[int, ...]:
        return tuple(p.TYPE for p in self.payloads)

    def to_bytes(self) -> bytes:
        return encode_message(self.header, self.payloads)


def decode_payloads(buf: bytes, next_payload: int, pos: int, end: int, *, allow_sk: bool = False) -> tuple[Payload, ...]:
    """Decode the whole chain in ``buf[pos:end]`` starting with type ``next_payload``.

    With ``allow_sk`` an SK payload may end the chain (a message's outer chain); otherwise (the
    inner chain of an SK payload) SK is refused.  The chain must end exactly at ``end``."""
    out = []
    np = next_payload
    while np:
        name = _NAMES.get(np, str(np))
        if end - pos < 4:
            raise WireError(name, pos, f"truncated generic payload header ({end - pos} bytes left)")
        if len(out) == MAX_PAYLOADS:
            raise WireError(name, pos, f"more than {MAX_PAYLOADS} payloads in one chain")
        nnp, flags, length = _GEN.unpack_from(buf, pos)
        pend = pos + length
        if length < 4 or pend > end:
            raise WireError(name, pos + 2, f"payload length {length} outside 4..{end - pos}")
        dec = _DECODERS.get(np)
        if dec is not None:
            out.append(dec(buf, pos + 4, pend))
        elif np == PayloadType.SK:
            if not allow_sk:
                raise WireError("SK", pos, "SK payload inside an SK payload")
            if pend != end:
                raise WireError("SK", pend, f"{end - pend} bytes after the SK payload, which must be last (RFC 7296 §3.14)")
            out.append(Encrypted(nnp, buf[pos + 4 : pend]))
            return tuple(out)
        elif np in _OPAQUE:
            out.append(UnknownPayload(np, buf[pos + 4 : pend], bool(flags & 0x80)))
        elif flags & 0x80:
            raise UnsupportedCriticalPayload(name, pos + 1, f"unknown payload type {np} with the critical bit set (RFC 7296 §2.5)", np)
        else:
            out.append(UnknownPayload(np, buf[pos + 4 : pend]))
        np = nnp
        pos = pend
    if pos != end:
        raise WireError("message", pos, f"{end - pos} bytes after the last payload")
    return tuple(out)


def decode_message(data: bytes) -> Message:
    header, np, length = decode_header(data)
    n = len(data)
    if n > MAX_MESSAGE_LENGTH:
        raise WireError("header", 24, f"message of {n} bytes, more than {MAX_MESSAGE_LENGTH}")
    if length != n:
        raise WireError("header", 24, f"Length field {length} but the message has {n} bytes")
    data = bytes(data)
    return Message(header, decode_payloads(data, np, HEADER_LENGTH, n, allow_sk=True))


def encode_payloads(payloads: Iterable[Payload]) -> tuple[int, bytes]:
    """``(type of the first payload, chain bytes)``.  An :class:`Encrypted` payload must be last;
    its Next Payload field is its ``first_payload``."""
    payloads = tuple(payloads)
    parts = []
    np = 0
    for i in range(len(payloads) - 1, -1, -1):
        p = payloads[i]
        body = p.encode()
        n = len(body) + 4
        if n > 0xFFFF:
            raise WireError(type(p).__name__, -1, f"payload too long ({n} bytes)")
        crit = 0x80 if type(p) is UnknownPayload and p.critical else 0
        if type(p) is Encrypted:
            if i != len(payloads) - 1:
                raise WireError("SK", -1, "the SK payload must be the last payload (RFC 7296 §3.14)")
            nxt = p.first_payload
        else:
            nxt = np
        if not 0 <= p.TYPE <= 0xFF or not 0 <= nxt <= 0xFF:
            raise WireError(type(p).__name__, -1, "payload type out of range")
        parts.append(body)
        parts.append(_GEN.pack(nxt, crit, n))
        np = p.TYPE
    parts.reverse()
    return np, b"".join(parts)


def encode_payload(payload: Payload, next_payload: int = 0) -> bytes:
    """One payload with its generic header (for AUTH / SK framing inputs)."""
    body = payload.encode()
    return _GEN.pack(next_payload, 0, len(body) + 4) + body


def encode_message(header: Header, payloads: Iterable[Payload]) -> bytes:
    np, body = encode_payloads(payloads)
    length = HEADER_LENGTH + len(body)
    if length > MAX_MESSAGE_LENGTH:
        raise WireError("message", -1, f"message of {length} bytes, more than {MAX_MESSAGE_LENGTH}")
    return header.encode(np, length) + body
