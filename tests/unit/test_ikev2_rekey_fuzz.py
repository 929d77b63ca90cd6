"""Fuzzing the GSA_REKEY receiver: mutated datagrams (which the ICV stops) and mutated inner
payload chains validly encrypted under the Rekey SA (which reach the GSA/KD/Delete checks).
The receiver never raises, emits only its four event types, and a refused input leaves its
state unchanged (and counts no internal error).  MSEC_FUZZ_ITERATIONS inputs in all, half per
mode."""

from __future__ import annotations

import os
import random
import struct

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gkm.ikev2.constants import HEADER_LENGTH, ExchangeType, GcAuth, KeyWrap, PayloadType, ProtocolId
from gkm.ikev2.lkh_map import member_path, wrap_update
from gkm.ikev2.message import Header
from gkm.ikev2.payloads import Delete
from gkm.ikev2.rekey import RekeyApplied, RekeyExcluded, RekeyMissed, RekeyReceiver, RekeyRejected, RekeySender
from gkm.ikev2.rekey_auth import SIGNATURE_ALGORITHMS
from gkm.ikev2.sk import unprotect_chain
from gkm.lkh import LkhTree

from .test_ikev2_rekey import CONFIG, rekey_sa, tek
from .test_wire_fuzz import _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000")) // 2
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "9838"))
EVENTS = (RekeyApplied, RekeyRejected, RekeyExcluded, RekeyMissed)


class Corpus:
    """A Rekey SA, a member's LKH Key Path, and valid GSA_REKEYs (TEKs, a Delete, a new Rekey SA,
    an LKH eviction) with their inner chains, implicit and signed."""

    def __init__(self) -> None:
        self.sa = rekey_sa()
        tree = LkhTree.build(range(16))
        self.key_path = member_path(tree, 3)
        self.alg = SIGNATURE_ALGORITHMS["ed25519"]
        key = ed25519.Ed25519PrivateKey.generate()
        self.spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        lkh = wrap_update(tree, tree.evict([5]), KeyWrap.KW_5649_256)
        builds = [
            dict(teks=((tek(), (0x1001,)), (tek(0x2000, "aes-cbc-256-hmac-sha512"), ())), atd_s=2, dtd_s=9),
            dict(deletes=(Delete(ProtocolId.ESP, 4, (b"\x00\x00\x10\x00",)),)),
            dict(new_rekey_sa=rekey_sa(next_spis=(os.urandom(16),))),
            dict(new_rekey_sa=rekey_sa(), lkh=lkh),
        ]
        self.datagrams, self.chains, self.signed_chains = [], [], []
        for signed in (False, True):
            tx = (RekeySender(self.sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=self.alg, signing_key=key) if signed
                  else RekeySender(self.sa, gcauth=GcAuth.IMPLICIT))
            for b in builds:
                tx.rekey_sa, tx.message_id = self.sa, 0
                d = tx.build(**b)
                _msg, chain = unprotect_chain(d, self.sa.cipher)
                (self.signed_chains if signed else self.chains).append(bytes([d[HEADER_LENGTH]]) + chain)
                if not signed:
                    self.datagrams.append(d)
                rx = self.receiver(signed)
                assert isinstance(rx.receive(d)[0], RekeyApplied)

    def receiver(self, signed: bool = False) -> RekeyReceiver:
        if signed:
            return RekeyReceiver(CONFIG, self.sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=self.alg,
                                 auth_key=self.spki, key_path=self.key_path)
        return RekeyReceiver(CONFIG, self.sa, gcauth=GcAuth.IMPLICIT, key_path=self.key_path)


def seal(sa, first_and_chain: bytes, message_id: int = 3) -> bytes:
    """A GSA_REKEY whose SK (AES-GCM) holds ``chain`` as is, however malformed."""
    first, chain = first_and_chain[0], first_and_chain[1:]
    iv = os.urandom(8)
    plain = chain + b"\x00"
    sk_len = 4 + 8 + len(plain) + 16
    spi_i, spi_r = sa.header_spis
    head = Header(spi_i, spi_r, ExchangeType.GSA_REKEY, 0, message_id).encode(PayloadType.SK, HEADER_LENGTH + sk_len)
    head += struct.pack("!BBH", first, 0, sk_len)
    key, salt = sa.keys.gsk_e[:-4], sa.keys.gsk_e[-4:]
    return head + iv + AESGCM(key).encrypt(salt + iv, plain, head)


def chain_lengths(first_and_chain: bytes) -> list[int]:
    """Offsets of the inner payloads' generic length fields."""
    out, pos, np = [], 1, first_and_chain[0]
    while np and pos + 4 <= len(first_and_chain):
        out.append(pos + 2)
        np, length = first_and_chain[pos], struct.unpack_from("!H", first_and_chain, pos + 2)[0]
        if length < 4:
            break
        pos += length
    return out


def run_one(rx: RekeyReceiver, data: bytes, failures: list) -> bool:
    before = rx.state()
    try:
        evs = rx.receive(data)
    except Exception as e:  # noqa: BLE001 - what we hunt
        failures.append((data.hex(), repr(e)))
        return False
    if len(evs) != 1 or not isinstance(evs[0], EVENTS):
        failures.append((data.hex(), f"events {evs!r}"))
        return False
    if rx.stats["internal_error"]:
        failures.append((data.hex(), f"internal error: {evs[0]!r}"))
    if isinstance(evs[0], (RekeyRejected, RekeyMissed)) and rx.state() != before:
        failures.append((data.hex(), "state changed on a refused input"))
    return isinstance(evs[0], (RekeyApplied, RekeyExcluded))


def test_fuzz_datagrams():
    rng = random.Random(SEED)
    c = Corpus()
    lengths = [_length_fields(d) for d in c.datagrams]
    failures: list = []
    for _ in range(ITERATIONS):
        run_one(c.receiver(), mutate(rng, c.datagrams, lengths), failures)
    assert not failures, failures[:3]


def test_fuzz_encrypted_content():
    """Implicit authentication: mutated content reaches the GSA/KD/Delete/Key Path checks; signed:
    mutated AUTH payloads reach the signature parser (and the signature refuses the rest)."""
    rng = random.Random(SEED + 1)
    c = Corpus()
    failures: list = []
    accepted = 0
    for signed, chains in ((False, c.chains), (True, c.signed_chains)):
        lengths = [chain_lengths(x) for x in chains]
        for _ in range(ITERATIONS // 2):
            data = mutate(rng, chains, lengths)
            if data:
                accepted += run_one(c.receiver(signed), seal(c.sa, data), failures)
    assert not failures, failures[:3]
    assert accepted  # some mutations stay valid: the content really reached the checks
