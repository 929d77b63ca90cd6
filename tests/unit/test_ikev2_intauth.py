"""RFC 9242 §3.3.2 IntAuth and the RFC 7296 §2.15 / RFC 7427 AUTH computations."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gkm.ikev2 import ExchangeType, Header, HeaderFlags, KeyExchange, KeyExchangeMethod as KEM
from gkm.ikev2 import WireError, auth
from gkm.ikev2.constants import Encr, Integ, Prf
from gkm.ikev2.intauth import IntAuth, intauth_chain, intauth_for
from gkm.ikev2.keys import IkeKeys, Suite
from gkm.ikev2.sa_init import SaInitConfig, SaInitInitiator, SaInitResponder
from gkm.ikev2.sk import SkCipher, protect

GCM = Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256)
CBC = Suite(Prf.HMAC_SHA2_384, Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192)
R, I = ("192.0.2.1", 848), ("192.0.2.2", 848)


def fixed_keys(suite: Suite) -> IkeKeys:
    from gkm.ikev2.keys import encr_key_size, integ_key_size, prf_size
    p, a, e = prf_size(suite.prf), integ_key_size(suite.integ), encr_key_size(suite.encr, suite.key_bits)
    return IkeKeys(suite, b"\x01" * p, b"\x02" * a, b"\x03" * a, b"\x04" * e, b"\x05" * e, b"\x06" * p, b"\x07" * p)


@pytest.mark.parametrize("suite,hname", [(GCM, "sha256"), (CBC, "sha384")], ids=["gcm", "cbc"])
def test_intauth_known_answer(suite, hname):
    """Computed by hand from the wire bytes: A = header..SK generic header, P = the inner
    KE payload with its generic header, keyed with SK_pi / SK_pr, chained, then | MID."""
    keys = fixed_keys(suite)
    spi_i, spi_r = bytes(range(8)), bytes(range(8, 16))
    ke_i, ke_r = KeyExchange(KEM.ML_KEM_768, b"\xaa" * 40), KeyExchange(KEM.ML_KEM_768, b"\xbb" * 24)
    hi = Header(spi_i, spi_r, ExchangeType.IKE_INTERMEDIATE, HeaderFlags.INITIATOR, 1)
    hr = Header(spi_i, spi_r, ExchangeType.IKE_INTERMEDIATE, HeaderFlags.RESPONSE, 1)
    iv = bytes(SkCipher.for_sender(keys, True).overhead[0])
    req = protect(hi, (ke_i,), SkCipher.for_message(keys, hi), iv=iv)
    resp = protect(hr, (ke_r,), SkCipher.for_message(keys, hr), iv=iv)
    head = 28 + 4  # no clear payloads before SK
    p_i = bytes((0, 0, 0, 4 + 4 + 40)) + bytes((0, 36, 0, 0)) + b"\xaa" * 40
    p_r = bytes((0, 0, 0, 4 + 4 + 24)) + bytes((0, 36, 0, 0)) + b"\xbb" * 24
    want_i = hmac.new(keys.sk_pi, req[:head] + p_i, hname).digest()
    want_r = hmac.new(keys.sk_pr, resp[:head] + p_r, hname).digest()
    got = intauth_chain([(req, resp, keys)])
    assert (got.initiator, got.responder) == (want_i, want_r)
    assert got.octets(2) == want_i + want_r + b"\x00\x00\x00\x02"
    # a second exchange chains the first value in
    two = intauth_chain([(req, resp, keys), (req, resp, keys)])
    assert two.initiator == hmac.new(keys.sk_pi, want_i + req[:head] + p_i, hname).digest()
    assert two.responder == hmac.new(keys.sk_pr, want_r + resp[:head] + p_r, hname).digest()


def test_no_intermediate_means_no_intauth():
    assert IntAuth().octets(1) == b"" and not intauth_for((), None).present


def _established(mlkem: str):
    ini = SaInitInitiator(SaInitConfig(GCM, (KEM.CURVE25519,), mlkem), R)
    resp = SaInitResponder(SaInitConfig(GCM, (KEM.CURVE25519,), mlkem))
    ini.start(0.0)
    for _ in range(4):
        for d, _a in ini.datagrams_to_send():
            resp.receive_datagram(d, I, 0.0)
        for d, _a in resp.datagrams_to_send():
            ini.receive_datagram(d, R, 0.0)
    return ini.next_event(), resp.next_event()


def test_both_roles_compute_the_same_intauth_from_the_engines_hand_over():
    ei, er = _established("required")
    a, b = intauth_for(ei.intermediate, ei.intermediate_keys), intauth_for(er.intermediate, er.intermediate_keys)
    assert a.present and a == b
    # the keys after the ML-KEM update did not protect the IKE_INTERMEDIATE messages
    with pytest.raises(WireError):
        intauth_for(ei.intermediate, ei.keys)


def test_psk_auth_known_answer():
    octets = b"message" + b"nonce" + b"maced"
    inner = hmac.new(b"secret", b"Key Pad for IKEv2", hashlib.sha256).digest()
    assert auth.psk_auth(Prf.HMAC_SHA2_256, b"secret", octets) == hmac.new(inner, octets, hashlib.sha256).digest()


def test_signed_octets_layout():
    keys = fixed_keys(GCM)
    idb = bytes((11, 0, 0, 0)) + b"gm-1"
    got = auth.signed_octets(b"M1", b"NR", keys, True, idb, b"IA")
    assert got == b"M1NR" + hmac.new(keys.sk_pi, idb, "sha256").digest() + b"IA"
    assert auth.signed_octets(b"M2", b"NI", keys, False, idb, b"")[4:] == hmac.new(keys.sk_pr, idb, "sha256").digest()


def test_algorithm_identifiers_are_rfc7427_blobs():
    # RFC 7427 Appendix A.3.1 (ecdsa-with-sha256), A.4.3 (RSASSA-PSS SHA-256), RFC 8420 (Ed25519)
    assert auth.ALGORITHM_IDS["ecdsa-p256-sha256"].hex() == "300a06082a8648ce3d040302"
    assert auth.ALGORITHM_IDS["ed25519"].hex() == "300506032b6570"
    assert auth.ALGORITHM_IDS["rsa-pss-sha256"].hex() == (
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108"
        "300d06096086480165030402010500a203020120")


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  lambda: rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate],
                         ids=["ecdsa", "rsa-pss", "ed25519"])
def test_sign_verify_and_refusals(make):
    key = make()
    data = auth.sign(key, b"octets")
    auth.verify_signature(key.public_key(), data, b"octets")
    with pytest.raises(auth.AuthFailed, match="invalid"):
        auth.verify_signature(key.public_key(), data, b"other octets")
    with pytest.raises(auth.AuthFailed, match="cannot verify"):
        auth.verify_signature(ed25519.Ed25519PrivateKey.generate().public_key() if not isinstance(key, ed25519.Ed25519PrivateKey)
                              else ec.generate_private_key(ec.SECP256R1()).public_key(), data, b"octets")
    bad = bytearray(data)
    bad[3] ^= 1  # inside the AlgorithmIdentifier
    with pytest.raises(auth.AuthFailed, match="unsupported"):
        auth.verify_signature(key.public_key(), bytes(bad), b"octets")
    with pytest.raises(auth.AuthFailed, match="shorter"):
        auth.verify_signature(key.public_key(), data[:5], b"octets")
