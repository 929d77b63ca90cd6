"""Issue 11, getting started: the README's quick start on one machine.  The shipped examples
(addresses and ports moved into a private namespace, nothing else changed) get their files
from ``msecctl init``, both pass ``msecd --check``, and then a key server and a member run
from them: the member registers for group 1001 with the PSK and for group 1002 with the
certificate init issued (the key server's certificate, from the same CA, passes the member's
``key_server_identity``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.host.daemon_proc import MSECCTL, REPO, Msecd

PORT = 18_848


def _examples(d: Path, ip: str) -> tuple[Path, Path]:
    shutil.copytree(REPO / "examples", d)
    ks, gm = d / "keyserver.toml", d / "member.toml"
    text = ks.read_text()
    for a, b in (('state_dir = "/var/lib/msec"', f'state_dir = "{d}/ks-state"'),
                 ('"/run/msec/control.sock"', f'"{d}/ks-run/control.sock"'),
                 ('listen = ["0.0.0.0", "::"]', f'listen = ["{ip}"]'),
                 ("port = 848\n", f"port = {PORT}\n"),
                 ("rekey_port = 848", f"rekey_port = {PORT + 1}"),
                 ('"192.0.2.11"', f'"{ip}"')):
        assert a in text, a
        text = text.replace(a, b, 1)
    ks.write_text(text)
    text = gm.read_text()
    for a, b in (('state_dir = "/var/lib/msec"', f'state_dir = "{d}/gm-state"'),
                 ('"/run/msec/control.sock"', f'"{d}/gm-run/control.sock"'),
                 ('["192.0.2.1", "[2001:db8::1]:848"]', f'["{ip}:{PORT}"]'),
                 ('["ks.example.org:848"]', f'["{ip}:{PORT}"]')):
        assert a in text, a
        text = text.replace(a, b, 1)
    gm.write_text(text)
    return ks, gm


def _registered(d: Msecd, gid: int) -> dict:
    return d.ctl_json("group", "show", str(gid))["roles"][0]


def test_examples_from_nothing_to_a_registered_member(tmp_path, netns):
    ks_cfg, gm_cfg = _examples(tmp_path / "sv-etc", netns.ip4)
    init = subprocess.run([*MSECCTL, "init", str(ks_cfg), str(gm_cfg)], capture_output=True,
                          text=True, cwd=str(REPO), timeout=120)
    assert init.returncode == 0, init.stderr
    for cfg in (ks_cfg, gm_cfg):
        check = subprocess.run([sys.executable, "-m", "gkm.daemon", "--check", "--config",
                                str(cfg)], capture_output=True, text=True, cwd=str(REPO))
        assert check.returncode == 0, check.stderr
    ks = Msecd(ks_cfg, host=netns, log=tmp_path / "ks.log")
    gm = Msecd(gm_cfg, host=netns, args=["--no-kernel"], log=tmp_path / "gm.log")
    try:
        ks.start(timeout=60)
        gm.start(timeout=60)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            states = {g: _registered(gm, g)["state"] for g in (1001, 1002)}
            if set(states.values()) == {"registered"}:
                break
            time.sleep(0.2)
        assert states == {1001: "registered", 1002: "registered"}, gm.log()
        members = {g: ks.ctl_json("members", str(g))["members"] for g in (1001, 1002)}
        assert [m["identity"] for m in members[1001]] == ["key-id:gm1"]
        (cert_member,) = members[1002]
        assert cert_member["identity"].startswith("dn:") and "CN=gm1" in cert_member["identity"]
        assert "OU=Video" in cert_member["identity"]
    finally:
        gm.stop()
        ks.stop()
