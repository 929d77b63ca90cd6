"""The control socket: JSON lines over a Unix stream socket, root only.

Protocol (one request per line, one response line per request, UTF-8 JSON objects)::

    -> {"cmd": "status"}
    <- {"ok": true, "pid": 1234, "roles": ["keyserver", "member"], ...}
    -> {"cmd": "group", "id": 1001}
    <- {"ok": false, "error": "no group 1001"}

Commands: ``status``, ``groups``, ``group`` (``id``), ``members`` (``id``), ``reload``.  A refused
reload answers ``{"ok": false, "error": "...", "problems": ["FILE: KEY: reason", ...]}``.
Responses never carry key material.

Access: the socket's directory is created 0700 and the socket 0600 (umask 077 while binding);
each connection's peer credentials (``SO_PEERCRED``) must be uid 0 or the daemon's own uid,
else the connection is answered ``{"ok": false, "error": "permission denied"}`` and closed.
A line longer than :data:`MAX_LINE` bytes closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("msecd")

__all__ = ["ControlServer", "MAX_LINE", "encode", "peer_uid", "prepare_socket_path"]

MAX_LINE = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=str).encode() + b"\n"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory 0700 (tighten an existing one we own); remove a stale
    socket left by a daemon that died; refuse if another daemon answers on it."""
    d = path.parent
    if not d.exists():
        d.mkdir(mode=0o700, parents=True)
    st = d.stat()
    if st.st_uid != os.geteuid():
        raise OSError(f"control socket directory {d} is not owned by uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(d, 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale
        else:
            raise OSError(f"another msecd is listening on {path}")
        finally:
            probe.close()


class ControlServer:
    """Serves the control protocol; ``handler(request) -> response`` does the work."""

    def __init__(self, path: Path | str, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        prepare_socket_path(self.path)
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is None:
            return  # never bound: the path may be another daemon's socket
        self._server.close()
        for t in list(self._clients):
            t.cancel()
        try:
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        except Exception:
            pass
        self._server = None
        try:
            if self.path.exists() and stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else -1
            if uid not in (0, os.geteuid()):
                log.warning("control: refused a connection from uid %d", uid)
                writer.write(encode({"ok": False, "error": "permission denied"}))
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode({"ok": False, "error": "request too long"}))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                writer.write(encode(await self.dispatch(line)))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object with a "cmd" string'}
        try:
            res = self.handler(req)
            if asyncio.iscoroutine(res):
                res = await res
            return res
        except Exception as e:
            log.exception("control: %s failed", req.get("cmd"))
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}
