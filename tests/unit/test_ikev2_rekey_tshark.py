"""Wireshark's IKEv2 dissector reads a GSA_REKEY (RFC 9838 §2.4) as msec builds it: header with
the Rekey SA's SPIs, exchange 41 and the Message ID, one Encrypted payload spanning the rest,
nothing malformed.  (The content is encrypted; tshark has no keys.)"""

from __future__ import annotations

from gkm.ikev2.constants import GcAuth

from .test_ikev2_rekey import pair, tek
from .test_ikev2_tshark import dissect


def test_tshark_reads_gsa_rekey(tmp_path):
    tx, _ = pair("ed25519", initial=0x01020304)
    assert tx.gcauth == GcAuth.DIGITAL_SIGNATURE
    datagram = tx.build(teks=((tek(), ()),), atd_s=1)
    [(fields, problems)] = dissect(tmp_path, [datagram])
    assert not problems, problems
    got = dict(fields)
    spi = datagram[:16].hex()
    assert got["isakmp.ispi"] + got["isakmp.rspi"] == spi
    assert got["isakmp.exchangetype"] == "29"  # 41 = GSA_REKEY
    assert got["isakmp.messageid"] == "01020304"
    assert got["isakmp.length"] == f"{len(datagram):08x}"
    types = [v for n, v in fields if n == "isakmp.typepayload"]
    assert len(types) == 1 and "46" in types[0]
