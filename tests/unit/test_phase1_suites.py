"""Configurable phase 1 suites: `[keyserver.phase1]` (accepted) and a member group's `phase1`
(offered), validated with precise errors and wired through gkm.gdoi.phase1 to the real Main
Mode engines; and what a peer's life duration of 0 means."""

from __future__ import annotations

import dataclasses

import pytest

from gkm.gdoi import phase1_config
from gkm.ike import AuthMethod, EncAlg, HashAlg, Identity, Phase1Config, Phase1Established, Phase1Failed, Proposal, PskStore
from gkm.ike.config import A_LIFE_DURATION, ConfigError
from gkm.ike.mainmode import choose_proposal
from gkm.ike import _msg as m
from policy.model import Phase1Suites
from tests.unit.ike_data.helpers import GM_ADDR, KS_ADDR, T0, events, pump
from tests.unit.test_gdoi_support import KS, ks_settings, member_group
from tests.unit.test_policy_config import base, files, load, only, problems  # noqa: F401 (fixture)

NOW = T0 + 0.01


# ------------------------------------------------------------------ configuration


def test_defaults_without_a_phase1_table(files):
    cfg = load(base(), files)
    assert cfg.keyserver.phase1 == Phase1Suites()
    assert cfg.member.groups[0].phase1 == Phase1Suites()
    d = Phase1Suites()
    assert d.ciphers == ("aes-cbc-128", "aes-cbc-256") and d.dh_groups == (19, 20, 21)
    assert d.hashes == ("sha2-256", "sha2-384", "sha2-512") and d.lifetime_s == 86400 and d.auth is None


def test_phase1_tables_parse(files):
    doc = base()
    doc["keyserver"]["phase1"] = {"ciphers": ["aes-cbc-256"], "hashes": ["sha2-384"], "dh_groups": [20, 14],
                                  "auth": ["certificate", "psk"], "lifetime": "8h"}
    doc["member"]["group"][0]["phase1"] = {"dh_groups": [21], "lifetime": 3600}
    cfg = load(doc, files)
    assert cfg.keyserver.phase1 == Phase1Suites(("aes-cbc-256",), ("sha2-384",), (20, 14), ("certificate", "psk"), 28800)
    assert cfg.member.groups[0].phase1 == Phase1Suites(dh_groups=(21,), lifetime_s=3600)


@pytest.mark.parametrize("table,path,words", [
    ({"ciphers": ["3des"]}, "keyserver.phase1.ciphers[0]", ["'3des' is not accepted", "Sweet32", "aes-cbc-128"]),
    ({"ciphers": ["aes-cbc"]}, "keyserver.phase1.ciphers[0]", ["name the key length"]),
    ({"hashes": ["sha1"]}, "keyserver.phase1.hashes[0]", ["SHA-1 is deprecated"]),
    ({"hashes": ["sha256"]}, "keyserver.phase1.hashes[0]", ["unknown value 'sha256'", "sha2-256"]),
    ({"dh_groups": [19, 2]}, "keyserver.phase1.dh_groups[1]", ["MODP-1024 is too weak"]),
    ({"dh_groups": [15]}, "keyserver.phase1.dh_groups[0]", ["unknown value 15", "19, 20, 21, 14"]),
    ({"dh_groups": ["19"]}, "keyserver.phase1.dh_groups[0]", ["expected an integer, got a string"]),
    ({"dh_groups": [19, 19]}, "keyserver.phase1.dh_groups[1]", ["listed twice"]),
    ({"ciphers": []}, "keyserver.phase1.ciphers", ["list at least one"]),
    ({"auth": ["password"]}, "keyserver.phase1.auth[0]", ["unknown value 'password'", "psk, certificate"]),
    ({"lifetime": "10s"}, "keyserver.phase1.lifetime", ["10 s is not in 60..2592000 s"]),
    ({"cipher": ["aes-cbc-128"]}, "keyserver.phase1.cipher", ["unknown key", "did you mean 'ciphers'"]),
    ({"ciphers": ["aes-cbc-128", "aes-cbc-192", "aes-cbc-256"], "hashes": ["sha2-256", "sha2-384", "sha2-512"],
      "dh_groups": [19, 20, 21, 14], "lifetime": "1h"}, "keyserver.phase1", []),  # 36 transforms: fine
])
def test_keyserver_phase1_errors(files, table, path, words):
    doc = base()
    doc["keyserver"]["phase1"] = table
    if not words:
        assert len(load(doc, files).keyserver.phase1.dh_groups) == 4
        return
    p = only(doc, files)
    assert p.path == path, str(p)
    for w in words:
        assert w in p.reason, (w, str(p))


