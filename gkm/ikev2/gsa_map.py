"""The registration's GSA and KD payloads (RFC 9838 §4.3-4.5) from msec's group policy and
keys, and back: the GCKS side writes, the member reads into the hand-off types the GDOI member
uses (:class:`~gkm.gdoi.keys.GroupTek`, :class:`~gkm.gdoi.keys.GroupKek`) plus the
:class:`~.rekey_sa.RekeySa` a :class:`~.rekey.RekeyReceiver` starts from.  The ESP policy
mapping is :mod:`.tek_policy`'s and the Rekey SA policy :mod:`.rekey_sa`'s (the ones GSA_REKEY
uses); this module adds what only registration has (GCAUTH, AUTH_KEY, the member's LKH path,
the unicast GSK_w).  The keys are the GDOI key server's (:class:`~gkm.gdoi.provider.GroupKeys`
from the same provider), so members of both protocols share a group.

GSA payload: one ESP policy per TEK (SPI, source and destination selector, ENCR with Key
Length, INTEG unless AEAD, SN 0 = 32-bit sequential numbers, GSA_KEY_LIFETIME), the Rekey SA
(GIKE_UPDATE, the 16-byte KEK SPI, GCKS -> rekey address, ENCR AES-CBC, INTEG
HMAC-SHA2-256-128, KWA, GCAUTH digital signature, GSA_KEY_LIFETIME, GSA_INITIAL_MESSAGE_ID =
the GCKS's current GSA_REKEY Message ID on that Rekey SA, given by the shell: it restarts at 0
with every Rekey SA, docs/decisions/g-ikev2.md), and a GW policy with ATD/DTD.
Transport mode is the USE_TRANSPORT_MODE notification (RFC 9838 §2.3.4), so a group's TEKs
must share one mode.

KD payload: one group key bag per SA with one SA_KEY: TEKs ``GSK_w{enc key | integrity key}``
(Key ID and KWK ID 0); the Rekey SA ``GSK_w{GSK_e | GSK_a | GSK_w'}``, or with LKH
``root{...}`` and a member key bag holding the member's path as WRAP_KEYs, leaf under GSK_w,
each parent under its child (RFC 9838 Appendix A), Key IDs = LKH handles; AUTH_KEY = the DER
public key GSA_REKEY messages are signed with.

Decisions:

* GSK_w of the unicast SA = prf+(SK_d, "Key Wrap for G-IKEv2") (RFC 9838 §3.3.1), for the key
  wrap algorithm IKE_SA_INIT negotiated (``SaInitConfig.kwa``).  A peer that negotiated none
  (an msec peer configured without) gets the Rekey SA's KWA, or KW_5649_256 for a group
  without one.  The Rekey SA's KWA follows the LKH tree's key size (32 bytes by default: KW_5649_256)
  or the KEK cipher's, since WRAP_KEYs must be exactly one key of the algorithm (§4.4.2.1); a
  negotiated KWA that does not fit an LKH group's keys refuses the registration
  (TEMPORARY_FAILURE): configure the GCKS's ``kwa`` accordingly.
* The Rekey SA's key material (GSK_e | GSK_a | GSK_w, §3.5) is derived from the stored KEK
  ``prf+(HMAC-SHA-256, KEK keymat, "msec G-IKEv2 Rekey SA" | SPI)``: the store keeps one KEK
  per group for both protocols, and the GCKS recomputes the same keys for GSA_REKEY.
* The Signature Algorithm Identifier attribute of GCAUTH has no IANA number in RFC 9838's
  text (see :mod:`.constants`), so it is not sent; the algorithm follows from AUTH_KEY's key
  (ECDSA P-256 / P-384 with SHA-256 / SHA-384, :data:`.rekey_auth.SIGNATURE_ALGORITHMS`).
* Direction: RFC 9838 lets the member decide (§2.3.3): a sender (it sent GROUP_SENDER)
  installs both directions, any other member inbound only; the GCKS refuses GROUP_SENDER from
  an identity no TEK lets send (:func:`may_send`).
* Sender-IDs (§2.5.1): a group with a counter-mode (AES-GCM) TEK sends GWP_SENDER_ID_BITS =
  :data:`SENDER_ID_BITS` in its GW policy, and a sender gets one new GM_SENDER_ID (4 octets)
  per registration from the group's durable counter (the GCKS's upper bound per request is 1;
  a count asked for in GROUP_SENDER is not honoured).  The member reads and keeps them, so its
  GSA_REKEY receiver installs later counter-mode TEKs for sending; the Linux kernel builds ESP
  IVs itself (seqiv: the sequence number under a random per-SA value), so the Sender-ID does
  not go into the IV (§2.5.2) and IV uniqueness across senders rests on that, as for GDOI.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gkm.gdoi.keys import GroupKek, GroupTek
from gkm.gdoi.policy_wire import GapDelays
from gkm.gdoi.provider import Enrollment, GroupKeys, TekKeys
from gkm.wire.attributes import Attribute
from policy.model import AddressPreservation, GroupPolicy, Identity, Mode, SaDirection, TekPolicy
from policy.suites import KEK_CIPHERS

from .constants import (
    Encr, GcAuth, GroupKeyBagAttr, GwAttr, Integ, KeyWrap, MemberKeyBagAttr, Prf, ProtocolId, TransformType, TsType,
)
from .gsa import GroupKeyBag, GroupSa, GsaPolicy, GwPolicy, KeyDownload, MemberKeyBag
from .gsa_keys import KeyWrapError, RekeySaKeys, WorkingKeyPath, WrappedKey, kwa_key_bytes, wrap
from .keys import IkeKeys, prf_plus
from .payloads import TrafficSelector, Transform
from .rekey_auth import SIGNATURE_ALGORITHMS, SignatureAlgorithm
from .rekey_sa import RekeyPolicyError, RekeySa
from .tek_policy import TekPolicyError, group_tek, tek_policy

__all__ = [
    "MappingError", "GroupKeysReceived", "unicast_gsk_w", "unicast_kwa", "rekey_kwa", "rekey_sa_keys", "rekey_sa_for",
    "rekey_sa_of", "group_tek_of",
    "registration_kwa", "group_payloads", "read_group", "may_send", "needs_sender_ids", "transport_mode", "REKEY_INTEG",
    "KEY_WRAP_LABEL", "SENDER_ID_BITS", "SIGNATURE_BY_CURVE",
]

#: GWP_SENDER_ID_BITS: 2^24 Sender-IDs per group, leaving 40 bits of a GCM IV's 64 per sender
SENDER_ID_BITS = 24
KEY_WRAP_LABEL = b"Key Wrap for G-IKEv2"
REKEY_LABEL = b"msec G-IKEv2 Rekey SA"
REKEY_INTEG = Integ.HMAC_SHA2_256_128
_KWA_FOR = {16: KeyWrap.KW_5649_128, 24: KeyWrap.KW_5649_192, 32: KeyWrap.KW_5649_256}
#: AUTH_KEY curve -> (GSA_REKEY signature algorithm, policy.suites.SIGNATURE_SUITES name for GroupKek)
SIGNATURE_BY_CURVE = {"secp256r1": ("ecdsa-p256-sha256", "ecdsa-p256"), "secp384r1": ("ecdsa-p384-sha384", "ecdsa-p384")}


class MappingError(ValueError):
    """The group cannot be expressed in G-IKEv2, or the GCKS's GSA/KD is not usable."""


