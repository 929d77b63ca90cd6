"""Shared fixtures for the GDOI tests: policies, credentials on disk, in-memory pumping.

(A test module without tests, so that it lives under the tests/unit/test_gdoi_*.py names.)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gkm.gdoi import KeyServerEngine, MemberRegistration, StoreKeysProvider, phase1_config
from gkm.store import KeyStore
from policy.model import (
    Authorization,
    CertCredential,
    GroupPolicy,
    KekPolicy,
    KeyServerAddress,
    KeyServerSettings,
    MemberGroup,
    PskCredential,
    PskIdMatch,
    Secret,
    SubjectMatch,
    TekPolicy,
    TrafficSelector,
)
from policy.suites import ESP_SUITES, KEK_CIPHERS, SIGNATURE_SUITES
from tests.unit.ike_data.helpers import T0, ca, leaf

KS = ("192.0.2.1", 848)
GID = 1234
PSKS = {"gm1": b"gm1 secret key 0123456789", "gm2": b"gm2 secret key 0123456789", "gm3": b"gm3 secret key 0123456789", "intruder": b"intruder key 0123456789abc"}
NOW = T0


def member_addr(i: int) -> tuple[str, int]:
    return (f"192.0.2.{10 + i}", 848)


def write_pem(path: Path, key=None, cert=None) -> Path:
    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o600)
    return path


def signing_key(tmp_path: Path) -> Path:
    p = tmp_path / "push-signing.pem"
    if not p.exists():
        write_pem(p, key=ec.generate_private_key(ec.SECP256R1()))
    return p


def group_policy(tmp_path: Path, *, gid: int = GID, kek: bool = True, suites=("aes-gcm-128", "aes-cbc-256-hmac-sha512")) -> GroupPolicy:
    teks = (
        TekPolicy("video", TrafficSelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("239.1.1.1/32"), 17, 0, 5004),
                  ESP_SUITES[suites[0]]),
        TekPolicy("control", TrafficSelector(ipaddress.ip_network("10.1.2.3/32"), ipaddress.ip_network("239.1.1.2/32")),
                  ESP_SUITES[suites[1]], senders=Authorization((PskIdMatch("gm1"),)), replay_window=64),
    )
    k = None
    if kek:
        k = KekPolicy(KEK_CIPHERS["aes-cbc-128"], SIGNATURE_SUITES["ecdsa-p256"], signing_key(tmp_path),
                      ipaddress.ip_address("239.192.0.1"))
    auth = Authorization((PskIdMatch("gm1"), PskIdMatch("gm2"), PskIdMatch("gm3"), SubjectMatch("O=msec test,CN=gm*")))
    return GroupPolicy(gid, teks, auth, k, name="test")


def ks_settings(tmp_path: Path, groups, *, cert: bool = False) -> KeyServerSettings:
    psks = tuple(PskCredential(i, Secret(s)) for i, s in PSKS.items())
    cc = None
    if cert:
        c, k = leaf("p256", "ks")
        cc = CertCredential(write_pem(tmp_path / "ks.crt", cert=c), write_pem(tmp_path / "ks.key", key=k),
                            (write_pem(tmp_path / "ca.crt", cert=ca("Test Root CA")[0]),))
    return KeyServerSettings(listen=(ipaddress.ip_address(KS[0]),), psks=() if cert else psks, certificate=cc, groups=tuple(groups))


def member_group(tmp_path: Path, who: str = "gm1", *, gid: int = GID, cert: bool = False, secret: bytes | None = None) -> MemberGroup:
    if cert:
        c, k = leaf("p256", who)
        cred = CertCredential(write_pem(tmp_path / f"{who}.crt", cert=c), write_pem(tmp_path / f"{who}.key", key=k),
                              (write_pem(tmp_path / "ca.crt", cert=ca("Test Root CA")[0]),))
        return MemberGroup(gid, (KeyServerAddress(KS[0]),), cred, key_server_authorization=Authorization((SubjectMatch("CN=ks,O=msec test"),)))
    return MemberGroup(gid, (KeyServerAddress(KS[0]),), PskCredential(who, Secret(secret or PSKS[who])))


def key_server(tmp_path: Path, groups=None, *, cert: bool = False, state: str = "state", lkh: bool = False, **kw):
    groups = groups or [group_policy(tmp_path)]
    store = KeyStore(tmp_path / state)
    ks = KeyServerEngine(groups, StoreKeysProvider(store, lkh=lkh), phase1_config(ks_settings(tmp_path, groups, cert=cert)),
                         rekey_source=KS, **kw)
    return ks, store


def member(tmp_path: Path, who: str = "gm1", *, cert: bool = False, secret: bytes | None = None, gid: int = GID, **kw) -> MemberRegistration:
    mg = member_group(tmp_path, who, cert=cert, secret=secret, gid=gid)
    return MemberRegistration(phase1_config(mg, key_server=KS), gid, KS, authorize_key_server=mg.accepts_key_server, **kw)


def events(source) -> list:
    out = []
    while (e := source.next_event()) is not None:
        out.append(e)
    return out


def pump(ks: KeyServerEngine, members: dict, now: float = NOW, *, limit: int = 50, tamper=None, drop=None) -> list:
    """Move datagrams until quiet.  ``members``: addr -> MemberRegistration.  ``tamper(dir, n, data)``
    returns new bytes; ``drop(dir, n, data)`` True drops.  Returns the log [(dir, addr, data)]."""
    log = []
    count = {"up": 0, "down": 0}
    for _ in range(limit):
        moved = False
        for addr, m in members.items():
            for data, to in m.datagrams_to_send():
                assert to == KS
                n = count["up"]
                count["up"] += 1
                log.append(("up", addr, data))
                if drop and drop("up", n, data):
                    continue
                if tamper:
                    data = tamper("up", n, data)
                ks.receive_datagram(data, addr, now)
                moved = True
        ks.commit(now)  # the shell's durable step, before it takes the outputs
        for data, to in ks.datagrams_to_send():
            n = count["down"]
            count["down"] += 1
            log.append(("down", to, data))
            if drop and drop("down", n, data):
                continue
            if tamper:
                data = tamper("down", n, data)
            members[to].receive_datagram(data, KS, now)
            moved = True
        if not moved:
            break
    return log


def register(ks, members: dict, now: float = NOW, **kw):
    for m in members.values():
        m.start(now)
    return pump(ks, members, now, **kw)


def store_snapshot(store: KeyStore, gid: int = GID):
    g = store.group(gid)
    return (
        g, [(t.spi, t.key, t.state) for t in store.teks(gid)] if g else [], [(k.spi, k.seq) for k in store.keks(gid)] if g else [],
        store.members(gid) if g else [], store.load_lkh(gid) is not None if g else False,
    )
