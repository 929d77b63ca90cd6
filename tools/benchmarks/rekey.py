"""Unicast rekey with GROUPKEY-PUSH-ACKs (RFC 8263) to 10,000 members of a real ``msecd``
(``tools/bench rekey``).

**Key server**: one real ``msecd`` process (``python -m gkm.daemon --foreground``), set up as
``tools/bench registration``'s PSK key server (one PSK per member, members authorized by their
own loopback address; the fsync'ed SQLite store), its group in unicast delivery mode
(``rekey_delivery = "unicast"``, ACKs asked for in every SA KEK), datagrams paced at
``--rate`` per second (``rekey_unicast_rate``), an unacknowledged rekey sent again after
``--ack-timeout`` seconds (doubling, ``--retries`` times: ``rekey_ack_retries``; at 10% loss
four tries leave about one member in 10^4 without the rekey, six one in 10^6).

**Members** (the load): ``--generators`` processes, each registering its share of the
``--members`` over GDOI (sans-I/O :class:`gkm.gdoi.MemberRegistration` engines, ``--window``
in flight, each from the member's own address in 127.0.0.0/8) and then holding, per member,
the :class:`gkm.gdoi.push.PushReceiver` a member's daemon holds (made from its
``Registered``, as ``gkm.daemon.engines`` makes it) on a UDP socket bound to the member's
address and the group's rekey port: every PUSH is decrypted, its signature verified, its SEQ
checked, and the receiver's own ACK sent back.  With ``--loss`` the generators drop that share
of the PUSH datagrams before their receivers see them (independent random drops: loss of rekey
datagrams on the path to the members, as in the issue's loss test; a lost ACK costs the same
retransmission).

**Measured**, per loss rate (0 and ``--loss``, default 10%), one ``msecctl rekey`` each:

* ``acked_s``: from the ``msecctl rekey`` request until the last member's first ACK of the
  rekey that the key server took; every member's ACK is confirmed afterwards in the key
  server's own view (``msecctl members --json``: ``last_acked_seq`` of every member is the
  rekey's SEQ); the run fails otherwise;
* the key server's CPU (the scheduler's on-CPU time of all its threads, ``/proc/PID/task/*/schedstat``,
  nanoseconds: a 40-member run spends less than one 10 ms clock tick) over that interval, per member;
* datagrams: PUSHes received by the members (retransmissions included), ACKs sent, dropped.

**Crypto floor**, same run, in this process: what a key server cannot avoid per member for one
ACK'd unicast rekey: building and signing the rekey's PUSH once (shared by all members: its
time / N) plus verifying one member's ACK (decode, ack_key derivation, HMAC).  ``ratio`` =
members acknowledged per second of key server CPU / members per second at the floor (i.e.
floor CPU / actual CPU), at 0% loss.

Goals (the reliable-rekey issue): 10,000 members acknowledged in at most 5 s at 0% loss and
15 s at 10% loss.  Last line: ``{"name": "rekey", "members": ..., "acked_s_loss0": ...,
"acked_s_loss10": ..., "ks_cpu_ms_per_member": ..., "ratio": ...}`` plus the settings and
per-run details.

Run: ``tools/bench rekey [--members 10000] [--loss 0.1] [--rate 20000] [--ack-timeout 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.benchmarks.registration import (GID, HOST, PSK, ROOT, KeyServer, _free_port,
                                           member_address, write_config, write_pki)


def configure(workdir: Path, n: int, port: int, rekey_port: int, rate: int,
              ack_timeout: int, retries: int, state: Path) -> Path:
    """The registration benchmark's PSK key server, its group in unicast delivery mode."""
    cfg = write_config(workdir, "psk", port, state, name="rekey", members=n)
    text = cfg.read_text()
    assert text.rstrip().endswith('lifetime = "1d"'), "the KEK table must come last"
    text += (f'rekey_port = {rekey_port}\nrekey_delivery = "unicast"\n'
             f'rekey_unicast_rate = {rate}\nrekey_ack_timeout = "{ack_timeout}s"\n'
             f'rekey_ack_retries = {retries}\n')
    cfg.write_text(text)
    os.chmod(cfg, 0o600)
    return cfg


