"""The control socket refuses peers that are not root (SO_PEERCRED), even when file modes
would let them connect. Needs root to act as another uid."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

from gkm.daemon.control import ControlServer
from gkm.daemon.ctl import request


def _ask_as(uid: int, path: str) -> int:
    """Fork a child that drops to `uid`, sends a status request (with msecctl's client) and
    writes the answer to a pipe; returns the pipe's read end."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            # msecctl's own client: the refusal may come before the request is written
            os.write(w, json.dumps(request(path, {"cmd": "status"}, timeout=30)).encode())
        except BaseException as e:  # report, never return into pytest
            os.write(w, repr(e).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    _ask_as.pid = pid
    return r


def test_non_root_peer_refused():
    base = Path(tempfile.mkdtemp(prefix="msecd-ctl-"))  # pytest's tmp is 0700: not for nobody

    async def run():
        path = base / "run" / "control.sock"
        calls = []

        def handler(req):
            calls.append(req)
            return {"ok": True}
        srv = ControlServer(path, handler)
        await srv.start()
        try:
            # open the file modes up: only the peer credential check stands in the way
            os.chmod(base, 0o755)
            os.chmod(path.parent, 0o755)
            os.chmod(path, 0o666)
            rfd = _ask_as(65534, str(path))
            loop = asyncio.get_running_loop()
            data = await asyncio.wait_for(loop.run_in_executor(None, os.read, rfd, 65536), 60)
            os.close(rfd)
            await loop.run_in_executor(None, os.waitpid, _ask_as.pid, 0)
            assert json.loads(data) == {"ok": False, "error": "permission denied"}, data
            assert calls == []
        finally:
            await srv.close()
    try:
        asyncio.run(run())
    finally:
        shutil.rmtree(base, ignore_errors=True)
