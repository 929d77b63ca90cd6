"""strongSwan's charon and msecd on the same hosts (issue 11, "strongSwan on the same host").

Three netlab hosts in the kernel lab: h1 is msec's key server; h2 and h3 are msec members of
group 239.1.1.1 (udp 5000) and also run Debian's charon (tests/host/charon.py, its own
strongswan.conf and swanctl directory) with an IKEv2 PSK tunnel between them: CHILD_SA in tunnel
mode, traffic selectors h2/32 <-> h3/32, every protocol, ESP with AES-GCM-128.

Checked: both tunnels carry their traffic, only as ESP on the wire, each under its own SPIs
(charon's unicast h2 -> h3 under charon's, the group's multicast under msec's TEK SPI), and
neither's policies take the other's packets (group traffic is not in charon's ESP, unicast
is not in msec's; GDOI on UDP 848 and charon's IKE on 500/4500 stay plain). Then, comparing charon's states
and policies (those whose reqid is not msec's) before and after: msecd on h2 restarted,
stopped with SIGTERM, reloaded with SIGHUP and with ``msecctl reload`` leaves charon's SAs and
policies exactly as they were; charon restarted on both hosts (new CHILD_SA, new SPIs) leaves
msec's (the states and policies with msec's reqids) as they were. The rules that make this
hold are in README.md ("Next to strongSwan").
"""

from __future__ import annotations

import select
import signal
import socket
import time

import pytest

from tests.host import charon as ch
from tests.host.daemon_proc import Msecd
from tests.kernel.group_configs import GROUP, GROUP_PORT, PSKS, gm_config, ks_config
from xfrm import XfrmSocket
from xfrm.owner import MSEC

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

UNICAST_PORT = 6000
MARKER = b"SW-COEXIST-PLAINTEXT-MARKER"
IKE_PSK = "strongswan next door 0123456789"
SPI_LOG = "installed 1 SA(s)"


def swanctl_conf(me, peer) -> str:
    return f"""\
connections {{
    peer {{
        version = 2
        local_addrs = {me.ip4}
        remote_addrs = {peer.ip4}
        proposals = aes128-sha256-ecp256
        local {{
            auth = psk
            id = {me.name}.example.net
        }}
        remote {{
            auth = psk
            id = {peer.name}.example.net
        }}
        children {{
            net {{
                mode = tunnel
                local_ts = {me.ip4}/32
                remote_ts = {peer.ip4}/32
                esp_proposals = aes128gcm16
                start_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-peer {{
        id-1 = h2.example.net
        id-2 = h3.example.net
        secret = "{IKE_PSK}"
    }}
}}
"""


def start_charon(host, workdir) -> ch.Charon:
    if not ch.available():
        pytest.fail(f"{ch.CHARON} or {ch.SWANCTL} missing: run tools/setup (installs "
                    "charon-systemd, strongswan-swanctl, libstrongswan-standard-plugins)",
                    pytrace=False)
    c = ch.Charon(host, workdir, plugins=ch.IKEV2_PLUGINS)
    c.configure(swanctl_conf(host, _peer[host.name]))
    c.start()
    c.load()
    return c


_peer: dict = {}


def snapshot(host, mine: bool) -> tuple[frozenset, frozenset]:
    """(states, policies) of ``host``: msec's (``mine``) or everyone else's (charon's), without
    counters and lifetimes' current use, so that traffic alone changes nothing here. charon's
    per-socket IKE bypass policies are not in the SPD dump (they live on its sockets)."""
    with XfrmSocket(host.ns) as x:
        states = x.dump_states()
        policies = x.dump_policies()
    sts = frozenset((str(s.src), str(s.dst), s.spi, s.reqid, s.mode, s.aead, s.cipher, s.auth,
                     s.selector) for s in states if MSEC.owns_state(s) == mine)
    pols = frozenset((p.selector, p.direction, p.action, p.priority,
                      tuple((str(t.src), str(t.dst), t.reqid, t.mode) for t in p.templates))
                     for p in policies if MSEC.owns_policy(p) == mine)
    return sts, pols


