"""The long fuzz campaign (``tools/fuzz``): every parser an outsider (or a careless operator)
can feed, with mutated valid inputs, far longer than the 100,000-per-run fuzz tests in CI
(tests/unit/test_*_fuzz.py, which stay).  A release check, not part of CI.

    tools/fuzz [--iterations N | --seconds S] [--parser NAME]... [--seed N] [--list]

Each target takes one mutated input and either accepts it or refuses it with its own error;
anything else (another exception escaping, an engine counting an internal error, an error
logged with a traceback, state changed by a refused input) is a crash: the input is saved
under ``.fuzz/`` and the run exits 1.  One line per target, then a last line of JSON:
``{"name": "fuzz", "targets": {NAME: {"iterations", "per_s", "accepted", "refused",
"crashes"}}, "crashes": N}``.

Targets: ``wire`` (ISAKMP/GDOI decoder, gkm.wire), ``ikev2`` (IKEv2/G-IKEv2 decoder,
gkm.ikev2), ``ikev2_sa_init`` (the IKE_SA_INIT/IKE_INTERMEDIATE engines, mutated datagrams),
``ikev2_gsa_auth`` (the GSA_AUTH engines of both roles: mutated content under the real SK keys),
``ikev2_gsa_auth_ppk`` (the same with an RFC 8784 PPK: PPK_IDENTITY, NO_PPK_AUTH),
``natt`` (UDP 4500's non-ESP marker framing, gkm.ikev2.natt.unframe), ``mainmode`` (IKEv1 Main Mode, a real
exchange with one message mutated in flight, both roles), ``pull`` (GROUPKEY-PULL at the key
server and the member, mutated content under valid phase 1 encryption and HASH),
``push`` (the member's PushReceiver: mutated datagrams, and mutated content validly
encrypted under the KEK and signed by the group's key), ``control`` (the control socket's
request handling on a real Daemon with fake engines), ``policy`` (the TOML configuration
loader), ``xfrm`` (the netlink XFRM message/event parser), ``push_ack`` (GROUPKEY-PUSH-ACK
decoding and the key server's RekeyDelivery: a forged or malformed ACK changes nothing) and
``ikev2_rekey`` (the G-IKEv2 GSA_REKEY receiver: mutated datagrams and mutated content sealed
under the Rekey SA).

The targets reuse the unit tests' fixtures (tests/unit), so this runs from a checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
INTERESTING = (0, 1, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0xFFFFFFFF)


class Crash(Exception):
    """The target misbehaved on this input."""


class _ErrorLog(logging.Handler):
    """Records ERROR-level lines and any line carrying a traceback: a crash."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(record.getMessage()[:300])


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """Byte-level mutations of one seed: bit flips, boundary values, 16/32-bit field
    overwrites, truncation, extension, insertion, deletion, duplication, splicing."""
    b = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        n = len(b)
        op = rng.randrange(10)
        if n == 0:
            b += rng.randbytes(rng.randint(1, 32))
        elif op == 0:
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2 and n >= 2:
            struct.pack_into("!H", b, rng.randrange(n - 1), rng.choice(INTERESTING) & 0xFFFF)
        elif op == 3 and n >= 4:
            struct.pack_into("!I", b, rng.randrange(n - 3), rng.choice(INTERESTING))
        elif op == 4:
            del b[rng.randrange(n):]
        elif op == 5:
            b += rng.randbytes(rng.randint(1, 64))
        elif op == 6:
            i = rng.randrange(n + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 7:
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 16)]
        elif op == 8:
            i, j = sorted((rng.randrange(n), rng.randrange(n)))
            b[j:j] = b[i:j][:256]
        else:
            other = rng.choice(seeds)
            cut = rng.randrange(n + 1)
            b = b[:cut] + other[rng.randrange(len(other) + 1):]
    return bytes(b)


# ---------------------------------------------------------------------------- targets
# Each factory returns (seeds, run(data) -> True accepted / False refused; raises Crash).


