"""Group policy in protocol terms: immutable values the key server and members act on.

Everything here is a frozen, slotted dataclass that checks its own invariants in
`__post_init__` (raising `ValueError`), so hand-built policies (tests, tools) obey the same
rules as loaded ones. `policy.config` turns TOML into these objects and reports problems with
key paths; this module does no I/O.

Decisions
---------
Group identity
    A group is identified by a 32-bit number, `group_id`, because RFC 6407 section 5.1 makes
    ID_KEY_ID with a 4-octet group identifier the one ID type every GDOI implementation must
    support. It is carried big-endian (`GroupPolicy.id_payload_data`). 0 is refused: it is what
    a forgotten field decodes to. A group may also have a `name`, a local label for logs and
    `msecctl`; it never goes on the wire.

Mode
    `TUNNEL` is always tunnel mode with RFC 5374 address preservation of source *and*
    destination (RFC 6407 section 5.5.1.1.1 value 4): the outer header copies the inner
    addresses, so multicast stays routable as multicast. Therefore the destination must be a
    multicast address. `TRANSPORT` is plain transport mode; address preservation does not apply.

Senders, direction and replay
    A TEK with `senders=None` is multi-sender: every member may send, and every member gets the
    SA as `SYMMETRIC` (RFC 6407 section 5.5.1.1.2). All senders share one SA, i.e. one
    (destination, SPI) in every receiver's kernel, and each sender's kernel numbers its packets
    from 1 independently. A receiver's anti-replay window would therefore see sender B's
    packet 5 after sender A's packet 900 as a replay and drop it: multi-sender TEKs must have
    `replay_window == 0` (RFC 5374 section 4.2.1: only a group that does not rely on
    anti-replay can share one SA among its senders; RFC 6054 sender IDs are the other way).
    A TEK with `senders` set is single-sender: members matching `senders` get `SENDER_ONLY`,
    everybody else `RECEIVER_ONLY`; only then may the window be non-zero, and only if
    `senders` names exactly one identity (one rule, no wildcard, no network wider than a host).

Authorization
    See `policy.identity` (identities, rules, DN and FQDN patterns); re-exported here.

Secrets
    `Secret` never shows its value in `repr`/`str`/`format`; compare with `==`
    (constant time). Use `reveal()` where the bytes are really needed.
"""

from __future__ import annotations

import enum
import hmac
import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from policy.identity import (
    AddressMatch,
    Authorization,
    Decision,
    FqdnMatch,
    Identity,
    IdKind,
    IdType,
    Matcher,
    PskIdMatch,
    SubjectMatch,
    parse_dn,
)
from policy.suites import (
    PHASE1_AUTH, PHASE1_CIPHERS, PHASE1_DH_GROUPS, PHASE1_HASHES, EspSuite, KekCipher, SignatureSuite,
)

__all__ = [
    "IPNetwork",
    "IPAddress",
    "Mode",
    "EncapsulationMode",
    "AddressPreservation",
    "SaDirection",
    "IdType",
    "IdKind",
    "Secret",
    "TrafficSelector",
    "TekPolicy",
    "KekPolicy",
    "Identity",
    "Decision",
    "PskIdMatch",
    "FqdnMatch",
    "AddressMatch",
    "SubjectMatch",
    "Matcher",
    "Authorization",
    "GroupPolicy",
    "PskCredential",
    "PpkCredential",
    "CertCredential",
    "Credentials",
    "DaemonSettings",
    "KeyServerSettings",
    "Phase1Suites",
    "KeyServerAddress",
    "MemberGroup",
    "MemberSettings",
    "DaemonConfig",
    "GDOI_PORT",
    "MIN_GROUP_ID",
    "MAX_GROUP_ID",
    "TEK_LIFETIME_RANGE",
    "KEK_LIFETIME_RANGE",
    "REKEY_LEAD_RANGE",
    "LKH_DEGREE_RANGE",
    "EVICT_BATCH_RANGE",
    "tek_rekey_lead",
    "kek_rekey_lead",
    "GAP_DELAY_RANGE",
    "DEFAULT_ACTIVATION_DELAY",
    "DEFAULT_DEACTIVATION_DELAY",
    "MAX_REPLAY_WINDOW",
    "DEFAULT_REPLAY_WINDOW",
    "MIN_PSK_BYTES",
    "MIN_PPK_BYTES",
    "GROUP_PPK",
    "PORT_PROTOCOLS",
    "parse_dn",
    "gap_delay_problem",
    "GROUP_MLKEM",
    "MEMBER_MLKEM",
]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

