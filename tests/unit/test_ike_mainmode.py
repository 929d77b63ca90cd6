"""Main Mode initiator against the responder server, in memory."""

from __future__ import annotations

import itertools

import pytest

from gkm.ike import AuthMethod, HashAlg, Phase1Established, State
from tests.unit.ike_data.helpers import T0, config, events, pair, pump

METHODS = [AuthMethod.PRE_SHARED_KEY, AuthMethod.RSA_SIG, AuthMethod.ECDSA_256, AuthMethod.ECDSA_384]
GROUPS = [14, 19, 20, 21]
HASHES = [HashAlg.SHA2_256, HashAlg.SHA2_384, HashAlg.SHA2_512]


def _establish(method, group, hash_alg, key_bits=128):
    ini, srv = pair(config(method, group, hash_alg, role="gm", key_bits=key_bits), config(method, group, hash_alg, role="ks", key_bits=key_bits))
    pump(ini, srv, T0 + 0.01)
    ie, se = events(ini), events(srv)
    assert ini.state is State.ESTABLISHED, (ini.failure, ie, se)
    assert len(ie) == 1 and isinstance(ie[0], Phase1Established), ie
    assert len(se) == 1 and isinstance(se[0], Phase1Established), se
    a, b = ie[0].sa, se[0].sa
    assert (a.icookie, a.rcookie) == (b.icookie, b.rcookie)
    assert (a.skeyid_a, a.skeyid_e, a.skeyid_d, a.enc_key, a.last_block) == (b.skeyid_a, b.skeyid_e, b.skeyid_d, b.enc_key, b.last_block)
    assert a.peer_id == b.local_id and b.peer_id == a.local_id
    assert a.proposal == b.proposal and a.proposal.group == group and a.prf.hash_alg == hash_alg
    assert a.skeyid_a.hex() not in repr(a)
    return ini, srv, a, b


@pytest.mark.parametrize("method,group,hash_alg", list(itertools.product(METHODS, GROUPS, HASHES)),
                         ids=lambda v: getattr(v, "name", str(v)))
def test_every_combination_establishes(method, group, hash_alg):
    _establish(method, group, hash_alg)


@pytest.mark.parametrize("key_bits", [192, 256])
def test_aes_key_lengths(key_bits):
    _, _, a, _ = _establish(AuthMethod.PRE_SHARED_KEY, 19, HashAlg.SHA2_256, key_bits=key_bits)
    assert len(a.enc_key) == key_bits // 8


def test_ecdsa_p521_with_sha512_and_key_expansion():
    _, _, a, _ = _establish(AuthMethod.ECDSA_521, 21, HashAlg.SHA2_512, key_bits=256)
    assert a.enc_key == a.skeyid_e[:32]


def test_weak_hash_only_when_both_sides_allow_it(caplog):
    """SHA-1 works when explicitly configured on both sides (with a warning); SKEYID_e is 20
    bytes, so the AES-256 key comes from the RFC 2409 Appendix B expansion."""
    from gkm.ike import Identity, Phase1Config, Proposal, PskStore
    from gkm.ike.crypto import expand_key
    from tests.unit.ike_data.helpers import GM_ADDR, KS_ADDR, PSK

    prop = (Proposal(AuthMethod.PRE_SHARED_KEY, 19, HashAlg.SHA1, key_bits=256),)
    gm = Phase1Config(prop, local_id=Identity.ip(GM_ADDR[0]), psk=PskStore({KS_ADDR[0]: PSK}), allow_weak=True)
    ks = Phase1Config(prop, local_id=Identity.ip(KS_ADDR[0]), psk=PskStore({GM_ADDR[0]: PSK}), allow_weak=True)
    ini, srv = pair(gm, ks)
    pump(ini, srv, T0)
    (ev,) = events(srv)
    assert isinstance(ev, Phase1Established) and len(ev.sa.skeyid_e) == 20
    assert ev.sa.enc_key == expand_key(ev.sa.prf, ev.sa.skeyid_e, 32)


def test_messages_decode_with_the_wire_codec():
    """Every Main Mode message (5 and 6 after decryption) is a valid gkm.wire message."""
    from gkm import wire
    from gkm.ike import crypto
    from tests.unit.ike_data.helpers import config, pair, pump

    ini, srv = pair(config(AuthMethod.ECDSA_256, role="gm"), config(AuthMethod.ECDSA_256, role="ks"))
    seen = []
    pump(ini, srv, T0, tamper=lambda d, n, data: seen.append((d, n, data)) or data)
    sa = events(ini)[0].sa
    kinds = []
    iv = None
    for direction, n, data in seen:
        if data[19] & 1:
            hdr_np = data[16]
            if iv is None:
                # message 5: IV from hash(g^xi | g^xr); take it from the engine's first encrypted message
                m3 = wire.decode_message(seen[2][2])
                m4 = wire.decode_message(seen[3][2])
                iv = crypto.phase1_iv(sa.prf, m3.get(wire.KeyExchange).data, m4.get(wire.KeyExchange).data, 16)
            pt = crypto.cbc_decrypt(sa.cipher, sa.enc_key, iv, data[28:])
            iv = data[-16:]
            msg = wire.decode_message(data[:28] + pt, block_size=16)
            assert hdr_np == msg.payloads[0].TYPE
        else:
            msg = wire.decode_message(data)
        kinds.append(msg.types())
    assert kinds[0] == (1,) and kinds[1] == (1,)
    assert kinds[2][:2] == (4, 10) and kinds[3][:2] == (4, 10)
    assert kinds[4] == (5, 6, 9, 11) and kinds[5] == (5, 6, 9)  # MM5 carries INITIAL-CONTACT
    sa1 = wire.decode_message(seen[0][2]).get(wire.SecurityAssociation)
    assert sa1.doi == wire.Doi.GDOI and sa1.proposals[0].protocol_id == wire.ProtocolId.ISAKMP


def test_chain_framing_matches_wire_encoder():
    from gkm import wire
    from gkm.ike import _msg

    pl = [(4, b"\x01" * 64), (10, b"\x02" * 32), (7, b"\x04")]
    assert _msg.encode_chain(pl) == tuple(wire.encode_payloads(wire.UnknownPayload(t, b) for t, b in pl))
    assert _msg.decode_chain(_msg.encode_chain(pl)[1], 4) == pl
