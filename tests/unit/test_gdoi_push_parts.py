"""A large LKH update split over several GROUPKEY-PUSH datagrams (gkm.lkh_parts, gkm.gdoi.push):
1,000 evictions out of 10,000 members, every datagram within the group's max_push_size, every
remaining member's LKH view ends with the new group key, every evicted one does not; parts lost,
reordered or replayed are refused without a state change."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gkm import wire
from gkm.gdoi.provider import KekKeys
from gkm.gdoi.push import (
    Evicted, LkhPartReceived, PushReceiver, PushRejected, Rekeyed, build_push, lkh_kek_keymat,
    lkh_update_parts,
)
from gkm.lkh import KEY_TYPE_AES_KEYWRAP, LkhEvicted, LkhMemberView, LkhTree, LkhUpdate
from gkm.lkh_parts import apply_part
from gkm.wire.constants import LkhKeyAttr
from tests.unit.test_gdoi_push import WALL, Setup, _one
from tests.unit.test_gdoi_support import GID, NOW
from tests.unit.test_wire_tshark import _cleartext, _compare, dissect, expected_fields

N, EVICT = 10_000, 1_000


class Batch:
    """A key server's tree of N members (views taken before the eviction), 1,000 evicted in one
    batch, the LKH update sent as PUSH parts under the group's real KEK and signing key."""

    def __init__(self, tmp_path, max_size=None, n=N, evict=EVICT, degree=2):
        self.s = Setup(tmp_path)
        self.group = self.s.group
        if max_size is not None:
            self.group = dataclasses.replace(self.group, kek=dataclasses.replace(self.group.kek, max_push_size=max_size))
        self.tree = LkhTree.build(range(n), degree=degree)
        self.paths = {m: self.tree.path(m) for m in range(n)}
        self.gone = set(random.Random(8).sample(range(n), evict))
        self.update = self.tree.evict(sorted(self.gone))
        _kid, self.root = self.tree.group_key()
        self.old = self.s.kek()
        spi = os.urandom(16)
        self.new = KekKeys(spi, self.old.cipher, lkh_kek_keymat(self.root, spi, self.old.cipher), WALL + 7200, self.s.pub)
        self.parts = lkh_update_parts(self.group, self.update, kek=self.old, new_kek=self.new,
                                      signing_key=self.s.signing_key, now=WALL)
        first = self.s.store.current_seq(GID) + 1
        self.seqs = [self.s.store.next_seq(GID) for _ in self.parts]  # durable, consecutive
        assert self.seqs == list(range(first, first + len(self.parts)))
        self.datagrams = [
            build_push(self.group, kek=self.old, signing_key=self.s.signing_key, seq=seq, new_kek=self.new,
                       lkh_update=part, lkh_root_key=self.root, lkh_part=(i, len(self.parts)), now=WALL)
            for i, (seq, part) in enumerate(zip(self.seqs, self.parts), 1)]

    def view(self, m) -> LkhMemberView:
        return LkhMemberView(self.paths[m], epoch=self.update.epoch - 1)

    def receiver(self, m) -> PushReceiver:
        return PushReceiver(GID, self.s.regs["gm1"].kek, self.view(m), self.seqs[0] - 1)

    def decrypted(self, data: bytes) -> wire.Message:
        iv, key = self.old.keymat[:16], self.old.keymat[16:]
        d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        return wire.decode_message(data[:28] + d.update(data[28:]) + d.finalize(), block_size=16)


def _lkh_from_wire(msg: wire.Message, epoch: int) -> tuple[tuple[int, int], LkhUpdate]:
    """What a member reads from a part's LKH key packet: (index, count) and the update."""
    kd = next(p for p in msg.payloads if isinstance(p, wire.KeyDownload))
    (lkh,) = [p for p in kd.packets if p.kd_type == wire.KdType.LKH]
    part, arrays = None, []
    for t, v in lkh.attributes:
        if t == LkhKeyAttr.LKH_UPDATE_PART:
            part = (int.from_bytes(v[:2], "big"), int.from_bytes(v[2:], "big"))
        else:
            arr = wire.decode_lkh_array(v, update=True, key_data_length=40)
            assert all(k.key_type == KEY_TYPE_AES_KEYWRAP for k in arr.keys)
            arrays.append((arr.update, [(k.lkh_id, k.handle, k.key_data) for k in arr.keys]))
    return part, LkhUpdate.from_arrays(epoch, arrays)


