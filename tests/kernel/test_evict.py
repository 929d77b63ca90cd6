"""Eviction in the kernel lab: real msecd processes (key server h1, members gm1..gm3 on h2..h4),
LKH on, AES-GCM-128 group SA.

Evicting gm3 (``msecctl evict``, or a reload that takes gm3 out of the group's authorization):
gm1 and gm2 keep exchanging multicast without losing a datagram across the eviction rekey;
what is sent afterwards reaches gm3's kernel as ESP under an SPI it has no SA for (its
XfrmInNoStates counter rises) and its application gets nothing; scapy's ESP implementation,
given every key gm3's kernel ever held, cannot decrypt it; gm3's new registrations are refused
and ``msecctl members`` says who was evicted, when and why.  A key server restart between two
evictions keeps the LKH tree, SEQ and keys, and the second eviction works.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import struct
import threading
import time
from collections import Counter

import pytest

from tests.host.daemon_proc import Msecd
from tests.kernel.test_registration import GROUP, PORT, PSKS, SPI_LOG, gm_config
from tests.kernel.traffic import TAG, Sender, missing_runs

pytestmark = pytest.mark.kernel

AFTER = b"MSEC-AFTER-EVICTION"


def ks_config(d, ks_ip):
    """Key server of group 1001 for gm1..gm3: AES-GCM-128 TEK, KEK (LKH), long lifetimes so
    nothing rotates by itself during a test."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = d / "push.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
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


def kernel_keys(host) -> dict[int, bytes]:
    """{SPI: AEAD key||salt} of the group's SAs in the host's kernel (``ip xfrm state``)."""
    out = {}
    text = host.run("ip", "xfrm", "state").stdout
    for block in re.split(r"\n(?=src )", text):
        m = re.match(r"src \S+ dst (\S+)\n\s+proto esp spi (0x[0-9a-f]+)", block)
        k = re.search(r"aead rfc4106\(gcm\(aes\)\) 0x([0-9a-f]+) 128", block)
        if m and k and m.group(1) == GROUP:
            out[int(m.group(2), 16)] = bytes.fromhex(k.group(1))
    return out


def no_states(host) -> int:
    def read() -> str:
        with open("/proc/net/xfrm_stat") as f:
            return f.read()
    stats = dict(line.split() for line in host.call(read).splitlines())
    return int(stats["XfrmInNoStates"])


class KeyWatcher(threading.Thread):
    """Every key a host's kernel holds for the group, read over and over until stopped."""

    def __init__(self, host) -> None:
        super().__init__(daemon=True)
        self.host = host
        self.keys: dict[int, bytes] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.keys.update(kernel_keys(self.host))
            time.sleep(0.2)


def scapy_cannot_decrypt(frames: list[bytes], keys: dict[int, bytes], sender_ip: str) -> int:
    """Try every key on every captured ESP frame; returns how many frames were tried.  Fails
    if one decrypts."""
    from scapy.layers.inet import IP, Ether
    from scapy.layers.ipsec import ESP, SecurityAssociation

    tried = 0
    for f in frames:
        pkt = Ether(f)
        if not pkt.haslayer(ESP) or pkt[IP].dst != GROUP:
            continue
        tried += 1
        for spi_held, key in keys.items():
            sa = SecurityAssociation(ESP, spi=pkt[ESP].spi, crypt_algo="AES-GCM", crypt_key=key,
                                     crypt_icv_size=16,
                                     tunnel_header=IP(src=sender_ip, dst=GROUP))
            try:
                inner = sa.decrypt(pkt[IP])
            except Exception:
                continue  # ICV mismatch: the key does not fit
            raise AssertionError(f"gm3's key of SPI 0x{spi_held:08x} decrypted a datagram sent "
                                 f"after its eviction: {bytes(inner)[:60]!r}")
    return tried


def frames(pcap: str) -> list[bytes]:
    from tools.netlab import read_pcap
    return [frame for _ts, frame, _lt in read_pcap(pcap)]


class Lab:
    """Key server and three members, registered and listening for PUSH."""

    def __init__(self, netlab_factory, tmp_path) -> None:
        self.lab = netlab_factory(4)
        self.h1, self.h2, self.h3, self.h4 = self.lab.hosts
        self.dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2", "gm3")}
        for p in self.dirs.values():
            p.mkdir()
        self.ks_cfg = ks_config(self.dirs["ks"], self.h1.ip4)
        self.ks = Msecd(self.ks_cfg, host=self.h1)
        self.members = {f"gm{i}": Msecd(gm_config(self.dirs[f"gm{i}"], self.h1.ip4, f"gm{i}",
                                                  PSKS[f"gm{i}"]), host=h)
                        for i, h in ((1, self.h2), (2, self.h3), (3, self.h4))}

    def start(self) -> None:
        self.ks.start(timeout=120)
        for d in self.members.values():
            d.start(timeout=120)
        for d in self.members.values():
            d.wait_log(SPI_LOG, timeout=120)
            d.wait_log("listening for GROUPKEY-PUSH", timeout=120)

    def stop(self) -> None:
        for d in (*self.members.values(), self.ks):
            d.stop()


