"""Issue 11, service: msecd under ``Type=notify`` with a real notify socket.

The test binds the AF_UNIX datagram socket systemd would listen on and hands its path to msecd
in ``$NOTIFY_SOCKET``, as systemd does (PID 1 here is not systemd, so ``systemd-run`` cannot
start a unit).  READY=1 must come only once the control socket answers and the key server's
UDP port is bound; SIGHUP gives RELOADING=1 then READY=1; SIGTERM gives STOPPING=1 before
the exit.  The log formats are checked on the same real process: the journal's ``<N>``
prefixes when stderr is the stream ``$JOURNAL_STREAM`` names, and ``--log-format json``."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from gkm import __version__
from gkm.daemon.ctl import request
from tests.host.daemon_proc import MSECCTL, REPO
from tests.unit.daemon_fakes import write_config

PORT = 18_848


def _notify_socket(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(60)
    return s


def _messages(s: socket.socket) -> dict[str, str]:
    data = s.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n") if line)


def _start(netns, cfg, env, *args, stderr=subprocess.PIPE, foreground=True):
    argv = [sys.executable, "-m", "gkm.daemon", "--config", str(cfg),
            *(["--foreground"] if foreground else []), *args]
    return netns.popen(*argv, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=stderr,
                       env={**{k: v for k, v in os.environ.items()
                               if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")},
                            "PYTHONUNBUFFERED": "1", **env})


def _port_taken(netns) -> bool:
    with netns.inside():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", PORT))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
        finally:
            s.close()
    return False


def test_ready_after_listening_reloading_and_stopping(tmp_path, netns):
    cfg = write_config(tmp_path, ks_port=PORT)
    sock = tmp_path / "sv-notify.sock"
    listener = _notify_socket(sock)
    p = _start(netns, cfg, {"NOTIFY_SOCKET": str(sock)})
    try:
        first = _messages(listener)
        # the first datagram is READY=1, and at that moment msecd already answers on its
        # control socket (no retry) and holds its UDP port
        assert first.get("READY") == "1", first
        st = request(str(tmp_path / "run/control.sock"), {"cmd": "status"}, timeout=10)
        assert st["ok"] and st["roles"] == ["keyserver"] and st["version"]
        assert _port_taken(netns)
        # msecctl status shows the version and the uptime
        text = subprocess.run([*MSECCTL, "--socket", str(tmp_path / "run/control.sock"),
                               "status"], capture_output=True, text=True, timeout=60,
                              cwd=str(REPO)).stdout
        assert re.match(rf"msecd {re.escape(__version__)} running, pid {p.pid}, up \d+s\n",
                        text), text
        assert first["STATUS"] == "key server of 1 group(s) on 127.0.0.1:18848, " \
                                  "0 registration(s)"
        p.send_signal(signal.SIGHUP)
        reloading = _messages(listener)
        assert reloading.get("RELOADING") == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        again = _messages(listener)
        assert again.get("READY") == "1" and again["STATUS"].startswith("key server of 1 group")
        p.send_signal(signal.SIGTERM)
        stopping = _messages(listener)
        assert stopping.get("STOPPING") == "1", stopping
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        listener.close()


def test_a_daemon_that_cannot_start_says_so_and_never_ready(tmp_path, netns):
    cfg = write_config(tmp_path, ks_port=PORT)
    sock = tmp_path / "sv-notify.sock"
    listener = _notify_socket(sock)
    with netns.inside():
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", PORT))
    p = _start(netns, cfg, {"NOTIFY_SOCKET": str(sock)})
    try:
        msg = _messages(listener)
        assert "READY" not in msg and msg["STATUS"].startswith("cannot start"), msg
        assert p.wait(60) == 1
    finally:
        blocker.close()
        listener.close()


def _journal_stream(tmp_path):
    """A file standing in for the journal's stream, and the JOURNAL_STREAM value naming it."""
    f = open(tmp_path / "sv-journal.log", "w+b")
    st = os.fstat(f.fileno())
    return f, f"{st.st_dev}:{st.st_ino}"


def _run_and_stop(netns, cfg, env, stderr, *args) -> None:
    p = _start(netns, cfg, env, *args, stderr=stderr)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                request(str(cfg.parent / "run/control.sock"), {"cmd": "status"}, timeout=5)
                break
            except Exception:
                assert p.poll() is None, "msecd exited"
                time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_journal_stream_gets_priority_prefixes_and_no_timestamps(tmp_path, netns):
    cfg = write_config(tmp_path, ks_port=PORT)
    f, stream = _journal_stream(tmp_path)
    with f:
        _run_and_stop(netns, cfg, {"JOURNAL_STREAM": stream}, f)
        lines = (tmp_path / "sv-journal.log").read_text().splitlines()
    assert lines and all(line.startswith(("<6>", "<4>", "<3>", "<7>")) for line in lines), lines
    started = [x for x in lines if "msecd started" in x]
    assert started and started[0].startswith("<6>msecd started (pid ")
    assert "SIGTERM: shutting down" in "\n".join(lines)
    assert not any(x[3:7].isdigit() and x[7] == "-" for x in lines)  # no date in front
    # JOURNAL_STREAM naming another file (stderr redirected elsewhere): ordinary text lines
    with open(tmp_path / "sv-plain.log", "w+b") as plain:
        _run_and_stop(netns, cfg, {"JOURNAL_STREAM": stream}, plain)
        text = (tmp_path / "sv-plain.log").read_text()
    assert " msecd[" in text and " INFO msecd started" in text and "<6>" not in text


def test_log_format_json_one_object_per_line(tmp_path, netns):
    cfg = write_config(tmp_path, ks_port=PORT)
    with open(tmp_path / "sv-json.log", "w+b") as f:
        _run_and_stop(netns, cfg, {}, f, "--log-format", "json")
        lines = (tmp_path / "sv-json.log").read_text().splitlines()
    objs = [json.loads(x) for x in lines]
    assert objs and all(set(o) >= {"time", "level", "logger", "message", "fields"} for o in objs)
    started = next(o for o in objs if o["message"].startswith("msecd started"))
    assert started["level"] == "info" and started["logger"] == "msecd"
    assert started["fields"]["pid"] > 1 and started["time"].endswith("Z")
    assert any(o["message"] == "SIGTERM: shutting down" for o in objs)


def test_notify_socket_implies_foreground(tmp_path, netns):
    """A unit that forgets --foreground still works: msecd does not detach under Type=notify
    (the READY=1 comes from the process systemd started)."""
    cfg = write_config(tmp_path, ks_port=PORT)
    listener = _notify_socket(tmp_path / "sv-notify.sock")
    p = _start(netns, cfg, {"NOTIFY_SOCKET": str(tmp_path / "sv-notify.sock")},
               foreground=False)
    try:
        assert _messages(listener).get("READY") == "1"
        st = request(str(tmp_path / "run/control.sock"), {"cmd": "status"}, timeout=10)
        assert st["pid"] == p.pid and p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert _messages(listener).get("STOPPING") == "1"
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        listener.close()
