"""The one place where group policy meets the GDOI wire: SA TEK / SA KEK / KD packets, both ways.

Key server: :func:`sa_tek` (TekPolicy -> SA TEK payload, RFC 6407 section 5.5),
:func:`sa_kek` (KekPolicy -> SA KEK payload, section 5.3), :func:`tek_packet`,
:func:`kek_packet`, :func:`lkh_packet` (KD key packets, section 5.6).
Member: :func:`read_sa_tek`, :func:`read_sa_kek` (payload -> parameters, refusing what
:mod:`policy.suites` does not support), :func:`group_tek`, :func:`group_kek` (parameters +
key packet -> :class:`~gkm.gdoi.keys.GroupTek` / :class:`~gkm.gdoi.keys.GroupKek`).

Attributes sent in an SA TEK (ESP): SA Life Type (seconds) + SA Life Duration (4 octets, the
TEK's remaining lifetime), Encapsulation Mode, Key Length (AES key bits, the GCM salt not
counted, RFC 4106 section 8.4), Authentication Algorithm (CBC suites only), Address
Preservation (tunnel: 4 = source and destination, RFC 5374; transport: 1 = none) and SA
Direction (RFC 6407 section 5.5.1.1).  In an SA KEK: KEK_ALGORITHM, KEK_KEY_LENGTH,
KEK_KEY_LIFETIME (4 octets), SIG_HASH_ALGORITHM, SIG_ALGORITHM, SIG_KEY_LENGTH; not
KEK_MANAGEMENT_ALGORITHM, which RFC 6407 section 5.3.1 keeps out of GROUPKEY-PULL.

GAP (RFC 6407 section 5.4, :func:`gap` / :func:`read_gap`): the group's ACTIVATION_TIME_DELAY
and DEACTIVATION_TIME_DELAY, both basic (TV) attributes in seconds, in the SA payload of
GROUPKEY-PULL message 2 and of every GROUPKEY-PUSH that carries an SA.  A member refuses a
GAP with an attribute it does not understand (section 5.4: "MUST abort"), a repeated one, a
variable-length (TLV) one, and SENDER_ID_REQUEST (a member's request, not key server policy).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Union

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gkm import wire
from gkm.wire import Attribute, Gap, GroupId, KeyPacket, SaKek, SaTek, attr_bytes, attr_int, var_int
from gkm.wire.constants import (
    GapAttr,
    IdType,
    IpsecAttr,
    KdType,
    KekAttr,
    KekKeyAttr,
    LifeType,
    LkhKeyAttr,
    TekKeyAttr,
    TekProtocol,
)
from policy.model import (
    AddressPreservation, GroupPolicy, KekPolicy, Mode, SaDirection, TekPolicy, TrafficSelector,
)
from policy.suites import ESP_SUITES, KEK_CIPHERS, SIGNATURE_SUITES, EspSuite, KekCipher, SignatureSuite

from .keys import GroupKek, GroupTek, LkhKeys
from .push_ack import ACK_KEK_SHA256

__all__ = [
    "MappingError", "TekParams", "KekParams", "GapDelays",
    "sa_tek", "sa_kek", "gap", "tek_packet", "kek_packet", "lkh_packet",
    "read_sa_tek", "read_sa_kek", "read_gap", "group_tek", "group_kek", "read_lkh_packet",
    "suite_for", "signature_key_bits",
]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
UDP = 17

_SUITE_BY_WIRE: dict[tuple[int, int, int | None], EspSuite] = {
    (int(s.transform_id), s.key_length_bits, None if s.auth_algorithm is None else int(s.auth_algorithm)): s
    for s in ESP_SUITES.values()
}
_KEK_BY_WIRE: dict[tuple[int, int], KekCipher] = {(int(c.algorithm), c.key_length_bits): c for c in KEK_CIPHERS.values()}


class MappingError(ValueError):
    """A received SA TEK / SA KEK / key packet that this member cannot or will not use."""


# ------------------------------------------------------------------------------------ helpers


@functools.lru_cache(maxsize=512)
def _group_id(net: IPNetwork, port: int = 0) -> GroupId:
    # cached: every PUSH carries the same few IDs (GroupId is immutable), and building one
    # parses and packs addresses, a tenth of an eviction's CPU before the cache
    if net.num_addresses == 1:
        t = IdType.IPV4_ADDR if net.version == 4 else IdType.IPV6_ADDR
        return GroupId.of(t, net.network_address, port)
    t = IdType.IPV4_ADDR_SUBNET if net.version == 4 else IdType.IPV6_ADDR_SUBNET
    return GroupId.of(t, net, port)


@functools.lru_cache(maxsize=512)
def _network(address) -> IPNetwork:
    return ipaddress.ip_network(address)


def _network_of(gid: GroupId, where: str) -> IPNetwork:
    try:
        v = gid.value()
    except wire.WireError as e:
        raise MappingError(f"{where}: {e}") from None
    if gid.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return ipaddress.ip_network(v)
    if gid.id_type in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
        return v
    raise MappingError(f"{where}: ID type {gid.id_type} is not an address or subnet")


def suite_for(transform_id: int, key_bits: int | None, auth: int | None) -> EspSuite | None:
    return _SUITE_BY_WIRE.get((int(transform_id), key_bits or 0, auth))


@functools.lru_cache(maxsize=64)
def signature_key_bits(public_key_der: bytes) -> int:
    key = load_der_public_key(public_key_der)
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    raise ValueError("signing key is neither RSA nor EC")


# ------------------------------------------------------------------------------------ key server


def sa_tek(tek: TekPolicy, spi: int, direction: SaDirection, lifetime_s: int) -> SaTek:
    """SA TEK payload for one TEK of the group's policy (RFC 6407 section 5.5.1)."""
    s = tek.selector
    suite = tek.suite
    attrs = [
        Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
        Attribute(IpsecAttr.SA_LIFE_DURATION, var_int(max(1, int(lifetime_s)))),
        Attribute(IpsecAttr.ENCAPSULATION_MODE, int(tek.encapsulation_mode)),
        Attribute(IpsecAttr.KEY_LENGTH, suite.key_length_bits),
    ]
    if suite.auth_algorithm is not None:
        attrs.append(Attribute(IpsecAttr.AUTHENTICATION_ALGORITHM, int(suite.auth_algorithm)))
    attrs.append(Attribute(IpsecAttr.ADDRESS_PRESERVATION, int(tek.address_preservation)))
    attrs.append(Attribute(IpsecAttr.SA_DIRECTION, int(direction)))
    return SaTek(
        TekProtocol.IPSEC_ESP, s.protocol, _group_id(s.src, s.src_port), _group_id(s.dst, s.dst_port),
        int(suite.transform_id), spi, tuple(attrs),
    )


