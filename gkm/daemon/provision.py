"""``msecctl init CONFIG...``: create the files msecd configurations name and lack.

What an operator needs before a first ``msecd --check`` passes, made the way strongSwan's
``pki`` tool makes it for its users, with ``cryptography``:

* **PSK files** (``[[keyserver.psk]] secret_file``, a member's ``psk_file``): 32 random bytes
  (``secrets``), written as 64 hex digits, so that the file can be copied to the other host by
  any means, even pasted.
* **PPK files** (G-IKEv2 post-quantum preshared keys, RFC 8784: ``[[keyserver.ppk]]
  secret_file``, a member group's ``ppk.secret_file``): made as PSK files (32 random bytes as
  64 hex digits, mode 0600).
* **PUSH signing keys** (``[keyserver.group.kek] signing_key``): a key fitting the group's
  ``signature`` suite (the suite's curve, or RSA of at least its minimum size, 3072 bits).
* **Trust anchors** (``trust_anchors``): a self-signed CA, ECDSA P-256, valid 10 years; its
  private key next to it, same name with ``.key`` (``pki/ca.crt`` -> ``pki/ca.key``). Keep the
  CA key off the hosts once the certificates exist; ``init`` needs it again only to issue
  more.
* **Certificates** (``cert_file`` + ``key_file``): ECDSA P-256 (what phase 1 signs with),
  issued by the first trust anchor of the same credentials, valid 2 years. The subject is
  what the other side admits, when the other side's configuration is given in the same run:
  a member's from the key server's ``authorize`` subjects for that group (else any group's),
  the key server's from the members' ``key_server_identity`` subjects. In a pattern, an RDN
  value that is just ``*`` becomes the file's stem (``pki/gm1.crt`` -> ``CN=gm1``) and other
  ``*`` are dropped (``CN=ks*`` -> ``CN=ks``). Without such a pattern: ``CN=<stem>`` (the key
  server: ``CN=<its fqdn identity>`` if it has one).  The key server's ``identity`` (an FQDN
  or address) goes into its certificate's subjectAltName: phase 1 presents that ID with the
  certificate too, and members check it against the certificate (RFC 4945).
* **CRLs** (``[keyserver] crl``): an empty CRL signed by the first trust anchor, 30 days.

Nothing that exists is overwritten or changed (files are created with ``O_EXCL``): an
existing CA issues the missing certificates, an existing private key gets a certificate, an
existing PSK is kept.  A path every configuration of the run names the same way is one file (a
PSK named by the key server's and a member's configuration is the same PSK).  Files are
created 0600, directories 0700.  The configurations are read with ``check_files=False`` (the
structure is validated completely, the files not yet), and checked in full afterwards, as
``msecd --check`` does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from policy import model as pm
from policy.config import ConfigError, load_config
from policy.identity import SubjectMatch, parse_dn

__all__ = ["ProvisionError", "Plan", "plan", "provision", "main"]

CA_DAYS = 3650
CERT_DAYS = 730
CRL_DAYS = 30
PSK_BYTES = 32

#: RDN attribute types a subject pattern may use, by their DN string names
_OIDS = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME, "DC": NameOID.DOMAIN_COMPONENT, "SN": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME, "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS, "E": NameOID.EMAIL_ADDRESS,
}

_CURVES = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}


class ProvisionError(Exception):
    """A file cannot be created (the reason names it)."""


@dataclass
class _Cert:
    key_file: Path
    ca: Path
    patterns: list[str] = field(default_factory=list)  # the other side's subject patterns
    fallback_cn: str = ""
    san: list[x509.GeneralName] = field(default_factory=list)


@dataclass
class Plan:
    """What the configurations name, by resolved path and kind (one kind per path)."""

    psks: dict[Path, set[str]] = field(default_factory=dict)  # PSK file -> roles naming it
    ppks: dict[Path, set[str]] = field(default_factory=dict)  # PPK file -> roles naming it
    signing_keys: dict[Path, pm.SignatureSuite] = field(default_factory=dict)
    cas: set[Path] = field(default_factory=set)
    certs: dict[Path, _Cert] = field(default_factory=dict)
    crls: dict[Path, Path] = field(default_factory=dict)  # CRL -> its CA certificate
    kinds: dict[Path, str] = field(default_factory=dict)

    def claim(self, path: Path, kind: str) -> Path:
        path = path.resolve()
        other = self.kinds.setdefault(path, kind)
        if other != kind:
            raise ProvisionError(f"{path} is named as a {other} and as a {kind}")
        return path


def ca_key_path(ca_cert: Path) -> Path:
    """Where ``init`` keeps a CA's private key: next to its certificate, ``.key``."""
    return ca_cert.with_suffix(".key")


