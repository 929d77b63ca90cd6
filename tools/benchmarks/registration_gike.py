"""The G-IKEv2 modes of ``tools/bench registration`` (:mod:`tools.benchmarks.registration`):
the members' engines, the crypto floor and the in-process breakdown.  Run alone (``tools/bench
registration-gike [ARGS]``) it is ``tools/bench registration --modes g-ikev2-psk,g-ikev2-mlkem [ARGS]``.

**Modes**: ``g-ikev2-psk`` (IKE_SA_INIT with ECDH P-256 alone, then GSA_AUTH with PSK AUTH)
and ``g-ikev2-mlkem`` (ECDH P-256, then ML-KEM-768 over IKE_INTERMEDIATE (RFC 9370), then
GSA_AUTH with PSK AUTH covering IntAuth (RFC 9242)).  The key server is the same msecd
configuration as GDOI's PSK mode (one PSK per member ``gm<i>``, the same group with two TEKs
and a KEK) with ``protocols = ["gdoi", "g-ikev2"]``, so G-IKEv2 members reach its GCKS engine
through the protocol demultiplexer on the same UDP port.  Members are
:class:`gkm.ikev2.member_registration.GikeRegistration` engines built from a
``MemberGroup(protocol="g-ikev2")`` with the member's PSK; the ECDH-only member is given
``mlkem = "off"`` (it offers no ML-KEM), the ML-KEM member the default profile (ML-KEM-768
optional, which the key server always takes).  They all send from 127.0.0.1 (G-IKEv2 finds a
member's PSK by its IDi, not its address), one UDP socket per slot of the window, a new member
(new SPI, nonce, key shares, identity) on it when the last one finished.

**Crypto floor** (:func:`crypto_floor`), CPU time in this process with the project's own
primitives and the sizes of a real exchange (:func:`exchange_shape`: one registration against
the same configuration's engine in process, whose datagrams and key wraps are recorded).  Per
registration, what the GCKS cannot avoid:

* ECDH P-256 (:func:`gkm.ikev2.kex.respond`: key generation, encoding, the peer's point decoded
  and validated, the shared secret), a fresh peer public value each time;
* SKEYSEED and SK_* (:func:`gkm.ikev2.keys.derive_ike_keys`);
* GSA_AUTH: AES-GCM decryption of the request and encryption of the response (the SK payload,
  ``AESGCM`` with the SK_e key schedule per message, on the recorded plaintext sizes); the two
  ``prf(SK_p, ID body)`` of the signed octets, the member's PSK AUTH verified (computed and
  compared) and the GCKS's own computed (:func:`gkm.ikev2.auth.psk_auth` over signed octets of
  the recorded IKE_SA_INIT message sizes);
* the KD: GSK_w (:func:`gkm.ikev2.gsa_map.unicast_gsk_w`) and every key wrap of the recorded
  registration (:func:`gkm.ikev2.gsa_keys.wrap`: each TEK's SA key, the Rekey SA's, any LKH
  path keys), with the recorded algorithm and sizes;
* with ML-KEM also: ML-KEM-768 encapsulation to a fresh encapsulation key
  (:func:`gkm.ikev2.kex.respond`, with the key's validation), the IKE_INTERMEDIATE request
  decrypted and its response encrypted, the RFC 9370 key update
  (:func:`gkm.ikev2.keys.update_ike_keys`) and the two IntAuth PRFs (RFC 9242 §3.3.2) over both
  IKE_INTERMEDIATE messages.

Not in the floor (overhead): payload encoding and decoding, the second decryption of the
IKE_INTERMEDIATE messages that :mod:`gkm.ikev2.intauth` does, random numbers (SPIs, nonces,
IVs), the Rekey SA's key derivation (the same for every member of a group), enrollment and
the store's durable commit, asyncio, sockets, logging.

**Breakdown** (:func:`breakdown`): the same configuration's key server engine (built as msecd
builds it, :class:`gkm.daemon.engines.GdoiFactory`) driven in this process by N members in
lockstep rounds, ``thread_time`` around each request by exchange: IKE_SA_INIT,
IKE_INTERMEDIATE, GSA_AUTH (with the engine's ``commit``, which answers it); and, inside
GSA_AUTH, the keys provider's batch (enrollment, the GSA/KD with its key wraps, and the store's
durable commit: G-IKEv2's GCKS enrolls the registrations of a round in one commit, as GDOI's
GROUPKEY-PULL does, SQLite's WAL and the store's anchor file with its directory fsync'ed once
per round).  The key server's time beyond the
engine ("msecd beyond the engine") can come out negative: the breakdown runs later, in this
process, and on a loaded host its fsyncs' CPU varies more than the daemon's shell costs.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

MODES = ("g-ikev2-psk", "g-ikev2-mlkem")
LABELS = {"g-ikev2-psk": "G-IKEv2 PSK + ECDH P-256", "g-ikev2-mlkem": "G-IKEv2 PSK + P-256 + ML-KEM-768"}
#: requests a member sends per registration (for the retransmission count)
REQUESTS = {"g-ikev2-psk": 2, "g-ikev2-mlkem": 3}
IKE_SA_INIT, GSA_AUTH, IKE_INTERMEDIATE = 34, 39, 43
#: IKE header, SK generic payload header, AES-GCM IV and ICV (every SK message here has no
#: payload outside SK)
_HDR, _SKH, _IV, _ICV = 28, 4, 8, 16


def is_gike(mode: str) -> bool:
    return mode in MODES


def mlkem(mode: str) -> bool:
    return mode == "g-ikev2-mlkem"


def member(mode: str, index: int, key_server: tuple[str, int], psk: str):
    """Member ``gm<index>``'s G-IKEv2 registration engine (PSK), started by the caller."""
    from gkm.ikev2.member_registration import GikeRegistration
    from policy.model import KeyServerAddress, MemberGroup, PskCredential, Secret

    from tools.benchmarks.registration import GID

    group = MemberGroup(GID, (KeyServerAddress(key_server[0], key_server[1]),),
                        PskCredential(f"gm{index}", Secret(psk.encode())), protocol="g-ikev2",
                        mlkem="optional" if mlkem(mode) else "off")
    return GikeRegistration(group, key_server)


