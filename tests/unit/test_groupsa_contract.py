"""The port contract: the in-memory XFRM (xfrm.memory) answers like the kernel does.

Each ``contract_*`` function takes a fresh, empty port and checks one behaviour the group SA
installer relies on. Here they run against :class:`xfrm.memory.MemoryXfrm`;
tests/kernel/test_groupsa_kernel.py runs the same functions against an XfrmSocket in a netns
of the kernel lab, so both ports are held to one definition.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from xfrm import algorithms as alg
from xfrm.batch import Batch
from xfrm.errors import KernelError
from xfrm.memory import MemoryXfrm
from xfrm.model import Direction, Lifetime, Mode, Policy, Proto, SaId, Selector, State, Template
from xfrm.owner import MSEC, Owner

A, N = ip_address, ip_network
R = MSEC.reqid(7)
FOREIGN = Owner(1, 0xFFFF)  # what strongSwan / ip xfrm would use: reqid 1


def gcm_state(spi: int, reqid: int = R, dst: str = "239.1.1.1", src: str = "10.0.0.1",
              **kw) -> State:
    return State(A(src), A(dst), spi, Mode.TUNNEL, reqid,
                 aead=alg.aes_gcm(bytes(range(20))), selector=Selector(
                     N(f"{src}/32"), N(f"{dst}/32"), 17, None, 5000), **kw)


def policy(dst: str = "239.1.1.1", direction: Direction = Direction.OUT, reqid: int = R,
           spi: int = 0, priority: int = 1000) -> Policy:
    sel = Selector(N("10.0.0.1/32"), N(f"{dst}/32"), 17, None, 5000)
    return Policy(sel, direction, priority=priority, templates=(
        Template(A("10.0.0.1"), A(dst), Mode.TUNNEL, reqid, spi=spi),))


def strip(p: Policy) -> Policy:
    return replace(p, index=0)


def contract_states_add_dump_get_delete(port) -> None:
    mine = [gcm_state(0x1000 + i, lifetime=Lifetime(soft_add_seconds=90, hard_add_seconds=100),
                      oseq_may_wrap=bool(i % 2), replay_window=32 * (i % 2)) for i in range(3)]
    b = port.batch()
    for st in mine:
        b.add_state(st)
    port.run(b)
    port.run(Batch(FOREIGN).add_state(gcm_state(0x2000, reqid=1)))
    assert sorted(port.dump_states(owned=True), key=lambda s: s.spi) == mine
    assert len(port.dump_states()) == 4
    assert port.dump_states(proto=Proto.ESP, dst=N("239.1.1.1/32"), owned=True) != []
    assert port.dump_states(dst=N("239.9.9.9/32")) == []
    assert port.get_state(mine[1].id) == mine[1]
    port.delete_state(mine[0].id)
    with pytest.raises(KernelError) as info:
        port.get_state(mine[0].id)
    assert info.value.errname == "ESRCH"
    with pytest.raises(KernelError) as info:
        port.delete_state(mine[0].id)
    assert info.value.errname == "ESRCH"
    with pytest.raises(KernelError) as info:
        port.add_state(mine[1])
    assert info.value.errname == "EEXIST"


def contract_batch_applies_every_item_and_reports_the_first_failure(port) -> None:
    port.add_state(gcm_state(0x1001))
    b = port.batch().add_state(gcm_state(0x1000)).add_state(gcm_state(0x1001)) \
        .add_state(gcm_state(0x1002)).delete_state(SaId(A("239.1.1.1"), 0x5555))
    with pytest.raises(KernelError) as info:
        port.run(b)
    assert info.value.index == 1 and info.value.errname == "EEXIST"
    assert [(i, c) for i, c, _ in info.value.failures] == [(1, errno.EEXIST), (3, errno.ESRCH)]
    assert {s.spi for s in port.dump_states()} == {0x1000, 0x1001, 0x1002}
    # ignored errnos are no failures
    port.run(port.batch().delete_state(SaId(A("239.1.1.1"), 0x5555))
             .delete_state(gcm_state(0x1000).id), ignore=(errno.ESRCH,))
    assert {s.spi for s in port.dump_states()} == {0x1001, 0x1002}


def contract_policies_add_update_delete(port) -> None:
    out = policy(spi=0x1000)
    inb = policy("239.1.1.2", Direction.IN)
    port.run(port.batch().add_policy(out).add_policy(inb))
    port.run(Batch(FOREIGN).add_policy(policy("239.1.1.3", Direction.IN, reqid=1)))
    got = {p.id: p for p in port.dump_policies(owned=True)}
    assert {pid: strip(p) for pid, p in got.items()} == {out.id: out, inb.id: inb}
    assert all(p.index and p.index & 7 == p.direction for p in got.values())
    assert len(port.dump_policies()) == 3
    with pytest.raises(KernelError) as info:
        port.add_policy(out)
    assert info.value.errname == "EEXIST"
    # UPDPOLICY replaces in place (same index) and adds when missing
    switched = policy(spi=0x1001)
    port.update_policy(switched)
    fresh = policy("239.1.1.4", Direction.FWD)
    port.update_policy(fresh)
    now = {p.id: p for p in port.dump_policies(owned=True)}
    assert strip(now[out.id]) == switched and now[out.id].index == got[out.id].index
    assert strip(now[fresh.id]) == fresh
    # delete by id and by index; a missing one is ENOENT
    port.delete_policy(inb.id)
    port.run(port.batch().delete_policy(fresh.id, now[fresh.id].index))
    with pytest.raises(KernelError) as info:
        port.delete_policy(inb.id)
    assert info.value.errname == "ENOENT"
    assert [strip(p) for p in port.dump_policies(owned=True)] == [switched]


def contract_remove_owned_leaves_foreign(port) -> None:
    port.run(port.batch().add_state(gcm_state(0x1000)).add_policy(policy(spi=0x1000)))
    port.run(Batch(FOREIGN).add_state(gcm_state(0x2000, reqid=1))
             .add_policy(policy("239.1.1.3", Direction.IN, reqid=1)))
    assert port.remove_owned() == (1, 1)
    assert [s.spi for s in port.dump_states()] == [0x2000]
    assert [p.templates[0].reqid for p in port.dump_policies()] == [1]


CONTRACT = [contract_states_add_dump_get_delete,
            contract_batch_applies_every_item_and_reports_the_first_failure,
            contract_policies_add_update_delete, contract_remove_owned_leaves_foreign]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__[9:])
def test_memory_port_contract(check):
    check(MemoryXfrm())
