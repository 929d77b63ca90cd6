"""GDOI payload bodies, RFC 6407 §5 (numbering of RFC 6407, not RFC 3547).

Same conventions as :mod:`gkm.wire.ikev1`: ``decode(buf, pos, end)`` reads the body of a
payload whose generic header the chain reader consumed, ``encode()`` returns the body, RESERVED
fields must be zero (RFC 2408 §2.5.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from .attributes import Attribute, attribute_types, decode_attributes, encode_attributes
from .constants import (
    ID_DATA_LENGTH,
    Doi,
    GapAttr,
    IdType,
    IpsecAttr,
    KdType,
    KekAttr,
    KekKeyAttr,
    LkhKeyAttr,
    PayloadType,
    SidKeyAttr,
    TekKeyAttr,
    TekProtocol,
)
from ._fast import maker
from .errors import WireError
from .ikev1 import _gen_header, _generic, _pack, check_id_data, id_data, id_value

_I = struct.Struct("!I")
_II = struct.Struct("!II")
_IIHH = struct.Struct("!IIHH")
_BHB = struct.Struct("!BHB")
_GEN = struct.Struct("!BBH")
_B = struct.Struct("!B")
_BB = struct.Struct("!BB")
_HHI = struct.Struct("!HHI")
_HH = struct.Struct("!HH")
_BBHB = struct.Struct("!BBHB")
_BI = struct.Struct("!BI")
_LKH_KEY = struct.Struct("!HBBIII")
_LKH_UPD = struct.Struct("!BHBHHI")
_bhb_unpack = _BHB.unpack_from
_bi_unpack = _BI.unpack_from
_iihh_unpack = _IIHH.unpack_from
_gen_unpack = _GEN.unpack_from
_gen_pack = _GEN.pack
_hh_unpack = _HH.unpack_from
_hh_pack = _HH.pack
_bbhb_unpack = _BBHB.unpack_from
_bbhb_pack = _BBHB.pack
_i_unpack = _I.unpack_from

_ID_TYPES = IdType._value2member_map_
_ID_LEN = {int(k): v for k, v in ID_DATA_LENGTH.items()}
_KEK_ATTRS = attribute_types(KekAttr._value2member_map_)
_GAP_ATTRS = attribute_types(GapAttr._value2member_map_)
_IPSEC_ATTRS = attribute_types(IpsecAttr._value2member_map_)
_TEK_PROTO = TekProtocol._value2member_map_
_KD_TYPES = KdType._value2member_map_
_KD_ATTRS = {
    KdType.TEK: attribute_types(TekKeyAttr._value2member_map_),
    KdType.KEK: attribute_types(KekKeyAttr._value2member_map_),
    KdType.LKH: attribute_types(LkhKeyAttr._value2member_map_),
    KdType.SID: attribute_types(SidKeyAttr._value2member_map_),
}
_NO_ENUM: dict = {}
# Enum members used on the hot paths, bound once (EnumType attribute access is slow).
_ESP_AH = (TekProtocol.IPSEC_ESP, TekProtocol.IPSEC_AH)
_GDOI = Doi.GDOI
MAX_SA_CHILDREN = 128  # SA KEK + GAP + SA TEKs in one GDOI SA


@dataclass(frozen=True, slots=True)
class GroupId:
    """The SRC/DST identities of SA KEK and SA TEK (RFC 6407 §5.3, §5.5.1)::

        !  ID Type      !         ID Port               ! ID Data Len   !
        ~                         ID Data                               ~

    The ID Data Len is 1 octet, as in the figures and field lists of RFC 6407 §5.3 and §5.5.1
    (and RFC 3547 §5.3/§5.4.1).  The "DST ID Prot" line in the prose of both RFCs has no place
    in the figures and is not on the wire (gdoid, Wireshark agree).
    """

    id_type: int
    data: bytes
    port: int = 0

    @classmethod
    def of(cls, id_type: int, value, port: int = 0) -> "GroupId":
        return cls(id_type, id_data(id_type, value), port)

    def value(self):
        return id_value(self.id_type, self.data)

    def encode(self, where: str) -> bytes:
        data = self.data
        need = _ID_LEN.get(self.id_type)
        if need is not None and len(data) != need:
            check_id_data(self.id_type, data, where, -1)
        try:
            return _BHB.pack(self.id_type, self.port, len(data)) + data
        except (struct.error, TypeError) as e:
            raise WireError(where, -1, str(e)) from None


# Structs of the part of SA KEK / SA TEK bodies before the attributes, by the ID Data lengths
# of SRC and DST (key n1 << 8 | n2), for the address sizes (RFC 2407 §4.6.2: 4, 8, 16, 32) and
# empty data.  Fixed at import (decoding keeps no state); other lengths take the general path.
_ID_SIZES = (0, 4, 8, 16, 32)
_SAK_HEADS = MappingProxyType({a << 8 | b: struct.Struct(f"!BBHB{a}sBHB{b}s16sI") for a in _ID_SIZES for b in _ID_SIZES})
_SAT_HEADS = MappingProxyType({a << 8 | b: struct.Struct(f"!BBBHB{a}sBHB{b}sBI") for a in _ID_SIZES for b in _ID_SIZES})


def _decode_group_id(buf: bytes, pos: int, end: int, where: str) -> tuple[GroupId, int]:
    if end - pos < 4:
        raise WireError(where, pos, f"truncated identity ({end - pos} bytes left, need 4)")
    t, port, n = _bhb_unpack(buf, pos)
    pos += 4
    e = pos + n
    if e > end:
        raise WireError(where, pos - 1, f"ID Data Len {n} exceeds the payload")
    if n != _ID_LEN.get(t, n):
        check_id_data(t, buf[pos:e], where, pos)
    return _make_group_id(_ID_TYPES.get(t, t), buf[pos:e], port), e


def _decode_group_ids(buf: bytes, pos: int, end: int, where: str) -> tuple[GroupId, GroupId, int]:
    """SRC and DST identities, step by step (the general path of SaKek/SaTek.decode)."""
    src, pos = _decode_group_id(buf, pos, end, f"{where}/SRC ID")
    dst, pos = _decode_group_id(buf, pos, end, f"{where}/DST ID")
    return src, dst, pos


@dataclass(frozen=True, slots=True)
class SaKek:
    """SA KEK payload (type 15), RFC 6407 §5.3::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        !    Protocol   !  SRC ID Type  !         SRC ID Port           !
        !SRC ID Data Len!          SRC Identification Data              ~
        !  DST ID Type  !         DST ID Port           !DST ID Data Len!
        ~                    DST Identification Data                    ~
        ~                              SPI (16 octets)                  ~
        !                         RESERVED2 (4 octets)                  !
        ~                        KEK Attributes                         ~

    RESERVED2 is 4 octets, as in RFC 6407 §5.3, Wireshark and gdoid's samples (gdoid's field
    table says 6).  It must be zero: the RFC 3547 POP algorithm / key length that lived here are
    RESERVED2 since RFC 6407 §5.3 / §8.3.1 and are refused (RFC 2408 §2.5.2).
    """

    TYPE: ClassVar[int] = PayloadType.SA_KEK
    protocol: int
    src: GroupId
    dst: GroupId
    spi: bytes
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "SaKek":
        # Fast path: Protocol, both identities, SPI and RESERVED2 in one unpack.  Anything
        # unusual (short body, wrong address size, RESERVED2) takes the step-by-step path
        # below, which raises the precise error.
        if end - pos >= 29:  # 1 + 4 + 4 + 20 with empty ID data
            n1 = buf[pos + 4]
            q = pos + 8 + n1  # DST ID Data Len
            if q < end:
                n2 = buf[q]
                a = q + 21 + n2  # attributes
                st = _SAK_HEADS.get(n1 << 8 | n2)
                if a <= end and st is not None:
                    protocol, t1, port1, _, d1, t2, port2, _, d2, spi, res2 = st.unpack_from(buf, pos)
                    get = _ID_LEN.get
                    if not res2 and n1 == get(t1, n1) and n2 == get(t2, n2):
                        get = _ID_TYPES.get
                        return _make_sak(
                            protocol, _make_group_id(get(t1, t1), d1, port1), _make_group_id(get(t2, t2), d2, port2),
                            spi, decode_attributes(buf, a, end, _KEK_ATTRS, "SAK"),
                        )
        if end - pos < 1:
            raise WireError("SAK", pos, "empty body")
        protocol = buf[pos]
        src, dst, pos = _decode_group_ids(buf, pos + 1, end, "SAK")
        if end - pos < 20:
            raise WireError("SAK", pos, f"{end - pos} bytes left for SPI and RESERVED2, need 20")
        if buf[pos + 16 : pos + 20] != b"\0\0\0\0":
            raise WireError("SAK", pos + 16, "RESERVED2 not zero (RFC 6407 §5.3)")
        return _make_sak(protocol, src, dst, buf[pos : pos + 16], decode_attributes(buf, pos + 20, end, _KEK_ATTRS, "SAK"))

    def encode(self) -> bytes:
        src = self.src
        dst = self.dst
        d1 = src.data
        d2 = dst.data
        spi = self.spi
        if d1.__class__ is bytes and d2.__class__ is bytes and spi.__class__ is bytes and len(spi) == 16:
            # Fast path: everything before the attributes in one pack; on any doubt the
            # general path below gives the precise error.
            n1 = len(d1)
            n2 = len(d2)
            st = _SAK_HEADS.get(n1 << 8 | n2)
            get = _ID_LEN.get
            if st is not None and n1 == get(src.id_type, n1) and n2 == get(dst.id_type, n2):
                try:
                    head = st.pack(self.protocol, src.id_type, src.port, n1, d1, dst.id_type, dst.port, n2, d2, spi, 0)
                except (struct.error, TypeError):
                    pass
                else:
                    return head + encode_attributes(self.attributes, "SAK")
        if len(self.spi) != 16:
            raise WireError("SAK", -1, f"SPI must be 16 bytes, not {len(self.spi)}")
        try:
            return b"".join((
                _B.pack(self.protocol), self.src.encode("SAK/SRC ID"), self.dst.encode("SAK/DST ID"),
                self.spi if self.spi.__class__ is bytes else bytes(self.spi), b"\0\0\0\0",
                encode_attributes(self.attributes, "SAK"),
            ))
        except struct.error as e:
            raise WireError("SAK", -1, str(e)) from None


@dataclass(frozen=True, slots=True)
class Gap:
    """GAP payload (type 22), RFC 6407 §5.4: Group Associated Policy attributes."""

    TYPE: ClassVar[int] = PayloadType.GAP
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "Gap":
        return _make_gap(decode_attributes(buf, pos, end, _GAP_ATTRS, "GAP"))

    def encode(self) -> bytes:
        return encode_attributes(self.attributes, "GAP")


@dataclass(frozen=True, slots=True)
class SaTek:
    """SA TEK payload (type 16) for ESP or AH, RFC 6407 §5.5 and §5.5.1::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        ! Protocol-ID   !       TEK Protocol-Specific Payload           ~
      ESP/AH body:
        !  Protocol     !  SRC ID Type  !         SRC ID Port           !
        !SRC ID Data Len!          SRC Identification Data              ~
        !  DST ID Type  !         DST ID Port           !DST ID Data Len!
        ~                    DST Identification Data                    ~
        ! Transform ID  !                        SPI                    !
        !      SPI      !              RFC 2407 SA Attributes           ~

    ID Data Len is 1 octet (RFC 6407 §5.5.1); Wireshark 4.0 reads 2 octets here (documented
    deviation, asserted by the tshark tests).  Attributes: :class:`IpsecAttr`, including
    ADDRESS_PRESERVATION (14) and SA_DIRECTION (15) of RFC 6407 §5.5.1.1.
    """

    TYPE: ClassVar[int] = PayloadType.SA_TEK
    protocol_id: int
    protocol: int
    src: GroupId
    dst: GroupId
    transform_id: int
    spi: int
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "SaTek | SaTekOther":
        if end - pos < 1:
            raise WireError("SAT", pos, "empty body, need the Protocol-ID")
        pid = buf[pos]
        if pid not in _ESP_AH:
            return _make_sat_other(_TEK_PROTO.get(pid, pid), buf[pos + 1 : end])
        # Fast path as in SaKek.decode: everything before the attributes in one unpack.
        if end - pos >= 15:  # 2 + 4 + 4 + 5 with empty ID data
            n1 = buf[pos + 5]
            q = pos + 9 + n1  # DST ID Data Len
            if q < end:
                n2 = buf[q]
                a = q + 6 + n2  # attributes
                st = _SAT_HEADS.get(n1 << 8 | n2)
                if a <= end and st is not None:
                    pid, protocol, t1, port1, _, d1, t2, port2, _, d2, tid, spi = st.unpack_from(buf, pos)
                    get = _ID_LEN.get
                    if n1 == get(t1, n1) and n2 == get(t2, n2):
                        get = _ID_TYPES.get
                        return _make_sat(
                            _TEK_PROTO[pid], protocol, _make_group_id(get(t1, t1), d1, port1),
                            _make_group_id(get(t2, t2), d2, port2), tid, spi,
                            decode_attributes(buf, a, end, _IPSEC_ATTRS, "SAT"),
                        )
        if end - pos < 2:
            raise WireError("SAT", pos + 1, "ESP/AH TEK without Protocol")
        protocol = buf[pos + 1]
        src, dst, pos = _decode_group_ids(buf, pos + 2, end, "SAT")
        if end - pos < 5:
            raise WireError("SAT", pos, f"{end - pos} bytes left for Transform ID and SPI, need 5")
        tid, spi = _bi_unpack(buf, pos)
        return _make_sat(_TEK_PROTO[pid], protocol, src, dst, tid, spi, decode_attributes(buf, pos + 5, end, _IPSEC_ATTRS, "SAT"))

    def encode(self) -> bytes:
        if self.protocol_id not in _ESP_AH:
            raise WireError("SAT", -1, f"SaTek is for ESP/AH, not protocol {self.protocol_id}; use SaTekOther")
        src = self.src
        dst = self.dst
        d1 = src.data
        d2 = dst.data
        if d1.__class__ is bytes and d2.__class__ is bytes:
            # Fast path as in SaKek.encode.
            n1 = len(d1)
            n2 = len(d2)
            st = _SAT_HEADS.get(n1 << 8 | n2)
            get = _ID_LEN.get
            if st is not None and n1 == get(src.id_type, n1) and n2 == get(dst.id_type, n2):
                try:
                    head = st.pack(
                        self.protocol_id, self.protocol, src.id_type, src.port, n1, d1,
                        dst.id_type, dst.port, n2, d2, self.transform_id, self.spi,
                    )
                except (struct.error, TypeError):
                    pass
                else:
                    return head + encode_attributes(self.attributes, "SAT")
        try:
            return b"".join((
                _BB.pack(self.protocol_id, self.protocol), self.src.encode("SAT/SRC ID"),
                self.dst.encode("SAT/DST ID"), _BI.pack(self.transform_id, self.spi),
                encode_attributes(self.attributes, "SAT"),
            ))
        except struct.error as e:
            raise WireError("SAT", -1, str(e)) from None


@dataclass(frozen=True, slots=True)
class SaTekOther:
    """SA TEK for a protocol other than ESP/AH (e.g. IEC 61850, RFC 8052), body kept verbatim."""

    TYPE: ClassVar[int] = PayloadType.SA_TEK
    protocol_id: int
    body: bytes

    def encode(self) -> bytes:
        if self.protocol_id in _ESP_AH:
            raise WireError("SAT", -1, "ESP/AH TEKs must be SaTek")
        return _pack("SAT", _B, self.protocol_id) + bytes(self.body)


_SA_CHILDREN = {PayloadType.SA_KEK: SaKek, PayloadType.GAP: Gap, PayloadType.SA_TEK: SaTek}


@dataclass(frozen=True, slots=True)
class GdoiSa:
    """GDOI SA payload (type 1, DOI 2) of GROUPKEY-PULL/PUSH, RFC 6407 §5.2::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        !              DOI (4 octets) = 2                               !
        !              Situation (4 octets) = 0                         !
        ! SA Attribute Next Payload     !         RESERVED2             !
        ~              SA KEK / GAP / SA TEK payloads                   ~

    The Payload Length covers the SAK/GAP/SAT payloads that follow, and the Next Payload names
    what comes after all of them.  SA Attribute Next Payload is 2 octets (RFC 6407 §5.2 text and
    figure, gdoid, Wireshark), not the 1 octet + 2 RESERVED of the RFC 3547 §5.2 text.
    Children other than SAK (15), SAT (16) and GAP (22) are refused.  Their number and order
    (≤1 SAK, ≤1 GAP, then SATs; RFC 6407 §5.2.1) is the engine's to check.
    """

    TYPE: ClassVar[int] = PayloadType.SA
    payloads: tuple[SaKek | Gap | SaTek | SaTekOther, ...] = ()
    situation: int = 0

    doi: ClassVar[int] = Doi.GDOI

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "GdoiSa":
        if end - pos < 12:
            raise WireError("SA", pos, f"body of {end - pos} bytes, need 12")
        doi, sit, np, res2 = _iihh_unpack(buf, pos)
        if res2:
            raise WireError("SA", pos + 10, "RESERVED2 not zero")
        pos += 12
        children = []
        while np:
            dec = _SA_CHILD_DECODERS.get(np)
            if dec is None or end - pos < 4 or len(children) == MAX_SA_CHILDREN:
                _sa_child_error(buf, pos, end, np, len(children))
            nnp, reserved, length = _gen_unpack(buf, pos)
            cend = pos + length
            if reserved or length < 4 or cend > end:
                _generic(buf, pos, end, f"SA/{_SA_CHILDREN[np].__name__}[{len(children)}]")  # raises the precise error
            children.append(dec(buf, pos + 4, cend))
            np = nnp
            pos = cend
        if pos != end:
            raise WireError("SA", pos, f"{end - pos} bytes after the last SA attribute payload")
        return _make_gdoi_sa(tuple(children), sit)

    def encode(self) -> bytes:
        parts = [b""]
        np = 0  # PayloadType.NONE
        for child in reversed(self.payloads):
            t = child.TYPE
            if t != 16 and t != 15 and t != 22:  # SA_TEK, SA_KEK, GAP (_SA_CHILDREN)
                raise WireError("SA", -1, f"{type(child).__name__} not allowed inside a GDOI SA")
            body = child.encode()
            n = len(body) + 4
            if n > 0xFFFF:
                raise WireError(f"SA/{type(child).__name__}", -1, f"payload too long ({n} bytes)")
            parts.append(body)
            parts.append(_gen_pack(np, 0, n))
            np = t
        parts.append(_pack("SA", _IIHH, _GDOI, self.situation, np, 0))
        parts.reverse()
        return b"".join(parts)


def _sa_child_error(buf: bytes, pos: int, end: int, np: int, index: int) -> None:
    """Raise the error for the child header at ``pos`` of a GDOI SA (in the order of the checks)."""
    if index == MAX_SA_CHILDREN:
        raise WireError(f"SA/{np}[{MAX_SA_CHILDREN}]", pos, f"more than {MAX_SA_CHILDREN} SA KEK/GAP/SA TEK payloads")
    child = _SA_CHILDREN.get(np)
    if child is None:
        raise WireError(f"SA/{np}[{index}]", pos, f"payload type {np} not allowed inside a GDOI SA (RFC 6407 §5.2)")
    raise WireError(f"SA/{child.__name__}[{index}]", pos, f"truncated generic payload header ({end - pos} bytes left)")


@dataclass(frozen=True, slots=True)
class KeyPacket:
    """One key packet of a Key Download payload, RFC 6407 §5.6::

        !    KD Type    !   RESERVED    !            KD Length          !
        !    SPI Size   !                   SPI (variable)              ~
        ~                    Key Packet Attributes                      ~

    TEK packets carry the 4-octet SAT SPI, KEK and LKH packets the 16-octet KEK SPI, SID packets
    none.  Attribute types are read with the enum of the KD type.  LKH arrays are kept as the
    attribute value (bytes): their key data has no length field, so splitting the keys needs
    the key size the engine knows (see :func:`decode_lkh_array`).
    """

    kd_type: int
    spi: bytes
    attributes: tuple[Attribute, ...] = ()

    def __repr__(self) -> str:  # key material stays out of repr (HACKING.md)
        attrs = ", ".join(f"{t!r}=<{len(v)} bytes>" if isinstance(v, bytes) else f"{t!r}={v}" for t, v in self.attributes)
        return f"KeyPacket(kd_type={self.kd_type!r}, spi={self.spi.hex()}, attributes=[{attrs}])"

    def encode(self) -> bytes:
        attrs = encode_attributes(self.attributes, "KD/packet")
        spi = self.spi
        try:
            return _BBHB.pack(self.kd_type, 0, 5 + len(spi) + len(attrs), len(spi)) + spi + attrs
        except (struct.error, TypeError) as e:
            raise WireError("KD/packet", -1, f"key packet does not fit: {e}") from None


@dataclass(frozen=True, slots=True)
class KeyDownload:
    """Key Download payload (type 17), RFC 6407 §5.6::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        !   Number of Key Packets       !            RESERVED2          !
        ~                    Key Packets                                ~
    """

    TYPE: ClassVar[int] = PayloadType.KD
    packets: tuple[KeyPacket, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "KeyDownload":
        if end - pos < 4:
            raise WireError("KD", pos, f"body of {end - pos} bytes, need 4")
        count, res2 = _hh_unpack(buf, pos)
        if res2:
            raise WireError("KD", pos + 2, "RESERVED2 not zero")
        pos += 4
        packets = []
        while pos < end:
            n = len(packets)
            if n == count:
                raise WireError(f"KD/packet[{count}]", pos, f"more key packets than Number of Key Packets ({count})")
            if end - pos < 5:
                raise WireError(f"KD/packet[{n}]", pos, f"truncated key packet header ({end - pos} bytes left)")
            kd_type, res, length, spi_size = _bbhb_unpack(buf, pos)
            if res:
                raise WireError(f"KD/packet[{n}]", pos + 1, "RESERVED not zero")
            pend = pos + length
            s = pos + 5 + spi_size
            if length < 5 + spi_size or pend > end:
                raise WireError(f"KD/packet[{n}]", pos + 2, f"KD Length {length} does not fit (SPI size {spi_size}, {end - pos} bytes left)")
            attrs = decode_attributes(buf, s, pend, _KD_ATTRS.get(kd_type, _NO_ENUM), "KD/packet")
            packets.append(_make_key_packet(_KD_TYPES.get(kd_type, kd_type), buf[pos + 5 : s], attrs))
            pos = pend
        if count != len(packets):
            raise WireError("KD", pos, f"Number of Key Packets says {count}, found {len(packets)}")
        return _make_kd(tuple(packets))

    def encode(self) -> bytes:
        packets = self.packets
        if len(packets) > 0xFFFF:
            raise WireError("KD", -1, "too many key packets")
        parts = [_hh_pack(len(packets), 0)]
        for p in packets:
            spi = p.spi
            if spi.__class__ is not bytes:
                parts.append(p.encode())  # the general path (and its errors)
                continue
            attrs = encode_attributes(p.attributes, "KD/packet")
            try:
                parts.append(_bbhb_pack(p.kd_type, 0, 5 + len(spi) + len(attrs), len(spi)))
            except (struct.error, TypeError) as e:
                raise WireError("KD/packet", -1, f"key packet does not fit: {e}") from None
            parts.append(spi)
            parts.append(attrs)
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Sequence:
    """SEQ payload (type 18), RFC 6407 §5.7: a 4-octet sequence number; Payload Length MUST be 8."""

    TYPE: ClassVar[int] = PayloadType.SEQ
    number: int

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "Sequence":
        if end - pos != 4:
            raise WireError("SEQ", pos - 2, f"payload length {end - pos + 4}, must be 8 (RFC 6407 §5.7)")
        return _make_seq(_i_unpack(buf, pos)[0])

    def encode(self) -> bytes:
        return _pack("SEQ", _I, self.number)


# Decoder fast path (see _fast.py).
_make_group_id = maker(GroupId)
_make_sak = maker(SaKek)
_make_gap = maker(Gap)
_make_sat = maker(SaTek)
_make_sat_other = maker(SaTekOther)
_make_gdoi_sa = maker(GdoiSa)
_make_key_packet = maker(KeyPacket)
_make_kd = maker(KeyDownload)
_make_seq = maker(Sequence)
_SA_CHILD_DECODERS = {PayloadType.SA_KEK: SaKek.decode, PayloadType.GAP: Gap.decode, PayloadType.SA_TEK: SaTek.decode}


# --------------------------------------------------------------------------------------------
# LKH key arrays, RFC 6407 §5.6.3.1-5.6.3.2


@dataclass(frozen=True, slots=True)
class LkhKey:
    """One LKH key (RFC 6407 §5.6.3.1)::

        !   LKH ID                      !    Key Type   !    RESERVED   !
        !                        Key Creation Date                      !
        !                       Key Expiration Date                     !
        !                         Key Handle                            !
        ~                          Key Data                             ~
    """

    lkh_id: int
    key_type: int
    created: int
    expires: int
    handle: int
    key_data: bytes = b""  # [IV ‖] key; no length on the wire

    def __repr__(self) -> str:  # no key material in repr (HACKING.md)
        return f"LkhKey(lkh_id={self.lkh_id}, key_type={self.key_type}, handle={self.handle}, key_data=<{len(self.key_data)} bytes>)"


@dataclass(frozen=True, slots=True)
class LkhArray:
    """LKH_DOWNLOAD_ARRAY (``update is None``) or LKH_UPDATE_ARRAY (RFC 6407 §5.6.3.1-2).

    Download: Version(1) #Keys(2) RESERVED(1) keys.  Update: the same, then LKH ID(2)
    RESERVED2(2) Key Handle(4) of the key that encrypts the first key, then keys.
    ``update`` is ``(lkh_id, key_handle)`` for an update array.
    """

    keys: tuple[LkhKey, ...]
    update: tuple[int, int] | None = None
    version: int = 1

    def encode(self) -> bytes:
        return encode_lkh_array(
            [(k.lkh_id, k.key_type, k.created, k.expires, k.handle, k.key_data) for k in self.keys],
            self.update, self.version)


def encode_lkh_array(keys, update: tuple[int, int] | None = None, version: int = 1) -> bytes:
    """The field value of an :class:`LkhArray` from plain tuples ``(lkh_id, key_type, created,
    expires, handle, key_data)``: the key server's hot path (an eviction of 1,000 members out of
    10^6 encodes ~20,000 keys) without a dataclass per key.  Same checks as the dataclass."""
    where = "LKH array"
    parts = [_pack(where, _BHB, version, len(keys), 0)]
    if update is not None:
        parts.append(_pack(where, _HH, update[0], 0) + _pack(where, _I, update[1]))
    size = None
    pack = _LKH_KEY.pack
    try:
        for lkh_id, key_type, created, expires, handle, data in keys:
            if size is None:
                size = len(data)
            elif len(data) != size:
                raise WireError(where, -1, "keys of different sizes cannot be split again (no length on the wire)")
            parts.append(pack(lkh_id, key_type, 0, created, expires, handle))
            parts.append(bytes(data))
    except struct.error as e:
        raise WireError(where, -1, str(e)) from None
    return b"".join(parts)


def decode_lkh_array(value: bytes, update: bool, key_data_length: int | None = None) -> LkhArray:
    """Split an LKH_DOWNLOAD_ARRAY (``update=False``) or LKH_UPDATE_ARRAY attribute value.

    LKH keys carry no length (RFC 6407 §5.6.3.1; docs/decisions/wire.md ambiguity 7).  Decision: every key of an
    array has the same Key Data size.  Pass it as ``key_data_length`` (IV + key, from the KEK
    algorithm and KEK_KEY_LENGTH); when ``None`` it is inferred by dividing what follows the
    header evenly among #Keys, and refused if that does not divide.
    """
    where = "LKH array"
    hdr = 12 if update else 4
    if len(value) < hdr:
        raise WireError(where, 0, f"{len(value)} bytes, need {hdr}")
    version, count, res = _BHB.unpack_from(value, 0)
    if res:
        raise WireError(where, 3, "RESERVED not zero")
    upd = None
    if update:
        lkh_id, res2, handle = _HHI.unpack_from(value, 4)
        if res2:
            raise WireError(where, 6, "RESERVED2 not zero")
        upd = (lkh_id, handle)
    rest = len(value) - hdr
    if count == 0:
        if rest:
            raise WireError(where, hdr, f"{rest} bytes after 0 keys")
        return LkhArray((), upd, version)
    if key_data_length is None:
        if rest % count or rest // count < 16:
            raise WireError(where, hdr, f"{rest} bytes do not split into {count} keys of equal size")
        key_data_length = rest // count - 16
    step = 16 + key_data_length
    if step * count != rest:
        raise WireError(where, hdr, f"{count} keys of {step} bytes do not fill the {rest} bytes left")
    keys = []
    for pos in range(hdr, len(value), step):
        lkh_id, ktype, r, created, expires, handle = _LKH_KEY.unpack_from(value, pos)
        if r:
            raise WireError(where, pos + 3, "key RESERVED not zero")
        keys.append(LkhKey(lkh_id, ktype, created, expires, handle, value[pos + 16 : pos + step]))
    return LkhArray(tuple(keys), upd, version)

