"""Failure cases: each ends the exchange with a clear reason on both sides, or is dropped."""

from __future__ import annotations

import logging

import pytest

from gkm.ike import (
    AuthMethod, ConfigError, HashAlg, Identity, MainMode, Phase1Config, Phase1Deleted, Phase1Established,
    Phase1Failed, Phase1Server, Proposal, PskStore, Role, State,
)
from gkm.ike import _msg as m
from tests.unit.ike_data.helpers import GM_ADDR, KS_ADDR, PSK, T0, ca, config, events, leaf, pair, pump

NOW = T0 + 0.01


def _failed(evs) -> Phase1Failed:
    assert len(evs) == 1 and isinstance(evs[0], Phase1Failed), evs
    return evs[0]


def test_wrong_psk():
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm", psk=b"wrong"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, NOW)
    r = _failed(events(srv))
    assert "HASH_I does not verify" in r.reason and r.notify == 24
    i = _failed(events(ini))
    assert "AUTHENTICATION-FAILED" in i.reason and ini.state is State.FAILED
    assert srv.half_open_count == 0 and srv.pending_count == 0 and not srv.established()


def test_no_acceptable_proposal_and_weak_offer_refused():
    weak = Phase1Config((Proposal(AuthMethod.PRE_SHARED_KEY, 19, HashAlg.SHA1),), local_id=Identity.ip(GM_ADDR[0]),
                        psk=PskStore({KS_ADDR[0]: PSK}), allow_weak=True)
    for icfg in (config(AuthMethod.PRE_SHARED_KEY, 20, role="gm"), weak):
        ini, srv = pair(icfg, config(AuthMethod.PRE_SHARED_KEY, 19, role="ks"))
        pump(ini, srv, NOW)
        r = _failed(events(srv))
        assert "no acceptable proposal" in r.reason and r.notify == 14
        assert "NO-PROPOSAL-CHOSEN" in _failed(events(ini)).reason
        assert srv.half_open_count == 0


def test_weak_configuration_needs_allow_weak(caplog):
    p = Proposal(AuthMethod.PRE_SHARED_KEY, 19, HashAlg.SHA1)
    with pytest.raises(ConfigError, match="weak"):
        Phase1Config((p,), local_id=Identity.ip("192.0.2.1"), psk=PskStore({"192.0.2.2": b"k"}))
    with caplog.at_level(logging.WARNING, logger="gkm.ike"):
        Phase1Config((p,), local_id=Identity.ip("192.0.2.1"), psk=PskStore({"192.0.2.2": b"k"}), allow_weak=True)
    assert "weak" in caplog.text
    with pytest.raises(ConfigError):
        Proposal(AuthMethod.PRE_SHARED_KEY, 19, key_bits=100)
    with pytest.raises(ConfigError, match="not implemented"):
        Phase1Config((Proposal(AuthMethod.PRE_SHARED_KEY, 2, HashAlg.SHA1),), local_id=Identity.ip("192.0.2.1"),
                     psk=PskStore({"192.0.2.2": b"k"}), allow_weak=True)
    with pytest.raises(ConfigError, match="does not fit"):
        config(AuthMethod.ECDSA_384, role="gm", cert=leaf("p256", "gm1"))


@pytest.mark.parametrize("method", [AuthMethod.ECDSA_256, AuthMethod.RSA_SIG])
def test_expired_initiator_certificate(method):
    kind = "p256" if method is AuthMethod.ECDSA_256 else "rsa"
    ini, srv = pair(config(method, role="gm", cert=leaf(kind, "old", expired=True)), config(method, role="ks"))
    pump(ini, srv, NOW)
    r = _failed(events(srv))
    assert "expired" in r.reason and r.notify == 20
    assert "INVALID-CERTIFICATE" in _failed(events(ini)).reason


def test_untrusted_initiator_certificate():
    other = leaf("p256", "mallory", issuer="Other CA")
    ini, srv = pair(config(AuthMethod.ECDSA_256, role="gm", cert=other), config(AuthMethod.ECDSA_256, role="ks"))
    pump(ini, srv, NOW)
    r = _failed(events(srv))
    assert "not trusted" in r.reason and r.notify == 22
    assert "INVALID-CERT-AUTHORITY" in _failed(events(ini)).reason


def test_id_not_matching_certificate():
    ini, srv = pair(config(AuthMethod.ECDSA_256, role="gm", local_id=Identity.fqdn("ks.example.net")), config(AuthMethod.ECDSA_256, role="ks"))
    pump(ini, srv, NOW)
    r = _failed(events(srv))
    assert "does not match its certificate" in r.reason and r.notify == 18
    assert "INVALID-ID-INFORMATION" in _failed(events(ini)).reason


