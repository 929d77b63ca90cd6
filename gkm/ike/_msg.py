"""Phase 1 message framing used by the Main Mode engine.

This is a deliberately small adapter: the engine thinks of a message as a header plus a list of
``(payload type, body)`` pairs, because every phase 1 hash (SAi_b, IDii_b, Ni_b, ...) is taken
over payload *bodies* exactly as they travelled.  The structured codec of :mod:`gkm.wire` was
still being written when this module was; keeping the engine behind these few functions means it
can be switched to ``gkm.wire`` without touching the state machines.

Bodies encoded here: SA/Proposal/Transform for phase 1 (RFC 2408 §3.4-3.6, DOI 2 = GDOI per
RFC 6407 §2.1, situation 4 bytes), ID (RFC 2407 §4.6.2), CERT/CR (RFC 2408 §3.9/3.10),
Notification (§3.14) and Delete (§3.15).  Errors are :class:`MessageError` (a ``ValueError``)
naming the payload, offset and reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_LEN = 28
VERSION = 0x10

# Payload types (RFC 2408 §3.1)
SA, PROPOSAL, TRANSFORM, KE, ID, CERT, CR, HASH, SIG, NONCE, N, D, VID = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13
# Exchange types
EXCH_MAIN, EXCH_INFO, EXCH_PULL = 2, 5, 32
FLAG_E = 0x01
DOI_IPSEC, DOI_GDOI = 1, 2
PROTO_ISAKMP = 1
KEY_IKE = 1
CERT_X509_SIG = 4

_HDR = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")


class MessageError(ValueError):
    def __init__(self, payload: str, offset: int, reason: str) -> None:
        super().__init__(f"{payload} at offset {offset}: {reason}")
        self.payload = payload
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    icookie: bytes
    rcookie: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int


def decode_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise MessageError("header", 0, f"truncated ({len(data)} bytes)")
    ic, rc, np, ver, ex, fl, mid, length = _HDR.unpack_from(data)
    if ver >> 4 != 1:
        raise MessageError("header", 17, f"major version {ver >> 4}")
    if fl & ~0x07:
        raise MessageError("header", 19, f"undefined flags 0x{fl:02x}")
    if length != len(data):
        raise MessageError("header", 24, f"length field {length} != datagram size {len(data)}")
    return Header(ic, rc, np, ex, fl, mid, length)


def encode_header(icookie: bytes, rcookie: bytes, next_payload: int, exchange: int, flags: int, message_id: int, length: int) -> bytes:
    return _HDR.pack(icookie, rcookie, next_payload, VERSION, exchange, flags, message_id, length)


def encode_chain(payloads: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """``(first next-payload, chain bytes)`` for a list of ``(type, body)``."""
    out = []
    for i, (_ptype, body) in enumerate(payloads):
        np = payloads[i + 1][0] if i + 1 < len(payloads) else 0
        if len(body) + 4 > 0xFFFF:
            raise MessageError(f"payload {_ptype}", -1, "too long")
        out.append(_GEN.pack(np, 0, len(body) + 4) + body)
    return (payloads[0][0] if payloads else 0), b"".join(out)


def decode_chain(data: bytes, first: int, offset: int = 0, allow_trailing: bool = False) -> list[tuple[int, bytes]]:
    """Walk the generic payload headers.  ``allow_trailing``: ignore padding after the chain."""
    out = []
    pos, np = 0, first
    while np != 0:
        if len(data) - pos < 4:
            raise MessageError(f"payload {np}", offset + pos, "truncated generic header")
        nxt, _res, length = _GEN.unpack_from(data, pos)
        if length < 4 or pos + length > len(data):
            raise MessageError(f"payload {np}", offset + pos + 2, f"bad length {length}")
        out.append((np, data[pos + 4 : pos + length]))
        pos += length
        np = nxt
    if pos != len(data) and not allow_trailing:
        raise MessageError("message", offset + pos, f"{len(data) - pos} bytes after the last payload")
    return out


def chain_length(data: bytes, first: int) -> int:
    """Length of the chain at the start of ``data`` (to strip encryption padding)."""
    pos, np = 0, first
    while np != 0:
        if len(data) - pos < 4:
            raise MessageError(f"payload {np}", pos, "truncated generic header")
        np, _res, length = _GEN.unpack_from(data, pos)
        if length < 4 or pos + length > len(data):
            raise MessageError("payload", pos + 2, f"bad length {length}")
        pos += length
    return pos


def build(icookie: bytes, rcookie: bytes, exchange: int, flags: int, message_id: int, payloads: list[tuple[int, bytes]]) -> bytes:
    np, chain = encode_chain(payloads)
    return encode_header(icookie, rcookie, np, exchange, flags, message_id, HEADER_LEN + len(chain)) + chain


# --- attributes (RFC 2408 §3.3) ---------------------------------------------------------------


def encode_attrs(attrs: list[tuple[int, int | bytes]]) -> bytes:
    out = []
    for t, v in attrs:
        if isinstance(v, int) and v <= 0xFFFF:
            out.append(struct.pack("!HH", 0x8000 | t, v))
        else:
            if isinstance(v, int):
                v = v.to_bytes(4, "big")
            out.append(struct.pack("!HH", t, len(v)) + v)
    return b"".join(out)


def decode_attrs(data: bytes, where: str) -> list[tuple[int, int]]:
    """Attributes as ``(type, int value)``; TLV values are read as big-endian integers."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise MessageError(where, pos, "truncated attribute")
        t, v = struct.unpack_from("!HH", data, pos)
        pos += 4
        if t & 0x8000:
            out.append((t & 0x7FFF, v))
        else:
            if pos + v > len(data) or v > 8:
                raise MessageError(where, pos - 2, f"attribute {t} length {v}")
            out.append((t, int.from_bytes(data[pos : pos + v], "big")))
            pos += v
    return out


