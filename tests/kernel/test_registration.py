"""Registration end to end (issue 5): real msecd processes with config files in netlab hosts,
a kernel with ESP (the kernel lab).

h1 is the key server (10.77.0.1:848); h2, h3, h4 are members gm1..gm3; h5 is gm9, whose PSK
the key server knows but who is not authorized for the group; h6 presents a wrong PSK.

Checked: every authorized member registers and its kernel holds the SA and policies the
policy says (SPI = the key server's TEK); multicast from one member reaches the others, only
ESP on the wire (no plaintext marker), decrypted by each receiver; gm9 and the wrong-PSK host
get no SAs; the key server stops and traffic keeps flowing; after its restart (same state
dir) it hands out the same TEK, and a member registering afterwards interoperates with the
members registered before; a restarted member adopts its SAs; a bad reload is refused and the
key server keeps serving.
"""

from __future__ import annotations

import os
import re
import stat
import time

import pytest

from tests.host.daemon_proc import Msecd

pytestmark = pytest.mark.kernel

GROUP = "239.1.1.1"
PORT = 5000
MARKER = b"MSEC-REGISTRATION-PLAINTEXT-MARKER"
PSKS = {f"gm{i}": f"{i:02d}" * 16 for i in (1, 2, 3, 9)}
SPI_LOG = "installed 1 SA(s)"


def _write(path, text):
    path.write_text(text)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


def ks_config(d, ks_ip):
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[keyserver]\nlisten = ["{ks_ip}"]\nport = 848\n')
    for ident, secret in PSKS.items():
        text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{secret}"\n'
    text += ('[[keyserver.group]]\nid = 1001\nname = "video"\n'
             'authorize = { psk_identities = ["gm1", "gm2", "gm3"] }\n'
             '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\n'
             f'dst = "{GROUP}"\nprotocol = "udp"\ndst_port = {PORT}\nmode = "tunnel"\n'
             'cipher = "aes-cbc-128-hmac-sha256"\nlifetime = "1h"\n')
    return _write(d / "msecd.toml", text)


def gm_config(d, ks_ip, ident, secret):
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[[member.group]]\nid = 1001\nname = "video"\nkey_servers = ["{ks_ip}"]\n'
            f'credentials = {{ psk_identity = "{ident}", psk = "{secret}" }}\n')
    return _write(d / "msecd.toml", text)


def states(host):
    """[(dst, spi, proto)] of the host's XFRM states, from `ip xfrm state`."""
    out = []
    for m in re.finditer(r"^src \S+ dst (\S+)\n\s+proto (\S+) spi (0x[0-9a-f]+)",
                         host.run("ip", "xfrm", "state").stdout, re.M):
        out.append((m.group(1), int(m.group(3), 16), m.group(2)))
    return out


def xfrm_text(host, what):
    return host.run("ip", "xfrm", what).stdout


def traffic(lab, sender, receivers, n=20, marker=MARKER):
    listeners = [h.listen(GROUP, PORT) for h in receivers]
    try:
        with lab.capture() as cap:
            time.sleep(0.3)
            sender.send(GROUP, PORT, marker, count=n, interval=0.01)
            got = [lst.wait(n, timeout=60) for lst in listeners]
            time.sleep(0.3)
    finally:
        for lst in listeners:
            lst.close()
    pkts = cap.packets()
    with open(cap.path, "rb") as f:
        raw = f.read()
    return got, pkts, raw


@pytest.fixture
def lab(netlab_factory):
    return netlab_factory(6)


