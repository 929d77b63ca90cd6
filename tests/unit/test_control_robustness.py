"""Issue 12: malformed control requests against the real control server of a real Daemon
(fake engines): every one gets a clean error reply, the connection stays usable where the line
was complete, nothing logs a traceback; idle connections are closed; connections are bounded."""

from __future__ import annotations

import asyncio
import json
import logging

from gkm.daemon.control import MAX_LINE, ControlServer
from gkm.daemon.daemon import Daemon
from policy.config import load_config
from tests.unit.daemon_fakes import FakeFactory, free_udp_port, write_config

BAD = [
    b"[" * 60000,                                    # deep list, under MAX_LINE
    b'{"a":' * 12000,                                # deep object
    b'{"cmd": "status", "x": ' + b"[" * 20 + b"]" * 20 + b"}",  # valid JSON, too deep
    b"\xff\xfe{\"cmd\": \"status\"}",                  # not UTF-8
    b'{"cmd": "status\xc3"}',                        # truncated UTF-8 sequence
    b"42", b'"status"', b"null", b"[]", b"true", b"{}",
    b'{"cmd": 5}', b'{"cmd": null}', b'{"cmd": ["status"]}',
    b'{"cmd": "' + b"x" * 30000 + b'"}',
    b'{"cmd": "group"}', b'{"cmd": "group", "id": "x"}', b'{"cmd": "group", "id": 1.5}',
    b'{"cmd": "group", "id": true}', b'{"cmd": "group", "id": [1001]}',
    b'{"cmd": "group", "id": {"a": 1}}', b'{"cmd": "group", "id": NaN}',
    b'{"cmd": "group", "id": -1}', b'{"cmd": "group", "id": 1e400}',
    b'{"cmd": "group", "id": 1' + b"0" * 5000 + b'}',  # more digits than Python converts
    b'{"cmd": "members", "id": 99999999999999999999999}',
    b'{"cmd": "evict", "id": 1001, "identities": "gm1"}',
    b'{"cmd": "evict", "id": 1001, "identities": [1, 2]}',
    b'{"cmd": "evict", "id": 1001, "identities": [""]}',
    b'{"cmd": "evict", "id": 1001, "identities": ["a\\u0000b"]}',
    b'{"cmd": "evict", "id": 1001, "identities": ["gm1"], "reason": 5}',
    b'{"cmd": "evict", "id": 1001, "identities": ["gm1"], "reason": ""}',
    b'{"cmd": "deny-lift", "id": 1001, "identities": {"gm1": 1}}',
    b'{"cmd": "deny-lift", "id": 1001}',
    b'{"cmd": "\\ud800"}',                          # lone surrogate
]


def test_malformed_requests_get_clean_errors_and_no_traceback(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        d = Daemon(cfg, load_config(cfg), factory=FakeFactory(), backoff=(0.01, 0.05), jitter=False)
        await d.start()
        try:
            r, w = await asyncio.open_unix_connection(str(tmp_path / "run" / "control.sock"),
                                                      limit=1 << 20)
            for line in BAD:
                w.write(line + b"\n")
                await w.drain()
                ans = json.loads(await r.readline())
                assert ans["ok"] is False and isinstance(ans["error"], str), (line[:60], ans)
                assert len(ans["error"]) < 300, ans
                w.write(b'{"cmd": "status"}\n')  # still usable
                await w.drain()
                assert json.loads(await r.readline())["ok"] is True
            # a line longer than MAX_LINE: refused, connection closed
            w.write(b"[" * (MAX_LINE + 10) + b"\n")
            await w.drain()
            assert json.loads(await r.readline())["error"].startswith("request too long")
            assert await r.read() == b""
            w.close()
        finally:
            await d.stop()

    asyncio.run(asyncio.wait_for(run(), 120))
    tracebacks = [rec for rec in caplog.records if rec.exc_info or "Traceback" in rec.getMessage()]
    assert tracebacks == [], [rec.getMessage() for rec in tracebacks]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


def test_idle_connections_are_closed_and_connections_bounded(tmp_path):
    async def run():
        path = tmp_path / "ctl.sock"
        srv = ControlServer(path, lambda req: {"ok": True}, idle_timeout=0.3, max_clients=2)
        await srv.start()
        try:
            r1, w1 = await asyncio.open_unix_connection(str(path))  # says nothing
            r2, w2 = await asyncio.open_unix_connection(str(path))
            w2.write(b'{"cmd": "sta')  # half a line, then nothing
            await w2.drain()
            await asyncio.sleep(0)
            r3, w3 = await asyncio.open_unix_connection(str(path))
            assert json.loads(await r3.readline()) == {"ok": False,
                                                       "error": "too many control connections"}
            assert await r1.read() == b"" and await r2.read() == b""  # closed by the server
            r4, w4 = await asyncio.open_unix_connection(str(path))  # room again
            w4.write(b'{"cmd": "status"}\n')
            await w4.drain()
            assert json.loads(await r4.readline()) == {"ok": True}
            for w in (w1, w2, w3, w4):
                w.close()
        finally:
            await srv.close()

    asyncio.run(asyncio.wait_for(run(), 60))
