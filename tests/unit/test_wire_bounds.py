"""Hostile shapes: the decoder's work and memory stay proportional to the input, counts are
bounded, and nothing is allocated from a count field before the bytes are there.  (Tests do not
time things; memory is measured with tracemalloc.)"""

from __future__ import annotations

import struct
import tracemalloc

import pytest

from gkm.wire import ExchangeType, Header, WireError, decode_lkh_array, decode_message
from gkm.wire.message import MAX_MESSAGE_LENGTH, MAX_PAYLOADS

H = Header(b"I" * 8, b"R" * 8, ExchangeType.GROUPKEY_PUSH)


def message(np: int, body: bytes) -> bytes:
    return b"I" * 8 + b"R" * 8 + struct.pack("!BBBBII", np, 0x10, ExchangeType.GROUPKEY_PUSH, 0, 0, 28 + len(body)) + body


def payload(np: int, body: bytes) -> bytes:
    return struct.pack("!BBH", np, 0, 4 + len(body)) + body


def peak_bytes(data: bytes) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = decode_message(data)
    except WireError as e:
        result = e
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, result


def test_payload_count_bounded():
    vids = b"".join(payload(13, b"") for _ in range(MAX_PAYLOADS - 1)) + payload(0, b"")
    assert len(decode_message(message(13, vids)).payloads) == MAX_PAYLOADS
    too_many = b"".join(payload(13, b"") for _ in range(MAX_PAYLOADS)) + payload(0, b"")
    with pytest.raises(WireError, match="more than 128 payloads"):
        decode_message(message(13, too_many))


def test_message_length_bounded():
    body = payload(0, bytes(MAX_MESSAGE_LENGTH - 28 - 4 + 1))
    with pytest.raises(WireError, match="more than 65535"):
        decode_message(message(13, body[:4] + body[4:]))


def worst_cases():
    room = MAX_MESSAGE_LENGTH - 28
    # one Transform full of basic attributes (the most objects per byte in an SA)
    attrs = struct.pack("!HH", 0x8001, 1000) * ((room - 4 - 8 - 8 - 8) // 4)
    transform = payload(0, struct.pack("!BBH", 1, 1, 0) + attrs)
    proposal = payload(0, struct.pack("!BBBB", 1, 1, 0, 1) + transform)
    sa = payload(0, struct.pack("!II", 1, 1) + proposal)
    yield "attributes", b"I" * 8 + b"R" * 8 + struct.pack("!BBBBII", 1, 0x10, 2, 0, 0, 28 + len(sa)) + sa
    # a Delete with as many 1-byte SPIs as fit
    n = room - 4 - 8
    yield "delete", message(12, payload(0, struct.pack("!IBBH", 2, 1, 1, n) + bytes(n)))
    # a KD claiming 65535 key packets but carrying one
    yield "kd-count", message(17, payload(0, struct.pack("!HH", 0xFFFF, 0) + struct.pack("!BBHB", 1, 0, 5, 0)))
    # a KD with as many empty key packets as fit
    k = (room - 8) // 5
    yield "kd-packets", message(17, payload(0, struct.pack("!HH", k, 0) + struct.pack("!BBHB", 1, 0, 5, 0) * k))
    # a chain of empty payloads (stops at MAX_PAYLOADS)
    yield "chain", message(13, payload(13, b"") * (room // 4 - 1) + payload(0, b""))
    # a GDOI SA with as many empty GAPs as fit
    gaps = payload(22, b"") * ((room - 20) // 4 - 1) + payload(0, b"")
    yield "sa-children", message(1, payload(0, struct.pack("!IIHH", 2, 0, 22, 0) + gaps))


@pytest.mark.parametrize("name,data", list(worst_cases()), ids=[n for n, _ in worst_cases()])
def test_memory_proportional_to_input(name, data):
    assert len(data) <= MAX_MESSAGE_LENGTH
    peak, result = peak_bytes(data)
    # a decoded object per 4 input bytes at most, each well under 100 bytes
    assert peak < 40 * len(data) + 100_000, (name, peak, result)


def test_lkh_count_is_checked_before_allocation():
    value = struct.pack("!BHB", 1, 0xFFFF, 0) + bytes(16 * 4)
    with pytest.raises(WireError, match="equal size"):
        decode_lkh_array(value, False)
    tracemalloc.start()
    arr = decode_lkh_array(struct.pack("!BHB", 1, 4000, 0) + bytes(16 * 4000), False, 0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(arr.keys) == 4000 and peak < 40 * 16 * 4000
