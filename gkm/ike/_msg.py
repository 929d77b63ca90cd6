"""Phase 1 message framing for the Main Mode engine, on top of :mod:`gkm.wire`.

The engine thinks of a message as a header plus a list of ``(payload type, body)`` pairs,
because every phase 1 hash (SAi_b, IDii_b, Ni_b, ...) is taken over payload *bodies* exactly as
they travelled; this module walks the generic payload headers to keep those bytes, and uses the
:mod:`gkm.wire` codec (header, SA/Proposal/Transform, attributes, ID, CERT, Notification,
Delete) for everything with structure.  Errors are :class:`MessageError` (a ``ValueError``)
naming the payload, offset and reason; :class:`gkm.wire.WireError` is translated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from gkm import wire
from gkm.wire import WireError
from gkm.wire.attributes import encode_attributes
from gkm.wire.message import MAX_PADDING

HEADER_LEN = wire.HEADER_LENGTH
VERSION = wire.ISAKMP_VERSION

# Payload types (RFC 2408 §3.1)
SA, PROPOSAL, TRANSFORM, KE, ID, CERT, CR, HASH, SIG, NONCE, N, D, VID = (
    int(wire.PayloadType.SA), 2, 3, int(wire.PayloadType.KE), int(wire.PayloadType.ID), int(wire.PayloadType.CERT),
    int(wire.PayloadType.CR), int(wire.PayloadType.HASH), int(wire.PayloadType.SIG), int(wire.PayloadType.NONCE),
    int(wire.PayloadType.NOTIFICATION), int(wire.PayloadType.DELETE), int(wire.PayloadType.VENDOR_ID),
)
# Exchange types
EXCH_MAIN, EXCH_INFO, EXCH_PULL = int(wire.ExchangeType.MAIN), int(wire.ExchangeType.INFORMATIONAL), int(wire.ExchangeType.GROUPKEY_PULL)
FLAG_E = int(wire.Flags.ENCRYPTION)
DOI_IPSEC, DOI_GDOI = int(wire.Doi.IPSEC), int(wire.Doi.GDOI)
PROTO_ISAKMP = int(wire.ProtocolId.ISAKMP)
KEY_IKE = int(wire.TransformId.KEY_IKE)
CERT_X509_SIG = int(wire.CertEncoding.X509_SIGNATURE)

_GEN = struct.Struct("!BBH")


class MessageError(ValueError):
    def __init__(self, payload: str, offset: int, reason: str) -> None:
        super().__init__(f"{payload} at offset {offset}: {reason}")
        self.payload = payload
        self.offset = offset
        self.reason = reason

    @classmethod
    def of(cls, e: WireError, base: int = 0) -> "MessageError":
        return cls(e.payload, e.offset + base if e.offset >= 0 else e.offset, e.reason)


class Header(NamedTuple):
    """The fields of a received ISAKMP header, all plain ints/bytes (a tuple: cheap to build)."""

    icookie: bytes
    rcookie: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int


_HDR = struct.Struct("!8s8sBBBBII")
_KNOWN_FLAGS = 0x07


def decode_header(data: bytes) -> Header:
    """The header, checked as :func:`gkm.wire.decode_header` does (major version 1, no undefined
    flag bits), plus the length field against the datagram size.  The common case is unpacked
    here directly; anything unusual goes through :mod:`gkm.wire` for its exact error."""
    if len(data) >= HEADER_LEN:
        icookie, rcookie, np, version, exchange, flags, message_id, length = _HDR.unpack_from(data)
        if version >> 4 == 1 and not flags & ~_KNOWN_FLAGS:
            if length != len(data):
                raise MessageError("header", 24, f"length field {length} != datagram size {len(data)}")
            return Header(icookie, rcookie, np, exchange, flags, message_id, length)
    try:
        h, np, length = wire.decode_header(data)
    except WireError as e:
        raise MessageError.of(e) from None
    raise AssertionError("gkm.wire accepted a header that the fast path refused")  # pragma: no cover


def encode_header(icookie: bytes, rcookie: bytes, next_payload: int, exchange: int, flags: int, message_id: int, length: int) -> bytes:
    if len(icookie) == 8 and len(rcookie) == 8 and not flags & ~_KNOWN_FLAGS:
        try:
            return _HDR.pack(icookie, rcookie, next_payload, VERSION, exchange, flags, message_id, length)
        except struct.error:
            pass
    # the same error as before for out-of-range values
    return wire.encode_header(wire.Header(icookie, rcookie, exchange, flags, message_id), next_payload, length)


def encode_chain(payloads: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """``(first next-payload, chain bytes)`` for a list of ``(type, body)``: generic headers
    (RFC 2408 §3.2) with Next Payload chained and RESERVED 0 -- what
    ``gkm.wire.encode_payloads`` produces, without building payload objects (hot path)."""
    out = []
    n = len(payloads)
    pack = _GEN.pack
    for i in range(n):
        t, body = payloads[i]
        if len(body) > 0xFFFB:
            raise MessageError(f"payload {t}", -1, f"body of {len(body)} bytes is too long")
        out.append(pack(payloads[i + 1][0] if i + 1 < n else 0, 0, len(body) + 4))
        out.append(body)
    return (payloads[0][0] if payloads else 0), b"".join(out)


def decode_chain(data: bytes, first: int, offset: int = 0, allow_trailing: bool = False) -> list[tuple[int, bytes]]:
    """Walk the generic payload headers (RFC 2408 §3.2; RESERVED must be 0) keeping the bodies
    verbatim.  ``allow_trailing``: what follows the chain is encryption padding."""
    out = []
    pos, np = 0, first
    n = len(data)
    while np != 0:
        if n - pos < 4:
            raise MessageError(f"payload {np}", offset + pos, "truncated generic header")
        nxt, res, length = _GEN.unpack_from(data, pos)
        if res:
            raise MessageError(f"payload {np}", offset + pos + 1, "RESERVED octet not zero (RFC 2408 §2.5.2)")
        if length < 4 or pos + length > n:
            raise MessageError(f"payload {np}", offset + pos + 2, f"bad length {length}")
        out.append((np, data[pos + 4 : pos + length]))
        pos += length
        np = nxt
    if pos != n and not allow_trailing:
        raise MessageError("message", offset + pos, f"{n - pos} bytes after the last payload")
    if allow_trailing and n - pos > MAX_PADDING:
        raise MessageError("message", offset + pos, f"{n - pos} bytes of padding")
    return out


def chain_length(data: bytes, first: int) -> int:
    """Length of the chain at the start of ``data`` (to strip encryption padding)."""
    pos = 0
    for _t, body in decode_chain(data, first, 0, allow_trailing=True):
        pos += 4 + len(body)
    return pos


def build(icookie: bytes, rcookie: bytes, exchange: int, flags: int, message_id: int, payloads: list[tuple[int, bytes]]) -> bytes:
    np, chain = encode_chain(payloads)
    return encode_header(icookie, rcookie, np, exchange, flags, message_id, HEADER_LEN + len(chain)) + chain


# --- attributes (RFC 2408 §3.3) ---------------------------------------------------------------


def _attrs(attrs: list[tuple[int, int | bytes]]) -> tuple[wire.Attribute, ...]:
    out = []
    for t, v in attrs:
        if isinstance(v, int) and v > 0xFFFF:
            v = wire.var_int(v)
        out.append(wire.Attribute(t, v))
    return tuple(out)


def encode_attrs(attrs: list[tuple[int, int | bytes]]) -> bytes:
    return encode_attributes(_attrs(attrs), "Transform")


# --- phase 1 SA --------------------------------------------------------------------------------


def encode_sa(transforms: list[list[tuple[int, int | bytes]]], doi: int = DOI_GDOI, numbers: list[int] | None = None) -> bytes:
    """SA body with one ISAKMP proposal holding one KEY_IKE transform per attribute list
    (RFC 2409 §5: one proposal, n transforms; DOI 2 with Situation 0, RFC 6407 §2.1)."""
    nums = numbers or list(range(1, len(transforms) + 1))
    tr = tuple(wire.Transform(n, KEY_IKE, _attrs(a)) for n, a in zip(nums, transforms))
    sa = wire.SecurityAssociation(doi, 0 if doi == DOI_GDOI else 1, (wire.Proposal(1, PROTO_ISAKMP, b"", tr),))
    try:
        return sa.encode()
    except WireError as e:
        raise MessageError.of(e) from None


@dataclass(frozen=True, slots=True)
class SaOffer:
    doi: int
    transforms: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]  # (transform number, attrs)


def decode_sa(body: bytes) -> SaOffer:
    """Phase 1 SA body: DOI, situation, one proposal (PROTO_ISAKMP), KEY_IKE transforms."""
    try:
        sa = wire.SecurityAssociation.decode(body, 0, len(body))
    except WireError as e:
        raise MessageError.of(e) from None
    if len(sa.proposals) != 1:
        raise MessageError("SA", 8, f"phase 1 SA must hold exactly one proposal, not {len(sa.proposals)}")
    prop = sa.proposals[0]
    if prop.protocol_id != PROTO_ISAKMP:
        raise MessageError("SA/Proposal", 13, f"protocol {prop.protocol_id} is not PROTO_ISAKMP")
    out = []
    for t in prop.transforms:
        if t.transform_id != KEY_IKE:
            raise MessageError("SA/Transform", 0, f"transform id {t.transform_id} is not KEY_IKE")
        attrs = []
        for a in t.attributes:
            v = a.value
            if isinstance(v, bytes):
                if len(v) > 8:
                    raise MessageError("SA/Transform", 0, f"attribute {a.type} of {len(v)} bytes")
                v = int.from_bytes(v, "big")
            attrs.append((int(a.type), v))
        out.append((t.number, tuple(attrs)))
    return SaOffer(int(sa.doi), tuple(out))


# --- ID, CERT, Notification, Delete ------------------------------------------------------------


def encode_id(id_type: int, data: bytes, proto: int = 0, port: int = 0) -> bytes:
    try:
        return wire.Identification(id_type, data, proto, port).encode()
    except WireError as e:
        raise MessageError.of(e) from None


def decode_id(body: bytes) -> tuple[int, int, int, bytes]:
    try:
        i = wire.Identification.decode(body, 0, len(body))
    except WireError as e:
        raise MessageError.of(e) from None
    return int(i.id_type), i.protocol, i.port, i.data


def decode_cert(body: bytes) -> tuple[int, bytes]:
    try:
        c = wire.Certificate.decode(body, 0, len(body))
    except WireError as e:
        raise MessageError.of(e) from None
    return int(c.encoding), c.data


def encode_notify(ntype: int, spi: bytes = b"", data: bytes = b"", doi: int = DOI_GDOI, proto: int = PROTO_ISAKMP) -> bytes:
    return wire.Notification(doi, proto, ntype, spi, data).encode()


def decode_notify(body: bytes) -> tuple[int, int, int, bytes, bytes]:
    """``(doi, protocol, type, spi, data)``."""
    try:
        n = wire.Notification.decode(body, 0, len(body))
    except WireError as e:
        raise MessageError.of(e) from None
    return int(n.doi), int(n.protocol_id), int(n.notify_type), n.spi, n.data


def encode_delete(spis: list[bytes], doi: int = DOI_GDOI, proto: int = PROTO_ISAKMP) -> bytes:
    size = len(spis[0]) if spis else 16
    try:
        return wire.Delete(doi, proto, size, tuple(spis)).encode()
    except WireError as e:
        raise MessageError.of(e) from None


def decode_delete(body: bytes) -> tuple[int, int, list[bytes]]:
    try:
        d = wire.Delete.decode(body, 0, len(body))
    except WireError as e:
        raise MessageError.of(e) from None
    return int(d.doi), int(d.protocol_id), list(d.spis)
