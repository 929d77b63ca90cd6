"""A member's saved group state: what a restarted msecd needs to go on receiving rekeys
without registering again (sans-I/O: values and bytes; the shell writes the file).

:class:`MemberSnapshot` is what the member engine asks the shell to keep
(:class:`gkm.gdoi.member.SaveState`): the Rekey SA (KEK, its signing key, when it expires),
the SEQ the next GROUPKEY-PUSH must exceed, the LKH path, the TEKs held with their timeline
(expiry, outbound, activation and retirement times), the key server registered with and the
GAP delays it gave.  Times are the engine's clock; :func:`encode` and :func:`decode` take the
offset to wall-clock time (``wall = engine + offset``), so a file written by one process is
read right by the next one, whose monotonic clock started elsewhere.

A G-IKEv2 member's snapshot also holds its GSA_REKEY receiver (:class:`GikeRekeyState`,
``MemberSnapshot.gike``): the Rekey SA in force (SPI, algorithms, GSK_e | GSK_a | GSK_w,
selectors, lifetime, announced next SPIs), the Message ID the next GSA_REKEY must reach and
the digest of the last one applied (so a replayed one is refused after a restart as before
it), the GCKS's AUTH_KEY and signature algorithm, the Key Path (LKH keys, top first), the
Sender-IDs and the TEK settings of the member's configuration.  ``kek`` is then the member
engine's view of that Rekey SA (as :mod:`gkm.ikev2.member_rekey` builds it: no IV) and
``lkh`` is None (the Key Path is the LKH path).

The file is JSON (keys hex encoded) with a SHA-256 of its canonical body: a torn or altered
file is refused, not half read.  :func:`decode` is strict: every field present, of its type,
nothing more; it raises only :class:`MemberStateError`, naming the field.  The file holds keys:
the shell creates it 0600.

Versions: 1 is GDOI's (no ``protocol``, no ``gike``); 2 adds ``protocol`` ("gdoi" or
"g-ikev2") and ``gike`` (null for GDOI).  :func:`encode` writes a GDOI snapshot as version 1,
byte for byte as before version 2 existed (an older msecd still resumes from it after a
downgrade), and a G-IKEv2 one as version 2; :func:`decode` reads both.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.serialization import load_der_public_key

from gkm.ikev2.constants import Encr, TsType
from gkm.ikev2.gsa_keys import KWA_KEY_BYTES, KeyWrapError, RekeySaKeys, WorkingKeyPath
from gkm.ikev2.keys import AEAD as IKEV2_AEAD
from gkm.ikev2.keys import INTEG as IKEV2_INTEG
from gkm.ikev2.payloads import TrafficSelector as Ikev2Selector
from gkm.ikev2.rekey_auth import SIGNATURE_ALGORITHMS, RekeyAuthError, SignatureAlgorithm, check_key
from gkm.ikev2.rekey_sa import RekeySa
from policy.model import AddressPreservation, Mode, SaDirection, TrafficSelector
from policy.suites import KEK_CIPHERS, SIGNATURE_SUITES

from .keys import GroupKek, GroupTek, LkhKeys

__all__ = ["MemberSnapshot", "SavedTek", "GikeRekeyState", "MemberStateError", "encode", "decode",
           "FORMAT", "VERSION"]

FORMAT = "msec-member-state"
VERSION = 2  # the newest this msecd writes and reads (module docstring: versions)
GDOI_VERSION = 1  # what a GDOI snapshot is written as
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
class GikeRekeyState:
    """A G-IKEv2 member's GSA_REKEY receiver (:class:`gkm.ikev2.rekey.RekeyReceiver`), as
    :class:`gkm.ikev2.member_rekey.GikePushReceiver` gives it and is rebuilt from."""

    rekey_sa: RekeySa  # its repr hides the keys
    expected_message_id: int  # the next GSA_REKEY's Message ID is at least this
    last_digest: bytes | None  # SHA-256 of the GSA_REKEY last applied (its copies: duplicates)
    signature: SignatureAlgorithm
    auth_key: bytes = field(repr=False)  # the GCKS's public key (DER SubjectPublicKeyInfo)
    key_path: WorkingKeyPath = field(repr=False)
    sender_ids: tuple[int, ...]
    mode: Mode
    address_preservation: AddressPreservation
    direction: SaDirection

    def __repr__(self) -> str:
        return (f"GikeRekeyState(rekey_sa={self.rekey_sa.spi.hex()}, "
                f"expected_message_id={self.expected_message_id}, key_path={list(self.key_path.ids)})")


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
    gike: GikeRekeyState | None = field(default=None, repr=False)  # None: GDOI

    @property
    def protocol(self) -> str:
        """The registration protocol (policy.model.PROTOCOLS) the state was saved under."""
        return "gdoi" if self.gike is None else "g-ikev2"

    def __repr__(self) -> str:
        return (f"MemberSnapshot(group={self.group_id}, protocol={self.protocol}, "
                f"key_server={self.key_server}, seq={self.seq}, "
                f"teks={[f'{t.tek.spi:#010x}' for t in self.teks]})")


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


def _selector(ts: Ikev2Selector) -> dict[str, Any]:
    return {"type": int(ts.ts_type), "ip_protocol": ts.ip_protocol, "start_port": ts.start_port,
            "end_port": ts.end_port, "start_address": ts.start_address.hex(),
            "end_address": ts.end_address.hex()}


def _gike(g: GikeRekeyState) -> dict[str, Any]:
    sa = g.rekey_sa
    return {
        "rekey_sa": {
            "spi": sa.spi.hex(), "encr": int(sa.encr), "key_bits": sa.key_bits,
            "integ": None if sa.integ is None else int(sa.integ), "kwa": int(sa.kwa),
            "keymat": sa.keys.keymat.hex(), "source": _selector(sa.source),
            "destination": _selector(sa.destination), "lifetime_s": sa.lifetime_s,
            "initial_message_id": sa.initial_message_id,
            "next_spis": [n.hex() for n in sa.next_spis],
        },
        "expected_message_id": g.expected_message_id,
        "last_digest": None if g.last_digest is None else g.last_digest.hex(),
        "signature": g.signature.name, "auth_key": g.auth_key.hex(),
        "key_path": [[i, k.hex()] for i, k in g.key_path.keys],
        "sender_ids": list(g.sender_ids), "mode": g.mode.value,
        "address_preservation": int(g.address_preservation), "direction": int(g.direction),
    }


def _body(s: MemberSnapshot, off: float) -> dict[str, Any]:
    k = s.kek
    version = {} if s.gike is None else {"protocol": s.protocol, "gike": _gike(s.gike)}
    return {
        "format": FORMAT, "version": GDOI_VERSION if s.gike is None else VERSION, **version,
        "group_id": s.group_id,
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
_BODY_FIELDS_V2 = _BODY_FIELDS | {"protocol", "gike"}
_GIKE_FIELDS = {"rekey_sa", "expected_message_id", "last_digest", "signature", "auth_key",
                "key_path", "sender_ids", "mode", "address_preservation", "direction"}
_REKEY_SA_FIELDS = {"spi", "encr", "key_bits", "integ", "kwa", "keymat", "source", "destination",
                    "lifetime_s", "initial_message_id", "next_spis"}
_SELECTOR_FIELDS = {"type", "ip_protocol", "start_port", "end_port", "start_address",
                    "end_address"}
_PROTOCOLS = ("gdoi", "g-ikev2")


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


def _read_kek(d: Any, group_id: int, off: float, gike: bool = False) -> tuple[GroupKek, float]:
    """``gike``: the member engine's view of a G-IKEv2 Rekey SA (GSK_e as the key, no IV)."""
    d = _fields(d, "kek", _KEK_FIELDS)
    spi = _hex(d["spi"], "kek.spi")
    if len(spi) != 16:
        raise MemberStateError("kek.spi: not 16 bytes")
    cipher = _str(d["cipher"], "kek.cipher")
    kc = KEK_CIPHERS.get(cipher)
    if kc is None:
        raise MemberStateError(f"kek.cipher: unknown {cipher!r}")
    key, iv = _hex(d["key"], "kek.key"), _hex(d["iv"], "kek.iv")
    if len(key) != kc.key_bytes or len(iv) != (0 if gike else kc.block_bytes):
        raise MemberStateError(f"kek.key/kek.iv: lengths do not fit {cipher}"
                               + (" (G-IKEv2: no IV)" if gike else ""))
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


