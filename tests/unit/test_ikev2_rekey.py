"""GSA_REKEY (RFC 9838 §2.4): key server builds, member verifies and applies; every refusal
leaves the member's state unchanged."""

from __future__ import annotations

import dataclasses
import ipaddress
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gkm.gdoi.keys import GroupTek
from gkm.ikev2 import gsa_keys
from gkm.ikev2.constants import Encr, GcAuth, Integ, KeyWrap, ProtocolId
from gkm.ikev2.examples import ts_v4
from gkm.ikev2.gsa_keys import RekeySaKeys, WorkingKeyPath, WrappedKey
from gkm.ikev2.payloads import Delete
from gkm.ikev2.rekey import (
    MemberConfig, RekeyApplied, RekeyExcluded, RekeyMissed, RekeyReceiver, RekeyRejected, RekeySa, RekeySender,
)
from gkm.ikev2.rekey_auth import SIGNATURE_ALGORITHMS
from policy.model import AddressPreservation, Mode, SaDirection, TrafficSelector

CONFIG = MemberConfig(7, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION, SaDirection.RECEIVER_ONLY)


def rekey_sa(encr=Encr.AES_GCM_16, integ=None, initial=0, next_spis=()) -> RekeySa:
    bits = 256
    n = gsa_keys.encr_key_bytes(encr, bits) + gsa_keys.integ_key_bytes(encr, integ) + 32
    keys = RekeySaKeys.split(os.urandom(n), encr, bits, integ, KeyWrap.KW_5649_256)
    return RekeySa(os.urandom(16), encr, bits, integ, KeyWrap.KW_5649_256, keys,
                   ts_v4("192.0.2.1", "192.0.2.1", 17, 848, 848), ts_v4("239.1.1.1", "239.1.1.1", 17, 848, 848),
                   3600, initial, next_spis)


def tek(spi=0x1000, suite="aes-gcm-256") -> GroupTek:
    from policy.suites import ESP_SUITES
    s = ESP_SUITES[suite]
    sel = TrafficSelector(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("239.1.1.1/32"), 17, 0, 5000)
    return GroupTek(7, spi, sel, CONFIG.mode, CONFIG.address_preservation, CONFIG.direction, suite,
                    os.urandom(s.enc_key_bytes), os.urandom(s.integrity_key_bytes), 900)


def pair(sig="ed25519", **kw):
    sa = rekey_sa(**kw)
    if sig is None:
        return RekeySender(sa, gcauth=GcAuth.IMPLICIT), RekeyReceiver(CONFIG, sa, gcauth=GcAuth.IMPLICIT)
    alg = SIGNATURE_ALGORITHMS[sig]
    key = ed25519.Ed25519PrivateKey.generate() if sig == "ed25519" else ec.generate_private_key(alg.curve())
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return (RekeySender(sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, signing_key=key),
            RekeyReceiver(CONFIG, sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, auth_key=spki))


def refused(rx: RekeyReceiver, data: bytes, why: str = "") -> str:
    before = rx.state()
    (ev,) = rx.receive(data)
    assert isinstance(ev, RekeyRejected) and not ev.duplicate, ev
    assert why in ev.reason
    assert rx.state() == before
    return ev.reason


@pytest.mark.parametrize("sig", [None, "ed25519", "ecdsa-p256-sha256", "ecdsa-p384-sha384"])
@pytest.mark.parametrize("suite", ["aes-gcm-256", "aes-cbc-128-hmac-sha256"])
def test_tek_round_trip(sig, suite):
    tx, rx = pair(sig)
    t = tek(suite=suite)
    (ev,) = rx.receive(tx.build(teks=((t, (0x1001,)),), atd_s=3, dtd_s=10))
    assert isinstance(ev, RekeyApplied)
    assert ev.teks == (t,) and ev.atd_s == 3 and ev.dtd_s == 10 and ev.next_spis == ((0x1000, (0x1001,)),)
    assert ev.message_id == 0 and rx.expected_message_id == 1


def test_cbc_rekey_sa_and_new_rekey_sa_chain():
    tx, rx = pair("ed25519", encr=Encr.AES_CBC, integ=Integ.HMAC_SHA2_256_128, initial=5)
    assert tx.message_id == 5
    (ev,) = rx.receive(tx.build(teks=((tek(), ()),)))
    assert isinstance(ev, RekeyApplied) and ev.message_id == 5
    new = rekey_sa()
    (ev,) = rx.receive(tx.build(new_rekey_sa=new))
    assert isinstance(ev, RekeyApplied) and ev.rekey_sa == new and rx.rekey_sa == new and rx.expected_message_id == 0
    (ev,) = rx.receive(tx.build(teks=((tek(0x2000), ()),)))
    assert isinstance(ev, RekeyApplied) and ev.message_id == 0 and ev.teks[0].spi == 0x2000


