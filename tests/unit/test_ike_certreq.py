"""Certificate Requests in Main Mode messages 5 and 6, and how a refused message 5 is reported.

RFC 2408 section 3.10: a Certificate Request may come at any point of the exchange; IKEv1
initiators with certificates commonly send one inside message 5.  A refusal is sent in the form
the peer can read: a protected Informational once the keys are shared, clear text before.
"""

from __future__ import annotations

import os

import pytest

from gkm.ike import AuthMethod, Identity, MainMode, Phase1Established, Phase1Failed, Phase1Server, PskStore, Role, State, crypto
from gkm.ike import _msg as m
from gkm.ike.mainmode import N_INVALID_ID_INFORMATION, N_INVALID_PAYLOAD_TYPE
from tests.unit.ike_data.helpers import GM_ADDR, KS_ADDR, T0, config, events, pair, pump

NOW = T0 + 0.01
CR_X509 = (m.CR, bytes([m.CERT_X509_SIG]))


class _ExtraInMessage5(MainMode):
    """An initiator whose message 5 carries ``extra`` payloads before the authentication ones,
    where other implementations put their Certificate Request."""

    extra: list[tuple[int, bytes]] = [CR_X509]

    def _auth_payloads(self, id_b: bytes, *, initiator: bool) -> list[tuple[int, bytes]]:
        return list(self.extra) + super()._auth_payloads(id_b, initiator=initiator)


def _initiator(cls, cfg) -> MainMode:
    ini = cls(cfg, Role.INITIATOR, KS_ADDR)
    ini.start(NOW)
    return ini


def _plain_message5(ini: MainMode, data: bytes) -> list[tuple[int, bytes]]:
    """Decrypt a message 5 the initiator sent, with its keys: the payload chain on the wire."""
    hdr = m.decode_header(data)
    assert hdr.flags & m.FLAG_E
    prop = ini.sa.proposal if ini.sa is not None else ini._proposal
    iv = crypto.phase1_iv(crypto.prf_of(prop.hash), ini._gxi, ini._gxr, prop.enc.block_size)
    keys = ini.sa if ini.sa is not None else ini._keys
    pt = crypto.cbc_decrypt(prop.enc, keys.enc_key, iv, data[m.HEADER_LEN:])
    return m.decode_chain(pt, hdr.next_payload, m.HEADER_LEN, allow_trailing=True)


def _capture(store: list):
    def tamper(direction, index, data):
        store.append((direction, index, data))
        return data
    return tamper


@pytest.mark.parametrize("method", [AuthMethod.ECDSA_256, AuthMethod.RSA_SIG, AuthMethod.PRE_SHARED_KEY], ids=lambda v: v.name)
def test_certificate_request_in_message5_is_accepted(method):
    ini = _initiator(_ExtraInMessage5, config(method, role="gm"))
    srv = Phase1Server(config(method, role="ks"))
    seen: list = []
    pump(ini, srv, NOW, tamper=_capture(seen))
    assert ini.state is State.ESTABLISHED, ini.failure
    (ev,) = events(srv)
    assert isinstance(ev, Phase1Established)
    msg5 = next(d for direction, i, d in seen if direction == "i2r" and i == 2)
    types = [t for t, _b in _plain_message5(ini, msg5)]
    assert m.CR in types and types[0] == m.ID, types  # the bytes on the wire had the request


class _CrInMessage6(MainMode):
    def _auth_payloads(self, id_b: bytes, *, initiator: bool) -> list[tuple[int, bytes]]:
        out = super()._auth_payloads(id_b, initiator=initiator)
        return out if initiator else [CR_X509] + out


def _pump_engines(ini: MainMode, resp: MainMode, now: float, limit: int = 20) -> None:
    for _ in range(limit):
        moved = False
        for data, _a in ini.datagrams_to_send():
            resp.receive_datagram(data, GM_ADDR, now)
            moved = True
        for data, _a in resp.datagrams_to_send():
            ini.receive_datagram(data, KS_ADDR, now)
            moved = True
        if not moved:
            return


