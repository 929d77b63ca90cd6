"""The one mapping between msec's group policy and keys and G-IKEv2's GSA and KD payloads
(RFC 9838 §4.3-4.5), for the registration exchange: the GCKS side writes, the member reads
into the hand-off types the GDOI member uses (:class:`~gkm.gdoi.keys.GroupTek`,
:class:`~gkm.gdoi.keys.GroupKek`).  The keys are the GDOI key server's
(:class:`~gkm.gdoi.provider.GroupKeys` from the same provider), so members of both protocols
share a group.

GSA payload: one ESP policy per TEK (SPI, source and destination selector, ENCR with Key
Length, INTEG unless AEAD, SN 0 = 32-bit sequential numbers, GSA_KEY_LIFETIME), the Rekey SA
(GIKE_UPDATE, the 16-byte KEK SPI, GCKS -> rekey address, ENCR AES-CBC, INTEG
HMAC-SHA2-256-128, KWA, GCAUTH digital signature, GSA_KEY_LIFETIME, GSA_INITIAL_MESSAGE_ID =
the group's SEQ + 1: the first GSA_REKEY this member accepts), and a GW policy with ATD/DTD.
Transport mode is the USE_TRANSPORT_MODE notification (RFC 9838 §2.3.4), so a group's TEKs
must share one mode.

KD payload: one group key bag per SA with one SA_KEY: TEKs ``GSK_w{enc key | integrity key}``
(Key ID and KWK ID 0); the Rekey SA ``GSK_w{GSK_e | GSK_a | GSK_w'}``, or with LKH
``root{...}`` and a member key bag holding the member's path as WRAP_KEYs, leaf under GSK_w,
each parent under its child (RFC 9838 Appendix A), Key IDs = LKH handles; AUTH_KEY = the DER
public key GSA_REKEY messages are signed with.

Decisions:

* GSK_w of the unicast SA = prf+(SK_d, "Key Wrap for G-IKEv2") (RFC 9838 §3.3.1).  RFC 9838
  wants the unicast key wrap algorithm negotiated in IKE_SA_INIT; :mod:`.sa_init` does not
  negotiate a KWA transform yet, so both sides use the Rekey SA's KWA, or KW_5649_256 for a
  group without one.  With LKH the KWA follows the tree's key size (16 bytes: KW_5649_128)
  since WRAP_KEYs must be exactly one key of the algorithm (§4.4.2.1).
* The Rekey SA's key material (GSK_e | GSK_a | GSK_w, §3.5) is derived from the stored KEK
  ``prf+(HMAC-SHA-256, KEK keymat, "msec G-IKEv2 Rekey SA" | SPI)``: the store keeps one KEK
  per group for both protocols, and the GCKS recomputes the same keys for GSA_REKEY.
* The Signature Algorithm Identifier attribute of GCAUTH has no IANA number in RFC 9838's
  text (see :mod:`.constants`), so it is not sent; the algorithm follows from AUTH_KEY's key
  (ECDSA P-256 / P-384, the suites GSA_REKEY signs with).
* Direction: RFC 9838 lets the member decide (§2.3.3): a sender (it sent GROUP_SENDER)
  installs both directions, any other member inbound only; the GCKS refuses GROUP_SENDER from
  an identity no TEK lets send (:func:`may_send`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gkm.gdoi.keys import GroupKek, GroupTek
from gkm.gdoi.policy_wire import GapDelays, suite_for
from gkm.gdoi.provider import Enrollment, GroupKeys
from gkm.wire.attributes import Attribute
from policy.model import AddressPreservation, GroupPolicy, Identity, Mode, SaDirection, TrafficSelector as Selector
from policy.suites import KEK_CIPHERS

from .constants import (
    Encr, GcAuth, GroupKeyBagAttr, GsaAttr, GwAttr, Integ, KeyWrap, MemberKeyBagAttr, Prf, ProtocolId,
    TransformAttr, TransformType, TsType,
)
from .gsa import GroupKeyBag, GroupSa, GsaPolicy, GwPolicy, KeyDownload, MemberKeyBag
from .gsa_keys import KeyWrapError, RekeySaKeys, WorkingKeyPath, WrappedKey, kwa_key_bytes, wrap
from .keys import IkeKeys, prf_plus
from .payloads import TrafficSelector, Transform

__all__ = [
    "MappingError", "GroupKeysReceived", "unicast_gsk_w", "unicast_kwa", "rekey_sa_keys", "group_payloads",
    "read_group", "may_send", "REKEY_INTEG", "KEY_WRAP_LABEL",
]

KEY_WRAP_LABEL = b"Key Wrap for G-IKEv2"
REKEY_LABEL = b"msec G-IKEv2 Rekey SA"
REKEY_INTEG = Integ.HMAC_SHA2_256_128
SN_32BIT = 0  # "32-bit Sequential Numbers" (RFC 9827)
_U32 = struct.Struct("!I")
#: RFC 2407 authentication algorithm (policy.suites) <-> IKEv2 integrity transform (RFC 4868)
_INTEG = {5: Integ.HMAC_SHA2_256_128, 6: Integ.HMAC_SHA2_384_192, 7: Integ.HMAC_SHA2_512_256}
_AUTH_ALG = {v: k for k, v in _INTEG.items()}
_KWA_FOR = {16: KeyWrap.KW_5649_128, 24: KeyWrap.KW_5649_192, 32: KeyWrap.KW_5649_256}
_CURVE_SUITE = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}


class MappingError(ValueError):
    """The group cannot be expressed in G-IKEv2, or the GCKS's GSA/KD is not usable."""


