"""msecd's member role: the shell around one :class:`gkm.gdoi.member.MemberEngine` per
``[[member.group]]``.

The engine decides (registration, failover, backoff, PUSH, make before break); this shell
only moves bytes, keeps one asyncio timer at the engine's ``get_timer()``, and performs the
engine's actions: the registration socket (resolution, the per key server lock, one UDP
socket), the rekey socket (:class:`RekeySockets`), and the SA changes through the daemon's
installer, answering each one.  The kernel's EXPIRE events (:class:`ExpireWatch`) reach the
engine as inputs.

Restart: the engine asks for its group state to be kept (``SaveState``, before the SA actions
it goes with); this shell writes it under ``<state_dir>/member/`` (:mod:`.member_store`) and,
on start, hands a saved state to ``engine.resume`` instead of registering: the SAs the kernel
kept go on carrying traffic and the next PUSH applies.  A missing, corrupt or stale state is a
log line and a fresh registration.

Rekey sockets are exclusively msecd's: no SO_REUSEADDR/SO_REUSEPORT, so no other local process
can bind the port and take the key server's PUSHes away.  Groups of one daemon that share a
rekey port share one socket (joined to each group's multicast rekey address), and datagrams
go to the group whose current KEK SPI the PUSH header's cookies carry.  A port that cannot be
bound is an error in the log and in ``msecctl group show``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
import time
from typing import TYPE_CHECKING, Any

from gkm.events import MemberEvent
from gkm.gdoi.member import (
    ActivateOutbound, CloseRegistration, HoldRegistration, GroupRekeyed, InstallSas, Joined, LeftGroup,
    ForgetState, ListenForPush, MemberEngine, MemberState, OpenRegistration, OutboundSwitched,
    Phase1Up, PushListenFailed, RegistrationAttemptFailed, RemoveSas, ResyncScheduled,
    SaActionFailed, SasRemoved, SaveState, StateDiscarded, StateRestored, StateSaveFailed,
    StopListening, Timing,
)
from gkm.gdoi.push import PushRejected
from policy import model as pm

from .engines import EngineUnavailable
from .member_store import MemberStateError, MemberStateFiles
from .report import fmt_addr, tek_summary

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("msecd")

__all__ = ["MemberSession", "RekeySockets", "ExpireWatch"]


_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED})
# linux/in.h, linux/in6.h (not in Python's socket module)
_IP_RECVERR, _IPV6_RECVERR = 11, 25


def _spis(spis) -> str:
    return ", ".join(f"0x{s:08x}" for s in spis) or "none"


class _RegistrationEndpoint(asyncio.DatagramProtocol):
    def __init__(self, session: "MemberSession") -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr) -> None:
        self.session._on_registration_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("group %s: registration socket: %s", self.session.label, exc)
        self.session._drain_errors()
        # IP_RECVERR: ICMP errors about what we sent reach this socket; it only ever sends to
        # its key server: none there (port unreachable) or no route/host: fail over now
        if isinstance(exc, ConnectionRefusedError) or (
                isinstance(exc, OSError) and exc.errno in _UNREACHABLE):
            self.session._on_registration_unreachable(exc)


class MemberSession:
    """One ``[[member.group]]``: the engine, its sockets, its timer, its SA actions."""

    def __init__(self, daemon: "Daemon", group: pm.MemberGroup,
                 adopted: frozenset[int] = frozenset()) -> None:
        self.daemon = daemon
        timing = Timing(backoff=daemon.backoff, jitter=daemon.jitter,
                        reregister_fraction=daemon.reregister_fraction,
                        reregister_min=daemon.reregister_min)
        self.engine = MemberEngine(group, new_registration=self._new_registration,
                                   new_push_receiver=daemon.factory.push_receiver,
                                   random=random.random, timing=timing, adopted=adopted)
        self._reg_transport: asyncio.DatagramTransport | None = None
        self._reg_sock: socket.socket | None = None  # the transport's, for its error queue
        self._reg_task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self.keepalives = 0  # NAT-keepalives sent on the held registration socket
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._listening: str | None = None  # "addr:port" of the rekey socket
        self._pumping = False
        self.files = MemberStateFiles(daemon.config.daemon.state_dir)

    # The engine runs on the monotonic clock (a wall-clock step moves no deadline); what
    # msecctl shows is wall-clock time, and phase 1 gets the offset for certificate validity.
    _now = staticmethod(time.monotonic)

    def _wall(self, t: float | None) -> float | None:
        return None if t is None else t + self._wall_offset()

    def _wall_offset(self) -> float:
        return self.daemon.clock() - time.monotonic()

    # -- what the daemon and msecctl see
    @property
    def group(self) -> pm.MemberGroup:
        return self.engine.group

    @group.setter
    def group(self, group: pm.MemberGroup) -> None:  # a reload that needs no new registration
        self.engine.group = group

    @property
    def group_id(self) -> int:
        return self.engine.group_id

    @property
    def label(self) -> str:
        return self.engine.group.label

    @property
    def _rekey_kind(self) -> str:
        """The rekey message this group's members receive, for log lines."""
        return "GSA_REKEY" if self.engine.group.protocol == "g-ikev2" else "GROUPKEY-PUSH"

    @property
    def state(self) -> str:
        st = self.engine.state
        if st in (MemberState.CONNECTING, MemberState.REGISTERING):
            return "re-registering" if self.engine.refreshing else "registering"
        return st.value

    @property
    def adopted(self) -> bool:
        return bool(self.engine.adopted)

    @property
    def holds_keys(self) -> bool:
        return bool(self.engine.held or self.engine.adopted)

    @property
    def rekeys(self) -> int:
        return self.engine.rekeys

    @property
    def teks(self) -> list[dict[str, Any]]:
        """Every TEK this member holds, as the kernel has it: role (current / next /
        previous), whether it receives and sends on it now, and when it expires."""
        out = []
        for h in self.engine.held:
            if h.removing:
                continue
            d = tek_summary(h.tek)
            d.update(role=h.role, installed=h.installed, expires_at=self._wall(h.expires_at),
                     inbound=h.installed and h.tek.receives,
                     outbound=h.installed and h.outbound)
            if h.activate_at is not None:
                d["activate_at"] = self._wall(h.activate_at)
            if h.retire_at is not None:
                d["retire_at"] = self._wall(h.retire_at)
            out.append(d)
        return out

    def describe(self) -> dict[str, Any]:
        e = self.engine
        return {
            "id": self.group_id, "name": self.group.name, "role": "member", "state": self.state,
            "protocol": self.group.protocol,
            "mlkem": self.group.mlkem,
            # the PPK's identifier and whether it is required, never its secret (RFC 8784)
            "ppk": ({"id": self.group.ppk.id, "required": self.group.ppk.required}
                    if self.group.ppk is not None else None),
            "key_servers": [str(k) for k in self.group.key_servers],
            "key_server": e.key_server, "registered_at": self._wall(e.registered_at),
            "registrations": e.registrations, "adopted": self.adopted,
            "next_attempt": self._wall(e.next_attempt), "last_error": e.last_error,
            "teks": self.teks, "last_seq": e.last_seq, "rekeys": e.rekeys,
            "rekey_socket": self._listening, "rekey_error": e.listen_error,
            "activation_delay": e.activation_delay, "deactivation_delay": e.deactivation_delay,
            "gap_from_key_server": e.gap_delays != (None, None),
            "restored": e.restored, "state_error": e.state_error,
            # GROUPKEY-PUSH datagrams accepted, refused, copies dropped, ACKs sent (this KEK)
            "push": dict(e.push.stats) if e.push is not None else None,
            "acks_requested": bool(e.push is not None and e.push.kek is not None
                                   and e.push.kek.ack_requested),
            # G-IKEv2 GSA_INBAND_REKEY: rekeys come over the registration's kept IKE SA
            "inband_rekeys": e.inband, "nat_keepalives": self.keepalives,
        }

    # -- life cycle
    def start(self) -> None:
        """Resume from the saved group state if there is one, else register."""
        try:
            saved = self.files.load(self.group_id, self._wall_offset())
        except MemberStateError as err:
            log.warning("group %s: saved member state %s unusable (%s): registering afresh",
                        self.label, self.files.path(self.group_id), err)
            saved = None
        else:
            if saved is None:
                log.info("group %s: no saved member state: registering", self.label)
        if saved is None:
            self.engine.start(self._now())
        else:
            self.engine.resume(saved, self._now(), local_address=self._local_toward(saved))
        self._pump()

    def _local_toward(self, saved) -> str | None:
        """Our address toward the saved key server (an IP literal; a name is not resolved
        here, on the loop): the ID of the GROUPKEY-PUSH-ACKs a resumed member sends."""
        ks = next((k for k in self.group.key_servers if str(k) == saved.key_server), None)
        if ks is None or ks.address is None:
            return None
        family = socket.AF_INET6 if ks.address.version == 6 else socket.AF_INET
        return _source_address(family, (ks.host, ks.port), self.group.interface)

    def stop(self) -> None:
        self.engine.stop(self._now())
        self._pump()
        self._cancel_timer()

    def restart(self, group: pm.MemberGroup) -> None:
        self.engine.reconfigure(group, self._now())
        self._pump()

    # -- inputs
    def _on_registration_datagram(self, data: bytes, addr) -> None:
        self.engine.receive_registration(data, addr, self._now())
        self._pump()

    def _on_registration_unreachable(self, exc: OSError) -> None:
        self.engine.registration_unreachable(exc.strerror or str(exc), self._now())
        self._pump()

    def on_push_datagram(self, data: bytes, addr) -> None:
        self.engine.receive_push(data, addr, self._now())
        self._pump()

    def sa_expired(self, spi: int, hard: bool) -> None:
        self.engine.sa_expired(spi, hard, self._now())
        self._pump()

    def holds_spi(self, spi: int) -> bool:
        return any(h.spi == spi for h in self.engine.held)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self._now())
        self._pump()

    def _new_registration(self, group: pm.MemberGroup, addr, now: float):
        kw = {}
        if group.protocol == "g-ikev2":  # NAT detection needs our address and port
            local = self._registration_local()
            if local is not None:
                kw["local"] = local
        return self.daemon.factory.member(group, addr, now,
                                          wall_time_offset=self.daemon.clock() - time.monotonic(),
                                          report_phase1=self.daemon.keylog is not None, **kw)

    def _registration_local(self) -> tuple[str, int] | None:
        """The registration socket's (address, port) toward the key server: the source
        address the route takes (``registration_opened``'s ``local_address``) and the socket's
        ephemeral port."""
        sock, host = self._reg_sock, self.engine.local_address
        if sock is None or host is None or sock.fileno() < 0:
            return None
        try:
            return (host, sock.getsockname()[1])
        except OSError:
            return None

    # -- outputs
    def _pump(self) -> None:
        """Send, perform every action (answering it), log every event, re-arm the timer."""
        if self._pumping:
            return
        self._pumping = True
        try:
            e = self.engine
            while True:
                for data, addr in e.datagrams_to_send():
                    t = self._reg_transport
                    if t is not None and not t.is_closing():
                        t.sendto(data, (addr[0], addr[1]))
                for data, addr in e.push_datagrams_to_send():  # GROUPKEY-PUSH-ACKs
                    self.daemon.rekey_sockets.send(self, data, (addr[0], addr[1]))
                while (ev := e.next_event()) is not None:
                    self._log(ev)
                act = e.next_action()
                if act is None:
                    break
                self._perform(act)
        finally:
            self._pumping = False
        self._arm(self.engine.get_timer())

    def _arm(self, deadline: float | None) -> None:
        if self.engine.state is MemberState.STOPPED:
            deadline = None
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        self._timer_at = deadline
        if deadline is not None:
            loop = self.daemon.loop
            delay = max(0.0, deadline - self._now())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _perform(self, act) -> None:
        e, now = self.engine, self._now()
        match act:
            case OpenRegistration():
                self._reg_task = self.daemon.loop.create_task(self._open(act.key_server))
            case CloseRegistration():
                self._close_registration()
            case HoldRegistration():  # in-band rekeys come on this socket: others may register
                self._release()
                log.info("group %s: keeping the registration's IKE SA for in-band rekeys%s", self.label,
                         f" (NAT-keepalives to {fmt_addr(act.keepalive)})" if act.keepalive else "")
                self._keepalive(act.keepalive)
            case ListenForPush():
                try:
                    self.daemon.rekey_sockets.join(self, act.address, act.port, act.interface)
                except OSError as err:
                    reason = err.strerror or str(err)
                    log.error("group %s: cannot listen for GROUPKEY-PUSH on port %d: %s "
                              "(another process, or another role of this daemon, holds it)",
                              self.label, act.port, reason)
                    e.push_listen_failed(reason, now)
                else:
                    self._listening = fmt_addr((act.address, act.port))
                    log.info("group %s: listening for %s on %s", self.label, self._rekey_kind,
                             self._listening)
                    e.push_listening(now)
            case StopListening():
                self.daemon.rekey_sockets.leave(self)
                self._listening = None
            case InstallSas() | ActivateOutbound() | RemoveSas():
                self._sa(act, now)
            case SaveState():
                try:
                    self.files.save(act.snapshot, self._wall_offset())
                except OSError as err:
                    log.error("group %s: cannot save the member state to %s: %s (a restart "
                              "will register again)", self.label,
                              self.files.path(self.group_id), err.strerror or err)
                    e.state_save_failed(act, err.strerror or str(err), now)
                else:
                    e.state_saved(act, now)
            case ForgetState():
                try:
                    self.files.forget(self.group_id)
                except OSError as err:
                    log.error("group %s: cannot delete the saved member state %s: %s",
                              self.label, self.files.path(self.group_id), err.strerror or err)

    def _sa(self, act, now: float) -> None:
        inst, e = self.daemon.installer, self.engine
        where = "" if inst is None or inst.kernel else " (kernel installation off)"
        try:
            match act:
                case InstallSas():
                    result = inst.install(self.group_id, act.teks, switch=act.switch) \
                        if inst is not None else "installed"
                    spis = _spis(t.spi for t in act.teks)
                    if self.daemon.keylog is not None:
                        for t in act.teks:
                            self.daemon.keylog.group_sa(t)
                    if result == "unchanged":
                        log.info("group %s: SAs unchanged (SPI %s)%s", self.label, spis, where)
                    else:
                        log.info("group %s: %s %d SA(s) (SPI %s)%s%s", self.label, result,
                                 len(act.teks), spis,
                                 "" if act.switch else ", inbound now, outbound later", where)
                case ActivateOutbound():
                    if inst is not None:
                        inst.send_on(self.group_id, act.spi)
                case RemoveSas():
                    if inst is not None:
                        inst.remove(self.group_id, act.spis)
        except Exception as err:
            match act:
                case InstallSas():
                    log.error("group %s: cannot install SAs: %s", self.label, err)
                case ActivateOutbound():
                    log.error("group %s: cannot send on SPI 0x%08x: %s", self.label, act.spi,
                              err)
                case RemoveSas():
                    log.error("group %s: cannot remove SA(s) SPI %s: %s", self.label,
                              _spis(act.spis), err)
            e.sa_failed(act, str(err), now)
        else:
            e.sas_installed(act, now)

    def _log(self, ev: MemberEvent) -> None:
        self.daemon.activity.member_event(ev)
        label = self.label
        match ev:
            case Phase1Up():
                if self.daemon.keylog is not None:
                    self.daemon.keylog.phase1(ev.sa)
            case Joined():
                log.info("group %s: registered with key server %s: %d TEK(s) (SPI %s)",
                         label, ev.key_server, len(ev.spis), _spis(ev.spis))
            case RegistrationAttemptFailed():
                log.warning("group %s: registration with %s failed: %s", label, ev.key_server,
                            ev.reason)
                if ev.retry_in:
                    log.info("group %s: retrying in %.1f s", label, ev.retry_in)
            case GroupRekeyed():
                log.info("group %s rekeyed: SEQ %d, new TEK SPIs %s%s", label, ev.seq,
                         _spis(ev.spis), ", new KEK" if ev.new_kek else "")
            case OutboundSwitched():
                log.info("group %s: sending on SPI 0x%08x now (activation delay over)", label,
                         ev.spi)
            case SasRemoved():
                log.info("group %s: removed SA(s) SPI %s: %s", label, _spis(ev.spis), ev.reason)
            case StateRestored():
                log.info("group %s: resumed from the saved member state (key server %s, SEQ "
                         "%d, SPI %s; still in the kernel: %s; protocol %s): not registering "
                         "again", label, ev.key_server, ev.seq, _spis(ev.spis),
                         _spis(ev.adopted), ev.protocol)
            case StateDiscarded():
                log.warning("group %s: saved member state discarded (%s): registering afresh",
                            label, ev.reason)
            case ResyncScheduled():
                log.warning("group %s: %s: registering again in %.1f s (random delay)",
                            label, ev.reason, ev.in_s)
            case SaActionFailed() | PushListenFailed() | StateSaveFailed():
                log.debug("group %s: %s", label, ev)  # logged where the shell failed
            case LeftGroup():
                log.warning("group %s: %s; registering again", label, ev.reason)
            case PushRejected(duplicate=True):
                log.debug("group %s: %s ignored: %s", label, self._rekey_kind, ev.reason)
            case PushRejected():
                log.warning("group %s: %s rejected: %s", label, self._rekey_kind, ev.reason)
            case _:
                log.debug("group %s: %s", label, ev)

    # -- the registration socket
    async def _open(self, ks: pm.KeyServerAddress) -> None:
        e = self.engine
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
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if self.group.interface:  # registration leaves through the group's interface
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                    self.group.interface.encode())
                sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
                # ICMP errors (port or host unreachable) reported on this unconnected socket:
                # fast failover.  Not connect(): a key server listening on a wildcard address
                # may answer from another of its addresses.
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                transport, _ = await self.daemon.loop.create_datagram_endpoint(
                    lambda: _RegistrationEndpoint(self), sock=sock)
            except BaseException:
                sock.close()
                raise
            self._reg_transport = transport
            self._reg_sock = sock
        except asyncio.CancelledError:
            self._release()
            raise
        except Exception as err:  # resolution, socket
            self._reg_task = None
            e.registration_unavailable(f"{type(err).__name__}: {err}", self._now())
            self._pump()
            return
        self._reg_task = None
        log.info("group %s: registering with key server %s", self.label, ks)
        try:
            e.registration_opened(addr, self._now(),
                                  local_address=_source_address(family, addr,
                                                                self.group.interface))
        except EngineUnavailable as err:  # pragma: no cover - the engine catches it
            log.error("group %s: %s", self.label, err)
        self._pump()

    def _drain_errors(self) -> None:
        """Read the socket's error queue (IP_RECVERR queues each ICMP error there; a queue
        left full keeps the socket reporting an error, and the loop would spin on it)."""
        sock = self._reg_sock
        if sock is None or sock.fileno() < 0:
            return
        for _ in range(64):
            try:
                sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:  # EAGAIN: empty
                return

    def _close_registration(self) -> None:
        task, self._reg_task = self._reg_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self._reg_transport is not None:
            self._reg_transport.close()
            self._reg_transport = None
        self._reg_sock = None
        self._release()
        self._keepalive(None)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _keepalive(self, dest) -> None:
        """NAT-keepalives (one 0xFF octet, RFC 3948 §2.3) to ``dest`` every ``[daemon]
        nat_keepalive`` seconds while the registration socket is held open, so the NAT in
        front of us keeps the mapping the key server's in-band rekeys come back through."""
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        period = self.daemon.config.daemon.nat_keepalive_s
        if dest is None or not period:
            return

        def tick() -> None:
            t = self._reg_transport
            if t is None or t.is_closing():
                self._keepalive_timer = None
                return
            t.sendto(b"\xff", (dest[0], dest[1]))
            self.keepalives += 1
            self._keepalive_timer = self.daemon.loop.call_later(period, tick)
        self._keepalive_timer = self.daemon.loop.call_later(period, tick)