def _rekey_port() -> int:
    """A free UDP port below the ephemeral range: every member binds it on its own address
    right after closing its registration socket, whose ephemeral port on that address could be
    this very port (at 10,000 members, one run in three) while asyncio has not closed it yet."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in range(max(1024, low - 2000), low):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port below the ephemeral range")


# ------------------------------------------------------------------------------ generators


class _Registration(asyncio.DatagramProtocol):
    """One member's GROUPKEY-PULL on its own socket; the future gets Registered or the reason."""

    def __init__(self, engine, done: asyncio.Future, ks) -> None:
        self.engine, self.done, self.ks = engine, done, ks
        self.transport = None
        self.timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.engine.start(time.time())
        self.pump()

    def datagram_received(self, data, addr) -> None:
        self.engine.receive_datagram(data, self.ks, time.time())
        self.pump()

    def _fire(self) -> None:
        self.timer = None
        self.engine.handle_timer(time.time())
        self.pump()

    def pump(self) -> None:
        from gkm.gdoi import Registered, RegistrationFailed

        for data, _addr in self.engine.datagrams_to_send():
            self.transport.sendto(data)
        while (ev := self.engine.next_event()) is not None:
            if isinstance(ev, (Registered, RegistrationFailed)) and not self.done.done():
                self.done.set_result(ev)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        d = self.engine.get_timer()
        if d is not None and not self.done.done():
            self.timer = asyncio.get_running_loop().call_later(max(0.0, d - time.time()), self._fire)


class _Member(asyncio.DatagramProtocol):
    """A registered member's rekey socket and PUSH receiver."""

    def __init__(self, gen: "_Generator", index: int, receiver) -> None:
        self.gen, self.index, self.receiver = gen, index, receiver
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        from gkm.gdoi.push import Rekeyed

        g = self.gen
        g.pushes += 1
        g.last_push = time.time()
        g.first_push = g.first_push or g.last_push
        if g.rng.random() < g.loss:
            g.dropped += 1
            return
        r = self.receiver
        r.receive_datagram(data, addr, time.time())
        while (ev := r.next_event()) is not None:
            if isinstance(ev, Rekeyed) and ev.seq == g.target_seq:
                g.rekeyed.add(self.index)
        for ack, dest in r.datagrams_to_send():
            self.transport.sendto(ack, dest)
            g.acks += 1
            g.last_ack = time.time()
            if r.last_seq == g.target_seq:
                g.acked.add(self.index)


class _Generator:
    def __init__(self, port: int, rekey_port: int, first: int, n: int, window: int) -> None:
        self.ks = (HOST, port)
        self.rekey_port, self.first, self.n, self.window = rekey_port, first, n, window
        self.members: dict[int, _Member] = {}
        self.failed: list[str] = []
        self.rng = random.Random(first)
        self.loss = 0.0
        self.target_seq: int | None = None
        self.rekeyed: set[int] = set()  # applied the rekey
        self.acked: set[int] = set()  # sent an ACK of it that the path did not drop
        self.pushes = self.acks = self.dropped = 0
        self.last_ack: float | None = None
        self.first_push: float | None = None
        self.last_push: float | None = None

    async def register_all(self) -> None:
        sem = asyncio.Semaphore(self.window)
        await asyncio.gather(*(self._register(i, sem) for i in range(self.first, self.first + self.n)))

    async def _register(self, i: int, sem: asyncio.Semaphore) -> None:
        from gkm.gdoi import MemberRegistration, Registered
        from gkm.gdoi.push import PushReceiver
        from gkm.ike import AuthMethod, HashAlg, Identity, Phase1Config, Proposal, PskStore

        loop = asyncio.get_running_loop()
        async with sem:
            cfg = Phase1Config((Proposal(AuthMethod.PRE_SHARED_KEY, 19, HashAlg.SHA2_256),),
                               local_id=Identity.key_id(f"gm{i}".encode()),
                               psk=PskStore({HOST: PSK.encode()}))
            done = loop.create_future()
            t, _p = await loop.create_datagram_endpoint(
                lambda: _Registration(MemberRegistration(cfg, GID, self.ks), done, self.ks),
                local_addr=(member_address(i), 0), remote_addr=self.ks)
            try:
                ev = await asyncio.wait_for(done, 120)
            except asyncio.TimeoutError:
                ev = None
            finally:
                t.close()
        if not isinstance(ev, Registered):
            self.failed.append(getattr(ev, "reason", "no answer"))
            return
        r = PushReceiver(GID, ev.kek, ev.lkh, ev.seq or 0, teks=ev.teks)
        r.acknowledge_as(member_address(i))
        m = _Member(self, i, r)
        await loop.create_datagram_endpoint(lambda: m, local_addr=(member_address(i), self.rekey_port))
        self.members[i] = m

    def report(self) -> dict:
        return {"rekeyed": len(self.rekeyed), "acked": len(self.acked), "pushes": self.pushes, "acks": self.acks,
                "dropped": self.dropped, "last_ack": self.last_ack,
                "first_push": self.first_push, "last_push": self.last_push, "cpu_s": time.process_time()}