def test_san_identities_match():
    for ident in (Identity.fqdn("gm1.example.net"), Identity.ip("192.0.2.10")):
        cert = leaf("p256", "gm1", ip="192.0.2.10")
        ini, srv = pair(config(AuthMethod.ECDSA_256, role="gm", cert=cert, local_id=ident), config(AuthMethod.ECDSA_256, role="ks"))
        pump(ini, srv, NOW)
        (ev,) = events(srv)
        assert isinstance(ev, Phase1Established) and ev.sa.peer_id == ident


def test_intermediate_chain():
    chain = (ca("Intermediate CA", "Test Root CA")[0],)
    cert = leaf("p384", "gm2", issuer="Intermediate CA")
    ini, srv = pair(config(AuthMethod.ECDSA_384, role="gm", cert=cert, chain=chain), config(AuthMethod.ECDSA_384, role="ks"))
    pump(ini, srv, NOW)
    assert isinstance(events(srv)[0], Phase1Established) and ini.state is State.ESTABLISHED


def test_responder_untrusted_by_initiator_both_sides_learn():
    """The initiator rejects message 6; the responder, which thought the SA was up, gets a
    protected notification + Delete and reports the SA deleted with the reason."""
    ks = config(AuthMethod.ECDSA_256, role="ks", cert=leaf("p256", "fake-ks", issuer="Other CA"), anchors=[ca("Test Root CA")[0]])
    ini, srv = pair(config(AuthMethod.ECDSA_256, role="gm"), ks)
    pump(ini, srv, NOW)
    i = _failed(events(ini))
    assert "not trusted" in i.reason
    se = events(srv)
    assert isinstance(se[0], Phase1Established)
    assert isinstance(se[-1], Phase1Deleted) and "INVALID-CERT-AUTHORITY" in se[-1].reason
    assert not srv.established()


def test_initiator_requires_configured_responder_id():
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm", peer_id=Identity.fqdn("ks.example.net")),
                    config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, NOW)
    assert "is not the configured" in _failed(events(ini)).reason
    assert isinstance(events(srv)[-1], Phase1Deleted)


def test_psk_by_identity_trial():
    gm_id = Identity.fqdn("gm7.example.net")
    other = Identity.fqdn("gm8.example.net")
    ks = config(AuthMethod.PRE_SHARED_KEY, role="ks", psk_store=PskStore(by_id={other: b"k8", gm_id: b"k7"}))
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm", psk=b"k7", local_id=gm_id), ks)
    pump(ini, srv, NOW)
    (ev,) = events(srv)
    assert isinstance(ev, Phase1Established) and ev.sa.peer_id == gm_id
    # a member that knows gm8's key but claims to be gm7 is refused
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm", psk=b"k8", local_id=gm_id), ks)
    pump(ini, srv, NOW)
    assert "does not own the pre-shared key" in _failed(events(srv)).reason


@pytest.mark.parametrize("index,pos,where", [(1, -1, "message 3 nonce"), (2, 33, "message 5 ID"), (0, -3, "message 1 attribute")])
def test_tampered_initiator_message(index, pos, where):
    def tamper(direction, n, data):
        if direction == "i2r" and n == index:
            b = bytearray(data)
            b[pos] ^= 0x01
            return bytes(b)
        return data

    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, NOW, tamper=tamper)
    r = _failed(events(srv))
    i = _failed(events(ini))
    assert r.reason and i.reason
    assert ini.state is State.FAILED and not srv.established()


def test_tampered_message_5_tail():
    """The last block of message 5 holds the unauthenticated INITIAL-CONTACT notification (HASH_I
    covers only SA and ID): the responder accepts, but its message 6 is chained from the tampered
    block, so the initiator cannot decrypt it, fails, and deletes the SA at the responder."""

    def tamper(direction, n, data):
        return data[:-1] + bytes([data[-1] ^ 1]) if (direction, n) == ("i2r", 2) else data

    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, NOW, tamper=tamper)
    assert "message 6" in _failed(events(ini)).reason
    se = events(srv)
    assert isinstance(se[0], Phase1Established) and isinstance(se[-1], Phase1Deleted)
    assert not srv.established()


