"""IKE_SA_INIT + IKE_INTERMEDIATE (ML-KEM-768) engines, both roles, in memory with real crypto:
every key exchange combination, policy refusals, COOKIE under load (stateless, no key exchange
before the cookie returns), INVALID_KE_PAYLOAD, retransmissions, bounds, tampering."""

from __future__ import annotations

import pytest

from gkm.ikev2 import ExchangeType, Header, HeaderFlags, KeyExchangeMethod as KEM, Nonce, Notify, NotifyType, decode_message
from gkm.ikev2 import sa_init as sa_init_module
from gkm.ikev2.constants import Encr, Integ, Prf
from gkm.ikev2.events import CookieDemanded, SaInitEstablished, SaInitFailed
from gkm.ikev2.keys import Suite
from gkm.ikev2.sa_init import SaInitConfig, SaInitInitiator, SaInitResponder
from gkm.ikev2.sk import SkCipher, protect, unprotect

GCM = Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256)
CBC = Suite(Prf.HMAC_SHA2_384, Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192)
R_ADDR, I_ADDR = ("192.0.2.1", 848), ("192.0.2.2", 848)


def events(engine):
    out = []
    while (e := engine.next_event()) is not None:
        out.append(e)
    return out


def run(ini: SaInitInitiator, resp: SaInitResponder, *, rounds: int = 6, tamper=None, i_addr=I_ADDR):
    """Shuttle datagrams until quiet; ``tamper(direction, data)`` may rewrite them."""
    for _ in range(rounds):
        moved = False
        for d, a in ini.datagrams_to_send():
            assert a == R_ADDR
            moved = True
            resp.receive_datagram(tamper("i", d) if tamper else d, i_addr, 0.0)
        for d, a in resp.datagrams_to_send():
            assert a == i_addr
            moved = True
            ini.receive_datagram(tamper("r", d) if tamper else d, R_ADDR, 0.0)
        if not moved:
            break
    return events(ini), events(resp)


def pair(i_cfg: SaInitConfig, r_cfg: SaInitConfig, **kw):
    ini = SaInitInitiator(i_cfg, R_ADDR)
    resp = SaInitResponder(r_cfg, **kw)
    ini.start(0.0)
    return ini, resp


@pytest.mark.parametrize("suite", [GCM, CBC], ids=["gcm", "cbc"])
@pytest.mark.parametrize("group", [KEM.ECP256, KEM.CURVE25519], ids=["p256", "x25519"])
@pytest.mark.parametrize("i_pq,r_pq,with_mlkem", [
    ("no", "no", False), ("optional", "no", False), ("no", "optional", False), ("optional", "optional", True),
    ("required", "optional", True), ("optional", "required", True), ("required", "required", True)])
def test_established(suite, group, i_pq, r_pq, with_mlkem):
    ini, resp = pair(SaInitConfig(suite, (group,), i_pq), SaInitConfig(suite, (KEM.ECP256, KEM.CURVE25519), r_pq))
    ei, er = run(ini, resp)
    assert len(ei) == len(er) == 1 and isinstance(ei[0], SaInitEstablished) and isinstance(er[0], SaInitEstablished)
    a, b = ei[0], er[0]
    assert a.keys == b.keys and (a.spi_i, a.spi_r, a.ni, a.nr) == (b.spi_i, b.spi_r, b.ni, b.nr)
    assert a.message1 == b.message1 and a.message2 == b.message2
    assert a.methods == b.methods == ((int(group), int(KEM.ML_KEM_768)) if with_mlkem else (int(group),))
    assert "sk_" not in repr(a) and a.keys.sk_ei.hex() not in repr(a)
    assert a.intermediate == b.intermediate and len(a.intermediate) == (2 if with_mlkem else 0)
    assert a.intermediate_keys == b.intermediate_keys and (a.intermediate_keys is not None) == with_mlkem
    if with_mlkem:  # the IKE_INTERMEDIATE messages were protected with the IKE_SA_INIT keys
        req = unprotect(a.intermediate[0], SkCipher.for_sender(a.intermediate_keys, initiator=True))
        assert req.header.exchange == ExchangeType.IKE_INTERMEDIATE and a.intermediate_keys != a.keys
    # the final keys protect the next exchange both ways
    h = Header(a.spi_i, a.spi_r, ExchangeType.INFORMATIONAL, HeaderFlags.INITIATOR, 2 if with_mlkem else 1)
    msg = unprotect(protect(h, (Nonce(b"x" * 16),), SkCipher.for_message(a.keys, h)), SkCipher.for_message(b.keys, h))
    assert msg.payloads == (Nonce(b"x" * 16),)


