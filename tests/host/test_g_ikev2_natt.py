"""G-IKEv2 NAT traversal (RFC 7296 §2.23) in real msecd processes: a key server with
``g_ikev2_port = 500`` (so also UDP 4500, with the non-ESP marker) and a G-IKEv2 member
(--no-kernel) in a private network behind a real NAT (a router namespace masquerading with
nftables).  The member registers with ``key_servers = ["ks:500"]``, detects the NAT in
IKE_SA_INIT and floats to 4500 for GSA_AUTH; a capture on the key server's side of the NAT shows
IKE_SA_INIT on 500 without the marker and GSA_AUTH on 4500 with it, from the router's address.
ESP sent to the key server's 4500 is dropped and counted, a NAT-keepalive dropped quietly."""

from __future__ import annotations

import os
import secrets
import struct
import subprocess
import time

from gkm.ikev2.constants import ExchangeType
from tests.host.daemon_proc import Msecd
from tests.host.test_g_ikev2_daemon import _ks_config, _member_config, _running, _spis
from tools.netlab import Host, delete_netns, read_pcap

LAN = ("192.168.77.1", "192.168.77.2")  # the router's and the member's private addresses


def _nat_lab(lab, router: Host) -> Host:
    """A namespace ``msec-natt-*`` on a private link to ``router``, which masquerades it
    toward the lab's bridge (its eth0)."""
    ns = f"msec-natt-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for argv in (["ip", "-n", router.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", ns],
                     ["ip", "-n", router.ns, "addr", "add", f"{LAN[0]}/24", "dev", "lan0"],
                     ["ip", "-n", router.ns, "link", "set", "lan0", "up"],
                     ["ip", "-n", ns, "link", "set", "lo", "up"],
                     ["ip", "-n", ns, "addr", "add", f"{LAN[1]}/24", "dev", "eth0"],
                     ["ip", "-n", ns, "link", "set", "eth0", "up"],
                     ["ip", "-n", ns, "route", "add", "default", "via", LAN[0]],
                     ["ip", "netns", "exec", router.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]):
            subprocess.run(argv, check=True, capture_output=True)
        rules = ("table ip msec_natt {\n chain post {\n  type nat hook postrouting priority 100;\n"
                 f"  oifname \"eth0\" ip saddr {LAN[1]}/24 masquerade\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", router.ns, "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True)
    except BaseException:
        delete_netns(ns)
        raise
    return Host(lab, 99, ns, LAN[1], "")


def _udp_payloads(pcap: str) -> list[tuple[str, int, int, bytes]]:
    """(source address, source port, destination port, payload) of each IPv4 UDP packet."""
    out = []
    for _ts, frame, lt in read_pcap(pcap):
        if lt != 1 or len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        sport, dport, length = struct.unpack("!HHH", ip[ihl:ihl + 6])
        out.append((".".join(map(str, ip[12:16])), sport, dport, bytes(ip[ihl + 8:ihl + length])))
    return out


def _send_udp(host: Host, dest: tuple[str, int], data: bytes) -> None:
    code = f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto({data!r}, {dest!r})"
    host.run("python3", "-c", code)


def test_member_behind_a_nat_floats_to_4500(netlab_factory, tmp_path):
    lab = netlab_factory(2)
    h1, router = lab.hosts
    gm_host = _nat_lab(lab, router)
    try:
        cfg = _ks_config(tmp_path, h1.ip4)
        cfg.write_text(cfg.read_text().replace("port = 848\n", "port = 848\ng_ikev2_port = 500\n", 1))
        gm_cfg = _member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4)
        gm_cfg.write_text(gm_cfg.read_text().replace(f'"{h1.ip4}:848"', f'"{h1.ip4}:500"'))
        ks = Msecd(cfg, host=h1)
        gm = Msecd(gm_cfg, host=gm_host, args=["--no-kernel"])
        cap = lab.capture(bpf="udp").start()
        with _running(ks, gm):
            assert sorted(ks.ctl_json("status")["keyserver"]["listen"]) == sorted(
                [f"{h1.ip4}:848", f"{h1.ip4}:500", f"{h1.ip4}:4500"])
            gm.wait_log("registered with key server", timeout=60)
            ks.wait_log("registered (TEK SPI", timeout=30)
            assert _spis(gm, 1001) == _spis(ks, 1001) != set()
            assert "NAT: initiator behind a NAT: GSA_AUTH to ('10.77.0.1', 4500) with the non-ESP marker" in gm.log()
            # the key server saw the NAT too, and the member at the router's address
            assert "initiator_behind_nat=True, responder_behind_nat=False" in ks.log()
            members = ks.ctl_json("members", "1001")["members"]
            assert [(m["identity"], m["address"]) for m in members] == [("key-id:gm2", router.ip4)]

            _send_udp(router, (h1.ip4, 4500), b"\xff")  # a NAT-keepalive: quietly
            _send_udp(router, (h1.ip4, 4500), b"\x00\x00\x10\x01" + bytes(40))  # ESP-in-UDP: counted
            _send_udp(router, (h1.ip4, 4500), b"\x00\x00")  # neither: counted
            _send_udp(router, (h1.ip4, 500), bytes(4) + b"\x00" * 40)  # 500 has no marker: dropped by the engine
            for _ in range(100):
                dropped = ks.ctl_json("status")["keyserver"]["natt_dropped"]
                if dropped == {"esp": 1, "malformed": 1}:
                    break
                time.sleep(0.1)
            assert dropped == {"esp": 1, "malformed": 1}, dropped
            assert gm.proc.poll() is None and ks.proc.poll() is None
        cap.stop()
        udp = _udp_payloads(cap.path)
        to_ks = [(src, dport, p) for src, _sport, dport, p in udp if dport in (500, 4500) and src == router.ip4]
        ike500 = [p for _s, d, p in to_ks if d == 500 and len(p) >= 28 and p[17] == 0x20]
        assert ike500 and all(p[18] in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE) for p in ike500)
        auth = [p for _s, d, p in to_ks if d == 4500 and p[:4] == bytes(4) and len(p) >= 32 and p[4 + 18] == ExchangeType.GSA_AUTH]
        assert len(auth) >= 1 and auth[0][4 + 17] == 0x20  # IKEv2 behind the marker
        replies = [p for src, sport, _d, p in udp if src == h1.ip4 and sport == 4500]
        assert replies and all(p[:4] == bytes(4) and p[4 + 18] == ExchangeType.GSA_AUTH for p in replies)
        assert not [p for src, _sp, d, p in udp if src == LAN[1]]  # the member's own address never on the bridge
    finally:
        delete_netns(gm_host.ns)


