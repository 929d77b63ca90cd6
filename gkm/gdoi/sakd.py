"""The one reader of what a key server hands out: the children of a GDOI SA payload and the key
packets of a KD payload (RFC 6407 sections 5.2-5.6).

GROUPKEY-PULL message 2 and 4 (:mod:`gkm.gdoi.pull`) and GROUPKEY-PUSH (:mod:`gkm.gdoi.push`)
both carry an SA (SA KEK, GAP, SA TEKs) and a KD (one key packet per SPI); this module is the
only place their number, order and pairing are checked, so one parser is one place to get
right.  Pure functions over decoded payloads (:mod:`gkm.wire` already checked the byte
layout); every refusal is a :class:`SaKdError` with a reason that names what is wrong.

Checks:

* SA (RFC 6407 section 5.2.1): at most one SA KEK, at most one GAP, in the order SA KEK, GAP,
  SA TEKs; every SA KEK/GAP/SA TEK maps onto policy (:mod:`gkm.gdoi.policy_wire`, suites the
  member accepts; GAP: ATD and DTD only); no two SA TEKs with one SPI.  Whether an SA without TEKs is acceptable is
  the exchange's business (PULL: no; PUSH: a KEK-only rekey).
* KD (RFC 6407 section 5.6): TEK key packets with a 4-octet SPI, at most one per SPI; at most
  one KEK and one LKH key packet; SID packets (RFC 6054) only where the caller allows them;
  other KD types refused.
* Pairing (:func:`pair`): the TEK key packets are exactly those of the SA's TEK SPIs; a KEK key
  packet exactly when there is an SA KEK, for its SPI; an LKH key packet only with an SA KEK,
  for its SPI.
"""

from __future__ import annotations

from dataclasses import dataclass

from gkm.wire import Gap, GdoiSa, KeyDownload, KeyPacket, SaKek
from gkm.wire.constants import KdType, NotifyType, PayloadType

from . import policy_wire as pw

__all__ = ["SaKdError", "GroupSa", "KeyPackets", "read_sa", "sort_kd", "pair", "TEK_SPI_SIZE"]

TEK_SPI_SIZE = 4  # RFC 6407 section 5.6.1: the TEK key packet's SPI is the SA TEK's 4-octet ESP SPI