def _wait(cond, timeout=60.0, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def evict_and_check(t: Lab, do_evict, reason_text: str) -> None:
    """The common part: traffic gm1 <-> gm2 across the eviction of gm3 (``do_evict()``),
    then the checks on gm3."""
    h2, h3, h4 = t.h2, t.h3, t.h4
    watcher = KeyWatcher(h4)
    watcher.start()
    listeners = {h.name: h.listen(GROUP, PORT) for h in (h2, h3, h4)}
    senders = [Sender(h2, b"A"), Sender(h3, b"B")]
    drain_stop = threading.Event()

    def drain():  # keep the sockets' receive buffers from filling up
        while not drain_stop.is_set():
            for lst in listeners.values():
                lst.drain()
            time.sleep(0.02)
    drainer = threading.Thread(target=drain, daemon=True)
    try:
        drainer.start()
        for s in senders:
            s.start()
        _wait(lambda: watcher.keys, what="gm3's keys read from its kernel")
        before_spis = set(kernel_keys(h2))
        time.sleep(1.0)
        marks = {"evict": [s.sent for s in senders]}
        do_evict()
        marks["pushed"] = [s.sent for s in senders]
        # gm1 and gm2 take the eviction rekey and move their senders to the new TEK
        new_spis = _wait(lambda: set(kernel_keys(h2)) - before_spis or None,
                         what="a new TEK in gm1's kernel")
        for name in ("gm1", "gm2"):
            t.members[name].wait_log("rekeyed: SEQ", timeout=60)
            t.members[name].wait_log(f"sending on SPI 0x{min(new_spis):08x}", timeout=60)
            marks[f"{name} switched"] = [s.sent for s in senders]
        time.sleep(1.0)
        for s in senders:
            s.stop.set()
        for s in senders:
            s.join(timeout=30)
        sent = {s.name_tag: s.sent for s in senders}
        want = {h2.name: b"B", h3.name: b"A"}

        def complete():
            return all(sum(1 for d in listeners[h].drain() if d.startswith(TAG + tag))
                       >= sent[tag] for h, tag in want.items())
        try:
            _wait(complete, what="every datagram at gm1 and gm2")
        except AssertionError:
            report = {}
            for h, tag in want.items():
                got = {struct.unpack("!I", d[-4:])[0] for d in listeners[h].drain()
                       if d.startswith(TAG + tag)}
                report[h] = (sent[tag], len(got), missing_runs(got, sent[tag])[:20])
            report["marks"] = marks
            logs = {h.name: [x for x in h.call(lambda: open("/proc/net/xfrm_stat").read())
                             .splitlines() if not x.endswith("\t0")] for h in (h2, h3)}
            raise AssertionError(f"lost datagrams (sent, missing): {report}\n{logs}") from None
        time.sleep(0.5)
        for h, tag in want.items():
            got = Counter(d for d in listeners[h].drain() if d.startswith(TAG + tag))
            expect = Counter(TAG + tag + struct.pack("!I", i) for i in range(sent[tag]))
            assert got == expect, (h, tag, sent[tag], sum((expect - got).values()),
                                   sum((got - expect).values()))

        drain_stop.set()
        drainer.join(timeout=10)
        # after the eviction: gm3's kernel sees ESP under an SPI it has no SA for, its
        # application gets nothing, and none of its keys decrypts the datagrams
        assert not set(kernel_keys(h4)) & new_spis
        before = no_states(h4)
        gm3_rx = len(listeners[h4.name].drain())
        with t.lab.capture() as cap:
            time.sleep(0.3)
            h2.send(GROUP, PORT, AFTER, count=20, interval=0.02)
            listeners[h3.name].wait(sum(1 for d, _ in listeners[h3.name].received) + 20,
                                    timeout=30)
            time.sleep(0.5)
        assert sum(1 for d in listeners[h3.name].drain() if d == AFTER) == 20
        assert listeners[h4.name].count(timeout=0.5) == gm3_rx
        assert not any(d == AFTER for d in listeners[h4.name].drain())
        assert no_states(h4) - before >= 20
        watcher.stop.set()
        watcher.join(timeout=10)
        assert watcher.keys, "gm3's keys were never read from its kernel"
        raw = frames(cap.path)
        assert all(AFTER not in f for f in raw)
        assert scapy_cannot_decrypt(raw, watcher.keys, h2.ip4) >= 10
        # the check can fail: gm2's current key decrypts the same frames
        with pytest.raises(AssertionError, match="decrypted"):
            scapy_cannot_decrypt(raw, {s: k for s, k in kernel_keys(h3).items()
                                       if s in new_spis}, h2.ip4)

        # gm3 stays out: its registrations are refused, msecctl says who, when and why
        t.ks.wait_log("refused", timeout=120)
        ms = {m["identity"]: m for m in t.ks.ctl_json("members", "1001")["members"]}
        assert ms["key-id:gm3"]["state"] == "evicted" and reason_text in ms["key-id:gm3"]["reason"]
        assert ms["key-id:gm1"]["state"] == ms["key-id:gm2"]["state"] == "registered"
        log = t.ks.log()
        assert re.search(r"evicted .*gm3.*" + re.escape(reason_text), log), log[-3000:]
        g3 = t.members["gm3"].ctl_json("group", "show", "1001")["roles"][0]
        assert not {int(x["spi"], 16) for x in g3["teks"]} & new_spis
    finally:
        drain_stop.set()
        watcher.stop.set()
        for s in senders:
            s.stop.set()
        for lst in listeners.values():
            lst.close()


def test_msecctl_evict_gm3(netlab_factory, tmp_path):
    t = Lab(netlab_factory, tmp_path)
    try:
        t.start()

        def evict():
            r = t.ks.ctl_json("evict", "1001", "gm3", "--reason", "lost laptop")
            assert r["ok"] and r["evicted"] == ["key-id:gm3"], r
            return r
        evict_and_check(t, evict, "lost laptop")
        r = t.ks.ctl_json("deny", "1001")
        assert [d["identity"] for d in r["denied"]] == ["key-id:gm3"]
    finally:
        t.stop()


def test_reload_without_gm3_evicts_it(netlab_factory, tmp_path):
    t = Lab(netlab_factory, tmp_path)
    try:
        t.start()

        def evict():
            text = t.ks_cfg.read_text()
            assert 'psk_identities = ["gm1", "gm2", "gm3"]' in text
            t.ks_cfg.write_text(text.replace('psk_identities = ["gm1", "gm2", "gm3"]',
                                             'psk_identities = ["gm1", "gm2"]'))
            r = t.ks.ctl_json("reload")
            assert r["ok"], r
            assert any("evicted" in c and "gm3" in c for c in r["changes"]), r
            return r
        evict_and_check(t, evict, "no longer authorized")
    finally:
        t.stop()


def _store_state(state_dir) -> dict:
    """The key server's durable group state, read from its SQLite store."""
    db = sqlite3.connect(f"file:{state_dir}/gcks.sqlite3?mode=ro", uri=True)
    try:
        out = {}
        for table in ("kek", "tek", "lkh_tree", "lkh_chunk", "members"):
            out[table] = sorted(db.execute(f"SELECT * FROM {table}").fetchall())
        return out
    finally:
        db.close()


def test_key_server_restart_between_two_evictions(netlab_factory, tmp_path):
    t = Lab(netlab_factory, tmp_path)
    try:
        t.start()
        r = t.ks.ctl_json("evict", "1001", "gm3")
        assert r["ok"], r
        for name in ("gm1", "gm2"):
            t.members[name].wait_log(f"new TEK SPIs {r['teks'][0]}", timeout=60)
        show = t.ks.ctl_json("group", "show", "1001")["roles"][0]
        assert t.ks.stop() == 0
        state = _store_state(t.dirs["ks"] / "state")
        t.ks = Msecd(t.ks_cfg, host=t.h1, log=t.dirs["ks"] / "ks2.log")
        t.ks.start(timeout=120)
        show2 = t.ks.ctl_json("group", "show", "1001")["roles"][0]
        assert show2["teks"] == show["teks"] and show2.get("seq") == show.get("seq")
        assert _store_state(t.dirs["ks"] / "state") == state  # tree, SEQ and keys unchanged

        before = kernel_keys(t.h2)
        r = t.ks.ctl_json("evict", "1001", "gm2", "--reason", "second")
        assert r["ok"] and r["evicted"] == ["key-id:gm2"], r
        assert r["seqs"][0] == show["seq"] + 1, (r, show)  # SEQ went on from the stored one
        t.members["gm1"].wait_log(f"new TEK SPIs {r['teks'][0]}", timeout=60)
        t.members["gm2"].wait_log("evicted from the group", timeout=60)
        new = _wait(lambda: set(kernel_keys(t.h2)) - set(before) or None,
                    what="gm1's new TEK")
        assert not set(kernel_keys(t.h3)) & new
        ms = {m["identity"]: m["state"] for m in t.ks.ctl_json("members", "1001")["members"]}
        assert ms == {"key-id:gm1": "registered", "key-id:gm2": "evicted",
                      "key-id:gm3": "evicted"}
    finally:
        t.stop()
