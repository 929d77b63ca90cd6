"""A member is authorized as the identity whose key authenticated it, never as the identity it
merely presents: the real engines (Main Mode, GROUPKEY-PULL, the key server's PSK store built
from the policy) against members that hold one credential and claim another identity."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from gkm.gdoi import KeyServerEngine, MemberRegistration, RegistrationFailed, StoreKeysProvider, phase1_config
from gkm.gdoi.pull import peer_identity
from gkm.ike import AuthMethod, Identity, MainMode, Phase1Established, Phase1Server, PskStore, Role, State
from gkm.ike.mainmode import N_INVALID_ID_INFORMATION
from gkm.store import KeyStore
from policy.model import (
    Authorization, FqdnMatch, GroupPolicy, KeyServerAddress, KeyServerSettings, MemberGroup, PskCredential, PskIdMatch,
    Secret,
)
from tests.unit.ike_data.helpers import GM_ADDR, config, leaf, pair, pump as pump_phase1
from tests.unit.ike_data.helpers import events as phase1_events
from tests.unit.test_gdoi_support import KS, NOW, events, group_policy, member_addr, register

GM1_KEY = b"gm1 secret key 0123456789"
CAM1_KEY = b"cam1 secret key 0123456789"
CAM_GROUP, FQDN_GROUP = 2001, 2002


def _groups(tmp_path) -> list[GroupPolicy]:
    base = group_policy(tmp_path)
    cam = dataclasses.replace(base, group_id=CAM_GROUP, authorization=Authorization((PskIdMatch("cam1"),)), name="cam")
    fq = dataclasses.replace(base, group_id=FQDN_GROUP, authorization=Authorization((FqdnMatch("*.example.org"),)), name="fq")
    return [cam, fq]


def _key_server(tmp_path, *, gm1_addresses=(member_addr(0)[0],)):
    groups = _groups(tmp_path)
    psks = (
        PskCredential("gm1", Secret(GM1_KEY), addresses=tuple(ipaddress.ip_address(a) for a in gm1_addresses)),
        PskCredential("cam1", Secret(CAM1_KEY)),
    )
    settings = KeyServerSettings(listen=(ipaddress.ip_address(KS[0]),), psks=psks, groups=tuple(groups))
    store = KeyStore(tmp_path / "state")
    return KeyServerEngine(groups, StoreKeysProvider(store), phase1_config(settings), rekey_source=KS), store


def _member(gid: int, *, identity: str, secret: bytes, claim: Identity | None = None) -> MemberRegistration:
    """A member configured with ``identity``'s PSK ``secret``; ``claim`` replaces the ID it
    presents in message 5 (what an attacker holding that key would send)."""
    mg = MemberGroup(gid, (KeyServerAddress(KS[0]),), PskCredential(identity, Secret(secret)))
    cfg = phase1_config(mg, key_server=KS)
    if claim is not None:
        cfg = dataclasses.replace(cfg, local_id=claim)
    return MemberRegistration(cfg, gid, KS, authorize_key_server=mg.accepts_key_server)


CLAIMS = {
    "key-id cam1": (CAM_GROUP, Identity.key_id(b"cam1")),
    "fqdn matching the group's pattern": (FQDN_GROUP, Identity.fqdn("gm1.example.org")),
}


@pytest.mark.parametrize("claim", CLAIMS, ids=list(CLAIMS))
@pytest.mark.parametrize("selected", ["by address", "by trial"])
def test_psk_holder_cannot_claim_another_identity(tmp_path, caplog, claim, selected):
    """gm1's PSK, found by the member's source address (or by trial decryption), with another
    identity in message 5: phase 1 is refused, the group admits nobody, nothing is stored."""
    ks, store = _key_server(tmp_path, gm1_addresses=(member_addr(0)[0],) if selected == "by address" else ())
    gid, ident = CLAIMS[claim]
    m = _member(gid, identity="gm1", secret=GM1_KEY, claim=ident)
    register(ks, {member_addr(0): m})
    (fail,) = events(m)
    assert isinstance(fail, RegistrationFailed) and "INVALID-ID-INFORMATION" in fail.reason, fail
    assert not any(isinstance(e, Phase1Established) for e in events(ks))
    assert store.group(gid) is None
    assert "does not own the pre-shared key it used (that of key-id:gm1)" in caplog.text


def test_owner_of_the_key_is_authorized_as_itself_only(tmp_path):
    """gm1 with its own key and ID completes phase 1 but is gm1: the cam1-only group refuses it;
    cam1 with its own key registers."""
    ks, store = _key_server(tmp_path)
    gm1 = _member(CAM_GROUP, identity="gm1", secret=GM1_KEY)
    register(ks, {member_addr(0): gm1})
    (fail,) = events(gm1)
    assert isinstance(fail, RegistrationFailed) and "AUTHENTICATION-FAILED" in fail.reason
    sas = [e.sa for e in events(ks) if isinstance(e, Phase1Established)]
    assert [str(peer_identity(sa).value) for sa in sas] == ["gm1"]
    assert sas[0].authenticated_id == Identity.key_id(b"gm1") == sas[0].peer_id

    cam1 = _member(CAM_GROUP, identity="cam1", secret=CAM1_KEY)
    register(ks, {member_addr(1): cam1}, NOW + 1)
    assert [type(e).__name__ for e in events(cam1)] == ["Registered"]
    assert [r.identity for r in store.members(CAM_GROUP)] == ["key-id:cam1"]


def test_address_key_belongs_to_its_address():
    """A key listed only by address (no owner named) authenticates that address, not a name."""
    ks = config(AuthMethod.PRE_SHARED_KEY, role="ks")  # PskStore({GM_ADDR: key})
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm", local_id=Identity.key_id(b"cam1")), ks)
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(srv)
    assert f"that of {GM_ADDR[0]}" in ev.reason and ev.notify == N_INVALID_ID_INFORMATION
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), ks)  # ID = its address
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(srv)
    assert isinstance(ev, Phase1Established) and ev.sa.authenticated_id == Identity.ip(GM_ADDR[0])


def test_initiator_binds_a_named_key_to_its_owner():
    """Initiator role: a PSK named for the responder's identity authenticates only that identity."""
    ks_id, other = Identity.fqdn("ks.example.net"), Identity.fqdn("other.example.net")
    gm_id = Identity.key_id(b"gm1")
    srv_cfg = config(AuthMethod.PRE_SHARED_KEY, role="ks", local_id=other, psk_store=PskStore(by_id={gm_id: b"k1"}))
    ini_cfg = config(AuthMethod.PRE_SHARED_KEY, role="gm", local_id=gm_id,
                     psk_store=PskStore(by_id={ks_id: b"k1"}, address_ids={KS[0]: ks_id}))
    ini, srv = pair(ini_cfg, srv_cfg)
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(ini)
    assert "does not own the pre-shared key it used (that of ks.example.net)" in ev.reason
    srv_cfg = dataclasses.replace(srv_cfg, local_id=ks_id)
    ini, srv = pair(ini_cfg, srv_cfg)
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(ini)
    assert isinstance(ev, Phase1Established) and ev.sa.authenticated_id == ks_id


