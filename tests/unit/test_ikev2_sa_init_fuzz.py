"""Fuzzing the IKE_SA_INIT engines: mutated requests (responder) and mutated responses,
including IKE_INTERMEDIATE (initiator) never raise, never create state for a refused input
beyond one half-open SA per accepted request, and never establish from a tampered
IKE_INTERMEDIATE.  Both engines know their addresses, so the messages carry NAT detection
(NAT_DETECTION_*_IP, :mod:`gkm.ikev2.natt`) and its checks are fuzzed too.
MSEC_FUZZ_ITERATIONS/10 inputs per role (key exchanges are costly)."""

from __future__ import annotations

import os
import random

from gkm.ikev2.constants import Encr, Prf
from gkm.ikev2.events import SaInitEstablished, SaInitFailed, CookieDemanded
from gkm.ikev2.keys import Suite
from gkm.ikev2.sa_init import SaInitConfig, SaInitInitiator, SaInitResponder

from .test_wire_fuzz import _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000")) // 10
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "9242"))
CFG = SaInitConfig(Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256), mlkem="optional")
R, I = ("192.0.2.1", 848), ("192.0.2.2", 848)


def transcript():
    """A real exchange: (request, response, intermediate request, intermediate response)."""
    ini, resp = SaInitInitiator(CFG, R, I), SaInitResponder(CFG)
    ini.start(0.0)
    out = []
    for _ in range(2):
        [(a, _)] = ini.datagrams_to_send()
        resp.receive_datagram(a, I, 0.0, R)
        [(b, _)] = resp.datagrams_to_send()
        ini.receive_datagram(b, R, 0.0)
        out += [a, b]
    return out


def drain(engine):
    evs = []
    while (e := engine.next_event()) is not None:
        evs.append(e)
    return evs, engine.datagrams_to_send()


def responder_run(data: bytes, responder: SaInitResponder, failures: list) -> bool:
    before = responder.half_open
    try:
        responder.receive_datagram(data, I, 0.0, R)
    except Exception as e:  # noqa: BLE001 - what we hunt
        failures.append((data.hex(), repr(e)))
        return False
    evs, out = drain(responder)
    for e in evs:
        if not isinstance(e, (SaInitEstablished, SaInitFailed, CookieDemanded)):
            failures.append((data.hex(), f"event {e!r}"))
    if responder.half_open > before + 1:
        failures.append((data.hex(), "more than one half-open SA for one datagram"))
    return bool(out)


def initiator_run(seq: list[bytes], mutated_index: int, data: bytes, failures: list) -> bool:
    """Replay the exchange from a fresh initiator's point of view with one response mutated.
    The fresh initiator takes the transcript's SPIi so mutated responses get past the SPI check
    into the engine's logic (its own key share differs, so a mutated IKE_INTERMEDIATE response
    can only be refused); the engine must never crash."""
    ini = SaInitInitiator(CFG, R, I)
    ini.spi_i = seq[0][:8]
    ini.start(0.0)
    ini.datagrams_to_send()
    try:
        ini.receive_datagram(data, R, 0.0)
        if mutated_index == 3:
            ini.receive_datagram(seq[1], R, 0.0)
            ini.receive_datagram(data, R, 0.0)
    except Exception as e:  # noqa: BLE001
        failures.append((data.hex(), repr(e)))
        return False
    evs, _ = drain(ini)
    return any(isinstance(e, SaInitEstablished) for e in evs)


def test_fuzz_sa_init_engines():
    rng = random.Random(SEED)
    seq = transcript()
    responder_seeds = [seq[0], seq[2]]
    initiator_seeds = [seq[1], seq[3]]
    failures: list = []
    resp = SaInitResponder(CFG, cookie_threshold=ITERATIONS * 2, max_half_open=ITERATIONS * 2)
    answered = 0
    for n in range(ITERATIONS):
        answered += responder_run(mutate(rng, responder_seeds, [_length_fields(s) for s in responder_seeds]), resp, failures)
        if n % 4 == 0:
            i = rng.randrange(2)
            initiator_run(seq, 1 + 2 * i, mutate(rng, [initiator_seeds[i]], [_length_fields(initiator_seeds[i])]), failures)
        if len(failures) > 10:
            break
    assert failures == [], failures[:3]
    assert answered > ITERATIONS // 50, answered  # the mutations reach the engine's logic