GDOI_PORT = 848  # RFC 6407 section 5: UDP port 848
#: RFC 7296 §2.23 / RFC 3948: IKE over UDP 4500 carries a 4-byte non-ESP marker; a key server
#: whose G-IKEv2 is on 500 also listens here (never configured by itself: ``g_ikev2_port``)
NATT_PORT = 4500
MIN_GROUP_ID = 1
MAX_GROUP_ID = 2**32 - 1
#: seconds; the floors allow short-lifetime tests (a TEK rotation every few seconds)
TEK_LIFETIME_RANGE = (20, 86_400)
KEK_LIFETIME_RANGE = (60, 7 * 86_400)
#: Largest GROUPKEY-PUSH datagram (bytes of UDP payload) the key server sends: an LKH update
#: that does not fit is split over several PUSHes (gkm.lkh.split_lkh_update).  The default keeps
#: IP fragmentation on a 1500-byte path to 6 fragments; the floor leaves room for the SA, KEK
#: packet and an RSA-4096 signature beside the LKH keys; the ceiling is UDP's.
MAX_PUSH_SIZE_RANGE = (2048, 65_000)
MAX_PUSH_SIZE_DEFAULT = 8192
#: lead times of automatic rotation: how long before a TEK (KEK) expires the key server pushes
#: its successor (README "Automatic rotation" compares the defaults with other GDOI products)
REKEY_LEAD_RANGE = (1, 7 * 86_400)
#: LKH tree degree (children per node): 2 gives the smallest eviction PUSH for one member
LKH_DEGREE_RANGE = (2, 64)
#: eviction batch window: evictions asked for within it leave in one rekey
EVICT_BATCH_RANGE = (0, 3600)
#: GAP activation/deactivation time delays (RFC 6407 section 5.4.1), seconds; README
#: "Make before break" says why the defaults are what they are
GAP_DELAY_RANGE = (0, 3600)
#: rekey delivery (README "Rekey delivery"): how GROUPKEY-PUSH datagrams reach the members
REKEY_DELIVERY_MODES = ("multicast", "unicast")
REKEY_COPIES_RANGE = (1, 10)  # byte-identical copies of each multicast rekey
REKEY_COPY_INTERVAL_RANGE = (0.01, 60.0)  # seconds between two copies
REKEY_UNICAST_RATE_RANGE = (10, 1_000_000)  # unicast PUSH datagrams per second, at most
#: unicast mode, GROUPKEY-PUSH-ACK (RFC 8263): seconds before the first retransmission (RFC
#: 8263 section 6: a GCKS SHOULD wait at least 10 s before declaring an ACK missing; shorter
#: values are for tests and small links), retransmissions per rekey, rekeys left
#: unacknowledged in a row before a member is lost
REKEY_ACK_TIMEOUT_RANGE = (1, 300)
REKEY_ACK_RETRIES_RANGE = (0, 10)
REKEY_MAX_MISSED_RANGE = (1, 100)
DEFAULT_ACTIVATION_DELAY = 2
DEFAULT_DEACTIVATION_DELAY = 6
DEFAULT_REPLAY_WINDOW = 64  # configuration default for a TEK with exactly one sender
MAX_REPLAY_WINDOW = 4096  # XFRM bitmap replay state (xfrm_replay_state_esn without ESN)
MIN_PSK_BYTES = 16
MIN_PPK_BYTES = 32  # RFC 8784 §3: a PPK with at least 256 bits of entropy
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite


class Mode(enum.Enum):
    TUNNEL = "tunnel"  # with RFC 5374 address preservation (source and destination)
    TRANSPORT = "transport"


class EncapsulationMode(enum.IntEnum):
    """RFC 2407 section 4.5 "Encapsulation Mode" attribute values."""

    TUNNEL = 1
    TRANSPORT = 2


class AddressPreservation(enum.IntEnum):
    """RFC 6407 section 5.5.1.1.1."""

    NONE = 1
    SOURCE_ONLY = 2
    DESTINATION_ONLY = 3
    SOURCE_AND_DESTINATION = 4


class SaDirection(enum.IntEnum):
    """RFC 6407 section 5.5.1.1.2."""

    SENDER_ONLY = 1
    RECEIVER_ONLY = 2
    SYMMETRIC = 3


# --------------------------------------------------------------------------- secrets


