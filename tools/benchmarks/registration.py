"""GDOI registration (Main Mode + GROUPKEY-PULL) throughput of a key server over loopback UDP.

Run as ``tools/bench registration``.  ``msecd`` itself is not used (it did not exist when this was
written; this measures the engines): the key server is a
:class:`gkm.gdoi.KeyServerEngine` (with :class:`gkm.gdoi.StoreKeysProvider` over a
:class:`gkm.store.KeyStore` in a temporary directory, fsync'ed SQLite as in production) behind
a minimal asyncio UDP shell, in a **separate process** (``--serve``).  This process simulates
the members: sans-I/O :class:`gkm.gdoi.MemberRegistration` engines, ``--window`` of them in
flight at a time, each on its own UDP socket, every registration a new member (new identity;
with certificates a new leaf certificate generated before timing), so nothing per member can
be cached by the key server.  Two runs: PSK + DH group 19, and ECDSA-P256 certificates + group 19.

**Achieved** = registrations / key server busy time: the wall time the key server process
spends inside the engine and the socket sends (``time.perf_counter`` around each datagram and
timer callback), which includes the SQLite commit (fsync) of every registration and excludes
the time it waits for members (the members run on the other core of a 2-core host and are
often the slower side).  Wall-clock registrations/s of the whole run and the key server's CPU
time are printed too.

**Crypto floor**, measured in the key server process in the same run (before and after the
registrations, averaged) with :func:`tools.benchmarks.phase1.crypto_floor`: the public-key
operations a key server cannot avoid per registration (ECDH P-256 keygen/encode/validate/derive;
with certificates also one ECDSA sign and two ECDSA verifies).  GROUPKEY-PULL adds no public-key
operation, so everything else (HMACs, AES-CBC, payload coding, SQLite, sockets, asyncio) is
overhead.  ``ratio`` (last line) = min over the two runs of achieved / floor.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gkm.gdoi import KeyServerEngine, MemberRegistered, MemberRegistration, Registered, RegistrationFailed, StoreKeysProvider
from gkm.ike import AuthMethod, CertCredential, HashAlg, Identity, Phase1Config, Proposal, PskStore
from gkm.store import KeyStore
from policy.model import AddressMatch, Authorization, GroupPolicy, KekPolicy, SubjectMatch, TekPolicy, TrafficSelector
from policy.suites import ESP_SUITES, KEK_CIPHERS, SIGNATURE_SUITES
from tools.benchmarks.phase1 import _pki, crypto_floor

GID = 4242
PSK = b"registration benchmark pre-shared key"
HOST = "127.0.0.1"


def _pem_cert(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _pem_key(k) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _group(signing_key: Path) -> GroupPolicy:
    teks = (
        TekPolicy("data", TrafficSelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("239.1.1.1/32")),
                  ESP_SUITES["aes-gcm-128"]),
        TekPolicy("control", TrafficSelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("239.1.1.2/32")),
                  ESP_SUITES["aes-cbc-128-hmac-sha256"]),
    )
    kek = KekPolicy(KEK_CIPHERS["aes-cbc-128"], SIGNATURE_SUITES["ecdsa-p256"], signing_key, ipaddress.ip_address("239.192.0.1"))
    auth = Authorization((AddressMatch(ipaddress.ip_network("127.0.0.0/8")), SubjectMatch("CN=gm*")))
    return GroupPolicy(GID, teks, auth, kek, name="bench")


# ------------------------------------------------------------------------------ key server process


class _Shell:
    """Minimal UDP shell: on readable, read every datagram waiting (up to ``burst``), feed them,
    then pull the engine's output once, so the registrations of one burst share one store
    commit (see :meth:`gkm.gdoi.pull.PullResponder.datagrams_to_send`)."""

    def __init__(self, engine, sock: socket.socket, burst: int = 64) -> None:
        self.engine = engine
        self.sock = sock
        self.burst = burst
        self.timer = None
        self.deadline = None
        self.busy = 0.0
        self.cpu0: float | None = None
        self.registered = 0
        self.bursts = 0

    def readable(self) -> None:
        t = time.perf_counter()
        if self.cpu0 is None:
            self.cpu0 = time.process_time()
        now = time.time()
        for _ in range(self.burst):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            self.engine.receive_datagram(data, addr, now)
        self.bursts += 1
        self._transmit()
        self.busy += time.perf_counter() - t

    def _fire(self) -> None:
        t = time.perf_counter()
        self.timer = self.deadline = None
        self.engine.handle_timer(time.time())
        self._transmit()
        self.busy += time.perf_counter() - t

    def _transmit(self) -> None:
        for data, addr in self.engine.datagrams_to_send():
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass  # UDP: a full socket buffer drops, the member retransmits
        while (ev := self.engine.next_event()) is not None:
            if isinstance(ev, MemberRegistered):
                self.registered += 1
        d = self.engine.get_timer()
        if d != self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.deadline = d
            loop = asyncio.get_running_loop()
            self.timer = None if d is None else loop.call_at(loop.time() + max(0.0, d - time.time()), self._fire)


def _floor(n: int) -> dict:
    return crypto_floor(_pki(n), n)


async def _serve(mode: str, workdir: Path, floor_n: int) -> None:
    signing = workdir / "signing.pem"
    group = _group(signing)
    prop = (Proposal(AuthMethod.PRE_SHARED_KEY if mode == "psk" else AuthMethod.ECDSA_256, 19, HashAlg.SHA2_256),)
    limits = dict(max_half_open_per_peer=1 << 16, max_half_open=1 << 16)
    if mode == "psk":
        cfg = Phase1Config(prop, local_id=Identity.ip(HOST), psk=PskStore({HOST: PSK}), **limits)
    else:
        ca = x509.load_pem_x509_certificate((workdir / "ca.pem").read_bytes())
        cert = x509.load_pem_x509_certificate((workdir / "ks.pem").read_bytes())
        key = serialization.load_pem_private_key((workdir / "ks.key").read_bytes(), password=None)
        cfg = Phase1Config(prop, credential=CertCredential(cert, key), trust_anchors=(ca,), **limits)
    store = KeyStore(workdir / f"state-{mode}")
    engine = KeyServerEngine([group], StoreKeysProvider(store), cfg, rekey_source=(HOST, 848), max_pending_per_sa=4)
    floor_before = _floor(floor_n)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    shell = _Shell(engine, sock)
    loop.add_reader(sock.fileno(), shell.readable)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), done.set)
    await done.wait()
    sys.stdin.readline()
    loop.remove_reader(sys.stdin.fileno())
    cpu = time.process_time() - (shell.cpu0 or time.process_time())
    loop.remove_reader(sock.fileno())
    sock.close()
    floor_after = _floor(floor_n)
    fl = {k: floor_before[k] + floor_after[k] for k in floor_before}
    per = {"dh": fl["dh_s"] / fl["n"], "sign": fl["sign_s"] / fl["n"], "verify": fl["verify_s"] / fl["n"]}
    floor_s = per["dh"] + (per["sign"] + per["verify"] if mode == "ecdsa" else 0.0)
    print(json.dumps({"registered": shell.registered, "busy_s": shell.busy, "cpu_s": cpu, "floor_s": floor_s,
                      "floor_parts_ms": {k: v * 1e3 for k, v in per.items()}, "members_in_store": store.member_count(GID), "bursts": shell.bursts,
                      "stats": dict(engine.pull.stats)}), flush=True)
    store.close()


# ------------------------------------------------------------------------------ members (this process)


class _Slot(asyncio.DatagramProtocol):
    def __init__(self, run) -> None:
        self.run = run
        self.transport = None
        self.engine = None
        self.timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.next()

    def next(self) -> None:
        self.engine = self.run.new_member()
        if self.engine is None:
            return
        self.engine.start(time.time())
        self.transmit()

    def datagram_received(self, data, addr) -> None:
        if self.engine is not None:
            self.engine.receive_datagram(data, self.run.ks, time.time())
            self.transmit()

    def _fire(self) -> None:
        self.timer = None
        if self.engine is not None:
            self.engine.handle_timer(time.time())
            self.transmit()

    def transmit(self) -> None:
        e = self.engine
        for data, _addr in e.datagrams_to_send():
            self.transport.sendto(data)
        finished = False
        while (ev := e.next_event()) is not None:
            if isinstance(ev, (Registered, RegistrationFailed)):
                self.run.finished(ev)
                finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if finished:
            asyncio.get_running_loop().call_soon(self.next)
            return
        d = e.get_timer()
        if d is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(loop.time() + max(0.0, d - time.time()), self._fire)


class _Run:
    def __init__(self, mode: str, n: int, ks, pki) -> None:
        self.mode, self.n, self.ks, self.pki = mode, n, ks, pki
        self.started = 0
        self.ok = 0
        self.failed: list[str] = []
        self.all_done = asyncio.Event()

    def new_member(self):
        if self.started >= self.n:
            return None
        i = self.started
        self.started += 1
        prop = (Proposal(AuthMethod.PRE_SHARED_KEY if self.mode == "psk" else AuthMethod.ECDSA_256, 19, HashAlg.SHA2_256),)
        if self.mode == "psk":
            cfg = Phase1Config(prop, local_id=Identity.key_id(f"gm{i}".encode()), psk=PskStore({HOST: PSK}))
        else:
            ca, _ca_key, _ks, members = self.pki
            c, k = members[i]
            cfg = Phase1Config(prop, credential=CertCredential(c, k), trust_anchors=(ca,))
        return MemberRegistration(cfg, GID, self.ks)

    def finished(self, ev) -> None:
        if isinstance(ev, Registered):
            self.ok += 1
        else:
            self.failed.append(ev.reason)
        if self.ok + len(self.failed) >= self.n:
            self.all_done.set()


async def _members(mode: str, n: int, window: int, ks, pki) -> dict:
    loop = asyncio.get_running_loop()
    run = _Run(mode, n, ks, pki)
    t0 = time.perf_counter()
    transports = []
    for _ in range(min(window, n)):
        t, _p = await loop.create_datagram_endpoint(lambda: _Slot(run), remote_addr=ks)
        transports.append(t)
    await asyncio.wait_for(run.all_done.wait(), timeout=60 + n)
    wall = time.perf_counter() - t0
    for t in transports:
        t.close()
    return {"ok": run.ok, "failed": len(run.failed), "first_failure": run.failed[0] if run.failed else None, "wall_s": wall}


def _run_mode(mode: str, n: int, window: int, floor_n: int, workdir: Path, pki) -> dict:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "tools.benchmarks.registration", "--serve", mode, str(workdir), str(floor_n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"key server process did not start: {line!r}")
        ks = (HOST, int(line.split()[1]))
        members = asyncio.run(_members(mode, n, window, ks, pki))
        proc.stdin.write("REPORT\n")
        proc.stdin.flush()
        server = json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    return {**members, **server}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registrations", type=int, default=300)
    ap.add_argument("--window", type=int, default=16, help="registrations in flight")
    ap.add_argument("--floor-n", type=int, default=100, help="crypto floor iterations (before and after)")
    ap.add_argument("--serve", nargs=3, metavar=("MODE", "DIR", "FLOOR_N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        mode, workdir, floor_n = args.serve
        asyncio.run(_serve(mode, Path(workdir), int(floor_n)))
        return 0
    n = args.registrations
    pki = _pki(n)
    ca, _ca_key, (kc, kk), _members = pki
    results = {}
    with tempfile.TemporaryDirectory(prefix="msec-bench-registration-") as d:
        workdir = Path(d)
        (workdir / "ca.pem").write_bytes(_pem_cert(ca))
        (workdir / "ks.pem").write_bytes(_pem_cert(kc))
        (workdir / "ks.key").write_bytes(_pem_key(kk))
        (workdir / "signing.pem").write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
        for p in workdir.iterdir():
            os.chmod(p, 0o600)
        for mode in ("psk", "ecdsa"):
            r = _run_mode(mode, n, args.window, args.floor_n, workdir, pki)
            if r["ok"] != n or r["registered"] != n:
                raise SystemExit(f"{mode}: {r['ok']} of {n} members registered ({r['failed']} failed, first: {r['first_failure']}); "
                                 f"key server counted {r['registered']}")
            r["per_s"] = r["registered"] / r["busy_s"]
            r["floor_per_s"] = 1 / r["floor_s"]
            r["ratio"] = r["per_s"] / r["floor_per_s"]
            results[mode] = r
    print("key server: KeyServerEngine in a minimal asyncio UDP shell (not msecd), store fsync'ed per commit")
    for mode, label in (("psk", "PSK + group 19"), ("ecdsa", "ECDSA-P256 + group 19")):
        r = results[mode]
        parts = ", ".join(f"{k} {v:.3f} ms" for k, v in r["floor_parts_ms"].items() if mode == "ecdsa" or k == "dh")
        print(f"{label:22s} {r['per_s']:7.0f} registrations/s of key server busy time "
              f"({r['busy_s'] / n * 1e3:.2f} ms each, CPU {r['cpu_s'] / n * 1e3:.2f} ms); "
              f"wall {n / r['wall_s']:.0f}/s with {args.window} in flight; "
              f"floor {r['floor_per_s']:.0f}/s ({parts}); ratio {r['ratio']:.3f}; "
              f"{r['registered'] / max(1, r['stats'].get('commits', 1)):.1f} registrations per store commit")
    summary = {
        "name": "registration",
        "registrations": n,
        "window": args.window,
        "psk_g19_per_s": round(results["psk"]["per_s"], 1),
        "ecdsa_p256_g19_per_s": round(results["ecdsa"]["per_s"], 1),
        "psk_wall_per_s": round(n / results["psk"]["wall_s"], 1),
        "ecdsa_wall_per_s": round(n / results["ecdsa"]["wall_s"], 1),
        "crypto_floor_psk_per_s": round(results["psk"]["floor_per_s"], 1),
        "crypto_floor_ecdsa_per_s": round(results["ecdsa"]["floor_per_s"], 1),
        "ratio_psk": round(results["psk"]["ratio"], 3),
        "ratio_ecdsa": round(results["ecdsa"]["ratio"], 3),
        "ratio": round(min(results["psk"]["ratio"], results["ecdsa"]["ratio"]), 3),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