@dataclass(frozen=True)
class GroupKeysReceived:
    """What a member read from GSA + KD."""

    teks: tuple[GroupTek, ...]
    kek: GroupKek | None
    seq: int | None  # GSA_REKEY Message IDs <= this are replays
    rekey_keys: RekeySaKeys | None = field(repr=False)
    kwa: int | None
    key_path: WorkingKeyPath
    gap: GapDelays | None


def unicast_gsk_w(keys: IkeKeys, kwa: int) -> bytes:
    return prf_plus(keys.suite.prf, keys.sk_d, KEY_WRAP_LABEL, kwa_key_bytes(kwa))


def unicast_kwa(group: GroupPolicy, enr: Enrollment | None) -> int:
    """The GCKS's choice (see the module docstring)."""
    if group.kek is None:
        return KeyWrap.KW_5649_256
    if enr is not None and enr.lkh_path:
        n = len(enr.lkh_path[0][2])
        if n not in _KWA_FOR:
            raise MappingError(f"LKH keys of {n} bytes fit no AES key wrap")
        return _KWA_FOR[n]
    return _KWA_FOR[KEK_CIPHERS[group.kek.cipher.name].key_bytes]


def rekey_sa_keys(kek_keymat: bytes, spi: bytes, encr_bits: int, kwa: int) -> RekeySaKeys:
    ne, na, nw = encr_bits // 8, 32, kwa_key_bytes(kwa)
    material = prf_plus(Prf.HMAC_SHA2_256, kek_keymat, REKEY_LABEL + bytes(spi), ne + na + nw)
    return RekeySaKeys.split(material, Encr.AES_CBC, encr_bits, REKEY_INTEG, kwa)


def may_send(group: GroupPolicy, identity: Identity) -> bool:
    return any(t.direction_for(identity) != SaDirection.RECEIVER_ONLY for t in group.teks)


# ------------------------------------------------------------------------------------ selectors


def _ts(net, protocol: int, port: int) -> TrafficSelector:
    net = ipaddress.ip_network(net)
    kind = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
    lo, hi = (port, port) if port else (0, 0xFFFF)
    return TrafficSelector(kind, protocol, lo, hi, net.network_address.packed, net.broadcast_address.packed)


