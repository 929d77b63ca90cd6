"""Issue 11, getting started: ``msecctl init`` creates what the shipped examples name (PSKs,
the PUSH signing key, a CA with key server and member certificates), with safe modes, never
overwriting, and then the real ``msecd --check`` passes on both examples."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gkm.daemon import provision
from gkm.ike.auth import validate_chain
from policy.config import load_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _examples(tmp: Path) -> tuple[Path, Path]:
    d = tmp / "sv-examples"
    shutil.copytree(ROOT / "examples", d)
    return d / "keyserver.toml", d / "member.toml"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_makes_both_examples_pass_the_real_check(tmp_path):
    ks, mb = _examples(tmp_path)
    before = _run(BIN / "msecd", "--check", "--config", ks)
    assert before.returncode == 2 and "6 problem(s)" in before.stderr
    r = _run(BIN / "msecctl", "init", ks, mb)
    assert r.returncode == 0, r.stderr
    for cfg in (ks, mb):
        check = _run(BIN / "msecd", "--check", "--config", cfg)
        assert check.returncode == 0, check.stderr
        assert "is valid" in check.stdout
    d = ks.parent
    made = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()
                  and p.suffix != ".toml")
    assert made == ["pki/ca.crt", "pki/ca.key", "pki/gm1.crt", "pki/gm1.key", "pki/ks.crt",
                    "pki/ks.key", "pki/rekey-p256.pem", "secrets/cam1.psk", "secrets/gm1.psk"]
    for f in made:
        assert _mode(d / f) == 0o600, f
    assert _mode(d / "pki") == 0o700 and _mode(d / "secrets") == 0o700
    # the PSK file the key server and the member both name is one PSK: 256 random bits, hex
    psk = (d / "secrets/gm1.psk").read_text()
    assert len(psk.strip()) == 64 and int(psk, 16) and psk != (d / "secrets/cam1.psk").read_text()
    # certificates: issued by the CA, subjects the other side admits
    ca = x509.load_pem_x509_certificate((d / "pki/ca.crt").read_bytes())
    ks_cert = x509.load_pem_x509_certificate((d / "pki/ks.crt").read_bytes())
    gm_cert = x509.load_pem_x509_certificate((d / "pki/gm1.crt").read_bytes())
    for c in (ks_cert, gm_cert):
        c.verify_directly_issued_by(ca)
        validate_chain(c, [], (ca,), dt.datetime.now(dt.timezone.utc))  # as phase 1 does
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    member = load_config(mb)
    ks_identity = member.member.group(1002).key_server_authorization
    from policy.identity import Identity, IdKind

    assert ks_identity.decide(Identity(IdKind.DN, ks_cert.subject.rfc4514_string())).allowed
    video = load_config(ks).keyserver.group(1001)
    assert video.authorization.decide(Identity(IdKind.DN, gm_cert.subject.rfc4514_string())).allowed
    assert gm_cert.subject.rfc4514_string() == "CN=gm1,OU=Video,O=Example,C=DE"
    # the key server presents fqdn:ks.example.org with its certificate too: it is in the SAN
    san = ks_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ks.example.org"]
    # the signing key fits the group's signature suite
    key = serialization.load_pem_private_key((d / "pki/rekey-p256.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_init_never_overwrites_and_reuses_what_exists(tmp_path):
    ks, mb = _examples(tmp_path)
    d = ks.parent
    (d / "secrets").mkdir(mode=0o700)
    mine = d / "secrets/gm1.psk"
    mine.write_text("my own pre-shared key, long enough\n")
    mine.chmod(0o600)
    assert _run(BIN / "msecctl", "init", ks).returncode == 0
    assert mine.read_text() == "my own pre-shared key, long enough\n"
    snapshot = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    # the member's certificate comes from the CA the first run made: same CA, nothing redone
    r = _run(BIN / "msecctl", "init", ks, mb)
    assert r.returncode == 0, r.stderr
    assert all(p.read_bytes() == b for p, b in snapshot.items())
    assert "kept    " + str((d / "pki/ca.crt").resolve()) in r.stdout
    gm = x509.load_pem_x509_certificate((d / "pki/gm1.crt").read_bytes())
    gm.verify_directly_issued_by(x509.load_pem_x509_certificate((d / "pki/ca.crt").read_bytes()))


def test_an_existing_key_gets_a_certificate_for_itself(tmp_path):
    ks, _ = _examples(tmp_path)
    pki = ks.parent / "pki"
    pki.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    (pki / "ks.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (pki / "ks.key").chmod(0o600)
    assert provision.main([str(ks)]) == 0
    cert = x509.load_pem_x509_certificate((pki / "ks.crt").read_bytes())
    assert cert.public_key() == key.public_key()


def test_a_ca_without_its_key_cannot_issue_and_says_so(tmp_path, capsys):
    ks, mb = _examples(tmp_path)
    assert provision.main([str(ks)]) == 0
    (ks.parent / "pki/ca.key").unlink()
    assert provision.main([str(mb)]) == 1
    err = capsys.readouterr().err
    assert "cannot sign with the CA" in err and "ca.key is not there" in err
    assert not (ks.parent / "pki/gm1.crt").exists() and not (ks.parent / "pki/gm1.key").exists()


def test_a_certificate_without_its_key_is_refused(tmp_path, capsys):
    ks, mb = _examples(tmp_path)
    assert provision.main([str(ks), str(mb)]) == 0
    (ks.parent / "pki/gm1.key").unlink()
    assert provision.main([str(mb)]) == 1
    assert "a new key would not match the certificate" in capsys.readouterr().err


def test_rsa_signature_suite_gets_an_rsa_key_and_a_crl_is_made(tmp_path):
    ks, _ = _examples(tmp_path)
    text = ks.read_text().replace('signature = "ecdsa-p256"', 'signature = "rsa-pkcs1-sha256"')
    text = text.replace('port = 848\n', 'port = 848\ncrl = ["pki/ca.crl"]\n', 1)
    ks.write_text(text)
    assert provision.main([str(ks)]) == 0
    key = serialization.load_pem_private_key((ks.parent / "pki/rekey-p256.pem").read_bytes(),
                                             None)
    assert key.key_size == 3072
    crl = x509.load_pem_x509_crl((ks.parent / "pki/ca.crl").read_bytes())
    assert len(crl) == 0
    assert _run(BIN / "msecd", "--check", "--config", ks).returncode == 0


def test_a_structurally_invalid_configuration_creates_nothing(tmp_path, capsys):
    ks, _ = _examples(tmp_path)
    ks.write_text(ks.read_text().replace("port = 848\n", "port = 848\nbogus = 1\n", 1))
    assert provision.main([str(ks)]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (ks.parent / "pki").exists() and not (ks.parent / "secrets").exists()


def test_a_psk_made_for_one_side_says_the_other_needs_it(tmp_path, capsys):
    _, mb = _examples(tmp_path)
    assert provision.main([str(mb)]) == 0
    out = capsys.readouterr().out
    assert "gm1.psk (PSK; the key server's [[keyserver.psk]] needs the same bytes)" in out


def test_ppk_files_are_made_like_psk_files(tmp_path, capsys):
    """G-IKEv2 PPKs (RFC 8784): the key server's [[keyserver.ppk]] and a member group's ppk
    name one file: made once, 0600, 256 random bits in hex (64 octets, over the 32 minimum)."""
    ks, mb = _examples(tmp_path)
    ks.write_text(ks.read_text().replace("[[keyserver.psk]]", '[[keyserver.ppk]]\nid = "gm1-ppk"\n'
                                         'secret_file = "secrets/gm1.ppk"\n\n[[keyserver.psk]]', 1))
    text = mb.read_text()
    mb.write_text(text.replace("[[member.group]]\n", '[[member.group]]\nprotocol = "g-ikev2"\n'
                               'ppk = { id = "gm1-ppk", secret_file = "secrets/gm1.ppk" }\n', 1))
    assert provision.main([str(ks), str(mb)]) == 0
    ppk = ks.parent / "secrets/gm1.ppk"
    assert _mode(ppk) == 0o600 and len(ppk.read_text().strip()) == 64 and int(ppk.read_text(), 16)
    assert "gm1.ppk (PPK)" in capsys.readouterr().out
    for cfg in (ks, mb):
        c = load_config(cfg)
        got = c.keyserver.ppks[0] if c.keyserver else c.member.groups[0].ppk
        assert got.secret.reveal() == ppk.read_bytes().strip()
