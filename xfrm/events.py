"""XFRM multicast events: typed values, a sans-I/O parser and an asyncio subscription.

:func:`parse_events` turns bytes read from a NETLINK_XFRM socket into events, with no I/O.
:class:`XfrmEvents` subscribes to multicast groups in a network namespace and is an async
iterator over the same events::

    async with XfrmEvents.open(netns="blue") as events:
        async for ev in events:
            if isinstance(ev, SaExpired) and not ev.hard: ...

A receive-buffer overflow (ENOBUFS: the kernel dropped events) is reported as
:class:`EventsLost`, after which a caller should re-read the kernel's state with a dump.
"""

from __future__ import annotations

import asyncio
import errno
import socket as _socket
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from . import messages as m
from .errors import DecodeError
from .model import Address, Policy, PolicyId, SaId, Selector, State
from .netns import NetnsSpec
from .socket import open_netlink

__all__ = [
    "Event", "SaExpired", "PolicyExpired", "Acquire", "SaAdded", "SaUpdated", "SaDeleted",
    "PolicyAdded", "PolicyUpdated", "PolicyDeleted", "Flushed", "EventsLost",
    "parse_events", "XfrmEvents", "DEFAULT_GROUPS",
]

DEFAULT_GROUPS = (m.XFRMNLGRP_ACQUIRE, m.XFRMNLGRP_EXPIRE, m.XFRMNLGRP_SA, m.XFRMNLGRP_POLICY)


@dataclass(frozen=True, slots=True)
class SaExpired:
    """XFRM_MSG_EXPIRE: a state reached its soft (``hard`` False) or hard lifetime.

    ``state`` has the identity, reqid, mode, lifetimes, mark and if_id; the kernel sends no
    algorithms or keys in EXPIRE messages. A hard expiry of a larval state (SPI 0) means an
    ACQUIRE went unanswered.
    """

    state: State
    hard: bool


@dataclass(frozen=True, slots=True)
class PolicyExpired:
    policy: Policy
    hard: bool


@dataclass(frozen=True, slots=True)
class Acquire:
    """XFRM_MSG_ACQUIRE: outbound traffic matched a policy with no state for a template."""

    dst: Address
    src: Address
    proto: int
    selector: Selector
    policy: Policy
    seq: int


@dataclass(frozen=True, slots=True)
class SaAdded:
    state: State


@dataclass(frozen=True, slots=True)
class SaUpdated:
    state: State


@dataclass(frozen=True, slots=True)
class SaDeleted:
    """A state was deleted; ``state`` is its last content when the kernel sent it."""

    id: SaId
    state: State | None


@dataclass(frozen=True, slots=True)
class PolicyAdded:
    policy: Policy


@dataclass(frozen=True, slots=True)
class PolicyUpdated:
    policy: Policy


@dataclass(frozen=True, slots=True)
class PolicyDeleted:
    id: PolicyId | None
    policy: Policy | None


@dataclass(frozen=True, slots=True)
class Flushed:
    """Someone flushed the SAD (``what`` "sa") or SPD ("policy")."""

    what: str


@dataclass(frozen=True, slots=True)
class EventsLost:
    """The socket's receive buffer overflowed; events were dropped."""


Event = (SaExpired | PolicyExpired | Acquire | SaAdded | SaUpdated | SaDeleted | PolicyAdded
         | PolicyUpdated | PolicyDeleted | Flushed | EventsLost)


def _attrs(data, start: int, end: int, what: str) -> dict[int, bytes]:
    return m.attrs_dict(data, start, end, what)


def _need(what: str, off: int, n: int, size: int) -> None:
    if n < 16 + size:
        raise DecodeError(what, off, f"message of {n} bytes is shorter than {16 + size}")


