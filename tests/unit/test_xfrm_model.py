"""Validation of xfrm values: bad input is refused naming the field, before any I/O."""

from __future__ import annotations

import errno
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from xfrm import algorithms as alg
from xfrm.batch import Batch
from xfrm.errors import InvalidArgument, KernelError, KernelLacksFeature
from xfrm.model import (
    Action, Aead, Auth, Cipher, Direction, Lifetime, Mark, Mode, Policy, SaId, Selector, State,
    Template,
)
from xfrm.owner import MSEC, Owner
from xfrm.socket import kernel_error

A = ip_address
R = MSEC.reqid(1)


def state(**kw):
    base = dict(src=A("10.0.0.1"), dst=A("239.1.1.1"), spi=0x100, mode=Mode.TUNNEL, reqid=R,
                aead=Aead("rfc4106(gcm(aes))", bytes(20), 128))
    base.update(kw)
    return State(**base)


def refused(field, fn, *a, **kw):
    with pytest.raises(InvalidArgument) as info:
        fn(*a, **kw)
    assert info.value.field == field, info.value
    return info.value


def test_algorithm_factories_validate():
    refused("aead.key", alg.aes_gcm, bytes(16))  # salt missing
    refused("aead.icv_bits", alg.aes_gcm, bytes(20), 4)
    refused("aead.key", alg.chacha20_poly1305, bytes(32))
    refused("cipher.key", alg.aes_cbc, bytes(20))
    refused("auth.name", alg.hmac_sha2, 224, bytes(28))
    refused("auth.key", alg.hmac_sha2, 256, bytes(20))
    assert alg.aes_gcm(bytes(36), 8).icv_bits == 64


@pytest.mark.parametrize("kw, field", [
    (dict(aead=Aead("gcm(aes)", bytes(20), 128)), "state.aead.name"),
    (dict(aead=Aead("rfc4106(gcm(aes))", bytes(17), 128)), "state.aead.key"),
    (dict(aead=Aead("rfc4106(gcm(aes))", bytes(20), 32)), "state.aead.icv_bits"),
    (dict(aead=None), "state.aead"),
    (dict(aead=None, cipher=Cipher("cbc(des3_ede)", bytes(24)),
          auth=Auth("hmac(sha256)", bytes(32), 128)), "state.cipher.name"),
    (dict(aead=None, cipher=Cipher("cbc(aes)", bytes(16)),
          auth=Auth("hmac(sha256)", bytes(32), 96)), "state.auth.trunc_bits"),
    (dict(aead=None, cipher=Cipher("cbc(aes)", bytes(16)),
          auth=Auth("hmac(md5)", bytes(16), 96)), "state.auth.name"),
    (dict(cipher=Cipher("cbc(aes)", bytes(16))), "state.aead"),
    (dict(reqid=5), "state.reqid"),
    (dict(spi=0), "state.spi"),
    (dict(spi=255), "state.spi"),
    (dict(proto=51), "state.proto"),
])
def test_install_refuses(kw, field):
    refused(field, Batch().add_state, state(**kw))


@pytest.mark.parametrize("kw, field", [
    (dict(spi=2**32), "state.spi"),
    (dict(dst=A("2001:db8::1")), "state"),
    (dict(src="10.0.0.1"), "state.src"),
    (dict(mode=1), "state.mode"),
    (dict(replay_window=5000), "state.replay_window"),
    (dict(reqid=-1), "state.reqid"),
    (dict(if_id=2**32), "state.if_id"),
    (dict(mark=5), "state.mark"),
])
def test_state_structure_refused(kw, field):
    refused(field, state, **kw)


def test_key_not_in_repr():
    st = state(aead=alg.aes_gcm(b"\xaa" * 20))
    assert "aa" not in repr(st).lower().replace("aead", "")
    assert "key" not in repr(st.aead)


def test_selector_and_lifetime_and_mark():
    net4, net6 = IPv4Network("10.0.0.0/8"), IPv6Network("::/0")
    refused("selector", Selector, net4, net6)
    refused("selector.sport", Selector, net4, net4, 0, 80)
    refused("selector.dport", Selector, net4, net4, 17, None, 70000)
    refused("selector.src", Selector, "10.0.0.0/8", net4)
    refused("selector.proto", Selector, net4, net4, 300)
    with pytest.raises(ValueError):  # a bad prefix never becomes a network
        IPv4Network("10.0.0.0/33")
    refused("lifetime.soft_bytes", Lifetime, soft_bytes=10, hard_bytes=5)
    refused("lifetime.hard_packets", Lifetime, hard_packets=0)
    refused("mark.value", Mark, 0x100, 0xFF)
    assert Lifetime().as_wire() == ((1 << 64) - 1,) * 4 + (0,) * 4


