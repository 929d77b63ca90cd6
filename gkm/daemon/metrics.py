"""msecd's Prometheus endpoint (``[daemon] metrics_listen = "ADDR:PORT"``, off by default).

prometheus_client serves ``GET /metrics`` from its own thread (``start_http_server``); the
daemon's state belongs to the event loop, so a scrape never reads it from that thread: the
:class:`MsecCollector` asks the loop for a :class:`Snapshot` (plain values copied by
:func:`snapshot`, run there with ``call_soon_threadsafe``) and renders that.  The one slow
read, the kernel's counters of msec's SAs, happens in the scrape thread through a netlink
socket of its own (``KernelInstaller.read_counters``: ``xfrm``, keys not even decoded).
Nothing is counted on the hot path beyond what :class:`~.activity.Activity` adds to a
``Counter``; everything else is read at scrape time.

Names follow the Prometheus conventions: ``msec_`` prefix, ``_total`` on counters, base
units (``_seconds``, ``_bytes``), few-valued labels (``group`` is the group id;
``reason``/``cause`` words from :mod:`.activity`).  The list is in the README
("Operations: metrics").
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("msecd")

__all__ = ["MetricsServer", "MsecCollector", "Snapshot", "snapshot", "SNAPSHOT_TIMEOUT"]

#: how long a scrape waits for the event loop to copy the state
SNAPSHOT_TIMEOUT = 5.0


@dataclass
class Snapshot:
    """The daemon's state as a scrape sees it (copied on the loop; read in the scrape thread)."""

    start_time: float
    ks_groups: list[int] = field(default_factory=list)
    ks_registrations: dict[int, int] = field(default_factory=dict)
    ks_refusals: dict[tuple[int, str], int] = field(default_factory=dict)
    ks_members: dict[int, int] = field(default_factory=dict)
    rekeys_sent: dict[tuple[int, str], int] = field(default_factory=dict)
    evictions: dict[int, int] = field(default_factory=dict)
    phase1_failures: dict[str, int] = field(default_factory=dict)
    half_open: int | None = None
    #: (role, group, state, SPI text) -> seconds left; KEKs by their 16-byte SPI in hex
    tek_left: dict[tuple[str, int, str, str], float] = field(default_factory=dict)
    kek_left: dict[tuple[str, int, str], float] = field(default_factory=dict)
    member_groups: list[int] = field(default_factory=list)
    member_registered: dict[int, int] = field(default_factory=dict)
    member_registrations: dict[int, int] = field(default_factory=dict)
    member_failures: dict[int, int] = field(default_factory=dict)
    rekeys_received: dict[int, int] = field(default_factory=dict)
    push_rejected: dict[tuple[int, str], int] = field(default_factory=dict)
    monitor_subscribers: int = 0
    monitor_dropped: int = 0
    #: reqid -> member group id, and the installer to read the SA counters with (None: no
    #: kernel installation)
    reqids: dict[int, int] = field(default_factory=dict)
    counters_from: Any = None


