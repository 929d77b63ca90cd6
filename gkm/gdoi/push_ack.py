"""GROUPKEY-PUSH-ACK (RFC 8263), both roles, sans-I/O: build one (member) and decode and
verify one (key server).

::

    GM -> GCKS   HDR, HASH, SEQ, ID        (cleartext; exchange 35, flags 0, Message ID 0)

The key server asks for ACKs with the SA KEK attribute KEK_ACK_REQUESTED (RFC 8263 section 2;
msec sends REKEY_ACK_KEK_SHA256 = 1 in unicast delivery mode, :mod:`gkm.gdoi.policy_wire`).

Keys (RFC 8263 section 3.2)::

    ack_key = prf(base_key, "GROUPKEY-PUSH ACK" NUL | SPI | L)
    HASH    = prf(ack_key, SEQ | ID)

* ``prf``: HMAC-SHA-256 (types 1, 2) or HMAC-SHA-512 (types 3, 4).  HMAC zero-fills a key
  shorter than its block on its own (RFC 2104), which is the zero fill the RFC asks for.
* ``base_key``: REKEY_ACK_KEK_*: the KEK_ALGORITHM_KEY that decrypted the PUSH *without* its
  IV (the key, RFC 8263 section 2.1).  The LKH types (2, 4) are not requested by msec.
* ``SPI``: the PUSH's cookies (the KEK SPI that protected it), copied into the ACK's header.
* ``L``: two octets, big-endian.  Decision (docs/decisions/wire.md §3.3, ambiguity 8; the RFC is self-contradictory: "the number of bits
  in the ack_key" and "MUST match the length of the base_key (i.e., 512 bits for
  PRF-HMAC-SHA-256)"): the prf's block size in bits, the example the RFC gives: 512 for
  SHA-256, 1024 for SHA-512.
* ``SEQ | ID``: decision (ambiguity 9): the bytes of both payloads as sent, generic payload headers
  included (SEQ's Next Payload = ID, ID's = 0), as every IKEv1/GDOI HASH covers whole payloads
  (RFC 2409 section 5.5, RFC 6407 section 3.2).  The key server verifies over the bytes it
  received, so no re-encoding can differ.
* ID (RFC 8263 section 3.4): ID_IPV4_ADDR or ID_IPV6_ADDR of the member, Protocol ID and Port
  0.  The key server also requires it to equal the ACK's source address (our choice: an ACK
  names the member it comes from; the KEK is a group secret, so this is the only binding of an
  ACK to one member that REKEY_ACK_KEK has).

Decoders raise only :class:`PushAckError`, naming what was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field

from gkm import wire
from gkm.wire import ExchangeType, Hash, Header, IdType, Identification, Sequence

__all__ = ["PushAckError", "PushAck", "ACK_KEK_SHA256", "ACK_KEK_SHA512", "ACK_TYPES",
           "ack_key", "build_push_ack", "decode_push_ack", "verify_push_ack"]

#: KEK_ACK_REQUESTED values (RFC 8263 section 8) msec can answer
ACK_KEK_SHA256 = 1
ACK_KEK_SHA512 = 3
ACK_TYPES = {ACK_KEK_SHA256: hashlib.sha256, ACK_KEK_SHA512: hashlib.sha512}
_LABEL = b"GROUPKEY-PUSH ACK\x00"
_HEADER_LEN = 28


class PushAckError(Exception):
    """A GROUPKEY-PUSH-ACK that cannot be decoded or built (the reason says why)."""


@dataclass(frozen=True, slots=True)
class PushAck:
    """A decoded ACK: ``spi`` (cookies), ``seq``, the member's ``address`` (ID), the HASH and
    the bytes it covers (SEQ and ID payloads as received)."""

    spi: bytes
    seq: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    hash: bytes = field(repr=False)
    covered: bytes = field(repr=False)


def _digest(ack_type: int):
    try:
        return ACK_TYPES[ack_type]
    except KeyError:
        raise PushAckError(f"KEK_ACK_REQUESTED {ack_type} is not supported "
                           f"(only {', '.join(map(str, ACK_TYPES))})") from None


def ack_key(base_key: bytes, spi: bytes, ack_type: int = ACK_KEK_SHA256) -> bytes:
    """RFC 8263 section 3.2 ack_key from the KEK key (without IV) and the PUSH's SPI."""
    if len(spi) != 16:
        raise PushAckError(f"SPI of {len(spi)} bytes, need 16")
    d = _digest(ack_type)
    bits = d().block_size * 8
    return hmac.new(bytes(base_key), _LABEL + bytes(spi) + bits.to_bytes(2, "big"), d).digest()


