"""Group ESP demonstration: one sender, three receivers, one multicast group SA.

The data plane alone: the SAs and policies are installed with `ip xfrm`, no daemons (run it
inside the kernel lab: `tools/lab exec -- .venv/bin/python tools/demo_group_esp.py`). The demo
proper (tools/demo) runs the msec daemons: tools/demo_msec.py. It reuses `save_demo_key` and
`verify_capture` (`--verify PCAP KEYFILE`: scapy decrypts the capture on the host) from here.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.netlab import Netlab  # noqa: E402

GROUP = "239.1.1.1"
PORT = 5000
COUNT = 5


def say(msg: str = "") -> None:
    print(msg, flush=True)


def step(n: int, msg: str) -> None:
    say(f"\n[{n}] {msg}")


def install_group_sa(host, sender_ip: str, spi: int, key: bytes, direction: str) -> list[str]:
    """One tunnel-mode ESP SA (sender -> group, address preserved) and one policy."""
    state = ["ip", "xfrm", "state", "add", "src", sender_ip, "dst", GROUP, "proto", "esp",
             "spi", f"{spi:#x}", "mode", "tunnel", "replay-window", "0",
             "aead", "rfc4106(gcm(aes))", "0x" + key.hex(), "128",
             "sel", "src", f"{sender_ip}/32", "dst", f"{GROUP}/32"]
    if direction == "out":
        r = host.run(*state, "extra-flag", "oseq-may-wrap", check=False)
        if r.returncode != 0:  # older iproute2: no extra-flag keyword
            host.run(*state)
    else:
        host.run(*state)
    policy = ["ip", "xfrm", "policy", "add", "dir", direction, "src", f"{sender_ip}/32",
              "dst", f"{GROUP}/32", "tmpl", "src", sender_ip, "dst", GROUP, "proto", "esp",
              "mode", "tunnel", "level", "required"]
    host.run(*policy)
    return state, policy


def save_demo_key(path: str, spi: int, key: bytes, src: str) -> None:
    """The demo's throwaway group key, so an independent ESP implementation can check the
    capture afterwards (file mode 0600; the key protected nothing but this demo)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"spi": spi, "key": key.hex(), "src": src, "dst": GROUP}, f)


def verify_capture(pcap: str, keyfile: str) -> int:
    """Decrypt the captured ESP with scapy (not the kernel) and show the datagrams inside."""
    from scapy.layers.inet import IP, UDP, Ether
    from scapy.layers.ipsec import ESP, SecurityAssociation

    from tools.netlab import read_pcap

    with open(keyfile) as f:
        k = json.load(f)
    sa = SecurityAssociation(ESP, spi=k["spi"], crypt_algo="AES-GCM",
                             crypt_key=bytes.fromhex(k["key"]), crypt_icv_size=16,
                             tunnel_header=IP(src=k["src"], dst=k["dst"]))
    n = ok = 0
    for _ts, frame, _lt in read_pcap(pcap):
        pkt = Ether(frame)
        if not pkt.haslayer(ESP) or pkt[IP].dst != k["dst"]:
            continue
        n += 1
        seq = pkt[ESP].seq
        try:
            inner = sa.decrypt(pkt[IP])
        except Exception as e:  # noqa: BLE001 - scapy raises several kinds; report them
            say(f"    ESP seq {seq}: does not decrypt ({type(e).__name__}: {e})")
            continue
        data = bytes(inner[UDP].payload)
        ok += data.startswith(b"group message")
        say(f"    ESP seq {seq}: inner {inner[IP].src} > {inner[IP].dst} "
            f"UDP {inner[UDP].dport}: {data.decode(errors='replace')!r}")
    say(f"    scapy decrypted {ok}/{n} ESP packets to the datagrams that were sent")
    return 0 if n and ok == n else 1


