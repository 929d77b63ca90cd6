"""Authenticated garbage: a peer that holds the phase 1 keys sends mutated GROUPKEY-PULL content
with a correct HASH and encryption.  No exception escapes, nothing is registered from it, and
the member either ignores the message or fails the registration cleanly."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gkm import wire
from gkm.gdoi import PullInitiator, PullResponder, PullState, Registered, RegistrationFailed, StoreKeysProvider
from gkm.gdoi.pull import seal
from gkm.ike import Phase1Established
from gkm.store import KeyStore
from gkm.wire import Nonce
from tests.unit.test_gdoi_support import GID, KS, NOW, events, group_policy, key_server, member, member_addr, pump

_TMP = Path(tempfile.mkdtemp(prefix="gdoi-fuzz-"))
_GROUP = group_policy(_TMP)


def _setup():
    ks, store = key_server(_TMP, [_GROUP])
    m = member(_TMP, "gm1")
    log = []

    def keep(direction, n, data):
        log.append((direction, data))
        return data

    m.start(NOW)
    pump(ks, {member_addr(0): m}, tamper=keep)
    ssa = next(e.sa for e in events(ks) if isinstance(e, Phase1Established))
    pull = [d for _dir, d in log if d[18] == 32]
    return m.phase1_sa, ssa, pull, store


_ISA, _SSA, _PULL, _STORE = _setup()
_PROVIDER = StoreKeysProvider(KeyStore(_TMP / "fuzz-state"))


def _body(sa, data, iv):
    pt = sa.decrypt(iv, data[28:])
    msg = wire.decode_message(data[:28] + pt, block_size=16)
    hlen = 4 + len(msg.payloads[0].data)
    return pt[hlen : len(pt) - len(msg.padding)], pt[0], msg  # pt[0]: what follows HASH


def _raw_seal(sa, mid, iv, first_np, rest, prefix):
    h = sa.hash_a(struct.pack("!I", mid) + prefix + rest)
    chain = struct.pack("!BBH", first_np, 0, 4 + len(h)) + h + rest
    chain += bytes(-len(chain) % 16)
    ct = sa.encrypt(iv, chain)
    hdr = wire.encode_header(wire.Header(sa.icookie, sa.rcookie, 32, 1, mid), wire.PayloadType.HASH, 28 + len(ct))
    return hdr + ct


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


_EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITS, st.integers(0, 3))
def test_key_server_authenticated_garbage_message1(edits, cut):
    gm = PullInitiator(_ISA, GID)
    gm.start(NOW)
    (msg1, _), = gm.datagrams_to_send()
    mid = struct.unpack("!I", msg1[20:24])[0]
    rest, _np, msg = _body(_SSA, msg1, _SSA.phase2_iv(mid))
    rest = _mutate(rest, edits)[: len(rest) - cut]
    bad = _raw_seal(_SSA, mid, _SSA.phase2_iv(mid), wire.PayloadType.NONCE, rest, b"")
    resp = PullResponder({GID: _GROUP}, _PROVIDER, rekey_source=KS)
    resp.receive(_SSA, bad, member_addr(0), NOW)
    out = resp.datagrams_to_send()
    assert resp.stats["internal_error"] == 0 and resp.stats["registered"] == 0
    assert len(out) <= 1  # message 2, a refusal, or nothing
    assert _PROVIDER.store.group(GID) is None  # nothing is stored before a message 3


def _member_at_message2():
    gm = PullInitiator(_ISA, GID)
    gm.start(NOW)
    (msg1, _), = gm.datagrams_to_send()
    mid = struct.unpack("!I", msg1[20:24])[0]
    ni = wire.decode_message(msg1[:28] + _SSA.decrypt(_SSA.phase2_iv(mid), msg1[28:]), block_size=16).payloads[1].data
    return gm, mid, ni, msg1[-16:]


def _real_message2_body():
    """Nr + SA of the real exchange, re-encoded (verbatim payload bytes)."""
    mid = struct.unpack("!I", _PULL[0][20:24])[0]
    iv2 = _PULL[0][-16:]
    rest, np, _msg = _body(_ISA, _PULL[1], iv2)
    iv4 = _PULL[2][-16:]
    rest4, np4, _m4 = _body(_ISA, _PULL[3], iv4)
    return rest, rest4, np4


_M2_REST, _M4_REST, _M4_NP = _real_message2_body()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITS, st.booleans())
def test_member_authenticated_garbage(edits, in_message4):
    gm, mid, ni, iv = _member_at_message2()
    nr = bytes(range(32))
    if not in_message4:
        rest = _mutate(_M2_REST, edits)
        gm.receive_datagram(_raw_seal(_SSA, mid, iv, wire.PayloadType.NONCE, rest, ni), KS, NOW)
    else:
        # a correct message 2 built from the real one (its Nr replaced by ours), then garbage 4
        good = wire.decode_payloads(_M2_REST, wire.PayloadType.NONCE, 0, len(_M2_REST), 32)[0]
        msg2, _ = seal(_SSA, mid, iv, (Nonce(nr), good[1]), ni)
        gm.receive_datagram(msg2, KS, NOW)
        assert gm.state is PullState.M3_SENT
        (msg3, _), = gm.datagrams_to_send()
        rest = _mutate(_M4_REST, edits)
        gm.receive_datagram(_raw_seal(_SSA, mid, msg3[-16:], _M4_NP, rest, ni + nr), KS, NOW)
    evs = events(gm)
    assert len(evs) <= 1
    if evs:
        assert isinstance(evs[0], (Registered, RegistrationFailed))
        assert gm.state in (PullState.DONE, PullState.FAILED)
        if isinstance(evs[0], RegistrationFailed):
            assert "internal error" not in evs[0].reason, evs[0].reason


def test_member_refuses_kek_signing_key_of_an_unknown_curve():
    """Found by tools/fuzz: a KEK signing key on a curve cryptography does not know (here the
    P-256 OID's last arc changed) raised UnsupportedAlgorithm inside the member ("internal
    error"); it is a precise refusal of the message now."""
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert _M4_REST.count(p256) == 1
    rest = _M4_REST.replace(p256, p256[:-1] + b"\x30")
    gm, mid, ni, iv = _member_at_message2()
    good = wire.decode_payloads(_M2_REST, wire.PayloadType.NONCE, 0, len(_M2_REST), 32)[0]
    nr = bytes(range(32))
    msg2, _ = seal(_SSA, mid, iv, (Nonce(nr), good[1]), ni)
    gm.receive_datagram(msg2, KS, NOW)
    (msg3, _), = gm.datagrams_to_send()
    gm.receive_datagram(_raw_seal(_SSA, mid, msg3[-16:], _M4_NP, rest, ni + nr), KS, NOW)
    (ev,) = events(gm)
    assert isinstance(ev, RegistrationFailed) and gm.state is PullState.FAILED
    assert "internal error" not in ev.reason and "SIG_ALGORITHM_KEY" in ev.reason, ev.reason
