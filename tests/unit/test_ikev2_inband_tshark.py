"""Independent cross-check of GSA_INBAND_REKEY and GSA_REGISTRATION with Wireshark's IKEv2
dissector: given the IKE SA's SPIs and SK_e/SK_a, tshark decrypts the GCKS's in-band rekey
(its request, the member's answer) and a GSA_REGISTRATION exchange, finds every ICV correct,
reads the exchange types (40, 42), the responder/initiator and response flags as RFC 7296
sets them, and the same inner payloads we sent.  tshark is required (tools/setup installs it)."""

from __future__ import annotations


from gkm.ikev2.constants import ExchangeType

from .test_gdoi_support import GID, KS, NOW
from .test_ikev2_daemon_engines import _controller_step, drain
from .test_ikev2_gsa_auth_tshark import GCM, _dissect, _ours
from .test_ikev2_gsa_registration import groups, registered, second_group_request
from .test_ikev2_inband import ADDR, roster, setup
from .test_ikev2_tshark import dissect


def _headers(tmp_path, datagrams) -> list[tuple[str, str]]:
    """(exchange type, flags) of each datagram as tshark reads them (hex octets)."""
    return [(dict(fields)["isakmp.exchangetype"], dict(fields)["isakmp.flags"])
            for fields, _problems in dissect(tmp_path, datagrams)]


def test_tshark_decrypts_gsa_inband_rekey(tmp_path):
    f, ks, ctl, regs, rx = setup(tmp_path)
    est = regs["gm1"].gsa.ike
    _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    ks.g_ikev2.inband_rekey(GID, roster(f), NOW)
    [request] = [d for d, a in ks.datagrams_to_send() if a == ADDR["gm1"]]
    rx["gm1"].receive_datagram(request, KS, NOW)
    drain(rx["gm1"])
    [(answer, _to)] = rx["gm1"].datagrams_to_send()
    got = _dissect(tmp_path, est, [request, answer], GCM)
    for (icv, inner), data, initiator in zip(got, (request, answer), (False, True)):
        assert len(icv) == 1 and icv[0].endswith("[correct]"), icv
        assert inner == _ours(data, est.keys, initiator)
    assert {"51", "52", "42"} <= {v for t, v in got[0][1] if t == "type"}  # GSA, KD, Delete
    assert got[1][1] == []  # SK{}
    (x1, f1), (x2, f2) = _headers(tmp_path, [request, answer])
    assert int(x1, 16) == int(x2, 16) == ExchangeType.GSA_INBAND_REKEY
    # the GCKS (IKE responder) asks: no Initiator, no Response flag; the member answers with both
    assert (int(f1, 16), int(f2, 16)) == (0x00, 0x28)


def test_tshark_decrypts_gsa_registration(tmp_path):
    f, ks, auth = registered(tmp_path, groups(tmp_path))
    _r, request = second_group_request(tmp_path, auth)
    ks.receive_datagram(request, ("192.0.2.50", 848), NOW)
    ks.commit(NOW)
    [(answer, _b)] = ks.datagrams_to_send()
    est = auth.sa
    got = _dissect(tmp_path, est, [request, answer], GCM)
    for (icv, inner), data, initiator in zip(got, (request, answer), (True, False)):
        assert len(icv) == 1 and icv[0].endswith("[correct]"), icv
        assert inner == _ours(data, est.keys, initiator)
    assert [v for t, v in got[0][1] if t == "type"] == ["50"]  # IDg
    assert {"51", "52"} <= {v for t, v in got[1][1] if t == "type"}  # GSA, KD
    assert {int(x, 16) for x, _f in _headers(tmp_path, [request, answer])} == {ExchangeType.GSA_REGISTRATION}
