"""Member restart with real msecd processes (one netns, loopback, member --no-kernel): the
member keeps its group state under <state_dir>/member/ (0600); after kill -9 it resumes
from it, does not register again (the key server's log and `msecctl members` say so) and
applies the next `msecctl rekey`; a corrupt state file means a fresh registration, logged.
About 10 s."""

from __future__ import annotations

import stat

from tests.host.daemon_proc import Msecd
from tests.host.test_daemon_process import _push_signing_key
from tests.unit.daemon_fakes import free_udp_port, write_config

REGISTERED = "member key-id 'gm1' from 127.0.0.1"


def _tek(tmp_path, rport: int) -> str:
    signing = _push_signing_key(tmp_path / "push.pem")
    return ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
            'cipher = "aes-gcm-128"\n'
            '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
            f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
            'lifetime = "1d"\n')


def _kill9(d: Msecd) -> None:
    d.proc.kill()
    d.proc.wait(30)
    d._log.close()


def _registered_at(ks: Msecd) -> float:
    (m,) = [m for m in ks.ctl_json("members", "1001")["members"]
            if m["identity"] == "key-id:gm1"]
    assert m["state"] == "registered", m
    return m["registered_at"]


def test_member_killed_resumes_from_its_saved_state_and_takes_the_next_rekey(tmp_path, netns):
    port, rport = free_udp_port(), free_udp_port()
    ks = Msecd(write_config(tmp_path, ks_port=port, name="ks.toml", tek=_tek(tmp_path, rport)),
               host=netns)
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    gm = Msecd(write_config(gm_dir, member_port=port), host=netns, args=["--no-kernel"])
    state = gm_dir / "state" / "member" / "group-1001.state"
    try:
        ks.start()
        gm.start()
        gm.wait_log("listening for GROUPKEY-PUSH")
        assert "no saved member state: registering" in gm.log()
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert ks.log().count(REGISTERED) == 1
        first = _registered_at(ks)
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"] and r["seq"] == 1, r
        gm.wait_log("rekeyed: SEQ 1,")
        spis = {t["spi"] for t in gm.ctl_json("group", "show", "1001")["roles"][0]["teks"]}

        _kill9(gm)
        gm.start()
        log = gm.wait_log("resumed from the saved member state")
        assert "key server 127.0.0.1:" in log and "SEQ 1," in log
        g = gm.ctl_json("group", "show", "1001")["roles"][0]
        assert g["state"] == "registered" and g["restored"] and g["registrations"] == 0
        assert {t["spi"] for t in g["teks"]} == spis and g["last_seq"] == 1
        text = gm.ctl("group", "show", "1001", check=True).stdout
        assert "resumed from the saved member state (key server 127.0.0.1:" in text
        gm.wait_log("listening for GROUPKEY-PUSH", count=2)
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"] and r["seq"] == 2, r
        log = gm.wait_log("rekeyed: SEQ 2,")
        assert all(s in log.split("rekeyed: SEQ 2,")[1] for s in r["teks"])
        # it never registered again
        assert ks.log().count(REGISTERED) == 1 and _registered_at(ks) == first
        assert gm.log().count("registering with key server") == 1

        # a corrupt state: a fresh registration, with a log line saying why
        _kill9(gm)
        state.write_bytes(state.read_bytes()[:100])
        gm.start()
        gm.wait_log("unusable (not JSON")
        gm.wait_log("registered with key server", count=2)
        ks.wait_log(REGISTERED, count=2)
        assert "Traceback" not in gm.log() + ks.log()
    finally:
        gm.stop()
        ks.stop()


def test_member_fails_over_to_the_second_key_server_when_the_first_is_down(tmp_path, netns):
    """Nothing listens at the first address: the ICMP port unreachable reaches the member's
    registration socket (IP_RECVERR) and it moves to the second one at once, not after the
    exchange timeout (30 s)."""
    port, dead = free_udp_port(), free_udp_port()
    ks = Msecd(write_config(tmp_path, ks_port=port, name="ks.toml"), host=netns)
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    cfg = write_config(gm_dir, member_port=port)
    cfg.write_text(cfg.read_text().replace(
        f'key_servers = ["127.0.0.1:{port}"]',
        f'key_servers = ["127.0.0.1:{dead}", "127.0.0.1:{port}"]'))
    gm = Msecd(cfg, host=netns, args=["--no-kernel"])
    try:
        ks.start()
        gm.start()
        log = gm.wait_log(f"registered with key server 127.0.0.1:{port}", timeout=20)
        assert (f"registration with 127.0.0.1:{dead} failed: key server unreachable: "
                "Connection refused") in log
        g = gm.ctl_json("group", "show", "1001")["roles"][0]
        assert g["key_server"] == f"127.0.0.1:{port}" and g["state"] == "registered"
    finally:
        gm.stop()
        ks.stop()