def target_wire():
    from gkm.wire import Flags, Header, WireError, decode_message, encode_message
    from gkm.wire.examples import all_examples

    seeds = []
    for header, payloads in all_examples().values():
        for flags, bs in ((Flags.NONE, None), (Flags.ENCRYPTION, 16)):
            h = Header(header.icookie, header.rcookie, header.exchange, flags, header.message_id)
            seeds.append(encode_message(h, payloads, block_size=bs) if bs else encode_message(h, payloads))

    def run(data: bytes) -> bool:
        try:
            m = decode_message(data)
        except WireError:
            return False
        if encode_message(m.header, m.payloads) is None:
            raise Crash("re-encoding failed")
        return True
    return seeds, run


def target_ikev2():
    from gkm.ikev2 import WireError
    from tests.unit.test_ikev2_fuzz import check, seeds

    def run(data: bytes) -> bool:
        failures: list = []
        try:
            ok = check(data, failures)
        except WireError:  # check() decodes the re-encoding too: that must never fail
            raise Crash("re-encoding of a decoded message does not decode") from None
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return seeds(), run


def target_ikev2_sa_init():
    from tests.unit.test_ikev2_sa_init_fuzz import CFG, SaInitResponder, initiator_run, responder_run, transcript

    seq = transcript()
    responder = SaInitResponder(CFG, cookie_threshold=1 << 30, max_half_open=1 << 30)
    count = [0]

    def run(data: bytes) -> bool:
        failures: list = []
        count[0] += 1
        if count[0] % 4 == 0:
            initiator_run(seq, 1, data, failures)
        ok = responder_run(data, responder, failures)
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return list(seq), run


def target_natt():
    from tests.unit.test_ikev2_natt_fuzz import check, seeds

    def run(data: bytes) -> bool:
        failures: list = []
        ok = check(data, failures)
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return seeds(), run


def target_ikev2_gsa_auth(ppk: bool = False):
    import tempfile
    from pathlib import Path

    from tests.unit.test_ikev2_registration_fuzz import Transcript

    t = Transcript(Path(tempfile.mkdtemp(prefix="msec-fuzz-gsa-")), ppk)

    def run(data: bytes) -> bool:
        failures: list = []
        # the response flag of the mutated plaintext's header says which engine gets it
        response = len(data) > 19 and data[19] & 0x20
        ok = t.member_run(data, failures) if response else t.gcks_run(data, failures)
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return t.requests + t.responses, run


def target_mainmode():
    from tests.unit.ike_data.helpers import pair, pump
    from tests.unit.test_ike_fuzz import _GM_CFG, _MSGS, _SRV_CFG, T0, events

    seeds = list(_MSGS)
    rng = random.Random(0)

    def tampered(raw: bytes) -> bytes:
        run.last_input = mutate(rng, [raw])  # this exchange's own message (its cookies, keys)
        return run.last_input

    def run(data: bytes) -> bool:
        # one message of a fresh real exchange is mutated in flight (the campaign's input only
        # picks which: a stale transcript's cookies would be refused at once)
        index = data[0] % len(seeds) if data else 0
        direction, n = ("i2r" if index % 2 == 0 else "r2i"), index // 2
        ini, srv = pair(_GM_CFG, _SRV_CFG)
        pump(ini, srv, T0, tamper=lambda d, k, raw: tampered(raw) if (d, k) == (direction, n) else raw)
        for ev in events(ini) + events(srv):
            if "internal error" in getattr(ev, "reason", ""):
                raise Crash(ev.reason)
        if srv.stats["internal_error"]:
            raise Crash("responder counted an internal error")
        return any(type(ev).__name__ == "Phase1Established" for ev in events(srv))
    return seeds, run


