"""msecd's key server role: one engine (phase 1 responder + GROUPKEY-PULL responder, all
groups) behind one UDP socket per ``keyserver.listen`` address; its state lives in
``gkm.store.KeyStore(<state_dir>)``, so a restart keeps the groups' keys.  ``msecctl rekey ID``:
new TEKs, SEQ, one GROUPKEY-PUSH to the rekey address and, unicast, to each registered member.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from gkm.events import Event
from gkm.gdoi.events import MemberRefused, MemberRegistered
from gkm.ike.events import Phase1Failed
from policy import model as pm

from .adapter import EngineShell, UdpEndpoint
from .engines import RekeyError, StartupError
from .report import fmt_addr, host_of

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("msecd")

__all__ = ["KeyServerRole", "send_push"]


def send_push(data: bytes, host: str, port: int) -> None:
    """One GROUPKEY-PUSH datagram (multicast TTL: the system default, 1)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.sendto(data, (host, port))


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
                bound.append(fmt_addr((str(a), self.settings.port)))
            except OSError as e:
                s.close()
                errors.append(f"{fmt_addr((str(a), self.settings.port))}: {e.strerror or e}")
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
        if groups_only and self.shell is not None and \
                self.daemon.factory.update_keyserver_groups(self.shell.engine, settings.groups):
            self.settings = settings
            return
        old_shell = self.shell
        if old_shell is not None:
            old_shell.close()
            self.shell = None
            await asyncio.sleep(0)  # let the transports release their ports
        self.settings = settings
        await self._start_engine()

    def _label(self, group_id: int) -> str:
        g = self.settings.group(group_id)
        return g.label if g is not None else str(group_id)

    def _on_event(self, ev: Event) -> None:
        match ev:
            case MemberRegistered():
                self.registrations += 1
                spis = (" (TEK SPI " + ", ".join(f"0x{x:08x}" for x in ev.tek_spis) + ")"
                        if ev.tek_spis else "")
                log.info("group %s: member %s (%s) registered%s", self._label(ev.group_id),
                         ev.identity, fmt_addr(ev.addr), spis)
            case MemberRefused():
                self.refusals += 1
                log.warning("group %s: member %s (%s) refused: %s", self._label(ev.group_id),
                            ev.identity or "?", fmt_addr(ev.addr), ev.reason)
            case Phase1Failed():
                self.phase1_failures += 1
                log.warning("key server: phase 1 with %s failed: %s", fmt_addr(ev.peer_addr),
                            ev.reason)
            case _:
                log.debug("key server: %s", ev)

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

        if self.store is None:
            return {"ok": False, "error": "rekey is not available in this daemon"}
        try:
            plan = self.daemon.factory.rekey(g, self.store, self.daemon.clock())
        except (RekeyError, StoreError, ValueError) as e:
            log.warning("group %s: rekey refused: %s", g.label, e)
            return {"ok": False, "error": str(e)}
        port = g.kek.rekey_port
        dests = [(str(g.kek.rekey_address), port)]
        for m in self.store.members(g.group_id):
            host = host_of(m.address)
            if host and (host, port) not in dests:
                dests.append((host, port))
        sent, failed = [], []
        for host, p in dests:
            try:
                send_push(plan.datagram, host, p)
                sent.append(fmt_addr((host, p)))
            except OSError as e:
                failed.append(f"{fmt_addr((host, p))}: {e.strerror or e}")
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
