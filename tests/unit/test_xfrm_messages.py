"""Fast XFRM codec: struct sizes vs the kernel ABI, round trips, golden bytes, pyroute2 oracle."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from xfrm import algorithms as alg
from xfrm import messages as m
from xfrm.batch import Batch
from xfrm.model import (
    Action, Direction, Lifetime, Mark, Mode, Policy, SaId, Selector, State, Template,
)
from xfrm.nlmsgs import MarshalXfrm
from xfrm.owner import MSEC

A = ip_address
R = MSEC.reqid(7)


# sizes on x86_64, from <linux/xfrm.h> (checked with gcc: sizeof/offsetof)
@pytest.mark.parametrize("struct_, size", [
    (m.SELECTOR, 56), (m.USERSA_INFO, 224), (m.USERSA_ID, 24), (m.USERPOLICY_INFO, 168),
    (m.USERPOLICY_ID, 64), (m.USER_TMPL, 64), (m.MARK, 8), (m.ALGO, 68), (m.ALGO_AEAD, 72),
    (m.REPLAY_ESN, 24), (m.NLMSGHDR, 16), (m.ADDRESS_FILTER, 36),
])
def test_struct_sizes_match_kernel_abi(struct_, size):
    assert struct_.size == size


def test_composite_sizes():
    assert m.USER_EXPIRE_SIZE == 232 and m.USER_POLEXPIRE_SIZE == 176
    assert m.USER_ACQUIRE_SIZE == 280


def gcm_state(**kw) -> State:
    base = dict(src=A("10.0.0.1"), dst=A("239.1.1.1"), spi=0x100, mode=Mode.TUNNEL, reqid=R,
                aead=alg.aes_gcm(bytes(range(20)), 16))
    base.update(kw)
    return State(**base)


SUITES = {
    "gcm128-icv8": dict(aead=alg.aes_gcm(bytes(20), 8)),
    "gcm192-icv12": dict(aead=alg.aes_gcm(bytes(28), 12)),
    "gcm256-icv16": dict(aead=alg.aes_gcm(bytes(36), 16)),
    "chacha": dict(aead=alg.chacha20_poly1305(bytes(36))),
    "cbc-sha256": dict(aead=None, cipher=alg.aes_cbc(bytes(16)),
                       auth=alg.hmac_sha2(256, bytes(32))),
    "cbc-sha384": dict(aead=None, cipher=alg.aes_cbc(bytes(24)),
                       auth=alg.hmac_sha2(384, bytes(48))),
    "cbc-sha512": dict(aead=None, cipher=alg.aes_cbc(bytes(32)),
                       auth=alg.hmac_sha2(512, bytes(64))),
}


def roundtrip_state(st: State) -> State:
    (msg,) = Batch().add_state(st).encode(1)
    ((kind, flags, seq, off, n),) = list(m.split_messages(msg))
    assert (kind, seq) == (m.XFRM_MSG_NEWSA, 1)
    assert flags & m.NLM_F_ACK and flags & m.NLM_F_EXCL
    return m.decode_newsa(msg, off, n)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_state_roundtrip_each_suite(suite):
    st = gcm_state(**SUITES[suite])
    assert roundtrip_state(st) == st


@pytest.mark.parametrize("kw", [
    dict(replay_window=0, oseq_may_wrap=True),
    dict(replay_window=32),
    dict(replay_window=128, esn=True),
    dict(replay_window=1024),
    dict(esn=True),
    dict(mode=Mode.TRANSPORT, src=A("2001:db8::1"), dst=A("2001:db8::2")),
    dict(src=A("2001:db8::1"), dst=A("ff0e::1:3")),
    dict(mark=Mark(0x10, 0xF0), if_id=42),
    dict(lifetime=Lifetime(soft_bytes=1000, hard_bytes=2000, soft_packets=10, hard_packets=20,
                           soft_add_seconds=2, hard_add_seconds=5, soft_use_seconds=3,
                           hard_use_seconds=9)),
    dict(selector=Selector(IPv4Network("10.0.0.0/24"), IPv4Network("239.1.1.0/24"), 17, 1000,
                           5000)),
])
def test_state_roundtrip_options(kw):
    st = gcm_state(**kw)
    assert roundtrip_state(st) == st


def test_esn_uses_attr_and_flag():
    (msg,) = Batch().add_state(gcm_state(esn=True, replay_window=64)).encode()
    v = m.USERSA_INFO.unpack_from(msg, 16)
    assert v[35] == 0  # replay_window in usersa_info must be 0 with REPLAY_ESN_VAL
    assert v[36] & m.XFRM_STATE_ESN
    attrs = m.attrs_dict(msg, 16 + 224, len(msg), "t")
    assert m.REPLAY_ESN.unpack_from(attrs[m.XFRMA_REPLAY_ESN_VAL]) == (2, 0, 0, 0, 0, 64)
    assert len(attrs[m.XFRMA_REPLAY_ESN_VAL]) == 24 + 8


def test_classic_replay_in_struct_and_extra_flag():
    (msg,) = Batch().add_state(gcm_state(replay_window=32, oseq_may_wrap=True)).encode()
    v = m.USERSA_INFO.unpack_from(msg, 16)
    assert v[35] == 32 and not v[36] & m.XFRM_STATE_ESN
    attrs = m.attrs_dict(msg, 16 + 224, len(msg), "t")
    assert m.XFRMA_REPLAY_ESN_VAL not in attrs
    assert m.U32.unpack_from(attrs[m.XFRMA_SA_EXTRA_FLAGS])[0] == m.XFRM_SA_XFLAG_OSEQ_MAY_WRAP


def group_policy(**kw) -> Policy:
    g, s = A("239.1.1.1"), A("10.0.0.1")
    base = dict(selector=Selector.host(s, g, 17, dport=5000), direction=Direction.OUT,
                priority=100, templates=(Template(s, g, Mode.TUNNEL, R),))
    base.update(kw)
    return Policy(**base)


@pytest.mark.parametrize("kw", [
    {},
    dict(direction=Direction.IN, action=Action.ALLOW),
    dict(direction=Direction.FWD, mark=Mark(3), if_id=9),
    dict(action=Action.BLOCK),
    dict(lifetime=Lifetime(hard_add_seconds=60)),
    dict(direction=Direction.IN,
         selector=Selector(IPv6Network("2001:db8::/64"), IPv6Network("ff0e::/16"), 6, 80, 443),
         templates=(Template(A("2001:db8::1"), A("ff0e::1"), Mode.TUNNEL, R, spi=0x99,
                             optional=True),)),
])
def test_policy_roundtrip(kw):
    p = group_policy(**kw)
    (msg,) = Batch().add_policy(p).encode(3)
    ((kind, _f, seq, off, n),) = list(m.split_messages(msg))
    assert (kind, seq) == (m.XFRM_MSG_NEWPOLICY, 3)
    assert m.decode_newpolicy(msg, off, n) == p


addr4 = hs.integers(0, 2**32 - 1).map(lambda i: ip_address(i))
ports = hs.none() | hs.integers(0, 65535)


@settings(max_examples=200, deadline=None)
@given(src=addr4, dst=addr4, ps=hs.integers(0, 32), pd=hs.integers(0, 32), sport=ports,
       dport=ports, prio=hs.integers(0, 2**32 - 1), d=hs.sampled_from(list(Direction)),
       reqid=hs.integers(0, 0xFFFF), spi=hs.integers(0, 2**32 - 1))
def test_policy_roundtrip_property(src, dst, ps, pd, sport, dport, prio, d, reqid, spi):
    sel = Selector(IPv4Network((src, ps), strict=False), IPv4Network((dst, pd), strict=False),
                   17, sport, dport)
    p = Policy(sel, d, Action.ALLOW, prio, (Template(src, dst, Mode.TUNNEL, MSEC.reqid(reqid),
                                                      spi=spi),))
    (msg,) = Batch().add_policy(p).encode()
    assert m.decode_newpolicy(msg, 0, len(msg)) == p


@settings(max_examples=100, deadline=None)
@given(spi=hs.integers(256, 2**32 - 1), key=hs.binary(min_size=36, max_size=36),
       window=hs.integers(0, 4096), esn=hs.booleans(), wrap=hs.booleans(),
       icv=hs.sampled_from([8, 12, 16]))
def test_state_roundtrip_property(spi, key, window, esn, wrap, icv):
    st = gcm_state(spi=spi, aead=alg.aes_gcm(key, icv), replay_window=window, esn=esn,
                   oseq_may_wrap=wrap)
    assert roundtrip_state(st) == st


def test_golden_delete_state():
    sa = SaId(A("239.1.1.1"), 0x01020304)
    (msg,) = Batch().delete_state(sa).encode(0x42)
    assert msg.hex() == (
        "28000000" "1100" "0500" "42000000" "00000000"  # nlmsghdr: len 40, DELSA, REQ|ACK
        "ef010101" + "00" * 12 +  # daddr
        "01020304"  # spi, network order
        "0200" "32" "00")  # family AF_INET, proto esp, pad


def test_golden_policy_template_bytes():
    t = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, 0x6D730001, spi=0x100)
    assert m.template_bytes(t).hex() == (
        "ef010101" + "00" * 12 + "00000100" "32000000"  # id: daddr, spi (BE), proto, pad
        "02000000"  # family, pad
        "0a000001" + "00" * 12 +  # saddr
        "0100736d" "01000000"  # reqid LE, mode tunnel, share, optional, pad
        + "ff" * 12)  # aalgos/ealgos/calgos: any


def test_pyroute2_oracle_decodes_state_and_policy():
    st = gcm_state(**SUITES["cbc-sha384"], replay_window=64, esn=True, mark=Mark(1), if_id=7)
    p = group_policy(mark=Mark(5, 0xFF))
    msgs = Batch().add_state(st).add_policy(p).delete_policy(p.id).encode(10)
    sa_msg, pol_msg, del_msg = MarshalXfrm().parse(b"".join(msgs))
    assert sa_msg["id_spi"] == 0x100 and sa_msg["reqid"] == R and sa_msg["family"] == 2
    assert sa_msg["id_daddr"][:4] == A("239.1.1.1").packed and sa_msg["mode"] == 1
    assert sa_msg["flags"] & m.XFRM_STATE_ESN and sa_msg["replay_window"] == 0
    crypt = sa_msg.get_attr("XFRMA_ALG_CRYPT")
    assert crypt["alg_name"].rstrip(b"\0") == b"cbc(aes)" and crypt["alg_key_len"] == 192
    auth = sa_msg.get_attr("XFRMA_ALG_AUTH_TRUNC")
    assert auth["alg_name"].rstrip(b"\0") == b"hmac(sha384)" and auth["alg_icv_len"] == 192
    assert sa_msg.get_attr("XFRMA_REPLAY_ESN_VAL")["replay_window"] == 64
    assert sa_msg.get_attr("XFRMA_IF_ID") == 7
    assert pol_msg["sel_dport"] == 5000 and pol_msg["sel_dport_mask"] == 0xFFFF
    assert pol_msg["priority"] == 100 and pol_msg["dir"] == 1 and pol_msg["sel_proto"] == 17
    (tmpl,) = pol_msg.get_attr("XFRMA_TMPL")
    assert tmpl["reqid"] == R and tmpl["mode"] == 1 and tmpl["id_proto"] == 50
    assert pol_msg.get_attr("XFRMA_MARK") == {"v": 5, "m": 0xFF}
    assert pol_msg["lft_hard_byte_limit"] == 2**64 - 1
    assert pol_msg["lft_hard_add_expires_seconds"] == 0
    assert del_msg["dir"] == 1 and del_msg["sel_prefixlen_d"] == 32


def test_decode_rejects_truncated():
    (msg,) = Batch().add_policy(group_policy()).encode()
    with pytest.raises(m.DecodeError):
        list(m.split_messages(msg[:-4]))
    with pytest.raises(m.DecodeError):
        m.decode_newpolicy(msg, 0, 100)


@pytest.mark.parametrize("window, esn, attr", [(0, False, False), (32, False, False),
                                               (33, False, True), (0, True, True)])
def test_replay_esn_attribute_threshold(window, esn, attr):
    """Classic replay bitmaps are 32 bits; the kernel caps a larger classic window to 32."""
    (msg,) = Batch().add_state(gcm_state(replay_window=window, esn=esn)).encode()
    attrs = m.attrs_dict(msg, 16 + 224, len(msg), "t")
    assert (m.XFRMA_REPLAY_ESN_VAL in attrs) is attr


def test_address_filter_attr():
    raw = m.address_filter_attr(None, IPv4Network("239.0.0.0/8"))
    assert m.NLATTR.unpack_from(raw) == (40, m.XFRMA_ADDRESS_FILTER)
    assert m.ADDRESS_FILTER.unpack_from(raw, 4) == (bytes(16), bytes([239]) + bytes(15), 2, 0, 8)
    assert m.address_filter_attr(None, None) == b""


def test_templates_cache_is_by_identity_and_checks_each_tuple():
    from xfrm.batch import _templates
    t = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, R)
    t_equal = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, R)
    foreign = Template(A("10.0.0.1"), A("239.1.1.2"), Mode.TUNNEL, 5)
    assert _templates((t,), MSEC) is _templates((t,), MSEC)  # new tuple, same objects
    assert _templates((t_equal,), MSEC).attr == _templates((t,), MSEC).attr
    assert not _templates((foreign,), MSEC).owned and _templates((t, foreign), MSEC).owned
    assert m.templates_attr((t,)) != m.templates_attr((foreign,))


def test_sa_counters_read_the_fixed_part_only_and_agree_with_pyroute2():
    """dump_sa_counters' decoder: bytes/packets/add/use time and the replay and integrity
    drops at their ABI offsets (pyroute2 reads the same message as the oracle)."""
    (msg,) = Batch().add_state(gcm_state(spi=0x1234abcd)).encode(3)
    v = list(m.USERSA_INFO.unpack_from(msg, 16))
    v[24:28] = [123456789012, 4242, 1_700_000_000, 1_700_000_005]
    v[28:31] = [0, 7, 3]
    raw = bytearray(msg)
    m.USERSA_INFO.pack_into(raw, 16, *v)
    ((_k, _f, _s, off, n),) = list(m.split_messages(bytes(raw)))
    c = m.decode_sa_counters(bytes(raw), off, n)
    assert (c.dst, c.spi, c.proto, c.reqid) == (A("239.1.1.1"), 0x1234abcd, 50, R)
    assert (c.bytes, c.packets, c.add_time, c.use_time) == (123456789012, 4242, 1_700_000_000,
                                                            1_700_000_005)
    assert (c.replay_dropped, c.integrity_failed) == (7, 3)
    (oracle,) = MarshalXfrm().parse(bytes(raw))
    assert oracle["curlft_bytes"] == c.bytes and oracle["curlft_packets"] == c.packets
    assert oracle["stats_replay"] == 7 and oracle["stats_integrity_failed"] == 3
    assert "key" not in repr(c) and "aead" not in repr(c)
    with pytest.raises(m.DecodeError):
        m.decode_sa_counters(bytes(raw), off, 100)


@pytest.mark.parametrize("raw_dir", [3, 4, 5])
def test_per_socket_policy_is_recognised_and_not_misread(raw_dir):
    """The kernel's policy dump also lists per-socket policies (dir XFRM_POLICY_MAX + d, as
    charon sets on its IKE sockets); dir 4 (socket out) once decoded as an IN policy."""
    p = group_policy(direction=Direction.OUT)
    (msg,) = Batch().add_policy(p).encode()
    assert not m.is_socket_policy(msg, 0, len(msg))
    raw = bytearray(msg)
    raw[16 + m.USERPOLICY_INFO.size - 8] = raw_dir
    assert m.is_socket_policy(raw, 0, len(raw))
    with pytest.raises(m.DecodeError, match="per-socket policy"):
        m.decode_newpolicy(raw, 0, len(raw))