def test_mlkem_changes_the_keys():
    ini, resp = pair(SaInitConfig(GCM, mlkem="required"), SaInitConfig(GCM, mlkem="required"))
    [a], [b] = run(ini, resp)
    ini2, resp2 = pair(SaInitConfig(GCM, mlkem="no"), SaInitConfig(GCM, mlkem="no"))
    [c], _ = run(ini2, resp2)
    assert a.keys.sk_d != c.keys.sk_d and len(a.keys.sk_d) == len(c.keys.sk_d)


@pytest.mark.parametrize("i_pq,r_pq,who", [("no", "required", "responder"), ("required", "no", "responder")])
def test_mlkem_policy_refusals(i_pq, r_pq, who):
    ini, resp = pair(SaInitConfig(GCM, mlkem=i_pq), SaInitConfig(GCM, mlkem=r_pq))
    ei, er = run(ini, resp)
    assert [type(e) for e in ei] == [SaInitFailed] and "NO_PROPOSAL_CHOSEN" in ei[0].reason
    assert [type(e) for e in er] == [SaInitFailed]
    if i_pq == "no":
        assert "ML-KEM-768 is required" in er[0].reason
    assert resp.half_open == 0


def test_suite_mismatch_is_no_proposal_chosen():
    ini, resp = pair(SaInitConfig(GCM), SaInitConfig(CBC))
    ei, er = run(ini, resp)
    assert isinstance(ei[0], SaInitFailed) and isinstance(er[0], SaInitFailed) and er[0].reason == "no acceptable proposal"


