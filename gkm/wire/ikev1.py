"""IKEv1 / ISAKMP payload bodies: RFC 2408 §3.4-3.16, the IPsec DOI RFC 2407 §4.

Every payload is a frozen dataclass with a ``TYPE``, a ``decode(buf, pos, end)`` class method
reading the body ``buf[pos:end]`` (the generic header already consumed by the chain reader in
:mod:`gkm.wire.message`; ``pos`` is an absolute offset so errors name the place in the message),
and ``encode()`` returning the body.  Decoders check every length before reading and raise only
:class:`~gkm.wire.errors.WireError`.  Constructors do not validate; ``encode`` refuses values
that do not fit the wire format.

RESERVED fields: RFC 2408 §2.5.2 says they MUST be sent as zero and the receiver SHOULD discard
packets with other values.  We do: every RESERVED field is checked to be zero on decode, which
is also what makes encode(decode(x)) == x exact without carrying reserved bits around.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from .attributes import Attribute, attribute_types, decode_attributes, encode_attributes
from .constants import (
    ID_DATA_LENGTH,
    CertEncoding,
    Doi,
    IdType,
    IpsecAttr,
    NotifyType,
    PayloadType,
    Phase1Attr,
    ProtocolId,
    TekProtocol,
)
from ._fast import maker
from .errors import WireError

_GEN = struct.Struct("!BBH")  # generic payload header, RFC 2408 §3.2
_gen_unpack = _GEN.unpack_from
_gen_pack = _GEN.pack
_I = struct.Struct("!I")
_II = struct.Struct("!II")
_BBH = struct.Struct("!BBH")
_IBBH = struct.Struct("!IBBH")
_BBBB = struct.Struct("!BBBB")
_B = struct.Struct("!B")
_transform_unpack = struct.Struct("!BBHBBH").unpack_from  # generic header + Transform fixed part

_ID_TYPES = IdType._value2member_map_
_PROTO = ProtocolId._value2member_map_
# Delete/Notification Protocol-ID registry by DOI: RFC 2407 §4.4.1 for DOI 0/1, the TEK
# protocols of RFC 6407 §5.5 (0 = KEK) for DOI 2 (RFC 6407 §5.9).
_PROTO_BY_DOI = {Doi.GDOI: TekProtocol._value2member_map_}
_NOTIFY = NotifyType._value2member_map_
_DOI = Doi._value2member_map_
_CERT = CertEncoding._value2member_map_
_PHASE1_ATTRS = attribute_types(Phase1Attr._value2member_map_)
_IPSEC_ATTRS = attribute_types(IpsecAttr._value2member_map_)

# Enum members used on the hot paths, bound once: reading an attribute of an Enum class costs
# several times a global lookup (EnumType attribute access).
_NONE = PayloadType.NONE
_PROPOSAL = PayloadType.PROPOSAL
_TRANSFORM = PayloadType.TRANSFORM
_ISAKMP = ProtocolId.ISAKMP
_DOI_IPSEC = Doi.IPSEC
_SA_DOIS = (Doi.IPSEC, Doi.GDOI)

SIT_IDENTITY_ONLY = 1  # RFC 2407 §4.2
MAX_PROPOSALS = 64  # bound on proposals in one SA (Proposal # is one octet; real offers have a few)


def _pack(where: str, st: struct.Struct, *values) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as e:
        raise WireError(where, -1, str(e)) from None


# --------------------------------------------------------------------------------------------
# Identification data, shared by the ID payload and the GDOI SA KEK / SA TEK identities


def check_id_data(id_type: int, data: bytes, where: str, offset: int) -> None:
    """Refuse address data of the wrong size (RFC 2407 §4.6.2.2-4.6.2.12)."""
    need = ID_DATA_LENGTH.get(id_type)
    if need is not None and len(data) != need:
        raise WireError(where, offset, f"{IdType(id_type).name} data must be {need} bytes, not {len(data)}")


def id_data(id_type: int, value) -> bytes:
    """Identification data for a value: addresses, networks ``(first, last)`` ranges, str, int, bytes.

    KEY_ID given as an ``int`` is the 4-octet big-endian group number of RFC 6407 §5.1.
    """
    t = id_type
    if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return ipaddress.ip_address(value).packed
    if t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
        net = ipaddress.ip_network(value)
        return net.network_address.packed + net.netmask.packed
    if t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
        first, last = value
        return ipaddress.ip_address(first).packed + ipaddress.ip_address(last).packed
    if t == IdType.KEY_ID and isinstance(value, int):
        return value.to_bytes(4, "big")
    if isinstance(value, str):
        return value.encode("ascii")
    return bytes(value)


def id_value(id_type: int, data: bytes):
    """Typed view of identification data (addresses, networks, ranges, str for names, else bytes).

    Raises ``WireError`` for a non-contiguous subnet mask or non-ASCII names.
    """
    t = id_type
    try:
        if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return ipaddress.ip_address(data)
        if t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
            half = len(data) // 2
            bits = half * 8
            mask = int.from_bytes(data[half:], "big")
            prefix = bin(mask).count("1")
            if mask != ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1):
                raise ValueError(f"non-contiguous mask {data[half:].hex()}")
            return ipaddress.ip_network((ipaddress.ip_address(data[:half]), prefix), strict=False)
        if t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
            half = len(data) // 2
            return ipaddress.ip_address(data[:half]), ipaddress.ip_address(data[half:])
        if t in (IdType.FQDN, IdType.USER_FQDN):
            return data.decode("ascii")
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError("ID", -1, f"bad {IdType(t).name} data: {e}") from None
    return data


# --------------------------------------------------------------------------------------------
# SA, Proposal, Transform (RFC 2408 §3.4-3.6)


@dataclass(frozen=True, slots=True)
class Transform:
    """Transform payload, RFC 2408 §3.6::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        !  Transform #  !  Transform-Id !           RESERVED2           !
        ~                        SA Attributes                          ~
    """

    TYPE: ClassVar[int] = PayloadType.TRANSFORM
    number: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int, attr_types, where: str) -> "Transform":
        if end - pos < 4:
            raise WireError(where, pos, f"body of {end - pos} bytes, need 4")
        number, tid, res2 = _BBH.unpack_from(buf, pos)
        if res2:
            raise WireError(where, pos + 2, "RESERVED2 not zero (RFC 2408 §2.5.2)")
        return _make_transform(number, tid, decode_attributes(buf, pos + 4, end, attr_types, where))

    def encode(self) -> bytes:
        return _pack("Transform", _BBH, self.number, self.transform_id, 0) + encode_attributes(
            self.attributes, "Transform"
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """Proposal payload, RFC 2408 §3.5::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        !  Proposal #   !  Protocol-Id  !    SPI Size   !# of Transforms!
        !                        SPI (variable)                         !

    followed by the Transform payloads.  Transform attribute types are read as
    :class:`Phase1Attr` for PROTO_ISAKMP and :class:`IpsecAttr` otherwise.
    """

    TYPE: ClassVar[int] = PayloadType.PROPOSAL
    number: int
    protocol_id: int
    spi: bytes = b""
    transforms: tuple[Transform, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int, where: str) -> "Proposal":
        if end - pos < 4:
            raise WireError(where, pos, f"body of {end - pos} bytes, need 4")
        number, proto, spi_size, count = _BBBB.unpack_from(buf, pos)
        pos += 4
        if spi_size > end - pos:
            raise WireError(where, pos - 2, f"SPI size {spi_size} exceeds the payload")
        spi = buf[pos : pos + spi_size]
        pos += spi_size
        attr_types = _PHASE1_ATTRS if proto == _ISAKMP else _IPSEC_ATTRS
        transforms = []
        np = _TRANSFORM if pos < end else _NONE
        while np:
            if np != _TRANSFORM:
                raise WireError(f"{where}/Transform[{len(transforms)}]", pos, f"next payload {np} inside a Proposal, expected 3 or 0")
            if len(transforms) == count:
                raise WireError(f"{where}/Transform[{count}]", pos, f"more Transforms than # of Transforms ({count})")
            if end - pos >= 8:  # generic header + Transform #, Transform-Id, RESERVED2 inline
                np, reserved, length, number_t, tid, res2 = _transform_unpack(buf, pos)
                tend = pos + length
                if not reserved and not res2 and 8 <= length and tend <= end:
                    transforms.append(_make_transform(number_t, tid, decode_attributes(buf, pos + 8, tend, attr_types, where)))
                    pos = tend
                    continue
            np, tend = _generic(buf, pos, end, where, "Transform", len(transforms))
            transforms.append(Transform.decode(buf, pos + 4, tend, attr_types, where))
            pos = tend
        if pos != end:
            raise WireError(where, pos, f"{end - pos} bytes after the last Transform")
        if count != len(transforms):
            raise WireError(where, pos, f"# of Transforms says {count}, found {len(transforms)}")
        return _make_proposal(number, _PROTO.get(proto, proto), spi, tuple(transforms))

    def encode(self) -> bytes:
        parts = [_pack("Proposal", _BBBB, self.number, self.protocol_id, len(self.spi), len(self.transforms)), self.spi]
        last = len(self.transforms) - 1
        for i, t in enumerate(self.transforms):
            body = t.encode()
            parts.append(_gen_header(_NONE if i == last else _TRANSFORM, len(body), "Transform"))
            parts.append(body)
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    """SA payload with proposals, RFC 2408 §3.4 (IKEv1 phase 1, IPsec DOI phase 2)::

        ! Next Payload  !   RESERVED    !         Payload Length        !
        !              Domain of Interpretation  (DOI)                  !
        ~                           Situation                           ~
        ~                    Proposal payloads ...                      ~

    DOI 1: Situation is 4 octets (RFC 2407 §4.6.1); SIT_SECRECY / SIT_INTEGRITY, which append
    labelled-domain data, are refused.  DOI 2 in phase 1 (RFC 6407 §2.1 requires it) uses this
    same RFC 2408 proposal layout with a 4-octet Situation (0); the GDOI layout of
    :class:`gkm.wire.gdoi.GdoiSa` is used only in GROUPKEY-PULL/PUSH (decision: RFC 6407 §2.1
    and §5.2; the exchange type tells which).
    """

    TYPE: ClassVar[int] = PayloadType.SA
    doi: int
    situation: int
    proposals: tuple[Proposal, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "SecurityAssociation":
        if end - pos < 8:
            raise WireError("SA", pos, f"body of {end - pos} bytes, need 8")
        doi, sit = _II.unpack_from(buf, pos)
        if doi not in _SA_DOIS:
            raise WireError("SA", pos, f"unsupported DOI {doi}")
        if doi == _DOI_IPSEC and sit & ~SIT_IDENTITY_ONLY:
            raise WireError("SA", pos + 4, f"unsupported IPsec situation 0x{sit:x} (secrecy/integrity)")
        pos += 8
        proposals = []
        np = _PROPOSAL if pos < end else _NONE
        while np:
            if np != _PROPOSAL:
                raise WireError(f"SA/Proposal[{len(proposals)}]", pos, f"next payload {np} inside an SA, expected 2 or 0")
            if len(proposals) == MAX_PROPOSALS:
                raise WireError(f"SA/Proposal[{MAX_PROPOSALS}]", pos, f"more than {MAX_PROPOSALS} proposals")
            np, pend = _generic(buf, pos, end, "SA", "Proposal", len(proposals))
            proposals.append(Proposal.decode(buf, pos + 4, pend, f"SA/Proposal[{len(proposals)}]"))
            pos = pend
        if pos != end:
            raise WireError("SA", pos, f"{end - pos} bytes after the last Proposal")
        return _make_sa(_DOI[doi], sit, tuple(proposals))

    def encode(self) -> bytes:
        if self.doi not in _SA_DOIS:
            raise WireError("SA", -1, f"unsupported DOI {self.doi}")
        parts = [_pack("SA", _II, self.doi, self.situation)]
        last = len(self.proposals) - 1
        for i, p in enumerate(self.proposals):
            body = p.encode()
            parts.append(_gen_header(_NONE if i == last else _PROPOSAL, len(body), "Proposal"))
            parts.append(body)
        return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Opaque payloads


class _Opaque:
    __slots__ = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int):
        return cls._make(buf[pos:end])

    def encode(self) -> bytes:
        return bytes(self.data)


@dataclass(frozen=True, slots=True)
class KeyExchange(_Opaque):
    """KE, RFC 2408 §3.7: the public value (MODP g^x padded to the prime length, ECP x‖y)."""

    TYPE: ClassVar[int] = PayloadType.KE
    data: bytes


@dataclass(frozen=True, slots=True)
class Hash(_Opaque):
    """HASH, RFC 2408 §3.11."""

    TYPE: ClassVar[int] = PayloadType.HASH
    data: bytes


@dataclass(frozen=True, slots=True)
class Signature(_Opaque):
    """SIG, RFC 2408 §3.12."""

    TYPE: ClassVar[int] = PayloadType.SIG
    data: bytes


@dataclass(frozen=True, slots=True)
class Nonce(_Opaque):
    """Nonce, RFC 2408 §3.13.  The 8-256 byte rule (RFC 2409 §5) is the engine's to check."""

    TYPE: ClassVar[int] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True, slots=True)