def target_pull():
    from gkm import wire
    from gkm.gdoi import PullInitiator, PullResponder, PullState, Registered, RegistrationFailed
    from gkm.gdoi.pull import seal
    from gkm.wire import Nonce
    from tests.unit import test_gdoi_fuzz as f

    mid0 = struct.unpack("!I", f._PULL[0][20:24])[0]
    # by where they go: message 1 at the key server, messages 2 and 4 at the member
    seeds = [f._body(f._SSA, f._PULL[0], f._SSA.phase2_iv(mid0))[0], f._M2_REST, f._M4_REST]
    rng = random.Random(1)

    def run(data: bytes) -> bool:
        # the campaign's input picks the message; its own body is mutated (so the mutant
        # goes where it came from)
        where = data[0] % 3 if data else 0
        data = run.last_input = mutate(rng, [seeds[where]])
        if where == 0:  # the key server gets a mutated message 1 body
            gm = PullInitiator(f._ISA, f.GID)
            gm.start(f.NOW)
            (msg1, _), = gm.datagrams_to_send()
            mid = struct.unpack("!I", msg1[20:24])[0]
            bad = f._raw_seal(f._SSA, mid, f._SSA.phase2_iv(mid), wire.PayloadType.NONCE, data, b"")
            resp = PullResponder({f.GID: f._GROUP}, f._PROVIDER, rekey_source=f.KS)
            resp.receive(f._SSA, bad, f.member_addr(0), f.NOW)
            resp.datagrams_to_send()
            if resp.stats["internal_error"] or resp.stats["registered"]:
                raise Crash(f"key server: {dict(resp.stats)}")
            if f._PROVIDER.store.group(f.GID) is not None:
                raise Crash("key server stored something before message 3")
            return False
        gm, mid, ni, iv = f._member_at_message2()
        if where == 1:
            gm.receive_datagram(f._raw_seal(f._SSA, mid, iv, wire.PayloadType.NONCE, data, ni), f.KS, f.NOW)
        else:
            good = wire.decode_payloads(f._M2_REST, wire.PayloadType.NONCE, 0, len(f._M2_REST), 32)[0]
            nr = bytes(range(32))
            msg2, _ = seal(f._SSA, mid, iv, (Nonce(nr), good[1]), ni)
            gm.receive_datagram(msg2, f.KS, f.NOW)
            if gm.state is not PullState.M3_SENT:
                raise Crash(f"the good message 2 left the member in {gm.state}")
            (msg3, _), = gm.datagrams_to_send()
            gm.receive_datagram(f._raw_seal(f._SSA, mid, msg3[-16:], f._M4_NP, data, ni + nr), f.KS, f.NOW)
        evs = f.events(gm)
        if len(evs) > 1 or (evs and not isinstance(evs[0], (Registered, RegistrationFailed))):
            raise Crash(f"member events {evs}")
        if evs and isinstance(evs[0], RegistrationFailed) and "internal error" in evs[0].reason:
            raise Crash(evs[0].reason)
        return bool(evs) and isinstance(evs[0], Registered)
    return seeds, run


def target_push():
    from gkm import wire
    from gkm.gdoi.push import REKEY_PREFIX, PushRejected, _cbc, sign_push
    from gkm.wire import Header
    from gkm.wire.constants import ExchangeType, Flags
    from tests.unit import test_gdoi_push as p

    s = p.Setup(Path(tempfile.mkdtemp(prefix="msec-fuzz-push-")))
    good = s.push(new_teks=[s.new_tek()], deletes=[0x1234])
    kek = s.kek()
    bs = 16
    key, iv = kek.keymat[bs:], kek.keymat[:bs]
    plain = good[:28] + _cbc(key, iv, good[28:], False)
    body = wire.decode_message(plain, block_size=bs)
    # the payload chain before SIG, as sent (mutated, then encrypted and signed again)
    chain = plain[28:]
    sig_at = 28 + len(chain) - len(body.padding) - 4 - len(body.payloads[-1].data) - 28
    chain = chain[:sig_at]
    first_np = plain[16]
    suite = s.group.kek.signature
    sig_len = len(body.payloads[-1].data)
    header = Header(bytes(kek.spi[:8]), bytes(kek.spi[8:]), ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION)
    rng = random.Random(2)

    def authenticated(inner: bytes) -> bytes:
        """``inner`` (a payload chain whose last payload is followed by SIG) as a datagram the
        member can decrypt and whose signature verifies."""
        total = 28 + len(inner) + 4 + sig_len
        hdr = wire.encode_header(header, first_np, total)
        sig_hdr = struct.pack("!BBH", 0, 0, 4 + sig_len)
        sig = sign_push(suite, s.signing_key, REKEY_PREFIX + hdr + inner)
        pt = inner + sig_hdr + sig
        pt += bytes(-len(pt) % bs)
        return wire.encode_header(header, first_np, 28 + len(pt)) + _cbc(key, iv, pt, True)

    def receive(datagram: bytes) -> bool:
        r = s.receiver()
        before = p._state(r)
        r.receive_datagram(datagram, None, p.NOW)
        evs = p.events(r)
        if not evs:
            raise Crash("no event")
        rejected = [ev for ev in evs if isinstance(ev, PushRejected)]
        if rejected:
            if len(evs) != 1:
                raise Crash(f"a rejection among other events: {evs}")
            if "internal error" in rejected[0].reason:
                raise Crash(rejected[0].reason)
            if p._state(r) != before:
                raise Crash("a rejected PUSH changed the receiver's state")
            return False
        return True

    if not receive(authenticated(chain)) or not receive(good):
        raise SystemExit("fuzz push: the unmutated PUSH is not accepted (target broken)")

    def run(data: bytes) -> bool:
        if rng.random() < 0.25:  # the outsider's view: mutated ciphertext, old signature
            return receive(mutate(rng, [good]))
        return receive(authenticated(data))  # a KEK and signing key holder's view
    return [chain], run


