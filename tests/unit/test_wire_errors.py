"""What the decoder refuses, and that the error names payload, offset and reason."""

from __future__ import annotations

import struct

import pytest

from gkm.wire import (
    Attribute, Delete, Doi, ExchangeType, Flags, GdoiSa, GroupId, Header, Identification, IdType,
    LkhArray, LkhKey, Message, PayloadType, SaKek, SaTek, SaTekOther, SecurityAssociation, Sequence,
    Signature, UnknownPayload, VendorId, WireError, decode_header, decode_lkh_array, decode_message,
    encode_message, encode_payload,
)
from gkm.wire.examples import main_mode, main_mode_message, pull, push, push_message, sak

H = Header(b"I" * 8, b"R" * 8, ExchangeType.IDENTITY_PROTECTION)


def msg(*payload_bytes: bytes, np: int, header: Header = H, fix_length: bool = True) -> bytes:
    body = b"".join(payload_bytes)
    raw = encode_message(header, ())[:28]
    raw = raw[:16] + bytes([np]) + raw[17:24] + struct.pack("!I", 28 + len(body) if fix_length else 28)
    return raw + body


def refuse(data: bytes, payload: str, offset: int | None = None, reason: str = "", **kw) -> WireError:
    with pytest.raises(WireError) as info:
        decode_message(data, **kw)
    e = info.value
    assert e.payload == payload, e
    if offset is not None:
        assert e.offset == offset, e
    assert reason in e.reason, e
    assert payload in str(e) and str(e.offset) in str(e)
    return e


def test_header_refusals():
    good = main_mode_message(0)
    refuse(good[:27], "header", 0, "truncated")
    refuse(good[:17] + b"\x20" + good[18:], "header", 17, "major version")
    refuse(good[:19] + b"\x08" + good[20:], "header", 19, "flag")
    refuse(good + b"\0", "header", 24, "Length field")
    refuse(good[:24] + struct.pack("!I", len(good) + 1) + good[28:], "header", 24, "Length field")
    assert decode_header(good)[1:] == (PayloadType.SA, len(good))


def test_generic_header_refusals():
    vid = encode_payload(VendorId(b"abcd"))
    assert decode_message(msg(vid, np=13)).payloads == (VendorId(b"abcd"),)
    # RESERVED octet (IKEv1 has no critical bit: RFC 2408 §2.5.2 / §3.2)
    refuse(msg(vid[:1] + b"\x80" + vid[2:], np=13), "VENDOR_ID", 29, "RESERVED")
    refuse(msg(vid[:2] + b"\x00\x03" + vid[4:], np=13), "VENDOR_ID", 30, "payload length 3")
    refuse(msg(vid[:2] + b"\x00\x09" + vid[4:], np=13), "VENDOR_ID", 30, "payload length 9")
    refuse(msg(vid[:3], np=13), "VENDOR_ID", 28, "truncated")
    # chain says more follows, nothing does
    refuse(msg(b"\x0d" + vid[1:], np=13), "VENDOR_ID", 36, "truncated")
    # trailing bytes after the last payload of a cleartext message
    refuse(msg(vid, b"\0\0", np=13), "message", 36, "after the last payload")


def test_unknown_payload_is_skipped_and_reported():
    vid = encode_payload(VendorId(b"v"), next_payload=20)
    unknown = struct.pack("!BBH", 0, 0, 8) + b"NATD"
    m = decode_message(msg(vid, unknown, np=13))
    assert m.payloads == (VendorId(b"v"), UnknownPayload(20, b"NATD"))
    assert m.unknown == (UnknownPayload(20, b"NATD"),)
    assert m.to_bytes() == msg(vid, unknown, np=13)


@pytest.mark.parametrize("t", [PayloadType.PROPOSAL, PayloadType.TRANSFORM, PayloadType.SA_KEK, PayloadType.SA_TEK])
def test_inner_payloads_refused_at_top_level(t):
    refuse(msg(struct.pack("!BBH", 0, 0, 4), np=t), t.name, 28, "only inside an SA")


