"""Legitimate GDOI registrations per second against a real ``msecd`` key server, with and without
each kind of flood.

Run as ``tools/bench flood [--seconds S] [--rate R] [--members N] [--kinds K,...]``.

**Key server**: one real ``msecd`` process per flood kind (the PSK configuration of
``tools/bench registration``: 127.0.0.1, a free high port, one PSK per member found by the
member's own loopback address), so what one flood leaves behind does not weigh on the next.

**Legitimate load**: ``--members`` sans-I/O :class:`gkm.gdoi.MemberRegistration` engines from
their own loopback addresses in this process, ``--window`` in flight, each a new member.  Measured twice on each
daemon: first without any flood (*without*), then while the flood runs, after ``--warmup``
seconds of flood alone to fill whatever it fills (*with*).  Rate = registered / wall time; a
member that does not finish within ``--seconds`` counts as not registered.

**Flood kinds** (each in its own process, all traffic to loopback):

* ``mm1_spoofed``: Main Mode message 1s with an acceptable proposal from random spoofed sources
  in 127.16.0.0/12 (raw socket), ``--rate`` per second: half-open state and message 2s.
* ``mm1_spoofed_bad``: the same with an unacceptable proposal, spoofed from a pool of victim
  addresses this process listens on: counts the notifications the key server reflects.
* ``mm3_one_source``: from the single, real address 127.0.0.2, message 1 then, on each message 2,
  a message 3 with valid cookies and a valid KE, never a message 5, ``--rate`` message 1s per
  second: Diffie-Hellman work and the exchanges waiting for message 5.  Counts the message 4s
  (each one DH the key server did).
* ``sa_exhaustion``: an authenticated member (its own PSK, from its own address) completing phase
  1 over and over (no INITIAL-CONTACT) and never using the SAs.  Counts the SAs it got and the
  Deletes the key server sent when it replaced the oldest.

Last line: ``{"name": "flood", "kinds": {KIND: {"with": r, "without": r, "ratio": r/r0, ...}},
"worst": KIND, "ratio": ...}``, ``ratio`` the worst kind's.  Goal >= 0.9.  On a small host the
flood process, the members and the key server share the cores: the flood's own CPU is part of
what slows the members (printed per kind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.benchmarks.registration import HOST, PSK, ROOT, KeyServer, _free_port, member_address, write_config, write_pki

ATTACKER = "127.0.0.2"
MAX_MEMBERS = 2000  # PSK entries gm0..gm1999 (each from its own address); the last is the SA attacker
SA_ATTACKER_INDEX = MAX_MEMBERS - 1
KINDS = ("mm1_spoofed", "mm1_spoofed_bad", "mm3_one_source", "sa_exhaustion")
EXCH_MAIN, EXCH_INFO = 2, 5


# ------------------------------------------------------------------------------ message templates


def _proposal(group: int = 19):
    from gkm.ike import AuthMethod, HashAlg, Proposal

    return (Proposal(AuthMethod.PRE_SHARED_KEY, group, HashAlg.SHA2_256),)


def _initiator(group: int = 19, identity: str = "gm", initial_contact: bool = True, ks=(HOST, 848)):
    from gkm.ike import Identity, MainMode, Phase1Config, PskStore, Role

    cfg = Phase1Config(_proposal(group), local_id=Identity.key_id(identity.encode()),
                       psk=PskStore({ks[0]: PSK.encode()}), initial_contact=initial_contact,
                       max_retransmits=2)
    return MainMode(cfg, Role.INITIATOR, ks)


def message1(group: int = 19) -> bytes:
    """A Main Mode message 1 (cookies are rewritten per datagram: the body has none)."""
    ini = _initiator(group)
    ini.start(time.time())
    (data, _a), = ini.datagrams_to_send()
    return data


def _with_cookies(template: bytes, icookie: bytes, rcookie: bytes = bytes(8)) -> bytes:
    return icookie + rcookie + template[16:]


# ------------------------------------------------------------------------------ floods


class _Counting(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data, addr) -> None:
        self.on_datagram(data, addr)


async def _paced(rate: float, seconds: float, send) -> None:
    """Call ``send()`` ``rate`` times a second for ``seconds`` (in 5 ms batches)."""
    t0 = time.monotonic()
    done = 0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            return
        due = int((now - t0) * rate) - done
        for _ in range(max(0, due)):
            send()
        done += max(0, due)
        await asyncio.sleep(0.005)


async def flood_mm3(port: int, rate: float, seconds: float, src: str = ATTACKER, stats: dict | None = None) -> dict:
    """Message 1 at ``rate``/s from ``src``; each message 2 answered by a message 3 (valid cookies,
    one valid KE reused), never a message 5."""
    ks = (HOST, port)
    ini = _initiator(ks=ks)
    ini.start(time.time())
    (mm1, _a), = ini.datagrams_to_send()
    stats = {} if stats is None else stats
    stats.update({"mm1_sent": 0, "mm2_received": 0, "mm3_sent": 0, "mm4_received": 0, "notifications": 0})
    loop = asyncio.get_running_loop()
    first_mm2: asyncio.Future = loop.create_future()
    template: list[bytes] = []
    mine: set[bytes] = set()

    def on_datagram(data: bytes, _addr) -> None:
        if len(data) < 28:
            return
        exch, np_ = data[18], data[16]
        if exch == EXCH_INFO:
            stats["notifications"] += 1
        elif exch == EXCH_MAIN and np_ == 1:  # SA: message 2
            stats["mm2_received"] += 1
            if not template:
                if not first_mm2.done():
                    first_mm2.set_result(data)
                return
            if data[:8] in mine:
                mine.discard(data[:8])
                transport.sendto(_with_cookies(template[0], data[:8], data[8:16]))
                stats["mm3_sent"] += 1
        elif exch == EXCH_MAIN and np_ == 4:  # KE: message 4, the key server did a DH
            stats["mm4_received"] += 1

    transport, _p = await loop.create_datagram_endpoint(lambda: _Counting(on_datagram), local_addr=(src, 0),
                                                        remote_addr=ks)
    try:
        transport.sendto(mm1)
        mm2 = await asyncio.wait_for(first_mm2, 10)
        ini.receive_datagram(mm2, ks, time.time())
        (mm3, _a), = ini.datagrams_to_send()
        template.append(mm3)

        def send() -> None:
            c = os.urandom(8)
            mine.add(c)
            if len(mine) > 100000:
                mine.clear()
            transport.sendto(_with_cookies(mm1, c))
            stats["mm1_sent"] += 1

        await _paced(rate, seconds, send)
        await asyncio.sleep(0.2)
    finally:
        transport.close()
    return stats


def _udp_ipv4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 + UDP datagram for a raw socket (the kernel fills the IP checksum; the UDP
    checksum 0 means none, allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


async def flood_mm1_spoofed(port: int, rate: float, seconds: float, *, group: int = 19,
                            victims: int = 0, stats: dict | None = None) -> dict:
    """Message 1s from spoofed sources: random ones in 127.16.0.0/12, or (``victims`` > 0) a
    pool of victim addresses 127.0.9.1... port 5000 on which the notifications reflected to them
    are counted."""
    template = message1(group)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setblocking(False)
    stats = {} if stats is None else stats
    stats.update({"mm1_sent": 0, "reflected": 0, "reflected_bytes": 0, "send_errors": 0})
    loop = asyncio.get_running_loop()
    transports = []
    pool = [f"127.0.9.{i}" for i in range(1, victims + 1)]

    def on_datagram(data: bytes, _addr) -> None:
        stats["reflected"] += 1
        stats["reflected_bytes"] += len(data)

    for v in pool:
        t, _p = await loop.create_datagram_endpoint(lambda: _Counting(on_datagram), local_addr=(v, 5000))
        transports.append(t)
    rnd = random.Random()

    def send() -> None:
        if pool:
            src, sport = rnd.choice(pool), 5000
        else:
            src = f"127.{rnd.randint(16, 31)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
            sport = rnd.randint(1024, 65535)
        pkt = _udp_ipv4(src, sport, HOST, port, _with_cookies(template, os.urandom(8)))
        try:
            raw.sendto(pkt, (HOST, 0))
            stats["mm1_sent"] += 1
        except OSError:
            stats["send_errors"] += 1

    try:
        await _paced(rate, seconds, send)
        await asyncio.sleep(0.3)
    finally:
        raw.close()
        for t in transports:
            t.close()
    return stats


async def flood_sa_exhaustion(port: int, seconds: float, *, concurrency: int = 8, limit: int = 0,
                              stats: dict | None = None) -> dict:
    """An authenticated member (PSK identity ``gm``) opening phase 1 SAs one after another,
    ``concurrency`` at a time, for ``seconds`` (or until ``limit`` SAs); every SA is kept (its
    engine answers the key server's Deletes)."""
    from gkm.ike import Phase1Deleted, Phase1Established, Phase1Failed, State

    ks = (HOST, port)
    loop = asyncio.get_running_loop()
    engines: dict[bytes, object] = {}
    stats = {} if stats is None else stats
    stats.update({"established": 0, "failed": 0, "deleted_by_server": 0})
    in_flight = 0

    def drain(e) -> None:
        nonlocal in_flight
        for d, _a in e.datagrams_to_send():
            transport.sendto(d)
        while (ev := e.next_event()) is not None:
            if isinstance(ev, Phase1Established):
                stats["established"] += 1
                in_flight -= 1
                start()
            elif isinstance(ev, Phase1Failed):
                stats["failed"] += 1
                in_flight -= 1
                engines.pop(e.icookie, None)
                start()
            elif isinstance(ev, Phase1Deleted):
                stats["deleted_by_server"] += 1
                engines.pop(e.icookie, None)

    def start() -> None:
        nonlocal in_flight
        if time.monotonic() >= end or (limit and stats["established"] + in_flight >= limit):
            return
        e = _initiator(identity=f"gm{SA_ATTACKER_INDEX}", initial_contact=False, ks=ks)
        e.start(time.time())
        engines[e.icookie] = e
        in_flight += 1
        drain(e)

    def on_datagram(data: bytes, _addr) -> None:
        e = engines.get(data[:8])
        if e is not None:
            e.receive_datagram(data, ks, time.time())
            drain(e)

    end = time.monotonic() + seconds
    transport, _p = await loop.create_datagram_endpoint(lambda: _Counting(on_datagram),
                                                        local_addr=(member_address(SA_ATTACKER_INDEX), 0), remote_addr=ks)
    try:
        for _ in range(concurrency):
            start()
        while time.monotonic() < end and not (limit and stats["established"] >= limit):
            await asyncio.sleep(0.05)
            now = time.time()
            for e in list(engines.values()):
                if e.state not in (State.ESTABLISHED,):
                    e.handle_timer(now)
                    drain(e)
        await asyncio.sleep(0.5)  # the last Deletes
    finally:
        transport.close()
    return stats


def run_flood(kind: str, port: int, rate: float, seconds: float, stats: dict) -> dict:
    """Run one flood; ``stats`` is filled as it goes (so an interrupted flood still reports)."""
    if kind == "mm1_spoofed":
        return asyncio.run(flood_mm1_spoofed(port, rate, seconds, stats=stats))
    if kind == "mm1_spoofed_bad":
        return asyncio.run(flood_mm1_spoofed(port, rate, seconds, group=14, victims=50, stats=stats))
    if kind == "mm3_one_source":
        return asyncio.run(flood_mm3(port, rate, seconds, stats=stats))
    if kind == "sa_exhaustion":
        return asyncio.run(flood_sa_exhaustion(port, seconds, stats=stats))
    raise SystemExit(f"unknown flood kind {kind!r}")


class Flood:
    """One flood in its own process (``--attack``), so it does not share this one's GIL."""

    def __init__(self, kind: str, port: int, rate: float, seconds: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.benchmarks.flood", "--attack", kind, str(port),
                                      str(rate), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.t0 = time.monotonic()

    def result(self, timeout: float = 120.0) -> dict:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            raise SystemExit(f"flood process failed (exit {self.proc.returncode}): {out[-2000:]}")
        return json.loads(lines[-1])

    def cpu_s(self) -> float:
        from tools.benchmarks.registration import cpu_seconds

        try:
            u, s = cpu_seconds(self.proc.pid)
            return u + s
        except OSError:
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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


def start_keyserver(workdir: Path, name: str) -> tuple[KeyServer, int]:
    port = _free_port()
    cfg = write_config(workdir, "psk", port, workdir / f"{name}-state", name=name, members=MAX_MEMBERS)
    return KeyServer(cfg, workdir / f"msecd-{name}.log"), port


# ------------------------------------------------------------------------------ the benchmark


def run_kind(kind: str, workdir: Path, args) -> dict:
    ks, port = start_keyserver(workdir, kind)
    try:
        asyncio.run(legit(port, 2 * args.members, args.window, args.window, args.seconds))  # warm the daemon up
        without = asyncio.run(legit(port, 0, args.members, args.window, args.seconds))
        flood_s = args.warmup + args.seconds + 5
        fl = Flood(kind, port, args.rate, flood_s)
        time.sleep(args.warmup)
        cpu0, ks0 = fl.cpu_s(), sum(ks.cpu())
        with_ = asyncio.run(legit(port, args.members, args.members, args.window, args.seconds))
        cpu1, ks1 = fl.cpu_s(), sum(ks.cpu())
        fl.stop()
        try:
            fstats = fl.result(30)
        except SystemExit as e:
            fstats = {"error": str(e)[:300]}
        log_bytes = len(ks.log().encode())
    finally:
        ks.stop()
    ratio = with_["per_s"] / without["per_s"] if without["per_s"] > 0 else 0.0
    return {"with": round(with_["per_s"], 1), "without": round(without["per_s"], 1), "ratio": round(ratio, 3),
            "registered_with": with_["ok"], "registered_without": without["ok"], "members": args.members,
            "time_with_s": round(with_["wall_s"], 2), "time_without_s": round(without["wall_s"], 2),
            "flood": fstats, "flood_cpu_s": round(cpu1 - cpu0, 2), "ks_cpu_s_during": round(ks1 - ks0, 2),
            "ks_log_bytes": log_bytes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="deadline for each batch of legitimate members (default 20)")
    ap.add_argument("--rate", type=float, default=1000.0, help="flood datagrams (message 1s) per second (default 1000)")
    ap.add_argument("--members", type=int, default=100, help="legitimate members per measurement (default 100)")
    ap.add_argument("--window", type=int, default=16, help="legitimate registrations in flight (default 16)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of flood before the members start (default 3)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--attack", nargs=4, metavar=("KIND", "PORT", "RATE", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attack:
        kind, port, rate, seconds = args.attack
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        result: dict = {}
        try:
            run_flood(kind, int(port), float(rate), float(seconds), result)
        except KeyboardInterrupt:
            pass
        print(json.dumps(result), flush=True)
        return 0
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="msec-bench-flood-") as d:
        workdir = Path(d)
        os.chmod(workdir, 0o700)
        write_pki(workdir)
        for k in kinds:
            r = results[k] = run_kind(k, workdir, args)
            print(f"{k:16s} {r['registered_with']}/{r['members']} registered in {r['time_with_s']} s with the flood "
                  f"({r['with']}/s), {r['registered_without']}/{r['members']} in {r['time_without_s']} s without "
                  f"({r['without']}/s): ratio {r['ratio']}; flood {r['flood']}, flood CPU {r['flood_cpu_s']} s, "
                  f"key server CPU {r['ks_cpu_s_during']} s during; key server log {r['ks_log_bytes']} bytes", flush=True)
    worst = min(results, key=lambda k: results[k]["ratio"]) if results else None
    summary = {"name": "flood", "rate": args.rate, "members": args.members, "window": args.window,
               "kinds": {k: {key: v for key, v in r.items() if key != "flood"} | {"flood": r["flood"]}
                         for k, r in results.items()},
               "worst": worst, "ratio": results[worst]["ratio"] if worst else 0.0}
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
