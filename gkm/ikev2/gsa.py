"""The G-IKEv2 payloads of RFC 9838 §4.3-4.4: Group Security Association (GSA) and Key Download
(KD).  (IDg is :class:`~.payloads.IdGroup`, SAg is the ordinary SA payload.)

GSA body: substructures, each ``Protocol | SPI Size or RESERVED | Length``.  Protocol 0 is the
group-wide (GW) policy (attributes only); any other protocol is a GSA policy: SPI, source and
destination traffic selector (one §3.13.1 selector each), transforms up to the one with Last
Substruc 0, then attributes to the end of the substructure (§4.3.1).

KD body: key bags, ``Protocol | SPI Size or RESERVED | Length``.  Protocol 0 is a member key bag
(WRAP_KEY, AUTH_KEY, GM_SENDER_ID), any other a group key bag for the SA named by protocol + SPI
(SA_KEY) (§4.4).  Key values (RFC 9838 §4.5 key format) stay bytes: unwrapping needs keys.

Decisions: the GW policy / member key bag RESERVED octet is ignored on receipt (RFC 9838:
"MUST be ignored") and re-encoded as zero.  Which attributes and transforms are mandatory per
protocol, their multiplicity and the TV/TLV form are the engine's checks, not the codec's; a
GSA policy must have at least one transform (every protocol has a mandatory one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from gkm.wire.attributes import Attribute, attribute_types, decode_attributes, encode_attributes

from .constants import GroupKeyBagAttr, GsaAttr, GwAttr, MemberKeyBagAttr, PayloadType, ProtocolId
from .errors import WireError
from .payloads import MAX_SPI_SIZE, Transform, TrafficSelector, decode_selector, decode_transforms

_BBH = struct.Struct("!BBH")
_PROTO = ProtocolId._value2member_map_
_GSA_ATTRS = attribute_types(GsaAttr._value2member_map_)
_GW_ATTRS = attribute_types(GwAttr._value2member_map_)
_GKB_ATTRS = attribute_types(GroupKeyBagAttr._value2member_map_)
_MKB_ATTRS = attribute_types(MemberKeyBagAttr._value2member_map_)


def _substructure(protocol: int, second: int, body: bytes, where: str) -> bytes:
    n = 4 + len(body)
    if n > 0xFFFF:
        raise WireError(where, -1, f"substructure of {n} bytes")
    if not 0 <= protocol <= 0xFF:
        raise WireError(where, -1, f"protocol {protocol}")
    return _BBH.pack(protocol, second, n) + body


def _walk(buf: bytes, pos: int, end: int, where: str, name: str):
    """Yield ``(index, protocol, second octet, start, end)`` of each substructure."""
    i = 0
    while pos < end:
        w = f"{where}/{name}[{i}]"
        if end - pos < 4:
            raise WireError(w, pos, f"truncated substructure header ({end - pos} bytes left)")
        proto, second, length = _BBH.unpack_from(buf, pos)
        if length < 4 or pos + length > end:
            raise WireError(w, pos + 2, f"substructure length {length} outside 4..{end - pos}")
        yield w, proto, second, pos, pos + length
        pos += length
        i += 1


@dataclass(frozen=True, slots=True)
class GsaPolicy:
    """A Rekey SA (GIKE_UPDATE, 16-byte SPI) or Data-Security SA (ESP/AH, 4-byte SPI) policy."""

    protocol: ProtocolId | int
    spi: bytes
    source: TrafficSelector
    destination: TrafficSelector
    transforms: tuple[Transform, ...]
    attributes: tuple[Attribute, ...] = ()

    def encode(self, where: str) -> bytes:
        if self.protocol == 0:
            raise WireError(where, -1, "protocol 0 is the GW policy")
        if len(self.spi) > MAX_SPI_SIZE or not self.transforms:
            raise WireError(where, -1, "SPI too long or no transform")
        n = len(self.transforms)
        body = (
            self.spi + self.source.encode(where) + self.destination.encode(where)
            + b"".join(t.encode(i == n - 1, f"{where}/Transform[{i}]") for i, t in enumerate(self.transforms))
            + encode_attributes(self.attributes, where)
        )
        return _substructure(self.protocol, len(self.spi), body, where)


@dataclass(frozen=True, slots=True)
class GwPolicy:
    """Group-wide policy (RFC 9838 §4.3.2): ATD, DTD, sender-ID bits."""

    attributes: tuple[Attribute, ...] = ()

    def encode(self, where: str) -> bytes:
        return _substructure(0, 0, encode_attributes(self.attributes, where), where)


GroupPolicy = Union[GsaPolicy, GwPolicy]


@dataclass(frozen=True, slots=True)
class GroupSa:
    """GSA payload (type 51)."""

    policies: tuple[GroupPolicy, ...]
    TYPE = PayloadType.GSA

    def encode(self) -> bytes:
        return b"".join(p.encode(f"GSA/Policy[{i}]") for i, p in enumerate(self.policies))

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "GroupSa":
        out = []
        for w, proto, spi_size, s, e in _walk(buf, pos, end, "GSA", "Policy"):
            if proto == 0:
                out.append(GwPolicy(decode_attributes(buf, s + 4, e, _GW_ATTRS, w)))
                continue
            if spi_size > MAX_SPI_SIZE or s + 4 + spi_size > e:
                raise WireError(w, s + 1, f"SPI size {spi_size} does not fit")
            p = s + 4 + spi_size
            src, p = decode_selector(buf, p, e, f"{w}/Source")
            dst, p = decode_selector(buf, p, e, f"{w}/Destination")
            if p == e:
                raise WireError(w, p, "no transform (RFC 9838 §4.3.1)")
            transforms, p = decode_transforms(buf, p, e, None, w)
            attrs = decode_attributes(buf, p, e, _GSA_ATTRS, w)
            out.append(GsaPolicy(_PROTO.get(proto, proto), buf[s + 4 : s + 4 + spi_size], src, dst, transforms, attrs))
        return cls(tuple(out))


@dataclass(frozen=True, slots=True)
class GroupKeyBag:
    """Keys of one group SA (RFC 9838 §4.4.1): SA_KEY attributes."""

    protocol: ProtocolId | int
    spi: bytes
    attributes: tuple[Attribute, ...]

    def encode(self, where: str) -> bytes:
        if self.protocol == 0 or len(self.spi) > MAX_SPI_SIZE:
            raise WireError(where, -1, "protocol 0 is the member key bag, or SPI too long")
        return _substructure(self.protocol, len(self.spi), self.spi + encode_attributes(self.attributes, where), where)


@dataclass(frozen=True, slots=True)
class MemberKeyBag:
    """Keys and parameters of one member (RFC 9838 §4.4.2)."""

    attributes: tuple[Attribute, ...]

    def encode(self, where: str) -> bytes:
        return _substructure(0, 0, encode_attributes(self.attributes, where), where)

    def __repr__(self) -> str:  # wrapped keys, but keys: no bytes in repr
        return f"MemberKeyBag({len(self.attributes)} attributes)"


KeyBag = Union[GroupKeyBag, MemberKeyBag]


@dataclass(frozen=True, slots=True)
class KeyDownload:
    """KD payload (type 52)."""

    bags: tuple[KeyBag, ...]
    TYPE = PayloadType.KD

    def encode(self) -> bytes:
        return b"".join(b.encode(f"KD/Bag[{i}]") for i, b in enumerate(self.bags))

    def __repr__(self) -> str:
        return f"KeyDownload({len(self.bags)} key bags)"

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "KeyDownload":
        out = []
        for w, proto, spi_size, s, e in _walk(buf, pos, end, "KD", "Bag"):
            if proto == 0:
                out.append(MemberKeyBag(decode_attributes(buf, s + 4, e, _MKB_ATTRS, w)))
                continue
            if spi_size > MAX_SPI_SIZE or s + 4 + spi_size > e:
                raise WireError(w, s + 1, f"SPI size {spi_size} does not fit")
            a = s + 4 + spi_size
            out.append(GroupKeyBag(_PROTO.get(proto, proto), buf[s + 4 : a], decode_attributes(buf, a, e, _GKB_ATTRS, w)))
        return cls(tuple(out))
