"""IKEv2 key derivation and SK protection of gkm.ikev2 against strongSwan's charon.

charon (tests/host/charon.py, its own configuration, port 500 of netlab host h1) is the
responder (first test); the test process plays the initiator on a real UDP socket in h2 (port 848) with
gkm.ikev2's codec, key derivation and SK protection (the exchange engine does not exist yet, so
the two requests are built here): IKE_SA_INIT with a real ECDH (P-256 or X25519) and
CHILDLESS_IKEV2_SUPPORTED (RFC 6023), then a PSK IKE_AUTH without a Child SA.

Passes when: charon's SKEYSEED and SK_d/ai/ar/ei/er/pi/pr (its log at level 4 for ``ike``:
``SKEYSEED`` and ``Sk_* secret`` hex dumps, src/libcharon/sa/ikev2/keymat_v2.c) equal msec's;
charon accepts msec's SK-protected IKE_AUTH (so our SK_ei/SK_ai framing and PSK AUTH verify
there); and charon's SK-protected IKE_AUTH response unprotects at msec with an AUTH that
verifies under SK_pr.  One case per SK algorithm family and PRF size.

Second test: charon initiates (``swanctl --initiate --ike``) to gkm.ikev2's SaInitResponder
engine, with and without a COOKIE demand (RFC 7296 §2.6: charon must come back with the cookie).
Passes when the engine's keys equal charon's and charon's SK-protected IKE_AUTH request
unprotects with them and carries a PSK AUTH that verifies under SK_pi.  NAT detection (RFC 7296
§2.23) both ways: the engine, told its true address, finds no NAT in charon's
NAT_DETECTION_*_IP hashes and charon none in the engine's; told another address, the engine's
NAT_DETECTION_SOURCE_IP makes charon say "remote host is behind NAT".  Either way charon, having
seen NAT detection answered, sends IKE_AUTH to UDP 4500 with the non-ESP marker (strongSwan
floats whenever the peer does NAT detection), which :func:`gkm.ikev2.natt.unframe` opens.  (Debian's strongSwan
5.9 has no ML-KEM, so the IKE_INTERMEDIATE exchange is checked in memory only.)
"""

from __future__ import annotations

import hmac
import os
import select
import socket
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from gkm.ikev2 import (
    Authentication, AuthMethod, ExchangeType, Header, HeaderFlags, IdInitiator, IdResponder, IdType, KeyExchange,
    KeyExchangeMethod, Nonce, Notify, Proposal, ProtocolId, SecurityAssociation, Transform,
    TransformAttr, TransformType, decode_message, encode_message,
)
from gkm.ikev2.constants import Encr, Integ, Prf
from gkm.ikev2.events import CookieDemanded, SaInitEstablished
from gkm.ikev2.keys import Suite, derive_ike_keys, prf
from gkm.ikev2.natt import Kind, NatStatus, unframe
from gkm.ikev2.sa_init import SaInitConfig, SaInitResponder
from gkm.ikev2.sk import SkCipher, protect, unprotect
from gkm.wire.attributes import Attribute
from tests.host import charon as ch

MSEC_PORT = 848
CHARON_FQDN = "charon.example.net"
MSEC_FQDN = "msec.example.net"
PSK = b"ikev2 interop pre-shared key 0123456789"
CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
DEADLINE = 30.0

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Case:
    suite: Suite
    group: KeyExchangeMethod
    charon_proposal: str


CASES = {
    "gcm256-sha256-p256": Case(Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256), KeyExchangeMethod.ECP256,
                               "aes256gcm16-prfsha256-ecp256"),
    "cbc128-sha256-x25519": Case(Suite(Prf.HMAC_SHA2_256, Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
                                 KeyExchangeMethod.CURVE25519, "aes128-sha256-prfsha256-curve25519"),
    "cbc256-sha384-p256": Case(Suite(Prf.HMAC_SHA2_384, Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192),
                               KeyExchangeMethod.ECP256, "aes256-sha384-prfsha384-ecp256"),
    "gcm128-sha512-x25519": Case(Suite(Prf.HMAC_SHA2_512, Encr.AES_GCM_16, 128), KeyExchangeMethod.CURVE25519,
                                 "aes128gcm16-prfsha512-curve25519"),
}