def parse_event(data, kind: int, off: int, n: int) -> Event | None:
    """One event from the message at ``off`` (length ``n``); None for types not handled."""
    body, end = off + 16, off + n
    if kind in (m.XFRM_MSG_NEWSA, m.XFRM_MSG_UPDSA):
        st = m.decode_newsa(data, off, n)
        return SaAdded(st) if kind == m.XFRM_MSG_NEWSA else SaUpdated(st)
    if kind == m.XFRM_MSG_EXPIRE:
        _need("XFRM_MSG_EXPIRE", off, n, m.USER_EXPIRE_SIZE)
        attrs = _attrs(data, body + m.USER_EXPIRE_SIZE, end, "XFRM_MSG_EXPIRE")
        return SaExpired(m.decode_state(data, body, attrs),
                         bool(data[body + m.USERSA_INFO.size]))
    if kind == m.XFRM_MSG_DELSA:
        _need("XFRM_MSG_DELSA", off, n, m.USERSA_ID.size)
        daddr, spi, family, proto = m.USERSA_ID.unpack_from(data, body)
        attrs = _attrs(data, body + m.USERSA_ID.size, end, "XFRM_MSG_DELSA")
        st = m.decode_state(attrs[m.XFRMA_SA], 0, attrs) if m.XFRMA_SA in attrs else None
        mark = st.mark if st else None
        return SaDeleted(SaId(m._ip(daddr, family), m._swap32(spi), proto, mark), st)
    if kind in (m.XFRM_MSG_NEWPOLICY, m.XFRM_MSG_UPDPOLICY):
        p = m.decode_newpolicy(data, off, n)
        return PolicyAdded(p) if kind == m.XFRM_MSG_NEWPOLICY else PolicyUpdated(p)
    if kind == m.XFRM_MSG_POLEXPIRE:
        _need("XFRM_MSG_POLEXPIRE", off, n, m.USER_POLEXPIRE_SIZE)
        attrs = _attrs(data, body + m.USER_POLEXPIRE_SIZE, end, "XFRM_MSG_POLEXPIRE")
        return PolicyExpired(m.decode_policy(data, body, attrs),
                             bool(data[body + m.USERPOLICY_INFO.size]))
    if kind == m.XFRM_MSG_DELPOLICY:
        _need("XFRM_MSG_DELPOLICY", off, n, m.USERPOLICY_ID.size)
        attrs = _attrs(data, body + m.USERPOLICY_ID.size, end, "XFRM_MSG_DELPOLICY")
        p = (m.decode_policy(attrs[m.XFRMA_POLICY], 0, attrs)
             if m.XFRMA_POLICY in attrs else None)
        return PolicyDeleted(p.id if p else None, p)
    if kind == m.XFRM_MSG_ACQUIRE:
        _need("XFRM_MSG_ACQUIRE", off, n, m.USER_ACQUIRE_SIZE)
        daddr, _spi, proto = m.struct.unpack_from("<16sIB", data, body)
        saddr = bytes(data[body + 24:body + 40])
        attrs = _attrs(data, body + m.USER_ACQUIRE_SIZE, end, "XFRM_MSG_ACQUIRE")
        pol = m.decode_policy(data, body + 96, attrs)
        (seq,) = m.U32.unpack_from(data, body + 276)
        sel = m._policy_selector(m.SELECTOR.unpack_from(data, body + 40))
        family = sel.family
        return Acquire(m._ip(daddr, family), m._ip(saddr, family), proto, sel, pol, seq)
    if kind == m.XFRM_MSG_FLUSHSA:
        return Flushed("sa")
    if kind == m.XFRM_MSG_FLUSHPOLICY:
        return Flushed("policy")
    return None


def parse_events(data: bytes) -> list[Event]:
    """Every event in one datagram read from a NETLINK_XFRM socket (sans-I/O).

    Raises only :class:`DecodeError`.
    """
    out = []
    for kind, _flags, _seq, off, n in m.split_messages(data):
        with m.decoding(f"XFRM message type {kind}", off):
            ev = parse_event(data, kind, off, n)
        if ev is not None:
            out.append(ev)
    return out


class XfrmEvents:
    """An asyncio subscription to XFRM multicast groups; an async iterator of events."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(False)
        self._queue: deque[Event] = deque()

    @classmethod
    def open(cls, netns: NetnsSpec = None,
             groups: Iterable[int] = DEFAULT_GROUPS) -> XfrmEvents:
        return cls(open_netlink(netns, groups))

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> XfrmEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> XfrmEvents:
        return self

    async def __anext__(self) -> Event:
        loop = asyncio.get_running_loop()
        while not self._queue:
            try:
                data = await loop.sock_recv(self._sock, 1 << 20)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return EventsLost()
                if self._sock.fileno() < 0:
                    raise StopAsyncIteration from None
                raise
            self._queue.extend(parse_events(data))
        return self._queue.popleft()