def sa_kek(kek: KekPolicy, spi: bytes, source: tuple[str, int] | None, lifetime_s: int, signing_key_bits: int) -> SaKek:
    """SA KEK payload (RFC 6407 section 5.3).  ``source``: the key server address PUSH messages
    come from (None: the unspecified address of the rekey address's family, port 848)."""
    dst_net = _network(kek.rekey_address)
    if source is None:
        src = _group_id(_network("0.0.0.0/0" if dst_net.version == 4 else "::/0"), 848)
    else:
        src = _group_id(_network(source[0]), source[1])
    sig = kek.signature
    attrs = (
        Attribute(KekAttr.KEK_ALGORITHM, int(kek.cipher.algorithm)),
        Attribute(KekAttr.KEK_KEY_LENGTH, kek.cipher.key_length_bits),
        Attribute(KekAttr.KEK_KEY_LIFETIME, var_int(max(1, int(lifetime_s)))),
        Attribute(KekAttr.SIG_HASH_ALGORITHM, int(sig.hash_algorithm)),
        Attribute(KekAttr.SIG_ALGORITHM, int(sig.algorithm)),
        Attribute(KekAttr.SIG_KEY_LENGTH, signing_key_bits),
    )
    if kek.unicast:  # RFC 8263 section 5: in every SA KEK, PULL and PUSH alike
        attrs += (Attribute(KekAttr.KEK_ACK_REQUESTED, ACK_KEK_SHA256),)
    return SaKek(UDP, src, _group_id(dst_net, kek.rekey_port), bytes(spi), attrs)


def gap(group: GroupPolicy) -> Gap:
    """The group's GAP payload: ATD and DTD (RFC 6407 section 5.4.1)."""
    return Gap((Attribute(GapAttr.ACTIVATION_TIME_DELAY, int(group.activation_delay_s)),
                Attribute(GapAttr.DEACTIVATION_TIME_DELAY, int(group.deactivation_delay_s))))


