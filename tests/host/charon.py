"""strongSwan's charon (Debian's charon-systemd) as an IKEv1 peer for the host-tier interop tests.

One :class:`Charon` is one charon-systemd process inside a netlab host, with everything of its
own in a work directory: ``strongswan.conf`` (pointed to by ``STRONGSWAN_CONF``), the vici
socket, ``swanctl.conf`` and credentials (``SWANCTL_DIR``), and its log.  It never reads the
system's /etc/strongswan.conf or /etc/swanctl and writes nothing outside the work directory.

Ports: charon binds UDP 500 and 4500 in the netlab host's namespace.  500 it must be: charon
takes a datagram between two ports that are both not 500 for ESP or a Non-ESP-marked NAT-T
message (src/libcharon/network/receiver.c), so a peer on 848 needs charon on 500.

Kernel: libcharon insists on a kernel IPsec backend, so kernel-netlink is loaded.  It works in the
netlab host's namespace only, and there it adds only its per-socket IKE bypass policies (no
routing rule: ``routing_table = 0``); a phase 1 installs no SA, and an IKE-only initiation
(``swanctl --initiate --ike``) never starts Quick Mode.

Phase 1 keys: at log level 4 for ``ike`` charon's IKEv1 keymat (src/libcharon/sa/ikev1/
keymat_v1.c) logs ``SKEYID_d``, ``SKEYID_a``, ``SKEYID_e`` and ``encryption key Ka`` as hex dumps
(``%B``: a ``=> N bytes @ 0x...`` line, then lines ``   0: 1A 2B ...  ascii`` of 16 bytes);
:meth:`Charon.phase1_keys` reads them back from the log for comparison with msec's Phase1SA.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

CHARON = "/usr/sbin/charon-systemd"
SWANCTL = "/usr/sbin/swanctl"
IKE_PORT = 500  # charon's IKE port (in its own namespace)
NATT_PORT = 4500

#: the plugins a phase 1 needs (kernel-netlink: libcharon's critical kernel-ipsec feature);
#: IKEv2 also needs ``kdf`` (prf+ lives there since strongSwan 5.9.6): :data:`IKEV2_PLUGINS`
PLUGINS = ("random nonce aes sha1 sha2 hmac gmp openssl pem pkcs1 pkcs8 x509 pubkey constraints "
           "revocation kernel-netlink socket-default vici")
IKEV2_PLUGINS = PLUGINS + " kdf"

#: key names as charon logs them -> msec's Phase1SA attribute names
KEY_NAMES = {"SKEYID_d": "skeyid_d", "SKEYID_a": "skeyid_a", "SKEYID_e": "skeyid_e",
             "encryption key Ka": "enc_key"}
#: the CBC state after each Main Mode message; the last one is Phase1SA.last_block
LAST_IV = "next IV for MID 0"

_HEAD = re.compile(r"^\d+\[IKE\](?: <[^>]*>)? (.+?) => (\d+) bytes @ 0x[0-9a-f]+$")
_DUMP = re.compile(r"^\d+\[IKE\](?: <[^>]*>)? +(\d+): (.{47})  ")


def available() -> bool:
    return os.access(CHARON, os.X_OK) and os.access(SWANCTL, os.X_OK)


def hexdumps(log: str) -> list[tuple[str, bytes]]:
    """``(label, bytes)`` for every ``%B`` dump of the IKE group in a charon log, in order."""
    out: list[tuple[str, bytes]] = []
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        m = _HEAD.match(lines[i])
        i += 1
        if not m:
            continue
        size = int(m.group(2))
        data = bytearray()
        while len(data) < size and i < len(lines):
            d = _DUMP.match(lines[i])
            if not d or int(d.group(1)) != len(data):
                break
            data += bytes.fromhex(d.group(2))
            i += 1
        if len(data) != size:
            raise ValueError(f"charon log: {m.group(1)!r} announced {size} bytes, its dump has {len(data)}")
        out.append((m.group(1), bytes(data)))
    return out


def phase1_keys(log: str) -> list[dict[str, bytes]]:
    """Each IKEv1 key derivation in a charon log: ``{"skeyid_d", "skeyid_a", "skeyid_e",
    "enc_key", "last_block"}`` (names of msec's Phase1SA), one dict per IKE SA, in order;
    ``last_block`` is the last ``next IV for MID 0`` after that derivation (absent before)."""
    sets: list[dict[str, bytes]] = []
    for label, data in hexdumps(log):
        if label == "SKEYID_d":
            sets.append({})
        if not sets:
            continue
        if label in KEY_NAMES:
            sets[-1][KEY_NAMES[label]] = data
        elif label == LAST_IV:
            sets[-1]["last_block"] = data
    return sets


class Charon:
    """charon-systemd in netlab host ``host`` with its own configuration under ``workdir``."""

    def __init__(self, host, workdir: Path, plugins: str = PLUGINS) -> None:
        self.host = host
        self.plugins = plugins
        self.dir = Path(workdir)
        self.swanctl_dir = self.dir / "swanctl"
        self.log_path = self.dir / "charon.log"
        self.socket = self.dir / "charon.vici"
        self.proc: subprocess.Popen | None = None
        for sub in ("x509", "x509ca", "private"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_strongswan_conf()

    @property
    def uri(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STRONGSWAN_CONF": str(self.dir / "strongswan.conf"),
                "SWANCTL_DIR": str(self.swanctl_dir)}

    def _write_strongswan_conf(self) -> None:
        # charon-systemd reads the section named after itself (lib->ns), then "charon"
        conf = f"""\
charon-systemd {{
    load_modular = no
    load = {self.plugins}
    port = {IKE_PORT}
    port_nat_t = {NATT_PORT}
    install_routes = no
    routing_table = 0
    install_virtual_ip = no
    retransmit_tries = 4
    retransmit_timeout = 2.0
    retransmit_base = 1.5
    journal {{
        default = -1
    }}
    filelog {{
        charon {{
            path = {self.log_path}
            append = no
            flush_line = yes
            ike_name = yes
            default = 1
            ike = 4
            cfg = 1
            enc = 1
            net = 1
        }}
    }}
    plugins {{
        vici {{
            socket = {self.uri}
        }}
    }}
}}
swanctl {{
    socket = {self.uri}
}}
"""
        (self.dir / "strongswan.conf").write_text(conf)

    # ------------------------------------------------------------------ configuration

    def put_file(self, sub: str, name: str, data: bytes) -> Path:
        """A credential file under SWANCTL_DIR/<sub> (x509, x509ca, private), 0600."""
        p = self.swanctl_dir / sub / name
        p.write_bytes(data)
        p.chmod(0o600)
        return p

    def configure(self, swanctl_conf: str) -> None:
        p = self.swanctl_dir / "swanctl.conf"
        p.write_text(swanctl_conf)
        p.chmod(0o600)

    # ------------------------------------------------------------------ process

    def start(self, timeout: float = 60.0) -> "Charon":
        self._log = open(self.dir / "charon.stderr", "ab")
        self.proc = self.host.popen(CHARON, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"charon-systemd exited {self.proc.returncode}:\n{self.log()}\n"
                                     f"{(self.dir / 'charon.stderr').read_text(errors='replace')}")
            if self.socket.exists() and self.swanctl("--stats", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        raise AssertionError(f"charon-systemd not ready in {timeout} s:\n{self.log()}")

    def swanctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        r = subprocess.run([SWANCTL, *args, "--uri", self.uri], env=self.env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"swanctl {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}\n"
                                 f"charon log:\n{self.log()}")
        return r

    def load(self) -> None:
        """swanctl --load-all from SWANCTL_DIR (connections, secrets, certificates, keys)."""
        self.swanctl("--load-all", "--noprompt", "--file", str(self.swanctl_dir / "swanctl.conf"))

    def initiate_ike(self, name: str) -> subprocess.Popen:
        """Start an IKE-only initiation (no CHILD_SA, so no Quick Mode); the process ends when
        the phase 1 is up (exit 0) or has failed."""
        return subprocess.Popen([SWANCTL, "--initiate", "--ike", name, "--uri", self.uri],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match:
        rx = re.compile(pattern, re.M)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m:
                return m
            if time.monotonic() >= end or (self.proc is not None and self.proc.poll() is not None):
                raise AssertionError(f"no /{pattern}/ in charon's log after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def phase1_keys(self) -> list[dict[str, bytes]]:
        return phase1_keys(self.log())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
