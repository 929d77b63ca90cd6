"""Fuzzing the member's GSA_INBAND_REKEY receiver (gkm.ikev2.member_inband) and the GCKS's
reading of the answers (gkm.ikev2.inband): mutated datagrams (which the ICV stops) and mutated
inner payload chains validly encrypted under the IKE SA (which reach the GSA/KD/Delete
checks).  Nothing raises, the member emits only its rekey event types and at most one answer,
and a refused input neither answers nor moves the expected Message ID."""

from __future__ import annotations

import dataclasses
import os
import random
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gkm.gdoi.push import Evicted, PushRejected, TeksDeleted, TeksRefreshed
from gkm.ikev2.constants import HEADER_LENGTH, ExchangeType, PayloadType
from gkm.ikev2.events import InbandRekeyAcknowledged, InbandRekeyFailed
from gkm.ikev2.member_inband import InbandReceiver
from gkm.ikev2.message import Header
from gkm.ikev2.sk import SkCipher, unprotect_chain

from .test_gdoi_support import GID, KS, NOW, member_group
from .test_ikev2_daemon_engines import _controller_step, drain
from .test_ikev2_inband import ADDR, roster, setup
from .test_ikev2_rekey_fuzz import chain_lengths
from .test_wire_fuzz import _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000")) // 5
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "2442"))
EVENTS = (TeksRefreshed, TeksDeleted, Evicted, PushRejected)


def seal(sa, first_and_chain: bytes, message_id: int = 0, *, response: bool = False) -> bytes:
    """A GSA_INBAND_REKEY request of the GCKS (or a member's answer) whose SK holds ``chain``
    as is, however malformed (the IKE SA's AES-GCM)."""
    first, chain = first_and_chain[0], first_and_chain[1:]
    cipher = SkCipher.for_sender(sa.keys, initiator=response)
    iv, plain = os.urandom(8), chain + b"\x00"
    sk_len = 4 + 8 + len(plain) + 16
    flags = 0x28 if response else 0
    head = Header(sa.spi_i, sa.spi_r, ExchangeType.GSA_INBAND_REKEY, flags, message_id).encode(
        PayloadType.SK, HEADER_LENGTH + sk_len)
    head += struct.pack("!BBH", first, 0, sk_len)
    key, salt = cipher.enc_key[:-4], cipher.enc_key[-4:]
    return head + iv + AESGCM(key).encrypt(salt + iv, plain, head)


class Corpus:
    """A registered in-band member and the GCKS's requests of a rekey and of an eviction."""

    def __init__(self, tmp_path) -> None:
        f, ks, ctl, regs, _rx = setup(tmp_path)
        self.group = member_group(tmp_path, "gm1")
        self.gsa = regs["gm1"].gsa
        self.sa = self.gsa.ike
        self.datagrams, self.chains = [], []
        for call in (lambda: ctl.rekey(NOW), lambda: ctl.evict(["key-id:gm1"], "fuzz", NOW)):
            _controller_step(f, ctl, call)
            ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
            for d, a in ks.datagrams_to_send():
                if a == ADDR["gm1"]:
                    self.datagrams.append(d)
                    _msg, chain = unprotect_chain(d, SkCipher.for_sender(self.sa.keys, initiator=False))
                    self.chains.append(bytes([d[HEADER_LENGTH]]) + chain)
            self._answer_all(ks)  # so the next request goes out
        assert len(self.datagrams) == 2
        self.ks, self.regs = ks, regs

    @staticmethod
    def _answer_all(ks) -> None:
        for sa in list(ks.g_ikev2.inband._sas.values()):
            if sa.request:
                ks.receive_datagram(seal(sa.est, b"\x00", sa.next_mid, response=True), sa.peer, NOW)
        drain(ks)

    def receiver(self) -> InbandReceiver:
        return InbandReceiver(self.group, self.gsa)


