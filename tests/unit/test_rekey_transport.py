"""The key server's rekey transport: non-blocking sockets, multicast options from the KEK
policy, datagrams delivered (real UDP on loopback)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from gkm.daemon.rekey_transport import (
    DEFAULT_MULTICAST_TTL,
    MulticastOptions,
    RekeyTransport,
    RekeyTransportError,
)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_sockets_are_non_blocking_and_carry_the_options():
    async def run():
        t = RekeyTransport(asyncio.get_running_loop())
        lo = MulticastOptions(ttl=7, interface="lo")
        await t.open([lo])
        try:
            s = t.socket_for("239.192.0.1", lo)
            assert s is not None and s.getblocking() is False
            assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 7
            default = t.socket_for("239.192.0.1")
            assert default is not None and default is not s
            assert default.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == \
                DEFAULT_MULTICAST_TTL == 1
            s6 = t.socket_for("ff15::1", lo)  # (IPv4 reads back no ifindex; IPv6 does)
            if s6 is not None:
                assert s6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 7
                idx = struct.unpack("i", s6.getsockopt(socket.IPPROTO_IPV6,
                                                       socket.IPV6_MULTICAST_IF, 4))[0]
                assert idx == socket.if_nametoindex("lo")
        finally:
            t.close()
    _run(run())


def test_datagrams_arrive_in_order_from_one_source_port():
    async def run():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        t = RekeyTransport(asyncio.get_running_loop())
        await t.open([])
        try:
            for i in range(200):
                t.send(b"push %d" % i, rx.getsockname())
            assert t.sent == 200
            got, sources = [], set()
            while len(got) < 200:
                data, src = await asyncio.to_thread(rx.recvfrom, 100)
                got.append(data)
                sources.add(src)
            assert got == [b"push %d" % i for i in range(200)]
            assert len(sources) == 1  # one socket for every rekey
        finally:
            t.close()
            rx.close()
    _run(run())


def test_unknown_interface_is_a_clear_error_and_leaves_nothing_open():
    async def run():
        t = RekeyTransport(asyncio.get_running_loop())
        with pytest.raises(RekeyTransportError, match="rekey_interface 'nosuch0': no such"):
            await t.open([MulticastOptions(ttl=3, interface="nosuch0")])
        assert t.socket_for("239.192.0.1") is None
        with pytest.raises(OSError, match="no rekey socket"):
            t.send(b"x", ("127.0.0.1", 9))
    _run(run())