@dataclass(frozen=True)
class GroupKeysReceived:
    """What a member read from GSA + KD (``rekey_sa`` .. ``key_path``: what a
    :class:`~.rekey.RekeyReceiver` is built from)."""

    teks: tuple[GroupTek, ...]
    kek: GroupKek | None
    rekey_sa: RekeySa | None = field(repr=False)
    signature: SignatureAlgorithm | None
    auth_key: bytes | None
    key_path: WorkingKeyPath
    gap: GapDelays | None
    sender_ids: tuple[int, ...] = ()


def unicast_gsk_w(keys: IkeKeys, kwa: int) -> bytes:
    return prf_plus(keys.suite.prf, keys.sk_d, KEY_WRAP_LABEL, kwa_key_bytes(kwa))


def registration_kwa(group: GroupPolicy, enr: Enrollment, negotiated: int) -> int:
    """The key wrap algorithm of this registration's GSK_w, SA keys and WRAP_KEYs: the one
    IKE_SA_INIT negotiated, else :func:`unicast_kwa`.  WRAP_KEYs hold exactly one key of the
    algorithm (RFC 9838 §4.4.2.1), so an LKH path needs the algorithm of its key size."""
    if not negotiated:
        return unicast_kwa(group, enr)
    if enr.lkh_path and kwa_key_bytes(negotiated) != len(enr.lkh_path[0][2]):
        raise MappingError(f"the negotiated key wrap algorithm {negotiated} does not fit the group's "
                           f"{len(enr.lkh_path[0][2])}-byte LKH keys")
    return negotiated