def test_policy_refusals():
    sel = Selector.host(A("10.0.0.1"), A("239.1.1.1"))
    t = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, R)
    refused("policy.direction", Policy, sel, 1)
    refused("policy.templates", Policy, sel, Direction.OUT, templates=[t])
    refused("policy.templates", Policy, sel, Direction.OUT, templates=(t,) * 7)
    refused("template", Template, A("10.0.0.1"), A("::1"), Mode.TUNNEL, R)
    # ownership: a policy without an owned template is not msec's to install
    refused("policy.templates", Batch().add_policy, Policy(sel, Direction.OUT))
    foreign = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, 1)
    refused("policy.templates", Batch().add_policy,
            Policy(sel, Direction.OUT, templates=(foreign,)))
    opt = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, R, optional=True)
    refused("policy.templates[0].optional", Batch().add_policy,
            Policy(sel, Direction.OUT, templates=(opt,)))
    refused("policy.index", Batch().add_policy, Policy(sel, Direction.OUT, templates=(t,), index=8))


def test_owner_range():
    o = Owner(100, 199)
    assert o.reqid(0) == 100 and o.owns_reqid(199) and not o.owns_reqid(200)
    refused("owner.reqid", o.reqid, 100)
    refused("owner", Owner, 5, 4)
    st = state(reqid=150)
    Batch(o).add_state(st)
    refused("state.reqid", Batch().add_state, st)


def test_kernel_error_names_missing_esp_and_algorithms():
    b = Batch().add_state(state())
    op = b.ops[0]
    e = kernel_error(op, "add_state", errno.EPROTONOSUPPORT, "Requested type not found", 0)
    assert isinstance(e, KernelLacksFeature) and e.feature == "esp4"
    assert "this kernel lacks esp4" in str(e) and e.errname == "EPROTONOSUPPORT"
    st6 = state(src=A("2001:db8::1"), dst=A("ff0e::1"))
    e6 = kernel_error(Batch().add_state(st6).ops[0], "add_state", errno.EPROTONOSUPPORT, None)
    assert "lacks esp6" in str(e6)
    e = kernel_error(op, "add_state", errno.ENOSYS, "Requested AEAD algorithm not found", 3)
    assert "this kernel lacks rfc4106(gcm(aes))" in str(e) and e.index == 3
    cbc = state(aead=None, cipher=alg.aes_cbc(bytes(16)), auth=alg.hmac_sha2(512, bytes(64)))
    e = kernel_error(Batch().add_state(cbc).ops[0], "add_state", errno.ENOSYS,
                     "Requested AUTH algorithm not found")
    assert e.feature == "hmac(sha512)"
    e = kernel_error(op, "add_state", errno.EEXIST, None, 2)
    assert type(e) is KernelError and e.errname == "EEXIST" and e.errno == errno.EEXIST
    assert "item 2" in str(e) and "spi 0x00000100" in str(e)


def test_netns_arguments():
    from xfrm.netns import netns_path, run_in_netns

    assert run_in_netns(None, lambda: 42) == 42
    assert netns_path("blue") == "/var/run/netns/blue"
    assert netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    refused("netns", run_in_netns, True, lambda: 0)
    refused("netns", run_in_netns, 1.5, lambda: 0)
    refused("netns", netns_path, "")
    refused("netns", run_in_netns, "msec-test-surely-missing", lambda: 0)


def _values():
    """One of each value class, built by hand (the constructors' fast paths)."""
    sel = Selector.host(A("10.0.0.1"), A("239.1.1.1"))
    t = Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, R)
    return [
        sel, t, Mark(5), Lifetime(soft_bytes=1, hard_bytes=2), alg.aes_gcm(bytes(20)),
        Cipher("cbc(aes)", bytes(16)), Auth("hmac(sha256)", bytes(32), 128),
        SaId(A("239.1.1.1"), 0x100), state(), state().id,
        Policy(sel, Direction.IN, priority=2000, templates=(t,)),
        Policy(sel, Direction.IN).id,
    ]


@pytest.mark.parametrize("v", _values(), ids=lambda v: type(v).__name__)
def test_values_are_frozen_dataclasses(v):
    import copy
    import dataclasses
    import pickle

    cls = type(v)
    assert dataclasses.is_dataclass(v) and cls.__module__ == "xfrm.model"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(v, dataclasses.fields(v)[0].name, None)
    with pytest.raises((AttributeError, TypeError)):  # TypeError: CPython 3.11, frozen+slots
        v.not_a_field = 1
    twin = dataclasses.replace(v)
    assert type(twin) is cls and twin == v and hash(twin) == hash(v) and twin is not v
    assert pickle.loads(pickle.dumps(v)) == v and copy.copy(v) == v and copy.deepcopy(v) == v
    assert repr(v).startswith(cls.__name__ + "(")


