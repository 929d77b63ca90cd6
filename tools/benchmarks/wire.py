"""`tools/bench wire`: decode + encode throughput of gkm.wire against scapy's ISAKMP layer.

Messages (gkm.wire.examples): a realistic GROUPKEY-PUSH (SEQ, SA with one SA KEK and two SA
TEKs, KD with two TEK packets, a KEK packet and an LKH update array of 20 keys, a 2048-bit SIG)
and Main Mode message 1 (SA with three phase-1 transforms, VID).  The same cleartext bytes are
given to both codecs (E flag clear, since scapy does not decrypt; our encrypted-body framing costs
the same).  One round = decode the bytes into values and encode the values back to bytes; for
scapy, `bytes(ISAKMP(data))`.  scapy knows neither the GDOI SA layout nor SEQ/KD (it keeps them
as opaque payloads), so it does less work on the PUSH than we do.

Encoding really encodes: the decoded Message holds typed values only (header fields, payload
fields, attribute tuples; the padding is the one verbatim part), so ``to_bytes()`` packs every
field again.  The benchmark checks this by re-encoding a copy rebuilt with the public
constructors and comparing the bytes.

Timing uses process CPU time (time.process_time), a warm-up run, and the best of several
repeats, so other load on the machine disturbs the result less (still compare before/after in
the same conditions).  The last line is JSON; "ratio" is msec PUSH rounds per second divided by
scapy's, "push_per_s" the PUSH decode+encode rate and "goal_push_per_s" the goal of issue 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import timeit

from gkm.wire import decode_message, encode_message
from gkm.wire.examples import main_mode_message, push_message

GOAL_PUSH_PER_S = 50_000


def rate(fn, seconds: float, repeat: int) -> float:
    """Best rounds per CPU second of ``fn`` over ``repeat`` runs of about ``seconds`` each,
    after a warm-up (autorange: at least 0.2 s of calls)."""
    t = timeit.Timer(fn, timer=time.process_time)
    number, _ = t.autorange()  # warm-up and calibration
    per = t.timeit(number) / number
    number = max(1, int(seconds / max(per, 1e-9)))
    return number / min(t.repeat(repeat=repeat, number=number))


def _rebuilt(value):
    """A deep copy of a decoded value made with the public constructors (no decoder objects)."""
    if dataclasses.is_dataclass(value):
        return type(value)(*(_rebuilt(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, tuple):
        items = [_rebuilt(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, bytes):
        return bytes(bytearray(value))  # a new object with the same content
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/bench wire", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.2, help="CPU seconds per repeat (default 0.2)")
    ap.add_argument("--repeat", type=int, default=5, help="repeats, best one counts (default 5)")
    ap.add_argument("--no-scapy", action="store_true", help="skip the scapy baseline")
    args = ap.parse_args(argv)

    messages = {"push": push_message(encrypted=False), "main_mode": main_mode_message(0)}
    result: dict = {"name": "wire"}
    for name, data in messages.items():
        msg = decode_message(data)
        copy = _rebuilt(msg)
        if msg.to_bytes() != data or encode_message(copy.header, copy.payloads, padding=copy.padding) != data:
            print(f"{name}: msec round trip differs", file=sys.stderr)
            return 1
        msec = rate(lambda: decode_message(data).to_bytes(), args.seconds, args.repeat)
        dec = rate(lambda: decode_message(data), args.seconds, args.repeat)
        enc = rate(msg.to_bytes, args.seconds, args.repeat)
        result[f"{name}_bytes"] = len(data)
        result[f"{name}_per_s"] = round(msec)
        result[f"{name}_decode_per_s"] = round(dec)
        result[f"{name}_encode_per_s"] = round(enc)
        print(f"msec  {name:9} {len(data):5} B  decode+encode {msec:10,.0f}/s  ({1e6 / msec:6.1f} us)"
              f"  decode {1e6 / dec:6.1f} us  encode {1e6 / enc:6.1f} us")

    if not args.no_scapy:
        from scapy.config import conf

        conf.verb = 0
        import logging

        logging.getLogger("scapy").setLevel(logging.ERROR)
        from scapy.layers.isakmp import ISAKMP

        for name, data in messages.items():
            exact = bytes(ISAKMP(data)) == data
            sc = rate(lambda: bytes(ISAKMP(data)), args.seconds, args.repeat)
            result[f"scapy_{name}_per_s"] = round(sc)
            result[f"scapy_{name}_exact"] = exact
            result[f"{name}_ratio"] = round(result[f"{name}_per_s"] / sc, 2)
            print(f"scapy {name:9} {len(data):5} B  decode+bytes() {sc:10,.0f}/s  ({1e6 / sc:6.1f} us)  re-encoding exact: {exact}")
        result["ratio"] = result["push_ratio"]
    result["goal_push_per_s"] = GOAL_PUSH_PER_S
    result["goal_met"] = result["push_per_s"] >= GOAL_PUSH_PER_S
    print(f"PUSH decode+encode: {result['push_per_s']:,}/s on one core (goal {GOAL_PUSH_PER_S:,}/s)")
    print(json.dumps(result, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
