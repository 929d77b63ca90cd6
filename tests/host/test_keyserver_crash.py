"""kill -9 of the key server in the middle of a rekey, real msecd processes in netlab hosts
(members --no-kernel).  The rekey is committed to the store but its PUSH never reaches the
members (the key server's link is down while `msecctl rekey` runs: what a crash between the
commit and the send leaves), then the key server is killed and started again.  It finds the
marker of a run that did not stop cleanly and sends the committed keys again under a fresh SEQ: no SEQ is used twice, both members end on the same
keys, and neither registers again.  About 15 s."""

from __future__ import annotations

from tests.host.daemon_proc import Msecd, group_on_hosts
from tests.host.test_keyserver_rotation import PSK, _group


def _kill9(d: Msecd) -> None:
    d.proc.kill()
    d.proc.wait(30)
    d._log.close()


def _teks(gm: Msecd) -> tuple[set[str], int]:
    g = gm.ctl_json("group", "show", "1001")["roles"][0]
    return {t["spi"] for t in g["teks"]}, g["last_seq"]


def test_key_server_killed_mid_rekey_members_converge_without_registering(netlab_factory,
                                                                          tmp_path):
    lab = netlab_factory(3)
    h1, *gm_hosts = lab.hosts
    ks, gms = group_on_hosts(tmp_path, h1, gm_hosts, _group(tmp_path), PSK)
    try:
        ks.start()
        for d in gms.values():
            d.start()
        for d in gms.values():
            d.wait_log("listening for GROUPKEY-PUSH")
        assert ks.log().count(") registered (TEK") == 2
        r1 = ks.ctl_json("rekey", "1001")
        assert r1["ok"] and r1["seq"] == 1, r1
        for d in gms.values():
            d.wait_log("rekeyed: SEQ 1,")

        # the PUSH of SEQ 2 is committed but does not reach anyone; then the process dies
        h1.run("ip", "link", "set", h1.ifname, "down")
        r2 = ks.ctl_json("rekey", "1001")
        assert r2["ok"] and r2["seq"] == 2, r2
        _kill9(ks)
        h1.run("ip", "link", "set", h1.ifname, "up")
        for d in gms.values():
            assert "rekeyed: SEQ 2," not in d.log()
            assert _teks(d)[1] == 1

        ks.start()
        ks.wait_log("the last run did not stop cleanly")
        ks.wait_log("current keys sent again after the start: SEQ 3,")
        for d in gms.values():
            log = d.wait_log("rekeyed: SEQ 3,")
            assert all(s in log.split("rekeyed: SEQ 3,")[1] for s in r2["teks"])
        (a, sa), (b, sb) = (_teks(d) for d in gms.values())
        assert sa == sb == 3 and set(r2["teks"]) <= a and a == b  # the same keys everywhere
        # SEQ strictly increases across the crash: SEQ 2 was never sent again
        assert "SEQ 2" not in ks.log().split("msecd started")[-1]
        r4 = ks.ctl_json("rekey", "1001")
        assert r4["seq"] == 4, r4
        for d in gms.values():
            d.wait_log("rekeyed: SEQ 4,")
            # neither member registered again
            assert d.log().count("registering with key server") == 1
        assert ks.log().count(") registered (TEK") == 2
        # a clean stop and start sends nothing again
        assert ks.stop() == 0
        ks = Msecd(ks.config, host=h1, log=tmp_path / "ks-clean.log").start()
        assert "sent again" not in ks.log() and "did not stop cleanly" not in ks.log()
        assert ks.ctl_json("rekey", "1001")["seq"] == 5
        assert "Traceback" not in ks.log() + "".join(d.log() for d in gms.values())
    finally:
        for d in gms.values():
            d.stop()
        ks.stop()
