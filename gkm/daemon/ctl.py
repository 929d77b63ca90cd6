"""msecctl: talk to msecd over its control socket.

    msecctl [--socket PATH | --config FILE] [--json] COMMAND ...

    status                                   pid, uptime, roles, last reload
    groups                                   every group, both roles
    group show ID
    group create ID --tek SPEC [--tek SPEC...] [--kek SPEC] [--authorize IDENTITY...]
                 [--name N] [--activation-delay D] [--deactivation-delay D]
    group delete ID                          a group msecctl created (members told by PUSH)
    group authorize ID IDENTITY...           admit identities to a group msecctl created
    group deauthorize ID IDENTITY...         stop admitting them (registered ones are evicted)
    join ID --key-server ADDR [--key-server ADDR...] (--psk-identity I --psk-file F |
         --cert F --key F --ca F [--ca F...]) [--key-server-identity IDENTITY...]
         [--name N] [--interface IF]         member: join a group
    leave ID                                 member: leave a group msecctl joined (SAs removed)
    members ID                               each member: registered, lost or evicted, when,
                                             why; unicast delivery: last SEQ acknowledged,
                                             rekeys missed in a row
    sa [ID]                                  member: msec's kernel SAs and policies, counters
    reload [--check [FILE]]                  apply the configuration; --check: validate FILE
                                             (default: the running file) and show what would
                                             change, changing nothing
    rekey ID
    evict ID IDENTITY... [--reason TEXT]
    deny ID                                  the group's deny list (evicted identities)
    deny lift ID IDENTITY...                 take identities off the deny list
    monitor                                  live events, one line each (Ctrl-C ends)
    init CONFIG...                           create the PSKs, keys and certificates the
                                             configurations name and lack (gkm.daemon.provision;
                                             no daemon needed)
    completion bash                          print the bash completion script

An IDENTITY is written as ``msecctl members`` shows it (``key-id:gm1``, ``fqdn:h.example.org``,
``dn:CN=gm3,O=Example``, ``address:192.0.2.7``); a bare name is a PSK identity (``gm1`` is
``key-id:gm1``).  In ``group authorize`` and ``--authorize``, ``address:`` takes a prefix
(``address:192.0.2.0/24``) and ``fqdn:``/``dn:`` take the patterns of ``[keyserver.group.authorize]``.

A TEK SPEC is ``key=value`` pairs separated by commas, the keys of ``[[keyserver.group.tek]]``:
``src=10.1.0.0/16,dst=239.1.1.1,protocol=udp,dst_port=5004,mode=tunnel,cipher=aes-gcm-128,
lifetime=1h`` (``senders=gm1;gm2``: identities separated by ``;``).  A KEK SPEC likewise, the keys
of ``[keyserver.group.kek]``: ``signing_key=/etc/msec/ks-sign.pem,signature=ecdsa-p256,
rekey_address=239.192.0.1``.  Relative file names are taken from msecctl's working directory.

What ``group create`` and ``join`` make is a drop-in file ``<config>.d/keyserver-group-ID.toml``
(``member-group-ID.toml``) that the daemon writes only after the whole would-be configuration
passed the same checks as ``msecd --check``; then it reloads, other groups undisturbed.  Groups of
the main file are changed by editing it (msecctl refuses: exit 1).

``--json`` prints the daemon's response object as one JSON line (``monitor --json``: one JSON
object per event; sorted keys; every response has
``"ok"``; a refusal has ``"error"`` and ``"problems"``, a list of ``FILE: KEY: reason`` lines).
Field names are stable: new fields may be added, existing ones keep their name and meaning.

Exit status: 0 success; 1 the daemon said no (``"ok": false``: a refused change or reload, whose
problems are printed, an unknown group) or could not be talked to (permission denied, a broken
answer); 2 usage error (nothing was sent); 3 msecd is not running (no control socket).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from gkm import __version__

__all__ = ["main", "request", "render", "NotRunning", "DEFAULT_SOCKET", "EXIT_OK", "EXIT_REFUSED",
           "EXIT_USAGE", "EXIT_NOT_RUNNING"]

DEFAULT_SOCKET = "/run/msec/control.sock"


class NotRunning(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(f"msecd is not running (no control socket at {path})")
        self.path = path


def request(path: str, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NotRunning(path) from None
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            # msecd may answer and close before reading (a refused peer, too many
            # connections): its answer is still waiting to be read
            pass
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise ConnectionError("msecd closed the connection without answering")
    return json.loads(buf)


def monitor(path: str, out, as_json: bool) -> int:
    """Subscribe and print each notice as it comes, until msecd closes the stream (stopped,
    or it dropped us for reading too slowly: exit 1) or the user interrupts (exit 0)."""
    from .activity import notice_text

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NotRunning(path) from None
        s.sendall(b'{"cmd": "monitor"}\n')
        f = s.makefile("rb")
        first = f.readline()
        if not first:
            raise ConnectionError("msecd closed the connection without answering")
        resp = json.loads(first)
        if not resp.get("ok"):
            print(render("monitor", resp), file=sys.stderr)
            return 1
        for line in f:
            obj = json.loads(line)
            print(json.dumps(obj, sort_keys=True) if as_json else notice_text(obj), file=out,
                  flush=True)
            if obj.get("event") == "dropped":
                return 1
        print("msecctl: msecd closed the monitor stream", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        s.close()


# --------------------------------------------------------------------------- text output


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols)


def _duration(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    s = int(s)
    d, h, m = s // 86400, s // 3600 % 24, s // 60 % 60
    text = f"{d}d {h}h {m}m {s % 60}s" if d else f"{h}h {m}m {s % 60}s" if h else \
        f"{m}m {s % 60}s" if m else f"{s}s"
    return f"{text} ({s} s)" if s >= 60 else text


def _status(r: dict[str, Any]) -> str:
    lines = [f"msecd {r.get('version', '(version unknown)')} running, pid {r.get('pid')}, "
             f"up {_duration(r.get('uptime_s'))}",
             f"config: {r.get('config')}",
             f"roles: {', '.join(r.get('roles') or []) or 'none'}"]
    ks = r.get("keyserver")
    if ks:
        lines.append(f"key server: {ks.get('groups')} group(s), listening on "
                     f"{', '.join(ks.get('listen') or [])}; {ks.get('registrations')} "
                     f"registration(s), {ks.get('refusals')} refusal(s) since start")
    mb = r.get("member")
    if mb:
        lines.append(f"member: {mb.get('registered')}/{mb.get('groups')} group(s) registered"
                     + ("" if mb.get("kernel") else " (kernel SA installation off)"))
    lr = r.get("last_reload")
    if lr:
        lines.append(f"last reload: {_when(lr.get('at'))} "
                     + ("applied" if lr.get("ok") else
                        f"REFUSED ({len(lr.get('problems') or [])} problem(s))"))
    return "\n".join(lines)


def _groups(r: dict[str, Any]) -> str:
    gs = r.get("groups") or []
    if not gs:
        return "no groups"
    rows = []
    for g in gs:
        extra = (f"{g.get('members')} member(s)" if g.get("role") == "keyserver"
                 else f"key server {g.get('key_server') or '-'}")
        rows.append([str(g.get("id")), g.get("name") or "-", g.get("role"), g.get("state"),
                     extra])
    return _table(rows, ["ID", "NAME", "ROLE", "STATE", ""])


def _group(r: dict[str, Any]) -> str:
    out = []
    for g in r.get("roles") or []:
        out.append(f"group {g.get('id')} ({g.get('name') or 'unnamed'}): {g.get('role')}, "
                   f"{g.get('state')}")
        if g.get("role") == "keyserver":
            out.append(f"  members: {g.get('members')}"
                       + (f", evicted (deny list): {g['evicted']}" if g.get("evicted") else ""))
            if g.get("seq") is not None:
                out.append(f"  KEK {g.get('kek_spi')}, last SEQ {g['seq']}")
            if g.get("next_key_event"):
                out.append(f"  next key event (rotation, purge, batch rekey): "
                           f"{_when(g['next_key_event'])}")
            for t in (g.get("policy") or {}).get("teks", []):
                out.append(f"  policy {t['name']}: {t['src']} -> {t['dst']} {t['cipher']} "
                           f"{t['mode']} lifetime {t['lifetime_s']} s")
            for t in g.get("teks") or []:
                out.append(f"  TEK {t['spi']} {t['algorithm']} {t['state']} expires "
                           f"{_when(t.get('expires'))}")
        else:
            out.append(f"  key servers: {', '.join(g.get('key_servers') or [])}")
            if g.get("registered_at"):
                out.append(f"  registered with {g.get('key_server')} at "
                           f"{_when(g.get('registered_at'))}"
                           f" ({g.get('registrations')} registration(s))")
            if g.get("restored"):
                out.append(f"  resumed from the saved member state (key server "
                           f"{g.get('key_server')}; no registration since the start)")
            if g.get("state_error"):
                out.append(f"  {g['state_error']}")
            if g.get("adopted"):
                out.append("  adopted SAs left by an earlier msecd")
            if g.get("last_seq") is not None:
                out.append(f"  last SEQ: {g['last_seq']} ({g.get('rekeys', 0)} rekey(s))")
            if g.get("activation_delay") is not None:
                src = "key server's GAP" if g.get("gap_from_key_server") else "no GAP yet: defaults"
                out.append(f"  rekeys: senders switch after {g['activation_delay']:g} s, old SAs "
                           f"go after {g['deactivation_delay']:g} s ({src})")
            if g.get("rekey_socket"):
                kind = "GSA_REKEY" if g.get("protocol") == "g-ikev2" else "GROUPKEY-PUSH"
                out.append(f"  {kind} on {g['rekey_socket']}")
            if g.get("rekey_error"):
                out.append(f"  rekey socket error: {g['rekey_error']}")
            for t in g.get("teks") or []:
                desc = " ".join(str(t[k]) for k in ("src", "dst", "suite", "role") if k in t)
                ways = "/".join(w for w in ("inbound", "outbound") if t.get(w)) or "installing"
                out.append(f"  TEK {t.get('spi', '?')} {desc} {ways} expires "
                           f"{_when(t.get('expires_at'))}".rstrip())
            if g.get("last_error"):
                out.append(f"  last error: {g['last_error']}")
            if g.get("next_attempt"):
                out.append(f"  next attempt: {_when(g['next_attempt'])}")
    return "\n".join(out)


def _members(r: dict[str, Any]) -> str:
    ms = r.get("members") or []
    if not ms:
        return f"group {r.get('id')}: no members"
    rows = []
    acks = any("missed_rekeys" in m for m in ms)  # unicast delivery: ACKs asked for
    both = any(m.get("protocol") not in (None, "gdoi") for m in ms)  # some G-IKEv2 member
    for m in ms:
        state = m.get("state") or "registered"
        when = m.get("evicted_at") if state in ("evicted", "evicting") else m.get("registered_at")
        row = [m["identity"], state, m.get("address") or "-"]
        if both:
            row.append({"gdoi": "GDOI", "g-ikev2": "G-IKEv2"}.get(m.get("protocol"), "-"))
        row.append(_when(when))
        if acks:
            seq = m.get("last_acked_seq")
            row += ["-" if seq is None else str(seq),
                    str(m["missed_rekeys"]) if "missed_rekeys" in m else "-"]
        rows.append(row + [m.get("reason") or ""])
    head = ["IDENTITY", "STATE", "ADDRESS"] + (["PROTOCOL"] if both else []) + ["SINCE"] \
        + (["ACKED SEQ", "MISSED"] if acks else [])
    return _table(rows, head + ["WHY"])


def _evict(r: dict[str, Any]) -> str:
    lines = [f"group {r.get('id')}: evicted {', '.join(r.get('evicted') or []) or 'nobody'}"
             + (f" ({r['reason']})" if r.get("reason") else "")]
    if r.get("mode") == "scheduled":
        lines.append(f"  on the deny list now; the batch rekey that removes them goes out at "
                     f"{_when(r.get('scheduled_at'))}")
    elif r.get("seq") is not None:
        seqs = r.get("seqs") or [r["seq"]]
        lines.append(f"  GROUPKEY-PUSH SEQ {', '.join(map(str, seqs))}"
                     + (f" to {', '.join(r.get('sent_to') or [])}" if r.get("sent_to") else ""))
        if r.get("mode") == "rekey-all":
            lines.append("  no LKH tree: the KEK and every TEK deleted; the remaining members "
                         "register again")
    elif r.get("evicted"):
        lines.append("  no GROUPKEY-PUSH (the group has no KEK): the evicted members keep the "
                     "current TEKs until they expire")
    for i in r.get("not_members") or []:
        lines.append(f"  {i}: not a registered member (added to the deny list)")
    return "\n".join(lines)


def _deny(r: dict[str, Any]) -> str:
    if "lifted" in r:
        lines = [f"group {r.get('id')}: lifted {', '.join(r.get('lifted') or []) or 'nothing'}"]
        for i in r.get("not_denied") or []:
            lines.append(f"  {i}: was not on the deny list")
        return "\n".join(lines)
    ds = r.get("denied") or []
    if not ds:
        return f"group {r.get('id')}: deny list empty"
    return _table([[d["identity"], _when(d.get("at")), d.get("reason") or ""] for d in ds],
                  ["IDENTITY", "SINCE", "WHY"])


def _reload(r: dict[str, Any]) -> str:
    ch = r.get("changes") or []
    lines = ["configuration reloaded" + ("" if ch else " (no changes)")]
    lines += [f"  {c}" for c in ch]
    for s in r.get("restart_needed") or []:
        lines.append(f"  {s} changed: takes effect at the next restart")
    return "\n".join(lines)


def _rekey(r: dict[str, Any]) -> str:
    spis = ", ".join(r.get("teks") or []) or "none"
    return (f"group {r.get('id')} rekeyed: SEQ {r.get('seq')}, new TEK SPI {spis}; "
            f"GROUPKEY-PUSH sent to {', '.join(r.get('sent_to') or []) or 'nobody'}")


def _edit(r: dict[str, Any]) -> str:
    lines = [f"group {r.get('id')} {r.get('action')} ({r.get('file')})"]
    if r.get("identities"):
        lines.append(f"  {r['action']}: {', '.join(r['identities'])}")
    for i in r.get("unchanged") or []:
        lines.append(f"  {i}: unchanged")
    if r.get("action") == "deleted":
        if r.get("push_seq") is not None:
            lines.append(f"  GROUPKEY-PUSH SEQ {r['push_seq']} deleted the KEK and every TEK at "
                         f"{', '.join(r.get('sent_to') or []) or 'nobody'}")
        else:
            lines.append("  no GROUPKEY-PUSH (no KEK or no keys yet): members keep the TEKs "
                         "until they expire")
    lines += [f"  {c}" for c in r.get("changes") or []]
    return "\n".join(lines)


def _reload_check(r: dict[str, Any]) -> str:
    if r.get("unchanged"):
        return f"{r.get('file')} is valid; a reload would change nothing"
    lines = [f"{r.get('file')} is valid; a reload would:"]
    for g in r.get("groups_added") or []:
        lines.append(f"  add {g['role']} group {g['id']}")
    for g in r.get("groups_removed") or []:
        lines.append(f"  remove {g['role']} group {g['id']}")
    for g in r.get("groups_changed") or []:
        lines.append(f"  change {g['role']} group {g['id']} ({', '.join(g['fields'])})"
                     + ("; register again" if g.get("reregister") else ""))
    for m in r.get("members_evicted") or []:
        lines.append(f"  evict {m['identity']} from group {m['id']} ({m['reason']})")
    for t in r.get("teks_rolled") or []:
        what = [f"replace or delete TEK {', '.join(t['teks'])}"] if t.get("teks") else []
        if t.get("new_teks"):
            what.append(f"new TEKs for {', '.join(t['new_teks'])}")
        if t.get("new_kek"):
            what.append("a new KEK")
        lines.append(f"  group {t['id']} ({t['why']}): {'; '.join(what) or 'nothing in use'}")
    for s in r.get("restart_needed") or []:
        lines.append(f"  {s} changed: takes effect at the next restart")
    return "\n".join(lines)


def _sa(r: dict[str, Any]) -> str:
    if not r.get("kernel"):
        return "no kernel SAs: this msecd installs none (--no-kernel, or no member group)"
    lines = []
    for g in r.get("groups") or []:
        lines.append(f"group {g['id']}" + (f" ({g['name']})" if g.get("name") else "")
                     + f": {len(g['sas'])} SA(s), {len(g['policies'])} policy(ies)")
        if g["sas"]:
            lines.append(_table([[a["spi"], a["direction"], a.get("suite") or "?",
                                  a["dst"], str(a.get("packets") or 0),
                                  str(a.get("bytes") or 0), _when(a.get("expires"))]
                                 for a in g["sas"]],
                                ["SPI", "DIR", "SUITE", "DST", "PACKETS", "BYTES", "EXPIRES"]))
        for p in g["policies"]:
            lines.append(f"  policy {p['src']} -> {p['dst']} proto {p['proto']} "
                         f"dir {p['direction']} priority {p['priority']} SPI {p['spi']}")
    return "\n".join(lines) or "no member groups"


_RENDER = {"status": _status, "groups": _groups, "group": _group, "members": _members, "sa": _sa,
           "reload": _reload, "rekey": _rekey, "evict": _evict, "deny": _deny,
           "edit": _edit, "reload-check": _reload_check}


def render(cmd: str, r: dict[str, Any]) -> str:
    """Readable text for a response (an error response too)."""
    if not r.get("ok"):
        lines = [f"error: {r.get('error', 'unknown error')}"]
        lines += [f"  {p}" for p in r.get("problems") or []]
        return "\n".join(lines)
    return _RENDER[cmd](r)


# --------------------------------------------------------------------------- CLI

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3

_EXAMPLES = """examples:
  msecctl group create 1001 --tek src=10.1.0.0/16,dst=239.1.1.1,cipher=aes-gcm-128 \\
      --kek signing_key=/etc/msec/ks-sign.pem,rekey_address=239.192.0.1 --authorize gm1
  msecctl join 1001 --key-server 192.0.2.1 --psk-identity gm1 --psk-file /etc/msec/gm1.psk
  msecctl members 1001; msecctl evict 1001 gm1 --reason "lost laptop"
  msecctl reload --check /etc/msec/msecd.toml.new
  msecctl --json groups

