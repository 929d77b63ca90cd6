"""Known-answer and cross-implementation tests for gkm.ike.crypto."""

from __future__ import annotations

import hashlib
import json
import pathlib
import struct

import pytest

from gkm.ike import crypto
from gkm.ike.crypto import EncAlg, HashAlg, Prf

DATA = pathlib.Path(__file__).parent / "ike_data"
H = bytes.fromhex


def _hmac_ref(name: str, key: bytes, msg: bytes) -> bytes:
    """RFC 2104 written out, independent of the hmac module."""
    block = hashlib.new(name).block_size
    if len(key) > block:
        key = hashlib.new(name, key).digest()
    key = key.ljust(block, b"\0")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    return hashlib.new(name, opad + hashlib.new(name, ipad + msg).digest()).digest()


def _ref_chain(name, psk, ni, nr, gxy, ci, cr):
    skeyid = _hmac_ref(name, psk, ni + nr) if psk is not None else _hmac_ref(name, ni + nr, gxy)
    d = _hmac_ref(name, skeyid, gxy + ci + cr + b"\0")
    a = _hmac_ref(name, skeyid, d + gxy + ci + cr + b"\1")
    e = _hmac_ref(name, skeyid, a + gxy + ci + cr + b"\2")
    return skeyid, d, a, e


def _cavp():
    return json.loads((DATA / "libreswan_cavp_ikev1.json").read_text())


@pytest.mark.parametrize("kind", ["psk", "dsa"])
def test_cavp_sha1_skeyid_chain(kind):
    for v in _cavp()[kind]:
        prf = Prf(HashAlg.SHA1)
        psk = H(v["psk"]) if kind == "psk" else None
        keys = crypto.derive_phase1_keys(
            prf, psk=psk, ni_b=H(v["ni"]), nr_b=H(v["nr"]), gxy=H(v["gxy"]),
            cky_i=H(v["cky_i"]), cky_r=H(v["cky_r"]), key_len=16,
        )
        assert keys.skeyid.hex() == v["skeyid"]
        assert keys.skeyid_d.hex() == v["skeyid_d"]
        assert keys.skeyid_a.hex() == v["skeyid_a"]
        assert keys.skeyid_e.hex() == v["skeyid_e"]
        assert "redacted" in repr(keys) and v["skeyid"] not in repr(keys)


def _rfc5903():
    return json.loads((DATA / "rfc5903_ecp.json").read_text())["vectors"]


@pytest.mark.parametrize("v", _rfc5903(), ids=lambda v: f"group{v['group']}")
def test_rfc5903_ecp_known_answer(v):
    g = crypto.dh_group(v["group"])
    i = g.private_from_scalar(int(v["i"], 16))
    r = g.private_from_scalar(int(v["r"], 16))
    assert i.public == H(v["gix"] + v["giy"])
    assert r.public == H(v["grx"] + v["gry"])
    assert len(i.public) == g.public_len
    assert i.exchange(r.public) == H(v["girx"])
    assert r.exchange(i.public) == H(v["girx"])


@pytest.mark.parametrize("v", _rfc5903(), ids=lambda v: f"group{v['group']}")
@pytest.mark.parametrize("hash_alg", [HashAlg.SHA2_256, HashAlg.SHA2_384, HashAlg.SHA2_512])
@pytest.mark.parametrize("psk", [b"group secret", None])
def test_sha2_chain_matches_reference(v, hash_alg, psk):
    """SHA-2 vectors: RFC 5903 g^xy fed through our chain and an independent HMAC."""
    gxy = H(v["girx"])
    ni, nr = H("00112233445566778899aabbccddeeff"), H("ffeeddccbbaa99887766554433221100")
    ci, cr = H("0102030405060708"), H("1112131415161718")
    prf = Prf(hash_alg)
    keys = crypto.derive_phase1_keys(prf, psk=psk, ni_b=ni, nr_b=nr, gxy=gxy, cky_i=ci, cky_r=cr, key_len=32)
    ref = _ref_chain(hash_alg.hashlib_name, psk, ni, nr, gxy, ci, cr)
    assert (keys.skeyid, keys.skeyid_d, keys.skeyid_a, keys.skeyid_e) == ref
    assert keys.enc_key == ref[3][:32]


