"""Installing XFRM states and policies: msec's binding vs ``ip -batch`` vs the netlink floor.

Run as ``tools/bench xfrm-install [--count N] [--repeat R] [--lab-repeat R] [--only host|lab]``.

The same set of N group SAs is installed three ways, each in a fresh private network namespace
(created for the run, flushed and deleted afterwards, even on error):

* **msec**: what a user of the binding does, timed from Python inputs to the kernel's last ACK:
  build the values (``aes_gcm`` key objects, ``State``; ``Selector``, ``Template``, ``Policy``;
  the values' own checks included), add them to a :class:`xfrm.Batch` (msec's validation and
  the encoding) and ``XfrmSocket.run`` it (sendmsg, one checked ACK per message). The inputs
  are what a key manager holds after decoding its GDOI payloads: ``ipaddress`` objects
  (addresses and /32 networks), SPIs, reqids and key bytes, made before timing.
* **iproute2**: ``ip -n NS -batch FILE``, the tool users would otherwise script; the file is
  written before timing, the ``ip`` process start is timed (a few ms).
* **floor**: the very messages of the msec way, encoded before timing (``Batch.encode``), sent
  with ``XfrmSocket.send_encoded``: the socket work alone, same chunks, same ACK checks.

Before the measured runs, one untimed install of the whole set (floor way, own namespace)
and one untimed build of the msec way's values warm the kernel and the Python heap up: the
first install after boot pays for fresh slab pages and hash tables (in UML it ran 3-4 times
slower than the next ones), which would penalise whichever way came first.

The socket is opened before timing in the msec and floor ways. Times are wall clock
(``time.perf_counter``): the work is mostly the kernel's. Every way's result is read back with
a dump and must be exactly the N states / N policies asked for.

Two kernels (compare rates only within one kernel):

* **lab**: the kernel lab (User-mode Linux with ESP, via ``tools/lab exec``), N states + N
  policies, best of ``--lab-repeat`` runs per way (default 2: UML is slow, about 1,000 to
  7,000 objects/s; a whole lab run takes about two minutes). UML traps every system call and
  page fault, which flatters batching and penalises a cold heap.
* **host_policies**: the host kernel (no ESP), N policies only, best of ``--repeat`` (default 5),
  the ways interleaved so that machine load hits them alike.

The data: group i has sender 10.78.x.y, group address 239.1.x.y (i+1 in the low 16 bits, then
239.2... beyond 65,535), a distinct SPI, reqid ``MSEC.reqid(i)`` and its own random AES-GCM-128
key (ICV 16 bytes, replay window 0), tunnel mode; one inbound policy per group, selector
sender/32 -> group/32, priority 2000, template = the SA (address preservation).

Last line: JSON ``{"name": "xfrm-install", "lab": {...}, "host_policies": {...}, "ratio": min
msec/iproute2, "floor_ratio": min msec/floor}``; each part has ``msec_per_s``, ``iproute2_per_s``,
``floor_per_s`` (objects per second, best run), ``installed`` (what each way's dump read back),
``runs_s`` (every run's seconds) and ``msec_build_s`` (of each msec run, the seconds spent
building the values and the batch before ``run``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from xfrm import MSEC, Batch, Direction, Mode, Policy, Selector, State, Template, XfrmSocket
from xfrm.algorithms import aes_gcm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS_PREFIX = "msec-bench-xi"
PRIORITY = 2000
WAYS = ("msec", "iproute2", "floor")


@dataclass
class Inputs:
    """The group SAs, as a key manager holds them before installing (made before timing)."""

    src: list[IPv4Address]
    dst: list[IPv4Address]
    src_net: list[IPv4Network]
    dst_net: list[IPv4Network]
    spi: list[int]
    reqid: list[int]
    key: list[bytes]

    def __len__(self) -> int:
        return len(self.spi)


def make_inputs(n: int, seed: int = 4242) -> Inputs:
    if not 0 < n <= 65535 * 200:
        raise SystemExit(f"--count must be 1..{65535 * 200}")
    if n > MSEC.reqid_max - MSEC.reqid_min + 1:
        raise SystemExit("--count exceeds msec's reqid range")
    rng = random.Random(seed)
    src = [IPv4Address((10 << 24) | (78 << 16) | (i % 65535 + 1)) for i in range(n)]
    dst = [IPv4Address((239 << 24) | ((1 + i // 65535) << 16) | (i % 65535 + 1))
           for i in range(n)]
    return Inputs(src, dst, [IPv4Network(a) for a in src], [IPv4Network(a) for a in dst],
                  rng.sample(range(0x1000, 1 << 32), n), [MSEC.reqid(i) for i in range(n)],
                  [rng.randbytes(20) for _ in range(n)])


def build_batch(inp: Inputs, states: bool) -> Batch:
    """The msec way's Python part: values from the inputs, then the batch (validate, encode)."""
    batch = Batch()
    add_state, add_policy = batch.add_state, batch.add_policy
    tunnel, inbound = Mode.TUNNEL, Direction.IN
    if states:
        for src, dst, spi, reqid, key in zip(inp.src, inp.dst, inp.spi, inp.reqid, inp.key):
            add_state(State(src, dst, spi, tunnel, reqid, aead=aes_gcm(key, 16)))
    for src, dst, src_net, dst_net, reqid in zip(inp.src, inp.dst, inp.src_net, inp.dst_net,
                                                 inp.reqid):
        add_policy(Policy(Selector(src_net, dst_net), inbound, priority=PRIORITY,
                          templates=(Template(src, dst, tunnel, reqid),)))
    return batch


