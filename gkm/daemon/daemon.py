"""msecd's core: one configuration, any mix of roles, asyncio around the sans-I/O engines.

* Key server role (:mod:`.keyserver`): one engine for all groups, state in SQLite.
* Member role (:mod:`.member`): one :class:`~.member.MemberSession` per ``[[member.group]]``.
* On start, SAs msec left in the kernel are adopted, not removed; on SIGTERM/SIGINT they stay
  (traffic keeps flowing across a restart); a group dropped from the configuration by a reload
  has its SAs removed.
* Reload (SIGHUP, ``msecctl reload``): the new file is validated completely first; a refused
  file changes nothing and the problems are logged and returned.
* The control socket's requests (:meth:`Daemon.handle_request`); those that change the
  configuration (``msecctl group create``, ``join``, ...) write drop-in files and reload
  (:mod:`.config_edit`).

Logging: one line per registration, refusal and SA change; never key material (the events'
and policies' reprs are redacted, and only SPIs, names and lifetimes are logged).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from gkm import __version__
from policy import model as pm
from policy.config import ConfigError, advisories, diff, load_config

from .activity import Activity
from .config_edit import ConfigEditor
from .control import ControlServer
from .engines import EngineFactory, EngineUnavailable, StartupError
from .keylog import KeyLog
from .keyserver import KeyServerRole
from .sa_view import group_sas
from .member import ExpireWatch, MemberSession, RekeySockets
from .member_store import MemberStateFiles

log = logging.getLogger("msecd")

__all__ = ["Daemon", "StartupError"]


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
        accept_state: bool = False,
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
        #: ``msecd --accept-state``: serve a key server state that is missing, empty or older
        #: than its anchor (gkm.store_anchor), once
        self.accept_state = accept_state
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.keyserver: KeyServerRole | None = None
        self.sessions: dict[int, MemberSession] = {}
        self.installer = None
        self.control: ControlServer | None = None
        self.started_at: float | None = None
        self.last_reload: dict[str, Any] | None = None
        self._stop: asyncio.Event | None = None
        self._adopted: dict[int, list[int]] = {}  # group -> SPIs an earlier msecd left
        self.rekey_sockets: RekeySockets | None = None
        self.expiry_watch: ExpireWatch | None = None
        self._reg_locks: dict[tuple, asyncio.Lock] = {}
        self._reload_lock: asyncio.Lock | None = None
        #: the opt-in Wireshark key log (``daemon.keylog_file``), None when off
        self.keylog: KeyLog | None = None
        #: event counts (metrics) and msecctl monitor's subscribers
        self.activity = Activity(clock)
        self.metrics = None  # .metrics.MetricsServer when [daemon] metrics_listen is set
        self.editor = ConfigEditor(self)  # msecctl group create/delete/..., join, leave

    # -- life cycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.started_at = self.clock()
        self.rekey_sockets = RekeySockets(self.loop)
        for a in advisories(self.config):
            log.warning("config: %s", a)
        try:
            if self.config.daemon.keylog_file is not None:
                self.keylog = KeyLog(self.config.daemon.keylog_file)
            if self.config.member is not None and self.config.member.groups:
                self.installer = self.factory.installer()
                self._adopt()
                self._watch_expiries()
            if self.config.keyserver is not None:
                self.keyserver = KeyServerRole(self, self.config.keyserver)
                await self.keyserver.start()
            self.control = ControlServer(self.control_path, self.handle_request,
                                         subscribe=self.activity.subscribe)
            await self.control.start()
            if self.config.daemon.metrics_listen is not None:
                from .metrics import MetricsServer

                self.metrics = MetricsServer(self, *self.config.daemon.metrics_listen)
                self.metrics.start()
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
        match credentials:
            case pm.PskCredential():
                ident = credentials.identity
            case pm.CertCredential():
                ident = str(credentials.cert_file)
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
                self._forget_member_state(gid)
        self._adopted = {g: adopted[g] for g in groups & configured}

    def _watch_expiries(self) -> None:
        if self.expiry_watch is not None or self.installer is None or not self.installer.kernel:
            return
        try:
            self.expiry_watch = ExpireWatch(self)
        except OSError as e:
            log.warning("cannot subscribe to the kernel's SA expiry events: %s", e)

    def _add_session(self, g: pm.MemberGroup) -> None:
        s = MemberSession(self, g, adopted=frozenset(self._adopted.pop(g.group_id, ())))
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
        kept = sum(1 for s in self.sessions.values() if s.holds_keys)
        kernel = self.installer is not None and self.installer.kernel
        await self._teardown()
        if kept and kernel:
            log.info("msecd stopped; the SAs of %d member group(s) stay in the kernel: traffic "
                     "keeps flowing across a daemon restart", kept)
        else:
            log.info("msecd stopped")

    async def _teardown(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for s in self.sessions.values():
            s.stop()
        if self.expiry_watch is not None:
            self.expiry_watch.close()
            self.expiry_watch = None
        if self.rekey_sockets is not None:
            self.rekey_sockets.close()
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
        if self.keylog is not None:
            self.keylog.close()
            self.keylog = None

    def _forget_member_state(self, group_id: int) -> None:
        """A member group gone from the configuration: its saved state goes with its SAs."""
        try:
            MemberStateFiles(self.config.daemon.state_dir).forget(group_id)
        except OSError as e:
            log.error("group %s: cannot delete its saved member state: %s", group_id,
                      e.strerror or e)

    # -- SAs
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
        # CRL files are read again at every reload, even when their names did not change
        crl_refresh = (self.keyserver is not None and new.keyserver is not None
                       and bool(new.keyserver.crl_files))
        if d.empty and not crl_refresh:
            self.last_reload = {"at": self.clock(), "ok": True, "changes": []}
            log.info("reload: no changes")
            return {"ok": True, "changes": []}
        restart_needed = [s for s in d.settings_changed if s.startswith("daemon.")]
        for s in restart_needed:
            log.warning("reload: %s changed; it takes effect at the next restart", s)
        old = self.config
        dissolved = []
        if self.keyserver is not None:
            # a deleted group's members are told while the key server still holds its keys:
            # one PUSH deleting the KEK and every TEK (their SAs go at once)
            for gid in d.keyserver_removed:
                r = self.keyserver.dissolve(gid)
                dissolved.append({"id": gid, "seq": r.get("seq"), "sent_to": r.get("sent_to"),
                                  "members": r.get("members")})
                if r.get("seq") is not None:
                    changes.append(f"keyserver group {gid}: GROUPKEY-PUSH SEQ {r['seq']} "
                                   "deleted its KEK and TEKs at the members")
        # key server role
        try:
            if new.keyserver is None and self.keyserver is not None:
                self.keyserver.close()
                self.keyserver = None
                changes.append("keyserver stopped")
            elif new.keyserver is not None and self.keyserver is None:
                role = KeyServerRole(self, new.keyserver)
                try:
                    await role.start(strict=True)
                except BaseException:
                    role.close()
                    raise
                self.keyserver = role
                changes.append("keyserver started")
            elif new.keyserver is not None and (
                    d.keyserver_added or d.keyserver_removed or d.keyserver_changed
                    or any(s.startswith("keyserver.") for s in d.settings_changed)):
                rekeys = await self.keyserver.reconfigure(
                    new.keyserver,
                    groups_only=not any(s.startswith("keyserver.") and s != "keyserver.crl_files"
                                        for s in d.settings_changed))
                changes.append("keyserver reconfigured")
                changes += rekeys
                changes += self.keyserver.evict_unauthorized(new.keyserver)
            elif crl_refresh:
                self.keyserver.refresh_crls(new.keyserver)
                changes.append(f"keyserver: {len(new.keyserver.crl_files)} CRL(s) read again")
                changes += self.keyserver.evict_unauthorized(new.keyserver)
        except (StartupError, EngineUnavailable, OSError) as e:
            # nothing was swapped in: the running key server keeps serving, and the member
            # role is left alone too (the file is refused as a whole)
            log.error("reload refused, keeping the running configuration: %s", e)
            self.last_reload = {"at": self.clock(), "ok": False, "problems": [str(e)]}
            return {"ok": False, "error": f"reload refused, the running configuration is "
                    f"unchanged: {e}", "problems": []}
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
                self._watch_expiries()
            except (EngineUnavailable, OSError) as e:
                log.error("reload: cannot open the SA installer: %s", e)
                changes.append(f"member SA installation unavailable: {e}")
        for gid in d.member_removed:
            s = self.sessions.pop(gid, None)
            if s is not None:
                s.stop()
            self._remove_sas(gid)
            self._forget_member_state(gid)
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
        return {"ok": True, "changes": changes, "restart_needed": restart_needed,
                "dissolved": dissolved}

    # -- control
    async def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "groups":
            return {"ok": True, "groups": self.groups()}
        if cmd == "sa":
            return self.sas(req.get("id"))
        if cmd in ("group", "members", "rekey", "evict", "deny", "deny-lift"):
            gid = req.get("id")
            if isinstance(gid, str) and gid.strip().isdigit():
                gid = int(gid)
            if not isinstance(gid, int) or isinstance(gid, bool):
                return {"ok": False, "error": f'"{cmd}" needs "id": a group id'}
            if cmd == "group":
                return self.group(gid)
            if self.keyserver is None or self.keyserver.settings.group(gid) is None:
                return {"ok": False, "error": f"this daemon is not the key server of group {gid}"}
            if cmd == "rekey":
                return self.rekey(gid)
            if cmd == "members":
                return self.members(gid)
            if cmd == "deny":
                return {"ok": True, "id": gid, "denied": self.keyserver.denied(gid)}
            identities = member_identities(req.get("identities"))
            if isinstance(identities, str):
                return {"ok": False, "error": f'"{cmd}": {identities}'}
            if cmd == "deny-lift":
                return self.keyserver.lift_deny(gid, identities)
            reason = req.get("reason", "evicted by the operator")
            if not isinstance(reason, str) or not 0 < len(reason) <= 200 \
                    or not reason.isprintable():
                return {"ok": False, "error": '"evict": "reason" must be printable text of '
                        '1..200 characters'}
            return self.keyserver.evict(gid, identities, reason)
        if cmd == "reload":
            return await self.reload()
        if cmd in ConfigEditor.COMMANDS:
            return await self.editor.handle(req)
        return {"ok": False, "error": f"unknown command {cmd[:40]!r}"}

    def status(self) -> dict[str, Any]:
        now = self.clock()
        out: dict[str, Any] = {
            "ok": True, "version": __version__, "pid": os.getpid(), "config": str(self.config_path),
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
                                "phase1_failures": self.keyserver.phase1_failures,
                                "natt_dropped": self.keyserver.natt_dropped}
        if self.sessions:
            out["member"] = {
                "groups": len(self.sessions),
                "registered": sum(1 for s in self.sessions.values() if s.state == "registered"),
                "kernel": self.installer is not None and self.installer.kernel,
            }
        return out

    def status_line(self) -> str:
        """One line for systemd's STATUS= (``systemctl status``): roles and how they fare."""
        parts = []
        if self.keyserver is not None:
            parts.append(f"key server of {len(self.keyserver.settings.groups)} group(s) on "
                         f"{', '.join(self.keyserver.listen)}, "
                         f"{self.keyserver.registrations} registration(s)")
        if self.sessions:
            registered = sum(1 for s in self.sessions.values() if s.state == "registered")
            parts.append(f"member of {len(self.sessions)} group(s), {registered} registered")
        return "; ".join(parts) or "no roles configured"

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

    def sas(self, gid: Any = None) -> dict[str, Any]:
        """``msecctl sa [ID]``: msec's kernel SAs and policies of each member group (or of
        one), with counters and expiry (:mod:`gkm.daemon.sa_view`)."""
        if isinstance(gid, str) and gid.strip().isdigit():
            gid = int(gid)
        if gid is not None and (not isinstance(gid, int) or isinstance(gid, bool)):
            return {"ok": False, "error": '"sa": "id" must be a group id'}
        groups = {g.group_id: g for g in (self.config.member.groups if self.config.member else ())}
        if gid is not None and gid not in groups:
            return {"ok": False, "error": f"this daemon is not a member of group {gid}"}
        wanted = [gid] if gid is not None else sorted(groups)
        inst = self.installer
        views, counters = {}, []
        if inst is not None and inst.kernel:
            try:
                views = inst.views(wanted)
                counters = inst.read_counters()
            except OSError as e:
                return {"ok": False, "error": f"cannot read the kernel's SAs: {e}"}
        return {"ok": True, "kernel": bool(inst is not None and inst.kernel),
                "groups": [group_sas(g, groups[g].name, views.get(g), counters)
                           for g in wanted]}

    def members(self, gid: int) -> dict[str, Any]:
        if self.keyserver is None or self.keyserver.settings.group(gid) is None:
            return {"ok": False, "error": f"this daemon is not the key server of group {gid}"}
        return {"ok": True, "id": gid, "members": self.keyserver.members(gid)}

#: identity kinds as the store and ``msecctl members`` write them (``kind:value``)
_IDENTITY_KINDS = ("key-id:", "fqdn:", "user-fqdn:", "address:", "dn:")


def member_identities(raw: Any) -> list[str] | str:
    """A control request's identities in the store's ``kind:value`` form (a bare name is a
    PSK identity), or the reason they are not acceptable."""
    if not isinstance(raw, list) or not raw:
        return '"identities" must be a non-empty list of member identities'
    if len(raw) > 10_000:
        return f"{len(raw)} identities in one request (at most 10000)"
    out: list[str] = []
    for i in raw:
        if not isinstance(i, str) or not 0 < len(i) <= 1024 or not i.isprintable():
            return f"identity {str(i)[:40]!r} is not printable text of 1..1024 characters"
        key = i if i.startswith(_IDENTITY_KINDS) else f"key-id:{i}"
        if key not in out:
            out.append(key)
    return out
