"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a Unix datagram socket (a path, or an
abstract name written with a leading ``@``).  One datagram carries newline-separated
``KEY=VALUE`` assignments: msecd sends ``READY=1`` once its sockets are listening and the SAs
an earlier msecd left are adopted, ``RELOADING=1`` (with ``MONOTONIC_USEC``) and ``READY=1``
around a reload, ``STOPPING=1`` when it shuts down, and ``STATUS=`` lines (``systemctl status``
shows the latest).  Without ``$NOTIFY_SOCKET`` nothing is sent; a send that fails is ignored
(the service manager may have gone away; msecd keeps serving).
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]
        # only AF_UNIX addresses (systemd also knows vsock: "vsock:CID:PORT", not for msecd)
        self.address = addr if addr and addr[0] in "/\0" else None
        self._status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        if self.address is None:
            return False
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(data, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        self._status = status
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self, status: str = "stopping") -> bool:
        self._status = status
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """A STATUS= line, sent only when it differs from the last one."""
        if status == self._status:
            return False
        self._status = status
        return self.send(f"STATUS={status}")
