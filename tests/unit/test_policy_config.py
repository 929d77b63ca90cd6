"""policy.config: TOML -> DaemonConfig, every problem reported with its key path."""

import copy
import dataclasses
import ipaddress as ip
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings, strategies as st

from policy.config import ConfigError, Problem, advisories, diff, load_config, parse_config
from policy import model as m
from policy.model import CertCredential, IdKind, Identity, PskCredential, SaDirection

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PSK = "0123456789abcdef-very-secret"


# ---------------------------------------------------------------- helpers


def toml(value) -> str:
    """A tiny TOML writer: everything as inline tables / arrays (enough for tests)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def dump(doc: dict) -> str:
    return "\n".join(f"{json.dumps(k)} = {toml(v)}" for k, v in doc.items()) + "\n"


def write_private(path: Path, data: bytes, mode=0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def files(tmp_path):
    """A directory with every file the base configuration references."""
    write_private(tmp_path / "gm1.psk", PSK.encode() + b"\n")
    write_private(tmp_path / "cam1.psk", b"another-long-enough-secret")
    write_private(tmp_path / "sign.pem", pem(ec.generate_private_key(ec.SECP256R1())))
    write_private(tmp_path / "ks.key", pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "ks.crt").write_text("cert")
    (tmp_path / "ca.crt").write_text("ca")
    return tmp_path


def base() -> dict:
    return {
        "daemon": {"state_dir": "state", "control_socket": "/run/msec/c.sock"},
        "keyserver": {
            "listen": ["0.0.0.0"],
            "psk": [
                {"identity": "gm1", "secret_file": "gm1.psk"},
                {"identity": "cam1", "secret_file": "cam1.psk"},
            ],
            "certificate": {"cert_file": "ks.crt", "key_file": "ks.key", "trust_anchors": ["ca.crt"]},
            "group": [
                {
                    "id": 1001,
                    "name": "video",
                    "authorize": {"psk_identities": ["gm1", "cam1"], "addresses": ["192.0.2.0/24"]},
                    "tek": [
                        {"src": "10.1.0.0/16", "dst": "239.1.1.1", "protocol": "udp",
                         "dst_port": 5004, "cipher": "aes-gcm-128", "lifetime": "1h"},
                    ],
                    "kek": {"signature": "ecdsa-p256", "signing_key": "sign.pem",
                            "rekey_address": "239.192.0.1", "tek_rekey_lead": "5m"},
                },
                {
                    "id": 1002,
                    "authorize": {"subjects": ["O=Example, CN=gm-*"]},
                    "tek": [
                        {"name": "cam", "src": "2001:db8::10", "dst": "ff3e::1",
                         "cipher": "aes-cbc-128-hmac-sha512", "lifetime": 600,
                         "senders": {"psk_identities": ["cam1"]}, "replay_window": 64},
                    ],
                },
            ],
        },
        "member": {
            "group": [
                {"id": 2001, "key_servers": ["192.0.2.1", "[2001:db8::1]:1848", "ks.example.org"],
                 "credentials": {"psk_identity": "gm1", "psk_file": "gm1.psk"},
                 "interface": "eth0"},
            ]
        },
    }


def load(doc, files, **kw):
    return parse_config(dump(doc), "test.toml", base_dir=files, **kw)


def problems(doc, files) -> list[Problem]:
    with pytest.raises(ConfigError) as ei:
        load(doc, files)
    return ei.value.problems


def only(doc, files) -> Problem:
    ps = problems(doc, files)
    assert len(ps) == 1, [str(p) for p in ps]
    return ps[0]


# ---------------------------------------------------------------- valid configurations


def test_rekey_delivery_settings(files):
    d = base()
    d["keyserver"]["group"][0]["kek"].update(
        rekey_delivery="unicast", rekey_copies=1, rekey_copy_interval="250ms",
        rekey_unicast_rate=200, rekey_ack_timeout="30s", rekey_ack_retries=0,
        rekey_max_missed=5)
    k = load(d, files).keyserver.groups[0].kek
    assert k.unicast and (k.rekey_copies, k.rekey_copy_interval_s, k.rekey_unicast_rate) == \
        (1, 0.25, 200)
    assert (k.rekey_ack_timeout_s, k.rekey_ack_retries, k.rekey_max_missed) == (30, 0, 5)
    d["keyserver"]["group"][0]["kek"]["rekey_copy_interval"] = 2
    assert load(d, files).keyserver.groups[0].kek.rekey_copy_interval_s == 2.0


def test_base_loads(files):
    c = load(base(), files)
    ks = c.keyserver
    assert c.daemon.state_dir == files / "state"
    assert [g.group_id for g in ks.groups] == [1001, 1002]
    t = ks.groups[0].teks[0]
    assert t.name == "tek0" and t.lifetime_s == 3600 and t.selector.dst_port == 5004
    assert t.selector.dst == ip.ip_network("239.1.1.1/32") and t.suite.transform_id == 20
    assert ks.groups[0].kek.tek_rekey_lead_s == 300 and ks.groups[0].kek.rekey_port == 848
    assert ks.groups[0].kek.kek_rekey_lead_s is None and ks.groups[0].kek.lkh
    assert ks.groups[0].kek.lkh_degree == 2 and ks.groups[0].kek.evict_batch_s == 0
    assert ks.groups[0].kek.rekey_ttl == 1 and ks.groups[0].kek.rekey_interface is None
    assert ks.groups[0].kek.max_push_size == 8192
    k = ks.groups[0].kek
    assert (k.rekey_delivery, k.rekey_copies, k.rekey_copy_interval_s, k.rekey_unicast_rate,
            k.rekey_ack_timeout_s, k.rekey_ack_retries, k.rekey_max_missed) == \
        ("multicast", 2, 0.5, 5000, 10, 3, 3) and not k.unicast
    assert ks.psk_for("gm1").secret.reveal() == PSK.encode()  # trailing newline stripped
    cam = ks.groups[1].teks[0]
    assert cam.direction_for(Identity(IdKind.KEY_ID, "cam1")) == SaDirection.SENDER_ONLY
    mg = c.member.groups[0]
    assert [str(k) for k in mg.key_servers] == ["192.0.2.1:848", "[2001:db8::1]:1848",
                                                "ks.example.org:848"]
    assert isinstance(mg.credentials, PskCredential)


def test_single_role_and_defaults(files):
    doc = {"member": base()["member"]}
    c = load(doc, files)
    assert c.keyserver is None and str(c.daemon.state_dir) == "/var/lib/msec"


def test_metrics_listen(files):
    assert load(base(), files).daemon.metrics_listen is None  # off by default
    for text, want in (("127.0.0.1:9848", (ip.ip_address("127.0.0.1"), 9848)),
                       ("[::1]:9848", (ip.ip_address("::1"), 9848))):
        doc = base()
        doc["daemon"]["metrics_listen"] = text
        assert load(doc, files).daemon.metrics_listen == want
    for text, reason in (("127.0.0.1", "not ADDRESS:PORT"), ("::1:9848", "not ADDRESS:PORT"),
                         ("localhost:9848", "not an IPv4 or IPv6 address"),
                         ("127.0.0.1:0", "not in 1..65535"),
                         ("[127.0.0.1]:80", "write an IPv6 address as")):
        doc = base()
        doc["daemon"]["metrics_listen"] = text
        p = only(doc, files)
        assert p.path == "daemon.metrics_listen" and reason in p.reason, str(p)


def test_max_push_size_configured(files):
    doc = base()
    doc["keyserver"]["group"][0]["kek"]["max_push_size"] = 2048
    assert load(doc, files).keyserver.groups[0].kek.max_push_size == 2048


def test_authorizes_from_config(files):
    g = load(base(), files).keyserver.groups
    assert g[0].authorizes(Identity(IdKind.KEY_ID, "zz", ip.ip_address("192.0.2.77"))).allowed
    assert not g[0].authorizes(Identity(IdKind.KEY_ID, "zz", ip.ip_address("198.51.100.1"))).allowed
    assert g[1].authorizes(Identity(IdKind.DN, "O=Example, CN=gm-3")).allowed


def test_examples_parse_without_files():
    for name in ("keyserver.toml", "member.toml"):
        c = load_config(EXAMPLES / name, check_files=False)
        assert c.keyserver or c.member


def test_examples_load_with_their_files(tmp_path):
    for name in ("keyserver.toml", "member.toml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    for psk in ("gm1", "cam1"):
        write_private(tmp_path / "secrets" / f"{psk}.psk", b"example-secret-of-enough-length")
    for key in ("ks.key", "gm1.key", "rekey-p256.pem"):
        write_private(tmp_path / "pki" / key, pem(ec.generate_private_key(ec.SECP256R1())))
    for crt in ("ks.crt", "gm1.crt", "ca.crt"):
        (tmp_path / "pki" / crt).write_text("certificate")
    ks = load_config(tmp_path / "keyserver.toml")
    assert {g.name for g in ks.keyserver.groups} == {"video", "camera"}
    mem = load_config(tmp_path / "member.toml")
    assert isinstance(mem.member.groups[1].credentials, CertCredential)


# ---------------------------------------------------------------- each kind of problem


def tek0(doc):
    return doc["keyserver"]["group"][0]["tek"][0]


T0 = "keyserver.group[0].tek[0]"


@pytest.mark.parametrize(
    "mutate, path, reason",
    [
        (lambda d: tek0(d).update(cipher="aes-gcm-129"), f"{T0}.cipher", "unknown value 'aes-gcm-129'"),
        (lambda d: tek0(d).update(ciphr="x"), f"{T0}.ciphr", "did you mean 'cipher'"),
        (lambda d: tek0(d).update(lifetime=10), f"{T0}.lifetime", "not in 20..86400"),
        (lambda d: tek0(d).update(lifetime="1 fortnight"), f"{T0}.lifetime", "not a duration"),
        (lambda d: tek0(d).update(lifetime=True), f"{T0}.lifetime", "got a boolean"),
        (lambda d: tek0(d).update(dst_port=70000), f"{T0}.dst_port", "not in 0..65535"),
        (lambda d: tek0(d).update(protocol="icmp"), f"{T0}.dst_port", "a port needs protocol"),
        (lambda d: tek0(d).update(protocol="carrier-pigeon"), f"{T0}.protocol", "unknown protocol"),
        (lambda d: tek0(d).update(src="10.1.0.1/16"), f"{T0}.src", "host bits set"),
        (lambda d: tek0(d).update(src="10.1.0.300"), f"{T0}.src", "not an IPv4 or IPv6"),
        (lambda d: tek0(d).update(dst="ff0e::1"), f"{T0}.dst", "is IPv6 but source"),
        (lambda d: tek0(d).update(dst="10.9.9.9"), f"{T0}.dst", "needs a multicast destination"),
        (lambda d: tek0(d).update(replay_window=32), f"{T0}.replay_window", "multi-sender"),
        (lambda d: tek0(d).update(mode="beet"), f"{T0}.mode", "choose one of tunnel, transport"),
        (lambda d: tek0(d).pop("cipher"), f"{T0}.cipher", "missing required key"),
        (lambda d: d["keyserver"]["group"][1]["tek"][0].update(senders={"fqdns": ["*.x.org"]}),
         "keyserver.group[1].tek[0].replay_window", "exactly one sender"),
        (lambda d: d["keyserver"]["group"][1].update(id=1001), "keyserver.group[1].id",
         "duplicate group id 1001"),
        (lambda d: d["keyserver"]["group"][1].update(id=0), "keyserver.group[1].id", "not in 1..4294967295"),
        (lambda d: d["keyserver"]["group"][1].update(id="1002"), "keyserver.group[1].id",
         "expected an integer, got a string"),
        (lambda d: d["keyserver"]["group"][1].update(authorize={}), "keyserver.group[1].authorize",
         "admits nobody"),
        (lambda d: d["keyserver"]["group"][1]["authorize"].update(subjects=["CN"]),
         "keyserver.group[1].authorize.subjects[0]", "has no '='"),
        (lambda d: d["keyserver"]["group"][0]["authorize"].update(psk_identities=["gm9"]),
         "keyserver.group[0].authorize.psk_identities[0]", "no [[keyserver.psk]] entry"),
        (lambda d: d["keyserver"]["group"][0]["authorize"].update(addresses=["192.0.2.0/33"]),
         "keyserver.group[0].authorize.addresses[0]", "not an IPv4 or IPv6"),
        (lambda d: d["keyserver"]["group"][0]["authorize"].update(fqdns=["-bad-.org"]),
         "keyserver.group[0].authorize.fqdns[0]", "not a valid FQDN pattern"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(cipher="aes-gcm-128"),
         "keyserver.group[0].kek.cipher", "RFC 6407 defines no AES-GCM"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(signature="rsa-pss"),
         "keyserver.group[0].kek.signature", "no SIG_ALGORITHM value for RSA-PSS"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_address="192.0.2.1"),
         "keyserver.group[0].kek.rekey_address", "not a multicast address"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_ttl=0),
         "keyserver.group[0].kek.rekey_ttl", "not in 1..255"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_ttl=256),
         "keyserver.group[0].kek.rekey_ttl", "not in 1..255"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(max_push_size=1500),
         "keyserver.group[0].kek.max_push_size", "not in 2048..65000"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(max_push_size="8k"),
         "keyserver.group[0].kek.max_push_size", ""),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_interface="eth0/1"),
         "keyserver.group[0].kek.rekey_interface", "not a Linux interface name"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(tek_rekey_lead="2h"),
         "keyserver.group[0].kek.tek_rekey_lead", "more than half the lifetime"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(kek_rekey_lead="13h"),
         "keyserver.group[0].kek", "more than half the KEK lifetime"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_interval="50m"),
         "keyserver.group[0].kek.rekey_interval", "replaced by tek_rekey_lead"),
        (lambda d: d["keyserver"]["psk"][0].update(secret_file="a\x00b"),
         "keyserver.psk[0].secret_file", "NUL byte"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(lkh_degree=1),
         "keyserver.group[0].kek.lkh_degree", "not in 2..64"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(lkh="yes"),
         "keyserver.group[0].kek.lkh", ""),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(evict_batch_window="2h"),
         "keyserver.group[0].kek.evict_batch_window", "not in 0..3600"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_delivery="broadcast"),
         "keyserver.group[0].kek.rekey_delivery", "choose one of multicast, unicast"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_copies=0),
         "keyserver.group[0].kek.rekey_copies", "not in 1..10"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_copy_interval="5ms"),
         "keyserver.group[0].kek.rekey_copy_interval", "not in 0.01..60.0"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_copy_interval="soon"),
         "keyserver.group[0].kek.rekey_copy_interval", "not an interval"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_unicast_rate=1),
         "keyserver.group[0].kek.rekey_unicast_rate", "not in 10..1000000"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_ack_timeout="0s"),
         "keyserver.group[0].kek.rekey_ack_timeout", "not in 1..300"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_ack_retries=11),
         "keyserver.group[0].kek.rekey_ack_retries", "not in 0..10"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(rekey_max_missed=0),
         "keyserver.group[0].kek.rekey_max_missed", "not in 1..100"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(signature="ecdsa-p384"),
         "keyserver.group[0].kek.signing_key", "needs curve secp384r1"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(signature="rsa-pkcs1-sha256"),
         "keyserver.group[0].kek.signing_key", "needs an RSA key"),
        (lambda d: d["keyserver"]["group"][0]["kek"].update(signing_key="nope.pem"),
         "keyserver.group[0].kek.signing_key", "does not exist"),
        (lambda d: d["keyserver"]["group"][0].update(activation_delay="6s"),
         "keyserver.group[0].deactivation_delay", "must be longer than activation_delay 6 s"),
        (lambda d: d["keyserver"]["group"][0].update(activation_delay=3, deactivation_delay=3),
         "keyserver.group[0].deactivation_delay", "must be longer than activation_delay 3 s"),
        (lambda d: d["keyserver"]["group"][1].update(deactivation_delay="10m"),
         "keyserver.group[1].deactivation_delay", "shorter than the shortest TEK lifetime (600 s)"),
        (lambda d: d["keyserver"]["group"][0].update(activation_delay=-1),
         "keyserver.group[0].activation_delay", "not in 0..3600"),
        (lambda d: d["keyserver"]["group"][0].update(deactivation_delay="1d"),
         "keyserver.group[0].deactivation_delay", "not in 0..3600"),
        (lambda d: d["keyserver"]["group"][0].update(activation_delay="soon"),
         "keyserver.group[0].activation_delay", "not a duration"),
        (lambda d: d["keyserver"].update(port=0), "keyserver.port", "not in 1..65535"),
        (lambda d: d["keyserver"].update(listen=["localhost"]), "keyserver.listen[0]",
         "not an IPv4 or IPv6 address"),
        (lambda d: d["keyserver"]["psk"].append({"identity": "gm1", "secret_file": "cam1.psk"}),
         "keyserver.psk[2].identity", "duplicate PSK identity"),
        (lambda d: d["keyserver"]["psk"][0].update(secret=PSK), "keyserver.psk[0]",
         "exactly one of 'secret' or 'secret_file'"),
        (lambda d: d["keyserver"]["certificate"].update(trust_anchors=[]),
         "keyserver.certificate.trust_anchors", "at least one trust anchor"),
        (lambda d: d["member"]["group"][0].update(key_servers=[]), "member.group[0].key_servers",
         "at least one key server"),
        (lambda d: d["member"]["group"][0].pop("key_servers"), "member.group[0].key_servers",
         "missing required key"),
        (lambda d: d["member"]["group"][0].update(key_servers=["[10.0.0.1]:848"]),
         "member.group[0].key_servers[0]", "not an IPv6 address"),
        (lambda d: d["member"]["group"][0].update(key_servers=["192.0.2.1:99999"]),
         "member.group[0].key_servers[0]", "not in 1..65535"),
        (lambda d: d["member"]["group"][0].update(key_servers=["bad_host!"]),
         "member.group[0].key_servers[0]", "host name"),
        (lambda d: d["member"]["group"][0].update(interface="a-very-long-ifname0"),
         "member.group[0].interface", "not a Linux interface name"),
        (lambda d: d["member"]["group"][0]["credentials"].update(cert_file="ks.crt"),
         "member.group[0].credentials", "not both"),
        (lambda d: d["member"]["group"][0].update(credentials={}), "member.group[0].credentials",
         "no credentials"),
        (lambda d: d.update(extra={"x": 1}), "extra", "unknown key"),
        (lambda d: tek0(d).update(src="224.0.0.0/4"), f"{T0}.src", "is multicast"),
        (lambda d: tek0(d).update(dst="239.1.0.0/16"), f"{T0}.dst", "not the prefix 239.1.0.0/16"),
        (lambda d: d["keyserver"]["group"][1]["tek"].append(
            dict(d["keyserver"]["group"][1]["tek"][0], name="again")),
         "keyserver.group[1].tek[1].dst", "same traffic selector as keyserver.group[1].tek[0]"),
        (lambda d: d["keyserver"].update(identity="ks.example.org"), "keyserver.identity",
         "not KIND:VALUE"),
        (lambda d: d["keyserver"].update(identity="address:ks"), "keyserver.identity",
         "not an IPv4 or IPv6 address"),
        (lambda d: d["keyserver"]["psk"][0].update(addresses=["192.0.2.1", "nope"]),
         "keyserver.psk[0].addresses[1]", "not an IPv4 or IPv6 address"),
        (lambda d: [p.update(addresses=["192.0.2.1"]) for p in d["keyserver"]["psk"]],
         "keyserver.psk[1].addresses[0]", "already has a PSK (psk[0])"),
        (lambda d: d["member"]["group"][0].update(
            credentials={"cert_file": "ks.crt", "key_file": "ks.key", "trust_anchors": ["ca.crt"]}),
         "member.group[0].key_server_identity", "required with certificate credentials"),
        (lambda d: d["member"]["group"][0].update(key_server_identity={"subjects": []}),
         "member.group[0].key_server_identity", "names nobody"),
        (lambda d: d["daemon"].update(state_dir=5), "daemon.state_dir", "expected a string"),
    ],
)
def test_problem_reported_with_key_path(files, mutate, path, reason):
    doc = base()
    mutate(doc)
    p = only(doc, files)
    assert p.path == path and reason in p.reason, str(p)
    assert str(p).startswith(f"test.toml: {path}: ")


def test_single_table_instead_of_array(files):
    text = """
