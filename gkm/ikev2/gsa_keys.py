"""G-IKEv2 group keys (RFC 9838 §3.3-3.5, §4.4.3, Appendix A): wrapped keys, the Rekey SA's
key material, and the member's Key Path resolution.

Wrapped Key (§4.4.3)::

    Key ID (4) | KWK ID (4) | Encrypted Key

Key ID 0 is SA key material (SA_KEY), any other an intermediate key (WRAP_KEY); KWK ID 0 is the
default Key Wrap Key GSK_w of the SA the message arrives on.  Key wrap algorithms: KW_5649_128/
192/256 (RFC 5649, ``cryptography``'s ``aes_key_wrap_with_padding``).  KW_ARX is refused: no
ARX-KW implementation is available to this package and a home-made one would be worse than none.

Rekey SA key material (§3.5): ``GSK_e | GSK_a | GSK_w = KEYMAT``; GSK_e is the cipher key (plus
the 4 salt bytes for AES-GCM, as the SK payload takes it, RFC 5282), GSK_a the integrity key
(empty for AEAD), GSK_w the KWK (16/24/32 bytes for KW_5649_128/192/256).

Key Path resolution (§3.4): :class:`WorkingKeyPath` holds the member's intermediate keys, top
(nearest the SA key) first, leaf last.  :meth:`WorkingKeyPath.resolve` unwraps one SA_KEY
attribute out of the ones offered, climbing through the message's WRAP_KEYs until it meets a
key of the working path or GSK_w, and returns the key material and the new working path
(the RFC's replacement rule: the new path replaces the working path's beginning up to, not
including, the key that decrypted the last new key).  Decisions the RFC leaves open:

* Several WRAP_KEYs may carry the same Key ID under different KWKs (LKH: a renewed node is
  wrapped once per child); the search tries each, depth first, and takes the first that leads
  to a key the member holds.  Every key is unwrapped at most once per message (memo), so the
  cost is linear in the number of attributes.
* A key wrap integrity failure under a key the member holds is not "not for me": the message
  passed its ICV (and signature), so the attribute is corrupt and the whole message is refused
  (:class:`KeyPathError`), never silently skipped.
* A working path key is preferred to a WRAP_KEY with the same ID (msec's GCKS never reuses
  IDs: they are LKH handles, unique over the tree's life).
* No usable SA_KEY at all: :class:`Excluded` (the RFC's "the GM is excluded from the group").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding, aes_key_wrap_with_padding

from .constants import KeyWrap
from .keys import AEAD, GCM_SALT, INTEG

_II = struct.Struct("!II")
MAX_KEY_ID = 0xFFFFFFFF
#: Key bytes per key wrap algorithm (RFC 9838 §4.3.1.1.2).
KWA_KEY_BYTES = {KeyWrap.KW_5649_128: 16, KeyWrap.KW_5649_192: 24, KeyWrap.KW_5649_256: 32}
#: Longest key material a KWA must wrap (§4.3.1.1.2: "up to 256 bytes").
MAX_WRAPPED_PLAIN = 256


class KeyWrapError(ValueError):
    """A wrapped key is malformed or fails its integrity check, or the algorithm is unsupported."""


class KeyPathError(KeyWrapError):
    """The message's key attributes are inconsistent (an unwrap under a held key failed, ...)."""


