"""Whole messages: payload chains in both directions and the framing of encrypted bodies.

Reading (RFC 2408 §3.1-3.2, §5.1)::

    header, next_payload, length = decode_header(datagram)   # cookies, exchange, E flag
    if header.encrypted:                                      # the engine decrypts
        datagram = datagram[:28] + decrypt(datagram[28:])
    message = decode_message(datagram, block_size=16)         # typed payloads

Writing::

    plain = encode_message(header, payloads, block_size=16)  # header + chain + zero padding
    datagram = plain[:28] + encrypt(plain[28:])               # CBC keeps the length

Padding (decision, RFC 2409 Appendix B and §5.3; RFC 2408 §3.1): the encoder pads the chain
with 0x00 bytes to the next multiple of ``block_size`` (nothing if already aligned), and the
header Length counts the padding.  The decoder finds the end of the chain by walking Next
Payload / Payload Length; what follows in an encrypted message is padding, kept verbatim in
``Message.padding`` (so re-encoding is exact) and not checked for content (some
implementations follow the §5.3 "last byte = pad length" rule), but it must be shorter than
256 bytes and, with ``block_size``, the body length must be a multiple of it.  A cleartext
message (E flag clear) must end exactly with its last payload.  The header Length must equal
the number of bytes given (RFC 2408 §5.1; an IKE datagram carries one message).

Unknown payload types are skipped and reported: see :class:`~gkm.wire.ikev1.UnknownPayload`.
Proposal/Transform (2, 3) and SAK/SAT (15, 16) are known types that may only appear inside an
SA; at the top level they are refused.  GAP (22) is allowed at both levels (RFC 6407 §3.2
message 3 carries it at the top level, §5.2 inside the SA).

Bounds: the reader never recurses (the deepest nesting is SA > Proposal > Transform > attribute
or SA > SAT > attribute or KD > key packet > attribute), every element takes at least 4 bytes
of input and no count field is used to allocate, so time and memory are linear in the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

from .constants import HEADER_LENGTH, Doi, ExchangeType, Flags, PayloadType
from ._fast import maker
from .errors import WireError
from .gdoi import Gap, GdoiSa, KeyDownload, Sequence
from .header import Header, decode_header, encode_header
from .ikev1 import (
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    KeyExchange,
    Nonce,
    Notification,
    SecurityAssociation,
    Signature,
    UnknownPayload,
    VendorId,
    _gen_header,
    _gen_pack,
    _gen_unpack,
    _make_unknown,
)

Payload = Union[
    SecurityAssociation, GdoiSa, KeyExchange, Identification, Certificate, CertificateRequest, Hash,
    Signature, Nonce, Notification, Delete, VendorId, KeyDownload, Sequence, Gap, UnknownPayload,
]

MAX_PADDING = 255
#: Largest message accepted: an ISAKMP message travels in one UDP datagram (RFC 2408 §2.5.1).
MAX_MESSAGE_LENGTH = 65535
#: Most payloads in one chain.  Real messages have fewer than 20; the bound keeps a 64 KiB
#: datagram of empty payloads from becoming 16,000 objects.
MAX_PAYLOADS = 128
_GDOI_EXCHANGES = frozenset((ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH))
_NAMES = {t: t.name for t in PayloadType}
_INNER_ONLY = frozenset((PayloadType.PROPOSAL, PayloadType.TRANSFORM, PayloadType.SA_KEK, PayloadType.SA_TEK))
_E = int(Flags.ENCRYPTION)
_GDOI_DOI = Doi.GDOI.to_bytes(4, "big")
# Enum members used on the hot paths, bound once (EnumType attribute access is slow).
_SA = PayloadType.SA
_GDOI = Doi.GDOI


def _opaque(cls):
    make = cls._make

    def decode(buf: bytes, pos: int, end: int):
        return make(buf[pos:end])

    return decode


_DECODERS = {
    PayloadType.KE: _opaque(KeyExchange),
    PayloadType.ID: Identification.decode,
    PayloadType.CERT: Certificate.decode,
    PayloadType.CR: CertificateRequest.decode,
    PayloadType.HASH: _opaque(Hash),
    PayloadType.SIG: _opaque(Signature),
    PayloadType.NONCE: _opaque(Nonce),
    PayloadType.NOTIFICATION: Notification.decode,
    PayloadType.DELETE: Delete.decode,
    PayloadType.VENDOR_ID: _opaque(VendorId),
    PayloadType.KD: KeyDownload.decode,
    PayloadType.SEQ: Sequence.decode,
    PayloadType.GAP: Gap.decode,  # top level in GROUPKEY-PULL message 3 (RFC 6407 §3.2)
}


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded ISAKMP message: header, payloads in wire order, encryption padding."""

    header: Header
    payloads: tuple[Payload, ...]
    padding: bytes = b""

    @property
    def unknown(self) -> tuple[UnknownPayload, ...]:
        """Payloads of unknown types that were skipped (RFC 2408 §5.1: INVALID-PAYLOAD-TYPE)."""
        return tuple(p for p in self.payloads if type(p) is UnknownPayload)

    def get(self, cls: type, default=None):
        """First payload of class ``cls``."""
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return default

    def all(self, cls: type) -> tuple:
        return tuple(p for p in self.payloads if isinstance(p, cls))

    def types(self) -> tuple[int, ...]:
        """The payload type numbers in order (for per-exchange allowed-payload tables)."""
        return tuple(p.TYPE for p in self.payloads)

    def to_bytes(self) -> bytes:
        """Exact re-encoding (including the padding that was received)."""
        return encode_message(self.header, self.payloads, padding=self.padding)


