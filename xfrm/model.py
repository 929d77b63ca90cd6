"""Typed, immutable values for XFRM states and policies, in protocol terms.

Every value checks its own structure in ``__post_init__`` (types, ranges, families), so a value
decoded from the kernel and one built by hand pass the same checks. Checks that depend on what
msec is willing to install (known algorithms, key lengths) are in :mod:`xfrm.algorithms` and run
when a state is encoded for the kernel.

Addresses are :mod:`ipaddress` objects, never strings. Key material is excluded from ``repr``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .errors import InvalidArgument

__all__ = [
    "Address", "Network", "Mode", "Proto", "Direction", "Action", "Mark", "Selector", "Lifetime",
    "Aead", "Cipher", "Auth", "State", "SaId", "Template", "Policy", "PolicyId", "INF",
    "NO_LIFETIME",
]

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
INF = (1 << 64) - 1
U32 = (1 << 32) - 1
PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite


class Mode(enum.IntEnum):
    TRANSPORT = 0
    TUNNEL = 1
    ROUTEOPTIMIZATION = 2  # MIPv6; decoded, never installed by msec
    IN_TRIGGER = 3
    BEET = 4


class Proto(enum.IntEnum):
    ESP = 50
    AH = 51
    COMP = 108


class Direction(enum.IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class Action(enum.IntEnum):
    ALLOW = 0
    BLOCK = 1


def _u32(where: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U32:
        raise InvalidArgument(where, f"must be an integer in 0..2**32-1, got {value!r}")


def _address(where: str, value: object) -> None:
    if not isinstance(value, (IPv4Address, IPv6Address)):
        raise InvalidArgument(where, f"must be an IPv4Address or IPv6Address, got {value!r}")


def _same_family(where: str, a: Address | Network, b: Address | Network) -> None:
    if a.version != b.version:
        raise InvalidArgument(where, f"mixes IPv{a.version} and IPv{b.version}")


@dataclass(frozen=True, slots=True)
class Mark:
    """XFRM mark: matches packets whose ``skb->mark & mask == value``."""

    value: int
    mask: int = U32

    def __post_init__(self) -> None:
        _u32("mark.value", self.value)
        _u32("mark.mask", self.mask)
        if self.value & ~self.mask:
            raise InvalidArgument("mark.value", "has bits outside mark.mask")


@dataclass(frozen=True, slots=True)
class Selector:
    """Traffic selector: networks (with prefixes), upper protocol (0 = any) and ports."""

    src: Network
    dst: Network
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    ifindex: int = 0

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            value = getattr(self, name)
            if not isinstance(value, (IPv4Network, IPv6Network)):
                raise InvalidArgument(f"selector.{name}",
                                      f"must be an IPv4Network or IPv6Network, got {value!r}")
        _same_family("selector", self.src, self.dst)
        if not isinstance(self.proto, int) or not 0 <= self.proto <= 255:
            raise InvalidArgument("selector.proto", f"must be 0..255, got {self.proto!r}")
        for name in ("sport", "dport"):
            port = getattr(self, name)
            if port is None:
                continue
            if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
                raise InvalidArgument(f"selector.{name}", f"must be 0..65535, got {port!r}")
            if self.proto not in PORT_PROTOS:
                raise InvalidArgument(f"selector.{name}",
                                      f"ports need proto tcp/udp/sctp/dccp/udplite, "
                                      f"not {self.proto}")
        if not isinstance(self.ifindex, int) or not 0 <= self.ifindex < 2**31:
            raise InvalidArgument("selector.ifindex", f"must be 0..2**31-1, got {self.ifindex!r}")

    @property
    def family(self) -> int:
        return 2 if self.src.version == 4 else 10

    @classmethod
    def any(cls, version: int = 4) -> Selector:
        net = IPv4Network("0.0.0.0/0") if version == 4 else IPv6Network("::/0")
        return cls(net, net)

    @classmethod
    def host(cls, src: Address, dst: Address, proto: int = 0,
             sport: int | None = None, dport: int | None = None) -> Selector:
        """Selector for one source and one destination address (full prefixes)."""
        _address("selector.src", src)
        _address("selector.dst", dst)
        return cls(_net(src), _net(dst), proto, sport, dport)


def _net(addr: Address) -> Network:
    return IPv4Network(addr) if addr.version == 4 else IPv6Network(addr)


_LIFETIME_PAIRS = (("soft_bytes", "hard_bytes"), ("soft_packets", "hard_packets"),
                   ("soft_add_seconds", "hard_add_seconds"),
                   ("soft_use_seconds", "hard_use_seconds"))


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft and hard limits; ``None`` is no limit (XFRM_INF on the wire)."""

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_add_seconds: int | None = None
    hard_add_seconds: int | None = None
    soft_use_seconds: int | None = None
    hard_use_seconds: int | None = None

    def __post_init__(self) -> None:
        for soft, hard in _LIFETIME_PAIRS:
            s, h = getattr(self, soft), getattr(self, hard)
            for name, v in ((soft, s), (hard, h)):
                if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                                      or not 0 < v < INF):
                    raise InvalidArgument(f"lifetime.{name}",
                                          f"must be None or 1..2**64-2, got {v!r}")
            if s is not None and h is not None and s > h:
                raise InvalidArgument(f"lifetime.{soft}", f"{s} exceeds {hard} {h}")

    def as_wire(self) -> tuple[int, ...]:
        """The eight values in ``struct xfrm_lifetime_cfg`` order.

        No limit is XFRM_INF for bytes and packets but 0 for seconds: the kernel's timers add
        the seconds to the start time, so INF would wrap and expire at once (iproute2 does
        the same).
        """
        return (
            INF if self.soft_bytes is None else self.soft_bytes,
            INF if self.hard_bytes is None else self.hard_bytes,
            INF if self.soft_packets is None else self.soft_packets,
            INF if self.hard_packets is None else self.hard_packets,
            self.soft_add_seconds or 0, self.hard_add_seconds or 0,
            self.soft_use_seconds or 0, self.hard_use_seconds or 0,
        )

    @classmethod
    def from_wire(cls, values: tuple[int, ...]) -> Lifetime:
        return cls(*(None if v in (INF, 0) else v for v in values))


