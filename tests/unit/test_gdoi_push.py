"""GROUPKEY-PUSH (RFC 6407 section 4): a real in-process GROUPKEY-PULL, then PUSH datagrams
built by the key server side (build_push) and received by each member (PushReceiver)."""

from __future__ import annotations

import dataclasses
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gkm import wire
from gkm.wire.header import is_ikev2
from gkm.gdoi import Registered
from gkm.gdoi.keys import new_tek_keymat
from gkm.gdoi.provider import KekKeys, TekKeys, load_signing_public_key
from gkm.lkh import LkhMemberView
from gkm.gdoi.push import (
    _cbc, REKEY_PREFIX, Evicted, KekDeleted, PushReceiver, PushRejected, Rekeyed, TeksDeleted, build_push, lkh_kek_keymat,
    sign_push, verify_push_signature,
)
from gkm.wire.constants import ExchangeType, Flags
from policy.model import SaDirection
from policy.suites import SIGNATURE_SUITES
from tests.unit.test_wire_tshark import dissect
from tests.unit.test_gdoi_support import GID, NOW, events, group_policy, key_server, member, member_addr, register

WALL = int(NOW)


def _registered(m) -> Registered:
    evs = events(m)
    assert len(evs) == 1 and isinstance(evs[0], Registered), evs
    return evs[0]


class Setup:
    def __init__(self, tmp_path, who=("gm1",), lkh=False):
        self.group = group_policy(tmp_path)
        self.ks, self.store = key_server(tmp_path, [self.group], lkh=lkh)
        ms = {member_addr(i): member(tmp_path, w) for i, w in enumerate(who)}
        register(self.ks, ms)
        self.regs = {w: _registered(m) for w, m in zip(who, ms.values())}
        self.signing_key = serialization.load_pem_private_key(self.group.kek.signing_key.read_bytes(), None)
        self.pub = load_signing_public_key(self.group.kek.signing_key)

    def receiver(self, who="gm1") -> PushReceiver:
        r = self.regs[who]
        return PushReceiver(GID, r.kek, r.lkh, r.seq, teks=r.teks)

    def kek(self) -> KekKeys:
        k = self.store.current_kek(GID)
        return KekKeys(k.spi, k.algorithm, k.key, k.expires, self.pub)

    def new_tek(self, name="video") -> TekKeys:
        tp = next(t for t in self.group.teks if t.name == name)
        enc, auth = new_tek_keymat(tp.suite)
        spi = int.from_bytes(os.urandom(4), "big") | 0x10000
        return TekKeys(name, spi, tp.suite.name, enc, auth, WALL + 3600)

    def push(self, seq=None, **kw) -> bytes:
        kw.setdefault("kek", self.kek())
        kw.setdefault("signing_key", self.signing_key)
        if seq is None:
            seq = self.store.next_seq(GID)  # durable before the datagram exists
        return build_push(self.group, seq=seq, now=WALL, **kw)


def _state(r: PushReceiver):
    return (r.kek, r.last_seq, None if r.lkh_view is None else (r.lkh_view.path, r.lkh_view.epoch), r.evicted, r.closed)


def _one(r: PushReceiver):
    evs = events(r)
    assert len(evs) == 1, evs
    return evs[0]


# ------------------------------------------------------------------------------------ tests


def test_push_after_pull_delivers_new_teks(tmp_path):
    s = Setup(tmp_path)
    r = s.receiver()
    assert r.last_seq == 0
    tek = s.new_tek("video")
    data = s.push(new_teks=[tek])
    assert data[16] == wire.PayloadType.SEQ and data[18] == ExchangeType.GROUPKEY_PUSH and data[19] == Flags.ENCRYPTION
    assert data[:16] == s.kek().spi and int.from_bytes(data[24:28], "big") == len(data)
    r.receive_datagram(data, ("192.0.2.1", 848), NOW)
    ev = _one(r)
    assert isinstance(ev, Rekeyed) and ev.seq == 1 and not ev.new_kek and ev.kek == s.regs["gm1"].kek
    (t,) = ev.teks
    assert t.spi == tek.spi and t.keymat == tek.enc_keymat and t.suite == tek.suite
    assert t.direction == SaDirection.SYMMETRIC and t.lifetime_s == 3600
    assert r.last_seq == 1 and s.store.current_seq(GID) == 1


