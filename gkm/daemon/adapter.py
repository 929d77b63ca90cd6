"""A thin asyncio shell around one sans-I/O engine (aioquic's ``QuicConnectionProtocol`` shape).

The engine is driven by three inputs, ``receive_datagram(data, addr, now)``,
``handle_timer(now)`` and whatever user calls the owner makes, and its outputs are pulled:
``datagrams_to_send()``, ``next_event()`` and ``get_timer()``.  After every input the shell calls
:meth:`EngineShell.transmit`, which sends the queued datagrams, hands the events to
``on_event`` and re-arms a single ``loop.call_at`` only when the deadline changed.

Time: engines are given wall-clock seconds (``clock()``, default :func:`time.time`), because
they compare it with certificate validity and store key lifetimes as wall-clock values.  A
deadline ``d`` is armed at ``loop.time() + (d - clock())``, so the loop's monotonic clock does
the waiting.

An engine may be reachable over several UDP sockets (a key server listening on 0.0.0.0 and ::,
or on several addresses): replies go out through the socket the peer last used, else the first
socket of the peer's address family.

Bursts (group commit): asyncio hands a :class:`UdpEndpoint` one datagram per event-loop turn.
The endpoint then reads every further datagram already waiting on that socket (up to
:attr:`UdpEndpoint.burst`, through a duplicate of the socket's descriptor, non-blocking) and
feeds them all to the engine, then performs the engine's durable step (``engine.commit(now)``:
a key server enrolls all the verified messages 3 of the burst in one durable store commit), and
only then pulls its output (outputs never commit anything), so the loop's per-datagram
overhead (a poll and a callback) is paid once per burst.  Replies are written straight to the
socket; only when its send buffer is full do they go through the transport (which queues).

UDP 4500 (NAT traversal, RFC 7296 §2.23, :mod:`gkm.ikev2.natt`): an endpoint made with
``natt=True`` strips the non-ESP marker from what it receives and the shell puts it before
every datagram it sends through that socket; ESP (no marker) and junk are dropped and counted
in :attr:`UdpEndpoint.dropped`, NAT-keepalives dropped quietly.  An endpoint with ``local``
tells the engine the (address, port) each datagram arrived on (``receive_datagram(data, addr,
now, local)``, for NAT detection): its bound address, or for a wildcard bind (0.0.0.0, ::) the
address the kernel's route toward the peer leaves from (a connected UDP socket's name, nothing
sent), looked up for IKE_SA_INIT requests only and remembered per peer address (at most
4096; a stale one makes a member believe the key server is behind a NAT: it floats, harmless).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from typing import Any, Callable, Protocol

from gkm.ikev2.natt import NON_ESP_MARKER, Kind, unframe
from gkm.wire.errors import WireError
from gkm.wire.header import is_ikev2

log = logging.getLogger("msecd")

__all__ = ["Engine", "EngineShell", "UdpEndpoint", "normalize_addr"]


class Engine(Protocol):
    """What the shell needs from a sans-I/O engine (MemberRegistration, KeyServerEngine)."""

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, Any]]: ...
    def next_event(self) -> Any: ...
    def get_timer(self) -> float | None: ...


def normalize_addr(addr: Any) -> tuple[str, int]:
    """asyncio gives IPv6 peers as 4-tuples; engines see (host, port)."""
    return (addr[0], addr[1])


def _family(host: str) -> int:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).version
    except ValueError:
        return 4


class UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP socket feeding an :class:`EngineShell`; drains the socket per burst."""

    #: datagrams fed to the engine before its output is pulled (one loop turn)
    burst = 256

    def __init__(self, shell: "EngineShell", accept: Callable[[bytes], bool] | None = None, *,
                 natt: bool = False, local: tuple[str, int] | None = None) -> None:
        self.shell = shell
        #: which datagrams this socket passes to the engine (None: all); the others are dropped
        self.accept = accept
        #: UDP 4500 framing (module docstring)
        self.natt = natt
        #: the socket's (address, port), given to the engine with each datagram (None: not)
        self.local = local
        #: datagrams dropped before the engine: "esp" and "malformed" on a NAT-T socket
        self.dropped: Counter[str] = Counter()
        self._sources: dict[str, str | None] = {}  # wildcard bind: peer -> our route's source
        self.transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._sock = _dup_socket(transport)
        self.shell.attach(transport, self._sock, natt=self.natt)

    def _take(self, data: bytes, addr, transport, now: float) -> None:
        if self.natt:
            try:
                got = unframe(data)
            except WireError:
                self.dropped["malformed"] += 1
                return
            if got.kind is not Kind.IKE:
                if got.kind is Kind.ESP:  # msec has no ESP-in-UDP
                    self.dropped["esp"] += 1
                return  # a NAT-keepalive: quietly
            data = got.message
        accept = self.accept
        if accept is not None and not accept(data):
            return
        local = self.local
        if local is not None and _wildcard(local[0]):
            local = _local_of(data, addr, local[1], self._sources)
        self.shell.feed(data, addr, transport, now, local)

    def datagram_received(self, data: bytes, addr) -> None:
        shell = self.shell
        transport = self.transport
        now = shell.clock()
        take = self._take
        take(data, addr, transport, now)
        sock = self._sock
        if sock is not None and not shell.closed:
            recvfrom = sock.recvfrom
            for _ in range(self.burst - 1):
                try:
                    data, addr = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. an ICMP error queued on the socket
                    self.error_received(exc)
                    break
                take(data, addr, transport, now)
        shell.transmit()

    def move_to(self, shell: "EngineShell") -> None:
        """Feed another shell from now on (a reconfigured key server keeps the sockets of
        the addresses it still listens on instead of closing and binding them again)."""
        if self.transport is not None:
            self.shell.detach(self.transport)
            shell.attach(self.transport, self._sock, natt=self.natt)
        self.shell = shell

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        log.debug("%s: socket error: %s", self.shell.name, exc)

    def connection_lost(self, exc) -> None:
        self.shell.detach(self.transport)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


