"""Property-based round trips: decode(encode(v)) == v for generated values, and
encode(decode(x)) == x for the bytes that produces."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gkm.wire import (
    ID_DATA_LENGTH, Attribute, Certificate, CertificateRequest, Delete, Doi, ExchangeType, Flags, Gap,
    GdoiSa, GroupId, Hash, Header, Identification, KeyDownload, KeyExchange, KeyPacket, LkhArray,
    LkhKey, Message, Nonce, Notification, PayloadType, Proposal, SaKek, SaTek, SaTekOther,
    SecurityAssociation, Sequence, Signature, Transform, UnknownPayload, VendorId, decode_lkh_array,
    decode_message, encode_message,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
blob = st.binary(max_size=40)

attribute = st.builds(Attribute, st.integers(0, 0x7FFF), st.one_of(u16, st.binary(max_size=24)))
attributes = st.lists(attribute, max_size=6).map(tuple)


def _id_data(t):
    n = ID_DATA_LENGTH.get(t)
    return st.binary(min_size=n, max_size=n) if n is not None else blob


id_type_and_data = u8.flatmap(lambda t: st.tuples(st.just(t), _id_data(t)))

identification = st.builds(lambda td, proto, port: Identification(td[0], td[1], proto, port), id_type_and_data, u8, u16)
group_id = st.builds(lambda td, port: GroupId(td[0], td[1], port), id_type_and_data, u16)

transform = st.builds(Transform, u8, u8, attributes)
proposal = st.builds(Proposal, u8, u8, st.binary(max_size=16), st.lists(transform, max_size=3).map(tuple))
ike_sa = st.one_of(
    st.builds(SecurityAssociation, st.just(Doi.IPSEC), st.sampled_from([0, 1]), st.lists(proposal, max_size=3).map(tuple)),
    st.builds(SecurityAssociation, st.just(Doi.GDOI), u32, st.lists(proposal, max_size=3).map(tuple)),
)
ipsec_sa = st.builds(SecurityAssociation, st.just(Doi.IPSEC), st.sampled_from([0, 1]), st.lists(proposal, max_size=3).map(tuple))

sak = st.builds(SaKek, u8, group_id, group_id, st.binary(min_size=16, max_size=16), attributes)
sat = st.one_of(
    st.builds(SaTek, st.sampled_from([1, 2]), u8, group_id, group_id, u8, u32, attributes),
    st.builds(SaTekOther, u8.filter(lambda p: p not in (1, 2)), blob),
)
gap = st.builds(Gap, attributes)
gdoi_sa = st.builds(GdoiSa, st.lists(st.one_of(sak, sat, gap), max_size=4).map(tuple), u32)

key_packet = st.builds(KeyPacket, u8, st.binary(max_size=20), attributes)
kd = st.builds(KeyDownload, st.lists(key_packet, max_size=4).map(tuple))

spi_delete = st.integers(1, 16).flatmap(
    lambda n: st.lists(st.binary(min_size=n, max_size=n), max_size=4).map(lambda spis: (n, tuple(spis)))
)
delete = st.one_of(
    st.builds(lambda doi, proto, ss: Delete(doi, proto, ss[0], ss[1]), u32, u8, spi_delete),
    st.builds(lambda doi, proto, size: Delete(doi, proto, size, ()), u32, u8, u8),
)

KNOWN = {int(t) for t in PayloadType} - {PayloadType.POP}
unknown = st.builds(UnknownPayload, st.integers(1, 255).filter(lambda t: t not in KNOWN), blob)

common = st.one_of(
    st.builds(KeyExchange, blob), st.builds(Hash, blob), st.builds(Signature, blob), st.builds(Nonce, blob),
    st.builds(VendorId, blob), identification, st.builds(Certificate, u8, blob), st.builds(CertificateRequest, u8, blob),
    st.builds(Notification, u32, u8, u16, st.binary(max_size=16), blob), delete, kd,
    st.builds(Sequence, u32), gap, unknown,
)

GDOI_EXCHANGES = [ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH]
other_exchange = u8.filter(lambda x: x not in GDOI_EXCHANGES)


@st.composite
def messages(draw):
    gdoi = draw(st.booleans())
    exchange = draw(st.sampled_from(GDOI_EXCHANGES) if gdoi else other_exchange)
    flags = draw(st.integers(0, 7))
    header = Header(draw(st.binary(min_size=8, max_size=8)), draw(st.binary(min_size=8, max_size=8)), exchange,
                    flags, draw(u32), draw(st.integers(0x10, 0x1F)))
    sa = st.one_of(gdoi_sa, ipsec_sa) if gdoi else ike_sa
    payloads = tuple(draw(st.lists(st.one_of(common, sa), max_size=6)))
    padding = draw(st.binary(max_size=40)) if flags & Flags.ENCRYPTION else b""
    return Message(header, payloads, padding)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_message_round_trip(msg):
    data = msg.to_bytes()
    decoded = decode_message(data)
    assert decoded == msg
    assert decoded.to_bytes() == data
    assert decoded.unknown == tuple(p for p in msg.payloads if isinstance(p, UnknownPayload))


@settings(max_examples=100, deadline=None)
@given(messages(), st.sampled_from([8, 16]))
def test_block_padding(msg, block):
    header = Header(msg.header.icookie, msg.header.rcookie, msg.header.exchange, Flags.ENCRYPTION, msg.header.message_id)
    data = encode_message(header, msg.payloads, block_size=block)
    assert (len(data) - 28) % block == 0
    decoded = decode_message(data, block_size=block)
    assert decoded.payloads == msg.payloads and decoded.padding == bytes(len(decoded.padding))
    assert len(decoded.padding) < block


lkh_key = st.builds(LkhKey, u16, u8, u32, u32, u32)


@settings(deadline=None)  # no per-example time limit: a loaded machine is not a bug
@given(st.lists(lkh_key, max_size=8), st.integers(0, 40).flatmap(lambda n: st.lists(st.binary(min_size=n, max_size=n), min_size=8, max_size=8)),
       st.one_of(st.none(), st.tuples(u16, u32)), st.booleans())
def test_lkh_array_round_trip(keys, datas, update, give_length):
    keys = tuple(LkhKey(k.lkh_id, k.key_type, k.created, k.expires, k.handle, d) for k, d in zip(keys, datas))
    arr = LkhArray(keys, update)
    raw = arr.encode()
    klen = len(datas[0]) if give_length or not keys else None
    assert decode_lkh_array(raw, update is not None, klen) == arr
