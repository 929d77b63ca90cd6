"""How the key server's GROUPKEY-PUSH datagrams leave: non-blocking UDP sockets on the event loop.

One socket per address family and multicast option set (``rekey_ttl``, ``rekey_interface`` of
a group's ``[keyserver.group.kek]``; most configurations have exactly one), opened once when
the key server role starts or is reconfigured, unbound (the kernel picks the source address
and one ephemeral source port per socket).  A datagram is written straight to the
non-blocking socket; only when its send buffer is full does it go through the socket's asyncio
transport, which queues it and writes it when the socket is writable.  Nothing here ever
blocks the event loop, whatever the number of destinations.

Defaults: multicast TTL 1 (the datagram stays on the key server's link, as the system
default; members behind a router also get the unicast copy the key server sends to each
registered member), interface chosen by the routing table, multicast loopback on (a member
on the key server's own host receives the multicast copy).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger("msecd")

__all__ = ["DEFAULT_MULTICAST_TTL", "MulticastOptions", "RekeyTransport", "RekeyTransportError"]

DEFAULT_MULTICAST_TTL = 1


class RekeyTransportError(Exception):
    """A rekey socket cannot be opened (no such interface, ...)."""


@dataclass(frozen=True, slots=True)
class MulticastOptions:
    """The multicast options of one group's rekeys: hop limit and outgoing interface (None:
    the routing table decides)."""

    ttl: int = DEFAULT_MULTICAST_TTL
    interface: str | None = None

    @classmethod
    def of(cls, kek) -> "MulticastOptions":
        """A ``policy.model.KekPolicy``'s options."""
        return cls(kek.rekey_ttl, kek.rekey_interface)


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 \
        else socket.AF_INET


#: socket buffers of a rekey socket: a unicast rekey to 10^4 members is answered by 10^4
#: GROUPKEY-PUSH-ACKs within a fraction of a second, and the kernel's default receive buffer
#: (about 200 KiB, some 300 small datagrams with their overhead) drops most of them, each
#: drop costing a retransmission to that member (tools/bench rekey)
REKEY_SOCKET_BUFFER = 8 << 20


def _grow_buffers(s: socket.socket) -> None:
    """Receive and send buffers of REKEY_SOCKET_BUFFER: past net.core.rmem_max/wmem_max
    with CAP_NET_ADMIN (SO_*BUFFORCE, which msecd has), else as far as the limits allow."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, REKEY_SOCKET_BUFFER)
        except OSError:
            try:
                s.setsockopt(socket.SOL_SOCKET, plain, REKEY_SOCKET_BUFFER)
            except OSError:
                pass


def _open_socket(family: int, opts: MulticastOptions) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        _grow_buffers(s)
        ifindex = 0
        if opts.interface is not None:
            try:
                ifindex = socket.if_nametoindex(opts.interface)
            except OSError:
                raise RekeyTransportError(
                    f"rekey_interface {opts.interface!r}: no such interface") from None
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, opts.ttl)
            if ifindex:
                # struct ip_mreqn: multiaddr (unused here), address (any), ifindex
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, ifindex))
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, opts.ttl)
            if ifindex:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        return s
    except BaseException:
        s.close()
        raise


class _AckEndpoint(asyncio.DatagramProtocol):
    """Datagrams that come back to a rekey socket: GROUPKEY-PUSH-ACKs (RFC 8263 section 3:
    sent to the PUSH's source address and port)."""

    def __init__(self, owner: "RekeyTransport") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:
        if self.owner.on_datagram is not None:
            self.owner.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("rekey socket: %s", exc)  # an ICMP error for an earlier PUSH


class RekeyTransport:
    """The key server's rekey sockets.  ``await open(options)`` before ``send``;
    ``close()`` when the role stops (or after a reconfiguration swapped in a new one).
    ``on_datagram(data, addr)``: called for every datagram received on them (ACKs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_datagram=None) -> None:
        self.loop = loop
        self.on_datagram = on_datagram
        self._options: frozenset[MulticastOptions] = frozenset()
        self._sockets: dict[tuple[int, MulticastOptions], socket.socket] = {}
        self._transports: dict[tuple[int, MulticastOptions], asyncio.DatagramTransport] = {}
        self.sent = 0

    async def open(self, options) -> None:
        """One socket per family for each option set in ``options``; raises
        :class:`RekeyTransportError` (nothing left open) if one cannot be made."""
        wanted = frozenset(options) | {MulticastOptions()}
        try:
            for opts in sorted(wanted, key=lambda o: (o.ttl, o.interface or "")):
                for fam in (socket.AF_INET, socket.AF_INET6):
                    try:
                        s = _open_socket(fam, opts)
                    except OSError as e:
                        if fam == socket.AF_INET6 and opts.interface is None:
                            log.debug("rekey transport: no IPv6 socket: %s", e)
                            continue  # a host without IPv6
                        raise RekeyTransportError(f"rekey socket: {e.strerror or e}") from None
                    transport, _ = await self.loop.create_datagram_endpoint(
                        lambda: _AckEndpoint(self), sock=s)
                    self._sockets[(fam, opts)] = s
                    self._transports[(fam, opts)] = transport
        except BaseException:
            self.close()
            raise
        self._options = wanted

    def socket_for(self, host: str, opts: MulticastOptions = MulticastOptions()) \
            -> socket.socket | None:
        """The socket a datagram to ``host`` with ``opts`` leaves through (for tests and
        diagnostics)."""
        return self._sockets.get((_family_of(host), opts))

    def send(self, data: bytes, dest: tuple[str, int],
             opts: MulticastOptions = MulticastOptions()) -> None:
        """Send one datagram now, or queue it if the socket's buffer is full.  Raises OSError
        for an immediate error (unreachable network, ...), so the caller can report it."""
        key = (_family_of(dest[0]), opts)
        s = self._sockets.get(key)
        if s is None:
            raise OSError(f"no rekey socket for {dest[0]} "
                          f"(ttl {opts.ttl}, interface {opts.interface or 'any'})")
        transport = self._transports[key]
        if transport.get_write_buffer_size():
            transport.sendto(data, dest)  # keep the order behind what is already queued
        else:
            try:
                s.sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                transport.sendto(data, dest)  # queued; written when writable
        self.sent += 1

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
        self._sockets.clear()  # closed by their transports
        self._options = frozenset()