def _state(r: PushReceiver):
    return (r.kek, r.last_seq, r.lkh_view.path, r.lkh_view.epoch, r.evicted, r.closed, r._lkh_parts)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return Batch(tmp_path_factory.mktemp("batch"))


def test_thousand_evictions_split_within_max_push_size(batch):
    sizes = [len(d) for d in batch.datagrams]
    assert len(sizes) > 10 and max(sizes) <= 8192 == batch.group.kek.max_push_size
    assert min(sizes[:-1]) > 8192 - 200  # parts are filled, not just small
    # the parts are the update, in order; the new group key only in the last part
    assert [e for p in batch.parts for e in p.entries] == list(batch.update.entries)
    top = batch.tree.depth
    assert all(e.new.level < top for p in batch.parts[:-1] for e in p.entries)
    assert any(e.new.level == top for e in batch.parts[-1].entries)


def test_lkh_arrays_on_the_wire_are_the_codecs(batch):
    """Each part's LKH key packet carries exactly what the generic codec makes of the part's
    to_arrays(): wire.encode_lkh_array per chain, AES key wrap key type, dates zero."""
    for i, (part, data) in enumerate(zip(batch.parts, batch.datagrams), 1):
        kd = next(p for p in batch.decrypted(data).payloads if isinstance(p, wire.KeyDownload))
        (lkh,) = [p for p in kd.packets if p.kd_type == wire.KdType.LKH]
        sent = [v for t, v in lkh.attributes if t == LkhKeyAttr.LKH_UPDATE_ARRAY]
        want = [wire.encode_lkh_array([(lvl, KEY_TYPE_AES_KEYWRAP, 0, 0, h, key) for lvl, h, key in keys],
                                      header)
                for header, keys in part.to_arrays()]
        assert sent == want, f"part {i}"


def test_lkh_array_of_mixed_key_sizes_refused(batch):
    """LKH keys carry no length: an array whose wrapped keys differ in size could not be read
    back, so build_push refuses it (ValueError) instead of sending it."""
    a, b = batch.update.chains()[0][:2]
    bad = LkhUpdate(batch.update.epoch, (a, b._replace(wrapped=b.wrapped + bytes(8))))
    with pytest.raises(ValueError, match="different sizes"):
        build_push(batch.group, kek=batch.old, signing_key=batch.s.signing_key, seq=99,
                   new_kek=batch.new, lkh_update=bad, lkh_root_key=batch.root, now=WALL)


def test_every_remaining_member_gets_the_group_key_no_evicted_one_does(batch):
    """All 10,000 member views apply the parts as decoded from the datagrams."""
    decoded = [_lkh_from_wire(batch.decrypted(d), batch.update.epoch) for d in batch.datagrams]
    count = len(decoded)
    assert [p for p, _u in decoded] == [(i, count) for i in range(1, count + 1)]
    got = evicted = 0
    for m in range(N):
        v = batch.view(m)
        partial = None
        try:
            for i, (_p, u) in enumerate(decoded, 1):
                partial = apply_part(v, u, i, count, partial)
        except LkhEvicted:
            assert m in batch.gone
            evicted += 1
            assert v.path == batch.paths[m] and v.epoch == batch.update.epoch - 1  # unchanged
            continue
        assert m not in batch.gone
        assert v.group_key[1] == batch.root and v.epoch == batch.update.epoch
        assert [(k.level, k.handle, key) for k, key in v.path] == \
            [(k.level, k.handle, key) for k, key in batch.tree.path(m)]
        got += 1
    assert (got, evicted) == (N - EVICT, EVICT)


