"""Fuzz target for the decoder: random and mutated inputs never raise anything but WireError,
every input that decodes re-encodes to the same bytes, and decoding is pure.

Runs MSEC_FUZZ_ITERATIONS inputs (default 100,000) from a fixed seed (MSEC_FUZZ_SEED) in the
normal test run.  Mutations of valid messages: bit flips, byte overwrites with boundary
values, truncation, extension, length-field corruption (header, generic payload headers and
random 16-bit fields), insertion/deletion, splicing of two messages, and plain random bytes
behind a valid header.
"""

from __future__ import annotations

import copy
import os
import random
import struct

from gkm.wire import Flags, Header, WireError, decode_header, decode_lkh_array, decode_message, encode_message
from gkm.wire import attributes, gdoi, header, ikev1, message
from gkm.wire.examples import all_examples

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000"))
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "3547"))
INTERESTING16 = (0, 1, 3, 4, 5, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)


def _seeds() -> list[bytes]:
    out = []
    for header, payloads in all_examples().values():
        clear = Header(header.icookie, header.rcookie, header.exchange, Flags.NONE, header.message_id)
        out.append(encode_message(clear, payloads))
        enc = Header(header.icookie, header.rcookie, header.exchange, Flags.ENCRYPTION, header.message_id)
        out.append(encode_message(enc, payloads, block_size=16))
    return out


def _length_fields(data: bytes) -> list[int]:
    """Offsets of the header Length and of every top-level generic payload length."""
    offsets = [24, 26]
    np, pos = data[16], 28
    while np and pos + 4 <= len(data):
        offsets.append(pos + 2)
        np, length = data[pos], struct.unpack_from("!H", data, pos + 2)[0]
        if length < 4:
            break
        pos += length
    return offsets


def _fix_header_length(b: bytearray) -> None:
    if len(b) >= 28:
        struct.pack_into("!I", b, 24, len(b))


def mutate(rng: random.Random, seeds: list[bytes], lengths: list[list[int]]) -> bytes:
    i = rng.randrange(len(seeds))
    b = bytearray(seeds[i])
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(10)
        n = len(b)
        if op == 0 and n:  # bit flips
            for _ in range(rng.randint(1, 8)):
                p = rng.randrange(n)
                b[p] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # boundary byte
            b[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:  # truncation (keeping the header length consistent half of the time)
            del b[rng.randrange(n + 1):]
            if rng.random() < 0.5:
                _fix_header_length(b)
        elif op == 3:  # extension
            b += rng.randbytes(rng.randint(1, 64))
            if rng.random() < 0.5:
                _fix_header_length(b)
        elif op in (4, 5):  # length field corruption
            offs = [o for o in lengths[i] if o + 2 <= n] if op == 4 else ([rng.randrange(n - 1)] if n > 1 else [])
            if offs:
                o = rng.choice(offs)
                old = struct.unpack_from("!H", b, o)[0]
                new = rng.choice((rng.choice(INTERESTING16), (old + rng.randint(-8, 8)) & 0xFFFF))
                struct.pack_into("!H", b, o, new)
        elif op == 6 and n:  # deletion
            p = rng.randrange(n)
            del b[p : p + rng.randint(1, 16)]
            _fix_header_length(b)
        elif op == 7:  # insertion
            p = rng.randrange(n + 1)
            b[p:p] = rng.randbytes(rng.randint(1, 16))
            _fix_header_length(b)
        elif op == 8:  # splice two messages
            other = seeds[rng.randrange(len(seeds))]
            b = b[: rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1):]
            _fix_header_length(b)
        else:  # random body behind a valid header (next payload random)
            b = b[:28] + rng.randbytes(rng.randint(0, 200))
            if len(b) > 16:
                b[16] = rng.choice((rng.randrange(256), rng.randrange(1, 23)))
            _fix_header_length(b)
    return bytes(b)


def check(data: bytes, failures: list) -> bool:
    """Decode ``data`` both ways; return True if it decoded."""
    ok = False
    for block in (None, 16):
        try:
            msg = decode_message(data, block_size=block)
        except WireError as e:
            assert isinstance(e.offset, int) and e.payload and e.reason
            continue
        except Exception as e:  # noqa: BLE001 - this is what we are hunting
            failures.append((data.hex(), block, repr(e)))
            continue
        ok = True
        if msg.to_bytes() != data:
            failures.append((data.hex(), block, "re-encoding differs"))
        for p in msg.payloads:  # the LKH array splitter is part of the decoding surface
            for kp in getattr(p, "packets", ()):
                for t, v in kp.attributes:
                    if kp.kd_type == 3 and t in (1, 2) and isinstance(v, bytes):
                        try:
                            decode_lkh_array(v, t == 2)
                        except WireError:
                            pass
                        except Exception as e:  # noqa: BLE001
                            failures.append((v.hex(), "lkh", repr(e)))
    return ok


def _module_state() -> dict:
    """The mutable module-level tables of the codec (they must not change while decoding)."""
    return {
        (m.__name__, k): v
        for m in (attributes, gdoi, header, ikev1, message)
        for k, v in vars(m).items()
        if not k.startswith("__") and isinstance(v, (dict, list, set, bytearray))
    }


def test_fuzz_decoder():
    rng = random.Random(SEED)
    seeds = _seeds()
    lengths = [_length_fields(s) for s in seeds]
    state_before = copy.deepcopy(_module_state())
    failures: list = []
    decoded = 0
    for n in range(ITERATIONS):
        if n % 10 == 0:  # pure random input, sometimes with a plausible header
            data = rng.randbytes(rng.randint(0, 120))
            if n % 20 == 0 and len(data) >= 28:
                b = bytearray(data)
                b[17] = 0x10
                b[19] &= 7
                _fix_header_length(b)
                data = bytes(b)
        else:
            data = mutate(rng, seeds, lengths)
        decoded += check(data, failures)
        if len(failures) > 20:
            break
    assert failures == [], failures[:5]
    # The mutations must reach the payload decoders, not die in the header.
    assert decoded > ITERATIONS // 50, decoded
    assert _module_state() == state_before


def test_decoder_is_pure():
    """Same input, same result; a bytearray input is not modified; decoding keeps no state."""
    for data in _seeds():
        buf = bytearray(data)
        first = decode_message(buf)
        assert bytes(buf) == data
        assert decode_message(data) == first == decode_message(bytes(buf))
        assert decode_header(data) == decode_header(buf)