_IKE_SA_INIT_REQUEST = 34  # exchange type at offset 18 of the IKE header


_SOURCES_MAX = 4096  # route lookups remembered per socket (a flood costs one lookup per peer)


def _local_of(data: bytes, addr, port: int, cache: dict[str, str | None]) -> tuple[str, int] | None:
    """For a socket bound to a wildcard address: our address toward ``addr`` (module
    docstring), for IKE_SA_INIT requests only (None for anything else, or no route)."""
    if len(data) <= 18 or data[18] != _IKE_SA_INIT_REQUEST or not is_ikev2(data):
        return None
    host = addr[0]
    if host not in cache:
        if len(cache) >= _SOURCES_MAX:
            cache.clear()
        try:
            with socket.socket(socket.AF_INET6 if _family(host) == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, addr[1]))
                cache[host] = s.getsockname()[0].split("%", 1)[0]
        except OSError:
            cache[host] = None
    source = cache[host]
    return (source, port) if source is not None else None


def _dup_socket(transport) -> socket.socket | None:
    """A second socket object on the transport's UDP socket (same open file: same queue), for
    reading the rest of a burst and writing replies without a loop turn each; None if the
    transport has no real socket (tests' fakes)."""
    ts = transport.get_extra_info("socket") if transport is not None else None
    try:
        if ts is None or ts.type != socket.SOCK_DGRAM:
            return None
        s = socket.socket(ts.family, ts.type, ts.proto, fileno=os.dup(ts.fileno()))
        s.setblocking(False)
        return s
    except (OSError, AttributeError, TypeError, ValueError):
        return None