@pytest.mark.parametrize("method", [AuthMethod.ECDSA_256, AuthMethod.RSA_SIG], ids=lambda v: v.name)
def test_certificate_identities_both_roles(method):
    """Signatures: the ID must match the certificate in either role, and the authenticated
    identity is the certificate's subject whatever (matching) ID was presented."""
    kind = "p256" if method is AuthMethod.ECDSA_256 else "rsa"
    gm_cert, ks_cert = leaf(kind, "gm1"), leaf(kind, "ks")
    # responder presents an FQDN that is not in its certificate: the initiator refuses
    ini, srv = pair(config(method, role="gm", cert=gm_cert),
                    config(method, role="ks", cert=ks_cert, local_id=Identity.fqdn("gm1.example.net")))
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(ini)
    assert "does not match its certificate" in ev.reason and ini.state is State.FAILED
    # initiator presents the FQDN of its SAN: accepted, authorized as its subject
    ini, srv = pair(config(method, role="gm", cert=gm_cert, local_id=Identity.fqdn("gm1.example.net")),
                    config(method, role="ks", cert=ks_cert))
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(srv)
    assert isinstance(ev, Phase1Established)
    assert ev.sa.peer_id == Identity.fqdn("gm1.example.net")
    assert ev.sa.authenticated_id == Identity.dn(gm_cert[0].subject)
    assert peer_identity(ev.sa).value == "CN=gm1,O=msec test"
    (iev,) = phase1_events(ini)
    assert iev.sa.authenticated_id == Identity.dn(ks_cert[0].subject)


def test_pull_never_authorizes_an_unbound_claim():
    """Defence in depth: an SA whose presented ID is not the key's owner is not authorizable."""
    ini, srv = pair(config(AuthMethod.PRE_SHARED_KEY, role="gm"), config(AuthMethod.PRE_SHARED_KEY, role="ks"))
    pump_phase1(ini, srv, NOW)
    (ev,) = phase1_events(srv)
    forged = dataclasses.replace(ev.sa, peer_id=Identity.key_id(b"cam1"))
    with pytest.raises(ValueError, match="whose pre-shared key authenticated it"):
        peer_identity(forged)
    assert peer_identity(ev.sa).value == GM_ADDR[0]


def test_fqdn_rules_at_the_key_server_are_flagged(tmp_path):
    """No credential authenticates an FQDN at the key server, so an fqdns rule admits nobody:
    the configuration says so instead of letting the operator rely on it."""
    from policy.config import advisories
    from tests.unit.test_policy_config import base, load

    (tmp_path / "gm1.psk").write_bytes(b"0123456789abcdef-very-secret")
    (tmp_path / "gm1.psk").chmod(0o600)
    doc = base()
    del doc["keyserver"]["certificate"]
    del doc["keyserver"]["group"][1:]
    del doc["keyserver"]["group"][0]["kek"]
    doc["keyserver"]["psk"] = doc["keyserver"]["psk"][:1]
    doc["keyserver"]["group"][0]["authorize"] = {"psk_identities": ["gm1"], "fqdns": ["*.example.org"]}
    notes = {a.path: a.reason for a in advisories(load(doc, tmp_path))}
    assert "fqdn:*.example.org admits nobody" in notes["keyserver.group[0].authorize.fqdns"]