def plan(configs: list[pm.DaemonConfig]) -> Plan:
    p = Plan()
    ks_patterns: dict[int, list[str]] = {}  # group -> subjects key servers admit as members
    member_patterns: dict[int, list[str]] = {}  # group -> subjects members admit as key server
    for c in configs:
        for g in (c.keyserver.groups if c.keyserver else ()):
            ks_patterns.setdefault(g.group_id, []).extend(
                r.pattern for r in g.authorization.rules if isinstance(r, SubjectMatch))
        for g in (c.member.groups if c.member else ()):
            auth = g.key_server_authorization
            member_patterns.setdefault(g.group_id, []).extend(
                r.pattern for r in (auth.rules if auth else ()) if isinstance(r, SubjectMatch))

    def patterns(table: dict[int, list[str]], groups: list[int]) -> list[str]:
        own = [x for gid in groups for x in table.get(gid, ())]
        return own or [x for xs in table.values() for x in xs]

    def cert(cred: pm.CertCredential, pats: list[str], cn: str,
             san: list[x509.GeneralName] | None = None) -> None:
        ca = p.claim(cred.trust_anchors[0], "CA certificate")
        for t in cred.trust_anchors:
            p.cas.add(p.claim(t, "CA certificate"))
        key = p.claim(cred.key_file, "private key")
        c = p.claim(cred.cert_file, "certificate")
        entry = p.certs.setdefault(c, _Cert(key, ca, fallback_cn=cn, san=san or []))
        if entry.key_file != key or entry.ca != ca:
            raise ProvisionError(f"{c} is named with two different keys or CAs")
        entry.patterns += [x for x in pats if x not in entry.patterns]

    for c in configs:
        ks = c.keyserver
        if ks is not None:
            for psk in ks.psks:
                if psk.source is not None:
                    p.psks.setdefault(p.claim(psk.source, "PSK file"), set()).add("keyserver")
            for ppk in ks.ppks:
                if ppk.source is not None:
                    p.ppks.setdefault(p.claim(ppk.source, "PPK file"), set()).add("keyserver")
            for g in ks.groups:
                if g.kek is not None:
                    k = p.claim(g.kek.signing_key, "signing key")
                    if p.signing_keys.setdefault(k, g.kek.signature) != g.kek.signature:
                        raise ProvisionError(f"{k} is the signing key of two signature suites")
            if ks.certificate is not None:
                cn = ks.identity.value if ks.identity is not None and \
                    ks.identity.kind is pm.IdKind.FQDN else ks.certificate.cert_file.stem
                cert(ks.certificate, patterns(member_patterns, [g.group_id for g in ks.groups]),
                     cn, _san(ks.identity))
                for crl in ks.crl_files:
                    p.crls[p.claim(crl, "CRL")] = ks.certificate.trust_anchors[0].resolve()
        for g in (c.member.groups if c.member else ()):
            if g.ppk is not None and g.ppk.source is not None:
                p.ppks.setdefault(p.claim(g.ppk.source, "PPK file"), set()).add("member")
            match g.credentials:
                case pm.PskCredential(source=src) if src is not None:
                    p.psks.setdefault(p.claim(src, "PSK file"), set()).add("member")
                case pm.CertCredential() as cred:
                    cert(cred, patterns(ks_patterns, [g.group_id]), cred.cert_file.stem)
    return p


def _san(identity: pm.Identity | None) -> list[x509.GeneralName]:
    """The key server presents its ``identity`` in phase 1 with its certificate too (the
    member checks the ID against the certificate, RFC 4945: an FQDN or address must be in the
    subjectAltName), so its certificate carries it."""
    if identity is None:
        return []
    if identity.kind is pm.IdKind.FQDN:
        return [x509.DNSName(identity.value)]
    if identity.kind is pm.IdKind.ADDRESS:
        return [x509.IPAddress(ipaddress.ip_address(identity.value))]
    return []


# --------------------------------------------------------------------------- writing


def _mkdirs(d: Path, created: list[str]) -> None:
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=0o700)
        os.chmod(m, 0o700)  # mkdir's mode is narrowed by the umask, never widened: set it
        created.append(f"{m}/ (directory)")


def _write(path: Path, data: bytes, what: str, created: list[str]) -> None:
    _mkdirs(path.parent, created)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ProvisionError(f"{path} appeared while init was running; left alone") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    created.append(f"{path} ({what})")


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as e:
        raise ProvisionError(f"{path}: cannot use this private key: {e}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (ValueError, OSError) as e:
        raise ProvisionError(f"{path}: not a PEM certificate: {e}") from None


def subject_for(patterns: list[str], stem: str, fallback_cn: str) -> x509.Name:
    """The first pattern made concrete (module docstring), or ``CN=fallback_cn``."""
    for pat in patterns:
        rdns = parse_dn(pat)
        if all(t in _OIDS for t, _ in rdns):
            return x509.Name([x509.NameAttribute(_OIDS[t], stem if v == "*" else v.replace("*", ""))
                              for t, v in rdns])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fallback_cn or stem)])