def _enum(kind, v: Any, where: str, lo: int, hi: int):
    try:
        return kind(_int(v, where, lo, hi))
    except ValueError as e:
        if isinstance(e, MemberStateError):
            raise
        raise MemberStateError(f"{where}: {v} is not a {kind.__name__}") from None


def _read_selector(d: Any, where: str) -> Ikev2Selector:
    d = _fields(d, where, _SELECTOR_FIELDS)
    kind = _enum(TsType, d["type"], f"{where}.type", 0, 255)
    size = 4 if kind == TsType.IPV4_ADDR_RANGE else 16
    start, end = (_hex(d[n], f"{where}.{n}") for n in ("start_address", "end_address"))
    if len(start) != size or len(end) != size:
        raise MemberStateError(f"{where}: addresses not of {size} bytes ({kind.name})")
    lo, hi = (_int(d[n], f"{where}.{n}", 0, 65535) for n in ("start_port", "end_port"))
    return Ikev2Selector(kind, _int(d["ip_protocol"], f"{where}.ip_protocol", 0, 255), lo, hi,
                         start, end)


def _read_rekey_sa(d: Any) -> RekeySa:
    w = "gike.rekey_sa"
    d = _fields(d, w, _REKEY_SA_FIELDS)
    spi = _hex(d["spi"], f"{w}.spi")
    if len(spi) != 16 or not any(spi):
        raise MemberStateError(f"{w}.spi: not 16 bytes, not all zero")
    encr = _int(d["encr"], f"{w}.encr", 0, 65535)
    if encr != Encr.AES_CBC and encr not in IKEV2_AEAD:
        raise MemberStateError(f"{w}.encr: unsupported Rekey SA cipher {encr}")
    key_bits = _int(d["key_bits"], f"{w}.key_bits", 0, 65535)
    if key_bits not in (128, 192, 256):
        raise MemberStateError(f"{w}.key_bits: {key_bits}, not 128, 192 or 256")
    integ = d["integ"]
    if encr in IKEV2_AEAD:
        if integ is not None:
            raise MemberStateError(f"{w}.integ: must be null with an AEAD cipher")
    elif _int(integ, f"{w}.integ", 0, 65535) not in IKEV2_INTEG:
        raise MemberStateError(f"{w}.integ: unsupported {integ}")
    kwa = _int(d["kwa"], f"{w}.kwa", 0, 65535)
    if kwa not in KWA_KEY_BYTES:
        raise MemberStateError(f"{w}.kwa: unsupported key wrap algorithm {kwa}")
    try:
        keys = RekeySaKeys.split(_hex(d["keymat"], f"{w}.keymat"), encr, key_bits, integ, kwa)
    except KeyWrapError as e:
        raise MemberStateError(f"{w}.keymat: {e}") from None
    nxt = d["next_spis"]
    if not isinstance(nxt, list):
        raise MemberStateError(f"{w}.next_spis: not a list")
    next_spis = tuple(_hex(n, f"{w}.next_spis[{i}]") for i, n in enumerate(nxt))
    if any(len(n) != 16 for n in next_spis):
        raise MemberStateError(f"{w}.next_spis: an SPI not of 16 bytes")
    try:
        return RekeySa(spi, Encr(encr), key_bits, integ, kwa, keys,
                       _read_selector(d["source"], f"{w}.source"),
                       _read_selector(d["destination"], f"{w}.destination"),
                       _int(d["lifetime_s"], f"{w}.lifetime_s", 1, 2 ** 32),
                       _int(d["initial_message_id"], f"{w}.initial_message_id", 0, 0xFFFFFFFF),
                       next_spis)
    except MemberStateError:
        raise
    except (KeyWrapError, ValueError) as e:  # the value's own checks
        raise MemberStateError(f"{w}: {e}") from None


