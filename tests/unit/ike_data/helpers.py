"""Test PKI and pumping helpers for the phase 1 tests (not a test module)."""

from __future__ import annotations

import datetime
import functools
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gkm.ike import AuthMethod, CertCredential, HashAlg, Identity, MainMode, Phase1Config, Phase1Server, Proposal, PskStore, Role

T0 = 1_780_000_000.0  # 2026-05-28, inside every test certificate's validity
UTC = datetime.timezone.utc
WALL = datetime.datetime.fromtimestamp(T0, UTC)

KS_ADDR = ("192.0.2.1", 848)
GM_ADDR = ("192.0.2.10", 848)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msec test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key({"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind])


@functools.lru_cache(maxsize=None)
def ca(name: str = "Test Root CA", parent: str | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    if parent is None:
        issuer_name, issuer_key, issuer_pub = _name(name), key, key.public_key()
    else:
        pc, pk = ca(parent)
        issuer_name, issuer_key, issuer_pub = pc.subject, pk, pk.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(WALL - datetime.timedelta(days=365)).not_valid_after(WALL + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False)
    )
    return b.sign(issuer_key, hashes.SHA256()), key


@functools.lru_cache(maxsize=None)
def leaf(kind: str, cn: str, issuer: str = "Test Root CA", *, expired: bool = False, fqdn: str | None = None, ip: str | None = None):
    icert, ikey = ca(issuer) if issuer != "Intermediate CA" else ca("Intermediate CA", "Test Root CA")
    key = _key(kind)
    nb, na = (WALL - datetime.timedelta(days=30), WALL + datetime.timedelta(days=365))
    if expired:
        nb, na = WALL - datetime.timedelta(days=400), WALL - datetime.timedelta(days=1)
    sans: list[x509.GeneralName] = [x509.DNSName(fqdn or f"{cn}.example.net")]
    if ip:
        sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(icert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(nb).not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ikey.public_key()), critical=False)
        .sign(ikey, hashes.SHA256())
    )
    return cert, key


METHOD_KIND = {AuthMethod.RSA_SIG: "rsa", AuthMethod.ECDSA_256: "p256", AuthMethod.ECDSA_384: "p384", AuthMethod.ECDSA_521: "p521"}

PSK = b"correct horse battery staple"


def config(
    method: AuthMethod,
    group: int = 19,
    hash_alg: HashAlg = HashAlg.SHA2_256,
    *,
    role: str,
    key_bits: int = 128,
    psk: bytes = PSK,
    cert=None,
    chain=(),
    anchors=None,
    local_id: Identity | None = None,
    **kw,
) -> Phase1Config:
    proposals = kw.pop("proposals", None) or (Proposal(method, group, hash_alg, key_bits=key_bits),)
    if method is AuthMethod.PRE_SHARED_KEY:
        peer = KS_ADDR if role == "gm" else GM_ADDR
        my = GM_ADDR if role == "gm" else KS_ADDR
        return Phase1Config(proposals, local_id=local_id or Identity.ip(my[0]), psk=kw.pop("psk_store", None) or PskStore({peer[0]: psk}), **kw)
    if cert is None:
        cert = leaf(METHOD_KIND[method], "gm1" if role == "gm" else "ks")
    c, k = cert
    return Phase1Config(
        proposals, local_id=local_id, credential=CertCredential(c, k, tuple(chain)),
        trust_anchors=tuple(anchors) if anchors is not None else (ca("Test Root CA")[0],), **kw,
    )


def pump(initiator: MainMode, server: Phase1Server, now: float, *, limit: int = 20, tamper=None, drop=None):
    """Exchange datagrams until quiet.  ``tamper(direction, index, data) -> data``; ``drop(direction, index)``."""
    sent = {"i2r": 0, "r2i": 0}
    for _ in range(limit):
        moved = False
        for data, addr in initiator.datagrams_to_send():
            assert addr == KS_ADDR
            n = sent["i2r"]
            sent["i2r"] += 1
            if drop and drop("i2r", n):
                continue
            if tamper:
                data = tamper("i2r", n, data)
            server.receive_datagram(data, GM_ADDR, now)
            moved = True
        for data, addr in server.datagrams_to_send():
            assert addr == GM_ADDR
            n = sent["r2i"]
            sent["r2i"] += 1
            if drop and drop("r2i", n):
                continue
            if tamper:
                data = tamper("r2i", n, data)
            initiator.receive_datagram(data, KS_ADDR, now)
            moved = True
        if not moved:
            break
    return sent


def events(source) -> list:
    out = []
    while (e := source.next_event()) is not None:
        out.append(e)
    return out


def pair(init_cfg: Phase1Config, resp_cfg: Phase1Config, now: float = T0):
    ini = MainMode(init_cfg, Role.INITIATOR, KS_ADDR)
    srv = Phase1Server(resp_cfg)
    ini.start(now)
    return ini, srv
