"""NAT traversal for IKEv2 / G-IKEv2 (RFC 7296 §2.23, RFC 3948 §2.2), sans-I/O: the non-ESP
marker of UDP port 4500 and the NAT_DETECTION_*_IP hashes.

Framing (UDP 4500): every IKE message is preceded by four zero octets (the non-ESP marker);
a datagram whose first four octets are not zero is ESP (its SPI, never zero) and a single 0xFF
octet is a NAT-keepalive.  :func:`unframe` sorts a received datagram into these, and refuses
anything else with a :class:`~.errors.WireError` (payload ``"UDP-4500"``): never an exception
of another kind, whatever the length.  msec speaks no ESP-in-UDP: the shells drop ESP (and
count it) and keepalives (quietly).

NAT detection (IKE_SA_INIT, both directions): NAT_DETECTION_SOURCE_IP carries
``SHA-1(SPIi | SPIr | IP | port)`` of the sender's address as the sender sees it (several are
allowed: a multihomed sender), NAT_DETECTION_DESTINATION_IP the same over the receiver's
address as the sender sees it; SPIr is zero in the request.  IP: 4 or 16 octets, port: 2, both
in network order.  The receiver compares them with the addresses it sees: a SOURCE_IP that
matches none says the peer is behind a NAT, a DESTINATION_IP that does not match says we are.
Notification data of another length than 20 is refused by the codec (:mod:`.payloads`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

from .constants import NotifyType
from .errors import WireError
from .payloads import Notify

__all__ = ["IKE_PORT", "NATT_PORT", "NON_ESP_MARKER", "NAT_KEEPALIVE", "Kind", "Unframed", "NatStatus",
           "frame", "unframe", "nat_hash", "nat_notifies", "detect"]

IKE_PORT = 500
NATT_PORT = 4500
NON_ESP_MARKER = bytes(4)
NAT_KEEPALIVE = b"\xff"
_IKE_HEADER = 28
_ESP_HEADER = 8  # SPI + sequence number (RFC 4303 §2)
_PAYLOAD = "UDP-4500"


class Kind(enum.Enum):
    IKE = "ike"
    ESP = "esp"
    KEEPALIVE = "keepalive"


@dataclass(frozen=True, slots=True)
class Unframed:
    """A datagram received on UDP 4500: ``message`` is the IKE message (marker removed) for
    :attr:`Kind.IKE`, empty otherwise."""

    kind: Kind
    message: bytes = b""


def frame(message: bytes) -> bytes:
    """An IKE message as it goes on UDP 4500: the non-ESP marker first."""
    return NON_ESP_MARKER + bytes(message)


def unframe(datagram: bytes) -> Unframed:
    """Sort a UDP 4500 datagram (module docstring); WireError if it is none of the three."""
    data = bytes(datagram)
    n = len(data)
    if n == 1 and data == NAT_KEEPALIVE:
        return Unframed(Kind.KEEPALIVE)
    if n < 4:
        raise WireError(_PAYLOAD, 0, f"{n} byte(s): neither a NAT-keepalive (one 0xFF) nor a non-ESP marker or ESP SPI")
    if data[:4] == NON_ESP_MARKER:
        if n - 4 < _IKE_HEADER:
            raise WireError(_PAYLOAD, 4, f"non-ESP marker followed by {n - 4} byte(s), an IKE header has {_IKE_HEADER}")
        return Unframed(Kind.IKE, data[4:])
    if n < _ESP_HEADER:
        raise WireError(_PAYLOAD, 4, f"ESP SPI followed by {n - 4} byte(s), the ESP header has {_ESP_HEADER}")
    return Unframed(Kind.ESP)


def _packed(addr: Any) -> bytes:
    host = str(addr[0]).split("%", 1)[0]
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed + int(addr[1]).to_bytes(2, "big")


def nat_hash(spi_i: bytes, spi_r: bytes, addr: Any) -> bytes:
    """``SHA-1(SPIi | SPIr | IP | port)`` of ``addr`` = (IP literal, port)."""
    return hashlib.sha1(bytes(spi_i) + bytes(spi_r) + _packed(addr)).digest()


def nat_notifies(spi_i: bytes, spi_r: bytes, local: Any, peer: Any) -> list[Notify]:
    """The two notifications a sender at ``local`` puts in an IKE_SA_INIT message to ``peer``."""
    return [Notify(0, NotifyType.NAT_DETECTION_SOURCE_IP, b"", nat_hash(spi_i, spi_r, local)),
            Notify(0, NotifyType.NAT_DETECTION_DESTINATION_IP, b"", nat_hash(spi_i, spi_r, peer))]


@dataclass(frozen=True, slots=True)
class NatStatus:
    """What NAT detection found in IKE_SA_INIT: which side is behind a NAT (both may be)."""

    initiator_behind_nat: bool = False
    responder_behind_nat: bool = False

    @property
    def detected(self) -> bool:
        return self.initiator_behind_nat or self.responder_behind_nat

    def describe(self) -> str:
        sides = [s for s, b in (("initiator", self.initiator_behind_nat), ("responder", self.responder_behind_nat)) if b]
        return "NAT: " + (" and ".join(sides) + " behind a NAT" if sides else "none")


def _matches(notifies: list[Notify], want: bytes) -> bool:
    found = False
    for n in notifies:  # no early exit: the same work whatever matches
        found |= hmac.compare_digest(bytes(n.data), want)
    return found


def detect(notifies: Iterable[Notify], spi_i: bytes, spi_r: bytes, local: Any, peer: Any, *,
           initiator: bool) -> NatStatus | None:
    """NAT detection on a received IKE_SA_INIT message (its notifications, with the SPIs of its
    header) at ``local`` from ``peer``; ``initiator``: we are the initiator (the message is the
    response).  None if the message has no NAT_DETECTION notifications (the peer does not do
    NAT detection)."""
    notifies = list(notifies)
    srcs = [n for n in notifies if n.type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dsts = [n for n in notifies if n.type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not srcs and not dsts:
        return None
    peer_nat = bool(srcs) and not _matches(srcs, nat_hash(spi_i, spi_r, peer))
    local_nat = bool(dsts) and not _matches(dsts, nat_hash(spi_i, spi_r, local))
    if initiator:
        return NatStatus(initiator_behind_nat=local_nat, responder_behind_nat=peer_nat)
    return NatStatus(initiator_behind_nat=peer_nat, responder_behind_nat=local_nat)
