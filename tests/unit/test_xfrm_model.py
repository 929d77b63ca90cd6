"""Validation of xfrm values: bad input is refused naming the field, before any I/O."""

from __future__ import annotations

import errno
from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from xfrm import algorithms as alg
from xfrm.batch import Batch
from xfrm.errors import InvalidArgument, KernelError, KernelLacksFeature
from xfrm.model import (
    Aead, Auth, Cipher, Direction, Lifetime, Mark, Mode, Policy, Selector, State, Template,
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