CHARON_KEYS = {"SKEYSEED": "skeyseed", "Sk_d secret": "sk_d", "Sk_ai secret": "sk_ai", "Sk_ar secret": "sk_ar",
               "Sk_ei secret": "sk_ei", "Sk_er secret": "sk_er", "Sk_pi secret": "sk_pi", "Sk_pr secret": "sk_pr"}


class Ecdh:
    """The initiator's key share (RFC 5903 §7: x | y for P-256, shared secret x; RFC 8031 X25519)."""

    def __init__(self, group: KeyExchangeMethod) -> None:
        self.group = group
        if group == KeyExchangeMethod.ECP256:
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.public = self.key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        else:
            self.key = x25519.X25519PrivateKey.generate()
            self.public = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def shared(self, peer: bytes) -> bytes:
        if self.group == KeyExchangeMethod.ECP256:
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
            return self.key.exchange(ec.ECDH(), point)
        return self.key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))


def sa_payload(case: Case) -> SecurityAssociation:
    s = case.suite
    ts = [Transform(TransformType.ENCR, s.encr, (Attribute(TransformAttr.KEY_LENGTH, s.key_bits),)),
          Transform(TransformType.PRF, s.prf)]
    if s.integ:
        ts.append(Transform(TransformType.INTEG, s.integ))
    ts.append(Transform(TransformType.KE, case.group))
    return SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", tuple(ts)),))


def start_charon(lab, tmp_path, case: Case, remote_port: int | None = None) -> ch.Charon:
    if not ch.available():
        pytest.fail(f"{ch.CHARON} or {ch.SWANCTL} missing: run tools/setup", pytrace=False)
    h1, h2 = lab.hosts
    c = ch.Charon(h1, tmp_path / "charon", plugins=ch.IKEV2_PLUGINS)
    port_line = f"\n        remote_port = {remote_port}" if remote_port else ""
    c.configure(f"""connections {{
    msec {{
        version = 2
        local_addrs = {h1.ip4}
        remote_addrs = {h2.ip4}
        proposals = {case.charon_proposal}
        childless = allow{port_line}
        local {{
            auth = psk
            id = {CHARON_FQDN}
        }}
        remote {{
            auth = psk
            id = {MSEC_FQDN}
        }}
    }}
}}
secrets {{
    ike-msec {{
        secret = 0x{PSK.hex()}
        id-1 = {CHARON_FQDN}
        id-2 = {MSEC_FQDN}
    }}
}}
""")
    c.start()
    c.load()
    return c


