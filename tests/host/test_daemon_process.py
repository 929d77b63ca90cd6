"""msecd and msecctl as real processes: config refusal, control socket, SIGHUP, SIGTERM.

Member daemons run in a private network namespace (netlab host) so nothing here can touch the
host's XFRM state; the host kernel has no ESP, so SA installation is either switched off
(``--no-kernel``) or expected to fail with the clear "lacks esp4" error.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

from tests.host.daemon_proc import MSECCTL, REPO, Msecd
from tests.unit.daemon_fakes import free_udp_port, write_config


def test_bad_config_exits_2_listing_every_problem(tmp_path):
    cfg = write_config(tmp_path, ks_port=free_udp_port(), member_port=848)
    cfg.write_text(cfg.read_text().replace('cipher = "aes-gcm-128"', 'cipher = "rot13"')
                   .replace("port = ", "port = 0x1ffff #") + "\n[surprise]\n")
    os.chmod(cfg, 0o644)  # inline PSKs in a readable file: two more problems
    r = subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--foreground"],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 2, r
    assert "refused" in r.stderr
    for where in ("keyserver.port", "keyserver.group[0].tek[0].cipher", "surprise",
                  "keyserver.psk[0].secret", "member.group[0].credentials.psk"):
        assert where in r.stderr, (where, r.stderr)
    assert "0123456789abcdef" not in r.stderr  # the PSK is never echoed
    assert not (tmp_path / "state").exists() and not (tmp_path / "run").exists()


def test_check_option(tmp_path):
    cfg = write_config(tmp_path, member_port=848)
    r = subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--check"],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 0 and "valid" in r.stdout


def test_msecctl_when_not_running(tmp_path):
    sock = tmp_path / "run" / "control.sock"
    r = subprocess.run([*MSECCTL, "--socket", str(sock), "status"], capture_output=True,
                       text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 3
    assert r.stderr.strip() == f"msecctl: msecd is not running (no control socket at {sock})"
    # the console script is installed by tools/setup
    exe = os.path.join(os.path.dirname(sys.executable), "msecctl")
    if os.path.exists(exe):
        r = subprocess.run([exe, "--socket", str(sock), "--json", "groups"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 3 and "msecd is not running" in r.stderr


def test_member_daemon_status_reload_and_shutdown(tmp_path, netns):
    """A member-only daemon (key server unreachable, SA install off): control socket, msecctl
    text and --json, SIGHUP with a bad file keeps the old policy, a good one applies,
    SIGTERM stops it cleanly."""
    dead = free_udp_port()
    cfg = write_config(tmp_path, member_port=dead)
    d = Msecd(cfg, host=netns, args=["--no-kernel"])
    try:
        d.start()
        sock = tmp_path / "run" / "control.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

        st = d.ctl_json("status")
        assert st["ok"] and st["roles"] == ["member"] and st["pid"] == d.proc.pid
        assert st["member"]["kernel"] is False
        r = d.ctl("status", check=True)
        assert "roles: member" in r.stdout and "kernel SA installation off" in r.stdout
        gs = d.ctl_json("groups")["groups"]
        assert [(g["id"], g["role"]) for g in gs] == [(1001, "member")]
        r = d.ctl("group", "show", "1001", check=True)
        assert f"key servers: 127.0.0.1:{dead}" in r.stdout
        r = d.ctl("members", "1001")
        assert r.returncode == 1 and "not the key server of group 1001" in r.stderr

        # a bad file: SIGHUP is refused, the problems are logged, the old policy stays
        good = cfg.read_text()
        cfg.write_text(good.replace("id = 1001", "id = 0") + "\n[oops]\n")
        d.signal(signal.SIGHUP)
        log = d.wait_log("reload refused, keeping the running configuration")
        assert "member.group[0].id" in log and "oops" in log
        assert d.proc.poll() is None
        st = d.ctl_json("status")
        assert st["last_reload"]["ok"] is False and len(st["last_reload"]["problems"]) >= 2
        assert [g["id"] for g in d.ctl_json("groups")["groups"]] == [1001]
        # msecctl reload says the same, exit 1
        r = d.ctl("reload")
        assert r.returncode == 1 and "configuration refused" in r.stderr and "oops" in r.stderr

        # a good file adding a group applies
        write_config(tmp_path, member_port=dead, member_groups=(1001, 1002))
        d.signal(signal.SIGHUP)
        d.wait_log("reload: member group 1002 added")
        assert [g["id"] for g in d.ctl_json("groups")["groups"]] == [1001, 1002]
        r = d.ctl_json("reload")
        assert r == {"ok": True, "changes": []}

        assert d.stop() == 0
        log = d.log()
        assert "SIGTERM: shutting down" in log and "msecd stopped" in log
        assert not sock.exists()
        assert "0123456789abcdef" not in log
    finally:
        d.stop()


def test_second_daemon_on_same_socket_refused(tmp_path, netns):
    cfg = write_config(tmp_path, member_port=free_udp_port())
    a = Msecd(cfg, host=netns, args=["--no-kernel"])
    b = Msecd(cfg, host=netns, args=["--no-kernel"], log=tmp_path / "b.log")
    try:
        a.start()
        b.start(wait=False)
        assert b.proc.wait(30) == 1
        assert "another msecd is listening" in b.log()
        assert a.ctl_json("status")["ok"]
    finally:
        b.stop()
        a.stop()


def test_keyserver_and_member_register_on_loopback(tmp_path, netns):
    port = free_udp_port()
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml")
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    gm_cfg = write_config(gm_dir, member_port=port)
    ks = Msecd(ks_cfg, host=netns)
    gm = Msecd(gm_cfg, host=netns, args=["--no-kernel"])
    try:
        ks.start()
        gm.start()
        gm.wait_log("registered with key server")
        ks.wait_log("registered (TEK SPI")
        groups = gm.ctl_json("groups")["groups"]
        assert groups[0]["state"] == "registered"
        members = ks.ctl_json("members", "1001")["members"]
        assert [m["identity"] for m in members] and "127.0.0.1" in members[0]["address"]
        show = ks.ctl_json("group", "show", "1001")
        spis = {t["spi"] for t in show["roles"][0]["teks"]}
        gshow = gm.ctl_json("group", "show", "1001")
        assert {t["spi"] for t in gshow["roles"][0]["teks"]} <= spis

        # key server restart keeps the keys
        assert ks.stop() == 0
        ks2 = Msecd(ks_cfg, host=netns, log=tmp_path / "ks2.log")
        ks2.start()
        try:
            show2 = ks2.ctl_json("group", "show", "1001")
            assert {t["spi"] for t in show2["roles"][0]["teks"]} == spis
        finally:
            ks2.stop()
    finally:
        gm.stop()
        ks.stop()
    for d in (ks, gm):
        assert "0123456789abcdef" not in d.log()


def test_member_without_esp_logs_clear_error(tmp_path, netns):
    """Host kernel: no ESP. The member registers, installation fails with a clear error, the
    daemon keeps running and retries."""
    port = free_udp_port()
    tek = ('[[keyserver.group.tek]]\nsrc = "10.77.0.0/24"\ndst = "239.1.1.1"\n'
           'cipher = "aes-gcm-128"\n')  # the netlab host sends from 10.77.0.1
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml", tek=tek)
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    gm_cfg = write_config(gm_dir, member_port=port)
    ks = Msecd(ks_cfg, host=netns)
    gm = Msecd(gm_cfg, host=netns)
    try:
        ks.start()
        gm.start()
        log = gm.wait_log("cannot install SAs")
        assert "lacks" in log and "esp" in log
        g = gm.ctl_json("group", "show", "1001")["roles"][0]
        assert "SA installation failed" in g["last_error"]
        assert gm.proc.poll() is None
    finally:
        gm.stop()
        ks.stop()


def test_unauthorized_and_wrong_psk_members_get_nothing(tmp_path, netns):
    """gm2 has a PSK but is not authorized for the group; gm3 presents a wrong PSK. Both are
    refused (logged on both sides, one line each), neither gets TEKs, and they retry."""
    port = free_udp_port()
    other = "fedcba9876543210fedcba9876543210"
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml",
                          ks_psks={"gm1": "0123456789abcdef0123456789abcdef", "gm2": other,
                                   "gm3": other})
    daemons = [Msecd(ks_cfg, host=netns)]
    for ident, psk in (("gm2", other), ("gm3", "0" * 32)):
        d = tmp_path / ident
        d.mkdir()
        daemons.append(Msecd(write_config(d, member_port=port, identity=ident, psk=psk),
                             host=netns, args=["--no-kernel"]))
    ks, gm2, gm3 = daemons
    try:
        for d in daemons:
            d.start()
        gm2.wait_log("registration with", count=1)
        gm3.wait_log("registration with", count=1)
        ks.wait_log("refused")
        for gm in (gm2, gm3):
            g = gm.ctl_json("group", "show", "1001")["roles"][0]
            assert g["state"] in ("backoff", "registering") and g["teks"] == []
            assert g["last_error"]
        assert ks.ctl_json("members", "1001")["members"] == []
        st = ks.ctl_json("status")["keyserver"]
        assert st["registrations"] == 0 and st["refusals"] >= 1
    finally:
        for d in daemons:
            d.stop()
    assert "0123456789abcdef" not in ks.log() and other not in ks.log()


def test_detached_daemon_reports_start_and_failure(tmp_path, netns):
    """Without --foreground: the command returns 0 once the daemon is up, 1 with the reason
    when it cannot start."""
    cfg = write_config(tmp_path, member_port=free_udp_port())
    argv = [sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--no-kernel"]
    r = netns.run(*argv, check=False, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    d = Msecd(cfg)
    pid = d.ctl_json("status")["pid"]
    try:
        r = netns.run(*argv, check=False, cwd=str(REPO))
        assert r.returncode == 1 and "another msecd is listening" in r.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 60  # generous deadline, polled
    while (tmp_path / "run" / "control.sock").exists() and time.monotonic() < end:
        time.sleep(0.1)
    r = d.ctl("status")
    assert r.returncode == 3 and "msecd is not running" in r.stderr


def _push_signing_key(path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return str(path)


def test_rekey_push_reaches_member_on_loopback(tmp_path, netns):
    """msecctl rekey: the key server makes new TEKs, sends a GROUPKEY-PUSH (to the rekey
    address and unicast to each member); the member (--no-kernel) accepts it: new SPIs, SEQ
    up, and the group's activation/deactivation delays from the key server's GAP in force.
    Unknown group: a clear error."""
    port = free_udp_port()
    rport = free_udp_port()
    signing = _push_signing_key(tmp_path / "push.pem")
    tek = ('activation_delay = "3s"\ndeactivation_delay = "9s"\n'
           '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
           'cipher = "aes-gcm-128"\n'
           '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
           f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
           'lifetime = "1d"\n')
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml", tek=tek)
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    gm_cfg = write_config(gm_dir, member_port=port)
    ks = Msecd(ks_cfg, host=netns)
    gm = Msecd(gm_cfg, host=netns, args=["--no-kernel"])
    try:
        ks.start()
        r = ks.ctl("rekey", "1001")  # nobody registered yet: no keys to replace
        assert r.returncode == 1 and "no keys yet" in r.stderr
        gm.start()
        gm.wait_log("listening for GROUPKEY-PUSH")
        before = gm.ctl_json("group", "show", "1001")["roles"][0]
        old_spis = {t["spi"] for t in before["teks"]}
        seq0 = before["last_seq"]
        assert old_spis and seq0 is not None

        r = ks.ctl_json("rekey", "1001")
        assert r["ok"] and r["seq"] == seq0 + 1 and r["sent_to"], r
        new_spis = set(r["teks"])
        assert new_spis and not new_spis & old_spis
        log = gm.wait_log(") rekeyed: SEQ")
        assert f"SEQ {seq0 + 1}" in log and all(s in log for s in new_spis)
        after = gm.ctl_json("group", "show", "1001")["roles"][0]
        # every TEK the member holds: the new ones and the previous one until it retires
        roles = {t["spi"]: t["role"] for t in after["teks"]}
        assert new_spis <= set(roles) and set(roles) <= new_spis | old_spis
        assert all(roles[s] in ("next", "current") for s in new_spis)
        assert after["last_seq"] == seq0 + 1 and after["rekeys"] == 1
        assert (after["activation_delay"], after["deactivation_delay"]) == (3, 9)
        assert after["gap_from_key_server"]
        text = gm.ctl("group", "show", "1001", check=True).stdout
        assert "last SEQ: " in text
        assert "senders switch after 3 s, old SAs go after 9 s (key server's GAP)" in text
        # the key server keeps the old TEKs as 'old' and hands out the new ones
        states = {t["spi"]: t["state"] for t in
                  ks.ctl_json("group", "show", "1001")["roles"][0]["teks"]}
        assert all(states[s] == "current" for s in new_spis)
        assert all(states[s] == "old" for s in old_spis)

        r = ks.ctl("rekey", "4242")
        assert r.returncode == 1 and "not the key server of group 4242" in r.stderr
        r = gm.ctl_json("rekey", "1001")
        assert r["ok"] is False and "not the key server of group 1001" in r["error"]
    finally:
        gm.stop()
        ks.stop()
    for d in (ks, gm):
        assert "0123456789abcdef" not in d.log()


_GRAB = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError as e:
    print("bind failed:", e.errno, flush=True)
    sys.exit(3)
print("bound", flush=True)
s.settimeout(float(sys.argv[2]))
try:
    data, addr = s.recvfrom(65535)
    print("got", len(data), flush=True)
except socket.timeout:
    print("nothing", flush=True)
"""


