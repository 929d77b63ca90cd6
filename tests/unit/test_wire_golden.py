"""Golden vectors: bytes taken from outside this codec (the gdoid samples quoted in the digest
docs/decisions/wire.md §2-§4) decode to the expected values and re-encode
to the same bytes.  They check the layouts Wireshark cannot (the 1-octet SA TEK ID length)."""

from __future__ import annotations

import ipaddress

from gkm.wire import (
    Attribute, Doi, ExchangeType, GdoiSa, GroupId, Header, Identification, IdType, IpsecAttr,
    Phase1Attr, Proposal, ProtocolId, SaTek, SecurityAssociation, TekProtocol, Transform,
    decode_payloads, encode_payload,
)
from gkm.wire.constants import EspTransformId

# gdoid PUSH sample SA TEK (docs/decisions/wire.md §4): NP SAT, ESP, any protocol, src 10.0.224.37, dst 239.1.1.1,
# 3DES, SPI 2e22fbb7, tunnel? no: ENCAPSULATION_MODE 2 (transport), HMAC-SHA1, life 60 s.
SAT_HEX = "1000002b" "01" "00" "0100000" "4" "0a00e025" "01000004" "ef010101" "03" "2e22fbb7" "80040002" "80050002" "80010001" "8002003c"

# gdoid MM2 sample (docs/decisions/wire.md §2): DOI 2, situation 0, proposal 1 PROTO_ISAKMP no SPI 1 transform,
# transform 1 KEY_IKE: 3DES, SHA1, PSK, group 2, life seconds 60.  Generic headers filled in.
MM2_SA_HEX = (
    "00000034" "00000002" "00000000"
    "00000028" "01010001"
    "00000020" "01010000" "80010005" "80020002" "80030001" "80040002" "800b0001" "800c003c"
)

# gdoid GROUPKEY-PULL message 1 ID body (docs/decisions/wire.md §3.1): KEY_ID, group 1234.
PULL_ID_BODY_HEX = "0b000000000004d2"


def test_gdoid_sat_sample():
    raw = bytes.fromhex(SAT_HEX)
    assert len(raw) == 43
    sat = SaTek.decode(raw, 4, len(raw))
    assert sat == SaTek(
        TekProtocol.IPSEC_ESP, 0, GroupId(IdType.IPV4_ADDR, bytes.fromhex("0a00e025")),
        GroupId(IdType.IPV4_ADDR, bytes.fromhex("ef010101")), EspTransformId.TRIPLE_DES, 0x2E22FBB7,
        (Attribute(IpsecAttr.ENCAPSULATION_MODE, 2), Attribute(IpsecAttr.AUTHENTICATION_ALGORITHM, 2),
         Attribute(IpsecAttr.SA_LIFE_TYPE, 1), Attribute(IpsecAttr.SA_LIFE_DURATION, 60)),
    )
    assert sat.src.value() == ipaddress.ip_address("10.0.224.37") and sat.dst.value() == ipaddress.ip_address("239.1.1.1")
    assert encode_payload(sat, next_payload=16) == raw
    # inside a GDOI SA of a PUSH it is found through the SA Attribute Next Payload
    sa_body = bytes.fromhex("00000002" "00000000" "0010" "0000") + raw[:1].replace(b"\x10", b"\x00") + raw[1:]
    sa = bytes.fromhex("00000000")[:2] + (4 + len(sa_body)).to_bytes(2, "big") + sa_body
    payloads, end = decode_payloads(sa, 1, 0, len(sa), ExchangeType.GROUPKEY_PUSH)
    assert payloads == (GdoiSa((sat,)),) and end == len(sa)


def test_gdoid_mm2_sa_sample():
    raw = bytes.fromhex(MM2_SA_HEX)
    (sa,), _ = decode_payloads(raw, 1, 0, len(raw), ExchangeType.IDENTITY_PROTECTION)
    assert sa == SecurityAssociation(Doi.GDOI, 0, (Proposal(1, ProtocolId.ISAKMP, b"", (Transform(1, 1, (
        Attribute(Phase1Attr.ENCRYPTION_ALGORITHM, 5), Attribute(Phase1Attr.HASH_ALGORITHM, 2),
        Attribute(Phase1Attr.AUTHENTICATION_METHOD, 1), Attribute(Phase1Attr.GROUP_DESCRIPTION, 2),
        Attribute(Phase1Attr.LIFE_TYPE, 1), Attribute(Phase1Attr.LIFE_DURATION, 60))),)),))
    assert encode_payload(sa) == raw
    assert isinstance(sa.proposals[0].transforms[0].attributes[0].type, Phase1Attr)


def test_gdoid_pull_id_sample():
    body = bytes.fromhex(PULL_ID_BODY_HEX)
    ident = Identification.decode(body, 0, len(body))
    assert ident == Identification.of(IdType.KEY_ID, 1234) == Identification(IdType.KEY_ID, b"\0\0\x04\xd2")
    assert ident.encode() == body


def test_id_types_and_values():
    cases = [
        (IdType.IPV4_ADDR, "192.0.2.1", ipaddress.ip_address("192.0.2.1")),
        (IdType.IPV6_ADDR, "2001:db8::1", ipaddress.ip_address("2001:db8::1")),
        (IdType.IPV4_ADDR_SUBNET, "10.0.0.0/8", ipaddress.ip_network("10.0.0.0/8")),
        (IdType.IPV6_ADDR_SUBNET, "2001:db8::/32", ipaddress.ip_network("2001:db8::/32")),
        (IdType.IPV4_ADDR_RANGE, ("10.0.0.1", "10.0.0.9"), (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.9"))),
        (IdType.FQDN, "gcks.example.net", "gcks.example.net"),
        (IdType.USER_FQDN, "gm@example.net", "gm@example.net"),
        (IdType.KEY_ID, b"\x01\x02", b"\x01\x02"),
        (IdType.DER_ASN1_DN, b"0\x0b1\t0\x07\x06\x03U\x04\x03", b"0\x0b1\t0\x07\x06\x03U\x04\x03"),
    ]
    for t, value, typed in cases:
        ident = Identification.of(t, value)
        body = ident.encode()
        assert Identification.decode(body, 0, len(body)) == ident
        assert ident.value() == typed
        gid = GroupId.of(t, value, 848)
        assert gid.value() == typed
    assert Identification.of(IdType.IPV4_ADDR_SUBNET, "10.0.0.0/8").data == bytes.fromhex("0a000000ff000000")


def test_header_sample_push():
    # gdoid's signed PUSH header (docs/decisions/wire.md §3.2): ...12 10 21 01 00000000 00000190
    raw = bytes(range(16)) + bytes.fromhex("12102101" "00000000" "00000190")
    from gkm.wire import decode_header, encode_header

    header, np, length = decode_header(raw)
    assert header == Header(raw[:8], raw[8:16], ExchangeType.GROUPKEY_PUSH, 1) and (np, length) == (18, 400)
    assert header.spi == raw[:16] and header.encrypted
    assert encode_header(header, np, length) == raw


def test_non_contiguous_mask_is_kept_but_has_no_network_view():
    import pytest

    from gkm.wire import WireError

    ident = Identification(IdType.IPV4_ADDR_SUBNET, bytes.fromhex("0a000000ff00ff00"))
    body = ident.encode()
    assert Identification.decode(body, 0, len(body)) == ident  # the codec keeps what was sent
    with pytest.raises(WireError, match="non-contiguous"):
        ident.value()
