"""Eviction with real msecd processes in netlab hosts (host kernel, members --no-kernel): gm1
keeps the group and gets the new keys, gm3 is told it is evicted and then refused; the deny
list survives, `msecctl members` and `deny` say who, when and why; lifting readmits gm3; a
reload that takes gm2 out of the policy evicts it.  The only member evicted (the tree
empties) is told evicted too."""

from __future__ import annotations

from tests.host.daemon_proc import Msecd, group_on_hosts
from tests.unit.daemon_fakes import write_config
from tests.host.test_daemon_process import _push_signing_key

PSK = {"gm1": "11" * 16, "gm2": "22" * 16, "gm3": "33" * 16}


def _kek(tmp_path, rport=848):
    signing = _push_signing_key(tmp_path / "push.pem")
    return ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\ndst = "239.1.1.1"\n'
            'cipher = "aes-gcm-128"\n'
            '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
            f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
            'lifetime = "1d"\n')


def test_evict_deny_list_lift_and_reload(netlab_factory, tmp_path):
    lab = netlab_factory(4)
    h1, *gm_hosts = lab.hosts
    ks, gms = group_on_hosts(tmp_path, h1, gm_hosts, _kek(tmp_path), PSK,
                             names=("gm1", "gm2", "gm3"))
    ks_cfg = ks.config
    try:
        ks.start()
        for d in gms.values():
            d.start()
        for d in gms.values():
            d.wait_log("listening for GROUPKEY-PUSH")
        seq0 = ks.ctl_json("group", "show", "1001")["roles"][0]["seq"]

        r = ks.ctl_json("evict", "1001", "gm3", "nobody", "--reason", "lost laptop")
        assert r["ok"] and r["evicted"] == ["key-id:gm3"], r
        assert r["not_members"] == ["key-id:nobody"] and len(r["seqs"]) == 2, r
        assert r["seqs"][0] == seq0 + 1 and r["seqs"][1] == 1  # SEQ 1 under the new KEK
        new = set(r["teks"])
        for name in ("gm1", "gm2"):
            log = gms[name].wait_log("rekeyed: SEQ 1,")
            assert all(s in log for s in new)
        gms["gm3"].wait_log("evicted")
        ks.wait_log("was evicted at")  # gm3 registers again: refused
        log = ks.log()
        assert "evicted key-id:gm3 (lost laptop)" in log
        ms = {m["identity"]: m for m in ks.ctl_json("members", "1001")["members"]}
        assert ms["key-id:gm3"]["state"] == "evicted" and ms["key-id:gm3"]["reason"] == \
            "lost laptop" and ms["key-id:gm3"]["evicted_at"]
        assert ms["key-id:gm1"]["state"] == "registered"
        text = ks.ctl("members", "1001", check=True).stdout
        assert "evicted" in text and "lost laptop" in text
        g3 = gms["gm3"].ctl_json("group", "show", "1001")["roles"][0]
        assert not {t["spi"] for t in g3["teks"]} & new
        deny = ks.ctl_json("deny", "1001")["denied"]
        assert [d["identity"] for d in deny] == ["key-id:gm3", "key-id:nobody"]

        # restart: the deny list and the tree stay
        assert ks.stop() == 0
        ks = Msecd(ks_cfg, host=h1, log=tmp_path / "ks2.log")
        ks.start()
        assert [d["identity"] for d in ks.ctl_json("deny", "1001")["denied"]] == \
            ["key-id:gm3", "key-id:nobody"]
        ks.wait_log("was evicted at")

        r = ks.ctl("deny", "lift", "1001", "gm3")
        assert r.returncode == 0 and "lifted key-id:gm3" in r.stdout, r
        gms["gm3"].wait_log("registered with key server", count=2, timeout=180)
        assert "key-id:gm3" in {m["identity"] for m in ks.ctl_json("members", "1001")["members"]
                                if m["state"] == "registered"}

        # a reload that takes gm2 out of the group's authorization evicts it
        ks_cfg.write_text(ks_cfg.read_text().replace('"gm1", "gm2", "gm3"', '"gm1", "gm3"'))
        r = ks.ctl_json("reload")
        assert r["ok"] and any("evicted key-id:gm2" in c and "no longer authorized" in c
                               for c in r["changes"]), r
        gms["gm2"].wait_log("evicted")
        ms = {m["identity"]: m for m in ks.ctl_json("members", "1001")["members"]}
        assert ms["key-id:gm2"]["state"] == "evicted"
        assert "no longer authorized" in ms["key-id:gm2"]["reason"]
    finally:
        for d in gms.values():
            d.stop()
        ks.stop()


def test_evicting_the_only_member_tells_it_evicted(netlab_factory, tmp_path):
    """The tree becomes empty (its new root is wrapped for nobody): the member's log says
    evicted, not a rejected PUSH; the TEK PUSH under the new KEK that follows is not a
    warning; a member registering afterwards joins the renewed tree and its KEK."""
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    ks_cfg = write_config(tmp_path, ks_port=848, name="ks.toml", tek=_kek(tmp_path),
                          ks_psks=PSK, authorize=("gm1", "gm2"), listen=h1.ip4)
    ks = Msecd(ks_cfg, host=h1)
    gms = {}
    for name, h in (("gm1", h2), ("gm2", h3)):
        d = tmp_path / name
        d.mkdir()
        gms[name] = Msecd(write_config(d, member_port=848, identity=name, psk=PSK[name],
                                       ks_host=h1.ip4), host=h, args=["--no-kernel"])
    try:
        ks.start()
        gms["gm1"].start()
        gms["gm1"].wait_log("listening for GROUPKEY-PUSH")
        r = ks.ctl_json("evict", "1001", "gm1", "--reason", "last one")
        assert r["ok"] and r["evicted"] == ["key-id:gm1"] and len(r["seqs"]) == 2, r
        log = gms["gm1"].wait_log("evicted by LKH update")
        ks.wait_log("was evicted at")  # gm1 registers again after its back-off: refused
        log = gms["gm1"].log()
        assert "does not renew the group key" not in log and "cookies do not match" not in log
        assert "dropped" not in log, log
        gms["gm2"].start()
        gms["gm2"].wait_log("listening for GROUPKEY-PUSH")
        # it got the TEKs the eviction made, and follows a rekey under the KEK derived from
        # the renewed root
        g2 = gms["gm2"].ctl_json("group", "show", "1001")["roles"][0]
        assert {t["spi"] for t in g2["teks"]} == set(r["teks"]), (g2, r)
        rk = ks.ctl_json("rekey", "1001")
        assert rk["ok"], rk
        log = gms["gm2"].wait_log(") rekeyed: SEQ")
        assert all(s in log for s in rk["teks"])
    finally:
        for d in gms.values():
            d.stop()
        ks.stop()