def iproute2_lines(inp: Inputs, states: bool) -> list[str]:
    out = []
    if states:
        for src, dst, spi, reqid, key in zip(inp.src, inp.dst, inp.spi, inp.reqid, inp.key):
            out.append(f"xfrm state add src {src} dst {dst} proto esp spi 0x{spi:08x} "
                       f"reqid {reqid} mode tunnel replay-window 0 "
                       f"aead rfc4106(gcm(aes)) 0x{key.hex()} 128")
    for src, dst, reqid in zip(inp.src, inp.dst, inp.reqid):
        out.append(f"xfrm policy add src {src}/32 dst {dst}/32 dir in priority {PRIORITY} "
                   f"tmpl src {src} dst {dst} proto esp reqid {reqid} mode tunnel")
    return out


# -- namespaces -------------------------------------------------------------------------------
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def remove_stale_namespaces() -> None:
    """Namespaces left by benchmark runs that died without cleaning up (pid no longer alive)."""
    names = _ip("netns", "list", check=False).stdout.split()
    for name in names:
        if not name.startswith(NS_PREFIX + "-"):
            continue
        try:
            pid = int(name.split("-")[3])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", name, check=False)


@contextlib.contextmanager
def fresh_netns():
    name = f"{NS_PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        yield name
    finally:
        # flush synchronously first: deleting a namespace frees its XFRM objects in a kernel
        # worker, which would run during the next way's measurement
        _ip("-n", name, "xfrm", "policy", "flush", check=False)
        _ip("-n", name, "xfrm", "state", "flush", check=False)
        _ip("netns", "del", name, check=False)


def read_back(ns: str, inp: Inputs, states: bool) -> dict[str, int]:
    """What the kernel holds, by dump; raises unless it is exactly the benchmark's set."""
    with XfrmSocket(ns) as sock:
        pols = sock.dump_policies()
        sts = sock.dump_states() if states else []
    reqids = set(inp.reqid)
    want_pol = set(zip(inp.src_net, inp.dst_net))
    got_pol = {(p.selector.src, p.selector.dst) for p in pols
               if p.direction == Direction.IN and p.templates and p.templates[0].reqid in reqids}
    if len(pols) != len(inp) or got_pol != want_pol:
        raise RuntimeError(f"{ns}: read back {len(pols)} policies, not the {len(inp)} installed")
    if states:
        want_st = set(zip(inp.dst, inp.spi))
        if len(sts) != len(inp) or {(s.dst, s.spi) for s in sts} != want_st:
            raise RuntimeError(f"{ns}: read back {len(sts)} states, not the {len(inp)} installed")
    return {"states": len(sts), "policies": len(pols)}


# -- the three ways ---------------------------------------------------------------------------
def run_msec(ns: str, inp: Inputs, states: bool) -> tuple[float, float]:
    """(total, of which building the values and the batch) in seconds."""
    with XfrmSocket(ns) as sock:
        gc.collect()
        t0 = time.perf_counter()
        batch = build_batch(inp, states)
        t1 = time.perf_counter()
        sock.run(batch)
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0