def test_every_push_with_an_sa_carries_the_groups_gap(tmp_path):
    """build_push puts the group's ATD/DTD between SA KEK and SA TEKs (RFC 6407 section
    5.2.1), in a TEK rekey and in a KEK-only one; the member hands them on in Rekeyed; a
    Delete-only PUSH has no SA, so no GAP (nor has an LKH update without TEKs: below)."""
    s = Setup(tmp_path)
    s.group = dataclasses.replace(s.group, activation_delay_s=9, deactivation_delay_s=30)
    r = s.receiver()
    old = s.kek()
    new = KekKeys(os.urandom(16), old.cipher, os.urandom(32), WALL + 7200, s.pub)
    for kw, kinds in (({"new_teks": [s.new_tek("video")]}, [wire.Gap, wire.SaTek]),
                      ({"new_kek": new}, [wire.SaKek, wire.Gap])):
        data = s.push(**kw)
        plain = data[:28] + _cbc(old.keymat[16:], old.keymat[:16], data[28:], False)
        sa = next(p for p in wire.decode_message(plain, block_size=16).payloads if type(p) is wire.GdoiSa)
        assert [type(p) for p in sa.payloads] == kinds
        gap = next(p for p in sa.payloads if type(p) is wire.Gap)
        assert gap.attributes == ((wire.GapAttr.ACTIVATION_TIME_DELAY, 9),
                                  (wire.GapAttr.DEACTIVATION_TIME_DELAY, 30))
        r.receive_datagram(data, ("192.0.2.1", 848), NOW)
        ev = _one(r)
        assert isinstance(ev, Rekeyed) and (ev.gap.activation_s, ev.gap.deactivation_s) == (9, 30)
    data = s.push(seq=1, kek=new, deletes=[0])
    plain = data[:28] + _cbc(new.keymat[16:], new.keymat[:16], data[28:], False)
    assert not any(type(p) is wire.GdoiSa for p in wire.decode_message(plain, block_size=16).payloads)
    r.receive_datagram(data, ("192.0.2.1", 848), NOW)
    assert isinstance(_one(r), TeksDeleted)


def test_lkh_update_without_teks_carries_no_gap(tmp_path):
    """An eviction's LKH PUSH (SA KEK, no TEKs, no Deletes) carries no GAP: ATD and DTD concern
    TEKs.  The member hands on no delays (it keeps its own); the TEK PUSH under the new KEK
    that follows carries the group's, and with TEKs the LKH PUSH carries them too."""
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    s.group = dataclasses.replace(s.group, activation_delay_s=9, deactivation_delay_s=30)
    tree = s.store.load_lkh(GID)
    old = s.kek()

    def sa_kinds(data, kek):
        plain = data[:28] + _cbc(kek.keymat[16:], kek.keymat[:16], data[28:], False)
        sa = next(p for p in wire.decode_message(plain, block_size=16).payloads if type(p) is wire.GdoiSa)
        return [type(p) for p in sa.payloads]

    for gone, teks, kinds in (("key-id:gm3", [], [wire.SaKek]),
                              ("key-id:gm2", [s.new_tek()], [wire.SaKek, wire.Gap, wire.SaTek])):
        r = s.receiver()
        r.lkh_view = LkhMemberView(tree.path("key-id:gm1"), epoch=tree.epoch)
        update = tree.evict([gone])
        (_kid, root) = tree.group_key()
        spi = os.urandom(16)
        new = KekKeys(spi, old.cipher, lkh_kek_keymat(root, spi, old.cipher), WALL + 7200, s.pub)
        data = s.push(kek=old, new_kek=new, lkh_update=update, lkh_root_key=root, new_teks=teks)
        assert sa_kinds(data, old) == kinds
        r.receive_datagram(data, None, NOW)
        ev = _one(r)
        assert isinstance(ev, Rekeyed) and ev.new_kek
        assert (ev.gap is None) == (not teks)
        if not teks:
            follow = s.push(seq=1, kek=new, new_teks=[s.new_tek()], deletes=[0])
            assert sa_kinds(follow, new) == [wire.Gap, wire.SaTek]
            r.receive_datagram(follow, None, NOW)
            ev = next(e for e in events(r) if isinstance(e, Rekeyed))
            assert (ev.gap.activation_s, ev.gap.deactivation_s) == (9, 30)


