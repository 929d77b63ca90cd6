"""The floods of ``tools/bench flood`` and of tests/host/test_flood_attacks.py, each run in its own
process by :class:`Flood` (``python -m tools.flood_attacks KIND PORT RATE SECONDS``, which prints
its counters as one line of JSON when it ends or gets SIGTERM).

Kinds (all traffic to loopback):

* ``mm1_spoofed``: Main Mode message 1s with an acceptable proposal from random spoofed sources
  in 127.16.0.0/12 (raw socket), ``--rate`` per second: half-open state and message 2s.
* ``mm1_spoofed_bad``: the same with an unacceptable proposal, spoofed from a pool of victim
  addresses this process listens on: counts the notifications the key server reflects.
* ``mm3_one_source``: from the single, real address 127.0.0.2, message 1 then, on each message 2,
  a message 3 with valid cookies and a valid KE, never a message 5, ``--rate`` message 1s per
  second: Diffie-Hellman work and the exchanges waiting for message 5.  Counts the message 4s
  (each one DH the key server did).
* ``sa_exhaustion``: an authenticated member (its own PSK, from its own address) completing phase
  1 over and over (no INITIAL-CONTACT), 16 exchanges at a time, and never using the SAs; an
  exchange the key server does not answer within 0.1 s is abandoned for a new one.  Counts the
  SAs it got, the Deletes the key server sent (oldest replaced, or the new one over the
  identity's rate) and the exchanges it abandoned.
* ``idle``: sends nothing (the benchmark's control run).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

from tools.benchmarks.registration import HOST, PSK, ROOT, member_address

ATTACKER = "127.0.0.2"
MAX_MEMBERS = 4000  # PSK entries gm0..gm3999 of the benchmark's key server (each from its own address)
SA_ATTACKER_INDEX = MAX_MEMBERS - 1  # the last one is the authenticated SA attacker
KINDS = ("mm1_spoofed", "mm1_spoofed_bad", "mm3_one_source", "sa_exhaustion")
CONTROL = "idle"
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
    """Call ``send()`` ``rate`` times a second for ``seconds`` (in 5 ms batches).  No catch-up
    after a pause (the benchmark stops the flood process with SIGSTOP between its
    measurements): at most 20 ms worth per batch."""
    t0 = time.monotonic()
    done = 0
    cap = max(1, int(rate * 0.02))
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            return
        due = int((now - t0) * rate) - done
        if due > cap:
            done += due - cap
            due = cap
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
                              patience: float | None = None, stats: dict | None = None) -> dict:
    """An authenticated member (its own PSK identity and address) opening phase 1 SAs one after
    another, ``concurrency`` at a time, for ``seconds`` (or until ``limit`` SAs); every SA is
    kept (its engine answers the key server's Deletes).  With ``patience``, an exchange not
    established after that many seconds is abandoned for a new one (the attacker does not wait
    for retransmissions when the key server stops answering it)."""
    from gkm.ike import Phase1Deleted, Phase1Established, Phase1Failed, State

    ks = (HOST, port)
    loop = asyncio.get_running_loop()
    engines: dict[bytes, object] = {}
    stats = {} if stats is None else stats
    stats.update({"established": 0, "failed": 0, "deleted_by_server": 0, "abandoned": 0})
    in_flight = 0
    started: dict[bytes, float] = {}

    def drain(e) -> None:
        nonlocal in_flight
        for d, _a in e.datagrams_to_send():
            transport.sendto(d)
        while (ev := e.next_event()) is not None:
            if isinstance(ev, Phase1Established):
                stats["established"] += 1
                started.pop(e.icookie, None)
                in_flight -= 1
                start()
            elif isinstance(ev, Phase1Failed):
                stats["failed"] += 1
                in_flight -= 1
                engines.pop(e.icookie, None)
                started.pop(e.icookie, None)
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
        started[e.icookie] = time.monotonic()
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
            if patience is not None:
                for c, t in list(started.items()):
                    if time.monotonic() - t > patience:
                        del started[c]
                        engines.pop(c, None)
                        stats["abandoned"] += 1
                        in_flight -= 1
                        start()
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
        return asyncio.run(flood_sa_exhaustion(port, seconds, concurrency=16, patience=0.1, stats=stats))
    if kind == CONTROL:
        time.sleep(seconds)
        return stats
    raise SystemExit(f"unknown flood kind {kind!r}")


class Flood:
    """One flood in its own process (``--attack``), so it does not share this one's GIL."""

    def __init__(self, kind: str, port: int, rate: float, seconds: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.flood_attacks", kind, str(port),
                                      str(rate), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)

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

    def pause(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str]) -> int:
    kind, port, rate, seconds = argv
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    result: dict = {}
    try:
        run_flood(kind, int(port), float(rate), float(seconds), result)
    except KeyboardInterrupt:
        pass
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
