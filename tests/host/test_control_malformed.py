"""Issue 12 with a real msecd: malformed control requests (deep nesting, invalid UTF-8,
non-objects, wrong types, a huge line) get clean error replies; no traceback in the log."""

from __future__ import annotations

import json
import socket

from tests.host.daemon_proc import Msecd
from tests.unit.daemon_fakes import free_udp_port, write_config


def test_malformed_control_requests_real_msecd(tmp_path, netns):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, name="ks.toml")
    d = Msecd(cfg, host=netns)
    try:
        d.start()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(tmp_path / "run" / "control.sock"))
        f = s.makefile("rwb")
        for line in (b"[" * 60000, b'{"a":' * 12000, b"\xff{}", b"[1, 2]", b'{"cmd": 1}',
                     b'{"cmd": "members", "id": {"x": []}}', b'{"cmd": "evict", "id": 1001, "identities": 7}'):
            f.write(line + b"\n")
            f.flush()
            ans = json.loads(f.readline())
            assert ans["ok"] is False and ans["error"], (line[:40], ans)
        f.write(b"x" * 70000 + b"\n")
        f.flush()
        assert json.loads(f.readline())["error"].startswith("request too long")
        s.close()
        assert d.ctl_json("status")["ok"]
        log = d.log()
        assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        d.stop()