def test_registration_end_to_end(lab, tmp_path):
    h1, h2, h3, h4, h5, h6 = lab.hosts
    ks_ip = h1.ip4
    dirs = {}
    for name in ("ks", "gm1", "gm2", "gm3", "gm9", "bad"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
    ks = Msecd(ks_config(dirs["ks"], ks_ip), host=h1)
    gms = [Msecd(gm_config(dirs[f"gm{i}"], ks_ip, f"gm{i}", PSKS[f"gm{i}"]), host=h)
           for i, h in ((1, h2), (2, h3), (3, h4))]
    gm9 = Msecd(gm_config(dirs["gm9"], ks_ip, "gm9", PSKS["gm9"]), host=h5)
    bad = Msecd(gm_config(dirs["bad"], ks_ip, "gm1", "ff" * 16), host=h6)
    everyone = [ks, *gms, gm9, bad]
    try:
        ks.start(timeout=120)
        for d in (*gms, gm9, bad):
            d.start(timeout=120)
        for d in gms:
            d.wait_log(SPI_LOG, timeout=120)
        gm9.wait_log("registration with", timeout=120)
        bad.wait_log("registration with", timeout=120)

        # --- the key server's view
        show = ks.ctl_json("group", "show", "1001")["roles"][0]
        assert show["members"] == 3
        ks_spis = {int(t["spi"], 16) for t in show["teks"]}
        assert len(ks_spis) == 1
        spi = ks_spis.pop()
        members = ks.ctl_json("members", "1001")["members"]
        assert sorted(m["address"] for m in members) == sorted([h2.ip4, h3.ip4, h4.ip4])

        # --- installed SAs match the policy
        for h, d in zip((h2, h3, h4), gms):
            sts = states(h)
            assert sts == [(GROUP, spi, "esp")], sts
            text = xfrm_text(h, "state")
            assert "cbc(aes)" in text and "hmac(sha256)" in text and "mode tunnel" in text
            pol = xfrm_text(h, "policy")
            assert f"src 10.77.0.0/24 dst {GROUP}/32 proto udp dport {PORT}" in pol
            assert "dir out" in pol and "dir in" in pol
            g = d.ctl_json("group", "show", "1001")["roles"][0]
            assert g["state"] == "registered" and int(g["teks"][0]["spi"], 16) == spi
        # --- unauthorized and wrong-PSK members: nothing
        for h, d in ((h5, gm9), (h6, bad)):
            assert states(h) == []
            g = d.ctl_json("group", "show", "1001")["roles"][0]
            assert g["state"] != "registered" and g["teks"] == [] and g["last_error"]
        klog = ks.log()
        assert "key-id 'gm9'" in klog and "refused" in klog
        assert "phase 1 with" in klog and "failed" in klog

        # --- traffic: h2 -> h3, h4 encrypted on the wire, decrypted at the receivers
        got, pkts, raw = traffic(lab, h2, [h3, h4])
        assert all(len(g) == 20 and set(g) == {MARKER} for g in got), [len(g) for g in got]
        esp = [p for p in pkts if p.get("proto") == "esp"]
        assert len(esp) >= 20 and {p["spi"] for p in esp} == {spi}
        assert not [p for p in pkts if p.get("proto") == "udp" and p.get("dport") == PORT]
        assert MARKER not in raw

        # --- key server down: traffic keeps flowing (SAs are in the kernel)
        assert ks.stop() == 0
        got, _, raw = traffic(lab, h3, [h2, h4], marker=MARKER + b"-ks-down")
        assert all(len(g) == 20 for g in got) and MARKER not in raw

        # --- key server restarted (same state dir): same TEK; gm3 registers afresh
        ks2 = Msecd(ks.config, host=h1, log=dirs["ks"] / "ks2.log")
        everyone.append(ks2)
        ks2.start(timeout=120)
        assert {int(t["spi"], 16) for t in
                ks2.ctl_json("group", "show", "1001")["roles"][0]["teks"]} == {spi}
        assert gms[2].stop() == 0
        h4.run("ip", "xfrm", "policy", "flush")  # h4's netns is private to this test
        h4.run("ip", "xfrm", "state", "flush")
        gm3b = Msecd(gms[2].config, host=h4, log=dirs["gm3"] / "again.log")
        everyone.append(gm3b)
        gm3b.start(timeout=120)
        gm3b.wait_log(SPI_LOG, timeout=120)
        got, _, raw = traffic(lab, h4, [h2, h3], marker=MARKER + b"-after")
        assert all(len(g) == 20 for g in got) and MARKER not in raw

        # --- a restarted member adopts its SAs instead of removing them
        assert gms[0].stop() == 0
        assert "stay in the kernel" in gms[0].log()
        gm1b = Msecd(gms[0].config, host=h2, log=dirs["gm1"] / "again.log")
        everyone.append(gm1b)
        gm1b.start(timeout=120)
        gm1b.wait_log("adopted the SAs", timeout=120)
        gm1b.wait_log("SAs unchanged", timeout=120)
        assert states(h2) == [(GROUP, spi, "esp")]

        # --- a bad reload is refused; the key server keeps serving
        good = ks2.config.read_text()
        ks2.config.write_text(good.replace('cipher = "aes-cbc-128-hmac-sha256"',
                                           'cipher = "des"'))
        r = ks2.ctl("reload")
        assert r.returncode == 1 and "keyserver.group[0].tek[0].cipher" in r.stderr
        assert ks2.ctl_json("status")["last_reload"]["ok"] is False
        ks2.config.write_text(good)
        assert ks2.ctl_json("group", "show", "1001")["roles"][0]["members"] == 3
    finally:
        for d in everyone:
            d.stop()
    for d in everyone:
        log = d.log()
        for secret in PSKS.values():
            assert secret not in log
