"""xfrm.groupsa on the host kernel (XFRM without ESP), in a private netns.

The policy part of the port contract holds on this kernel too; an install where the kernel
lacks ESP fails with KernelLacksFeature and leaves nothing of msec's behind; policies a
previous run left are adopted per group and removed without touching foreign ones.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from policy.model import Mode as TekMode
from policy.model import SaDirection, TrafficSelector
from policy.suites import ESP_SUITES
from tests.unit.test_groupsa_contract import contract_policies_add_update_delete
from xfrm.errors import KernelLacksFeature
from xfrm.groupsa import GroupSaInstaller, KernelTek
from xfrm import aes_gcm
from xfrm.model import Direction, Mode, Policy, Selector, State, Template
from xfrm.owner import MSEC
from xfrm.socket import XfrmSocket

pytestmark = pytest.mark.host
A, N = ip_address, ip_network


def test_policy_contract_on_the_host_kernel(netns):
    with XfrmSocket(netns.ns) as x:
        contract_policies_add_update_delete(x)


def test_install_without_esp_fails_plainly_and_leaves_nothing(netns):
    netns.run("ip", "xfrm", "policy", "add", "src", "10.1.0.0/16", "dst", "239.9.9.9/32",
              "dir", "in", "tmpl", "proto", "esp", "reqid", "1", "mode", "tunnel")
    s = ESP_SUITES["aes-gcm-128"]
    tek = KernelTek(5, 0x1234, TrafficSelector(N("10.77.0.1/32"), N("239.1.1.1/32")),
                    TekMode.TUNNEL, SaDirection.SYMMETRIC, s.name, bytes(s.enc_key_bytes))
    with XfrmSocket(netns.ns) as x:
        gsa = GroupSaInstaller(x, local=["10.77.0.1"])
        probe = State(A("10.77.0.1"), A("239.1.1.1"), 0x999, Mode.TUNNEL, MSEC.reqid(9),
                      aead=aes_gcm(bytes(20)))
        try:
            x.add_state(probe)
        except KernelLacksFeature:
            pass
        else:
            x.delete_state(probe.id)
            pytest.skip("this host kernel carries ESP; tests/kernel covers it")
        with pytest.raises(KernelLacksFeature) as info:
            gsa.install(5, [tek])
        assert "rfc4106(gcm(aes))" in str(info.value) or "esp4" in str(info.value)
        assert x.dump_states(owned=True) == [] and x.dump_policies(owned=True) == []
        assert len(x.dump_policies()) == 1  # the foreign one


def test_leftover_policies_adopted_and_removed_per_group(netns):
    def pol(group: int, dst: str, direction: Direction) -> Policy:
        sel = Selector(N("10.77.0.1/32"), N(f"{dst}/32"))
        return Policy(sel, direction, priority=1000, templates=(
            Template(A("10.77.0.1"), A(dst), Mode.TUNNEL, MSEC.reqid(group)),))

    netns.run("ip", "xfrm", "policy", "add", "src", "10.77.0.1/32", "dst", "239.9.9.9/32",
              "dir", "in", "tmpl", "src", "10.77.0.1", "dst", "239.9.9.9", "proto", "esp",
              "reqid", "1", "mode", "tunnel")
    with XfrmSocket(netns.ns) as x:
        b = x.batch()
        for p in (pol(5, "239.1.1.5", Direction.IN), pol(5, "239.1.1.5", Direction.FWD),
                  pol(6, "239.1.1.6", Direction.IN)):
            b.add_policy(p)
        x.run(b)
        gsa = GroupSaInstaller(x)
        found = gsa.adopt()
        assert sorted(found) == [5, 6]
        assert len(found[5].policies) == 2 and found[5].teks == ()
        assert gsa.remove(5) == (0, 2)
        left = x.dump_policies()
        assert sorted(p.templates[0].reqid for p in left) == [1, MSEC.reqid(6)]
