"""IKEv1 interop with strongSwan's charon (Debian's charon-systemd): Main Mode phase 1.

Two netlab hosts: charon in h1 (tests/host/charon.py: its own strongswan.conf and swanctl
directory, port 500 of h1's namespace), msec's sans-I/O Main Mode engine in the test process on a
real UDP socket made in h2's namespace (port 848).  For each of PSK, ECDSA P-256 and RSA-2048
certificates, msec is initiator (MainMode) and responder (Phase1Server); the test passes when both
sides report the phase 1 up, charon's key material (read from its log at level 4 for ``ike``:
SKEYID_d/_a/_e, the encryption key and the last CBC block of Main Mode) equals msec's Phase1SA,
and a Delete (a protected Informational) from one side is verified by the other.  charon
initiates IKE-only (``swanctl --initiate --ike``), so no Quick Mode follows; as responder it waits
for one that msec never starts.  With certificates, charon as initiator sends a Certificate
Request in message 5 (asserted), which msec once refused.
"""

from __future__ import annotations

import datetime
import select
import socket
import time
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gkm.ike import (
    AuthMethod, CertCredential, EncAlg, HashAlg, Identity, MainMode, Phase1Config, Phase1Deleted,
    Phase1Established, Phase1Failed, Phase1Server, Proposal, PskStore, Role,
)
from tests.host import charon as ch

MSEC_PORT = 848
CHARON_FQDN = "charon.example.net"
MSEC_FQDN = "msec.example.net"
MSEC_DN = f"O=msec interop, CN={MSEC_FQDN}"  # strongSwan's spelling of msec's certificate subject
PSK = b"interop pre-shared key 0123456789"
DEADLINE = 40.0  # one phase 1, generous for a loaded machine

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Case:
    name: str
    method: AuthMethod
    group: int
    hash: HashAlg
    key_bits: int
    charon_proposal: str  # the same suite in swanctl's notation


CASES = {
    "psk": Case("psk", AuthMethod.PRE_SHARED_KEY, 19, HashAlg.SHA2_256, 128, "aes128-sha256-ecp256"),
    "ecdsa": Case("ecdsa", AuthMethod.ECDSA_256, 20, HashAlg.SHA2_384, 256, "aes256-sha384-ecp384"),
    "rsa": Case("rsa", AuthMethod.RSA_SIG, 14, HashAlg.SHA2_256, 256, "aes256-sha256-modp2048"),
}