def test_auth_must_name_configured_credentials(files):
    doc = base()
    del doc["keyserver"]["certificate"]
    doc["keyserver"]["phase1"] = {"auth": ["psk", "certificate"]}
    ps = {p.path: p.reason for p in problems(doc, files)}
    assert "'certificate' needs [keyserver.certificate]" in ps["keyserver.phase1.auth"]


def test_auth_excluding_a_credential_its_groups_rely_on(files):
    doc = base()
    doc["keyserver"]["phase1"] = {"auth": ["psk"]}
    p = only(doc, files)
    assert p.path == "keyserver.group[1].authorize.subjects"
    assert "admits nobody: phase 1 auth ['psk'] excludes 'certificate'" in p.reason


def test_member_phase1_has_no_auth_list(files):
    doc = base()
    doc["member"]["group"][0]["phase1"] = {"auth": ["psk"], "hashes": ["md5"]}
    ps = {p.path: p.reason for p in problems(doc, files)}
    assert "a member authenticates with its credentials" in ps["member.group[0].phase1.auth"]
    assert "MD5 is broken" in ps["member.group[0].phase1.hashes[0]"]


def test_reload_of_member_suites_reregisters(files):
    from policy.config import diff
    doc = base()
    old = load(doc, files)
    doc["member"]["group"][0]["phase1"] = {"dh_groups": [20]}
    (change,) = diff(old, load(doc, files)).member_changed
    assert change.fields == ("phase1",) and change.needs_reregistration


# ------------------------------------------------------------------ wiring to the engines


def _ks(tmp_path, suites: Phase1Suites, cert: bool = False) -> Phase1Config:
    s = ks_settings(tmp_path, [], cert=cert)
    return phase1_config(dataclasses.replace(s, phase1=suites))


def _gm(tmp_path, suites: Phase1Suites, cert: bool = False) -> Phase1Config:
    return phase1_config(dataclasses.replace(member_group(tmp_path, "gm1", cert=cert), phase1=suites), key_server=KS)


def _run(ini_cfg, resp_cfg):
    from gkm.ike import MainMode, Phase1Server, Role
    ini = MainMode(ini_cfg, Role.INITIATOR, KS_ADDR)
    srv = Phase1Server(resp_cfg)
    ini.start(NOW)
    pump(ini, srv, NOW)
    return events(ini), events(srv)


def test_proposals_follow_the_suites(tmp_path):
    suites = Phase1Suites(("aes-cbc-256", "aes-cbc-128"), ("sha2-512",), (20, 19), lifetime_s=7200)
    got = [(p.auth, p.group, p.key_bits, p.hash, p.life_seconds) for p in _ks(tmp_path, suites).proposals]
    psk = AuthMethod.PRE_SHARED_KEY
    assert got == [(psk, 20, 256, HashAlg.SHA2_512, 7200), (psk, 20, 128, HashAlg.SHA2_512, 7200),
                   (psk, 19, 256, HashAlg.SHA2_512, 7200), (psk, 19, 128, HashAlg.SHA2_512, 7200)]
    methods = {p.auth for p in _ks(tmp_path, Phase1Suites(auth=("certificate",)), cert=True).proposals}
    assert methods == {AuthMethod.ECDSA_256}


@pytest.mark.parametrize("cert", [False, True], ids=["psk", "ecdsa"])
def test_member_and_key_server_agree_on_a_configured_suite(tmp_path, cert):
    """The member prefers AES-256/SHA2-384/group 20; the key server accepts it (and others):
    the SA uses exactly that, with the member's shorter lifetime."""
    gm = _gm(tmp_path, Phase1Suites(("aes-cbc-256",), ("sha2-384",), (20,), lifetime_s=3600), cert=cert)
    ks = _ks(tmp_path, Phase1Suites(dh_groups=(19, 20)), cert=cert)
    ie, se = _run(gm, ks)
    assert [type(e) for e in se][:1] == [Phase1Established], se
    sa = se[0].sa
    assert (sa.proposal.group, sa.proposal.key_bits, sa.proposal.hash, sa.proposal.enc) == (20, 256, HashAlg.SHA2_384, EncAlg.AES_CBC)
    assert sa.expires_at - sa.established_at == 3600
    assert len(sa.enc_key) == 32


