"""The key log read by Wireshark (issue 11, "Seeing what happened on the wire").

h1 is the key server, h3 a member registered beforehand; h2 is a member with ``keylog_file``
set. tcpdump in h2's namespace (its eth0) captures h2's whole registration (Main Mode and
GROUPKEY-PULL on UDP 848) and group traffic both ways (h2 -> group, h3 -> group). Then tshark,
given only h2's key log (through tools/keylog-tshark, as README.md shows: the log as
``-o uat:...`` options, and a capture copy whose phase 1 SA says DOI 1, which is what
Wireshark needs to parse the proposal), must decrypt every encrypted ISAKMP message (Main Mode 5 and 6 show their
ID and HASH payloads, h2's identity in the clear; the four GROUPKEY-PULL messages start with
their HASH payload) and every ESP packet (the inner UDP datagram to the group port with the
plaintext marker). Without the key log the same tshark decrypts nothing (so the check can
fail). The key log is 0600, msecd warned that it is on, and no key from it is in any log.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from tests.host.daemon_proc import REPO, Msecd
from tests.kernel.group_configs import GROUP, GROUP_PORT as PORT, PSKS, ks_config
from tests.kernel.group_configs import gm_config as _gm_config
from tools.keylog_tshark import BASE_OPTIONS, rewrite_gdoi_phase1_doi
from tools.netlab import Capture

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

MARKER = b"SW-KEYLOG-PLAINTEXT-MARKER"
ISAKMP_ENCRYPTED = 0x01  # ISAKMP header flags: E


def with_keylog(path, keylog):
    path.write_text(path.read_text().replace("[daemon]\n", f'[daemon]\nkeylog_file = "{keylog}"\n', 1))
    return path


def gm_config(d, ks_ip, ident, keylog=None):
    path = _gm_config(d, ks_ip, ident)
    return with_keylog(path, keylog) if keylog else path


def tshark_json(argv: list[str]) -> list[dict]:
    r = subprocess.run([*argv, "-n", "-T", "json", "--no-duplicate-keys", "udp.port == 848 or esp"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout or "[]")


def hexdump(node) -> str:
    """Every value in a tshark JSON subtree, bytes as plain hex (tshark writes aa:bb:cc)."""
    return json.dumps(node).replace(":", "")


def layers(frame: dict) -> dict:
    return frame["_source"]["layers"]


def payload_types(isakmp: dict) -> list[int]:
    """The ISAKMP payload types tshark dissected in one message, in order."""
    out: list[int] = []

    def walk(node):  # each payload is a nested object holding its "isakmp.typepayload"
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "isakmp.typepayload":
                    out.extend(int(x) for x in (v if isinstance(v, list) else [v]))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(isakmp)
    return out


def test_tshark_decrypts_registration_and_group_traffic_with_the_key_log(netlab_factory,
                                                                         tmp_path):
    if shutil.which("tshark") is None:
        pytest.fail("tshark missing: run tools/setup", pytrace=False)
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    d = {n: tmp_path / n for n in ("ks", "gm2", "gm3")}
    for p in d.values():
        p.mkdir()
    keylog = d["gm2"] / "keys.log"
    ks_keylog = d["ks"] / "keys.log"
    ks = Msecd(with_keylog(ks_config(d["ks"], h1.ip4), ks_keylog), host=h1)
    gm3 = Msecd(gm_config(d["gm3"], h1.ip4, "gm3"), host=h3)
    gm2 = Msecd(gm_config(d["gm2"], h1.ip4, "gm2", keylog=keylog), host=h2)
    daemons = [ks, gm3, gm2]
    cap = Capture(lab, str(tmp_path / "h2.pcap"), iface="eth0", ns=h2.ns)
    lab._captures.append(cap)
    try:
        ks.start()
        gm3.start()
        gm3.wait_log("installed 1 SA(s)", timeout=60)
        cap.start()
        gm2.start()
        gm2.wait_log("installed 1 SA(s)", timeout=60)
        rx3, rx2 = h3.listen(GROUP, PORT), h2.listen(GROUP, PORT)
        time.sleep(0.3)
        h2.send(GROUP, PORT, MARKER + b"-from-h2", count=5, interval=0.02)
        h3.send(GROUP, PORT, MARKER + b"-from-h3", count=5, interval=0.02)
        assert len(rx3.wait(5, timeout=30)) == 5 and len(rx2.wait(5, timeout=30)) == 5
        pcap = cap.stop()
    finally:
        for m in daemons:
            m.stop()

    # --- the key log: 0600, announced, and its keys nowhere else
    assert stat.S_IMODE(os.stat(keylog).st_mode) == 0o600
    text = keylog.read_text()
    lines = text.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["ikev1_decryption_table", "esp_sa"], lines
    assert "key log is ON" in gm2.log() and str(keylog) in gm2.log()
    # the key server logs the phase 1 of both members, the same line for gm2
    ks_lines = ks_keylog.read_text().splitlines()
    assert stat.S_IMODE(os.stat(ks_keylog).st_mode) == 0o600 and len(ks_lines) == 2
    assert lines[0] in ks_lines and all(ln.startswith("ikev1_decryption_table: ") for ln in ks_lines)
    fields = [f.strip('"') for ln in lines for f in ln.split(": ", 1)[1].split(",")[1:]]
    secrets = [f.removeprefix("0x") for f in fields if len(f) >= 32 and
               all(c in "0123456789abcdef" for c in f.removeprefix("0x"))]
    assert len(secrets) == 2  # the phase 1 encryption key, the TEK's key || salt
    for m in daemons:
        assert "key log is ON" in m.log() or m is gm3
        assert not any(s in m.log() for s in [*secrets, *PSKS.values()])
        assert not any(s.upper() in m.log() for s in secrets)

    # --- without the key log: nothing decrypts (so the checks below can fail)
    copy = str(tmp_path / "doi1.pcap")
    assert rewrite_gdoi_phase1_doi(pcap, copy) == 2  # Main Mode messages 1 and 2
    plain = tshark_json(["tshark", "-r", copy, *BASE_OPTIONS])
    assert plain and not any(MARKER.hex() in hexdump(layers(f)) for f in plain)
    plain_isakmp = [layers(f)["isakmp"] for f in plain if "isakmp" in layers(f)]
    assert not any(payload_types(i) for i in plain_isakmp
                   if int(i["isakmp.flags"], 16) & ISAKMP_ENCRYPTED)

    # --- with it, through the documented helper: every encrypted ISAKMP message, every ESP
    frames = tshark_json([str(REPO / "tools" / "keylog-tshark"), str(keylog), "-r", pcap])
    (tmp_path / "tshark.json").write_text(json.dumps(frames, indent=1))
    isakmp = [layers(f)["isakmp"] for f in frames if "isakmp" in layers(f)]
    esp = [layers(f) for f in frames if "esp" in layers(f)]
    by_exchange: dict[int, list] = {}
    for i in isakmp:
        if int(i["isakmp.flags"], 16) & ISAKMP_ENCRYPTED:
            by_exchange.setdefault(int(i["isakmp.exchangetype"]), []).append(i)
    # Main Mode (2): messages 5 and 6; GROUPKEY-PULL (32): messages 1-4 (a retransmission on
    # a loaded machine adds a copy); every one of them decrypted
    counts = {k: len(v) for k, v in by_exchange.items()}
    assert set(counts) == {2, 32} and counts[2] >= 2 and counts[32] >= 4, counts
    assert all(payload_types(i) for v in by_exchange.values() for i in v)
    mm5, mm6 = by_exchange[2][:2]
    assert payload_types(mm5)[:2] == [5, 8] and payload_types(mm6)[:2] == [5, 8]  # ID, HASH
    assert b"gm2".hex() in hexdump(mm5)  # the member's KEY_ID, readable only decrypted
    pull = [payload_types(i) for i in by_exchange[32]]
    assert all(t[:1] == [8] for t in pull), pull  # HASH(1..4) first
    assert 5 in pull[0] and 1 in pull[1] and 17 in pull[3], pull  # group ID, SA, KD
    assert (1001).to_bytes(4, "big").hex() in hexdump(by_exchange[32][0])
    assert len(esp) >= 10
    for l in esp:
        assert l.get("udp", {}).get("udp.dstport") == str(PORT), l.get("esp")
        assert MARKER.hex() in hexdump(l.get("data", {}))