# --- phase 1 SA --------------------------------------------------------------------------------


def encode_sa(transforms: list[list[tuple[int, int | bytes]]], doi: int = DOI_GDOI, numbers: list[int] | None = None) -> bytes:
    """SA body with one ISAKMP proposal holding one transform per attribute list."""
    nums = numbers or list(range(1, len(transforms) + 1))
    tchain = [(TRANSFORM, struct.pack("!BBH", n, KEY_IKE, 0) + encode_attrs(a)) for n, a in zip(nums, transforms)]
    _np, tbytes = encode_chain(tchain)
    proposal = struct.pack("!BBBB", 1, PROTO_ISAKMP, 0, len(transforms)) + tbytes
    _np, pbytes = encode_chain([(PROPOSAL, proposal)])
    return struct.pack("!II", doi, 0 if doi == DOI_GDOI else 1) + pbytes


@dataclass(frozen=True, slots=True)
class SaOffer:
    doi: int
    transforms: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]  # (transform number, attrs)


def decode_sa(body: bytes) -> SaOffer:
    """Phase 1 SA body: DOI, situation, one proposal (PROTO_ISAKMP), KEY_IKE transforms."""
    if len(body) < 8:
        raise MessageError("SA", 0, "truncated")
    doi, _sit = struct.unpack_from("!II", body)
    props = decode_chain(body[8:], PROPOSAL, 8)
    if len(props) != 1 or props[0][0] != PROPOSAL:
        raise MessageError("SA", 8, "phase 1 SA must hold exactly one proposal")
    p = props[0][1]
    if len(p) < 4:
        raise MessageError("SA/Proposal", 8, "truncated")
    _num, proto, spi_size, ntrans = struct.unpack_from("!BBBB", p)
    if proto != PROTO_ISAKMP:
        raise MessageError("SA/Proposal", 13, f"protocol {proto} is not PROTO_ISAKMP")
    pos = 4 + spi_size
    if pos > len(p):
        raise MessageError("SA/Proposal", 14, "SPI longer than proposal")
    trans = decode_chain(p[pos:], TRANSFORM, 12 + pos) if ntrans else []
    if len(trans) != ntrans:
        raise MessageError("SA/Proposal", 15, f"{len(trans)} transforms, header says {ntrans}")
    out = []
    for ptype, t in trans:
        if ptype != TRANSFORM or len(t) < 4:
            raise MessageError("SA/Transform", 0, "not a transform")
        tnum, tid = t[0], t[1]
        if tid != KEY_IKE:
            raise MessageError("SA/Transform", 1, f"transform id {tid} is not KEY_IKE")
        out.append((tnum, tuple(decode_attrs(t[4:], "SA/Transform"))))
    return SaOffer(doi, tuple(out))


# --- ID, CERT, Notification, Delete ------------------------------------------------------------


def encode_id(id_type: int, data: bytes, proto: int = 0, port: int = 0) -> bytes:
    return struct.pack("!BBH", id_type, proto, port) + data


def decode_id(body: bytes) -> tuple[int, int, int, bytes]:
    if len(body) < 4:
        raise MessageError("ID", 0, "truncated")
    t, proto, port = struct.unpack_from("!BBH", body)
    return t, proto, port, body[4:]


def decode_cert(body: bytes) -> tuple[int, bytes]:
    if len(body) < 1:
        raise MessageError("CERT", 0, "truncated")
    return body[0], body[1:]


def encode_notify(ntype: int, spi: bytes = b"", data: bytes = b"", doi: int = DOI_GDOI, proto: int = PROTO_ISAKMP) -> bytes:
    return struct.pack("!IBBH", doi, proto, len(spi), ntype) + spi + data


def decode_notify(body: bytes) -> tuple[int, int, int, bytes, bytes]:
    """``(doi, protocol, type, spi, data)``."""
    if len(body) < 8:
        raise MessageError("N", 0, "truncated")
    doi, proto, spi_size, ntype = struct.unpack_from("!IBBH", body)
    if 8 + spi_size > len(body):
        raise MessageError("N", 5, "SPI longer than payload")
    return doi, proto, ntype, body[8 : 8 + spi_size], body[8 + spi_size :]


def encode_delete(spis: list[bytes], doi: int = DOI_GDOI, proto: int = PROTO_ISAKMP) -> bytes:
    size = len(spis[0]) if spis else 16
    return struct.pack("!IBBH", doi, proto, size, len(spis)) + b"".join(spis)


def decode_delete(body: bytes) -> tuple[int, int, list[bytes]]:
    if len(body) < 8:
        raise MessageError("D", 0, "truncated")
    doi, proto, size, n = struct.unpack_from("!IBBH", body)
    if 8 + size * n != len(body):
        raise MessageError("D", 6, f"{n} SPIs of {size} bytes do not fill {len(body) - 8} bytes")
    return doi, proto, [body[8 + i * size : 8 + (i + 1) * size] for i in range(n)]