def test_expand_key_appendix_b():
    prf = Prf(HashAlg.SHA2_256)
    e = H("aa" * 32)
    k1 = _hmac_ref("sha256", e, b"\0")
    k2 = _hmac_ref("sha256", e, k1)
    assert crypto.expand_key(prf, e, 40) == (k1 + k2)[:40]
    assert crypto.expand_key(prf, e, 32) == e
    sha1 = Prf(HashAlg.SHA1)
    e20 = H("bb" * 20)
    k1 = _hmac_ref("sha1", e20, b"\0")
    k2 = _hmac_ref("sha1", e20, k1)
    assert crypto.expand_key(sha1, e20, 32) == (k1 + k2)[:32]


def test_hash_i_r_and_ivs():
    prf = Prf(HashAlg.SHA2_384)
    s, gi, gr, ci, cr, sa, idi, idr = (bytes([n]) * 8 for n in range(8))
    assert crypto.hash_i(prf, s, gi, gr, ci, cr, sa, idi) == _hmac_ref("sha384", s, gi + gr + ci + cr + sa + idi)
    assert crypto.hash_r(prf, s, gi, gr, ci, cr, sa, idr) == _hmac_ref("sha384", s, gr + gi + cr + ci + sa + idr)
    assert crypto.phase1_iv(prf, gi, gr, 16) == hashlib.sha384(gi + gr).digest()[:16]
    last = H("00" * 15 + "01")
    assert crypto.phase2_iv(prf, last, 0x01020304, 16) == hashlib.sha384(last + struct.pack("!I", 0x01020304)).digest()[:16]
    assert crypto.phase2_iv(prf, last, b"\1\2\3\4", 16) == crypto.phase2_iv(prf, last, 0x01020304, 16)


def test_aes_cbc_sp800_38a():
    key = H("2b7e151628aed2a6abf7158809cf4f3c")
    iv = H("000102030405060708090a0b0c0d0e0f")
    pt = H("6bc1bee22e409f96e93d7e117393172a")
    ct = crypto.cbc_encrypt(EncAlg.AES_CBC, key, iv, pt)
    assert ct == H("7649abac8119b246cee98e9b12e9197d")
    assert crypto.cbc_decrypt(EncAlg.AES_CBC, key, iv, ct) == pt


def test_cbc_zero_padding_and_bad_length():
    key, iv = b"k" * 32, b"i" * 16
    ct = crypto.cbc_encrypt(EncAlg.AES_CBC, key, iv, b"abc")
    assert len(ct) == 16
    assert crypto.cbc_decrypt(EncAlg.AES_CBC, key, iv, ct) == b"abc" + b"\0" * 13
    with pytest.raises(crypto.CryptoError):
        crypto.cbc_decrypt(EncAlg.AES_CBC, key, iv, ct[:15])
    with pytest.raises(crypto.CryptoError):
        crypto.cbc_decrypt(EncAlg.AES_CBC, key, iv, b"")


def test_modp2048_exchange_matches_pow():
    from cryptography.hazmat.primitives.asymmetric import dh  # noqa: F401

    g = crypto.dh_group(14)
    a, b = g.generate(), g.generate()
    assert len(a.public) == 256 and len(b.public) == 256
    z = a.exchange(b.public)
    assert z == b.exchange(a.public) and len(z) == 256
    x = a._key.private_numbers().x if not isinstance(a._key, int) else a._key
    assert pow(int.from_bytes(b.public, "big"), x, g.p).to_bytes(256, "big") == z


@pytest.mark.parametrize("gid", [14, 19, 20, 21])
def test_bad_public_values_rejected(gid):
    g = crypto.dh_group(gid)
    k = g.generate()
    with pytest.raises(crypto.CryptoError):
        k.exchange(b"\x01" * (g.public_len - 1))
    bad = b"\x00" * (g.public_len - 1) + b"\x01"  # MODP: y = 1; ECP: (0, 1) not on curve
    with pytest.raises(crypto.CryptoError):
        k.exchange(bad)
    if gid == 14:
        with pytest.raises(crypto.CryptoError):
            k.exchange((g.p - 1).to_bytes(256, "big"))
    assert "DhPrivate" in repr(k)


def _rfc4754():
    return json.loads((DATA / "rfc4754_ecdsa.json").read_text())["vectors"]


