"""TEK rotations under traffic, in the kernel lab: real msecd processes, the shortest lifetimes the
policy takes (TEK 60 s, KEK 300 s), two senders at 100 datagrams per second each, a rekey every
few seconds, one of them a KEK rotation (``msecctl evict`` of a fourth member: an LKH update
with a new KEK, then new TEKs under it).  Every receiver gets every datagram exactly once;
the evicted member's kernel keeps no SA of the group; each member's kernel, sampled
all along, never holds more than two SAs for the group's TEK policy (make before break:
new SA inbound at once, senders switched after the activation delay, the previous SA gone
after the deactivation delay); afterwards only the last TEK's SA is left."""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
from collections import Counter

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.host.daemon_proc import Msecd
from tests.kernel.test_registration import GROUP, PORT, PSKS, SPI_LOG, gm_config
from tests.kernel.traffic import TAG, Sampler, Sender
from xfrm.socket import XfrmSocket

pytestmark = pytest.mark.kernel

REKEYS = 4
REKEY_EVERY = 8.0  # seconds: longer than the deactivation delay (6 s), shorter than the TEK


def _ks_config(d, ks_ip):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = d / "push.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    os.chmod(pem, 0o600)
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[keyserver]\nlisten = ["{ks_ip}"]\nport = 848\n')
    for ident in ("gm1", "gm2", "gm3", "gm9"):
        text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{PSKS[ident]}"\n'
    text += ('[[keyserver.group]]\nid = 1001\nname = "video"\n'
             'authorize = { psk_identities = ["gm1", "gm2", "gm3", "gm9"] }\n'
             '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\n'
             f'dst = "{GROUP}"\nprotocol = "udp"\ndst_port = {PORT}\nmode = "tunnel"\n'
             'cipher = "aes-gcm-128"\nlifetime = "60s"\n'
             '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
             f'signing_key = "{pem}"\nrekey_address = "239.192.0.1"\nrekey_port = 848\n'
             'lifetime = "300s"\n')
    p = d / "msecd.toml"
    p.write_text(text)
    os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    return p