def _id_of(address) -> Identification:
    a = ipaddress.ip_address(address)
    return Identification.of(IdType.IPV4_ADDR if a.version == 4 else IdType.IPV6_ADDR, a)


def build_push_ack(*, spi: bytes, seq: int, address, key: bytes,
                   ack_type: int = ACK_KEK_SHA256) -> bytes:
    """The member's ACK of the PUSH with cookies ``spi`` and ``seq``; ``key``: its ack_key
    (:func:`ack_key`); ``address``: the member's IP address (of its last GROUPKEY-PULL)."""
    if not 0 < seq < 2**32:
        raise PushAckError(f"SEQ {seq} outside 1..2^32-1")
    _np, covered = wire.encode_payloads((Sequence(seq), _id_of(address)))
    h = hmac.new(key, covered, _digest(ack_type)).digest()
    header = Header(spi[:8], spi[8:], ExchangeType.GROUPKEY_PUSH_ACK)
    return wire.encode_message(header, (Hash(h), Sequence(seq), _id_of(address)))


def decode_push_ack(data: bytes) -> PushAck:
    """Decode an ACK strictly: header as RFC 8263 section 3.1 fixes it, exactly HASH, SEQ,
    ID (an address, Protocol ID and Port 0), nothing after them."""
    data = bytes(data)
    try:
        msg = wire.decode_message(data)
    except wire.WireError as e:
        raise PushAckError(f"malformed: {e}") from None
    h = msg.header
    if h.exchange != ExchangeType.GROUPKEY_PUSH_ACK:
        raise PushAckError(f"exchange {int(h.exchange)} is not GROUPKEY-PUSH-ACK (35)")
    if int(h.flags) != 0 or h.message_id != 0:
        raise PushAckError("flags and Message ID must be 0 (RFC 8263 section 3.1)")
    if h.version != 0x10:
        raise PushAckError(f"version {h.version:#04x} is not 1.0")
    pl = msg.payloads
    if [type(p) for p in pl] != [Hash, Sequence, Identification]:
        names = [type(p).__name__ for p in pl]
        raise PushAckError(f"payloads {names} are not [Hash, Sequence, Identification]")
    hp, seq, ident = pl
    if len(hp.data) not in (32, 64):
        raise PushAckError(f"HASH of {len(hp.data)} bytes (need 32 or 64)")
    if ident.id_type not in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        raise PushAckError(f"ID type {int(ident.id_type)} is not an IP address")
    if ident.protocol or ident.port:
        raise PushAckError("ID Protocol ID and Port must be 0 (RFC 8263 section 3.4)")
    if seq.number == 0:
        raise PushAckError("SEQ 0 acknowledges no PUSH")
    covered = data[_HEADER_LEN + 4 + len(hp.data):]
    return PushAck(h.spi, seq.number, ipaddress.ip_address(ident.data), hp.data, covered)


def verify_push_ack(ack: PushAck, key: bytes, ack_type: int = ACK_KEK_SHA256) -> bool:
    """True iff ``ack``'s HASH is prf(``key``, SEQ | ID) (constant-time comparison)."""
    want = hmac.new(key, ack.covered, _digest(ack_type)).digest()
    return len(want) == len(ack.hash) and hmac.compare_digest(want, ack.hash)
