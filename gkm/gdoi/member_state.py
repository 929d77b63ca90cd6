"""A member's saved group state: what a restarted msecd needs to go on receiving rekeys
without registering again (sans-I/O: values and bytes; the shell writes the file).

:class:`MemberSnapshot` is what the member engine asks the shell to keep
(:class:`gkm.gdoi.member.SaveState`): the Rekey SA (KEK, its signing key, when it expires),
the SEQ the next GROUPKEY-PUSH must exceed, the LKH path, the TEKs held with their timeline
(expiry, outbound, activation and retirement times), the key server registered with and the
GAP delays it gave.  Times are the engine's clock; :func:`encode` and :func:`decode` take the
offset to wall-clock time (``wall = engine + offset``), so a file written by one process is
read right by the next one, whose monotonic clock started elsewhere.

The file is JSON (keys hex encoded) with a SHA-256 of its canonical body: a torn or altered
file is refused, not half read.  :func:`decode` is strict: every field present, of its type,
nothing more; it raises only :class:`MemberStateError`, naming the field.  The file holds keys:
the shell creates it 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from policy.model import AddressPreservation, Mode, SaDirection, TrafficSelector
from policy.suites import KEK_CIPHERS, SIGNATURE_SUITES

from .keys import GroupKek, GroupTek, LkhKeys

__all__ = ["MemberSnapshot", "SavedTek", "MemberStateError", "encode", "decode",
           "FORMAT", "VERSION"]

FORMAT = "msec-member-state"
VERSION = 1
MAX_BYTES = 1 << 20  # a group's state is a few KiB


class MemberStateError(ValueError):
    """The saved state cannot be used (the reason names the field)."""


@dataclass(frozen=True, slots=True)
class SavedTek:
    """One TEK held, with its timeline (engine clock)."""

    tek: GroupTek
    expires_at: float
    outbound: bool
    activate_at: float | None = None
    retire_at: float | None = None


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    group_id: int
    key_server: str  # str(KeyServerAddress) registered with
    kek: GroupKek = field(repr=False)
    kek_expires_at: float
    seq: int  # the PushReceiver's: a PUSH must carry a greater SEQ
    lkh: LkhKeys | None = field(repr=False)
    gap: tuple[float | None, float | None]
    teks: tuple[SavedTek, ...] = field(repr=False)
    saved_at: float

    def __repr__(self) -> str:
        return (f"MemberSnapshot(group={self.group_id}, key_server={self.key_server}, "
                f"seq={self.seq}, teks={[f'{t.tek.spi:#010x}' for t in self.teks]})")


# --------------------------------------------------------------------------------- encode

def _t(t: float | None, off: float) -> float | None:
    return None if t is None else t + off


def _tek(s: SavedTek, off: float) -> dict[str, Any]:
    t = s.tek
    sel = t.selector
    return {
        "spi": t.spi, "src": str(sel.src), "dst": str(sel.dst), "protocol": sel.protocol,
        "src_port": sel.src_port, "dst_port": sel.dst_port, "mode": t.mode.value,
        "address_preservation": int(t.address_preservation), "direction": int(t.direction),
        "suite": t.suite, "keymat": t.keymat.hex(), "auth_key": t.auth_key.hex(),
        "lifetime_s": t.lifetime_s, "replay_window": t.replay_window,
        "expires_at": s.expires_at + off, "outbound": s.outbound,
        "activate_at": _t(s.activate_at, off), "retire_at": _t(s.retire_at, off),
    }


def _body(s: MemberSnapshot, off: float) -> dict[str, Any]:
    k = s.kek
    return {
        "format": FORMAT, "version": VERSION, "group_id": s.group_id,
        "key_server": s.key_server, "saved_at": s.saved_at + off, "seq": s.seq,
        "gap": list(s.gap),
        "kek": {
            "spi": k.spi.hex(), "src": str(k.src), "src_port": k.src_port, "dst": str(k.dst),
            "dst_port": k.dst_port, "cipher": k.cipher, "key": k.key.hex(), "iv": k.iv.hex(),
            "signature": k.signature, "signing_public_key": k.signing_public_key.hex(),
            "lifetime_s": k.lifetime_s, "expires_at": s.kek_expires_at + off,
        },
        "lkh": None if s.lkh is None else [[lv, h, key.hex()] for lv, h, key in s.lkh.keys],
        "teks": [_tek(t, off) for t in s.teks],
    }


def _digest(body: dict[str, Any]) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def encode(s: MemberSnapshot, wall_offset: float = 0.0) -> bytes:
    body = _body(s, wall_offset)
    doc = {"state": body, "sha256": _digest(body)}
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


# --------------------------------------------------------------------------------- decode

def _fields(d: Any, where: str, names: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise MemberStateError(f"{where}: not an object")
    if set(d) != names:
        missing, extra = names - set(d), set(d) - names
        raise MemberStateError(f"{where}: " + "; ".join(
            x for x in (missing and f"missing {sorted(missing)}",
                        extra and f"unknown {sorted(extra)}") if x))
    return d


def _int(v: Any, where: str, lo: int = 0, hi: int = 2 ** 64) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise MemberStateError(f"{where}: not an integer in {lo}..{hi}")
    return v


def _num(v: Any, where: str) -> float:
    if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
        raise MemberStateError(f"{where}: not a finite number")
    return float(v)


def _opt_num(v: Any, where: str) -> float | None:
    return None if v is None else _num(v, where)


def _str(v: Any, where: str) -> str:
    if type(v) is not str or not v:
        raise MemberStateError(f"{where}: not a non-empty string")
    return v


def _hex(v: Any, where: str) -> bytes:
    if type(v) is not str:
        raise MemberStateError(f"{where}: not a hex string")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise MemberStateError(f"{where}: not a hex string") from None


def _net(v: Any, where: str):
    try:
        return ipaddress.ip_network(_str(v, where))
    except ValueError:
        raise MemberStateError(f"{where}: not an address/prefix") from None


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise MemberStateError(f"{where}: not a boolean")
    return v


_TEK_FIELDS = {"spi", "src", "dst", "protocol", "src_port", "dst_port", "mode",
               "address_preservation", "direction", "suite", "keymat", "auth_key",
               "lifetime_s", "replay_window", "expires_at", "outbound", "activate_at",
               "retire_at"}
_KEK_FIELDS = {"spi", "src", "src_port", "dst", "dst_port", "cipher", "key", "iv",
               "signature", "signing_public_key", "lifetime_s", "expires_at"}
_BODY_FIELDS = {"format", "version", "group_id", "key_server", "saved_at", "seq", "gap", "kek",
                "lkh", "teks"}


def _read_tek(d: Any, where: str, group_id: int, off: float) -> SavedTek:
    d = _fields(d, where, _TEK_FIELDS)
    try:
        sel = TrafficSelector(_net(d["src"], f"{where}.src"), _net(d["dst"], f"{where}.dst"),
                              _int(d["protocol"], f"{where}.protocol", 0, 255),
                              _int(d["src_port"], f"{where}.src_port", 0, 65535),
                              _int(d["dst_port"], f"{where}.dst_port", 0, 65535))
        tek = GroupTek(group_id, _int(d["spi"], f"{where}.spi", 0, 0xFFFFFFFF), sel,
                       Mode(_str(d["mode"], f"{where}.mode")),
                       AddressPreservation(_int(d["address_preservation"],
                                                f"{where}.address_preservation", 1, 4)),
                       SaDirection(_int(d["direction"], f"{where}.direction", 1, 3)),
                       _str(d["suite"], f"{where}.suite"), _hex(d["keymat"], f"{where}.keymat"),
                       _hex(d["auth_key"], f"{where}.auth_key"),
                       _int(d["lifetime_s"], f"{where}.lifetime_s", 1, 2 ** 32),
                       _int(d["replay_window"], f"{where}.replay_window", 0, 2 ** 32))
    except MemberStateError:
        raise
    except ValueError as e:  # the values' own checks (suite, key lengths, SPI range)
        raise MemberStateError(f"{where}: {e}") from None
    return SavedTek(tek, _num(d["expires_at"], f"{where}.expires_at") - off,
                    _bool(d["outbound"], f"{where}.outbound"),
                    _minus(_opt_num(d["activate_at"], f"{where}.activate_at"), off),
                    _minus(_opt_num(d["retire_at"], f"{where}.retire_at"), off))


def _minus(t: float | None, off: float) -> float | None:
    return None if t is None else t - off


def _read_kek(d: Any, group_id: int, off: float) -> tuple[GroupKek, float]:
    d = _fields(d, "kek", _KEK_FIELDS)
    spi = _hex(d["spi"], "kek.spi")
    if len(spi) != 16:
        raise MemberStateError("kek.spi: not 16 bytes")
    cipher = _str(d["cipher"], "kek.cipher")
    kc = KEK_CIPHERS.get(cipher)
    if kc is None:
        raise MemberStateError(f"kek.cipher: unknown {cipher!r}")
    key, iv = _hex(d["key"], "kek.key"), _hex(d["iv"], "kek.iv")
    if len(key) != kc.key_bytes or len(iv) != kc.block_bytes:
        raise MemberStateError(f"kek.key/kek.iv: lengths do not fit {cipher}")
    sig = _str(d["signature"], "kek.signature")
    if sig not in SIGNATURE_SUITES:
        raise MemberStateError(f"kek.signature: unknown {sig!r}")
    pub = _hex(d["signing_public_key"], "kek.signing_public_key")
    if not pub:
        raise MemberStateError("kek.signing_public_key: empty")
    kek = GroupKek(group_id, spi, _net(d["src"], "kek.src"),
                   _int(d["src_port"], "kek.src_port", 0, 65535), _net(d["dst"], "kek.dst"),
                   _int(d["dst_port"], "kek.dst_port", 1, 65535), cipher, key, iv, sig, pub,
                   _int(d["lifetime_s"], "kek.lifetime_s", 1, 2 ** 32))
    return kek, _num(d["expires_at"], "kek.expires_at") - off


def _read_lkh(v: Any) -> LkhKeys | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v:
        raise MemberStateError("lkh: not a non-empty list")
    keys = []
    for i, e in enumerate(v):
        if not isinstance(e, list) or len(e) != 3:
            raise MemberStateError(f"lkh[{i}]: not [level, handle, key]")
        level = _int(e[0], f"lkh[{i}].level", 0, 255)
        if level != i:
            raise MemberStateError(f"lkh[{i}].level: {level}, expected {i} (leaf first)")
        key = _hex(e[2], f"lkh[{i}].key")
        if len(key) not in (16, 24, 32):
            raise MemberStateError(f"lkh[{i}].key: {len(key)} bytes")
        keys.append((level, _int(e[1], f"lkh[{i}].handle", 0, 2 ** 32), key))
    return LkhKeys(tuple(keys))


def decode(data: bytes, wall_offset: float = 0.0) -> MemberSnapshot:
    """The snapshot ``data`` holds (times back on the engine clock), or MemberStateError."""
    if len(data) > MAX_BYTES:
        raise MemberStateError(f"{len(data)} bytes, more than {MAX_BYTES}")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MemberStateError(f"not JSON: {e}") from None
    except RecursionError:
        raise MemberStateError("not JSON: nested too deeply") from None
    doc = _fields(doc, "file", {"state", "sha256"})
    body = _fields(doc["state"], "state", _BODY_FIELDS)
    if (type(doc["sha256"]) is not str or not doc["sha256"].isascii()
            or not hmac.compare_digest(doc["sha256"], _digest(body))):
        raise MemberStateError("sha256: does not match the state (torn or altered file)")
    if body["format"] != FORMAT:
        raise MemberStateError(f"format: not {FORMAT!r}")
    if body["version"] != VERSION:
        raise MemberStateError(f"version: {body['version']!r}, this msecd reads {VERSION}")
    gid = _int(body["group_id"], "group_id", 1, 2 ** 32)
    gap = body["gap"]
    if not isinstance(gap, list) or len(gap) != 2:
        raise MemberStateError("gap: not [activation, deactivation]")
    kek, kek_expires = _read_kek(body["kek"], gid, wall_offset)
    teks = body["teks"]
    if not isinstance(teks, list):
        raise MemberStateError("teks: not a list")
    saved = tuple(_read_tek(t, f"teks[{i}]", gid, wall_offset) for i, t in enumerate(teks))
    if len({t.tek.spi for t in saved}) != len(saved):
        raise MemberStateError("teks: an SPI twice")
    return MemberSnapshot(gid, _str(body["key_server"], "key_server"), kek, kek_expires,
                          _int(body["seq"], "seq", 0, 2 ** 32), _read_lkh(body["lkh"]),
                          (_opt_num(gap[0], "gap[0]"), _opt_num(gap[1], "gap[1]")), saved,
                          _num(body["saved_at"], "saved_at") - wall_offset)
