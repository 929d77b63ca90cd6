"""Traffic for kernel-lab tests of group ESP across rekeys: numbered datagrams from a host at a
steady rate (:class:`Sender`), and a sampler of the members' kernel SAs for the group
(:class:`Sampler`: the most SAs ever held per TEK policy, every SPI ever held, the latest
sample)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

from tests.kernel.test_registration import GROUP, PORT
from xfrm.socket import XfrmSocket

RATE = 100  # datagrams per second per sender
TAG = b"MSEC-ROTATION"


class Sender(threading.Thread):
    """Numbered datagrams from one host at RATE per second until stopped."""

    def __init__(self, host, name: bytes) -> None:
        super().__init__(daemon=True)
        self.name_tag = name
        self.sent = 0
        self.stop = threading.Event()
        with host.inside():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(host.ip4))

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.sock.sendto(TAG + self.name_tag + struct.pack("!I", self.sent), (GROUP, PORT))
            self.sent += 1
            ahead = start + self.sent / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.sock.close()


class Sampler(threading.Thread):
    """The member kernels' SAs for the group, read over and over; the most seen per selector."""

    def __init__(self, hosts) -> None:
        super().__init__(daemon=True)
        self.socks = {h.name: XfrmSocket(h.ns) for h in hosts}
        self.most: Counter = Counter()
        self.last: dict = {}  # host -> {selector: SPIs} in the latest sample
        self.seen: dict = {h.name: set() for h in hosts}  # host -> every SPI it ever held
        self.samples = 0
        self.stop = threading.Event()

    def spis(self, name: str) -> dict:
        per: dict = {}
        for st in self.socks[name].dump_states(owned=True):
            if str(st.dst) == GROUP:
                per.setdefault(st.selector, set()).add(st.spi)
        return per

    def run(self) -> None:
        while not self.stop.is_set():
            for name in self.socks:
                per = self.spis(name)
                for spis in per.values():
                    self.most[name] = max(self.most[name], len(spis))
                    self.seen[name] |= spis
                self.last[name] = per
            self.samples += 1
            time.sleep(0.05)

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


def listen(host, group: str = GROUP):
    """A listener on ``group`` whose socket holds a long burst: the test process shares one
    interpreter among senders, sampler and drainer, and UML may leave it unscheduled for a
    second, so a default-size buffer could overflow, which is not what these tests measure."""
    lst = host.listen(group, PORT)
    lst.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    return lst


def drop_counters(host) -> dict[str, int]:
    """Where a host's kernel dropped datagrams: the non-zero XFRM error counters
    (/proc/net/xfrm_stat) and UDP receive errors (/proc/net/snmp), for failure messages."""
    out: dict[str, int] = {}
    for line in host.run("cat", "/proc/net/xfrm_stat").stdout.splitlines():
        name, _, value = line.partition(" ")
        if value.strip() not in ("", "0"):
            out[name] = int(value)
    udp = [ln.split() for ln in host.run("cat", "/proc/net/snmp").stdout.splitlines()
           if ln.startswith("Udp:")]
    if len(udp) == 2:
        for name, value in zip(udp[0][1:], udp[1][1:]):
            if name in ("InErrors", "RcvbufErrors", "NoPorts") and value != "0":
                out[f"Udp{name}"] = int(value)
    return out


def missing_runs(seqs: set[int], sent: int) -> list[tuple[int, int]]:
    """The runs [first, last] of sequence numbers below ``sent`` not in ``seqs``."""
    runs: list[tuple[int, int]] = []
    for i in range(sent):
        if i not in seqs:
            if runs and runs[-1][1] == i - 1:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
    return runs


def loss_report(host, tag, sent, missing, dup, got, wall_start, hosts, members) -> str:
    """What a failure needs to tell a kernel drop from a missing SA or a late PUSH: the runs
    of missing datagrams with the wall-clock time they were sent, every host's drop counters,
    and the members' SA changes (their log lines carry the time)."""
    seqs = {struct.unpack("!I", k[-4:])[0] for k in got}
    runs = missing_runs(seqs, sent)
    when = [f"{a}-{b} (sent ~{time.strftime('%H:%M:%S', time.localtime(wall_start + a / RATE))}"
            f".{int((wall_start + a / RATE) % 1 * 1000):03d})" for a, b in runs[:10]]
    lines = [f"{host} lost {missing} and doubled {dup} of {sent} datagrams {tag!r}; "
             f"missing runs {when}"]
    lines += [f"{h.name} drops: {drop_counters(h)}" for h in hosts]
    for n, d in members.items():
        sa = [ln for ln in d.log().splitlines()
              if any(w in ln for w in ("rekeyed", "sending on", "install", "remov", "SPI"))]
        lines.append(f"{n}:\n  " + "\n  ".join(sa[-40:]))
    return "\n".join(lines)
