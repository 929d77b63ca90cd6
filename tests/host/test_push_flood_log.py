"""Issue 12, log flooding: forged GROUPKEY-PUSHes sent at a real member msecd's rekey port at
a high rate (the group's real KEK cookies, so each one gets as far as decryption and the
signature check) produce a bounded amount of log: the member's rejections pass the rate
limiter (gkm.daemon.ratelimit), and a genuine PUSH afterwards is still accepted and logged."""

from __future__ import annotations

import os
import socket
import struct

from tests.host.daemon_proc import Msecd
from tests.host.test_keyserver_state import _kek_tek
from tests.unit.daemon_fakes import free_udp_port, write_config

FLOOD = 3000


def test_forged_push_flood_gives_bounded_log(tmp_path, netns):
    port, rport = free_udp_port(), free_udp_port()
    ks = Msecd(write_config(tmp_path, ks_port=port, name="ks.toml", tek=_kek_tek(tmp_path, rport)),
               host=netns)
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    # the production log level: debug would log every datagram on purpose
    gm = Msecd(write_config(gm_dir, member_port=port), host=netns,
               args=["--no-kernel", "--log-level", "info"])
    try:
        ks.start()
        gm.start()
        gm.wait_log("listening for GROUPKEY-PUSH")
        spi = bytes.fromhex(ks.ctl_json("group", "show", "1001")["roles"][0]["kek_spi"])
        before = len(gm.log().encode())
        with netns.inside():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(FLOOD):
                body = os.urandom(16 * (4 + i % 8))
                hdr = spi + struct.pack("!BBBBII", 8, 0x10, 33, 1, i, 28 + len(body))
                s.sendto(hdr + body, ("127.0.0.1", rport))
        finally:
            s.close()
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        log = gm.wait_log(f"rekeyed: SEQ {r['seq']},")  # after the flood on the same socket
        added = log.encode()[before:]
        rejected = added.count(b"GROUPKEY-PUSH rejected")
        assert 1 <= rejected <= 10, added[-2000:]
        # about 140 bytes per datagram without the limiter: 420 KB for this flood
        assert len(added) < 8000, (len(added), added[-2000:])
        assert gm.proc.poll() is None
    finally:
        gm.stop()
        ks.stop()
