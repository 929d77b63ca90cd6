"""Legitimate GDOI registrations per second against a real ``msecd`` key server, with and without
each kind of flood.

Run as ``tools/bench flood [--members N] [--rate R] [--period S] [--kinds K,...] [--no-control]``.

**Key server**: one real ``msecd`` process per flood kind (the PSK configuration of
``tools/bench registration``: 127.0.0.1, a free high port, one PSK per member found by the
member's own loopback address), so what one flood leaves behind does not weigh on the next.

**Legitimate load**: sans-I/O :class:`gkm.gdoi.MemberRegistration` engines in this process,
each a new member from its own loopback address, ``--window`` (16) in flight.  On each daemon:
100 warm-up members, 300 *clean* ones (before any flood ran: the ``clean`` rate), then the
flood process starts, ``--warmup`` s of flood alone fill whatever it fills, and ``--members``
(3,000) more register while the flood is **switched on and off every ``--period`` (0.25) s**
(SIGCONT / SIGSTOP of the flood process; its pacing does not catch up after a pause).

**Why switched**: the host has 2 cores shared with other work, and its load changes on a scale
of seconds; two separate runs of 0.2-0.3 s (with, then without) differed by up to 2x with no
flood at all.  Interleaving with and without every 0.25 s puts both under the same host load,
and 3,000 members give each phase about 10 s of time and 1,500 registrations.  A registration
counts for the phase in which it finished, unless it finished within ``--guard`` (0.05) s of a
switch (it did part of its work in the other phase); rate = counted registrations / the phases'
time minus the guards.  What the flood leaves in the key server (half-open records, held
addresses, SAs) is there in both phases: the switched measurement is the flood's running cost;
what its state costs shows as failures (both phases) and in ``clean`` against ``without``.  The
control run (``idle``, first; ``--no-control`` skips it) switches a flood process that sends
nothing: its ratio is the measurement's own error (it should be 1.0).

**Per kind**: ``ratio`` = registrations/s with / without; ``registered_share_with`` = the
share of the members that finished in flood phases that registered; ``time_ratio`` = median
registration time with / without (registrations started and finished inside one phase
window); ``ks_capacity_ratio`` = the key server's CPU per registration without / with (its
CPU in each phase, from ``/proc/PID/task/*/schedstat``, over the registrations finished in that
phase): what the ratio would be on a host where the key server has its own core and the
attacker is elsewhere.  On this host the flood process, the members and the key server share
the cores: the flood process's CPU is part of what slows the members (printed per kind).

**Flood kinds**: see :mod:`tools.flood_attacks` (``mm1_spoofed``, ``mm1_spoofed_bad``,
``mm3_one_source``, ``sa_exhaustion``; each in its own process, all traffic to loopback).

Last line: ``{"name": "flood", "kinds": {KIND: {"with": r, "without": r, "ratio": r/r0, ...}},
"control": {...}, "worst": KIND, "ratio": ...}``, ``ratio`` the worst kind's.  Goal >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tools.benchmarks.registration import HOST, KeyServer, _free_port, member_address, write_config, write_pki
from tools.flood_attacks import CONTROL, KINDS, MAX_MEMBERS, SA_ATTACKER_INDEX, Flood

WARM_MEMBERS = 100  # registered first on each daemon (not counted)
CLEAN_MEMBERS = 300  # then measured before any flood ran ("clean")


# ------------------------------------------------------------------------------ legitimate members


async def legit(port: int, first: int, n: int, window: int, timeout: float) -> dict:
    """``n`` new PSK members (identities ``gm<first>``...) from 127.0.0.1, ``window`` at a time;
    those not finished within ``timeout`` seconds count as failed."""
    from tools.benchmarks.registration import _Run

    loop = asyncio.get_running_loop()
    run = _Run("psk", first, n, (HOST, port), None)
    t0 = time.perf_counter()
    transports = run.transports
    for _ in range(min(window, n)):
        await run.open_slot()  # each member from its own address (its PSK's)
    try:
        await asyncio.wait_for(run.all_done.wait(), timeout=timeout)
    except asyncio.TimeoutError:
        pass
    wall = time.perf_counter() - t0
    for t in transports:
        t.close()
    return {"ok": run.ok, "failed": n - run.ok, "wall_s": wall, "per_s": run.ok / wall if wall > 0 else 0.0,
            "failures": sorted(set(run.failed))[:3]}


class _Timed:
    """Start and end times (monotonic) and outcome of every member of a :class:`_Run`."""

    @staticmethod
    def run(first: int, n: int, ks) -> "object":
        from tools.benchmarks.registration import _Run, _Slot

        class TimedSlot(_Slot):
            def transmit(self) -> None:
                e, ok0 = self.engine, self.run.ok
                super().transmit()
                if e is not None and self.engine is None:  # it finished in there
                    self.run.done.append((self.run.t_start.pop(id(e)), time.monotonic(), self.run.ok > ok0))

        class TimedRun(_Run):
            def __init__(self) -> None:
                super().__init__("psk", first, n, ks, None)
                self.t_start: dict[int, float] = {}
                self.done: list[tuple[float, float, bool]] = []

            def new_member(self):
                e = super().new_member()
                if e is not None:
                    self.t_start[id(e)] = time.monotonic()
                return e

            async def open_slot(self) -> None:
                index = self.first + self.started
                engine = self.new_member()
                if engine is None:
                    return
                loop = asyncio.get_running_loop()
                t, _p = await loop.create_datagram_endpoint(lambda: TimedSlot(self, engine),
                                                            local_addr=(member_address(index), 0), remote_addr=self.ks)
                self.transports.append(t)

        return TimedRun()


async def legit_chopped(port: int, first: int, n: int, window: int, timeout: float, fl: "Flood", ks_pid: int,
                        period: float) -> tuple[list, list]:
    """``n`` new members, ``window`` at a time, while the flood is switched on and off every
    ``period`` s (SIGCONT / SIGSTOP; it runs when this starts).  Returns the members' (start,
    end, registered) and the intervals (start, end, flood on, key server CPU s, flood CPU s)."""
    run = _Timed.run(first, n, (HOST, port))
    intervals: list[tuple[float, float, bool, float, float]] = []

    async def chopper() -> None:
        on = True
        t, c, fc = time.monotonic(), cpu_ns(ks_pid), cpu_ns(fl.proc.pid)
        try:
            while True:
                await asyncio.sleep(period)
                (fl.pause if on else fl.resume)()
                t2, c2, fc2 = time.monotonic(), cpu_ns(ks_pid), cpu_ns(fl.proc.pid)
                intervals.append((t, t2, on, (c2 - c) / 1e9, (fc2 - fc) / 1e9))
                on, t, c, fc = not on, t2, c2, fc2
        except asyncio.CancelledError:
            t2, c2, fc2 = time.monotonic(), cpu_ns(ks_pid), cpu_ns(fl.proc.pid)
            intervals.append((t, t2, on, (c2 - c) / 1e9, (fc2 - fc) / 1e9))
            raise

    task = asyncio.get_running_loop().create_task(chopper())
    for _ in range(min(window, n)):
        await run.open_slot()
    try:
        await asyncio.wait_for(run.all_done.wait(), timeout=timeout)
    except asyncio.TimeoutError:
        pass
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    fl.resume()
    for tr in run.transports:
        tr.close()
    now = time.monotonic()
    members = run.done + [(t0, now, False) for t0 in run.t_start.values()]  # unfinished: failed at the end
    return members, intervals


def analyse(members: list, intervals: list, guard: float) -> dict:
    """Per phase (flood on / off): registrations per second of interval time, counting those that
    finished in an interval after its first ``guard`` s (a registration finishing just after a
    switch did most of its work in the other phase); median time of the registrations that
    started and finished inside one such window; registered share; key server CPU per
    registration (all of each interval)."""
    import bisect

    ends = [iv[1] for iv in intervals]
    acc = {ph: {"n": 0, "t": 0.0, "lat": [], "ok": 0, "failed": 0, "cpu": 0.0, "all": 0, "flood_cpu": 0.0}
           for ph in (True, False)}
    for t0, t1, on, cpu, fcpu in intervals:
        a = acc[on]
        a["t"] += max(0.0, t1 - t0 - guard)
        a["cpu"] += cpu
        a["flood_cpu"] += fcpu
        a["wall"] = a.get("wall", 0.0) + (t1 - t0)
    for s0, s1, ok in members:
        i = bisect.bisect_left(ends, s1)
        if i >= len(intervals):
            i = len(intervals) - 1
        t0, t1, on, _c, _f = intervals[i]
        a = acc[on]
        a["ok" if ok else "failed"] += 1
        if ok:
            a["all"] += 1
        if ok and s1 >= t0 + guard:
            a["n"] += 1
            if s0 >= t0 + guard:
                a["lat"].append(s1 - s0)
    # per cycle (one interval with the flood and the next without): the spread of the ratio
    cycles, rates = [], []
    for t0, t1, on, _c, _f in intervals:
        k = sum(1 for s0, s1, ok in members if ok and t0 + guard <= s1 < t1)
        rates.append((on, k / (t1 - t0 - guard) if t1 - t0 > guard else 0.0, t1 - t0))
    for (on1, r1, d1), (on2, r2, d2) in zip(rates[::2], rates[1::2]):
        if on1 and not on2 and r2 > 0 and min(d1, d2) > 2 * guard:  # not the last, cut short
            cycles.append(r1 / r2)
    cycles.sort()
    out = {"cycles": len(cycles), "cycle_ratio_quartiles": [cycles[len(cycles) // 4], _median(cycles), cycles[(3 * len(cycles)) // 4]]
           if cycles else []}
    for on, a in acc.items():
        ph = "with" if on else "without"
        out[ph] = {"per_s": a["n"] / a["t"] if a["t"] > 0 else 0.0, "registered": a["ok"], "failed": a["failed"],
                   "median_time_ms": 1000 * _median(a["lat"]), "timed": len(a["lat"]),
                   "ks_cpu_ms_per_member": 1000 * a["cpu"] / a["all"] if a["all"] else 0.0,
                   "ks_cpu_share": a["cpu"] / a.get("wall", 1.0), "flood_cpu_share": a["flood_cpu"] / a.get("wall", 1.0)}
    return out


def start_keyserver(workdir: Path, name: str) -> tuple[KeyServer, int]:
    port = _free_port()
    cfg = write_config(workdir, "psk", port, workdir / f"{name}-state", name=name, members=MAX_MEMBERS)
    return KeyServer(cfg, workdir / f"msecd-{name}.log"), port


# ------------------------------------------------------------------------------ the benchmark


def cpu_ns(pid: int) -> int:
    """CPU time of process ``pid`` (all its threads), nanoseconds, from ``/proc/PID/task/*/schedstat``
    (``/proc/PID/stat`` counts in 10 ms ticks: too coarse for 0.2 s measurements)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    k = len(xs)
    return (xs[k // 2] + xs[(k - 1) // 2]) / 2 if k else 0.0


def run_kind(kind: str, workdir: Path, args) -> dict:
    """One fresh daemon for ``kind``: warm-up members, a *clean* batch (no flood has run yet),
    the flood process, ``--warmup`` s of flood alone, then ``--members`` members while the
    flood is switched on and off every ``--period`` s (see the module docstring)."""
    ks, port = start_keyserver(workdir, kind)
    fl = None
    try:
        asyncio.run(legit(port, 0, WARM_MEMBERS, args.window, args.seconds))
        clean = asyncio.run(legit(port, WARM_MEMBERS, CLEAN_MEMBERS, args.window, args.seconds))
        fl = Flood(kind, port, args.rate, 3600)
        time.sleep(args.warmup)
        me0 = time.process_time()
        members, intervals = asyncio.run(legit_chopped(port, WARM_MEMBERS + CLEAN_MEMBERS, args.members, args.window,
                                                       args.seconds, fl, ks.proc.pid, args.period))
        me1 = time.process_time()
        fl.stop()
        try:
            fstats = fl.result(30)
        except SystemExit as e:
            fstats = {"error": str(e)[:300]}
        log_bytes = len(ks.log().encode())
    finally:
        if fl is not None:
            fl.stop()
        ks.stop()
    r = analyse(members, intervals, args.guard)
    w, wo = r["with"], r["without"]
    members_cpu = me1 - me0
    started_with = w["registered"] + w["failed"]
    return {"ratio": round(w["per_s"] / wo["per_s"], 3) if wo["per_s"] > 0 else 0.0,
            "with": round(w["per_s"], 1), "without": round(wo["per_s"], 1), "clean": round(clean["per_s"], 1),
            "members": args.members, "intervals": len(intervals), "cycles": r["cycles"],
            "cycle_ratio_quartiles": [round(x, 3) for x in r["cycle_ratio_quartiles"]],
            "members_cpu_ms_per_member": round(1000 * members_cpu / args.members, 3),
            "registered_share_with": round(w["registered"] / started_with, 4) if started_with else 0.0,
            "failed_with": w["failed"], "failed_without": wo["failed"], "clean_failed": clean["failed"],
            "time_ratio": round(w["median_time_ms"] / wo["median_time_ms"], 3) if wo["median_time_ms"] else 0.0,
            "median_time_ms_with": round(w["median_time_ms"], 1), "median_time_ms_without": round(wo["median_time_ms"], 1),
            "ks_capacity_ratio": round(wo["ks_cpu_ms_per_member"] / w["ks_cpu_ms_per_member"], 3) if w["ks_cpu_ms_per_member"] else 0.0,
            "ks_cpu_ms_per_member_with": round(w["ks_cpu_ms_per_member"], 3),
            "ks_cpu_ms_per_member_without": round(wo["ks_cpu_ms_per_member"], 3),
            "ks_cpu_share_with": round(w["ks_cpu_share"], 3), "ks_cpu_share_without": round(wo["ks_cpu_share"], 3),
            "flood_cpu_share": round(w["flood_cpu_share"], 3),
            "flood": fstats, "ks_log_bytes": log_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="deadline for each kind's members (default 60); those not registered by then count as failed")
    ap.add_argument("--rate", type=float, default=1000.0, help="flood datagrams (message 1s) per second (default 1000)")
    ap.add_argument("--members", type=int, default=3000, help="legitimate members per kind (default 3000)")
    ap.add_argument("--period", type=float, default=0.25, help="seconds between switching the flood on and off (default 0.25)")
    ap.add_argument("--guard", type=float, default=0.05,
                    help="seconds after each switch whose registrations are not counted (default 0.05)")
    ap.add_argument("--window", type=int, default=16, help="legitimate registrations in flight (default 16)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of flood before the members start (default 2)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--no-control", action="store_true",
                    help=f"skip the control run ({CONTROL!r}: a flood process that sends nothing, same protocol)")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    if not 1 <= args.members <= SA_ATTACKER_INDEX - WARM_MEMBERS - CLEAN_MEMBERS or args.guard >= args.period:
        ap.error(f"--members must be 1..{SA_ATTACKER_INDEX - WARM_MEMBERS - CLEAN_MEMBERS}, --guard below --period")
    results, control = {}, None
    with tempfile.TemporaryDirectory(prefix="msec-bench-flood-") as d:
        workdir = Path(d)
        os.chmod(workdir, 0o700)
        write_pki(workdir)
        for k in ([] if args.no_control else [CONTROL]) + kinds:
            r = run_kind(k, workdir, args)
            if k == CONTROL:
                control = r
            else:
                results[k] = r
            print(f"{k:16s} ratio {r['ratio']} (per cycle: quartiles {r['cycle_ratio_quartiles']} of {r['cycles']}): "
                  f"{r['with']}/s with the flood, {r['without']}/s without "
                  f"({r['clean']}/s before any flood); registered {100 * r['registered_share_with']:.1f}% with it "
                  f"(failed {r['failed_with']} with, {r['failed_without']} without); median registration "
                  f"{r['median_time_ms_with']} ms with, {r['median_time_ms_without']} ms without ({r['time_ratio']}x); "
                  f"key server CPU per member {r['ks_cpu_ms_per_member_with']} / {r['ks_cpu_ms_per_member_without']} ms "
                  f"(capacity ratio {r['ks_capacity_ratio']}), busy {r['ks_cpu_share_with']} / {r['ks_cpu_share_without']}; "
                  f"members' process {r['members_cpu_ms_per_member']} ms CPU per member; "
                  f"flood process {r['flood_cpu_share']} CPU; flood {r['flood']}; key server log {r['ks_log_bytes']} bytes",
                  flush=True)
    worst = min(results, key=lambda k: results[k]["ratio"]) if results else None
    summary = {"name": "flood", "rate": args.rate, "members": args.members, "period": args.period, "window": args.window,
               "kinds": results, "control": control,
               "worst": worst, "ratio": results[worst]["ratio"] if worst else 0.0}
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
