"""Independent cross-check of GSA_AUTH's protection with Wireshark's IKEv2 dissector: given the
IKE SA's SPIs and SK_e/SK_a (its decryption table), tshark decrypts both GSA_AUTH messages,
finds their ICV correct, and reads the same inner payloads we sent (IDi/IDr, AUTH, IDg, GSA,
KD; Wireshark 4.0 shows the RFC 9838 payloads as raw data).  With ML-KEM-768 the keys are the
ones after the RFC 9370 update.  tshark is required (tools/setup installs it)."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import pytest

from gkm.ikev2 import KeyExchangeMethod as KEM
from gkm.ikev2.constants import Encr, ExchangeType, Integ, Prf
from gkm.ikev2.events import GsaRegistered
from gkm.ikev2.keys import Suite
from gkm.ikev2.sa_init import SaInitConfig, SaInitResponder
from gkm.ikev2.sk import SkCipher, unprotect

from .test_ikev2_registration import World, psk_member
from .test_wire_tshark import TSHARK, _require_tshark, write_pcap

CBC = Suite(Prf.HMAC_SHA2_256, Encr.AES_CBC, 256, Integ.HMAC_SHA2_256_128)
GCM = Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256)
#: Wireshark's names in its ikev2_decryption_table
WS = {id(CBC): ("AES-CBC-256 [RFC3602]", "HMAC_SHA2_256_128 [RFC4868]"),
      id(GCM): ("AES-GCM-256 with 16 octet ICV [RFC5282]", "NONE [RFC4306]")}


def _exchange(tmp_path, suite, mlkem):
    w = World(tmp_path)
    w.i_cfg = SaInitConfig(suite, (KEM.ECP256,), mlkem)
    w.sa_r = SaInitResponder(SaInitConfig(suite, (KEM.ECP256,), "optional"))
    m, em, _eg = w.register(psk_member())
    assert isinstance(em[0], GsaRegistered)
    gsa_auth = [d for _x, d in w.log if d[18] == ExchangeType.GSA_AUTH]
    assert len(gsa_auth) == 2
    return m.sa, gsa_auth


def _dissect(tmp_path, est, datagrams, suite, sk_ei=None):
    _require_tshark()
    k = est.keys
    enc, integ = WS[id(suite)]
    row = f'{est.spi_i.hex()},{est.spi_r.hex()},{(sk_ei or k.sk_ei).hex()},{k.sk_er.hex()},"{enc}",{k.sk_ai.hex()},{k.sk_ar.hex()},"{integ}"'
    pcap = tmp_path / "gsa_auth.pcap"
    write_pcap(pcap, datagrams, 500)
    res = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-o", f"uat:ikev2_decryption_table:{row}", "-T", "pdml"],
                         capture_output=True, check=True, timeout=120)
    out = []
    for pkt in ET.fromstring(res.stdout).iter("packet"):
        icv = [el.get("showname") for el in pkt.iter("field") if el.get("name") == "isakmp.enc.icd"]
        inner = []
        for dec in (el for el in pkt.iter("field") if el.get("name") == "isakmp.enc.contained"):
            for el in dec.iter("field"):
                name = el.get("name")
                if name == "isakmp.typepayload":
                    inner.append(("type", el.get("show")))
                elif name in ("isakmp.auth.data", "isakmp.datapayload", "isakmp.id.data.key_id"):
                    inner.append((name, el.get("value")))
        out.append((icv, inner))
    return out


def _ours(data: bytes, keys, initiator: bool):
    out = []
    for p in unprotect(data, SkCipher.for_sender(keys, initiator)).payloads:
        out.append(("type", str(int(p.TYPE))))
        name = type(p).__name__
        if name in ("IdInitiator", "IdResponder"):
            out.append(("isakmp.id.data.key_id", p.data.hex()))
        elif name == "Authentication":
            out.append(("isakmp.auth.data", p.data.hex()))
        elif name in ("IdGroup", "GroupSa", "KeyDownload"):
            out.append(("isakmp.datapayload", p.encode().hex()))
    return out


@pytest.mark.parametrize("suite,mlkem", [(GCM, "no"), (CBC, "no"), (GCM, "required")], ids=["gcm", "cbc", "gcm-mlkem"])
def test_tshark_decrypts_gsa_auth(tmp_path, suite, mlkem):
    est, msgs = _exchange(tmp_path, suite, mlkem)
    got = _dissect(tmp_path, est, msgs, suite)
    for (icv, inner), data, initiator in zip(got, msgs, (True, False)):
        assert len(icv) == 1 and icv[0].endswith("[correct]"), icv
        assert inner == _ours(data, est.keys, initiator)
        types = [v for t, v in inner if t == "type"]
        assert {"35", "39", "50"} <= set(types) if initiator else {"36", "39", "51", "52"} <= set(types), types


def test_tshark_cross_check_can_fail(tmp_path):
    """With a wrong SK_ei tshark cannot read the request: the check is not vacuous."""
    est, msgs = _exchange(tmp_path, GCM, "no")
    (icv, inner), (icv_r, inner_r) = _dissect(tmp_path, est, msgs, GCM, sk_ei=bytes(len(est.keys.sk_ei)))
    assert not (icv and icv[0].endswith("[correct]")) and inner != _ours(msgs[0], est.keys, True)
    assert icv_r[0].endswith("[correct]")