@pytest.mark.parametrize("v", _rfc4754(), ids=lambda v: v["curve"])
def test_rfc4754_ecdsa_r_s_encoding(v):
    """RFC 4754 section 8: the fixed-length r||s signature verifies over the given hash."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from gkm.ike import AuthMethod, auth

    curve = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}[v["curve"]]
    pub = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + H(v["gwx"] + v["gwy"]))
    method = AuthMethod(v["method"])
    sig = H(v["r"] + v["s"])
    auth.verify(pub, method, H(v["h"]), sig)
    with pytest.raises(auth.AuthError):
        auth.verify(pub, method, H(v["h"]), sig[:-1] + bytes([sig[-1] ^ 1]))
    with pytest.raises(auth.AuthError):
        auth.verify(pub, method, H(v["h"]), sig[1:])
    other = AuthMethod.ECDSA_384 if method is AuthMethod.ECDSA_256 else AuthMethod.ECDSA_256
    with pytest.raises(auth.AuthError, match="does not fit"):
        auth.verify(pub, other, H(v["h"]), sig)


def test_rsa_signature_is_pkcs1_type1_without_digestinfo():
    """RFC 2409 section 5.1: the RSA signature is the bare HASH_I/R in a PKCS#1 type 1 block."""
    from cryptography.hazmat.primitives.asymmetric import padding

    from gkm.ike import AuthMethod, auth
    from tests.unit.ike_data.helpers import leaf

    cert, key = leaf("rsa", "gm1")
    cred = auth.CertCredential(cert, key)
    digest = bytes(range(32))
    sig = auth.sign(cred, AuthMethod.RSA_SIG, digest)
    assert cert.public_key().recover_data_from_signature(sig, padding.PKCS1v15(), None) == digest
    auth.verify(cert.public_key(), AuthMethod.RSA_SIG, digest, sig)


@pytest.mark.parametrize("hash_alg", list(HashAlg))
def test_keyed_prf_is_hmac(hash_alg):
    """The copied-state HMAC equals hmac.digest for keys shorter than, equal to and longer than
    the hash block (64 or 128 bytes), and one keyed object serves several messages."""
    import hmac
    import os

    for n in (0, 1, 16, 32, 63, 64, 65, 127, 128, 129, 300):
        key = os.urandom(n)
        keyed = Prf(hash_alg).keyed(key)
        for data in (b"", b"x", os.urandom(200)):
            want = hmac.digest(key, data, hash_alg.hashlib_name)
            assert Prf(hash_alg)(key, data) == want
            assert keyed(data) == want
    assert key.hex() not in repr(keyed)


def test_cached_path_verifier_decides_like_a_fresh_one():
    """auth keeps one verifier per trust-anchor set and second; the verifier compares validity
    at whole seconds, so around a CA's notAfter the cached one and a fresh one built for the
    exact time agree (and the leaf's own validity is checked at the exact time before)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import verification as xv
    from cryptography.x509.oid import NameOID

    from gkm.ike import auth

    utc = datetime.timezone.utc
    t = datetime.datetime(2026, 5, 28, 12, 0, 0, tzinfo=utc)
    day = datetime.timedelta(days=1)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ck, lk = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("CA")).issuer_name(name("CA")).public_key(ck.public_key())
        .serial_number(1).not_valid_before(t - day).not_valid_after(t)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ck.public_key()), critical=False)
        .sign(ck, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder().subject_name(name("gm")).issuer_name(name("CA")).public_key(lk.public_key())
        .serial_number(2).not_valid_before(t - day).not_valid_after(t + day)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ck.public_key()), critical=False)
        .sign(ck, hashes.SHA256())
    )

    def fresh(when):
        v = (
            xv.PolicyBuilder().store(xv.Store([ca])).time(when)
            .extension_policies(ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(), ee_policy=xv.ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            v.verify(leaf, [])
            return True
        except xv.VerificationError:
            return False

    def cached(when):
        try:
            auth.validate_chain(leaf, [], (ca,), when)
            return True
        except auth.AuthError as e:
            assert e.notify == 22
            return False

    results = []
    for dt in (-1.5, -0.5, -0.25, 0.0, 0.25, 0.5, 0.999999, 1.0, 1.5, 0.5):
        when = t + datetime.timedelta(seconds=dt)
        assert cached(when) == cached(when) == fresh(when), dt
        results.append(cached(when))
    assert results == [True] * 7 + [False, False, True]
