"""G-IKEv2 in real msecd processes (netlab hosts, members --no-kernel): one key server serves
group 1001 over GDOI and G-IKEv2 and group 1002 over GDOI only, on its one UDP 848 socket.
A GDOI member and two G-IKEv2 members of 1001 register and hold the same TEKs; a G-IKEv2
member of 1002 is refused (AUTHORIZATION_FAILED), with a log line on both sides saying why.
Then ``msecctl rekey`` reaches all three (GROUPKEY-PUSH and its GSA_REKEY twin), and
``msecctl evict`` of one G-IKEv2 member (LKH) leaves it out while the other two follow the new
KEK and TEKs.  A group with ``mlkem = "required"`` admits a member that offers ML-KEM-768
and refuses one configured without it."""

from __future__ import annotations

import contextlib
import os
import re

from tests.host.daemon_proc import Msecd
from tests.host.test_daemon_process import _push_signing_key

PSK = {"gm1": "11" * 16, "gm2": "22" * 16, "gm3": "33" * 16, "gm4": "44" * 16}


def _ks_config(tmp_path, listen: str):
    signing = _push_signing_key(tmp_path / "push.pem")
    text = (f'[daemon]\nstate_dir = "{tmp_path}/ks/state"\ncontrol_socket = "{tmp_path}/ks/control.sock"\n\n'
            f'[keyserver]\nlisten = ["{listen}"]\nport = 848\n')
    for ident, secret in PSK.items():
        text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{secret}"\n'
    text += ('[[keyserver.group]]\nid = 1001\nname = "both"\nprotocols = ["gdoi", "g-ikev2"]\n'
             'authorize = { psk_identities = ["gm1", "gm2", "gm4"] }\n'
             '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\ndst = "239.1.1.1"\n'
             'cipher = "aes-gcm-128"\n'
             '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
             f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nlifetime = "1d"\n'
             '[[keyserver.group]]\nid = 1002\nname = "legacy"\n'
             'authorize = { psk_identities = ["gm3"] }\n'
             '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\ndst = "239.1.1.2"\n'
             'cipher = "aes-gcm-128"\n')
    return _write(tmp_path / "ks.toml", text)


def _member_config(tmp_path, name: str, gid: int, protocol: str, ks: str):
    d = tmp_path / name
    d.mkdir()
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/control.sock"\n\n'
            f'[[member.group]]\nid = {gid}\nkey_servers = ["{ks}:848"]\nprotocol = "{protocol}"\n'
            f'credentials = {{ psk_identity = "{name}", psk = "{PSK[name]}" }}\n')
    return _write(d / "msecd.toml", text)


@contextlib.contextmanager
def _running(*daemons: Msecd):
    """The daemons started in order, stopped in reverse order whatever happens."""
    try:
        for d in daemons:
            d.start()
        yield daemons
    finally:
        for d in reversed(daemons):
            d.stop()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def _spis(d: Msecd, gid: int) -> set[str]:
    return {t["spi"] for t in d.ctl_json("group", "show", str(gid))["roles"][0]["teks"]}


