"""GROUPKEY-PUSH in the kernel lab: real msecd processes in netlab hosts; `msecctl rekey` on
the key server gives every member new TEKs by PUSH (multicast rekey address, plus unicast),
the members install them make before break, and group traffic keeps flowing."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.host.daemon_proc import Msecd
from tests.kernel.test_registration import GROUP, MARKER, PORT, PSKS, SPI_LOG, gm_config, states, traffic

pytestmark = pytest.mark.kernel


def _ks_config(d, ks_ip):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = d / "push.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    os.chmod(pem, 0o600)
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[keyserver]\nlisten = ["{ks_ip}"]\nport = 848\n')
    for ident in ("gm1", "gm2", "gm3"):
        text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{PSKS[ident]}"\n'
    text += ('[[keyserver.group]]\nid = 1001\nname = "video"\n'
             'authorize = { psk_identities = ["gm1", "gm2", "gm3"] }\n'
             '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\n'
             f'dst = "{GROUP}"\nprotocol = "udp"\ndst_port = {PORT}\nmode = "tunnel"\n'
             'cipher = "aes-gcm-128"\nlifetime = "1h"\n'
             '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
             f'signing_key = "{pem}"\nrekey_address = "239.192.0.1"\nrekey_port = 848\n'
             'lifetime = "1d"\n')
    p = d / "msecd.toml"
    p.write_text(text)
    os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    return p


def test_traffic_keeps_flowing_across_a_rekey(netlab_factory, tmp_path):
    lab = netlab_factory(4)
    h1, h2, h3, h4 = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2", "gm3")}
    for p in dirs.values():
        p.mkdir()
    ks = Msecd(_ks_config(dirs["ks"], h1.ip4), host=h1)
    gms = [Msecd(gm_config(dirs[f"gm{i}"], h1.ip4, f"gm{i}", PSKS[f"gm{i}"]), host=h)
           for i, h in ((1, h2), (2, h3), (3, h4))]
    try:
        ks.start(timeout=120)
        for d in gms:
            d.start(timeout=120)
        for d in gms:
            d.wait_log(SPI_LOG, timeout=120)
            d.wait_log("listening for GROUPKEY-PUSH", timeout=120)
        old = {int(t["spi"], 16) for t in ks.ctl_json("group", "show", "1001")["roles"][0]["teks"]}
        got, _, _ = traffic(lab, h2, [h3, h4])
        assert all(len(g) == 20 for g in got)

        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        new = {int(s, 16) for s in r["teks"]}
        assert new and not new & old
        for d in gms:
            d.wait_log(f"rekeyed: SEQ {r['seq']}", timeout=120)
            g = d.ctl_json("group", "show", "1001")["roles"][0]
            held = {int(t["spi"], 16) for t in g["teks"]}
            assert new <= held <= new | old and g["last_seq"] == r["seq"]
        for h in (h2, h3, h4):  # make before break: the new SA is there at once, the old
            spis = {spi for dst, spi, proto in states(h) if dst == GROUP}  # until it retires
            assert new <= spis <= new | old, (h.name, spis)
        for d in gms:  # the sender moved to the new SA and the old one went
            d.wait_log("removed SA(s)", timeout=120)
        for h in (h2, h3, h4):
            assert {spi for dst, spi, proto in states(h) if dst == GROUP} == new, h.name

        got, pkts, raw = traffic(lab, h3, [h2, h4], marker=MARKER + b"-rekeyed")
        assert all(len(g) == 20 for g in got), [len(g) for g in got]
        assert MARKER not in raw
        assert {p["spi"] for p in pkts if p.get("proto") == "esp"} <= new
    finally:
        for d in (*gms, ks):
            d.stop()