_make_message = maker(Message)
_gdoi_sa_decode = GdoiSa.decode
_sa_decode = SecurityAssociation.decode


def decode_payloads(buf: bytes, next_payload: int, pos: int, end: int, exchange: int) -> tuple[tuple[Payload, ...], int]:
    """Decode the chain starting at ``buf[pos]`` with type ``next_payload``, inside ``[pos, end)``.

    Returns the payloads and the offset where the chain ended (Next Payload 0).  ``exchange``
    chooses the SA layout.  Offsets are absolute in ``buf``.
    """
    payloads = []
    np = next_payload
    gdoi_layout = exchange in _GDOI_EXCHANGES
    while np:
        if end - pos < 4 or len(payloads) == MAX_PAYLOADS:
            if end - pos < 4:
                raise WireError(_NAMES.get(np, str(np)), pos, f"truncated generic payload header ({end - pos} bytes left)")
            raise WireError(_NAMES.get(np, str(np)), pos, f"more than {MAX_PAYLOADS} payloads in one message")
        nnp, reserved, length = _gen_unpack(buf, pos)
        pend = pos + length
        if reserved or length < 4 or pend > end:
            if reserved:
                # RFC 2408 §2.5.2/§3.2: RESERVED, not a critical bit as in IKEv2 (RFC 7296 §3.2).
                raise WireError(_NAMES.get(np, str(np)), pos + 1, "RESERVED octet not zero (RFC 2408 §2.5.2)")
            raise WireError(_NAMES.get(np, str(np)), pos + 2, f"payload length {length} outside 4..{end - pos}")
        dec = _DECODERS.get(np)
        if dec is not None:
            payloads.append(dec(buf, pos + 4, pend))
        elif np == _SA:
            # Decision (RFC 6407 §2.1 / §5.2): the GDOI SA layout (SA Attribute Next Payload) is
            # used when DOI = 2 in GROUPKEY-PULL / GROUPKEY-PUSH; every other SA, including the
            # DOI-2 SA of phase 1 (Main/Aggressive Mode) has the RFC 2408 §3.4 proposal layout.
            if gdoi_layout and length >= 8 and buf[pos + 4 : pos + 8] == _GDOI_DOI:
                payloads.append(_gdoi_sa_decode(buf, pos + 4, pend))
            else:
                payloads.append(_sa_decode(buf, pos + 4, pend))
        elif np in _INNER_ONLY:
            raise WireError(_NAMES[np], pos, "payload allowed only inside an SA payload")
        else:
            payloads.append(_make_unknown(np, buf[pos + 4 : pend]))
        np = nnp
        pos = pend
    return tuple(payloads), pos


def encode_payloads(payloads: Iterable[Payload]) -> tuple[int, bytes]:
    """Encode a chain: ``(type of the first payload, bytes)``; Next Payload fields filled in."""
    parts = []
    np = _encode_chain(tuple(payloads), parts)
    parts.reverse()
    return np, b"".join(parts)


