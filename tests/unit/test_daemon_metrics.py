"""The metrics endpoint and the monitor stream of a real Daemon (fake engines over loopback
UDP, the real xfrm installer over MemoryXfrm): scraped over HTTP and parsed with
prometheus_client's own parser; the monitor read from the real control socket."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from gkm.daemon.activity import Activity, notice_text
from gkm.daemon.daemon import Daemon
from gkm.daemon.engines import KernelInstaller
from policy.config import load_config
from tests.unit.daemon_fakes import FakeFactory, free_udp_port, write_config
from xfrm.groupsa import GroupSaInstaller
from xfrm.memory import MemoryXfrm


class MemoryInstaller(KernelInstaller):
    """msecd's KernelInstaller over MemoryXfrm (the contract-tested stand-in of the kernel)."""

    def __init__(self) -> None:
        self.port = MemoryXfrm()
        self.sa = GroupSaInstaller(self.port, local=["10.1.0.5"])

    def read_counters(self):
        return self.port.dump_sa_counters(owned=True)


def _free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _config(tmp_path, metrics_port):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port, member_groups=(1001, 1002))
    cfg.write_text(cfg.read_text().replace(
        "[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', 1))
    return cfg


async def _until(pred, timeout=60.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def _scrape(port) -> dict:
    """{(name, frozenset(labels)): value} of one scrape."""
    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            return r.read().decode()
    text = await asyncio.get_running_loop().run_in_executor(None, get)
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _get(m, name, **labels):
    return m.get((name, frozenset(labels.items())))


def test_metrics_scraped_over_http_match_what_happened(tmp_path):
    mport = _free_tcp_port()
    cfg = _config(tmp_path, mport)
    inst = MemoryInstaller()
    fac = FakeFactory(installer=inst)

    async def run():
        d = Daemon(cfg, load_config(cfg), factory=fac, backoff=(0.01, 0.05), jitter=False)
        await d.start()
        try:
            await _until(lambda: d.sessions[1001].state == "registered"
                         and d.activity.ks_refusals[(1002, "not_authorized")] >= 2)
            m = await _scrape(mport)
            assert _get(m, "msec_keyserver_registrations_total", group="1001") == 1
            assert _get(m, "msec_keyserver_members", group="1001") == 1
            assert _get(m, "msec_keyserver_refusals_total", group="1002",
                        reason="not_authorized") >= 2
            assert _get(m, "msec_member_registered", group="1001") == 1
            assert _get(m, "msec_member_registered", group="1002") == 0
            assert _get(m, "msec_member_registrations_total", group="1001") == 1
            assert _get(m, "msec_member_registration_failures_total", group="1002") >= 2
            assert _get(m, "msec_member_rekeys_received_total", group="1001") == 0
            assert _get(m, "msec_keyserver_phase1_half_open") == 0
            ks_left = _get(m, "msec_tek_expiry_seconds", role="keyserver", group="1001",
                           state="current", spi="0x00001234")
            gm_left = _get(m, "msec_tek_expiry_seconds", role="member", group="1001",
                           state="current", spi="0x00001234")
            assert 3500 < ks_left <= 3600 and 3500 < gm_left <= 3600, (ks_left, gm_left)
            # the member's SA, as the (memory) kernel counts it, labelled with its group
            labels = dict(group="1001", spi="0x00001234", dst="239.1.1.1")
            assert _get(m, "msec_sa_bytes_total", **labels) == 0
            inst.port.counted[0x1234] = (123456, 789)
            m = await _scrape(mport)
            assert _get(m, "msec_sa_bytes_total", **labels) == 123456
            assert _get(m, "msec_sa_packets_total", **labels) == 789
            assert _get(m, "msec_start_time_seconds") == d.started_at
            assert not any(name.startswith("python_") or name.startswith("process_")
                           for name, _ in m)
        finally:
            await d.stop()
        assert d.metrics is None

    asyncio.run(asyncio.wait_for(run(), 120))


def test_metrics_port_in_use_is_a_startup_error(tmp_path):
    from gkm.daemon.engines import StartupError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cfg = _config(tmp_path, taken.getsockname()[1])

    async def run():
        d = Daemon(cfg, load_config(cfg), factory=FakeFactory(), backoff=(0.01, 0.05))
        try:
            await d.start()
        except StartupError as e:
            return str(e)
        await d.stop()
        return None

    try:
        why = asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        taken.close()
    assert why is not None and "address already in use" in why.lower(), why


def test_monitor_streams_notices_over_the_control_socket(tmp_path):
    cfg = _config(tmp_path, _free_tcp_port())
    sock = str(tmp_path / "run" / "control.sock")

    async def run():
        d = Daemon(cfg, load_config(cfg), factory=FakeFactory(installer=MemoryInstaller()),
                   backoff=(0.05, 0.2), jitter=False)
        await d.start()
        try:
            r, w = await asyncio.open_unix_connection(sock)
            w.write(b'{"cmd": "monitor"}\n')
            assert json.loads(await r.readline()) == {"ok": True, "monitor": True}
            await _until(lambda: d.activity.subscribers == 1)
            events = []
            while not {"refused", "registration_failed"} <= {e["event"] for e in events}:
                events.append(json.loads(await asyncio.wait_for(r.readline(), 30)))
            refused = next(e for e in events if e["event"] == "refused")
            assert refused["role"] == "keyserver" and refused["group"] == 1002
            assert refused["cause"] == "not_authorized" and refused["at"] > 0
            failed = next(e for e in events if e["event"] == "registration_failed")
            assert failed["role"] == "member" and failed["group"] == 1002
            line = notice_text(refused)
            assert " keyserver group 1002 refused " in line and "cause=not_authorized" in line
            w.close()  # the client goes: the daemon drops the subscription
            await _until(lambda: d.activity.subscribers == 0)
        finally:
            await d.stop()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_slow_subscriber_is_dropped_with_a_notice_and_never_blocks():
    from gkm.gdoi.push import PushRejected

    async def run():
        a = Activity(clock=lambda: 1.5)
        slow, fast = a.subscribe(maxsize=4), a.subscribe(maxsize=100)
        for i in range(10):
            a.member_event(PushRejected(7, f"SEQ {i} not greater than 9 (replay)",
                                        cause="replay"))
        assert slow.dropped and a.subscribers == 1 and a.subscribers_dropped == 1
        got = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        assert len(got) == 4 and got[-1].event == "dropped"
        # the oldest waiting notice made room for the last word
        assert [n.fields["reason"] for n in got[:3]] == [f"SEQ {i} not greater than 9 (replay)"
                                                         for i in (1, 2, 3)]
        assert fast.queue.qsize() == 10 and not fast.dropped
        assert a.push_rejected[(7, "replay")] == 10
        # copies of the last PUSH (expected: multicast and unicast) neither count nor show
        a.member_event(PushRejected(7, "copy", duplicate=True, cause="duplicate"))
        assert fast.queue.qsize() == 10 and (7, "duplicate") not in a.push_rejected

    asyncio.run(run())


def test_monitor_reader_too_slow_gets_a_last_line_and_is_closed(tmp_path):
    """A burst of notices larger than the subscriber's queue, while the client reads
    nothing: the daemon goes on at once (the burst returns), the client finds the notices that
    fit, one "dropped" line, then the end of the stream."""
    from gkm.daemon.activity import SUBSCRIBER_QUEUE
    from gkm.gdoi.push import PushRejected

    cfg = _config(tmp_path, _free_tcp_port())
    sock = str(tmp_path / "run" / "control.sock")

    async def run():
        d = Daemon(cfg, load_config(cfg), factory=FakeFactory(installer=MemoryInstaller()),
                   backoff=(30.0, 60.0), jitter=False)
        await d.start()
        try:
            r, w = await asyncio.open_unix_connection(sock, limit=1 << 20)
            w.write(b'{"cmd": "monitor"}\n')
            assert json.loads(await r.readline())["monitor"] is True
            await _until(lambda: d.activity.subscribers == 1)
            for i in range(3 * SUBSCRIBER_QUEUE):
                d.activity.member_event(PushRejected(1001, f"test burst {i}", cause="malformed"))
            assert d.activity.subscribers == 0 and d.activity.subscribers_dropped == 1
            lines = []
            while line := await asyncio.wait_for(r.readline(), 30):
                lines.append(json.loads(line))
            burst = [x for x in lines if x["event"] == "push_rejected"]
            assert lines[-1]["event"] == "dropped" and "too slow" in lines[-1]["reason"]
            assert 0 < len(burst) < SUBSCRIBER_QUEUE
            assert [x["reason"] for x in burst] == sorted(
                (x["reason"] for x in burst), key=lambda t: int(t.split()[-1]))
            w.close()
        finally:
            await d.stop()

    asyncio.run(asyncio.wait_for(run(), 120))