def test_invalid_ke_payload_then_retry():
    ini, resp = pair(SaInitConfig(GCM, (KEM.CURVE25519, KEM.ECP256)), SaInitConfig(GCM, (KEM.ECP256,)))
    seen = []
    ei, er = run(ini, resp, tamper=lambda d, data: (seen.append((d, decode_message(data))), data)[1])
    first_answer = next(m for d, m in seen if d == "r")
    assert [(n.type, n.data) for n in first_answer.payloads] == [(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13")]
    assert ei[0].methods[0] == er[0].methods[0] == KEM.ECP256 and ei[0].keys == er[0].keys


def test_cookie_under_load_is_stateless_and_costs_no_key_exchange(monkeypatch):
    calls = []
    real = sa_init_module.respond
    monkeypatch.setattr(sa_init_module, "respond", lambda *a: (calls.append(a[0]), real(*a))[1])
    ini, resp = pair(SaInitConfig(GCM, mlkem="no"), SaInitConfig(GCM, mlkem="no"), cookie_threshold=0)
    first = ini.datagrams_to_send()
    resp.receive_datagram(first[0][0], I_ADDR, 0.0)
    [(answer, _)] = resp.datagrams_to_send()
    m = decode_message(answer)
    assert [p.type for p in m.payloads] == [NotifyType.COOKIE] and m.header.spi_r == bytes(8)
    assert resp.half_open == 0 and calls == [] and events(resp) == [CookieDemanded(I_ADDR)]
    # a request with a cookie computed for another address, or tampered, gets another COOKIE
    ini.receive_datagram(answer, R_ADDR, 0.0)
    [(with_cookie, _)] = ini.datagrams_to_send()
    resp.receive_datagram(with_cookie, ("198.51.100.7", 848), 0.0)
    assert resp.half_open == 0 and calls == []
    resp.datagrams_to_send(), events(resp)
    bad = bytearray(with_cookie)
    bad[28 + 8 + 5] ^= 1  # inside the cookie value (COOKIE is the first payload)
    resp.receive_datagram(bytes(bad), I_ADDR, 0.0)
    assert resp.half_open == 0 and calls == [] and len(resp.datagrams_to_send()) == 1
    events(resp)
    # the right cookie from the right address: established
    resp.receive_datagram(with_cookie, I_ADDR, 0.0)
    for d, _ in resp.datagrams_to_send():
        ini.receive_datagram(d, R_ADDR, 0.0)
    assert calls == [KEM.ECP256] and resp.half_open == 1
    [a] = events(ini)
    assert isinstance(a, SaInitEstablished) and a.keys == events(resp)[0].keys


def test_cookie_secret_rotation():
    ini, resp = pair(SaInitConfig(GCM, mlkem="no"), SaInitConfig(GCM, mlkem="no"), cookie_threshold=0)
    resp.receive_datagram(ini.datagrams_to_send()[0][0], I_ADDR, 0.0)
    ini.receive_datagram(resp.datagrams_to_send()[0][0], R_ADDR, 0.0)
    [(with_cookie, _)] = ini.datagrams_to_send()
    resp.rotate_cookie_secret()
    resp.rotate_cookie_secret()  # the cookie's secret is now two generations old
    resp.receive_datagram(with_cookie, I_ADDR, 0.0)
    assert resp.half_open == 0
    resp.datagrams_to_send()
    ini2, resp2 = pair(SaInitConfig(GCM, mlkem="no"), SaInitConfig(GCM, mlkem="no"), cookie_threshold=0)
    resp2.receive_datagram(ini2.datagrams_to_send()[0][0], I_ADDR, 0.0)
    ini2.receive_datagram(resp2.datagrams_to_send()[0][0], R_ADDR, 0.0)
    resp2.rotate_cookie_secret()  # one generation old: still accepted
    resp2.receive_datagram(ini2.datagrams_to_send()[0][0], I_ADDR, 0.0)
    assert resp2.half_open == 1


def test_retransmitted_request_gets_the_same_response():
    ini, resp = pair(SaInitConfig(GCM, mlkem="optional"), SaInitConfig(GCM, mlkem="optional"))
    [(req, _)] = ini.datagrams_to_send()
    resp.receive_datagram(req, I_ADDR, 0.0)
    resp.receive_datagram(req, I_ADDR, 0.0)
    a, b = resp.datagrams_to_send()
    assert a == b and resp.half_open == 1
    ini.receive_datagram(a[0], R_ADDR, 0.0)
    [(inter, _)] = ini.datagrams_to_send()
    resp.receive_datagram(inter, I_ADDR, 0.0)
    resp.receive_datagram(inter, I_ADDR, 0.0)
    x, y = resp.datagrams_to_send()
    assert x == y
    ini.receive_datagram(x[0], R_ADDR, 0.0)
    ini.receive_datagram(y[0], R_ADDR, 0.0)  # a duplicate answer changes nothing
    ei = events(ini)
    assert len(ei) == 1 and isinstance(ei[0], SaInitEstablished)
    ini.retransmit()
    assert ini.datagrams_to_send() == []  # done: nothing outstanding


def test_half_open_bound_and_expiry():
    resp = SaInitResponder(SaInitConfig(GCM, mlkem="no"), cookie_threshold=100, max_half_open=3, half_open_lifetime=10)
    for n in range(5):
        ini = SaInitInitiator(SaInitConfig(GCM, mlkem="no"), R_ADDR)
        ini.start(0.0)
        resp.receive_datagram(ini.datagrams_to_send()[0][0], ("192.0.2.9", 1000 + n), float(n))
    assert resp.half_open == 3 and len(resp.datagrams_to_send()) == 3
    resp.expire(11.5)
    assert resp.half_open == 1
    resp.expire(100.0)
    assert resp.half_open == 0


def test_unknown_critical_payload_is_answered():
    """RFC 7296 §2.5: UNSUPPORTED_CRITICAL_PAYLOAD with the type, no state, no key exchange."""
    from gkm.ikev2 import UnknownPayload, encode_message
    from gkm.ikev2.message import decode_message as decode

    ini = SaInitInitiator(SaInitConfig(GCM), R_ADDR)
    ini.start(0.0)
    req = decode(ini.datagrams_to_send()[0][0])
    bad = encode_message(req.header, req.payloads + (UnknownPayload(222, b"must understand", critical=True),))
    resp = SaInitResponder(SaInitConfig(GCM))
    resp.receive_datagram(bad, I_ADDR, 0.0)
    [(answer, to)] = resp.datagrams_to_send()
    m = decode(answer)
    assert to == I_ADDR and [(n.type, n.data) for n in m.payloads] == [(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((222,)))]
    assert m.header.response and m.header.spi_r == bytes(8) and resp.half_open == 0 and events(resp) == []
    # the same payload without the critical bit is skipped: the exchange goes on
    ok = encode_message(req.header, req.payloads + (UnknownPayload(222, b"may ignore"),))
    resp.receive_datagram(ok, I_ADDR, 0.0)
    assert resp.half_open == 1
    ini.receive_datagram(answer, R_ADDR, 0.0)
    assert isinstance(events(ini)[0], SaInitFailed)


def test_garbage_and_wrong_messages_leave_no_trace():
    resp = SaInitResponder(SaInitConfig(GCM))
    ini = SaInitInitiator(SaInitConfig(GCM), R_ADDR)
    ini.start(0.0)
    [(req, _)] = ini.datagrams_to_send()
    for data in (b"", b"\x00" * 27, req[:-1], req[:19] + bytes((0x20,)) + req[20:], bytes(100)):
        resp.receive_datagram(data, I_ADDR, 0.0)
    assert resp.datagrams_to_send() == [] and events(resp) == [] and resp.half_open == 0
    ini.receive_datagram(b"junk", R_ADDR, 0.0)
    ini.receive_datagram(req, ("203.0.113.5", 500), 0.0)
    assert events(ini) == [] and ini.datagrams_to_send() == []


@pytest.mark.parametrize("direction", ["i", "r"])
def test_tampered_intermediate_is_dropped(direction):
    ini, resp = pair(SaInitConfig(GCM, mlkem="required"), SaInitConfig(GCM, mlkem="required"))

    def flip(d, data):
        m = decode_message(data)
        if m.header.exchange == ExchangeType.IKE_INTERMEDIATE and d == direction:
            b = bytearray(data)
            b[-5] ^= 0x40
            return bytes(b)
        return data
    ei, er = run(ini, resp, tamper=flip)
    assert ei == []
    assert (er == []) if direction == "i" else isinstance(er[0], SaInitEstablished)


def test_signature_hash_algorithms_are_announced_both_ways():
    """RFC 7427 §4: both IKE_SA_INIT messages say which hashes RFC 7427 AUTH may use."""
    ini, resp = pair(SaInitConfig(GCM, mlkem="no"), SaInitConfig(GCM, mlkem="no"))
    [(req, _)] = ini.datagrams_to_send()
    resp.receive_datagram(req, I_ADDR, 0.0)
    [(answer, _)] = resp.datagrams_to_send()
    for data in (req, answer):
        n = [p for p in decode_message(data).payloads if isinstance(p, Notify) and p.type == NotifyType.SIGNATURE_HASH_ALGORITHMS]
        assert len(n) == 1 and n[0].data == bytes.fromhex("0002000300040005")
    quiet, _ = pair(SaInitConfig(GCM, mlkem="no", signature_hashes=()), SaInitConfig(GCM))
    [(req, _)] = quiet.datagrams_to_send()
    assert not any(isinstance(p, Notify) and p.type == NotifyType.SIGNATURE_HASH_ALGORITHMS for p in decode_message(req).payloads)


def test_key_wrap_algorithm_negotiation():
    """RFC 9838 §4.4.3: the KWA is negotiated in IKE_SA_INIT (a KWA transform in the IKE proposal)."""
    from gkm.ikev2.constants import KeyWrap
    both = (KeyWrap.KW_5649_256, KeyWrap.KW_5649_128)
    ini, resp = pair(SaInitConfig(GCM, mlkem="no", kwa=both), SaInitConfig(GCM, mlkem="no", kwa=(KeyWrap.KW_5649_128,)))
    ei, er = run(ini, resp)
    assert ei[0].kwa == er[0].kwa == KeyWrap.KW_5649_128
    ini, resp = pair(SaInitConfig(GCM, mlkem="no"), SaInitConfig(GCM, mlkem="no", kwa=both))
    ei, er = run(ini, resp)
    assert ei[0].kwa == er[0].kwa == 0  # a peer offering none: none (the registration's fallback)
    ini, resp = pair(SaInitConfig(GCM, mlkem="no", kwa=(KeyWrap.KW_5649_192,)), SaInitConfig(GCM, mlkem="no", kwa=both))
    ei, er = run(ini, resp)
    assert isinstance(ei[0], SaInitFailed) and isinstance(er[0], SaInitFailed)  # no common KWA
    ini, resp = pair(SaInitConfig(GCM, mlkem="no", kwa=both), SaInitConfig(GCM, mlkem="no"))
    ei, er = run(ini, resp)
    assert isinstance(er[0], SaInitFailed)  # a responder that knows no KWA cannot choose one
