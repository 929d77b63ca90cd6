"""ESP Data-Security SA policy <-> :class:`gkm.gdoi.keys.GroupTek` (RFC 9838 §4.3.1).

The member hands the same :class:`GroupTek` to the SA installer as a GDOI member does.  What a
GSA policy does not carry (RFC 9838 has no mode or direction attribute) comes from the member's
own configuration: ``mode``, ``address_preservation`` and ``direction`` are parameters.

Mapping decisions: suites are the :data:`policy.suites.ESP_SUITES` ones, ENCR AES-GCM-16 or
AES-CBC with a Key Length attribute, INTEG HMAC-SHA2 for CBC only; SN must be "32-bit
Sequential Numbers" (0): ID 1 (64-bit) is forbidden for multicast SAs (§4.3.1.1.3) and the
"32-bit Unspecified Numbers" ID has no number in the RFC text.  A selector's address range must
be one CIDR block and its port range one port or all ports (what ``policy.model`` can say); the
source and destination selectors must name the same IP protocol.  SA keys: encryption key
(GCM: key || salt) then integrity key (§3.5, RFC 7296 §2.17).
"""

from __future__ import annotations

import ipaddress

from gkm.gdoi.keys import GroupTek
from gkm.wire.attributes import Attribute
from policy.model import TrafficSelector as PolicySelector
from policy.suites import ESP_SUITES, EspSuite, EspTransformId

from .constants import Encr, GsaAttr, Integ, ProtocolId, TransformAttr, TransformType, TsType
from .gsa import GsaPolicy
from .payloads import Transform, TrafficSelector

_INTEG = {256: Integ.HMAC_SHA2_256_128, 384: Integ.HMAC_SHA2_384_192, 512: Integ.HMAC_SHA2_512_256}
_INTEG_BITS = {v: k for k, v in _INTEG.items()}
SN_32BIT = 0


class TekPolicyError(ValueError):
    """A GSA ESP policy msec cannot install."""


def _transforms(suite: EspSuite) -> tuple[Transform, ...]:
    key_len = (Attribute(TransformAttr.KEY_LENGTH, suite.key_length_bits),)
    if suite.aead:
        return (Transform(TransformType.ENCR, Encr.AES_GCM_16, key_len), Transform(TransformType.SN, SN_32BIT))
    sha = int(suite.auth_algorithm.name.rsplit("_", 1)[1])
    return (Transform(TransformType.ENCR, Encr.AES_CBC, key_len), Transform(TransformType.INTEG, _INTEG[sha]),
            Transform(TransformType.SN, SN_32BIT))


def _suite(transforms: tuple[Transform, ...]) -> EspSuite:
    by_type: dict[int, Transform] = {}
    for t in transforms:
        if t.type in by_type:
            raise TekPolicyError(f"transform type {t.type} twice (RFC 9838 §4.3.1.1)")
        if t.type not in (TransformType.ENCR, TransformType.INTEG, TransformType.SN):
            raise TekPolicyError(f"transform type {t.type} in an ESP policy")
        by_type[t.type] = t
    encr, integ, sn = (by_type.get(x) for x in (TransformType.ENCR, TransformType.INTEG, TransformType.SN))
    if encr is None or sn is None:
        raise TekPolicyError("ESP policy without ENCR or SN transform")
    if sn.id != SN_32BIT:
        raise TekPolicyError(f"SN transform {sn.id}: only 32-bit Sequential Numbers")
    bits = encr.key_length
    for s in ESP_SUITES.values():
        if s.key_length_bits != bits:
            continue
        if encr.id == Encr.AES_GCM_16 and s.transform_id == EspTransformId.ESP_AES_GCM_16:
            if integ is not None and integ.id != Integ.NONE:
                raise TekPolicyError("INTEG with an AEAD cipher")
            return s
        if encr.id == Encr.AES_CBC and s.transform_id == EspTransformId.ESP_AES_CBC and integ is not None:
            if int(s.auth_algorithm.name.rsplit("_", 1)[1]) == _INTEG_BITS.get(integ.id):
                return s
    raise TekPolicyError(f"unsupported ESP suite (ENCR {encr.id}, {bits} bits, INTEG {integ.id if integ else None})")


