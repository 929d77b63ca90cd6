"""Fuzzing the GSA_AUTH engines with authenticated but hostile content: the inner payloads of a
real exchange's request (to the GCKS) and response (to the member) are mutated, then protected
again with the real SK keys, so every input gets past the SK check into the engines' logic
(the payload decoders, :func:`gkm.ikev2.gsa_map.read_group`, the AUTH and identity checks).
Nothing may escape an input method, and only the engines' own event types come out; a member
only registers with keys that read consistently.  MSEC_FUZZ_ITERATIONS/50 inputs per role
(each input costs an AES-GCM seal and, for the GCKS, possibly a store commit)."""

from __future__ import annotations

import os
import random

import pytest

from gkm.gdoi import MemberRefused, MemberRegistered
from gkm.ikev2 import WireError, decode_message, encode_message
from gkm.ikev2.events import GsaPeerRefused, GsaRegistered, GsaRegistrationFailed
from gkm.ikev2.registration import GsaAuthInitiator
from gkm.ikev2.sk import SkCipher, protect, unprotect

from .test_gdoi_support import NOW
from .test_ikev2_registration import GM, KS, World, drain, psk_member
from .test_wire_fuzz import _length_fields, mutate

ITERATIONS = int(os.environ.get("MSEC_FUZZ_ITERATIONS", "100000")) // 50
SEED = int(os.environ.get("MSEC_FUZZ_SEED", "9838"))


class Transcript:
    """One real PSK registration; the plaintext request and response as unprotected messages.
    ``ppk``: with a post-quantum preshared key (RFC 8784: PPK_IDENTITY, NO_PPK_AUTH, the AUTH
    under SK_pi'/SK_pr')."""

    def __init__(self, tmp_path, ppk: bool = False) -> None:
        if ppk:
            from .test_ikev2_ppk import PpkWorld, member
            self.world, self.cfg = PpkWorld(tmp_path, lkh=True), member(sender=True)
        else:
            self.world, self.cfg = World(tmp_path, lkh=True), psk_member(sender=True)
        self.est_i, self.est_r = self.world.establish()
        m = GsaAuthInitiator(self.cfg, self.est_i)
        m.start(NOW)
        [(req, _)] = m.datagrams_to_send()
        self.world.gcks.receive_datagram(req, GM, NOW)
        self.world.gcks.commit(NOW)
        [(resp, _)] = self.world.gcks.datagrams_to_send()
        m.receive_datagram(resp, KS, NOW)
        assert isinstance(m.next_event(), GsaRegistered)
        drain(self.world.gcks)
        keys = self.est_i.keys
        self.requests = [self._plain(req, SkCipher.for_sender(keys, True))]
        self.responses = [self._plain(resp, SkCipher.for_sender(keys, False))]

    @staticmethod
    def _plain(data: bytes, cipher: SkCipher) -> bytes:
        msg = unprotect(data, cipher)
        return encode_message(msg.header, msg.payloads)

    def _sealed(self, plain: bytes, initiator: bool) -> bytes | None:
        try:
            msg = decode_message(plain)
        except WireError:
            return None  # the decoder's own fuzz target covers these
        if msg.encrypted is not None:
            return None  # an SK payload inside the SK payload: refused by unprotect, dropped
        h = decode_message(self.requests[0] if initiator else self.responses[0]).header
        try:
            return protect(h, msg.payloads, SkCipher.for_sender(self.est_i.keys, initiator))
        except WireError:
            return None

    def gcks_run(self, plain: bytes, failures: list) -> bool:
        data = self._sealed(plain, True)
        if data is None:
            return False
        gcks = self.world.gcks
        gcks.add_sa(self.est_r, NOW)  # a fresh IKE SA state for every input
        try:
            gcks.receive_datagram(data, GM, NOW)
            gcks.commit(NOW)
        except Exception as e:  # noqa: BLE001 - what we hunt
            failures.append((plain.hex(), repr(e)))
            return False
        out = gcks.datagrams_to_send()
        for e in drain(gcks):
            if not isinstance(e, (MemberRegistered, MemberRefused, GsaPeerRefused)):
                failures.append((plain.hex(), f"event {e!r}"))
        if len(out) != 1:
            failures.append((plain.hex(), f"{len(out)} answers to one authenticated request"))
        return True

    def member_run(self, plain: bytes, failures: list) -> bool:
        data = self._sealed(plain, False)
        if data is None:
            return False
        m = GsaAuthInitiator(self.cfg, self.est_i)
        m.start(NOW)
        m.datagrams_to_send()
        try:
            m.receive_datagram(data, KS, NOW)
        except Exception as e:  # noqa: BLE001
            failures.append((plain.hex(), repr(e)))
            return False
        evs = drain(m)
        if len(evs) != 1 or not isinstance(evs[0], (GsaRegistered, GsaRegistrationFailed)):
            failures.append((plain.hex(), f"events {evs!r}"))
        elif isinstance(evs[0], GsaRegistered) and not evs[0].registered.teks:
            failures.append((plain.hex(), "registered without a TEK"))
        return isinstance(evs[0], GsaRegistered) if evs else False


@pytest.mark.parametrize("ppk", [False, True], ids=["psk", "psk+ppk"])
def test_fuzz_gsa_auth_engines(tmp_path, ppk):
    rng = random.Random(SEED)
    t = Transcript(tmp_path, ppk)
    failures: list = []
    reached = registered = 0
    lengths_q, lengths_r = [_length_fields(s) for s in t.requests], [_length_fields(s) for s in t.responses]
    for n in range(ITERATIONS):
        reached += t.gcks_run(mutate(rng, t.requests, lengths_q), failures)
        registered += t.member_run(mutate(rng, t.responses, lengths_r), failures)
        if len(failures) > 10:
            break
    assert failures == [], failures[:3]
    assert reached > ITERATIONS // 10, reached  # the mutations get into the engines' logic
    assert 0 < registered < ITERATIONS, registered  # some mutations keep a usable answer, most do not
