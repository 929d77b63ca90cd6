"""The store-backed group keys provider: no persistent change before enroll, one set of
tentative keys shared by concurrent first registrations, SPIs, key lengths, restart, staleness."""

from __future__ import annotations

import pytest

from gkm.gdoi import StaleKeys, StoreKeysProvider
from gkm.gdoi.keys import MIN_SPI
from gkm.store import KeyState, KeyStore
from policy.suites import ESP_SUITES
from tests.unit.test_gdoi_support import GID, group_policy, store_snapshot

NOW = 1_780_000_000


def test_peek_changes_nothing_and_is_shared(tmp_path):
    store = KeyStore(tmp_path / "s")
    prov = StoreKeysProvider(store)
    g = group_policy(tmp_path)
    before = store_snapshot(store)
    a = prov.peek(g, NOW)
    b = prov.peek(g, NOW + 1)
    assert a is b and a.tentative
    assert store_snapshot(store) == before and store.group(GID) is None
    prov.enroll(g, a, "key-id:gm1", "192.0.2.10", NOW)
    c = prov.peek(g, NOW + 2)
    assert not c.tentative and [t.spi for t in c.teks] == [t.spi for t in a.teks] and c.kek.spi == a.kek.spi
    # a second enrollment with the keys announced before the first one persisted them
    prov.enroll(g, a, "key-id:gm2", "192.0.2.11", NOW)
    assert len(store.members(GID)) == 2 and len(store.teks(GID)) == 2 and len(store.keks(GID)) == 1


def test_key_lengths_and_spis(tmp_path):
    store = KeyStore(tmp_path / "s")
    g = group_policy(tmp_path, suites=("aes-gcm-256", "aes-cbc-128-hmac-sha384"))
    k = StoreKeysProvider(store).peek(g, NOW)
    gcm, cbc = k.teks
    assert len(gcm.enc_keymat) == 32 + 4 and gcm.auth_key == b""
    assert len(cbc.enc_keymat) == 16 and len(cbc.auth_key) == 48
    assert len(k.kek.keymat) == 16 + 16 and len(k.kek.spi) == 16
    assert all(t.spi >= MIN_SPI for t in k.teks) and gcm.spi != cbc.spi
    assert gcm.expires == NOW + g.teks[0].lifetime_s and k.kek.expires == NOW + g.kek.lifetime_s
    assert ESP_SUITES[gcm.suite].aead


def test_spi_unique_across_store(tmp_path):
    store = KeyStore(tmp_path / "s")
    other = group_policy(tmp_path, gid=77)
    p1 = StoreKeysProvider(store)
    k1 = p1.peek(other, NOW)
    p1.enroll(other, k1, "key-id:gm1", "192.0.2.10", NOW)
    taken = k1.teks[0].spi
    seq = [taken.to_bytes(4, "big"), (5).to_bytes(4, "big"), taken.to_bytes(4, "big"),
           (0x10000).to_bytes(4, "big"), (0x10000).to_bytes(4, "big"), (0x20000).to_bytes(4, "big")]

    def rnd(n):
        return seq.pop(0) if n == 4 and seq else bytes(range(1, n + 1))

    k2 = StoreKeysProvider(store, random=rnd).peek(group_policy(tmp_path), NOW)
    assert [t.spi for t in k2.teks] == [0x10000, 0x20000]  # taken, reserved and repeated SPIs skipped


def test_restart_keeps_keys(tmp_path):
    g = group_policy(tmp_path)
    store = KeyStore(tmp_path / "s")
    prov = StoreKeysProvider(store)
    k = prov.peek(g, NOW)
    prov.enroll(g, k, "key-id:gm1", "192.0.2.10", NOW)
    store.close()
    store2 = KeyStore(tmp_path / "s")
    k2 = StoreKeysProvider(store2).peek(g, NOW + 100)
    assert not k2.tentative
    assert [(t.spi, t.enc_keymat, t.auth_key) for t in k2.teks] == [(t.spi, t.enc_keymat, t.auth_key) for t in k.teks]
    assert (k2.kek.spi, k2.kek.keymat) == (k.kek.spi, k.kek.keymat)
    store2.close()


def test_stale_keys_refused_without_change(tmp_path):
    g = group_policy(tmp_path)
    store = KeyStore(tmp_path / "s")
    prov = StoreKeysProvider(store)
    k = prov.peek(g, NOW)
    prov.enroll(g, k, "key-id:gm1", "192.0.2.10", NOW)
    announced = prov.peek(g, NOW)
    # a rekey replaces the first TEK between message 2 and message 3
    store.add_tek(GID, 0x7777, f"video/{g.teks[0].suite.name}", bytes(20), created=NOW, expires=NOW + 600, state=KeyState.NEXT)
    store.rotate_teks(GID)
    before = store_snapshot(store)
    with pytest.raises(StaleKeys):
        prov.enroll(g, announced, "key-id:gm2", "192.0.2.11", NOW)
    assert store_snapshot(store) == before
    prov.invalidate(GID)
    fresh = prov.peek(g, NOW)
    assert fresh.teks[0].spi == 0x7777