def target_control():
    from gkm.daemon.control import ControlServer
    from gkm.daemon.daemon import Daemon
    from policy.config import load_config
    from tests.unit.daemon_fakes import FakeFactory, free_udp_port, write_config

    tmp = Path(tempfile.mkdtemp(prefix="msec-fuzz-ctl-"))
    port = free_udp_port()
    cfg = write_config(tmp, ks_port=port, member_port=port)
    loop = asyncio.new_event_loop()
    d = Daemon(cfg, load_config(cfg), factory=FakeFactory(), backoff=(0.01, 0.05), jitter=False)
    loop.run_until_complete(d.start())
    srv = ControlServer(tmp / "fuzz.sock", d.handle_request)
    seeds = [json.dumps(x).encode() for x in (
        {"cmd": "status"}, {"cmd": "groups"}, {"cmd": "group", "id": 1001},
        {"cmd": "members", "id": 1001}, {"cmd": "deny", "id": 1001},
        {"cmd": "deny-lift", "id": 1001, "identities": ["gm1", "key-id:gm2"]},
        {"cmd": "evict", "id": 1001, "identities": ["nobody"], "reason": "fuzz"},
        {"cmd": "group", "id": "1001"}, {"cmd": "x", "y": [[1, {"z": None}]]},
        # the configuration changes (drop-ins in the temp directory, gkm.daemon.config_edit)
        {"cmd": "group-create", "group": {
            "id": 7, "authorize": {"psk_identities": ["gm1"]},
            "tek": [{"src": "10.7.0.0/16", "dst": "239.7.7.7", "cipher": "aes-gcm-128"}]}},
        {"cmd": "group-authorize", "id": 7, "identities": ["gm2", "dn:CN=x"]},
        {"cmd": "group-deauthorize", "id": 7, "identities": ["gm1"]},
        {"cmd": "group-delete", "id": 7}, {"cmd": "leave", "id": 1001},
        {"cmd": "join", "group": {"id": 8, "key_servers": ["127.0.0.1"],
                                  "credentials": {"psk_identity": "gm1", "psk": "00" * 16}}},
        {"cmd": "reload-check"}, {"cmd": "reload-check", "file": str(cfg)})]

    def close() -> None:
        loop.run_until_complete(d.stop())
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)  # with the drop-ins the inputs created

    def run(data: bytes) -> bool:
        ans = loop.run_until_complete(srv.dispatch(data))
        if not isinstance(ans, dict) or not isinstance(ans.get("ok"), bool):
            raise Crash(f"answer {ans!r:.200}")
        json.dumps(ans, default=str)
        if not ans["ok"] and not isinstance(ans.get("error"), str):
            raise Crash(f"refusal without an error text: {ans!r:.200}")
        return ans["ok"]
    run.close = close
    return seeds, run


def target_policy():
    from policy.config import ConfigError, parse_config
    from tests.unit.daemon_fakes import write_config

    tmp = Path(tempfile.mkdtemp(prefix="msec-fuzz-policy-"))
    seeds = [p.read_bytes() for p in sorted((ROOT / "examples").glob("*.toml"))]
    seeds.append(write_config(tmp, ks_port=848, member_port=848).read_bytes())

    def run(data: bytes) -> bool:
        try:
            parse_config(data.decode("utf-8", "replace"), "fuzz.toml", base_dir=ROOT / "examples",
                         check_files=False)
        except ConfigError as e:
            if not e.problems:
                raise Crash("ConfigError without problems")
            return False
        return True
    return seeds, run


