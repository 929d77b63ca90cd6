"""Unit tests of the lab tooling: tools/labrunner.py (job script, environment, command line)
and tools/netlab.py (pcap reading, frame classification, stale-namespace names)."""
import os
import socket
import struct
import subprocess

import pytest

from tools import labrunner, netlab


def test_job_script_round_trips_argv_env_and_cwd(tmp_path):
    argv = ["python3", "-c", "import os,sys,json; print(json.dumps([sys.argv[1:], "
            "os.environ['ODD'], os.getcwd()]))", "a b", "it's", "$HOME", "*", ""]
    env = labrunner.job_env({"ODD": "x 'y' \"z\" $PATH\nnext", "PATH": os.environ["PATH"],
                             "SSH_AUTH_SOCK": "/nope", "bad-name": "1"}, "uml", "/out")
    job = labrunner.Job(argv=argv, cwd=str(tmp_path))
    script = tmp_path / "job.sh"
    script.write_text(labrunner.job_script(job, env))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, cwd="/",
                         env={}, check=True).stdout
    import json
    args, odd, cwd = json.loads(out)
    assert args == ["a b", "it's", "$HOME", "*", ""]
    assert odd == "x 'y' \"z\" $PATH\nnext"
    assert cwd == str(tmp_path)


def test_job_env_sets_lab_markers_and_drops_session_plumbing():
    env = labrunner.job_env({"SSH_AUTH_SOCK": "s", "CI": "true", "PYTHONPATH": "/p"},
                            "uml", "/o")
    assert env["MSEC_LAB"] == "1" and env["MSEC_LAB_KERNEL"] == "uml"
    assert env["MSEC_LAB_OUT"] == "/o" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["CI"] == "true" and env["PYTHONPATH"] == "/p"
    assert "SSH_AUTH_SOCK" not in env and "PATH" in env


def test_job_script_exit_status_of_missing_cwd(tmp_path):
    job = labrunner.Job(argv=["true"], cwd=str(tmp_path / "nope"))
    script = tmp_path / "job.sh"
    script.write_text(labrunner.job_script(job, {}))
    assert subprocess.run(["sh", str(script)], capture_output=True).returncode == 126


def test_uml_cmdline_is_read_only_root_with_run_folder():
    job = labrunner.Job(argv=["true"], mem="512M", rw=["/srv/results"])
    args = labrunner.uml_cmdline(job, "/p/.lab/run-1", "/tmp/u", "msec-run-1", 7, 8, 9)
    assert args[0] == labrunner.UML
    assert "ro" in args and "rw" not in args
    assert "rootfstype=hostfs" in args and "mem=512M" in args
    assert "con1=null,fd:7" in args and "con2=null,fd:8" in args and "con0=null,fd:9" in args
    assert "msec_run=/p/.lab/run-1" in args and "msec_rw=/srv/results" in args
    assert f"init={labrunner.GUEST_INIT}" in args


def test_uml_cmdline_refuses_paths_the_kernel_command_line_cannot_carry():
    with pytest.raises(labrunner.LabError):
        labrunner.uml_cmdline(labrunner.Job(argv=["true"]), "/a b/run", "/tmp/u", "x", 3, 4, 5)


def test_parse_mem():
    assert labrunner.parse_mem("1G") == "1G"
    with pytest.raises(Exception):
        labrunner.parse_mem("lots")


def test_guest_init_is_executable_and_mounts_root_read_only():
    assert os.access(labrunner.GUEST_INIT, os.X_OK)
    text = open(labrunner.GUEST_INIT).read()
    assert "mount -t tmpfs" in text and "sysrq-trigger" in text


def _pcap(frames, nano=False):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 100 + i, 5, len(f), len(f)) + f
    return out


def _eth_ipv4(proto, payload, src="10.77.0.1", dst="239.1.1.1"):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 1, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x01\x00\x5e\x01\x01\x01" + b"\x02" * 6 + b"\x08\x00" + ip + payload


@pytest.mark.parametrize("nano", [False, True])
def test_read_pcap_and_classify(tmp_path, nano):
    esp = _eth_ipv4(50, struct.pack("!II", 0x1234, 7) + b"\0" * 24)
    udp = _eth_ipv4(17, struct.pack("!HHHH", 4000, 5000, 8, 0))
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap([esp, udp], nano))
    recs = netlab.read_pcap(str(p))
    assert [len(f) for _, f, _ in recs] == [len(esp), len(udp)]
    assert recs[0][0] == pytest.approx(100 + (5e-9 if nano else 5e-6))
    a, b = (netlab.classify(f, lt) for _, f, lt in recs)
    assert a == {"l3": "ipv4", "src": "10.77.0.1", "dst": "239.1.1.1", "proto": "esp",
                 "spi": 0x1234, "seq": 7}
    assert b["proto"] == "udp" and b["dport"] == 5000


