"""``tools/bench rekey`` scaled down: a real msecd key server in unicast delivery mode, members
in load generator processes over loopback UDP, each with a real PUSH receiver that sends its
own GROUPKEY-PUSH-ACK.  Behaviour only (every member acknowledged in the key server's own view,
lost PUSHes were sent again, the JSON has the documented shape); nothing here is about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 40


@pytest.mark.timeout(300)
def test_rekey_bench_small_run():
    res = subprocess.run([sys.executable, "-m", "tools.benchmarks.rekey", "--members", str(N),
                          "--loss", "0.3", "--generators", "2", "--window", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["name"] == "rekey" and out["members"] == N and out["all_acked"] is True
    for key in ("acked_s_loss0", "acked_s_loss30", "ks_cpu_ms_per_member", "floor_ms_per_member",
                "ratio"):
        assert isinstance(out[key], (int, float)) and out[key] >= 0, key
    clean, lossy = out["runs"]
    # the key server's own view: every member acknowledged each rekey's SEQ
    assert clean["acked"] == lossy["acked"] == N and lossy["seq"] == clean["seq"] + 1
    assert clean["pushes_received"] == N and clean["dropped"] == 0
    # at 30% loss some PUSHes were dropped and the key server sent them again
    assert lossy["dropped"] > 0
    assert lossy["pushes_received"] >= N + lossy["dropped"]
    assert lossy["acks_sent"] >= N