def _to_ts(net, protocol: int, port: int) -> TrafficSelector:
    t = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
    lo, hi = (port, port) if port else (0, 65535)
    return TrafficSelector(t, protocol, lo, hi, net.network_address.packed, net.broadcast_address.packed)


def _from_ts(ts: TrafficSelector) -> tuple[object, int]:
    a, b = ipaddress.ip_address(ts.start_address), ipaddress.ip_address(ts.end_address)
    nets = list(ipaddress.summarize_address_range(a, b)) if a <= b else []
    if len(nets) != 1:
        raise TekPolicyError("traffic selector address range is not one CIDR block")
    if (ts.start_port, ts.end_port) == (0, 65535):
        port = 0
    elif ts.start_port == ts.end_port and ts.start_port:
        port = ts.start_port
    else:
        raise TekPolicyError(f"port range {ts.start_port}-{ts.end_port}: one port or all")
    return nets[0], port


def tek_policy(tek: GroupTek, next_spis: tuple[int, ...] = ()) -> tuple[GsaPolicy, bytes]:
    """The GSA policy and the SA key material for one TEK (key server side)."""
    sel = tek.selector
    attrs = (Attribute(GsaAttr.KEY_LIFETIME, tek.lifetime_s.to_bytes(4, "big")),) + tuple(
        Attribute(GsaAttr.NEXT_SPI, s.to_bytes(4, "big")) for s in next_spis)
    policy = GsaPolicy(ProtocolId.ESP, tek.spi.to_bytes(4, "big"), _to_ts(sel.src, sel.protocol, sel.src_port),
                       _to_ts(sel.dst, sel.protocol, sel.dst_port), _transforms(tek.esp_suite), attrs)
    return policy, tek.keymat + tek.auth_key


def group_tek(policy: GsaPolicy, keymat: bytes, *, group_id: int, mode, address_preservation, direction) -> tuple[GroupTek, tuple[int, ...]]:
    """The member's :class:`GroupTek` and the announced next SPIs; :class:`TekPolicyError` if
    the policy is not installable."""
    if policy.protocol != ProtocolId.ESP or len(policy.spi) != 4:
        raise TekPolicyError(f"protocol {policy.protocol} with a {len(policy.spi)}-byte SPI")
    suite = _suite(policy.transforms)
    if policy.source.ip_protocol != policy.destination.ip_protocol:
        raise TekPolicyError("source and destination selectors name different IP protocols")
    src, sport = _from_ts(policy.source)
    dst, dport = _from_ts(policy.destination)
    lifetime, next_spis = None, []
    for t, v in policy.attributes:
        if not isinstance(v, bytes) or len(v) != 4:
            raise TekPolicyError(f"GSA attribute {t} must be a 4-byte TLV")
        if t == GsaAttr.KEY_LIFETIME and lifetime is None:
            lifetime = int.from_bytes(v, "big")
        elif t == GsaAttr.NEXT_SPI:
            next_spis.append(int.from_bytes(v, "big"))
        else:
            raise TekPolicyError(f"GSA attribute {t} not allowed (or repeated) in an ESP policy")
    if lifetime is None:
        raise TekPolicyError("ESP policy without GSA_KEY_LIFETIME (RFC 9838 §6, S)")
    if len(keymat) != suite.keymat_bytes:
        raise TekPolicyError(f"SA_KEY of {len(keymat)} bytes, {suite.name} needs {suite.keymat_bytes}")
    try:
        sel = PolicySelector(src, dst, policy.source.ip_protocol, sport, dport)
        tek = GroupTek(group_id, int.from_bytes(policy.spi, "big"), sel, mode, address_preservation, direction,
                       suite.name, keymat[:suite.enc_key_bytes], keymat[suite.enc_key_bytes:], lifetime)
    except ValueError as e:
        raise TekPolicyError(str(e)) from None
    return tek, tuple(next_spis)


__all__ = ["TekPolicyError", "tek_policy", "group_tek"]