def test_gdoi_and_g_ikev2_members_of_one_group(netlab_factory, tmp_path):
    lab = netlab_factory(5)
    h1, h2, h3, h4, h5 = lab.hosts
    ks = Msecd(_ks_config(tmp_path, h1.ip4), host=h1)
    gdoi = Msecd(_member_config(tmp_path, "gm1", 1001, "gdoi", h1.ip4), host=h2, args=["--no-kernel"])
    gike = Msecd(_member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4), host=h3, args=["--no-kernel"])
    refused = Msecd(_member_config(tmp_path, "gm3", 1002, "g-ikev2", h1.ip4), host=h4, args=["--no-kernel"])
    gike2 = Msecd(_member_config(tmp_path, "gm4", 1001, "g-ikev2", h1.ip4), host=h5, args=["--no-kernel"])
    with _running(ks, gdoi, gike, refused, gike2):
        for d in (gdoi, gike, gike2):
            d.wait_log("registered with key server", timeout=60)
        ks.wait_log("registered (TEK SPI", count=3, timeout=60)
        assert ks.ctl_json("group", "show", "1001")["roles"][0]["policy"]["protocols"] == ["gdoi", "g-ikev2"]
        assert gike.ctl_json("group", "show", "1001")["roles"][0]["protocol"] == "g-ikev2"
        assert gdoi.ctl_json("group", "show", "1001")["roles"][0]["protocol"] == "gdoi"
        want = _spis(ks, 1001)
        assert want and _spis(gdoi, 1001) == want and _spis(gike, 1001) == want == _spis(gike2, 1001)
        members = {m["identity"] for m in ks.ctl_json("members", "1001")["members"]
                   if m["state"] == "registered"}
        assert members == {"key-id:gm1", "key-id:gm2", "key-id:gm4"}
        protocols = {m["identity"]: m["protocol"] for m in ks.ctl_json("members", "1001")["members"]}
        assert protocols == {"key-id:gm1": "gdoi", "key-id:gm2": "g-ikev2", "key-id:gm4": "g-ikev2"}
        table = ks.ctl("members", "1001", check=True).stdout
        assert "PROTOCOL" in table and re.search(r"key-id:gm2 +registered +\S+ +G-IKEv2", table), table
        assert "g-ikev2 gcks: key-id 'gm2'" in ks.log()  # it came over G-IKEv2
        assert "gdoi ks: key-id 'gm1'" in ks.log()  # and gm1 over GDOI
        assert "listening for GROUPKEY-PUSH" in gdoi.log()
        for d in (gike, gike2):
            d.wait_log("listening for GSA_REKEY on 239.192.0.1:848", timeout=30)

        # a rekey: the same new TEK at every member, whichever protocol it speaks
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        new = set(r["teks"])
        for d in (gdoi, gike, gike2):
            d.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
            assert new <= _spis(d, 1001), d.log()[-3000:]
        for d in (gike, gike2):
            assert "GSA_REKEY rejected" not in d.log()  # the GDOI copies were dropped quietly
        assert "GROUPKEY-PUSH rejected" not in gdoi.log()  # and the GSA_REKEY ones

        # evicting G-IKEv2 member gm2 by LKH: it is out, gm4 and gm1 get the new TEK
        r = ks.ctl_json("evict", "1001", "gm2", "--reason", "test")
        assert r["ok"] and r["mode"] == "lkh" and r["evicted"] == ["key-id:gm2"], r
        new = set(r["teks"])
        gike.wait_log("evicted from the group", timeout=30)
        for d in (gdoi, gike2):
            d.wait_log(f"rekeyed: SEQ {r['seq']}, new TEK SPIs", timeout=30)
            assert new <= _spis(d, 1001), d.log()[-3000:]
        assert not new & _spis(gike, 1001)

        ks_log = ks.wait_log("is not served over G-IKEv2 (protocols = gdoi)", timeout=60)
        line = next(x for x in ks_log.splitlines() if "not served over G-IKEv2" in x and "legacy" in x)
        assert "gm3" in line and "refused" in line, line
        gm_log = refused.wait_log("failed: G-IKEv2:", timeout=60)
        line = next(x for x in gm_log.splitlines() if " WARNING group 1002: registration with" in x)
        assert "failed: G-IKEv2:" in line and "refused: AUTHORIZATION_FAILED" in line, line
        assert refused.ctl_json("group", "show", "1002")["roles"][0]["state"] != "registered"
        assert ks.ctl_json("members", "1002")["members"] == []


def test_reload_turns_g_ikev2_on(netlab_factory, tmp_path):
    """A GDOI-only key server answers no IKEv2; a reload that adds g-ikev2 to the group's
    protocols (a new engine, the same socket and store) lets a G-IKEv2 member in."""
    lab = netlab_factory(2)
    h1, h2 = lab.hosts
    cfg = _ks_config(tmp_path, h1.ip4)
    cfg.write_text(cfg.read_text().replace('protocols = ["gdoi", "g-ikev2"]\n', ''))
    ks = Msecd(cfg, host=h1)
    gike = Msecd(_member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4), host=h2, args=["--no-kernel"])
    try:
        ks.start()
        assert ks.ctl_json("group", "show", "1001")["roles"][0]["policy"]["protocols"] == ["gdoi"]
        gike.start()
        gike.wait_log("registering with key server", timeout=30)
        cfg.write_text(cfg.read_text().replace('name = "both"\n', 'name = "both"\nprotocols = ["gdoi", "g-ikev2"]\n'))
        r = ks.ctl_json("reload")
        assert r["ok"], r
        gike.wait_log("registered with key server", timeout=60)
        ks.wait_log("g-ikev2 gcks: key-id 'gm2'", timeout=30)
        assert ks.ctl_json("group", "show", "1001")["roles"][0]["policy"]["protocols"] == ["gdoi", "g-ikev2"]
        assert _spis(gike, 1001) == _spis(ks, 1001)
    finally:
        gike.stop()
        ks.stop()