async def _generate(port: int, rekey_port: int, first: int, n: int, window: int) -> None:
    """Commands on stdin, one JSON line each on stdout: REGISTER; ROUND seq loss; REPORT; QUIT."""
    g = _Generator(port, rekey_port, first, n, window)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        match line:
            case ["REGISTER"]:
                await g.register_all()
                out = {"registered": len(g.members), "failed": len(g.failed),
                       "failures": sorted(set(g.failed))[:5]}
            case ["ROUND", seq, loss]:
                g.target_seq, g.loss = int(seq), float(loss)
                g.rekeyed.clear()
                g.acked.clear()
                g.pushes = g.acks = g.dropped = 0
                g.last_ack = g.first_push = g.last_push = None
                out = {"ok": True}
            case ["REPORT"]:
                out = g.report()
            case _:
                break
        print(json.dumps(out), flush=True)


def generator_main(argv: list[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per member
    port, rekey_port, first, n, window = map(int, argv)
    asyncio.run(_generate(port, rekey_port, first, n, window))


# ------------------------------------------------------------------------------ the run


class Generators:
    def __init__(self, k: int, n: int, window: int, port: int, rekey_port: int) -> None:
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        self.procs = []
        first = 0
        for share in shares:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tools.benchmarks.rekey", "--generate", str(port),
                 str(rekey_port), str(first), str(share), str(max(1, window // k))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
            first += share

    def ask(self, command: str) -> list[dict]:
        for p in self.procs:
            p.stdin.write(command + "\n")
            p.stdin.flush()
        out = []
        for p in self.procs:
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"rekey: a load generator died (exit {p.wait()})")
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def crypto_floor(workdir: Path, n: int, repeats: int = 2000) -> float:
    """CPU seconds per member of one ACK'd unicast rekey at its floor (module docstring)."""
    from cryptography.hazmat.primitives import serialization

    from gkm.gdoi.provider import KekKeys, TekKeys
    from gkm.gdoi.push import build_push
    from gkm.gdoi.push_ack import ack_key, build_push_ack, decode_push_ack, verify_push_ack
    from policy.config import load_config

    group = load_config(workdir / "rekey" / "msecd.toml").keyserver.groups[0]
    key = serialization.load_pem_private_key((workdir / "signing.pem").read_bytes(), None)
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    kek = KekKeys(os.urandom(16), group.kek.cipher.name, os.urandom(32), int(time.time()) + 86400, pub)
    teks = [TekKeys(tp.name, 0x1000 + i, tp.suite.name, os.urandom(tp.suite.enc_key_bytes),
                    os.urandom(tp.suite.integrity_key_bytes), int(time.time()) + 3600)
            for i, tp in enumerate(group.teks)]
    t0 = time.process_time()
    for _ in range(20):
        build_push(group, kek=kek, signing_key=key, seq=2, new_teks=teks, now=int(time.time()))
    push_s = (time.process_time() - t0) / 20
    base = kek.keymat[group.kek.cipher.block_bytes:]
    acks = [build_push_ack(spi=kek.spi, seq=2, address=member_address(i),
                           key=ack_key(base, kek.spi)) for i in range(repeats)]
    t0 = time.process_time()
    for data in acks:
        a = decode_push_ack(data)
        assert verify_push_ack(a, ack_key(base, a.spi))
    ack_s = (time.process_time() - t0) / repeats
    return push_s / n + ack_s


def one_rekey(ks: KeyServer, gens: Generators, n: int, loss: float, seq: int,
              timeout: float) -> dict:
    gens.ask(f"ROUND {seq} {loss}")
    cpu0 = ks.cpu_ns()
    from gkm.daemon.ctl import request

    t0 = time.time()  # the control request msecctl sends, without msecctl's start-up
    answer = request(str(ks.socket), {"cmd": "rekey", "id": GID})
    if not answer.get("ok"):
        raise SystemExit(f"rekey: msecctl rekey refused: {answer}")
    sent = answer.get("seqs") or answer.get("seq")
    end = t0 + timeout
    while True:
        time.sleep(0.1)
        reports = gens.ask("REPORT")
        if sum(r["acked"] for r in reports) >= n or time.time() > end:
            break
    time.sleep(0.3)  # the last ACKs reach the key server (no CPU spent waiting)
    cpu = (ks.cpu_ns() - cpu0) / 1e9
    members = ks.ctl("members", str(GID)).get("members", [])
    delivery = next((r.get("delivery") for r in ks.ctl("group", "show", str(GID)).get("roles", [])
                     if r.get("role") == "keyserver"), None) or {}
    acked = sum(1 for m in members if m.get("last_acked_seq") == seq)
    last = max((r["last_ack"] or t0) for r in reports)
    return {"loss": loss, "seq": seq, "msecctl_seqs": sent, "acked": acked,
            "acked_s": round(last - t0, 3), "ks_cpu_s": round(cpu, 6),
            "ks_cpu_ms_per_member": round(cpu * 1e3 / n, 4),
            "pushes_received": sum(r["pushes"] for r in reports),
            "acks_sent": sum(r["acks"] for r in reports),
            "dropped": sum(r["dropped"] for r in reports),
            "members_rekeyed": sum(r["rekeyed"] for r in reports),
            "first_push_s": round(min((r["first_push"] or t0) for r in reports) - t0, 3),
            "last_push_s": round(max((r["last_push"] or t0) for r in reports) - t0, 3),
            "key_server_delivery": delivery}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--generate"]:
        generator_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(prog="tools/bench rekey", description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=10000)
    ap.add_argument("--loss", type=float, default=0.10, help="drop rate of the lossy run")
    ap.add_argument("--rate", type=int, default=3000,
                    help="rekey_unicast_rate (datagrams/s; default: what two load generators keep up with on 2 cores)")
    ap.add_argument("--ack-timeout", type=int, default=1, help="rekey_ack_timeout (seconds)")
    ap.add_argument("--retries", type=int, default=5, help="rekey_ack_retries")
    ap.add_argument("--generators", type=int, default=2)
    ap.add_argument("--window", type=int, default=48, help="registrations in flight")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per rekey")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run the key server under cProfile, stats to this file (CPU inflated)")
    a = ap.parse_args(argv)
    n = a.members
    with tempfile.TemporaryDirectory(prefix="msec-bench-rekey-", dir=ROOT) as d:
        workdir = Path(d)
        write_pki(workdir)
        port, rekey_port = _free_port(), _rekey_port()
        cfg = configure(workdir, n, port, rekey_port, a.rate, a.ack_timeout, a.retries,
                        workdir / "state")
        ks = KeyServer(cfg, workdir / "msecd.log", a.profile)
        gens = Generators(a.generators, n, a.window, port, rekey_port)
        try:
            t0 = time.time()
            reg = gens.ask("REGISTER")
            registered = sum(r["registered"] for r in reg)
            print(f"rekey: {registered:,} of {n:,} members registered in "
                  f"{time.time() - t0:.1f} s", file=sys.stderr, flush=True)
            if registered != n:
                raise SystemExit(f"rekey: registration failed: {reg}")
            runs = []
            seq = _current_seq(ks)
            for loss in (0.0, a.loss):
                seq += 1
                r = one_rekey(ks, gens, n, loss, seq, a.timeout)
                runs.append(r)
                print(f"rekey: loss {loss:.0%}: {r['acked']:,} acknowledged in {r['acked_s']} s, "
                      f"key server CPU {r['ks_cpu_ms_per_member']} ms/member, "
                      f"{r['pushes_received']:,} PUSHes received, {r['dropped']:,} dropped",
                      file=sys.stderr, flush=True)
            floor = crypto_floor(workdir, n)
        finally:
            gens.close()
            ks.stop()
    ok = all(r["acked"] == n for r in runs)
    base = runs[0]
    per_member = base["ks_cpu_s"] / n
    out = {"name": "rekey", "members": n,
           "acked_s_loss0": base["acked_s"], f"acked_s_loss{round(a.loss * 100)}": runs[1]["acked_s"],
           "ks_cpu_ms_per_member": base["ks_cpu_ms_per_member"],
           "floor_ms_per_member": round(floor * 1e3, 4),
           "ratio": round(floor / per_member, 3) if per_member else None,
           "all_acked": ok, "goals": {"acked_s_loss0": 5.0, "acked_s_loss10": 15.0},
           "settings": {"rekey_unicast_rate": a.rate, "rekey_ack_timeout_s": a.ack_timeout,
                        "rekey_ack_retries": a.retries,
                        "generators": a.generators},
           "runs": runs}
    if not ok:
        print("rekey: FAILED: not every member acknowledged", file=sys.stderr)
    print(json.dumps(out))
    return 0 if ok else 1


def _current_seq(ks: KeyServer) -> int:
    """The SEQ of the group's last PUSH (the next rekey's is the one after it)."""
    g = ks.ctl("group", "show", str(GID))
    for role in g.get("roles", []):
        if role.get("role") == "keyserver" and isinstance(role.get("seq"), int):
            return role["seq"]
    raise SystemExit(f"rekey: no KEK SEQ in msecctl group show: {g}")


if __name__ == "__main__":
    sys.exit(main())