def main() -> int:
    say("msec demo: a multicast group protected by one group ESP SA (RFC 5374 style)")
    esp = "loaded" if os.path.isdir("/sys/module/esp4") else "not loaded"
    say(f"kernel {os.uname().release} ({os.environ.get('MSEC_LAB_KERNEL', 'host')}), esp4 {esp}")
    ok = True
    with Netlab(4) as lab:
        sender, receivers = lab.hosts[0], lab.hosts[1:]
        step(1, "Network: four hosts (network namespaces) on one bridge")
        for h in lab.hosts:
            role = "sender" if h is sender else "receiver"
            say(f"    {h.name}  {h.ip4:<11} {role}")

        step(2, f"Group SA: ESP tunnel mode, AES-GCM-128, {sender.ip4} -> {GROUP}, "
                "address preservation")
        spi = 0x10000000 | secrets.randbits(24)
        key = secrets.token_bytes(20)  # 16-byte AES key + 4-byte salt (RFC 4106)
        say(f"    SPI {spi:#010x}, a fresh random key (a key server would distribute it: GDOI)")
        say("    every member gets the same SA; receivers have replay-window 0 (many senders)")
        install_group_sa(sender, sender.ip4, spi, key, "out")
        say(f"    {sender.name}: outbound policy: {sender.ip4} -> {GROUP} must use the SA")
        for h in receivers:
            install_group_sa(h, sender.ip4, spi, key, "in")
        say(f"    {', '.join(h.name for h in receivers)}: inbound policy: traffic from "
            f"{sender.ip4} to {GROUP} must arrive under ESP")
        out = receivers[0].run("ip", "xfrm", "state").stdout
        say("    " + receivers[0].name + "'s kernel holds:\n" + "\n".join(
            "      " + ln for ln in out.splitlines() if "aead" not in ln))

        step(3, f"Receivers join {GROUP} and listen on UDP port {PORT}")
        listeners = [h.listen(GROUP, PORT) for h in receivers]
        say("    joined and ready")

        step(4, f"{sender.name} sends {COUNT} plain UDP datagrams to {GROUP}:{PORT}; "
                "a capture runs on the bridge")
        with lab.capture(os.environ.get("MSEC_DEMO_PCAP") or None) as cap:
            for i in range(COUNT):
                sender.send(GROUP, PORT, f"group message {i + 1}".encode())
                time.sleep(0.05)
            for lst in listeners:
                lst.wait(COUNT, timeout=5)

        step(5, "What each receiver's application got (decrypted by its kernel)")
        for h, lst in zip(receivers, listeners):
            got = [d.decode() for d, _ in lst.received]
            good = got == [f"group message {i + 1}" for i in range(COUNT)]
            ok &= good
            say(f"    {h.name}: {len(got)}/{COUNT} {'OK ' if good else 'MISSING'} "
                f"{got[:2]}{' ...' if len(got) > 2 else ''}")

        step(6, "What was on the wire (the bridge capture)")
        pkts = cap.packets()
        to_group = [p for p in pkts if p.get("dst") == GROUP]
        esp_pkts = [p for p in to_group if p["proto"] == "esp"]
        plain = [p for p in pkts if p.get("dport") == PORT]
        for p in to_group[:COUNT]:
            say(f"    {p['src']} > {p['dst']}  {p['proto'].upper()}  spi {p.get('spi', 0):#010x}"
                f"  seq {p.get('seq', '?')}  {p['len']} bytes")
        other = sorted({p["proto"] for p in pkts if p.get("dst") != GROUP})
        say(f"    packets to {GROUP}: {len(to_group)}, ESP: {len(esp_pkts)}, "
            f"plaintext UDP to port {PORT}: {len(plain)}"
            + (f"   (other traffic: {', '.join(other)}: membership reports)" if other else ""))
        wire_ok = len(esp_pkts) == COUNT and len(esp_pkts) == len(to_group) and not plain
        ok &= wire_ok
        if not all(p.get("spi") == spi for p in esp_pkts):
            ok = False
            say("    unexpected SPI on the wire")
        if os.environ.get("MSEC_DEMO_PCAP"):
            say(f"    capture saved: {os.path.relpath(cap.path)}")
            save_demo_key(cap.path + ".key", spi, key, sender.ip4)

    say("\nResult: " + ("OK: every receiver got every datagram, and only ESP crossed the wire."
                        if ok else "FAILED (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["--verify"]:
            sys.exit(verify_capture(sys.argv[2], sys.argv[3]))
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        sys.exit(1)