def test_push_receivers_apply_parts_in_order(batch):
    """Real receivers (decrypt, signature, SEQ, parts) for a sample of members."""
    remaining = [m for m in range(0, N, 997) if m not in batch.gone][:6]
    evicted = sorted(batch.gone)[:3]
    count = len(batch.datagrams)
    for m in remaining + evicted:
        r = batch.receiver(m)
        for i, (seq, data) in enumerate(zip(batch.seqs[:-1], batch.datagrams[:-1]), 1):
            r.receive_datagram(data, None, NOW)
            assert _one(r) == LkhPartReceived(GID, seq, i, count)
            assert r.kek == batch.s.regs["gm1"].kek and r.lkh_view.path == batch.paths[m]  # nothing installed yet
        r.receive_datagram(batch.datagrams[-1], None, NOW)
        ev = _one(r)
        if m in batch.gone:
            assert ev == Evicted(GID) and r.evicted
            continue
        assert isinstance(ev, Rekeyed) and ev.new_kek and ev.seq == batch.seqs[-1]
        assert ev.kek.spi == batch.new.spi and ev.kek.key == batch.new.keymat[16:]
        assert ev.lkh.keys[-1][2] == batch.root and r.last_seq == 0 and r._lkh_parts is None


def test_lost_reordered_or_replayed_part_refused_state_unchanged(batch):
    m = next(m for m in range(N) if m not in batch.gone)
    d, seqs, count = batch.datagrams, batch.seqs, len(batch.datagrams)
    r = batch.receiver(m)
    before = _state(r)
    r.receive_datagram(d[1], None, NOW)  # part 2 first: part 1 lost
    ev = _one(r)
    assert isinstance(ev, PushRejected) and ev.resync  # authentic: the member re-registers
    assert ev.reason == f"LKH update part 2/{count} at SEQ {seqs[1]} without parts 1..1 (lost or reordered: re-register)"
    assert _state(r) == before
    r.receive_datagram(d[0], None, NOW)
    assert isinstance(_one(r), LkhPartReceived)
    after1 = _state(r)
    r.receive_datagram(d[2], None, NOW)  # part 3 after part 1: part 2 lost
    ev = _one(r)
    assert ev.resync
    assert ev.reason == f"LKH update part 3/{count} at SEQ {seqs[2]} out of order: expected part 2/{count} at SEQ {seqs[1]}"
    assert _state(r) == after1
    r.receive_datagram(d[0], None, NOW)  # replayed part 1
    assert _one(r).duplicate and _state(r) == after1  # the same datagram again: a copy
    r.receive_datagram(d[-1], None, NOW)  # the last part without the middle ones
    assert "out of order" in _one(r).reason and _state(r) == after1
    # the parts that did come in order still count: the rest completes the update
    for data in d[1:]:
        r.receive_datagram(data, None, NOW)
    evs = [r.next_event() for _ in d[1:]]
    assert all(isinstance(e, LkhPartReceived) for e in evs[:-1]) and isinstance(evs[-1], Rekeyed)
    assert r.lkh_view.group_key[1] == batch.root


def test_part_with_another_count_refused(batch):
    """A part claiming a different count than part 1 (say from another split) is refused."""
    r = batch.receiver(next(m for m in range(N) if m not in batch.gone))
    r.receive_datagram(batch.datagrams[0], None, NOW)
    assert isinstance(_one(r), LkhPartReceived)
    before = _state(r)
    count = len(batch.parts)
    forged = build_push(batch.group, kek=batch.old, signing_key=batch.s.signing_key, seq=batch.seqs[1],
                        new_kek=batch.new, lkh_update=batch.parts[1], lkh_root_key=batch.root,
                        lkh_part=(2, count + 1), now=WALL)
    r.receive_datagram(forged, None, NOW)
    assert _one(r).reason == (f"LKH update part 2/{count + 1} at SEQ {batch.seqs[1]} out of order: "
                              f"expected part 2/{count} at SEQ {batch.seqs[1]}")
    assert _state(r) == before


def test_only_the_last_part_carries_teks(batch):
    with pytest.raises(ValueError, match="only the last part"):
        build_push(batch.group, kek=batch.old, signing_key=batch.s.signing_key, seq=99, new_kek=batch.new,
                   lkh_update=batch.parts[0], lkh_root_key=batch.root, lkh_part=(1, 2),
                   new_teks=[batch.s.new_tek()], now=WALL)