NO_LIFETIME = Lifetime()


def _key(where: str, key: object) -> None:
    if not isinstance(key, bytes):
        raise InvalidArgument(where, "must be bytes")


def _name(where: str, name: object) -> None:
    if not isinstance(name, str) or not 0 < len(name.encode()) < 64:
        raise InvalidArgument(where, f"must be a crypto-API name of 1..63 bytes, got {name!r}")


@dataclass(frozen=True, slots=True)
class Aead:
    """An AEAD transform: crypto-API name, key (with salt), ICV length in bits."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int

    def __post_init__(self) -> None:
        _name("aead.name", self.name)
        _key("aead.key", self.key)
        _u32("aead.icv_bits", self.icv_bits)


@dataclass(frozen=True, slots=True)
class Cipher:
    name: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _name("cipher.name", self.name)
        _key("cipher.key", self.key)


@dataclass(frozen=True, slots=True)
class Auth:
    """An integrity transform with its truncation (ICV) length in bits."""

    name: str
    key: bytes = field(repr=False)
    trunc_bits: int

    def __post_init__(self) -> None:
        _name("auth.name", self.name)
        _key("auth.key", self.key)
        _u32("auth.trunc_bits", self.trunc_bits)


@dataclass(frozen=True, slots=True)
class SaId:
    """What identifies a state in the kernel: (destination, SPI, protocol) and its mark."""

    dst: Address
    spi: int
    proto: int = Proto.ESP
    mark: Mark | None = None

    def __post_init__(self) -> None:
        _address("sa.dst", self.dst)
        _u32("sa.spi", self.spi)

    def __str__(self) -> str:
        return f"sa dst {self.dst} spi 0x{self.spi:08x} proto {self.proto}"


@dataclass(frozen=True, slots=True)
class State:
    """An XFRM state (SA).

    ``replay_window`` is in packets; with ``esn`` false and a window up to 32 (the classic
    replay bitmap's size; the kernel caps larger classic windows to 32) the classic replay
    state is used, otherwise XFRMA_REPLAY_ESN_VAL, as iproute2 does. Multi-sender group SAs
    use window 0 on receivers and ``oseq_may_wrap`` on the sender.
    """

    src: Address
    dst: Address
    spi: int
    mode: Mode
    reqid: int
    aead: Aead | None = None
    cipher: Cipher | None = None
    auth: Auth | None = None
    proto: int = Proto.ESP
    replay_window: int = 0
    esn: bool = False
    oseq_may_wrap: bool = False
    lifetime: Lifetime = NO_LIFETIME
    mark: Mark | None = None
    if_id: int = 0
    selector: Selector | None = None
    flags: int = 0

    def __post_init__(self) -> None:
        _address("state.src", self.src)
        _address("state.dst", self.dst)
        _same_family("state", self.src, self.dst)
        _u32("state.spi", self.spi)  # 0 only in the kernel's larval (acquire) states
        if not isinstance(self.mode, Mode):
            raise InvalidArgument("state.mode", f"must be a Mode, got {self.mode!r}")
        _u32("state.reqid", self.reqid)
        if not isinstance(self.proto, int) or not 0 < self.proto <= 255:
            raise InvalidArgument("state.proto", f"must be 1..255, got {self.proto!r}")
        if not isinstance(self.replay_window, int) or not 0 <= self.replay_window <= 4096:
            raise InvalidArgument("state.replay_window",
                                  f"must be 0..4096 packets, got {self.replay_window!r}")
        if self.esn and self.proto != Proto.ESP:
            raise InvalidArgument("state.esn", "ESN needs proto esp")
        if not isinstance(self.lifetime, Lifetime):
            raise InvalidArgument("state.lifetime", "must be a Lifetime")
        if self.mark is not None and not isinstance(self.mark, Mark):
            raise InvalidArgument("state.mark", "must be a Mark or None")
        _u32("state.if_id", self.if_id)
        if self.selector is not None and not isinstance(self.selector, Selector):
            raise InvalidArgument("state.selector", "must be a Selector or None")
        if not isinstance(self.flags, int) or not 0 <= self.flags <= 255:
            raise InvalidArgument("state.flags", f"must be 0..255, got {self.flags!r}")

    @property
    def family(self) -> int:
        return 2 if self.dst.version == 4 else 10

    @property
    def id(self) -> SaId:
        return SaId(self.dst, self.spi, self.proto, self.mark)

    @property
    def uses_esn_attr(self) -> bool:
        """Whether the replay state goes in XFRMA_REPLAY_ESN_VAL instead of the fixed struct."""
        return self.esn or self.replay_window > 32


@dataclass(frozen=True, slots=True)
class Template:
    """A policy template (``struct xfrm_user_tmpl``): which SA the policy requires.

    For address preservation (RFC 5374), a tunnel template's src/dst equal the group's
    addresses, which are also the selector's.
    """

    src: Address
    dst: Address
    mode: Mode
    reqid: int
    proto: int = Proto.ESP
    spi: int = 0
    optional: bool = False

    def __post_init__(self) -> None:
        _address("template.src", self.src)
        _address("template.dst", self.dst)
        _same_family("template", self.src, self.dst)
        if not isinstance(self.mode, Mode):
            raise InvalidArgument("template.mode", f"must be a Mode, got {self.mode!r}")
        _u32("template.reqid", self.reqid)
        _u32("template.spi", self.spi)
        if not isinstance(self.proto, int) or not 0 < self.proto <= 255:
            raise InvalidArgument("template.proto", f"must be 1..255, got {self.proto!r}")

    @property
    def family(self) -> int:
        return 2 if self.dst.version == 4 else 10


@dataclass(frozen=True, slots=True)
class PolicyId:
    """What identifies a policy: (selector, direction, mark, if_id)."""

    selector: Selector
    direction: Direction
    mark: Mark | None = None
    if_id: int = 0

    def __str__(self) -> str:
        s = self.selector
        return f"policy {s.src} -> {s.dst} proto {s.proto} dir {self.direction.name.lower()}"


@dataclass(frozen=True, slots=True)
class Policy:
    """An XFRM policy (SPD entry). ``index`` is assigned by the kernel (0 when adding)."""

    selector: Selector
    direction: Direction
    action: Action = Action.ALLOW
    priority: int = 0
    templates: tuple[Template, ...] = ()
    mark: Mark | None = None
    if_id: int = 0
    lifetime: Lifetime = NO_LIFETIME
    index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.selector, Selector):
            raise InvalidArgument("policy.selector", "must be a Selector")
        if not isinstance(self.direction, Direction):
            raise InvalidArgument("policy.direction", f"must be a Direction, got "
                                  f"{self.direction!r}")
        if not isinstance(self.action, Action):
            raise InvalidArgument("policy.action", f"must be an Action, got {self.action!r}")
        _u32("policy.priority", self.priority)
        if not isinstance(self.templates, tuple) or not all(
                isinstance(t, Template) for t in self.templates):
            raise InvalidArgument("policy.templates", "must be a tuple of Template")
        if len(self.templates) > 6:  # XFRM_MAX_DEPTH
            raise InvalidArgument("policy.templates", "at most 6 templates (XFRM_MAX_DEPTH)")
        if self.mark is not None and not isinstance(self.mark, Mark):
            raise InvalidArgument("policy.mark", "must be a Mark or None")
        _u32("policy.if_id", self.if_id)
        if not isinstance(self.lifetime, Lifetime):
            raise InvalidArgument("policy.lifetime", "must be a Lifetime")
        _u32("policy.index", self.index)

    @property
    def id(self) -> PolicyId:
        return PolicyId(self.selector, self.direction, self.mark, self.if_id)
