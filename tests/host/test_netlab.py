"""tools/netlab.py on the host kernel: topology, multicast, processes, capture, teardown."""
import os
import socket
import subprocess
import time

import pytest

from tools import netlab as nl


def test_topology_addresses_and_isolation(netlab):
    h1, h2, h3 = netlab.hosts
    assert [h.ip4 for h in netlab.hosts] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert netlab.host(2) is h2 and h2.name == "h2"
    out = h2.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert "10.77.0.2/24" in out and "fd77::2/64" in out
    assert "tentative" not in out  # no DAD: usable at once
    assert "224.0.0.0/4 dev eth0" in h2.run("ip", "route").stdout
    assert "ff00::/8 dev eth0" in h2.run("ip", "-6", "route", "show", "table", "main").stdout
    assert ",UP," in h2.run("ip", "link", "show", "lo").stdout
    # the bridge and its ports live in their own namespace, not in the caller's
    assert "p1" in nl.ip("-n", netlab.bridge_ns, "-o", "link").stdout
    assert not any(n in ("p1", "p2", "p3") for _, n in socket.if_nameindex())
    assert set(netlab.namespaces()) <= set(nl.list_netns())


def test_ipv4_and_ipv6_multicast_reach_every_joined_host(netlab):
    h1, h2, h3 = netlab.hosts
    rx = [h.listen("239.1.1.1", 5000) for h in (h2, h3)]
    rx6 = h3.listen("ff15::77", 5001)
    h1.send("239.1.1.1", 5000, b"v4", count=3)
    h1.send("ff15::77", 5001, b"v6")
    for r in rx:
        assert r.wait(3, timeout=30) == [b"v4"] * 3
    assert rx6.wait(1, timeout=30) == [b"v6"]
    assert rx[0].count(timeout=0.2) == 3  # nothing extra


def test_unicast_between_hosts(netlab):
    h1, h2, _ = netlab.hosts
    with h2.inside():
        srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.bind(("fd77::2", 7000))
    h1.run("python3", "-c", "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);"
           "s.sendto(b'u', ('fd77::2', 7000))")
    srv.settimeout(5)
    assert srv.recvfrom(100)[0] == b"u"
    srv.close()


def _netns_inode():
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_call_runs_in_the_host_and_returns_values(netlab):
    h1 = netlab.hosts[0]
    mine = _netns_inode()
    theirs = h1.call(_netns_inode)
    assert theirs != mine and _netns_inode() == mine
    assert h1.call(socket.if_nametoindex, "eth0") == h1.ifindex


def _boom():
    raise ValueError("boom in child")


def test_call_reraises_errors_and_spawn_runs_in_background(netlab):
    h1 = netlab.hosts[0]
    with pytest.raises(nl.NetlabError, match="boom in child"):
        h1.call(_boom)
    child = h1.spawn(time.sleep, 0.2)
    assert child.join(timeout=10) is None


def test_inside_moves_only_this_thread(netlab):
    mine = _netns_inode()
    with netlab.hosts[1].inside():
        assert _netns_inode() != mine
        assert "eth0" in {n for _, n in socket.if_nameindex()}
    assert _netns_inode() == mine


def test_capture_sees_the_traffic_once(netlab):
    h1, h2, _ = netlab.hosts
    rx = h2.listen("239.1.1.1", 5000)
    with netlab.capture() as cap:
        h1.send("239.1.1.1", 5000, b"x" * 10, count=4)
        assert len(rx.wait(4, timeout=30)) == 4
    assert os.path.getsize(cap.path) > 24
    udp = [p for p in cap.packets() if p.get("dport") == 5000]
    assert len(udp) == 4 and all(p["src"] == "10.77.0.1" for p in udp)
    assert cap.protocols()["udp"] == 4


def test_teardown_removes_namespaces_and_processes():
    with nl.Netlab(2) as lab:
        names = lab.namespaces()
        p = lab.hosts[0].popen("sleep", "300")
        assert set(names) <= set(nl.list_netns())
    assert not set(names) & set(nl.list_netns())
    assert p.poll() is not None


def test_teardown_happens_when_the_body_fails():
    with pytest.raises(RuntimeError):
        with nl.Netlab(1) as lab:
            names = lab.namespaces()
            raise RuntimeError("test failed")
    assert not set(names) & set(nl.list_netns())


def test_cleanup_stale_removes_namespaces_of_dead_runs():
    p = subprocess.Popen(["true"])
    p.wait()  # a pid that no longer runs
    stale = f"msec-{p.pid}-abcd-h1"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in nl.cleanup_stale()
        assert stale not in nl.list_netns()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_parallel_labs_do_not_collide(netlab_factory):
    a, b = netlab_factory(2), netlab_factory(2)
    assert not set(a.namespaces()) & set(b.namespaces())
    rx = b.hosts[1].listen("239.1.1.1", 5000)
    a.hosts[0].send("239.1.1.1", 5000, b"a")  # a different bridge: must not arrive
    b.hosts[0].send("239.1.1.1", 5000, b"b")
    assert rx.wait(1, timeout=30) == [b"b"] and rx.count(timeout=0.3) == 1


def test_netns_fixture_is_a_private_namespace(netns):
    assert netns.ns in nl.list_netns()
    assert "10.77.0.1/24" in netns.run("ip", "-o", "addr").stdout
