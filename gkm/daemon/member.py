"""msecd's member role: one :class:`MemberSession` per ``[[member.group]]``.

A session registers (IKEv1 phase 1 + GROUPKEY-PULL) with the first key server, the next one
after a failure, with exponential backoff between rounds; the TEKs go to the kernel through
the daemon's SA installer (``xfrm.groupsa``), and registration is repeated before the TEKs
expire.  With a KEK (Rekey SA), the member also listens for GROUPKEY-PUSH on the KEK's rekey
port (joined to the rekey group if multicast) and installs the TEKs a verified PUSH brings.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import TYPE_CHECKING, Any

from gkm.events import Event
from gkm.gdoi.events import Registered, RegistrationFailed
from gkm.gdoi.push import Evicted, KekDeleted, PushRejected, Rekeyed, TeksDeleted
from policy import model as pm

from .adapter import EngineShell, UdpEndpoint
from .engines import EngineUnavailable
from .report import fmt_addr, tek_expiry, tek_summary

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("msecd")

__all__ = ["MemberSession"]


class MemberSession:
    """One ``[[member.group]]``: register, install, re-register; backoff on failure."""

    def __init__(self, daemon: "Daemon", group: pm.MemberGroup) -> None:
        self.daemon = daemon
        self.group = group
        self.state = "idle"  # idle, (re-)registering, registered, backoff, stopped
        self.ks_index = 0
        self.failures = 0  # consecutive failed rounds over all key servers
        self.key_server: str | None = None
        self.last_error: str | None = None
        self.registered_at: float | None = None
        self.next_attempt: float | None = None
        self.teks: list[dict[str, Any]] = []
        self.adopted = False
        self.registrations = 0
        self.last_seq: int | None = None  # GROUPKEY-PUSH: SEQ of the registration or last PUSH
        self.rekeys = 0
        self._push: EngineShell | None = None  # the rekey socket's PushReceiver
        self._push_key: tuple | None = None  # (address, port) it is bound/joined to
        self._shell: EngineShell | None = None
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def group_id(self) -> int:
        return self.group.group_id

    @property
    def label(self) -> str:
        return self.group.label

    def start(self) -> None:
        self._schedule(0.0)

    def stop(self) -> None:
        self.state = "stopped"
        self._cancel()
        self._close_shell()
        self._close_push()

    def restart(self, group: pm.MemberGroup) -> None:
        self._cancel()
        self._close_shell()
        self._close_push()
        self.group = group
        self.ks_index = 0
        self.failures = 0
        self._schedule(0.0)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self.next_attempt = None

    def _close_shell(self) -> None:
        if self._shell is not None:
            self._shell.close()
            self._shell = None
        self._release()

    def _close_push(self) -> None:
        if self._push is not None:
            self._push.close()
            self._push = None
            self._push_key = None

    # -- GROUPKEY-PUSH (member side)
    def _start_push(self, ev: Any) -> None:
        """After Registered: a PushReceiver on a socket bound to the KEK's rekey port (joined
        to the rekey group if it is multicast, on the group's interface).  A re-registration
        under the same rekey address keeps the socket and swaps the receiver."""
        kek = ev.kek
        if kek is None:
            return
        try:
            receiver = self.daemon.factory.push_receiver(self.group, ev)
        except Exception as e:
            log.warning("group %s: cannot receive GROUPKEY-PUSH: %s", self.label, e)
            return
        self.last_seq = ev.seq
        dst = kek.dst.network_address
        key = (str(dst), int(kek.dst_port))
        if self._push is not None and self._push_key == key:
            self._push.engine = receiver
            return
        self._close_push()
        shell = EngineShell(receiver, name=f"rekey {self.label}", on_event=self._on_push_event,
                            loop=self.daemon.loop, clock=self.daemon.clock)
        self._push = shell
        self._push_key = key
        self.daemon.loop.create_task(self._open_push_socket(shell, dst, key[1]))

    async def _open_push_socket(self, shell: EngineShell, dst: Any, port: int) -> None:
        import ipaddress

        addr = ipaddress.ip_address(str(dst))
        v6 = addr.version == 6
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::" if v6 else "0.0.0.0", port))
            if addr.is_multicast:
                ifindex = socket.if_nametoindex(self.group.interface) if self.group.interface else 0
                try:
                    if v6:
                        mreq = addr.packed + ifindex.to_bytes(4, "little")
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                    else:  # struct ip_mreqn
                        mreq = addr.packed + bytes(4) + ifindex.to_bytes(4, "little")
                        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                except OSError as e:
                    log.warning("group %s: cannot join rekey group %s: %s (unicast PUSH only)",
                                self.label, addr, e.strerror or e)
            await self.daemon.loop.create_datagram_endpoint(lambda: UdpEndpoint(shell), sock=sock)
        except Exception as e:
            sock.close()
            log.warning("group %s: cannot listen for GROUPKEY-PUSH on port %d: %s",
                        self.label, port, e)
            if self._push is shell:
                self._push = None
                self._push_key = None
            shell.close()
            return
        if self._push is not shell:  # replaced or stopped meanwhile
            shell.close()
            return
        log.info("group %s: listening for GROUPKEY-PUSH on %s", self.label,
                 fmt_addr((str(addr), port)))

    def _on_push_event(self, ev: Event) -> None:
        match ev:
            case Rekeyed():
                teks = tuple(ev.teks)
                self.last_seq = ev.seq
                self.rekeys += 1
                now = self.daemon.clock()
                self.teks = [tek_summary(t, now) for t in teks]
                spis = ", ".join(t["spi"] for t in self.teks) or "none"
                log.info("group %s rekeyed: SEQ %d, new TEK SPIs %s", self.label, ev.seq, spis)
                try:
                    self.daemon.install(self.group_id, teks, self.label)
                except Exception as e:
                    self.last_error = f"SA installation failed: {e}"
            case PushRejected():
                log.warning("group %s: GROUPKEY-PUSH rejected: %s", self.label, ev.reason)
            case TeksDeleted() | KekDeleted() | Evicted():
                # not acted on yet: the next registration covers it
                log.info("group %s: GROUPKEY-PUSH: %s (not acted on)", self.label, ev)
            case _:
                log.debug("group %s: %s", self.label, ev)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _schedule(self, delay: float) -> None:
        if self.state == "stopped":
            return
        loop = self.daemon.loop
        if self._timer is not None:
            self._timer.cancel()
        self.next_attempt = self.daemon.clock() + delay
        self._timer = loop.call_later(delay, self._launch)

    def _launch(self) -> None:
        self._timer = None
        self.next_attempt = None
        self._task = self.daemon.loop.create_task(self._attempt())

    async def _attempt(self) -> None:
        ks = self.group.key_servers[self.ks_index % len(self.group.key_servers)]
        self.key_server = str(ks)
        # with keys from an earlier registration (or adopted SAs) in the kernel, traffic
        # flows meanwhile: this is a refresh
        self.state = "re-registering" if (self.teks or self.adopted) else "registering"
        self._close_shell()
        try:
            infos = await self.daemon.loop.getaddrinfo(ks.host, ks.port, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(f"cannot resolve {ks.host}")
            family, _, _, _, sockaddr = infos[0]
            addr = (sockaddr[0], sockaddr[1])
            # one registration at a time per (key server, our identity): a phase 1 with
            # INITIAL-CONTACT replaces the key server's other SAs of that identity, which
            # would cut a concurrent registration of another group short
            lock = self.daemon.registration_lock(addr, self.group.credentials)
            await lock.acquire()
            self._lock = lock
            if self.state == "stopped":
                self._release()
                return
            engine = self.daemon.factory.member(self.group, addr, self.daemon.clock())
            shell = EngineShell(engine, name=f"member {self.label}", on_event=self._on_event,
                                loop=self.daemon.loop, clock=self.daemon.clock)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if self.group.interface:  # registration leaves through the group's interface
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                    self.group.interface.encode())
                sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
                await self.daemon.loop.create_datagram_endpoint(lambda: UdpEndpoint(shell),
                                                                sock=sock)
            except BaseException:
                sock.close()
                shell.close()
                raise
            if self.state == "stopped":
                shell.close()
                return
            self._shell = shell
            log.info("group %s: registering with key server %s", self.label, ks)
            shell.kick()
        except asyncio.CancelledError:
            self._release()
            raise
        except EngineUnavailable as e:
            self._failed(str(e))
        except Exception as e:  # resolution, socket, engine construction
            self._failed(f"{type(e).__name__}: {e}")

    def _on_event(self, ev: Event) -> None:
        match ev:
            case Registered():
                self._registered(ev)
            case RegistrationFailed():
                self._failed(ev.reason)
            case _:
                log.debug("group %s: %s", self.label, ev)

    def _registered(self, ev: Registered) -> None:
        now = self.daemon.clock()
        teks = tuple(ev.teks)
        self.registrations += 1
        self.failures = 0
        self.registered_at = now
        self.teks = [tek_summary(t, now) for t in teks]
        spis = ", ".join(t["spi"] for t in self.teks) or "none"
        log.info("group %s: registered with key server %s: %d TEK(s) (SPI %s)",
                 self.label, self.key_server, len(teks), spis)
        self._close_shell()
        try:
            self.daemon.install(self.group_id, teks, self.label)
        except Exception as e:
            self.state = "backoff"
            self.last_error = f"SA installation failed: {e}"
            self._schedule(self._backoff())
            return
        self.state = "registered"
        self.last_error = None
        self._start_push(ev)
        expiries = [tek_expiry(t, now) for t in teks]
        if expiries:
            # no TEK rotation at expiry by PUSH yet: pull again well before the first TEK expires
            # (at least reregister_min apart: until the key server rotates its TEKs it hands
            # out the same ones with less and less lifetime left)
            delay = max(self.daemon.reregister_min,
                        (min(expiries) - now) * self.daemon.reregister_fraction)
            self._schedule(delay)

    def _failed(self, reason: str) -> None:
        self._close_shell()
        if self.state == "stopped":
            return
        self.last_error = reason
        log.warning("group %s: registration with %s failed: %s", self.label, self.key_server,
                    reason)
        self.ks_index += 1
        if self.ks_index % len(self.group.key_servers) == 0:
            self.failures += 1  # a whole round failed: back off
            delay = self._backoff()
            self.state = "backoff"
            log.info("group %s: retrying in %.1f s", self.label, delay)
            self._schedule(delay)
        else:
            self._schedule(0.0)

    def _backoff(self) -> float:
        base, cap = self.daemon.backoff
        d = min(cap, base * (2 ** max(0, self.failures - 1)))
        return d * (0.75 + 0.5 * random.random()) if self.daemon.jitter else d

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.group_id, "name": self.group.name, "role": "member", "state": self.state,
            "key_servers": [str(k) for k in self.group.key_servers],
            "key_server": self.key_server, "registered_at": self.registered_at,
            "registrations": self.registrations, "adopted": self.adopted,
            "next_attempt": self.next_attempt, "last_error": self.last_error,
            "teks": self.teks, "last_seq": self.last_seq, "rekeys": self.rekeys,
        }
