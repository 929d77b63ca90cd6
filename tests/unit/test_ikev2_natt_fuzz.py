"""Fuzzing the UDP 4500 framing (:func:`gkm.ikev2.natt.unframe`): mutated IKE messages behind
the non-ESP marker, ESP headers, keepalives and short datagrams never raise anything but
WireError, and what it calls IKE is the input without its first four octets.
MSEC_FUZZ_ITERATIONS inputs (the long campaign: ``tools/fuzz --parser natt``)."""

from __future__ import annotations

import os
import random

from gkm.ikev2.errors import WireError
from gkm.ikev2.natt import Kind, frame, unframe

from .test_wire_fuzz import mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000"))
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "4500"))


def seeds() -> list[bytes]:
    from tests.unit.test_ikev2_sa_init_fuzz import transcript
    return [frame(m) for m in transcript()[:2]] + [b"\xff", b"\x00\x00\x10\x01" + bytes(28), bytes(4)]


def check(data: bytes, failures: list) -> bool:
    try:
        got = unframe(data)
    except WireError:
        return False
    except Exception as e:  # noqa: BLE001 - what we hunt
        failures.append((data.hex(), repr(e)))
        return False
    if got.kind is Kind.IKE and (data[:4] != bytes(4) or got.message != data[4:]):
        failures.append((data.hex(), "IKE that is not the input behind a marker"))
    if got.kind is not Kind.IKE and got.message:
        failures.append((data.hex(), f"{got.kind} with a message"))
    return True


def test_fuzz_unframe():
    rng = random.Random(SEED)
    s = seeds()
    failures: list = []
    kinds = 0
    for _ in range(ITERATIONS):
        kinds += check(mutate(rng, s, [[] for _ in s]), failures)
        if len(failures) > 10:
            break
    assert failures == [], failures[:3]
    assert kinds > ITERATIONS // 10, kinds