def test_replay_and_old_sa_refused():
    tx, rx = pair("ed25519")
    d0 = tx.build(teks=((tek(), ()),))
    d1 = tx.build(teks=((tek(0x1001), ()),))
    assert isinstance(rx.receive(d1)[0], RekeyApplied)
    refused(rx, d0, "replayed")
    before = rx.state()
    (ev,) = rx.receive(d1)  # the GCKS's bitwise identical copy
    assert isinstance(ev, RekeyRejected) and ev.duplicate and rx.state() == before
    assert rx.stats == {"accepted": 1, "rejected": 1, "duplicates": 1, "internal_error": 0}
    d2 = tx.build(new_rekey_sa=rekey_sa())
    assert isinstance(rx.receive(d2)[0], RekeyApplied)
    (ev,) = rx.receive(d2)
    assert isinstance(ev, RekeyRejected) and ev.duplicate
    refused(rx, d1, "not the current Rekey SA")


def test_gaps_are_accepted():
    tx, rx = pair(None)
    tx.build(teks=((tek(), ()),))  # lost
    (ev,) = rx.receive(tx.build(teks=((tek(0x1001), ()),)))
    assert isinstance(ev, RekeyApplied) and ev.message_id == 1
    restarted = RekeySender(tx.rekey_sa, gcauth=GcAuth.IMPLICIT, message_id=tx.message_id)  # state the shell kept
    (ev,) = rx.receive(restarted.build(teks=((tek(0x1002), ()),)))
    assert isinstance(ev, RekeyApplied) and ev.message_id == 2


def test_every_tampered_byte_refused():
    tx, rx = pair("ed25519")
    d = tx.build(teks=((tek(), ()),), dtd_s=4)
    for i in range(len(d)):
        bad = bytearray(d)
        bad[i] ^= 0x01
        refused(rx, bytes(bad))
    assert isinstance(rx.receive(d)[0], RekeyApplied)


def test_truncated_and_malformed_refused():
    tx, rx = pair("ed25519")
    d = tx.build(teks=((tek(), ()),))
    for n in range(len(d)):
        refused(rx, d[:n])
    refused(rx, d + b"\x00")
    refused(rx, os.urandom(200))
    refused(rx, b"")


def test_wrong_signature_key_and_wrong_sk_keys():
    tx, _ = pair("ed25519")
    _, rx = pair("ed25519")
    rx.rekey_sa = tx.rekey_sa  # same SA keys, other signing key
    rx.expected_message_id = 0
    refused(rx, tx.build(teks=((tek(), ()),)), "signature does not verify")
    tx2, rx2 = pair(None)
    other = rekey_sa()
    forged = RekeySender(RekeySa(rx2.rekey_sa.spi, other.encr, other.key_bits, other.integ, other.kwa, other.keys,
                                 other.source, other.destination, 3600), gcauth=GcAuth.IMPLICIT)
    refused(rx2, forged.build(teks=((tek(), ()),)), "integrity")


def test_implicit_member_refuses_auth_and_signed_member_refuses_unsigned():
    txs, rxs = pair("ed25519")
    rxi = RekeyReceiver(CONFIG, txs.rekey_sa, gcauth=GcAuth.IMPLICIT)
    refused(rxi, txs.build(teks=((tek(), ()),)), "AUTH payload under implicit")
    txi = RekeySender(txs.rekey_sa, gcauth=GcAuth.IMPLICIT)
    txi.message_id = 5
    refused(rxs, txi.build(teks=((tek(), ()),)), "no AUTH payload")


def test_auth_key_rollover():
    tx, rx = pair("ed25519")
    k2 = ed25519.Ed25519PrivateKey.generate()
    spki2 = k2.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    (ev,) = rx.receive(tx.build(auth_key=spki2))
    assert isinstance(ev, RekeyApplied) and ev.auth_key_changed and rx.auth_key == spki2
    old = tx.build(teks=((tek(), ()),))
    refused(rx, old, "signature")
    tx._signing_key = k2
    tx.message_id -= 1
    assert isinstance(rx.receive(tx.build(teks=((tek(), ()),)))[0], RekeyApplied)