def test_member_behind_a_nat_is_rekeyed_in_band(netlab_factory, tmp_path):
    """A multicast or unicast GSA_REKEY does not pass the member's NAT; in band it does: the
    rekey goes to the address and port its GSA_AUTH came from (the router's 4500 mapping),
    with the marker, and the member keeps that mapping open with NAT-keepalives (0xFF on 4500,
    here every second: ``[daemon] nat_keepalive = "1s"``), which the key server drops quietly."""
    lab = netlab_factory(2)
    h1, router = lab.hosts
    gm_host = _nat_lab(lab, router)
    try:
        cfg = _ks_config(tmp_path, h1.ip4)
        text = cfg.read_text().replace("port = 848\n", "port = 848\ng_ikev2_port = 500\n", 1)
        cfg.write_text(text.replace('protocols = ["gdoi", "g-ikev2"]\n',
                                    'protocols = ["gdoi", "g-ikev2"]\ng_ikev2_rekey = "inband"\n'))
        gm_cfg = _member_config(tmp_path, "gm2", 1001, "g-ikev2", h1.ip4)
        gm_cfg.write_text(gm_cfg.read_text().replace(f'"{h1.ip4}:848"', f'"{h1.ip4}:500"')
                          .replace("[daemon]\n", '[daemon]\nnat_keepalive = "1s"\n', 1))
        ks = Msecd(cfg, host=h1)
        gm = Msecd(gm_cfg, host=gm_host, args=["--no-kernel"])
        cap = lab.capture(bpf="udp").start()
        with _running(ks, gm):
            gm.wait_log("keeping the registration's IKE SA for in-band rekeys (NAT-keepalives to 10.77.0.1:4500)",
                        timeout=60)
            time.sleep(2.5)
            r = ks.ctl_json("rekey", "1001")
            assert r["ok"], r
            gm.wait_log("rekeyed: SEQ 1, new TEK SPIs", timeout=30)
            assert set(r["teks"]) <= _spis(gm, 1001)
            ks.wait_log("key-id:gm2 acknowledged the in-band rekey", timeout=30)
            assert gm.ctl_json("group", "show", "1001")["roles"][0]["nat_keepalives"] >= 2
            assert ks.ctl_json("status")["keyserver"]["natt_dropped"] == {"esp": 0, "malformed": 0}
        cap.stop()
        udp = _udp_payloads(cap.path)
        keepalives = [1 for src, _sp, d, p in udp if src == router.ip4 and d == 4500 and p == b"\xff"]
        assert len(keepalives) >= 2
        inband = [p for src, sport, _d, p in udp if src == h1.ip4 and sport == 4500 and len(p) > 32
                  and p[:4] == bytes(4) and p[4 + 18] == ExchangeType.GSA_INBAND_REKEY]
        assert inband  # to the router's mapping, with the marker
    finally:
        delete_netns(gm_host.ns)
