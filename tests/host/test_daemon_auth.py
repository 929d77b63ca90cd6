"""Authorization with real msecd processes on loopback (in a private network namespace): a
member is authorized only as the identity whose pre-shared key authenticated it."""

from __future__ import annotations

from tests.host.daemon_proc import Msecd
from tests.unit.daemon_fakes import free_udp_port, write_config

GM1_PSK = "0123456789abcdef0123456789abcdef"
CAM1_PSK = "fedcba9876543210fedcba9876543210"


def test_psk_of_one_member_cannot_register_as_another(tmp_path, netns):
    """The key server finds gm1's PSK by the source address (127.0.0.1). A member holding that
    PSK but calling itself cam1 (ID_KEY_ID) is refused in phase 1 with the reason logged, and
    gets nothing from the cam1-only group; cam1 with its own PSK, coming from the namespace's
    eth0 address (so its PSK is found by trial decryption), registers."""
    port = free_udp_port()
    eth0 = "10.77.0.1"  # the netns host's address
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml", authorize=("cam1",),
                          ks_psks={"gm1": GM1_PSK, "cam1": CAM1_PSK})
    text = ks_cfg.read_text()
    gm1_entry = f'identity = "gm1"\nsecret = "{GM1_PSK}"\n'
    assert gm1_entry in text
    text = text.replace(gm1_entry, gm1_entry + 'addresses = ["127.0.0.1"]\n')
    ks_cfg.write_text(text.replace('listen = ["127.0.0.1"]', f'listen = ["127.0.0.1", "{eth0}"]'))
    evil_dir, cam_dir = tmp_path / "evil", tmp_path / "cam1"
    evil_dir.mkdir()
    cam_dir.mkdir()
    ks = Msecd(ks_cfg, host=netns)
    evil = Msecd(write_config(evil_dir, member_port=port, identity="cam1", psk=GM1_PSK),
                 host=netns, args=["--no-kernel"])
    cam1 = Msecd(write_config(cam_dir, member_port=port, identity="cam1", psk=CAM1_PSK, ks_host=eth0),
                 host=netns, args=["--no-kernel"])
    try:
        ks.start()
        evil.start()
        log = ks.wait_log("does not own the pre-shared key it used")
        assert "key-id:cam1 does not own the pre-shared key it used (that of key-id:gm1)" in log
        evil.wait_log("registration with")
        g = evil.ctl_json("group", "show", "1001")["roles"][0]
        assert g["state"] in ("backoff", "registering") and g["teks"] == []
        assert "INVALID-ID-INFORMATION" in g["last_error"], g
        assert ks.ctl_json("members", "1001")["members"] == []

        cam1.start()
        cam1.wait_log("registered with key server")
        members = ks.ctl_json("members", "1001")["members"]
        assert [m["identity"] for m in members] == ["key-id:cam1"]
        assert evil.ctl_json("group", "show", "1001")["roles"][0]["teks"] == []
    finally:
        for d in (cam1, evil, ks):
            d.stop()
    for d in (ks, evil, cam1):
        assert GM1_PSK not in d.log() and CAM1_PSK not in d.log()
