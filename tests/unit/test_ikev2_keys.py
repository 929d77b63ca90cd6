"""gkm.ikev2 key derivation and SK protection.

Known answers: the NIST CAVS SP 800-135 IKEv2 KDF sample (HMAC-SHA-1): SKEYSEED, the IKE SA
keying material, the Child SA keying material with and without a new shared secret, and the
rekey SKEYSEED, which is the RFC 9370 §2.2.2 SKEYSEED(n) formula.  The SHA-2 PRFs are checked
against strongSwan's charon in tests/host/test_ikev2_charon.py.
"""

from __future__ import annotations

import hmac

import pytest

from gkm.ikev2 import ExchangeType, Header, HeaderFlags, Nonce, Notify, NotifyType, WireError, decode_message
from gkm.ikev2.constants import Encr, Integ, Prf
from gkm.ikev2.examples import SPI_I, SPI_R, all_examples
from gkm.ikev2.keys import (
    KeyDerivationError, Suite, additional_skeyseed, derive_ike_keys, prf, prf_plus, skeyseed, update_ike_keys,
)
from gkm.ikev2.sk import ProtectionError, SkCipher, protect, unprotect

X = bytes.fromhex
CAVS = dict(
    gir=X("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52"),
    gir_new=X("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330"),
    ni=X("32b50d5f4a3763f3"), nr=X("9206a04b26564cb1"), spi_i=X("34c9e7c188868785"), spi_r=X("3ff77d760d2b2199"),
    skeyseed=X("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"),
    dkm=X("a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b76606f9fa5e9"
          "92204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119"
          "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4"),
    dkm_child=X("8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e092d1f24e"
                "2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf"
                "285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4"),
    dkm_child_dh=X("bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14c400a519"
                   "7dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a"
                   "05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c"),
    skeyseed_rekey=X("63e81194946ebd05df7df5ebf5d8750056bf1f1d"),
)


def test_cavs_ikev2_kdf_sha1():
    c = CAVS
    seed = skeyseed(Prf.HMAC_SHA1, c["ni"], c["nr"], c["gir"])
    assert seed == c["skeyseed"]
    dkm = prf_plus(Prf.HMAC_SHA1, seed, c["ni"] + c["nr"] + c["spi_i"] + c["spi_r"], len(c["dkm"]))
    assert dkm == c["dkm"]
    sk_d = dkm[:20]
    assert prf_plus(Prf.HMAC_SHA1, sk_d, c["ni"] + c["nr"], len(c["dkm_child"])) == c["dkm_child"]
    assert prf_plus(Prf.HMAC_SHA1, sk_d, c["gir_new"] + c["ni"] + c["nr"], len(c["dkm_child_dh"])) == c["dkm_child_dh"]
    assert additional_skeyseed(Prf.HMAC_SHA1, sk_d, c["gir_new"], c["ni"], c["nr"]) == c["skeyseed_rekey"]


def test_ike_keys_split_the_keying_material_in_rfc_order():
    """SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr (RFC 7296 §2.14), sizes per suite."""
    c = CAVS
    suite = Suite(Prf.HMAC_SHA1, Encr.AES_CBC, 128, Integ.HMAC_SHA1_96)
    k = derive_ike_keys(suite, c["ni"], c["nr"], c["gir"], c["spi_i"], c["spi_r"])
    joined = k.sk_d + k.sk_ai + k.sk_ar + k.sk_ei + k.sk_er + k.sk_pi + k.sk_pr
    assert [len(x) for x in (k.sk_d, k.sk_ai, k.sk_ei, k.sk_pi)] == [20, 20, 16, 20]
    assert joined == c["dkm"][: len(joined)]
    gcm = derive_ike_keys(Suite(Prf.HMAC_SHA2_384, Encr.AES_GCM_16, 256), b"a" * 32, b"b" * 32, b"s", SPI_I, SPI_R)
    assert (len(gcm.sk_d), len(gcm.sk_ai), len(gcm.sk_ei)) == (48, 0, 36)  # 32-byte key + 4-byte salt
    assert "sk_d" not in repr(gcm) and gcm.sk_d.hex() not in repr(gcm)