"""

_EPILOG = """identities: key-id:NAME (or a bare NAME: a PSK identity), fqdn:HOST, dn:SUBJECT,
address:IP[/LEN], as 'msecctl members' shows them.
exit status: 0 ok, 1 the daemon said no (or could not be talked to), 2 usage error,
3 msecd is not running.  --json: one JSON object per answer, stable field names.
'msecctl COMMAND --help' describes each command."""

def _tek_help() -> str:
    from policy.suites import ESP_SUITES

    return ("a TEK policy: comma-separated key=value, keys of [[keyserver.group.tek]]: src, dst "
            "(address or prefix), protocol, src_port, dst_port, mode (tunnel | transport), "
            f"cipher ({' | '.join(ESP_SUITES)}), lifetime (seconds or 90s, 10m, 1h, 1d), "
            "replay_window, name, senders=ID;ID (who sends; default everyone); e.g. "
            "src=10.1.0.0/16,dst=239.1.1.1,cipher=aes-gcm-128,mode=tunnel,lifetime=1h; "
            "repeat for several TEKs")


def _kek_help() -> str:
    from policy.suites import KEK_CIPHERS, SIGNATURE_SUITES

    return ("the Rekey SA (GROUPKEY-PUSH): key=value pairs of [keyserver.group.kek]: "
            f"signing_key (PEM, mode 0600), signature ({' | '.join(SIGNATURE_SUITES)}), "
            f"cipher ({' | '.join(KEK_CIPHERS)}), rekey_address (multicast), rekey_port, "
            "lifetime, lkh (true | false), lkh_degree, evict_batch_window, rekey_ttl, "
            "rekey_interface, max_push_size, tek_rekey_lead, kek_rekey_lead; e.g. "
            "signing_key=ks-sign.pem,signature=ecdsa-p256,rekey_address=239.192.0.1")


def _group_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2 ** 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a group id (1..4294967295)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="msecctl", description="control msecd, the msec group key "
                                "manager, over its control socket (needs root)",
                                epilog=_EXAMPLES + _EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"msecctl {__version__}")
    p.add_argument("--socket", "-s", default=None, help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--config", "-c", default=None,
                   help="take the control socket from this msecd configuration")
    p.add_argument("--json", action="store_true", help="machine-readable output: one JSON line")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    parsers = []

    def cmd(parent, name, help, **kw):
        sp = parent.add_parser(name, help=help, description=help, epilog=_EPILOG,
                               formatter_class=fmt, **kw)
        parsers.append(sp)
        return sp

    cmd(sub, "status", "daemon status: pid, uptime, roles, last reload")
    cmd(sub, "groups", "list the groups of both roles")
    g = cmd(sub, "group", "one group: show, create, delete, authorize, deauthorize")
    gs = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    cmd(gs, "show", "a group's state: members, KEK, TEKs, next key event").add_argument(
        "id", type=_group_id, metavar="ID")
    cr = cmd(gs, "create", "key server: create a group (a drop-in file, validated with the "
                           "whole configuration first)")
    cr.add_argument("id", type=_group_id, metavar="ID", help="GDOI group id, 1..4294967295")
    cr.add_argument("--name", help="local label")
    cr.add_argument("--tek", action="append", required=True, metavar="SPEC", help=_tek_help())
    cr.add_argument("--kek", metavar="SPEC", help=_kek_help())
    cr.add_argument("--authorize", action="append", default=[], metavar="IDENTITY",
                    help="who may join (repeat); see identities below")
    cr.add_argument("--activation-delay", metavar="DURATION", help="GAP ATD (default 2s)")
    cr.add_argument("--deactivation-delay", metavar="DURATION", help="GAP DTD (default 6s)")
    cmd(gs, "delete", "key server: delete a group msecctl created; a GROUPKEY-PUSH deletes "
                      "its KEK and TEKs at the members").add_argument("id", type=_group_id, metavar="ID")
    for name, what in (("authorize", "admit identities to"),
                       ("deauthorize", "stop admitting identities to (registered ones are "
                                       "evicted)")):
        a = cmd(gs, name, f"key server: {what} a group msecctl created")
        a.add_argument("id", type=_group_id, metavar="ID")
        a.add_argument("identities", nargs="+", metavar="IDENTITY")
    j = cmd(sub, "join", "member: join a group (a drop-in file, validated with the whole "
                         "configuration first); registers at once")
    j.add_argument("id", type=_group_id, metavar="ID")
    j.add_argument("--key-server", action="append", required=True, metavar="ADDR",
                   help="HOST, HOST:PORT or [IPv6]:PORT; repeat for failover")
    j.add_argument("--name", help="local label")
    j.add_argument("--interface", help="network interface for the group's traffic")
    j.add_argument("--psk-identity", metavar="ID", help="PSK identity (ID_KEY_ID)")
    j.add_argument("--psk-file", metavar="FILE", help="PSK file (mode 0600)")
    j.add_argument("--cert", metavar="FILE", help="member certificate (PEM)")
    j.add_argument("--key", metavar="FILE", help="its private key (PEM, mode 0600)")
    j.add_argument("--ca", action="append", default=[], metavar="FILE",
                   help="trust anchor for the key server's certificate (repeat)")
    j.add_argument("--key-server-identity", action="append", default=[], metavar="IDENTITY",
                   help="who may act as key server (repeat; required with certificates)")
    cmd(sub, "leave", "member: leave a group msecctl joined; its SAs are removed").add_argument(
        "id", type=_group_id, metavar="ID")
    cmd(sub, "members", "members of a group this daemon serves").add_argument(
        "id", type=_group_id, metavar="ID")
    cmd(sub, "sa", "member: msec's kernel SAs and policies per group, with the kernel's "
                   "counters and each SA's expiry").add_argument(
        "id", type=_group_id, metavar="ID", nargs="?", default=None)
    rl = cmd(sub, "reload", "reload the configuration (refused as a whole if invalid)")
    rl.add_argument("--check", nargs="?", const="", default=None, metavar="FILE",
                    help="only validate FILE with its drop-ins FILE.d/*.toml (default: the "
                         "running configuration) and show what a reload would change: groups "
                         "added and removed, members evicted, TEKs rolled; changes nothing")
    cmd(sub, "rekey", "key server: new TEKs for a group, sent by GROUPKEY-PUSH").add_argument(
        "id", type=_group_id, metavar="ID")
    ev = cmd(sub, "evict", "key server: evict members (new keys for the others; they stay "
                           "refused: deny list)")
    ev.add_argument("id", type=_group_id, metavar="ID")
    ev.add_argument("identities", nargs="+", metavar="IDENTITY")
    ev.add_argument("--reason", default=None, help="why (logged and shown by members/deny)")
    dn = cmd(sub, "deny", "key server: show a group's deny list, or 'deny lift ID "
                          "IDENTITY...' to take identities off it")
    dn.add_argument("words", nargs="+", metavar="ID | lift ID IDENTITY...")
    it = cmd(sub, "init", "create the PSKs, signing keys, CA and certificates the "
                          "configuration files name and lack (never overwrites; files 0600, "
                          "directories 0700; no daemon needed)")
    it.add_argument("configs", nargs="+", metavar="CONFIG")
    cmd(sub, "monitor", "live stream of the daemon's events (registrations, refusals, rekeys, "
                        "evictions, expiries), one line each; --json: one object per line")
    co = cmd(sub, "completion", "print a shell completion script")
    co.add_argument("shell", choices=["bash"])
    for sp in parsers:  # --json after the command too
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output: one JSON line")
    return p


def _socket_path(args) -> str:
    if args.socket:
        return args.socket
    if args.config:
        # only [daemon] control_socket matters here: read it even from a file msecd would
        # refuse (that is when `msecctl reload` is most useful)
        import tomllib

        try:
            with open(args.config, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SystemExit(f"msecctl: cannot read {args.config}: {e}")
        d = doc.get("daemon")
        sock = d.get("control_socket") if isinstance(d, dict) else None
        return sock if isinstance(sock, str) else DEFAULT_SOCKET
    return DEFAULT_SOCKET


def _deny_request(parser: argparse.ArgumentParser, words: list[str]) -> dict[str, Any]:
    lift = words[0] == "lift"
    rest = words[1:] if words[0] in ("lift", "list") else words
    if not rest or not rest[0].isdigit():
        parser.error("deny: usage: deny ID | deny lift ID IDENTITY...")
    if lift and len(rest) < 2:
        parser.error("deny lift: name at least one IDENTITY to take off the deny list")
    if not lift and len(rest) > 1:
        parser.error(f"deny: unexpected {' '.join(rest[1:])!r} (to lift: deny lift ID "
                     "IDENTITY...)")
    req: dict[str, Any] = {"cmd": "deny-lift" if lift else "deny", "id": int(rest[0])}
    if lift:
        req["identities"] = rest[1:]
    return req


#: SPEC keys whose value stays a string even if it looks like a number
_TEXT_KEYS = {"name", "src", "dst", "cipher", "mode", "signature", "signing_key",
              "rekey_address", "rekey_interface"}
_FILE_KEYS = {"signing_key"}


def _authorize_table(identities: list[str]) -> dict[str, list[str]]:
    """Identities -> an ``authorize`` table (policy.dropin.authorize_entry)."""
    from policy.dropin import authorize_entry

    out: dict[str, list[str]] = {}
    for i in identities:
        key, value = authorize_entry(i)
        if value not in out.setdefault(key, []):
            out[key].append(value)
    return out


def _spec(parser: argparse.ArgumentParser, option: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            parser.error(f"{option} {text!r}: {part!r} is not key=value")
        value = value.strip()
        if key in out:
            parser.error(f"{option} {text!r}: {key} given twice")
        if key == "senders":
            out[key] = _authorize_table([v for v in value.split(";") if v])
        elif key in _FILE_KEYS:
            out[key] = os.path.abspath(value)
        elif value in ("true", "false") and key not in _TEXT_KEYS:
            out[key] = value == "true"
        elif value.isdigit() and key not in _TEXT_KEYS:
            out[key] = int(value)
        else:
            out[key] = value
    if not out:
        parser.error(f"{option}: empty SPEC")
    return out


def _create_request(parser, args) -> dict[str, Any]:
    group: dict[str, Any] = {"id": args.id}
    if args.name:
        group["name"] = args.name
    if args.activation_delay:
        group["activation_delay"] = args.activation_delay
    if args.deactivation_delay:
        group["deactivation_delay"] = args.deactivation_delay
    if args.authorize:
        group["authorize"] = _authorize_table(args.authorize)
    group["tek"] = [_spec(parser, "--tek", t) for t in args.tek]
    if args.kek:
        group["kek"] = _spec(parser, "--kek", args.kek)
    return {"cmd": "group-create", "group": group}


def _join_request(parser, args) -> dict[str, Any]:
    psk = args.psk_identity is not None or args.psk_file is not None
    cert = args.cert is not None or args.key is not None or bool(args.ca)
    if psk == cert:
        parser.error("join: give either --psk-identity and --psk-file, or --cert, --key and "
                     "--ca")
    if psk:
        if not (args.psk_identity and args.psk_file):
            parser.error("join: --psk-identity and --psk-file go together")
        creds: dict[str, Any] = {"psk_identity": args.psk_identity,
                                 "psk_file": os.path.abspath(args.psk_file)}
    else:
        if not (args.cert and args.key and args.ca):
            parser.error("join: --cert, --key and --ca go together")
        creds = {"cert_file": os.path.abspath(args.cert), "key_file": os.path.abspath(args.key),
                 "trust_anchors": [os.path.abspath(c) for c in args.ca]}
    group: dict[str, Any] = {"id": args.id}
    if args.name:
        group["name"] = args.name
    group["key_servers"] = list(args.key_server)
    if args.interface:
        group["interface"] = args.interface
    group["credentials"] = creds
    if args.key_server_identity:
        group["key_server_identity"] = _authorize_table(args.key_server_identity)
    return {"cmd": "join", "group": group}


def _request_for(parser, args) -> tuple[str, dict[str, Any]]:
    """(render name, request) for parsed arguments; usage errors exit 2 before anything is
    sent."""
    c = args.cmd
    if c in ("status", "groups"):
        return c, {"cmd": c}
    if c == "group":
        if args.action == "show":
            return "group", {"cmd": "group", "id": args.id}
        if args.action == "create":
            return "edit", _create_request(parser, args)
        if args.action == "delete":
            return "edit", {"cmd": "group-delete", "id": args.id}
        return "edit", {"cmd": f"group-{args.action}", "id": args.id,
                        "identities": args.identities}
    if c == "join":
        return "edit", _join_request(parser, args)
    if c == "leave":
        return "edit", {"cmd": "leave", "id": args.id}
    if c == "reload":
        if args.check is None:
            return "reload", {"cmd": "reload"}
        req = {"cmd": "reload-check"}
        if args.check:
            req["file"] = os.path.abspath(args.check)
        return "reload-check", req
    if c in ("members", "rekey"):
        return c, {"cmd": c, "id": args.id}
    if c == "sa":
        return c, {"cmd": "sa"} if args.id is None else {"cmd": "sa", "id": args.id}
    if c == "evict":
        req = {"cmd": "evict", "id": args.id, "identities": args.identities}
        if args.reason is not None:
            req["reason"] = args.reason
        return c, req
    assert c == "deny"
    return c, _deny_request(parser, args.words)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "completion":
        from .completion import bash_script

        sys.stdout.write(bash_script(parser))
        return EXIT_OK
    if args.cmd == "init":
        from .provision import main as init_main

        return init_main(args.configs)
    kind, req = ("monitor", {"cmd": "monitor"}) if args.cmd == "monitor" \
        else _request_for(parser, args)
    path = _socket_path(args)
    try:
        if args.cmd == "monitor":
            return monitor(path, sys.stdout, args.json)
        resp = request(path, req)
    except NotRunning as e:
        print(f"msecctl: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except PermissionError:
        print(f"msecctl: permission denied on {path} (msecctl needs root)", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ValueError) as e:
        print(f"msecctl: {path}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(resp, sort_keys=True))
    else:
        print(render(kind, resp), file=sys.stdout if resp.get("ok") else sys.stderr)
    return EXIT_OK if resp.get("ok") else EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