def snapshot(d: "Daemon") -> Snapshot:
    """Copy what the metrics show; runs on the event loop (no awaiting, only the key
    server's own SQLite rows are read)."""
    from gkm.store import KeyState

    now, mono = d.clock(), time.monotonic()
    a = d.activity
    s = Snapshot(start_time=d.started_at or 0.0)
    s.ks_registrations = dict(a.ks_registrations)
    s.ks_refusals = dict(a.ks_refusals)
    s.rekeys_sent = dict(a.rekeys_sent)
    s.evictions = dict(a.evictions)
    s.phase1_failures = dict(a.phase1_failures)
    s.member_failures = dict(a.member_failures)
    s.push_rejected = dict(a.push_rejected)
    s.monitor_subscribers, s.monitor_dropped = a.subscribers, a.subscribers_dropped
    ks = d.keyserver
    if ks is not None:
        if ks.shell is not None:
            s.half_open = ks.shell.engine.half_open
        for g in ks.settings.groups:
            gid = g.group_id
            s.ks_groups.append(gid)
            if ks.store is None:
                continue
            s.ks_members[gid] = ks.store.member_count(gid)
            for t in ks.store.teks(gid):
                if t.state in (KeyState.CURRENT, KeyState.NEXT, KeyState.OLD):
                    s.tek_left[("keyserver", gid, t.state.value, f"0x{t.spi:08x}")] = \
                        t.expires - now
            for k in ks.store.keks(gid):
                if k.state in (KeyState.CURRENT, KeyState.NEXT):
                    s.kek_left[("keyserver", gid, k.spi.hex())] = k.expires - now
    for gid, sess in d.sessions.items():
        e = sess.engine
        s.member_groups.append(gid)
        s.member_registered[gid] = int(sess.state == "registered")
        s.member_registrations[gid] = e.registrations
        s.rekeys_received[gid] = e.rekeys
        for h in e.held:
            if not h.removing:
                s.tek_left[("member", gid, h.role, f"0x{h.spi:08x}")] = h.expires_at - mono
        if e.kek_expires_at is not None and e.kek_spi is not None:
            s.kek_left[("member", gid, e.kek_spi.hex())] = e.kek_expires_at - mono
    inst = d.installer
    if inst is not None and inst.kernel and d.sessions:
        s.reqids = {inst.reqid(gid): gid for gid in d.sessions}
        s.counters_from = inst
    return s


def _on_loop(d: "Daemon") -> Snapshot:
    fut: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(snapshot(d))
        except BaseException as e:  # noqa: BLE001 - handed to the scrape, which answers 500
            fut.set_exception(e)

    d.loop.call_soon_threadsafe(run)
    try:
        return fut.result(SNAPSHOT_TIMEOUT)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"the event loop did not answer within {SNAPSHOT_TIMEOUT:g} s")


def _counter(name: str, doc: str, labels: list[str], values: dict) -> CounterMetricFamily:
    f = CounterMetricFamily(name, doc, labels=labels)
    for key, v in sorted(values.items()):
        key = key if isinstance(key, tuple) else (key,)
        f.add_metric([str(k) for k in key], v)
    return f


def _gauge(name: str, doc: str, labels: list[str], values: dict) -> GaugeMetricFamily:
    f = GaugeMetricFamily(name, doc, labels=labels)
    for key, v in sorted(values.items()):
        key = key if isinstance(key, tuple) else (key,)
        f.add_metric([str(k) for k in key], v)
    return f