@pytest.mark.parametrize("offset", [31, -1])
def test_tampered_responder_message_6(offset):
    """A flipped bit in message 6: the initiator fails and sends a protected Delete.  If the last
    CBC block was hit, the Delete's IV (derived from that block) differs from the responder's, so
    the responder cannot authenticate it: it drops it with a log line and keeps the SA until its
    lifetime ends -- the protocol gives no way to tell."""

    def tamper(direction, n, data):
        if direction == "r2i" and n == 2:
            b = bytearray(data)
            b[offset] ^= 1
            return bytes(b)
        return data

    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, NOW, tamper=tamper)
    assert "message 6" in _failed(events(ini)).reason or "HASH_R" in ini.failure
    se = events(srv)
    assert isinstance(se[0], Phase1Established)
    if offset == -1:
        assert len(se) == 1
    else:
        assert isinstance(se[-1], Phase1Deleted)


def test_replayed_messages_get_stored_answers_not_new_state():
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    log_i, log_r = [], []

    def tamper(direction, n, data):
        (log_i if direction == "i2r" else log_r).append(data)
        return data

    pump(ini, srv, NOW, tamper=tamper)
    assert len(log_i) == 3 and len(log_r) == 3
    events(srv), events(ini)
    # replay message 1, 3 and 5 to the server: 1 and 3 are out of order now (dropped), 5 gets 6 again
    srv.receive_datagram(log_i[2], GM_ADDR, NOW + 1)
    assert srv.datagrams_to_send() == [(log_r[2], GM_ADDR)]
    srv.receive_datagram(log_i[1], GM_ADDR, NOW + 1)
    srv.receive_datagram(log_i[0], GM_ADDR, NOW + 1)
    assert srv.datagrams_to_send() == [] and events(srv) == []
    assert srv.half_open_count == 0 and len(srv.established()) == 1
    # replays to the initiator are dropped
    for d in log_r:
        ini.receive_datagram(d, KS_ADDR, NOW + 1)
    assert ini.datagrams_to_send() == [] and events(ini) == [] and ini.state is State.ESTABLISHED


def test_retransmitted_message_3_answered_without_new_dh():
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    (mm1, _), = ini.datagrams_to_send()
    srv.receive_datagram(mm1, GM_ADDR, NOW)
    (mm2, _), = srv.datagrams_to_send()
    srv.receive_datagram(mm1, GM_ADDR, NOW)  # duplicate message 1
    assert srv.datagrams_to_send() == [(mm2, GM_ADDR)] and srv.half_open_count == 1
    ini.receive_datagram(mm2, KS_ADDR, NOW)
    (mm3, _), = ini.datagrams_to_send()
    srv.receive_datagram(mm3, GM_ADDR, NOW)
    (mm4, _), = srv.datagrams_to_send()
    srv.receive_datagram(mm3, GM_ADDR, NOW)
    assert srv.datagrams_to_send() == [(mm4, GM_ADDR)]
    assert srv.pending_count == 1


def test_initiator_retransmits_with_backoff_then_fails():
    ini = MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR)
    ini.start(T0)
    (mm1, _), = ini.datagrams_to_send()
    deadlines = []
    now = T0
    while ini.state is State.MM1_SENT:
        t = ini.get_timer()
        deadlines.append(round(t - T0, 3))
        ini.handle_timer(t - 0.001)  # early: nothing happens
        assert ini.datagrams_to_send() == []
        now = t
        ini.handle_timer(now)
        for d, _ in ini.datagrams_to_send():
            assert d == mm1
    assert deadlines[:5] == [1.0, 3.0, 7.0, 15.0, 30.0]
    f = _failed(events(ini))
    assert "no response" in f.reason or "timeout" in f.reason
    assert ini.get_timer() is None


def test_lost_message_2_recovered_by_retransmission():
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, NOW, drop=lambda d, n: d == "r2i" and n == 0)
    assert ini.state is State.MM1_SENT
    ini.handle_timer(ini.get_timer())
    pump(ini, srv, T0 + 1.1)
    assert ini.state is State.ESTABLISHED and isinstance(events(srv)[0], Phase1Established)


def test_responder_timeouts():
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    # message 1 only: half-open, expires quietly
    (mm1, _), = ini.datagrams_to_send()
    srv.receive_datagram(mm1, GM_ADDR, T0)
    assert srv.half_open_count == 1 and srv.get_timer() == T0 + 10
    srv.handle_timer(T0 + 10)
    assert srv.half_open_count == 0 and events(srv) == [] and srv.get_timer() is None
    # past message 3: the exchange times out with an event
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump(ini, srv, T0, drop=lambda d, n: d == "i2r" and n == 2)
    assert srv.pending_count == 1
    srv.handle_timer(srv.get_timer())
    assert "timeout waiting for message 5" in _failed(events(srv)).reason
    assert srv.pending_count == 0


