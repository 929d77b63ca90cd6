"""The key server's CRL (real msecd processes, certificate authentication): a member whose
certificate the CRL revokes is refused at registration, with the reason logged; a reload whose
CRL revokes a registered member evicts it; a reload with a CRL that cannot be verified is
refused.  The same for members registering over GDOI (the phase 1 certificate) and over
G-IKEv2 (the certificate of GSA_AUTH)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.host.daemon_proc import Msecd
from tests.pki import ThrowawayCa, write_cert, write_crl
from tests.unit.daemon_fakes import free_udp_port

TEK = ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
       'cipher = "aes-gcm-128"\n')


def ks_config(d: Path, port: int, ca: Path, crl: Path | None, protocol: str = "gdoi") -> Path:
    cert, key = d / "ks.crt", d / "ks.key"
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[keyserver]\nlisten = ["127.0.0.1"]\nport = {port}\n'
            + (f'crl = ["{crl}"]\n' if crl else "")
            + f'[keyserver.certificate]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            f'trust_anchors = ["{ca}"]\n'
            '[[keyserver.group]]\nid = 1001\nname = "g1001"\n'
            + ('protocols = ["gdoi", "g-ikev2"]\n' if protocol != "gdoi" else "")
            + 'authorize = { subjects = ["O=Example, CN=gm*"] }\n' + TEK)
    p = d / "ks.toml"
    p.write_text(text)
    p.chmod(0o600)
    return p


def gm_config(d: Path, port: int, ca: Path, name: str, protocol: str = "gdoi") -> Path:
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[[member.group]]\nid = 1001\nname = "m1001"\nkey_servers = ["127.0.0.1:{port}"]\n'
            f'protocol = "{protocol}"\n'
            f'credentials = {{ cert_file = "{d}/{name}.crt", key_file = "{d}/{name}.key", '
            f'trust_anchors = ["{ca}"] }}\n'
            'key_server_identity = { subjects = ["O=Example, CN=ks"] }\n')
    p = d / "msecd.toml"
    p.write_text(text)
    p.chmod(0o600)
    return p


@pytest.mark.parametrize("protocol", ["gdoi", "g-ikev2"])
def test_revoked_member_refused_at_registration(tmp_path, netns, protocol):
    ca = ThrowawayCa()
    anchor = ca.write(tmp_path)
    write_cert(tmp_path, "ks", *ca.issue("ks"))
    certs = {}
    members = {}
    port = free_udp_port()
    for name in ("gm1", "gm3"):
        d = tmp_path / name
        d.mkdir()
        certs[name] = ca.issue(name)
        write_cert(d, name, *certs[name])
        members[name] = Msecd(gm_config(d, port, anchor, name, protocol), host=netns,
                              args=["--no-kernel"])
    crl = write_crl(tmp_path / "ca.crl", ca.crl([certs["gm3"][0]]))
    cfg = ks_config(tmp_path, port, anchor, crl, protocol)
    ks = Msecd(cfg, host=netns)
    try:
        ks.start()
        for m in members.values():
            m.start()
        members["gm1"].wait_log("registered with key server")
        log = ks.wait_log("revoked on")
        line = next(x for x in log.splitlines() if "revoked on" in x)
        assert "refused" in line and "CN=gm3" in line and "key_compromise" in line, line
        assert [m["identity"] for m in ks.ctl_json("members", "1001")["members"]] == \
            ["dn:CN=gm1,O=Example"]
        g = members["gm3"].ctl_json("group", "show", "1001")["roles"][0]
        assert g["teks"] == [] and g["last_error"]

        # a reload with a CRL that now revokes gm1 too evicts it (same file name)
        write_crl(crl, ca.crl([certs["gm3"][0], certs["gm1"][0]]))
        r = ks.ctl_json("reload")
        assert r["ok"] and any("evicted dn:CN=gm1,O=Example" in c and "revoked" in c
                               for c in r["changes"]), r
        ms = {m["identity"]: m for m in ks.ctl_json("members", "1001")["members"]}
        assert ms["dn:CN=gm1,O=Example"]["state"] == "evicted"
        assert "CN=gm1" in ms["dn:CN=gm1,O=Example"]["reason"]
        assert "revoked" in ms["dn:CN=gm1,O=Example"]["reason"]

        # a CRL signed by someone else: the reload is refused, the running CRL stays
        write_crl(crl, ThrowawayCa().crl())
        r = ks.ctl_json("reload")
        assert r["ok"] is False and "not signed by any of the key server's trust anchors" in \
            " ".join([r["error"], *r.get("problems", [])]), r
    finally:
        for m in members.values():
            m.stop()
        ks.stop()