def tek_packet(spi: int, enc_keymat: bytes, auth_key: bytes) -> KeyPacket:
    attrs = [Attribute(TekKeyAttr.TEK_ALGORITHM_KEY, bytes(enc_keymat))]
    if auth_key:
        attrs.append(Attribute(TekKeyAttr.TEK_INTEGRITY_KEY, bytes(auth_key)))
    return KeyPacket(KdType.TEK, spi.to_bytes(4, "big"), tuple(attrs))


def kek_packet(spi: bytes, keymat: bytes, public_key_der: bytes | None) -> KeyPacket:
    attrs = [Attribute(KekKeyAttr.KEK_ALGORITHM_KEY, bytes(keymat))]
    if public_key_der:
        attrs.append(Attribute(KekKeyAttr.SIG_ALGORITHM_KEY, bytes(public_key_der)))
    return KeyPacket(KdType.KEK, bytes(spi), tuple(attrs))


def lkh_packet(spi: bytes, download: list[tuple[int, int, bytes]], key_type: int, created: int = 0, expires: int = 0) -> KeyPacket:
    """LKH key packet with an LKH_DOWNLOAD_ARRAY (RFC 6407 section 5.6.3.1), leaf first."""
    keys = tuple(wire.LkhKey(level, key_type, created, expires, handle, key) for level, handle, key in download)
    return KeyPacket(KdType.LKH, bytes(spi), (Attribute(LkhKeyAttr.LKH_DOWNLOAD_ARRAY, wire.LkhArray(keys).encode()),))


# ------------------------------------------------------------------------------------ member


@dataclass(frozen=True, slots=True)
class TekParams:
    spi: int
    src: IPNetwork
    dst: IPNetwork
    protocol: int
    src_port: int
    dst_port: int
    mode: Mode
    address_preservation: AddressPreservation
    direction: SaDirection
    suite: EspSuite
    lifetime_s: int


@dataclass(frozen=True, slots=True)
class KekParams:
    spi: bytes
    src: IPNetwork
    src_port: int
    dst: IPNetwork
    dst_port: int
    cipher: KekCipher
    signature: SignatureSuite
    lifetime_s: int
    #: KEK_ACK_REQUESTED (RFC 8263 section 2): the ACK type asked for, 0: none
    ack_requested: int = 0


@dataclass(frozen=True, slots=True)
class GapDelays:
    """The key server's GAP delays in seconds (None: that attribute was not sent)."""

    activation_s: int | None
    deactivation_s: int | None


def read_gap(g: Gap) -> GapDelays:
    """ATD and DTD of a GAP payload from the key server; MappingError for anything else."""
    seen: dict[int, int] = {}
    for t, v in g.attributes:
        if t not in (GapAttr.ACTIVATION_TIME_DELAY, GapAttr.DEACTIVATION_TIME_DELAY):
            what = "SENDER_ID_REQUEST (a member's request)" if t == GapAttr.SENDER_ID_REQUEST \
                else f"attribute {int(t)}"
            raise MappingError(f"GAP: {what} not understood from a key server "
                               f"(RFC 6407 section 5.4: abort)")
        if not isinstance(v, int):
            raise MappingError(f"GAP: {GapAttr(t).name} in the variable form (must be basic)")
        if t in seen:
            raise MappingError(f"GAP: {GapAttr(t).name} twice")
        seen[t] = v
    return GapDelays(seen.get(GapAttr.ACTIVATION_TIME_DELAY),
                     seen.get(GapAttr.DEACTIVATION_TIME_DELAY))


_KNOWN_TEK_ATTRS = frozenset((
    IpsecAttr.SA_LIFE_TYPE, IpsecAttr.SA_LIFE_DURATION, IpsecAttr.ENCAPSULATION_MODE, IpsecAttr.KEY_LENGTH,
    IpsecAttr.AUTHENTICATION_ALGORITHM, IpsecAttr.ADDRESS_PRESERVATION, IpsecAttr.SA_DIRECTION,
))


def _lifetime(attrs, type_attr: int | None, dur_attr: int, where: str) -> int:
    if type_attr is not None:
        lt = attr_int(attrs, type_attr, LifeType.SECONDS)
        if lt != LifeType.SECONDS:
            raise MappingError(f"{where}: life type {lt} (only seconds are supported)")
    life = attr_int(attrs, dur_attr)
    if not life:
        raise MappingError(f"{where}: no lifetime")
    return life