def unicast_kwa(group: GroupPolicy, enr: Enrollment | None) -> int:
    """The GCKS's choice without a negotiated one, also the Rekey SA's (module docstring)."""
    return rekey_kwa(group, len(enr.lkh_path[0][2]) if enr is not None and enr.lkh_path else None)


def rekey_kwa(group: GroupPolicy, lkh_key_bytes: int | None) -> int:
    """The Rekey SA's key wrap algorithm: the LKH tree's key size when the group has a tree,
    else the KEK cipher's.  Registration and the group controller's GSA_REKEY both use this,
    so a Rekey SA has one KWA (and one GSK_w) whoever derives it."""
    if group.kek is None:
        return KeyWrap.KW_5649_256
    if lkh_key_bytes:
        if lkh_key_bytes not in _KWA_FOR:
            raise MappingError(f"LKH keys of {lkh_key_bytes} bytes fit no AES key wrap")
        return _KWA_FOR[lkh_key_bytes]
    return _KWA_FOR[KEK_CIPHERS[group.kek.cipher.name].key_bytes]


def rekey_sa_keys(kek_keymat: bytes, spi: bytes, encr_bits: int, kwa: int) -> RekeySaKeys:
    ne, na, nw = encr_bits // 8, 32, kwa_key_bytes(kwa)
    material = prf_plus(Prf.HMAC_SHA2_256, kek_keymat, REKEY_LABEL + bytes(spi), ne + na + nw)
    return RekeySaKeys.split(material, Encr.AES_CBC, encr_bits, REKEY_INTEG, kwa)


def _ts(net, protocol: int, port: int) -> TrafficSelector:
    net = ipaddress.ip_network(net)
    kind = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
    lo, hi = (port, port) if port else (0, 0xFFFF)
    return TrafficSelector(kind, protocol, lo, hi, net.network_address.packed, net.broadcast_address.packed)


def rekey_sa_for(group: GroupPolicy, keys: GroupKeys, kwa: int, wall: int, rekey_source: tuple[str, int] | None,
                 initial_message_id: int = 0) -> RekeySa:
    """The group's Rekey SA as the GCKS derives it from the stored KEK (module docstring)."""
    k = keys.kek
    return rekey_sa_of(group, bytes(k.spi), k.keymat, k.expires, kwa, wall, rekey_source, initial_message_id)


def rekey_sa_of(group: GroupPolicy, spi: bytes, kek_keymat: bytes, expires: int, kwa: int, wall: int,
                rekey_source: tuple[str, int] | None, initial_message_id: int = 0) -> RekeySa:
    """The Rekey SA of the KEK ``spi`` (its stored key material and expiry) at Unix time ``wall``."""
    kp = group.kek
    bits = kp.cipher.key_length_bits
    if rekey_source is None:  # as GDOI's SA KEK: the unspecified address of the family, port 848
        src = _ts("0.0.0.0/0" if ipaddress.ip_address(kp.rekey_address).version == 4 else "::/0", 17, 848)
    else:
        src = _ts(rekey_source[0], 17, rekey_source[1])
    return RekeySa(spi, Encr.AES_CBC, bits, REKEY_INTEG, kwa, rekey_sa_keys(kek_keymat, spi, bits, kwa), src,
                   _ts(kp.rekey_address, 17, kp.rekey_port), max(1, min(expires - wall, 0xFFFFFFFF)), initial_message_id)


