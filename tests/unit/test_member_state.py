"""A member's saved group state: the strict codec (gkm.gdoi.member_state), the durable file
(gkm.daemon.member_store), and the engine that resumes from it instead of registering
(gkm.gdoi.member.MemberEngine.resume), on a fake clock with the in-memory kernel."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gkm.daemon.member_store import MemberStateFiles
from gkm.gdoi import member_state
from gkm.gdoi.keys import GroupKek, LkhKeys
from gkm.gdoi.member import (
    ActivateOutbound, ForgetState, InstallSas, ListenForPush, MemberState, OpenRegistration,
    RefusedInput, RemoveSas, ResyncScheduled, SaveState, StateDiscarded, StateRestored,
    StateSaveFailed,
)
from gkm.gdoi.member_state import MemberSnapshot, MemberStateError, SavedTek
from gkm.gdoi.push import Evicted, KekDeleted, PushRejected, Rekeyed
from tests.unit.test_member_engine import GID, TIMING, World, registered, tek

N = ipaddress.ip_network
PUB = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def kek(spi: bytes = b"K" * 16, life: int = 1000) -> GroupKek:
    return GroupKek(GID, spi, N("10.0.0.1/32"), 848, N("239.192.0.1/32"), 848, "aes-cbc-128",
                    bytes(range(16)), bytes(16), "ecdsa-p256", PUB, life)


def snap(now: float = 1000.0, **kw) -> MemberSnapshot:
    v = dict(group_id=GID, key_server="10.0.0.1:848", kek=kek(), kek_expires_at=now + 900,
             seq=7, lkh=LkhKeys(((0, 5, b"a" * 16), (1, 2, b"b" * 16))), gap=(2.0, None),
             teks=(SavedTek(tek(0x100), now + 90, True),
                   SavedTek(tek(0x200), now + 95, False, activate_at=now + 1.0)),
             saved_at=now)
    v.update(kw)
    return MemberSnapshot(**v)


# ---------------------------------------------------------------------------------- codec

def test_codec_round_trips_across_clocks_and_hides_keys():
    s = snap()
    data = member_state.encode(s, wall_offset=5000.0)
    assert json.loads(data)["state"]["saved_at"] == 6000.0  # wall-clock time in the file
    back = member_state.decode(data, wall_offset=4000.0)  # the next process's clock
    assert back.saved_at == 2000.0 and back.kek_expires_at == 2900.0
    assert back.kek == s.kek and back.lkh == s.lkh and back.seq == 7 and back.gap == (2.0, None)
    assert [(t.tek, t.expires_at - 1000, t.outbound, t.activate_at) for t in back.teks] == \
        [(t.tek, t.expires_at, t.outbound, None if t.activate_at is None else t.activate_at
          + 1000) for t in s.teks]
    assert s.kek.key.hex() not in repr(back) and "keymat" not in repr(back)


def _tamper(data: bytes, change) -> bytes:
    doc = json.loads(data)
    change(doc["state"])
    doc["sha256"] = member_state._digest(doc["state"])  # a consistent digest: the field check
    return json.dumps(doc).encode()


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("seq"), "state: missing ['seq']"),
    (lambda b: b.update(extra=1), "state: unknown ['extra']"),
    (lambda b: b.update(version=3), "version: 3, this msecd reads 1 and 2"),
    (lambda b: b.update(seq=-1), "seq: not an integer"),
    (lambda b: b.update(seq=True), "seq: not an integer"),
    (lambda b: b["kek"].update(spi="00" * 8), "kek.spi: not 16 bytes"),
    (lambda b: b["kek"].update(key="zz"), "kek.key: not a hex string"),
    (lambda b: b["kek"].update(cipher="des"), "kek.cipher: unknown 'des'"),
    (lambda b: b["teks"][0].update(keymat="00"), "teks[0]: key lengths do not fit"),
    (lambda b: b["teks"][0].update(expires_at="soon"), "teks[0].expires_at: not a finite"),
    (lambda b: b["teks"][1].update(spi=0x100), "teks: an SPI twice"),
    (lambda b: b["lkh"][1].__setitem__(0, 3), "lkh[1].level: 3, expected 1"),
    (lambda b: b.update(gap=[1]), "gap: not [activation, deactivation]"),
])
def test_decode_is_strict_and_names_the_field(change, message):
    data = _tamper(member_state.encode(snap()), change)
    with pytest.raises(MemberStateError) as e:
        member_state.decode(data)
    assert message in str(e.value)


@pytest.mark.parametrize("data", [b"", b"\xff", b"[]", b"{}", b'{"state": {}, "sha256": 1}',
                                  b"[" * 100_000, b" " * (member_state.MAX_BYTES + 1)])
def test_garbage_is_refused(data):
    with pytest.raises(MemberStateError):
        member_state.decode(data)


def test_a_digest_that_is_not_ascii_is_refused():
    doc = json.loads(member_state.encode(snap()))
    doc["sha256"] = "\u00e9" * 64
    with pytest.raises(MemberStateError, match="sha256: does not match"):
        member_state.decode(json.dumps(doc).encode())


def test_a_flipped_byte_fails_the_digest():
    data = bytearray(member_state.encode(snap()))
    i = data.index(b'"seq": 7') + len(b'"seq": ')
    data[i:i + 1] = b"8"
    with pytest.raises(MemberStateError, match="sha256: does not match"):
        member_state.decode(bytes(data))


# ----------------------------------------------------------------------------------- file

def test_file_is_private_replaced_whole_and_forgotten(tmp_path):
    files = MemberStateFiles(tmp_path)
    assert files.load(GID, 0.0) is None
    files.save(snap(), 0.0)
    p = files.path(GID)
    assert p == tmp_path / "member" / f"group-{GID}.state"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    files.save(snap(seq=9), 0.0)
    assert files.load(GID, 0.0).seq == 9 and os.listdir(p.parent) == [p.name]  # no temp left
    p.write_bytes(p.read_bytes()[:-40])  # torn
    with pytest.raises(MemberStateError):
        files.load(GID, 0.0)
    files.forget(GID)
    files.forget(GID)
    assert files.load(GID, 0.0) is None


# --------------------------------------------------------------------------------- engine

def real_world(**kw) -> World:
    return World(outcome=registered(tek(0x100), kek=kek(), seq=3), **kw)


def test_the_state_is_saved_before_the_sas_it_describes():
    w = real_world().register()
    kinds = [type(a) for a in w.actions]
    assert kinds.index(SaveState) < kinds.index(InstallSas)
    assert w.saved.seq == 3 and [t.tek.spi for t in w.saved.teks] == [0x100]
    w.actions = []
    w.push(Rekeyed(GID, (tek(0x200),), kek(), 4, gap=None))
    kinds = [type(a) for a in w.actions]
    assert kinds[:2] == [SaveState, InstallSas]
    assert w.saved.seq == 4 and {t.tek.spi for t in w.saved.teks} == {0x100, 0x200}
    nxt = next(t for t in w.saved.teks if t.tek.spi == 0x200)
    assert nxt.activate_at == w.now + 2.0 and not nxt.outbound
    w.push(Rekeyed(GID, (tek(0x300),), kek(b"L" * 16), 5, new_kek=True))
    assert w.saved.kek.spi == b"L" * 16 and w.saved.seq == 0  # SEQ restarts under a new KEK
    w.push(PushRejected(GID, "SEQ 1 not greater than 1 (replay)"))
    assert w.saved.seq == 0  # a rejected PUSH saves nothing


def test_eviction_and_kek_delete_forget_the_state():
    for ev in (Evicted(GID), KekDeleted(GID, b"K" * 16)):
        w = real_world().register()
        w.push(ev)
        assert w.take(ForgetState) and w.saved is None


def _restarted(saved: MemberSnapshot, now: float, adopted=frozenset()) -> World:
    w = real_world(adopted=adopted)
    w.now = now
    w.e.resume(saved, now)
    return w.drain()


def test_a_restarted_member_resumes_without_registering():
    first = real_world().register()
    first.push(Rekeyed(GID, (tek(0x200),), kek(), 4))
    saved = first.saved
    # the process dies; the kernel keeps its SAs; 3 s later a new msecd starts
    w = _restarted(saved, first.now + 3, adopted=frozenset(first.kernel_spis()))
    assert not w.take(OpenRegistration) and w.e.state is MemberState.REGISTERED
    (ev,) = [e for e in w.events if isinstance(e, StateRestored)]
    assert ev.seq == 4 and ev.spis == (0x100, 0x200) and ev.adopted == (0x100, 0x200)
    (inst,) = w.take(InstallSas)
    assert not inst.switch and {t.spi for t in inst.teks} == {0x100, 0x200}
    assert {t.lifetime_s for t in inst.teks} == {97}  # what is left, not the original 100
    assert w.take(ListenForPush) and w.e.restored and w.e.last_seq == 4
    assert w.e.kek_spi == b"K" * 16
    # the timeline carries on: the sender switches to 0x200 when its activation time comes
    w.advance(first.now + 2)
    assert [a.spi for a in w.take(ActivateOutbound)] == [0x200]
    # and the next PUSH applies
    w.push(Rekeyed(GID, (tek(0x300),), kek(), 5))
    assert w.e.rekeys == 1 and 0x300 in w.kernel_spis() and w.saved.seq == 5


def test_a_restart_after_the_retirement_time_does_not_bring_the_old_sa_back():
    first = real_world().register()
    first.push(Rekeyed(GID, (tek(0x200),), kek(), 4))
    saved = first.saved  # 0x100 retires at +5 s (DTD), 0x200 sends from +2 s (ATD)
    w = _restarted(saved, first.now + 6, adopted=frozenset({0x100, 0x200}))
    (inst,) = w.take(InstallSas)
    assert [t.spi for t in inst.teks] == [0x200] and w.e.adopted == {0x100}
    w.advance(w.now)
    assert [a.spi for a in w.take(ActivateOutbound)] == [0x200]
    w.advance(w.now + 5)  # the one left behind goes after the deactivation delay
    assert [a.spis for a in w.take(RemoveSas)] == [(0x100,)]


def test_a_restart_puts_back_an_sa_the_kernel_lost_and_retires_strangers():
    first = real_world().register()
    w = _restarted(first.saved, first.now + 1, adopted=frozenset({0x77}))
    assert w.kernel_spis() == {0x100}  # installed again from the saved keys
    w.advance(w.now + 5)
    assert [a.spis for a in w.take(RemoveSas)] == [(0x77,)]


@pytest.mark.parametrize("change, reason", [
    (dict(kek_expires_at=1000.0), "stale: its KEK expired"),
    (dict(teks=(SavedTek(tek(0x100), 1000.0, True),)), "stale: every TEK expired"),
    (dict(key_server="10.9.9.9:848"), "key server 10.9.9.9:848 is not configured any more"),
    (dict(group_id=GID + 1), f"saved state of group {GID + 1}"),
])
def test_an_unusable_state_is_discarded_and_the_member_registers(change, reason):
    w = _restarted(snap(**change), 1000.0)
    assert [e.reason for e in w.events if isinstance(e, StateDiscarded)] == [reason]
    assert w.take(OpenRegistration) and w.e.state is MemberState.CONNECTING
    assert not w.take(InstallSas) and not w.e.restored


def test_resume_only_from_idle():
    w = real_world().register()
    with pytest.raises(RefusedInput):
        w.e.resume(snap(), w.now)


def test_a_failed_save_is_reported_and_the_keys_work_on():
    w = real_world()
    w.e.start(w.now)
    w.drain()
    w.e.registration_opened(("10.0.0.1", 848), w.now)
    w.e.receive_registration(b"reply", ("10.0.0.1", 848), w.now)
    save = next(a for a in iter(w.e.next_action, None) if isinstance(a, SaveState))
    w.e.state_save_failed(save, "ENOSPC", w.now)
    with pytest.raises(RefusedInput):
        w.e.state_saved(save, w.now)
    w.drain()
    assert w.take(ForgetState)  # an older saved state would mislead a restart
    assert w.kernel_spis() == {0x100} and w.e.state is MemberState.REGISTERED
    assert w.e.state_error == "cannot save the group state: ENOSPC"
    assert any(isinstance(e, StateSaveFailed) for e in w.events)


# ------------------------------------------------------- missed rekeys: re-register, jittered

def test_an_lkh_update_it_cannot_apply_makes_the_member_register_again():
    w = real_world().register()
    w.push(PushRejected(GID, "LKH update part 2/3 at SEQ 9 without parts 1..1", resync=True))
    (ev,) = [e for e in w.events if isinstance(e, ResyncScheduled)]
    assert ev.in_s == 2.5 and "could not be applied" in ev.reason
    w.advance(w.now + 2.4)
    assert w.e.state is MemberState.REGISTERED
    w.advance(w.now + 0.1)
    assert w.e.state is MemberState.CONNECTING


def test_an_expired_kek_stops_push_and_registers_again_within_the_jitter():
    w = World(outcome=registered(tek(0x100, life=5000), kek=kek(life=50), seq=1))
    w.register()
    w.e.next_attempt = None  # say the planned refresh was lost: the KEK still runs out
    w.advance(w.now + 50)
    assert w.e.kek_spi is None and w.take(ForgetState)
    (ev,) = [e for e in w.events if isinstance(e, ResyncScheduled)]
    assert ev.reason == "the KEK expired with no rekey"
    w.advance(w.now + ev.in_s)
    assert w.e.state is MemberState.CONNECTING


def test_jitter_spreads_members_that_missed_the_same_rekey():
    delays = []
    for r in (0.0, 0.3, 0.9):
        w = real_world()
        w.e._random = lambda r=r: r
        w.register()
        w.e.sa_expired(0x100, False, w.now)
        w.drain()
        if r == 0.0:
            assert w.e.state is MemberState.CONNECTING  # a delay of 0: at once
            continue
        delays.append(w.e.next_attempt - w.now)
    assert delays == [pytest.approx(0.3 * 5.0), pytest.approx(0.9 * 5.0)]


def test_without_jitter_a_missed_rekey_registers_at_once():
    w = real_world()
    w.e.timing = replace(TIMING, jitter=False)
    w.register()
    w.e.sa_expired(0x100, False, w.now)
    w.drain()
    assert w.e.state is MemberState.CONNECTING


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_value_in_any_field_is_refused_cleanly_or_read(data):
    """A valid file with one value anywhere replaced (digest made right): decode returns a
    snapshot or raises MemberStateError, nothing else."""
    doc = json.loads(member_state.encode(snap()))
    node, path = doc["state"], []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                        else range(len(node))))
        path.append(key)
        node = node[key]
    value = data.draw(_JSON)
    if path:
        parent = doc["state"]
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value
    else:
        doc["state"] = value
    try:
        doc["sha256"] = member_state._digest(doc["state"])
    except ValueError:  # NaN and the like cannot be canonical JSON: nothing to test
        return
    try:
        member_state.decode(json.dumps(doc).encode())
    except MemberStateError:
        pass