def test_deletes():
    tx, rx = pair("ed25519")
    (ev,) = rx.receive(tx.build(deletes=(Delete(ProtocolId.ESP, 4, (b"\x00\x00\x10\x00", b"\x00\x00\x10\x01")),)))
    assert isinstance(ev, RekeyApplied) and ev.deleted_spis == (0x1000, 0x1001) and not ev.delete_all_teks
    (ev,) = rx.receive(tx.build(deletes=(Delete(ProtocolId.ESP, 4, (bytes(4),)),)))
    assert ev.delete_all_teks
    refused(rx, tx.build(deletes=(Delete(ProtocolId.AH, 4, (bytes(4),)),)), "protocol")
    (ev,) = rx.receive(tx.build(deletes=(Delete(ProtocolId.GIKE_UPDATE, 16, (bytes(16),)),)))
    assert isinstance(ev, RekeyExcluded) and rx.excluded
    refused(rx, tx.build(teks=((tek(), ()),)), "re-register")


def test_delete_rekey_sa():
    tx, rx = pair(None)
    (ev,) = rx.receive(tx.build(deletes=(Delete(ProtocolId.GIKE_UPDATE, 16, (tx.rekey_sa.spi,)),)))
    assert isinstance(ev, RekeyApplied) and ev.rekey_sa_deleted and rx.rekey_sa is None


def test_next_spi_detects_lost_rekey():
    nxt = os.urandom(16)
    tx, rx = pair(None)
    announced = rekey_sa(next_spis=(nxt,))
    assert isinstance(rx.receive(tx.build(new_rekey_sa=announced))[0], RekeyApplied)
    assert rx.rekey_sa.next_spis == (nxt,)
    follow = RekeySa(nxt, announced.encr, announced.key_bits, announced.integ, announced.kwa, rekey_sa().keys,
                     announced.source, announced.destination, 3600)
    tx.build(new_rekey_sa=follow)  # lost
    before = rx.state()
    (ev,) = rx.receive(tx.build(teks=((tek(), ()),)))
    assert isinstance(ev, RekeyMissed) and ev.spi == nxt and rx.state() == before


def test_forward_access_control_enforced_by_sender():
    from gkm.ikev2.rekey import LkhRekey
    tx, _ = pair(None)
    with pytest.raises(ValueError, match="forward access"):
        tx.build(teks=((tek(), ()),), new_rekey_sa=rekey_sa(), lkh=LkhRekey((), 1, bytes(32)))


def test_rfc9838_appendix_a_key_paths():
    """Appendix A's exclusion of F: the Working Key Paths the RFC lists afterwards."""
    k = {i: os.urandom(32) for i in range(1, 17)}
    w = lambda kid, kwk: WrappedKey(kid, kwk, gsa_keys.wrap(KeyWrap.KW_5649_256, k[kwk], k[kid]))  # noqa: E731
    ksa, gsk_w = os.urandom(60), os.urandom(32)
    sa_keys = tuple(WrappedKey(0, i, gsa_keys.wrap(KeyWrap.KW_5649_256, k[i], ksa)) for i in (1, 15))
    wraps = (w(15, 6), w(15, 16), w(16, 11))
    paths = dict(A=[1, 3, 7], B=[1, 3, 8], C=[1, 4, 9], D=[1, 4, 10], E=[2, 5, 11], F=[2, 5, 12], G=[2, 6, 13], H=[2, 6, 14])
    want = dict(A=(1, 3, 7), B=(1, 3, 8), C=(1, 4, 9), D=(1, 4, 10), E=(15, 16, 11), G=(15, 6, 13), H=(15, 6, 14))
    for gm, ids in paths.items():
        path = WorkingKeyPath(tuple((i, k[i]) for i in ids))
        if gm == "F":
            with pytest.raises(gsa_keys.Excluded):
                path.resolve(KeyWrap.KW_5649_256, gsk_w, sa_keys, wraps)
            continue
        got, new = path.resolve(KeyWrap.KW_5649_256, gsk_w, sa_keys, wraps)
        assert got == ksa and new.ids == want[gm]
    # registration: KD(GP(SA1)(1{K_sa1}), MP(3{1}, 7{3}, GSK_w{7})) gives A the path 1->3->7
    reg = (w(1, 3), w(3, 7), WrappedKey(7, 0, gsa_keys.wrap(KeyWrap.KW_5649_256, gsk_w, k[7])))
    got, new = WorkingKeyPath().resolve(KeyWrap.KW_5649_256, gsk_w, (sa_keys[0],), reg)
    assert got == ksa and new.ids == (1, 3, 7)


def test_corrupt_wrap_key_under_held_key_refused():
    k = {i: os.urandom(32) for i in (1, 2)}
    bad = WrappedKey(2, 1, b"\x00" * 40)
    sa = (WrappedKey(0, 2, gsa_keys.wrap(KeyWrap.KW_5649_256, k[2], os.urandom(60))),)
    with pytest.raises(gsa_keys.KeyPathError):
        WorkingKeyPath(((1, k[1]),)).resolve(KeyWrap.KW_5649_256, bytes(32), sa, (bad,))