def run_iproute2(ns: str, path: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(["ip", "-n", ns, "-batch", path], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"ip -batch failed ({res.returncode}): {res.stderr.strip()[:500]}")
    return elapsed


def run_floor(ns: str, msgs: list[bytes]) -> float:
    with XfrmSocket(ns) as sock:
        gc.collect()
        t0 = time.perf_counter()
        sock.send_encoded(msgs)
        return time.perf_counter() - t0


def measure(n: int, states: bool, repeat: int, label: str) -> dict:
    """Best of ``repeat`` runs of each way, interleaved (the order rotates per round)."""
    inp = make_inputs(n)
    objects = n * (2 if states else 1)
    msgs = build_batch(inp, states).encode(1)
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    installed: dict[str, dict[str, int]] = {}
    build_s: list[float] = []  # msec way: values + Batch, before run()
    with tempfile.TemporaryDirectory(prefix="msec-bench-xi-") as tmp:
        path = os.path.join(tmp, "batch")
        with open(path, "w") as f:
            f.write("\n".join(iproute2_lines(inp, states)) + "\n")
        # untimed warm-up: the first install after boot pays for the kernel's first allocations
        # (slab pages, hash tables; in UML 3-4x the steady rate), whichever way comes first;
        # the Python heap likewise (page faults are costly in UML)
        build_batch(inp, states)
        with fresh_netns() as ns:
            t = run_floor(ns, msgs)
        print(f"{label}: warm-up  {objects} objects in {t:.3f} s (not counted)",
              file=sys.stderr, flush=True)
        for r in range(repeat):
            for way in WAYS[r % 3:] + WAYS[:r % 3]:
                with fresh_netns() as ns:
                    if way == "msec":
                        t, build = run_msec(ns, inp, states)
                        build_s.append(build)
                    elif way == "iproute2":
                        t = run_iproute2(ns, path)
                    else:
                        t = run_floor(ns, msgs)
                    installed[way] = read_back(ns, inp, states)
                times[way].append(t)
                print(f"{label}: {way:8s} {objects} objects in {t:.3f} s = "
                      f"{objects / t:,.0f}/s", file=sys.stderr, flush=True)
    rates = {f"{w}_per_s": round(objects / min(times[w])) for w in WAYS}
    return {**rates, "objects": objects, "kernel": os.uname().release,
            "runs_s": {w: [round(t, 4) for t in times[w]] for w in WAYS},
            "msec_build_s": [round(t, 4) for t in build_s],
            "installed": installed}


def lab_part(n: int, repeat: int) -> dict:
    """Run the states + policies part inside the kernel lab; its last stdout line is JSON."""
    cmd = [os.path.join(ROOT, "tools", "lab"), "exec", "--timeout", str(600 + n // 10), "--",
           os.path.join(ROOT, ".venv", "bin", "python"), "-m", "tools.benchmarks.xfrm_install",
           "--lab-part", "--count", str(n), "--lab-repeat", str(repeat)]
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        raise RuntimeError(f"lab part failed (exit {res.returncode}): {res.stdout[-2000:]}")
    return json.loads(lines[-1])


def summarise(parts: dict[str, dict | None]) -> dict:
    done = [p for p in parts.values() if p]
    out: dict = {"name": "xfrm-install"}
    for name, p in parts.items():
        out[name] = p
        if p:
            print(f"{name}: msec {p['msec_per_s']:,}/s, iproute2 {p['iproute2_per_s']:,}/s, "
                  f"floor {p['floor_per_s']:,}/s; msec/iproute2 "
                  f"{p['msec_per_s'] / p['iproute2_per_s']:.2f}, msec/floor "
                  f"{p['msec_per_s'] / p['floor_per_s']:.2f}")
    out["ratio"] = round(min(p["msec_per_s"] / p["iproute2_per_s"] for p in done), 3)
    out["floor_ratio"] = round(min(p["msec_per_s"] / p["floor_per_s"] for p in done), 3)
    out["msec_includes"] = ("value construction (Aead/State/Selector/Template/Policy), Batch "
                            "validation and encoding, send and per-message ACK checks")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/bench xfrm-install", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="group SAs (default 10000)")
    ap.add_argument("--repeat", type=int, default=5, help="host runs per way, best kept")
    ap.add_argument("--lab-repeat", type=int, default=2, help="lab runs per way, best kept")
    ap.add_argument("--only", choices=("host", "lab"), help="run one part only")
    ap.add_argument("--lab-part", action="store_true",
                    help="(inside the lab) states + policies in this kernel; print the part")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("xfrm-install needs root (network namespaces, netlink)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    remove_stale_namespaces()
    if args.lab_part:
        print(json.dumps(measure(args.count, True, max(1, args.lab_repeat), "lab")))
        return 0
    parts: dict[str, dict | None] = {"lab": None, "host_policies": None}
    if args.only != "lab":
        parts["host_policies"] = measure(args.count, False, max(1, args.repeat), "host")
    if args.only != "host":
        parts["lab"] = lab_part(args.count, max(1, args.lab_repeat))
    print(json.dumps(summarise(parts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
