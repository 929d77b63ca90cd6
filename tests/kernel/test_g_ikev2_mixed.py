"""One group, two protocols, in the kernel lab: a key server (h1) serves group 1001 over GDOI
and G-IKEv2 (RFC 9838); gm1 (h2) registers over GDOI, gm2 (h3) and gm3 (h4) over G-IKEv2 as
senders (``sender = true``), all with real msecd processes and ESP in the kernel.

Checked: all three hold the key server's TEK; multicast from each reaches the other two as
ESP only (no plaintext on the wire).  Then ``msecctl evict`` of gm3: the LKH eviction reaches
gm2 as GSA_REKEY and gm1 as GROUPKEY-PUSH, both move to the same new TEK, and traffic between
them flows on it; gm3 holds no new key, its kernel sees the datagrams sent afterwards as ESP
under an SPI it has no SA for (XfrmInNoStates rises) and its application gets none of them.
The TEK is AES-GCM: each G-IKEv2 sender got its own Sender-ID (RFC 9838 section 2.5.1), so its
GSA_REKEY receiver installs the eviction's counter-mode TEK for sending (else gm2 would not
switch to it: the TEK would be withheld and gm2 would register again).

The same again with ``g_ikev2_rekey = "inband"``: the G-IKEv2 members register without a Rekey
SA and the eviction reaches gm2 as GSA_INBAND_REKEY over the IKE SA its registration kept
(acknowledged) and gm3 as its exclusion, while gm1 gets the GROUPKEY-PUSH as before.
"""

from __future__ import annotations

import time

import pytest

from tests.host.daemon_proc import Msecd
from tests.kernel.test_evict import ks_config as evict_ks_config
from tests.kernel.test_evict import no_states
from tests.kernel.test_registration import GROUP, MARKER, PORT, PSKS, SPI_LOG, states, traffic
from tests.kernel.test_registration import gm_config as registration_gm_config

pytestmark = pytest.mark.kernel

AFTER = b"MSEC-AFTER-G-IKEV2-EVICTION"
def ks_config(d, ks_ip, g_ikev2_rekey="gsa_rekey"):
    """test_evict's key server (gm1..gm3, AES-GCM-128 TEK, LKH KEK), serving G-IKEv2 too."""
    p = evict_ks_config(d, ks_ip)
    text = p.read_text()
    assert text.count('name = "video"\n') == 1
    p.write_text(text.replace('name = "video"\n', 'name = "video"\nprotocols = ["gdoi", "g-ikev2"]\n'
                              f'g_ikev2_rekey = "{g_ikev2_rekey}"\n'))
    return p


def gm_config(d, ks_ip, ident, protocol):
    """test_registration's member, over G-IKEv2 as a sender when ``protocol`` says so."""
    p = registration_gm_config(d, ks_ip, ident, PSKS[ident])
    if protocol == "g-ikev2":  # keys of the [[member.group]] table, the file's last one
        p.write_text(p.read_text() + 'protocol = "g-ikev2"\nsender = true\n')
    return p


def group_spis(host) -> set[int]:
    return {spi for dst, spi, proto in states(host) if dst == GROUP and proto == "esp"}


def after_eviction(lab, sender, receiver, evicted, n=20):
    """``n`` datagrams from ``sender``: (how many ``receiver`` got, how many the evicted host
    got, the captured packets, the raw capture)."""
    with receiver.listen(GROUP, PORT) as rx, evicted.listen(GROUP, PORT) as ex:
        with lab.capture() as cap:
            time.sleep(0.3)
            sender.send(GROUP, PORT, AFTER, count=n, interval=0.01)
            got = sum(1 for d in rx.wait(n, timeout=60) if d == AFTER)
            lost = ex.count(timeout=1.0)  # the receiver has them all: nothing is in flight
    with open(cap.path, "rb") as f:
        raw = f.read()
    return got, lost, cap.packets(), raw