# ---------------------------------------------------------------------------- PKI


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca: bool, san: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = (b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki():
    """A CA (ECDSA P-256) and, per certificate method, a leaf for each side (SAN = its FQDN)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("msec interop CA", "msec interop")
    ca_cert = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    leaves = {}
    for case, make in (("ecdsa", lambda: ec.generate_private_key(ec.SECP256R1())),
                       ("rsa", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))):
        for side, fqdn in (("msec", MSEC_FQDN), ("charon", CHARON_FQDN)):
            key = make()
            leaves[case, side] = (_cert(_name(fqdn, f"{side} interop"), key, ca_name, ca_key, ca=False, san=fqdn), key)
    return ca_cert, leaves


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# ---------------------------------------------------------------------------- the two sides


@pytest.fixture
def lab(netlab_factory):
    return netlab_factory(2)


def start_charon(lab, tmp_path, case: Case, pki) -> ch.Charon:
    if not ch.available():
        pytest.fail(f"{ch.CHARON} or {ch.SWANCTL} missing: run tools/setup (installs charon-systemd, "
                    "strongswan-swanctl, libstrongswan-standard-plugins)", pytrace=False)
    h1, h2 = lab.hosts
    c = ch.Charon(h1, tmp_path / "charon")
    if case.method is AuthMethod.PRE_SHARED_KEY:
        local, remote = f"auth = psk\n id = {CHARON_FQDN}", f"auth = psk\n id = {MSEC_FQDN}"
        secrets = f"""secrets {{
    ike-msec {{
        secret = 0x{PSK.hex()}
        id-1 = {CHARON_FQDN}
        id-2 = {MSEC_FQDN}
    }}
}}"""
    else:
        ca_cert, leaves = pki
        cert, key = leaves[case.name, "charon"]
        c.put_file("x509ca", "ca.pem", _pem(ca_cert))
        c.put_file("x509", "charon.pem", _pem(cert))
        c.put_file("private", "charon.key", _key_pem(key))
        local = f"auth = pubkey\n certs = charon.pem\n id = {CHARON_FQDN}"
        remote = f'auth = pubkey\n id = "{MSEC_DN}"'
        secrets = ""
    c.configure(f"""connections {{
    msec {{
        version = 1
        local_addrs = {h1.ip4}
        remote_addrs = {h2.ip4}
        remote_port = {MSEC_PORT}
        proposals = {case.charon_proposal}
        local {{
            {local}
        }}
        remote {{
            {remote}
        }}
    }}
}}
{secrets}
""")
    c.start()
    c.load()
    return c


def msec_config(case: Case, pki, charon_ip: str) -> Phase1Config:
    prop = (Proposal(case.method, case.group, case.hash, EncAlg.AES_CBC, case.key_bits),)
    if case.method is AuthMethod.PRE_SHARED_KEY:
        # the PSK belongs to charon's identity (it authenticates only that), found by its address
        charon_id = Identity.fqdn(CHARON_FQDN)
        return Phase1Config(prop, local_id=Identity.fqdn(MSEC_FQDN),
                            psk=PskStore(by_id={charon_id: PSK}, address_ids={charon_ip: charon_id}),
                            peer_id=charon_id)
    ca_cert, leaves = pki
    cert, key = leaves[case.name, "msec"]
    # the engine's clock is time.monotonic(); certificate validity is judged in wall time
    return Phase1Config(prop, credential=CertCredential(cert, key), trust_anchors=(ca_cert,),
                        peer_id=Identity.fqdn(CHARON_FQDN), wall_time_offset=time.time() - time.monotonic())


def msec_socket(host) -> socket.socket:
    with host.inside():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host.ip4, MSEC_PORT))
    return s


def pump(engine, sock: socket.socket, deadline: float, until=(Phase1Established, Phase1Failed)):
    """Drive the engine over the UDP socket until it reports an event of the types ``until``
    (phase 1 up or failed); None at the deadline."""
    try:
        while True:
            for data, addr in engine.datagrams_to_send():
                sock.sendto(data, addr)
            while (ev := engine.next_event()) is not None:
                if isinstance(ev, until):
                    return ev
            now = time.monotonic()
            if now >= deadline:
                return None
            t = engine.get_timer()
            wait = min(deadline - now, 0.5) if t is None else max(0.0, min(t - now, deadline - now, 0.5))
            ready, _, _ = select.select([sock], [], [], wait)
            now = time.monotonic()
            if ready:
                data, addr = sock.recvfrom(65535)
                engine.receive_datagram(data, addr, now)
            elif t is not None and now >= t:
                engine.handle_timer(now)
    finally:
        for data, addr in engine.datagrams_to_send():  # e.g. the responder's message 6
            sock.sendto(data, addr)


def assert_same_keys(c: ch.Charon, sa) -> None:
    sets = c.phase1_keys()
    assert len(sets) == 1, f"charon derived {len(sets)} key sets:\n{c.log()}"
    theirs = sets[0]
    assert set(theirs) == {"skeyid_d", "skeyid_a", "skeyid_e", "enc_key", "last_block"}, theirs.keys()
    assert len(sa.skeyid_d) == sa.prf.size and len(sa.enc_key) == sa.proposal.key_len
    for name, value in theirs.items():
        assert getattr(sa, name) == value, f"{name} differs between msec and charon"


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_msec_initiates_to_charon(lab, tmp_path, pki, case):
    case = CASES[case]
    h1, h2 = lab.hosts
    c = start_charon(lab, tmp_path, case, pki)
    sock = msec_socket(h2)
    try:
        engine = MainMode(msec_config(case, pki, h1.ip4), Role.INITIATOR, (h1.ip4, ch.IKE_PORT))
        engine.start(time.monotonic())
        ev = pump(engine, sock, time.monotonic() + DEADLINE)
        assert isinstance(ev, Phase1Established), f"msec: {ev!r}\ncharon log:\n{c.log()}"
        c.wait_log(r"IKE_SA msec\[\d+\] established between ", timeout=DEADLINE)
        sa = ev.sa
        assert sa.peer_id == Identity.fqdn(CHARON_FQDN)
        assert f"...{h2.ip4}[{MSEC_FQDN if case.method is AuthMethod.PRE_SHARED_KEY else MSEC_DN}]" in c.log()
        assert_same_keys(c, sa)
        # msec's protected Informational (HASH(1) under SKEYID_a, IV from the last block)
        # verifies at charon: it deletes its IKE SA
        engine.delete(time.monotonic())
        for data, addr in engine.datagrams_to_send():
            sock.sendto(data, addr)
        c.wait_log(r"received DELETE for IKE_SA msec\[\d+\]", timeout=DEADLINE)
        assert "message verification failed" not in c.log()
    finally:
        c.stop()
        sock.close()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_charon_initiates_to_msec(lab, tmp_path, pki, case):
    case = CASES[case]
    h1, h2 = lab.hosts
    c = start_charon(lab, tmp_path, case, pki)
    sock = msec_socket(h2)
    try:
        server = Phase1Server(msec_config(case, pki, h1.ip4))
        initiation = c.initiate_ike("msec")
        try:
            ev = pump(server, sock, time.monotonic() + DEADLINE)
            out, _ = initiation.communicate(timeout=DEADLINE)
        finally:
            if initiation.poll() is None:
                initiation.kill()
                initiation.wait()
        assert isinstance(ev, Phase1Established), f"msec: {ev!r}\ncharon log:\n{c.log()}"
        assert initiation.returncode == 0, f"swanctl --initiate: {out}\ncharon log:\n{c.log()}"
        c.wait_log(r"IKE_SA msec\[\d+\] established between ", timeout=DEADLINE)
        if case.method.is_signature:  # what msec once refused: a Certificate Request in message 5
            assert c.wait_log(r"generating ID_PROT request 0 \[ ID CERT SIG CERTREQ ")
        sa = ev.sa
        assert sa.peer_id == Identity.fqdn(CHARON_FQDN) and sa.peer_addr == (h1.ip4, ch.IKE_PORT)
        assert_same_keys(c, sa)
        # charon's Delete when it shuts down (a protected Informational) verifies at msec
        c.stop()
        gone = pump(server, sock, time.monotonic() + DEADLINE, until=(Phase1Deleted,))
        assert isinstance(gone, Phase1Deleted) and gone.icookie + gone.rcookie == sa.spi, gone
        assert "peer deleted the ISAKMP SA" in gone.reason
    finally:
        c.stop()
        sock.close()
