"""ISAKMP data attributes, RFC 2408 §3.3.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    !A!       Attribute Type        !    AF=0  Attribute Length     !
    !F!                             !    AF=1  Attribute Value      !
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    .                   AF=0  Attribute Value                       .
    .                   AF=1  Not Transmitted                       .
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The form is carried by the Python type of the value: an ``int`` (0..65535) is a TV (basic,
AF=1) attribute, ``bytes`` a TLV (variable, AF=0) one.  RFC 2409 Appendix A and RFC 2407 §4.5
let a variable attribute whose value fits in 16 bits be sent in the basic form, so both forms
must be accepted and the form is kept: encode(decode(x)) == x.  Readers that do not care use
:func:`attr_int`.

``Attribute`` is a ``NamedTuple`` rather than a frozen dataclass: a message holds dozens of
them and tuple construction is about three times cheaper (see tools/benchmarks/wire.py).
"""

from __future__ import annotations

import struct
from typing import Iterable, Mapping, NamedTuple

from .errors import WireError

_HH = struct.Struct("!HH")
_hh_unpack = _HH.unpack_from
_hh_pack = _HH.pack
_tnew = tuple.__new__


class Attribute(NamedTuple):
    """One data attribute. ``value`` is ``int`` for the TV form and ``bytes`` for TLV."""

    type: int
    value: int | bytes

    @property
    def is_basic(self) -> bool:
        return isinstance(self.value, int)


def var_int(number: int, size: int = 4) -> bytes:
    """A variable-length attribute value holding ``number`` big-endian (RFC 2409 App. A)."""
    return number.to_bytes(size, "big")


def attr_int(attributes: Iterable[Attribute], attr_type: int, default: int | None = None) -> int | None:
    """Integer value of the first attribute of ``attr_type``, whatever its form."""
    for t, v in attributes:
        if t == attr_type:
            return v if isinstance(v, int) else int.from_bytes(v, "big")
    return default


def attr_bytes(attributes: Iterable[Attribute], attr_type: int) -> bytes | None:
    """Value of the first TLV attribute of ``attr_type`` (``None`` if absent)."""
    for t, v in attributes:
        if t == attr_type:
            return v if isinstance(v, bytes) else v.to_bytes(2, "big")
    return None


def attribute_types(registry: Mapping[int, int]) -> dict[int, int]:
    """The ``types`` table of :func:`decode_attributes` for a registry (number -> enum member):
    each number with the AF bit clear (TLV) and set (TV), so the decoder looks the raw 16-bit
    word up without masking it."""
    table = dict(registry)
    table.update({t | 0x8000: m for t, m in registry.items()})
    return table


def decode_attributes(
    buf: bytes, pos: int, end: int, types: Mapping[int, int], where: str
) -> tuple[Attribute, ...]:
    """Decode the attributes in ``buf[pos:end]`` (all of it).  ``types`` (from
    :func:`attribute_types`) maps the raw type words to enum members; others stay ``int``."""
    # Globals and direct method calls: CPython 3.11 specializes ``list.append`` / ``dict.get``
    # calls and global loads, which beats binding them to locals first.
    out = []
    last = end - 4
    while pos <= last:
        t, v = _hh_unpack(buf, pos)
        if t >= 0x8000:  # AF=1, TV (a compare is cheaper than a mask in CPython 3.11)
            pos += 4
            out.append(_tnew(Attribute, (types.get(t, t - 0x8000), v)))
        else:
            s = pos + 4
            pos = s + v
            if pos > end:
                raise WireError(where, s - 2, f"attribute {t} length {v} exceeds its container by {pos - end}")
            out.append(_tnew(Attribute, (types.get(t, t), buf[s:pos])))
    if pos != end:
        raise WireError(where, pos, f"truncated attribute header ({end - pos} bytes left)")
    return tuple(out)


def encode_attributes(attributes: Iterable[Attribute], where: str) -> bytes:
    parts = []
    try:
        for t, v in attributes:
            if t >> 15:  # also catches negative types
                raise WireError(where, -1, f"attribute type {t} out of range 0..32767")
            c = v.__class__
            if c is int:
                parts.append(_hh_pack(0x8000 | t, v))  # struct.error outside 0..65535
            elif c is bytes:
                parts.append(_hh_pack(t, len(v)))  # struct.error past 65535 bytes
                parts.append(v)
            elif isinstance(v, int):
                parts.append(_hh_pack(0x8000 | t, v))
            else:
                v = bytes(v)
                parts.append(_hh_pack(t, len(v)))
                parts.append(v)
    except struct.error:
        raise WireError(where, -1, f"attribute {t} value out of range (TV: 0..65535, TLV: up to 65535 bytes)") from None
    return b"".join(parts)