def test_general_checks_behind_fast_paths():
    """What the constructors' exact-type tests do not cover takes the general checks."""
    net4, net6 = IPv4Network("10.0.0.0/8"), IPv6Network("2001:db8::/32")
    a6, b6 = A("2001:db8::1"), A("ff0e::1")
    # valid but unusual: IPv6, IntEnum protocol numbers, ports, non-zero ifindex, subclasses
    assert Selector(net6, net6, 17, 53, None, 4).sport == 53
    assert Template(a6, b6, Mode.TRANSPORT, R, proto=50, spi=7, optional=True).proto == 50
    st = state(src=a6, dst=b6, proto=50, esn=True, replay_window=64, if_id=9, flags=1,
               mark=Mark(1, 3), lifetime=Lifetime(hard_packets=10),
               selector=Selector(net6, net6))
    assert st.uses_esn_attr and st.id.mark == Mark(1, 3)
    assert Policy(Selector(net4, net4), Direction.OUT, Action.BLOCK,
                  templates=(Template(A("10.0.0.1"), A("10.0.0.2"), Mode.TUNNEL, R),) * 2
                  ).action == Action.BLOCK
    assert Aead("rfc4106(gcm(aes))", bytes(20), 128) == alg.aes_gcm(bytes(20))
    # refused, naming the field, whichever path finds it
    refused("selector.ifindex", Selector, net4, net4, 0, None, None, 2**31)
    refused("selector.proto", Selector, net4, net4, 1.0)
    refused("template.proto", Template, a6, b6, Mode.TUNNEL, R, proto=0)
    refused("template.spi", Template, a6, b6, Mode.TUNNEL, R, spi=True)
    refused("template.reqid", Template, a6, b6, Mode.TUNNEL, 2**32)
    refused("template.mode", Template, a6, b6, 1, R)
    refused("state.esn", state, proto=51, esn=True)
    refused("state.flags", state, flags=256)
    refused("state.lifetime", state, lifetime=None)
    refused("state.selector", state, selector=IPv4Network("10.0.0.0/8"))
    refused("state.spi", state, spi=True)
    sel = Selector(net4, net4)
    refused("policy.selector", Policy, "10.0.0.0/8", Direction.IN)
    refused("policy.action", Policy, sel, Direction.IN, 0)
    refused("policy.priority", Policy, sel, Direction.IN, priority=-1)
    refused("policy.templates", Policy, sel, Direction.IN, templates=(sel,))
    refused("policy.mark", Policy, sel, Direction.IN, mark=1)
    refused("policy.if_id", Policy, sel, Direction.IN, if_id=2**32)
    refused("policy.lifetime", Policy, sel, Direction.IN, lifetime=None)
    refused("policy.index", Policy, sel, Direction.IN, index=False)
    refused("aead.name", Aead, "", bytes(20), 128)
    refused("aead.name", Aead, "é" * 32, bytes(20), 128)  # 64 bytes in UTF-8
    assert Aead("é" * 31, bytes(20), 128).name == "é" * 31
    refused("aead.key", Aead, "x", bytearray(20), 128)
    refused("aead.icv_bits", Aead, "x", bytes(20), True)
    refused("cipher.key", Cipher, "cbc(aes)", "k")
    refused("auth.trunc_bits", Auth, "hmac(sha256)", bytes(32), -1)
    refused("sa.dst", SaId, "239.1.1.1", 1)
    refused("sa.spi", SaId, A("239.1.1.1"), 2**32)
    refused("mark.mask", Mark, 0, 2**32)
    refused("mark.value", Mark, True)
    refused("lifetime.soft_use_seconds", Lifetime, soft_use_seconds=True)
    assert Lifetime(hard_add_seconds=5).as_wire()[5] == 5


def test_subclasses_construct_through_the_general_path():
    from dataclasses import dataclass

    @dataclass(frozen=True, init=False)
    class Tagged(Selector):
        pass

    s = Tagged(IPv4Network("10.0.0.0/8"), IPv4Network("10.0.0.0/8"), 6, 1, 2)
    assert type(s) is Tagged and (s.src, s.proto, s.sport, s.dport, s.ifindex) == (
        IPv4Network("10.0.0.0/8"), 6, 1, 2, 0)
    refused("selector.dport", Tagged, s.src, s.dst, 0, None, 80)
