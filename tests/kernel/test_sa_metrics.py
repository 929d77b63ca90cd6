"""The metrics endpoint's per-SA counters with real ESP (the kernel lab): a key server and two
members (real msecd processes, metrics on); 20 datagrams from gm1 to the group; each
member's ``msec_sa_packets_total`` / ``msec_sa_bytes_total`` for the group's SA rise by what
went through it and equal what ``ip -s xfrm state`` (iproute2, an independent reader of the
same kernel counters) says; ``msecctl sa`` shows that SA with the same counters."""

from __future__ import annotations

import re

import pytest

from tests.host.daemon_proc import Msecd
from tests.host.test_metrics_monitor import scrape, series
from tests.kernel.test_registration import GROUP, PSKS, SPI_LOG, gm_config, ks_config, traffic

pytestmark = pytest.mark.kernel

METRICS_PORT = 9848  # each member in its own namespace


def _iproute_counters(host) -> dict[int, tuple[int, int]]:
    """SPI -> (bytes, packets) from `ip -s xfrm state`."""
    out = {}
    text = host.run("ip", "-s", "xfrm", "state").stdout
    for block in re.split(r"(?m)^src ", text)[1:]:
        spi = int(re.search(r"spi (0x[0-9a-f]+)", block).group(1), 16)
        cur = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        out[spi] = (int(cur.group(1)), int(cur.group(2)))
    return out


def _sa(m: dict, what: str) -> dict[int, float]:
    return {int(dict(lab)["spi"], 16): v for lab, v in series(m, f"msec_sa_{what}_total").items()
            if dict(lab)["group"] == "1001" and dict(lab)["dst"] == GROUP}


def test_sa_counters_rise_with_traffic(netlab_factory, tmp_path):
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2")}
    for d in dirs.values():
        d.mkdir()
    ks = Msecd(ks_config(dirs["ks"], h1.ip4), host=h1)
    gms = []
    for name, h in (("gm1", h2), ("gm2", h3)):
        cfg = gm_config(dirs[name], h1.ip4, name, PSKS[name])
        cfg.write_text(cfg.read_text().replace(
            "[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{METRICS_PORT}"\n', 1))
        gms.append(Msecd(cfg, host=h))
    try:
        ks.start(timeout=120)
        for d in gms:
            d.start(timeout=120)
        for d in gms:
            d.wait_log(SPI_LOG, timeout=120)
        before = {h.name: scrape(h, METRICS_PORT) for h in (h2, h3)}
        assert len(_sa(before[h2.name], "packets")) == 1, (before[h2.name], gms[0].log()[-2000:])
        (spi,) = _sa(before[h2.name], "packets")
        assert set(_sa(before[h3.name], "packets")) == {spi}

        got, pkts, _ = traffic(lab, h2, [h3])
        assert len(got[0]) == 20
        for h in (h2, h3):
            m = scrape(h, METRICS_PORT)
            packets, nbytes = _sa(m, "packets")[spi], _sa(m, "bytes")[spi]
            assert packets >= _sa(before[h.name], "packets")[spi] + 20, (h.name, packets)
            assert nbytes > _sa(before[h.name], "bytes")[spi]
            assert _iproute_counters(h)[spi] == (nbytes, packets)
            assert _sa(m, "integrity_failed")[spi] == 0
            assert series(m, "msec_tek_expiry_seconds")
        # msecctl sa: the same SA with the same counters, its expiry, the group's policies
        for d, h in zip(gms, (h2, h3)):
            m = scrape(h, METRICS_PORT)
            r = d.ctl_json("sa")
            assert r["ok"] and r["kernel"], r
            (g,) = r["groups"]
            assert g["id"] == 1001
            (a,) = [a for a in g["sas"] if int(a["spi"], 16) == spi]
            assert (a["bytes"], a["packets"]) == _iproute_counters(h)[spi]
            assert a["packets"] >= _sa(m, "packets")[spi]  # a scrape earlier, never more
            assert a["suite"] and a["dst"] == GROUP and a["integrity_failed"] == 0
            assert a["added"] and a["expires"] > a["added"]
            assert {p["direction"] for p in g["policies"]} >= {"out", "in"}
            assert f"0x{spi:08x}" in d.ctl("sa").stdout
            bad = d.ctl("sa", "4242")
            assert bad.returncode == 1 and "not a member of group 4242" in bad.stdout + bad.stderr
    finally:
        for d in gms:
            d.stop()
        ks.stop()