def target_xfrm():
    from ipaddress import ip_address as A

    from xfrm import algorithms as alg
    from xfrm import messages as m
    from xfrm.batch import Batch
    from xfrm.errors import DecodeError
    from xfrm.events import parse_events
    from xfrm.model import Direction, Mode, Policy, Selector, State, Template

    seeds = []
    for aead, extra in ((alg.aes_gcm(bytes(range(20)), 16), {}), (None, dict(
            cipher=alg.aes_cbc(bytes(16)), auth=alg.hmac_sha2(256, bytes(32))))):
        st = State(src=A("10.0.0.1"), dst=A("239.1.1.1"), spi=0x100, mode=Mode.TUNNEL,
                   reqid=0x6D730001, aead=aead, **extra)
        seeds += Batch().add_state(st).encode(1)
    g, src = A("239.1.1.1"), A("10.0.0.1")
    pol = Policy(selector=Selector.host(src, g, 17, dport=5000), direction=Direction.OUT,
                 priority=100, templates=(Template(src, g, Mode.TUNNEL, 0x6D730001),))
    seeds += Batch().add_policy(pol).encode(2)
    seeds.append(b"".join(seeds))

    def run(data: bytes) -> bool:
        try:
            parse_events(data)
            # the metrics' SA counter reader takes the same dump replies
            for kind, _flags, _seq, off, n in m.split_messages(data):
                if kind == m.XFRM_MSG_NEWSA:
                    m.decode_sa_counters(data, off, n)
        except DecodeError:
            return False
        return True
    return seeds, run


def target_member_state():
    """gkm.gdoi.member_state.decode; each input also with its digest made right, so the
    mutations reach the field checks behind it."""
    import json

    from gkm.gdoi import member_state as ms
    from tests.unit.test_ikev2_member_state import gike_snap
    from tests.unit.test_member_state import snap

    seeds = [ms.encode(snap()), ms.encode(snap(lkh=None, teks=(), gap=(None, None))), ms.encode(gike_snap())]

    def run(data: bytes) -> bool:
        ok = False
        for d in (data, _redigested(data)):
            if d is None:
                continue
            try:
                ms.decode(d)
                ok = True
            except ms.MemberStateError:
                pass
        return ok

    def _redigested(data: bytes) -> bytes | None:
        try:
            doc = json.loads(data)
            doc["sha256"] = ms._digest(doc["state"])
            return json.dumps(doc).encode()
        except Exception:  # noqa: BLE001 - not a document whose digest can be fixed
            return None
    return seeds, run


def target_ikev2_rekey():
    from tests.unit.test_ikev2_rekey_fuzz import Corpus, run_one, seal

    c = Corpus()
    count = [0]

    def run(data: bytes) -> bool:
        failures: list = []
        count[0] += 1
        mode = count[0] % 3  # datagram as is / SK content under the Rekey SA, implicit / signed
        if mode and data:
            ok = run_one(c.receiver(mode == 2), seal(c.sa, data), failures)
        else:
            ok = run_one(c.receiver(), data, failures)
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return c.datagrams + c.chains + c.signed_chains, run


def target_ikev2_inband():
    import tempfile
    from pathlib import Path

    from tests.unit.test_ikev2_inband_fuzz import Corpus, run_one, seal

    c = Corpus(Path(tempfile.mkdtemp(prefix="msec-fuzz-inband-")))
    count = [0]

    def run(data: bytes) -> bool:
        failures: list = []
        count[0] += 1
        # odd inputs as datagrams, even ones as SK content sealed under the IKE SA
        ok = run_one(c.receiver(), seal(c.sa, data) if count[0] % 2 and data else data, failures)
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return c.datagrams + c.chains, run