def test_unexpected_and_malformed_input_never_raises(caplog):
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    (mm1, _), = ini.datagrams_to_send()
    with caplog.at_level(logging.DEBUG, logger="gkm.ike"):
        for bad in (b"", b"\0" * 27, mm1[:-1], mm1 + b"x", b"\xff" * 60, mm1[:16] + b"\x0b" + mm1[17:]):
            srv.receive_datagram(bad, GM_ADDR, NOW)
            ini.receive_datagram(bad, KS_ADDR, NOW)
        # message 2 from the wrong address
        srv.receive_datagram(mm1, GM_ADDR, NOW)
        (mm2, _), = srv.datagrams_to_send()
        ini.receive_datagram(mm2, ("203.0.113.9", 848), NOW)
        assert ini.state is State.MM1_SENT
        # message 3 with a wrong responder cookie
        ini.receive_datagram(mm2, KS_ADDR, NOW)
        (mm3, _), = ini.datagrams_to_send()
        srv.receive_datagram(mm3[:8] + b"\x99" * 8 + mm3[16:], GM_ADDR, NOW)
        # message 3 from another address
        srv.receive_datagram(mm3, ("203.0.113.9", 848), NOW)
    assert srv.pending_count == 0 and events(srv) == [] and events(ini) == []
    text = caplog.text
    assert "shorter than a header" in text and "unknown cookie pair" in text and "is not the peer" in text
    srv.receive_datagram(mm3, GM_ADDR, NOW)
    assert srv.pending_count == 1


def test_every_state_rejects_messages_not_in_the_table():
    """Walk (role, state) x message number: only the table's entry moves the state."""
    from gkm.ike.mainmode import RECEIVE_TRANSITIONS

    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    msgs = {"i2r": [], "r2i": []}

    def rec(d, n, data):
        msgs[d].append(data)
        return data

    pump(ini, srv, NOW, tamper=rec)
    mm = {1: msgs["i2r"][0], 2: msgs["r2i"][0], 3: msgs["i2r"][1], 4: msgs["r2i"][1], 5: msgs["i2r"][2], 6: msgs["r2i"][2]}
    # a fresh initiator in each state receiving each message that is not its next one
    for (role, state), (number, _h, _n) in RECEIVE_TRANSITIONS.items():
        if role is not Role.INITIATOR:
            continue
        for k in (2, 4, 6):
            if k == number:
                continue
            e = MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR, icookie=mm[1][:8])
            e.start(T0)
            e.state = state
            e.rcookie = mm[2][8:16]
            e.receive_datagram(mm[k], KS_ADDR, NOW)
            assert e.state is state, (state, k)
    assert (Role.RESPONDER, State.ESTABLISHED) not in RECEIVE_TRANSITIONS
    # responder engines in MM2_SENT / MM4_SENT given every message of another shape: state
    # unchanged.  (IKEv1 headers carry no direction bit, so message 4 has the shape of message 3
    # -- a reflected message 4 would be taken as 3 and fail at message 5.)
    from gkm.ike.mainmode import choose_proposal

    rcfg = config(AuthMethod.PRE_SHARED_KEY, role="ks")
    prop = choose_proposal(rcfg, m.decode_chain(mm[1][28:], 1)[0][1])[0]
    for state, number in ((State.MM2_SENT, 3), (State.MM4_SENT, 5)):
        for k in (1, 2, 3, 4, 5, 6):
            if (k + 1) // 2 == (number + 1) // 2 or (state, k) == (State.MM2_SENT, 1):
                continue
            e = MainMode.responder_after_message1(
                rcfg, GM_ADDR, mm[1][:8], mm[2][8:16], message1=mm[1], message2=mm[2],
                sai_b=m.decode_chain(mm[1][28:], 1)[0][1], proposal=prop, deadline=T0 + 10,
            )
            e.state = state
            e.receive_datagram(mm[k], GM_ADDR, NOW)
            assert e.state is state, (state, k)


def test_start_twice_is_a_local_error():
    from gkm.ike import LocalProtocolError

    ini = MainMode(config(AuthMethod.PRE_SHARED_KEY, role="gm"), Role.INITIATOR, KS_ADDR)
    ini.start(T0)
    with pytest.raises(LocalProtocolError):
        ini.start(T0)
    with pytest.raises(LocalProtocolError):
        MainMode(config(AuthMethod.PRE_SHARED_KEY, role="ks"), Role.RESPONDER, GM_ADDR)