class VendorId(_Opaque):
    """Vendor ID, RFC 2408 §3.16."""

    TYPE: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload of a type this codec does not know, kept verbatim and reported.

    IKEv1 has no critical bit (RFC 2408 §3.2: the octet after Next Payload is RESERVED); since
    RESERVED must be zero (§2.5.2, checked by the chain reader), every payload that gets here has
    the IKEv2 "critical" bit clear, so the chain reader skips it: the payload is kept for exact
    re-encoding and listed in ``Message.unknown``.  Whether to answer INVALID-PAYLOAD-TYPE
    (RFC 2408 §5.1 step 2) is the protocol engine's decision.
    """

    payload_type: int
    body: bytes

    @property
    def TYPE(self) -> int:  # noqa: N802 - same protocol as the known payloads
        return self.payload_type

    def encode(self) -> bytes:
        return bytes(self.body)


# --------------------------------------------------------------------------------------------
# ID, CERT, CR


@dataclass(frozen=True, slots=True)
class Identification:
    """Identification payload with the IPsec DOI layout, RFC 2407 §4.6.2::

        ! Next Payload  !   RESERVED    !        Payload Length         !
        !   ID Type     !  Protocol ID  !             Port              !
        ~                     Identification Data                       ~

    ``data`` is kept as sent; :meth:`value` gives a typed view, :meth:`of` builds one.
    """

    TYPE: ClassVar[int] = PayloadType.ID
    id_type: int
    data: bytes
    protocol: int = 0
    port: int = 0

    @classmethod
    def of(cls, id_type: int, value, protocol: int = 0, port: int = 0) -> "Identification":
        return cls(id_type, id_data(id_type, value), protocol, port)

    def value(self):
        return id_value(self.id_type, self.data)

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "Identification":
        if end - pos < 4:
            raise WireError("ID", pos, f"body of {end - pos} bytes, need 4")
        t, proto, port = _BBH.unpack_from(buf, pos)
        data = buf[pos + 4 : end]
        check_id_data(t, data, "ID", pos + 4)
        return _make_id(_ID_TYPES.get(t, t), data, proto, port)

    def encode(self) -> bytes:
        check_id_data(self.id_type, self.data, "ID", -1)
        return _pack("ID", _BBH, self.id_type, self.protocol, self.port) + bytes(self.data)


@dataclass(frozen=True, slots=True)
class Certificate:
    """CERT, RFC 2408 §3.9: Cert Encoding(1) + data (4 = X.509 signature, DER)."""

    TYPE: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "Certificate":
        if end - pos < 1:
            raise WireError("CERT", pos, "empty body, need the encoding octet")
        e = buf[pos]
        return _make_cert(_CERT.get(e, e), buf[pos + 1 : end])

    def encode(self) -> bytes:
        return _pack("CERT", _B, self.encoding) + bytes(self.data)


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """CR, RFC 2408 §3.10: Cert. Type(1) + Certificate Authority (optional DN)."""

    TYPE: ClassVar[int] = PayloadType.CR
    encoding: int
    authority: bytes = b""

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "CertificateRequest":
        if end - pos < 1:
            raise WireError("CR", pos, "empty body, need the certificate type octet")
        e = buf[pos]
        return _make_cr(_CERT.get(e, e), buf[pos + 1 : end])

    def encode(self) -> bytes:
        return _pack("CR", _B, self.encoding) + bytes(self.authority)


# --------------------------------------------------------------------------------------------
# Notification, Delete


@dataclass(frozen=True, slots=True)
class Notification:
    """Notification, RFC 2408 §3.14::

        !              Domain of Interpretation  (DOI)                  !
        !  Protocol-ID  !   SPI Size    !      Notify Message Type      !
        ~                Security Parameter Index (SPI)                 ~
        ~                       Notification Data                       ~
    """

    TYPE: ClassVar[int] = PayloadType.NOTIFICATION
    doi: int
    protocol_id: int
    notify_type: int
    spi: bytes = b""
    data: bytes = b""

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "Notification":
        if end - pos < 8:
            raise WireError("N", pos, f"body of {end - pos} bytes, need 8")
        doi, proto, spi_size, ntype = _IBBH.unpack_from(buf, pos)
        pos += 8
        if spi_size > end - pos:
            raise WireError("N", pos - 3, f"SPI size {spi_size} exceeds the payload")
        return _make_notification(
            _DOI.get(doi, doi), _PROTO_BY_DOI.get(doi, _PROTO).get(proto, proto), _NOTIFY.get(ntype, ntype),
            buf[pos : pos + spi_size], buf[pos + spi_size : end],
        )

    def encode(self) -> bytes:
        return _pack("N", _IBBH, self.doi, self.protocol_id, len(self.spi), self.notify_type) + bytes(self.spi) + bytes(self.data)


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete, RFC 2408 §3.15; GDOI use RFC 6407 §5.9 (DOI 2; KEK: protocol 0, SPI size 16)::

        !              Domain of Interpretation  (DOI)                  !
        !  Protocol-Id  !   SPI Size    !           # of SPIs           !
        ~               Security Parameter Index(es) (SPI)              ~

    ``spi_size`` is explicit because a Delete may carry no SPI.  A non-zero count with SPI
    size 0 is refused (it names nothing).
    """

    TYPE: ClassVar[int] = PayloadType.DELETE
    doi: int
    protocol_id: int
    spi_size: int
    spis: tuple[bytes, ...] = ()

    @classmethod
    def decode(cls, buf: bytes, pos: int, end: int) -> "Delete":
        if end - pos < 8:
            raise WireError("D", pos, f"body of {end - pos} bytes, need 8")
        doi, proto, size, count = _IBBH.unpack_from(buf, pos)
        pos += 8
        if count and not size:
            raise WireError("D", pos - 3, f"{count} SPIs of size 0")
        if size * count != end - pos:
            raise WireError("D", pos - 2, f"{count} SPIs of {size} bytes do not fill the {end - pos} bytes left")
        spis = tuple(buf[i : i + size] for i in range(pos, end, size)) if size else ()
        return _make_delete(_DOI.get(doi, doi), _PROTO_BY_DOI.get(doi, _PROTO).get(proto, proto), size, spis)

    def encode(self) -> bytes:
        if any(len(s) != self.spi_size for s in self.spis) or (self.spis and not self.spi_size):
            raise WireError("D", -1, f"every SPI must be {self.spi_size} bytes (and not empty)")
        return _pack("D", _IBBH, self.doi, self.protocol_id, self.spi_size, len(self.spis)) + b"".join(self.spis)