# ------------------------------------------------------------------------------ in process


def _engine(mode: str, n: int, workdir: Path, state: Path, name: str):
    from gkm.daemon.engines import GdoiFactory
    from gkm.store import KeyStore
    from policy.config import load_config

    from tools.benchmarks.registration import write_config

    cfg = load_config(write_config(workdir, mode, 848, state, name=name, members=n))
    store = KeyStore(state)
    return GdoiFactory(kernel=False).keyserver(cfg.keyserver, store, time.time()), store


@contextmanager
def _wrapped_wraps(record: list):
    """Record every key wrap the GCKS makes: (algorithm, KWK bytes, plaintext bytes)."""
    from gkm.ikev2 import gsa_map

    real = gsa_map.wrap

    def wrap(kwa, kwk, plain):
        record.append((kwa, len(kwk), len(plain)))
        return real(kwa, kwk, plain)

    gsa_map.wrap = wrap
    try:
        yield
    finally:
        gsa_map.wrap = real


def _drive(mode: str, n: int, burst: int, workdir: Path, state: Path, name: str, on_request=None, provider_hook=None,
           on_commit=None):
    """``n`` G-IKEv2 members against the engine in lockstep rounds of ``burst``; returns
    (registered, [(exchange, request, response)] of the first member)."""
    from gkm.gdoi import MemberRegistered

    from tools.benchmarks.registration import HOST, PSK

    ks, store = _engine(mode, n, workdir, state, name)
    if provider_hook is not None:
        provider_hook(ks.g_ikev2.auth)
    ks_addr = (HOST, 848)
    registered, first = 0, []
    try:
        for b0 in range(0, n, burst):
            members = {}
            for i in range(b0, min(n, b0 + burst)):
                m = member(mode, i, ks_addr, PSK)
                m.start(time.time())
                members[(HOST, 20000 + i)] = m
            while True:
                inbox = [(d, a) for a, m in members.items() for d, _ in m.datagrams_to_send()]
                if not inbox:
                    break
                now = time.time()
                for d, a in inbox:
                    if on_request is not None:
                        on_request(d[18], lambda: ks.receive_datagram(d, a, now))
                    else:
                        ks.receive_datagram(d, a, now)
                    if a == (HOST, 20000):
                        first.append([d[18], bytes(d), b""])
                if on_commit is not None:
                    on_commit(lambda: ks.commit(now))
                else:
                    ks.commit(now)
                out = ks.datagrams_to_send()
                while (ev := ks.next_event()) is not None:
                    registered += isinstance(ev, MemberRegistered)
                for d, a in out:
                    if a == (HOST, 20000) and first and not first[-1][2]:
                        first[-1][2] = bytes(d)
                    if a in members:  # not a finished member of an earlier round
                        members[a].receive_datagram(d, ks_addr, time.time())
            for m in members.values():
                while (ev := m.next_event()) is not None:
                    pass
    finally:
        store.close()
    return registered, [tuple(x) for x in first]


