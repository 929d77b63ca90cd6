"""Drop-in files: ``<config>.d/*.toml`` next to the main configuration, merged into it.

What ``msecctl group create`` and ``msecctl join`` create lives here, one group per file
(``keyserver-group-<ID>.toml``, ``member-group-<ID>.toml``), so it survives a restart and
``msecd --check`` sees exactly what the daemon runs: the drop-ins are merged into the main
document and the merged document is validated once, as a whole, by the same checker
(:mod:`policy._checker`). A problem in a drop-in is reported against that file, with the
group's index in that file.

A drop-in may only add entries to ``[[keyserver.group]]``, ``[[keyserver.psk]]`` and
``[[member.group]]``; anything else in it is refused. Files are taken in name order; names
other than ``*.toml`` (editor backups, the ``.*.tmp`` files of an atomic write) are ignored.
Relative paths inside a drop-in resolve against the main file's directory, as in the main
file. Each drop-in must be as safe as the main file (:func:`policy._checker.unsafe_location`),
and inline secrets are accepted only if every file read is mode 0600.

:func:`dumps` writes the small TOML subset a drop-in needs (tables, arrays of tables,
strings, integers, booleans, arrays of those); :func:`write_atomic` puts a file in place with
temp file, fsync and rename.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

__all__ = ["AUTHORIZE_KEYS", "authorize_entry", "DROPIN_ARRAYS", "dropin_dir", "dropin_names", "keyserver_group_file",
           "member_group_file", "merge", "relocate", "dumps", "write_atomic", "remove_atomic"]

#: the arrays a drop-in may add to, as (table, key)
DROPIN_ARRAYS = (("keyserver", "group"), ("keyserver", "psk"), ("member", "group"))
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.toml$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_INDEX = re.compile(r"^(keyserver\.group|keyserver\.psk|member\.group)\[(\d+)\](.*)$")


#: identity kind (as ``msecctl members`` writes it) -> the ``authorize`` key that names it
AUTHORIZE_KEYS = {"key-id": "psk_identities", "dn": "subjects", "fqdn": "fqdns",
                  "address": "addresses"}


def authorize_entry(identity: str) -> tuple[str, str]:
    """``key-id:gm1`` -> ("psk_identities", "gm1"); a bare name is a PSK identity."""
    kind, sep, value = identity.partition(":")
    if not sep or kind not in AUTHORIZE_KEYS:
        return "psk_identities", identity
    return AUTHORIZE_KEYS[kind], value


def dropin_dir(config_path: Path | str) -> Path:
    """``/etc/msec/msecd.toml`` -> ``/etc/msec/msecd.toml.d``."""
    p = Path(config_path)
    return p.with_name(p.name + ".d")


def keyserver_group_file(group_id: int) -> str:
    return f"keyserver-group-{group_id}.toml"


def member_group_file(group_id: int) -> str:
    return f"member-group-{group_id}.toml"


def dropin_names(directory: Path) -> list[str]:
    """The drop-in files in ``directory`` in the order they are merged (none if it is absent)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _NAME.fullmatch(n) and (directory / n).is_file())