# --------------------------------------------------------------------------------------------
# Decoder fast path (see _fast.py): the decoders above build their values with these.

_make_transform = maker(Transform)
_make_proposal = maker(Proposal)
_make_sa = maker(SecurityAssociation)
_make_id = maker(Identification)
_make_cert = maker(Certificate)
_make_cr = maker(CertificateRequest)
_make_notification = maker(Notification)
_make_delete = maker(Delete)
_make_unknown = maker(UnknownPayload)
for _cls in (KeyExchange, Hash, Signature, Nonce, VendorId):
    _cls._make = staticmethod(maker(_cls))  # used by _Opaque.decode
del _cls


# --------------------------------------------------------------------------------------------
# helpers shared with gdoi.py and message.py


def _generic(buf: bytes, pos: int, end: int, where: str, kind: str = "", index: int = 0) -> tuple[int, int]:
    """Read a generic payload header at ``pos`` inside ``[.., end)``: ``(next_payload, payload_end)``.

    The error names ``where/kind[index]`` (built only when raising).
    """
    if end - pos < 4:
        raise WireError(_name(where, kind, index), pos, f"truncated generic payload header ({end - pos} bytes left)")
    np, reserved, length = _gen_unpack(buf, pos)
    if reserved:
        raise WireError(_name(where, kind, index), pos + 1, "RESERVED octet not zero (RFC 2408 §2.5.2, §3.2)")
    if length < 4:
        raise WireError(_name(where, kind, index), pos + 2, f"payload length {length} < 4")
    pend = pos + length
    if pend > end:
        raise WireError(_name(where, kind, index), pos + 2, f"payload length {length} exceeds its container by {pend - end}")
    return np, pend


def _name(where: str, kind: str, index: int) -> str:
    return f"{where}/{kind}[{index}]" if kind else where


def _gen_header(next_payload: int, body_length: int, where: str) -> bytes:
    n = body_length + 4
    if n > 0xFFFF:
        raise WireError(where, -1, f"payload too long ({n} bytes)")
    return _gen_pack(next_payload, 0, n)