def test_kw_5649_known_answer():
    """RFC 5649 §6 example: 20 octets under a 192-bit KEK."""
    kek = bytes.fromhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
    key = bytes.fromhex("c37b7e6492584340bed12207808941155068f738")
    want = bytes.fromhex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a")
    assert gsa_keys.wrap(KeyWrap.KW_5649_192, kek, key) == want
    assert gsa_keys.unwrap(KeyWrap.KW_5649_192, kek, want) == key
    with pytest.raises(gsa_keys.KeyWrapError):
        gsa_keys.unwrap(KeyWrap.KW_5649_192, kek, want[:-8] + bytes(8))
    with pytest.raises(gsa_keys.KeyWrapError):
        gsa_keys.wrap(KeyWrap.KW_ARX, bytes(32), key)


def test_counter_mode_sender_without_sender_id_withholds_tek():
    """§2.4.4: a sender without a Sender-ID must not install a counter-mode TEK (re-register)."""
    sa = rekey_sa()
    tx = RekeySender(sa, gcauth=GcAuth.IMPLICIT)
    sender = MemberConfig(7, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION, SaDirection.SYMMETRIC)
    gcm = tek(0x1000)
    cbc = tek(0x1001, "aes-cbc-128-hmac-sha256")
    d = tx.build(teks=((gcm, ()), (cbc, ())))
    with_id = dataclasses.replace(sender, sender_ids=(5,))
    for cfg, want in ((sender, (0x1001,)), (with_id, (0x1000, 0x1001)), (CONFIG, (0x1000, 0x1001))):
        rx = RekeyReceiver(cfg, sa, gcauth=GcAuth.IMPLICIT)
        (ev,) = rx.receive(d)
        assert isinstance(ev, RekeyApplied) and tuple(t.spi for t in ev.teks) == want
        assert ev.reregister == (len(want) == 1)


def test_signature_covers_the_rfc9838_adjusted_a_and_p():
    """DataToAuthenticate rebuilt from the datagram bytes as RFC 9838 §2.4.1's figure draws it,
    independently of gkm.ikev2.rekey_auth: AdjustedIKEHDR | AdjustedEncPldHdr | inner payloads
    with the AUTH signature zeroed."""
    import struct

    from gkm.ikev2.sk import unprotect_chain
    key = ed25519.Ed25519PrivateKey.generate()
    sa = rekey_sa()
    tx = RekeySender(sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=SIGNATURE_ALGORITHMS["ed25519"], signing_key=key)
    d = tx.build(teks=((tek(), ()),))
    _msg, chain = unprotect_chain(d, sa.cipher)
    p = chain[:-64] + bytes(64)  # AUTH is last; Ed25519 signatures are 64 bytes
    a = d[:24] + struct.pack("!I", 28 + 4 + len(p)) + d[28:30] + struct.pack("!H", 4 + len(p))
    key.public_key().verify(chain[-64:], a + p)  # raises if the layout differs


def test_rekey_sa_from_a_registrations_group_kek():
    """The hand-off of a registration (GroupKek + GSK_e|GSK_a|GSK_w) makes a working Rekey SA."""
    from gkm.gdoi.keys import GroupKek
    from gkm.ikev2.rekey_auth import FOR_SIGNATURE_SUITE
    from gkm.ikev2.rekey_sa import RekeyPolicyError
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    keys = RekeySaKeys.split(os.urandom(32 + 32 + 32), Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128, KeyWrap.KW_5649_256)
    kek = GroupKek(7, os.urandom(16), ipaddress.ip_network("192.0.2.1/32"), 848, ipaddress.ip_network("239.1.1.1/32"),
                   848, "aes-cbc-256", keys.gsk_e, b"", "ecdsa-p256", spki, 3600)
    sa = RekeySa.from_kek(kek, keys, kwa=KeyWrap.KW_5649_256, integ=Integ.HMAC_SHA2_256_128, initial_message_id=12)
    alg = FOR_SIGNATURE_SUITE[kek.signature]
    tx = RekeySender(sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, signing_key=key)
    rx = RekeyReceiver(CONFIG, sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=alg, auth_key=kek.signing_public_key)
    (ev,) = rx.receive(tx.build(teks=((tek(), ()),)))
    assert isinstance(ev, RekeyApplied) and ev.message_id == 12
    with pytest.raises(RekeyPolicyError):
        RekeySa.from_kek(dataclasses.replace(kek, cipher="des"), keys, kwa=KeyWrap.KW_5649_256, integ=Integ.HMAC_SHA2_256_128)