class _RekeySocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.members: dict[MemberSession, tuple[str, int] | None] = {}  # -> (group, ifindex)


class RekeySockets:
    """The daemon's GROUPKEY-PUSH sockets, one per (address family, port), exclusively its
    own (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._socks: dict[tuple[int, int], _RekeySocket] = {}
        self.unclaimed = 0  # datagrams no group's KEK SPI matched

    def join(self, session: MemberSession, address: str, port: int,
             interface: str | None) -> None:
        self.leave(session)
        addr = ipaddress.ip_address(address)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        rs = self._socks.get((family, port))
        if rs is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            rs = _RekeySocket(sock)
            self._socks[(family, port)] = rs
            self.loop.add_reader(sock.fileno(), self._readable, rs)
        membership = None
        if addr.is_multicast:
            ifindex = socket.if_nametoindex(interface) if interface else 0
            membership = (str(addr), ifindex)
            if membership not in rs.members.values():
                try:
                    _membership(rs.sock, addr, ifindex, join=True)
                except OSError as e:
                    log.warning("group %s: cannot join rekey group %s: %s (unicast PUSH only)",
                                session.label, addr, e.strerror or e)
                    membership = None
        rs.members[session] = membership

    def send(self, session: MemberSession, data: bytes, dest) -> None:
        """A datagram from ``session``'s rekey socket (its ACKs leave from the rekey port, RFC
        8263 section 3); dropped if the socket's buffer is full (the key server retransmits)."""
        fam = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
        for (family, _port), rs in self._socks.items():
            if family == fam and session in rs.members:
                try:
                    rs.sock.sendto(data, dest)
                except OSError as e:
                    log.debug("group %s: GROUPKEY-PUSH-ACK to %s not sent: %s", session.label,
                              dest[0], e)
                return

    def leave(self, session: MemberSession) -> None:
        for key, rs in list(self._socks.items()):
            if session not in rs.members:
                continue
            membership = rs.members.pop(session)
            if membership is not None and membership not in rs.members.values():
                try:
                    _membership(rs.sock, ipaddress.ip_address(membership[0]), membership[1],
                                join=False)
                except OSError:
                    pass
            if not rs.members:
                self._close(key)

    def _close(self, key) -> None:
        rs = self._socks.pop(key)
        try:
            self.loop.remove_reader(rs.sock.fileno())
        except (ValueError, OSError):
            pass
        rs.sock.close()

    def close(self) -> None:
        for key in list(self._socks):
            self._close(key)

    def _readable(self, rs: _RekeySocket) -> None:
        for _ in range(64):
            try:
                data, addr = rs.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("rekey socket: %s", e)
                return
            if len(rs.members) == 1:  # its receiver checks the cookies (and says why not)
                target = next(iter(rs.members))
            else:
                cookies = data[:16]
                target = next((s for s in rs.members if s.engine.kek_spi == cookies), None)
            if target is None:
                self.unclaimed += 1
                log.debug("rekey socket: datagram from %s for no group of ours", addr[0])
                continue
            target.on_push_datagram(data, (addr[0], addr[1]))