def test_group_that_requires_mlkem(netlab_factory, tmp_path):
    """``mlkem = "required"``: a G-IKEv2 member that offers ML-KEM-768 (the default) registers,
    one configured ``mlkem = "off"`` is refused (NO_PROPOSAL_CHOSEN) with the reason logged on
    both sides and is not recorded; ``msecctl group show --json`` shows the settings."""
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    cfg = _ks_config(tmp_path, h1.ip4)
    cfg.write_text(cfg.read_text().replace('protocols = ["gdoi", "g-ikev2"]\n',
                                           'protocols = ["g-ikev2"]\nmlkem = "required"\n'))
    off = _member_config(tmp_path, "gm4", 1001, "g-ikev2", h1.ip4)
    off.write_text(off.read_text().replace('protocol = "g-ikev2"\n', 'protocol = "g-ikev2"\nmlkem = "off"\n'))
    ks = Msecd(cfg, host=h1)
    pq = Msecd(_member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4), host=h2, args=["--no-kernel"])
    classic = Msecd(off, host=h3, args=["--no-kernel"])
    with _running(ks, pq, classic):
        pq.wait_log("registered with key server", timeout=60)
        policy = ks.ctl_json("group", "show", "1001")["roles"][0]["policy"]
        assert policy["protocols"] == ["g-ikev2"] and policy["mlkem"] == "required"
        assert pq.ctl_json("group", "show", "1001")["roles"][0]["mlkem"] == "optional"
        assert classic.ctl_json("group", "show", "1001")["roles"][0]["mlkem"] == "off"
        ks_log = ks.wait_log("requires the ML-KEM-768 key exchange", timeout=60)
        line = next(x for x in ks_log.splitlines() if "requires the ML-KEM-768" in x and "refused" in x
                    and "gcks" not in x)
        assert "gm4" in line and "IKE SA was made without it (ECP256)" in line, line
        gm_log = classic.wait_log("failed: G-IKEv2:", timeout=60)
        line = next(x for x in gm_log.splitlines() if " WARNING group 1001: registration with" in x)
        assert "refused: NO_PROPOSAL_CHOSEN: the group requires the ML-KEM-768 key exchange" in line, line
        assert classic.ctl_json("group", "show", "1001")["roles"][0]["state"] != "registered"
        members = {m["identity"] for m in ks.ctl_json("members", "1001")["members"]}
        assert members == {"key-id:gm2"}


def test_g_ikev2_on_a_port_of_its_own(netlab_factory, tmp_path):
    """``[keyserver] g_ikev2_port = 500``: G-IKEv2 members register on 500 (``key_servers =
    ["ks:500"]``), GDOI members still on 848 (which socket takes which protocol:
    test_ikev2_daemon_engines.test_listen_sockets_of_a_g_ikev2_port_of_its_own); 500 brings
    4500 (NAT traversal: test_g_ikev2_natt)."""
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    cfg = _ks_config(tmp_path, h1.ip4)
    cfg.write_text(cfg.read_text().replace("port = 848\n", "port = 848\ng_ikev2_port = 500\n", 1))
    gike_cfg = _member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4)
    gike_cfg.write_text(gike_cfg.read_text().replace(f'"{h1.ip4}:848"', f'"{h1.ip4}:500"'))
    ks = Msecd(cfg, host=h1)
    gdoi = Msecd(_member_config(tmp_path, "gm1", 1001, "gdoi", h1.ip4), host=h2, args=["--no-kernel"])
    gike = Msecd(gike_cfg, host=h3, args=["--no-kernel"])
    with _running(ks, gdoi, gike):
        assert sorted(ks.ctl_json("status")["keyserver"]["listen"]) == sorted([f"{h1.ip4}:848", f"{h1.ip4}:500",
                                                                              f"{h1.ip4}:4500"])
        for d in (gdoi, gike):
            d.wait_log("registered with key server", timeout=60)
        assert f"{h1.ip4}:500" in gike.ctl_json("group", "show", "1001")["roles"][0]["key_server"]
        assert _spis(gdoi, 1001) == _spis(gike, 1001) == _spis(ks, 1001)