[keyserver]
[[keyserver.psk]]
identity = "gm1"
secret_file = "gm1.psk"
[keyserver.group]
id = 1
"""
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "t.toml", base_dir=files)
    (p,) = ei.value.problems
    assert p.path == "keyserver.group" and "write [[keyserver.group]]" in p.reason


def test_no_role(files):
    p = only({"daemon": {}}, files)
    assert "at least one role" in p.reason


def test_keyserver_without_credentials(files):
    doc = base()
    del doc["keyserver"]["psk"], doc["keyserver"]["certificate"]
    doc["keyserver"]["group"] = [doc["keyserver"]["group"][0]]
    doc["keyserver"]["group"][0]["authorize"] = {"fqdns": ["*.example.org"]}
    p = only(doc, files)
    assert p.path == "keyserver" and "no credentials" in p.reason


def test_many_problems_reported_together(files):
    doc = base()
    tek0(doc).update(cipher="des", lifetime=1)
    doc["keyserver"]["group"][1]["id"] = 1001
    doc["keyserver"]["group"][0]["kek"]["rekey_port"] = -1
    doc["member"]["group"][0]["key_servers"] = []
    doc["keyserver"]["colour"] = "blue"
    ps = problems(doc, files)
    paths = {p.path for p in ps}
    assert {f"{T0}.cipher", f"{T0}.lifetime", "keyserver.group[0].kek.rekey_port",
            "member.group[0].key_servers", "keyserver.colour"} <= paths
    with pytest.raises(ConfigError) as ei:
        load(doc, files)
    assert len(str(ei.value).splitlines()) == len(ps) >= 5


def test_toml_syntax_error(files):
    with pytest.raises(ConfigError) as ei:
        parse_config("[keyserver\nport = 848\n", "bad.toml", base_dir=files)
    (p,) = ei.value.problems
    assert p.source == "bad.toml" and "not valid TOML" in p.reason and "line 1" in p.reason


@pytest.mark.parametrize("bad", ["\x07", "\x01", "\x7f", '"'])
def test_toml_error_does_not_quote_secret_characters(files, bad):
    text = f'[keyserver]\npsk = [{{ identity = "gm1", secret = "abc{bad}xyz-secret-material" }}]\n'
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "bad.toml", base_dir=files)
    msg = str(ei.value)
    assert "not valid TOML" in msg and "xyz" not in msg and repr(bad)[1:-1] not in msg


def test_wrong_section_types(files):
    ps = problems({"keyserver": [1, 2], "member": {"group": [5]}}, files)
    assert {(p.path, p.reason) for p in ps} >= {
        ("keyserver", "expected a table, got an array"),
        ("member.group[0]", "expected a table, got an integer"),
    }


# ---------------------------------------------------------------- files and secrets


def test_private_key_readable_by_others(files):
    (files / "sign.pem").chmod(0o640)
    p = only(base(), files)
    assert p.path == "keyserver.group[0].kek.signing_key"
    assert "group or others have access (mode 0640)" in p.reason and "chmod 600" in p.reason


def test_psk_file_world_readable(files):
    (files / "gm1.psk").chmod(0o604)
    ps = problems(base(), files)
    assert {p.path for p in ps} == {"keyserver.psk[0].secret_file",
                                    "member.group[0].credentials.psk_file"}


def test_encrypted_and_small_signing_keys(files):
    key = ec.generate_private_key(ec.SECP256R1())
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    write_private(files / "sign.pem", enc)
    assert "encrypted" in only(base(), files).reason
    write_private(files / "sign.pem", pem(rsa.generate_private_key(65537, 1024)))
    doc = base()
    doc["keyserver"]["group"][0]["kek"]["signature"] = "rsa-pkcs1-sha256"
    assert "needs at least 2048" in only(doc, files).reason
    write_private(files / "sign.pem", b"junk")
    assert "not a PEM private key" in only(base(), files).reason


def test_short_psk_not_echoed(files):
    secret = "hunter2-short"
    doc = base()
    doc["member"]["group"][0]["credentials"] = {"psk_identity": "gm1", "psk": secret}
    with pytest.raises(ConfigError) as ei:
        load(doc, files)
    (p,) = ei.value.problems
    assert p.path == "member.group[0].credentials.psk" and "shorter than 16" in p.reason
    assert secret not in str(ei.value) and secret not in repr(ei.value.problems)


def test_psk_of_wrong_type_not_echoed(files):
    doc = base()
    doc["keyserver"]["psk"][0] = {"identity": "gm1", "secret": 987654321987654321}
    p = only(doc, files)
    assert p.path == "keyserver.psk[0].secret" and "987654321" not in str(p)


def test_inline_psk_needs_private_config_file(files):
    doc = base()
    doc["member"]["group"][0]["credentials"] = {"psk_identity": "gm1", "psk": PSK}
    cfg = write_private(files / "msecd.toml", dump(doc).encode(), mode=0o644)
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    (p,) = ei.value.problems
    assert p.path == "member.group[0].credentials.psk" and "mode 0644" in p.reason
    assert PSK not in str(ei.value)
    cfg.chmod(0o600)
    c = load_config(cfg)
    cred = c.member.groups[0].credentials
    assert cred.secret.reveal() == PSK.encode() and cred.source is None
    for text in (repr(c), str(c), repr(cred)):
        assert PSK not in text


def test_config_repr_has_no_secret(files):
    c = load(base(), files)
    assert PSK not in repr(c) and "another-long-enough-secret" not in repr(c)


def test_load_config_unreadable(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "missing.toml")
    assert "cannot read" in str(ei.value)


# ---------------------------------------------------------------- diff


def test_diff(files):
    old = load(base(), files)
    assert diff(old, old).empty
    doc = base()
    doc["keyserver"]["group"][0]["tek"][0]["cipher"] = "aes-gcm-256"
    doc["keyserver"]["group"][0]["authorize"]["addresses"] = []
    del doc["keyserver"]["group"][1]
    doc["keyserver"]["group"].append(
        {"id": 1003, "authorize": {"psk_identities": ["gm1"]},
         "tek": [{"src": "10.0.0.0/8", "dst": "239.3.3.3", "cipher": "aes-gcm-128"}]})
    doc["keyserver"]["port"] = 1848
    doc["member"]["group"][0]["interface"] = "eth1"
    doc["member"]["group"].append(dict(doc["member"]["group"][0], id=2002))
    new = load(doc, files)
    d = diff(old, new)
    assert d.keyserver_added == (1003,) and d.keyserver_removed == (1002,)
    assert [(c.group_id, c.fields) for c in d.keyserver_changed] == [
        (1001, ("teks", "authorization"))]
    assert d.member_added == (2002,) and d.member_removed == ()
    assert [(c.group_id, c.fields) for c in d.member_changed] == [(2001, ("interface",))]
    assert d.settings_changed == ("keyserver.port",)
    assert not d.empty
    ks_change, m_change = d.keyserver_changed[0], d.member_changed[0]
    assert ks_change.needs_rekey and ks_change.needs_reauthorization
    assert not m_change.needs_reregistration


def test_gap_delays_default_load_and_change_without_rekey(files):
    """The GAP knobs of a key server group: defaults, durations, and a reload that changes
    only them needs no rekey (the next PULL and PUSH carry the new values)."""
    old = load(base(), files)
    g = old.keyserver.groups[0]
    assert (g.activation_delay_s, g.deactivation_delay_s) == (m.DEFAULT_ACTIVATION_DELAY,
                                                             m.DEFAULT_DEACTIVATION_DELAY) == (2, 6)
    doc = base()
    doc["keyserver"]["group"][0].update(activation_delay="10s", deactivation_delay="1m")
    new = load(doc, files)
    g = new.keyserver.groups[0]
    assert (g.activation_delay_s, g.deactivation_delay_s) == (10, 60)
    (change,) = diff(old, new).keyserver_changed
    assert change.fields == ("activation_delay_s", "deactivation_delay_s")
    assert not change.needs_rekey and not change.needs_reauthorization
    with pytest.raises(ValueError, match="must be longer than activation_delay"):
        dataclasses.replace(g, deactivation_delay_s=10)  # the model checks itself too


def test_diff_role_removed_and_psk_change(files):
    old = load(base(), files)
    doc = base()
    del doc["member"]
    write_private(files / "cam1.psk", b"a-rotated-secret-of-length")
    new = load(doc, files)
    d = diff(old, new)
    assert d.member_removed == (2001,) and "member" in d.settings_changed
    assert "keyserver.psks" in d.settings_changed
    assert "a-rotated" not in repr(d)


# ---------------------------------------------------------------- robustness


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    yield path


junk = st.one_of(
    st.integers(-(2**40), 2**40), st.booleans(), st.text(max_size=12),
    st.lists(st.integers(0, 5), max_size=2), st.dictionaries(st.sampled_from("ab"), st.integers(), max_size=1),
    st.sampled_from(["any", "udp", "239.1.1.1", "::", "10.0.0.0/8", "1h", "aes-gcm-128", "gm1"]),
)
LEAVES = [p for p in _leaves(base()) if p]


@settings(max_examples=int(os.environ.get("MSEC_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(LEAVES), junk), min_size=1, max_size=3))
def test_mutations_load_or_raise_config_error(files, edits):
    doc = copy.deepcopy(base())
    for path, value in edits:
        target = doc
        try:
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        load(doc, files)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, Problem) and p.reason for p in e.problems)
        assert PSK not in str(e)


def test_keyserver_identity_and_psk_addresses(files):
    doc = base()
    doc["keyserver"]["identity"] = "fqdn:ks.example.org"
    doc["keyserver"]["psk"][0]["addresses"] = ["192.0.2.11", "2001:db8::11"]
    ks = load(doc, files).keyserver
    assert ks.identity == Identity(IdKind.FQDN, "ks.example.org")
    assert ks.psks[0].addresses == (ip.ip_address("192.0.2.11"), ip.ip_address("2001:db8::11"))
    assert "192.0.2.11" in repr(ks.psks[0]) and PSK not in repr(ks)


def test_member_key_server_identity(files):
    doc = base()
    doc["member"]["group"][0].update(
        credentials={"cert_file": "ks.crt", "key_file": "ks.key", "trust_anchors": ["ca.crt"]},
        key_server_identity={"subjects": ["O=Example, CN=ks*"]})
    g = load(doc, files).member.groups[0]
    assert g.accepts_key_server(Identity(IdKind.DN, "CN=ks1,O=Example")).allowed
    d = g.accepts_key_server(Identity(IdKind.DN, "CN=gm7,O=Example"))
    assert not d.allowed and "refused" in d.reason
    psk_group = load(base(), files).member.groups[0]
    assert psk_group.accepts_key_server(Identity(IdKind.KEY_ID, "ks")).allowed


def test_advisories(files):
    doc = base()
    doc["keyserver"]["psk"] += [
        {"identity": f"gm{i}", "secret_file": "cam1.psk"} for i in range(100, 117)]
    doc["keyserver"]["group"][0]["authorize"]["addresses"] = ["::/0"]
    notes = {a.path: a.reason for a in advisories(load(doc, files))}
    assert "admits every peer" in notes["keyserver.group[0].authorize.addresses"]
    assert "IV uniqueness" in notes["keyserver.group[0].tek[0].cipher"]
    assert "no [kek]" in notes["keyserver.group[1]"]
    assert "Main Mode tries at most 16" in notes["keyserver.psk"]
    assert "keyserver.group[1].tek[0].cipher" not in notes  # single sender, CBC
    assert advisories(load({"member": base()["member"]}, files)) == []


def test_transport_mode_protocol_number_and_durations(files):
    doc = base()
    tek0(doc).update(mode="transport", dst="10.9.0.0/16", protocol=132, lifetime="90m")
    doc["keyserver"]["group"][0]["kek"].update(lifetime="2d", kek_rekey_lead="1800s",
                                               lkh=False, lkh_degree=4,
                                               evict_batch_window="5s")
    g = load(doc, files).keyserver.groups[0]
    t = g.teks[0]
    assert t.selector.protocol == 132 and t.lifetime_s == 5400 and t.encapsulation_mode == 2
    assert g.kek.lifetime_s == 172800 and g.kek.kek_rekey_lead_s == 1800
    assert not g.kek.lkh and g.kek.lkh_degree == 4 and g.kek.evict_batch_s == 5


def test_check_files_false_reads_nothing(tmp_path):
    c = load(base(), tmp_path, check_files=False)  # none of the files exist
    a, b = c.keyserver.psks[0].secret, load(base(), tmp_path, check_files=False).keyserver.psks[0].secret
    assert a != b  # random placeholders: a lint-only config authenticates nobody
    assert c.keyserver.groups[0].kek.signing_key == tmp_path / "sign.pem"


def test_replay_window_defaults(files):
    doc = base()
    del doc["keyserver"]["group"][1]["tek"][0]["replay_window"]
    c = load(doc, files)
    assert c.keyserver.groups[1].teks[0].replay_window == 64  # exactly one sender
    assert c.keyserver.groups[0].teks[0].replay_window == 0  # every member sends
    doc["keyserver"]["group"][1]["tek"][0]["senders"] = {"psk_identities": ["cam1", "gm1"]}
    assert load(doc, files).keyserver.groups[1].teks[0].replay_window == 0


def test_schema_in_module_docstring_is_valid(tmp_path):
    import policy.config as pc

    doc = pc.__doc__
    block = doc[doc.index("Schema"):doc.index("Relative paths")].split("::", 1)[1]
    text = "\n".join(line[4:] for line in block.splitlines())
    c = parse_config(text, "docstring", base_dir=tmp_path, check_files=False)
    assert c.keyserver.groups[0].teks[0].name == "rtp" and c.member.groups[0].group_id == 1001


# ---------------------------------------------------------------- registration protocols


def test_protocol_defaults_to_gdoi(files):
    cfg = load(base(), files)
    assert [g.protocols for g in cfg.keyserver.groups] == [("gdoi",), ("gdoi",)]
    assert cfg.member.groups[0].protocol == "gdoi"


def test_protocols_both_and_member_g_ikev2(files):
    doc = base()
    doc["keyserver"]["group"][0]["protocols"] = ["gdoi", "g-ikev2"]
    doc["keyserver"]["group"][1]["protocols"] = ["g-ikev2"]
    doc["member"]["group"][0]["protocol"] = "g-ikev2"
    cfg = load(doc, files)
    assert [g.protocols for g in cfg.keyserver.groups] == [("gdoi", "g-ikev2"), ("g-ikev2",)]
    assert cfg.member.groups[0].protocol == "g-ikev2"


@pytest.mark.parametrize("value, why", [
    ([], "at least one protocol"),
    (["ikev1"], "unknown protocol 'ikev1'"),
    (["gdoi", "gdoi"], "listed twice"),
])
def test_protocols_refused(files, value, why):
    doc = base()
    doc["keyserver"]["group"][0]["protocols"] = value
    p = only(doc, files)
    assert p.path == "keyserver.group[0].protocols" and why in p.reason


def test_protocols_must_be_strings(files):
    doc = base()
    doc["keyserver"]["group"][0]["protocols"] = "g-ikev2"
    assert only(doc, files).path == "keyserver.group[0].protocols"


def test_member_sender_is_for_g_ikev2_members(files):
    doc = base()
    assert load(doc, files).member.groups[0].sender is False
    doc["member"]["group"][0].update(protocol="g-ikev2", sender=True)
    assert load(doc, files).member.groups[0].sender is True
    doc["member"]["group"][0]["protocol"] = "gdoi"
    p = only(doc, files)
    assert p.path == "member.group[0].sender" and "SA directions come from the key server" in p.reason
    doc["member"]["group"][0].update(protocol="g-ikev2", sender="yes")
    assert only(doc, files).path == "member.group[0].sender"


def test_member_protocol_refused(files):
    doc = base()
    doc["member"]["group"][0]["protocol"] = "ikev2"
    p = only(doc, files)
    assert p.path == "member.group[0].protocol" and "unknown protocol 'ikev2'" in p.reason


def test_model_checks_protocols(files):
    member = load(base(), files).member.groups[0]
    with pytest.raises(ValueError, match="protocol 'x' is not one of gdoi, g-ikev2"):
        dataclasses.replace(member, protocol="x")
    group = load(base(), files).keyserver.groups[0]
    with pytest.raises(ValueError, match="listed twice"):
        dataclasses.replace(group, protocols=("g-ikev2", "g-ikev2"))
    assert dataclasses.replace(group, protocols=("g-ikev2",)).protocols == ("g-ikev2",)


def test_reload_of_protocols(files):
    """A member's protocol change registers again (over the new protocol); a key server
    group's protocols change needs no rekey (the keys are the same for both)."""
    old = load(base(), files)
    doc = base()
    doc["member"]["group"][0]["protocol"] = "g-ikev2"
    doc["keyserver"]["group"][0]["protocols"] = ["gdoi", "g-ikev2"]
    d = diff(old, load(doc, files))
    (m_change,) = d.member_changed
    assert m_change.fields == ("protocol",) and m_change.needs_reregistration
    (ks_change,) = d.keyserver_changed
    assert ks_change.fields == ("protocols",) and not ks_change.needs_rekey


