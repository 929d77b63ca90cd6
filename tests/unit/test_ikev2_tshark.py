"""Independent cross-check of gkm.ikev2 against Wireshark's IKEv2 dissector (tshark).

Every example message is written to a pcap and dissected; tshark must report no malformed
packet and no error-level expert info, and its fields must agree with our decoded values: the
header, the sequence of payload types (with proposals and transforms inside SA payloads), and
the leaf fields of transforms, KE, Nonce, Notify, Delete, ID, AUTH, CERT and TS payloads.
Wireshark 4.0 does not know the RFC 9838 payloads (IDg 50, GSA 51, KD 52): it shows their
bodies as raw data, which must equal ours.  tshark is required (tools/setup installs it).
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

from gkm.ikev2 import (
    Authentication, Certificate, CertificateRequest, Delete, Encrypted, IdGroup, IdInitiator, IdResponder,
    KeyExchange, Nonce, Notify, SecurityAssociation, TsInitiator, TsResponder, UnknownPayload, VendorId,
    decode_message, encode_message,
)
from gkm.ikev2.examples import all_examples
from gkm.ikev2.gsa import GroupSa, KeyDownload

from .test_wire_tshark import TSHARK, _require_tshark, write_pcap

_TF_ID = {1: "isakmp.tf.id.encr", 2: "isakmp.tf.id.prf", 3: "isakmp.tf.id.integ", 4: "isakmp.tf.id.dh", 5: "isakmp.tf.id.esn"}
_SKIP = {"isakmp.nextpayload", "isakmp.payloadlength", "isakmp.reserved", "isakmp.reserved7", "isakmp.criticalpayload",
         "isakmp.flag_i", "isakmp.flag_v", "isakmp.flag_r", "isakmp.mjver", "isakmp.mnver", "isakmp.id.data",
         "isakmp.ts.data", "isakmp.ike2.attr", "isakmp.ike2.attr.format", "isakmp.ike2.attr.key_length",
         "isakmp.vid_string", "isakmp.cert.data", "isakmp.auth.data.sig.asn1.len", "isakmp.auth.data.sig.asn1.data",
         "isakmp.auth.data.sig.value", "isakmp.enc.iv", "isakmp.enc.data"}


def h(n: int, width: int) -> str:
    return f"{int(n):0{2 * width}x}"


def dissect(tmp_path, messages):
    _require_tshark()
    pcap = tmp_path / "ikev2.pcap"
    write_pcap(pcap, messages, 500)
    res = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-T", "pdml"], capture_output=True, check=True, timeout=120)
    out = []
    for pkt in ET.fromstring(res.stdout).iter("packet"):
        fields, problems = [], []
        for el in pkt.iter():
            name = el.get("name") or ""
            if name.startswith("isakmp.") and name not in _SKIP:
                value = el.get("show") if name == "isakmp.typepayload" else el.get("value")
                fields.append((name, value))
            if name.startswith("_ws.malformed") or (name == "_ws.expert.severity" and el.get("show") == "8388608"):
                problems.append(el.get("showname") or name)
        out.append((fields, problems))
    return out


def expected(msg, data):
    hd = msg.header
    out = [("isakmp.ispi", hd.spi_i.hex()), ("isakmp.rspi", hd.spi_r.hex()), ("isakmp.version", h(hd.version, 1)),
           ("isakmp.exchangetype", h(hd.exchange, 1)), ("isakmp.flags", h(hd.flags, 1)),
           ("isakmp.messageid", h(hd.message_id, 4)), ("isakmp.length", h(len(data), 4))]
    for p in msg.payloads:
        out.append(("isakmp.typepayload", str(int(p.TYPE))))
        out += _fields(p)
    return out


def _fields(p):
    if isinstance(p, SecurityAssociation):
        out = []
        for prop in p.proposals:
            out += [("isakmp.typepayload", "2"), ("isakmp.prop.number", h(prop.number, 1)),
                    ("isakmp.prop.protoid", h(prop.protocol, 1)), ("isakmp.spisize", h(len(prop.spi), 1)),
                    ("isakmp.prop.transforms", h(len(prop.transforms), 1))]
            for t in prop.transforms:
                out += [("isakmp.typepayload", "3"), ("isakmp.tf.type", h(t.type, 1)), (_TF_ID.get(t.type, "isakmp.tf.id"), h(t.id, 2))]
                for at, av in t.attributes:
                    out += [("isakmp.ike2.attr.type", h(0x8000 | at, 2)), ("isakmp.ike2.attr.value", h(av, 2))]
        return out
    if isinstance(p, KeyExchange):
        return [("isakmp.key_exchange.dh_group", h(p.group, 2)), ("isakmp.key_exchange.data", p.data.hex())]
    if isinstance(p, (Nonce,)):
        return [("isakmp.nonce", p.data.hex())]
    if isinstance(p, VendorId):
        return [("isakmp.vid_bytes", p.data.hex())]
    if isinstance(p, Notify):
        out = [("isakmp.notify.protoid", h(p.protocol, 1)), ("isakmp.spisize", h(len(p.spi), 1)),
               ("isakmp.notify.msgtype", h(p.type, 2))]
        if p.spi:
            out.append(("isakmp.spi", p.spi.hex()))
        return out + [("isakmp.notify.data", p.data.hex() if p.data else None)]
    if isinstance(p, Delete):
        return [("isakmp.delete.protoid", h(p.protocol, 1)), ("isakmp.spisize", h(p.spi_size, 1)),
                ("isakmp.spinum", h(len(p.spis), 2))] + [("isakmp.delete.spi", s.hex()) for s in p.spis]
    if isinstance(p, (IdInitiator, IdResponder)):
        return [("isakmp.id.type", h(p.id_type, 1)), ("isakmp.id.data.fqdn", p.data.hex())]
    if isinstance(p, Authentication):
        return [("isakmp.auth.method", h(p.method, 1)), ("isakmp.auth.data", p.data.hex())]
    if isinstance(p, Certificate):
        return [("isakmp.cert.encoding", h(p.encoding, 1))]
    if isinstance(p, CertificateRequest):
        return [("isakmp.certreq.type", h(p.encoding, 1)), ("isakmp.ike.certreq.authority", p.data.hex())]
    if isinstance(p, (TsInitiator, TsResponder)):
        out = [("isakmp.ts.number", h(len(p.selectors), 1))]
        for s in p.selectors:
            fam = "ipv4" if s.ts_type == 7 else "ipv6"
            out += [("isakmp.ts.type", h(s.ts_type, 1)), ("isakmp.ts.protoid", h(s.ip_protocol, 1)),
                    ("isakmp.ts.selector_length", h(8 + 2 * len(s.start_address), 2)), ("isakmp.ts.start_port", h(s.start_port, 2)),
                    ("isakmp.ts.end_port", h(s.end_port, 2)), (f"isakmp.ts.start_{fam}", s.start_address.hex()),
                    (f"isakmp.ts.end_{fam}", s.end_address.hex())]
        return out
    if isinstance(p, (IdGroup, GroupSa, KeyDownload, UnknownPayload)):
        return [("isakmp.datapayload", p.encode().hex())]
    if isinstance(p, Encrypted):
        return []
    raise AssertionError(f"no expectation for {p!r}")


def test_tshark_reads_ikev2_as_we_do(tmp_path):
    examples = all_examples()
    datagrams = [encode_message(hd, ps) for hd, ps in examples.values()]
    for (name, (hd, ps)), data, (fields, problems) in zip(examples.items(), datagrams, dissect(tmp_path, datagrams)):
        assert problems == [], (name, problems)
        want = expected(decode_message(data), data)
        assert fields == want, name


def test_tshark_sees_a_broken_length(tmp_path):
    """The cross-check can fail: a payload length that is off by one is visible to tshark."""
    hd, ps = all_examples()["ike_sa_init_cookie"]
    data = bytearray(encode_message(hd, ps))
    data[31] += 1
    [(fields, problems)] = dissect(tmp_path, [bytes(data)])
    assert problems or fields != expected(decode_message(encode_message(hd, ps)), encode_message(hd, ps))
