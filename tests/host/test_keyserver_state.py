"""Issue 12, state on disk, with real msecd processes (loopback in a private namespace, member
--no-kernel): a key server whose database was restored from an older copy, deleted or
corrupted refuses to start and says what happened and how to recover; --accept-state serves
it with the SEQ raised so the member accepts the next GROUPKEY-PUSH.  A full file system (a
real tmpfs) makes rekeys and registrations fail with "disk full" and the file, no traceback,
the daemon keeps answering, and both work again once there is space."""

from __future__ import annotations

import shutil
import subprocess
import time

from tests.host.daemon_proc import Msecd
from tests.host.test_daemon_process import _push_signing_key
from tests.unit.daemon_fakes import free_udp_port, write_config


def _kek_tek(tmp_path, rport: int) -> str:
    signing = _push_signing_key(tmp_path / "push.pem")
    return ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
            'cipher = "aes-gcm-128"\n'
            '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
            f'signing_key = "{signing}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
            'lifetime = "1d"\n')


def _refused(cfg, log, netns, *args) -> str:
    d = Msecd(cfg, host=netns, args=list(args), log=log)
    d.start(wait=False)
    try:
        assert d.proc.wait(60) == 1, d.log()
    finally:
        d.stop()
    text = d.log()
    assert "Traceback" not in text, text
    return text


def test_restored_deleted_or_corrupt_state_is_refused_and_accept_state_recovers(tmp_path, netns):
    port, rport = free_udp_port(), free_udp_port()
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml", tek=_kek_tek(tmp_path, rport))
    db = tmp_path / "state" / "gcks.sqlite3"
    gm_dir = tmp_path / "gm"
    gm_dir.mkdir()
    gm = Msecd(write_config(gm_dir, member_port=port), host=netns, args=["--no-kernel"])
    ks = Msecd(ks_cfg, host=netns, log=tmp_path / "ks1.log")
    try:
        ks.start()
        gm.start()
        gm.wait_log("listening for GROUPKEY-PUSH")
        assert ks.stop() == 0
        shutil.copy(db, tmp_path / "backup.sqlite3")  # a backup: after the registration
        ks = Msecd(ks_cfg, host=netns, log=tmp_path / "ks2.log").start()
        seq = 0
        for _ in range(2):
            r = ks.ctl_json("rekey", "1001")
            assert r["ok"], r
            seq = r["seq"]
        gm.wait_log(f"rekeyed: SEQ {seq},")
        assert ks.stop() == 0

        # restored from the backup: refused, and the log says what and how to recover
        shutil.copy(tmp_path / "backup.sqlite3", db)
        text = _refused(ks_cfg, tmp_path / "ks3.log", netns)
        assert "restored from an older copy" in text
        assert f"group 1001: SEQ 0 in the database, {seq} already sent" in text
        assert "--accept-state" in text

        # the operator accepts it: the SEQ continues above what the member saw
        ks = Msecd(ks_cfg, host=netns, args=["--accept-state"], log=tmp_path / "ks4.log").start()
        assert f"SEQ raised from 0 to {seq}" in ks.log()
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"] and r["seq"] == seq + 1, r
        gm.wait_log(f"rekeyed: SEQ {seq + 1},")  # accepted, not a replay
        assert ks.stop() == 0
        # accepted once: the next start is a normal one
        ks = Msecd(ks_cfg, host=netns, log=tmp_path / "ks5.log").start()
        assert ks.stop() == 0

        # deleted
        db.unlink()
        text = _refused(ks_cfg, tmp_path / "ks6.log", netns)
        assert "is missing" in text and "deleted or truncated" in text
        assert not db.exists()

        # corrupt
        db.write_bytes(b"this is not SQLite" * 500)
        text = _refused(ks_cfg, tmp_path / "ks7.log", netns)
        assert "not a usable msec database" in text and str(db) in text
    finally:
        gm.stop()
        ks.stop()


def test_disk_full_rekey_and_registration_say_so_and_recover(tmp_path, netns):
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(fs)], check=True)
    port, rport = free_udp_port(), free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, name="ks.toml", tek=_kek_tek(tmp_path, rport),
                       ks_psks={"gm1": "11" * 16, "gm2": "22" * 16}, authorize=("gm1", "gm2"))
    cfg.write_text(cfg.read_text().replace(f'state_dir = "{tmp_path}/state"',
                                           f'state_dir = "{fs}/state"'))
    ks = Msecd(cfg, host=netns)
    members = {}
    for name in ("gm1", "gm2"):
        d = tmp_path / name
        d.mkdir()
        members[name] = Msecd(write_config(d, member_port=port, identity=name, psk=("11" if name == "gm1" else "22") * 16),
                              host=netns, args=["--no-kernel"])
    filler = fs / "filler"
    try:
        ks.start()
        members["gm1"].start()
        members["gm1"].wait_log("listening for GROUPKEY-PUSH")
        # fill the file system
        # the WAL emptied first (as after any checkpoint): the next commit needs new space,
        # not frames the WAL file already holds
        import sqlite3
        with sqlite3.connect(fs / "state" / "gcks.sqlite3") as db:
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        with open(filler, "wb", buffering=0) as f:
            # to the last byte: a few KB left would hold a small transaction's WAL frames
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        r = ks.ctl("rekey", "1001")
        assert r.returncode == 1, r
        assert "disk full: cannot write the key server state" in r.stderr
        assert f"{fs}/state/gcks.sqlite3" in r.stderr
        # a new member's registration: not recorded, said why, no traceback
        members["gm2"].start()
        ks.wait_log("registration(s) not recorded")
        assert ks.ctl_json("status")["ok"]  # still answering
        assert ks.ctl_json("members", "1001")["ok"]
        log = ks.log()
        assert "disk full" in log and "Traceback" not in log and "OperationalError" not in log.replace(
            "SQLite: database or disk is full", "")
        # space is back: the retransmitted message 3 is registered, rekeys work
        filler.unlink()
        members["gm2"].wait_log("registered with key server", timeout=120)
        r = ks.ctl_json("rekey", "1001")
        assert r["ok"], r
        members["gm1"].wait_log(f"rekeyed: SEQ {r['seq']},")  # (gm2 cannot share its rekey port)
        assert "Traceback" not in ks.log()
    finally:
        for d in members.values():
            d.stop()
        ks.stop()
        for _ in range(50):
            if subprocess.run(["umount", str(fs)]).returncode == 0:
                break
            time.sleep(0.1)
        else:  # still busy (a process in another namespace holds it): detach it anyway
            subprocess.run(["umount", "-l", str(fs)])