def test_post_quantum_preshared_key(netlab_factory, tmp_path):
    """RFC 8784 PPKs: a group with ``ppk = "required"`` and in-band rekeys (so the IKE SA's
    PPK-updated keys carry the rekey too); member gm2 with the key server's PPK registers, the
    key server's log says the PPK was used, ``msecctl rekey`` reaches it in band; gm4, without a
    PPK, is refused AUTHENTICATION_FAILED and not recorded.  No PPK secret in any log."""
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    secret = "5a" * 32
    ks_ppk = _write(tmp_path / "ks" / "gm2.ppk", secret + "\n")
    gm_ppk = _write(tmp_path / "gm2.ppk", secret + "\n")
    cfg = _ks_config(tmp_path, h1.ip4)
    text = cfg.read_text().replace('protocols = ["gdoi", "g-ikev2"]\n',
                                   'protocols = ["g-ikev2"]\nppk = "required"\ng_ikev2_rekey = "inband"\n')
    cfg.write_text(text.replace("[[keyserver.group]]", f'[[keyserver.ppk]]\nid = "gm2-ppk"\nsecret_file = "{ks_ppk}"\n'
                                "[[keyserver.group]]", 1))
    with_ppk = _member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4)
    with_ppk.write_text(with_ppk.read_text() + f'ppk = {{ id = "gm2-ppk", secret_file = "{gm_ppk}", required = true }}\n')
    ks = Msecd(cfg, host=h1)
    gm2 = Msecd(with_ppk, host=h2, args=["--no-kernel"])
    gm4 = Msecd(_member_config(tmp_path, "gm4", 1001, "g-ikev2", h1.ip4), host=h3, args=["--no-kernel"])
    with _running(ks, gm2, gm4):
        gm2.wait_log("registered with key server", timeout=60)
        ks_log = ks.wait_log("with a post-quantum preshared key", timeout=30)
        line = next(x for x in ks_log.splitlines() if "registered" in x and "post-quantum preshared key" in x
                    and "gcks" not in x)
        assert "gm2" in line, line
        assert "with the post-quantum preshared key 'gm2-ppk'" in ks.log()
        assert "post-quantum preshared key 'gm2-ppk'" in gm2.log()
        assert _spis(gm2, 1001) == _spis(ks, 1001)
        assert ks.ctl_json("group", "show", "1001")["roles"][0]["policy"]["ppk"] == "required"
        assert gm2.ctl_json("group", "show", "1001")["roles"][0]["ppk"] == {"id": "gm2-ppk", "required": True}
        assert gm4.ctl_json("group", "show", "1001")["roles"][0]["ppk"] is None
        gm2.wait_log("keeping the registration's IKE SA for in-band rekeys", timeout=30)
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        gm2.wait_log("rekeyed: SEQ 1, new TEK SPIs", timeout=30)
        assert set(r["teks"]) <= _spis(gm2, 1001)
        ks.wait_log("acknowledged the in-band rekey", timeout=30)
        ks_log = ks.wait_log("requires a post-quantum preshared key", timeout=60)
        line = next(x for x in ks_log.splitlines() if "requires a post-quantum preshared key" in x and "gcks" not in x)
        assert "gm4" in line, line
        gm_log = gm4.wait_log("failed: G-IKEv2:", timeout=60)
        assert "refused: AUTHENTICATION_FAILED" in gm_log
        assert {m["identity"] for m in ks.ctl_json("members", "1001")["members"]} == {"key-id:gm2"}
        for d in (ks, gm2, gm4):
            assert secret not in d.log()