def run_one(rx: InbandReceiver, data: bytes, failures: list) -> bool:
    expect = rx._expect
    try:
        rx.receive_datagram(data, KS, NOW)
        evs = drain(rx)
        out = rx.datagrams_to_send()
    except Exception as e:  # noqa: BLE001 - what we hunt
        failures.append((data.hex(), repr(e)))
        return False
    if any(not isinstance(e, EVENTS) for e in evs) or len(out) > 1:
        failures.append((data.hex(), f"events {evs!r}, {len(out)} answers"))
        return False
    if not out and (evs or rx._expect != expect):
        failures.append((data.hex(), "events or state change without an answer"))
    return any(isinstance(e, (TeksRefreshed, Evicted)) for e in evs)


def test_fuzz_requests(tmp_path):
    rng = random.Random(SEED)
    c = Corpus(tmp_path)
    lengths = [_length_fields(d) for d in c.datagrams]
    failures: list = []
    for _ in range(ITERATIONS // 2):
        run_one(c.receiver(), mutate(rng, c.datagrams, lengths), failures)
    assert not failures, failures[:3]


def test_fuzz_encrypted_content(tmp_path):
    rng = random.Random(SEED + 1)
    c = Corpus(tmp_path)
    lengths = [chain_lengths(x) for x in c.chains]
    failures: list = []
    accepted = 0
    for _ in range(ITERATIONS // 2):
        data = mutate(rng, c.chains, lengths)
        if data:
            accepted += run_one(c.receiver(), seal(c.sa, data), failures)
    assert not failures, failures[:3]
    assert accepted  # some mutations stay valid: the content really reached the checks


def test_fuzz_answers_at_the_gcks(tmp_path):
    """Mutated, validly sealed answers: the GCKS takes the answer (acknowledged or refused by
    an error notify) or drops it, and never raises."""
    rng = random.Random(SEED + 2)
    c = Corpus(tmp_path)
    ks = c.ks
    failures: list = []
    seeds = [b"\x00", b"\x29" + bytes.fromhex("0000000800000018"), b"\x29" + bytes.fromhex("0000000800000000")]
    for _ in range(ITERATIONS // 20):
        data = mutate(rng, seeds, [[] for _s in seeds])
        sas = [s for s in ks.g_ikev2.inband._sas.values()]
        if not sas or not data:
            continue
        sa = sas[0]
        if not sa.request:
            ks.g_ikev2.inband.rekey(GID, [sa.member], NOW)
            ks.datagrams_to_send()
        try:
            ks.receive_datagram(seal(sa.est, data, sa.next_mid, response=True), sa.peer, NOW)
            evs = drain(ks)
        except Exception as e:  # noqa: BLE001
            failures.append((data.hex(), repr(e)))
            continue
        if any(not isinstance(e, (InbandRekeyAcknowledged, InbandRekeyFailed)) for e in evs):
            failures.append((data.hex(), f"events {evs!r}"))
    assert not failures, failures[:3]


def test_fuzz_gsa_registration_at_the_gcks(tmp_path):
    """Mutated GSA_REGISTRATION requests validly sealed under a registered member's IKE SA (so
    they reach the IDg/notify/authorization checks): the GCKS never raises, answers each with
    at most one datagram, emits only registration events, and records a member only for a
    registration it answered with keys."""
    from gkm.gdoi.events import MemberRefused, MemberRegistered
    from gkm.ikev2.constants import IdType
    from gkm.ikev2.events import GsaMemberLeft
    from gkm.ikev2.message import encode_payloads
    from gkm.ikev2.payloads import IdGroup, Notify
    from .test_ikev2_gsa_registration import groups, registered

    rng = random.Random(SEED + 3)
    f, ks, auth = registered(tmp_path, groups(tmp_path))
    sa = auth.sa
    state = ks.g_ikev2.auth._sas[(sa.spi_i, sa.spi_r)]
    seeds = []
    for payloads in ((IdGroup(IdType.KEY_ID, (GID + 1).to_bytes(4, "big")),),
                     (IdGroup(IdType.KEY_ID, (GID + 1).to_bytes(4, "big")), Notify(0, 16394)),  # GROUP_SENDER
                     (IdGroup(IdType.KEY_ID, GID.to_bytes(4, "big")), Notify(0, 14))):  # NO_PROPOSAL_CHOSEN
        first, chain = encode_payloads(payloads)
        seeds.append(bytes([first]) + chain)
    lengths = [chain_lengths(x) for x in seeds]
    failures: list = []
    reached = 0
    for _ in range(ITERATIONS // 20):
        data = mutate(rng, seeds, lengths)
        if not data:
            continue
        mid = state.next_mid
        before = f.provider.store.member_count(GID + 1)
        try:
            ks.receive_datagram(seal_request(sa, data, mid), ("192.0.2.50", 848), NOW)
            ks.commit(NOW)
            out = ks.datagrams_to_send()
            evs = drain(ks)
        except Exception as e:  # noqa: BLE001 - what we hunt
            failures.append((data.hex(), repr(e)))
            continue
        reached += bool(evs)
        if len(out) > 1 or any(not isinstance(e, (MemberRegistered, MemberRefused, GsaMemberLeft)) for e in evs):
            failures.append((data.hex(), f"{len(out)} answers, events {evs!r}"))
        if not any(isinstance(e, MemberRegistered) for e in evs) and f.provider.store.member_count(GID + 1) > before:
            failures.append((data.hex(), "a member recorded without a registration"))
    assert not failures, failures[:3]
    assert reached > ITERATIONS // 200  # the content really reached the registration checks


def seal_request(sa, first_and_chain: bytes, message_id: int) -> bytes:
    """A member's GSA_REGISTRATION request whose SK holds ``chain`` as is."""
    first, chain = first_and_chain[0], first_and_chain[1:]
    cipher = SkCipher.for_sender(sa.keys, initiator=True)
    iv, plain = os.urandom(8), chain + b"\x00"
    sk_len = 4 + 8 + len(plain) + 16
    head = Header(sa.spi_i, sa.spi_r, ExchangeType.GSA_REGISTRATION, 0x08, message_id).encode(
        PayloadType.SK, HEADER_LENGTH + sk_len)
    head += struct.pack("!BBH", first, 0, sk_len)
    key, salt = cipher.enc_key[:-4], cipher.enc_key[-4:]
    return head + iv + AESGCM(key).encrypt(salt + iv, plain, head)


def test_fuzz_the_key_server_engine_whole(tmp_path, caplog):
    """Mutated datagrams of every kind a G-IKEv2 key server sees (IKE_SA_INIT, GSA_AUTH, a
    member's in-band answer, short and odd lengths) into the engine msecd runs (the protocol
    demultiplexer in front of GDOI's and G-IKEv2's engines): nothing escapes it and nothing is
    logged at error level."""
    import logging

    rng = random.Random(SEED + 4)
    f, ks, ctl, regs, rx = setup(tmp_path)
    _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    seeds = []
    for d, a in ks.datagrams_to_send():
        who = next(w for w, x in ADDR.items() if x == a)
        rx[who].receive_datagram(d, KS, NOW)
        seeds += [x for x, _to in rx[who].datagrams_to_send()]
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm2"), protocol="g-ikev2"), KS, NOW)
    gi.start(NOW)
    seeds += [d for d, _a in gi.datagrams_to_send()]
    seeds += [b"\x00" * 17 + b"\x20" + bytes(n) for n in range(0, 12)]
    lengths = [_length_fields(d) for d in seeds]
    failures: list = []
    with caplog.at_level(logging.ERROR):
        for i in range(ITERATIONS // 20):
            data = mutate(rng, seeds, lengths)
            try:
                ks.receive_datagram(data, ADDR["gm1"] if i % 2 else ("192.0.2.77", 848), NOW)
                ks.commit(NOW)
                ks.datagrams_to_send()
                drain(ks)
            except Exception as e:  # noqa: BLE001 - what we hunt
                failures.append((data.hex(), repr(e)))
    assert not failures, failures[:3]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records[:3]
