"""LKH over G-IKEv2 (RFC 9838 Appendix A): an eviction by GSA_REKEY; the remaining members derive
the new Rekey SA, the evicted ones cannot.  1,000 members: every member's Key Path is resolved,
a sample runs as real receivers over the real datagram."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gkm.ikev2.constants import GcAuth, KeyWrap
from gkm.ikev2.gsa_keys import Excluded
from gkm.ikev2.lkh_map import member_path, wrap_update
from gkm.ikev2.rekey import RekeyApplied, RekeyExcluded, RekeyReceiver, RekeySender
from gkm.ikev2.rekey_auth import SIGNATURE_ALGORITHMS
from gkm.lkh import LkhTree

from tests.unit.test_ikev2_rekey import CONFIG, rekey_sa, tek

KWA = KeyWrap.KW_5649_256


def test_eviction_of_three_among_1000():
    rng = random.Random(9838)
    members = list(range(1000))
    tree = LkhTree.build(members)
    sa = rekey_sa()
    alg = SIGNATURE_ALGORITHMS["ed25519"]
    key = ed25519.Ed25519PrivateKey.generate()
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    tx = RekeySender(sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, signing_key=key)
    paths = {m: member_path(tree, m) for m in members}
    evicted = rng.sample(members, 3)
    update = tree.evict(evicted)
    lkh = wrap_update(tree, update, KWA)
    assert len(lkh.wrap_keys) == len(update.entries)
    new_sa = rekey_sa()
    datagram = tx.build(new_rekey_sa=new_sa, lkh=lkh)

    # Every member's view: the SA_KEY and WRAP_KEYs exactly as the message carries them.
    from gkm.ikev2.gsa_keys import WrappedKey, wrap
    sa_keys = (WrappedKey(0, lkh.root_id, wrap(KWA, lkh.root_key, new_sa.keys.keymat)),)
    for m in members:
        if m in evicted:
            try:
                paths[m].resolve(KWA, sa.keys.gsk_w, sa_keys, lkh.wrap_keys)
            except Excluded:
                continue
            raise AssertionError(f"evicted member {m} derived the new Rekey SA")
        keymat, new_path = paths[m].resolve(KWA, sa.keys.gsk_w, sa_keys, lkh.wrap_keys)
        assert keymat == new_sa.keys.keymat
        assert new_path.keys == member_path(tree, m).keys  # the member now holds exactly its tree path

    # Real receivers over the real datagram: the evicted ones and a sample of the others.
    sample = evicted + rng.sample([m for m in members if m not in evicted], 40)
    for m in sample:
        rx = RekeyReceiver(CONFIG, sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, auth_key=spki,
                           key_path=paths[m])
        (ev,) = rx.receive(datagram)
        if m in evicted:
            assert isinstance(ev, RekeyExcluded) and rx.excluded and rx.rekey_sa == sa
            continue
        assert isinstance(ev, RekeyApplied) and ev.rekey_sa == new_sa and rx.rekey_sa == new_sa
        assert rx.key_path.keys == member_path(tree, m).keys
        # ... and they follow the next rekey (TEKs over the new Rekey SA, forward access control).
        t = tek(0x3000)
        follow = RekeySender(new_sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, signing_key=key)
        (ev2,) = rx.receive(follow.build(teks=((t, ()),)))
        assert isinstance(ev2, RekeyApplied) and ev2.teks == (t,)


def test_second_eviction_uses_updated_paths():
    tree = LkhTree.build(range(64))
    sa = rekey_sa()
    tx = RekeySender(sa, gcauth=GcAuth.IMPLICIT)
    rxs = {m: RekeyReceiver(CONFIG, sa, gcauth=GcAuth.IMPLICIT, key_path=member_path(tree, m)) for m in range(64)}
    gone: set[int] = set()
    for batch in ([5], [6, 40], [0]):
        d = tx.build(new_rekey_sa=rekey_sa(), lkh=wrap_update(tree, tree.evict(batch), KWA))
        gone.update(batch)
        for m, rx in rxs.items():
            if rx.excluded:
                continue
            (ev,) = rx.receive(d)
            assert isinstance(ev, RekeyExcluded if m in gone else RekeyApplied), (m, ev)
    assert {m for m, rx in rxs.items() if rx.excluded} == gone
    assert all(rx.rekey_sa == tx.rekey_sa for m, rx in rxs.items() if m not in gone)


def test_tree_key_refuses_a_renewed_key():
    import pytest

    from gkm.lkh import LkhError
    tree = LkhTree.build(range(4))
    old, old_key = tree.group_key()
    assert tree.key(old) == old_key
    tree.evict([1])
    with pytest.raises(LkhError, match="not the node's current key"):
        tree.key(old)


def test_eviction_too_large_for_one_datagram_is_refused_by_the_builder():
    """No IKE fragmentation (RFC 7383) yet: an eviction whose WRAP_KEYs exceed one 64 KB message
    fails to build with the codec's error, and the sender's state does not move."""
    import pytest

    from gkm.ikev2.errors import WireError
    tree = LkhTree.build(range(4000))
    sa = rekey_sa()
    tx = RekeySender(sa, gcauth=GcAuth.IMPLICIT)
    lkh = wrap_update(tree, tree.evict(list(range(0, 4000, 2))), KWA)  # half the members: ~2,000 entries
    with pytest.raises(WireError, match="bytes"):
        tx.build(new_rekey_sa=rekey_sa(), lkh=lkh)
    assert tx.rekey_sa == sa and tx.message_id == 0


def test_evicting_every_member_excludes_each():
    """The tree empties: no WRAP_KEY at all, the SA_KEY wrapped under a root nobody reaches;
    every former member is excluded (the same decision as GDOI's, gkm.group.controller)."""
    for n in (1, 3):
        tree = LkhTree.build(range(n))
        sa = rekey_sa()
        tx = RekeySender(sa, gcauth=GcAuth.IMPLICIT)
        rxs = {m: RekeyReceiver(CONFIG, sa, gcauth=GcAuth.IMPLICIT, key_path=member_path(tree, m)) for m in range(n)}
        lkh = wrap_update(tree, tree.evict(list(range(n))), KWA)
        assert lkh.wrap_keys == ()
        d = tx.build(new_rekey_sa=rekey_sa(), lkh=lkh)
        for rx in rxs.values():
            (ev,) = rx.receive(d)
            assert isinstance(ev, RekeyExcluded) and rx.excluded and rx.rekey_sa == sa
