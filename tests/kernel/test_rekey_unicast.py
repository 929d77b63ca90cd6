"""Unicast rekey delivery with GROUPKEY-PUSH-ACKs (RFC 8263) in the kernel lab: real msecd
processes (key server h1, members gm1..gm3 on h2..h4, kernel SAs), ``rekey_delivery =
"unicast"``, ACK timeout 1 s, one retransmission, lost after 2 missed rekeys.

Every member acknowledges a rekey; gm3 stops answering (SIGSTOP): each rekey is retransmitted
to it, then counts as missed, and after two it is lost (``msecctl members --json``) and gets
nothing more, while gm1 and gm2 go on exchanging ESP under the new keys; gm3 comes back (a
restart without its saved state: it registers again), acknowledges the next rekey and receives the group's traffic
again.  About 40 s after the lab's boot.
"""

from __future__ import annotations

import signal

import pytest

from tests.kernel.test_evict import Lab, _wait, kernel_keys
from tests.kernel.test_registration import MARKER, traffic

pytestmark = pytest.mark.kernel

UNICAST = ('rekey_delivery = "unicast"\nrekey_ack_timeout = "1s"\nrekey_ack_retries = 1\n'
           'rekey_max_missed = 2\n')


class UnicastLab(Lab):
    def __init__(self, netlab_factory, tmp_path) -> None:
        super().__init__(netlab_factory, tmp_path)
        # [keyserver.group.kek] is the file's last table: the delivery settings go into it
        with open(self.ks_cfg, "a") as f:
            f.write(UNICAST)


def members(t: Lab) -> dict:
    return {m["identity"]: m for m in t.ks.ctl_json("members", "1001")["members"]}


def delivery(t: Lab) -> dict:
    return t.ks.ctl_json("group", "show", "1001")["roles"][0]["delivery"]


def rekey(t: Lab) -> dict:
    r = t.ks.ctl_json("rekey", "1001")
    assert r["ok"], r
    return r


def test_unicast_acks_lost_member_and_rejoin(netlab_factory, tmp_path):
    t = UnicastLab(netlab_factory, tmp_path)
    try:
        t.start()
        assert delivery(t)["mode"] == "unicast"
        r = rekey(t)
        assert "239.192.0.1:848" not in r["sent_to"] and len(r["sent_to"]) == 3, r
        _wait(lambda: all(m["last_acked_seq"] == r["seq"] for m in members(t).values()),
              30, "every member's ACK")
        # gm3 stops answering
        t.members["gm3"].signal(signal.SIGSTOP)
        retx0 = delivery(t)["retransmitted"]
        for n in (1, 2):
            r = rekey(t)
            t.ks.wait_log("member key-id:gm3 did not acknowledge GROUPKEY-PUSH SEQ", count=n,
                          timeout=30)
        t.ks.wait_log("member key-id:gm3 lost after 2 unacknowledged rekeys", timeout=30)
        assert delivery(t)["retransmitted"] >= retx0 + 2  # once per rekey it missed
        ms = members(t)
        assert (ms["key-id:gm3"]["state"], ms["key-id:gm3"]["missed_rekeys"]) == ("lost", 2)
        assert ms["key-id:gm3"]["last_acked_seq"] == r["seq"] - 2
        for name in ("gm1", "gm2"):
            assert ms[f"key-id:{name}"]["state"] == "registered"
            assert ms[f"key-id:{name}"]["last_acked_seq"] == r["seq"]
        # a lost member gets nothing more; the others keep exchanging ESP on the new TEK
        r = rekey(t)
        assert r["sent_to"] == [f"{t.h2.ip4}:848", f"{t.h3.ip4}:848"], r
        new = int(r["teks"][0], 16)
        for name in ("gm1", "gm2"):
            t.members[name].wait_log(f"sending on SPI 0x{new:08x}", timeout=30)
        got, _pkts, raw = traffic(t.lab, t.h2, [t.h3], n=20)
        assert len(got[0]) == 20 and MARKER not in raw
        # gm3 comes back: it registers again and is delivered to again (restarted without
        # its saved state: with it, it would resume without registering and stay lost until
        # its keys run out; README, rekey delivery)
        t.members["gm3"].signal(signal.SIGCONT)
        t.members["gm3"].stop()
        for saved in t.dirs["gm3"].rglob("group-*.state"):
            saved.unlink()
        t.members["gm3"].start(timeout=120)
        _wait(lambda: members(t)["key-id:gm3"]["state"] == "registered", 60, "gm3 registered")
        r = rekey(t)
        assert len(r["sent_to"]) == 3, r
        _wait(lambda: members(t)["key-id:gm3"]["last_acked_seq"] == r["seq"], 30, "gm3's ACK")
        assert members(t)["key-id:gm3"]["missed_rekeys"] == 0
        new = int(r["teks"][0], 16)
        t.members["gm1"].wait_log(f"sending on SPI 0x{new:08x}", timeout=30)
        assert new in kernel_keys(t.h4)
        got, _pkts, raw = traffic(t.lab, t.h2, [t.h3, t.h4], n=20)
        assert [len(g) for g in got] == [20, 20] and MARKER not in raw
        for d in (t.ks, *t.members.values()):
            assert "Traceback" not in d.log()
    finally:
        gm3 = t.members["gm3"]
        if gm3.proc is not None and gm3.proc.poll() is None:
            gm3.signal(signal.SIGCONT)  # a stopped process cannot take its SIGTERM
        t.stop()