def _from_ts(ts: TrafficSelector, where: str):
    try:
        a, b = ipaddress.ip_address(ts.start_address), ipaddress.ip_address(ts.end_address)
        nets = list(ipaddress.summarize_address_range(a, b))
    except (ValueError, TypeError) as e:
        raise MappingError(f"{where}: address range: {e}") from None
    if len(nets) != 1:
        raise MappingError(f"{where}: address range {a}-{b} is not one prefix")
    if (ts.start_port, ts.end_port) == (0, 0xFFFF):
        port = 0
    elif ts.start_port == ts.end_port:
        port = ts.start_port
    else:
        raise MappingError(f"{where}: port range {ts.start_port}-{ts.end_port}")
    return nets[0], port


def _lifetime(seconds: int) -> Attribute:
    return Attribute(GsaAttr.KEY_LIFETIME, _U32.pack(max(1, min(int(seconds), 0xFFFFFFFF))))


# ------------------------------------------------------------------------------------ GCKS


def transport_mode(group: GroupPolicy) -> bool:
    modes = {t.mode for t in group.teks}
    if len(modes) != 1:
        raise MappingError(f"group {group.label} mixes tunnel and transport TEKs (one mode per registration, RFC 9838 §2.3.4)")
    return modes == {Mode.TRANSPORT}


def group_payloads(group: GroupPolicy, keys: GroupKeys, enr: Enrollment, gsk_w: bytes, kwa: int, wall: int,
                   rekey_source: tuple[str, int] | None) -> tuple[GroupSa, KeyDownload]:
    """The GCKS's GSA and KD for one member (``gsk_w``: the unicast SA's, for ``kwa``)."""
    policies: list = []
    bags: list = []
    for tp in group.teks:
        tk = keys.tek(tp.name)
        s, suite = tp.selector, tp.suite
        ts = [Transform(TransformType.ENCR, int(suite.transform_id), (Attribute(TransformAttr.KEY_LENGTH, suite.key_length_bits),))]
        if suite.auth_algorithm is not None:
            ts.append(Transform(TransformType.INTEG, _INTEG[int(suite.auth_algorithm)]))
        ts.append(Transform(TransformType.SN, SN_32BIT))
        spi = tk.spi.to_bytes(4, "big")
        policies.append(GsaPolicy(ProtocolId.ESP, spi, _ts(s.src, s.protocol, s.src_port), _ts(s.dst, s.protocol, s.dst_port),
                                  tuple(ts), (_lifetime(tk.expires - wall),)))
        sa_key = WrappedKey(0, 0, wrap(kwa, gsk_w, tk.enc_keymat + tk.auth_key))
        bags.append(GroupKeyBag(ProtocolId.ESP, spi, (Attribute(GroupKeyBagAttr.SA_KEY, sa_key.encode()),)))
    member_attrs: list = []
    if group.kek is not None and keys.kek is not None:
        k, kp = keys.kek, group.kek
        bits = kp.cipher.key_length_bits
        rkwa = unicast_kwa(group, enr)
        material = rekey_sa_keys(k.keymat, k.spi, bits, rkwa).keymat
        if rekey_source is None:
            src = _ts("0.0.0.0/0" if ipaddress.ip_address(kp.rekey_address).version == 4 else "::/0", 17, 848)
        else:
            src = _ts(rekey_source[0], 17, rekey_source[1])
        ts = (Transform(TransformType.ENCR, Encr.AES_CBC, (Attribute(TransformAttr.KEY_LENGTH, bits),)),
              Transform(TransformType.INTEG, REKEY_INTEG), Transform(TransformType.KWA, rkwa),
              Transform(TransformType.GCAUTH, GcAuth.DIGITAL_SIGNATURE))
        attrs = (_lifetime(k.expires - wall), Attribute(GsaAttr.INITIAL_MESSAGE_ID, _U32.pack((enr.seq or 0) + 1)))
        policies.insert(0, GsaPolicy(ProtocolId.GIKE_UPDATE, bytes(k.spi), src, _ts(kp.rekey_address, 17, kp.rekey_port), ts, attrs))
        if enr.lkh_path:
            path = enr.lkh_path  # leaf first, root last
            below_id, below_key = 0, gsk_w
            for _level, handle, key in path:
                if not 0 < handle <= 0xFFFFFFFF:
                    raise MappingError(f"LKH handle {handle} cannot be a Key ID")
                member_attrs.append(Attribute(MemberKeyBagAttr.WRAP_KEY, WrappedKey(handle, below_id, wrap(rkwa, below_key, key)).encode()))
                below_id, below_key = handle, key
            sa_key = WrappedKey(0, below_id, wrap(rkwa, below_key, material))
        else:
            sa_key = WrappedKey(0, 0, wrap(kwa, gsk_w, material))
        bags.insert(0, GroupKeyBag(ProtocolId.GIKE_UPDATE, bytes(k.spi), (Attribute(GroupKeyBagAttr.SA_KEY, sa_key.encode()),)))
        member_attrs.append(Attribute(MemberKeyBagAttr.AUTH_KEY, bytes(k.public_key)))
    policies.append(GwPolicy((Attribute(GwAttr.ATD, int(group.activation_delay_s)), Attribute(GwAttr.DTD, int(group.deactivation_delay_s)))))
    if member_attrs:
        bags.append(MemberKeyBag(tuple(member_attrs)))
    return GroupSa(tuple(policies)), KeyDownload(tuple(bags))


