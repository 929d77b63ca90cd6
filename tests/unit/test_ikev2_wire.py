"""gkm.ikev2 wire codec: round trips, golden bytes written by hand from RFC 7296 §3 figures,
one precise error per malformation, and property tests over generated values."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from gkm.ikev2 import (
    Delete, Encrypted, ExchangeType, GroupKeyBag, GroupSa, GsaPolicy, Header, HeaderFlags, KeyDownload,
    KeyExchange, MemberKeyBag, Nonce, Notify, NotifyType, PayloadType, Proposal, ProtocolId, SecurityAssociation,
    Transform, TransformType, UnknownPayload, UnsupportedCriticalPayload, VendorId, WireError, decode_message,
    decode_payloads, encode_message,
)
from gkm.ikev2.examples import SPI_I, SPI_R, ZERO_SPI, all_examples, ts_v4
from gkm.wire.attributes import Attribute


@pytest.mark.parametrize("name", sorted(all_examples()))
def test_examples_round_trip(name):
    header, payloads = all_examples()[name]
    data = encode_message(header, payloads)
    msg = decode_message(data)
    assert msg.header == header
    assert msg.payloads == payloads
    assert msg.to_bytes() == data
    assert struct.unpack_from("!I", data, 24)[0] == len(data)


def test_golden_cookie_response():
    """IKE_SA_INIT response carrying only COOKIE (RFC 7296 §2.6), bytes laid out by hand."""
    cookie = bytes(range(32))
    expected = (
        SPI_I + ZERO_SPI
        + bytes((41, 0x20, 34, 0x20)) + (0).to_bytes(4, "big") + (28 + 8 + 32).to_bytes(4, "big")
        + bytes((0, 0)) + (8 + 32).to_bytes(2, "big")  # generic header: last payload, length
        + bytes((0, 0)) + (16390).to_bytes(2, "big") + cookie  # protocol 0, SPI size 0, COOKIE
    )
    header, payloads = all_examples()["ike_sa_init_cookie"]
    assert encode_message(header, payloads) == expected
    assert decode_message(expected).payloads == (Notify(0, NotifyType.COOKIE, b"", cookie),)


def test_golden_sa_proposal():
    """One IKE proposal with ENCR AES-CBC key length 128 and KE 19 (RFC 7296 §3.3 figures)."""
    sa = SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", (
        Transform(TransformType.ENCR, 12, (Attribute(14, 128),)), Transform(TransformType.KE, 19))),))
    body = bytes.fromhex(
        "0000001c" "01010002"          # last proposal, length 28, #1, IKE, SPI size 0, 2 transforms
        "0300000c" "0100000c" "800e0080"  # more, length 12, ENCR, id 12, key length 128 (TV)
        "00000008" "04000013"          # last, length 8, KE, id 19
    )
    assert sa.encode() == body
    data = encode_message(Header(SPI_I, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlags.INITIATOR), (sa,))
    assert data[28:32] == bytes((0, 0, 0, 32))
    assert data[32:] == body
    assert decode_message(data).payloads == (sa,)


def _msg(chain: bytes, first: int, exchange=ExchangeType.IKE_SA_INIT, flags=0x08) -> bytes:
    return struct.pack("!8s8sBBBBII", SPI_I, SPI_R, first, 0x20, exchange, flags, 0, 28 + len(chain)) + chain


def _gen(np: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("!BBH", np, flags, 4 + len(body)) + body


def _error(data: bytes) -> WireError:
    with pytest.raises(WireError) as e:
        decode_message(data)
    assert e.value.payload and e.value.reason and e.value.offset >= 0
    return e.value


def test_header_errors():
    good = _msg(_gen(0, b"abcd"), 40)
    assert _error(good[:27]).payload == "header"
    e = _error(good[:17] + b"\x10" + good[18:])
    assert e.offset == 17 and "major version 1" in e.reason
    e = _error(good + b"\x00")
    assert e.offset == 24
    # Reserved flag bits are ignored on receipt and not kept (RFC 7296 §3.1).
    m = decode_message(good[:19] + bytes((0x08 | 0x47,)) + good[20:])
    assert m.header.flags == 0x08


def test_chain_errors():
    e = _error(_msg(_gen(0, b"ab")[:3], 40))
    assert e.payload == "NONCE" and e.offset == 28 and "truncated" in e.reason
    bad_len = bytearray(_msg(_gen(0, b"abcd"), 40))
    struct.pack_into("!H", bad_len, 30, 9)
    e = _error(bytes(bad_len))
    assert e.offset == 30 and "length 9" in e.reason
    struct.pack_into("!H", bad_len, 30, 3)
    assert "length 3" in _error(bytes(bad_len)).reason


def test_critical_bit():
    # Unknown type, critical: the whole message is refused with the type for the notify.
    with pytest.raises(UnsupportedCriticalPayload) as e:
        decode_message(_msg(_gen(0, b"xx", 0x80), 200))
    assert e.value.payload_type == 200 and e.value.offset == 29
    # Unknown, not critical: skipped and kept; reserved bits ignored.
    m = decode_message(_msg(_gen(40, b"xx", 0x7F) + _gen(0, b"nonce"), 200))
    assert m.payloads == (UnknownPayload(200, b"xx"), Nonce(b"nonce"))
    assert m.unknown == (UnknownPayload(200, b"xx"),)
    # Known type, critical bit set: ignored (RFC 7296 §2.5).
    assert decode_message(_msg(_gen(0, b"nonce", 0x80), 40)).payloads == (Nonce(b"nonce"),)


def test_sk_must_be_last():
    sk = _gen(PayloadType.NONCE, b"\x00" * 24)
    e = _error(_msg(sk[:0] + struct.pack("!BBH", 40, 0, 28) + b"\x00" * 24 + _gen(0, b"n"), 46))
    assert e.payload == "SK" and "must be last" in e.reason
    m = decode_message(_msg(sk, 46))
    assert m.encrypted == Encrypted(PayloadType.NONCE, b"\x00" * 24)
    with pytest.raises(WireError, match="inside an SK"):
        decode_payloads(sk, 46, 0, len(sk))
    with pytest.raises(WireError, match="last payload"):
        encode_message(Header(SPI_I, SPI_R, 35), (Encrypted(40, b"x" * 16), Nonce(b"n")))


def _sa_msg(proposal: bytes) -> bytes:
    return _msg(_gen(0, proposal), 33)


def test_sa_errors():
    tr = bytes.fromhex("00000008" "04000013")
    prop = lambda more=0, n=1, count=1, body=tr, spi=b"": (
        struct.pack("!BBHBBBB", more, 0, 8 + len(spi) + len(body), n, 1, len(spi), count) + spi + body)
    assert decode_message(_sa_msg(prop())).payloads[0].proposals[0].transforms == (Transform(4, 19),)
    assert "Last Substruc 1" in _error(_sa_msg(prop(more=1))).reason
    assert "1 of 2 announced" in _error(_sa_msg(prop(count=2))).reason
    e = _error(_sa_msg(prop(body=bytes.fromhex("03000008" "04000013"))))
    assert "Transform[0]" in e.payload
    assert "more transforms follow" in _error(_sa_msg(prop(body=bytes.fromhex("0300000804000013" "0000000804000013")))).reason
    assert "Last Substruc 5" in _error(_sa_msg(prop(body=bytes.fromhex("05000008" "04000013")))).reason
    assert "proposal number 3 after 1" in _error(_sa_msg(prop(more=2) + prop(n=3))).reason
    assert "no proposal" in _error(_sa_msg(b"")).reason
    assert "after the last proposal" in _error(_sa_msg(prop() + b"\x00" * 4)).reason
    e = _error(_sa_msg(prop(body=bytes.fromhex("0000000c" "04000013" "000e0008"))))
    assert "exceeds its container" in e.reason and e.payload.endswith("Transform[0]")


def test_payload_body_errors():
    assert "truncated KE header" in _error(_msg(_gen(0, b"\x00"), 34)).reason
    assert "SPI size 9" in _error(_msg(_gen(0, bytes((3, 9, 0x40, 0x09)) + b"1234"), 41)).reason
    e = _error(_msg(_gen(0, bytes((3, 4, 0, 2)) + b"12345"), 42))
    assert e.payload == "D" and "need 8 bytes" in e.reason
    assert "unsupported TS type 9" in _error(_msg(_gen(0, bytes((1, 0, 0, 0)) + bytes((9, 0, 0, 16)) + bytes(12)), 44)).reason
    e = _error(_msg(_gen(0, bytes((1, 0, 0, 0, 7, 0, 0, 17)) + bytes(13)), 44))
    assert "selector length 17" in e.reason
    assert "after the 1 selectors" in _error(_msg(_gen(0, bytes((1, 0, 0, 0)) + ts_v4("1.1.1.1", "1.1.1.1").encode() + b"\x00"), 45)).reason


def test_gsa_and_kd_errors():
    good = GroupSa((GsaPolicy(3, b"1234", ts_v4("0.0.0.0", "255.255.255.255"), ts_v4("239.0.0.1", "239.0.0.1"),
                              (Transform(1, 20),)),)).encode()
    assert decode_message(_msg(_gen(0, good), 51)).payloads[0].policies[0].spi == b"1234"
    no_tr = bytearray(good[:-8])
    struct.pack_into("!H", no_tr, 2, len(no_tr))
    assert "no transform" in _error(_msg(_gen(0, bytes(no_tr)), 51)).reason
    bad = bytearray(good)
    struct.pack_into("!H", bad, 2, len(good) + 1)
    e = _error(_msg(_gen(0, bytes(bad)), 51))
    assert e.payload == "GSA/Policy[0]" and "substructure length" in e.reason
    assert "SPI size 200" in _error(_msg(_gen(0, bytes((3, 200, 0, 8)) + b"1234"), 52)).reason
    assert "truncated substructure" in _error(_msg(_gen(0, b"\x00\x00"), 52)).reason


def test_encode_refuses_what_would_not_decode():
    with pytest.raises(WireError):
        Delete(3, 4, (b"123",)).encode()
    with pytest.raises(WireError):
        Header(b"short", SPI_R, 34).encode(0, 28)
    with pytest.raises(WireError):
        Header(SPI_I, SPI_R, 34, flags=0x01).encode(0, 28)
    with pytest.raises(WireError):
        KeyExchange(70000, b"").encode()
    with pytest.raises(WireError):
        encode_message(Header(SPI_I, SPI_R, 34), (Nonce(b"x" * 70000),))


def test_no_key_bytes_in_repr():
    kd = KeyDownload((MemberKeyBag((Attribute(1, b"secret-wrap-key!"),)), GroupKeyBag(3, b"1234", (Attribute(1, b"sa-key"),))))
    assert "secret" not in repr(kd) and "sa-key" not in repr(kd)


# --------------------------------------------------------------------------------------------
# properties

_bytes = st.binary(max_size=40)
_attr = st.builds(Attribute, st.integers(0, 0x7FFF), st.one_of(st.integers(0, 0xFFFF), _bytes))
_transform = st.builds(Transform, st.integers(0, 255), st.integers(0, 0xFFFF), st.lists(_attr, max_size=3).map(tuple))
_proposal = st.builds(
    Proposal, st.just(1), st.integers(0, 255), st.sampled_from((b"", b"1234", b"12345678")),
    st.lists(_transform, min_size=1, max_size=4).map(tuple))
_ts = st.builds(ts_v4, st.sampled_from(("0.0.0.0", "10.0.0.1")), st.sampled_from(("10.0.0.1", "255.255.255.255")),
                st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
_policy = st.one_of(
    st.builds(GsaPolicy, st.integers(1, 255), st.sampled_from((b"1234", bytes(16))), _ts, _ts,
              st.lists(_transform, min_size=1, max_size=3).map(tuple), st.lists(_attr, max_size=3).map(tuple)),
    st.builds(lambda a: __import__("gkm.ikev2", fromlist=["GwPolicy"]).GwPolicy(a), st.lists(_attr, max_size=3).map(tuple)),
)
_bag = st.one_of(
    st.builds(GroupKeyBag, st.integers(1, 255), st.sampled_from((b"1234", bytes(16))), st.lists(_attr, max_size=3).map(tuple)),
    st.builds(MemberKeyBag, st.lists(_attr, max_size=3).map(tuple)),
)
_payload = st.one_of(
    st.builds(lambda ps: SecurityAssociation(tuple(Proposal(i + 1, p.protocol, p.spi, p.transforms) for i, p in enumerate(ps))),
              st.lists(_proposal, min_size=1, max_size=3)),
    st.builds(KeyExchange, st.integers(0, 0xFFFF), _bytes),
    st.builds(Nonce, _bytes), st.builds(VendorId, _bytes),
    st.builds(Notify, st.integers(0, 255), st.integers(0, 0xFFFF), st.sampled_from((b"", b"1234")), _bytes),
    st.builds(lambda n: Delete(3, 4, tuple(bytes([i]) * 4 for i in range(n))), st.integers(0, 5)),
    st.builds(GroupSa, st.lists(_policy, max_size=3).map(tuple)),
    st.builds(KeyDownload, st.lists(_bag, max_size=3).map(tuple)),
    st.builds(UnknownPayload, st.integers(54, 255), _bytes),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_payload, max_size=6), st.integers(0, 0xFFFFFFFF), st.sampled_from((0, 0x08, 0x20, 0x28)),
       st.booleans())
def test_round_trip_property(payloads, mid, flags, with_sk):
    payloads = tuple(payloads)
    if with_sk:
        payloads += (Encrypted(PayloadType.NONCE, b"\x01" * 32),)
    header = Header(SPI_I, SPI_R, ExchangeType.GSA_AUTH, flags, mid)
    data = encode_message(header, payloads)
    msg = decode_message(data)
    assert msg.header == header and msg.payloads == payloads
    assert msg.to_bytes() == data
