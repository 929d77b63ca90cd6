"""Real msecd processes for the host and kernel tiers: start one in a netlab host (or the
current namespace), wait for its control socket, run msecctl against it, read its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MSECCTL = [sys.executable, "-m", "gkm.daemon.ctl"]


class Msecd:
    def __init__(self, config: Path, *, host=None, args=(), log: Path | None = None,
                 socket: Path | None = None, wrapper=()) -> None:
        self.config = Path(config)
        self.wrapper = list(wrapper)  # runs msecd, e.g. setpriv with the unit's capabilities
        self.host = host
        self.args = list(args)
        self.log_path = log or self.config.with_suffix(".log")
        self.socket = socket
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 120.0) -> "Msecd":
        argv = [*self.wrapper, sys.executable, "-m", "gkm.daemon", "--config", str(self.config),
                "--foreground", "--log-level", "debug", *self.args]
        self._log = open(self.log_path, "ab")
        kw = dict(stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO),
                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if self.host is not None:
            self.proc = self.host.popen(*argv, **kw)
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         start_new_session=True, **kw)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"msecd exited {self.proc.returncode}:\n{self.log()}")
            if "msecd started" in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"msecd did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 120.0, count: int = 1) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            log = self.log()
            if log.count(text) >= count:
                return log
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged (x{count}):\n{self.log()}")

    def ctl(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        sock = ["--socket", str(self.socket)] if self.socket else ["--config", str(self.config)]
        r = subprocess.run([*MSECCTL, *sock, *argv], capture_output=True, text=True,
                           cwd=str(REPO), timeout=60, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"msecctl {' '.join(argv)}: {r.returncode}\n{r.stderr}")
        return r

    def ctl_json(self, *argv: str) -> dict:
        r = self.ctl("--json", *argv)
        return json.loads(r.stdout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def group_on_hosts(tmp_path: Path, ks_host, member_hosts, tek: str, psks: dict[str, str],
                   names=("gm1", "gm2"), member_args=("--no-kernel",)):
    """A key server (group 1001 with ``tek``: its TEK and KEK tables) on ``ks_host`` and
    PSK members ``names`` on ``member_hosts``, each in its own directory, every one listening
    on port 848; not started.  Returns (key server, {name: member})."""
    from tests.unit.daemon_fakes import write_config

    ks = Msecd(write_config(tmp_path, ks_port=848, name="ks.toml", tek=tek, ks_psks=psks,
                            authorize=tuple(names), listen=ks_host.ip4), host=ks_host)
    members = {}
    for name, h in zip(names, member_hosts):
        d = tmp_path / name
        d.mkdir()
        members[name] = Msecd(write_config(d, member_port=848, identity=name, psk=psks[name],
                                           ks_host=ks_host.ip4), host=h, args=list(member_args))
    return ks, members