# ------------------------------------------------------------------------------------ member


def _one(transforms, ttype, where: str, optional: bool = False) -> Transform | None:
    found = [t for t in transforms if t.type == ttype]
    if len(found) > 1 or (not found and not optional):
        raise MappingError(f"{where}: {len(found)} transforms of type {int(ttype)}, need {'at most ' if optional else ''}one (RFC 9838 §4.3.1.1)")
    return found[0] if found else None


def _attr(attrs, atype, where: str, size: int | None = 4, required: bool = True):
    found = [v for t, v in attrs if t == atype]
    if len(found) > 1 or (required and not found):
        raise MappingError(f"{where}: attribute {int(atype)} {len(found)} times, need one")
    if not found:
        return None
    v = found[0]
    if isinstance(v, int):
        return v
    if size is not None and len(v) != size:
        raise MappingError(f"{where}: attribute {int(atype)} of {len(v)} bytes, need {size}")
    return int.from_bytes(v, "big") if size is not None else bytes(v)


def _sa_keys(bag: GroupKeyBag, where: str) -> tuple[WrappedKey, ...]:
    out = []
    for t, v in bag.attributes:
        if t != GroupKeyBagAttr.SA_KEY or isinstance(v, int):
            raise MappingError(f"{where}: unexpected attribute {int(t)}")
        try:
            out.append(WrappedKey.decode(v))
        except KeyWrapError as e:
            raise MappingError(f"{where}: {e}") from None
    if len(out) != 1:
        raise MappingError(f"{where}: {len(out)} SA_KEY attributes, need exactly one (RFC 9838 §4.4.1.1)")
    return tuple(out)


