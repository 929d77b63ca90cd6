"""Fuzz target for the IKEv2 decoder (gkm.ikev2): mutated and random inputs never raise anything
but WireError, every input that decodes re-encodes to bytes that decode to the same value (and
to the same bytes when the input had no reserved bits set), and decoding keeps no state.

MSEC_FUZZ_ITERATIONS inputs (default 100,000) from a fixed seed (MSEC_FUZZ_SEED); the mutation
operators are the ones of test_wire_fuzz.py (bit flips, boundary bytes, truncation, extension,
length-field corruption, insertion/deletion, splicing, random body behind a valid header).
"""

from __future__ import annotations

import copy
import os
import random

from gkm.ikev2 import WireError, decode_message, encode_message
from gkm.ikev2 import gsa, message, payloads
from gkm.ikev2.examples import all_examples

from .test_wire_fuzz import _fix_header_length, _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000"))
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "9838"))


def seeds() -> list[bytes]:
    return [encode_message(h, p) for h, p in all_examples().values()]


def check(data: bytes, failures: list) -> bool:
    try:
        msg = decode_message(data)
    except WireError as e:
        if not (isinstance(e.offset, int) and e.payload and e.reason):
            failures.append((data.hex(), "bad error", repr(e)))
        return False
    except Exception as e:  # noqa: BLE001 - this is what we are hunting
        failures.append((data.hex(), repr(e)))
        return False
    again = msg.to_bytes()
    if decode_message(again) != msg:
        failures.append((data.hex(), "re-decoding differs"))
    elif again != data and not _reserved_bits_differ(data, again):
        failures.append((data.hex(), "re-encoding differs"))
    return True


def _reserved_bits_differ(received: bytes, again: bytes) -> bool:
    """Re-encoding normalises only reserved bits and the critical bit of known payloads to zero
    (RFC 7296 "ignored on receipt"): same length, and every differing octet only lost bits."""
    return len(received) == len(again) and all(r & a == a for r, a in zip(received, again))


def _module_state() -> dict:
    return {
        (m.__name__, k): v
        for m in (gsa, message, payloads)
        for k, v in vars(m).items()
        if not k.startswith("__") and isinstance(v, (dict, list, set, bytearray))
    }


def test_fuzz_ikev2_decoder():
    rng = random.Random(SEED)
    pool = seeds()
    lengths = [_length_fields(s) for s in pool]
    before = copy.deepcopy(_module_state())
    failures: list = []
    decoded = 0
    for n in range(ITERATIONS):
        if n % 10 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 120)))
            if n % 20 == 0 and len(data) >= 28:
                data[17] = 0x20
                data[16] = rng.choice((33, 34, 40, 41, 46, 50, 51, 52, rng.randrange(256)))
                _fix_header_length(data)
            data = bytes(data)
        else:
            data = mutate(rng, pool, lengths)
            if len(data) > 17 and rng.random() < 0.3:
                b = bytearray(data)
                b[17] = 0x20  # keep the IKEv2 version often (the wire mutator may break it)
                data = bytes(b)
        decoded += check(data, failures)
        if len(failures) > 20:
            break
    assert failures == [], failures[:5]
    assert decoded > ITERATIONS // 50, decoded
    assert _module_state() == before


def test_decoder_is_pure():
    for data in seeds():
        buf = bytearray(data)
        first = decode_message(buf)
        assert bytes(buf) == data
        assert decode_message(data) == first
