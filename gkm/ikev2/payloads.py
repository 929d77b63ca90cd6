"""IKEv2 payload bodies (RFC 7296 §3.3-3.14): frozen values with ``encode()`` and ``decode()``.

``decode(buf, pos, end)`` reads the body in ``buf[pos:end]`` (after the 4-byte generic header);
offsets in errors are absolute in ``buf``.  ``encode()`` returns the body only; the chain writer
(:mod:`.message`) adds generic headers and Next Payload values.

Decisions (RFC 7296 wording "MUST be sent as zero; MUST be ignored on receipt"): RESERVED fields
and the Last Substruc / RESERVED octets of proposals and transforms are written as zero and not
checked on receipt, except where a value changes the structure (Last Substruc must be 0 or 2
for proposals, 0 or 3 for transforms, §3.3.1/§3.3.2).  So re-encoding a decoded message is exact
except for non-zero reserved bits, which come back as zero.  Counts (number of transforms,
number of SPIs, number of TSs) must agree with what follows; every length is checked against its
container.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gkm.wire.attributes import Attribute, attribute_types, decode_attributes, encode_attributes

from .constants import (
    AuthMethod, CertEncoding, IdType, KeyExchangeMethod, NotifyType, PayloadType, ProtocolId, TransformAttr,
    TransformType, TsType,
)
from .errors import WireError

_BBH = struct.Struct("!BBH")
_HH = struct.Struct("!HH")
_TS = struct.Struct("!BBHHH")
_PROTO = ProtocolId._value2member_map_
_TTYPE = TransformType._value2member_map_
_NOTIFY = NotifyType._value2member_map_
_ID = IdType._value2member_map_
_AUTH = AuthMethod._value2member_map_
_CERT = CertEncoding._value2member_map_
_KE = KeyExchangeMethod._value2member_map_
_TSTYPE = TsType._value2member_map_
_TRANSFORM_ATTRS = attribute_types(TransformAttr._value2member_map_)
#: Address length per TS type (RFC 7296 §3.13.1).
_TS_ADDRESS = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}
MAX_SPI_SIZE = 16  # GIKE_UPDATE (RFC 9838 §4.3.1); IKE 8, ESP/AH 4


def _need(end: int, pos: int, n: int, where: str, what: str) -> None:
    if end - pos < n:
        raise WireError(where, pos, f"truncated {what}: {end - pos} of {n} bytes")


def _u8(v, where: str, field: str) -> int:
    if not 0 <= v <= 0xFF:
        raise WireError(where, -1, f"{field} {v} out of range 0..255")
    return v


# --------------------------------------------------------------------------------------------
# SA / Proposal / Transform (§3.3)


@dataclass(frozen=True, slots=True)
class Transform:
    """§3.3.2: type, ID and attributes (only Key Length, TV, is defined by RFC 7296)."""

    type: TransformType | int
    id: int
    attributes: tuple[Attribute, ...] = ()

    @property
    def key_length(self) -> int | None:
        for t, v in self.attributes:
            if t == TransformAttr.KEY_LENGTH:
                return v if isinstance(v, int) else int.from_bytes(v, "big")
        return None

    def encode(self, last: bool, where: str = "Transform") -> bytes:
        attrs = encode_attributes(self.attributes, where)
        n = 8 + len(attrs)
        if n > 0xFFFF or not 0 <= self.id <= 0xFFFF:
            raise WireError(where, -1, f"transform too long or ID {self.id} out of range")
        return struct.pack("!BBHBBH", 0 if last else 3, 0, n, _u8(self.type, where, "type"), 0, self.id) + attrs


def decode_transforms(buf: bytes, pos: int, end: int, count: int | None, where: str) -> tuple[tuple[Transform, ...], int]:
    """Transforms from ``pos``: ``count`` of them (proposal), or up to the one with Last Substruc
    0 (GSA policy, RFC 9838 §4.3.1).  Returns the transforms and the offset after the last."""
    out = []
    last = count == 0
    while not last:
        w = f"{where}/Transform[{len(out)}]"
        _need(end, pos, 8, w, "transform header")
        more, _res, length, ttype, _res2, tid = struct.unpack_from("!BBHBBH", buf, pos)
        if more not in (0, 3):
            raise WireError(w, pos, f"Last Substruc {more}, must be 0 or 3 (RFC 7296 §3.3.2)")
        if length < 8 or pos + length > end:
            raise WireError(w, pos + 2, f"transform length {length} outside 8..{end - pos}")
        attrs = decode_attributes(buf, pos + 8, pos + length, _TRANSFORM_ATTRS, w)
        out.append(Transform(_TTYPE.get(ttype, ttype), tid, attrs))
        pos += length
        if count is not None:
            if more == 0 and len(out) != count:
                raise WireError(w, pos - length, f"last transform is number {len(out)} of {count} announced")
            if more == 3 and len(out) == count:
                raise WireError(w, pos - length, f"more transforms follow the {count} announced")
        last = more == 0
    return tuple(out), pos


@dataclass(frozen=True, slots=True)
class Proposal:
    """§3.3.1.  ``spi`` is empty in an initial IKE_SA_INIT, 8 bytes for IKE rekeys, 4 for ESP/AH."""

    number: int
    protocol: ProtocolId | int
    spi: bytes
    transforms: tuple[Transform, ...]

    def encode(self, last: bool, where: str) -> bytes:
        if len(self.spi) > MAX_SPI_SIZE:
            raise WireError(where, -1, f"SPI of {len(self.spi)} bytes")
        if len(self.transforms) > 0xFF:
            raise WireError(where, -1, f"{len(self.transforms)} transforms")
        body = b"".join(
            t.encode(i == len(self.transforms) - 1, f"{where}/Transform[{i}]") for i, t in enumerate(self.transforms)
        )
        n = 8 + len(self.spi) + len(body)
        if n > 0xFFFF:
            raise WireError(where, -1, "proposal too long")
        head = struct.pack("!BBHBBBB", 0 if last else 2, 0, n, _u8(self.number, where, "number"),
                           _u8(self.protocol, where, "protocol"), len(self.spi), len(self.transforms))
        return head + self.spi + body


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    """SA payload (§3.3), also SAg of G-IKEv2 (RFC 9838 §4.2)."""

    proposals: tuple[Proposal, ...]
    TYPE = PayloadType.SA

    def encode(self) -> bytes:
        n = len(self.proposals)
        return b"".join(p.encode(i == n - 1, f"SA/Proposal[{i}]") for i, p in enumerate(self.proposals))

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "SecurityAssociation":
        props = []
        if pos == end:
            raise WireError("SA", pos, "no proposal")
        last = False
        while not last:
            w = f"SA/Proposal[{len(props)}]"
            _need(end, pos, 8, w, "proposal header")
            more, _res, length, number, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", buf, pos)
            if more not in (0, 2):
                raise WireError(w, pos, f"Last Substruc {more}, must be 0 or 2 (RFC 7296 §3.3.1)")
            pend = pos + length
            if length < 8 + spi_size or pend > end:
                raise WireError(w, pos + 2, f"proposal length {length} outside {8 + spi_size}..{end - pos}")
            if spi_size > MAX_SPI_SIZE:
                raise WireError(w, pos + 6, f"SPI size {spi_size}")
            if props and number not in (props[-1].number, props[-1].number + 1):
                raise WireError(w, pos + 4, f"proposal number {number} after {props[-1].number} (RFC 7296 §3.3.1)")
            spi = buf[pos + 8 : pos + 8 + spi_size]
            transforms, tend = decode_transforms(buf, pos + 8 + spi_size, pend, ntrans, w)
            if tend != pend:
                raise WireError(w, tend, f"{pend - tend} bytes after the last transform")
            props.append(Proposal(number, _PROTO.get(proto, proto), spi, transforms))
            pos = pend
            last = more == 0
        if pos != end:
            raise WireError("SA", pos, f"{end - pos} bytes after the last proposal")
        return cls(tuple(props))


# --------------------------------------------------------------------------------------------
# Simple payloads


@dataclass(frozen=True, slots=True)
class KeyExchange:
    """§3.4: Key Exchange Method number (the group) and its public value or ciphertext."""

    group: KeyExchangeMethod | int
    data: bytes
    TYPE = PayloadType.KE

    def encode(self) -> bytes:
        if not 0 <= self.group <= 0xFFFF:
            raise WireError("KE", -1, f"group {self.group}")
        return _HH.pack(self.group, 0) + self.data

    @classmethod
    def decode(cls, buf, pos, end):
        _need(end, pos, 4, "KE", "KE header")
        group, _res = _HH.unpack_from(buf, pos)
        return cls(_KE.get(group, group), buf[pos + 4 : end])


@dataclass(frozen=True, slots=True)
class _Identification:
    id_type: IdType | int
    data: bytes

    def encode(self) -> bytes:
        return bytes((_u8(self.id_type, self.TYPE.name, "ID type"), 0, 0, 0)) + self.data

    @classmethod
    def decode(cls, buf, pos, end):
        _need(end, pos, 4, cls.TYPE.name, "ID header")
        return cls(_ID.get(buf[pos], buf[pos]), buf[pos + 4 : end])


class IdInitiator(_Identification):
    """IDi (§3.5)."""

    __slots__ = ()
    TYPE = PayloadType.IDI


class IdResponder(_Identification):
    """IDr (§3.5)."""

    __slots__ = ()
    TYPE = PayloadType.IDR


class IdGroup(_Identification):
    """IDg, the group a member asks to join (RFC 9838 §4.1): the §3.5 layout."""

    __slots__ = ()
    TYPE = PayloadType.IDG


@dataclass(frozen=True, slots=True)
class Certificate:
    """CERT (§3.6)."""

    encoding: CertEncoding | int
    data: bytes
    TYPE = PayloadType.CERT

    def encode(self) -> bytes:
        return bytes((_u8(self.encoding, "CERT", "encoding"),)) + self.data

    @classmethod
    def decode(cls, buf, pos, end):
        _need(end, pos, 1, cls.TYPE.name, "encoding")
        return cls(_CERT.get(buf[pos], buf[pos]), buf[pos + 1 : end])


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """CERTREQ (§3.7): encoding and concatenated SHA-1 hashes of trusted CA public keys."""

    encoding: CertEncoding | int
    data: bytes
    TYPE = PayloadType.CERTREQ

    encode = Certificate.encode
    decode = classmethod(Certificate.decode.__func__)


@dataclass(frozen=True, slots=True)
class Authentication:
    """AUTH (§3.8)."""

    method: AuthMethod | int
    data: bytes
    TYPE = PayloadType.AUTH

    def encode(self) -> bytes:
        return bytes((_u8(self.method, "AUTH", "method"), 0, 0, 0)) + self.data

    @classmethod
    def decode(cls, buf, pos, end):
        _need(end, pos, 4, "AUTH", "AUTH header")
        return cls(_AUTH.get(buf[pos], buf[pos]), buf[pos + 4 : end])


@dataclass(frozen=True, slots=True)
class Nonce:
    """Ni/Nr (§3.9).  The 16..256-byte size rule (§2.10) is the engine's check."""

    data: bytes
    TYPE = PayloadType.NONCE

    def encode(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def decode(cls, buf, pos, end):
        return cls(buf[pos:end])


@dataclass(frozen=True, slots=True)
class VendorId:
    """§3.12."""

    data: bytes
    TYPE = PayloadType.VENDOR_ID

    encode = Nonce.encode
    decode = classmethod(Nonce.decode.__func__)


_SHA1_SIZE = 20
_NAT_DETECTION = frozenset((NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP))


@dataclass(frozen=True, slots=True)
class Notify:
    """§3.10.  ``protocol`` 0 and empty ``spi`` for notifications about the IKE SA."""

    protocol: ProtocolId | int
    type: NotifyType | int
    spi: bytes = b""
    data: bytes = b""
    TYPE = PayloadType.NOTIFY

    @property
    def is_error(self) -> bool:
        return 0 < self.type < 16384

    def encode(self) -> bytes:
        if len(self.spi) > 0xFF or not 0 <= self.type <= 0xFFFF:
            raise WireError("N", -1, "SPI too long or type out of range")
        return _BBH.pack(_u8(self.protocol, "N", "protocol"), len(self.spi), self.type) + self.spi + self.data

    @classmethod
    def decode(cls, buf, pos, end):
        _need(end, pos, 4, "N", "notify header")
        proto, spi_size, ntype = _BBH.unpack_from(buf, pos)
        if pos + 4 + spi_size > end:
            raise WireError("N", pos + 1, f"SPI size {spi_size} exceeds the payload")
        s = pos + 4 + spi_size
        if ntype in _NAT_DETECTION and end - s != _SHA1_SIZE:
            raise WireError("N", s, f"{_NOTIFY[ntype].name} data of {end - s} bytes, a SHA-1 digest has {_SHA1_SIZE} "
                            "(RFC 7296 §2.23)")
        return cls(_PROTO.get(proto, proto), _NOTIFY.get(ntype, ntype), buf[pos + 4 : s], buf[s:end])


@dataclass(frozen=True, slots=True)
class Delete:
    """§3.11.  ``spi_size`` is kept so an IKE SA delete (size 0, no SPIs) round-trips."""

    protocol: ProtocolId | int
    spi_size: int
    spis: tuple[bytes, ...] = ()
    TYPE = PayloadType.DELETE

    def encode(self) -> bytes:
        if any(len(s) != self.spi_size for s in self.spis) or len(self.spis) > 0xFFFF:
            raise WireError("D", -1, f"every SPI must be {self.spi_size} bytes")
        return _BBH.pack(_u8(self.protocol, "D", "protocol"), _u8(self.spi_size, "D", "SPI size"), len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode(cls, buf, pos, end):
        _need(end, pos, 4, "D", "delete header")
        proto, size, count = _BBH.unpack_from(buf, pos)
        if end - pos - 4 != size * count:
            raise WireError("D", pos + 2, f"{count} SPIs of {size} bytes need {size * count} bytes, payload has {end - pos - 4}")
        p = pos + 4
        return cls(_PROTO.get(proto, proto), size, tuple(buf[p + i * size : p + (i + 1) * size] for i in range(count)))


# --------------------------------------------------------------------------------------------
# Traffic selectors (§3.13)


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One §3.13.1 selector: an address range (packed bytes), IP protocol (0 = any), port range."""

    ts_type: TsType | int
    ip_protocol: int
    start_port: int
    end_port: int
    start_address: bytes
    end_address: bytes

    def encode(self, where: str = "TS") -> bytes:
        size = _TS_ADDRESS.get(self.ts_type)
        if size is None or len(self.start_address) != size or len(self.end_address) != size:
            raise WireError(where, -1, f"TS type {self.ts_type} with addresses of {len(self.start_address)}/{len(self.end_address)} bytes")
        try:
            head = _TS.pack(self.ts_type, self.ip_protocol, 8 + 2 * size, self.start_port, self.end_port)
        except struct.error as e:
            raise WireError(where, -1, str(e)) from None
        return head + self.start_address + self.end_address


def decode_selector(buf: bytes, pos: int, end: int, where: str) -> tuple[TrafficSelector, int]:
    """One selector at ``pos``; returns it and the offset after it.  Only the two address-range
    types of RFC 7296 are known; any other type is refused (its layout is unknown)."""
    _need(end, pos, 8, where, "traffic selector header")
    ts_type, proto, length, sport, eport = _TS.unpack_from(buf, pos)
    size = _TS_ADDRESS.get(ts_type)
    if size is None:
        raise WireError(where, pos, f"unsupported TS type {ts_type}")
    if length != 8 + 2 * size:
        raise WireError(where, pos + 2, f"selector length {length}, must be {8 + 2 * size} for TS type {ts_type}")
    if pos + length > end:
        raise WireError(where, pos + 2, f"selector length {length} exceeds its container by {pos + length - end}")
    a = pos + 8
    return TrafficSelector(_TSTYPE[ts_type], proto, sport, eport, buf[a : a + size], buf[a + size : a + 2 * size]), pos + length


@dataclass(frozen=True, slots=True)
class _TrafficSelectors:
    selectors: tuple[TrafficSelector, ...]

    def encode(self) -> bytes:
        if len(self.selectors) > 0xFF:
            raise WireError(self.TYPE.name, -1, "more than 255 selectors")
        return bytes((len(self.selectors), 0, 0, 0)) + b"".join(s.encode(self.TYPE.name) for s in self.selectors)

    @classmethod
    def decode(cls, buf, pos, end):
        w = cls.TYPE.name
        _need(end, pos, 4, w, "TS header")
        count = buf[pos]
        pos += 4
        out = []
        for i in range(count):
            ts, pos = decode_selector(buf, pos, end, f"{w}/TS[{i}]")
            out.append(ts)
        if pos != end:
            raise WireError(w, pos, f"{end - pos} bytes after the {count} selectors announced")
        return cls(tuple(out))


class TsInitiator(_TrafficSelectors):
    __slots__ = ()
    TYPE = PayloadType.TSI


class TsResponder(_TrafficSelectors):
    __slots__ = ()
    TYPE = PayloadType.TSR


# --------------------------------------------------------------------------------------------
# SK (§3.14) and unknown payloads


@dataclass(frozen=True, slots=True)
class Encrypted:
    """The SK payload as framed on the wire: ``first_payload`` is its Next Payload field (the type
    of the first inner payload, §3.14), ``body`` is IV | ciphertext | ICV.  :mod:`.sk` protects
    and unprotects it.  It is always the last payload of a message."""

    first_payload: int
    body: bytes
    TYPE = PayloadType.SK

    def encode(self) -> bytes:
        return bytes(self.body)


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload of a type this codec does not parse, with the critical bit clear (or a type
    RFC 7296 or RFC 9838 defines but msec does not parse: CP, EAP, GSPM, SKF), kept verbatim.
    RFC 7296 §2.5: skip it; the engine may still refuse a message that needs it."""

    payload_type: int
    body: bytes
    critical: bool = False

    @property
    def TYPE(self) -> int:  # noqa: N802 - same protocol as the known payloads
        return self.payload_type

    def encode(self) -> bytes:
        return bytes(self.body)