def target_push_ack():
    from tests.unit.test_push_ack_fuzz import _delivery, check, seeds

    s = seeds()
    genuine, d, count = set(s), _delivery(), [0]

    def run(data: bytes) -> bool:
        nonlocal d
        count[0] += 1
        if count[0] % 5000 == 0:
            d = _delivery()
        failures: list = []
        ok = check(data, d, genuine, failures)
        if failures:
            raise Crash(str(failures[0])[:300])
        return ok
    return s, run


TARGETS: dict[str, Callable] = {
    "wire": target_wire, "ikev2": target_ikev2, "ikev2_sa_init": target_ikev2_sa_init,
    "ikev2_gsa_auth": target_ikev2_gsa_auth, "natt": target_natt,
    "ikev2_gsa_auth_ppk": lambda: target_ikev2_gsa_auth(ppk=True),
    "mainmode": target_mainmode, "pull": target_pull, "push": target_push,
    "control": target_control, "policy": target_policy, "xfrm": target_xfrm,
    "member_state": target_member_state, "ikev2_rekey": target_ikev2_rekey,
    "push_ack": target_push_ack, "ikev2_inband": target_ikev2_inband,
}


def campaign(name: str, *, iterations: int | None, seconds: float | None, seed: int,
             out: Path) -> dict:
    errors = _ErrorLog()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(errors)
    root.setLevel(logging.DEBUG)
    seeds, run = TARGETS[name]()
    if errors.bad:
        raise SystemExit(f"fuzz {name}: setting up logged an error: {errors.bad[0]}")
    rng = random.Random(f"{seed}:{name}")
    stats = {"iterations": 0, "accepted": 0, "refused": 0, "crashes": 0}
    start = time.monotonic()
    end = start + seconds if seconds else None
    try:
        while (iterations is None or stats["iterations"] < iterations) and \
                (end is None or time.monotonic() < end):
            data = mutate(rng, seeds)
            run.last_input = data
            errors.bad.clear()
            try:
                ok = run(data)
                if errors.bad:
                    raise Crash("logged: " + errors.bad[0])
            except Exception as e:  # a Crash, or anything else escaping the parser
                stats["crashes"] += 1
                out.mkdir(exist_ok=True)
                data = run.last_input  # what the parser got (a target may mutate in flight)
                digest = hashlib.sha256(data).hexdigest()[:16]
                (out / f"crash-{name}-{digest}.bin").write_bytes(data)
                (out / f"crash-{name}-{digest}.txt").write_text(f"{type(e).__name__}: {e}\n")
                if stats["crashes"] <= 3:
                    print(f"fuzz {name}: CRASH {type(e).__name__}: {str(e)[:200]} "
                          f"(input in {out}/crash-{name}-{digest}.bin)", file=sys.stderr)
            else:
                stats["accepted" if ok else "refused"] += 1
            stats["iterations"] += 1
    finally:
        if hasattr(run, "close"):
            run.close()
        root.removeHandler(errors)
    took = time.monotonic() - start
    stats["seconds"] = round(took, 1)
    stats["per_s"] = round(stats["iterations"] / took) if took else 0
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=None,
                    help="inputs per parser (default 1,000,000 unless --seconds)")
    ap.add_argument("--seconds", type=float, default=None, help="time per parser")
    ap.add_argument("--parser", action="append", choices=sorted(TARGETS), default=None,
                    help="only this parser (repeatable); default all")
    ap.add_argument("--seed", type=int, default=int(time.time()), help="default: the time")
    ap.add_argument("--out", type=Path, default=ROOT / ".fuzz", help="where crashing inputs go")
    ap.add_argument("--list", action="store_true", help="list the parsers")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    iterations = args.iterations
    if iterations is None and args.seconds is None:
        iterations = 1_000_000
    results = {}
    print(f"fuzz: seed {args.seed}", flush=True)
    for name in args.parser or list(TARGETS):
        r = campaign(name, iterations=iterations, seconds=args.seconds, seed=args.seed, out=args.out)
        results[name] = r
        print(f"fuzz {name}: {r['iterations']} inputs in {r['seconds']} s ({r['per_s']}/s), "
              f"{r['accepted']} accepted, {r['refused']} refused, {r['crashes']} crashes", flush=True)
    crashes = sum(r["crashes"] for r in results.values())
    print(json.dumps({"name": "fuzz", "seed": args.seed, "targets": results, "crashes": crashes}))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