class Secret:
    """Bytes that must not leak: redacted repr/str, constant-time equality."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError("Secret holds bytes")
        object.__setattr__(self, "_value", bytes(value))

    def __setattr__(self, name, value):  # immutable
        raise AttributeError("Secret is immutable")

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(b"msec-secret" + self._value).digest())

    def __reduce__(self):
        raise TypeError("Secret is not picklable")


# --------------------------------------------------------------------------- selectors


def _id_type(net: IPNetwork) -> IdType:
    if net.version == 4:
        return IdType.ID_IPV4_ADDR if net.prefixlen == 32 else IdType.ID_IPV4_ADDR_SUBNET
    return IdType.ID_IPV6_ADDR if net.prefixlen == 128 else IdType.ID_IPV6_ADDR_SUBNET


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """What a TEK protects: the SA TEK payload's SRC/DST ID, protocol and ports.

    Protocol 0 and port 0 mean "any" (RFC 6407 section 5.5.1). Ports need a protocol that
    has ports.
    """

    src: IPNetwork
    dst: IPNetwork
    protocol: int = 0
    src_port: int = 0
    dst_port: int = 0

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            if not isinstance(getattr(self, name), (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                raise ValueError(f"{name} must be an IPv4Network or IPv6Network")
        if self.src.version != self.dst.version:
            raise ValueError(
                f"source {self.src} and destination {self.dst} are of different address families"
            )
        if self.src.is_multicast:
            raise ValueError(f"source {self.src} is multicast; senders have unicast addresses")
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"protocol {self.protocol} is not in 0..255")
        for name in ("src_port", "dst_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} {port} is not in 0..65535")
            if port and self.protocol not in PORT_PROTOCOLS:
                raise ValueError(f"{name} needs a protocol with ports (tcp, udp, sctp, ...)")

    @property
    def family(self) -> int:
        return self.src.version

    @property
    def dst_is_multicast(self) -> bool:
        return self.dst.is_multicast

    @property
    def src_id_type(self) -> IdType:
        return _id_type(self.src)

    @property
    def dst_id_type(self) -> IdType:
        return _id_type(self.dst)


# --------------------------------------------------------------------------- TEK / KEK


@dataclass(frozen=True, slots=True)
class TekPolicy:
    """One data-security SA of a group (one SA TEK payload)."""

    name: str
    selector: TrafficSelector
    suite: EspSuite
    mode: Mode = Mode.TUNNEL
    lifetime_s: int = 3600
    senders: Authorization | None = None  # None: every member sends (multi-sender)
    replay_window: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TEK name must not be empty")
        lo, hi = TEK_LIFETIME_RANGE
        if not lo <= self.lifetime_s <= hi:
            raise ValueError(f"TEK lifetime {self.lifetime_s} s is not in {lo}..{hi}")
        if self.mode is Mode.TUNNEL:
            dst = self.selector.dst
            if not dst.is_multicast:
                raise ValueError(
                    f"tunnel mode with address preservation needs a multicast destination, "
                    f"{dst} is not"
                )
            if dst.num_addresses != 1:
                raise ValueError(
                    f"tunnel mode with address preservation needs one multicast address, not "
                    f"the prefix {dst}: the outer destination (and the kernel SA) is one address"
                )
        if not 0 <= self.replay_window <= MAX_REPLAY_WINDOW:
            raise ValueError(f"replay window {self.replay_window} is not in 0..{MAX_REPLAY_WINDOW}")
        if self.replay_window:
            if self.senders is None:
                raise ValueError(
                    "replay window must be 0 for a multi-sender TEK: senders share one SA and "
                    "number packets independently, so receivers would drop valid packets"
                )
            rules = self.senders.rules
            if len(rules) != 1 or not rules[0].single:
                raise ValueError(
                    "replay window needs exactly one sender (one rule, no wildcard, no network)"
                )
        if self.senders is not None and not self.senders.rules:
            raise ValueError("senders, when given, must name at least one sender")

    @property
    def multi_sender(self) -> bool:
        return self.senders is None

    @property
    def encapsulation_mode(self) -> EncapsulationMode:
        return EncapsulationMode.TUNNEL if self.mode is Mode.TUNNEL else EncapsulationMode.TRANSPORT

    @property
    def address_preservation(self) -> AddressPreservation:
        if self.mode is Mode.TUNNEL:
            return AddressPreservation.SOURCE_AND_DESTINATION
        return AddressPreservation.NONE

    def direction_for(self, peer: Identity) -> SaDirection:
        """The SA Direction to send this member in a GROUPKEY-PULL."""
        if self.senders is None:
            return SaDirection.SYMMETRIC
        if self.senders.decide(peer).allowed:
            return SaDirection.SENDER_ONLY
        return SaDirection.RECEIVER_ONLY


@dataclass(frozen=True, slots=True)
class KekPolicy:
    """The rekey SA: how GROUPKEY-PUSH messages are encrypted, signed and sent."""

    cipher: KekCipher
    signature: SignatureSuite
    signing_key: Path
    rekey_address: IPAddress
    rekey_port: int = GDOI_PORT
    lifetime_s: int = 86_400
    #: push a TEK's successor this long before the TEK expires (None: :func:`tek_rekey_lead`)
    tek_rekey_lead_s: int | None = None
    #: push the KEK's successor this long before it expires (None: :func:`kek_rekey_lead`)
    kek_rekey_lead_s: int | None = None
    #: multicast hop limit of the PUSH datagrams (1: they stay on the key server's link)
    rekey_ttl: int = 1
    #: interface the multicast PUSH leaves through (None: the routing table decides)
    rekey_interface: str | None = None
    #: largest PUSH datagram in bytes; larger LKH updates go out in several PUSHes
    max_push_size: int = MAX_PUSH_SIZE_DEFAULT
    #: an LKH key tree (RFC 2627) for this group: eviction in O(log n) keys instead of
    #: deleting the KEK and every TEK (every member registers again)
    lkh: bool = True
    lkh_degree: int = 2
    #: evictions asked for within this many seconds of the first go out as one rekey
    evict_batch_s: int = 0
    #: "multicast": to the rekey address (and, as a help where multicast does not reach,
    #: unicast to each registered member), ``rekey_copies`` times; "unicast": one copy to each
    #: registered member, acknowledged (RFC 8263) and retransmitted until it is
    rekey_delivery: str = "multicast"
    rekey_copies: int = 2
    rekey_copy_interval_s: float = 0.5
    rekey_unicast_rate: int = 5000
    rekey_ack_timeout_s: int = 10
    rekey_ack_retries: int = 3
    rekey_max_missed: int = 3

    @property
    def unicast(self) -> bool:
        """Unicast delivery: members are asked for GROUPKEY-PUSH-ACKs (KEK_ACK_REQUESTED)."""
        return self.rekey_delivery == "unicast"

    def __post_init__(self) -> None:
        if self.rekey_delivery not in REKEY_DELIVERY_MODES:
            raise ValueError(f"rekey delivery {self.rekey_delivery!r} is not one of "
                             f"{', '.join(REKEY_DELIVERY_MODES)}")
        for what, v, (lo, hi) in (
                ("rekey copies", self.rekey_copies, REKEY_COPIES_RANGE),
                ("rekey copy interval", self.rekey_copy_interval_s, REKEY_COPY_INTERVAL_RANGE),
                ("rekey unicast rate", self.rekey_unicast_rate, REKEY_UNICAST_RATE_RANGE),
                ("rekey ACK timeout", self.rekey_ack_timeout_s, REKEY_ACK_TIMEOUT_RANGE),
                ("rekey ACK retries", self.rekey_ack_retries, REKEY_ACK_RETRIES_RANGE),
                ("rekey max missed", self.rekey_max_missed, REKEY_MAX_MISSED_RANGE)):
            if not lo <= v <= hi:
                raise ValueError(f"{what} {v} is not in {lo}..{hi}")
        lo, hi = LKH_DEGREE_RANGE
        if not lo <= self.lkh_degree <= hi:
            raise ValueError(f"LKH degree {self.lkh_degree} is not in {lo}..{hi}")
        lo, hi = EVICT_BATCH_RANGE
        if not lo <= self.evict_batch_s <= hi:
            raise ValueError(f"eviction batch window {self.evict_batch_s} s is not in {lo}..{hi}")
        lo, hi = MAX_PUSH_SIZE_RANGE
        if not lo <= self.max_push_size <= hi:
            raise ValueError(f"max PUSH size {self.max_push_size} bytes is not in {lo}..{hi}")
        if not 1 <= self.rekey_ttl <= 255:
            raise ValueError(f"rekey TTL {self.rekey_ttl} is not in 1..255")
        if not 1 <= self.rekey_port <= 65535:
            raise ValueError(f"rekey port {self.rekey_port} is not in 1..65535")
        lo, hi = KEK_LIFETIME_RANGE
        if not lo <= self.lifetime_s <= hi:
            raise ValueError(f"KEK lifetime {self.lifetime_s} s is not in {lo}..{hi}")
        problem = kek_lead_problem(self)
        if problem is not None:
            raise ValueError(problem)


def kek_rekey_lead(kek: KekPolicy) -> int:
    """How long before the KEK expires its successor is pushed: ``kek_rekey_lead_s``, by
    default a tenth of the KEK lifetime (2.4 h of the default day)."""
    if kek.kek_rekey_lead_s is not None:
        return kek.kek_rekey_lead_s
    return max(1, kek.lifetime_s // 10)


def kek_lead_problem(kek: KekPolicy) -> str | None:
    lead = kek_rekey_lead(kek)
    lo, hi = REKEY_LEAD_RANGE
    if not lo <= lead <= hi:
        return f"KEK rekey lead {lead} s is not in {lo}..{hi} s"
    if 2 * lead > kek.lifetime_s:
        return (f"KEK rekey lead {lead} s is more than half the KEK lifetime "
                f"({kek.lifetime_s} s): the KEK would be replaced as soon as it is made")
    return None


def tek_rekey_lead(group: "GroupPolicy", tek: "TekPolicy") -> int:
    """How long before a TEK of ``tek`` expires its successor is pushed: the KEK policy's
    ``tek_rekey_lead_s``, by default a tenth of the TEK's lifetime but at least the group's
    activation + deactivation delays (senders move to the new TEK and receivers drop the
    old one before it expires), at most half the lifetime."""
    return _tek_lead(group.kek, tek, group.activation_delay_s, group.deactivation_delay_s)


def _tek_lead(kek: KekPolicy | None, tek: "TekPolicy", atd: int, dtd: int) -> int:
    if kek is not None and kek.tek_rekey_lead_s is not None:
        return kek.tek_rekey_lead_s
    return max(1, min(max(tek.lifetime_s // 10, atd + dtd), tek.lifetime_s // 2))


def tek_lead_problem(kek: KekPolicy | None, teks: "tuple[TekPolicy, ...]", atd: int,
                     dtd: int) -> str | None:
    """What is wrong with a group's TEK rekey lead (None: fine): each TEK's successor must
    be pushed long enough before it expires for senders to move to it (more than the
    activation delay ``atd``), and not before half of its lifetime."""
    if kek is None:
        return None
    lo, hi = REKEY_LEAD_RANGE
    for t in teks:
        lead = _tek_lead(kek, t, atd, dtd)
        if not lo <= lead <= hi:
            return f"TEK rekey lead {lead} s is not in {lo}..{hi} s"
        if 2 * lead > t.lifetime_s:
            return (f"TEK rekey lead {lead} s is more than half the lifetime of TEK {t.name!r} "
                    f"({t.lifetime_s} s)")
        if lead <= atd:
            return (f"TEK rekey lead {lead} s (TEK {t.name!r}) must be longer than the "
                    f"activation delay {atd} s: senders would still be "
                    f"on the old TEK when it expires")
    return None


# --------------------------------------------------------------------------- groups


def gap_delay_problem(atd: int, dtd: int, shortest_tek: int) -> tuple[str, str] | None:
    """What is wrong with a group's GAP delays: (which knob, why), or None.

    Receivers must hold the new SA before anyone sends on it (ATD, counted from each
    member's receipt of the rekey) and keep the old one until every sender has moved off it
    (DTD, counted from the same instant): so DTD > ATD (RFC 6407 section 5.4.1: "the most
    effective policy will have the DTD value be the larger value").  A DTD as long as a
    TEK's lifetime would never apply (the old SA expires first)."""
    lo, hi = GAP_DELAY_RANGE
    for name, v in (("activation_delay", atd), ("deactivation_delay", dtd)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return name, f"{name} {v!r} s is not in {lo}..{hi} s"
    if dtd <= atd:
        return ("deactivation_delay",
                f"deactivation_delay {dtd} s must be longer than activation_delay {atd} s: "
                f"receivers would remove the old SA before every sender moved off it")
    if dtd >= shortest_tek:
        return ("deactivation_delay",
                f"deactivation_delay {dtd} s must be shorter than the shortest TEK lifetime "
                f"({shortest_tek} s)")
    return None


#: registration protocols: GDOI (RFC 6407, IKEv1) and G-IKEv2 (RFC 9838)
PROTOCOLS = ("gdoi", "g-ikev2")


def protocols_problem(protocols) -> str | None:
    """Why a key server group's ``protocols`` list is not valid, or None."""
    if not protocols:
        return "list at least one protocol (gdoi, g-ikev2)"
    for p in protocols:
        if p not in PROTOCOLS:
            return f"unknown protocol {p!r} (gdoi or g-ikev2)"
    if len(set(protocols)) != len(protocols):
        return "a protocol is listed twice"
    return None


#: a key server group's ``mlkem``: whether a G-IKEv2 member's IKE SA must have had the RFC 9370
#: ML-KEM-768 additional key exchange ("optional": members that offer it get it, the others
#: are admitted too; "required": the others are refused at GSA_AUTH with NO_PROPOSAL_CHOSEN)
GROUP_MLKEM = ("optional", "required")
#: a G-IKEv2 member group's ``mlkem``: what its IKE_SA_INIT offers ("off": no ML-KEM-768;
#: "optional": offered, NONE also; "required": offered alone, a GCKS that does not choose it
#: is refused)
MEMBER_MLKEM = ("off", "optional", "required")
#: a key server group's ``g_ikev2_rekey``: how its G-IKEv2 members get rekeys (RFC 9838 §2.4):
#: "gsa_rekey" (the multicast GSA_REKEY with a Rekey SA, LKH) or "inband" (GSA_INBAND_REKEY, one
#: acknowledged exchange per member over the IKE SA its registration kept; small groups)
G_IKEV2_REKEY = ("gsa_rekey", "inband")
#: a key server group's ``ppk``: whether a G-IKEv2 member's GSA_AUTH must have mixed in a
#: post-quantum preshared key (RFC 8784; "required": the others get AUTHENTICATION_FAILED)
GROUP_PPK = ("optional", "required")


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """A group as its key server sees it."""

    group_id: int
    teks: tuple[TekPolicy, ...]
    authorization: Authorization
    kek: KekPolicy | None = None
    name: str | None = None
    #: GAP ATD: how long after a rekey arrives members start sending on its new TEKs
    activation_delay_s: int = DEFAULT_ACTIVATION_DELAY
    #: GAP DTD: how long after a rekey arrives members remove the TEKs it supersedes
    deactivation_delay_s: int = DEFAULT_DEACTIVATION_DELAY
    #: the registration protocols the key server serves this group with (PROTOCOLS)
    protocols: tuple[str, ...] = ("gdoi",)
    #: G-IKEv2: whether a member's IKE SA must have had ML-KEM-768 (GROUP_MLKEM)
    mlkem: str = "optional"
    #: G-IKEv2: how its members get rekeys (G_IKEV2_REKEY)
    g_ikev2_rekey: str = "gsa_rekey"
    #: G-IKEv2: whether a member's GSA_AUTH must have used a PPK (GROUP_PPK)
    ppk: str = "optional"

    def __post_init__(self) -> None:
        if isinstance(self.group_id, bool) or not MIN_GROUP_ID <= self.group_id <= MAX_GROUP_ID:
            raise ValueError(f"group id {self.group_id} is not in {MIN_GROUP_ID}..{MAX_GROUP_ID}")
        problem = protocols_problem(self.protocols)
        if problem is not None:
            raise ValueError(problem)
        if self.mlkem not in GROUP_MLKEM:
            raise ValueError(f"mlkem {self.mlkem!r} is not one of {', '.join(GROUP_MLKEM)}")
        if self.ppk not in GROUP_PPK:
            raise ValueError(f"ppk {self.ppk!r} is not one of {', '.join(GROUP_PPK)}")
        if self.g_ikev2_rekey not in G_IKEV2_REKEY:
            raise ValueError(f"g_ikev2_rekey {self.g_ikev2_rekey!r} is not one of {', '.join(G_IKEV2_REKEY)}")
        if not self.teks:
            raise ValueError("a group needs at least one TEK")
        problem = gap_delay_problem(self.activation_delay_s, self.deactivation_delay_s,
                                    min(t.lifetime_s for t in self.teks))
        if problem is not None:
            raise ValueError(problem[1])
        names = [t.name for t in self.teks]
        if len(set(names)) != len(names):
            raise ValueError("TEK names must be unique within a group")
        problem = tek_lead_problem(self.kek, self.teks, self.activation_delay_s,
                                   self.deactivation_delay_s)
        if problem is not None:
            raise ValueError(problem)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.group_id})" if self.name else str(self.group_id)

    @property
    def inband_rekey(self) -> bool:
        """G-IKEv2 members get this group's rekeys as GSA_INBAND_REKEY (``g_ikev2_rekey``)."""
        return self.g_ikev2_rekey == "inband" and "g-ikev2" in self.protocols

    @property
    def id_payload_data(self) -> bytes:
        """Identification Data of the GDOI ID payload (type ID_KEY_ID, RFC 6407 5.1)."""
        return self.group_id.to_bytes(4, "big")

    def authorizes(self, peer: Identity) -> Decision:
        d = self.authorization.decide(peer)
        verdict = "may join" if d.allowed else "may not join"
        return Decision(d.allowed, f"group {self.label}: {verdict}: {d.reason}")


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True, repr=False)
class PskCredential:
    """A pre-shared key and the ID_KEY_ID identity it belongs to.

    In Main Mode the responder must choose the PSK before it can decrypt the peer's ID
    (RFC 2409 section 5.4). `addresses` lets the key server pick it by the peer's source
    address; PSKs without addresses are found by trial (gkm.ike.PskStore, bounded).
    """

    identity: str
    secret: Secret
    source: Path | None = None  # file it was read from, None if inline
    addresses: tuple[IPAddress, ...] = ()  # key server: peers using this PSK, see below

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("PSK identity must not be empty")
        if len(self.secret) < MIN_PSK_BYTES:
            raise ValueError(f"PSK is shorter than {MIN_PSK_BYTES} bytes")

    def __repr__(self) -> str:
        src = f", source={str(self.source)!r}" if self.source else ""
        at = f", addresses={self.addresses!r}" if self.addresses else ""
        return f"PskCredential(identity={self.identity!r}, secret=<redacted>{src}{at})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class PpkCredential:
    """A G-IKEv2 post-quantum preshared key (RFC 8784): its PPK_ID ``id`` (sent as text) and
    secret; ``required`` (member only): no registration without it."""

    id: str
    secret: Secret
    source: Path | None = None  # the file it was read from
    required: bool = False

    def __post_init__(self) -> None:
        if not self.id or len(self.id.encode()) > 255:
            raise ValueError("PPK id must have 1..255 octets")
        if len(self.secret) < MIN_PPK_BYTES:
            raise ValueError(f"PPK is shorter than {MIN_PPK_BYTES} bytes")

    def __repr__(self) -> str:
        src = f", source={str(self.source)!r}" if self.source else ""
        return f"PpkCredential(id={self.id!r}, secret=<redacted>{src}, required={self.required})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class CertCredential:
    """Certificate, its private key file (mode 0600) and the trust anchors for peers."""

    cert_file: Path
    key_file: Path
    trust_anchors: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not self.trust_anchors:
            raise ValueError("certificate credentials need at least one trust anchor")