def group_tek_of(group: GroupPolicy, tp: TekPolicy, tk: TekKeys, wall: int) -> GroupTek:
    """One TEK as a GSA policy carries it (direction: the member's to choose, §2.3.3)."""
    return GroupTek(group.group_id, tk.spi, tp.selector, tp.mode, tp.address_preservation, SaDirection.SYMMETRIC,
                    tk.suite, tk.enc_keymat, tk.auth_key, max(1, min(tk.expires - wall, 0xFFFFFFFF)))


def needs_sender_ids(group: GroupPolicy) -> bool:
    """A counter-mode TEK: senders get Sender-IDs (§2.5.1)."""
    return any(t.suite.counter_mode for t in group.teks)


def may_send(group: GroupPolicy, identity: Identity) -> bool:
    return any(t.direction_for(identity) != SaDirection.RECEIVER_ONLY for t in group.teks)


def transport_mode(group: GroupPolicy) -> bool:
    modes = {t.mode for t in group.teks}
    if len(modes) != 1:
        raise MappingError(f"group {group.label} mixes tunnel and transport TEKs (one mode per registration, RFC 9838 §2.3.4)")
    return modes == {Mode.TRANSPORT}


# ------------------------------------------------------------------------------------ GCKS


def group_payloads(group: GroupPolicy, keys: GroupKeys, enr: Enrollment, gsk_w: bytes, kwa: int, wall: int,
                   rekey_sa: RekeySa | None, sender_ids: tuple[int, ...] = ()) -> tuple[GroupSa, KeyDownload]:
    """The GCKS's GSA and KD for one member (``gsk_w``: the unicast SA's, for ``kwa``;
    ``rekey_sa``: the group's current Rekey SA, None without a KEK; ``sender_ids``: this
    sender's, allocated for this registration)."""
    policies: list = []
    bags: list = []
    for tp in group.teks:
        policy, material = tek_policy(group_tek_of(group, tp, keys.tek(tp.name), wall))
        policies.append(policy)
        sa_key = WrappedKey(0, 0, wrap(kwa, gsk_w, material))
        bags.append(GroupKeyBag(ProtocolId.ESP, policy.spi, (Attribute(GroupKeyBagAttr.SA_KEY, sa_key.encode()),)))
    member_attrs: list = []
    if rekey_sa is not None:
        rp = rekey_sa.policy()
        policies.insert(0, GsaPolicy(rp.protocol, rp.spi, rp.source, rp.destination,
                                     rp.transforms + (Transform(TransformType.GCAUTH, GcAuth.DIGITAL_SIGNATURE),), rp.attributes))
        material = rekey_sa.keys.keymat
        if enr.lkh_path:  # leaf under GSK_w, each parent under its child, the SA key under the root
            below_id, below_key = 0, gsk_w
            for _level, handle, key in enr.lkh_path:
                if not 0 < handle <= 0xFFFFFFFF:
                    raise MappingError(f"LKH handle {handle} cannot be a Key ID")
                member_attrs.append(Attribute(MemberKeyBagAttr.WRAP_KEY, WrappedKey(handle, below_id, wrap(kwa, below_key, key)).encode()))
                below_id, below_key = handle, key
            sa_key = WrappedKey(0, below_id, wrap(kwa, below_key, material))
        else:
            sa_key = WrappedKey(0, 0, wrap(kwa, gsk_w, material))
        bags.insert(0, GroupKeyBag(ProtocolId.GIKE_UPDATE, rekey_sa.spi, (Attribute(GroupKeyBagAttr.SA_KEY, sa_key.encode()),)))
        member_attrs.append(Attribute(MemberKeyBagAttr.AUTH_KEY, bytes(keys.kek.public_key)))
    gw = [Attribute(GwAttr.ATD, int(group.activation_delay_s)), Attribute(GwAttr.DTD, int(group.deactivation_delay_s))]
    if needs_sender_ids(group):
        gw.append(Attribute(GwAttr.SENDER_ID_BITS, SENDER_ID_BITS))
    policies.append(GwPolicy(tuple(gw)))
    member_attrs += [Attribute(MemberKeyBagAttr.GM_SENDER_ID, i.to_bytes(4, "big")) for i in sender_ids]
    if member_attrs:
        bags.append(MemberKeyBag(tuple(member_attrs)))
    return GroupSa(tuple(policies)), KeyDownload(tuple(bags))


