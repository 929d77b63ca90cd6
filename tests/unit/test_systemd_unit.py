"""Issue 11, service: the shipped unit passes ``systemd-analyze verify`` (with ExecStart
pointing at this tree's msecd, since /usr/local/bin/msecd is where tools/install-service puts
it) and keeps the settings msecd's behaviour relies on: Type=notify (msecd sends READY=1,
tests/host/test_systemd_notify.py), reload by SIGHUP, restart on failure but not on a refused
configuration (exit 2), and the hardening, whose offline exposure score stays low."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "msecd.service"
MSECD = Path(sys.executable).parent / "msecd"


def settings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            assert key not in out, f"{key} set twice"
            out[key] = value
    return out


@pytest.fixture
def unit(tmp_path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing: run tools/setup (it installs the systemd package)")
    p = tmp_path / "msecd.service"  # the file name is the unit name systemd checks
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/msecd " in text
    p.write_text(text.replace("ExecStart=/usr/local/bin/msecd ", f"ExecStart={MSECD} "))
    return p


def test_systemd_analyze_verify_passes(unit):
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    # warnings (an unknown key, a misspelt value) are printed but do not fail verify
    assert not [x for x in (r.stdout + r.stderr).splitlines() if "msecd" in x], r.stderr


def test_verify_notices_a_broken_unit(unit, tmp_path):
    """The check above can fail: a missing executable and an unknown key are reported."""
    broken = tmp_path / "broken" / "msecd.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace(str(MSECD), "/nonexistent/msecd")
                      .replace("PrivateTmp=yes", "PrivateTmp=yes\nProtectEverything=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "ProtectEverything" in r.stderr and "nonexistent" in r.stderr


def test_unit_settings_msecd_relies_on():
    s = settings(UNIT.read_text())
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert "--foreground" in s["ExecStart"].split() and "--config" in s["ExecStart"]
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure" and s["RestartPreventExitStatus"] == "2"
    assert s["StateDirectory"] == "msec" and s["RuntimeDirectory"] == "msec"
    assert s["StateDirectoryMode"] == s["RuntimeDirectoryMode"] == "0700"
    caps = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(s["CapabilityBoundingSet"].split()) == caps
    assert set(s["AmbientCapabilities"].split()) == caps
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "RestrictSUIDSGID": "yes", "UMask": "0077"}.items():
        assert s[key] == value, key
    # the defaults of [daemon] are what systemd creates and leaves writable
    from policy.model import DaemonSettings

    assert DaemonSettings().state_dir == Path("/var/lib") / s["StateDirectory"]
    assert DaemonSettings().control_socket.parent == Path("/run") / s["RuntimeDirectory"]


def test_offline_security_exposure_is_low(unit):
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for msecd\.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 4.5, r.stdout