# ---------------------------------------------------------------- ML-KEM-768 (G-IKEv2)


def test_mlkem_defaults_to_optional(files):
    cfg = load(base(), files)
    assert [g.mlkem for g in cfg.keyserver.groups] == ["optional", "optional"]
    assert cfg.member.groups[0].mlkem == "optional"


def test_mlkem_required_by_a_g_ikev2_group_and_off_for_a_member(files):
    doc = base()
    doc["keyserver"]["group"][0].update(protocols=["g-ikev2"], mlkem="required")
    doc["keyserver"]["group"][1].update(protocols=["gdoi", "g-ikev2"], mlkem="optional")
    doc["member"]["group"][0].update(protocol="g-ikev2", mlkem="off")
    cfg = load(doc, files)
    assert [g.mlkem for g in cfg.keyserver.groups] == ["required", "optional"]
    assert cfg.member.groups[0].mlkem == "off"
    doc["member"]["group"][0]["mlkem"] = "required"
    assert load(doc, files).member.groups[0].mlkem == "required"
    assert "keyserver.group[0].mlkem" not in {a.path for a in advisories(cfg)}  # G-IKEv2 only


@pytest.mark.parametrize("change, path, why", [
    (lambda d: d["keyserver"]["group"][0].update(protocols=["g-ikev2"], mlkem="yes"),
     "keyserver.group[0].mlkem", "unknown value 'yes' (optional or required)"),
    (lambda d: d["keyserver"]["group"][0].update(protocols=["g-ikev2"], mlkem="off"),
     "keyserver.group[0].mlkem", "unknown value 'off'"),
    (lambda d: d["keyserver"]["group"][0].update(protocols=["g-ikev2"], mlkem=True),
     "keyserver.group[0].mlkem", "got a boolean"),
    (lambda d: d["keyserver"]["group"][1].update(mlkem="required"),
     "keyserver.group[1].mlkem", "applies to G-IKEv2 members: list \"g-ikev2\" in protocols"),
    (lambda d: d["member"]["group"][0].update(protocol="g-ikev2", mlkem="ecdh"),
     "member.group[0].mlkem", "unknown value 'ecdh' (off, optional or required)"),
    (lambda d: d["member"]["group"][0].update(mlkem="off"),
     "member.group[0].mlkem", "applies to G-IKEv2 members (protocol = \"g-ikev2\")"),
    (lambda d: d["member"]["group"][0].update(mlkem="required"),
     "member.group[0].mlkem", "GDOI's IKEv1 phase 1 has no ML-KEM"),
])
def test_mlkem_refused(files, change, path, why):
    doc = base()
    change(doc)
    p = only(doc, files)
    assert p.path == path and why in p.reason, str(p)


