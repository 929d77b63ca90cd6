"""CRLs of the key server: verified against the trust anchors, revocation reasons, and the
``[keyserver] crl`` setting's validation."""

from __future__ import annotations

import datetime as dt

import pytest

from policy.revocation import load_crls
from tests.pki import ThrowawayCa, write_crl
from tests.unit.test_policy_config import base, dump, files  # noqa: F401  (fixture)
from policy.config import ConfigError, parse_config


def test_revoked_certificate_named_with_its_reason(tmp_path):
    ca = ThrowawayCa()
    gm1, _ = ca.issue("gm1")
    gm3, _ = ca.issue("gm3")
    anchor = ca.write(tmp_path)
    for der in (False, True):
        crl = write_crl(tmp_path / "ca.crl", ca.crl([gm3]), der=der)
        rl = load_crls([crl], [anchor])
        assert len(rl) == 1 and rl.revoked(gm1) is None
        why = rl.revoked(gm3)
        assert why and "CN=gm3" in why and f"0x{gm3.serial_number:x}" in why
        assert "key_compromise" in why and "ca.crl" in why
    # another CA's certificate with the same serial is not revoked by this CRL
    other = ThrowawayCa("other CA")
    twin, _ = other.issue("gm3")
    assert rl.revoked(twin) is None
    assert rl.stale() == []
    assert rl.stale(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=8)) == [str(crl)]


def test_crl_not_signed_by_a_trust_anchor_or_not_a_crl_is_refused(tmp_path):
    ca, rogue = ThrowawayCa(), ThrowawayCa("msec test CA")  # same name, other key
    anchor = ca.write(tmp_path)
    forged = write_crl(tmp_path / "forged.crl", rogue.crl())
    with pytest.raises(ValueError, match="not signed by any of the key server's trust anchors"):
        load_crls([forged], [anchor])
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n")
    with pytest.raises(ValueError, match="junk.crl.*not a certificate revocation list"):
        load_crls([junk], [anchor])


def _doc_with_crl(files, crl_name, anchor_name="ca.crt"):
    doc = base()
    doc["keyserver"]["crl"] = [crl_name]
    doc["keyserver"]["certificate"]["trust_anchors"] = [anchor_name]
    return doc


def test_crl_setting_validated(files):  # noqa: F811
    ca = ThrowawayCa()
    ca.write(files, "realca")
    write_crl(files / "good.crl", ca.crl())
    write_crl(files / "forged.crl", ThrowawayCa().crl())
    c = parse_config(dump(_doc_with_crl(files, "good.crl", "realca.crt")), base_dir=files)
    assert c.keyserver.crl_files == (files / "good.crl",)
    for name, reason in (("forged.crl", "not signed by any of the key server's trust anchors"),
                         ("missing.crl", "does not exist")):
        with pytest.raises(ConfigError) as e:
            parse_config(dump(_doc_with_crl(files, name, "realca.crt")), base_dir=files)
        [p] = e.value.problems
        assert p.path == "keyserver.crl[0]" and reason in p.reason, p
    doc = _doc_with_crl(files, "good.crl")
    del doc["keyserver"]["certificate"]
    for g in doc["keyserver"]["group"]:
        g["authorize"].pop("subjects", None)
        g["authorize"].setdefault("psk_identities", ["gm1"])
    with pytest.raises(ConfigError) as e:
        parse_config(dump(doc), base_dir=files)
    assert any(p.path == "keyserver.crl" and "needs [keyserver.certificate]" in p.reason
               for p in e.value.problems), e.value.problems