def _encode_chain(payloads: tuple, parts: list) -> int:
    """Append the chain to ``parts`` in reverse order (last payload first); return the first type."""
    np = 0  # PayloadType.NONE
    for p in reversed(payloads):
        body = p.encode()
        n = len(body) + 4
        if n > 0xFFFF:
            raise WireError(type(p).__name__, -1, f"payload too long ({n} bytes)")
        parts.append(body)
        parts.append(_gen_pack(np, 0, n))
        np = p.TYPE
    return np


def encode_payload(payload: Payload, next_payload: int = PayloadType.NONE) -> bytes:
    """One payload with its generic header (e.g. for HASH inputs)."""
    body = payload.encode()
    return _gen_header(next_payload, len(body), type(payload).__name__) + body


def decode_message(data: bytes, *, block_size: int | None = None) -> Message:
    """Decode a whole message.  If the E flag is set, ``data`` must be the header followed by the
    decrypted body (see the module docstring); ``block_size`` then checks the body length."""
    header, np, length = decode_header(data)
    n = len(data)
    if n > MAX_MESSAGE_LENGTH:
        raise WireError("header", 24, f"message of {n} bytes, more than {MAX_MESSAGE_LENGTH}")
    if length != n:
        raise WireError("header", 24, f"Length field {length} but the message has {n} bytes")
    data = bytes(data)
    payloads, pos = decode_payloads(data, np, HEADER_LENGTH, n, header.exchange)
    encrypted = int(header.flags) & _E  # int(): Flag.__and__ is slow Python code
    padding = b""
    if pos != n:
        if not encrypted:
            raise WireError("message", pos, f"{n - pos} bytes after the last payload of a cleartext message")
        if n - pos > MAX_PADDING:
            raise WireError("message", pos, f"{n - pos} bytes of padding (more than {MAX_PADDING})")
        padding = data[pos:]
    if block_size and encrypted and (n - HEADER_LENGTH) % block_size:
        raise WireError("message", HEADER_LENGTH, f"encrypted body of {n - HEADER_LENGTH} bytes is not a multiple of {block_size}")
    return _make_message(header, payloads, padding)


def encode_message(
    header: Header, payloads: Iterable[Payload], *, block_size: int | None = None, padding: bytes | None = None
) -> bytes:
    """Header + payload chain (+ padding).

    ``block_size``: pad the chain with zeros to a multiple of it (E flag must be set); the caller
    encrypts everything after the 28-byte header.  ``padding``: use these bytes verbatim instead.
    Without either, the Length field counts header and payloads only, which is also the
    GROUPKEY-PUSH header as signed by gdoid (RFC 6407 §4; docs/decisions/wire.md §3.2).
    """
    payloads = tuple(payloads)
    gdoi_exchange = header.exchange in _GDOI_EXCHANGES
    for p in payloads:
        # The SA layout follows from DOI and exchange (see decode_payloads); refuse what would not
        # decode back to the same value.
        c = p.__class__
        if c is GdoiSa and not gdoi_exchange:
            raise WireError("SA", -1, "a GDOI SA payload belongs to GROUPKEY-PULL/PUSH only (RFC 6407 §5.2)")
        if c is SecurityAssociation and gdoi_exchange and p.doi == _GDOI:
            raise WireError("SA", -1, "a DOI-2 SA in GROUPKEY-PULL/PUSH must be a GdoiSa")
    parts = []
    np = _encode_chain(payloads, parts)
    n = sum(map(len, parts))
    if block_size is not None or padding:
        if not int(header.flags) & _E:
            raise WireError("message", -1, "padding requested for a message without the E flag")
        if padding is None:
            if block_size <= 0:
                raise WireError("message", -1, f"block size {block_size}")
            padding = bytes(-n % block_size)
        elif len(padding) > MAX_PADDING:
            raise WireError("message", -1, f"{len(padding)} bytes of padding")
        n += len(padding)
        parts.insert(0, padding)
    length = HEADER_LENGTH + n
    if length > MAX_MESSAGE_LENGTH:
        raise WireError("message", -1, f"message of {length} bytes, more than {MAX_MESSAGE_LENGTH}")
    parts.append(encode_header(header, np, length))
    parts.reverse()
    return b"".join(parts)