def test_rekey_socket_is_exclusively_msecds(tmp_path, netns):
    """Issue 12: another local process cannot bind the member's rekey port (even with
    SO_REUSEADDR and SO_REUSEPORT), so the PUSHes stay msecd's; and a port another process
    holds already is a clear error in the log and in `msecctl group show`."""
    import errno

    port = free_udp_port()
    rport = free_udp_port()
    signing = _push_signing_key(tmp_path / "push.pem")
    tek = ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
           'cipher = "aes-gcm-128"\n'
           '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
           f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
           # one copy: a later copy of the rekey would reach the grabber below and end it
           'lifetime = "1d"\nrekey_copies = 1\n')
    ks = Msecd(write_config(tmp_path, ks_port=port, name="ks.toml", tek=tek), host=netns)
    dirs = [tmp_path / "gm", tmp_path / "gm-late"]
    for d in dirs:
        d.mkdir()
    gm = Msecd(write_config(dirs[0], member_port=port), host=netns, args=["--no-kernel"])
    late = Msecd(write_config(dirs[1], member_port=port), host=netns, args=["--no-kernel"])
    grabber = None
    try:
        ks.start()
        gm.start()
        gm.wait_log("listening for GROUPKEY-PUSH")
        r = netns.run(sys.executable, "-c", _GRAB, str(rport), "1", check=False)
        assert r.returncode == 3 and f"bind failed: {errno.EADDRINUSE}" in r.stdout, r
        # the PUSH still reaches msecd
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        gm.wait_log(f") rekeyed: SEQ {r['seq']}")

        # the other way round: a process holds the port before msecd wants it
        gm.stop()
        grabber = netns.popen(sys.executable, "-c", _GRAB, str(rport), "600",
                              stdout=subprocess.PIPE, text=True)
        assert grabber.stdout.readline().strip() == "bound"
        late.start()
        line = late.wait_log("cannot listen for GROUPKEY-PUSH")
        assert f"port {rport}" in line and "Address already in use" in line
        g = late.ctl_json("group", "show", "1001")["roles"][0]
        assert g["state"] == "registered" and g["rekey_socket"] is None
        assert "Address already in use" in g["rekey_error"]
        assert "rekey socket error:" in late.ctl("group", "show", "1001", check=True).stdout
    finally:
        if grabber is not None:
            grabber.kill()
            grabber.wait()
        late.stop()
        gm.stop()
        ks.stop()
