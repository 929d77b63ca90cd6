"""msecd's core: one configuration, any mix of roles, asyncio around the sans-I/O engines.

* Key server role: one engine (phase 1 responder + GROUPKEY-PULL responder, all groups) behind
  one UDP socket per ``keyserver.listen`` address; its state lives in
  ``gkm.store.KeyStore(<state_dir>)``, so a restart keeps the groups' keys.
* Member role: one :class:`MemberSession` per ``[[member.group]]``: a registration engine
  towards the first key server, the next one after a failure, with exponential backoff
  between rounds; TEKs go to the kernel through the SA installer (``xfrm.groupsa``), and
  registration is repeated before the TEKs expire.  With a KEK (Rekey SA), a member also
  listens for GROUPKEY-PUSH on the KEK's rekey port (joined to the rekey group if multicast)
  and installs the TEKs a verified PUSH brings.
* ``msecctl rekey ID`` (key server): new TEKs, SEQ, one GROUPKEY-PUSH to the rekey address
  and, unicast, to each registered member (``KeyServerRole.rekey``).
* On start, SAs msec left in the kernel are adopted, not removed; on SIGTERM/SIGINT they stay
  (traffic keeps flowing across a restart); a group dropped from the configuration by a reload
  has its SAs removed.
* Reload (SIGHUP, ``msecctl reload``): the new file is validated completely first; a refused
  file changes nothing and the problems are logged and returned.

Logging: one line per registration, refusal and SA change; never key material (the events'
and policies' reprs are redacted, and only SPIs, names and lifetimes are logged here).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable

from policy import model as pm
from policy.config import ConfigError, advisories, diff, load_config

from .adapter import EngineShell, UdpEndpoint
from .control import ControlServer
from .engines import EngineFactory, EngineUnavailable

log = logging.getLogger("msecd")

__all__ = ["Daemon", "MemberSession", "StartupError", "tek_summary"]


class StartupError(Exception):
    """The daemon cannot start (state dir locked, port in use, ...)."""


def _ev(ev: Any) -> str:
    return type(ev).__name__


def _fmt_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


def _host_of(address: str) -> str | None:
    """A member's stored address ("a.b.c.d", "a.b.c.d:port", "[v6]:port", "v6") -> host."""
    import ipaddress

    a = str(address).strip()
    for cand in (a, a.rsplit(":", 1)[0].strip("[]")):
        try:
            return str(ipaddress.ip_address(cand))
        except ValueError:
            continue
    return None