def test_model_checks_mlkem(files):
    cfg = load(base(), files)
    with pytest.raises(ValueError, match="mlkem 'off' is not one of optional, required"):
        dataclasses.replace(cfg.keyserver.groups[0], mlkem="off")
    with pytest.raises(ValueError, match="mlkem 'no' is not one of off, optional, required"):
        dataclasses.replace(cfg.member.groups[0], mlkem="no")


def test_mlkem_required_with_gdoi_is_an_advisory(files):
    doc = base()
    doc["keyserver"]["group"][0].update(protocols=["gdoi", "g-ikev2"], mlkem="required")
    notes = {a.path: a.reason for a in advisories(load(doc, files))}
    assert "without post-quantum protection" in notes["keyserver.group[0].mlkem"]


def test_reload_of_mlkem(files):
    """A key server group's requirement changes no keys (it applies to later registrations); a
    member's registers again (its next IKE SA offers what the setting says)."""
    doc = base()
    doc["keyserver"]["group"][0]["protocols"] = ["gdoi", "g-ikev2"]
    doc["member"]["group"][0]["protocol"] = "g-ikev2"
    old = load(doc, files)
    doc["keyserver"]["group"][0]["mlkem"] = "required"
    doc["member"]["group"][0]["mlkem"] = "off"
    d = diff(old, load(doc, files))
    (ks_change,) = d.keyserver_changed
    assert ks_change.fields == ("mlkem",) and not ks_change.needs_rekey and not ks_change.needs_reauthorization
    (m_change,) = d.member_changed
    assert m_change.fields == ("mlkem",) and m_change.needs_reregistration


