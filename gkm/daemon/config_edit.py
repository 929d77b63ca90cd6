"""msecctl's configuration changes: groups created, deleted, authorized, joined and left as
drop-in files (:mod:`policy.dropin`), and ``reload --check``.

Every change follows one path: refuse if the files on disk do not hold the running
configuration (an edit not reloaded yet would slip in with the change), build the drop-in's
would-be text, validate the whole
would-be configuration (main file + drop-ins) with :func:`policy.config.load_config` exactly
as ``msecd --check`` and a restart will, and only if it is accepted write the drop-in
atomically (0600) and apply it through the daemon's reload (:meth:`Daemon._reload`), which
touches nothing but the groups that differ.  A refused change writes nothing; a reload that
fails after the write puts the previous drop-in back.  Groups defined in the main file are the
operator's: msecctl refuses to change or delete them (edit the file, then ``msecctl reload``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy import model as pm
from policy.config import ConfigError, diff, load_config
from policy.dropin import (authorize_entry, dropin_dir, dumps, keyserver_group_file,
                           member_group_file, remove_atomic, write_atomic)

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("msecd")

__all__ = ["ConfigEditor", "preview"]

class ConfigEditor:
    """The control requests that change the configuration; one per daemon."""

    COMMANDS = ("group-create", "group-delete", "group-authorize", "group-deauthorize",
                "join", "leave", "reload-check")

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    @property
    def directory(self) -> Path:
        return dropin_dir(self.daemon.config_path)

    # -- requests
    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "reload-check":
            return self.check(req.get("file"))
        if cmd in ("group-create", "join"):
            group = req.get("group")
            if not isinstance(group, dict):
                return {"ok": False, "error": f'"{cmd}" needs "group": a table'}
            return await self._create(cmd, group)
        gid = req.get("id")
        if not isinstance(gid, int) or isinstance(gid, bool):
            return {"ok": False, "error": f'"{cmd}" needs "id": a group id'}
        if cmd in ("group-delete", "leave"):
            return await self._delete(cmd, gid)
        ids = req.get("identities")
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, str) and 0 < len(i) <= 1024 and i.isprintable() for i in ids):
            return {"ok": False, "error": f'"{cmd}" needs "identities": a non-empty list of '
                    "member identities"}
        return await self._authorize(gid, ids, cmd == "group-authorize")

    # -- create / join
    async def _create(self, cmd: str, group: dict[str, Any]) -> dict[str, Any]:
        keyserver = cmd == "group-create"
        gid = group.get("id")
        if not isinstance(gid, int) or isinstance(gid, bool):
            return {"ok": False, "error": "the group needs an integer \"id\""}
        running = self._running_ids(keyserver)
        if gid in running:
            where = self._origin(keyserver, gid)
            return {"ok": False, "error": f"group {gid} already exists (in {where})"}
        name = keyserver_group_file(gid) if keyserver else member_group_file(gid)
        role = "keyserver" if keyserver else "member"
        return await self._change(name, {role: {"group": [group]}}, gid,
                                  "created" if keyserver else "joined")

    # -- delete / leave
    async def _delete(self, cmd: str, gid: int) -> dict[str, Any]:
        keyserver = cmd == "group-delete"
        if gid not in self._running_ids(keyserver):
            what = "key server of" if keyserver else "a member of"
            return {"ok": False, "error": f"this daemon is not {what} group {gid}"}
        name = keyserver_group_file(gid) if keyserver else member_group_file(gid)
        if not (self.directory / name).exists():
            return self._not_ours(gid, name, "remove it")
        # the reload tells a deleted group's members (Daemon._reload: a PUSH deleting the KEK
        # and every TEK); a member's reload removes its SAs
        return await self._change(name, None, gid, "deleted" if keyserver else "left")

    # -- authorize / deauthorize
    async def _authorize(self, gid: int, identities: list[str], add: bool) -> dict[str, Any]:
        import tomllib

        if gid not in self._running_ids(True):
            return {"ok": False, "error": f"this daemon is not the key server of group {gid}"}
        name = keyserver_group_file(gid)
        path = self.directory / name
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._not_ours(gid, name, "change its [keyserver.group.authorize]")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            return {"ok": False, "error": f"cannot read {path}: {e}"}
        try:
            group = doc["keyserver"]["group"][0]
        except (KeyError, IndexError, TypeError):
            return {"ok": False, "error": f"{path} does not hold one [[keyserver.group]]"}
        auth = group.setdefault("authorize", {})
        done, unchanged = [], []
        for i in identities:
            key, value = authorize_entry(i)
            values = auth.setdefault(key, [])
            if add and value not in values:
                values.append(value)
                done.append(i)
            elif not add and value in values:
                values.remove(value)
                done.append(i)
            else:
                unchanged.append(i)
        for key in [k for k, v in auth.items() if v == []]:
            del auth[key]
        if not done:
            return {"ok": False, "error": "nothing to change: " + ", ".join(
                f"{i} is {'already' if add else 'not'} named in the group's authorization"
                for i in unchanged)}
        r = await self._change(name, doc, gid, "authorized" if add else "deauthorized")
        if r.get("ok"):
            r["identities"] = done
            r["unchanged"] = unchanged
        return r

    # -- the one path every change takes
    async def _change(self, name: str, doc: dict | None, gid: int, verb: str) -> dict[str, Any]:
        daemon = self.daemon
        path = self.directory / name
        text = None
        if doc is not None:
            try:
                text = dumps(doc, header=f"written by msecctl (group {gid} {verb}); "
                                         "msecctl or an editor may change it")
            except ValueError as e:
                return {"ok": False, "error": f"group refused, nothing changed: {e}",
                        "problems": []}
        assert daemon._reload_lock is not None
        async with daemon._reload_lock:
            # the change is applied by a reload of everything: only if the files hold what
            # runs, so that nobody's unreloaded edit of another group slips in with it
            try:
                on_disk = load_config(daemon.config_path)
            except ConfigError as e:
                return {"ok": False, "error": f"group {gid} not {verb}: the configuration on "
                        "disk is refused; fix it first (msecctl reload --check shows why)",
                        "problems": [str(p) for p in e.problems]}
            if not diff(daemon.config, on_disk).empty:
                return {"ok": False, "error": f"group {gid} not {verb}: the configuration on "
                        "disk differs from the running one; see msecctl reload --check, then "
                        "msecctl reload, then try again", "problems": []}
            try:
                load_config(daemon.config_path, dropins={name: text})
            except ConfigError as e:
                problems = [str(p) for p in e.problems]
                log.warning("group %s: not %s, the configuration would be refused: %s", gid,
                            verb, "; ".join(problems))
                return {"ok": False, "error": f"group {gid} not {verb}: the configuration "
                        "would be refused; nothing changed", "problems": problems}
            try:
                previous = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                previous = None
            try:
                if text is None:
                    remove_atomic(path)
                else:
                    write_atomic(path, text, 0o600)
            except OSError as e:
                return {"ok": False, "error": f"cannot write {path}: {e}", "problems": []}
            r = await daemon._reload()
            if not r.get("ok"):
                # the running configuration is unchanged: so is the disk
                if previous is None:
                    remove_atomic(path)
                else:
                    write_atomic(path, previous, 0o600)
                return r
        log.info("group %s %s by msecctl (%s)", gid, verb, path)
        out = {"ok": True, "id": gid, "action": verb, "file": str(path),
               "changes": r.get("changes", [])}
        for d in r.get("dissolved") or []:
            if d["id"] == gid:
                out.update(push_seq=d["seq"], sent_to=d["sent_to"] or [],
                           members=d["members"] or [])
        return out

    # -- reload --check
    def check(self, file: Any) -> dict[str, Any]:
        """Validate ``file`` (default: the running configuration's file, with its drop-ins) and
        say what a reload would change, without changing anything."""
        daemon = self.daemon
        if file is not None and not isinstance(file, str):
            return {"ok": False, "error": '"file" must be a path'}
        path = Path(file) if file else daemon.config_path
        try:
            new = load_config(path)
        except ConfigError as e:
            return {"ok": False, "error": f"{path} would be refused", "file": str(path),
                    "problems": [str(p) for p in e.problems]}
        return {"ok": True, "file": str(path), **preview(daemon, daemon.config, new)}

    # -- helpers
    def _not_ours(self, gid: int, name: str, what: str) -> dict[str, Any]:
        return {"ok": False, "error": f"group {gid} was not created by msecctl (no "
                f"{self.directory / name}): edit the file that defines it ({self.daemon.config_path}"
                f" or one of its drop-ins) to {what}, then run msecctl reload"}

    def _running_ids(self, keyserver: bool) -> set[int]:
        c = self.daemon.config
        role = c.keyserver if keyserver else c.member
        return {g.group_id for g in role.groups} if role is not None else set()

    def _origin(self, keyserver: bool, gid: int) -> str:
        name = keyserver_group_file(gid) if keyserver else member_group_file(gid)
        p = self.directory / name
        return str(p) if p.exists() else str(self.daemon.config_path)


def preview(daemon: "Daemon", old: pm.DaemonConfig, new: pm.DaemonConfig) -> dict[str, Any]:
    """What a reload from ``old`` to ``new`` would do, in stable field names: groups added,
    removed and changed per role, members the new policy would evict, TEKs that would roll
    (``teks``: SPIs replaced or deleted, ``new_teks``: TEK policies that get new keys,
    ``new_kek``; as the group controllers plan it), settings that only a restart applies."""
    d = diff(old, new)
    ks = daemon.keyserver
    evicted: list[dict[str, Any]] = []
    rolled: list[dict[str, Any]] = []
    changed = [{"id": c.group_id, "role": "keyserver", "fields": list(c.fields)}
               for c in d.keyserver_changed]
    changed += [{"id": c.group_id, "role": "member", "fields": list(c.fields),
                 "reregister": c.needs_reregistration} for c in d.member_changed]
    if ks is not None and new.keyserver is not None:
        for g in new.keyserver.groups:
            for m in ks.would_evict(g):
                evicted.append({"id": g.group_id, **m})
        for c in d.keyserver_changed:
            roll = ks.would_roll(new.keyserver.group(c.group_id)) if c.needs_rekey else None
            if roll is not None:
                rolled.append({"id": c.group_id, **roll, "why": "TEK or KEK policy changed"})
    if ks is not None:
        for gid in d.keyserver_removed:
            rolled.append({"id": gid, "teks": ks.current_teks(gid), "new_teks": [],
                           "new_kek": False, "why": "group removed: a PUSH deletes its keys"})
    return {
        "groups_added": [{"id": g, "role": "keyserver"} for g in d.keyserver_added]
        + [{"id": g, "role": "member"} for g in d.member_added],
        "groups_removed": [{"id": g, "role": "keyserver"} for g in d.keyserver_removed]
        + [{"id": g, "role": "member"} for g in d.member_removed],
        "groups_changed": changed,
        "members_evicted": evicted,
        "teks_rolled": rolled,
        "restart_needed": [s for s in d.settings_changed if s.startswith("daemon.")],
        "settings_changed": list(d.settings_changed),
        "unchanged": d.empty,
    }
