"""Wireshark's IKEv2 dissector decrypts and reads a GSA_REKEY (RFC 9838 §2.4) as msec builds it.

tshark gets the Rekey SA's GSK_e/GSK_a through its ``ikev2_decryption_table`` (a GSA_REKEY is
sent with the I flag clear, so tshark uses the "responder" keys; both are set).  It must report
nothing malformed, a correct ICV, the header (the Rekey SA's SPIs, exchange 41, the Message ID),
and inside SK the payload sequence and contents we encoded: GSA and KD as raw data (Wireshark
4.0 does not know RFC 9838's payloads), Delete fields, and the AUTH payload's RFC 7427 parts.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import pytest

from gkm.ikev2.constants import Encr, Integ, ProtocolId
from gkm.ikev2.gsa import GroupSa, KeyDownload
from gkm.ikev2.payloads import Authentication, Delete
from gkm.ikev2.rekey_auth import SIGNATURE_ALGORITHMS
from gkm.ikev2.sk import unprotect_chain

from .test_ikev2_rekey import pair, tek
from .test_wire_tshark import TSHARK, _require_tshark, write_pcap

_ENCR = {Encr.AES_GCM_16: "AES-GCM-256 with 16 octet ICV [RFC5282]", Encr.AES_CBC: "AES-CBC-256 [RFC3602]"}
_INTEG = {None: "NONE [RFC4306]", Integ.HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]"}


def dissect(tmp_path, datagram: bytes, sa, gsk_e: bytes | None = None):
    _require_tshark()
    pcap = tmp_path / "gsa_rekey.pcap"
    write_pcap(pcap, [datagram], 848)
    ek, ak = (gsk_e or sa.keys.gsk_e).hex(), sa.keys.gsk_a.hex()
    uat = (f'uat:ikev2_decryption_table:{sa.spi[:8].hex()},{sa.spi[8:].hex()},{ek},{ek},"{_ENCR[sa.encr]}",'
           f'{ak},{ak},"{_INTEG[sa.integ]}"')
    res = subprocess.run([TSHARK, "-n", "-d", "udp.port==848,isakmp", "-r", str(pcap), "-o", uat, "-T", "pdml"],
                         capture_output=True, check=True, timeout=120)
    fields, problems, shows = [], [], {}
    for el in ET.fromstring(res.stdout).iter():
        name = el.get("name") or ""
        if name.startswith("isakmp."):
            fields.append((name, el.get("show") if name == "isakmp.typepayload" else el.get("value")))
            shows.setdefault(name, el.get("showname") or "")
        if name.startswith("_ws.malformed") or (name == "_ws.expert.severity" and el.get("show") == "8388608"):
            problems.append(el.get("showname") or name)
    return fields, problems, shows


@pytest.mark.parametrize("suite", [dict(), dict(encr=Encr.AES_CBC, integ=Integ.HMAC_SHA2_256_128)])
def test_tshark_decrypts_gsa_rekey(tmp_path, suite):
    tx, _ = pair("ed25519", initial=0x01020304, **suite)
    sa = tx.rekey_sa
    datagram = tx.build(teks=((tek(), ()),), deletes=(Delete(ProtocolId.ESP, 4, (b"\x00\x00\x10\x01",)),), dtd_s=5)
    msg, _chain = unprotect_chain(datagram, sa.cipher)
    fields, problems, shows = dissect(tmp_path, datagram, sa)
    assert not problems, problems
    got = dict(fields)
    assert got["isakmp.ispi"] + got["isakmp.rspi"] == sa.spi.hex()
    assert got["isakmp.exchangetype"] == "29"  # 41 = GSA_REKEY
    assert got["isakmp.flags"] == "00"
    assert got["isakmp.messageid"] == "01020304"
    assert got["isakmp.length"] == f"{len(datagram):08x}"
    assert "[correct]" in shows["isakmp.enc.icd"]
    types = [v for n, v in fields if n == "isakmp.typepayload"]
    assert types == ["46", "51", "52", "42", "39"]
    gsa, kd, dele, auth = msg.payloads
    assert isinstance(gsa, GroupSa) and isinstance(kd, KeyDownload) and isinstance(auth, Authentication)
    data = [v for n, v in fields if n == "isakmp.datapayload"]
    assert data == [gsa.encode().hex(), kd.encode().hex()]
    assert got["isakmp.delete.protoid"] == "03" and got["isakmp.delete.spi"] == "00001001"
    assert got["isakmp.auth.method"] == "0e"
    assert got["isakmp.auth.data.sig.asn1.data"] == SIGNATURE_ALGORITHMS["ed25519"].algorithm_identifier.hex()
    assert got["isakmp.auth.data.sig.value"] == auth.data[8:].hex()


def test_tshark_does_not_decrypt_under_a_wrong_key(tmp_path):
    tx, _ = pair(None)
    datagram = tx.build(teks=((tek(), ()),))
    fields, _problems, shows = dissect(tmp_path, datagram, tx.rekey_sa, gsk_e=bytes(36))
    assert "[correct]" not in shows.get("isakmp.enc.icd", "")
    gsa = unprotect_chain(datagram, tx.rekey_sa.cipher)[0].payloads[0]
    assert gsa.encode().hex() not in [v for n, v in fields if n == "isakmp.datapayload"]
