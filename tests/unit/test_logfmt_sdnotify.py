"""Issue 11: msecd's log formats (gkm.daemon.logfmt) and its sd_notify client
(gkm.daemon.sdnotify) against a real AF_UNIX datagram socket."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from gkm.daemon.logfmt import JournalFormatter, JsonFormatter, stderr_is_journal
from gkm.daemon.sdnotify import Notifier


def _record(name="msecd", level=logging.INFO, msg="group %s: %d member(s)", args=(1001, 3),
            **extra) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    r.__dict__.update(extra)
    return r


def test_journal_lines_carry_the_syslog_priority_and_nothing_the_journal_records():
    f = JournalFormatter()
    assert f.format(_record()) == "<6>group 1001: 3 member(s)"
    assert f.format(_record(level=logging.WARNING)) == "<4>group 1001: 3 member(s)"
    assert f.format(_record(level=logging.ERROR, name="gkm.ike")) == \
        "<3>gkm.ike: group 1001: 3 member(s)"
    assert f.format(_record(level=logging.DEBUG)).startswith("<7>")
    assert f.format(_record(level=logging.CRITICAL)).startswith("<2>")
    # a traceback: every line prefixed, so the journal keeps its priority
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        r = _record(level=logging.ERROR)
        r.exc_info = sys.exc_info()
    lines = f.format(r).splitlines()
    assert len(lines) > 2 and all(x.startswith("<3>") for x in lines)
    assert lines[-1] == "<3>ValueError: boom"


def test_json_lines_have_level_logger_message_fields():
    obj = json.loads(JsonFormatter().format(_record(group=1001, peer="192.0.2.7")))
    assert obj["level"] == "info" and obj["logger"] == "msecd"
    assert obj["message"] == "group 1001: 3 member(s)"
    assert obj["fields"] == {"pid": os.getpid(), "group": 1001, "peer": "192.0.2.7"}
    assert obj["time"].endswith("Z") and "T" in obj["time"]
    assert "exc" not in obj
    try:
        raise KeyError("k")
    except KeyError:
        import sys

        r = _record(level=logging.ERROR)
        r.exc_info = sys.exc_info()
    line = JsonFormatter().format(r)
    assert "\n" not in line and "KeyError" in json.loads(line)["exc"]


def test_stderr_is_journal_compares_device_and_inode(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "wb") as a, open(tmp_path / "other", "wb") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(a.fileno())
        assert not stderr_is_journal(b.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not stderr_is_journal(a.fileno())
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal(a.fileno())


@pytest.fixture
def listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "sv-notify"))
    s.settimeout(5)
    yield s
    s.close()


def test_notifier_sends_datagrams_systemd_reads(listener, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "sv-notify"))
    n = Notifier()
    assert n.enabled
    assert n.ready("key server of 1 group(s)")
    assert listener.recv(4096) == b"READY=1\nSTATUS=key server of 1 group(s)"
    assert not n.status("key server of 1 group(s)")  # unchanged: nothing sent
    assert n.status("two\nlines")
    assert listener.recv(4096) == b"STATUS=two lines"  # one assignment stays one line
    assert n.reloading()
    msg = listener.recv(4096).decode().split("\n")
    assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
    assert n.stopping()
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_abstract_socket_names_and_no_socket(monkeypatch):
    name = f"sv-notify-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        assert Notifier("@" + name).send("READY=1")
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled and not Notifier().ready("x")
    assert not Notifier("vsock:2:1234").enabled
    assert not Notifier("/nonexistent/sv-notify").send("READY=1")  # ignored, no exception
