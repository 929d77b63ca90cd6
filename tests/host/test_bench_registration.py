"""``tools/bench registration`` scaled down: real msecd key server processes, members in load
generator processes over loopback UDP.  Behaviour only (every member registered, the key server
and its store count them, the JSON has the documented shape); nothing here is about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 20


@pytest.mark.timeout(300)
def test_registration_bench_small_run(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tools.benchmarks.registration", "--members", str(N),
                          "--window", "8", "--floor-n", "5", "--breakdown", "10", "--state-parent", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "FAILED" not in res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["name"] == "registration"
    assert out["failures"] == 0
    for mode in ("psk", "ecdsa"):
        r = out[mode]
        assert r["members"] == r["registered"] == N
        assert r["failed"] == 0
        for key in ("per_s", "wall_per_s", "floor_per_s", "ratio", "ks_cpu_ms_per_registration"):
            assert isinstance(r[key], (int, float)) and r[key] >= 0, (mode, key, r[key])
        assert r["floor_per_s"] > 0
        assert set(r["breakdown_ms"]) == {"phase1", "pull", "commit_and_m4"}
        assert all(v > 0 for v in r["breakdown_ms"].values())
    assert out["ratio"] == min(out["psk"]["ratio"], out["ecdsa"]["ratio"])
    # the state directory was temporary
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".msec-bench-registration-state-")]


def test_registration_bench_config_is_accepted_by_msecd(tmp_path):
    """The generated key server configurations pass msecd's own check."""
    from tools.benchmarks.registration import write_config, write_pki

    write_pki(tmp_path)
    for mode in ("psk", "ecdsa"):
        cfg = write_config(tmp_path, mode, 40000, tmp_path / f"{mode}-state")
        r = subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--check"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