@pytest.mark.parametrize("method", [AuthMethod.ECDSA_256, AuthMethod.PRE_SHARED_KEY], ids=lambda v: v.name)
def test_certificate_request_in_message6_is_accepted(method):
    ini = _initiator(MainMode, config(method, role="gm"))
    resp = _CrInMessage6(config(method, role="ks"), Role.RESPONDER, GM_ADDR, icookie=ini.icookie, rcookie=os.urandom(8))
    _pump_engines(ini, resp, NOW)
    assert resp.state is State.ESTABLISHED, resp.failure
    assert ini.state is State.ESTABLISHED, ini.failure


def _refused(ini: MainMode, srv) -> tuple[Phase1Failed, Phase1Failed, list[bytes]]:
    seen: list = []
    pump(ini, srv, NOW, tamper=_capture(seen))
    replies = [d for direction, i, d in seen if direction == "r2i" and i >= 2]
    (r,) = events(srv)
    (i,) = events(ini)
    assert isinstance(r, Phase1Failed) and isinstance(i, Phase1Failed), (r, i)
    return r, i, replies


def test_refused_message5_with_signatures_gets_a_protected_notification():
    """A payload not allowed in message 5 (a KE): the keys are shared, so the responder says so
    in a protected Informational and the initiator stops at once (no retransmission needed)."""
    class KeInMessage5(_ExtraInMessage5):
        extra = [(m.KE, bytes(64))]

    ini = _initiator(KeInMessage5, config(AuthMethod.ECDSA_256, role="gm"))
    srv = Phase1Server(config(AuthMethod.ECDSA_256, role="ks"))
    r, i, replies = _refused(ini, srv)
    assert "payload type 4 not allowed in message 5" in r.reason and r.notify == N_INVALID_PAYLOAD_TYPE
    (reply,) = replies
    hdr = m.decode_header(reply)
    assert hdr.exchange == m.EXCH_INFO and hdr.flags & m.FLAG_E and hdr.message_id != 0
    assert ini.state is State.FAILED and "peer refused message 5: INVALID-PAYLOAD-TYPE" in i.reason
    assert i.notify == N_INVALID_PAYLOAD_TYPE
    assert ini.get_timer() is None  # nothing left to retransmit


def test_psk_identity_refusal_is_protected():
    """HASH_I verified (the peer holds the key) but the ID is not the key's owner: protected."""
    gm7, gm8 = Identity.key_id(b"gm7"), Identity.key_id(b"gm8")
    srv = Phase1Server(config(AuthMethod.PRE_SHARED_KEY, role="ks", psk_store=PskStore(by_id={gm8: b"k8", gm7: b"k7"})))
    ini = _initiator(MainMode, config(AuthMethod.PRE_SHARED_KEY, role="gm", psk=b"k8", local_id=gm7))
    r, i, replies = _refused(ini, srv)
    assert "does not own the pre-shared key" in r.reason and r.notify == N_INVALID_ID_INFORMATION
    (reply,) = replies
    assert m.decode_header(reply).flags & m.FLAG_E
    assert "peer refused message 5: INVALID-ID-INFORMATION" in i.reason


def test_wrong_psk_refusal_is_clear_text():
    """No key in common: only a clear-text notification can be read by the peer at all."""
    srv = Phase1Server(config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    ini = _initiator(MainMode, config(AuthMethod.PRE_SHARED_KEY, role="gm", psk=b"not the key"))
    r, i, replies = _refused(ini, srv)
    assert "HASH_I does not verify" in r.reason
    (reply,) = replies
    hdr = m.decode_header(reply)
    assert hdr.exchange == m.EXCH_INFO and not hdr.flags & m.FLAG_E
    assert "unauthenticated notification" in i.reason


def test_forged_protected_refusal_is_dropped():
    """An encrypted Informational that does not verify under the exchange's keys changes nothing."""
    ini = _initiator(MainMode, config(AuthMethod.ECDSA_256, role="gm"))
    srv = Phase1Server(config(AuthMethod.ECDSA_256, role="ks"))
    pump(ini, srv, NOW, drop=lambda direction, i: direction == "r2i" and i >= 2)  # message 6 lost
    assert ini.state is State.MM5_SENT
    forged = m.encode_header(ini.icookie, ini.rcookie, m.HASH, m.EXCH_INFO, m.FLAG_E, 7, m.HEADER_LEN + 32) + os.urandom(32)
    ini.receive_datagram(forged, KS_ADDR, NOW)
    assert ini.state is State.MM5_SENT
