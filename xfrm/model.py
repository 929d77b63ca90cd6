"""Typed, immutable values for XFRM states and policies, in protocol terms.

Every value checks its own structure when constructed (types, ranges, families), so a value
decoded from the kernel and one built by hand pass the same checks. Checks that depend on what
msec is willing to install (known algorithms, key lengths) are in :mod:`xfrm.algorithms` and run
when a state is encoded for the kernel.

Addresses are :mod:`ipaddress` objects, never strings. Key material is excluded from ``repr``.

Construction is on the hot path (a key manager builds thousands of values per rekey), so each
class is a frozen slotted dataclass (equality, hash, ``repr``, ``dataclasses.replace``, pickling)
with a hand-written ``__init__``: the common shape is recognised by a few exact-type tests, and
anything else goes through the general checks (``_check_*``), which raise
:class:`InvalidArgument` naming the field. The slots are then filled while the object briefly
wears a plain slotted twin class with the same layout (:func:`_twin`): two ``__class__``
assignments instead of one ``object.__setattr__`` call per field, which the dataclass-generated
``__init__`` of a frozen class pays. The instance is back in its own class before ``__init__``
returns, and every later assignment raises ``FrozenInstanceError`` as before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .errors import InvalidArgument

__all__ = [
    "Address", "Network", "Mode", "Proto", "Direction", "Action", "Mark", "Selector", "Lifetime",
    "Aead", "Cipher", "Auth", "State", "SaId", "Template", "Policy", "PolicyId", "INF",
    "NO_LIFETIME", "SaCounters",
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


_set = object.__setattr__


def _twin(cls: type) -> type:
    """A plain class with ``cls``'s slots (same layout), so ``__class__`` can swap between them."""
    twin = type(f"_Mutable{cls.__name__}", (), {"__slots__": cls.__slots__})
    probe = object.__new__(cls)
    _set(probe, "__class__", twin)  # raises now, at import, if the layouts ever diverge
    probe.__class__ = cls
    return twin


def _fill(cls: type, self: object, values: tuple) -> None:
    """Set the slots of an instance of a subclass of ``cls`` (the twin's layout may not fit)."""
    for name, value in zip(cls.__slots__, values):
        _set(self, name, value)


def _u32(where: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U32:
        raise InvalidArgument(where, f"must be an integer in 0..2**32-1, got {value!r}")


def _address(where: str, value: object) -> None:
    if not isinstance(value, (IPv4Address, IPv6Address)):
        raise InvalidArgument(where, f"must be an IPv4Address or IPv6Address, got {value!r}")


def _same_family(where: str, a: Address | Network, b: Address | Network) -> None:
    if a.version != b.version:
        raise InvalidArgument(where, f"mixes IPv{a.version} and IPv{b.version}")


@dataclass(frozen=True, slots=True, init=False)
class Mark:
    """XFRM mark: matches packets whose ``skb->mark & mask == value``."""

    value: int
    mask: int = U32

    def __init__(self, value: int, mask: int = U32) -> None:
        if not (value.__class__ is int and mask.__class__ is int and 0 <= value <= mask <= U32
                and not value & ~mask):
            _u32("mark.value", value)
            _u32("mark.mask", mask)
            if value & ~mask:
                raise InvalidArgument("mark.value", "has bits outside mark.mask")
        cls = self.__class__
        if cls is not Mark:
            return _fill(Mark, self, (value, mask))
        _set(self, "__class__", _MutableMark)
        self.value = value
        self.mask = mask
        self.__class__ = Mark


_MutableMark = _twin(Mark)


def _check_selector(src: object, dst: object, proto: object, sport: object, dport: object,
                    ifindex: object) -> None:
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, (IPv4Network, IPv6Network)):
            raise InvalidArgument(f"selector.{name}",
                                  f"must be an IPv4Network or IPv6Network, got {value!r}")
    _same_family("selector", src, dst)
    if not isinstance(proto, int) or not 0 <= proto <= 255:
        raise InvalidArgument("selector.proto", f"must be 0..255, got {proto!r}")
    for name, port in (("sport", sport), ("dport", dport)):
        if port is None:
            continue
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"selector.{name}", f"must be 0..65535, got {port!r}")
        if proto not in PORT_PROTOS:
            raise InvalidArgument(f"selector.{name}",
                                  f"ports need proto tcp/udp/sctp/dccp/udplite, not {proto}")
    if not isinstance(ifindex, int) or not 0 <= ifindex < 2**31:
        raise InvalidArgument("selector.ifindex", f"must be 0..2**31-1, got {ifindex!r}")


