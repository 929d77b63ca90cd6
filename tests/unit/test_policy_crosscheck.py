"""policy.suites / policy.model numbers agree with gkm.wire constants and xfrm's algorithm rules.

The suite table is the one place both mappings read; these tests catch drift between it and the
codec's and installer's own checks.
"""

import os

import pytest

from policy import model as pm
from policy.suites import ESP_SUITES, KEK_CIPHERS, SIGNATURE_SUITES

wire = pytest.importorskip("gkm.wire.constants")
xalg = pytest.importorskip("xfrm.algorithms")


@pytest.mark.parametrize("suite", list(ESP_SUITES.values()), ids=list(ESP_SUITES))
def test_suite_accepted_by_xfrm(suite):
    if suite.aead:
        key = os.urandom(suite.xfrm_aead.key_bits // 8)
        assert len(key) == suite.enc_key_bytes
        aead = xalg.aes_gcm(key, suite.xfrm_aead.icv_bits // 8)
        assert aead.name == suite.xfrm_aead.name
        xalg.check_algorithms(aead, None, None)
    else:
        cipher = xalg.aes_cbc(os.urandom(suite.enc_key_bytes))
        auth = xalg.hmac_sha2(suite.xfrm_auth.key_bits, os.urandom(suite.integrity_key_bytes))
        assert cipher.name == suite.xfrm_enc.name and auth.name == suite.xfrm_auth.name
        assert auth.trunc_bits == suite.xfrm_auth.icv_bits
        xalg.check_algorithms(None, cipher, auth)


@pytest.mark.parametrize("suite", list(ESP_SUITES.values()), ids=list(ESP_SUITES))
def test_suite_numbers_match_wire(suite):
    assert suite.transform_id == wire.EspTransformId[suite.transform_id.name.removeprefix("ESP_")]
    if suite.auth_algorithm is not None:  # RFC 4868 section 2.4, IKE phase 2 values
        bits = int(suite.auth_algorithm.name.rsplit("_", 1)[1])
        assert suite.auth_algorithm == {256: 5, 384: 6, 512: 7}[bits]


def test_kek_and_signature_numbers_match_wire():
    for k in KEK_CIPHERS.values():
        assert k.algorithm == wire.KekAlgorithm.AES
    for s in SIGNATURE_SUITES.values():
        assert s.hash_algorithm == wire.SigHashAlgorithm[s.hash_name.upper()]
        assert s.algorithm == wire.SigAlgorithm[s.algorithm.name.removeprefix("SIG_ALG_")]


def test_sa_attribute_values_match_wire():
    for ours, theirs in (
        (pm.EncapsulationMode, wire.EncapsulationMode),
        (pm.AddressPreservation, wire.AddressPreservation),
        (pm.SaDirection, wire.SaDirection),
    ):
        assert {e.name: e.value for e in ours} == {e.name: e.value for e in theirs}