def test_traffic_across_tek_rotations_exactly_once_two_sas_at_most(netlab_factory, tmp_path):
    lab = netlab_factory(5)
    h1, h2, h3, h4, h5 = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2", "gm3", "gm9")}
    for p in dirs.values():
        p.mkdir()
    ks = Msecd(_ks_config(dirs["ks"], h1.ip4), host=h1)
    gm_hosts = [h2, h3, h4]
    members = {h.name: Msecd(gm_config(dirs[f"gm{i}"], h1.ip4, f"gm{i}", PSKS[f"gm{i}"]),
                             host=h) for i, h in ((1, h2), (2, h3), (3, h4))}
    # gm9 is evicted halfway: an LKH update with a new KEK, then new TEKs under it
    gm9 = Msecd(gm_config(dirs["gm9"], h1.ip4, "gm9", PSKS["gm9"]), host=h5)
    sampler = None
    senders = []
    try:
        ks.start(timeout=120)
        for d in (*members.values(), gm9):
            d.start(timeout=120)
        for d in (*members.values(), gm9):
            d.wait_log(SPI_LOG, timeout=120)
            d.wait_log("listening for GROUPKEY-PUSH", timeout=120)
        sampler = Sampler(gm_hosts)
        sampler.start()
        listeners = {h.name: h.listen(GROUP, PORT) for h in gm_hosts}
        drain_stop = threading.Event()

        def drain():
            while not drain_stop.is_set():
                for lst in listeners.values():
                    lst.drain()
                time.sleep(0.02)
        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()

        seqs, spis = [], []
        # a fresh TEK first: the registrations' one has less than its 20 s left
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        seqs.append(r["seq"])
        spis.append({int(s, 16) for s in r["teks"]})
        for d in members.values():
            d.wait_log(f"rekeyed: SEQ {r['seq']}", timeout=60)
        senders = [Sender(h2, b"A"), Sender(h3, b"B")]
        for s in senders:
            s.start()
        for i in range(REKEYS):
            time.sleep(REKEY_EVERY)
            if i == 1:  # the KEK rotation: evict gm9
                r = ks.ctl_json("evict", "1001", "gm9")
                assert r["ok"] and r["evicted"] == ["key-id:gm9"], r
                seqs.append(r["seqs"][-1])
            else:
                r = ks.ctl_json("rekey", "1001")
                assert r["ok"], r
                seqs.append(r["seq"])
            spis.append({int(s, 16) for s in r["teks"]})
        for d in members.values():
            d.wait_log(f"new TEK SPIs 0x{min(spis[-1]):08x}", timeout=60)
            d.wait_log(f"sending on SPI 0x{min(spis[-1]):08x}", timeout=60)
            assert "new KEK" in d.log()  # the KEK rotated under traffic
        time.sleep(3.0)  # traffic under the last TEK too
        for s in senders:
            s.stop.set()
        for s in senders:
            s.join(timeout=30)
        sent = {s.name_tag: s.sent for s in senders}
        expect = {h2.name: [b"B"], h3.name: [b"A"], h4.name: [b"A", b"B"]}

        def complete():
            for h, tags in expect.items():
                got = Counter(d for d in listeners[h].drain())
                if sum(got.values()) < sum(sent[t] for t in tags):
                    return False
            return True
        end = time.monotonic() + 60
        while not complete() and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(0.5)  # anything late or duplicated shows up too
        drain_stop.set()
        drainer.join(timeout=10)
        for h, tags in expect.items():
            got = Counter(listeners[h].drain())
            for t in tags:
                want = Counter(TAG + t + struct.pack("!I", i) for i in range(sent[t]))
                mine = Counter({k: v for k, v in got.items() if k.startswith(TAG + t)})
                missing = sum((want - mine).values())
                dup = sum((mine - want).values())
                assert missing == 0 and dup == 0, (h, t, sent[t], missing, dup)

        # the old SAs are gone afterwards: only the last TEK's SA in every member's kernel
        def only_last():
            return all(set().union(*sampler.last.get(n, {}).values()) == spis[-1]
                       for n in sampler.socks)
        end = time.monotonic() + 60
        while not only_last() and time.monotonic() < end:
            time.sleep(0.2)
        samples = sampler.samples
        while sampler.samples < samples + 2 and time.monotonic() < end:  # a fresh sample
            time.sleep(0.1)
        sampler.stop.set()
        sampler.join(timeout=10)
        left = dict(sampler.last)
        assert all(set().union(*v.values()) == spis[-1] for v in left.values()), left
        assert sampler.samples > 50
        assert all(sampler.most[n] == 2 for n in members), sampler.most  # never 3
        # the evicted member removed every SA of the group at once and keeps none
        gm9.wait_log("evicted from the group", timeout=60)
        with XfrmSocket(h5.ns) as x:
            left9 = [st for st in x.dump_states(owned=True) if str(st.dst) == GROUP]
        assert left9 == [], left9
        assert gm9.ctl_json("group", "show", "1001")["roles"][0]["teks"] == []
        for d in members.values():
            g = d.ctl_json("group", "show", "1001")["roles"][0]
            assert {int(t["spi"], 16) for t in g["teks"]} == spis[-1]
            assert g["teks"][0]["role"] == "current" and g["teks"][0]["outbound"]
        print(f"\nrotation figures: sent {sent}, received "
              f"{ {n: len(listeners[n].received) for n in members} }, "
              f"{len(seqs)} rekeys, most SAs per TEK policy {dict(sampler.most)}, "
              f"{sampler.samples} kernel samples")
    finally:
        for s in senders:
            s.stop.set()
        if sampler is not None:
            sampler.stop.set()
            sampler.join(timeout=10)
            sampler.close()
        for d in (*members.values(), gm9, ks):
            d.stop()
