"""``tools/bench xfrm-install`` on the host kernel's policies part, scaled down: the JSON it ends
with has the documented shape, and each of the three ways installed exactly the N policies
(read back with a dump). Behaviour only: nothing here is about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 50


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.timeout(300)
def test_xfrm_install_host_part_json_and_counts():
    # the benchmark names its namespaces msec-bench-xi-<its pid>-<random>: run it directly (no
    # wrapper process) so that its pid is ours to know, and check only its own namespaces, not
    # those of a benchmark run that goes on concurrently
    proc = subprocess.Popen([sys.executable, "-m", "tools.benchmarks.xfrm_install", "--count",
                             str(N), "--repeat", "2", "--only", "host"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from tools.benchmarks.xfrm_install import NS_PREFIX
    mine = f"{NS_PREFIX}-{proc.pid}-"
    try:
        stdout, stderr = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["name"] == "xfrm-install"
    assert out["lab"] is None  # --only host
    part = out["host_policies"]
    for key in ("msec_per_s", "iproute2_per_s", "floor_per_s"):
        assert isinstance(part[key], int) and part[key] > 0
    assert part["objects"] == N
    assert part["installed"] == {way: {"states": 0, "policies": N}
                                 for way in ("msec", "iproute2", "floor")}
    assert {w: len(ts) for w, ts in part["runs_s"].items()} == {
        "msec": 2, "iproute2": 2, "floor": 2}
    assert out["ratio"] == round(part["msec_per_s"] / part["iproute2_per_s"], 3)
    assert out["floor_ratio"] == round(part["msec_per_s"] / part["floor_per_s"], 3)
    # self-cleaning: no namespace of this run is left behind
    assert not {n for n in _namespaces() if n.startswith(mine)}


def test_xfrm_install_inputs_and_iproute2_file_describe_the_same_set():
    from xfrm import messages as m
    from tools.benchmarks.xfrm_install import build_batch, iproute2_lines, make_inputs
    inp = make_inputs(20)
    assert len(set(inp.spi)) == len(set(inp.dst)) == len(set(inp.src_net)) == 20
    batch = build_batch(inp, states=True)
    kinds = [m.NLMSGHDR.unpack_from(msg)[1] for msg in batch.encode(1)]
    assert kinds == [m.XFRM_MSG_NEWSA] * 20 + [m.XFRM_MSG_NEWPOLICY] * 20
    lines = iproute2_lines(inp, states=True)
    assert len(lines) == 40
    assert f"spi 0x{inp.spi[3]:08x}" in lines[3] and f"0x{inp.key[3].hex()}" in lines[3]
    assert f"dst {inp.dst[5]}/32 dir in" in lines[25] and f"reqid {inp.reqid[5]}" in lines[25]