@pytest.mark.parametrize("g_ikev2_rekey", ["gsa_rekey", "inband"])
def test_gdoi_and_g_ikev2_members_share_traffic_and_an_eviction(netlab_factory, tmp_path, g_ikev2_rekey):
    inband = g_ikev2_rekey == "inband"
    lab = netlab_factory(4)
    h1, h2, h3, h4 = lab.hosts
    dirs = {n: tmp_path / n for n in ("ks", "gm1", "gm2", "gm3")}
    for p in dirs.values():
        p.mkdir()
    ks = Msecd(ks_config(dirs["ks"], h1.ip4, g_ikev2_rekey), host=h1)
    members = {"gm1": Msecd(gm_config(dirs["gm1"], h1.ip4, "gm1", "gdoi"), host=h2),
               "gm2": Msecd(gm_config(dirs["gm2"], h1.ip4, "gm2", "g-ikev2"), host=h3),
               "gm3": Msecd(gm_config(dirs["gm3"], h1.ip4, "gm3", "g-ikev2"), host=h4)}
    hosts = {"gm1": h2, "gm2": h3, "gm3": h4}
    try:
        ks.start(timeout=120)
        for d in members.values():
            d.start(timeout=120)
        for name, d in members.items():
            d.wait_log(SPI_LOG, timeout=120)
            d.wait_log("listening for GROUPKEY-PUSH" if name == "gm1" else
                       "keeping the registration's IKE SA for in-band rekeys" if inband else
                       "listening for GSA_REKEY", timeout=120)
        assert "g-ikev2 gcks: key-id 'gm2'" in ks.log() and "gdoi ks: key-id 'gm1'" in ks.log()
        registrations = ks.log().count("registered (TEK SPI")
        tek = {int(t["spi"], 16) for t in ks.ctl_json("group", "show", "1001")["roles"][0]["teks"]}
        for name, h in hosts.items():
            assert group_spis(h) == tek, (name, states(h))

        # every member sends, the other two receive; only ESP on the wire
        for name, h in hosts.items():
            others = [x for n, x in hosts.items() if n != name]
            got, pkts, raw = traffic(lab, h, others, marker=MARKER + name.encode())
            assert [len(g) for g in got] == [20, 20], (name, got)
            assert MARKER not in raw
            assert any(p.get("proto") == "esp" and p.get("src") == h.ip4 for p in pkts), name

        # evict gm3 (G-IKEv2) by LKH: GSA_REKEY for gm2, GROUPKEY-PUSH for gm1
        r = ks.ctl_json("evict", "1001", "gm3", "--reason", "lost laptop")
        assert r["ok"] and r["mode"] == "lkh" and r["evicted"] == ["key-id:gm3"], r
        new = {int(x, 16) for x in r["teks"]}
        members["gm3"].wait_log("evicted from the group", timeout=60)
        for name in ("gm1", "gm2"):
            seq = 1 if inband and name == "gm2" else r["seq"]  # in band: the exchange's Message ID + 1
            members[name].wait_log(f"rekeyed: SEQ {seq}, new TEK SPIs", timeout=60)
            members[name].wait_log(f"sending on SPI 0x{min(new):08x}", timeout=60)
            assert new <= group_spis(hosts[name]), (name, states(hosts[name]))
        assert not new & group_spis(h4)
        # gm2 switched on the rekey's TEK itself: it did not register again for it
        assert ks.log().count("registered (TEK SPI") == registrations
        if inband:  # both G-IKEv2 members answered: gm2 holding the new TEK, gm3 its exclusion
            ks.wait_log("key-id:gm2 acknowledged the in-band rekey", timeout=30)
            ks.wait_log("key-id:gm3 acknowledged the in-band rekey (GSA_INBAND_REKEY Message ID 0): its "
                        "exclusion", timeout=30)

        before = no_states(h4)
        for sender, receiver in ((h2, h3), (h3, h2)):
            got, evicted, pkts, raw = after_eviction(lab, sender, receiver, h4)
            assert (got, evicted) == (20, 0), sender.name
            assert AFTER not in raw
            esp = [p for p in pkts if p.get("proto") == "esp" and p.get("src") == sender.ip4]
            assert esp and {p.get("spi") for p in esp} <= new, esp[:3]
        assert no_states(h4) - before >= 20
        ms = {m["identity"]: m["state"] for m in ks.ctl_json("members", "1001")["members"]}
        assert ms == {"key-id:gm1": "registered", "key-id:gm2": "registered", "key-id:gm3": "evicted"}
    finally:
        for d in (*members.values(), ks):
            d.stop()
