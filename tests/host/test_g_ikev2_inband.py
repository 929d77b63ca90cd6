"""GSA_INBAND_REKEY in real msecd processes (netlab hosts, members --no-kernel): a group with
``g_ikev2_rekey = "inband"`` registers its G-IKEv2 members without a Rekey SA and keeps their
IKE SAs; ``msecctl rekey`` reaches them in band (each answers, the key server logs the
acknowledgement) while the GDOI member gets the GROUPKEY-PUSH; ``msecctl evict`` of one G-IKEv2
member excludes it in band (it removes its keys) and the other two follow the new TEK."""

from __future__ import annotations

from tests.host.daemon_proc import Msecd
from tests.host.test_g_ikev2_daemon import _ks_config, _member_config, _running, _spis


def test_inband_rekey_and_eviction(netlab_factory, tmp_path):
    lab = netlab_factory(4)
    h1, h2, h3, h4 = lab.hosts
    cfg = _ks_config(tmp_path, h1.ip4)
    cfg.write_text(cfg.read_text().replace('protocols = ["gdoi", "g-ikev2"]\n',
                                           'protocols = ["gdoi", "g-ikev2"]\ng_ikev2_rekey = "inband"\n'))
    ks = Msecd(cfg, host=h1)
    gdoi = Msecd(_member_config(tmp_path, "gm1", 1001, "gdoi", h1.ip4), host=h2, args=["--no-kernel"])
    gike = Msecd(_member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4), host=h3, args=["--no-kernel"])
    gike2 = Msecd(_member_config(tmp_path, "gm4", 1001, "g-ikev2", h1.ip4), host=h4, args=["--no-kernel"])
    with _running(ks, gdoi, gike, gike2):
        for d in (gdoi, gike, gike2):
            d.wait_log("registered with key server", timeout=60)
        for d in (gike, gike2):
            d.wait_log("keeping the registration's IKE SA for in-band rekeys", timeout=30)
            assert "listening for GSA_REKEY" not in d.log()  # no Rekey SA, no rekey socket
        assert ks.ctl_json("group", "show", "1001")["roles"][0]["policy"]["g_ikev2_rekey"] == "inband"

        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        new = set(r["teks"])
        gdoi.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
        for d in (gike, gike2):
            d.wait_log("rekeyed: SEQ 1, new TEK SPIs", timeout=30)
        for d in (gdoi, gike, gike2):
            assert new <= _spis(d, 1001), d.log()[-3000:]
        ks.wait_log("acknowledged the in-band rekey", count=2, timeout=30)
        rows = {m["identity"]: m for m in ks.ctl_json("members", "1001")["members"]}
        for who in ("key-id:gm2", "key-id:gm4"):
            assert rows[who]["inband_ike_sa"] and rows[who]["inband_acknowledged"] == 0, rows[who]
        assert "inband_ike_sa" not in rows["key-id:gm1"]  # GDOI
        assert ks.ctl_json("group", "show", "1001")["roles"][0]["inband"] == {"ike_sas": 2, "pending": 0}
        assert "GSA_INBAND_REKEY sent to 2 G-IKEv2 member(s) in band" in ks.log() or \
            "2 G-IKEv2 member(s) in band" in ks.log(), ks.log()[-3000:]

        r = ks.ctl_json("evict", "1001", "gm2", "--reason", "test")
        assert r["ok"] and r["evicted"] == ["key-id:gm2"], r
        new = set(r["teks"])
        gike.wait_log("evicted from the group", timeout=30)
        gike2.wait_log("rekeyed: SEQ 2, new TEK SPIs", timeout=30)
        gdoi.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
        for d in (gdoi, gike2):
            assert new <= _spis(d, 1001), d.log()[-3000:]
        assert not new & _spis(gike, 1001)
        ks.wait_log("acknowledged the in-band rekey", count=4, timeout=30)