def test_restricted_sender_keeps_its_direction(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2"))
    tek = s.new_tek("control")  # senders: gm1 only; PUSH says RECEIVER_ONLY to everybody
    data = s.push(new_teks=[tek])
    dirs = {}
    for w in ("gm1", "gm2"):
        r = s.receiver(w)
        r.receive_datagram(data, None, NOW)
        dirs[w] = _one(r).teks[0].direction
    assert dirs == {"gm1": SaDirection.SENDER_ONLY, "gm2": SaDirection.RECEIVER_ONLY}
    # a member that holds no TEK for that selector takes the PUSH's (safe) value
    r = PushReceiver(GID, s.regs["gm1"].kek, None, 0)
    r.receive_datagram(data, None, NOW)
    assert _one(r).teks[0].direction == SaDirection.RECEIVER_ONLY


def test_replayed_push_rejected(tmp_path, caplog):
    s = Setup(tmp_path)
    r = s.receiver()
    data = s.push(new_teks=[s.new_tek()])
    r.receive_datagram(data, None, NOW)
    assert isinstance(_one(r), Rekeyed)
    before = _state(r)
    # the second copy of the same datagram (multicast and unicast): dropped, no warning
    caplog.set_level("DEBUG", logger="gkm.gdoi")
    caplog.clear()
    r.receive_datagram(data, None, NOW)
    ev = _one(r)
    assert isinstance(ev, PushRejected) and ev.duplicate and "SEQ 1" in ev.reason
    assert ev.cause == "duplicate"
    assert _state(r) == before and r.stats["duplicates"] == 1
    assert not [x for x in caplog.records if x.levelname == "WARNING"]
    # an older SEQ, freshly signed, is a replay: refused and logged as one
    r.receive_datagram(s.push(seq=1, new_teks=[s.new_tek()]), None, NOW)
    ev = _one(r)
    assert isinstance(ev, PushRejected) and not ev.duplicate and "replay" in ev.reason
    assert ev.cause == "replay"
    assert _state(r) == before
    # a copy of an earlier datagram once a later one was taken (copies of a rekey of
    # several PUSHes interleave): still a quiet duplicate, nothing changes
    r.receive_datagram(s.push(new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(r), Rekeyed)
    later = _state(r)
    caplog.clear()
    r.receive_datagram(data, None, NOW)
    ev = _one(r)
    assert isinstance(ev, PushRejected) and ev.duplicate and "SEQ 1" in ev.reason
    assert _state(r) == later and r.stats["duplicates"] == 2
    assert not [x for x in caplog.records if x.levelname == "WARNING"]


def test_first_push_must_exceed_pull_seq(tmp_path):
    s = Setup(tmp_path)
    for _ in range(3):
        s.store.next_seq(GID)  # three PUSHes the member never saw, before it registered again
    m = member(tmp_path, "gm2")
    register(s.ks, {member_addr(5): m})
    reg = _registered(m)
    assert reg.seq == 3
    r = PushReceiver(GID, reg.kek, reg.lkh, reg.seq)
    r.receive_datagram(s.push(seq=3, new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(r), PushRejected)
    r.receive_datagram(s.push(new_teks=[s.new_tek()]), None, NOW)
    ev = _one(r)
    assert isinstance(ev, Rekeyed) and ev.seq == 4


@pytest.mark.parametrize("where", ["first_block", "middle", "signature", "last_block", "header_length"])
def test_tampered_push_rejected_state_unchanged(tmp_path, where):
    s = Setup(tmp_path)
    r = s.receiver()
    data = bytearray(s.push(new_teks=[s.new_tek()]))
    pos = {"first_block": 28, "middle": len(data) // 2, "signature": len(data) - 40, "last_block": len(data) - 1,
           "header_length": 27}[where]
    data[pos] ^= 0x01
    before = _state(r)
    r.receive_datagram(bytes(data), None, NOW)
    assert isinstance(_one(r), PushRejected)
    assert _state(r) == before


def test_wrong_kek_spi_rejected(tmp_path):
    s = Setup(tmp_path)
    r = s.receiver()
    k = s.kek()
    other = dataclasses.replace(k, spi=os.urandom(16))
    r.receive_datagram(s.push(kek=other, new_teks=[s.new_tek()]), None, NOW)
    ev = _one(r)
    assert isinstance(ev, PushRejected) and "cookies" in ev.reason and ev.cause == "wrong_kek"
    assert r.last_seq == 0


def test_push_signed_by_another_key_rejected(tmp_path):
    s = Setup(tmp_path)
    r = s.receiver()
    before = _state(r)
    r.receive_datagram(s.push(signing_key=ec.generate_private_key(ec.SECP256R1()), new_teks=[s.new_tek()]), None, NOW)
    ev = _one(r)
    assert isinstance(ev, PushRejected) and "signature" in ev.reason and ev.cause == "signature"
    assert _state(r) == before


def test_new_kek_then_seq_restarts(tmp_path):
    s = Setup(tmp_path)
    r = s.receiver()
    old = s.kek()
    new = KekKeys(os.urandom(16), old.cipher, os.urandom(32), WALL + 7200, s.pub)
    r.receive_datagram(s.push(new_kek=new, new_teks=[s.new_tek()]), None, NOW)
    ev = _one(r)
    assert isinstance(ev, Rekeyed) and ev.new_kek and ev.kek.spi == new.spi
    assert ev.kek.iv + ev.kek.key == new.keymat and ev.kek.lifetime_s == 7200
    assert r.kek.spi == new.spi and r.last_seq == 0
    # the old KEK is gone; the new one's first PUSH has SEQ 1 (RFC 6407 section 4)
    r.receive_datagram(s.push(seq=5, new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(r), PushRejected)
    r.receive_datagram(s.push(seq=1, kek=new, new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(r), Rekeyed) and r.last_seq == 1


def test_deletes(tmp_path):
    s = Setup(tmp_path)
    r = s.receiver()
    spi = s.regs["gm1"].teks[0].spi
    r.receive_datagram(s.push(deletes=[spi]), None, NOW)
    ev = _one(r)
    assert ev == TeksDeleted(GID, (spi,), False)
    r.receive_datagram(s.push(deletes=[0], delete_kek=True), None, NOW)
    evs = events(r)
    assert evs == [TeksDeleted(GID, (), True), KekDeleted(GID, s.kek().spi)]
    r.receive_datagram(s.push(new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(r), PushRejected)


def test_lkh_eviction_one_of_three(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    rs = {w: s.receiver(w) for w in s.regs}
    assert all(r.lkh_view is not None for r in rs.values())
    tree = s.store.load_lkh(GID)
    update = tree.evict(["key-id:gm3"])
    (_kid, root) = tree.group_key()
    old = s.kek()
    spi = os.urandom(16)
    new = KekKeys(spi, old.cipher, lkh_kek_keymat(root, spi, old.cipher), WALL + 7200, s.pub)
    data = s.push(new_kek=new, lkh_update=update, lkh_root_key=root, new_teks=[s.new_tek()])
    assert new.keymat[16:] not in data  # never in clear, and never readable by gm3
    for w in ("gm1", "gm2"):
        rs[w].receive_datagram(data, None, NOW)
        ev = _one(rs[w])
        assert isinstance(ev, Rekeyed) and ev.new_kek
        assert ev.kek.spi == spi and ev.kek.key == new.keymat[16:] and ev.kek.iv == new.keymat[:16]
        assert ev.lkh.keys[-1][2] == root
        assert [(k.level, k.handle, key) for k, key in tree.path(f"key-id:{w}")] == list(ev.lkh.keys)
    rs["gm3"].receive_datagram(data, None, NOW)
    assert _one(rs["gm3"]) == Evicted(GID)
    assert rs["gm3"].kek.spi == old.spi
    rs["gm3"].receive_datagram(s.push(seq=1, kek=new, new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(rs["gm3"]), PushRejected)
    # the remaining members continue under the new KEK
    rs["gm1"].receive_datagram(s.push(seq=1, kek=new, new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(rs["gm1"]), Rekeyed)


@pytest.mark.parametrize("given", [False, True])
def test_lkh_push_sends_the_signing_key_only_when_it_changes(tmp_path, given):
    """The KEK packet of an LKH PUSH names the key that verifies PUSHes under the new KEK.
    When that is the key signing this PUSH (an eviction), the members hold it already: no
    SIG_ALGORITHM_KEY, and they keep it for the new KEK.  A new key is sent, and taken."""
    s = Setup(tmp_path, who=("gm1", "gm2", "gm3"), lkh=True)
    tree = s.store.load_lkh(GID)
    old = s.kek()
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for pub, sent, gone in ((s.pub, False, "key-id:gm2"), (other, True, "key-id:gm3")):
        r = s.receiver()  # gm1 as registered, its LKH keys as the tree holds them now
        r.lkh_view = LkhMemberView(tree.path("key-id:gm1"), epoch=tree.epoch)
        update = tree.evict([gone])
        (_kid, root) = tree.group_key()
        spi = os.urandom(16)
        new = KekKeys(spi, old.cipher, lkh_kek_keymat(root, spi, old.cipher), WALL + 7200, pub)
        extra = {"signing_public_key": s.pub} if given else {}
        data = s.push(kek=old, new_kek=new, lkh_update=update, lkh_root_key=root, **extra)
        plain = data[:28] + _cbc(old.keymat[16:], old.keymat[:16], data[28:], False)
        kd = next(p for p in wire.decode_message(plain, block_size=16).payloads if type(p) is wire.KeyDownload)
        (kek_pkt,) = [p for p in kd.packets if p.kd_type == wire.KdType.KEK]
        assert [v for _t, v in kek_pkt.attributes] == ([pub] if sent else [])
        r.receive_datagram(data, None, NOW)
        ev = _one(r)
        assert isinstance(ev, Rekeyed) and ev.new_kek and ev.kek.spi == spi
        assert ev.kek.signing_public_key == pub


def test_lkh_update_needs_derived_kek(tmp_path):
    s = Setup(tmp_path, who=("gm1", "gm2"), lkh=True)
    tree = s.store.load_lkh(GID)
    update = tree.evict(["key-id:gm2"])
    old = s.kek()
    new = KekKeys(os.urandom(16), old.cipher, os.urandom(32), WALL + 7200, s.pub)
    with pytest.raises(ValueError):
        build_push(s.group, kek=old, signing_key=s.signing_key, seq=1, new_kek=new, lkh_update=update,
                   lkh_root_key=tree.group_key()[1], now=WALL)


@pytest.mark.parametrize("suite,key", [
    ("ecdsa-p256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("ecdsa-p384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ("rsa-pkcs1-sha256", lambda: rsa.generate_private_key(65537, 2048)),
])
def test_signature_encodings(suite, key):
    sig_suite = SIGNATURE_SUITES[suite]
    k = key()
    data = REKEY_PREFIX + b"header and payloads"
    sig = sign_push(sig_suite, k, data)
    if sig_suite.key_type == "ec":
        assert len(sig) == 2 * ((k.curve.key_size + 7) // 8)
    assert verify_push_signature(sig_suite, k.public_key(), data, sig)
    assert not verify_push_signature(sig_suite, k.public_key(), data + b"x", sig)
    assert not verify_push_signature(sig_suite, k.public_key(), data, sig[:-1])


def test_rsa_bare_hash_signature_accepted():
    """gdoid signs with PKCS#1 type 1 over the bare hash (docs/decisions/wire.md ambiguity 2): accepted."""
    k = rsa.generate_private_key(65537, 2048)
    data = REKEY_PREFIX + b"gdoid style"
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    digest = h.finalize()
    # the bare hash, PKCS#1 v1.5 type 1 padded, no DigestInfo: raw RSA on the padded block
    n = k.private_numbers().public_numbers.n
    em = b"\x00\x01" + b"\xff" * (256 - 3 - len(digest)) + b"\x00" + digest
    sig = pow(int.from_bytes(em, "big"), k.private_numbers().d, n).to_bytes(256, "big")
    assert verify_push_signature(SIGNATURE_SUITES["rsa-pkcs1-sha256"], k.public_key(), data, sig)
    assert not verify_push_signature(SIGNATURE_SUITES["rsa-pkcs1-sha256"], k.public_key(), data + b"!", sig)


def test_signed_bytes_are_rekey_hdr_payloads(tmp_path):
    """The signature covers "rekey" || HDR (E set, Length incl. SIG, no padding) || payloads
    before SIG (RFC 6407 section 4; gdoid's header form)."""
    s = Setup(tmp_path)
    data = s.push(new_teks=[s.new_tek()])
    k = s.kek()
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    d = Cipher(algorithms.AES(k.keymat[16:]), modes.CBC(k.keymat[:16])).decryptor()
    plain = d.update(data[28:]) + d.finalize()
    msg = wire.decode_message(data[:28] + plain, block_size=16)
    sig = msg.payloads[-1]
    chain = len(plain) - len(msg.padding)
    hdr = wire.encode_header(msg.header, data[16], 28 + chain)
    signed = b"rekey" + hdr + plain[: chain - 4 - len(sig.data)]
    assert verify_push_signature(SIGNATURE_SUITES["ecdsa-p256"], s.signing_key.public_key(), signed, sig.data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutations_never_raise(tmp_path_factory, data):
    global _FUZZ
    if _FUZZ is None:
        s = Setup(tmp_path_factory.mktemp("push"))
        _FUZZ = (s, s.push(new_teks=[s.new_tek()], deletes=[0x1234]))
    s, good = _FUZZ
    buf = bytearray(good)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del buf[data.draw(st.integers(0, len(buf) - 1)):]
    elif kind == "extend":
        buf += data.draw(st.binary(min_size=1, max_size=40))
    else:
        i = data.draw(st.integers(0, len(buf)))
        buf[i:i] = data.draw(st.binary(min_size=1, max_size=40))
    r = s.receiver()
    before = _state(r)
    r.receive_datagram(bytes(buf), None, NOW)
    evs = events(r)
    if is_ikev2(bytes(buf)):  # now an IKEv2 header: a G-IKEv2 member's GSA_REKEY, dropped quietly
        assert evs == [] and _state(r) == before
    elif bytes(buf) != good:
        assert len(evs) == 1 and isinstance(evs[0], PushRejected), evs
        assert _state(r) == before


_FUZZ = None


def test_tshark_dissects_encrypted_push_header(tmp_path):
    """Wireshark reads the header of our encrypted PUSH (the body is opaque to it) without
    complaint: cookies = KEK SPI, next payload SEQ, exchange 33, E flag, M-ID 0, Length."""
    s = Setup(tmp_path)
    data = s.push(new_teks=[s.new_tek()])
    ((fields, problems),) = dissect(tmp_path, [data], 848)
    assert problems == []
    d = dict(fields)
    k = s.kek().spi
    assert d["isakmp.ispi"] == k[:8].hex() and d["isakmp.rspi"] == k[8:].hex()
    assert int(d["isakmp.nextpayload"], 16) == wire.PayloadType.SEQ
    assert int(d["isakmp.exchangetype"], 16) == ExchangeType.GROUPKEY_PUSH
    assert int(d["isakmp.flags"], 16) == Flags.ENCRYPTION
    assert int(d["isakmp.messageid"], 16) == 0 and int(d["isakmp.length"], 16) == len(data)


def test_forgery_by_a_kek_holder_rejected(tmp_path):
    """Every member holds the KEK, so it can decrypt, change and re-encrypt a PUSH: only the
    signature stops it (RFC 6407 section 4)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    s = Setup(tmp_path)
    r = s.receiver()
    k = s.kek()
    data = s.push(new_teks=[s.new_tek()])
    d = Cipher(algorithms.AES(k.keymat[16:]), modes.CBC(k.keymat[:16])).decryptor()
    plain = bytearray(d.update(data[28:]) + d.finalize())
    msg = wire.decode_message(data[:28] + bytes(plain), block_size=16)
    kd = next(p for p in msg.payloads if isinstance(p, wire.KeyDownload))
    key = wire.attr_bytes(kd.packets[0].attributes, 1)
    i = bytes(plain).index(key)
    plain[i] ^= 0xFF  # the attacker's own TEK key
    e = Cipher(algorithms.AES(k.keymat[16:]), modes.CBC(k.keymat[:16])).encryptor()
    forged = data[:28] + e.update(bytes(plain)) + e.finalize()
    before = _state(r)
    r.receive_datagram(forged, None, NOW)
    ev = _one(r)
    assert isinstance(ev, PushRejected) and "signature" in ev.reason
    assert _state(r) == before


def test_source_check(tmp_path):
    """Optional: PUSH only from the SA KEK's SRC ID (our key server registers its address)."""
    s = Setup(tmp_path)
    reg = s.regs["gm1"]
    r = PushReceiver(GID, reg.kek, None, reg.seq, check_source=True)
    data = s.push(new_teks=[s.new_tek()])
    r.receive_datagram(data, ("198.51.100.9", 848), NOW)
    assert isinstance(_one(r), PushRejected) and r.last_seq == 0
    r.receive_datagram(data, ("192.0.2.1", 848), NOW)
    assert isinstance(_one(r), Rekeyed)


@pytest.mark.parametrize("suite,key", [
    ("ecdsa-p384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ("rsa-pkcs1-sha256", lambda: rsa.generate_private_key(65537, 2048)),
])
def test_push_with_other_signature_suites(tmp_path, suite, key):
    s = Setup(tmp_path)
    k = key()
    pub = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    s.group = dataclasses.replace(s.group, kek=dataclasses.replace(s.group.kek, signature=SIGNATURE_SUITES[suite]))
    reg = s.regs["gm1"]
    r = PushReceiver(GID, dataclasses.replace(reg.kek, signature=suite, signing_public_key=pub), None, reg.seq)
    r.receive_datagram(s.push(signing_key=k, new_teks=[s.new_tek()]), None, NOW)
    assert isinstance(_one(r), Rekeyed)
    r.receive_datagram(s.push(signing_key=key(), new_teks=[s.new_tek()]), None, NOW)  # another key
    assert isinstance(_one(r), PushRejected) and r.last_seq == 1
    with pytest.raises(ValueError):  # the group's P-256 key does not fit the suite
        s.push(new_teks=[s.new_tek()])


def test_lkh_update_for_nobody_evicts_and_the_follow_up_is_dropped_quietly(tmp_path, caplog):
    """The only member evicted: the update has no LKH_UPDATE_ARRAY (the new root is wrapped
    for nobody); the member is told Evicted, keeps no new key, and the TEK PUSH under the
    new KEK that follows is dropped at debug level."""
    s = Setup(tmp_path, who=("gm1",), lkh=True)
    r = s.receiver()
    tree = s.store.load_lkh(GID)
    update = tree.evict(["key-id:gm1"])
    assert update.entries == ()
    (_kid, root) = tree.group_key()
    old = s.kek()
    spi = os.urandom(16)
    new = KekKeys(spi, old.cipher, lkh_kek_keymat(root, spi, old.cipher), WALL + 7200, s.pub)
    data = s.push(new_kek=new, lkh_update=update, lkh_root_key=root)
    with caplog.at_level("DEBUG", logger="gkm.gdoi"):
        r.receive_datagram(data, None, NOW)
        assert _one(r) == Evicted(GID)
        assert r.evicted and r.kek.spi == old.spi
        caplog.clear()
        r.receive_datagram(s.push(seq=1, kek=new, new_teks=[s.new_tek()]), None, NOW)
        ev = _one(r)
        assert isinstance(ev, PushRejected) and ev.cause == "not_member"
        assert [rec.levelname for rec in caplog.records] == ["DEBUG"]