def merge(main: dict, dropins: list[tuple[str, dict]]) -> tuple[dict, list[tuple[str, str, str]],
                                                                 dict[str, list[tuple[str, int]]]]:
    """Main document + drop-in documents -> (merged document, problems, origins).

    ``problems`` are (source, key path, reason) for drop-in content that is not allowed.
    ``origins["keyserver.group"][i]`` is (source, index in that source) of merged entry ``i``,
    so a problem found in the merged document can be reported where it was written."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in main.items()}
    problems: list[tuple[str, str, str]] = []
    origins: dict[str, list[tuple[str, int]]] = {}
    for table, key in DROPIN_ARRAYS:
        t = merged.get(table)
        arr = t.get(key) if isinstance(t, dict) else None
        n = len(arr) if isinstance(arr, list) else 0
        origins[f"{table}.{key}"] = [("", i) for i in range(n)]
    allowed = {t: {k for tt, k in DROPIN_ARRAYS if tt == t} for t, _ in DROPIN_ARRAYS}
    for source, doc in dropins:
        for table, sub in doc.items():
            if table not in allowed or not isinstance(sub, dict):
                problems.append((source, table, "a drop-in may only add [[keyserver.group]], "
                                 "[[keyserver.psk]] and [[member.group]] entries; other "
                                 "settings belong in the main configuration file"))
                continue
            for key, entries in sub.items():
                path = f"{table}.{key}"
                if key not in allowed[table] or not isinstance(entries, list):
                    problems.append((source, path, "a drop-in may only add [[keyserver.group]], "
                                     "[[keyserver.psk]] and [[member.group]] entries; other "
                                     "settings belong in the main configuration file"))
                    continue
                t = merged.setdefault(table, {})
                if not isinstance(t, dict):
                    continue  # the main file's own type error is reported by the checker
                target = t.get(key)
                if target is None:
                    target = t[key] = []
                elif not isinstance(target, list):
                    continue
                else:
                    target = t[key] = list(target)
                for i, e in enumerate(entries):
                    target.append(e)
                    origins[path].append((source, i))
    return merged, problems, origins


def relocate(source: str, path: str, origins: Mapping[str, list[tuple[str, int]]],
             main_source: str) -> tuple[str, str]:
    """A problem's (source, path) in the merged document -> where it was written."""
    mt = _INDEX.match(path)
    if mt is None:
        return main_source, path
    where = origins.get(mt.group(1), [])
    i = int(mt.group(2))
    if i >= len(where) or where[i][0] == "":
        return main_source, path
    src, j = where[i]
    return src, f"{mt.group(1)}[{j}]{mt.group(3)}"


# --------------------------------------------------------------------------- writing


def _key(k: str) -> str:
    if not isinstance(k, str) or not k:
        raise ValueError(f"key {k!r} is not a non-empty string")
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    # JSON's escapes are TOML's basic-string escapes; DEL must be escaped in TOML too
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _scalar(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list) and not any(isinstance(x, dict) for x in v):
        return "[" + ", ".join(_scalar(x, where) for x in v) + "]"
    if isinstance(v, dict):  # an inline table (only inside an array: rare in msec's schema)
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(x, where)}" for k, x in v.items()) + " }"
    raise ValueError(f"{where}: {type(v).__name__} values cannot be written to a drop-in")


def _table_body(tbl: dict, path: str, out: list[str]) -> None:
    subs = []
    for k, v in tbl.items():
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict)
                                                                      for x in v)):
            subs.append((k, v))
        else:
            out.append(f"{_key(k)} = {_scalar(v, f'{path}.{k}')}")
    for k, v in subs:
        p = f"{path}.{_key(k)}" if path else _key(k)
        if isinstance(v, dict):
            out.append(f"\n[{p}]")
            _table_body(v, p, out)
        else:
            for item in v:
                out.append(f"\n[[{p}]]")
                _table_body(item, p, out)


def dumps(doc: dict, header: str = "") -> str:
    """A document of tables -> TOML text (``tomllib.loads(dumps(d)) == d``); ValueError for a
    value TOML (or this subset) cannot hold: floats, nulls, dates."""
    out = [f"# {line}" for line in header.splitlines()]
    body: list[str] = []
    if not all(isinstance(v, dict) for v in doc.values()):
        raise ValueError("a drop-in document holds tables only")
    _table_body(doc, "", body)
    return "\n".join(out + [b for b in body]).lstrip("\n") + "\n"


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Put ``text`` at ``path`` whole or not at all: a temp file in the same directory,
    fsynced, renamed over, the directory fsynced. The directory is created 0755 if absent."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def remove_atomic(path: Path) -> None:
    path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
