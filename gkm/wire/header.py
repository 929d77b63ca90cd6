"""The ISAKMP header (RFC 2408 §3.1) and the generic payload header (RFC 2408 §3.2).

::

                         1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    !                          Initiator                            !
    !                            Cookie                             !
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    !                          Responder                            !
    !                            Cookie                             !
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    !  Next Payload ! MjVer ! MnVer ! Exchange Type !     Flags     !
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    !                          Message ID                           !
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    !                            Length                             !
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

``Header`` holds what the sender chooses.  Next Payload and Length follow from the payload chain
and are filled in by the encoder (:func:`gkm.wire.message.encode_message`); :func:`decode_header`
returns them next to the ``Header`` so a receiver can check the length and decrypt before the
body is decoded.  For GROUPKEY-PUSH the two cookies are the 16-byte KEK SPI (RFC 6407 §4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import HEADER_LENGTH, ISAKMP_VERSION, ExchangeType, Flags
from ._fast import maker
from .errors import WireError

_HEADER = struct.Struct("!8s8sBBBBII")
_header_unpack = _HEADER.unpack_from
_header_pack = _HEADER.pack

_EXCHANGE = ExchangeType._value2member_map_
_FLAG_CACHE = {i: Flags(i) for i in range(8)}
_KNOWN_FLAGS = 0x07


@dataclass(frozen=True, slots=True)
class Header:
    """ISAKMP header fields chosen by the sender (no Next Payload, no Length)."""

    icookie: bytes
    rcookie: bytes
    exchange: ExchangeType | int
    flags: Flags | int = Flags.NONE
    message_id: int = 0
    version: int = ISAKMP_VERSION

    @property
    def encrypted(self) -> bool:
        return bool(int(self.flags) & 1)  # int(): Flag.__and__ is slow Python code

    @property
    def spi(self) -> bytes:
        """Both cookies: the ISAKMP SA / KEK SPI (RFC 2408 §3.1, RFC 6407 §4)."""
        return self.icookie + self.rcookie


_make_header = maker(Header)


def decode_header(data: bytes) -> tuple[Header, int, int]:
    """Decode the 28-byte header: ``(header, next_payload, length)``.

    Checks the version (major 1, RFC 2408 §5.1 step 3; the minor version is kept and not checked)
    and the flags (undefined bits refused, RFC 2408 §3.1 "all other bits ... 0").  The length
    field is returned unchecked: see :func:`gkm.wire.message.decode_message`.
    """
    if len(data) < HEADER_LENGTH:
        raise WireError("header", 0, f"truncated: {len(data)} of {HEADER_LENGTH} bytes")
    icookie, rcookie, np, version, exchange, flags, message_id, length = _header_unpack(data, 0)
    if version >> 4 != 1:
        raise WireError("header", 17, f"unsupported major version {version >> 4}")
    if flags & ~_KNOWN_FLAGS:
        raise WireError("header", 19, f"undefined flag bits 0x{flags:02x}")
    return _make_header(icookie, rcookie, _EXCHANGE.get(exchange, exchange), _FLAG_CACHE[flags], message_id, version), np, length


def encode_header(header: Header, next_payload: int, length: int) -> bytes:
    try:
        if len(header.icookie) != 8 or len(header.rcookie) != 8:
            raise WireError("header", -1, "cookies must be 8 bytes each")
        if header.version >> 4 != 1:
            raise WireError("header", -1, f"major version must be 1, not {header.version >> 4}")
        if int(header.flags) & ~_KNOWN_FLAGS:
            raise WireError("header", -1, f"undefined flag bits 0x{int(header.flags):02x}")
        return _header_pack(
            header.icookie, header.rcookie, next_payload, header.version, header.exchange,
            header.flags, header.message_id, length,
        )
    except struct.error as e:
        raise WireError("header", -1, str(e)) from None


def is_ikev2(data: bytes) -> bool:
    """Major version 2 in the header's version octet (offset 17 in both RFC 2408 §3.1's and RFC
    7296 §3.1's header): the one test that tells a G-IKEv2 datagram from a GDOI one on a port or
    rekey address both protocols share.  Nothing else is decoded."""
    return len(data) > 17 and data[17] >> 4 == 2
