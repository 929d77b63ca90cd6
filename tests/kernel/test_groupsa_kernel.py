"""xfrm.groupsa in a kernel with ESP (the kernel lab), on netlab hosts.

The port contract of tests/unit/test_groupsa_contract.py against the real kernel; TEKs
installed on a sender and receivers carry encrypted traffic; what the kernel holds matches the
TEKs field by field (read back through the binding, and in ``ip -s xfrm state`` /
``ip -s xfrm policy``); a rollover under continuous traffic loses nothing; a restarted
installer adopts what it left; removing a group leaves a foreign ``ip xfrm`` SA and policy
(standing for strongSwan) intact.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from ipaddress import ip_address, ip_network

import pytest

from policy.model import Mode as TekMode
from policy.model import SaDirection, TrafficSelector
from policy.suites import ESP_SUITES
from tests.host.test_xfrm_policies import as_ip_fields, parse_ip_policies
from tests.kernel.test_group_esp import MARKER, PORT, listen, send_burst, seqs
from tests.kernel.test_xfrm_states import assert_seen_by_iproute2, parse_ip_states
from tests.unit.test_groupsa_contract import CONTRACT
from dataclasses import replace

from xfrm.groupsa import GroupSaInstaller, KernelTek
from xfrm.socket import XfrmSocket

pytestmark = pytest.mark.kernel
A, N = ip_address, ip_network
SENDER, RECEIVER, BOTH = SaDirection.SENDER_ONLY, SaDirection.RECEIVER_ONLY, SaDirection.SYMMETRIC
GROUP = "239.1.1.1"


def make_tek(group_id: int, spi: int, direction: SaDirection, src: str, dst: str = GROUP,
             suite: str = "aes-gcm-128", mode: TekMode = TekMode.TUNNEL, **kw) -> KernelTek:
    s = ESP_SUITES[suite]
    keys = secrets.token_bytes(s.keymat_bytes)
    g = A(dst)
    return KernelTek(group_id, spi, TrafficSelector(N(src), N(f"{g}/{g.max_prefixlen}"), 17, 0,
                                                    PORT),
                     mode, direction, suite, keys[:s.enc_key_bytes], keys[s.enc_key_bytes:],
                     **kw)


def role(tek: KernelTek, direction: SaDirection) -> KernelTek:
    return replace(tek, direction=direction)


def stream(host, group: str, stop: threading.Event, after: int, sent: list[int]) -> None:
    """Send numbered datagrams every few milliseconds until ``stop``, then ``after`` more."""
    with host.inside():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(host.ip4))
        i, extra = 0, None
        while extra is None or extra > 0:
            s.sendto(MARKER + struct.pack("!I", i), (group, PORT))
            sent.append(i)
            i += 1
            if stop.is_set():
                extra = after if extra is None else extra - 1
            time.sleep(0.003)


def installer(host) -> GroupSaInstaller:
    return GroupSaInstaller(XfrmSocket(host.ns), local=[host.ip4, host.ip6])


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__[9:])
def test_kernel_port_contract(netns, check):
    with XfrmSocket(netns.ns) as x:
        check(x)


def cross_check_iproute2(host, view) -> None:
    seen = parse_ip_states(host.run("ip", "-s", "xfrm", "state").stdout)
    assert len(seen) == len(view.states)
    for st in view.states:
        assert_seen_by_iproute2(st, seen)
    pols = parse_ip_policies(host.run("ip", "-s", "xfrm", "policy").stdout)
    want = sorted((as_ip_fields(p) for p in view.policies), key=repr)
    got = sorted(({k: d.get(k) for k in want[0]} for d in pols), key=repr) if want else pols
    assert got == want


def test_sender_and_receivers_traffic_fields_rollover_adopt_and_remove(netlab_factory):
    lab = netlab_factory(4)
    sender, receivers = lab.hosts[0], lab.hosts[1:]
    gid = 0x2A
    old = make_tek(gid, 0x1000 | secrets.randbits(12), SENDER, f"{sender.ip4}/32",
                   lifetime_s=900)
    tx = installer(sender)
    rxs = [installer(h) for h in receivers]

    # install; every host's kernel holds exactly the TEK, as the binding and iproute2 see it
    assert tx.install(gid, [old]).teks == (old,)
    for h, rx in zip(receivers, rxs):
        view = rx.install(gid, [role(old, RECEIVER)])
        assert view.teks == (role(old, RECEIVER),) and dict(view.sending) == {}
        cross_check_iproute2(h, view)
    view = tx.installed(gid)
    assert dict(view.sending) == {old.selector: old.spi}
    cross_check_iproute2(sender, view)

    # traffic flows, encrypted under the TEK's SPI
    listeners = [listen(h, GROUP) for h in receivers]
    with lab.capture() as cap:
        send_burst(sender, GROUP, 20)
        for lst in listeners:
            lst.wait(20, timeout=60)
    for lst in listeners:
        assert seqs([d for d, _ in lst.received]) == list(range(20))
        lst.received.clear()
    esp = [p for p in cap.packets() if p.get("dst") == GROUP]
    assert {p["proto"] for p in esp} == {"esp"} and {p["spi"] for p in esp} == {old.spi}

    # rollover under continuous traffic: everyone holds the new SA, then the sender switches
    new = make_tek(gid, 0x2000 | secrets.randbits(12), SENDER, f"{sender.ip4}/32",
                   lifetime_s=900)
    stop, sent = threading.Event(), []
    with lab.capture() as cap:
        t = threading.Thread(target=stream, args=(sender, GROUP, stop, 30, sent))
        t.start()
        while len(sent) < 30:
            time.sleep(0.01)
        held = tx.rollover(gid, [new], switch=False)  # the sender holds it, still sends old
        assert dict(held.sending) == {old.selector: old.spi}
        for rx in rxs:
            rx.rollover(gid, [role(new, RECEIVER)])
        view = tx.send_on(gid, new.spi)
        stop.set()
        t.join()
        count = len(sent)
        for lst in listeners:
            lst.wait(count, timeout=60)
    assert dict(view.sending) == {new.selector: new.spi}
    for h, lst in zip(receivers, listeners):
        assert seqs([d for d, _ in lst.received]) == list(range(count)), h.name
        lst.received.clear()
    spis = [p["spi"] for p in cap.packets() if p.get("dst") == GROUP]
    assert len(spis) == count and set(spis) == {old.spi, new.spi}
    switch = spis.index(new.spi)
    assert set(spis[:switch]) == {old.spi} and set(spis[switch:]) == {new.spi}

    # restart: fresh sockets and installers adopt what is there, and traffic keeps flowing
    for inst in [tx, *rxs]:
        inst.port.close()
    tx, rxs = installer(sender), [installer(h) for h in receivers]
    assert {g: v.teks for g, v in tx.adopt().items()} == {gid: (old, new)}
    for rx in rxs:
        assert {g: set(v.teks) for g, v in rx.adopt().items()} == {
            gid: {role(old, RECEIVER), role(new, RECEIVER)}}
    assert tx.install(gid, [new]).spis == {old.spi, new.spi}  # idempotent after adopt

    # retire the old TEK everywhere; traffic continues under the new one
    for inst in [tx, *rxs]:
        assert inst.remove(gid, spis=[old.spi]) == (1, 0)
    send_burst(sender, GROUP, 10)
    for lst in listeners:
        assert seqs(lst.wait(10, timeout=60)) == list(range(10))

    # a foreign SA and policy (ip xfrm, standing for strongSwan) survive removing the group
    h = receivers[0]
    key = "0x" + secrets.token_bytes(20).hex()
    h.run("ip", "xfrm", "state", "add", "src", "10.77.0.99", "dst", "239.2.2.2", "proto",
          "esp", "spi", "0x7777", "reqid", "1", "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
          key, "128")
    h.run("ip", "xfrm", "policy", "add", "src", "10.77.0.99/32", "dst", "239.2.2.2/32", "dir",
          "in", "tmpl", "src", "10.77.0.99", "dst", "239.2.2.2", "proto", "esp", "reqid", "1",
          "mode", "tunnel")
    assert rxs[0].remove(gid) == (1, 1)
    assert rxs[0].installed(gid).states == ()
    states = parse_ip_states(h.run("ip", "xfrm", "state").stdout)
    policies = parse_ip_policies(h.run("ip", "-s", "xfrm", "policy").stdout)
    assert [(s["spi"], s["reqid"]) for s in states] == [(0x7777, 1)]
    assert [p["tmpls"][0]["reqid"] for p in policies] == [1]
    # that receiver no longer takes the group's traffic; the others still do
    send_burst(sender, GROUP, 5, tag=b"after")
    for lst in listeners[1:]:
        assert seqs(lst.wait(15, timeout=60), b"after") == list(range(5))
    assert seqs([d for d, _ in listeners[0].received], b"after") == []
    for inst in [tx, *rxs]:
        inst.port.close()


@pytest.mark.parametrize("group, suite", [("239.1.1.7", "aes-cbc-128-hmac-sha256"),
                                          ("ff0e::1:7", "aes-gcm-256")], ids=["v4", "v6"])
def test_symmetric_multi_sender_group_from_gdoi_teks(netlab_factory, group, suite):
    """Every member sends and receives on one TEK (source: the subnet, replay window 0),
    installed from the value GROUPKEY-PULL hands over (gkm.gdoi.GroupTek)."""
    from gkm.gdoi import GroupTek as GdoiTek
    from policy.model import AddressPreservation

    lab = netlab_factory(3)
    gid = 7
    s = ESP_SUITES[suite]
    g = A(group)
    sel = TrafficSelector(lab.net4 if g.version == 4 else lab.net6, N(f"{g}/{g.max_prefixlen}"),
                          17, 0, PORT)
    t = GdoiTek(group_id=gid, spi=0x3000 | secrets.randbits(12), selector=sel,
                mode=TekMode.TUNNEL,
                address_preservation=AddressPreservation.SOURCE_AND_DESTINATION,
                direction=BOTH, suite=suite, keymat=secrets.token_bytes(s.enc_key_bytes),
                auth_key=secrets.token_bytes(s.integrity_key_bytes), lifetime_s=600)
    want = KernelTek(gid, t.spi, sel, t.mode, BOTH, suite, t.keymat, t.auth_key, 600, 0)
    insts = [installer(h) for h in lab.hosts]
    for inst in insts:
        assert inst.install(gid, [t]).teks == (want,)
    listeners = {h.name: listen(h, group) for h in lab.hosts}
    for h in lab.hosts:
        send_burst(h, group, 10, tag=h.name.encode())
    for h in lab.hosts:
        got = listeners[h.name].wait(20, timeout=60)
        for other in lab.hosts:
            expected = [] if other is h else list(range(10))
            assert seqs(got, other.name.encode()) == expected, (h.name, other.name)
    assert all(MARKER in d for lst in listeners.values() for d, _ in lst.received)
    for inst in insts:
        assert inst.remove(gid) == (1, 2)
        inst.port.close()


def test_hard_expiry_fails_closed(netlab_factory):
    """When the sender's SA expires the policy stays: nothing leaves, least of all plaintext."""
    lab = netlab_factory(2)
    sender, receiver = lab.hosts
    gid, group = 9, "239.1.1.9"
    t = make_tek(gid, 0x4000 | secrets.randbits(12), SENDER, f"{sender.ip4}/32", group,
                 lifetime_s=8)  # long enough for the first burst to get through under load
    tx, rx = installer(sender), installer(receiver)
    tx.install(gid, [t])
    rx.install(gid, [role(t, RECEIVER)])
    lst = listen(receiver, group)
    send_burst(sender, group, 3)
    assert seqs(lst.wait(3, timeout=60)) == [0, 1, 2]
    deadline = time.monotonic() + 60  # generous, polled
    while tx.installed(gid).states and time.monotonic() < deadline:
        time.sleep(0.2)
    view = tx.installed(gid)
    assert view.states == () and dict(view.sending) == {t.selector: t.spi}
    with lab.capture() as cap:
        send_burst(sender, group, 5, tag=b"late")
        time.sleep(0.3)
    assert [p for p in cap.packets() if p.get("dst") == group] == []
    assert lst.count(timeout=0.3) == 3
    for inst in (tx, rx):
        inst.remove(gid)
        inst.port.close()