# ---------------------------------------------------------------- G-IKEv2 port


def test_g_ikev2_port_defaults_to_the_gdoi_port(files):
    ks = load(base(), files).keyserver
    assert ks.port == 848 and ks.g_ikev2_port is None and ks.ike_port == 848


def test_g_ikev2_port_of_its_own(files):
    doc = base()
    doc["keyserver"]["g_ikev2_port"] = 500
    ks = load(doc, files).keyserver
    assert ks.g_ikev2_port == 500 and ks.ike_port == 500 and ks.port == 848
    doc["keyserver"]["g_ikev2_port"] = 848  # the GDOI port: one socket, as without it
    assert load(doc, files).keyserver.g_ikev2_port is None
    doc["member"]["group"][0].update(protocol="g-ikev2", key_servers=["192.0.2.1:500"])
    assert load(doc, files).member.groups[0].key_servers[0].port == 500


@pytest.mark.parametrize("value, why", [
    (4500, "4500 is the NAT-T port, never asked for: set g_ikev2_port = 500, which binds UDP 4500 too"),
    (0, "0 is not in 1..65535"),
    (65536, "65536 is not in 1..65535"),
    ("500", "expected"),
])
def test_g_ikev2_port_refused(files, value, why):
    doc = base()
    doc["keyserver"]["g_ikev2_port"] = value
    p = only(doc, files)
    assert p.path == "keyserver.g_ikev2_port" and why in p.reason, str(p)


