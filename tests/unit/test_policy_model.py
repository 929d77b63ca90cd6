"""policy.model and policy.suites: invariants, protocol values, authorization, redaction."""

import ipaddress as ip
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from policy.model import (
    AddressMatch,
    AddressPreservation,
    Authorization,
    EncapsulationMode,
    FqdnMatch,
    GroupPolicy,
    Identity,
    IdKind,
    IdType,
    KekPolicy,
    KeyServerAddress,
    MemberGroup,
    Mode,
    PskCredential,
    PskIdMatch,
    SaDirection,
    Secret,
    SubjectMatch,
    TekPolicy,
    TrafficSelector,
    parse_dn,
)
from policy.suites import (
    ESP_SUITES,
    KEK_CIPHERS,
    SIGNATURE_SUITES,
    AuthAlgorithm,
    EspTransformId,
    KekAlgorithm,
    SigAlgorithm,
    SigHashAlgorithm,
)

net = ip.ip_network
addr = ip.ip_address


def sel(src="10.1.0.0/16", dst="239.1.1.1/32", **kw):
    return TrafficSelector(net(src), net(dst), **kw)


def tek(**kw):
    kw.setdefault("name", "t")
    kw.setdefault("selector", sel())
    kw.setdefault("suite", ESP_SUITES["aes-gcm-128"])
    return TekPolicy(**kw)


# ---------------------------------------------------------------- suites


def test_gcm_suites_protocol_and_kernel_values():
    s = ESP_SUITES["aes-gcm-256"]
    assert s.transform_id == EspTransformId.ESP_AES_GCM_16 == 20
    assert s.key_length_bits == 256 and s.auth_algorithm is None
    assert s.enc_key_bytes == 36 and s.integrity_key_bytes == 0  # key + 4-byte salt
    assert s.xfrm_aead.name == "rfc4106(gcm(aes))"
    assert s.xfrm_aead.key_bits == 288 and s.xfrm_aead.icv_bits == 128
    assert s.aead and s.counter_mode and s.icv_bytes == 16


@pytest.mark.parametrize(
    "sha,alg,trunc", [(256, 5, 128), (384, 6, 192), (512, 7, 256)]
)
@pytest.mark.parametrize("bits", [128, 256])
def test_cbc_hmac_suites(bits, sha, alg, trunc):
    s = ESP_SUITES[f"aes-cbc-{bits}-hmac-sha{sha}"]
    assert s.transform_id == EspTransformId.ESP_AES_CBC == 12
    assert s.auth_algorithm == AuthAlgorithm(alg)
    assert s.key_length_bits == bits and s.enc_key_bytes == bits // 8
    assert s.integrity_key_bytes == sha // 8  # RFC 4868: key length = hash output length
    assert s.xfrm_enc.name == "cbc(aes)" and s.xfrm_enc.key_bits == bits
    assert s.xfrm_auth.name == f"hmac(sha{sha})"
    assert s.xfrm_auth.icv_bits == trunc and s.icv_bytes * 8 == trunc
    assert not s.aead and s.keymat_bytes == bits // 8 + sha // 8


def test_kek_and_signature_tables():
    assert KEK_CIPHERS["aes-cbc-128"].algorithm == KekAlgorithm.KEK_ALG_AES == 3
    assert KEK_CIPHERS["aes-cbc-256"].key_bytes == 32
    assert SIGNATURE_SUITES["rsa-pkcs1-sha256"].algorithm == SigAlgorithm.SIG_ALG_RSA == 1
    assert SIGNATURE_SUITES["rsa-pkcs1-sha256"].hash_algorithm == SigHashAlgorithm.SIG_HASH_SHA256 == 3
    assert SIGNATURE_SUITES["ecdsa-p256"].algorithm == 4
    assert SIGNATURE_SUITES["ecdsa-p384"].algorithm == 5
    assert SIGNATURE_SUITES["ecdsa-p384"].hash_implicit


# ---------------------------------------------------------------- selectors and TEKs


def test_selector_families_must_match():
    with pytest.raises(ValueError, match="address families"):
        sel(src="10.0.0.0/8", dst="ff0e::1/128")


