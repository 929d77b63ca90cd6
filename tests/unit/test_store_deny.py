"""The key server's deny list in the store: kept across reopening, first eviction's reason
kept, lifted; a version 1 store gains the table on open."""

from __future__ import annotations

import sqlite3

import pytest

from gkm.store import DB_NAME, SCHEMA_VERSION, KeyStore


def test_deny_list_persists_and_lifts(tmp_path):
    with KeyStore(tmp_path) as st:
        st.deny(1001, "key-id:gm3", at=100, reason="lost laptop")
        st.deny(1001, "key-id:gm3", at=200, reason="again")  # the first reason stays
        st.deny(1001, "key-id:gm2", at=150, reason="left")
        st.deny(7, "key-id:gm3", at=1, reason="other group")
    with KeyStore(tmp_path) as st:
        assert [(d.identity, d.at, d.reason) for d in st.denied(1001)] == [
            ("key-id:gm2", 150, "left"), ("key-id:gm3", 100, "lost laptop")]
        assert [d.reason for d in st.denied(1001, "key-id:gm3")] == ["lost laptop"]
        assert st.lift(1001, "key-id:gm3") is True
        assert st.lift(1001, "key-id:gm3") is False
        assert st.denied(1001, "key-id:gm3") == [] and len(st.denied(7)) == 1


def test_version_1_store_migrates(tmp_path):
    with KeyStore(tmp_path) as st:
        st.add_group(5, b"d")
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("DROP TABLE denied")
    db.execute("ALTER TABLE members DROP COLUMN protocol")  # the version 1 schema
    db.execute("DROP TABLE sender_ids")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with KeyStore(tmp_path) as st:
        assert st.group(5) is not None
        st.deny(5, "key-id:x", at=1, reason="r")
        assert st.denied(5)[0].identity == "key-id:x"
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def test_version_2_store_migrates_its_members_as_gdoi_members(tmp_path):
    """Version 3 records each member's registration protocol; members of a version 2 store
    (before G-IKEv2 rekeys) registered over GDOI."""
    with KeyStore(tmp_path) as st:
        st.add_group(5, b"d")
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("ALTER TABLE members DROP COLUMN protocol")  # the version 2 schema
    db.execute("DROP TABLE sender_ids")
    db.execute("INSERT INTO members VALUES (5, 'key-id:gm1', '192.0.2.1', 10, NULL)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with KeyStore(tmp_path) as st:
        [m] = st.members(5)
        assert (m.identity, m.address, m.protocol) == ("key-id:gm1", "192.0.2.1", "gdoi")
        st.put_member(5, "key-id:gm2", "192.0.2.2", registered_at=11, protocol="g-ikev2")
        assert st.member(5, "key-id:gm2").protocol == "g-ikev2"
        assert st.allocate_sender_ids(5, 2, 1 << 24) == (0, 1)
    with KeyStore(tmp_path) as st:
        assert [m.protocol for m in st.members(5)] == ["gdoi", "g-ikev2"]
        assert st.allocate_sender_ids(5, 1, 1 << 24) == (2,)  # never handed out twice


def test_member_registers_again_after_the_tree_was_dropped_from_the_cache(tmp_path):
    """With LKH, a rekey or eviction drops the provider's cached tree; a member registering
    again afterwards must find its leaf (the tree is loaded before its row is replaced)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from gkm.gdoi.provider import StoreKeysProvider
    from policy.config import parse_config

    key = tmp_path / "push.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key.chmod(0o600)
    (tmp_path / "gm1.psk").write_text("0123456789abcdef0123456789abcdef")
    (tmp_path / "gm1.psk").chmod(0o600)
    cfg = parse_config(
        '[keyserver]\nlisten = ["127.0.0.1"]\n[[keyserver.psk]]\nidentity = "gm1"\n'
        'secret_file = "gm1.psk"\n[[keyserver.group]]\nid = 1001\n'
        'authorize = { psk_identities = ["gm1"] }\n[[keyserver.group.tek]]\n'
        'src = "10.1.0.0/16"\ndst = "239.1.1.1"\ncipher = "aes-gcm-128"\n'
        f'[keyserver.group.kek]\nsignature = "ecdsa-p256"\nsigning_key = "{key}"\n'
        'rekey_address = "239.192.0.1"\n', base_dir=tmp_path)
    group = cfg.keyserver.groups[0]
    with KeyStore(tmp_path / "state") as st:
        p = StoreKeysProvider(st, lkh=True)
        first = p.enroll(group, p.peek(group, 1000), "key-id:gm1", "10.0.0.1", 1000)
        p.invalidate(1001)
        again = p.enroll(group, p.peek(group, 1001), "key-id:gm1", "10.0.0.1", 1001)
        assert first.lkh_path and again.lkh_path == first.lkh_path
        assert st.member(1001, "key-id:gm1").leaf is not None


def test_sender_ids_are_sequential_per_group_durable_and_bounded(tmp_path):
    """RFC 9838 section 2.5.1: from 0, each value once, per group; past the limit nothing is
    allocated."""
    from gkm.store import StoreError
    with KeyStore(tmp_path) as st:
        assert st.allocate_sender_ids(5, 1, 4) == (0,)
        assert st.allocate_sender_ids(6, 1, 4) == (0,)  # another group, its own counter
        assert st.allocate_sender_ids(5, 2, 4) == (1, 2)
        with pytest.raises(StoreError, match="exhausted"):
            st.allocate_sender_ids(5, 2, 4)
    with KeyStore(tmp_path) as st:
        assert st.allocate_sender_ids(5, 1, 4) == (3,)  # the failed request took nothing
        with pytest.raises(StoreError, match="exhausted"):
            st.allocate_sender_ids(5, 1, 4)
