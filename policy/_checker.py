"""The validating reader behind `policy.config`: TOML values -> model objects, problems collected.

Each section method takes the raw TOML value and its key path, records every problem it finds
(never raising) and returns a model object or None. Values already reported are `BAD`, so one
mistake is reported once and does not cascade.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from policy import model as m
from policy.errors import Problem
from policy.suites import (
    ESP_SUITES,
    KEK_CIPHERS,
    KEK_CIPHERS_REFUSED,
    PHASE1_AUTH,
    PHASE1_CIPHERS,
    PHASE1_DH_GROUPS,
    PHASE1_HASHES,
    PHASE1_REFUSED,
    SIGNATURE_SUITES,
    SIGNATURE_SUITES_REFUSED,
    SignatureSuite,
)

__all__ = ["Checker", "PROTOCOLS", "BAD"]

PROTOCOLS = {
    "any": 0,
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "gre": 47,
    "icmpv6": 58,
    "sctp": 132,
    "udplite": 136,
}

_DURATION_RE = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL_RE = re.compile(r"\s*(\d+)\s*(ms|s)\s*")
_NATT_REASON = ("4500 is the NAT-T port, never asked for: set g_ikev2_port = 500, which binds UDP 4500 "
                "too (IKE with the non-ESP marker, for members behind a NAT, RFC 7296 §2.23)")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\.?$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)


class _Bad:
    """Marks a value already reported as a problem."""

    def __repr__(self) -> str:
        return "<bad>"


BAD: Any = _Bad()
_MISSING: Any = object()


def _type_name(v: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)



def unsafe_location(fp: Path) -> list[str]:
    """Why a file msecd trusts (its configuration, a PSK or key file) could be changed by
    another user: the file writable by others or owned by another user (neither root nor
    msecd's uid), or a directory on its path (resolved) writable by others without the sticky
    bit (anyone could rename the file away and put their own in its place; with the sticky
    bit, as on /tmp, only the owner can).  Group write is left to the operator's choice of
    group.  Empty when the file is safe; one reason per finding."""
    reasons = []
    me = os.geteuid()
    try:
        real = fp.resolve()
        st = real.stat()
    except OSError:
        return reasons  # a missing file is reported by whoever reads it
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        reasons.append(f"{str(real)!r} is writable by every user (mode {mode:04o}); "
                       "chmod o-w it")
    if st.st_uid not in (0, me):
        reasons.append(f"{str(real)!r} is owned by uid {st.st_uid}, neither root nor msecd's "
                       f"uid {me}; chown it")
    for d in real.parents:
        try:
            dm = d.stat().st_mode
        except OSError:
            continue
        if dm & stat.S_IWOTH and not dm & stat.S_ISVTX:
            reasons.append(f"{str(real)!r} is in {str(d)!r}, a directory every user can write "
                           f"to without the sticky bit (mode {stat.S_IMODE(dm):04o}): anyone "
                           f"could replace the file; chmod o-w {str(d)!r}")
    return reasons


class Checker:
    def __init__(self, source: str, base_dir: Path, file_mode: int | None, check_files: bool):
        self.source = source
        self.base_dir = base_dir
        self.file_mode = file_mode
        self.check_files = check_files
        self.problems: list[Problem] = []

    # ------------------------------------------------------------------ plumbing

    def problem(self, path: str, reason: str) -> Any:
        self.problems.append(Problem(self.source, path, reason))
        return BAD

    def table(
        self, raw: Any, path: str, allowed: set[str], required: tuple[str, ...] = ()
    ) -> dict | None:
        if not isinstance(raw, dict):
            self.problem(path, f"expected a table, got {_type_name(raw)}")
            return None
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else (
                    f" (allowed: {', '.join(sorted(allowed))})"
                )
                self.problem(_join(path, key), f"unknown key{hint}")
        for key in required:
            if key not in raw:
                self.problem(_join(path, key), "missing required key")
        return raw

    def value(
        self,
        tbl: dict,
        path: str,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = _MISSING,
    ) -> Any:
        """tbl[key] checked for type; default if absent (BAD if absent without default)."""
        p = _join(path, key)
        if key not in tbl:
            return BAD if default is _MISSING else default
        v = tbl[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds:
            return self.problem(p, f"expected {_kinds(kinds)}, got a boolean")
        if not isinstance(v, kinds):
            got = _type_name(v)
            return self.problem(p, f"expected {_kinds(kinds)}, got {got}")
        return v

    def table_array(self, tbl: dict, path: str, key: str) -> Any:
        """An array of tables ([[path.key]]); [] if absent."""
        if isinstance(tbl.get(key), dict):
            return self.problem(_join(path, key), f"expected an array of tables: write "
                                                  f"[[{_join(path, key)}]], not [{_join(path, key)}]")
        return self.value(tbl, path, key, list, [])

    def string_list(self, tbl: dict, path: str, key: str, default: Any = _MISSING) -> Any:
        v = self.value(tbl, path, key, list, default)
        if v is BAD or v is default:
            return v
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                out.append(self.problem(f"{_join(path, key)}[{i}]",
                                        f"expected a string, got {_type_name(item)}"))
            else:
                out.append(item)
        return BAD if any(x is BAD for x in out) else out

    def integer(self, tbl: dict, path: str, key: str, lo: int, hi: int, default: Any = _MISSING):
        v = self.value(tbl, path, key, int, default)
        if v is BAD or v is default:
            return v
        if not lo <= v <= hi:
            return self.problem(_join(path, key), f"{v} is not in {lo}..{hi}")
        return v

    def duration(self, tbl: dict, path: str, key: str, lo: int, hi: int, default: Any = _MISSING):
        v = self.value(tbl, path, key, (int, str), default)
        if v is BAD or v is default:
            return v
        p = _join(path, key)
        if isinstance(v, str):
            mt = _DURATION_RE.fullmatch(v)
            if not mt:
                return self.problem(p, f"{v!r} is not a duration (seconds, or like 90s, 10m, 1h, 1d)")
            v = int(mt.group(1)) * _DURATION_UNITS[mt.group(2)]
        if not lo <= v <= hi:
            return self.problem(p, f"{v} s is not in {lo}..{hi} s")
        return v

    def interval(self, tbl: dict, path: str, key: str, lo: float, hi: float,
                 default: Any = _MISSING):
        """A short interval in seconds: a number of seconds, or a string like "250ms", "2s"."""
        v = self.value(tbl, path, key, (int, float, str), default)
        if v is BAD or v is default:
            return v
        p = _join(path, key)
        if isinstance(v, str):
            mt = _INTERVAL_RE.fullmatch(v)
            if not mt:
                return self.problem(p, f"{v!r} is not an interval (seconds, or like 250ms, 2s)")
            v = int(mt.group(1)) / (1000 if mt.group(2) == "ms" else 1)
        if not lo <= v <= hi:
            return self.problem(p, f"{v} s is not in {lo}..{hi} s")
        return float(v)

    def choice(self, tbl: dict, path: str, key: str, table: dict, refused: dict | None = None,
               default: Any = _MISSING):
        v = self.value(tbl, path, key, str, default)
        if v is BAD or v is default:
            return v
        if v in table:
            return table[v]
        p = _join(path, key)
        if refused and v in refused:
            return self.problem(p, f"{v!r} is not supported: {refused[v]}; "
                                   f"choose one of {', '.join(table)}")
        return self.problem(p, f"unknown value {v!r}; choose one of {', '.join(table)}")

    def ip_address(self, text: str, path: str) -> Any:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            return self.problem(path, f"{text!r} is not an IPv4 or IPv6 address")

    def ip_network(self, text: str, path: str) -> Any:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                return self.problem(path, f"{text!r} is not an IPv4 or IPv6 address or prefix")
            return self.problem(path, f"{text!r} has host bits set (prefix length too short?)")

    # ------------------------------------------------------------------ files

    def path(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else self.base_dir / p

    def file(self, tbl: dict, path: str, key: str, private: bool, default: Any = _MISSING):
        v = self.value(tbl, path, key, str, default)
        if v is BAD or v is default:
            return v
        return self._check_file(v, _join(path, key), private)

    def _check_file(self, text: str, p: str, private: bool) -> Any:
        if not text:
            return self.problem(p, "empty file name")
        if "\x00" in text:
            return self.problem(p, "file name contains a NUL byte")
        fp = self.path(text)
        if not self.check_files:
            return fp
        try:
            st = fp.stat()
        except FileNotFoundError:
            return self.problem(p, f"{str(fp)!r} does not exist")
        except OSError as e:
            return self.problem(p, f"{str(fp)!r} cannot be examined: {e.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return self.problem(p, f"{str(fp)!r} is not a regular file")
        if private and st.st_mode & 0o077:
            return self.problem(
                p,
                f"{str(fp)!r} holds a secret but group or others have access "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it",
            )
        if private:
            unsafe = unsafe_location(fp)
            if unsafe:
                return self.problem(p, "; ".join(unsafe))
        if not os.access(fp, os.R_OK):
            return self.problem(p, f"{str(fp)!r} is not readable")
        return fp

    def inline_secret_allowed(self, p: str) -> bool:
        if self.file_mode is not None and self.file_mode & 0o077:
            self.problem(
                p,
                f"inline secret in a configuration file that group or others have access to "
                f"(mode {self.file_mode:04o}); chmod 600 the file or use a *_file key",
            )
            return False
        return True

    def secret_from(self, tbl: dict, path: str, inline_key: str, file_key: str) -> Any:
        """A PSK given inline or by file: exactly one. Returns (Secret, source) or BAD."""
        has_inline, has_file = inline_key in tbl, file_key in tbl
        if has_inline == has_file:
            return self.problem(path, f"give exactly one of {inline_key!r} or {file_key!r}")
        if has_inline:
            p = _join(path, inline_key)
            v = tbl[inline_key]
            if not isinstance(v, str):
                return self.problem(p, f"expected a string, got {_type_name(v)}")
            exposed = not self.inline_secret_allowed(p)
            data, source = v.encode(), None
            if exposed:  # still check the length, so both problems show at once
                if len(data) < m.MIN_PSK_BYTES:
                    self.problem(p, f"PSK is shorter than {m.MIN_PSK_BYTES} bytes")
                return BAD
        else:
            fp = self.file(tbl, path, file_key, private=True)
            if fp is BAD:
                return BAD
            p = _join(path, file_key)
            if not self.check_files:
                return (None, fp)
            try:
                data = fp.read_bytes()
            except OSError as e:
                return self.problem(p, f"{str(fp)!r} cannot be read: {e.strerror}")
            data = data.rstrip(b"\r\n")
            source = fp
        if len(data) < m.MIN_PSK_BYTES:
            return self.problem(p, f"PSK is shorter than {m.MIN_PSK_BYTES} bytes")
        return (m.Secret(data), source)

    def ppk_entry(self, raw: Any, path: str, *, member: bool) -> m.PpkCredential | None:
        """A G-IKEv2 PPK (RFC 8784): ``id`` and ``secret_file`` (mode 0600, at least
        MIN_PPK_BYTES octets, trailing newlines stripped as for PSK files); a member's may say
        ``required``."""
        n0 = len(self.problems)
        tbl = self.table(raw, path, {"id", "secret_file"} | ({"required"} if member else set()),
                         required=("id", "secret_file"))
        if tbl is None:
            return None
        ident = self.value(tbl, path, "id", str)
        if ident == "":
            ident = self.problem(_join(path, "id"), "must not be empty")
        elif isinstance(ident, str) and len(ident.encode()) > 255:
            ident = self.problem(_join(path, "id"), "longer than 255 octets (a PPK_ID's limit)")
        required = self.value(tbl, path, "required", bool, False)
        fp = self.file(tbl, path, "secret_file", private=True)
        secret = None
        if fp is not BAD and self.check_files:
            p = _join(path, "secret_file")
            try:
                data = fp.read_bytes().rstrip(b"\r\n")
            except OSError as e:
                self.problem(p, f"{str(fp)!r} cannot be read: {e.strerror}")
            else:
                if len(data) < m.MIN_PPK_BYTES:
                    self.problem(p, f"PPK is shorter than {m.MIN_PPK_BYTES} bytes")
                secret = m.Secret(data)
        if len(self.problems) > n0:
            return None
        if secret is None:
            secret = m.Secret(bytes(m.MIN_PPK_BYTES))  # files not checked: a stand-in
        return self.build(path, m.PpkCredential, id=ident, secret=secret, source=fp, required=required)

    def signing_key_matches(self, keyfile: Path, sig: SignatureSuite, p: str) -> None:
        """The PEM private key loads unencrypted and fits the signature algorithm."""
        if not self.check_files:
            return
        try:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_private_key
        except ImportError:  # pragma: no cover - cryptography is a dependency
            return
        try:
            key = load_pem_private_key(keyfile.read_bytes(), password=None)
        except TypeError:
            self.problem(p, f"{str(keyfile)!r} is encrypted; msecd needs an unencrypted key")
            return
        except (ValueError, OSError):
            self.problem(p, f"{str(keyfile)!r} is not a PEM private key")
            return
        if sig.key_type == "rsa":
            if not isinstance(key, rsa.RSAPrivateKey):
                self.problem(p, f"signature {sig.name!r} needs an RSA key")
            elif key.key_size < sig.min_key_bits:
                self.problem(p, f"RSA key has {key.key_size} bits; {sig.name!r} needs at least "
                                f"{sig.min_key_bits}")
        else:
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                self.problem(p, f"signature {sig.name!r} needs an EC key on {sig.curve}")
            elif key.curve.name != sig.curve:
                self.problem(p, f"signature {sig.name!r} needs curve {sig.curve}, "
                                f"the key is on {key.curve.name}")

    # ------------------------------------------------------------------ sections

    def daemon(self, raw: Any, path: str) -> m.DaemonSettings | None:
        tbl = self.table(raw, path, {"state_dir", "control_socket", "state_anchor",
                                     "keylog_file", "metrics_listen", "nat_keepalive"})
        if tbl is None:
            return None
        d = m.DaemonSettings()
        state = self.value(tbl, path, "state_dir", str, None)
        sock = self.value(tbl, path, "control_socket", str, None)
        anchor = self.value(tbl, path, "state_anchor", str, None)
        keylog = self.value(tbl, path, "keylog_file", str, None)
        metrics = self.value(tbl, path, "metrics_listen", str, None)
        keepalive = self.duration(tbl, path, "nat_keepalive", *m.NAT_KEEPALIVE_RANGE, m.DEFAULT_NAT_KEEPALIVE)
        if metrics not in (None, BAD):
            metrics = self.listen_address(metrics, _join(path, "metrics_listen"))
        if BAD in (state, sock, anchor, keylog, metrics, keepalive):
            return None
        if keylog and not self.path(keylog).parent.is_dir():
            self.problem(_join(path, "keylog_file"),
                         f"directory {self.path(keylog).parent} does not exist")
            return None
        return m.DaemonSettings(
            state_dir=self.path(state) if state else d.state_dir,
            control_socket=self.path(sock) if sock else d.control_socket,
            state_anchor=self.path(anchor) if anchor else None,
            keylog_file=self.path(keylog) if keylog else None,
            metrics_listen=metrics,
            nat_keepalive_s=keepalive,
        )

    def listen_address(self, text: str, p: str) -> Any:
        """"ADDR:PORT" or "[IPv6]:PORT" (an IP literal: a listening socket, no name lookup;
        the port is required) -> (address, port)."""
        mt = re.fullmatch(r"\[([^\]]+)\]:(\d+)", text) or re.fullmatch(r"([^:\[\]]+):(\d+)", text)
        if not mt:
            return self.problem(p, f"{text!r} is not ADDRESS:PORT or [IPv6]:PORT")
        addr = self.ip_address(mt.group(1), p)
        if addr is BAD:
            return BAD
        if text.startswith("[") != (addr.version == 6):
            return self.problem(p, f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
        port = int(mt.group(2))
        if not 1 <= port <= 65535:
            return self.problem(p, f"{text!r}: port {port} is not in 1..65535")
        return (addr, port)

    def matchers(self, raw: Any, path: str) -> m.Authorization | None:
        tbl = self.table(raw, path, {"psk_identities", "fqdns", "addresses", "subjects"})
        if tbl is None:
            return None
        rules: list[m.Matcher] = []
        ok = True
        builders: list[tuple[str, Callable[[str, str], Any]]] = [
            ("psk_identities", lambda s, p: m.PskIdMatch(s)),
            ("fqdns", lambda s, p: m.FqdnMatch(s)),
            ("addresses", self._address_match),
            ("subjects", lambda s, p: m.SubjectMatch(s)),
        ]
        for key, build in builders:
            items = self.string_list(tbl, path, key, [])
            if items is BAD:
                ok = False
                continue
            for i, s in enumerate(items):
                p = f"{_join(path, key)}[{i}]"
                try:
                    rule = build(s, p)
                except ValueError as e:
                    rule = self.problem(p, str(e))
                if rule is BAD:
                    ok = False
                else:
                    rules.append(rule)
        return m.Authorization(tuple(rules)) if ok else None

    def _address_match(self, s: str, p: str) -> Any:
        n = self.ip_network(s, p)
        return BAD if n is BAD else m.AddressMatch(n)

    def tek(self, raw: Any, path: str, index: int) -> m.TekPolicy | None:
        keys = {"name", "src", "dst", "protocol", "src_port", "dst_port", "mode", "cipher",
                "lifetime", "replay_window", "senders"}
        n0 = len(self.problems)
        tbl = self.table(raw, path, keys, required=("src", "dst", "cipher"))
        if tbl is None:
            return None
        name = self.value(tbl, path, "name", str, f"tek{index}")
        if name == "":
            name = self.problem(_join(path, "name"), "must not be empty")
        src = self.value(tbl, path, "src", str)
        dst = self.value(tbl, path, "dst", str)
        src = BAD if src is BAD else self.ip_network(src, _join(path, "src"))
        dst = BAD if dst is BAD else self.ip_network(dst, _join(path, "dst"))
        if src is not BAD and src.is_multicast:
            src = self.problem(_join(path, "src"), f"{src} is multicast; a source is unicast")
        if src is not BAD and dst is not BAD and src.version != dst.version:
            self.problem(_join(path, "dst"),
                         f"destination {dst} is IPv{dst.version} but source {src} is "
                         f"IPv{src.version}")
        proto = self.value(tbl, path, "protocol", (str, int), 0)
        if isinstance(proto, str):
            if proto.lower() in PROTOCOLS:
                proto = PROTOCOLS[proto.lower()]
            else:
                proto = self.problem(_join(path, "protocol"),
                                     f"unknown protocol {proto!r}; use a number 0..255 or one "
                                     f"of {', '.join(PROTOCOLS)}")
        elif isinstance(proto, int) and not 0 <= proto <= 255:
            proto = self.problem(_join(path, "protocol"), f"{proto} is not in 0..255")
        ports = {}
        for key in ("src_port", "dst_port"):
            ports[key] = self.integer(tbl, path, key, 0, 65535, 0)
            if ports[key] not in (0, BAD) and proto is not BAD and proto not in m.PORT_PROTOCOLS:
                self.problem(_join(path, key),
                             "a port needs protocol tcp, udp, sctp, dccp or udplite")
        mode = self.choice(tbl, path, "mode", {x.value: x for x in m.Mode}, default=m.Mode.TUNNEL)
        if mode is m.Mode.TUNNEL and dst is not BAD:
            if not dst.is_multicast:
                self.problem(_join(path, "dst"),
                             f"tunnel mode with address preservation (RFC 5374) needs a multicast "
                             f"destination; {dst} is not multicast")
            elif dst.num_addresses != 1:
                self.problem(_join(path, "dst"),
                             f"tunnel mode with address preservation needs one multicast address, "
                             f"not the prefix {dst}: the outer destination (and the kernel SA) "
                             f"is one address")
        suite = self.choice(tbl, path, "cipher", ESP_SUITES)
        lo, hi = m.TEK_LIFETIME_RANGE
        life = self.duration(tbl, path, "lifetime", lo, hi, 3600)
        senders = None
        if "senders" in tbl:
            senders = self.matchers(tbl["senders"], _join(path, "senders"))
            if senders is not None and not senders.rules:
                senders = self.problem(_join(path, "senders"), "names no sender; omit it to let "
                                                               "every member send")
            elif senders is None:
                senders = BAD
        one_sender = (isinstance(senders, m.Authorization) and len(senders.rules) == 1
                      and senders.rules[0].single)
        window = self.integer(tbl, path, "replay_window", 0, m.MAX_REPLAY_WINDOW,
                              m.DEFAULT_REPLAY_WINDOW if one_sender else 0)
        if window not in (0, BAD) and senders is not BAD:
            if senders is None:
                self.problem(_join(path, "replay_window"),
                             "must be 0 for a multi-sender TEK (no 'senders'): all senders share "
                             "one SA and count packets independently, receivers would drop "
                             "valid packets as replays")
            elif len(senders.rules) != 1 or not senders.rules[0].single:
                self.problem(_join(path, "replay_window"),
                             "a replay window needs exactly one sender (one rule, no wildcard, "
                             "no network)")
        if len(self.problems) > n0:
            return None
        return self.build(path, m.TekPolicy, name=name,
                          selector=m.TrafficSelector(src, dst, proto, ports["src_port"],
                                                     ports["dst_port"]),
                          suite=suite, mode=mode, lifetime_s=life, senders=senders,
                          replay_window=window)

    def kek(self, raw: Any, path: str) -> m.KekPolicy | None:
        keys = {"cipher", "signature", "signing_key", "rekey_address", "rekey_port", "lifetime",
                "tek_rekey_lead", "kek_rekey_lead", "rekey_ttl", "rekey_interface",
                "max_push_size", "lkh", "lkh_degree", "evict_batch_window", "rekey_delivery",
                "rekey_copies", "rekey_copy_interval", "rekey_unicast_rate", "rekey_ack_timeout",
                "rekey_ack_retries", "rekey_max_missed"}
        n0 = len(self.problems)
        if isinstance(raw, dict) and "rekey_interval" in raw:
            self.problem(_join(path, "rekey_interval"),
                         "was replaced by tek_rekey_lead (how long before a TEK expires its "
                         "successor is pushed) and kek_rekey_lead; remove it (README: "
                         "automatic rotation)")
            raw = {k: v for k, v in raw.items() if k != "rekey_interval"}
        tbl = self.table(raw, path, keys, required=("signing_key", "rekey_address"))
        if tbl is None:
            return None
        cipher = self.choice(tbl, path, "cipher", KEK_CIPHERS, KEK_CIPHERS_REFUSED,
                             default=KEK_CIPHERS["aes-cbc-128"])
        sig = self.choice(tbl, path, "signature", SIGNATURE_SUITES, SIGNATURE_SUITES_REFUSED,
                          default=SIGNATURE_SUITES["rsa-pkcs1-sha256"])
        key = self.file(tbl, path, "signing_key", private=True)
        if key is not BAD and sig is not BAD:
            self.signing_key_matches(key, sig, _join(path, "signing_key"))
        addr = self.value(tbl, path, "rekey_address", str)
        if addr is not BAD:
            addr = self.ip_address(addr, _join(path, "rekey_address"))
            if addr is not BAD and not addr.is_multicast:
                addr = self.problem(_join(path, "rekey_address"),
                                    f"{addr} is not a multicast address")
        port = self.integer(tbl, path, "rekey_port", 1, 65535, m.GDOI_PORT)
        ttl = self.integer(tbl, path, "rekey_ttl", 1, 255, 1)
        max_push = self.integer(tbl, path, "max_push_size", *m.MAX_PUSH_SIZE_RANGE,
                                m.MAX_PUSH_SIZE_DEFAULT)
        iface = self.value(tbl, path, "rekey_interface", str, None)
        if isinstance(iface, str):
            iface = self.interface_name(iface, _join(path, "rekey_interface"))
        life = self.duration(tbl, path, "lifetime", *m.KEK_LIFETIME_RANGE, 86_400)
        tek_lead = self.duration(tbl, path, "tek_rekey_lead", *m.REKEY_LEAD_RANGE, None)
        kek_lead = self.duration(tbl, path, "kek_rekey_lead", *m.REKEY_LEAD_RANGE, None)
        lkh = self.value(tbl, path, "lkh", bool, True)
        degree = self.integer(tbl, path, "lkh_degree", *m.LKH_DEGREE_RANGE, 2)
        batch = self.duration(tbl, path, "evict_batch_window", *m.EVICT_BATCH_RANGE, 0)
        mode = self.value(tbl, path, "rekey_delivery", str, "multicast")
        if mode is not BAD and mode not in m.REKEY_DELIVERY_MODES:
            mode = self.problem(_join(path, "rekey_delivery"),
                                f"unknown value {mode!r}; choose one of "
                                f"{', '.join(m.REKEY_DELIVERY_MODES)}")
        copies = self.integer(tbl, path, "rekey_copies", *m.REKEY_COPIES_RANGE, 2)
        interval = self.interval(tbl, path, "rekey_copy_interval", *m.REKEY_COPY_INTERVAL_RANGE,
                                 0.5)
        rate = self.integer(tbl, path, "rekey_unicast_rate", *m.REKEY_UNICAST_RATE_RANGE, 5000)
        ack_timeout = self.duration(tbl, path, "rekey_ack_timeout", *m.REKEY_ACK_TIMEOUT_RANGE,
                                    10)
        retries = self.integer(tbl, path, "rekey_ack_retries", *m.REKEY_ACK_RETRIES_RANGE, 3)
        missed = self.integer(tbl, path, "rekey_max_missed", *m.REKEY_MAX_MISSED_RANGE, 3)
        if len(self.problems) > n0:
            return None
        return self.build(path, m.KekPolicy, cipher=cipher, signature=sig, signing_key=key,
                          rekey_address=addr, rekey_port=port, lifetime_s=life,
                          tek_rekey_lead_s=tek_lead, kek_rekey_lead_s=kek_lead, rekey_ttl=ttl,
                          rekey_interface=iface, max_push_size=max_push, lkh=lkh,
                          lkh_degree=degree, evict_batch_s=batch, rekey_delivery=mode,
                          rekey_copies=copies, rekey_copy_interval_s=interval,
                          rekey_unicast_rate=rate, rekey_ack_timeout_s=ack_timeout,
                          rekey_ack_retries=retries, rekey_max_missed=missed)

    def interface_name(self, iface: str, p: str) -> Any:
        if not re.fullmatch(r"[^/\s:\x00]{1,15}", iface):
            return self.problem(p, f"{iface!r} is not a Linux interface name (1..15 characters, "
                                   f"no '/', ':' or white space)")
        return iface

    def group_id(self, tbl: dict, path: str) -> Any:
        return self.integer(tbl, path, "id", m.MIN_GROUP_ID, m.MAX_GROUP_ID)

    def name(self, tbl: dict, path: str) -> Any:
        name = self.value(tbl, path, "name", str, None)
        if name == "":
            return self.problem(_join(path, "name"), "must not be empty (omit it instead)")
        return name

    def ks_group(self, raw: Any, path: str) -> m.GroupPolicy | None:
        n0 = len(self.problems)
        tbl = self.table(raw, path, {"id", "name", "authorize", "tek", "kek", "activation_delay",
                                     "deactivation_delay", "protocols", "mlkem", "g_ikev2_rekey", "ppk"},
                         required=("id", "authorize", "tek"))
        if tbl is None:
            return None
        gid = self.group_id(tbl, path)
        name = self.name(tbl, path)
        auth = None
        if "authorize" in tbl:
            auth = self.matchers(tbl["authorize"], _join(path, "authorize"))
            if auth is not None and not auth.rules:
                self.problem(_join(path, "authorize"), "admits nobody; list who may join")
        teks: list[m.TekPolicy | None] = []
        raw_teks = self.table_array(tbl, path, "tek")
        if raw_teks is not BAD:
            if not raw_teks and "tek" in tbl:
                self.problem(_join(path, "tek"), "a group needs at least one TEK")
            for i, rt in enumerate(raw_teks):
                teks.append(self.tek(rt, f"{_join(path, 'tek')}[{i}]", i))
            names: dict[str, int] = {}
            for i, t in enumerate(teks):
                if t is None:
                    continue
                if t.name in names:
                    self.problem(f"{_join(path, 'tek')}[{i}].name",
                                 f"duplicate TEK name {t.name!r} (also tek[{names[t.name]}])")
                names.setdefault(t.name, i)
        kek = None
        if "kek" in tbl:
            kek = self.kek(tbl["kek"], _join(path, "kek"))
        atd = self.duration(tbl, path, "activation_delay", *m.GAP_DELAY_RANGE,
                            m.DEFAULT_ACTIVATION_DELAY)
        dtd = self.duration(tbl, path, "deactivation_delay", *m.GAP_DELAY_RANGE,
                            m.DEFAULT_DEACTIVATION_DELAY)
        if BAD not in (atd, dtd) and teks and all(t is not None for t in teks):
            problem = m.gap_delay_problem(atd, dtd, min(t.lifetime_s for t in teks))
            if problem is not None:
                self.problem(_join(path, problem[0]), problem[1])
            elif kek is not None:
                lead_problem = m.tek_lead_problem(kek, tuple(teks), atd, dtd)
                if lead_problem is not None:
                    self.problem(_join(_join(path, "kek"), "tek_rekey_lead"), lead_problem)
        protocols = self.string_list(tbl, path, "protocols") if "protocols" in tbl else ["gdoi"]
        if protocols is not BAD:
            problem = m.protocols_problem(protocols)
            if problem is not None:
                self.problem(_join(path, "protocols"), problem)
        mlkem = self.value(tbl, path, "mlkem", str, "optional")
        if isinstance(mlkem, str) and mlkem not in m.GROUP_MLKEM:
            self.problem(_join(path, "mlkem"), f"unknown value {mlkem!r} (optional or required)")
        elif mlkem == "required" and protocols is not BAD and "g-ikev2" not in protocols:
            self.problem(_join(path, "mlkem"), "applies to G-IKEv2 members: list \"g-ikev2\" in "
                         "protocols (GDOI's IKEv1 phase 1 has no ML-KEM)")
        ppk = self.value(tbl, path, "ppk", str, "optional")
        if isinstance(ppk, str) and ppk not in m.GROUP_PPK:
            self.problem(_join(path, "ppk"), f"unknown value {ppk!r} (optional or required)")
        elif ppk == "required" and protocols is not BAD and "g-ikev2" not in protocols:
            self.problem(_join(path, "ppk"), "applies to G-IKEv2 members (RFC 8784): list \"g-ikev2\" in protocols")
        g_rekey = self.value(tbl, path, "g_ikev2_rekey", str, "gsa_rekey")
        if isinstance(g_rekey, str) and g_rekey not in m.G_IKEV2_REKEY:
            self.problem(_join(path, "g_ikev2_rekey"), f"unknown value {g_rekey!r} (gsa_rekey or inband)")
        elif g_rekey == "inband" and protocols is not BAD and "g-ikev2" not in protocols:
            self.problem(_join(path, "g_ikev2_rekey"), "applies to G-IKEv2 members: list \"g-ikev2\" in protocols")
        elif g_rekey == "inband" and "kek" not in tbl:
            self.problem(_join(path, "g_ikev2_rekey"), "in-band rekeys follow the group's rekeys (rotation, "
                         "eviction), which need [keyserver.group.kek]")
        if len(self.problems) > n0:
            return None
        return self.build(path, m.GroupPolicy, group_id=gid, teks=tuple(teks),
                          authorization=auth, kek=kek, name=name, activation_delay_s=atd,
                          deactivation_delay_s=dtd, protocols=tuple(protocols), mlkem=mlkem,
                          g_ikev2_rekey=g_rekey, ppk=ppk)

    def psk_entry(self, raw: Any, path: str) -> m.PskCredential | None:
        n0 = len(self.problems)
        tbl = self.table(raw, path, {"identity", "secret", "secret_file", "addresses"},
                         required=("identity",))
        if tbl is None:
            return None
        ident = self.value(tbl, path, "identity", str)
        if ident == "":
            ident = self.problem(_join(path, "identity"), "must not be empty")
        sec = self.secret_from(tbl, path, "secret", "secret_file")
        addrs = self.string_list(tbl, path, "addresses", [])
        if addrs is not BAD:
            addrs = [self.ip_address(a, f"{_join(path, 'addresses')}[{i}]")
                     for i, a in enumerate(addrs)]
        if len(self.problems) > n0:
            return None
        secret, source = sec
        if secret is None:
            secret = _placeholder_secret()
        return self.build(path, m.PskCredential, identity=ident, secret=secret, source=source,
                          addresses=tuple(addrs))

    def certificate(self, raw: Any, path: str) -> m.CertCredential | None:
        n0 = len(self.problems)
        tbl = self.table(raw, path, {"cert_file", "key_file", "trust_anchors"},
                         required=("cert_file", "key_file", "trust_anchors"))
        if tbl is None:
            return None
        cert = self.file(tbl, path, "cert_file", private=False)
        key = self.file(tbl, path, "key_file", private=True)
        anchors = self.string_list(tbl, path, "trust_anchors")
        out = []
        if anchors is not BAD:
            if not anchors and "trust_anchors" in tbl:
                self.problem(_join(path, "trust_anchors"), "needs at least one trust anchor")
            for i, a in enumerate(anchors):
                out.append(self._check_file(a, f"{_join(path, 'trust_anchors')}[{i}]", False))
        if len(self.problems) > n0:
            return None
        return self.build(path, m.CertCredential, cert_file=cert, key_file=key,
                          trust_anchors=tuple(out))

    def keyserver(self, raw: Any, path: str) -> m.KeyServerSettings | None:
        n0 = len(self.problems)
        tbl = self.table(raw, path, {"listen", "port", "identity", "psk", "certificate", "group",
                                     "phase1", "crl", "g_ikev2_port", "ppk"})
        if tbl is None:
            return None
        listen = self.string_list(tbl, path, "listen", ["0.0.0.0", "::"])
        if listen is not BAD:
            if not listen:
                self.problem(_join(path, "listen"), "needs at least one address")
            listen = [self.ip_address(a, f"{_join(path, 'listen')}[{i}]")
                      for i, a in enumerate(listen)]
        port = self.integer(tbl, path, "port", 1, 65535, m.GDOI_PORT)
        ike_port = self.integer(tbl, path, "g_ikev2_port", 1, 65535, None)
        if ike_port == m.NATT_PORT:
            ike_port = self.problem(_join(path, "g_ikev2_port"), _NATT_REASON)
        elif ike_port is not None and ike_port is not BAD and ike_port == port:
            ike_port = None  # the same socket as GDOI: as if not given
        if port == m.NATT_PORT and ike_port == 500:
            self.problem(_join(path, "port"), "4500 is the NAT-T port, where G-IKEv2 on 500 listens with the "
                         "non-ESP marker (RFC 7296 §2.23); use 848 (default)")
        identity = self.value(tbl, path, "identity", str, None)
        if isinstance(identity, str):
            identity = self.local_identity(identity, _join(path, "identity"))
        psks: list[m.PskCredential | None] = []
        raw_psks = self.table_array(tbl, path, "psk")
        if raw_psks is not BAD:
            for i, rp in enumerate(raw_psks):
                psks.append(self.psk_entry(rp, f"{_join(path, 'psk')}[{i}]"))
        seen: dict[str, int] = {}
        for i, p in enumerate(psks):
            if p is not None:
                if p.identity in seen:
                    self.problem(f"{_join(path, 'psk')}[{i}].identity",
                                 f"duplicate PSK identity {p.identity!r} (also psk[{seen[p.identity]}])")
                seen.setdefault(p.identity, i)
        owner: dict = {}
        for i, p in enumerate(psks):
            for j, a in enumerate(p.addresses if p is not None else ()):
                if a in owner and owner[a] != i:
                    self.problem(f"{_join(path, 'psk')}[{i}].addresses[{j}]",
                                 f"{a} already has a PSK (psk[{owner[a]}]); Main Mode picks the "
                                 f"key by address, so it must be unique")
                owner.setdefault(a, i)
        ppks: list[m.PpkCredential | None] = []
        raw_ppks = self.table_array(tbl, path, "ppk")
        if raw_ppks is not BAD:
            for i, rp in enumerate(raw_ppks):
                ppks.append(self.ppk_entry(rp, f"{_join(path, 'ppk')}[{i}]", member=False))
        seen_ppk: dict[str, int] = {}
        for i, p in enumerate(ppks):
            if p is not None:
                if p.id in seen_ppk:
                    self.problem(f"{_join(path, 'ppk')}[{i}].id", f"duplicate PPK id {p.id!r} (also ppk[{seen_ppk[p.id]}])")
                seen_ppk.setdefault(p.id, i)
        cert = None
        if "certificate" in tbl:
            cert = self.certificate(tbl["certificate"], _join(path, "certificate"))
        crls = self.crl_files(tbl, path, cert)
        groups: list[m.GroupPolicy | None] = []
        raw_groups = self.table_array(tbl, path, "group")
        if raw_groups is not BAD:
            for i, rg in enumerate(raw_groups):
                gp = f"{_join(path, 'group')}[{i}]"
                g = self.ks_group(rg, gp)
                groups.append(g)
                self._check_auth_credentials(g, rg, gp, tbl, raw_psks)
        self._duplicate_ids(groups, _join(path, "group"))
        self._duplicate_selectors(groups, _join(path, "group"))
        if "ppk" not in tbl:
            for i, g in enumerate(groups):
                if g is not None and g.ppk == "required":
                    self.problem(f"{_join(path, 'group')}[{i}].ppk", "admits nobody: add [[keyserver.ppk]] entries "
                                 "(id, secret_file) for its members' PPKs")
        if isinstance(raw_groups, list) and raw_groups and "psk" not in tbl and "certificate" not in tbl:
            self.problem(path, "no credentials: add [[keyserver.psk]] entries or "
                               "[keyserver.certificate]")
        phase1 = m.Phase1Suites()
        if "phase1" in tbl:
            pp = _join(path, "phase1")
            phase1 = self.phase1(tbl["phase1"], pp, member=False)
            for kind, present, what in (("psk", "psk" in tbl, "[[keyserver.psk]] entries"),
                                        ("certificate", "certificate" in tbl, "[keyserver.certificate]")):
                if phase1 is not None and phase1.auth is not None and kind in phase1.auth and not present:
                    self.problem(_join(pp, "auth"), f"{kind!r} needs {what}")
            if phase1 is not None and phase1.auth is not None:
                for i, g in enumerate(groups):
                    for rule in g.authorization.rules if g is not None else ():
                        kind, key = (("psk", "psk_identities") if isinstance(rule, m.PskIdMatch) else
                                     ("certificate", "subjects") if isinstance(rule, m.SubjectMatch) else (None, None))
                        if kind is not None and kind not in phase1.auth:
                            self.problem(f"{_join(path, 'group')}[{i}].authorize.{key}",
                                         f"admits nobody: phase 1 auth {list(phase1.auth)} excludes {kind!r}")
                            break
        if len(self.problems) > n0:
            return None
        return self.build(path, m.KeyServerSettings, listen=tuple(listen), port=port,
                          psks=tuple(psks), certificate=cert, groups=tuple(groups),
                          identity=identity, phase1=phase1, crl_files=crls, g_ikev2_port=ike_port,
                          ppks=tuple(ppks))

    def phase1(self, raw: Any, path: str, *, member: bool) -> m.Phase1Suites | None:
        """[keyserver.phase1] (accepted suites) or a member group's phase1 (offered suites)."""
        n0 = len(self.problems)
        keys = {"ciphers", "hashes", "dh_groups", "lifetime"} | (set() if member else {"auth"})
        if member and isinstance(raw, dict) and "auth" in raw:
            self.problem(_join(path, "auth"), "a member authenticates with its credentials; "
                                              "the key server's [keyserver.phase1] auth chooses")
            raw = {k: v for k, v in raw.items() if k != "auth"}
        tbl = self.table(raw, path, keys)
        if tbl is None:
            return None
        d = m.Phase1Suites()
        ciphers = self._names(tbl, path, "ciphers", PHASE1_CIPHERS, d.ciphers)
        hashes = self._names(tbl, path, "hashes", PHASE1_HASHES, d.hashes)
        groups = self._names(tbl, path, "dh_groups", PHASE1_DH_GROUPS, d.dh_groups, kind=int)
        auth = None if member else self._names(tbl, path, "auth", dict.fromkeys(PHASE1_AUTH), None)
        life = self.duration(tbl, path, "lifetime", 60, 30 * 86400, d.lifetime_s)
        if len(self.problems) > n0:
            return None
        n = len(ciphers) * len(hashes) * len(groups)
        if n > m.MAX_PHASE1_TRANSFORMS:
            return self.problem(path, f"{len(ciphers)} ciphers x {len(hashes)} hashes x {len(groups)} DH "
                                      f"groups = {n} transforms, more than {m.MAX_PHASE1_TRANSFORMS}")
        return self.build(path, m.Phase1Suites, ciphers=tuple(ciphers), hashes=tuple(hashes),
                          dh_groups=tuple(groups), auth=None if auth is None else tuple(auth),
                          lifetime_s=life)

    def _names(self, tbl: dict, path: str, key: str, table, default: Any, kind: type = str) -> Any:
        """A non-empty list of distinct names (or numbers) from ``table``; weak ones refused
        with their reason (`PHASE1_REFUSED`)."""
        if key not in tbl:
            return default
        v = self.value(tbl, path, key, list)
        if v is BAD:
            return BAD
        p = _join(path, key)
        if not v:
            return self.problem(p, f"list at least one; choose from {', '.join(map(str, table))}")
        out: list = []
        for i, item in enumerate(v):
            ip = f"{p}[{i}]"
            if isinstance(item, bool) or not isinstance(item, kind):
                out.append(self.problem(ip, f"expected {_kinds((kind,))}, got {_type_name(item)}"))
            elif item in out:
                out.append(self.problem(ip, f"{item!r} listed twice"))
            elif item in table:
                out.append(item)
            elif str(item).lower() in PHASE1_REFUSED:
                out.append(self.problem(ip, f"{item!r} is not accepted: {PHASE1_REFUSED[str(item).lower()]}; "
                                            f"choose from {', '.join(map(str, table))}"))
            else:
                out.append(self.problem(ip, f"unknown value {item!r}; choose from "
                                            f"{', '.join(map(str, table))}"))
        return BAD if any(x is BAD for x in out) else out

    def crl_files(self, tbl: dict, path: str, cert: m.CertCredential | None) -> Any:
        files = self.string_list(tbl, path, "crl", [])
        if files is BAD:
            return ()
        p = _join(path, "crl")
        if files and "certificate" not in tbl:
            self.problem(p, "a CRL revokes certificates: it needs [keyserver.certificate] "
                            "and its trust_anchors")
            return ()
        out = [self._check_file(f, f"{p}[{i}]", False) for i, f in enumerate(files)]
        if BAD in out or cert is None or not self.check_files:
            return tuple(out)
        from policy.revocation import load_crls

        for i, f in enumerate(out):
            try:
                load_crls([f], cert.trust_anchors)
            except ValueError as e:
                self.problem(f"{p}[{i}]", str(e))
        return tuple(out)

    def local_identity(self, text: str, p: str) -> Any:
        kind, sep, value = text.partition(":")
        kinds = {"key-id": m.IdKind.KEY_ID, "fqdn": m.IdKind.FQDN, "address": m.IdKind.ADDRESS}
        if not sep or kind not in kinds or not value:
            return self.problem(p, f"{text!r} is not KIND:VALUE with KIND one of "
                                   f"{', '.join(kinds)} (e.g. 'fqdn:ks.example.org')")
        if kind == "address":
            a = self.ip_address(value, p)
            return BAD if a is BAD else m.Identity(m.IdKind.ADDRESS, str(a))
        if kind == "fqdn" and not _HOSTNAME_RE.fullmatch(value):
            return self.problem(p, f"{value!r} is not a host name")
        return m.Identity(kinds[kind], value)

    def _duplicate_selectors(self, groups, path: str) -> None:
        """Two TEKs with the same selector would compete for the same kernel policy."""
        seen: dict = {}
        for i, g in enumerate(groups):
            for j, t in enumerate(g.teks if g is not None else ()):
                here = f"{path}[{i}].tek[{j}]"
                if t.selector in seen:
                    self.problem(f"{here}.dst", f"same traffic selector as {seen[t.selector]}; the "
                                                f"kernel can hold only one policy for it")
                seen.setdefault(t.selector, here)

    def _check_auth_credentials(self, g, raw_group, gp, ks_tbl, raw_psks) -> None:
        """Rules must be satisfiable: PSK identities known, subjects need certificates."""
        if not isinstance(raw_group, dict):
            return
        known = {p.get("identity") for p in raw_psks
                 if isinstance(p, dict) and isinstance(p.get("identity"), str)
                 } if isinstance(raw_psks, list) else set()
        places = [("authorize", raw_group.get("authorize"))]
        for i, t in enumerate(raw_group.get("tek", []) if isinstance(raw_group.get("tek"), list)
                              else []):
            if isinstance(t, dict):
                places.append((f"tek[{i}].senders", t.get("senders")))
        for where, rules in places:
            if not isinstance(rules, dict):
                continue
            ids = rules.get("psk_identities")
            if isinstance(ids, list):
                for j, ident in enumerate(ids):
                    if isinstance(ident, str) and ident not in known:
                        self.problem(f"{gp}.{where}.psk_identities[{j}]",
                                     f"no [[keyserver.psk]] entry with identity {ident!r}")
            subjects = rules.get("subjects")
            if isinstance(subjects, list) and subjects and "certificate" not in ks_tbl:
                self.problem(f"{gp}.{where}.subjects",
                             "certificate subjects need [keyserver.certificate] (trust anchors)")

    def _duplicate_ids(self, groups, path: str) -> None:
        seen: dict[int, int] = {}
        for i, g in enumerate(groups):
            if g is None:
                continue
            if g.group_id in seen:
                self.problem(f"{path}[{i}].id",
                             f"duplicate group id {g.group_id} (also {path}[{seen[g.group_id]}])")
            seen.setdefault(g.group_id, i)
        names: dict[str, int] = {}
        for i, g in enumerate(groups):
            if g is not None and g.name:
                if g.name in names:
                    self.problem(f"{path}[{i}].name",
                                 f"duplicate group name {g.name!r} (also {path}[{names[g.name]}])")
                names.setdefault(g.name, i)

    def key_server(self, text: str, p: str) -> Any:
        host, port = text, m.GDOI_PORT
        mt = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if mt:
            host = mt.group(1)
            if mt.group(2):
                port = int(mt.group(2))
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                return self.problem(p, f"{text!r}: [{host}] is not an IPv6 address")
        elif text.count(":") == 1:
            host, _, ps = text.partition(":")
            if not ps.isdigit():
                return self.problem(p, f"{text!r}: port {ps!r} is not a number")
            port = int(ps)
        if not 1 <= port <= 65535:
            return self.problem(p, f"{text!r}: port {port} is not in 1..65535")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if ":" in host or not _HOSTNAME_RE.fullmatch(host) or host.replace(".", "").isdigit():
                return self.problem(p, f"{text!r} is not an address, [IPv6]:port, or host name")
        return m.KeyServerAddress(host, port)

    def member_credentials(self, raw: Any, path: str) -> m.Credentials | None:
        keys = {"psk_identity", "psk", "psk_file", "cert_file", "key_file", "trust_anchors"}
        n0 = len(self.problems)
        tbl = self.table(raw, path, keys)
        if tbl is None:
            return None
        psk_keys = {"psk_identity", "psk", "psk_file"} & tbl.keys()
        cert_keys = {"cert_file", "key_file", "trust_anchors"} & tbl.keys()
        if psk_keys and cert_keys:
            self.problem(path, "give either PSK keys (psk_identity, psk/psk_file) or certificate "
                               "keys (cert_file, key_file, trust_anchors), not both")
            return None
        if not psk_keys and not cert_keys:
            self.problem(path, "no credentials: give psk_identity with psk or psk_file, or "
                               "cert_file, key_file and trust_anchors")
            return None
        if cert_keys:
            return self.certificate(tbl, path)
        n0 = len(self.problems)
        if "psk_identity" not in tbl:
            self.problem(_join(path, "psk_identity"), "missing required key")
        ident = self.value(tbl, path, "psk_identity", str, None)
        if ident == "":
            self.problem(_join(path, "psk_identity"), "must not be empty")
        sec = self.secret_from(tbl, path, "psk", "psk_file")
        if len(self.problems) > n0:
            return None
        secret, source = sec
        if secret is None:
            secret = _placeholder_secret()
        return self.build(path, m.PskCredential, identity=ident, secret=secret, source=source)

    def member_group(self, raw: Any, path: str) -> m.MemberGroup | None:
        keys = {"id", "name", "key_servers", "credentials", "interface", "key_server_identity",
                "phase1", "protocol", "sender", "mlkem", "ppk"}
        n0 = len(self.problems)
        tbl = self.table(raw, path, keys, required=("id", "key_servers", "credentials"))
        if tbl is None:
            return None
        gid = self.group_id(tbl, path)
        name = self.name(tbl, path)
        servers = self.string_list(tbl, path, "key_servers")
        if servers is not BAD:
            if not servers and "key_servers" in tbl:
                self.problem(_join(path, "key_servers"), "name at least one key server")
            servers = [self.key_server(s, f"{_join(path, 'key_servers')}[{i}]")
                       for i, s in enumerate(servers)]
        creds = None
        if "credentials" in tbl:
            creds = self.member_credentials(tbl["credentials"], _join(path, "credentials"))
        ks_auth = None
        if "key_server_identity" in tbl:
            ks_auth = self.matchers(tbl["key_server_identity"], _join(path, "key_server_identity"))
            if ks_auth is not None and not ks_auth.rules:
                self.problem(_join(path, "key_server_identity"), "names nobody; list the key "
                                                                 "server's subject or FQDN")
        elif isinstance(creds, m.CertCredential):
            self.problem(_join(path, "key_server_identity"),
                         "required with certificate credentials: otherwise any certificate under "
                         "the trust anchors, another member's too, could pose as the key server")
        iface = self.value(tbl, path, "interface", str, None)
        if isinstance(iface, str):
            self.interface_name(iface, _join(path, "interface"))
        phase1 = m.Phase1Suites()
        if "phase1" in tbl:
            phase1 = self.phase1(tbl["phase1"], _join(path, "phase1"), member=True)
        protocol = self.value(tbl, path, "protocol", str, "gdoi")
        if isinstance(protocol, str) and protocol not in m.PROTOCOLS:
            self.problem(_join(path, "protocol"), f"unknown protocol {protocol!r} (gdoi or g-ikev2)")
        sender = self.value(tbl, path, "sender", bool, False)
        if sender is True and protocol != "g-ikev2":
            self.problem(_join(path, "sender"), "applies to G-IKEv2 members (protocol = "
                         "\"g-ikev2\"): a GDOI member's SA directions come from the key server")
        mlkem = self.value(tbl, path, "mlkem", str, "optional")
        if isinstance(mlkem, str) and mlkem not in m.MEMBER_MLKEM:
            self.problem(_join(path, "mlkem"), f"unknown value {mlkem!r} (off, optional or required)")
        elif mlkem in ("off", "required") and protocol != "g-ikev2":
            self.problem(_join(path, "mlkem"), "applies to G-IKEv2 members (protocol = \"g-ikev2\"): "
                         "GDOI's IKEv1 phase 1 has no ML-KEM")
        ppk = None
        if "ppk" in tbl:
            if protocol != "g-ikev2":
                self.problem(_join(path, "ppk"), "applies to G-IKEv2 members (protocol = \"g-ikev2\"): "
                             "post-quantum preshared keys are RFC 8784's, for IKEv2")
            else:
                ppk = self.ppk_entry(tbl["ppk"], _join(path, "ppk"), member=True)
        if len(self.problems) > n0:
            return None
        return self.build(path, m.MemberGroup, group_id=gid, key_servers=tuple(servers),
                          credentials=creds, name=name, interface=iface,
                          key_server_authorization=ks_auth, phase1=phase1, protocol=protocol,
                          sender=sender, mlkem=mlkem, ppk=ppk)

    def member(self, raw: Any, path: str) -> m.MemberSettings | None:
        n0 = len(self.problems)
        # an empty [member] is a member waiting for `msecctl join` (drop-ins, policy.dropin)
        tbl = self.table(raw, path, {"group"})
        if tbl is None:
            return None
        groups = []
        raw_groups = self.table_array(tbl, path, "group")
        if raw_groups is not BAD:
            for i, rg in enumerate(raw_groups):
                groups.append(self.member_group(rg, f"{_join(path, 'group')}[{i}]"))
        self._duplicate_ids(groups, _join(path, "group"))
        if len(self.problems) > n0:
            return None
        return self.build(path, m.MemberSettings, groups=tuple(groups))

    def document(self, doc: dict) -> m.DaemonConfig | None:
        self.table(doc, "", {"daemon", "keyserver", "member"})
        daemon = self.daemon(doc.get("daemon", {}), "daemon")
        ks = self.keyserver(doc["keyserver"], "keyserver") if "keyserver" in doc else None
        mem = self.member(doc["member"], "member") if "member" in doc else None
        if "keyserver" not in doc and "member" not in doc:
            self.problem("", "configure at least one role: a [keyserver] or [member] table")
        if self.problems:
            return None
        return self.build("", m.DaemonConfig, daemon=daemon, keyserver=ks, member=mem)

    def build(self, path: str, cls, **kw):
        """Construct a model object; its own invariant checks are a last line of defence."""
        try:
            return cls(**kw)
        except ValueError as e:
            self.problem(path, str(e))
            return None


def _placeholder_secret() -> m.Secret:
    """Stands in for a PSK file not read (check_files=False): random, so it admits nobody."""
    return m.Secret(os.urandom(32))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kinds(kinds: tuple[type, ...]) -> str:
    return " or ".join(_type_name(k()) if k is not bool else "a boolean" for k in kinds)
