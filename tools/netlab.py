"""Network-namespace topologies for tests and demos (stdlib + iproute2 only).

    from tools.netlab import Netlab
    with Netlab(3) as lab:                 # h1..h3 on one bridge
        h1, h2, h3 = lab.hosts
        rx = h2.listen("239.1.1.1", 5000)  # socket in h2's netns, bound and joined: ready
        h1.send("239.1.1.1", 5000, b"hi")
        assert rx.wait(1, timeout=5) == [b"hi"]
        h1.run("ip", "xfrm", "state")      # a command in h1 (ip netns exec)
        h2.call(os.getpid)                 # a Python callable in a forked child inside h2
        with h3.inside(): s = socket.socket()   # this thread switched into h3 meanwhile
        with lab.capture() as cap:         # tcpdump on the bridge, a pcap file
            ...
        cap.protocols()                    # {"esp": 3, ...} from the pcap

Layout: the bridge `br0` lives in its own namespace `msec-<run>-br`, so nothing touches the
host's network; host N is namespace `msec-<run>-hN` with `eth0` (veth to port `pN` on the
bridge), 10.77.0.N/24 and fd77::N/64 (no DAD: usable at once), `lo` up and multicast routes
224.0.0.0/4 and ff00::/8 via eth0. Multicast snooping is off on the bridge: every group reaches
every host, and a capture on the bridge sees every frame once. `<run>` is `<pid>-<random>`;
`cleanup_stale()` removes namespaces of runs whose process is gone. Works on the host kernel
(no ESP needed for the topology) and inside the kernel lab.

pytest: the fixtures `netlab` (3 hosts) and `netlab_factory` (any number) come from
`tools.netlab` via tests/conftest.py.
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import pickle
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass

PREFIX = "msec"
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]{{4}})-(br|h\d+)$")
_libc = ctypes.CDLL(None, use_errno=True)


class NetlabError(Exception):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetlabError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def ip_batch(lines: list[str], ns: str | None = None) -> None:
    """Several ip commands in one process (`ip -n NS -batch -`); raises on the first error."""
    args = (["-n", ns] if ns else []) + ["-batch", "-"]
    r = subprocess.run(["ip", *args], input="\n".join(lines) + "\n", capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise NetlabError(f"ip {' '.join(args)}: {r.stderr.strip()}\n  commands: {lines}")


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


@contextlib.contextmanager
def in_netns(name: str):
    """Switch the calling thread into netns `name` for the block (sockets made inside stay
    there). Only this thread moves; other threads and the process's mounts are untouched."""
    orig = os.open(f"/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path(name), os.O_RDONLY)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(orig)
    finally:
        os.close(target)
        os.close(orig)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_netns_pids(names: list[str]) -> None:
    """SIGKILL every process whose network namespace is one of `names`."""
    inodes = set()
    for name in names:
        try:
            st = os.stat(netns_path(name))
            inodes.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    if not inodes:
        return
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def delete_netns(names: list[str] | str) -> None:
    names = [names] if isinstance(names, str) else list(names)
    names = [n for n in names if os.path.exists(netns_path(n))]
    if not names:
        return
    kill_netns_pids(names)
    r = subprocess.run(["ip", "-force", "-batch", "-"], capture_output=True, text=True,
                       input="".join(f"netns del {n}\n" for n in names))
    if r.returncode != 0:  # fall back one by one, ignoring what is already gone
        for n in names:
            ip("netns", "del", n, check=False)


def cleanup_stale() -> list[str]:
    """Delete netlab namespaces left by runs whose process no longer exists."""
    gone = []
    for name in list_netns():
        m = _NAME_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            gone.append(name)
    delete_netns(gone)
    return gone


# ------------------------------------------------------------------- multicast sockets

def _family(group: str) -> int:
    return socket.AF_INET6 if ":" in group else socket.AF_INET


class Listener:
    """A UDP socket in a host's netns, bound to `port` and joined to `group` on eth0. It is
    ready when the constructor returns (joined synchronously), so send after creating it."""

    def __init__(self, host: "Host", group: str, port: int):
        self.host, self.group, self.port = host, group, port
        self.received: list[tuple[bytes, tuple]] = []
        fam = _family(group)
        with host.inside():
            s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ifindex = host.ifindex
            if fam == socket.AF_INET:
                s.bind((group, port))
                mreq = struct.pack("4s4si", socket.inet_aton(group),
                                   socket.inet_aton("0.0.0.0"), ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            else:
                s.bind((group, port, 0, ifindex))
                mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except BaseException:
            s.close()
            raise
        s.setblocking(False)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> list[bytes]:
        """Read whatever is queued now, without waiting."""
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            self.received.append((data, addr))
        return [d for d, _ in self.received]

    def wait(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Wait until `count` datagrams in total arrived or `timeout` passed; return them all."""
        deadline = time.monotonic() + timeout
        self.drain()
        while len(self.received) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([self.sock], [], [], left)
            self.drain()
        return [d for d, _ in self.received]

    def count(self, timeout: float = 0.5) -> int:
        """Datagrams received, after waiting `timeout` for stragglers."""
        end = time.monotonic() + timeout
        while True:
            self.drain()
            left = end - time.monotonic()
            if left <= 0:
                return len(self.received)
            select.select([self.sock], [], [], left)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------- hosts

class Child:
    """A Python callable running in a forked child inside a host's netns."""

    def __init__(self, pid: int, rfd: int, what: str):
        self.pid, self._rfd, self.what = pid, rfd, what
        self._done = False
        self._result = None

    def join(self, timeout: float | None = 30.0):
        """Wait for the child; return the callable's value or re-raise its error."""
        if not self._done:
            chunks = []
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.kill()
                    raise TimeoutError(f"{self.what} did not finish within {timeout} s")
                r, _, _ = select.select([self._rfd], [], [], left)
                if not r:
                    continue
                b = os.read(self._rfd, 1 << 16)
                if not b:
                    break
                chunks.append(b)
            os.close(self._rfd)
            os.waitpid(self.pid, 0)
            self._done = True
            raw = b"".join(chunks)
            self._result = pickle.loads(raw) if raw else ("err", f"{self.what}: child died", "")
        kind, value, tb = self._result
        if kind == "ok":
            return value
        if isinstance(value, BaseException):
            raise NetlabError(f"{self.what} failed in the child:\n{tb}") from value
        raise NetlabError(f"{value}\n{tb}")

    def kill(self) -> None:
        if not self._done:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(self._rfd)
            self._done = True
            self._result = ("err", f"{self.what}: killed", "")


@dataclass
class Host:
    lab: "Netlab"
    index: int
    ns: str
    ip4: str
    ip6: str
    ifname: str = "eth0"

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def ifindex(self) -> int:
        return self.lab._ifindex(self)

    def inside(self):
        """Context manager: this thread in the host's netns (make sockets there)."""
        return in_netns(self.ns)

    def cmd(self, *argv: str) -> list[str]:
        """argv wrapped to run in this host: `ip -n NS ...` for ip itself (one process, no
        mount namespace), else `ip netns exec NS argv...`."""
        if argv and argv[0] == "ip" and argv[1:2] != ("netns",):
            return ["ip", "-n", self.ns, *argv[1:]]
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        """Run a command in the host and wait; output captured as text unless told."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        r = subprocess.run(self.cmd(*argv), timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise NetlabError(f"{self.name}: {' '.join(argv)} exited {r.returncode}: "
                              f"{(r.stderr or '').strip()}")
        return r

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        """Start a command in the host; it is killed at teardown if still running."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.cmd(*argv), **kw)
        self.lab._procs.append(p)
        return p

    def spawn(self, fn, *args, **kwargs) -> Child:
        """Run fn(*args, **kwargs) in a forked child inside the host's netns; .join() gives
        its return value (pickled back) or raises its error."""
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(rfd)
                fd = os.open(netns_path(self.ns), os.O_RDONLY)
                setns(fd)
                os.close(fd)
                try:
                    res = ("ok", fn(*args, **kwargs), "")
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    res = ("err", e, traceback.format_exc())
                try:
                    data = pickle.dumps(res)
                except Exception:  # noqa: BLE001
                    data = pickle.dumps(("err", repr(res[1]), res[2]))
                with os.fdopen(wfd, "wb") as f:
                    f.write(data)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        c = Child(pid, rfd, f"{self.name}: {getattr(fn, '__name__', fn)!s}")
        self.lab._children.append(c)
        return c

    def call(self, fn, *args, timeout: float = 60.0, **kwargs):
        """Run fn in a forked child inside the host's netns and return its value."""
        return self.spawn(fn, *args, **kwargs).join(timeout)

    def listen(self, group: str, port: int) -> Listener:
        lst = Listener(self, group, port)
        self.lab._sockets.append(lst)
        return lst

    def send(self, group: str, port: int, data: bytes, count: int = 1, ttl: int = 1,
             interval: float = 0.0) -> None:
        """Send `count` datagrams to group:port from this host (out of eth0)."""
        fam = _family(group)
        with self.inside():
            s = socket.socket(fam, socket.SOCK_DGRAM)
        with s:
            if fam == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             struct.pack("4s4si", socket.inet_aton("0.0.0.0"),
                                         socket.inet_aton(self.ip4), self.ifindex))
                dst = (group, port)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
                dst = (group, port, 0, self.ifindex)
            for i in range(count):
                s.sendto(data, dst)
                if interval and i + 1 < count:
                    time.sleep(interval)

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ns} {self.ip4} {self.ip6}>"


# ------------------------------------------------------------------- capture

def read_pcap(path: str) -> list[tuple[float, bytes, int]]:
    """(timestamp, frame, linktype) for every record of a classic pcap file."""
    out = []
    with open(path, "rb") as f:
        hdr = f.read(24)
        if len(hdr) < 24:
            return out
        magic = hdr[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            endian = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            endian = ">"
        else:
            raise NetlabError(f"{path}: not a pcap file (magic {magic.hex()})")
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack(endian + "I", hdr[20:24])[0] & 0x0FFFFFFF
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                break
            sec, frac, incl, _orig = struct.unpack(endian + "IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                break
            out.append((sec + frac / (1e9 if nano else 1e6), data, linktype))
    return out


IP_PROTOS = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 50: "esp", 51: "ah", 58: "icmpv6",
             4: "ipip", 41: "ipv6"}


def classify(frame: bytes, linktype: int = 1) -> dict:
    """Decode the L2/L3/L4 headers that matter: {'l3': 'ipv4'|'ipv6'|'arp'|..., 'proto':
    'esp'|'udp'|..., 'src', 'dst', 'sport', 'dport', 'spi'} (best effort)."""
    info: dict = {}
    if linktype == 1:  # Ethernet
        if len(frame) < 14:
            return {"l3": "short"}
        etype = struct.unpack("!H", frame[12:14])[0]
        off = 14
        if etype == 0x8100 and len(frame) >= 18:
            etype = struct.unpack("!H", frame[16:18])[0]
            off = 18
    elif linktype == 113:  # Linux cooked (tcpdump -i any)
        etype = struct.unpack("!H", frame[14:16])[0]
        off = 16
    else:
        return {"l3": f"linktype-{linktype}"}
    p = frame[off:]
    if etype == 0x0800 and len(p) >= 20:
        ihl = (p[0] & 0x0F) * 4
        proto = p[9]
        info.update(l3="ipv4", src=socket.inet_ntoa(p[12:16]), dst=socket.inet_ntoa(p[16:20]))
        l4 = p[ihl:]
    elif etype == 0x86DD and len(p) >= 40:
        proto = p[6]
        info.update(l3="ipv6", src=socket.inet_ntop(socket.AF_INET6, p[8:24]),
                    dst=socket.inet_ntop(socket.AF_INET6, p[24:40]))
        l4 = p[40:]
        # skip hop-by-hop options (MLD reports carry one)
        while proto in (0, 60, 43) and len(l4) >= 8:
            proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
    elif etype == 0x0806:
        return {"l3": "arp", "proto": "arp"}
    else:
        return {"l3": f"ethertype-{etype:#06x}", "proto": f"ethertype-{etype:#06x}"}
    info["proto"] = IP_PROTOS.get(proto, f"ip-{proto}")
    if proto in (6, 17) and len(l4) >= 4:
        info["sport"], info["dport"] = struct.unpack("!HH", l4[:4])
    if proto == 50 and len(l4) >= 8:
        info["spi"], info["seq"] = struct.unpack("!II", l4[:8])
    return info


class Capture:
    """tcpdump (or tshark) writing a pcap of everything crossing the bridge."""

    def __init__(self, lab: "Netlab", path: str | None = None, iface: str = "br0",
                 ns: str | None = None, bpf: str = ""):
        self.lab = lab
        self.ns = ns or lab.bridge_ns
        self.iface = iface
        self.path = path or os.path.join(lab.workdir, f"capture-{len(lab._captures)}.pcap")
        self.bpf = bpf
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Capture":
        tool = shutil.which("tcpdump")
        if tool:
            argv = [tool, "-i", self.iface, "--immediate-mode", "-U", "-n", "-w", self.path, "-Z", "root"]
        elif shutil.which("tshark"):
            argv = [shutil.which("tshark"), "-i", self.iface, "-w", self.path, "-F", "pcap"]
        else:
            raise NetlabError("neither tcpdump nor tshark is installed (run tools/setup)")
        if self.bpf:
            argv += self.bpf.split()
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.lab._procs.append(self.proc)
        # ready when it says it is listening (stderr), or the file has its header
        deadline = time.monotonic() + 30
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                if b"listening on" in buf or b"Capturing on" in buf:
                    return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise NetlabError(f"capture did not start: {buf.decode(errors='replace').strip()}")

    def stop(self) -> str:
        """Stop capturing (flushes the file) and return the pcap's path."""
        p = self.proc
        if p and p.poll() is None:
            # let in-flight frames land: tcpdump (-U) writes each frame as it takes it, and on
            # SIGINT drops what it has not taken yet, which on a loaded machine can be more than
            # a fixed pause covers. Wait until the file stops growing (bounded).
            self._settle()
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p and p.stderr:
            p.stderr.close()
        return self.path

    def _settle(self, quiet: float = 0.3, limit: float = 5.0) -> None:
        def size() -> int:
            try:
                return os.path.getsize(self.path)
            except OSError:
                return -1
        end = time.monotonic() + limit
        last, since = size(), time.monotonic()
        time.sleep(0.2)
        while time.monotonic() < end:
            now = size()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def packets(self) -> list[dict]:
        """Every captured frame, classified (see classify()), with 'time' and 'len'."""
        out = []
        for ts, frame, lt in read_pcap(self.path):
            d = classify(frame, lt)
            d.update(time=ts, len=len(frame))
            out.append(d)
        return out

    def protocols(self, l3: tuple = ("ipv4", "ipv6")) -> Counter:
        """Count captured IP packets by protocol, e.g. Counter({'esp': 3, 'igmp': 2})."""
        return Counter(p["proto"] for p in self.packets() if p.get("l3") in l3)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------- topology

class Netlab:
    """N hosts on one bridge, each in its own netns. Use as a context manager (or call
    setup()/teardown()); teardown kills what runs in the namespaces and deletes them."""

    def __init__(self, n: int = 3, net4: str = "10.77.0.0/24", net6: str = "fd77::/64",
                 workdir: str | None = None):
        if not 1 <= n <= 200:
            raise ValueError("1..200 hosts")
        self.n = n
        self.run_id = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.bridge_ns = f"{PREFIX}-{self.run_id}-br"
        self.net4 = ipaddress.ip_network(net4)
        self.net6 = ipaddress.ip_network(net6)
        self.hosts: list[Host] = []
        self._procs: list[subprocess.Popen] = []
        self._children: list[Child] = []
        self._sockets: list[Listener] = []
        self._captures: list[Capture] = []
        self._ifindex_cache: dict[str, int] = {}
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"netlab-{self.run_id}-")
        self._up = False

    # lifecycle
    def setup(self) -> "Netlab":
        if os.geteuid() != 0:
            raise NetlabError("netlab needs root (network namespaces)")
        cleanup_stale()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self._up = True
        return self

    def _build(self) -> None:
        # Few processes: every exec costs ~0.2 s in User-mode Linux, so one `ip -batch` per
        # namespace instead of one `ip` per change.
        br = self.bridge_ns
        for i in range(1, self.n + 1):
            self.hosts.append(Host(self, i, f"{PREFIX}-{self.run_id}-h{i}",
                                   str(self.net4.network_address + i),
                                   str(self.net6.network_address + i)))
        ip_batch([f"netns add {ns}" for ns in self.namespaces()])
        for key in ("all", "default"):
            self._sysctl(br, f"net/ipv6/conf/{key}/disable_ipv6", "1")
        for h in self.hosts:
            for key in ("all", "default"):
                self._sysctl(h.ns, f"net/ipv6/conf/{key}/accept_dad", "0")
                self._sysctl(h.ns, f"net/ipv6/conf/{key}/dad_transmits", "0")
        cmds = ["link set lo up",
                "link add br0 type bridge mcast_snooping 0 stp_state 0 forward_delay 0",
                "link set br0 up"]
        for h in self.hosts:
            cmds += [f"link add p{h.index} type veth peer name eth0 netns {h.ns}",
                     f"link set p{h.index} master br0 up"]
        ip_batch(cmds, br)
        for h in self.hosts:
            ip_batch(["link set lo up",
                      f"addr add {h.ip4}/{self.net4.prefixlen} dev eth0",
                      f"addr add {h.ip6}/{self.net6.prefixlen} dev eth0 nodad",
                      "link set eth0 up",
                      "route add 224.0.0.0/4 dev eth0",
                      "route add ff00::/8 dev eth0 table main"], h.ns)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        with in_netns(ns):
            try:
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(value)
            except FileNotFoundError:
                pass

    def teardown(self) -> None:
        for lst in self._sockets:
            lst.close()
        for c in self._captures:
            c.stop()
        for c in self._children:
            c.kill()
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
                p.wait()
        delete_netns(self.namespaces())
        self._up = False

    def __enter__(self) -> "Netlab":
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.teardown()
        if self._own_workdir and exc[0] is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # helpers
    def _ifindex(self, h: Host) -> int:
        if h.ns not in self._ifindex_cache:
            with in_netns(h.ns):
                self._ifindex_cache[h.ns] = socket.if_nametoindex(h.ifname)
        return self._ifindex_cache[h.ns]

    def host(self, i: int) -> Host:
        """Host by number, 1-based (h1 is lab.host(1))."""
        return self.hosts[i - 1]

    def capture(self, path: str | None = None, bpf: str = "") -> Capture:
        """A bridge capture; `with lab.capture() as cap:` starts it, leaving the block stops
        it. Or cap = lab.capture().start(); ...; cap.stop() -> pcap path."""
        c = Capture(self, path, bpf=bpf)
        self._captures.append(c)
        return c

    def namespaces(self) -> list[str]:
        return [self.bridge_ns] + [h.ns for h in self.hosts]


# ------------------------------------------------------------------- pytest

def _fixtures():
    import pytest

    @pytest.fixture
    def netlab_factory(tmp_path):
        """netlab_factory(n=3, **kw) -> a set-up Netlab, torn down after the test."""
        made = []

        def make(n: int = 3, **kw) -> Netlab:
            kw.setdefault("workdir", str(tmp_path))
            lab = Netlab(n, **kw).setup()
            made.append(lab)
            return lab

        yield make
        for lab in reversed(made):
            lab.teardown()

    @pytest.fixture
    def netlab(netlab_factory) -> Netlab:
        """Three hosts h1..h3 (10.77.0.1-3, fd77::1-3) on one bridge."""
        return netlab_factory(3)

    return netlab_factory, netlab


try:  # importable without pytest (tools/demo)
    netlab_factory, netlab = _fixtures()
except ImportError:  # pragma: no cover
    pass