def exchange(sock: socket.socket, data: bytes, addr) -> bytes:
    """Send one request, return the response (retransmitting once a second, RFC 7296 §2.1)."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        sock.sendto(data, addr)
        ready, _, _ = select.select([sock], [], [], 1.0)
        if ready:
            answer = sock.recvfrom(65535)[0]
            if answer[18:24] == data[18:19] + answer[19:20] + data[20:24]:  # same exchange and message ID
                return answer
    raise AssertionError("no response from charon")


def psk_auth(keys_prf: int, signed_octets: bytes) -> bytes:
    """RFC 7296 §2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)."""
    return prf(keys_prf, prf(keys_prf, PSK, b"Key Pad for IKEv2"), signed_octets)


@pytest.mark.parametrize("name", list(CASES))
def test_ike_sa_init_and_auth_with_charon(netlab_factory, tmp_path, name):
    case = CASES[name]
    lab = netlab_factory(2)
    h1, h2 = lab.hosts
    c = start_charon(lab, tmp_path, case)
    with h2.inside():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((h2.ip4, MSEC_PORT))
    peer = (h1.ip4, ch.IKE_PORT)
    try:
        spi_i, ni, dh = os.urandom(8), os.urandom(32), Ecdh(case.group)
        init_header = Header(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlags.INITIATOR, 0)
        message1 = encode_message(init_header, (
            sa_payload(case), KeyExchange(case.group, dh.public), Nonce(ni),
            Notify(0, CHILDLESS_IKEV2_SUPPORTED)))
        message2 = exchange(sock, message1, peer)
        resp = decode_message(message2)
        assert resp.header.exchange == ExchangeType.IKE_SA_INIT and resp.header.response, resp
        errors = [n for n in resp.all(Notify) if n.is_error]
        assert not errors, f"charon refused: {errors}\n{c.log()}"
        chosen = resp.get(SecurityAssociation).proposals[0].transforms  # charon orders them by type
        assert sorted(chosen, key=lambda t: t.type) == sorted(sa_payload(case).proposals[0].transforms, key=lambda t: t.type)
        assert any(n.type == CHILDLESS_IKEV2_SUPPORTED for n in resp.all(Notify))
        spi_r, nr = resp.header.spi_r, resp.get(Nonce).data
        keys = derive_ike_keys(case.suite, ni, nr, dh.shared(resp.get(KeyExchange).data), spi_i, spi_r)

        # 1. an SK-protected IKE_AUTH (PSK, childless) that charon accepts
        idi = IdInitiator(IdType.FQDN, MSEC_FQDN.encode())
        signed_i = message1 + nr + prf(case.suite.prf, keys.sk_pi, idi.encode())
        auth_header = Header(spi_i, spi_r, ExchangeType.IKE_AUTH, HeaderFlags.INITIATOR, 1)
        request = protect(auth_header, (idi, Authentication(AuthMethod.PSK, psk_auth(case.suite.prf, signed_i))),
                          SkCipher.for_message(keys, auth_header))
        reply = exchange(sock, request, peer)
        c.wait_log(r"IKE_SA msec\[\d+\] established between ", timeout=DEADLINE)

        # 2. the derived keys equal charon's (charon 5.9 derives them when IKE_AUTH arrives)
        theirs = {CHARON_KEYS[label]: data for label, data in ch.hexdumps(c.log()) if label in CHARON_KEYS}
        ours = {k: getattr(keys, k) for k in CHARON_KEYS.values() if k != "skeyseed"}
        ours["skeyseed"] = prf(case.suite.prf, ni + nr, dh.shared(resp.get(KeyExchange).data))
        if case.suite.integ is None:  # AEAD: no SK_a, charon logs none
            del ours["sk_ai"], ours["sk_ar"]
        assert set(theirs) == set(ours), [label for label, _ in ch.hexdumps(c.log())]
        for k in sorted(ours):
            assert ours[k] == theirs[k], f"{k} differs between msec and charon"

        # 3. charon's SK-protected response opens with SK_er/SK_ar, and its AUTH verifies
        answer = unprotect(reply, SkCipher.for_sender(keys, initiator=False))
        assert answer.header.exchange == ExchangeType.IKE_AUTH and answer.header.message_id == 1
        idr = answer.get(IdResponder)
        assert idr == IdResponder(IdType.FQDN, CHARON_FQDN.encode()), answer
        signed_r = message2 + ni + prf(case.suite.prf, keys.sk_pr, idr.encode())
        assert hmac.compare_digest(answer.get(Authentication).data, psk_auth(case.suite.prf, signed_r))
    finally:
        c.stop()
        sock.close()


def charon_keys(c: ch.Charon, keys, ni: bytes, nr: bytes, shared: bytes | None) -> None:
    theirs = {CHARON_KEYS[label]: data for label, data in ch.hexdumps(c.log()) if label in CHARON_KEYS}
    ours = {k: getattr(keys, k) for k in CHARON_KEYS.values() if k != "skeyseed"}
    if keys.suite.integ is None:
        del ours["sk_ai"], ours["sk_ar"]
    theirs.pop("skeyseed", None)
    assert set(theirs) == set(ours), [label for label, _ in ch.hexdumps(c.log())]
    for k in sorted(ours):
        assert ours[k] == theirs[k], f"{k} differs between msec and charon"


@pytest.mark.parametrize("cookie, nat", [(False, False), (True, False), (False, True)], ids=["plain", "cookie", "nat"])
@pytest.mark.parametrize("name", ["gcm256-sha256-p256", "cbc128-sha256-x25519"])
def test_charon_initiates_to_msec_responder(netlab_factory, tmp_path, name, cookie, nat):
    case = CASES[name]
    lab = netlab_factory(2)
    h1, h2 = lab.hosts
    c = start_charon(lab, tmp_path, case, remote_port=MSEC_PORT)
    with h2.inside():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        natt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((h2.ip4, MSEC_PORT))
    natt.bind((h2.ip4, 4500))
    responder = SaInitResponder(SaInitConfig(case.suite, (case.group,), "no"), cookie_threshold=0 if cookie else 64)
    initiation = c.initiate_ike("msec")
    try:
        end = time.monotonic() + DEADLINE
        done, demanded, auth_request = None, [], None
        while time.monotonic() < end and auth_request is None:
            ready, _, _ = select.select([sock, natt], [], [], 0.5)
            if not ready:
                continue
            if natt in ready:  # charon floated: IKE_AUTH behind the non-ESP marker
                framed, _addr = natt.recvfrom(65535)
                got = unframe(framed)
                assert got.kind is Kind.IKE, framed.hex()
                assert done is not None and decode_message(got.message).header.exchange == ExchangeType.IKE_AUTH
                auth_request = got.message
                break
            data, addr = sock.recvfrom(65535)
            if done is not None and decode_message(data).header.exchange == ExchangeType.IKE_AUTH:
                auth_request = data
                break
            # our address as the engine is told it: the true one, or one a NAT would hide
            local = ("192.0.2.99", MSEC_PORT) if nat else (h2.ip4, MSEC_PORT)
            responder.receive_datagram(data, addr, time.monotonic(), local)
            for out, to in responder.datagrams_to_send():
                sock.sendto(out, to)
            while (ev := responder.next_event()) is not None:
                if isinstance(ev, CookieDemanded):
                    demanded.append(ev)
                elif isinstance(ev, SaInitEstablished):
                    done = ev
                else:
                    raise AssertionError(f"msec responder: {ev!r}\n{c.log()}")
        assert done is not None and auth_request is not None, c.log()
        assert len(demanded) == (1 if cookie else 0)
        # charon's hashes as the engine checks them: no NAT on charon's side; ours (behind the
        # made-up address) as charon checks them
        assert done.nat == NatStatus(initiator_behind_nat=False, responder_behind_nat=nat), done
        if nat:
            c.wait_log(r"remote host is behind NAT", timeout=DEADLINE)
        else:
            assert "behind NAT" not in c.log()
        if cookie:
            c.wait_log(r"generating IKE_SA_INIT request 0 \[ N\(COOKIE\) SA KE No ", timeout=DEADLINE)
        # charon's IKE_AUTH request opens with the responder's keys and its PSK AUTH verifies
        req = unprotect(auth_request, SkCipher.for_sender(done.keys, initiator=True))
        assert req.header.exchange == ExchangeType.IKE_AUTH and req.header.message_id == 1
        idi = req.get(IdInitiator)
        assert idi == IdInitiator(IdType.FQDN, CHARON_FQDN.encode()), req
        signed_i = done.message1 + done.nr + prf(case.suite.prf, done.keys.sk_pi, idi.encode())
        assert hmac.compare_digest(req.get(Authentication).data, psk_auth(case.suite.prf, signed_i))
        charon_keys(c, done.keys, done.ni, done.nr, None)
    finally:
        if initiation.poll() is None:
            initiation.kill()
            initiation.wait()
        c.stop()
        sock.close()
        natt.close()
