"""policy <-> wire mapping round trips: every ESP suite, both modes, every direction, IPv4 and
IPv6 selectors, ports; SA KEK for every KEK cipher and signature suite."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gkm import wire
from gkm.gdoi import policy_wire as pw
from gkm.gdoi.keys import new_kek_keymat, new_tek_keymat
from policy.model import AddressPreservation, KekPolicy, Mode, SaDirection, TekPolicy, TrafficSelector
from policy.suites import ESP_SUITES, KEK_CIPHERS, SIGNATURE_SUITES

SELECTORS = [
    TrafficSelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("239.1.1.1/32"), 17, 1000, 5004),
    TrafficSelector(ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("239.1.1.9/32")),
    TrafficSelector(ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("ff15::1/128"), 6, 0, 443),
]


def _roundtrip(payload):
    """Encode inside a GDOI SA of a PULL message 2 and decode again, as the member sees it."""
    hdr = wire.Header(bytes(8), bytes(range(1, 9)), 32, 1, 7)
    data = wire.encode_message(hdr, (wire.GdoiSa((payload,)),), block_size=16)
    return wire.decode_message(data, block_size=16).payloads[0].payloads[0]


@pytest.mark.parametrize("suite,mode,direction,sel", list(itertools.product(
    sorted(ESP_SUITES), (Mode.TUNNEL, Mode.TRANSPORT), list(SaDirection), range(len(SELECTORS)))))
def test_sa_tek_roundtrip(suite, mode, direction, sel):
    s = SELECTORS[sel]
    tp = TekPolicy("t", s, ESP_SUITES[suite], mode=mode, lifetime_s=900)
    sat = _roundtrip(pw.sa_tek(tp, 0xABCDEF, direction, 899))
    p = pw.read_sa_tek(sat)
    assert (p.spi, p.src, p.dst, p.protocol, p.src_port, p.dst_port) == (0xABCDEF, s.src, s.dst, s.protocol, s.src_port, s.dst_port)
    assert p.mode is mode and p.direction is direction and p.suite is ESP_SUITES[suite] and p.lifetime_s == 899
    assert p.address_preservation is (AddressPreservation.SOURCE_AND_DESTINATION if mode is Mode.TUNNEL else AddressPreservation.NONE)
    enc, auth = new_tek_keymat(ESP_SUITES[suite])
    tek = pw.group_tek(5, p, pw.tek_packet(0xABCDEF, enc, auth))
    assert tek.keymat == enc and tek.auth_key == auth and tek.suite == suite
    assert tek.selector == TrafficSelector(s.src, s.dst, s.protocol, s.src_port, s.dst_port)


def _pub(sig):
    if sig.key_type == "rsa":
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        k = ec.generate_private_key({"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1(), "secp521r1": ec.SECP521R1()}[sig.curve])
    return k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("cipher,sig", list(itertools.product(sorted(KEK_CIPHERS), sorted(SIGNATURE_SUITES))))
def test_sa_kek_roundtrip(tmp_path, cipher, sig):
    kp = KekPolicy(KEK_CIPHERS[cipher], SIGNATURE_SUITES[sig], tmp_path / "k.pem", ipaddress.ip_address("239.192.0.7"), 9848)
    pub = _pub(SIGNATURE_SUITES[sig])
    spi = bytes(range(16))
    sak = _roundtrip(pw.sa_kek(kp, spi, ("198.51.100.1", 848), 3600, pw.signature_key_bits(pub)))
    p = pw.read_sa_kek(sak)
    assert p.cipher is KEK_CIPHERS[cipher] and p.signature is SIGNATURE_SUITES[sig] and p.lifetime_s == 3600
    assert (p.dst, p.dst_port, p.src, p.src_port) == (ipaddress.ip_network("239.192.0.7/32"), 9848,
                                                      ipaddress.ip_network("198.51.100.1/32"), 848)
    keymat = new_kek_keymat(KEK_CIPHERS[cipher])
    kek = pw.group_kek(5, p, pw.kek_packet(spi, keymat, pub))
    assert kek.iv + kek.key == keymat and len(kek.iv) == 16 and kek.signing_public_key == pub


def test_wrong_signing_key_type_refused(tmp_path):
    kp = KekPolicy(KEK_CIPHERS["aes-cbc-128"], SIGNATURE_SUITES["ecdsa-p384"], tmp_path / "k.pem", ipaddress.ip_address("239.192.0.7"))
    p = pw.read_sa_kek(_roundtrip(pw.sa_kek(kp, bytes(16), None, 3600, 384)))
    with pytest.raises(pw.MappingError):
        pw.group_kek(5, p, pw.kek_packet(bytes(16), bytes(32), _pub(SIGNATURE_SUITES["ecdsa-p256"])))
