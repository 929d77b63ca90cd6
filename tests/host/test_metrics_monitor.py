"""Operations, with real msecd processes in a private namespace: the Prometheus endpoint
scraped over HTTP and checked against what happened (a member registers, an unauthorized one
is refused, a wrong-PSK one fails phase 1, ``msecctl rekey``, a forged datagram on the rekey
port), and ``msecctl monitor`` (text and ``--json``) printing the registrations and the rekey
as they happen.  Members run --no-kernel (the host kernel has no ESP): the SA counters are
checked in the kernel tier (tests/kernel/test_sa_metrics.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.host.daemon_proc import MSECCTL, REPO, Msecd
from tests.host.test_daemon_process import _push_signing_key
from tests.unit.daemon_fakes import free_udp_port, write_config

PSK = {"gm1": "11" * 16, "gm2": "22" * 16}


def _free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(host, port: int) -> dict:
    """GET /metrics inside the namespace -> {(name, frozenset(labels)): value}."""
    with host.inside():
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
    with s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"text/plain" in head, head
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for smp in fam.samples:
            out[(smp.name, frozenset(smp.labels.items()))] = smp.value
    return out


def value(m: dict, name: str, **labels):
    return m.get((name, frozenset(labels.items())))


def series(m: dict, name: str) -> dict:
    return {lab: v for (n, lab), v in m.items() if n == name}


class Monitor:
    """``msecctl monitor`` as a process; its lines collected by a thread."""

    def __init__(self, sock, *args: str) -> None:
        self.proc = subprocess.Popen([*MSECCTL, "--socket", str(sock), "monitor", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=str(REPO), stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, pred, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if pred(line):
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no such monitor line; got {self.lines}, "
                             f"stderr {self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _subscribed(netns, port: int, timeout: float = 60.0) -> None:
    """Wait until the daemon counts one monitor stream (msecctl takes a while to start on a
    loaded machine; events before its subscription are not in its stream)."""
    end = time.monotonic() + timeout
    while value(scrape(netns, port), "msec_monitor_subscribers") != 1:
        assert time.monotonic() < end, "msecctl monitor never subscribed"
        time.sleep(0.1)


def _with_metrics(cfg, port: int):
    cfg.write_text(cfg.read_text().replace(
        "[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"\n', 1))
    return cfg


def test_metrics_and_monitor_follow_registrations_refusals_and_rekeys(tmp_path, netns):
    port, rport = free_udp_port(), free_udp_port()
    ks_metrics, gm_metrics = _free_tcp_port(), _free_tcp_port()
    signing = _push_signing_key(tmp_path / "push.pem")
    tek = ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
           'cipher = "aes-gcm-128"\nlifetime = "1h"\n'
           '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
           f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
           'lifetime = "1d"\n')
    ks_cfg = _with_metrics(write_config(tmp_path, ks_port=port, name="ks.toml", tek=tek,
                                        ks_psks=PSK, authorize=("gm1",)), ks_metrics)
    ks = Msecd(ks_cfg, host=netns)
    members = {}
    for ident, psk in (("gm1", PSK["gm1"]), ("gm2", PSK["gm2"]), ("gm3", "33" * 16)):
        d = tmp_path / ident
        d.mkdir()
        cfg = write_config(d, member_port=port, identity=ident, psk=psk)
        if ident == "gm1":
            _with_metrics(cfg, gm_metrics)
        members[ident] = Msecd(cfg, host=netns, args=["--no-kernel"])
    gm1, gm2, gm3 = members.values()
    mon_ks = mon_gm = None
    try:
        ks.start()
        m = scrape(netns, ks_metrics)
        assert value(m, "msec_keyserver_registrations_total", group="1001") == 0
        assert value(m, "msec_keyserver_members", group="1001") == 0
        assert value(m, "msec_keyserver_phase1_half_open") == 0
        mon_ks = Monitor(tmp_path / "run" / "control.sock", "--json")
        _subscribed(netns, ks_metrics)  # before gm1 starts: its registration is in the stream

        gm1.start()
        gm1.wait_log("listening for GROUPKEY-PUSH")
        line = mon_ks.wait(lambda s: '"event": "registered"' in s)
        ev = json.loads(line)
        assert ev["role"] == "keyserver" and ev["group"] == 1001
        assert ev["member"] == "key-id:gm1" and ev["teks"] and ev["at"] > 0
        mon_gm = Monitor(tmp_path / "gm1" / "run" / "control.sock")
        _subscribed(netns, gm_metrics)

        m = scrape(netns, ks_metrics)
        assert value(m, "msec_keyserver_registrations_total", group="1001") == 1
        assert value(m, "msec_keyserver_members", group="1001") == 1
        teks = series(m, "msec_tek_expiry_seconds")
        assert teks and all(3000 < v <= 3600 for v in teks.values()), teks
        (kek,) = series(m, "msec_kek_expiry_seconds").values()
        assert 86_000 < kek <= 86_400

        # refused: gm2 (a valid PSK, not authorized); phase 1 fails: gm3 (a wrong PSK)
        gm2.start()
        gm3.start()
        mon_ks.wait(lambda s: '"event": "refused"' in s and "key-id:gm2" in s)
        mon_ks.wait(lambda s: '"event": "phase1_failed"' in s)
        m = scrape(netns, ks_metrics)
        assert value(m, "msec_keyserver_refusals_total", group="1001",
                     reason="not_authorized") >= 1
        # the key server answers a wrong PSK (HASH_I) with AUTHENTICATION-FAILED
        assert value(m, "msec_keyserver_phase1_failures_total",
                     reason="authentication_failed") >= 1, \
            series(m, "msec_keyserver_phase1_failures_total")
        assert value(m, "msec_keyserver_registrations_total", group="1001") == 1

        # msecctl rekey: counted on both sides, shown by both monitors
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        ev = json.loads(mon_ks.wait(lambda s: '"event": "rekeyed"' in s))
        assert ev["cause"] == "operator" and ev["seq"] == [r["seq"]] and ev["sent_to"]
        text = mon_gm.wait(lambda s: " member group 1001 rekeyed " in s)
        assert f"seq={r['seq']}" in text and all(spi in text for spi in r["teks"])
        gm1.wait_log(") rekeyed: SEQ")
        m = scrape(netns, ks_metrics)
        assert value(m, "msec_keyserver_rekeys_sent_total", group="1001", cause="operator") == 1
        g = scrape(netns, gm_metrics)
        assert value(g, "msec_member_rekeys_received_total", group="1001") == 1
        assert value(g, "msec_member_registered", group="1001") == 1
        assert value(g, "msec_member_registrations_total", group="1001") == 1
        held = series(g, "msec_tek_expiry_seconds")
        assert {dict(lab)["spi"] for lab in held} >= set(r["teks"])
        assert all(0 < v <= 3600 for v in held.values()), held
        (kek,) = series(g, "msec_kek_expiry_seconds").values()
        assert 0 < kek <= 86_400

        # a datagram that is no GROUPKEY-PUSH on the rekey port: dropped, counted, shown
        with netns.inside():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.sendto(b"\x00" * 40, ("127.0.0.1", rport))
        mon_gm.wait(lambda s: " push_rejected " in s and "cause=malformed" in s)
        g = scrape(netns, gm_metrics)
        assert value(g, "msec_member_push_rejected_total", group="1001", reason="malformed") == 1
        assert value(g, "msec_monitor_subscribers") == 1
    finally:
        for mon in (mon_ks, mon_gm):
            if mon is not None:
                mon.stop()
        for d in members.values():
            d.stop()
        ks.stop()
    assert "metrics: serving Prometheus metrics on http://127.0.0.1:" in ks.log()
    for d in (ks, *members.values()):
        assert PSK["gm1"] not in d.log() and PSK["gm2"] not in d.log()