Credentials = Union[PskCredential, CertCredential]


# --------------------------------------------------------------------------- daemon


DEFAULT_NAT_KEEPALIVE = 20  # strongSwan's default too
NAT_KEEPALIVE_RANGE = (0, 3600)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    state_dir: Path = Path("/var/lib/msec")
    control_socket: Path = Path("/run/msec/control.sock")
    #: the key server's state anchor file (None: <state_dir>/gcks.anchor); see gkm.store_anchor
    state_anchor: Path | None = None
    #: (address, TCP port) of the Prometheus metrics endpoint (gkm.daemon.metrics); None: off
    metrics_listen: tuple[IPAddress, int] | None = None
    #: opt-in key log for Wireshark (gkm.daemon.keylog): None (the default) writes no keys
    keylog_file: Path | None = None
    #: seconds between NAT-keepalives (RFC 3948 §2.3) a G-IKEv2 member behind a NAT sends on an
    #: IKE SA it keeps for in-band rekeys, so the NAT keeps its mapping; 0: none
    nat_keepalive_s: int = DEFAULT_NAT_KEEPALIVE


MAX_PHASE1_TRANSFORMS = 64
DEFAULT_PHASE1_LIFETIME = 86400


@dataclass(frozen=True, slots=True)
class Phase1Suites:
    """IKEv1 Main Mode suites (names from `policy.suites`). Every combination of the lists is
    one transform, ordered by DH group, then cipher, then hash, each list in its written order.
    Key server: the transforms it accepts (it picks the first of its own that the member
    offered). Member: the transforms it offers, in that order of preference. `auth` (key
    server only): which configured credentials phase 1 may use, None for all of them.
    `lifetime_s`: the phase 1 SA lifetime a member offers and the longest a key server accepts.
    The defaults are what msecd uses without a `phase1` table."""

    ciphers: tuple[str, ...] = ("aes-cbc-128", "aes-cbc-256")
    hashes: tuple[str, ...] = ("sha2-256", "sha2-384", "sha2-512")
    dh_groups: tuple[int, ...] = (19, 20, 21)
    auth: tuple[str, ...] | None = None
    lifetime_s: int = DEFAULT_PHASE1_LIFETIME

    def __post_init__(self) -> None:
        for what, values, table in (("cipher", self.ciphers, PHASE1_CIPHERS), ("hash", self.hashes, PHASE1_HASHES),
                                    ("DH group", self.dh_groups, PHASE1_DH_GROUPS),
                                    ("auth", self.auth or (), PHASE1_AUTH)):
            if len(set(values)) != len(values):
                raise ValueError(f"phase 1 {what} listed twice")
            for v in values:
                if v not in table:
                    raise ValueError(f"unknown phase 1 {what} {v!r}")
        if not (self.ciphers and self.hashes and self.dh_groups) or self.auth == ():
            raise ValueError("phase 1 lists must not be empty")
        n = len(self.ciphers) * len(self.hashes) * len(self.dh_groups)
        if n > MAX_PHASE1_TRANSFORMS:
            raise ValueError(f"{n} phase 1 transforms (more than {MAX_PHASE1_TRANSFORMS})")
        if not 60 <= self.lifetime_s <= 0xFFFFFFFF:
            raise ValueError(f"phase 1 lifetime {self.lifetime_s} s is not in 60..{0xFFFFFFFF} s")