@dataclass(frozen=True, slots=True, init=False)
class Selector:
    """Traffic selector: networks (with prefixes), upper protocol (0 = any) and ports."""

    src: Network
    dst: Network
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    ifindex: int = 0

    def __init__(self, src: Network, dst: Network, proto: int = 0, sport: int | None = None,
                 dport: int | None = None, ifindex: int = 0) -> None:
        c = src.__class__
        if not ((c is IPv4Network or c is IPv6Network) and dst.__class__ is c
                and proto.__class__ is int and 0 <= proto <= 255
                and sport is None and dport is None
                and ifindex.__class__ is int and 0 <= ifindex < 0x80000000):
            _check_selector(src, dst, proto, sport, dport, ifindex)
        cls = self.__class__
        if cls is not Selector:
            return _fill(Selector, self, (src, dst, proto, sport, dport, ifindex))
        _set(self, "__class__", _MutableSelector)
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.ifindex = ifindex
        self.__class__ = Selector

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


_MutableSelector = _twin(Selector)


def _net(addr: Address) -> Network:
    return IPv4Network(addr) if addr.version == 4 else IPv6Network(addr)


_LIFETIME_PAIRS = (("soft_bytes", "hard_bytes"), ("soft_packets", "hard_packets"),
                   ("soft_add_seconds", "hard_add_seconds"),
                   ("soft_use_seconds", "hard_use_seconds"))


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(self, soft_bytes: int | None = None, hard_bytes: int | None = None,
                 soft_packets: int | None = None, hard_packets: int | None = None,
                 soft_add_seconds: int | None = None, hard_add_seconds: int | None = None,
                 soft_use_seconds: int | None = None,
                 hard_use_seconds: int | None = None) -> None:
        values = (soft_bytes, hard_bytes, soft_packets, hard_packets, soft_add_seconds,
                  hard_add_seconds, soft_use_seconds, hard_use_seconds)
        if not (soft_bytes is None and hard_bytes is None and soft_packets is None
                and hard_packets is None and soft_add_seconds is None
                and hard_add_seconds is None and soft_use_seconds is None
                and hard_use_seconds is None):
            for (soft, hard), s, h in zip(_LIFETIME_PAIRS, values[::2], values[1::2]):
                for name, v in ((soft, s), (hard, h)):
                    if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                                          or not 0 < v < INF):
                        raise InvalidArgument(f"lifetime.{name}",
                                              f"must be None or 1..2**64-2, got {v!r}")
                if s is not None and h is not None and s > h:
                    raise InvalidArgument(f"lifetime.{soft}", f"{s} exceeds {hard} {h}")
        cls = self.__class__
        if cls is not Lifetime:
            return _fill(Lifetime, self, values)
        _set(self, "__class__", _MutableLifetime)
        self.soft_bytes = soft_bytes
        self.hard_bytes = hard_bytes
        self.soft_packets = soft_packets
        self.hard_packets = hard_packets
        self.soft_add_seconds = soft_add_seconds
        self.hard_add_seconds = hard_add_seconds
        self.soft_use_seconds = soft_use_seconds
        self.hard_use_seconds = hard_use_seconds
        self.__class__ = Lifetime

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


_MutableLifetime = _twin(Lifetime)
NO_LIFETIME = Lifetime()


def _key(where: str, key: object) -> None:
    if not isinstance(key, bytes):
        raise InvalidArgument(where, "must be bytes")


def _name(where: str, name: object) -> None:
    if not isinstance(name, str) or not 0 < len(name.encode()) < 64:
        raise InvalidArgument(where, f"must be a crypto-API name of 1..63 bytes, got {name!r}")