class SaKdError(ValueError):
    """The SA or KD payload is not usable.  ``notify``: the ISAKMP notify type that says why
    to the key server (PULL), where there is a fitting one."""

    def __init__(self, reason: str, notify: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


@dataclass(frozen=True, slots=True)
class GroupSa:
    """An SA payload, read: the Rekey SA (None if there is no SA KEK), the GAP delays (None if
    there is no GAP payload), the TEKs in the order sent."""

    kek: pw.KekParams | None
    gap: pw.GapDelays | None
    teks: tuple[pw.TekParams, ...]


@dataclass(frozen=True, slots=True)
class KeyPackets:
    """A KD payload, sorted by KD type.  ``teks``: SPI -> key packet, in the order sent."""

    teks: dict[int, KeyPacket]
    kek: KeyPacket | None
    lkh: KeyPacket | None
    sids: tuple[KeyPacket, ...]

    def __repr__(self) -> str:  # the packets hold key material; KeyPacket's repr elides it, keep it that way
        return (f"KeyPackets(teks=[{', '.join(f'{s:#010x}' for s in self.teks)}], kek={self.kek is not None}, "
                f"lkh={self.lkh is not None}, sids={len(self.sids)})")


def _rank(p) -> int:
    """Position class of an SA child: SA KEK, then GAP, then SA TEKs (RFC 6407 section 5.2.1)."""
    if type(p) is SaKek:
        return 0
    if type(p) is Gap:
        return 1
    return 2


def read_sa(sa: GdoiSa, allowed_suites: frozenset[str] | None = None) -> GroupSa:
    """Check the SA payload's children and map them onto policy.  Raises :class:`SaKdError`."""
    kids = sa.payloads
    saks = [p for p in kids if type(p) is SaKek]
    gaps = [p for p in kids if type(p) is Gap]
    sats = [p for p in kids if p.TYPE == PayloadType.SA_TEK]
    if len(saks) > 1:
        raise SaKdError(f"{len(saks)} SA KEK payloads, at most one allowed (RFC 6407 section 5.2.1)")
    if len(gaps) > 1:
        raise SaKdError(f"{len(gaps)} GAP payloads, at most one allowed (RFC 6407 section 5.2.1)")
    ranks = [_rank(p) for p in kids]
    if ranks != sorted(ranks):
        names = ", ".join(("SA KEK", "GAP", "SA TEK")[r] for r in ranks)
        raise SaKdError(f"SA children in the order {names}: must be SA KEK, GAP, SA TEKs (RFC 6407 section 5.2.1)")
    try:
        kek = pw.read_sa_kek(saks[0]) if saks else None
        teks = tuple(pw.read_sa_tek(s, allowed_suites) for s in sats)
        gap = pw.read_gap(gaps[0]) if gaps else None
    except pw.MappingError as e:
        raise SaKdError(f"unacceptable group policy: {e}", int(NotifyType.ATTRIBUTES_NOT_SUPPORTED)) from None
    seen: set[int] = set()
    for t in teks:
        if t.spi in seen:
            raise SaKdError(f"two SA TEKs with SPI {t.spi:#010x}")
        seen.add(t.spi)
    return GroupSa(kek, gap, teks)


def sort_kd(kd: KeyDownload, *, sid_allowed: bool = False) -> KeyPackets:
    """Sort the KD payload's key packets by type, refusing repeats.  Raises :class:`SaKdError`."""
    teks: dict[int, KeyPacket] = {}
    kek = lkh = None
    sids: list[KeyPacket] = []
    for i, p in enumerate(kd.packets):
        if p.kd_type == KdType.TEK:
            if len(p.spi) != TEK_SPI_SIZE:
                raise SaKdError(f"key packet {i}: TEK SPI of {len(p.spi)} octets, need {TEK_SPI_SIZE}")
            spi = int.from_bytes(p.spi, "big")
            if spi in teks:
                raise SaKdError(f"key packet {i}: a second TEK key packet for SPI {spi:#010x}")
            teks[spi] = p
        elif p.kd_type == KdType.KEK:
            if kek is not None:
                raise SaKdError(f"key packet {i}: a second KEK key packet")
            kek = p
        elif p.kd_type == KdType.LKH:
            if lkh is not None:
                raise SaKdError(f"key packet {i}: a second LKH key packet")
            lkh = p
        elif p.kd_type == KdType.SID and sid_allowed:
            sids.append(p)
        else:
            raise SaKdError(f"key packet {i}: KD type {p.kd_type} not supported here")
    return KeyPackets(teks, kek, lkh, tuple(sids))


def pair(sa: GroupSa, packets: KeyPackets) -> None:
    """Check that the key packets are exactly those the SA announces.  Raises :class:`SaKdError`."""
    want = {t.spi for t in sa.teks}
    have = set(packets.teks)
    if want != have:
        parts = []
        if want - have:
            parts.append("no key packet for SA TEK SPI " + ", ".join(f"{s:#010x}" for s in sorted(want - have)))
        if have - want:
            parts.append("key packet for SPI " + ", ".join(f"{s:#010x}" for s in sorted(have - want)) + " not in the SA")
        raise SaKdError("key packets do not match the SA TEK SPIs: " + "; ".join(parts))
    if sa.kek is None:
        if packets.kek is not None:
            raise SaKdError("KEK key packet without an SA KEK")
        if packets.lkh is not None:
            raise SaKdError("LKH key packet without an SA KEK")
        return
    if packets.kek is None:
        raise SaKdError(f"no KEK key packet for the SA KEK SPI {sa.kek.spi.hex()}")
    if packets.kek.spi != sa.kek.spi:
        raise SaKdError(f"KEK key packet for SPI {packets.kek.spi.hex()}, the SA KEK's is {sa.kek.spi.hex()}")
    if packets.lkh is not None and packets.lkh.spi != sa.kek.spi:
        raise SaKdError(f"LKH key packet for SPI {packets.lkh.spi.hex()}, the SA KEK's is {sa.kek.spi.hex()}")