def test_g_ikev2_member_may_name_the_nat_t_port(files):
    """A G-IKEv2 member may register on a key server's UDP 4500 (the non-ESP marker from the
    first message); a GDOI one too (GDOI has no marker: a GDOI key server may listen anywhere)."""
    doc = base()
    doc["member"]["group"][0].update(protocol="g-ikev2", key_servers=["192.0.2.1", "192.0.2.2:4500"])
    assert load(doc, files).member.groups[0].key_servers[1].port == 4500
    doc["member"]["group"][0]["protocol"] = "gdoi"
    assert load(doc, files).member.groups[0].key_servers[1].port == 4500


def test_gdoi_port_may_not_take_the_nat_t_socket_of_g_ikev2_on_500(files):
    doc = base()
    doc["keyserver"].update(port=4500, g_ikev2_port=500)
    p = only(doc, files)
    assert p.path == "keyserver.port" and "where G-IKEv2 on 500 listens with the non-ESP marker" in p.reason
    doc["keyserver"]["g_ikev2_port"] = 848  # G-IKEv2 on 848: no NAT-T socket, GDOI may have 4500
    assert load(doc, files).keyserver.port == 4500


def test_reload_of_g_ikev2_port(files):
    old = load(base(), files)
    doc = base()
    doc["keyserver"]["g_ikev2_port"] = 500
    assert diff(old, load(doc, files)).settings_changed == ("keyserver.g_ikev2_port",)
