"""Open a socket inside a network namespace without moving the caller.

A netlink socket belongs to the namespace it was created in, for its whole life. So the
binding creates its sockets in a short-lived helper thread that enters the target namespace
with ``setns(2)`` (namespaces are per thread on Linux), creates the socket, switches back
and exits. The calling thread and the rest of the process never change namespace.

A namespace is named like ``ip netns`` does (``"blue"`` -> ``/var/run/netns/blue``), given
as a path (``"/proc/1234/ns/net"``) or as an open file descriptor (``int``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, TypeVar

from .errors import InvalidArgument

__all__ = ["NetnsSpec", "netns_path", "run_in_netns"]

NetnsSpec = str | int | None
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    if not name:
        raise InvalidArgument("netns", "empty name")
    if "/" in name:
        return name
    return os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns(netns: NetnsSpec, fn: Callable[[], T]) -> T:
    """Call ``fn`` with the calling thread's view switched to ``netns``; return its result.

    ``None`` means the current namespace (``fn`` runs directly).
    """
    if netns is None:
        return fn()
    if isinstance(netns, bool) or not isinstance(netns, (str, int)):
        raise InvalidArgument("netns", f"must be a name, a path or an fd, got {netns!r}")
    if isinstance(netns, str):
        try:
            target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidArgument("netns", f"no network namespace {netns!r}") from None
        own = True
    else:
        target, own = netns, False
    box: dict[str, object] = {}

    def helper() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                box["result"] = fn()
            finally:
                _setns(home)  # the thread exits anyway; restore to be tidy
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            os.close(home)

    try:
        thread = threading.Thread(target=helper, name="xfrm-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
        if own:
            os.close(target)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