@dataclass(frozen=True, slots=True, repr=False)
class KeyServerSettings:
    """The key server role. `identity` is the phase 1 ID it presents with PSKs (with
    certificates the subject DN is used); None lets the daemon use the address a request
    arrived on (ID_IPV4_ADDR / ID_IPV6_ADDR)."""

    listen: tuple[IPAddress, ...]
    port: int = GDOI_PORT
    psks: tuple[PskCredential, ...] = ()
    certificate: CertCredential | None = None
    groups: tuple[GroupPolicy, ...] = ()
    identity: Identity | None = None
    phase1: Phase1Suites = field(default_factory=Phase1Suites)
    #: certificate revocation lists (policy.revocation), signed by the trust anchors
    crl_files: tuple[Path, ...] = ()
    #: G-IKEv2's UDP port when it is not ``port`` (e.g. 500): its own sockets, GDOI stays on
    #: ``port``; None: G-IKEv2 shares ``port`` with GDOI (the header version tells them apart)
    g_ikev2_port: int | None = None
    #: G-IKEv2 post-quantum preshared keys (RFC 8784), looked up by the member's PPK_ID
    ppks: tuple[PpkCredential, ...] = ()

    @property
    def ike_port(self) -> int:
        """The UDP port G-IKEv2 members register on."""
        return self.port if self.g_ikev2_port is None else self.g_ikev2_port

    def __post_init__(self) -> None:
        auth = self.phase1.auth
        if auth is not None:
            if "psk" in auth and not self.psks:
                raise ValueError("phase 1 auth 'psk' without PSKs")
            if "certificate" in auth and self.certificate is None:
                raise ValueError("phase 1 auth 'certificate' without a certificate")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 1..65535")
        if self.g_ikev2_port is not None and (isinstance(self.g_ikev2_port, bool) or not 1 <= self.g_ikev2_port <= 65535
                                              or self.g_ikev2_port == NATT_PORT):
            raise ValueError(f"g_ikev2_port {self.g_ikev2_port} is not in 1..65535 or is {NATT_PORT} (NAT-T)")
        ids = [g.group_id for g in self.groups]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate key server group id")

    def group(self, group_id: int) -> GroupPolicy | None:
        return next((g for g in self.groups if g.group_id == group_id), None)

    def psk_for(self, identity: str) -> PskCredential | None:
        return next((p for p in self.psks if p.identity == identity), None)

    def __repr__(self) -> str:
        return (
            f"KeyServerSettings(listen={self.listen!r}, port={self.port}, psks={self.psks!r}, "
            f"certificate={self.certificate!r}, groups={self.groups!r}, "
            f"identity={self.identity!r}, phase1={self.phase1!r}, "
            f"crl_files={self.crl_files!r}, g_ikev2_port={self.g_ikev2_port}, ppks={self.ppks!r})"
        )