def test_encrypted_padding():
    hd, ps = pull()[0]
    data = encode_message(hd, ps, block_size=16)
    m = decode_message(data, block_size=16)
    assert m.padding == bytes(len(m.padding)) and m.to_bytes() == data
    # pad content is not checked (RFC 2409 §5.3 style "last byte = count" is accepted)
    odd = data[:-1] + bytes([len(m.padding)])
    assert decode_message(odd, block_size=16).to_bytes() == odd
    refuse(data[:-1], "header", 24, "Length field")
    plain = encode_message(hd, ps)
    long_pad = plain[:24] + struct.pack("!I", len(plain) + 256) + plain[28:] + bytes(256)
    refuse(long_pad, "message", len(plain), "padding")
    with pytest.raises(WireError, match="padding"):
        encode_message(hd, ps, padding=bytes(256))
    refuse(encode_message(hd, ps, padding=b"\0"), "message", 28, "multiple of 16", block_size=16)
    # padding only exists in encrypted messages
    with pytest.raises(WireError):
        encode_message(Header(b"a" * 8, b"b" * 8, 5), ps, block_size=16)


def test_sa_refusals():
    sa = SecurityAssociation(Doi.IPSEC, 1, ())
    body = sa.encode()
    refuse(msg(struct.pack("!BBH", 0, 0, 4 + 8) + struct.pack("!II", 3, 1), np=1), "SA", 32, "DOI 3")
    refuse(msg(struct.pack("!BBH", 0, 0, 4 + 8) + struct.pack("!II", 1, 3), np=1), "SA", 36, "situation")
    refuse(msg(struct.pack("!BBH", 0, 0, 4 + 4) + body[:4], np=1), "SA", 32, "need 8")
    mm1 = main_mode_message(0)
    # Transform count mismatch
    off = mm1.index(bytes([1, 1, 0, 3]))  # proposal #1, ISAKMP, SPI size 0, 3 transforms
    bad = mm1[:off + 3] + b"\x02" + mm1[off + 4:]
    refuse(bad, "SA/Proposal[0]/Transform[2]", None, "more Transforms than # of Transforms (2)")
    bad = mm1[:off + 3] + b"\x04" + mm1[off + 4:]
    refuse(bad, "SA/Proposal[0]", None, "# of Transforms says 4, found 3")
    # Transform RESERVED2
    t0 = off + 4 + 4
    bad = mm1[:t0 + 2] + b"\x00\x01" + mm1[t0 + 4:]
    refuse(bad, "SA/Proposal[0]", t0 + 2, "RESERVED2")
    # a DOI-2 SA in phase 1 is the RFC 2408 proposal layout (RFC 6407 §2.1)
    assert decode_message(mm1).payloads[0] == main_mode()[0][1][0]


def test_gdoi_refusals():
    hd, ps = push()
    data = encode_message(Header(hd.icookie, hd.rcookie, hd.exchange), ps)
    seq = 28
    refuse(data[:seq + 2] + b"\x00\x09" + data[seq + 4 :], "SEQ", None)  # length must be 8 ... and chain breaks
    sa_at = seq + 8
    # SA attribute next payload names a type not allowed inside the SA
    bad = data[: sa_at + 12] + b"\x00\x05" + data[sa_at + 14 :]
    refuse(bad, "SA/5[0]", sa_at + 16, "not allowed inside a GDOI SA")
    # SAK RESERVED2 (RFC 3547 POP fields) refused
    k = sak()
    raw = bytearray(encode_payload(k))
    r2 = 4 + 1 + 4 + 4 + 4 + 4 + 16
    raw[r2] = 1
    sa_payload = struct.pack("!BBHIIHH", 0, 0, 16 + len(raw), 2, 0, 15, 0) + bytes(raw)
    push_hdr = Header(hd.icookie, hd.rcookie, ExchangeType.GROUPKEY_PUSH)
    refuse(msg(sa_payload, np=1, header=push_hdr), "SAK", 28 + 16 + r2, "RESERVED2")
    # KD: packet count mismatch
    kd = ps[2]
    raw = bytearray(encode_payload(kd))
    raw[4:6] = b"\x00\x09"
    refuse(msg(bytes(raw), np=17, header=push_hdr), "KD", None, "says 9, found 4")
    raw = bytearray(encode_payload(kd))
    raw[8 + 2 : 8 + 4] = b"\x00\x04"  # KD Length smaller than 5 + SPI
    refuse(msg(bytes(raw), np=17, header=push_hdr), "KD/packet[0]", 28 + 8 + 2, "KD Length 4")


