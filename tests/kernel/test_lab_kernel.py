"""The kernel lab itself: ESP is there, an ESP SA installs, netlab topologies, multicast and
captures work inside, and the group ESP demo passes end to end."""
import os
import secrets

import pytest

from tools import netlab as nl


def test_we_are_in_the_lab_with_esp4():
    assert os.environ.get("MSEC_LAB") == "1"
    assert os.path.isdir("/sys/module/esp4"), "esp4 not loaded"
    assert os.path.isdir("/sys/module/xfrm_user") or os.path.exists("/proc/net/xfrm_stat")


def test_esp_gcm_sa_installs_in_a_netns(netns):
    key = "0x" + secrets.token_hex(20)
    netns.run("ip", "xfrm", "state", "add", "src", "10.77.0.1", "dst", "239.1.1.1",
              "proto", "esp", "spi", "0x100", "mode", "tunnel", "replay-window", "0",
              "aead", "rfc4106(gcm(aes))", key, "128")
    out = netns.run("ip", "xfrm", "state").stdout
    assert "proto esp spi 0x00000100" in out and "rfc4106(gcm(aes))" in out
    # and nowhere else: the lab's root namespace does not see it
    assert "0x00000100" not in nl.ip("xfrm", "state").stdout


def test_esp6_sa_installs(netns):
    netns.run("ip", "xfrm", "state", "add", "src", "fd77::1", "dst", "ff15::1",
              "proto", "esp", "spi", "0x200", "mode", "tunnel",
              "aead", "rfc4106(gcm(aes))", "0x" + "22" * 20, "128")
    assert "0x00000200" in netns.run("ip", "xfrm", "state").stdout


def test_multicast_between_netlab_hosts(netlab):
    h1, h2, h3 = netlab.hosts
    rx = [h2.listen("239.1.1.1", 5000), h3.listen("239.1.1.1", 5000)]
    h1.send("239.1.1.1", 5000, b"hello", count=2)
    assert [r.wait(2, timeout=60) for r in rx] == [[b"hello"] * 2] * 2


def test_capture_sees_packets(netlab):
    h1, h2, _ = netlab.hosts
    rx = h2.listen("239.1.1.1", 5000)
    with netlab.capture() as cap:
        h1.send("239.1.1.1", 5000, b"c", count=3)
        rx.wait(3, timeout=60)
    assert len([p for p in cap.packets() if p.get("dport") == 5000]) == 3


def test_group_esp_demo_end_to_end(capsys):
    from tools import demo_group_esp
    rc = demo_group_esp.main()
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "only ESP crossed the wire" in out


@pytest.mark.skipif(os.environ.get("MSEC_LAB_KERNEL") != "uml", reason="UML guest layout only")
def test_uml_guest_protects_the_host_file_system():
    import errno
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mounts = {ln.split()[1]: ln.split()[2] for ln in open("/proc/mounts")}
    assert mounts["/"] == "hostfs"
    assert mounts["/tmp"] == "tmpfs" and mounts["/run"] == "tmpfs"
    assert mounts.get(root) == "overlay"  # writes in the tree vanish with the guest
    with pytest.raises(OSError) as e:
        open("/usr/msec-lab-write-probe", "w")
    assert e.value.errno == errno.EROFS
    out = os.environ["MSEC_LAB_OUT"]
    with open(os.path.join(out, "probe"), "w") as f:  # the one writable host folder
        f.write("ok")
