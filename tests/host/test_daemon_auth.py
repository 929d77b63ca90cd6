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


def _drive(engine, sock, ks_addr, deadline_s: float = 60.0):
    """Run a sans-I/O member engine over a real UDP socket until it reports a result."""
    import time as _time

    from gkm.gdoi import Registered, RegistrationFailed

    end = _time.monotonic() + deadline_s
    engine.start(_time.monotonic())
    while _time.monotonic() < end:
        for data, _to in engine.datagrams_to_send():
            sock.sendto(data, ks_addr)
        while (ev := engine.next_event()) is not None:
            if isinstance(ev, (Registered, RegistrationFailed)):
                return ev
        timer = engine.get_timer()
        wait = 0.2 if timer is None else max(0.01, min(0.2, timer - _time.monotonic()))
        sock.settimeout(wait)
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            engine.handle_timer(_time.monotonic())
            continue
        engine.receive_datagram(data, addr, _time.monotonic())
    raise AssertionError("no registration result")


def test_psk_holder_presenting_a_matching_fqdn_is_refused(tmp_path, netns):
    """A real key server whose group admits `*.example.org`; a member holding gm1's PSK (found
    by its address) presents ID_FQDN gm1.example.org in message 5: refused in phase 1, told so
    in a protected notification, nothing registered."""
    import dataclasses
    import socket

    from gkm.gdoi import MemberRegistration, RegistrationFailed, phase1_config
    from gkm.ike import Identity
    from policy.model import KeyServerAddress, MemberGroup, PskCredential, Secret

    port = free_udp_port()
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml", ks_psks={"gm1": GM1_PSK})
    text = ks_cfg.read_text()
    text = text.replace(f'secret = "{GM1_PSK}"\n', f'secret = "{GM1_PSK}"\naddresses = ["127.0.0.1"]\n')
    ks_cfg.write_text(text.replace('authorize = { psk_identities = ["gm1"] }', 'authorize = { fqdns = ["*.example.org"] }'))
    ks = Msecd(ks_cfg, host=netns)
    try:
        ks.start()
        mg = MemberGroup(1001, (KeyServerAddress("127.0.0.1", port),), PskCredential("gm1", Secret(GM1_PSK.encode())))
        cfg = dataclasses.replace(phase1_config(mg, key_server=("127.0.0.1", port)), local_id=Identity.fqdn("gm1.example.org"))
        engine = MemberRegistration(cfg, 1001, ("127.0.0.1", port))
        with netns.inside():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", 0))
            result = _drive(engine, sock, ("127.0.0.1", port))
        finally:
            sock.close()
        assert isinstance(result, RegistrationFailed), result
        assert "peer refused message 5: INVALID-ID-INFORMATION" in result.reason
        log = ks.wait_log("does not own the pre-shared key it used")
        assert "gm1.example.org does not own the pre-shared key it used (that of key-id:gm1)" in log
        assert "authorize.fqdns: fqdn:*.example.org admits nobody" in log  # the advisory, at start
        assert ks.ctl_json("members", "1001")["members"] == []
    finally:
        ks.stop()
    assert GM1_PSK not in ks.log()