def _new_ca(path: Path, created: list[str]) -> None:
    key_path = ca_key_path(path)
    if key_path.exists():
        key = _load_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write(key_path, _pem_key(key), "CA private key", created)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"msec CA {path.stem}")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(path, cert.public_bytes(serialization.Encoding.PEM), "CA certificate", created)


def _ca(path: Path):
    key_path = ca_key_path(path)
    if not key_path.exists():
        raise ProvisionError(f"cannot sign with the CA {path}: its key {key_path} is not there "
                             f"(put it back, or create the missing files with that CA's own "
                             f"tools)")
    return _load_cert(path), _load_key(key_path)


def _new_cert(path: Path, c: _Cert, created: list[str]) -> None:
    ca_cert, ca_key = _ca(c.ca)
    if c.key_file.exists():
        key = _load_key(c.key_file)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisionError(f"{c.key_file}: phase 1 signs with ECDSA; this is not an EC key")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write(c.key_file, _pem_key(key), "private key", created)
    subject = subject_for(c.patterns, path.stem, c.fallback_cn)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=CERT_DAYS),
                                 ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False))
    if c.san:
        cert = cert.add_extension(x509.SubjectAlternativeName(c.san), critical=False)
    cert = cert.sign(ca_key, hashes.SHA256())
    _write(path, cert.public_bytes(serialization.Encoding.PEM),
           f"certificate {subject.rfc4514_string()}, issued by {c.ca.name}", created)


def _new_signing_key(path: Path, suite: pm.SignatureSuite, created: list[str]) -> None:
    if suite.key_type == "rsa":
        key = rsa.generate_private_key(65537, max(3072, suite.min_key_bits))
        what = f"{suite.name} signing key, RSA {key.key_size}"
    else:
        key = ec.generate_private_key(_CURVES[suite.curve]())
        what = f"{suite.name} signing key"
    _write(path, _pem_key(key), what, created)


def _new_crl(path: Path, ca: Path, created: list[str]) -> None:
    ca_cert, ca_key = _ca(ca)
    now = dt.datetime.now(dt.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - dt.timedelta(minutes=5))
           .next_update(now + dt.timedelta(days=CRL_DAYS))
           .sign(ca_key, hashes.SHA256()))
    _write(path, crl.public_bytes(serialization.Encoding.PEM),
           f"empty CRL of {ca.name}, next update in {CRL_DAYS} days", created)


def provision(p: Plan) -> tuple[list[str], list[str]]:
    """Create what `p` names and is missing: (created, kept), one line each."""
    created: list[str] = []
    kept = sorted(f"{x} ({kind})" for x, kind in p.kinds.items() if x.exists())
    for ca in sorted(p.cas):
        if not ca.exists():
            _new_ca(ca, created)
    for kind, files in (("PSK", p.psks), ("PPK", p.ppks)):
        for path, roles in sorted(files.items()):
            if not path.exists():
                # one side only: the other side must get these bytes, not make its own
                other = {"keyserver": "; give the members that use it a copy",
                         "member": f"; the key server's [[keyserver.{kind.lower()}]] needs the same bytes"}
                hint = other[next(iter(roles))] if len(roles) == 1 else ""
                _write(path, secrets.token_hex(PSK_BYTES).encode() + b"\n", f"{kind}{hint}", created)
    for k, suite in sorted(p.signing_keys.items()):
        if not k.exists():
            _new_signing_key(k, suite, created)
    for c, entry in sorted(p.certs.items()):
        if not c.exists():
            _new_cert(c, entry, created)
        elif not entry.key_file.exists():
            raise ProvisionError(f"{c} exists but its key {entry.key_file} does not: a new key "
                                 f"would not match the certificate (move the certificate away "
                                 f"to have both made)")
    for crl, ca in sorted(p.crls.items()):
        if not crl.exists():
            _new_crl(crl, ca, created)
    return created, kept


def main(paths: list[str], out=None, err=None) -> int:
    """``msecctl init``: 0 every configuration now passes ``msecd --check``, 1 a file could
    not be created or a configuration is still refused, 2 a configuration is refused before
    any file could be considered (its structure)."""
    import sys

    out = out or sys.stdout
    err = err or sys.stderr
    configs = []
    for path in paths:
        try:
            configs.append(load_config(path, check_files=False))
        except ConfigError as e:
            print(f"msecctl init: configuration {path} refused, {len(e.problems)} problem(s):",
                  file=err)
            for prob in e.problems:
                print(f"  {prob}", file=err)
            return 2
    try:
        created, kept = provision(plan(configs))
    except ProvisionError as e:
        print(f"msecctl init: {e}", file=err)
        return 1
    for line in created:
        print(f"created {line}", file=out)
    for line in kept:
        print(f"kept    {line}", file=out)
    status = 0
    for path in paths:
        try:
            load_config(path)
            print(f"{path}: valid (msecd --check passes)", file=out)
        except ConfigError as e:
            status = 1
            print(f"{path}: still refused, {len(e.problems)} problem(s):", file=err)
            for prob in e.problems:
                print(f"  {prob}", file=err)
    return status
