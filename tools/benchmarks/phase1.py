"""Main Mode responder throughput vs. the cost of its public-key operations.

Run as ``tools/bench phase1`` (or ``python -m tools.benchmarks.phase1``).  One
:class:`gkm.ike.Phase1Server` completes Main Mode exchanges against simulated in-process
initiators; only the time spent inside the server is counted.  The baseline, measured in the same
run, is the raw ``cryptography`` cost of the public-key work a responder must do per exchange:

* PSK + group 19: ECDH P-256 key generation + derivation;
* ECDSA-P256 certificates + group 19: the above + one ECDSA sign (SIG_R) + verifying the peer's
  chain (one ECDSA verify of the certificate by the CA + one of SIG_I).

Times are CPU time of this process (``time.process_time``) for both sides of the comparison, so
other load on a shared host does not skew the ratio.  ``ratio`` = achieved exchanges/s ÷ crypto-floor exchanges/s for the certificate case (1.0 would
mean all overhead besides the public-key operations is free).  A third run interleaves spoofed
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gkm.ike import (
    AuthMethod, CertCredential, HashAlg, Identity, MainMode, Phase1Config, Phase1Established, Phase1Server,
    Proposal, PskStore, Role, State,
)

KS = ("198.51.100.1", 848)
UTC = datetime.timezone.utc


def _pki():
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

    return ca, ca_key, leaf("ks"), leaf("gm")


def _configs(method, pki, n_peers):
    wall = time.time() - time.monotonic()
    prop = (Proposal(method, 19, HashAlg.SHA2_256),)
    if method is AuthMethod.PRE_SHARED_KEY:
        psk = b"benchmark pre-shared key"
        srv = Phase1Config(prop, local_id=Identity.ip(KS[0]), psk=PskStore({f"10.{i >> 8 & 255}.{i & 255}.2": psk for i in range(n_peers)}))
        gm = Phase1Config(prop, local_id=Identity.ip("10.0.0.2"), psk=PskStore({KS[0]: psk}))
        return srv, gm
    ca, _k, (kc, kk), (gc, gk) = pki
    srv = Phase1Config(prop, credential=CertCredential(kc, kk), trust_anchors=(ca,), wall_time_offset=wall, max_half_open=1 << 20)
    gm = Phase1Config(prop, credential=CertCredential(gc, gk), trust_anchors=(ca,), wall_time_offset=wall)
    return srv, gm


def run_exchanges(method, pki, n, spoof_per_exchange=0):
    srv_cfg, gm_cfg = _configs(method, pki, n)
    server = Phase1Server(srv_cfg)
    t_server = 0.0
    t_spoof = 0.0
    done = 0
    spoofed = 0
    perf = time.process_time  # CPU time of this process: robust against other load on the host
    for i in range(n):
        addr = (f"10.{i >> 8 & 255}.{i & 255}.2", 848)
        gm = MainMode(gm_cfg, Role.INITIATOR, KS)
        now = time.monotonic()
        gm.start(now)
        template = None
        for _round in range(4):
            out = gm.datagrams_to_send()
            if not out:
                break
            for data, _a in out:
                if template is None:
                    template = data
                t = perf()
                server.receive_datagram(data, addr, now)
                replies = server.datagrams_to_send()
                t_server += perf() - t
                for r, _ra in replies:
                    gm.receive_datagram(r, KS, now)
            if spoof_per_exchange and template is not None:
                t = perf()
                for j in range(spoof_per_exchange):
                    server.receive_datagram(os.urandom(8) + template[8:], (f"172.{j & 15}.{spoofed >> 8 & 255}.{spoofed & 255}", 500), now)
                    spoofed += 1
                server.datagrams_to_send()
                dt = perf() - t
                t_spoof += dt
                t_server += dt
        while (ev := server.next_event()) is not None:
            if isinstance(ev, Phase1Established):
                done += 1
        if gm.state is not State.ESTABLISHED:
            raise SystemExit(f"exchange {i} did not complete: {gm.failure}")
    return {"exchanges": done, "server_s": t_server, "per_s": done / t_server, "spoofed": spoofed,
            "spoof_s": t_spoof, "half_open_end": server.half_open_count}


def crypto_floor(pki, n):
    """Per-exchange public-key work of the responder, straight on cryptography (CPU seconds)."""
    ca, ca_key, (kc, kk), (gc, gk) = pki
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    digest = os.urandom(32)
    from cryptography.hazmat.primitives.asymmetric import utils

    sig_alg = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    peer_sig = gk.sign(digest, sig_alg)
    perf = time.process_time
    t = perf()
    for _ in range(n):
        k = ec.generate_private_key(ec.SECP256R1())
        k.exchange(ec.ECDH(), peer)
    t_dh = perf() - t
    t = perf()
    for _ in range(n):
        kk.sign(digest, sig_alg)
    t_sign = perf() - t
    tbs_alg = ec.ECDSA(gc.signature_hash_algorithm)
    t = perf()
    for _ in range(n):
        ca_key.public_key().verify(gc.signature, gc.tbs_certificate_bytes, tbs_alg)  # chain: CA -> leaf
        gc.public_key().verify(peer_sig, digest, sig_alg)  # SIG_I
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
    args = ap.parse_args(argv)
    pki = _pki()
    n = args.exchanges
    rounds = max(1, args.rounds)
    # Interleave the baseline with the measured runs so that a varying load on the host hits
    # both sides of the ratio alike.
    fl: dict = {}
    psk: dict = {}
    cert: dict = {}
    flood: dict = {}
    for _ in range(rounds):
        _merge(fl, crypto_floor(pki, max(40, n // rounds)))
        _merge(psk, run_exchanges(AuthMethod.PRE_SHARED_KEY, pki, max(1, n // rounds)))
        _merge(cert, run_exchanges(AuthMethod.ECDSA_256, pki, max(1, n // rounds)))
        _merge(flood, run_exchanges(AuthMethod.PRE_SHARED_KEY, pki, max(10, n // (4 * rounds)), args.spoof_per_exchange))
    for r in (psk, cert, flood):
        r["per_s"] = r["exchanges"] / r["server_s"]
    t_dh, t_sign, t_verify = fl["dh_s"] / fl["n"], fl["sign_s"] / fl["n"], fl["verify_s"] / fl["n"]
    floor = {"ecdh_ms": t_dh * 1e3, "sign_ms": t_sign * 1e3, "verify_chain_and_sig_ms": t_verify * 1e3,
             "psk_floor_per_s": 1 / t_dh, "ecdsa_floor_per_s": 1 / (t_dh + t_sign + t_verify)}
    legit_s = flood["server_s"] - flood["spoof_s"]
    print(f"crypto floor: ECDH P-256 {floor['ecdh_ms']:.3f} ms, sign {floor['sign_ms']:.3f} ms, "
          f"verify cert+SIG {floor['verify_chain_and_sig_ms']:.3f} ms")
    print(f"PSK + group 19:        {psk['per_s']:8.0f} exchanges/s  (floor {floor['psk_floor_per_s']:8.0f}/s, "
          f"ratio {psk['per_s'] / floor['psk_floor_per_s']:.3f})")
    print(f"ECDSA-P256 + group 19: {cert['per_s']:8.0f} exchanges/s  (floor {floor['ecdsa_floor_per_s']:8.0f}/s, "
          f"ratio {cert['per_s'] / floor['ecdsa_floor_per_s']:.3f})")
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
        "ratio_psk": round(psk["per_s"] / floor["psk_floor_per_s"], 3),
        "spoofed_mm1_per_s": round(flood["spoofed"] / flood["spoof_s"], 1),
        "legit_per_s_during_flood": round(flood["exchanges"] / flood["server_s"], 1),
        "legit_per_s_excluding_flood_time": round(flood["exchanges"] / legit_s, 1),
        "ratio": round(cert["per_s"] / floor["ecdsa_floor_per_s"], 3),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
