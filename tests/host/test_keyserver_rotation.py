"""Automatic rotation and the eviction batch window with real msecd processes in netlab hosts
(host kernel, members --no-kernel), short lifetimes: an eviction asked for within the batch
window is answered "scheduled" and goes out when the window ends; the TEK (20 s lifetime,
rekey lead 10 s) is then replaced by the key server on its own, and the remaining member
takes the PUSH.  About 15 s."""

from __future__ import annotations

import time

from tests.host.daemon_proc import Msecd, group_on_hosts
from tests.host.test_daemon_process import _push_signing_key
from tests.unit.daemon_fakes import write_config

PSK = {"gm1": "11" * 16, "gm2": "22" * 16}


def _group(tmp_path):
    signing = _push_signing_key(tmp_path / "push.pem")
    return ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\ndst = "239.1.1.1"\n'
            'cipher = "aes-gcm-128"\nlifetime = "20s"\n'
            '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
            f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = 848\n'
            'lifetime = "1d"\ntek_rekey_lead = "10s"\nevict_batch_window = "2s"\n')


def test_batch_eviction_then_automatic_tek_rotation(netlab_factory, tmp_path):
    lab = netlab_factory(3)
    h1, *gm_hosts = lab.hosts
    ks, gms = group_on_hosts(tmp_path, h1, gm_hosts, _group(tmp_path), PSK)
    try:
        ks.start()
        for d in gms.values():
            d.start()
        for d in gms.values():
            d.wait_log("listening for GROUPKEY-PUSH")
        asked = time.time()
        r = ks.ctl_json("evict", "1001", "gm2", "--reason", "test")
        assert r["ok"] and r["mode"] == "scheduled" and r["evicted"] == ["key-id:gm2"], r
        assert asked + 1 <= r["scheduled_at"] <= time.time() + 2, r
        text = ks.ctl("evict", "1001", "gm2", check=True).stdout
        assert "batch rekey that removes them goes out at" in text, text
        ms = {m["identity"]: m["state"] for m in ks.ctl_json("members", "1001")["members"]}
        assert ms == {"key-id:gm1": "registered", "key-id:gm2": "evicting"}, ms
        # the window ends: the LKH update and new TEKs under the new KEK (SEQ 1)
        log = gms["gm1"].wait_log("rekeyed: SEQ 1,", timeout=30)
        gms["gm2"].wait_log("evicted")
        ks.wait_log("evicted key-id:gm2 (test)")
        ms = {m["identity"]: m["state"] for m in ks.ctl_json("members", "1001")["members"]}
        assert ms == {"key-id:gm1": "registered", "key-id:gm2": "evicted"}, ms
        # then, 10 s before the new TEK expires, its successor, by the key server alone
        log = gms["gm1"].wait_log("rekeyed: SEQ 2,", timeout=40)
        kslog = ks.wait_log("keys rotated: SEQ 2")
        line = next(x for x in kslog.splitlines() if "keys rotated: SEQ 2" in x)
        new = line.split(" replaced by ")[1].split(";")[0]
        assert new in log.split("rekeyed: SEQ 2,")[1], (line, log)
        g = ks.ctl_json("group", "show", "1001")["roles"][0]
        assert g["next_key_event"] and g["controller"] == "ready"
        assert "Traceback" not in ks.log() + gms["gm1"].log()
    finally:
        for d in gms.values():
            d.stop()
        ks.stop()


def test_reload_changing_and_removing_tek_policies_rekeys(netlab_factory, tmp_path):
    """Two TEK policies; a reload removes one and changes the other's cipher: one PUSH
    deletes both old TEKs and brings the new one; the member ends with the new TEK only."""
    lab = netlab_factory(2)
    h1, h2 = lab.hosts
    signing = _push_signing_key(tmp_path / "push.pem")
    teks = ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\ndst = "239.1.1.1"\n'
            'cipher = "aes-gcm-128"\n'
            '[[keyserver.group.tek]]\nname = "ctl"\nsrc = "10.77.0.0/24"\ndst = "239.1.1.2"\n'
            'cipher = "aes-gcm-128"\n')
    kek = ('[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
           f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = 848\n'
           'lifetime = "1d"\n')
    cfg = write_config(tmp_path, ks_port=848, name="ks.toml", tek=teks + kek,
                       ks_psks={"gm1": PSK["gm1"]}, authorize=("gm1",), listen=h1.ip4)
    ks = Msecd(cfg, host=h1)
    d = tmp_path / "gm1"
    d.mkdir()
    gm = Msecd(write_config(d, member_port=848, identity="gm1", psk=PSK["gm1"],
                            ks_host=h1.ip4), host=h2, args=["--no-kernel"])
    try:
        ks.start()
        gm.start()
        gm.wait_log("listening for GROUPKEY-PUSH")
        old = {t["spi"] for t in ks.ctl_json("group", "show", "1001")["roles"][0]["teks"]}
        assert len(old) == 2
        new_teks = ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\n'
                    'dst = "239.1.1.1"\ncipher = "aes-gcm-256"\n')
        cfg.write_text(cfg.read_text().replace(teks, new_teks))
        r = ks.ctl_json("reload")
        assert r["ok"] and any("rekeyed for the new policy" in c for c in r["changes"]), r
        log = gm.wait_log("rekeyed: SEQ 1,")
        teks_now = ks.ctl_json("group", "show", "1001")["roles"][0]["teks"]
        (t,) = teks_now  # the deleted ones are gone from the key server's state
        assert t["algorithm"] == "rtp/aes-gcm-256" and t["spi"] not in old
        assert t["spi"] in log.split("rekeyed: SEQ 1,")[1]
        end = time.monotonic() + 30
        while time.monotonic() < end:  # the member drops the deleted TEKs
            held = {x["spi"] for x in gm.ctl_json("group", "show", "1001")["roles"][0]["teks"]}
            if held == {t["spi"]}:
                break
            time.sleep(0.2)
        assert held == {t["spi"]}, held
        assert "deleted TEK SPI" in ks.log()
    finally:
        gm.stop()
        ks.stop()
