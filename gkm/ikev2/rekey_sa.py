"""The Rekey SA of G-IKEv2 (RFC 9838 §4.3.1, GIKE_UPDATE): the KEK equivalent both sides hold,
and its GSA policy substructure.

Policy checks (decisions): ENCR with a Key Length (AES-GCM-16 or AES-CBC), INTEG for CBC only
(RFC 4868 HMAC-SHA2 or SHA1), KWA (KW_5649_*), GSA_KEY_LIFETIME required (§6 "S"),
GSA_INITIAL_MESSAGE_ID at most once, GSA_NEXT_SPI (16 bytes each) any number of times; GCAUTH
and any other transform are refused in a rekey; each transform type at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gkm.gdoi.keys import GroupKek
from gkm.wire.attributes import Attribute
from policy.suites import KEK_CIPHERS

from .constants import Encr, GsaAttr, Integ, ProtocolId, TransformAttr, TransformType, TsType
from .gsa import GsaPolicy
from .gsa_keys import KeyWrapError, RekeySaKeys
from .keys import AEAD as AEAD_ENCR
from .keys import INTEG
from .payloads import Transform, TrafficSelector
from .sk import SkCipher

_ZERO16 = bytes(16)
_UDP = 17


def _udp_ts(net, port: int) -> TrafficSelector:
    kind = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
    lo, hi = (port, port) if port else (0, 0xFFFF)
    return TrafficSelector(kind, _UDP, lo, hi, net.network_address.packed, net.broadcast_address.packed)


@dataclass(frozen=True, slots=True)
class RekeySa:
    """One Rekey SA as both sides hold it: the G-IKEv2 counterpart of :class:`~gkm.gdoi.keys.GroupKek`."""

    spi: bytes  # 16 bytes: SPIi | SPIr of the GSA_REKEY header
    encr: Encr | int
    key_bits: int
    integ: Integ | int | None
    kwa: int
    keys: RekeySaKeys = field(repr=False)
    source: TrafficSelector
    destination: TrafficSelector
    lifetime_s: int
    initial_message_id: int = 0
    next_spis: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.spi) != 16 or self.spi == _ZERO16:
            raise ValueError("Rekey SA SPI must be 16 bytes, not all zero")
        RekeySaKeys.split(self.keys.keymat, self.encr, self.key_bits, self.integ, self.kwa)  # sizes fit

    def __repr__(self) -> str:
        return (f"RekeySa(spi={self.spi.hex()}, encr={self.encr}/{self.key_bits}, integ={self.integ}, kwa={self.kwa}, "
                f"{self.lifetime_s} s, initial message ID {self.initial_message_id})")

    @property
    def cipher(self) -> SkCipher:
        return SkCipher(self.encr, None if self.encr in AEAD_ENCR else self.integ, self.keys.gsk_e, self.keys.gsk_a)

    @property
    def header_spis(self) -> tuple[bytes, bytes]:
        return self.spi[:8], self.spi[8:]

    def policy(self) -> GsaPolicy:
        transforms = [Transform(TransformType.ENCR, self.encr, (Attribute(TransformAttr.KEY_LENGTH, self.key_bits),))]
        if self.encr not in AEAD_ENCR:
            transforms.append(Transform(TransformType.INTEG, self.integ))
        transforms.append(Transform(TransformType.KWA, self.kwa))
        attrs = [Attribute(GsaAttr.KEY_LIFETIME, self.lifetime_s.to_bytes(4, "big"))]
        if self.initial_message_id:
            attrs.append(Attribute(GsaAttr.INITIAL_MESSAGE_ID, self.initial_message_id.to_bytes(4, "big")))
        attrs += [Attribute(GsaAttr.NEXT_SPI, s) for s in self.next_spis]
        return GsaPolicy(ProtocolId.GIKE_UPDATE, self.spi, self.source, self.destination, tuple(transforms), tuple(attrs))

    @classmethod
    def from_kek(cls, kek: GroupKek, keys: RekeySaKeys, *, kwa: int, integ: int | None,
                 initial_message_id: int = 0) -> "RekeySa":
        """The Rekey SA from a registration's hand-off values (:class:`~gkm.gdoi.keys.GroupKek`,
        whose cipher is an AES-CBC one of :data:`policy.suites.KEK_CIPHERS`, plus the keys
        GSK_e | GSK_a | GSK_w, the KWA and the INTEG transform)."""
        cipher = KEK_CIPHERS.get(kek.cipher)
        if cipher is None:
            raise RekeyPolicyError(f"unknown KEK cipher {kek.cipher!r}")
        try:
            return cls(kek.spi, Encr.AES_CBC, cipher.key_length_bits, integ, kwa, keys, _udp_ts(kek.src, kek.src_port),
                       _udp_ts(kek.dst, kek.dst_port), kek.lifetime_s, initial_message_id)
        except (KeyWrapError, KeyError, ValueError) as e:
            raise RekeyPolicyError(str(e)) from None

    @classmethod
    def from_policy(cls, policy: GsaPolicy, keymat: bytes) -> "RekeySa":
        """Raises :class:`RekeyPolicyError`."""
        if len(policy.spi) != 16:
            raise RekeyPolicyError(f"Rekey SA SPI of {len(policy.spi)} bytes")
        by_type: dict[int, Transform] = {}
        for t in policy.transforms:
            if t.type in by_type:
                raise RekeyPolicyError(f"transform type {t.type} twice")
            if t.type == TransformType.GCAUTH:
                raise RekeyPolicyError("GCAUTH transform in a rekey (RFC 9838 §4.3.1.1.1)")
            if t.type not in (TransformType.ENCR, TransformType.INTEG, TransformType.KWA):
                raise RekeyPolicyError(f"transform type {t.type} in a Rekey SA policy")
            by_type[t.type] = t
        encr, integ, kwa = (by_type.get(x) for x in (TransformType.ENCR, TransformType.INTEG, TransformType.KWA))
        if encr is None or kwa is None or encr.key_length is None:
            raise RekeyPolicyError("Rekey SA policy without ENCR (with Key Length) or KWA")
        if encr.id in AEAD_ENCR:
            if integ is not None and integ.id != Integ.NONE:
                raise RekeyPolicyError("INTEG with an AEAD cipher")
            integ_id = None
        elif encr.id == Encr.AES_CBC:
            if integ is None or integ.id not in INTEG:
                raise RekeyPolicyError("AES-CBC Rekey SA without a supported INTEG transform")
            integ_id = integ.id
        else:
            raise RekeyPolicyError(f"unsupported Rekey SA cipher {encr.id}")
        if encr.key_length not in (128, 192, 256):
            raise RekeyPolicyError(f"key length {encr.key_length}")
        lifetime, initial, nxt = None, 0, []
        seen: set[int] = set()
        for t, v in policy.attributes:
            if not isinstance(v, bytes):
                raise RekeyPolicyError(f"GSA attribute {t} must be TLV")
            if t in seen and t != GsaAttr.NEXT_SPI:
                raise RekeyPolicyError(f"GSA attribute {t} twice")
            seen.add(t)
            if t == GsaAttr.KEY_LIFETIME and len(v) == 4:
                lifetime = int.from_bytes(v, "big")
            elif t == GsaAttr.INITIAL_MESSAGE_ID and len(v) == 4:
                initial = int.from_bytes(v, "big")
            elif t == GsaAttr.NEXT_SPI and len(v) == 16:
                nxt.append(bytes(v))
            else:
                raise RekeyPolicyError(f"GSA attribute {t} of {len(v)} bytes not allowed in a Rekey SA policy")
        if lifetime is None:
            raise RekeyPolicyError("Rekey SA policy without GSA_KEY_LIFETIME")
        try:
            keys = RekeySaKeys.split(keymat, encr.id, encr.key_length, integ_id, kwa.id)
            return cls(bytes(policy.spi), encr.id, encr.key_length, integ_id, kwa.id, keys, policy.source,
                       policy.destination, lifetime, initial, tuple(nxt))
        except (KeyWrapError, ValueError) as e:
            raise RekeyPolicyError(str(e)) from None


class RekeyPolicyError(ValueError):
    """A GSA policy this member cannot follow."""


__all__ = ["RekeyPolicyError", "RekeySa"]
