"""Issue 11, service: msecd works with exactly what systemd/msecd.service leaves it.

The unit runs msecd as root with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE
(CapabilityBoundingSet=, AmbientCapabilities=) and NoNewPrivileges=yes.  Here a key server on
UDP 848 and two members run under ``setpriv`` with the capability set read from the unit and
no_new_privs (PID 1 is not systemd in the lab, so the unit itself cannot be started): each
process's effective capabilities are exactly the unit's, the members register and install
their group SAs through XFRM, ESP flows between them, a reload (SIGHUP) is applied, and the
members stop leaving their SAs in the kernel, as without the restriction."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.host.daemon_proc import Msecd
from tests.kernel.test_registration import MARKER, PSKS, SPI_LOG, gm_config, ks_config, \
    states, traffic
from tests.unit.test_systemd_unit import UNIT, settings

pytestmark = pytest.mark.kernel

#: capability numbers (linux/capability.h)
CAP_BITS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12}


def unit_caps() -> list[str]:
    s = settings(UNIT.read_text())
    caps = s["CapabilityBoundingSet"].split()
    assert caps == s["AmbientCapabilities"].split() and s["NoNewPrivileges"] == "yes"
    return caps


def setpriv(caps: list[str]) -> list[str]:
    names = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    return ["setpriv", "--no-new-privs", f"--bounding-set=-all,{names}",
            f"--inh-caps=-all,{names}", f"--ambient-caps=-all,{names}"]


def effective_caps(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return int(fields["CapEff"], 16), int(fields["NoNewPrivs"])


@pytest.fixture
def lab(netlab_factory):
    return netlab_factory(3)


def test_msecd_needs_only_the_units_capabilities(lab, tmp_path):
    h1, h2, h3 = lab.hosts
    caps = unit_caps()
    want = sum(1 << CAP_BITS[c] for c in caps)
    wrap = setpriv(caps)
    dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2")}
    for d in dirs.values():
        d.mkdir()
    ks = Msecd(ks_config(dirs["ks"], h1.ip4), host=h1, wrapper=wrap)
    gms = [Msecd(gm_config(dirs[f"gm{i}"], h1.ip4, f"gm{i}", PSKS[f"gm{i}"]), host=h,
                 wrapper=wrap) for i, h in ((1, h2), (2, h3))]
    try:
        ks.start(timeout=120)
        for d in gms:
            d.start(timeout=120)
        for d in (ks, *gms):
            assert effective_caps(d.proc.pid) == (want, 1)
        for d in gms:
            d.wait_log(SPI_LOG, timeout=120)
        spi = int(ks.ctl_json("group", "show", "1001")["roles"][0]["teks"][0]["spi"], 16)
        for h in (h2, h3):
            assert [(dst, s) for dst, s, _ in states(h)] == [("239.1.1.1", spi)]
        got, pkts, raw = traffic(lab, h2, [h3])
        assert got == [[MARKER] * 20] and MARKER not in raw
        ks.signal(signal.SIGHUP)
        ks.wait_log("reload: no changes", timeout=60)
        for d in gms:
            assert d.stop() == 0
        for h in (h2, h3):
            assert [s for _, s, _ in states(h)] == [spi]  # SAs stay across a daemon restart
    finally:
        for d in (*gms, ks):
            d.stop()