def _read_key_path(v: Any) -> WorkingKeyPath:
    if not isinstance(v, list):
        raise MemberStateError("gike.key_path: not a list")
    keys = []
    for i, e in enumerate(v):
        if not isinstance(e, list) or len(e) != 2:
            raise MemberStateError(f"gike.key_path[{i}]: not [key ID, key]")
        kid = _int(e[0], f"gike.key_path[{i}].id", 1, 0xFFFFFFFF)
        key = _hex(e[1], f"gike.key_path[{i}].key")
        if len(key) not in (16, 24, 32):
            raise MemberStateError(f"gike.key_path[{i}].key: {len(key)} bytes")
        keys.append((kid, key))
    if len({k for k, _ in keys}) != len(keys):
        raise MemberStateError("gike.key_path: a key ID twice")
    return WorkingKeyPath(tuple(keys))


def _read_gike(d: Any) -> GikeRekeyState:
    d = _fields(d, "gike", _GIKE_FIELDS)
    sa = _read_rekey_sa(d["rekey_sa"])
    digest = d["last_digest"]
    if digest is not None:
        digest = _hex(digest, "gike.last_digest")
        if len(digest) != hashlib.sha256().digest_size:
            raise MemberStateError("gike.last_digest: not a SHA-256")
    name = _str(d["signature"], "gike.signature")
    alg = SIGNATURE_ALGORITHMS.get(name)
    if alg is None:
        raise MemberStateError(f"gike.signature: unknown {name!r}")
    auth_key = _hex(d["auth_key"], "gike.auth_key")
    try:
        check_key(alg, load_der_public_key(auth_key))
    except RekeyAuthError as e:
        raise MemberStateError(f"gike.auth_key: {e}") from None
    except Exception:  # noqa: BLE001 - cryptography's parser: malformed DER, unknown key type
        raise MemberStateError("gike.auth_key: not a DER public key") from None
    ids = d["sender_ids"]
    if not isinstance(ids, list):
        raise MemberStateError("gike.sender_ids: not a list")
    sender_ids = tuple(_int(x, f"gike.sender_ids[{i}]", 0, 0xFFFFFFFF) for i, x in enumerate(ids))
    if len(set(sender_ids)) != len(sender_ids):
        raise MemberStateError("gike.sender_ids: a Sender-ID twice")
    try:
        mode = Mode(_str(d["mode"], "gike.mode"))
    except ValueError as e:
        if isinstance(e, MemberStateError):
            raise
        raise MemberStateError(f"gike.mode: {d['mode']!r} is not a mode") from None
    return GikeRekeyState(
        sa, _int(d["expected_message_id"], "gike.expected_message_id", 0, 2 ** 32), digest, alg,
        auth_key, _read_key_path(d["key_path"]), sender_ids, mode,
        _enum(AddressPreservation, d["address_preservation"], "gike.address_preservation", 1, 4),
        _enum(SaDirection, d["direction"], "gike.direction", 1, 3))


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
    body = doc["state"]
    if not isinstance(body, dict):
        raise MemberStateError("state: not an object")
    version = body.get("version")
    if type(version) is not int or version not in (GDOI_VERSION, VERSION):
        raise MemberStateError(f"version: {version!r}, this msecd reads {GDOI_VERSION} and {VERSION}")
    body = _fields(body, "state", _BODY_FIELDS if version == GDOI_VERSION else _BODY_FIELDS_V2)
    if (type(doc["sha256"]) is not str or not doc["sha256"].isascii()
            or not hmac.compare_digest(doc["sha256"], _digest(body))):
        raise MemberStateError("sha256: does not match the state (torn or altered file)")
    if body["format"] != FORMAT:
        raise MemberStateError(f"format: not {FORMAT!r}")
    protocol = body.get("protocol", "gdoi")
    if protocol not in _PROTOCOLS:
        raise MemberStateError(f"protocol: {protocol!r}, not one of {', '.join(_PROTOCOLS)}")
    gike = None
    if protocol == "g-ikev2":
        gike = _read_gike(body["gike"])
    elif body.get("gike") is not None:
        raise MemberStateError("gike: must be null for a GDOI member")
    gid = _int(body["group_id"], "group_id", 1, 2 ** 32)
    gap = body["gap"]
    if not isinstance(gap, list) or len(gap) != 2:
        raise MemberStateError("gap: not [activation, deactivation]")
    kek, kek_expires = _read_kek(body["kek"], gid, wall_offset, gike is not None)
    if gike is not None:
        if kek.spi != gike.rekey_sa.spi:
            raise MemberStateError("kek.spi: not the Rekey SA's (gike.rekey_sa.spi)")
        if body["lkh"] is not None:
            raise MemberStateError("lkh: must be null for a G-IKEv2 member (its Key Path is gike.key_path)")
    teks = body["teks"]
    if not isinstance(teks, list):
        raise MemberStateError("teks: not a list")
    saved = tuple(_read_tek(t, f"teks[{i}]", gid, wall_offset) for i, t in enumerate(teks))
    if len({t.tek.spi for t in saved}) != len(saved):
        raise MemberStateError("teks: an SPI twice")
    return MemberSnapshot(gid, _str(body["key_server"], "key_server"), kek, kek_expires,
                          _int(body["seq"], "seq", 0, 2 ** 32), _read_lkh(body["lkh"]),
                          (_opt_num(gap[0], "gap[0]"), _opt_num(gap[1], "gap[1]")), saved,
                          _num(body["saved_at"], "saved_at") - wall_offset, gike)