def test_ports_need_port_protocol():
    with pytest.raises(ValueError, match="protocol with ports"):
        sel(dst_port=5004)
    assert sel(protocol=17, dst_port=5004).dst_port == 5004


def test_selector_id_types():
    s = sel()
    assert s.src_id_type == IdType.ID_IPV4_ADDR_SUBNET and s.dst_id_type == IdType.ID_IPV4_ADDR
    s6 = sel("2001:db8::/32", "ff3e::8000:1/128")
    assert s6.family == 6 and s6.src_id_type == IdType.ID_IPV6_ADDR_SUBNET


def test_tunnel_needs_multicast_destination():
    with pytest.raises(ValueError, match="multicast destination"):
        tek(selector=sel(dst="10.2.0.0/16"))
    t = tek(selector=sel(dst="10.2.0.0/16"), mode=Mode.TRANSPORT)
    assert t.encapsulation_mode == EncapsulationMode.TRANSPORT == 2
    assert tek().address_preservation == AddressPreservation.SOURCE_AND_DESTINATION == 4


def test_tunnel_needs_single_destination_address():
    with pytest.raises(ValueError, match="one multicast address"):
        tek(selector=sel(dst="239.1.0.0/16"))
    assert tek(selector=sel(dst="239.1.0.0/16"), mode=Mode.TRANSPORT).mode is Mode.TRANSPORT


def test_multi_sender_replay_window_must_be_zero():
    with pytest.raises(ValueError, match="multi-sender"):
        tek(replay_window=64)
    one = Authorization((PskIdMatch("cam1"),))
    assert tek(senders=one, replay_window=64).replay_window == 64
    many = Authorization((FqdnMatch("*.example.org"),))
    with pytest.raises(ValueError, match="exactly one sender"):
        tek(senders=many, replay_window=64)


def test_direction_for():
    t = tek(senders=Authorization((PskIdMatch("cam1"),)))
    assert t.direction_for(Identity(IdKind.KEY_ID, "cam1")) == SaDirection.SENDER_ONLY == 1
    assert t.direction_for(Identity(IdKind.KEY_ID, "tv")) == SaDirection.RECEIVER_ONLY
    assert tek().direction_for(Identity(IdKind.KEY_ID, "tv")) == SaDirection.SYMMETRIC == 3


@pytest.mark.parametrize("life", [0, 19, 86_401])
def test_tek_lifetime_range(life):
    with pytest.raises(ValueError, match="lifetime"):
        tek(lifetime_s=life)


def kek(**kw):
    base = dict(
        cipher=KEK_CIPHERS["aes-cbc-128"],
        signature=SIGNATURE_SUITES["ecdsa-p256"],
        signing_key=Path("/k.pem"),
        rekey_address=addr("239.192.0.1"),
    )
    base.update(kw)
    return KekPolicy(**base)


def test_rekey_leads_fit_inside_lifetimes():
    from policy.model import kek_rekey_lead, tek_rekey_lead
    with pytest.raises(ValueError, match="more than half the lifetime of TEK"):
        GroupPolicy(1, (tek(lifetime_s=600),), Authorization(), kek=kek(tek_rekey_lead_s=301))
    with pytest.raises(ValueError, match="longer than the activation delay 2 s"):
        GroupPolicy(1, (tek(lifetime_s=600),), Authorization(), kek=kek(tek_rekey_lead_s=2))
    with pytest.raises(ValueError, match="more than half the KEK lifetime"):
        kek(lifetime_s=600, kek_rekey_lead_s=301)
    g = GroupPolicy(1, (tek(lifetime_s=3600),), Authorization(), kek=kek(tek_rekey_lead_s=600))
    assert g.id_payload_data == b"\x00\x00\x00\x01"
    assert tek_rekey_lead(g, g.teks[0]) == 600
    # defaults: a tenth of the lifetime, at least ATD + DTD (2 + 6 s), at most half
    d = GroupPolicy(1, (tek(lifetime_s=3600), tek(name="short", lifetime_s=20)), Authorization(),
                    kek=kek(lifetime_s=60))
    assert [tek_rekey_lead(d, t) for t in d.teks] == [360, 8]
    assert kek_rekey_lead(d.kek) == 6 and kek_rekey_lead(kek()) == 8640
    with pytest.raises(ValueError, match="TEK lifetime 19 s"):
        tek(lifetime_s=19)
    with pytest.raises(ValueError, match="KEK lifetime 59 s"):
        kek(lifetime_s=59)


