"""msecctl creates groups, with real msecd processes in two netlab hosts (host kernel, member
--no-kernel): a refused create changes nothing and says what the checker says; a created group
is a drop-in file that `msecd --check` reads, a member joins it and registers, it survives a
restart, `reload --check` previews a file; delete tells the members by PUSH, leave removes the
member's group; deauthorize evicts; groups of the main file are refused (edit the file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

from tests.host.daemon_proc import REPO, Msecd
from tests.host.test_daemon_process import _push_signing_key

PSK = {"gm1": "11" * 16, "gm2": "22" * 16}


def _ks_config(tmp_path, listen: str):
    d = tmp_path / "ks"
    d.mkdir()
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[keyserver]\nlisten = ["{listen}"]\n')
    for ident, secret in PSK.items():
        text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{secret}"\n'
    # a group of the main file: msecctl must leave it to the operator
    text += ('[[keyserver.group]]\nid = 900\nauthorize = { psk_identities = ["gm2"] }\n'
             '[[keyserver.group.tek]]\nsrc = "10.9.0.0/16"\ndst = "239.9.9.9"\n'
             'cipher = "aes-gcm-128"\n')
    p = d / "msecd.toml"
    p.write_text(text)
    os.chmod(p, 0o600)
    return p


def _member_config(tmp_path):
    d = tmp_path / "gm1"
    d.mkdir()
    p = d / "msecd.toml"
    p.write_text(f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
                 '[member]\n')
    psk = d / "gm1.psk"
    psk.write_text(PSK["gm1"])
    os.chmod(psk, 0o600)
    return p, psk


def _check(config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gkm.daemon", "--check", "--config",
                           str(config)], capture_output=True, text=True, cwd=str(REPO),
                          timeout=60)


def _tek(dst: str) -> str:
    return f"src=10.77.0.0/24,dst={dst},protocol=udp,dst_port=5004,cipher=aes-gcm-128,lifetime=1h"


def test_msecctl_group_life_cycle(netlab_factory, tmp_path):
    lab = netlab_factory(2)
    h1, h2 = lab.hosts
    ks_cfg = _ks_config(tmp_path, h1.ip4)
    gm_cfg, psk = _member_config(tmp_path)
    signing = _push_signing_key(tmp_path / "ks" / "push.pem")
    kek = f"signing_key={signing},signature=ecdsa-p256,rekey_address=239.192.0.1"
    dropins = ks_cfg.with_name("msecd.toml.d")
    ks = Msecd(ks_cfg, host=h1)
    gm = Msecd(gm_cfg, host=h2, args=["--no-kernel"])
    try:
        ks.start()
        gm.start()

        # refused: the checker's message, against the drop-in it would have been; nothing
        # written, nothing running changed
        r = ks.ctl("group", "create", "1001", "--tek", _tek("239.1.1.1").replace(
            "aes-gcm-128", "rot13"), "--authorize", "gm1")
        assert r.returncode == 1, r
        assert "would be refused; nothing changed" in r.stderr
        assert "keyserver-group-1001.toml: keyserver.group[0].tek[0].cipher" in r.stderr, r.stderr
        assert not dropins.exists() or not list(dropins.iterdir())
        assert [g["id"] for g in ks.ctl_json("groups")["groups"]] == [900]
        r = ks.ctl("group", "create", "1001", "--tek", "src")  # usage: nothing sent
        assert r.returncode == 2 and "key=value" in r.stderr

        r = ks.ctl_json("group", "create", "1001", "--name", "video", "--tek",
                        _tek("239.1.1.1"), "--kek", kek, "--authorize", "gm1")
        assert r["ok"] and r["action"] == "created", r
        f = dropins / "keyserver-group-1001.toml"
        assert r["file"] == str(f) and (f.stat().st_mode & 0o777) == 0o600
        assert "keyserver group 1001 added" in r["changes"]
        assert _check(ks_cfg).returncode == 0  # msecd --check reads the drop-in too
        r = ks.ctl("group", "create", "1001", "--tek", _tek("239.1.1.1"))
        assert r.returncode == 1 and "already exists" in r.stderr

        r = gm.ctl("join", "1001", "--key-server", f"{h1.ip4}:848", "--psk-identity", "gm1",
                   "--psk-file", str(psk))
        assert r.returncode == 0 and "group 1001 joined" in r.stdout, r
        gm.wait_log("registered with key server", timeout=60)
        ms = ks.ctl_json("members", "1001")["members"]
        assert [(m["identity"], m["state"]) for m in ms] == [("key-id:gm1", "registered")]

        # main-file groups are the operator's
        for argv in (["group", "delete", "900"], ["group", "authorize", "900", "gm1"]):
            r = ks.ctl(*argv)
            assert r.returncode == 1 and "edit" in r.stderr and str(ks_cfg) in r.stderr, r

        # reload --check: a file without the drop-in would remove 1001 and roll its TEKs
        alt = ks_cfg.with_name("alt.toml")
        alt.write_text(ks_cfg.read_text())
        os.chmod(alt, 0o600)
        p = ks.ctl_json("reload", "--check", str(alt))
        assert p["ok"] and p["groups_removed"] == [{"id": 1001, "role": "keyserver"}], p
        assert p["groups_added"] == [] and p["teks_rolled"][0]["id"] == 1001
        assert p["teks_rolled"][0]["teks"], p
        # ... and one whose drop-in changes 1001's cipher and admits gm2 only would roll its
        # TEK and evict gm1; a lifetime alone rolls nothing (it applies at the next rotation)
        spi = ks.ctl_json("group", "show", "1001")["roles"][0]["teks"][0]["spi"]
        alt_d = alt.with_name("alt.toml.d")
        alt_d.mkdir()
        (alt_d / f.name).write_text(f.read_text().replace('"aes-gcm-128"', '"aes-gcm-256"')
                                    .replace('["gm1"]', '["gm2"]'))
        os.chmod(alt_d / f.name, 0o600)
        p = ks.ctl_json("reload", "--check", str(alt))
        assert p["groups_changed"] == [{"id": 1001, "role": "keyserver",
                                        "fields": ["teks", "authorization"]}], p
        assert [(m["id"], m["identity"]) for m in p["members_evicted"]] == [(1001, "key-id:gm1")]
        assert p["teks_rolled"] == [{"id": 1001, "teks": [spi], "new_teks": ["tek0"],
                                     "new_kek": False, "why": "TEK or KEK policy changed"}], p
        text = ks.ctl("reload", "--check", str(alt)).stdout
        assert "evict key-id:gm1 from group 1001" in text and spi in text, text
        (alt_d / f.name).write_text(f.read_text().replace('"1h"', '"2h"'))
        p = ks.ctl_json("reload", "--check", str(alt))
        assert p["groups_changed"][0]["fields"] == ["teks"] and p["teks_rolled"] == [], p
        assert p["members_evicted"] == []
        assert ks.ctl_json("reload", "--check")["unchanged"] is True
        assert ks.ctl("reload", "--check", str(tmp_path / "none.toml")).returncode == 1

        # restart: what msecctl created stays
        assert ks.stop() == 0
        ks = Msecd(ks_cfg, host=h1, log=tmp_path / "ks2.log").start()
        assert [g["id"] for g in ks.ctl_json("groups")["groups"]] == [900, 1001]

        # a second group, joined, then deleted: a PUSH deletes its KEK and TEKs at gm1
        r = ks.ctl_json("group", "create", "1002", "--tek", _tek("239.1.1.2"), "--kek", kek,
                        "--authorize", "gm1")
        assert r["ok"], r
        gm.ctl("join", "1002", "--key-server", f"{h1.ip4}:848", "--psk-identity", "gm1",
               "--psk-file", str(psk), check=True)
        gm.wait_log("registered with key server", count=2, timeout=60)
        r = ks.ctl_json("group", "delete", "1002")
        assert r["ok"] and r["action"] == "deleted" and r["push_seq"] is not None, r
        assert r["members"] == ["key-id:gm1"] and r["sent_to"], r
        assert not (dropins / "keyserver-group-1002.toml").exists()
        gm.wait_log("registering again", timeout=60)
        r = gm.ctl_json("leave", "1002")
        assert r["ok"] and "member group 1002 removed" in r["changes"], r
        assert [g["id"] for g in gm.ctl_json("groups")["groups"]] == [1001]
        assert gm.ctl("leave", "1002").returncode == 1
        assert gm.stop() == 0  # the member's joined group survives a restart too
        gm = Msecd(gm_cfg, host=h2, args=["--no-kernel"], log=tmp_path / "gm2.log").start()
        assert [g["id"] for g in gm.ctl_json("groups")["groups"]] == [1001]

        # authorize / deauthorize: taking gm1 out of the policy evicts it
        r = ks.ctl_json("group", "authorize", "1001", "gm2")
        assert r["ok"] and r["identities"] == ["gm2"], r
        r = ks.ctl_json("group", "deauthorize", "1001", "key-id:gm1")
        assert r["ok"], r
        assert any("evicted key-id:gm1" in c for c in r["changes"]), r
        states = {m["identity"]: m["state"] for m in ks.ctl_json("members", "1001")["members"]}
        assert states["key-id:gm1"] == "evicted", states
        with open(dropins / "keyserver-group-1001.toml", "rb") as fh:
            auth = tomllib.load(fh)["keyserver"]["group"][0]["authorize"]
        assert auth == {"psk_identities": ["gm2"]}
        r = ks.ctl("--json", "group", "deauthorize", "1001", "gm1")
        assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    finally:
        gm.stop()
        ks.stop()