@dataclass(frozen=True, slots=True, init=False)
class Aead:
    """An AEAD transform: crypto-API name, key (with salt), ICV length in bits."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int

    def __init__(self, name: str, key: bytes, icv_bits: int) -> None:
        if not (name.__class__ is str and 0 < len(name) < 64 and name.isascii()
                and key.__class__ is bytes and icv_bits.__class__ is int
                and 0 <= icv_bits <= U32):
            _name("aead.name", name)
            _key("aead.key", key)
            _u32("aead.icv_bits", icv_bits)
        cls = self.__class__
        if cls is not Aead:
            return _fill(Aead, self, (name, key, icv_bits))
        _set(self, "__class__", _MutableAead)
        self.name = name
        self.key = key
        self.icv_bits = icv_bits
        self.__class__ = Aead


_MutableAead = _twin(Aead)


@dataclass(frozen=True, slots=True, init=False)
class Cipher:
    name: str
    key: bytes = field(repr=False)

    def __init__(self, name: str, key: bytes) -> None:
        if not (name.__class__ is str and 0 < len(name) < 64 and name.isascii()
                and key.__class__ is bytes):
            _name("cipher.name", name)
            _key("cipher.key", key)
        cls = self.__class__
        if cls is not Cipher:
            return _fill(Cipher, self, (name, key))
        _set(self, "__class__", _MutableCipher)
        self.name = name
        self.key = key
        self.__class__ = Cipher


_MutableCipher = _twin(Cipher)


@dataclass(frozen=True, slots=True, init=False)
class Auth:
    """An integrity transform with its truncation (ICV) length in bits."""

    name: str
    key: bytes = field(repr=False)
    trunc_bits: int

    def __init__(self, name: str, key: bytes, trunc_bits: int) -> None:
        if not (name.__class__ is str and 0 < len(name) < 64 and name.isascii()
                and key.__class__ is bytes and trunc_bits.__class__ is int
                and 0 <= trunc_bits <= U32):
            _name("auth.name", name)
            _key("auth.key", key)
            _u32("auth.trunc_bits", trunc_bits)
        cls = self.__class__
        if cls is not Auth:
            return _fill(Auth, self, (name, key, trunc_bits))
        _set(self, "__class__", _MutableAuth)
        self.name = name
        self.key = key
        self.trunc_bits = trunc_bits
        self.__class__ = Auth


_MutableAuth = _twin(Auth)
_ESP = Proto.ESP


@dataclass(frozen=True, slots=True, init=False)
class SaId:
    """What identifies a state in the kernel: (destination, SPI, protocol) and its mark."""

    dst: Address
    spi: int
    proto: int = Proto.ESP
    mark: Mark | None = None

    def __init__(self, dst: Address, spi: int, proto: int = _ESP,
                 mark: Mark | None = None) -> None:
        c = dst.__class__
        if not ((c is IPv4Address or c is IPv6Address) and spi.__class__ is int
                and 0 <= spi <= U32):
            _address("sa.dst", dst)
            _u32("sa.spi", spi)
        cls = self.__class__
        if cls is not SaId:
            return _fill(SaId, self, (dst, spi, proto, mark))
        _set(self, "__class__", _MutableSaId)
        self.dst = dst
        self.spi = spi
        self.proto = proto
        self.mark = mark
        self.__class__ = SaId

    def __str__(self) -> str:
        return f"sa dst {self.dst} spi 0x{self.spi:08x} proto {self.proto}"


_MutableSaId = _twin(SaId)


def _check_state(src: object, dst: object, spi: object, mode: object, reqid: object,
                 proto: object, replay_window: object, esn: object, lifetime: object,
                 mark: object, if_id: object, selector: object, flags: object) -> None:
    _address("state.src", src)
    _address("state.dst", dst)
    _same_family("state", src, dst)
    _u32("state.spi", spi)  # 0 only in the kernel's larval (acquire) states
    if not isinstance(mode, Mode):
        raise InvalidArgument("state.mode", f"must be a Mode, got {mode!r}")
    _u32("state.reqid", reqid)
    if not isinstance(proto, int) or not 0 < proto <= 255:
        raise InvalidArgument("state.proto", f"must be 1..255, got {proto!r}")
    if not isinstance(replay_window, int) or not 0 <= replay_window <= 4096:
        raise InvalidArgument("state.replay_window",
                              f"must be 0..4096 packets, got {replay_window!r}")
    if esn and proto != Proto.ESP:
        raise InvalidArgument("state.esn", "ESN needs proto esp")
    if not isinstance(lifetime, Lifetime):
        raise InvalidArgument("state.lifetime", "must be a Lifetime")
    if mark is not None and not isinstance(mark, Mark):
        raise InvalidArgument("state.mark", "must be a Mark or None")
    _u32("state.if_id", if_id)
    if selector is not None and not isinstance(selector, Selector):
        raise InvalidArgument("state.selector", "must be a Selector or None")
    if not isinstance(flags, int) or not 0 <= flags <= 255:
        raise InvalidArgument("state.flags", f"must be 0..255, got {flags!r}")


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(self, src: Address, dst: Address, spi: int, mode: Mode, reqid: int,
                 aead: Aead | None = None, cipher: Cipher | None = None,
                 auth: Auth | None = None, proto: int = _ESP, replay_window: int = 0,
                 esn: bool = False, oseq_may_wrap: bool = False,
                 lifetime: Lifetime = NO_LIFETIME, mark: Mark | None = None, if_id: int = 0,
                 selector: Selector | None = None, flags: int = 0) -> None:
        c = src.__class__
        if not ((c is IPv4Address or c is IPv6Address) and dst.__class__ is c
                and spi.__class__ is int and 0 <= spi <= U32
                and mode.__class__ is Mode
                and reqid.__class__ is int and 0 <= reqid <= U32
                and (proto is _ESP or proto.__class__ is int and 0 < proto <= 255)
                and replay_window.__class__ is int and 0 <= replay_window <= 4096
                and (esn is False or proto == _ESP)
                and (lifetime is NO_LIFETIME or lifetime.__class__ is Lifetime)
                and (mark is None or mark.__class__ is Mark)
                and if_id.__class__ is int and 0 <= if_id <= U32
                and (selector is None or selector.__class__ is Selector)
                and flags.__class__ is int and 0 <= flags <= 255):
            _check_state(src, dst, spi, mode, reqid, proto, replay_window, esn, lifetime, mark,
                         if_id, selector, flags)
        cls = self.__class__
        if cls is not State:
            return _fill(State, self, (src, dst, spi, mode, reqid, aead, cipher, auth, proto,
                                       replay_window, esn, oseq_may_wrap, lifetime, mark,
                                       if_id, selector, flags))
        _set(self, "__class__", _MutableState)
        self.src = src
        self.dst = dst
        self.spi = spi
        self.mode = mode
        self.reqid = reqid
        self.aead = aead
        self.cipher = cipher
        self.auth = auth
        self.proto = proto
        self.replay_window = replay_window
        self.esn = esn
        self.oseq_may_wrap = oseq_may_wrap
        self.lifetime = lifetime
        self.mark = mark
        self.if_id = if_id
        self.selector = selector
        self.flags = flags
        self.__class__ = State

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


_MutableState = _twin(State)


def _check_template(src: object, dst: object, mode: object, reqid: object, proto: object,
                    spi: object) -> None:
    _address("template.src", src)
    _address("template.dst", dst)
    _same_family("template", src, dst)
    if not isinstance(mode, Mode):
        raise InvalidArgument("template.mode", f"must be a Mode, got {mode!r}")
    _u32("template.reqid", reqid)
    _u32("template.spi", spi)
    if not isinstance(proto, int) or not 0 < proto <= 255:
        raise InvalidArgument("template.proto", f"must be 1..255, got {proto!r}")


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(self, src: Address, dst: Address, mode: Mode, reqid: int, proto: int = _ESP,
                 spi: int = 0, optional: bool = False) -> None:
        c = src.__class__
        if not ((c is IPv4Address or c is IPv6Address) and dst.__class__ is c
                and mode.__class__ is Mode
                and reqid.__class__ is int and 0 <= reqid <= U32
                and spi.__class__ is int and 0 <= spi <= U32
                and (proto is _ESP or proto.__class__ is int and 0 < proto <= 255)):
            _check_template(src, dst, mode, reqid, proto, spi)
        cls = self.__class__
        if cls is not Template:
            return _fill(Template, self, (src, dst, mode, reqid, proto, spi, optional))
        _set(self, "__class__", _MutableTemplate)
        self.src = src
        self.dst = dst
        self.mode = mode
        self.reqid = reqid
        self.proto = proto
        self.spi = spi
        self.optional = optional
        self.__class__ = Template

    @property
    def family(self) -> int:
        return 2 if self.dst.version == 4 else 10


_MutableTemplate = _twin(Template)


@dataclass(frozen=True, slots=True, init=False)
class PolicyId:
    """What identifies a policy: (selector, direction, mark, if_id)."""

    selector: Selector
    direction: Direction
    mark: Mark | None = None
    if_id: int = 0

    def __init__(self, selector: Selector, direction: Direction, mark: Mark | None = None,
                 if_id: int = 0) -> None:
        cls = self.__class__
        if cls is not PolicyId:
            return _fill(PolicyId, self, (selector, direction, mark, if_id))
        _set(self, "__class__", _MutablePolicyId)
        self.selector = selector
        self.direction = direction
        self.mark = mark
        self.if_id = if_id
        self.__class__ = PolicyId

    def __str__(self) -> str:
        s = self.selector
        return f"policy {s.src} -> {s.dst} proto {s.proto} dir {self.direction.name.lower()}"


_MutablePolicyId = _twin(PolicyId)


def _check_policy(selector: object, direction: object, action: object, priority: object,
                  templates: object, mark: object, if_id: object, lifetime: object,
                  index: object) -> None:
    if not isinstance(selector, Selector):
        raise InvalidArgument("policy.selector", "must be a Selector")
    if not isinstance(direction, Direction):
        raise InvalidArgument("policy.direction", f"must be a Direction, got {direction!r}")
    if not isinstance(action, Action):
        raise InvalidArgument("policy.action", f"must be an Action, got {action!r}")
    _u32("policy.priority", priority)
    if not isinstance(templates, tuple) or not all(isinstance(t, Template) for t in templates):
        raise InvalidArgument("policy.templates", "must be a tuple of Template")
    if len(templates) > 6:  # XFRM_MAX_DEPTH
        raise InvalidArgument("policy.templates", "at most 6 templates (XFRM_MAX_DEPTH)")
    if mark is not None and not isinstance(mark, Mark):
        raise InvalidArgument("policy.mark", "must be a Mark or None")
    _u32("policy.if_id", if_id)
    if not isinstance(lifetime, Lifetime):
        raise InvalidArgument("policy.lifetime", "must be a Lifetime")
    _u32("policy.index", index)


_ALLOW = Action.ALLOW


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(self, selector: Selector, direction: Direction, action: Action = _ALLOW,
                 priority: int = 0, templates: tuple[Template, ...] = (),
                 mark: Mark | None = None, if_id: int = 0, lifetime: Lifetime = NO_LIFETIME,
                 index: int = 0) -> None:
        if not (selector.__class__ is Selector and direction.__class__ is Direction
                and action.__class__ is Action
                and priority.__class__ is int and 0 <= priority <= U32
                and templates.__class__ is tuple
                and (len(templates) == 1 and templates[0].__class__ is Template
                     or not templates)
                and (mark is None or mark.__class__ is Mark)
                and if_id.__class__ is int and 0 <= if_id <= U32
                and (lifetime is NO_LIFETIME or lifetime.__class__ is Lifetime)
                and index.__class__ is int and 0 <= index <= U32):
            _check_policy(selector, direction, action, priority, templates, mark, if_id,
                          lifetime, index)
        cls = self.__class__
        if cls is not Policy:
            return _fill(Policy, self, (selector, direction, action, priority, templates, mark,
                                        if_id, lifetime, index))
        _set(self, "__class__", _MutablePolicy)
        self.selector = selector
        self.direction = direction
        self.action = action
        self.priority = priority
        self.templates = templates
        self.mark = mark
        self.if_id = if_id
        self.lifetime = lifetime
        self.index = index
        self.__class__ = Policy

    @property
    def id(self) -> PolicyId:
        return PolicyId(self.selector, self.direction, self.mark, self.if_id)


_MutablePolicy = _twin(Policy)


@dataclass(frozen=True, slots=True)
class SaCounters:
    """What the kernel counted on one state (``xfrm_lifetime_cur`` and ``xfrm_stats``), read
    without its keys: bytes and packets through it, when it was added and first used (Unix
    seconds, 0: never used), packets dropped by the replay check and by the integrity check."""

    dst: Address
    spi: int
    proto: int
    reqid: int
    bytes: int
    packets: int
    add_time: int
    use_time: int
    replay_dropped: int
    integrity_failed: int
