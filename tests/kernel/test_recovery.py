"""Recovery in the kernel lab, real msecd processes in netlab hosts, kernel ESP:

* a member killed with -9 and started again: its SAs stay in the kernel (traffic flows while
  it is down), it resumes from its saved group state without registering again and applies
  the next rekey;
* the key server killed with -9 in the middle of a rekey (committed, its PUSH lost): after the
  restart SEQ strictly increases and every member ends on the same keys, none registering
  again;
* a member with two key servers configured, the first one down: it registers with the second;
* the kernel's soft expiry of a TEK with no successor reaches the member engine (XFRM EXPIRE
  events) and the member registers again.
"""

from __future__ import annotations

import pytest

from tests.host.daemon_proc import Msecd
from tests.kernel.test_registration import GROUP, MARKER, PSKS, SPI_LOG, gm_config, states, traffic
from tests.kernel.test_rekey import _ks_config

pytestmark = pytest.mark.kernel

REGISTERED = ") registered (TEK"


def _kill9(d: Msecd) -> None:
    d.proc.kill()
    d.proc.wait(30)
    d._log.close()


def _group_spis(h) -> set[int]:
    return {spi for dst, spi, proto in states(h) if dst == GROUP}


def _lab(netlab_factory, tmp_path, n_members=3):
    lab = netlab_factory(n_members + 1)
    h1, *hs = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", *(f"gm{i}" for i in range(1, n_members + 1)))}
    for p in dirs.values():
        p.mkdir()
    ks = Msecd(_ks_config(dirs["ks"], h1.ip4), host=h1)
    gms = [Msecd(gm_config(dirs[f"gm{i}"], h1.ip4, f"gm{i}", PSKS[f"gm{i}"]), host=h)
           for i, h in enumerate(hs, 1)]
    ks.start(timeout=120)
    for d in gms:
        d.start(timeout=120)
    for d in gms:
        d.wait_log(SPI_LOG, timeout=120)
        d.wait_log("listening for GROUPKEY-PUSH", timeout=120)
    return lab, dirs, ks, gms


def test_member_killed_keeps_its_traffic_and_takes_the_next_rekey(netlab_factory, tmp_path):
    ks = gm1b = None
    gms = []
    try:
        lab, dirs, ks, gms = _lab(netlab_factory, tmp_path)
        h1, h2, h3, h4 = lab.hosts
        (spi,) = _group_spis(h2)
        _kill9(gms[0])
        # its SAs stay: traffic to and from it flows while no daemon runs
        got, _, raw = traffic(lab, h3, [h2, h4], marker=MARKER + b"-gm1-dead")
        assert all(len(g) == 20 for g in got) and MARKER not in raw
        gm1b = Msecd(gms[0].config, host=h2, log=dirs["gm1"] / "again.log").start(timeout=120)
        log = gm1b.wait_log("resumed from the saved member state", timeout=60)
        assert f"still in the kernel: 0x{spi:08x}" in log
        gm1b.wait_log("listening for GROUPKEY-PUSH", timeout=60)
        assert "registering with key server" not in gm1b.log()
        assert ks.log().count(REGISTERED) == 3  # no fourth registration
        assert _group_spis(h2) == {spi}

        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        new = {int(s, 16) for s in r["teks"]}
        gm1b.wait_log(f"rekeyed: SEQ {r['seq']},", timeout=60)
        gm1b.wait_log("removed SA(s)", timeout=60)  # the sender moved, the old SA went
        assert _group_spis(h2) == new
        got, pkts, raw = traffic(lab, h2, [h3, h4], marker=MARKER + b"-gm1-back")
        assert all(len(g) == 20 for g in got) and MARKER not in raw
        assert {p["spi"] for p in pkts if p.get("proto") == "esp"} <= new
        assert ks.log().count(REGISTERED) == 3
    finally:
        for d in (gm1b, *gms[1:], ks):
            if d is not None:
                d.stop()