# ------------------------------------------------------------------------------------ member


def _attr(attrs, atype, where: str):
    found = [v for t, v in attrs if t == atype]
    if len(found) > 1:
        raise MappingError(f"{where}: attribute {int(atype)} {len(found)} times")
    if not found:
        return None
    if not isinstance(found[0], int):
        raise MappingError(f"{where}: attribute {int(atype)} must be TV")
    return found[0]


def _sa_key(bag: GroupKeyBag, where: str) -> tuple[WrappedKey, ...]:
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


def _from_ts(ts: TrafficSelector, where: str):
    try:
        a, b = ipaddress.ip_address(ts.start_address), ipaddress.ip_address(ts.end_address)
        nets = list(ipaddress.summarize_address_range(a, b))
    except (ValueError, TypeError) as e:
        raise MappingError(f"{where}: address range: {e}") from None
    if len(nets) != 1:
        raise MappingError(f"{where}: address range {a}-{b} is not one prefix")
    if (ts.start_port, ts.end_port) == (0, 0xFFFF):
        return nets[0], 0
    if ts.start_port == ts.end_port:
        return nets[0], ts.start_port
    raise MappingError(f"{where}: port range {ts.start_port}-{ts.end_port}")


def read_group(group_id: int, gsa: GroupSa, kd: KeyDownload, ike_keys: IkeKeys, *, sender: bool,
               transport: bool, negotiated_kwa: int = 0) -> GroupKeysReceived:
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
    n_bags = sum(1 for b in kd.bags if isinstance(b, GroupKeyBag))
    group_bags = {(int(b.protocol), bytes(b.spi)): b for b in kd.bags if isinstance(b, GroupKeyBag)}
    if len(group_bags) != n_bags:
        raise MappingError("two key bags for one SA")
    members = [b for b in kd.bags if isinstance(b, MemberKeyBag)]
    if len(members) > 1:
        raise MappingError("more than one member key bag")
    wrap_keys, auth_keys, sender_ids = [], [], []
    for t, v in members[0].attributes if members else ():
        if isinstance(v, int):
            raise MappingError(f"member key bag attribute {int(t)} in TV form")
        if t == MemberKeyBagAttr.GM_SENDER_ID:
            if len(v) != 4:
                raise MappingError(f"GM_SENDER_ID of {len(v)} octets (need 4)")
            sender_ids.append(int.from_bytes(v, "big"))
        elif t == MemberKeyBagAttr.WRAP_KEY:
            try:
                wrap_keys.append(WrappedKey.decode(v))
            except KeyWrapError as e:
                raise MappingError(f"WRAP_KEY: {e}") from None
        elif t == MemberKeyBagAttr.AUTH_KEY:
            auth_keys.append(bytes(v))
        else:
            raise MappingError(f"member key bag attribute {int(t)} is not supported")
    gcauth = None
    rekey_policy = None
    if rekey:
        p = rekey[0]
        gcauths = [t for t in p.transforms if t.type == TransformType.GCAUTH]
        kwas = [t for t in p.transforms if t.type == TransformType.KWA]
        if len(gcauths) != 1 or len(kwas) != 1:
            raise MappingError("Rekey SA policy needs exactly one GCAUTH and one KWA transform at registration (RFC 9838 §4.3.1.1)")
        gcauth = gcauths[0].id
        rekey_policy = GsaPolicy(p.protocol, p.spi, p.source, p.destination,
                                 tuple(t for t in p.transforms if t.type != TransformType.GCAUTH), p.attributes)
        kwa = kwas[0].id
    else:
        kwa = KeyWrap.KW_5649_256
    kwa = negotiated_kwa or kwa
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
        bag = group_bags.pop((int(ProtocolId.ESP), bytes(p.spi)), None)
        if bag is None:
            raise MappingError(f"{where}: no key bag")
        sa_key = _sa_key(bag, where)
        if sa_key[0].kwk_id != 0:
            raise MappingError(f"{where}: SA_KEY under KWK {sa_key[0].kwk_id}, a Data-Security SA's is under GSK_w (0)")
        try:
            material, _ = empty.resolve(kwa, gsk_w, sa_key, ())
            tek, _next = group_tek(p, material, group_id=group_id, mode=mode, address_preservation=preservation,
                                   direction=direction)
        except (KeyWrapError, TekPolicyError) as e:
            raise MappingError(f"{where}: {e}") from None
        teks.append(tek)
    kek = rekey_sa = signature = None
    path = empty
    if rekey_policy is not None:
        where = f"Rekey SA {rekey_policy.spi.hex()}"
        if gcauth != GcAuth.DIGITAL_SIGNATURE:
            raise MappingError(f"{where}: GCAUTH {gcauth}, msec follows digital signatures only")
        bag = group_bags.pop((int(ProtocolId.GIKE_UPDATE), bytes(rekey_policy.spi)), None)
        if bag is None:
            raise MappingError(f"{where}: no key bag")
        if len(auth_keys) != 1:
            raise MappingError(f"{where}: {len(auth_keys)} AUTH_KEY attributes, need one")
        try:
            pub = load_der_public_key(auth_keys[0])
        except Exception as e:  # malformed DER, or a well-formed key of a type cryptography does not know
            raise MappingError(f"{where}: AUTH_KEY is not a usable DER public key: {e}") from None
        names = SIGNATURE_BY_CURVE.get(pub.curve.name) if isinstance(pub, ec.EllipticCurvePublicKey) else None
        if names is None:
            raise MappingError(f"{where}: AUTH_KEY is not an ECDSA P-256/P-384 key")
        signature = SIGNATURE_ALGORITHMS[names[0]]
        try:
            material, path = empty.resolve(kwa, gsk_w, _sa_key(bag, where), tuple(wrap_keys))
            rekey_sa = RekeySa.from_policy(rekey_policy, material)
        except (KeyWrapError, RekeyPolicyError) as e:
            raise MappingError(f"{where}: {e}") from None
        cipher = next((c for c in KEK_CIPHERS.values() if rekey_sa.encr == Encr.AES_CBC and c.key_length_bits == rekey_sa.key_bits), None)
        if cipher is None:
            raise MappingError(f"{where}: cipher {rekey_sa.encr}/{rekey_sa.key_bits} has no GroupKek name")
        src, sport = _from_ts(rekey_sa.source, f"{where} source")
        dst, dport = _from_ts(rekey_sa.destination, f"{where} destination")
        kek = GroupKek(group_id, rekey_sa.spi, src, sport, dst, dport, cipher.name, rekey_sa.keys.gsk_e, b"", names[1],
                       auth_keys[0], rekey_sa.lifetime_s)
    elif wrap_keys or auth_keys:
        raise MappingError("member key bag without a Rekey SA")
    if sender_ids and not sender:
        raise MappingError("GM_SENDER_ID for a member that did not ask to send")
    if group_bags:
        raise MappingError(f"{len(group_bags)} key bag(s) for SAs the GSA payload does not name")
    gap = None
    bits = None
    if gws:
        gap = GapDelays(_attr(gws[0].attributes, GwAttr.ATD, "GW policy"), _attr(gws[0].attributes, GwAttr.DTD, "GW policy"))
        bits = _attr(gws[0].attributes, GwAttr.SENDER_ID_BITS, "GW policy")
    if sender_ids:
        if bits is None or not 0 < bits <= 32:
            raise MappingError(f"GM_SENDER_ID without a usable GWP_SENDER_ID_BITS ({bits})")
        if len(set(sender_ids)) != len(sender_ids) or max(sender_ids) >= 1 << bits:
            raise MappingError(f"Sender-IDs {sender_ids} repeated or wider than {bits} bits")
    return GroupKeysReceived(tuple(teks), kek, rekey_sa, signature, auth_keys[0] if rekey_sa else None, path, gap,
                             tuple(sender_ids))