class EngineShell:
    """Drives one engine: datagrams in and out, one timer, events to ``on_event``."""

    def __init__(
        self,
        engine: Engine,
        *,
        name: str,
        on_event: Callable[[Any], None],
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.name = name
        self.on_event = on_event
        self.loop = loop or asyncio.get_event_loop()
        self.clock = clock
        self._transports: list[asyncio.DatagramTransport] = []
        self._raw: dict[asyncio.DatagramTransport, socket.socket] = {}
        self._route: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self._natt: set[asyncio.DatagramTransport] = set()  # UDP 4500: the non-ESP marker
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = False
        self.sent = 0
        self.received = 0

    # -- sockets
    def attach(self, transport: asyncio.DatagramTransport, sock: socket.socket | None = None, *,
               natt: bool = False) -> None:
        """``sock``: the same UDP socket, written to directly; ``natt``: a UDP 4500 socket
        (see the module docstring)."""
        self._transports.append(transport)
        if sock is not None:
            self._raw[transport] = sock
        if natt:
            self._natt.add(transport)

    def detach(self, transport) -> None:
        if transport in self._transports:
            self._transports.remove(transport)
        self._raw.pop(transport, None)
        self._natt.discard(transport)
        for k in [k for k, t in self._route.items() if t is transport]:
            del self._route[k]

    def _transport_for(self, addr: tuple[str, int]) -> asyncio.DatagramTransport | None:
        ts = self._transports
        if len(ts) == 1 and not ts[0].is_closing():
            return ts[0]
        t = self._route.get(addr)
        if t is not None and not t.is_closing():
            return t
        fam = _family(addr[0])
        fallback = None
        for t in self._transports:
            if t.is_closing():
                continue
            sock = t.get_extra_info("socket")
            sfam = 6 if sock is not None and sock.family == socket.AF_INET6 else 4
            if sfam == fam:
                return t
            fallback = fallback or t
        return fallback

    # -- inputs
    def datagram_received(self, data: bytes, addr, transport=None) -> None:
        """One datagram: feed it, then pull the engine's output."""
        if self.closed:
            return
        self.feed(data, addr, transport, self.clock())
        self.transmit()

    def feed(self, data: bytes, addr, transport, now: float, local: tuple[str, int] | None = None) -> None:
        """Give the engine one datagram without pulling its output (a burst is fed first, then
        :meth:`transmit` once).  ``local``: where it arrived, passed on when known (only
        engines that take it are given sockets that know it)."""
        if self.closed:
            return
        peer = (addr[0], addr[1])
        if transport is not None and len(self._transports) > 1:
            route = self._route
            if len(route) >= 65536 and peer not in route:  # bounded: a hint, not state
                route.clear()
            route[peer] = transport
        self.received += 1
        try:
            if local is None:
                self.engine.receive_datagram(data, peer, now)
            else:
                self.engine.receive_datagram(data, peer, now, local)
        except Exception:  # an engine bug must not take the daemon down
            log.exception("%s: engine failed on a datagram from %s", self.name, peer[0])

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.closed:
            return
        try:
            self.engine.handle_timer(self.clock())
        except Exception:
            log.exception("%s: engine failed in its timer", self.name)
        self.transmit()

    def kick(self) -> None:
        """Call after a user call on the engine (connect, start, ...)."""
        self.transmit()

    # -- outputs
    def transmit(self) -> None:
        """The durable step the engine has pending (``commit``: one store commit for the
        registrations of the burst just fed), then its datagrams and events."""
        if self.closed:
            return
        try:
            self.engine.commit(self.clock())
        except Exception:  # an engine bug must not take the daemon down
            log.exception("%s: engine failed to commit", self.name)
        for data, addr in self.engine.datagrams_to_send():
            peer = (addr[0], addr[1])
            t = self._transport_for(peer)
            if t is None:
                log.warning("%s: no socket to send to %s", self.name, peer[0])
                continue
            if t in self._natt:
                data = NON_ESP_MARKER + data
            raw = self._raw.get(t)
            if raw is None:
                t.sendto(data, peer)
            else:
                try:
                    raw.sendto(data, peer)
                except (BlockingIOError, InterruptedError):
                    t.sendto(data, peer)  # buffer full: the transport queues it
                except OSError as exc:
                    log.debug("%s: sending to %s failed: %s", self.name, peer[0], exc)
                    continue
            self.sent += 1
        while (ev := self.engine.next_event()) is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("%s: handling %s failed", self.name, type(ev).__name__)
            if self.closed:
                return
        self._arm(self.engine.get_timer())

    def _arm(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = self.loop.call_at(self.loop.time() + delay, self._on_timer)

    @property
    def timer_deadline(self) -> float | None:
        return self._timer_at

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        for t in list(self._transports):
            t.close()
        self._transports.clear()
        self._raw.clear()
        self._natt.clear()
        self._route.clear()
