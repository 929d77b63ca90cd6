"""Main Mode responder throughput vs. the cost of its public-key operations.

Run as ``tools/bench phase1`` (or ``python -m tools.benchmarks.phase1``).  One
:class:`gkm.ike.Phase1Server` completes Main Mode exchanges against simulated in-process
initiators (:class:`gkm.ike.MainMode`).  Every exchange comes from a new source address and, with
certificates, a new member certificate (a fresh leaf signed by the CA, generated before timing,
each used once in the whole run), as a key server sees it when many members join: nothing the
responder may cache per peer can be reused across the measured exchanges.

**What is timed.**  Only the responder: the CPU time (``time.process_time``, so other load on a
shared host does not count) of ``server.receive_datagram`` + ``server.datagrams_to_send``.  The
initiators go in lockstep batches (``--batch``): the responder takes the batch's messages 1, then
its messages 3, then its messages 5, as a busy key server works through its socket queue, with
one clock reading per batch and message number (a reading costs microseconds here).  The
initiators' work (building messages 1, 3, 5, their DH and signatures, checking messages 2, 4, 6)
runs between those blocks and is not counted; spoofed datagrams are built before their block.
Per-message averages (µs per exchange for messages 1/3/5) are printed too.

**The crypto floor** is measured in the same run, interleaved with the exchanges so that load
varies alike on both sides: the ``cryptography`` calls a responder cannot avoid per exchange,
each on inputs as fresh as in the exchanges, with nothing else around them:

* ECDH P-256 (both cases): generate the ephemeral key, encode its public value (the KE payload),
  decode and validate the peer's public value (on-curve check: mandatory, RFC 5903/6989), derive.
* ECDSA-P256 certificates (in addition): one ECDSA sign (SIG_R); one ECDSA verify of the
  member's certificate by the CA (the chain check: the certificate is new, so it cannot be
  cached; the CA's public key is loaded once, as any responder keeps it) and loading the leaf's
  public key from it; one ECDSA verify of SIG_I.

Not in the floor, hence counted as overhead: certificate parsing, policy checks of the path
validation (validity, extensions, key usage), ID vs certificate, HMACs (SKEYID family,
HASH_I/R), AES-CBC, payload coding, state and bookkeeping.  The floor's loops run each operation
back to back with nothing else, so their code and tables stay in the CPU caches; inside the
responder, between parsing and state handling, the same calls take longer, and that difference
also counts as overhead: the floor is a lower bound, not a model of the responder.

``ratio_psk`` and ``ratio_ecdsa`` = achieved exchanges/s ÷ crypto-floor exchanges/s (1.0 would
mean all overhead besides the public-key operations is free); the last line's ``"ratio"`` is
the smaller of the two (the goal, >= 0.5, is for both).  A third run interleaves spoofed
message-1 datagrams (random cookies and source addresses) with legitimate exchanges and reports
how many the responder absorbs per second while it keeps completing the legitimate ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from gkm.ike import (
    AuthMethod, CertCredential, HashAlg, Identity, MainMode, Phase1Config, Phase1Established, Phase1Server,
    Proposal, PskStore, Role, State,
)

KS = ("198.51.100.1", 848)
UTC = datetime.timezone.utc


def _pki(n_members):
    """CA, key server leaf and ``n_members`` distinct member leaves (certificate, key)."""
    now = datetime.datetime.now(UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("bench CA")).issuer_name(name("bench CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn):
        k = ec.generate_private_key(ec.SECP256R1())
        c = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example.net")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return c, k

    return ca, ca_key, leaf("ks"), [leaf(f"gm{i}") for i in range(n_members)]


_PSK = b"benchmark pre-shared key"


def _peer_addr(i):
    return (f"10.{i >> 8 & 255}.{i & 255}.2", 848)


def _server_config(method, pki, n_peers):
    wall = time.time() - time.monotonic()
    prop = (Proposal(method, 19, HashAlg.SHA2_256),)
    if method is AuthMethod.PRE_SHARED_KEY:
        return Phase1Config(prop, local_id=Identity.ip(KS[0]), psk=PskStore({_peer_addr(i)[0]: _PSK for i in range(n_peers)}))
    ca, _k, (kc, kk), _members = pki
    return Phase1Config(prop, credential=CertCredential(kc, kk), trust_anchors=(ca,), wall_time_offset=wall, max_half_open=1 << 20)


def _member_config(method, pki, member):
    wall = time.time() - time.monotonic()
    prop = (Proposal(method, 19, HashAlg.SHA2_256),)
    if method is AuthMethod.PRE_SHARED_KEY:
        # the server's key for this peer's address belongs to that address: it is the ID to present
        return Phase1Config(prop, local_id=Identity.ip(_peer_addr(member)[0]), psk=PskStore({KS[0]: _PSK}))
    ca, _k, _ks, members = pki
    gc, gk = members[member]
    return Phase1Config(prop, credential=CertCredential(gc, gk), trust_anchors=(ca,), wall_time_offset=wall)


def run_exchanges(method, pki, n, spoof_per_exchange=0, first_member=0, batch=32):
    """``n`` exchanges, each from a new address (and member certificate ``first_member + i``).

    The initiators go in lockstep batches of ``batch``: the responder gets the batch's messages
    1, answers them, then its messages 3, then its messages 5, as a busy key server works
    through the datagrams queued on its socket.  Only those responder calls are timed, one clock
    reading per batch and message number.  Spoofed message 1s (flood run) are built before their
    timed block."""
    server = Phase1Server(_server_config(method, pki, n))
    t_server = 0.0
    t_msg = [0.0, 0.0, 0.0]  # responder CPU time for messages 1, 3, 5
    t_spoof = 0.0
    done = 0
    spoofed = 0
    perf = time.process_time  # CPU time of this process: robust against other load on the host
    psk = method is AuthMethod.PRE_SHARED_KEY
    for b0 in range(0, n, batch):
        now = time.monotonic()
        peers = []
        for i in range(b0, min(n, b0 + batch)):
            gm = MainMode(_member_config(method, pki, i if psk else first_member + i), Role.INITIATOR, KS)
            gm.start(now)
            peers.append((gm, _peer_addr(i)))
        template = None
        for rnd in range(3):
            inbox = [(data, addr) for gm, addr in peers for data, _a in gm.datagrams_to_send()]
            if template is None:
                template = inbox[0][0]
            t = perf()
            for data, addr in inbox:
                server.receive_datagram(data, addr, now)
            replies = server.datagrams_to_send()
            dt = perf() - t
            t_server += dt
            t_msg[rnd] += dt
            by_addr = {addr: gm for gm, addr in peers}
            for r, ra in replies:
                by_addr[ra].receive_datagram(r, KS, now)
            if spoof_per_exchange:
                spoofs = []
                for _j in range(spoof_per_exchange * len(peers)):
                    spoofs.append((os.urandom(8) + template[8:], (f"172.{spoofed & 15}.{spoofed >> 8 & 255}.{spoofed & 255}", 500)))
                    spoofed += 1
                t = perf()
                for data, addr in spoofs:
                    server.receive_datagram(data, addr, now)
                server.datagrams_to_send()
                dt = perf() - t
                t_spoof += dt
                t_server += dt
        while (ev := server.next_event()) is not None:
            if isinstance(ev, Phase1Established):
                done += 1
        for gm, addr in peers:
            if gm.state is not State.ESTABLISHED:
                raise SystemExit(f"exchange with {addr} did not complete: {gm.failure}")
    return {"exchanges": done, "server_s": t_server, "mm1_s": t_msg[0], "mm3_s": t_msg[1], "mm5_s": t_msg[2],
            "spoofed": spoofed, "spoof_s": t_spoof, "half_open_end": server.half_open_count}


def crypto_floor(pki, n, first_member=0):
    """Per-exchange public-key work of the responder, straight on cryptography (CPU seconds).

    The inputs are as fresh as in :func:`run_exchanges`: a new peer public value per ECDH (the
    bytes of a KE payload), a new member certificate per verification."""
    ca, ca_key, (kc, kk), members = pki
    curve = ec.SECP256R1()
    peers = [ec.generate_private_key(curve).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) for _ in range(n)]
    digest = os.urandom(32)
    sig_alg = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    cert_ders = [members[(first_member + i) % len(members)][0].public_bytes(Encoding.DER) for i in range(n)]
    sigs = [members[(first_member + i) % len(members)][1].sign(digest, sig_alg) for i in range(n)]
    ca_pub = ca.public_key()  # a responder keeps its trust anchors' keys loaded
    load_point = ec.EllipticCurvePublicKey.from_encoded_point
    perf = time.process_time
    t = perf()
    for i in range(n):
        k = ec.generate_private_key(curve)
        k.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        k.exchange(ec.ECDH(), load_point(curve, peers[i]))
    t_dh = perf() - t
    t = perf()
    for _ in range(n):
        kk.sign(digest, sig_alg)
    t_sign = perf() - t
    certs = [x509.load_der_x509_certificate(d) for d in cert_ders]  # parsing is overhead, not floor
    t = perf()
    for i in range(n):
        c = certs[i]
        ca_pub.verify(c.signature, c.tbs_certificate_bytes, ec.ECDSA(c.signature_hash_algorithm))  # CA -> leaf
        c.public_key().verify(sigs[i], digest, sig_alg)  # SIG_I
    t_verify = perf() - t
    return {"n": n, "dh_s": t_dh, "sign_s": t_sign, "verify_s": t_verify}


def _merge(acc, r):
    for k, v in r.items():
        if k == "half_open_end":
            acc[k] = max(acc.get(k, 0), v)  # per server (one per round), not a sum
        else:
            acc[k] = acc.get(k, 0) + v
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchanges", type=int, default=400)
    ap.add_argument("--spoof-per-exchange", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5, help="alternate baseline and measurement this many times")
    ap.add_argument("--batch", type=int, default=32, help="initiators in lockstep (datagrams queued for the responder)")
    args = ap.parse_args(argv)
    n = args.exchanges
    rounds = max(1, args.rounds)
    per_round = max(1, n // rounds)
    floor_n = max(40, per_round)
    pki = _pki(rounds * max(per_round, floor_n))  # one fresh member certificate per exchange
    # Interleave the baseline with the measured runs so that a varying load on the host hits
    # both sides of the ratio alike.
    fl: dict = {}
    psk: dict = {}
    cert: dict = {}
    flood: dict = {}
    for r in range(rounds):
        _merge(fl, crypto_floor(pki, floor_n, first_member=r * floor_n))
        _merge(psk, run_exchanges(AuthMethod.PRE_SHARED_KEY, pki, per_round, batch=args.batch))
        _merge(cert, run_exchanges(AuthMethod.ECDSA_256, pki, per_round, first_member=r * per_round, batch=args.batch))
        _merge(flood, run_exchanges(AuthMethod.PRE_SHARED_KEY, pki, max(10, n // (4 * rounds)), args.spoof_per_exchange, batch=args.batch))
    for r in (psk, cert, flood):
        r["per_s"] = r["exchanges"] / r["server_s"]
    t_dh, t_sign, t_verify = fl["dh_s"] / fl["n"], fl["sign_s"] / fl["n"], fl["verify_s"] / fl["n"]
    floor = {"ecdh_ms": t_dh * 1e3, "sign_ms": t_sign * 1e3, "verify_chain_and_sig_ms": t_verify * 1e3,
             "psk_floor_per_s": 1 / t_dh, "ecdsa_floor_per_s": 1 / (t_dh + t_sign + t_verify)}
    ratio_psk = psk["per_s"] / floor["psk_floor_per_s"]
    ratio_ecdsa = cert["per_s"] / floor["ecdsa_floor_per_s"]
    legit_s = flood["server_s"] - flood["spoof_s"]

    def per_msg(r):
        return "/".join(f"{r[k] / r['exchanges'] * 1e6:.0f}" for k in ("mm1_s", "mm3_s", "mm5_s"))

    print(f"crypto floor: ECDH P-256 {floor['ecdh_ms']:.3f} ms, sign {floor['sign_ms']:.3f} ms, "
          f"verify cert+SIG {floor['verify_chain_and_sig_ms']:.3f} ms")
    print(f"PSK + group 19:        {psk['per_s']:8.0f} exchanges/s  (floor {floor['psk_floor_per_s']:8.0f}/s, "
          f"ratio {ratio_psk:.3f}); responder us per message 1/3/5: {per_msg(psk)}")
    print(f"ECDSA-P256 + group 19: {cert['per_s']:8.0f} exchanges/s  (floor {floor['ecdsa_floor_per_s']:8.0f}/s, "
          f"ratio {ratio_ecdsa:.3f}); responder us per message 1/3/5: {per_msg(cert)}")
    print(f"flood: {flood['spoofed']} spoofed message 1s absorbed at {flood['spoofed'] / flood['spoof_s']:.0f}/s "
          f"while completing {flood['exchanges']} PSK exchanges ({flood['exchanges'] / flood['server_s']:.0f}/s of server time "
          f"incl. the flood); half-open records held at the end: {flood['half_open_end']} (limit {Phase1Config.__dataclass_fields__['max_half_open'].default})")
    summary = {
        "name": "phase1",
        "exchanges": n,
        "psk_g19_per_s": round(psk["per_s"], 1),
        "ecdsa_p256_g19_per_s": round(cert["per_s"], 1),
        "crypto_floor_psk_per_s": round(floor["psk_floor_per_s"], 1),
        "crypto_floor_ecdsa_per_s": round(floor["ecdsa_floor_per_s"], 1),
        "ratio_psk": round(ratio_psk, 3),
        "ratio_ecdsa": round(ratio_ecdsa, 3),
        "spoofed_mm1_per_s": round(flood["spoofed"] / flood["spoof_s"], 1),
        "legit_per_s_during_flood": round(flood["exchanges"] / flood["server_s"], 1),
        "legit_per_s_excluding_flood_time": round(flood["exchanges"] / legit_s, 1),
        "ratio": round(min(ratio_psk, ratio_ecdsa), 3),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