def read_sa_tek(sat, allowed_suites: frozenset[str] | None = None) -> TekParams:
    """Parameters of a received SA TEK; MappingError when it is not something we support."""
    if not isinstance(sat, SaTek) or sat.protocol_id != TekProtocol.IPSEC_ESP:
        raise MappingError(f"SA TEK protocol {getattr(sat, 'protocol_id', '?')} is not ESP")
    where = f"SA TEK {sat.spi:#010x}"
    attrs = sat.attributes
    for t, _v in attrs:
        if t not in _KNOWN_TEK_ATTRS:
            raise MappingError(f"{where}: attribute {t} not supported (RFC 6407: abort on unknown attributes)")
    types = [t for t, _v in attrs]
    if len(types) != len(set(types)):
        raise MappingError(f"{where}: repeated attribute")
    suite = suite_for(sat.transform_id, attr_int(attrs, IpsecAttr.KEY_LENGTH), attr_int(attrs, IpsecAttr.AUTHENTICATION_ALGORITHM))
    if suite is None:
        raise MappingError(
            f"{where}: transform {sat.transform_id}, key length {attr_int(attrs, IpsecAttr.KEY_LENGTH)}, "
            f"auth {attr_int(attrs, IpsecAttr.AUTHENTICATION_ALGORITHM)} is not a supported suite")
    if allowed_suites is not None and suite.name not in allowed_suites:
        raise MappingError(f"{where}: suite {suite.name} was not asked for")
    if sat.spi < 256:
        raise MappingError(f"{where}: reserved SPI")
    try:
        encap = attr_int(attrs, IpsecAttr.ENCAPSULATION_MODE)
        mode = {1: Mode.TUNNEL, 2: Mode.TRANSPORT}[encap]
        ap = AddressPreservation(attr_int(attrs, IpsecAttr.ADDRESS_PRESERVATION, AddressPreservation.SOURCE_AND_DESTINATION))
        direction = SaDirection(attr_int(attrs, IpsecAttr.SA_DIRECTION, SaDirection.SYMMETRIC))
    except (KeyError, ValueError) as e:
        raise MappingError(f"{where}: bad encapsulation mode, address preservation or direction ({e})") from None
    src, dst = _network_of(sat.src, f"{where} SRC ID"), _network_of(sat.dst, f"{where} DST ID")
    if src.version != dst.version:
        raise MappingError(f"{where}: source and destination of different families")
    return TekParams(
        sat.spi, src, dst, sat.protocol, sat.src.port, sat.dst.port, mode, ap, direction, suite,
        _lifetime(attrs, IpsecAttr.SA_LIFE_TYPE, IpsecAttr.SA_LIFE_DURATION, where),
    )


def read_sa_kek(sak: SaKek) -> KekParams:
    where = f"SA KEK {sak.spi.hex()}"
    attrs = sak.attributes
    cipher = _KEK_BY_WIRE.get((attr_int(attrs, KekAttr.KEK_ALGORITHM, 0), attr_int(attrs, KekAttr.KEK_KEY_LENGTH, 0)))
    if cipher is None:
        raise MappingError(f"{where}: KEK algorithm {attr_int(attrs, KekAttr.KEK_ALGORITHM)} / "
                           f"{attr_int(attrs, KekAttr.KEK_KEY_LENGTH)} bits not supported")
    sig_alg = attr_int(attrs, KekAttr.SIG_ALGORITHM)
    sig_hash = attr_int(attrs, KekAttr.SIG_HASH_ALGORITHM)
    sig = next((s for s in SIGNATURE_SUITES.values() if int(s.algorithm) == sig_alg
                and (sig_hash is None and s.hash_implicit or sig_hash == int(s.hash_algorithm))), None)
    if sig is None:
        raise MappingError(f"{where}: signature algorithm {sig_alg} / hash {sig_hash} not supported")
    for t, _v in attrs:
        if t == KekAttr.KEK_MANAGEMENT_ALGORITHM:
            continue  # MUST NOT appear in a PULL; ignored (RFC 6407 section 5.3.1)
        if t not in (KekAttr.KEK_ALGORITHM, KekAttr.KEK_KEY_LENGTH, KekAttr.KEK_KEY_LIFETIME,
                     KekAttr.SIG_HASH_ALGORITHM, KekAttr.SIG_ALGORITHM, KekAttr.SIG_KEY_LENGTH, KekAttr.KEK_ACK_REQUESTED):
            raise MappingError(f"{where}: attribute {t} not supported")
    return KekParams(
        sak.spi, _network_of(sak.src, f"{where} SRC ID"), sak.src.port, _network_of(sak.dst, f"{where} DST ID"), sak.dst.port,
        cipher, sig, _lifetime(attrs, None, KekAttr.KEK_KEY_LIFETIME, where),
        attr_int(attrs, KekAttr.KEK_ACK_REQUESTED, 0) or 0,
    )