@pytest.mark.parametrize("gid", [0, -1, 2**32, True])
def test_group_id_range(gid):
    with pytest.raises(ValueError, match="group id"):
        GroupPolicy(gid, (tek(),), Authorization())


# ---------------------------------------------------------------- authorization


def ident(kind, value, a=None):
    return Identity(kind, value, addr(a) if a else None)


def test_fqdn_wildcard_one_label_case_insensitive():
    m = FqdnMatch("*.Example.org")
    assert m.matches(ident(IdKind.FQDN, "gm1.example.ORG."))
    assert not m.matches(ident(IdKind.FQDN, "a.gm1.example.org"))
    assert not m.matches(ident(IdKind.FQDN, "example.org"))
    assert not m.matches(ident(IdKind.KEY_ID, "gm1.example.org"))
    assert FqdnMatch("gm*.lab").matches(ident(IdKind.FQDN, "gm42.lab"))
    with pytest.raises(ValueError):
        FqdnMatch("bad..name")


def test_address_ranges_v4_v6():
    m4 = AddressMatch(net("192.0.2.0/24"))
    m6 = AddressMatch(net("2001:db8::/32"))
    assert m4.matches(ident(IdKind.KEY_ID, "x", "192.0.2.200"))
    assert not m4.matches(ident(IdKind.KEY_ID, "x", "192.0.3.1"))
    assert not m4.matches(ident(IdKind.KEY_ID, "x", "2001:db8::1"))
    assert m6.matches(ident(IdKind.KEY_ID, "x", "2001:db8::1"))
    assert m4.matches(ident(IdKind.ADDRESS, "192.0.2.9"))
    assert not m4.matches(ident(IdKind.KEY_ID, "x"))


def test_dn_patterns():
    m = SubjectMatch("C=DE, O=Example GmbH, OU=*, CN=gm-*")
    assert m.matches(ident(IdKind.DN, "c=DE,o=example gmbh,ou=Video,cn=GM-12"))
    assert not m.matches(ident(IdKind.DN, "C=DE, O=Example GmbH, CN=gm-12"))  # RDN count
    assert not m.matches(ident(IdKind.DN, "C=DE, O=Other, OU=V, CN=gm-12"))
    assert not m.matches(ident(IdKind.DN, "C=DE, O=Example GmbH, OU=V, CN=ks-1"))
    # '*' does not cross RDNs, and an escaped comma is part of the value
    assert SubjectMatch(r"O=A\, B, CN=*").matches(ident(IdKind.DN, r"O=A\, B, CN=x"))
    assert not SubjectMatch("CN=*").matches(ident(IdKind.DN, "O=A, CN=x"))
    assert parse_dn(r"cn=a\,b ; o=c") == (("CN", "a,b"), ("O", "c"))
    with pytest.raises(ValueError):
        SubjectMatch("CN")
    # either RDN order: RFC 4514 (most specific first) or OpenSSL style
    assert m.matches(ident(IdKind.DN, "CN=gm-1,OU=Video,O=Example GmbH,C=DE"))
    assert not m.matches(ident(IdKind.DN, "CN=gm-1,C=DE,OU=Video,O=Example GmbH"))


def test_identity_from_id_payload_and_x509():
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    a = addr("192.0.2.5")
    assert Identity.from_id_payload(11, b"gm1", a) == Identity(IdKind.KEY_ID, "gm1", a)
    assert Identity.from_id_payload(11, b"\xff\x00").value == "0xff00"
    assert Identity.from_id_payload(2, b"gm.example.org").kind is IdKind.FQDN
    assert Identity.from_id_payload(5, addr("2001:db8::1").packed).value == "2001:db8::1"
    assert Identity.from_id_payload(3, b"a@b.org").kind is IdKind.USER_FQDN
    with pytest.raises(ValueError):
        Identity.from_id_payload(9, b"\x30\x00")
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
                      x509.NameAttribute(NameOID.COMMON_NAME, "gm-9")])
    peer = Identity.from_x509_name(name, a)
    assert SubjectMatch("C=DE, O=Example\\, Inc., CN=gm-*").matches(peer)
    assert GroupPolicy(1, (tek(),), Authorization((SubjectMatch("CN=gm-*, O=*, C=DE"),))
                       ).authorizes(peer).allowed