def test_update_that_fits_is_one_plain_push(tmp_path):
    b = Batch(tmp_path, n=1000, evict=1)
    assert len(b.datagrams) == 1 and len(b.parts) == 1
    msg = b.decrypted(b.datagrams[0])
    part, u = _lkh_from_wire(msg, b.update.epoch)
    assert part is None and u.entries  # no part attribute: any GDOI member reads it
    r = b.receiver(next(m for m in range(1000) if m not in b.gone))
    r.receive_datagram(b.datagrams[0], None, NOW)
    assert isinstance(_one(r), Rekeyed)


def test_smallest_max_push_size_and_wide_root(tmp_path):
    """Degree 64 and the smallest max_push_size: the root's 64 entries do not fit one part, so
    the group key spans parts; every datagram still fits and members still finish."""
    b = Batch(tmp_path, max_size=2048, n=4096, evict=40, degree=64)
    assert max(len(d) for d in b.datagrams) <= 2048 and len(b.datagrams) > 2
    for m in [m for m in range(0, 4096, 409)] + sorted(b.gone)[:2]:
        r = b.receiver(m)
        evs = []
        for data in b.datagrams:
            r.receive_datagram(data, None, NOW)
            evs.append(_one(r))
        assert all(isinstance(e, LkhPartReceived) for e in evs[:-1])
        assert evs[-1] == Evicted(GID) if m in b.gone else isinstance(evs[-1], Rekeyed)


def test_tshark_reads_a_part(batch, tmp_path):
    """Wireshark's ISAKMP dissector reads a decrypted part (E flag cleared) as we encode it,
    the private-use LKH_UPDATE_PART attribute included."""
    msg = batch.decrypted(batch.datagrams[1])
    clear = wire.encode_message(_cleartext(msg.header), msg.payloads)
    ((fields, problems),) = dissect(tmp_path, [clear], 848)
    assert problems == []
    _compare(fields, expected_fields(wire.decode_message(clear), clear))


@pytest.mark.parametrize("sig,addr,source", [
    ("ecdsa-p256", "239.192.0.1", None),
    ("ecdsa-p521", "ff3e::1:2", ("2001:db8::1", 848)),
    ("rsa-pkcs1-sha512", "ff3e::1:2", ("2001:db8::1", 848)),
])
def test_fixed_push_bound_covers_every_part_overhead(tmp_path, sig, addr, source):
    """lkh_update_parts skips measuring the exact budget when an update fits with
    FIXED_PUSH_BOUND to spare: the bound must exceed what lkh_part_budget measures (IPv6 IDs,
    the largest signatures) besides the public key and the signature."""
    import ipaddress

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from gkm.gdoi.push import FIXED_PUSH_BOUND, lkh_part_budget, signature_length
    from policy.suites import SIGNATURE_SUITES
    from tests.unit.test_gdoi_support import group_policy

    suite = SIGNATURE_SUITES[sig]
    key = (rsa.generate_private_key(65537, 4096) if suite.key_type == "rsa"
           else ec.generate_private_key({"secp256r1": ec.SECP256R1, "secp521r1": ec.SECP521R1}[suite.curve]()))
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    g = group_policy(tmp_path)
    g = dataclasses.replace(g, kek=dataclasses.replace(g.kek, signature=suite,
                                                       rekey_address=ipaddress.ip_address(addr)))
    old = KekKeys(os.urandom(16), "aes-cbc-256", os.urandom(48), WALL + 60, pub)
    # the new KEK's public key is sent unless it is the signing key's (then members hold it):
    # both cases, the one that sends it with a key as large as the signing key
    other = (rsa.generate_private_key(65537, 4096) if suite.key_type == "rsa"
             else ec.generate_private_key(key.curve)).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for new_pub, sent in ((pub, 0), (other, len(other))):
        new = KekKeys(os.urandom(16), "aes-cbc-256", os.urandom(48), WALL + 0xFFFFFFF, new_pub)
        budget = lkh_part_budget(g, kek=old, new_kek=new, signing_key=key, now=WALL, rekey_source=source)
        fixed = g.kek.max_push_size - budget - sent - signature_length(suite, key.public_key())
        assert 0 < fixed <= FIXED_PUSH_BOUND