def charon_spis(host) -> set[int]:
    with XfrmSocket(host.ns) as x:
        return {s.spi for s in x.dump_states() if not MSEC.owns_state(s)}


def unicast(lab, src, dst, tag: bytes, n: int = 10) -> tuple[list[bytes], list[dict], bytes]:
    """``n`` datagrams src -> dst:UNICAST_PORT; what dst received, the capture, its bytes."""
    with dst.inside():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with src.inside():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    with rx, tx:
        rx.bind((dst.ip4, UNICAST_PORT))
        with lab.capture() as cap:
            time.sleep(0.3)
            for _ in range(n):
                tx.sendto(MARKER + tag, (dst.ip4, UNICAST_PORT))
                time.sleep(0.01)
            end = time.monotonic() + 30
            while len(got) < n and time.monotonic() < end:
                if select.select([rx], [], [], 0.5)[0]:
                    got.append(rx.recv(2048))
            time.sleep(0.3)
    with open(cap.path, "rb") as f:
        raw = f.read()
    return got, cap.packets(), raw


def multicast(lab, src, receivers, tag: bytes, n: int = 10):
    listeners = [h.listen(GROUP, GROUP_PORT) for h in receivers]
    try:
        with lab.capture() as cap:
            time.sleep(0.3)
            src.send(GROUP, GROUP_PORT, MARKER + tag, count=n, interval=0.01)
            got = [lst.wait(n, timeout=30) for lst in listeners]
            time.sleep(0.3)
    finally:
        for lst in listeners:
            lst.close()
    with open(cap.path, "rb") as f:
        raw = f.read()
    return got, cap.packets(), raw


def check_both_flow(lab, h2, h3, tek_spi: int, tag: bytes) -> None:
    """Unicast h2 -> h3 in charon's ESP, the group's multicast in msec's, nothing plain."""
    ours = charon_spis(h2) | charon_spis(h3)
    got, pkts, raw = unicast(lab, h2, h3, tag)
    assert got == [MARKER + tag] * 10, f"unicast through charon's tunnel: {len(got)} of 10"
    to_h3 = [p for p in pkts if p.get("src") == h2.ip4 and p.get("dst") == h3.ip4]
    assert to_h3 and {p["proto"] for p in to_h3} == {"esp"}, to_h3
    assert {p["spi"] for p in to_h3} <= ours and tek_spi not in {p["spi"] for p in to_h3}
    assert MARKER not in raw

    got, pkts, raw = multicast(lab, h2, [h3], tag)
    assert got == [[MARKER + tag] * 10], f"group traffic: {[len(g) for g in got]} of 10"
    to_group = [p for p in pkts if p.get("dst") == GROUP]
    assert to_group and {p["proto"] for p in to_group} == {"esp"}
    assert {p["spi"] for p in to_group} == {tek_spi}
    assert MARKER not in raw


