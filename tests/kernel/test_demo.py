"""The demo (tools/demo -> tools/demo_msec.py) inside the kernel lab: real msecd daemons, a key
server and three members; it must succeed and say so. Kept light: two datagrams, no pcap
kept (tests/kernel/test_registration.py checks registration in depth)."""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.kernel


@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", ["gdoi", "g-ikev2", "mixed"])
def test_demo_runs_the_daemons_end_to_end(capsys, protocol):
    """``tools/demo [--protocol gdoi|g-ikev2|mixed]``: the same checks whichever protocol the
    members speak (mixed: gm1 GDOI, gm2 and gm3 G-IKEv2 in one group)."""
    from tools import demo_msec

    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    rc = demo_msec.main(count=2, protocol=protocol)
    out = capsys.readouterr().out
    assert rc == 0, out
    kinds = {"gdoi": ["GDOI"] * 3, "g-ikev2": ["G-IKEv2"] * 3, "mixed": ["GDOI", "G-IKEv2", "G-IKEv2"]}
    for gm, kind in zip(("gm1", "gm2", "gm3"), kinds[protocol]):
        assert f"member {gm} ({kind})" in out, out
    if protocol != "gdoi":  # the eviction reached the G-IKEv2 members as GSA_REKEY
        assert "by GSA_REKEY" in out or "and GSA_REKEY (gm2)" in out, out
        assert re.search(r"evicted key-id:gm3 .*GROUPKEY-PUSH and GSA_REKEY SEQ", out), out
    for gm in ("gm1", "gm2", "gm3"):  # each registration, from both sides' logs
        assert re.search(rf"{gm}: registered with key server 10\.77\.0\.1", out), out
        assert re.search(rf"key server: member key-id '{gm}' .* registered", out), out
    assert re.search(r"of them ESP with SPI 0x[0-9a-f]{8}: 2\n", out), out
    assert "plaintext UDP to port 5000: 0;" in out
    assert "ESP only" in out and "Result" in out and "OK:" in out
    assert "msecctl members 1001" in out and "key-id:gm3" in out
    # the eviction step: gm2 keeps the traffic, gm3 gets nothing and is refused
    assert re.search(r"got 2/2, h4 \(gm3, evicted\) got 0/2", out), out
    assert re.search(r"key-id:gm3 +evicted .*demo: gm3 left the group", out), out
    assert "psk = \"...\"" in out  # secrets elided
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert after <= before  # namespaces removed