def exchange_shape(mode: str, workdir: Path, state_parent: Path) -> dict:
    """One registration in process: the sizes the floor works on (datagrams by exchange, the
    key wraps)."""
    wraps: list = []
    with _wrapped_wraps(wraps):
        registered, first = _drive(mode, 1, 1, workdir, state_parent / f"shape-{mode}-state", f"shape-{mode}")
    if registered != 1:
        raise SystemExit(f"{mode}: the in-process registration for the floor's sizes failed")
    by = {ex: (req, resp) for ex, req, resp in first}
    shape = {"sa_init": by[IKE_SA_INIT], "gsa_auth": by[GSA_AUTH], "wraps": wraps}
    if mlkem(mode):
        shape["intermediate"] = by[IKE_INTERMEDIATE]
    return shape


def _plain(datagram: bytes) -> int:
    return len(datagram) - _HDR - _SKH - _IV - _ICV


def crypto_floor(mode: str, n: int, shape: dict) -> dict:
    """CPU seconds of the GCKS's unavoidable work for ``n`` registrations of ``mode``, by
    component (module docstring)."""
    from cryptography.hazmat.primitives.asymmetric import ec, mlkem as pq
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from gkm.ikev2 import auth as A
    from gkm.ikev2.constants import KeyExchangeMethod
    from gkm.ikev2.gsa_keys import wrap
    from gkm.ikev2.gsa_map import unicast_gsk_w
    from gkm.ikev2.kex import respond
    from gkm.ikev2.keys import derive_ike_keys, prf, update_ike_keys
    from gkm.ikev2.profile import SUITE

    peers = [ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
             for _ in range(n)]
    eks = [pq.MLKEM768PrivateKey.generate().public_key().public_bytes_raw() for _ in range(n)] if mlkem(mode) else []
    ni, nr, spi_i, spi_r, psk = os.urandom(32), os.urandom(32), os.urandom(8), os.urandom(8), os.urandom(32)
    m1, m2 = shape["sa_init"]
    req, resp = shape["gsa_auth"]
    id_body = bytes(16)  # ID type, RESERVED, "gm<i>"-sized data
    aad = bytes(_HDR + _SKH)
    iv = os.urandom(12)
    t = {"ecdh": 0.0, "mlkem": 0.0, "kdf": 0.0, "sk": 0.0, "auth": 0.0, "kd": 0.0}
    clock = time.process_time
    for i in range(n):
        t0 = clock()
        _ke, secret = respond(KeyExchangeMethod.ECP256, peers[i])
        t1 = clock()
        keys = derive_ike_keys(SUITE, ni, nr, secret, spi_i, spi_r)
        t["ecdh"] += t1 - t0
        t["kdf"] += clock() - t1
        intauth = b""
        if eks:
            ireq, iresp = shape["intermediate"]
            before = keys
            t0 = clock()
            _ct, ss = respond(KeyExchangeMethod.ML_KEM_768, eks[i])
            t1 = clock()
            c = AESGCM(before.sk_ei[:-4]).encrypt(iv, bytes(_plain(ireq)), aad)  # what the member sent ...
            t2 = clock()
            AESGCM(before.sk_ei[:-4]).decrypt(iv, c, aad)  # ... decrypted (only this is timed)
            AESGCM(before.sk_er[:-4]).encrypt(iv, bytes(_plain(iresp)), aad)
            t3 = clock()
            keys = update_ike_keys(before, ss, ni, nr, spi_i, spi_r)
            ia = prf(SUITE.prf, before.sk_pi, bytes(len(ireq) - _IV - _ICV))  # IntAuth_i1 over A | P
            ir = prf(SUITE.prf, before.sk_pr, bytes(len(iresp) - _IV - _ICV))
            intauth = ia + ir + bytes(4)
            t4 = clock()
            t["mlkem"] += t1 - t0
            t["sk"] += (t3 - t2)
            t["kdf"] += t4 - t3
        c = AESGCM(keys.sk_ei[:-4]).encrypt(iv, bytes(_plain(req)), aad)
        t0 = clock()
        AESGCM(keys.sk_ei[:-4]).decrypt(iv, c, aad)
        t1 = clock()
        octets_i = A.signed_octets(m1, nr, keys, True, id_body, intauth)
        A.compare(A.psk_auth(SUITE.prf, psk, octets_i), bytes(32))
        octets_r = A.signed_octets(m2, ni, keys, False, id_body, intauth)
        A.psk_auth(SUITE.prf, psk, octets_r)
        t2 = clock()
        gsk_w = None
        for kwa, kwk_len, plain_len in shape["wraps"]:
            if gsk_w is None:
                gsk_w = unicast_gsk_w(keys, kwa)
            wrap(kwa, gsk_w if kwk_len == len(gsk_w) else os.urandom(kwk_len), bytes(plain_len))
        t3 = clock()
        AESGCM(keys.sk_er[:-4]).encrypt(iv, bytes(_plain(resp)), aad)
        t4 = clock()
        t["sk"] += (t1 - t0) + (t4 - t3)
        t["auth"] += t2 - t1
        t["kd"] += t3 - t2
    return {"n": n, **t}


