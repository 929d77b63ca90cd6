"""The control socket: JSON lines over a Unix stream socket, root only.

Protocol (one request per line, one response line per request, UTF-8 JSON objects)::

    -> {"cmd": "status"}
    <- {"ok": true, "pid": 1234, "roles": ["keyserver", "member"], ...}
    -> {"cmd": "group", "id": 1001}
    <- {"ok": false, "error": "no group 1001"}

Commands: ``status``, ``groups``, ``group`` (``id``), ``members`` (``id``), ``reload``, ``rekey``,
``evict``, ``deny``, ``deny-lift``, and those that change the configuration through drop-in
files (:mod:`.config_edit`): ``group-create`` and ``join`` (``group``: the TOML table as JSON),
``group-delete`` and ``leave`` (``id``), ``group-authorize`` and ``group-deauthorize`` (``id``,
``identities``), ``reload-check`` (optional ``file``).  A refused reload or change answers
``{"ok": false, "error": "...", "problems": ["FILE: KEY: reason", ...]}``.
Responses never carry key material.

Access: the socket's directory is created 0700 and the socket 0600 (umask 077 while binding);
each connection's peer credentials (``SO_PEERCRED``) must be uid 0 or the daemon's own uid,
else the connection is answered ``{"ok": false, "error": "permission denied"}`` and closed.

Bad input never raises out of the server and never logs a traceback: a line longer than
:data:`MAX_LINE` bytes is answered "request too long" and closes the connection; a line that is
not UTF-8, not JSON, nested deeper than :data:`MAX_DEPTH`, or not an object with a ``"cmd"``
string is answered with what is wrong (the connection stays usable); wrong argument types are
the handler's to refuse (:meth:`gkm.daemon.daemon.Daemon.handle_request`).  A connection that
sends no complete line for ``idle_timeout`` seconds (default :data:`IDLE_TIMEOUT`), or does not
read its answers for as long, is closed; at most :data:`MAX_CLIENTS` connections are served at
once (the next ones are answered "too many control connections" and closed).

Subscription (``msecctl monitor``): ``{"cmd": "monitor"}`` is answered ``{"ok": true,
"monitor": true}`` and the connection then carries one JSON object per line for each notice
(:class:`gkm.daemon.activity.Notice`: ``at``, ``event``, ``role``, ``group``, fields) until
the client closes it (anything the client sends ends it too).  Each subscriber has a bounded
queue: one that reads too slowly gets a last ``{"event": "dropped", ...}`` line and is
closed; the daemon never waits for it (a write that cannot drain for ``idle_timeout``
seconds also closes it).
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

__all__ = ["ControlServer", "MAX_LINE", "MAX_DEPTH", "IDLE_TIMEOUT", "MAX_CLIENTS", "encode",
           "peer_uid", "prepare_socket_path", "parse_request"]

MAX_LINE = 64 * 1024
MAX_DEPTH = 16  # the protocol's requests are flat objects with short lists
IDLE_TIMEOUT = 60.0
MAX_CLIENTS = 32
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]
#: ``subscribe() -> subscription`` with ``await get() -> notice`` and ``close()``
#: (:meth:`gkm.daemon.activity.Activity.subscribe`)
Subscribe = Callable[[], Any]


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=str).encode() + b"\n"


def _depth(obj: Any, limit: int) -> bool:
    """True if ``obj`` nests no deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def parse_request(line: bytes) -> dict[str, Any] | str:
    """One request line -> the request object, or why it is refused (a short text)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"request is not UTF-8 (byte {e.start})"
    try:
        req = json.loads(text)
    except RecursionError:
        return f"request is nested too deeply (at most {MAX_DEPTH} levels)"
    except ValueError as e:
        return f"request is not JSON: {e}"
    if not _depth(req, MAX_DEPTH):
        return f"request is nested too deeply (at most {MAX_DEPTH} levels)"
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        return 'request must be an object with a "cmd" string'
    return req


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

    def __init__(self, path: Path | str, handler: Handler, *,
                 idle_timeout: float = IDLE_TIMEOUT, max_clients: int = MAX_CLIENTS,
                 subscribe: Subscribe | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.subscribe = subscribe
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
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
        busy = len(self._clients) >= self.max_clients
        if task is not None and not busy:
            self._clients.add(task)

        async def answer(obj: dict[str, Any]) -> None:
            writer.write(encode(obj))
            await asyncio.wait_for(writer.drain(), self.idle_timeout)

        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else -1
            if uid not in (0, os.geteuid()):
                log.warning("control: refused a connection from uid %d", uid)
                await answer({"ok": False, "error": "permission denied"})
                return
            if busy:
                log.warning("control: refused a connection: %d control connections open",
                            len(self._clients))
                await answer({"ok": False, "error": "too many control connections"})
                return
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
                except (ValueError, asyncio.LimitOverrunError):
                    await answer({"ok": False, "error": f"request too long (at most {MAX_LINE} bytes)"})
                    return
                except asyncio.TimeoutError:
                    log.info("control: closed a connection idle for %.0f s", self.idle_timeout)
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                req = parse_request(line)
                if self.subscribe is not None and isinstance(req, dict) \
                        and req.get("cmd") == "monitor":
                    await self._stream(reader, writer, answer)
                    return
                await answer(await self.dispatch(line))
        except asyncio.TimeoutError:
            log.info("control: closed a connection that did not read its answer for %.0f s",
                     self.idle_timeout)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      answer: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """A monitor subscription: notices as lines until the client closes (or sends
        anything), its queue overflows (a last "dropped" line) or a write stalls."""
        sub = self.subscribe()
        closed = asyncio.ensure_future(reader.read(1))  # EOF (or any input) ends the stream
        try:
            await answer({"ok": True, "monitor": True})
            while True:
                nxt = asyncio.ensure_future(sub.get())
                done, _ = await asyncio.wait({nxt, closed},
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    return
                notice = nxt.result()
                await answer(notice.as_json())
                if notice.event == "dropped":
                    log.warning("control: dropped a monitor subscriber that read too slowly")
                    return
        finally:
            sub.close()
            closed.cancel()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        req = parse_request(line)
        if isinstance(req, str):
            return {"ok": False, "error": req}
        try:
            res = self.handler(req)
            if asyncio.iscoroutine(res):
                res = await res
            return res
        except Exception as e:
            log.exception("control: %s failed", req.get("cmd"))
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}