def test_policy_changes_kek_cipher(tmp_path):
    import dataclasses

    from policy.suites import KEK_CIPHERS

    g = group_policy(tmp_path)
    store = KeyStore(tmp_path / "s")
    prov = StoreKeysProvider(store)
    prov.enroll(g, prov.peek(g, NOW), "key-id:gm1", "192.0.2.10", NOW)
    old = store.current_kek(GID)
    g2 = dataclasses.replace(g, kek=dataclasses.replace(g.kek, cipher=KEK_CIPHERS["aes-cbc-256"]))
    k = prov.peek(g2, NOW + 5)
    assert k.tentative and k.kek.cipher == "aes-cbc-256" and len(k.kek.keymat) == 16 + 32
    prov.enroll(g2, k, "key-id:gm2", "192.0.2.11", NOW + 5)
    cur = store.current_kek(GID)
    assert cur.spi == k.kek.spi and cur.algorithm == "aes-cbc-256"
    assert [x.state for x in store.keks(GID) if x.spi == old.spi] == [KeyState.OLD]


def test_expiring_tek_is_replaced_at_registration(tmp_path):
    """A registration never gets a TEK that is expired or within its renewal margin of
    expiry (a tenth of its lifetime; with a KEK at most half the rotation lead, so the group
    controller's rotation comes first): it gets a fresh one with its full lifetime, which
    becomes current (the old one old); earlier in the TEK's life the stored TEK is handed out
    unchanged."""
    from gkm.gdoi.provider import tek_renewal_margin
    from policy.model import tek_rekey_lead

    store = KeyStore(tmp_path / "s")
    prov = StoreKeysProvider(store)
    g = group_policy(tmp_path)
    life = g.teks[0].lifetime_s
    k = prov.peek(g, NOW)
    prov.enroll(g, k, "key-id:gm1", "192.0.2.10", NOW)
    mid = prov.peek(g, NOW + life // 2)
    assert not mid.tentative and mid.teks[0].spi == k.teks[0].spi
    margin = tek_renewal_margin(life, tek_rekey_lead(g, g.teks[0]))
    assert margin == 180 and tek_renewal_margin(life) == 360
    assert not prov.peek(g, NOW + life - margin - 1).tentative  # the controller's turn
    late = NOW + life - margin
    fresh = prov.peek(g, late)
    assert fresh.tentative and {t.spi for t in fresh.teks}.isdisjoint(t.spi for t in k.teks)
    assert [t.expires for t in fresh.teks] == [late + tp.lifetime_s for tp in g.teks]
    assert fresh.kek.spi == k.kek.spi  # the KEK is still good: kept
    prov.invalidate(GID)
    assert prov.peek(g, NOW + life + 5) is fresh  # shared by concurrent registrations
    prov.enroll(g, fresh, "key-id:gm2", "192.0.2.11", NOW + life + 5)
    states = {t.spi: t.state for t in store.teks(GID)}
    assert states == {**{t.spi: KeyState.OLD for t in k.teks}, **{t.spi: KeyState.CURRENT for t in fresh.teks}}
    again = prov.peek(g, NOW + life + 6)
    assert not again.tentative and again.teks[0].spi == fresh.teks[0].spi
    # keys announced in message 2 before the expiry are stale once the fresh TEK is current
    with pytest.raises(StaleKeys):
        prov.enroll(g, k, "key-id:gm3", "192.0.2.12", NOW + life + 6)
    store.close()


def test_lkh_on_off_and_degree_per_group(tmp_path):
    """The provider's LKH tree follows each group's kek.lkh and kek.lkh_degree."""
    import dataclasses

    g = group_policy(tmp_path)
    for lkh, degree, want in ((False, 2, None), (True, 4, 4)):
        store = KeyStore(tmp_path / f"s{lkh}")
        prov = StoreKeysProvider(store, lkh=True)
        grp = dataclasses.replace(g, kek=dataclasses.replace(g.kek, lkh=lkh, lkh_degree=degree))
        e = prov.enroll(grp, prov.peek(grp, NOW), "key-id:gm1", "192.0.2.10", NOW)
        tree = store.load_lkh(GID)
        assert (None if tree is None else tree.degree) == want
        assert (e.lkh_path is None) == (want is None)
        store.close()
