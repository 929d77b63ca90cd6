"""Issue 12 with a real msecd: a configuration file another user could change is refused by
`msecd --check`, at start (exit 2) and at reload (the running configuration stays)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.host.daemon_proc import REPO, Msecd
from tests.unit.daemon_fakes import PSK, free_udp_port, write_config


def _member_config(tmp, port=848):
    """A member configuration with its PSK in a 0600 file: nothing secret inline, so only the
    file's location can make it unsafe (the inline-secret check stays out of the way)."""
    psk = tmp / "gm1.psk"
    psk.write_text(PSK)
    os.chmod(psk, 0o600)
    cfg = write_config(tmp, member_port=port)
    cfg.write_text(cfg.read_text().replace(f'psk = "{PSK}"', f'psk_file = "{psk}"'))
    return cfg


def _msecd(cfg, *args):
    return subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), *args],
                          capture_output=True, text=True, cwd=str(REPO), timeout=60)


def test_world_writable_config_refused_at_check_start_and_reload(tmp_path, netns):
    cfg = _member_config(tmp_path, free_udp_port())
    os.chmod(cfg, 0o602)
    r = _msecd(cfg, "--check")
    assert r.returncode == 2 and f"{cfg}: refused: '{cfg}' is writable by every user" in r.stderr, r
    r = _msecd(cfg, "--foreground")
    assert r.returncode == 2 and "writable by every user" in r.stderr, r
    os.chmod(cfg, 0o600)
    d = Msecd(cfg, host=netns, args=["--no-kernel"])
    try:
        d.start()
        os.chmod(cfg, 0o602)
        r = d.ctl("reload")
        assert r.returncode == 1 and "writable by every user" in r.stderr, r
        assert "reload refused" in d.wait_log("writable by every user")
        assert d.proc.poll() is None and d.ctl_json("status")["ok"]
    finally:
        d.stop()