def group_tek(group_id: int, p: TekParams, packet: KeyPacket) -> GroupTek:
    keymat = attr_bytes(packet.attributes, TekKeyAttr.TEK_ALGORITHM_KEY)
    auth = attr_bytes(packet.attributes, TekKeyAttr.TEK_INTEGRITY_KEY) or b""
    s = p.suite
    if keymat is None or len(keymat) != s.enc_key_bytes:
        raise MappingError(f"TEK {p.spi:#010x}: TEK_ALGORITHM_KEY must be {s.enc_key_bytes} bytes for {s.name}")
    if len(auth) != s.integrity_key_bytes:
        raise MappingError(f"TEK {p.spi:#010x}: TEK_INTEGRITY_KEY must be {s.integrity_key_bytes} bytes for {s.name}")
    try:
        selector = TrafficSelector(p.src, p.dst, p.protocol, p.src_port, p.dst_port)
    except ValueError as e:
        raise MappingError(f"TEK {p.spi:#010x}: selector: {e}") from None
    return GroupTek(group_id, p.spi, selector, p.mode, p.address_preservation, p.direction, s.name, keymat, auth,
                    p.lifetime_s)


def group_kek(group_id: int, p: KekParams, packet: KeyPacket) -> GroupKek:
    keymat = attr_bytes(packet.attributes, KekKeyAttr.KEK_ALGORITHM_KEY)
    pub = attr_bytes(packet.attributes, KekKeyAttr.SIG_ALGORITHM_KEY)
    c = p.cipher
    if keymat is None or len(keymat) != c.block_bytes + c.key_bytes:
        raise MappingError(f"KEK {p.spi.hex()}: KEK_ALGORITHM_KEY must be IV + key = {c.block_bytes + c.key_bytes} bytes")
    if not pub:
        raise MappingError(f"KEK {p.spi.hex()}: no SIG_ALGORITHM_KEY (cannot verify GROUPKEY-PUSH)")
    try:
        key = load_der_public_key(pub)
    except ValueError:
        raise MappingError(f"KEK {p.spi.hex()}: SIG_ALGORITHM_KEY is not a DER public key") from None
    except UnsupportedAlgorithm as e:  # a well-formed key of a curve or type we do not know
        raise MappingError(f"KEK {p.spi.hex()}: SIG_ALGORITHM_KEY: {e}") from None
    want = rsa.RSAPublicKey if p.signature.key_type == "rsa" else ec.EllipticCurvePublicKey
    if not isinstance(key, want) or (p.signature.curve and key.curve.name != p.signature.curve):
        raise MappingError(f"KEK {p.spi.hex()}: signing key does not fit {p.signature.name}")
    return GroupKek(
        group_id, p.spi, p.src, p.src_port, p.dst, p.dst_port, c.name, keymat[c.block_bytes:], keymat[: c.block_bytes],
        p.signature.name, pub, p.lifetime_s, p.ack_requested,
    )


def read_lkh_packet(packet: KeyPacket) -> LkhKeys:
    value = attr_bytes(packet.attributes, LkhKeyAttr.LKH_DOWNLOAD_ARRAY)
    if value is None:
        raise MappingError("LKH key packet without LKH_DOWNLOAD_ARRAY")
    try:
        arr = wire.decode_lkh_array(value, update=False)
    except wire.WireError as e:
        raise MappingError(f"LKH download array: {e}") from None
    if not arr.keys:
        raise MappingError("empty LKH download array")
    return LkhKeys(tuple((k.lkh_id, k.handle, k.key_data) for k in arr.keys))