def test_update_ike_keys_follows_rfc9370():
    suite = Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256)
    ni, nr = b"n" * 32, b"r" * 32
    k0 = derive_ike_keys(suite, ni, nr, b"ecdh-secret", SPI_I, SPI_R)
    k1 = update_ike_keys(k0, b"mlkem-secret", ni, nr, SPI_I, SPI_R)
    seed1 = hmac.new(k0.sk_d, b"mlkem-secret" + ni + nr, "sha256").digest()
    assert k1.sk_d == prf_plus(Prf.HMAC_SHA2_256, seed1, ni + nr + SPI_I + SPI_R, 32)
    assert k1.sk_ei != k0.sk_ei and update_ike_keys(k0, b"other", ni, nr, SPI_I, SPI_R).sk_d != k1.sk_d


def test_prf_plus_blocks():
    t1 = prf(Prf.HMAC_SHA2_256, b"k", b"s\x01")
    t2 = prf(Prf.HMAC_SHA2_256, b"k", t1 + b"s\x02")
    assert prf_plus(Prf.HMAC_SHA2_256, b"k", b"s", 40) == (t1 + t2)[:40]
    with pytest.raises(KeyDerivationError):
        prf_plus(Prf.HMAC_SHA2_256, b"k", b"s", 255 * 32 + 1)


def test_suite_validation():
    with pytest.raises(KeyDerivationError):
        Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256, Integ.HMAC_SHA2_256_128)
    with pytest.raises(KeyDerivationError):
        Suite(Prf.HMAC_SHA2_256, Encr.AES_CBC, 256)
    with pytest.raises(KeyDerivationError):
        Suite(99, Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128)
    with pytest.raises(KeyDerivationError):
        Suite(Prf.HMAC_SHA2_256, Encr.AES_CBC, 100, Integ.HMAC_SHA2_256_128)


SUITES = [
    Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256),
    Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 128),
    Suite(Prf.HMAC_SHA2_256, Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
    Suite(Prf.HMAC_SHA2_384, Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192),
    Suite(Prf.HMAC_SHA2_512, Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256),
]


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{int(s.encr)}-{s.key_bits}-{s.integ}")
def test_sk_round_trip_and_tampering(suite):
    keys = derive_ike_keys(suite, b"n" * 32, b"r" * 32, b"secret", SPI_I, SPI_R)
    header, payloads = all_examples()["gsa_auth_response_inner"]
    outer = (Notify(0, NotifyType.COOKIE, b"", b"c" * 8),)
    data = protect(header, payloads, SkCipher.for_message(keys, header), outer=outer)
    msg = unprotect(data, SkCipher.for_message(keys, header))
    assert msg.header == header and msg.payloads == outer + payloads
    assert decode_message(data).encrypted is not None  # the framing is a valid message
    # the other direction's keys do not open it
    with pytest.raises(ProtectionError):
        unprotect(data, SkCipher.for_sender(keys, not header.initiator))
    # any flipped bit (header, clear payload, IV, ciphertext, ICV) is refused
    for pos in (0, 20, 30, 40, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(WireError):
            unprotect(bytes(bad), SkCipher.for_message(keys, header))


def test_sk_errors_do_not_leak_plaintext():
    suite = SUITES[2]
    keys = derive_ike_keys(suite, b"n" * 32, b"r" * 32, b"secret", SPI_I, SPI_R)
    header = Header(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, HeaderFlags.INITIATOR, 3)
    data = protect(header, (Nonce(b"top-secret-nonce"),), SkCipher.for_message(keys, header))
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    with pytest.raises(ProtectionError) as e:
        unprotect(bytes(bad), SkCipher.for_message(keys, header))
    assert "top-secret" not in str(e.value) and e.value.payload == "SK"
    with pytest.raises(WireError, match="no SK"):
        unprotect(all_examples_bytes("ike_sa_init_cookie"), SkCipher.for_message(keys, header))


def all_examples_bytes(name: str) -> bytes:
    from gkm.ikev2 import encode_message

    h, p = all_examples()[name]
    return encode_message(h, p)
