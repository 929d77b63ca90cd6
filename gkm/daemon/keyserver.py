"""msecd's key server role: one engine (phase 1 responder + GROUPKEY-PULL responder, all
groups) behind one UDP socket per ``keyserver.listen`` address; its state lives in
``gkm.store.KeyStore(<state_dir>)``, so a restart keeps the groups' keys.  Rekeys, evictions
and automatic rotation are decided by one group controller per group (``gkm.group``, driven
by :class:`~.group_shell.GroupShell`): this role only feeds them, and sends their
GROUPKEY-PUSHes to the rekey address and, unicast, to each registered member through the
non-blocking :class:`~.rekey_transport.RekeyTransport`.

A reconfiguration builds the new engine, binds the new sockets and opens the new rekey
transport first and swaps them in only when all of that worked: a reload that cannot be served
is refused and the running role keeps serving.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gkm.events import Event
from gkm.gdoi.pull import member_key
from gkm.gdoi.events import MemberRefused, MemberRegistered
from gkm.ike.events import Phase1Established, Phase1Failed
from gkm.ikev2.events import (GsaMemberLeft, GsaPeerRefused, InbandRekeyAcknowledged, InbandRekeyFailed,
                              SaInitFailed)
from gkm.store import KeyState
from gkm.wire.header import is_ikev2
from policy import model as pm
from policy.revocation import RevocationList, load_crls

from .adapter import EngineShell, UdpEndpoint
from .engines import RekeyError, StartupError
from .group_shell import GroupShell
from .rekey_transport import MulticastOptions, RekeyTransport, RekeyTransportError
from .report import fmt_addr, fmt_time_utc, host_of

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("msecd")

__all__ = ["KeyServerRole", "RUNNING_MARKER"]

#: in the state directory while a key server runs (see KeyServerRole._mark_running)
RUNNING_MARKER = "gcks.running"

ListenKey = tuple[str, int]  # (address, port) as configured


class _Listen(NamedTuple):
    """One socket of the key server: its address, which datagrams it takes (None: all),
    whether it is G-IKEv2's UDP 4500 (non-ESP marker), whether the engine is told the local
    address (an engine that serves G-IKEv2: NAT detection)."""

    address: Any
    accept: Any
    natt: bool = False
    local: bool = False


def _bind(addr, port: int) -> socket.socket:
    fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((str(addr), port))
    except BaseException:
        s.close()
        raise
    return s


def _not_ikev2(data: bytes) -> bool:
    return not is_ikev2(data)


def _listen_keys(settings: pm.KeyServerSettings) -> dict[ListenKey, _Listen]:
    """(address, port) -> :class:`_Listen`.  With a ``g_ikev2_port`` of its own and some group
    serving G-IKEv2, every listen address gets a second socket on it that takes IKEv2 only, and
    the GDOI socket takes the rest.  G-IKEv2 served on UDP 500 (its own port or GDOI's) also
    gets UDP 4500 on every listen address, IKEv2 only, with the non-ESP marker (RFC 7296 §2.23:
    members behind a NAT float there; an IKEv2 responder on 500 listens on 4500 too)."""
    from gkm.ikev2.gcks import serves_g_ikev2
    from gkm.ikev2.natt import IKE_PORT, NATT_PORT
    serving = any(serves_g_ikev2(g) for g in settings.groups)
    own = settings.g_ikev2_port is not None and serving
    natt = serving and settings.ike_port == IKE_PORT
    keys: dict[ListenKey, _Listen] = {}
    for a in settings.listen:
        keys.setdefault((str(a), settings.port), _Listen(a, _not_ikev2 if own else None, local=serving))
        if own:
            keys.setdefault((str(a), settings.g_ikev2_port), _Listen(a, is_ikev2, local=True))
        if natt:
            keys.setdefault((str(a), NATT_PORT), _Listen(a, is_ikev2, natt=True, local=True))
    return keys


def _rekey_options(settings: pm.KeyServerSettings) -> set[MulticastOptions]:
    return {MulticastOptions.of(g.kek) for g in settings.groups if g.kek is not None}


fmt_time = fmt_time_utc


class KeyServerRole:
    def __init__(self, daemon: "Daemon", settings: pm.KeyServerSettings) -> None:
        self.daemon = daemon
        self.settings = settings
        self.store = None
        self.shell: EngineShell | None = None
        self.endpoints: dict[ListenKey, UdpEndpoint] = {}
        self.rekey_transport: RekeyTransport | None = None
        self._running_marker: Path | None = None
        self.revocations = RevocationList()
        #: (group id, member key) -> the certificate it registered with (CRL checks at reload)
        self._certificates: dict[tuple[int, str], Any] = {}
        self.registrations = 0
        self.refusals = 0
        self.phase1_failures = 0
        self.groups = GroupShell(self)
        self._sync_changes: list[str] = []  # what the controllers did at the last switch

    @property
    def listen(self) -> list[str]:
        return [fmt_addr(k) for k in self.endpoints]

    @property
    def natt_dropped(self) -> dict[str, int]:
        """Datagrams the UDP 4500 sockets dropped: ESP (msec has no ESP-in-UDP) and
        malformed ones (neither marker, ESP nor NAT-keepalive)."""
        out = {"esp": 0, "malformed": 0}
        for ep in self.endpoints.values():
            for k in out:
                out[k] += ep.dropped[k]
        return out

    async def start(self, strict: bool = False) -> None:
        """``strict``: every listen address must be bound (a role a reload adds)."""
        from gkm.store import KeyStore, StoreError

        opened, crashed = self.store is None, False
        if opened:
            d = self.daemon.config.daemon
            try:
                self.store = KeyStore(d.state_dir, anchor=d.state_anchor,
                                      accept_state=self.daemon.accept_state,
                                      on_anchor_error=lambda text: log.warning("key server: %s", text))
            except StoreError as e:
                raise StartupError(f"key server state: {e}") from None
            for text in self.store.accepted:
                log.warning("key server: state accepted by --accept-state: %s", text)
            self.daemon.accept_state = False  # once: a later problem is refused again
            # the marker of a run that did not stop cleanly (kill -9, crash, power loss)
            crashed = (Path(d.state_dir) / RUNNING_MARKER).exists()
        await self._switch_to(self.settings, strict=strict)
        if opened:
            self._mark_running()
        if crashed:
            # a PUSH is committed before it is sent: one may have died with the process
            log.warning("key server: the last run did not stop cleanly: sending every "
                        "group's current keys again")
            self.groups.announce()

    def _mark_running(self) -> None:
        """Create ``<state_dir>/gcks.running``, removed by a clean ``close``: found at the
        next start, it says this process died."""
        d = Path(self.daemon.config.daemon.state_dir)
        marker = d / RUNNING_MARKER
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("key server: cannot write %s: %s (a crash will not be detected)",
                        marker, e.strerror or e)
        self._running_marker = marker

    async def _switch_to(self, settings: pm.KeyServerSettings, *, strict: bool) -> None:
        """Make the engine, sockets and rekey transport for ``settings`` and only then swap
        them in: on any failure (StartupError) the running ones keep serving untouched.

        Addresses the role already listens on keep their sockets (moved to the new engine).
        At start (``strict`` False) an address that cannot be bound is a warning as long as
        one can; on a reload an address the reload adds must be bound, or it is refused."""
        loop = self.daemon.loop
        revocations = self._load_crls(settings)
        engine = self.daemon.factory.keyserver(settings, self.store, self.daemon.clock(),
                                               admit=self._admit)
        shell = EngineShell(engine, name="keyserver", on_event=self._on_event,
                            loop=loop, clock=self.daemon.clock)
        old_keys = set(_listen_keys(self.settings)) if self.shell is not None else set()
        wanted = _listen_keys(settings)
        keys = list(wanted)
        fresh: dict[ListenKey, socket.socket] = {}
        errors: list[tuple[ListenKey, str]] = []
        transport = RekeyTransport(loop, on_datagram=self.groups.ack_received)
        try:
            for k, want in wanted.items():
                if k in self.endpoints:
                    continue
                try:
                    fresh[k] = _bind(want.address, k[1])
                except OSError as e:
                    errors.append((k, e.strerror or str(e)))
            serving = [k for k in keys if k in self.endpoints or k in fresh]
            added = [(k, e) for k, e in errors if k not in old_keys]
            if not serving or (strict and added):
                why = "; ".join(f"{fmt_addr(k)}: {e}" for k, e in (added if serving else errors))
                raise StartupError("key server: cannot listen: " + why)
            try:
                await transport.open(_rekey_options(settings))
            except RekeyTransportError as e:
                raise StartupError(f"key server: {e}") from None
            new_endpoints: dict[ListenKey, UdpEndpoint] = {}
            for k in keys:
                if k in fresh:
                    want = wanted[k]
                    ep = UdpEndpoint(shell, want.accept, natt=want.natt, local=k if want.local else None)
                    await loop.create_datagram_endpoint(lambda ep=ep: ep, sock=fresh.pop(k))
                    new_endpoints[k] = ep
        except BaseException:
            for s in fresh.values():
                s.close()
            transport.close()
            shell.close()
            raise
        # commit: nothing below can fail
        for k in keys:
            if k in self.endpoints:
                ep = self.endpoints.pop(k)
                ep.move_to(shell)
                ep.accept, ep.local = wanted[k].accept, (k if wanted[k].local else None)
                new_endpoints[k] = ep
        endpoints = {k: new_endpoints[k] for k in keys if k in new_endpoints}
        old_shell, old_transport = self.shell, self.rekey_transport
        for ep in self.endpoints.values():  # addresses the new settings dropped
            if ep.transport is not None:
                ep.transport.close()
        if old_shell is not None:
            old_shell.close()
        if old_transport is not None:
            old_transport.close()
        self.shell, self.rekey_transport, self.endpoints = shell, transport, endpoints
        self.settings, self.revocations = settings, revocations
        for k, e in errors:
            log.warning("key server: not listening on %s: %s", fmt_addr(k), e)
        log.info("key server: listening on %s for group(s) %s", ", ".join(self.listen),
                 ", ".join(g.label for g in settings.groups) or "none")
        self._sync_changes = self.groups.sync(settings)
        shell.kick()

    async def reconfigure(self, settings: pm.KeyServerSettings, groups_only: bool) -> list[str]:
        """A reload changed the key server role.  Only the groups (or the CRLs): the running
        engine takes the new policies (exchanges under way keep theirs).  Otherwise (PSKs,
        certificate, listen addresses): a new engine; sockets of addresses still listened on
        are kept, new ones must bind; keys stay in the store.  Raises StartupError, with the
        running role unchanged, if the new settings cannot be served.  The group controllers
        take the new policies (TEK policies removed or changed: rekey); returns what they did."""
        if not (groups_only and self.shell is not None):
            await self._switch_to(settings, strict=True)
            return self._sync_changes
        return await self._reconfigure_groups(settings)

    async def _reconfigure_groups(self, settings: pm.KeyServerSettings) -> list[str]:
        revocations = self._load_crls(settings)
        transport = None
        if _rekey_options(settings) != _rekey_options(self.settings):
            transport = RekeyTransport(self.daemon.loop, on_datagram=self.groups.ack_received)
            try:
                await transport.open(_rekey_options(settings))
            except RekeyTransportError as e:
                raise StartupError(f"key server: {e}") from None
        if not self.daemon.factory.update_keyserver_groups(self.shell.engine, settings.groups):
            if transport is not None:
                transport.close()
            await self._switch_to(settings, strict=True)
            return self._sync_changes
        if transport is not None:
            self.rekey_transport.close()
            self.rekey_transport = transport
        self.settings, self.revocations = settings, revocations
        return self.groups.sync(settings)

    def refresh_crls(self, settings: pm.KeyServerSettings) -> None:
        """A reload with the same CRL file names: read them again (StartupError, nothing
        changed, if one cannot be verified)."""
        self.revocations = self._load_crls(settings)

    # -- admission (deny list, CRL)
    def _load_crls(self, settings: pm.KeyServerSettings) -> RevocationList:
        if not settings.crl_files:
            return RevocationList()
        anchors = settings.certificate.trust_anchors if settings.certificate else ()
        try:
            rl = load_crls(settings.crl_files, anchors)
        except ValueError as e:
            raise StartupError(f"key server: CRL {e}") from None
        for path in rl.stale():
            log.warning("key server: CRL %s is past its nextUpdate; it still revokes what it "
                        "lists, but get a fresh one", path)
        return rl

    def _admit(self, group: pm.GroupPolicy, identity: pm.Identity, sa) -> str | None:
        """The engine asks after the group policy admitted ``identity``: a reason to refuse
        it, or None.  Certificates are remembered so a reload's CRL can evict their owners."""
        key = member_key(identity)
        if self.store is not None:
            for d in self.store.denied(group.group_id, key):
                return (f"{key} was evicted at {fmt_time(d.at)} ({d.reason}); "
                        f"'msecctl deny lift {group.group_id} {key}' readmits it")
        cert = sa.peer_certificate
        if cert is not None:
            why = self.revocations.revoked(cert)
            if why is not None:
                return why
            self._certificates[(group.group_id, key)] = cert
        return None

    def _label(self, group_id: int) -> str:
        g = self.settings.group(group_id)
        return g.label if g is not None else str(group_id)

    def _on_event(self, ev: Event) -> None:
        self.daemon.activity.keyserver_event(ev)
        match ev:
            case MemberRegistered():
                self.registrations += 1
                # the store's key of the member (test engines give it as the string itself)
                key = member_key(ev.identity) if isinstance(ev.identity, pm.Identity) \
                    else str(ev.identity)
                self.groups.registered(ev.group_id, ev.tek_spis, key,
                                       host_of(ev.addr[0]) if ev.addr else None)
                spis = (" (TEK SPI " + ", ".join(f"0x{x:08x}" for x in ev.tek_spis) + ")"
                        if ev.tek_spis else "")
                log.info("group %s: member %s (%s) registered%s%s", self._label(ev.group_id),
                         ev.identity, fmt_addr(ev.addr), spis,
                         " with a post-quantum preshared key (RFC 8784)" if ev.ppk else "")
            case MemberRefused():
                self.refusals += 1
                log.warning("group %s: member %s (%s) refused: %s", self._label(ev.group_id),
                            ev.identity or "?", fmt_addr(ev.addr), ev.reason)
            case Phase1Established():
                if self.daemon.keylog is not None:
                    self.daemon.keylog.phase1(ev.sa)
                log.debug("key server: %s", ev)
            case Phase1Failed():
                self.phase1_failures += 1
                log.warning("key server: phase 1 with %s failed: %s", fmt_addr(ev.peer_addr),
                            ev.reason)
            case SaInitFailed():  # G-IKEv2's phase 1 counterpart
                self.phase1_failures += 1
                log.warning("key server: G-IKEv2 IKE_SA_INIT with %s failed: %s",
                            fmt_addr(ev.peer), ev.reason)
            case InbandRekeyAcknowledged():
                log.info("group %s: member %s acknowledged the in-band rekey (GSA_INBAND_REKEY "
                         "Message ID %d)%s", self._label(ev.group_id), ev.member, ev.message_id,
                         f": it holds TEK SPI {', '.join(f'0x{x:08x}' for x in ev.tek_spis)}"
                         if ev.tek_spis else ": its exclusion")
            case InbandRekeyFailed():
                log.warning("group %s: in-band rekey of member %s failed: %s; it gets the keys "
                            "when it registers again", self._label(ev.group_id), ev.member, ev.reason)
            case GsaMemberLeft():
                self._member_left(ev)
            case GsaPeerRefused():
                log.warning("key server: G-IKEv2 member at %s refused our GSA_AUTH answer: %s",
                            fmt_addr(ev.peer), ev.reason)
            case _:
                log.debug("key server: %s", ev)

    def group_info(self, g: pm.GroupPolicy) -> dict[str, Any]:
        info: dict[str, Any] = {"id": g.group_id, "name": g.name, "role": "keyserver",
                                "state": "serving" if self.shell else "stopped"}
        teks_cfg = [{"name": t.name, "src": str(t.selector.src), "dst": str(t.selector.dst),
                     "cipher": t.suite.name, "mode": t.mode.value if hasattr(t.mode, "value")
                     else str(t.mode), "lifetime_s": t.lifetime_s} for t in g.teks]
        info["policy"] = {"teks": teks_cfg, "kek": g.kek is not None, "protocols": list(g.protocols),
                          "mlkem": g.mlkem, "g_ikev2_rekey": g.g_ikev2_rekey, "ppk": g.ppk}
        if self.store is not None:
            info["members"] = self.store.member_count(g.group_id)
            info["evicted"] = len(self.store.denied(g.group_id))
            if g.kek is not None and self.store.group(g.group_id) is not None \
                    and self.store.current_kek(g.group_id) is not None:
                info["seq"] = self.store.current_seq(g.group_id)
                info["kek_spi"] = self.store.current_kek(g.group_id).spi.hex()
            d = self.groups.deliveries.get(g.group_id)
            if g.kek is not None:
                info["delivery"] = {"mode": g.kek.rekey_delivery,
                                    "queued": d.queued if d is not None else 0,
                                    **(d.stats if d is not None else {})}
            gcks = self._gcks()
            if g.inband_rekey and gcks is not None:  # G-IKEv2 members rekeyed in band
                kept = gcks.inband.members(g.group_id)
                info["inband"] = {"ike_sas": len(kept),
                                  "pending": sum(1 for v in kept.values() if v["inband_pending"])}
            ctl = self.groups.controllers.get(g.group_id)
            if ctl is not None:
                info["controller"] = ctl.state.value
                info["next_key_event"] = ctl.get_timer()
                info["pending_evictions"] = list(ctl.pending_evictions())
            info["teks"] = [{"spi": f"0x{t.spi:08x}", "algorithm": t.algorithm,
                             "state": t.state.value, "created": t.created,
                             "expires": t.expires} for t in self.store.teks(g.group_id)]
        return info

    def _gcks(self):
        """The G-IKEv2 engine, if this key server runs one."""
        from gkm.ikev2.gcks import ProtocolDemux
        engine = self.shell.engine if self.shell is not None else None
        return engine.g_ikev2 if isinstance(engine, ProtocolDemux) else None

    def send_datagram(self, g: pm.GroupPolicy, data: bytes, dest: tuple[str, int]) -> None:
        """One GROUPKEY-PUSH datagram through the rekey transport (the group shell's delivery
        decides where and when).  Raises OSError."""
        self.rekey_transport.send(data, dest, MulticastOptions.of(g.kek))

    def rekey(self, g: pm.GroupPolicy) -> dict[str, Any]:
        """``msecctl rekey``: new TEKs by GROUPKEY-PUSH (the group controller decides)."""
        from gkm.group import ControllerRefused
        from gkm.store import StoreError

        if self.store is None:
            return {"ok": False, "error": "rekey is not available in this daemon"}
        try:
            result, sent, failed = self.groups.call(g, lambda ctl, now: ctl.rekey(now))
        except (ControllerRefused, RekeyError, StoreError) as e:
            log.warning("group %s: rekey refused: %s", g.label, e)
            return {"ok": False, "error": str(e)}
        return {"ok": True, "id": g.group_id, "seq": result.seqs[-1],
                "teks": [f"0x{x:08x}" for x in result.tek_spis], "sent_to": sent,
                "failed": failed}

    def dissolve(self, group_id: int) -> dict[str, Any]:
        """``msecctl group delete`` (before the reload drops the group): one GROUPKEY-PUSH
        deleting the KEK and every TEK at the members, if the group can push."""
        from gkm.group import ControllerRefused
        from gkm.store import StoreError

        g = self.settings.group(group_id)
        if g is None or self.store is None:
            return {"ok": True, "seq": None, "sent_to": [], "members": []}
        try:
            ev, sent, failed = self.groups.call(g, lambda ctl, now: ctl.dissolve(now))
        except (ControllerRefused, RekeyError, StoreError) as e:
            log.warning("group %s: no GROUPKEY-PUSH for its deletion: %s", g.label, e)
            return {"ok": True, "seq": None, "sent_to": [], "members": [], "push_error": str(e)}
        return {"ok": True, "seq": ev.seq, "sent_to": sent, "failed": failed,
                "members": list(ev.members)}

    def _member_left(self, ev: GsaMemberLeft) -> None:
        """RFC 9838 §2.3.2: a member that says in GSA_REGISTRATION it cannot use a group's
        policy, or leaves, is removed from the group: evicted (it holds the keys, so the group
        is rekeyed without it) and taken off the deny list again, so it may register later."""
        g = self.settings.group(ev.group_id)
        if g is None or self.store is None or self.store.member(ev.group_id, ev.member) is None:
            log.info("key server: %s left group %s, of which it is not a registered member",
                     ev.member, ev.group_id)
            return
        r = self.evict(ev.group_id, [ev.member], ev.reason)
        if r.get("ok"):
            self.lift_deny(ev.group_id, [ev.member])

    # -- eviction and the deny list
    def evict(self, group_id: int, identities: list[str], reason: str) -> dict[str, Any]:
        """``msecctl evict``: the members leave the group (new KEK by LKH, new TEKs; or, in the
        batch window, at its end) and every named identity goes on the deny list, registered
        or not."""
        from gkm.group import ControllerRefused
        from gkm.store import StoreError

        g = self.settings.group(group_id)
        if self.store is None or g is None:
            return {"ok": False, "error": f"this daemon is not the key server of group {group_id}"}
        try:
            r, sent, failed = self.groups.call(
                g, lambda ctl, now: ctl.evict(identities, reason, now))
        except (ControllerRefused, RekeyError, StoreError) as e:
            log.warning("group %s: eviction of %s failed: %s", g.label, ", ".join(identities), e)
            return {"ok": False, "error": str(e)}
        for i in r.evicted:
            self._certificates.pop((group_id, i), None)
        for i in r.not_members:
            log.warning("group %s: %s is not a registered member; on the deny list (%s)",
                        g.label, i, reason)
        if r.error is not None:
            log.warning("group %s: %s on the deny list, but no rekey yet: %s", g.label,
                        ", ".join(r.evicted), r.error)
            return {"ok": False, "error": f"{', '.join(r.evicted)} on the deny list, but the "
                                          f"rekey that evicts them failed: {r.error}"}
        spis = [f"0x{x:08x}" for x in r.tek_spis]
        return {"ok": True, "id": group_id, "evicted": list(r.evicted),
                "not_members": list(r.not_members), "reason": reason, "mode": r.mode,
                "scheduled_at": r.scheduled_at,
                "seq": r.seqs[-1] if r.seqs else None, "seqs": list(r.seqs), "teks": spis,
                "sent_to": sent, "failed": failed}

    def denied(self, group_id: int) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return [{"identity": d.identity, "at": d.at, "reason": d.reason}
                for d in self.store.denied(group_id)]

    def lift_deny(self, group_id: int, identities: list[str]) -> dict[str, Any]:
        if self.store is None:
            return {"ok": False, "error": "no key server state"}
        lifted = [i for i in identities if self.store.lift(group_id, i)]
        for i in lifted:
            log.info("group %s: %s taken off the deny list: it may register again",
                     self._label(group_id), i)
        return {"ok": True, "id": group_id, "lifted": lifted,
                "not_denied": [i for i in identities if i not in lifted]}

    def members(self, group_id: int) -> list[dict[str, Any]]:
        """Registered members and evicted (denied) identities, by identity; "evicting": on
        the deny list, still registered until the batch rekey goes out."""
        if self.store is None:
            return []
        out = {m.identity: {"identity": m.identity, "state": "registered",
                            "address": m.address, "registered_at": m.registered_at,
                            "protocol": m.protocol}
               for m in self.store.members(group_id)}
        g = self.settings.group(group_id)
        if g is not None and g.kek is not None and g.kek.unicast:
            # unicast delivery with ACKs (soft state, gkm.group.delivery): "lost" = nothing
            # is sent to it until it registers again
            delivery = self.groups.delivery_members(group_id)
            for identity, row in out.items():
                d = delivery.get(identity) or {"last_acked_seq": None, "missed_rekeys": 0,
                                               "lost": False, "unacknowledged": []}
                row.update(d)
                if d["lost"]:
                    row["state"] = "lost"
        gcks = self._gcks()
        if g is not None and g.inband_rekey and gcks is not None:
            # G-IKEv2 in band: whether its IKE SA is kept, the last rekey it acknowledged
            kept = gcks.inband.members(group_id)
            for identity, row in out.items():
                if row["protocol"] == "g-ikev2":
                    row.update(kept.get(identity, {"inband_acknowledged": None, "inband_pending": False,
                                                   "inband_attempts": 0}), inband_ike_sa=identity in kept)
        for d in self.store.denied(group_id):
            # still registered: evicted, its rekey not sent yet (batch window)
            state = "evicting" if d.identity in out else "evicted"
            out[d.identity] = {**out.get(d.identity, {"identity": d.identity, "address": None}),
                               "state": state, "evicted_at": d.at, "reason": d.reason}
        return [out[k] for k in sorted(out)]

    def evict_unauthorized(self, settings: pm.KeyServerSettings) -> list[str]:
        """After a reload: evict registered members the new policy no longer admits (identity
        removed, pattern no longer matching, certificate revoked by the CRLs).  Returns the
        changes for ``msecctl reload``."""
        changes = []
        if self.store is None:
            return changes
        for g in settings.groups:
            why: dict[str, list[str]] = {}
            for m in self.store.members(g.group_id):
                reason = self._no_longer_admitted(g, m)
                if reason is not None:
                    why.setdefault(reason, []).append(m.identity)
            for reason, ids in why.items():
                r = self.evict(g.group_id, ids, reason)
                if r["ok"]:
                    changes.append(f"group {g.group_id}: evicted {', '.join(ids)} ({reason})")
                else:
                    changes.append(f"group {g.group_id}: eviction of {', '.join(ids)} failed: "
                                   f"{r['error']}")
        return changes

    def would_evict(self, g: pm.GroupPolicy) -> list[dict[str, str]]:
        """``msecctl reload --check``: the registered members a reload to ``g`` would evict."""
        if self.store is None:
            return []
        out = []
        for m in self.store.members(g.group_id):
            reason = self._no_longer_admitted(g, m)
            if reason is not None:
                out.append({"identity": m.identity, "reason": reason})
        return out

    def would_roll(self, g: pm.GroupPolicy) -> dict[str, Any] | None:
        """``msecctl reload --check``: what a reload to ``g`` would replace (the group
        controller's plan), or None if nothing."""
        ctl = self.groups.peek(g.group_id)
        old = self.settings.group(g.group_id)
        if ctl is None or old is None:
            return None
        retire, fresh, new_kek = ctl.plan_policy(g)
        new_kek = new_kek or (old.kek is not None and g.kek is not None
                              and old.kek.signing_key != g.kek.signing_key)
        live = ctl.group_state.teks_in(KeyState.CURRENT, KeyState.NEXT)
        if not live or not (retire or fresh or new_kek):
            return None  # no keys yet: the next registration gets the new policy's
        return {"teks": [f"0x{t.spi:08x}" for t in retire],
                "new_teks": [tp.name for tp in fresh], "new_kek": bool(new_kek)}

    def current_teks(self, group_id: int) -> list[str]:
        """The SPIs of the group's TEKs in use (current or next), as msecctl shows them."""
        if self.store is None:
            return []
        return [f"0x{t.spi:08x}" for t in self.store.teks(group_id)
                if t.state.value in ("current", "next")]

    def _no_longer_admitted(self, g: pm.GroupPolicy, m) -> str | None:
        kind, _, value = m.identity.partition(":")
        try:
            host = host_of(m.address)
            address = ipaddress.ip_address(host) if host else None
            identity = pm.Identity(pm.IdKind(kind), value, address)
        except ValueError:
            return None  # not an identity this msec wrote: leave it alone
        if not g.authorizes(identity).allowed:
            return "no longer authorized by the group policy"
        cert = self._certificates.get((g.group_id, m.identity))
        if cert is not None:
            revoked = self.revocations.revoked(cert)
            if revoked is not None:
                return revoked
        return None

    def close(self) -> None:
        self.groups.close()
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        self.endpoints = {}
        if self.rekey_transport is not None:
            self.rekey_transport.close()
            self.rekey_transport = None
        if self.store is not None:
            self.store.close()
            self.store = None
            marker, self._running_marker = self._running_marker, None
            if marker is not None:
                marker.unlink(missing_ok=True)
