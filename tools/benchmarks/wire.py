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

Timing uses process CPU time (time.process_time), a warm-up run per function, then many short
samples taken in turn across all the functions of a group; the fastest sample counts.  Bursts of
other load on the machine then hit every function alike and mostly miss the best samples (still
compare before/after in the same conditions).  As timeit does, samples run with the garbage
collector off.  The last line is JSON; "ratio" is msec PUSH rounds per second divided by
scapy's, "push_per_s" the PUSH decode+encode rate and "goal_push_per_s" the goal of issue 3.
"python_loop_ns" (CPU time of one iteration of an empty ``for`` loop) tells how fast this
interpreter and core are, to compare figures from different machines.  ``--parts`` also prints
where the PUSH time goes (per payload, and the attribute blocks alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import timeit
from typing import Callable

from gkm.wire import decode_message, encode_message
from gkm.wire.examples import main_mode_message, push_message

GOAL_PUSH_PER_S = 50_000


def rates(fns: dict[str, Callable[[], object]], seconds: float, samples: int) -> dict[str, float]:
    """Best rounds per CPU second of each function: after a warm-up (timeit's autorange, at
    least 0.2 s of calls), ``samples`` samples of about ``seconds / samples`` CPU seconds per
    function, interleaved; the fastest sample counts."""
    timers = {}
    for name, fn in fns.items():
        t = timeit.Timer(fn, timer=time.process_time)
        number, took = t.autorange()  # warm-up and calibration
        timers[name] = (t, max(1, int(seconds / samples / max(took / number, 1e-9))))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(samples):
        for name, (t, number) in timers.items():
            best[name] = min(best[name], t.timeit(number) / number)
    return {name: 1 / b for name, b in best.items()}


def python_loop_ns(samples: int) -> float:
    """CPU ns per iteration of ``for _ in range(n): pass`` (best of ``samples``)."""
    n = 100_000
    best = float("inf")
    for _ in range(samples):
        t = time.process_time()
        for _ in range(n):
            pass
        best = min(best, time.process_time() - t)
    return best / n * 1e9


def push_parts(data: bytes, seconds: float, samples: int) -> dict[str, float]:
    """Microseconds per part of the PUSH round (decode of each payload body, encode of each)."""
    from gkm.wire import GdoiSa, KeyDownload, SaKek, SaTek, Sequence, Signature, decode_header, encode_header
    from gkm.wire.attributes import decode_attributes, encode_attributes
    from gkm.wire.gdoi import _IPSEC_ATTRS, _KD_ATTRS, _KEK_ATTRS
    from gkm.wire.message import encode_payload

    msg = decode_message(data)
    seq, sa, kd, sig = msg.payloads
    spans, pos = [], 28
    for p in msg.payloads:
        n = len(encode_payload(p))
        spans.append((pos + 4, pos + n))
        pos += n
    kids, pos = [], spans[1][0] + 12
    for c in sa.payloads:
        n = len(c.encode()) + 4
        kids.append((c, pos + 4, pos + n))
        pos += n
    blocks = [(c.attributes, _KEK_ATTRS if type(c) is SaKek else _IPSEC_ATTRS) for c in sa.payloads]
    blocks += [(k.attributes, _KD_ATTRS[k.kd_type]) for k in kd.packets]
    raw = [(encode_attributes(a, "x"), t) for a, t in blocks]
    n_attrs = sum(len(a) for a, _ in blocks)

    def attrs_decode():
        for b, t in raw:
            decode_attributes(b, 0, len(b), t, "x")

    def attrs_encode():
        for a, _ in blocks:
            encode_attributes(a, "x")

    (sak, sak_s, sak_e), (sat1, sat1_s, sat1_e), (sat2, sat2_s, sat2_e) = kids
    parts = {
        "decode header": lambda: decode_header(data),
        "decode SEQ": lambda: Sequence.decode(data, *spans[0]),
        "decode SA": lambda: GdoiSa.decode(data, *spans[1]),
        "decode  SA KEK": lambda: SaKek.decode(data, sak_s, sak_e),
        "decode  SA TEK 1": lambda: SaTek.decode(data, sat1_s, sat1_e),
        "decode  SA TEK 2": lambda: SaTek.decode(data, sat2_s, sat2_e),
        f"decode KD ({len(kd.packets)} packets)": lambda: KeyDownload.decode(data, *spans[2]),
        "decode SIG": lambda: Signature.decode(data, *spans[3]),
        "encode header": lambda: encode_header(msg.header, seq.TYPE, len(data)),
        "encode SEQ": seq.encode,
        "encode SA": sa.encode,
        "encode  SA KEK": sak.encode,
        "encode  SA TEK 1": sat1.encode,
        "encode  SA TEK 2": sat2.encode,
        "encode KD": kd.encode,
        "encode SIG": sig.encode,
        f"[{n_attrs} attributes, {len(blocks)} blocks] decode": attrs_decode,
        f"[{n_attrs} attributes, {len(blocks)} blocks] encode": attrs_encode,
    }
    return {name: 1e6 / r for name, r in rates(parts, seconds, samples).items()}


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
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU seconds of samples per function (default 1)")
    ap.add_argument("--samples", type=int, default=50, help="samples per function, the best counts (default 50)")
    ap.add_argument("--no-scapy", action="store_true", help="skip the scapy baseline")
    ap.add_argument("--parts", action="store_true", help="also time the parts of the PUSH round")
    args = ap.parse_args(argv)

    messages = {"push": push_message(encrypted=False), "main_mode": main_mode_message(0)}
    result: dict = {"name": "wire"}
    for name, data in messages.items():
        msg = decode_message(data)
        copy = _rebuilt(msg)
        if msg.to_bytes() != data or encode_message(copy.header, copy.payloads, padding=copy.padding) != data:
            print(f"{name}: msec round trip differs", file=sys.stderr)
            return 1
        r = rates({
            "both": lambda: decode_message(data).to_bytes(), "decode": lambda: decode_message(data), "encode": msg.to_bytes,
        }, args.seconds, args.samples)
        msec, dec, enc = r["both"], r["decode"], r["encode"]
        result[f"{name}_bytes"] = len(data)
        result[f"{name}_per_s"] = round(msec)
        result[f"{name}_decode_per_s"] = round(dec)
        result[f"{name}_encode_per_s"] = round(enc)
        print(f"msec  {name:9} {len(data):5} B  decode+encode {msec:10,.0f}/s  ({1e6 / msec:6.1f} us)"
              f"  decode {1e6 / dec:6.1f} us  encode {1e6 / enc:6.1f} us")

    if args.parts:
        for name, us in push_parts(messages["push"], args.seconds / 2, args.samples).items():
            print(f"      push part  {name:34} {us:6.2f} us")

    if not args.no_scapy:
        from scapy.config import conf

        conf.verb = 0
        import logging

        logging.getLogger("scapy").setLevel(logging.ERROR)
        from scapy.layers.isakmp import ISAKMP

        sc_rates = rates({name: (lambda data=data: bytes(ISAKMP(data))) for name, data in messages.items()}, args.seconds, args.samples)
        for name, data in messages.items():
            exact = bytes(ISAKMP(data)) == data
            sc = sc_rates[name]
            result[f"scapy_{name}_per_s"] = round(sc)
            result[f"scapy_{name}_exact"] = exact
            result[f"{name}_ratio"] = round(result[f"{name}_per_s"] / sc, 2)
            print(f"scapy {name:9} {len(data):5} B  decode+bytes() {sc:10,.0f}/s  ({1e6 / sc:6.1f} us)  re-encoding exact: {exact}")
        result["ratio"] = result["push_ratio"]
    result["push_per_s"] = result.pop("push_per_s")  # next to the goal in the JSON line
    result["goal_push_per_s"] = GOAL_PUSH_PER_S
    result["goal_met"] = result["push_per_s"] >= GOAL_PUSH_PER_S
    result["python_loop_ns"] = round(python_loop_ns(args.samples), 1)
    print(f"PUSH decode+encode: {result['push_per_s']:,}/s on one core (goal {GOAL_PUSH_PER_S:,}/s);"
          f" this interpreter: {result['python_loop_ns']} ns per empty loop iteration")
    print(json.dumps(result, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
