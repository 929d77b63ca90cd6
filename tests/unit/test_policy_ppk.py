"""G-IKEv2 post-quantum preshared keys (RFC 8784) in the configuration: a member group's
``ppk``, ``[[keyserver.ppk]]``, a key server group's ``ppk``, and how they reach the engines."""

from __future__ import annotations

import dataclasses

import pytest

from gkm.ikev2.gcks_registration import gcks_auth_config
from gkm.ikev2.registration import member_auth_config
from tests.unit import test_policy_config as pc
from tests.unit.test_policy_config import base, load, only, write_private

files = pc.files  # the fixture: a directory with every file base() names

SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef"


def ppk_doc(files, *, member=True, ks=True, required=False, group_ppk=None):
    write_private(files / "gm1.ppk", SECRET + b"\n")
    doc = base()
    doc["keyserver"]["group"][0]["protocols"] = ["gdoi", "g-ikev2"]
    if group_ppk is not None:
        doc["keyserver"]["group"][0]["ppk"] = group_ppk
    if ks:
        doc["keyserver"]["ppk"] = [{"id": "gm1-ppk", "secret_file": "gm1.ppk"}]
    g = doc["member"]["group"][0]
    g["protocol"] = "g-ikev2"
    if member:
        g["ppk"] = {"id": "gm1-ppk", "secret_file": "gm1.ppk", "required": required}
    return doc


def test_ppks_are_read_and_reach_the_engines(files):
    cfg = load(ppk_doc(files, required=True, group_ppk="required"), files)
    (kp,) = cfg.keyserver.ppks
    mp = cfg.member.groups[0].ppk
    assert (kp.id, kp.secret.reveal(), mp.id, mp.secret.reveal(), mp.required) == ("gm1-ppk", SECRET, "gm1-ppk", SECRET, True)
    assert cfg.keyserver.groups[0].ppk == "required" and cfg.keyserver.groups[1].ppk == "optional"
    assert SECRET.decode() not in repr(cfg) and "<redacted>" in repr(mp)
    m = member_auth_config(cfg.member.groups[0])
    assert (m.ppk.ppk_id, m.ppk.secret, m.ppk.required) == (b"gm1-ppk", SECRET, True)
    ks = dataclasses.replace(cfg.keyserver, certificate=None)  # the fixture's certificate is a stand-in
    assert gcks_auth_config(ks).ppks == {b"gm1-ppk": SECRET}
    assert SECRET.decode() not in repr(m) + repr(gcks_auth_config(ks))


def test_no_ppk_by_default(files):
    cfg = load(ppk_doc(files, member=False, ks=False), files)
    assert cfg.keyserver.ppks == () and cfg.member.groups[0].ppk is None
    assert member_auth_config(cfg.member.groups[0]).ppk is None


@pytest.mark.parametrize("change, path, why", [
    (lambda d, f: d["member"]["group"][0]["ppk"].update(secret_file="missing.ppk"),
     "member.group[0].ppk.secret_file", "does not exist"),
    (lambda d, f: write_private(f / "gm1.ppk", b"x" * 31 + b"\n") and d["keyserver"].pop("ppk"),
     "member.group[0].ppk.secret_file", "PPK is shorter than 32 bytes"),
    (lambda d, f: (f / "gm1.ppk").chmod(0o644) or d["keyserver"].pop("ppk"),
     "member.group[0].ppk.secret_file", "chmod 600"),
    (lambda d, f: d["member"]["group"][0].update(protocol="gdoi"),
     "member.group[0].ppk", "applies to G-IKEv2 members"),
    (lambda d, f: d["member"]["group"][0]["ppk"].pop("id"),
     "member.group[0].ppk.id", "missing"),
    (lambda d, f: d["member"]["group"][0]["ppk"].update(id=""),
     "member.group[0].ppk.id", "must not be empty"),
    (lambda d, f: d["member"]["group"][0]["ppk"].update(required="yes"),
     "member.group[0].ppk.required", "expected"),
    (lambda d, f: d["keyserver"]["ppk"][0].update(required=True),
     "keyserver.ppk[0].required", "unknown key"),
    (lambda d, f: d["keyserver"]["ppk"].append({"id": "gm1-ppk", "secret_file": "gm1.ppk"}),
     "keyserver.ppk[1].id", "duplicate PPK id 'gm1-ppk'"),
    (lambda d, f: d["keyserver"]["ppk"][0].update(secret_file="nope.ppk"),
     "keyserver.ppk[0].secret_file", "does not exist"),
    (lambda d, f: d["keyserver"]["group"][0].update(ppk="always"),
     "keyserver.group[0].ppk", "unknown value 'always' (optional or required)"),
    (lambda d, f: d["keyserver"]["group"][1].update(ppk="required"),
     "keyserver.group[1].ppk", "applies to G-IKEv2 members"),
    (lambda d, f: d["keyserver"].pop("ppk") and d["keyserver"]["group"][0].update(ppk="required"),
     "keyserver.group[0].ppk", "admits nobody: add [[keyserver.ppk]]"),
])
def test_ppk_refused(files, change, path, why):
    doc = ppk_doc(files)
    change(doc, files)
    p = only(doc, files)
    assert p.path == path and why in p.reason, str(p)


def test_model_checks_ppk(files):
    cfg = load(ppk_doc(files), files)
    with pytest.raises(ValueError, match="ppk 'maybe' is not one of optional, required"):
        dataclasses.replace(cfg.keyserver.groups[0], ppk="maybe")
    with pytest.raises(ValueError, match="applies to G-IKEv2 members"):
        dataclasses.replace(cfg.member.groups[0], protocol="gdoi")
    with pytest.raises(ValueError, match="shorter than 32"):
        dataclasses.replace(cfg.member.groups[0].ppk, secret=type(cfg.member.groups[0].ppk.secret)(b"x" * 31))


def test_a_member_ppk_change_registers_again_and_a_key_server_one_is_a_setting(files):
    from policy.reload import diff
    old = load(ppk_doc(files, member=False, ks=False), files)
    new = load(ppk_doc(files), files)
    d = diff(old, new)
    (change,) = d.member_changed
    assert change.fields == ("ppk",) and change.needs_reregistration
    assert "keyserver.ppks" in d.settings_changed  # a new G-IKEv2 engine (N(USE_PPK) in IKE_SA_INIT)
    g = load(ppk_doc(files, group_ppk="required"), files)
    (ks_change,) = diff(new, g).keyserver_changed
    assert ks_change.fields == ("ppk",)  # read at each GSA_AUTH: applies to later registrations