def test_id_and_delete_refusals():
    id_ = encode_payload(Identification(IdType.IPV4_ADDR, b"\x01\x02\x03\x04"))
    refuse(msg(id_[:2] + b"\x00\x0b" + id_[4:-1], np=5), "ID", 36, "IPV4_ADDR data must be 4 bytes")
    d = encode_payload(Delete(Doi.GDOI, 1, 4, (b"abcd", b"efgh")))
    refuse(msg(d[:4 + 6] + b"\x00\x03" + d[12:], np=12), "D", 38, "3 SPIs of 4 bytes")
    zero = Delete(Doi.GDOI, 1, 0, ())
    assert decode_message(msg(encode_payload(zero), np=12)).payloads == (zero,)
    bad = encode_payload(zero)[:10] + b"\x00\x02"
    refuse(msg(bad, np=12), "D", None, "SPIs of size 0")
    sak_ids = [GroupId(IdType.IPV6_ADDR, b"\0" * 15)]
    with pytest.raises(WireError):
        sak_ids[0].encode("x")


def test_encode_refusals():
    with pytest.raises(WireError, match="cookies"):
        encode_message(Header(b"short", b"R" * 8, 2), ())
    with pytest.raises(WireError, match="attribute"):
        encode_payload(SaKek(17, GroupId(1, b"abcd"), GroupId(1, b"abcd"), b"s" * 16, (Attribute(1, 70000),)))
    with pytest.raises(WireError, match="type"):
        encode_payload(SaKek(17, GroupId(1, b"abcd"), GroupId(1, b"abcd"), b"s" * 16, (Attribute(0x8000, 1),)))
    with pytest.raises(WireError, match="SPI"):
        encode_payload(SaKek(17, GroupId(1, b"abcd"), GroupId(1, b"abcd"), b"s" * 15))
    with pytest.raises(WireError, match="every SPI"):
        encode_payload(Delete(2, 1, 4, (b"abc",)))
    with pytest.raises(WireError, match="GROUPKEY"):
        encode_message(H, (GdoiSa(),))
    with pytest.raises(WireError, match="GdoiSa"):
        encode_message(Header(b"a" * 8, b"b" * 8, ExchangeType.GROUPKEY_PULL), (SecurityAssociation(Doi.GDOI, 0, ()),))
    with pytest.raises(WireError):
        encode_payload(Sequence(2**32))
    with pytest.raises(WireError):
        encode_payload(SaTekOther(1, b""))
    with pytest.raises(WireError):
        encode_payload(SaTek(3, 0, GroupId(1, b"abcd"), GroupId(1, b"abcd"), 12, 1))
    with pytest.raises(WireError, match="too long"):
        encode_payload(Signature(bytes(70000)))


def test_lkh_arrays():
    keys = tuple(LkhKey(i, 3, 1, 2, 100 + i, bytes([i]) * 32) for i in range(3))
    arr = LkhArray(keys, update=(7, 0xABCD))
    raw = arr.encode()
    assert decode_lkh_array(raw, True) == arr == decode_lkh_array(raw, True, 32)
    with pytest.raises(WireError, match="do not fill"):
        decode_lkh_array(raw, True, 16)
    with pytest.raises(WireError, match="equal size"):
        decode_lkh_array(raw + b"x", True)
    with pytest.raises(WireError, match="need 12"):
        decode_lkh_array(raw[:11], True)
    with pytest.raises(WireError, match="different sizes"):
        LkhArray((keys[0], LkhKey(1, 3, 1, 2, 3, b"x"))).encode()
    assert "key_data=<32 bytes>" in repr(keys[0]) and "\\x01" not in repr(keys[1])


def test_key_material_not_in_repr():
    kd = push()[1][2]
    r = repr(kd)
    assert "<16 bytes>" in r and "\\x00\\x00" not in r


def test_push_encrypted_framing():
    data = push_message(block_size=16)
    hd, np, length = decode_header(data)
    assert hd.encrypted and np == PayloadType.SEQ and length == len(data) and (length - 28) % 16 == 0
    m = decode_message(data, block_size=16)
    assert isinstance(m, Message) and m.get(Sequence).number == 7
    # The header gdoid signs: E flag set, Length without padding (docs/decisions/wire.md §3.2)
    signed = encode_message(m.header, m.payloads)
    assert signed[19] & Flags.ENCRYPTION and struct.unpack_from("!I", signed, 24)[0] == len(data) - len(m.padding)
    assert signed == data[: len(signed) - 0][:24] + struct.pack("!I", len(signed)) + data[28 : len(signed)]