def test_no_common_suite_is_refused_with_what_was_offered(tmp_path):
    gm = _gm(tmp_path, Phase1Suites(dh_groups=(21,)))
    ks = _ks(tmp_path, Phase1Suites(dh_groups=(19,)))
    ie, se = _run(gm, ks)
    (f,) = se
    assert isinstance(f, Phase1Failed) and f.notify == 14 and "no acceptable proposal" in f.reason
    assert "NO-PROPOSAL-CHOSEN" in ie[0].reason


def test_default_member_still_registers_with_a_key_server_accepting_only_the_old_suite(tmp_path):
    ks = _ks(tmp_path, Phase1Suites(("aes-cbc-128",), ("sha2-256",), (19,)))
    ie, se = _run(_gm(tmp_path, Phase1Suites()), ks)
    assert isinstance(se[0], Phase1Established) and se[0].sa.proposal.group == 19


# ------------------------------------------------------------------ life duration 0


def _sa_with_life(life: int) -> bytes:
    p = Proposal(AuthMethod.PRE_SHARED_KEY, 19)
    attrs = [(t, life if t == A_LIFE_DURATION else v) for t, v in p.attributes()]
    return m.encode_sa([attrs])


def test_life_duration_zero_means_the_local_lifetime():
    """A peer's 0 is "no lifetime of its own": the SA gets the responder's configured one."""
    local = Proposal(AuthMethod.PRE_SHARED_KEY, 19, life_seconds=7200)
    cfg = Phase1Config((local,), local_id=Identity.ip(KS_ADDR[0]), psk=PskStore({GM_ADDR[0]: b"k"}))
    prop, reply, (why, _n) = choose_proposal(cfg, _sa_with_life(0))
    assert prop is not None, why
    assert prop.life_seconds == 7200
    assert m.decode_sa(reply).transforms[0][1] == m.decode_sa(_sa_with_life(0)).transforms[0][1]  # echoed as offered
    prop, _r, _w = choose_proposal(cfg, _sa_with_life(600))
    assert prop.life_seconds == 600  # a shorter one is taken as offered
    prop, _r, (why, notify) = choose_proposal(cfg, _sa_with_life(7201))
    assert prop is None and notify == 14  # longer than ours: refused


def test_life_duration_zero_end_to_end_and_never_locally():
    """A responder echoing 0 gives the initiator its own lifetime; no local proposal may say 0."""
    from gkm.ike import MainMode, Phase1Server, Role
    ks_local = Proposal(AuthMethod.PRE_SHARED_KEY, 19, life_seconds=5000)
    gm_local = Proposal(AuthMethod.PRE_SHARED_KEY, 19, life_seconds=4000)
    ks = Phase1Config((ks_local,), local_id=Identity.ip(KS_ADDR[0]), psk=PskStore({GM_ADDR[0]: b"k"}))
    gm = Phase1Config((gm_local,), local_id=Identity.ip(GM_ADDR[0]), psk=PskStore({KS_ADDR[0]: b"k"}))
    ini = MainMode(gm, Role.INITIATOR, KS_ADDR)
    ini.start(NOW)
    (msg1, _a), = ini.datagrams_to_send()
    # rewrite the offered life duration to 0 (and keep the engine's SAi_b in step with the wire)
    zero = _sa_with_life(0)
    ini._sai_b = zero
    msg1 = m.build(ini.icookie, bytes(8), m.EXCH_MAIN, 0, 0, [(m.SA, zero)])
    srv = Phase1Server(ks)
    srv.receive_datagram(msg1, GM_ADDR, NOW)
    pump(ini, srv, NOW)
    (se,), (ie,) = events(srv), events(ini)
    assert isinstance(se, Phase1Established) and isinstance(ie, Phase1Established)
    assert se.sa.expires_at - se.sa.established_at == 5000  # the responder's own
    assert ie.sa.expires_at - ie.sa.established_at == 4000  # the initiator's own
    with pytest.raises(ConfigError, match="needs a lifetime"):
        Phase1Config((Proposal(AuthMethod.PRE_SHARED_KEY, 19, life_seconds=0),), local_id=Identity.ip(KS_ADDR[0]),
                     psk=PskStore({GM_ADDR[0]: b"k"}))
