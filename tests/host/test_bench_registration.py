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
    for key in ("psk", "ecdsa", "g_ikev2_psk", "g_ikev2_mlkem"):
        r = out[key]
        assert r["members"] == r["registered"] == r["ks_registrations"] == r["members_in_store"] == N, key
        assert r["failed"] == 0
        for k in ("per_s", "wall_per_s", "floor_per_s", "ratio", "ks_cpu_ms_per_registration"):
            assert isinstance(r[k], (int, float)) and r[k] >= 0, (key, k, r[k])
        assert r["floor_per_s"] > 0
        assert all(v > 0 for v in r["breakdown_ms"].values() if v), (key, r["breakdown_ms"])
    for key in ("psk", "ecdsa"):
        assert set(out[key]["breakdown_ms"]) == {"phase1", "pull", "commit_and_m4"}
        assert all(v > 0 for v in out[key]["breakdown_ms"].values())
    for key in ("g_ikev2_psk", "g_ikev2_mlkem"):
        b = out[key]["breakdown_ms"]
        assert set(b) == {"ike_sa_init", "ike_intermediate", "gsa_auth", "enroll_and_commit"}
        assert b["ike_sa_init"] > 0 and b["gsa_auth"] > 0 and b["enroll_and_commit"] > 0
        assert set(out[key]["floor_ms"]) == {"ecdh", "mlkem", "kdf", "sk", "auth", "kd"}
    # ECDH only: no ML-KEM anywhere; with ML-KEM: the encapsulation and IKE_INTERMEDIATE happened
    assert out["g_ikev2_psk"]["breakdown_ms"]["ike_intermediate"] == 0 == out["g_ikev2_psk"]["floor_ms"]["mlkem"]
    assert out["g_ikev2_mlkem"]["breakdown_ms"]["ike_intermediate"] > 0 and out["g_ikev2_mlkem"]["floor_ms"]["mlkem"] > 0
    assert set(out["mlkem_adds_ms"]) == {"ks_cpu", "floor"} and out["mlkem_adds_ms"]["floor"] > 0
    assert "ML-KEM adds " in res.stdout and " ms per registration (key server CPU" in res.stdout
    # the top-level ratio is the worst mode's
    assert out["ratio"] == min(out[k]["ratio"] for k in ("psk", "ecdsa", "g_ikev2_psk", "g_ikev2_mlkem"))
    # the state directory was temporary
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".msec-bench-registration-state-")]


def test_registration_bench_config_is_accepted_by_msecd(tmp_path):
    """The generated key server configurations pass msecd's own check."""
    from tools.benchmarks.registration import write_config, write_pki

    write_pki(tmp_path)
    for mode in ("psk", "ecdsa", "g-ikev2-psk"):
        cfg = write_config(tmp_path, mode, 40000, tmp_path / f"{mode}-state")
        r = subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--check"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert ('protocols = ["gdoi", "g-ikev2"]' in cfg.read_text()) == mode.startswith("g-ikev2")