def test_group_authorizes_reason():
    g = GroupPolicy(7, (tek(),), Authorization((PskIdMatch("gm1"),)), name="video")
    d = g.authorizes(ident(IdKind.KEY_ID, "gm1"))
    assert d.allowed and bool(d) and "psk:gm1" in d.reason and "video" in d.reason
    d = g.authorizes(ident(IdKind.KEY_ID, "gm2"))
    assert not d.allowed and "may not join" in d.reason
    nobody = GroupPolicy(8, (tek(),), Authorization())
    assert not nobody.authorizes(ident(IdKind.KEY_ID, "gm1")).allowed


@settings(deadline=None)  # no per-example time limit (loaded machines)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_address_match_agrees_with_ipaddress(a, plen):
    network = ip.IPv4Network((a, plen), strict=False)
    probe = ip.IPv4Address((a * 2654435761) % 2**32)
    assert AddressMatch(network).matches(Identity(IdKind.KEY_ID, "x", probe)) == (probe in network)


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@settings(deadline=None)  # no per-example time limit (loaded machines)
@given(st.lists(label, min_size=1, max_size=4), label)
def test_fqdn_star_matches_exactly_one_more_label(labels, first):
    base = ".".join(labels)
    m = FqdnMatch("*." + base)
    assert m.matches(Identity(IdKind.FQDN, f"{first}.{base}"))
    assert not m.matches(Identity(IdKind.FQDN, base))
    assert not m.matches(Identity(IdKind.FQDN, f"{first}.{first}.{base}"))


# ---------------------------------------------------------------- secrets


def test_secret_redaction_and_equality():
    raw = b"correct horse battery staple"
    s = Secret(raw)
    assert raw.decode() not in repr(s) and raw.decode() not in str(s) and raw.decode() not in f"{s}"
    assert s == Secret(raw) and s != Secret(b"other") and hash(s) == hash(Secret(raw))
    assert s.reveal() == raw
    with pytest.raises(TypeError):
        pickle.dumps(s)
    p = PskCredential("gm1", s)
    m = MemberGroup(1, (KeyServerAddress("192.0.2.1"),), p)
    for text in (repr(p), str(p), repr(m), repr((m,))):
        assert "correct horse" not in text and "redacted" in text


def test_psk_minimum_length():
    with pytest.raises(ValueError, match="shorter"):
        PskCredential("gm1", Secret(b"short"))


def test_key_server_address_str():
    assert str(KeyServerAddress("2001:db8::1")) == "[2001:db8::1]:848"
    assert KeyServerAddress("192.0.2.1", 1848).address == addr("192.0.2.1")
    assert KeyServerAddress("ks.example.org").address is None


dn_type = st.sampled_from(["C", "O", "OU", "CN", "L", "ST", "emailAddress", "2.5.4.5"])
dn_value = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).map(str.strip).filter(bool)


def _escape(v: str) -> str:
    return "".join("\\" + c if c in ",;\\" else c for c in v)


@settings(deadline=None)  # no per-example time limit (loaded machines)
@given(st.lists(st.tuples(dn_type, dn_value), min_size=1, max_size=5), st.sampled_from([",", ", ", ";"]))
def test_dn_parse_roundtrip_and_self_match(rdns, sep):
    text = sep.join(f"{t}={_escape(v)}" for t, v in rdns)
    assert parse_dn(text) == tuple((t.upper(), v) for t, v in rdns)
    peer = Identity(IdKind.DN, text)
    assert SubjectMatch(text).matches(peer)
    star = sep.join(f"{t}=*" for t, _ in rdns)
    assert SubjectMatch(star).matches(peer)
    if len(rdns) > 1:
        assert not SubjectMatch(sep.join(f"{t}=*" for t, _ in rdns[1:])).matches(peer)