class Excluded(KeyWrapError):
    """No SA_KEY attribute can be reached from the keys this member holds."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    key_id: int
    kwk_id: int
    encrypted: bytes = field(repr=False)

    def encode(self) -> bytes:
        if not (0 <= self.key_id <= MAX_KEY_ID and 0 <= self.kwk_id <= MAX_KEY_ID):
            raise KeyWrapError(f"key IDs {self.key_id}/{self.kwk_id} out of range")
        return _II.pack(self.key_id, self.kwk_id) + self.encrypted

    @classmethod
    def decode(cls, data: bytes) -> "WrappedKey":
        if len(data) < 8 + 16:  # IDs + the shortest RFC 5649 output
            raise KeyWrapError(f"wrapped key of {len(data)} bytes is too short")
        key_id, kwk_id = _II.unpack_from(data, 0)
        return cls(key_id, kwk_id, bytes(data[8:]))


def kwa_key_bytes(kwa: int) -> int:
    try:
        return KWA_KEY_BYTES[kwa]
    except KeyError:
        raise KeyWrapError(f"unsupported key wrap algorithm {kwa}") from None


def wrap(kwa: int, kwk: bytes, plain: bytes) -> bytes:
    if len(kwk) != kwa_key_bytes(kwa):
        raise KeyWrapError(f"KWK of {len(kwk)} bytes for algorithm {kwa}")
    if not 1 <= len(plain) <= MAX_WRAPPED_PLAIN:
        raise KeyWrapError(f"cannot wrap {len(plain)} bytes")
    return aes_key_wrap_with_padding(kwk, plain)


def unwrap(kwa: int, kwk: bytes, encrypted: bytes) -> bytes:
    """Raises :class:`KeyWrapError` (no key bytes in the message) on any failure."""
    if len(kwk) != kwa_key_bytes(kwa):
        raise KeyWrapError(f"KWK of {len(kwk)} bytes for algorithm {kwa}")
    if len(encrypted) % 8 or not 16 <= len(encrypted) <= MAX_WRAPPED_PLAIN + 16:
        raise KeyWrapError(f"wrapped key of {len(encrypted)} bytes")
    try:
        return aes_key_unwrap_with_padding(kwk, encrypted)
    except InvalidUnwrap:
        raise KeyWrapError("key wrap integrity check failed") from None


def encr_key_bytes(encr: int, key_bits: int) -> int:
    return key_bits // 8 + (GCM_SALT if encr in AEAD else 0)


def integ_key_bytes(encr: int, integ: int | None) -> int:
    if encr in AEAD:
        return 0
    return INTEG[integ][1]


@dataclass(frozen=True, slots=True)
class RekeySaKeys:
    """GSK_e | GSK_a | GSK_w of one Rekey SA (RFC 9838 §3.5)."""

    gsk_e: bytes = field(repr=False)
    gsk_a: bytes = field(repr=False)
    gsk_w: bytes = field(repr=False)

    @classmethod
    def split(cls, keymat: bytes, encr: int, key_bits: int, integ: int | None, kwa: int) -> "RekeySaKeys":
        ne, na, nw = encr_key_bytes(encr, key_bits), integ_key_bytes(encr, integ), kwa_key_bytes(kwa)
        if len(keymat) != ne + na + nw:
            raise KeyWrapError(f"Rekey SA key material of {len(keymat)} bytes, need {ne + na + nw}")
        return cls(keymat[:ne], keymat[ne:ne + na], keymat[ne + na:])

    @property
    def keymat(self) -> bytes:
        return self.gsk_e + self.gsk_a + self.gsk_w

    def __repr__(self) -> str:
        return "RekeySaKeys(<hidden>)"


@dataclass(frozen=True, slots=True)
class WorkingKeyPath:
    """The member's intermediate keys ``(key ID, key)``, top first (RFC 9838 §3.4)."""

    keys: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return f"WorkingKeyPath({[i for i, _k in self.keys]})"

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(i for i, _k in self.keys)

    def resolve(self, kwa: int, gsk_w: bytes, sa_keys: tuple[WrappedKey, ...],
                wrap_keys: tuple[WrappedKey, ...]) -> tuple[bytes, "WorkingKeyPath"]:
        """``(SA key material, new working path)``.  Raises :class:`Excluded` when no SA_KEY is
        reachable, :class:`KeyPathError` when an attribute is inconsistent."""
        held = {i: (n, k) for n, (i, k) in enumerate(self.keys)}
        offered: dict[int, list[WrappedKey]] = {}
        for w in wrap_keys:
            if w.key_id == 0:
                raise KeyPathError("WRAP_KEY with Key ID 0 (RFC 9838 §4.4.2.1)")
            offered.setdefault(w.key_id, []).append(w)
        memo: dict[int, tuple[bytes, tuple[tuple[int, bytes], ...], int] | None] = {}
        active: set[int] = set()

        def key_of(kwk_id: int):
            """(key, new keys above the anchor top first, anchor index: -1 = GSK_w) or None."""
            if kwk_id == 0:
                return gsk_w, (), -1
            if kwk_id in held:
                n, k = held[kwk_id]
                return k, (), n
            if kwk_id in memo:
                return memo[kwk_id]
            if kwk_id in active:  # a cycle of WRAP_KEYs leads nowhere
                return None
            active.add(kwk_id)
            found = None
            for w in offered.get(kwk_id, ()):
                below = key_of(w.kwk_id)
                if below is None:
                    continue
                try:
                    k = unwrap(kwa, below[0], w.encrypted)
                except KeyWrapError:
                    raise KeyPathError(f"WRAP_KEY {w.key_id} does not unwrap under key {w.kwk_id}") from None
                if len(k) != kwa_key_bytes(kwa):
                    raise KeyPathError(f"WRAP_KEY {w.key_id} holds {len(k)} bytes, the algorithm needs {kwa_key_bytes(kwa)}")
                found = (k, ((w.key_id, k),) + below[1], below[2])
                break
            active.discard(kwk_id)
            memo[kwk_id] = found
            return found

        for s in sa_keys:
            if s.key_id != 0:
                raise KeyPathError(f"SA_KEY with Key ID {s.key_id}, must be 0 (RFC 9838 §4.4.1.1)")
            got = key_of(s.kwk_id)
            if got is None:
                continue
            kwk, new, anchor = got
            try:
                material = unwrap(kwa, kwk, s.encrypted)
            except KeyWrapError:
                raise KeyPathError(f"SA_KEY under key {s.kwk_id} does not unwrap") from None
            if not new:
                return material, self
            if anchor == -1:
                return material, WorkingKeyPath(new)
            return material, WorkingKeyPath(new + self.keys[anchor:])
        raise Excluded("no SA_KEY attribute is reachable from this member's keys")


__all__ = [
    "Excluded", "KeyPathError", "KeyWrapError", "RekeySaKeys", "WorkingKeyPath", "WrappedKey",
    "kwa_key_bytes", "unwrap", "wrap", "KWA_KEY_BYTES",
]