def test_key_server_killed_mid_rekey_seq_increases_and_members_converge(netlab_factory,
                                                                       tmp_path):
    ks = None
    gms = []
    try:
        lab, dirs, ks, gms = _lab(netlab_factory, tmp_path)
        h1, *hs = lab.hosts
        # the rekey is committed but its PUSH reaches nobody; then the process dies
        h1.run("ip", "link", "set", h1.ifname, "down")
        lost = ks.ctl_json("rekey", "1001")
        assert lost["ok"] and lost["seq"] == 1, lost
        _kill9(ks)
        h1.run("ip", "link", "set", h1.ifname, "up")
        ks = Msecd(ks.config, host=h1, log=dirs["ks"] / "ks2.log").start(timeout=120)
        ks.wait_log("the last run did not stop cleanly", timeout=60)
        ks.wait_log("current keys sent again after the start: SEQ 2,", timeout=60)
        new = {int(s, 16) for s in lost["teks"]}
        for d in gms:
            d.wait_log("rekeyed: SEQ 2,", timeout=60)  # SEQ 1 was never reused
            d.wait_log("removed SA(s)", timeout=60)
        for h in hs:
            assert _group_spis(h) == new, h.name  # the same keys everywhere
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"] and r["seq"] == 3, r
        for d in gms:
            d.wait_log("rekeyed: SEQ 3,", timeout=60)
            assert d.log().count("registering with key server") == 1  # nobody registered again
        assert "registered (TEK" not in ks.log()
        got, _, raw = traffic(lab, hs[0], hs[1:], marker=MARKER + b"-after-crash")
        assert all(len(g) == 20 for g in got) and MARKER not in raw
    finally:
        for d in (*gms, ks):
            if d is not None:
                d.stop()


def test_member_registers_with_the_second_key_server_when_the_first_is_down(netlab_factory,
                                                                            tmp_path):
    """gm1's first key server is a host where no key server runs (ICMP port unreachable),
    gm2's an address no host answers ARP for (host unreachable, after the neighbour timeout):
    the error reaches the registration socket (IP_RECVERR) and the member moves on at once,
    not after the exchange timeout (30 s)."""
    lab = netlab_factory(4)
    h1, h2, h3, h4 = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2")}
    for p in dirs.values():
        p.mkdir()
    ks = Msecd(_ks_config(dirs["ks"], h1.ip4), host=h1)
    gms = []
    for name, h, down in (("gm1", h2, h4.ip4), ("gm2", h3, "10.77.0.200")):
        cfg = gm_config(dirs[name], h1.ip4, name, PSKS[name])
        cfg.write_text(cfg.read_text().replace(f'key_servers = ["{h1.ip4}"]',
                                               f'key_servers = ["{down}", "{h1.ip4}"]'))
        gms.append((Msecd(cfg, host=h), down))
    try:
        ks.start(timeout=120)
        for d, _ in gms:
            d.start(timeout=120)
        for d, down in gms:
            log = d.wait_log(f"registered with key server {h1.ip4}:848", timeout=20)
            why = "Connection refused" if down == h4.ip4 else "No route to host"
            assert f"registration with {down}:848 failed: key server unreachable: {why}" in log
            g = d.ctl_json("group", "show", "1001")["roles"][0]
            assert g["key_server"] == f"{h1.ip4}:848" and g["state"] == "registered"
        got, _, raw = traffic(lab, h2, [h3], marker=MARKER + b"-second-ks")
        assert all(len(g) == 20 for g in got) and MARKER not in raw
    finally:
        for d, _ in gms:
            d.stop()
        ks.stop()


def test_kernel_soft_expiry_reaches_the_member_and_it_registers_again(netlab_factory,
                                                                     tmp_path):
    """A group without KEK (no PUSH can bring a successor), TEK lifetime 20 s: the kernel's
    soft expiry (90 %: 18 s) reaches the member engine through the XFRM EXPIRE events before
    its own timers would notice (20 s), and it registers again after its jitter."""
    from tests.kernel.test_registration import ks_config

    lab = netlab_factory(2)
    h1, h2 = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", "gm1")}
    for p in dirs.values():
        p.mkdir()
    cfg = ks_config(dirs["ks"], h1.ip4)
    cfg.write_text(cfg.read_text().replace('lifetime = "1h"', 'lifetime = "20s"'))
    ks = Msecd(cfg, host=h1)
    gm = Msecd(gm_config(dirs["gm1"], h1.ip4, "gm1", PSKS["gm1"]), host=h2)
    try:
        ks.start(timeout=120)
        gm.start(timeout=120)
        gm.wait_log(SPI_LOG, timeout=60)
        log = gm.wait_log("a TEK is about to expire and no rekey came: registering again in",
                          timeout=40)
        assert "a TEK expired with no successor" not in log  # the kernel said it first
        gm.wait_log("registered with key server", count=2, timeout=40)
    finally:
        gm.stop()
        ks.stop()