def breakdown(mode: str, n: int, burst: int, workdir: Path, state_parent: Path) -> dict:
    """Key server engine CPU per registration by exchange, in process (module docstring), ms."""
    clock = time.thread_time
    t = {"ike_sa_init": 0.0, "ike_intermediate": 0.0, "gsa_auth": 0.0, "enroll_and_commit": 0.0}
    names = {IKE_SA_INIT: "ike_sa_init", IKE_INTERMEDIATE: "ike_intermediate", GSA_AUTH: "gsa_auth"}

    def on_request(exchange: int, call) -> None:
        t0 = clock()
        call()
        t[names.get(exchange, "gsa_auth")] += clock() - t0

    def hook(responder) -> None:
        provider = responder.keys
        real = provider.batch

        @contextmanager
        def batch():
            t0 = clock()
            try:
                with real() as b:
                    yield b
            finally:
                t["enroll_and_commit"] += clock() - t0

        provider.batch = batch

    def on_commit(call) -> None:  # the GSA_AUTHs' enrollment and answers (group commit)
        on_request(GSA_AUTH, call)

    registered, _ = _drive(mode, n, burst, workdir, state_parent / f"breakdown-{mode}-state", f"breakdown-{mode}",
                           on_request=on_request, provider_hook=hook, on_commit=on_commit)
    if registered != n:
        raise SystemExit(f"breakdown {mode}: {registered} of {n} members registered")
    t["gsa_auth"] -= t["enroll_and_commit"]  # GSA_AUTH's own work: decrypt, AUTH, GSA/KD response
    return {"registered": registered, **{k: v / max(1, registered) * 1e3 for k, v in t.items()}}


def main(argv=None) -> int:
    """``tools/bench registration-gike`` (``tools/bench`` lists every module here as a
    benchmark): ``tools/bench registration`` with the G-IKEv2 modes only."""
    import sys

    from tools.benchmarks.registration import main as registration

    return registration(["--modes", ",".join(MODES), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