def test_charon_ikev2_tunnel_next_to_msecd(netlab_factory, tmp_path, caplog):
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    _peer.update({h2.name: h3, h3.name: h2})
    d = {n: tmp_path / n for n in ("ks", "gm2", "gm3", "c2", "c3", "c2b", "c3b")}
    for p in d.values():
        p.mkdir()
    ks = Msecd(ks_config(d["ks"], h1.ip4), host=h1)
    gm2 = Msecd(gm_config(d["gm2"], h1.ip4, "gm2"), host=h2)
    gm3 = Msecd(gm_config(d["gm3"], h1.ip4, "gm3"), host=h3)
    daemons = [ks, gm2, gm3]
    charons: list[ch.Charon] = []
    try:
        # --- charon's IKEv2 tunnel h2 <-> h3 first, then msec's group on the same hosts
        charons += [start_charon(h2, d["c2"]), start_charon(h3, d["c3"])]
        charons[0].swanctl("--initiate", "--child", "net")
        assert len(charon_spis(h2)) == 2 and len(charon_spis(h3)) == 2
        with lab.capture() as cap:
            ks.start()
            gm2.start()
            gm3.start()
            gm2.wait_log(SPI_LOG, timeout=60)
            gm3.wait_log(SPI_LOG, timeout=60)
        # GDOI (UDP 848, ISAKMP) stays plain: no policy of charon's or msec's takes it
        gdoi = [p for p in cap.packets() if 848 in (p.get("sport"), p.get("dport"))]
        assert gdoi and {p["proto"] for p in gdoi} == {"udp"}
        tek_spi = int(ks.ctl_json("group", "show", "1001")["roles"][0]["teks"][0]["spi"], 16)
        check_both_flow(lab, h2, h3, tek_spi, b"-both")

        charon_before = {h.name: snapshot(h, mine=False) for h in (h2, h3)}
        msec_before = {h.name: snapshot(h, mine=True) for h in (h2, h3)}
        assert all(s and p for s, p in charon_before.values()), charon_before
        assert all(s and p for s, p in msec_before.values()), msec_before
        # charon's: 2 SAs (in, out) and 3 policies (in, out, fwd); msec's on a member: the
        # group's SA and its in and out policies
        assert all((len(s), len(p)) == (2, 3) for s, p in charon_before.values()), \
            {k: (len(s), len(p)) for k, (s, p) in charon_before.items()}
        assert all((len(s), len(p)) == (1, 2) for s, p in msec_before.values()), \
            {k: (len(s), len(p)) for k, (s, p) in msec_before.items()}

        def charon_untouched(step: str) -> None:
            for h in (h2, h3):
                assert snapshot(h, mine=False) == charon_before[h.name], f"{step}: {h.name}"

        # --- msecd on h2: SIGHUP reload, msecctl reload, SIGTERM, restart
        gm2.signal(signal.SIGHUP)
        gm2.wait_log("reload: no changes", timeout=30)
        charon_untouched("SIGHUP")
        assert gm2.ctl("reload").returncode == 0
        gm2.wait_log("reload: no changes", timeout=30, count=2)
        charon_untouched("msecctl reload")
        assert snapshot(h2, mine=True) == msec_before[h2.name]
        assert gm2.stop() == 0 and "stay in the kernel" in gm2.log()
        charon_untouched("SIGTERM")
        assert snapshot(h2, mine=True) == msec_before[h2.name]
        gm2 = Msecd(gm2.config, host=h2, log=d["gm2"] / "again.log")
        daemons.append(gm2)
        gm2.start()
        gm2.wait_log("adopted the SAs", timeout=60)
        charon_untouched("msecd restarted")
        check_both_flow(lab, h2, h3, tek_spi, b"-msecd-restarted")

        # --- charon restarted on both hosts: msec's states and policies stay as they were
        old_spis = charon_spis(h2)
        for c in charons:
            c.stop()
        with lab.capture() as cap:
            charons = [start_charon(h2, d["c2b"]), start_charon(h3, d["c3b"])]
            charons[1].swanctl("--initiate", "--child", "net")
        # charon's IKE (IKE_SA_INIT on UDP 500, IKE_AUTH on 500 or 4500) stays plain next to
        # msec's policies
        ike = [p for p in cap.packets() if {500, 4500} & {p.get("sport"), p.get("dport")}]
        assert len(ike) >= 4 and {p["proto"] for p in ike} == {"udp"}
        assert charon_spis(h2) and not (charon_spis(h2) & old_spis)
        for h in (h2, h3):
            assert snapshot(h, mine=True) == msec_before[h.name], h.name
        check_both_flow(lab, h2, h3, tek_spi, b"-charon-restarted")
    finally:
        for c in charons:
            c.stop()
        for m in daemons:
            m.stop()
    for m in daemons:
        log = m.log()
        assert not any(s in log for s in PSKS.values())
        assert "does not decode" not in log  # charon's per-socket policies are not SPD entries
    assert "does not decode" not in caplog.text