@dataclass(frozen=True, slots=True)
class KeyServerAddress:
    """Where a member registers: an IP literal or a DNS name, and a UDP port."""

    host: str
    port: int = GDOI_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 1..65535")

    @property
    def address(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, repr=False)
class MemberGroup:
    """A group this daemon joins as a member.

    `key_server_authorization` says which authenticated identities may act as key server
    (the GCKS identifiers of RFC 5374 section 4.1.3's GPAD). It is required with certificate
    credentials: otherwise any certificate under the trust anchors, including another
    member's, could pose as the key server. `interface` is where the member joins the rekey
    multicast group and the group's data traffic flows (None: chosen by routing).
    """

    group_id: int
    key_servers: tuple[KeyServerAddress, ...]
    credentials: Credentials
    name: str | None = None
    interface: str | None = None
    key_server_authorization: Authorization | None = None
    phase1: Phase1Suites = field(default_factory=Phase1Suites)
    #: the registration protocol this member speaks to the group's key servers (PROTOCOLS)
    protocol: str = "gdoi"
    #: G-IKEv2 only: ask to send (GROUP_SENDER, RFC 9838 §2.3.3) and install the TEKs both
    #: ways; otherwise inbound only.  The key server refuses a sender its policy does not allow.
    sender: bool = False
    #: G-IKEv2 only: whether IKE_SA_INIT offers ML-KEM-768 (MEMBER_MLKEM)
    mlkem: str = "optional"
    #: G-IKEv2 only: the post-quantum preshared key GSA_AUTH mixes in (RFC 8784); None: none
    ppk: PpkCredential | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mlkem not in MEMBER_MLKEM:
            raise ValueError(f"mlkem {self.mlkem!r} is not one of {', '.join(MEMBER_MLKEM)}")
        if self.ppk is not None and self.protocol != "g-ikev2":
            raise ValueError("a PPK applies to G-IKEv2 members (RFC 8784)")
        if self.phase1.auth is not None:
            raise ValueError("a member's phase 1 authentication follows its credentials (no auth list)")
        if isinstance(self.group_id, bool) or not MIN_GROUP_ID <= self.group_id <= MAX_GROUP_ID:
            raise ValueError(f"group id {self.group_id} is not in {MIN_GROUP_ID}..{MAX_GROUP_ID}")
        if not self.key_servers:
            raise ValueError("a member group needs at least one key server")
        if isinstance(self.credentials, CertCredential) and (
            self.key_server_authorization is None or not self.key_server_authorization.rules
        ):
            raise ValueError(
                "certificate credentials need key_server_authorization: otherwise any "
                "certificate under the trust anchors could pose as the key server"
            )

    def accepts_key_server(self, peer: Identity) -> Decision:
        """Is the authenticated peer acceptable as this group's key server?"""
        if self.key_server_authorization is None:
            # only possible with a PSK (see __post_init__): holding it authenticates the peer
            return Decision(True, f"group {self.label}: key server {peer} proved the group's "
                                  f"pre-shared key")
        d = self.key_server_authorization.decide(peer)
        verdict = "accepted" if d.allowed else "refused"
        return Decision(d.allowed, f"group {self.label}: key server {verdict}: {d.reason}")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.group_id})" if self.name else str(self.group_id)

    def __repr__(self) -> str:
        return (
            f"MemberGroup(group_id={self.group_id}, name={self.name!r}, "
            f"key_servers={self.key_servers!r}, credentials={self.credentials!r}, "
            f"interface={self.interface!r}, "
            f"key_server_authorization={self.key_server_authorization!r}, phase1={self.phase1!r}, "
            f"ppk={self.ppk!r})"
        )


@dataclass(frozen=True, slots=True)
class MemberSettings:
    groups: tuple[MemberGroup, ...] = ()

    def __post_init__(self) -> None:
        ids = [g.group_id for g in self.groups]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate member group id")

    def group(self, group_id: int) -> MemberGroup | None:
        return next((g for g in self.groups if g.group_id == group_id), None)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """One msecd configuration: daemon settings and either or both roles."""

    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    keyserver: KeyServerSettings | None = None
    member: MemberSettings | None = None

    def __post_init__(self) -> None:
        if self.keyserver is None and self.member is None:
            raise ValueError("configure at least one role: [keyserver] or [member]")
