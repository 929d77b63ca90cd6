"""The one-pack encoders of the common install shapes (``xfrm.batch`` uses them) produce exactly
the bytes of the general encoders, and the inline checks refuse what the general checks refuse."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from xfrm import algorithms as alg
from xfrm import batch as b
from xfrm import messages as m
from xfrm.errors import InvalidArgument
from xfrm.model import (
    Action, Direction, Lifetime, Mark, Mode, Policy, Selector, State, Template,
)
from xfrm.owner import MSEC, Owner

A = ip_address
R = MSEC.reqid(3)
LIFETIMES = hs.sampled_from([Lifetime(), Lifetime(soft_add_seconds=10, hard_add_seconds=20),
                             Lifetime(soft_bytes=5, hard_bytes=10**12, hard_use_seconds=9)])
MARKS = hs.sampled_from([None, Mark(1), Mark(0x10, 0xF0)])


def test_fast_path_is_available():
    assert m.FAST_IPADDRESS  # the CPython ipaddress internals the fast encoders read


@hs.composite
def addresses(draw, v6: bool):
    if v6:
        return IPv6Address(draw(hs.integers(0, 2**128 - 1)))
    return IPv4Address(draw(hs.integers(0, 2**32 - 1)))


@hs.composite
def policies(draw):
    v6 = draw(hs.booleans())
    bits = 128 if v6 else 32
    net = IPv6Network if v6 else IPv4Network
    proto = draw(hs.sampled_from([0, 6, 17, 50]))
    ports = hs.none() | hs.integers(0, 65535) if proto in (6, 17) else hs.none()
    sel = Selector(net((draw(addresses(v6)), draw(hs.integers(0, bits))), strict=False),
                   net((draw(addresses(v6)), draw(hs.integers(0, bits))), strict=False),
                   proto, draw(ports), draw(ports), draw(hs.sampled_from([0, 5])))
    direction = draw(hs.sampled_from(list(Direction)))
    v6 = draw(hs.booleans())  # a tunnel template's family may differ from the selector's
    t = Template(draw(addresses(v6)), draw(addresses(v6)), Mode.TUNNEL,
                 MSEC.reqid(draw(hs.integers(0, 0xFFFF))), spi=draw(hs.integers(0, 2**32 - 1)),
                 optional=direction != Direction.OUT and draw(hs.booleans()))
    return Policy(sel, direction, draw(hs.sampled_from(list(Action))),
                  draw(hs.integers(0, 2**32 - 1)), (t,), draw(MARKS),
                  draw(hs.sampled_from([0, 7])), draw(LIFETIMES))


@settings(max_examples=300, deadline=None)
@given(p=policies())
def test_policy_fast_encoding_equals_general(p):
    general = m.policy_payload(p, m.templates_attr(p.templates))
    assert m.policy_payload_1tmpl(p, p.templates[0]) == general
    assert b.Batch().add_policy(p).ops[0].payload == general


@settings(max_examples=300, deadline=None)
@given(v6=hs.booleans(), data=hs.data(), spi=hs.integers(256, 2**32 - 1),
       key_len=hs.sampled_from([20, 28, 36]), icv=hs.sampled_from([8, 12, 16]),
       window=hs.integers(0, 32), wrap=hs.booleans(), lifetime=LIFETIMES, mark=MARKS,
       if_id=hs.sampled_from([0, 9]), flags=hs.integers(0, 255),
       mode=hs.sampled_from([Mode.TUNNEL, Mode.TRANSPORT]))
def test_state_fast_encoding_equals_general(v6, data, spi, key_len, icv, window, wrap,
                                            lifetime, mark, if_id, flags, mode):
    st = State(data.draw(addresses(v6)), data.draw(addresses(v6)), spi, mode, R,
               aead=alg.aes_gcm(data.draw(hs.binary(min_size=key_len, max_size=key_len)), icv),
               replay_window=window, oseq_may_wrap=wrap, lifetime=lifetime, mark=mark,
               if_id=if_id, flags=flags)
    assert m.state_payload_aead(st) == m.state_payload(st)
    assert b.Batch().add_state(st).ops[0].payload == m.state_payload(st)


def _state(**kw) -> State:
    base = dict(src=A("10.0.0.1"), dst=A("239.1.1.1"), spi=0x100, mode=Mode.TUNNEL, reqid=R,
                aead=alg.aes_gcm(bytes(20), 16))
    base.update(kw)
    return State(**base)


def _policy(**kw) -> Policy:
    s, g = A("10.0.0.1"), A("239.1.1.1")
    base = dict(selector=Selector.host(s, g), direction=Direction.IN,
                templates=(Template(s, g, Mode.TUNNEL, R),))
    base.update(kw)
    return Policy(**base)


@pytest.mark.parametrize("state, field", [
    (_state(spi=255), "state.spi"),
    (_state(reqid=5), "state.reqid"),
    (_state(proto=51), "state.proto"),
    (_state(aead=replace(alg.aes_gcm(bytes(20), 16), key=bytes(16))), "state.aead.key"),
    (_state(aead=replace(alg.aes_gcm(bytes(20), 16), icv_bits=32)), "state.aead.icv_bits"),
    (_state(aead=replace(alg.aes_gcm(bytes(20), 16), name="gcm(aes)")), "state.aead.name"),
    (_state(aead=alg.aes_gcm(bytes(20)), cipher=alg.aes_cbc(bytes(16))), "state.aead"),
])
def test_state_refusals_unchanged(state, field):
    for add in (b.Batch().add_state, b.Batch().update_state):
        with pytest.raises(InvalidArgument) as exc:
            add(state)
        assert exc.value.field == field


def test_policy_refusals_unchanged():
    s, g = A("10.0.0.1"), A("239.1.1.1")
    cases = [
        (_policy(index=5), "policy.index"),
        (_policy(templates=(Template(s, g, Mode.TUNNEL, 5),)), "policy.templates"),
        (_policy(direction=Direction.OUT,
                 templates=(Template(s, g, Mode.TUNNEL, R, optional=True),)),
         "policy.templates[0].optional"),
        (_policy(templates=(Template(A("::1"), A("ff0e::1"), Mode.TRANSPORT, R),)),
         "policy.templates[0]"),
    ]
    for p, field in cases:
        for add in (b.Batch().add_policy, b.Batch().update_policy):
            with pytest.raises(InvalidArgument) as exc:
                add(p)
            assert exc.value.field == field


def test_other_owner_and_shapes_take_the_general_path():
    other = Owner(100, 200)
    s, g = A("10.0.0.1"), A("239.1.1.1")
    p = _policy(templates=(Template(s, g, Mode.TUNNEL, 150),))
    assert b.Batch(other).add_policy(p).ops[0].payload == m.policy_payload(p)
    with pytest.raises(InvalidArgument):
        b.Batch().add_policy(p)
    two = _policy(templates=(Template(s, g, Mode.TRANSPORT, R), Template(s, g, Mode.TUNNEL, 9)))
    assert b.Batch().add_policy(two).ops[0].payload == m.policy_payload(two)
    st = _state(selector=Selector.host(s, g), replay_window=64)
    assert b.Batch().add_state(st).ops[0].payload == m.state_payload(st)


def test_batch_ops_columns_and_encode_agree():
    s, g = A("10.0.0.1"), A("239.1.1.1")
    batch = b.Batch()
    batch.add_state(_state()).add_policy(_policy()).update_policy(_policy())
    batch.delete_policy(_policy().id, 7).delete_state(_state().id).update_state(_state())
    assert len(batch) == 6
    ops = batch.ops
    assert [op.name for op in ops] == ["add_state", "add_policy", "update_policy",
                                       "delete_policy", "delete_state", "update_state"]
    assert ops[3].index == 7 and ops[3].item == _policy().id and ops[0].item == _state()
    assert all(isinstance(op, b.Op) for op in ops) and batch.ops is ops  # cached until changed
    kinds, flags, payloads = batch.columns(1, 3)
    assert kinds == [m.XFRM_MSG_NEWPOLICY, m.XFRM_MSG_UPDPOLICY]
    assert payloads == [ops[1].payload, ops[2].payload] and flags[0] & m.NLM_F_EXCL
    msgs = batch.encode(0xFFFFFFFF)  # sequence numbers wrap at 2**32
    assert msgs == [b.encode_op(op, (0xFFFFFFFF + i) & 0xFFFFFFFF) for i, op in enumerate(ops)]
    batch.add_policy(_policy(selector=Selector.host(g, s)))
    assert len(batch.ops) == 7 and batch.ops[6].name == "add_policy"
