"""msecctl: talk to msecd over its control socket.

    msecctl [--socket PATH | --config FILE] [--json] status
    msecctl groups
    msecctl group show ID
    msecctl members ID                       each member: registered, lost or evicted, when,
                                             why; unicast delivery: last SEQ acknowledged,
                                             rekeys missed in a row
    msecctl reload
    msecctl rekey ID
    msecctl evict ID IDENTITY... [--reason TEXT]
    msecctl deny ID                          the group's deny list (evicted identities)
    msecctl deny lift ID IDENTITY...         take identities off the deny list

An IDENTITY is written as ``msecctl members`` shows it (``key-id:gm1``, ``fqdn:h.example.org``,
``dn:CN=gm3,O=Example``, ``address:192.0.2.7``); a bare name is a PSK identity (``gm1`` is
``key-id:gm1``).

``--json`` prints the daemon's response object as one JSON line; otherwise readable text.
Exit status: 0 success; 1 the daemon said no (``"ok": false``, e.g. a refused reload, whose
problems are printed) or is not running; 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

__all__ = ["main", "request", "render", "NotRunning", "DEFAULT_SOCKET"]

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
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise ConnectionError("msecd closed the connection without answering")
    return json.loads(buf)


# --------------------------------------------------------------------------- text output


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols)


def _status(r: dict[str, Any]) -> str:
    lines = [f"msecd running, pid {r.get('pid')}, up {r.get('uptime_s')} s",
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
            if g.get("adopted"):
                out.append("  adopted SAs left by an earlier msecd")
            if g.get("last_seq") is not None:
                out.append(f"  last SEQ: {g['last_seq']} ({g.get('rekeys', 0)} rekey(s))")
            if g.get("activation_delay") is not None:
                src = "key server's GAP" if g.get("gap_from_key_server") else "no GAP yet: defaults"
                out.append(f"  rekeys: senders switch after {g['activation_delay']:g} s, old SAs "
                           f"go after {g['deactivation_delay']:g} s ({src})")
            if g.get("rekey_socket"):
                out.append(f"  GROUPKEY-PUSH on {g['rekey_socket']}")
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
    for m in ms:
        state = m.get("state") or "registered"
        when = m.get("evicted_at") if state in ("evicted", "evicting") else m.get("registered_at")
        row = [m["identity"], state, m.get("address") or "-", _when(when)]
        if acks:
            seq = m.get("last_acked_seq")
            row += ["-" if seq is None else str(seq),
                    str(m["missed_rekeys"]) if "missed_rekeys" in m else "-"]
        rows.append(row + [m.get("reason") or ""])
    head = ["IDENTITY", "STATE", "ADDRESS", "SINCE"] + (["ACKED SEQ", "MISSED"] if acks else [])
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


_RENDER = {"status": _status, "groups": _groups, "group": _group, "members": _members,
           "reload": _reload, "rekey": _rekey, "evict": _evict, "deny": _deny}


def render(cmd: str, r: dict[str, Any]) -> str:
    """Readable text for a response (an error response too)."""
    if not r.get("ok"):
        lines = [f"error: {r.get('error', 'unknown error')}"]
        lines += [f"  {p}" for p in r.get("problems") or []]
        return "\n".join(lines)
    return _RENDER[cmd](r)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msecctl", description="control msecd")
    p.add_argument("--socket", "-s", default=None, help=f"control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--config", "-c", default=None,
                   help="take the control socket from this msecd configuration")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="daemon status")
    sub.add_parser("groups", help="list groups")
    g = sub.add_parser("group", help="one group")
    gs = g.add_subparsers(dest="action", required=True)
    show = gs.add_parser("show")
    show.add_argument("id", type=int)
    m = sub.add_parser("members", help="members of a group this daemon serves")
    m.add_argument("id", type=int)
    sub.add_parser("reload", help="reload the configuration (refused if invalid)")
    rk = sub.add_parser("rekey", help="key server: new TEKs for a group, sent by GROUPKEY-PUSH")
    rk.add_argument("id", type=int)
    ev = sub.add_parser("evict", help="key server: evict members (new keys for the others; "
                                      "they stay refused: deny list)")
    ev.add_argument("id", type=int)
    ev.add_argument("identities", nargs="+", metavar="IDENTITY")
    ev.add_argument("--reason", default=None, help="why (logged and shown by members/deny)")
    dn = sub.add_parser("deny", help="key server: show a group's deny list, or "
                                     "'deny lift ID IDENTITY...' to take identities off it")
    dn.add_argument("words", nargs="+", metavar="ID | lift ID IDENTITY...")
    for sp in sub.choices.values():  # --json after the command too
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    req: dict[str, Any] = {"cmd": args.cmd}
    if args.cmd in ("group", "members", "rekey", "evict"):
        req["id"] = args.id
    if args.cmd == "evict":
        req["identities"] = args.identities
        if args.reason is not None:
            req["reason"] = args.reason
    if args.cmd == "deny":
        req = _deny_request(parser, args.words)
    path = _socket_path(args)
    try:
        resp = request(path, req)
    except NotRunning as e:
        print(f"msecctl: {e}", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"msecctl: permission denied on {path} (msecctl needs root)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"msecctl: {path}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(resp, sort_keys=True))
    else:
        print(render(args.cmd, resp), file=sys.stdout if resp.get("ok") else sys.stderr)
    return 0 if resp.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