def _source_address(family: int, dest, interface: str | None) -> str | None:
    """The address the kernel sends from toward ``dest`` (a connected UDP socket sends
    nothing): the member's address in its GROUPKEY-PUSH-ACKs."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if interface:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            s.connect((dest[0], dest[1]))
            return s.getsockname()[0].split("%", 1)[0]
    except OSError as e:
        log.debug("no source address toward %s: %s (no GROUPKEY-PUSH-ACKs)", dest[0], e)
        return None


def _membership(sock: socket.socket, addr, ifindex: int, *, join: bool) -> None:
    if addr.version == 6:
        opt = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
        sock.setsockopt(socket.IPPROTO_IPV6, opt, addr.packed + ifindex.to_bytes(4, "little"))
    else:  # struct ip_mreqn
        opt = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
        sock.setsockopt(socket.IPPROTO_IP, opt,
                        addr.packed + bytes(4) + ifindex.to_bytes(4, "little"))


class ExpireWatch:
    """The kernel's XFRM_MSG_EXPIRE events, handed to the member session holding the SPI
    (strongSwan's ``process_expire``): a soft expiry with no successor makes the member
    register again, a hard one removes what is left of the SA."""

    def __init__(self, daemon: "Daemon") -> None:
        from xfrm.events import XfrmEvents
        from xfrm.messages import XFRMNLGRP_EXPIRE

        self.daemon = daemon
        self.events = XfrmEvents.open(groups=(XFRMNLGRP_EXPIRE,))
        self.task = daemon.loop.create_task(self._run())

    async def _run(self) -> None:
        from xfrm.events import EventsLost, SaExpired

        try:
            async for ev in self.events:
                match ev:
                    case SaExpired():
                        spi = ev.state.spi
                        for s in self.daemon.sessions.values():
                            if s.holds_spi(spi):
                                self.daemon.activity.sa_expired(s.group_id, spi, ev.hard)
                                s.sa_expired(spi, ev.hard)
                    case EventsLost():
                        log.warning("kernel SA expiry events were lost (receive buffer full)")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the watch is an optimisation: timers still run
            log.warning("kernel SA expiry events unavailable: %s", e)

    def close(self) -> None:
        self.task.cancel()
        self.events.close()
