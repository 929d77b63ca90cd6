"""A G-IKEv2 member's restart with real msecd processes (netlab hosts, members --no-kernel):
killed with SIGKILL after a rekey, the member resumes from its saved state (0600, the
GSA_REKEY receiver's part included) and does not register again (the key server's log and
``msecctl members`` say so); the next ``msecctl rekey`` reaches it, and so does an LKH
eviction of the other G-IKEv2 member (a new Rekey SA through its saved Key Path) and the rekey
after it.  A damaged G-IKEv2 part of the file is a log line naming the field and a fresh
registration.  The helpers are test_g_ikev2_daemon's and test_member_recovery's."""

from __future__ import annotations

import json
import stat

from gkm.gdoi import member_state
from tests.host.daemon_proc import Msecd
from tests.host.test_g_ikev2_daemon import _ks_config, _member_config, _running, _spis
from tests.host.test_member_recovery import _kill9


def _registrations(ks: Msecd, who: str) -> int:
    """How often the key server logged a G-IKEv2 registration of ``who``."""
    return sum(1 for line in ks.log().splitlines()
               if f"g-ikev2 gcks: key-id '{who}' from" in line and "registered in group 1001" in line)


def _registered_at(ks: Msecd, who: str) -> float:
    (m,) = [m for m in ks.ctl_json("members", "1001")["members"] if m["identity"] == f"key-id:{who}"]
    assert m["state"] == "registered" and m["protocol"] == "g-ikev2", m
    return m["registered_at"]


def test_g_ikev2_member_killed_resumes_and_takes_the_next_rekey(netlab_factory, tmp_path):
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    ks = Msecd(_ks_config(tmp_path, h1.ip4), host=h1)
    gm = Msecd(_member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4), host=h2, args=["--no-kernel"])
    other = Msecd(_member_config(tmp_path, "gm4", 1001, "g-ikev2", h1.ip4), host=h3, args=["--no-kernel"])
    state = tmp_path / "gm2" / "state" / "member" / "group-1001.state"
    with _running(ks, gm, other):
        for d in (gm, other):
            d.wait_log("listening for GSA_REKEY on 239.192.0.1:848", timeout=60)
        assert "no saved member state: registering" in gm.log()
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert json.loads(state.read_bytes())["state"]["protocol"] == "g-ikev2"
        assert _registrations(ks, "gm2") == 1
        first = _registered_at(ks, "gm2")
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        gm.wait_log(f"rekeyed: SEQ {r['seq']},", timeout=30)
        spis = _spis(gm, 1001)
        assert set(r["teks"]) <= spis

        _kill9(gm)
        gm.start()
        log = gm.wait_log("resumed from the saved member state", timeout=60)
        line = next(x for x in log.splitlines() if "resumed from the saved member state" in x)
        assert "key server " in line and f"SEQ {r['seq']}," in line and "protocol g-ikev2" in line, line
        g = gm.ctl_json("group", "show", "1001")["roles"][0]
        assert g["state"] == "registered" and g["restored"] and g["registrations"] == 0, g
        assert g["protocol"] == "g-ikev2" and _spis(gm, 1001) == spis
        gm.wait_log("listening for GSA_REKEY on 239.192.0.1:848", timeout=30, count=2)

        # the next rekey reaches the resumed member: it installs the new TEK
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        gm.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
        assert set(r["teks"]) <= _spis(gm, 1001)

        # an LKH eviction of the other member: the resumed one follows the new KEK and TEKs
        r = ks.ctl_json("evict", "1001", "gm4", "--reason", "test")
        assert r["ok"] and r["mode"] == "lkh" and r["evicted"] == ["key-id:gm4"], r
        other.wait_log("evicted from the group", timeout=30)
        gm.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
        assert set(r["teks"]) <= _spis(gm, 1001)
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        gm.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
        assert set(r["teks"]) <= _spis(gm, 1001)

        # it never registered again
        assert _registrations(ks, "gm2") == 1 and _registered_at(ks, "gm2") == first
        assert gm.log().count("registering with key server") == 1

        # a damaged G-IKEv2 part (digest made right: the field check answers): a log line
        # naming the field, and a fresh registration
        _kill9(gm)
        doc = json.loads(state.read_bytes())
        doc["state"]["gike"]["key_path"] = [[0, "00" * 16]]
        doc["sha256"] = member_state._digest(doc["state"])
        state.write_text(json.dumps(doc))
        gm.start()
        gm.wait_log("unusable (gike.key_path[0].id: not an integer", timeout=60)
        gm.wait_log("registered with key server", timeout=60, count=2)
        assert gm.log().count("registering with key server") == 2
        assert "Traceback" not in gm.log() + ks.log()