def test_classify_ipv6_skips_hop_by_hop():
    hbh = bytes([58, 0, 5, 2, 0, 0, 1, 0])  # next header ICMPv6, router alert
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(hbh) + 8, 0, 1,
                      socket.inet_pton(socket.AF_INET6, "fe80::1"),
                      socket.inet_pton(socket.AF_INET6, "ff02::16"))
    frame = b"\x33\x33\0\0\0\x16" + b"\x02" * 6 + b"\x86\xdd" + ip6 + hbh + b"\x8f\0\0\0" * 2
    info = netlab.classify(frame)
    assert info["l3"] == "ipv6" and info["proto"] == "icmpv6" and info["dst"] == "ff02::16"


def test_read_pcap_rejects_other_files(tmp_path):
    p = tmp_path / "x.pcap"
    p.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)
    with pytest.raises(netlab.NetlabError):
        netlab.read_pcap(str(p))


def test_stale_name_pattern():
    assert netlab._NAME_RE.match("msec-123-ab12-h3")
    assert netlab._NAME_RE.match("msec-123-ab12-br")
    assert not netlab._NAME_RE.match("msec-probe-123")
    assert not netlab._NAME_RE.match("other-123-ab12-h1")


def test_kernel_tier_is_deselected_outside_the_lab_with_a_message():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "MSEC_LAB"}
    r = subprocess.run([os.sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        "tests/kernel/test_lab_kernel.py"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stdout  # nothing selected: tools/test counts that as failure
    assert "deselected" in r.stdout and "kernel lab" in r.stdout


def test_prune_old_runs(tmp_path):
    old, new = tmp_path / "run-old", tmp_path / "run-new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (0, 0))
    labrunner.prune_old_runs(str(tmp_path))
    assert not old.exists() and new.exists()


def test_kernel_trouble_finds_warnings_in_the_console_log(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("Linux version 6.1\nesp4 loaded\n")
    assert labrunner.kernel_trouble(str(log)) == []
    log.write_text("boot\n------------[ cut here ]------------\nWARNING: CPU: 0 PID: 1 at x\n"
                   "Call Trace:\n fn+0x1\n")
    got = labrunner.kernel_trouble(str(log))
    assert got[0].startswith("WARNING:") and "Call Trace:" in got
    assert labrunner.kernel_trouble(str(tmp_path / "missing")) == []


def test_demo_verify_capture_decrypts_group_esp(tmp_path, capsys):
    from scapy.layers.inet import IP, UDP, Ether
    from scapy.layers.ipsec import ESP, SecurityAssociation

    from tools import demo_group_esp as demo

    key, spi = bytes(range(20)), 0x10000001
    sa = SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key,
                             crypt_icv_size=16, tunnel_header=IP(src="10.77.0.1",
                                                                 dst="239.1.1.1"))
    frames = []
    for i in range(3):
        inner = IP(src="10.77.0.1", dst="239.1.1.1") / UDP(sport=4000, dport=5000) / \
            f"group message {i + 1}".encode()
        frames.append(bytes(Ether(dst="01:00:5e:01:01:01") / sa.encrypt(inner)))
    pcap = tmp_path / "c.pcap"
    pcap.write_bytes(_pcap(frames))
    demo.save_demo_key(str(pcap) + ".key", spi, key, "10.77.0.1")
    assert os.stat(str(pcap) + ".key").st_mode & 0o777 == 0o600
    assert demo.verify_capture(str(pcap), str(pcap) + ".key") == 0
    assert "scapy decrypted 3/3" in capsys.readouterr().out
    demo.save_demo_key(str(pcap) + ".key", spi, bytes(20), "10.77.0.1")  # wrong key
    assert demo.verify_capture(str(pcap), str(pcap) + ".key") == 1
    assert "does not decrypt" in capsys.readouterr().out


def test_checkouts_below_the_guests_tmpfs_are_mounted_again_read_only():
    # A CI runner may clone into /tmp, which the guest covers with tmpfs.
    assert labrunner.guest_ro_mounts("/tmp/ci/msec", "/tmp/ci/msec/tests") == ["/tmp/ci/msec"]
    assert labrunner.guest_ro_mounts("/work/msec", "/var/tmp/job") == ["/var/tmp/job"]
    assert labrunner.guest_ro_mounts("/work/msec", "/work/msec/tests") == []
    assert labrunner.guest_ro_mounts("/tmpfoo/msec") == []
    job = labrunner.Job(argv=["true"], cwd="/tmp/ci/msec", env={})
    args = labrunner.uml_cmdline(job, "/tmp/ci/msec/.lab/run-1", "/u", "id", 3, 4, 5)
    ro = [a.split("=", 1)[1].split(":") for a in args if a.startswith("msec_ro=")]
    assert len(ro) == 1 and "/tmp/ci/msec" in ro[0]  # the project itself may be listed too
