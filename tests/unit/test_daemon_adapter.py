"""gkm.daemon.adapter: the asyncio shell around a sans-I/O engine, with a fake engine."""

from __future__ import annotations

import asyncio

from gkm.daemon.adapter import EngineShell, UdpEndpoint, normalize_addr


class ScriptedEngine:
    def __init__(self):
        self.timer = None
        self.out = []
        self.events = []
        self.received = []
        self.timer_calls = []
        self.log = []  # inputs, commits and output pulls, in order

    def receive_datagram(self, data, addr, now):
        self.log.append("datagram")
        self.received.append((data, addr))
        self.out.append((b"echo:" + data, addr))
        self.events.append(("got", data))

    def handle_timer(self, now):
        self.timer_calls.append(now)
        self.timer = None

    def commit(self, now):
        self.log.append("commit")

    def datagrams_to_send(self):
        self.log.append("output")
        out, self.out = self.out, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def get_timer(self):
        return self.timer


class FakeTransport:
    def __init__(self):
        self.sent = []
        self.closed = False

    def sendto(self, data, addr):
        self.sent.append((data, addr))

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return default

    def close(self):
        self.closed = True


def test_datagrams_sent_and_events_delivered():
    async def run():
        eng = ScriptedEngine()
        events = []
        shell = EngineShell(eng, name="t", on_event=events.append)
        tr = FakeTransport()
        shell.attach(tr)
        shell.datagram_received(b"hi", ("192.0.2.1", 848, 0, 0), tr)
        assert eng.received == [(b"hi", ("192.0.2.1", 848))]  # IPv6-style 4-tuples normalized
        assert tr.sent == [(b"echo:hi", ("192.0.2.1", 848))]
        assert events == [("got", b"hi")]
        shell.close()
    asyncio.run(run())


def test_a_burst_is_committed_once_before_its_outputs_are_taken():
    """The engine's durable step is the shell's explicit call (group commit of a burst), never a
    side effect of taking the outputs."""
    async def run():
        eng = ScriptedEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None)
        tr = FakeTransport()
        shell.attach(tr)
        for i in range(3):
            shell.feed(b"m%d" % i, ("192.0.2.1", 848), tr, 0.0)
        shell.transmit()
        assert eng.log == ["datagram"] * 3 + ["commit", "output"]
        assert len(tr.sent) == 3
        shell.close()
    asyncio.run(run())


def test_timer_rearmed_only_when_deadline_changes():
    async def run():
        loop = asyncio.get_running_loop()
        now = [1000.0]
        eng = ScriptedEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None, clock=lambda: now[0])
        eng.timer = 1000.02
        shell.transmit()
        first = shell._timer
        assert shell.timer_deadline == 1000.02 and first is not None
        shell.transmit()  # same deadline: same handle
        assert shell._timer is first
        eng.timer = 1000.03  # changed: old handle cancelled, new one armed
        t0 = loop.time()
        shell.transmit()
        t1 = loop.time()
        assert first.cancelled() and shell._timer is not first
        # the deadline is converted to loop time: 30 ms after arming
        assert t0 + 0.03 - 1e-6 <= shell._timer.when() <= t1 + 0.03 + 1e-6
        now[0] = 1000.03
        end = loop.time() + 60  # generous deadline, polled
        while not eng.timer_calls and loop.time() < end:
            await asyncio.sleep(0.01)
        assert eng.timer_calls == [1000.03]
        assert shell.timer_deadline is None and shell._timer is None
        eng.timer = None
        shell.transmit()
        assert shell._timer is None
        shell.close()
    asyncio.run(run())


def test_timer_cleared_when_engine_drops_deadline():
    async def run():
        eng = ScriptedEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None)
        eng.timer = shell.clock() + 100
        shell.transmit()
        h = shell._timer
        eng.timer = None
        shell.transmit()
        assert h.cancelled() and shell._timer is None
        shell.close()
    asyncio.run(run())


def test_engine_exception_does_not_kill_shell(caplog):
    async def run():
        class Boom(ScriptedEngine):
            def receive_datagram(self, data, addr, now):
                raise RuntimeError("bug")
        shell = EngineShell(Boom(), name="t", on_event=lambda e: None)
        shell.datagram_received(b"x", ("192.0.2.1", 848))
        shell.close()
    asyncio.run(run())
    assert "engine failed" in caplog.text


async def _udp_client(loop, port):
    """A UDP client of a shell's socket on 127.0.0.1:``port``; the answers it gets queue up."""
    replies: asyncio.Queue = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            replies.put_nowait(data)
    ctr, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    return ctr, replies


def test_real_udp_roundtrip():
    async def run():
        loop = asyncio.get_running_loop()
        eng = ScriptedEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None)
        tr, _ = await loop.create_datagram_endpoint(lambda: UdpEndpoint(shell),
                                                    local_addr=("127.0.0.1", 0))
        ctr, replies = await _udp_client(loop, tr.get_extra_info("sockname")[1])
        ctr.sendto(b"ping")
        assert await asyncio.wait_for(replies.get(), 30) == b"echo:ping"
        assert shell.sent == 1 and shell.received == 1
        ctr.close()
        shell.close()
    asyncio.run(run())


def test_normalize_addr():
    assert normalize_addr(("::1", 848, 0, 0)) == ("::1", 848)


def test_udp_endpoint_accept_filters_what_reaches_the_engine():
    """A key server socket that serves one protocol only (``[keyserver] g_ikev2_port``): the
    datagrams ``accept`` refuses are dropped before the engine, the others pass and are answered."""
    async def run():
        loop = asyncio.get_running_loop()
        eng = ScriptedEngine()
        shell = EngineShell(eng, name="t", on_event=lambda e: None)
        tr, ep = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(shell, accept=lambda d: d.startswith(b"ok")), local_addr=("127.0.0.1", 0))
        ctr, replies = await _udp_client(loop, tr.get_extra_info("sockname")[1])
        ctr.sendto(b"no thanks")
        ctr.sendto(b"ok then")
        assert await asyncio.wait_for(replies.get(), 30) == b"echo:ok then"
        assert [d for d, _a in eng.received] == [b"ok then"] and shell.received == 1
        ep.accept = None  # a reload may change the filter of a socket it keeps
        ctr.sendto(b"anything")
        assert await asyncio.wait_for(replies.get(), 30) == b"echo:anything"
        ctr.close()
        shell.close()
    asyncio.run(run())