def read_group(group_id: int, gsa: GroupSa, kd: KeyDownload, ike_keys: IkeKeys, *, sender: bool,
               transport: bool) -> GroupKeysReceived:
    """The member's reading of the GCKS's GSA and KD; :class:`MappingError` says what is wrong."""
    esp = [p for p in gsa.policies if isinstance(p, GsaPolicy) and p.protocol == ProtocolId.ESP]
    rekey = [p for p in gsa.policies if isinstance(p, GsaPolicy) and p.protocol == ProtocolId.GIKE_UPDATE]
    other = [p for p in gsa.policies if isinstance(p, GsaPolicy) and p.protocol not in (ProtocolId.ESP, ProtocolId.GIKE_UPDATE)]
    gws = [p for p in gsa.policies if isinstance(p, GwPolicy)]
    if other:
        raise MappingError(f"GSA policy of protocol {int(other[0].protocol)} is not supported")
    if not esp:
        raise MappingError("the GCKS sent no ESP policy")
    if len(rekey) > 1 or len(gws) > 1:
        raise MappingError("more than one Rekey SA or GW policy")
    group_bags = {(int(b.protocol), bytes(b.spi)): b for b in kd.bags if isinstance(b, GroupKeyBag)}
    if len(group_bags) != sum(1 for b in kd.bags if isinstance(b, GroupKeyBag)):
        raise MappingError("two key bags for one SA")
    members = [b for b in kd.bags if isinstance(b, MemberKeyBag)]
    if len(members) > 1:
        raise MappingError("more than one member key bag")
    wrap_keys, auth_keys = [], []
    for t, v in members[0].attributes if members else ():
        if isinstance(v, int):
            raise MappingError(f"member key bag attribute {int(t)} in TV form")
        if t == MemberKeyBagAttr.WRAP_KEY:
            try:
                wrap_keys.append(WrappedKey.decode(v))
            except KeyWrapError as e:
                raise MappingError(f"WRAP_KEY: {e}") from None
        elif t == MemberKeyBagAttr.AUTH_KEY:
            auth_keys.append(bytes(v))
        else:
            raise MappingError(f"member key bag attribute {int(t)} is not supported")
    kwa = KeyWrap.KW_5649_256
    if rekey:
        kwa = _one(rekey[0].transforms, TransformType.KWA, "Rekey SA").id
    try:
        gsk_w = unicast_gsk_w(ike_keys, kwa)
    except KeyWrapError as e:
        raise MappingError(f"Rekey SA: {e}") from None
    empty = WorkingKeyPath()
    mode = Mode.TRANSPORT if transport else Mode.TUNNEL
    preservation = AddressPreservation.NONE if transport else AddressPreservation.SOURCE_AND_DESTINATION
    direction = SaDirection.SYMMETRIC if sender else SaDirection.RECEIVER_ONLY
    teks = []
    for p in esp:
        where = f"ESP SA {p.spi.hex()}"
        if len(p.spi) != 4:
            raise MappingError(f"{where}: SPI of {len(p.spi)} bytes")
        encr = _one(p.transforms, TransformType.ENCR, where)
        integ = _one(p.transforms, TransformType.INTEG, where, optional=True)
        _one(p.transforms, TransformType.SN, where)
        auth = None if integ is None or integ.id == Integ.NONE else _AUTH_ALG.get(integ.id, -1)
        suite = suite_for(encr.id, encr.key_length, auth)
        if suite is None:
            raise MappingError(f"{where}: transforms ENCR {encr.id}/{encr.key_length} INTEG {integ.id if integ else None} are not a supported ESP suite")
        lifetime = _attr(p.attributes, GsaAttr.KEY_LIFETIME, where)
        bag = group_bags.pop((int(ProtocolId.ESP), bytes(p.spi)), None)
        if bag is None:
            raise MappingError(f"{where}: no key bag")
        sa_key = _sa_keys(bag, where)
        if sa_key[0].kwk_id != 0:
            raise MappingError(f"{where}: SA_KEY under KWK {sa_key[0].kwk_id}, a Data-Security SA's is under GSK_w (0)")
        try:
            material, _ = empty.resolve(kwa, gsk_w, sa_key, ())
        except KeyWrapError as e:
            raise MappingError(f"{where}: {e}") from None
        if len(material) != suite.keymat_bytes:
            raise MappingError(f"{where}: {len(material)} bytes of key material, {suite.name} needs {suite.keymat_bytes}")
        src, sport = _from_ts(p.source, f"{where} source")
        dst, dport = _from_ts(p.destination, f"{where} destination")
        if p.source.ip_protocol != p.destination.ip_protocol:
            raise MappingError(f"{where}: source and destination selectors name different protocols")
        try:
            sel = Selector(src, dst, p.source.ip_protocol, sport, dport)
            teks.append(GroupTek(group_id, int.from_bytes(p.spi, "big"), sel, mode, preservation, direction, suite.name,
                                 material[: suite.enc_key_bytes], material[suite.enc_key_bytes:], lifetime))
        except ValueError as e:
            raise MappingError(f"{where}: {e}") from None
    kek = rekey_keys = seq = None
    path = empty
    if rekey:
        p = rekey[0]
        where = f"Rekey SA {p.spi.hex()}"
        if len(p.spi) != 16:
            raise MappingError(f"{where}: SPI of {len(p.spi)} bytes, need 16")
        encr = _one(p.transforms, TransformType.ENCR, where)
        integ = _one(p.transforms, TransformType.INTEG, where)
        gcauth = _one(p.transforms, TransformType.GCAUTH, where)
        cipher = next((c for c in KEK_CIPHERS.values() if encr.id == Encr.AES_CBC and c.key_length_bits == encr.key_length), None)
        if cipher is None or integ.id != REKEY_INTEG or gcauth.id != GcAuth.DIGITAL_SIGNATURE:
            raise MappingError(f"{where}: ENCR {encr.id}/{encr.key_length}, INTEG {integ.id}, GCAUTH {gcauth.id} not supported")
        lifetime = _attr(p.attributes, GsaAttr.KEY_LIFETIME, where)
        initial = _attr(p.attributes, GsaAttr.INITIAL_MESSAGE_ID, where, required=False)
        bag = group_bags.pop((int(ProtocolId.GIKE_UPDATE), bytes(p.spi)), None)
        if bag is None:
            raise MappingError(f"{where}: no key bag")
        if len(auth_keys) != 1:
            raise MappingError(f"{where}: {len(auth_keys)} AUTH_KEY attributes, need one")
        try:
            pub = load_der_public_key(auth_keys[0])
        except (ValueError, TypeError):
            raise MappingError(f"{where}: AUTH_KEY is not a DER public key") from None
        except Exception as e:  # UnsupportedAlgorithm: a well-formed key of an unknown type
            raise MappingError(f"{where}: AUTH_KEY: {e}") from None
        sig = _CURVE_SUITE.get(pub.curve.name) if isinstance(pub, ec.EllipticCurvePublicKey) else None
        if sig is None:
            raise MappingError(f"{where}: AUTH_KEY is not an ECDSA P-256/P-384 key")
        try:
            material, path = empty.resolve(kwa, gsk_w, _sa_keys(bag, where), tuple(wrap_keys))
            rekey_keys = RekeySaKeys.split(material, Encr.AES_CBC, encr.key_length, REKEY_INTEG, kwa)
        except KeyWrapError as e:
            raise MappingError(f"{where}: {e}") from None
        src, sport = _from_ts(p.source, f"{where} source")
        dst, dport = _from_ts(p.destination, f"{where} destination")
        kek = GroupKek(group_id, bytes(p.spi), src, sport, dst, dport, cipher.name, rekey_keys.gsk_e, b"", sig,
                       auth_keys[0], lifetime)
        seq = (initial or 1) - 1
    elif wrap_keys or auth_keys:
        raise MappingError("member key bag without a Rekey SA")
    if group_bags:
        raise MappingError(f"{len(group_bags)} key bag(s) for SAs the GSA payload does not name")
    gap = None
    if gws:
        atd = _attr(gws[0].attributes, GwAttr.ATD, "GW policy", required=False)
        dtd = _attr(gws[0].attributes, GwAttr.DTD, "GW policy", required=False)
        gap = GapDelays(atd, dtd)
    return GroupKeysReceived(tuple(teks), kek, seq, rekey_keys, int(kwa) if rekey else None, path, gap)