def _send_push(data: bytes, host: str, port: int) -> None:
    """One GROUPKEY-PUSH datagram (multicast TTL: the system default, 1)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.sendto(data, (host, port))


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return v
    if isinstance(getattr(v, "value", None), str):
        return v.value
    return getattr(v, "name", None) or str(v)


def tek_summary(t: Any) -> dict[str, Any]:
    """What may be shown about a TEK: SPI, name, selector, suite, lifetime. Never keys."""
    out: dict[str, Any] = {}
    spi = getattr(t, "spi", None)
    if isinstance(spi, (bytes, bytearray)):
        spi = int.from_bytes(spi, "big")
    if isinstance(spi, int):
        out["spi"] = f"0x{spi:08x}"
    for attr in ("name", "suite", "algorithm", "cipher", "mode", "direction", "state"):
        v = getattr(t, attr, None)
        if v is not None:
            out[attr] = _plain(v)
    policy = getattr(t, "policy", None)
    sel = getattr(t, "selector", None) or getattr(policy, "selector", None) or t
    for attr in ("src", "dst"):
        v = getattr(sel, attr, None)
        if v is not None:
            out[attr] = str(v)
    for attr in ("lifetime_s", "lifetime"):
        v = getattr(t, attr, None)
        if v is None:
            v = getattr(policy, attr, None)
        if isinstance(v, (int, float)):
            out["lifetime_s"] = v
            break
    for attr in ("expires_at", "expires"):
        v = getattr(t, attr, None)
        if isinstance(v, (int, float)):
            out["expires_at"] = v
            break
    return out


def _tek_expiry(t: Any, registered_at: float) -> float | None:
    s = tek_summary(t)
    if "expires_at" in s:
        return float(s["expires_at"])
    if "lifetime_s" in s:
        return registered_at + float(s["lifetime_s"])
    return None


# --------------------------------------------------------------------------- member role


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
        kek = getattr(ev, "kek", None)
        make = getattr(self.daemon.factory, "push_receiver", None)
        if kek is None or make is None:
            return
        try:
            receiver = make(self.group, ev)
        except Exception as e:
            log.warning("group %s: cannot receive GROUPKEY-PUSH: %s", self.label, e)
            return
        self.last_seq = getattr(ev, "seq", None)
        dst = getattr(kek.dst, "network_address", kek.dst)
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
                 _fmt_addr((str(addr), port)))

    def _on_push_event(self, ev: Any) -> None:
        name = _ev(ev)
        if name == "Rekeyed":
            teks = tuple(ev.teks)
            self.last_seq = ev.seq
            self.rekeys += 1
            self.teks = [tek_summary(t) for t in teks]
            spis = ", ".join(t.get("spi", "?") for t in self.teks) or "none"
            log.info("group %s rekeyed: SEQ %d, new TEK SPIs %s", self.label, ev.seq, spis)
            try:
                self.daemon.install(self.group_id, teks, self.label)
            except Exception as e:
                self.last_error = f"SA installation failed: {e}"
        elif name == "PushRejected":
            log.warning("group %s: GROUPKEY-PUSH rejected: %s", self.label,
                        getattr(ev, "reason", "?"))
        else:  # TeksDeleted, KekDeleted, Evicted: not acted on yet (re-registration covers)
            log.info("group %s: GROUPKEY-PUSH: %s (not acted on)", self.label, name)

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

    def _on_event(self, ev: Any) -> None:
        name = _ev(ev)
        if name == "Registered":
            self._registered(ev)
        elif name == "RegistrationFailed":
            self._failed(str(getattr(ev, "reason", "registration failed")))
        else:
            log.debug("group %s: %s", self.label, name)

    def _registered(self, ev: Any) -> None:
        now = self.daemon.clock()
        teks = tuple(getattr(ev, "teks", ()))
        self.registrations += 1
        self.failures = 0
        self.registered_at = now
        self.teks = [tek_summary(t) for t in teks]
        spis = ", ".join(t.get("spi", "?") for t in self.teks) or "none"
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
        expiries = [x for x in (_tek_expiry(t, now) for t in teks) if x is not None]
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


# --------------------------------------------------------------------------- key server role


class KeyServerRole:
    def __init__(self, daemon: "Daemon", settings: pm.KeyServerSettings) -> None:
        self.daemon = daemon
        self.settings = settings
        self.store = None
        self.shell: EngineShell | None = None
        self.listen: list[str] = []
        self.registrations = 0
        self.refusals = 0
        self.phase1_failures = 0

    async def start(self) -> None:
        from gkm.store import KeyStore, StoreError

        if self.store is None:
            try:
                self.store = KeyStore(self.daemon.config.daemon.state_dir)
            except StoreError as e:
                raise StartupError(f"key server state: {e}") from None
        await self._start_engine()

    async def _start_engine(self) -> None:
        engine = self.daemon.factory.keyserver(self.settings, self.store, self.daemon.clock())
        shell = EngineShell(engine, name="keyserver", on_event=self._on_event,
                            loop=self.daemon.loop, clock=self.daemon.clock)
        bound = []
        errors = []
        for a in self.settings.listen:
            fam = socket.AF_INET6 if a.version == 6 else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((str(a), self.settings.port))
                await self.daemon.loop.create_datagram_endpoint(lambda: UdpEndpoint(shell),
                                                                sock=s)
                bound.append(_fmt_addr((str(a), self.settings.port)))
            except OSError as e:
                s.close()
                errors.append(f"{_fmt_addr((str(a), self.settings.port))}: {e.strerror or e}")
        if not bound:
            shell.close()
            raise StartupError("key server: cannot listen: " + "; ".join(errors))
        for e in errors:
            log.warning("key server: not listening on %s", e)
        self.shell = shell
        self.listen = bound
        log.info("key server: listening on %s for group(s) %s", ", ".join(bound),
                 ", ".join(g.label for g in self.settings.groups) or "none")
        shell.kick()

    async def reconfigure(self, settings: pm.KeyServerSettings, groups_only: bool) -> None:
        """A reload changed the key server role.  Only the groups: the running engine takes the
        new policies (exchanges under way keep theirs).  Otherwise (PSKs, certificate,
        listen addresses): a new engine and sockets; keys stay in the store."""
        update = getattr(self.daemon.factory, "update_keyserver_groups", None)
        if groups_only and self.shell is not None and update is not None \
                and update(self.shell.engine, settings.groups):
            self.settings = settings
            return
        old_shell = self.shell
        if old_shell is not None:
            old_shell.close()
            self.shell = None
            await asyncio.sleep(0)  # let the transports release their ports
        self.settings = settings
        await self._start_engine()

    def _on_event(self, ev: Any) -> None:
        name = _ev(ev)
        gid = getattr(ev, "group_id", None)
        g = self.settings.group(gid) if isinstance(gid, int) else None
        label = g.label if g is not None else gid
        who = getattr(ev, "identity", None) or getattr(ev, "peer_id", None) or "?"
        addr = _fmt_addr(getattr(ev, "addr", None) or getattr(ev, "peer_addr", None) or "?")
        if name == "MemberRegistered":
            self.registrations += 1
            spis = getattr(ev, "tek_spis", None) or [
                int(tek_summary(t).get("spi", "0"), 16) for t in getattr(ev, "teks", None) or ()]
            spis = (" (TEK SPI " + ", ".join(f"0x{x:08x}" for x in spis) + ")") if spis else ""
            log.info("group %s: member %s (%s) registered%s", label, who, addr, spis)
        elif name == "MemberRefused":
            self.refusals += 1
            log.warning("group %s: member %s (%s) refused: %s", label, who, addr,
                        getattr(ev, "reason", "not authorized"))
        elif name == "Phase1Failed":
            self.phase1_failures += 1
            log.warning("key server: phase 1 with %s failed: %s", addr,
                        getattr(ev, "reason", "?"))
        else:
            log.debug("key server: %s from %s", name, addr)

    def group_info(self, g: pm.GroupPolicy) -> dict[str, Any]:
        info: dict[str, Any] = {"id": g.group_id, "name": g.name, "role": "keyserver",
                                "state": "serving" if self.shell else "stopped"}
        teks_cfg = [{"name": t.name, "src": str(t.selector.src), "dst": str(t.selector.dst),
                     "cipher": t.suite.name, "mode": t.mode.value if hasattr(t.mode, "value")
                     else str(t.mode), "lifetime_s": t.lifetime_s} for t in g.teks]
        info["policy"] = {"teks": teks_cfg, "kek": g.kek is not None}
        if self.store is not None:
            info["members"] = self.store.member_count(g.group_id)
            info["teks"] = [{"spi": f"0x{t.spi:08x}", "algorithm": t.algorithm,
                             "state": t.state.value, "created": t.created,
                             "expires": t.expires} for t in self.store.teks(g.group_id)]
        return info

    def rekey(self, g: pm.GroupPolicy) -> dict[str, Any]:
        """``msecctl rekey``: new TEKs, a GROUPKEY-PUSH to the KEK's rekey address and, unicast,
        to every registered member's address (at the rekey port: helps where multicast does
        not reach, e.g. loopback tests)."""
        from gkm.store import StoreError

        from .engines import RekeyError

        make = getattr(self.daemon.factory, "rekey", None)
        if make is None or self.store is None:
            return {"ok": False, "error": "rekey is not available in this daemon"}
        try:
            plan = make(g, self.store, self.daemon.clock())
        except (RekeyError, StoreError, ValueError) as e:
            log.warning("group %s: rekey refused: %s", g.label, e)
            return {"ok": False, "error": str(e)}
        port = g.kek.rekey_port
        dests = [(str(g.kek.rekey_address), port)]
        for m in self.store.members(g.group_id):
            host = _host_of(m.address)
            if host and (host, port) not in dests:
                dests.append((host, port))
        sent, failed = [], []
        for host, p in dests:
            try:
                _send_push(plan.datagram, host, p)
                sent.append(_fmt_addr((host, p)))
            except OSError as e:
                failed.append(f"{_fmt_addr((host, p))}: {e.strerror or e}")
        spis = [f"0x{x:08x}" for x in plan.spis]
        log.info("group %s: rekeyed: SEQ %d, new TEK SPI %s; GROUPKEY-PUSH sent to %s",
                 g.label, plan.seq, ", ".join(spis) or "none", ", ".join(sent) or "nobody")
        for f in failed:
            log.warning("group %s: GROUPKEY-PUSH not sent to %s", g.label, f)
        return {"ok": True, "id": g.group_id, "seq": plan.seq, "teks": spis, "sent_to": sent,
                "failed": failed}

    def members(self, group_id: int) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return [{"identity": m.identity, "address": m.address,
                 "registered_at": m.registered_at} for m in self.store.members(group_id)]

    def close(self) -> None:
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        if self.store is not None:
            self.store.close()
            self.store = None


# --------------------------------------------------------------------------- the daemon


class Daemon:
    def __init__(
        self,
        config_path: Path | str,
        config: pm.DaemonConfig,
        *,
        factory: EngineFactory,
        clock: Callable[[], float] = time.time,
        control_socket: Path | str | None = None,
        backoff: tuple[float, float] = (1.0, 60.0),
        jitter: bool = True,
        reregister_fraction: float = 0.8,
        reregister_min: float = 30.0,
        loader: Callable[[Path], pm.DaemonConfig] = load_config,
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config
        self.factory = factory
        self.clock = clock
        self.control_path = Path(control_socket or config.daemon.control_socket)
        self.backoff = backoff
        self.jitter = jitter
        self.reregister_fraction = reregister_fraction
        self.reregister_min = reregister_min
        self.loader = loader
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.keyserver: KeyServerRole | None = None
        self.sessions: dict[int, MemberSession] = {}
        self.installer = None
        self.control: ControlServer | None = None
        self.started_at: float | None = None
        self.last_reload: dict[str, Any] | None = None
        self._stop: asyncio.Event | None = None
        self._adopted: set[int] = set()
        self._reg_locks: dict[tuple, asyncio.Lock] = {}
        self._reload_lock: asyncio.Lock | None = None

    # -- life cycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.started_at = self.clock()
        for a in advisories(self.config):
            log.warning("config: %s", a)
        try:
            if self.config.member is not None and self.config.member.groups:
                self.installer = self.factory.installer()
                self._adopt()
            if self.config.keyserver is not None:
                self.keyserver = KeyServerRole(self, self.config.keyserver)
                await self.keyserver.start()
            self.control = ControlServer(self.control_path, self.handle_request)
            await self.control.start()
        except (EngineUnavailable, OSError) as e:
            await self._teardown()
            raise StartupError(str(e)) from None
        except BaseException:
            await self._teardown()
            raise
        for g in (self.config.member.groups if self.config.member else ()):
            self._add_session(g)
        log.info("msecd started (pid %d): %s; control socket %s", os.getpid(),
                 ", ".join(self.roles) or "no roles", self.control_path)

    def registration_lock(self, key_server: tuple[str, int], credentials: Any) -> asyncio.Lock:
        ident = getattr(credentials, "identity", None) or str(getattr(credentials, "cert_file", ""))
        return self._reg_locks.setdefault((key_server, ident), asyncio.Lock())

    @property
    def roles(self) -> list[str]:
        r = []
        if self.config.keyserver is not None:
            r.append("keyserver")
        if self.config.member is not None and self.config.member.groups:
            r.append("member")
        return r

    def _adopt(self) -> None:
        configured = {g.group_id for g in self.config.member.groups}
        try:
            adopted = self.installer.adopt(sorted(configured))
        except Exception as e:
            log.warning("cannot look for SAs left by an earlier msecd: %s", e)
            return
        groups = set(adopted)
        for gid in sorted(groups):
            if gid in configured:
                spis = ", ".join(f"0x{x:08x}" for x in adopted[gid])
                log.info("group %s: adopted the SAs an earlier msecd left in the kernel "
                         "(SPI %s)", gid, spis)
            else:
                log.info("group %s: not configured any more: removing its SAs", gid)
                self._remove_sas(gid)
        self._adopted = set(groups) & configured

    def _add_session(self, g: pm.MemberGroup) -> None:
        s = MemberSession(self, g)
        s.adopted = g.group_id in self._adopted
        self.sessions[g.group_id] = s
        s.start()

    def request_stop(self, why: str = "") -> None:
        if why:
            log.info("%s: shutting down", why)
        if self._stop is not None:
            self._stop.set()

    async def wait_stopped(self) -> None:
        assert self._stop is not None
        await self._stop.wait()

    async def stop(self) -> None:
        kept = sum(1 for s in self.sessions.values() if s.teks or s.adopted)
        kernel = getattr(self.installer, "kernel", False)
        await self._teardown()
        if kept and kernel:
            log.info("msecd stopped; the SAs of %d member group(s) stay in the kernel: traffic "
                     "keeps flowing across a daemon restart", kept)
        else:
            log.info("msecd stopped")

    async def _teardown(self) -> None:
        for s in self.sessions.values():
            s.stop()
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.keyserver is not None:
            self.keyserver.close()
            self.keyserver = None
        if self.installer is not None:
            try:
                self.installer.close()
            except Exception:
                pass
            self.installer = None

    # -- SAs
    def install(self, group_id: int, teks, label: str) -> None:
        inst = self.installer
        if inst is None:
            return
        try:
            action = inst.install(group_id, teks)
        except Exception as e:
            log.error("group %s: cannot install SAs: %s", label, e)
            raise
        spis = ", ".join(tek_summary(t).get("spi", "?") for t in teks)
        where = "" if getattr(inst, "kernel", True) else " (kernel installation off)"
        if action == "unchanged":
            log.info("group %s: SAs unchanged (SPI %s)%s", label, spis, where)
        else:
            log.info("group %s: %s %d SA(s) (SPI %s)%s", label, action, len(teks), spis, where)

    def _remove_sas(self, group_id: int) -> None:
        if self.installer is None:
            return
        try:
            self.installer.remove(group_id)
            log.info("group %s: removed its SAs", group_id)
        except Exception as e:
            log.error("group %s: cannot remove SAs: %s", group_id, e)

    # -- reload
    async def reload(self) -> dict[str, Any]:
        assert self._reload_lock is not None
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> dict[str, Any]:
        log.info("reloading %s", self.config_path)
        try:
            new = self.loader(self.config_path)
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
            log.error("reload refused, keeping the running configuration; %d problem(s):",
                      len(problems))
            for p in problems:
                log.error("  %s", p)
            self.last_reload = {"at": self.clock(), "ok": False, "problems": problems}
            return {"ok": False, "error": "configuration refused; the running configuration "
                    "is unchanged", "problems": problems}
        d = diff(self.config, new)
        changes: list[str] = []
        if d.empty:
            self.last_reload = {"at": self.clock(), "ok": True, "changes": []}
            log.info("reload: no changes")
            return {"ok": True, "changes": []}
        restart_needed = [s for s in d.settings_changed if s.startswith("daemon.")]
        for s in restart_needed:
            log.warning("reload: %s changed; it takes effect at the next restart", s)
        old = self.config
        # key server role
        try:
            if new.keyserver is None and self.keyserver is not None:
                self.keyserver.close()
                self.keyserver = None
                changes.append("keyserver stopped")
            elif new.keyserver is not None and self.keyserver is None:
                role = KeyServerRole(self, new.keyserver)
                await role.start()
                self.keyserver = role
                changes.append("keyserver started")
            elif new.keyserver is not None and (
                    d.keyserver_added or d.keyserver_removed or d.keyserver_changed
                    or any(s.startswith("keyserver.") for s in d.settings_changed)):
                await self.keyserver.reconfigure(
                    new.keyserver,
                    groups_only=not any(s.startswith("keyserver.") for s in d.settings_changed))
                changes.append("keyserver reconfigured")
        except (StartupError, EngineUnavailable, OSError) as e:
            log.error("reload: key server role failed: %s", e)
            changes.append(f"keyserver failed: {e}")
        for gid in d.keyserver_added:
            changes.append(f"keyserver group {gid} added")
        for gid in d.keyserver_removed:
            changes.append(f"keyserver group {gid} removed")
        for c in d.keyserver_changed:
            changes.append(f"keyserver group {c.group_id} changed ({', '.join(c.fields)})")
        # member role
        self.config = new
        new_groups = {g.group_id: g for g in (new.member.groups if new.member else ())}
        if new_groups and self.installer is None:
            try:
                self.installer = self.factory.installer()
            except (EngineUnavailable, OSError) as e:
                log.error("reload: cannot open the SA installer: %s", e)
                changes.append(f"member SA installation unavailable: {e}")
        for gid in d.member_removed:
            s = self.sessions.pop(gid, None)
            if s is not None:
                s.stop()
            self._remove_sas(gid)
            changes.append(f"member group {gid} removed")
        for gid in d.member_added:
            self._add_session(new_groups[gid])
            changes.append(f"member group {gid} added")
        for c in d.member_changed:
            s = self.sessions.get(c.group_id)
            if s is None:
                continue
            if c.needs_reregistration:
                s.restart(new_groups[c.group_id])
                changes.append(f"member group {c.group_id}: registering again")
            else:
                s.group = new_groups[c.group_id]
                changes.append(f"member group {c.group_id} changed ({', '.join(c.fields)})")
        del old
        for c in changes:
            log.info("reload: %s", c)
        self.last_reload = {"at": self.clock(), "ok": True, "changes": changes}
        return {"ok": True, "changes": changes, "restart_needed": restart_needed}

    # -- control
    async def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "groups":
            return {"ok": True, "groups": self.groups()}
        if cmd in ("group", "members", "rekey"):
            gid = req.get("id")
            if isinstance(gid, str) and gid.strip().isdigit():
                gid = int(gid)
            if not isinstance(gid, int) or isinstance(gid, bool):
                return {"ok": False, "error": f'"{cmd}" needs "id": a group id'}
            if cmd == "rekey":
                return self.rekey(gid)
            return self.group(gid) if cmd == "group" else self.members(gid)
        if cmd == "reload":
            return await self.reload()
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def status(self) -> dict[str, Any]:
        now = self.clock()
        out: dict[str, Any] = {
            "ok": True, "pid": os.getpid(), "config": str(self.config_path),
            "control_socket": str(self.control_path), "roles": self.roles,
            "started_at": self.started_at,
            "uptime_s": round(now - self.started_at, 1) if self.started_at else None,
            "last_reload": self.last_reload,
        }
        if self.keyserver is not None:
            out["keyserver"] = {"listen": self.keyserver.listen,
                                "groups": len(self.keyserver.settings.groups),
                                "state_dir": str(self.config.daemon.state_dir),
                                "registrations": self.keyserver.registrations,
                                "refusals": self.keyserver.refusals,
                                "phase1_failures": self.keyserver.phase1_failures}
        if self.sessions:
            out["member"] = {
                "groups": len(self.sessions),
                "registered": sum(1 for s in self.sessions.values() if s.state == "registered"),
                "kernel": bool(getattr(self.installer, "kernel", False)),
            }
        return out

    def groups(self) -> list[dict[str, Any]]:
        out = []
        if self.keyserver is not None:
            for g in self.keyserver.settings.groups:
                info = self.keyserver.group_info(g)
                out.append({k: info.get(k) for k in ("id", "name", "role", "state", "members")})
        for s in self.sessions.values():
            d = s.describe()
            out.append({"id": d["id"], "name": d["name"], "role": "member", "state": d["state"],
                        "key_server": d["key_server"]})
        return sorted(out, key=lambda g: (g["id"], g["role"]))

    def group(self, gid: int) -> dict[str, Any]:
        found = []
        if self.keyserver is not None:
            g = self.keyserver.settings.group(gid)
            if g is not None:
                found.append(self.keyserver.group_info(g))
        s = self.sessions.get(gid)
        if s is not None:
            found.append(s.describe())
        if not found:
            return {"ok": False, "error": f"no group {gid} in the configuration"}
        return {"ok": True, "id": gid, "roles": found}

    def rekey(self, gid: int) -> dict[str, Any]:
        if self.keyserver is None or self.keyserver.settings.group(gid) is None:
            return {"ok": False, "error": f"this daemon is not the key server of group {gid}"}
        return self.keyserver.rekey(self.keyserver.settings.group(gid))

    def members(self, gid: int) -> dict[str, Any]:
        if self.keyserver is None or self.keyserver.settings.group(gid) is None:
            return {"ok": False, "error": f"this daemon is not the key server of group {gid}"}
        return {"ok": True, "id": gid, "members": self.keyserver.members(gid)}