class MsecCollector(Collector):
    """Renders a :class:`Snapshot` (taken on the loop at each scrape) as metric families."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    def describe(self) -> Iterable:
        return []  # names are only known at scrape time (groups come and go with reloads)

    def collect(self) -> Iterable:
        s = _on_loop(self.daemon)
        yield _gauge("msec_start_time_seconds", "When msecd started (Unix time).", [],
                     {(): s.start_time})
        # key server
        zero = {g: 0 for g in s.ks_groups}
        yield _counter("msec_keyserver_registrations", "Members that completed GROUPKEY-PULL.",
                       ["group"], {**zero, **s.ks_registrations})
        yield _counter("msec_keyserver_refusals", "GROUPKEY-PULL registrations refused, by "
                       "cause.", ["group", "reason"], s.ks_refusals)
        yield _gauge("msec_keyserver_members", "Members registered in the group.", ["group"],
                     s.ks_members)
        yield _counter("msec_keyserver_rekeys_sent", "Rekeys sent by GROUPKEY-PUSH, by cause "
                       "(operator, policy, rotation, eviction).", ["group", "cause"],
                       s.rekeys_sent)
        yield _counter("msec_keyserver_evictions", "Members evicted.", ["group"],
                       {**zero, **s.evictions})
        yield _counter("msec_keyserver_phase1_failures", "Phase 1 (IKEv1 Main Mode) exchanges "
                       "that failed, by the notification sent or received.", ["reason"],
                       s.phase1_failures)
        if s.half_open is not None:
            yield _gauge("msec_keyserver_phase1_half_open", "Phase 1 exchanges waiting for "
                         "the peer's third message.", [], {(): s.half_open})
        # keys
        yield _gauge("msec_tek_expiry_seconds", "Seconds until the TEK expires (negative: "
                     "past its lifetime, not removed yet).", ["role", "group", "state", "spi"],
                     s.tek_left)
        yield _gauge("msec_kek_expiry_seconds", "Seconds until the KEK (Rekey SA) expires.",
                     ["role", "group", "spi"], s.kek_left)
        # member
        mzero = {g: 0 for g in s.member_groups}
        yield _gauge("msec_member_registered", "1 while the member holds the group's keys "
                     "from a registration.", ["group"], s.member_registered)
        yield _counter("msec_member_registrations", "Registrations (GROUPKEY-PULL) completed.",
                       ["group"], s.member_registrations)
        yield _counter("msec_member_registration_failures", "Registration attempts that "
                       "failed (phase 1 or GROUPKEY-PULL).", ["group"],
                       {**mzero, **s.member_failures})
        yield _counter("msec_member_rekeys_received", "GROUPKEY-PUSH rekeys accepted.",
                       ["group"], s.rekeys_received)
        yield _counter("msec_member_push_rejected", "GROUPKEY-PUSH datagrams dropped, by "
                       "cause (copies of the last PUSH not counted).", ["group", "reason"],
                       s.push_rejected)
        yield _gauge("msec_monitor_subscribers", "msecctl monitor streams open.", [],
                     {(): s.monitor_subscribers})
        yield _counter("msec_monitor_dropped", "msecctl monitor streams dropped for reading "
                       "too slowly.", [], {(): s.monitor_dropped})
        yield from self._sa_counters(s)

    def _sa_counters(self, s: Snapshot) -> Iterable:
        if s.counters_from is None:
            return
        try:
            counters = s.counters_from.read_counters()
        except Exception as e:  # noqa: BLE001 - the other metrics are still worth serving
            log.warning("metrics: cannot read the kernel's SA counters: %s", e)
            return
        labels = ["group", "spi", "dst"]
        fams = {k: CounterMetricFamily(f"msec_sa_{k}", doc, labels=labels) for k, doc in (
            ("bytes", "Bytes through one of msec's kernel SAs (ESP payload, as XFRM counts)."),
            ("packets", "Packets through one of msec's kernel SAs."),
            ("replay_dropped", "Packets the SA's replay check dropped."),
            ("integrity_failed", "Packets that failed the SA's integrity check."))}
        for c in sorted(counters, key=lambda c: (c.reqid, c.spi)):
            gid = s.reqids.get(c.reqid)
            if gid is None:
                continue  # a group no longer configured (its SAs are being removed)
            lv = [str(gid), f"0x{c.spi:08x}", str(c.dst)]
            fams["bytes"].add_metric(lv, c.bytes)
            fams["packets"].add_metric(lv, c.packets)
            fams["replay_dropped"].add_metric(lv, c.replay_dropped)
            fams["integrity_failed"].add_metric(lv, c.integrity_failed)
        yield from fams.values()


class MetricsServer:
    """The HTTP endpoint: prometheus_client's server thread over a registry holding only
    :class:`MsecCollector` (no process or platform collectors: msecd's own numbers)."""

    def __init__(self, daemon: "Daemon", address: Any, port: int) -> None:
        self.daemon = daemon
        self.address, self.port = str(address), port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MsecCollector(daemon))
        self._server = self._thread = None

    def start(self) -> None:
        """Bind and serve (OSError if the address cannot be bound)."""
        self._server, self._thread = start_http_server(self.port, addr=self.address,
                                                       registry=self.registry)
        self.port = self._server.server_address[1]
        log.info("metrics: serving Prometheus metrics on %s", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = self._thread = None
