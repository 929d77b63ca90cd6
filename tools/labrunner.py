"""The kernel lab: run a command as root inside a Linux kernel that can carry ESP.

`tools/lab exec -- CMD ARGS...` is the command-line face of this module (stdlib only, so it
runs before the virtual environment exists). Two back ends:

host  the host kernel, when a probe shows it can install an ESP SA (a throwaway netns gets an
      `ip xfrm state add ... proto esp aead rfc4106(gcm(aes))`).
uml   User-mode Linux (Debian's `user-mode-linux`: /usr/bin/linux.uml, modules copied to
      /lib/modules/<ver> by tools/setup; on a CPU where that one cannot boot, the newer kernel
      tools/setup unpacked and named in /var/cache/msec-lab/uml.selected). The guest's root file system is the host's, mounted
      read-only over hostfs; /tmp, /run (so /var/run/netns), /var/tmp and /dev/shm are tmpfs; the
      project tree gets a throwaway overlay (writes inside it vanish with the guest); a per-run
      folder under .lab/ is mounted read-write and carries job.sh in and the exit status out.
      The job's stdout/stderr are guest consoles tty1/tty2 wired (con1/con2) to pipes that this
      process copies to its own stdout/stderr as the bytes arrive, so output is live and the two
      streams stay apart. Kernel messages (con0) go to console.log in the run folder.

Environment: MSEC_LAB_KERNEL=auto|host|uml (default auto), MSEC_LAB_DIR (run folders; default
<project>/.lab), MSEC_LAB_KEEP=1 (keep run folders). Inside, the job sees MSEC_LAB=1,
MSEC_LAB_KERNEL=uml|host, MSEC_LAB_OUT (a writable folder, on the host under the run folder) and
PYTHONDONTWRITEBYTECODE=1, plus the caller's environment and working directory.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_INIT = os.path.join(PROJECT, "tools", "lab_guest.sh")
UML_PACKAGED = "/usr/bin/linux.uml"
UML_MODULES = "/usr/lib/uml/modules"
# Where Debian 12's UML cannot boot (a CPU with a large XSAVE area: tools/setup step 2b), setup
# unpacks a newer one and names it here: "<binary> <kernel release>".
UML_SELECTED = "/var/cache/msec-lab/uml.selected"


def _selected_uml() -> tuple[str, str | None]:
    """The UML binary to boot and its release (None: read it from the package)."""
    try:
        with open(UML_SELECTED) as f:
            path, ver = f.read().split()
        return path, ver
    except (OSError, ValueError):
        return UML_PACKAGED, None


UML, _UML_VER = _selected_uml()

# Modules the data plane and the tests need; whatever a kernel lacks is reported, not fatal.
MODULES = [
    "xfrm_user", "esp4", "esp6", "xfrm4_tunnel", "xfrm6_tunnel", "veth", "bridge", "gcm",
]
# Crypto algorithms (ghash, ctr, seqiv, chacha20poly1305, cbc, hmac...) and interface modules
# are loaded on demand by the kernel itself; loading every module up front costs ~5 s in UML.

# Environment variables that must not leak into the lab (host session plumbing).
ENV_DROP = {
    "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "DISPLAY",
    "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "XDG_SESSION_ID", "DBUS_SESSION_BUS_ADDRESS",
    "OLDPWD", "PWD", "SHLVL", "_", "TMPDIR", "TMUX", "TMUX_PANE", "LS_COLORS", "STY",
}

# Host paths the guest replaces with tmpfs. A folder below the first three (a checkout in /tmp,
# as a CI runner may make) is mounted again from the host, read-only, at the same path
# (msec_ro); below the kernel's own file systems nothing can be shown.
GUEST_TMPFS = ("/tmp", "/run", "/var/tmp", "/dev", "/proc", "/sys")
GUEST_REMOUNTABLE = ("/tmp", "/run", "/var/tmp")
GUEST_HIDDEN = ("/dev", "/proc", "/sys")


def _below(path: str, tops) -> bool:
    return any(path == t or path.startswith(t + "/") for t in tops)


def guest_ro_mounts(*paths: str) -> list[str]:
    """Host folders under the guest's tmpfs that must be mounted again (outermost first)."""
    out: list[str] = []
    for p in sorted({os.path.abspath(x) for x in paths}, key=len):
        if _below(p, GUEST_REMOUNTABLE) and not any(_below(p, [o]) for o in out):
            out.append(p)
    return out

EXIT_TIMEOUT = 124
EXIT_LAB_ERROR = 125


class LabError(Exception):
    """The lab itself could not run the command (not the command failing)."""


def log(msg: str) -> None:
    sys.stderr.write(f"lab: {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- kernel choice

def in_lab() -> bool:
    return os.environ.get("MSEC_LAB") == "1"


def uml_version() -> str | None:
    """The UML kernel release, from the package's module folder (never hard-coded)."""
    if not os.access(UML, os.X_OK):
        return None
    if _UML_VER is not None:
        return _UML_VER
    vers = sorted(d for d in os.listdir(UML_MODULES)) if os.path.isdir(UML_MODULES) else []
    if vers:
        return vers[-1]
    try:
        out = subprocess.run([UML, "--version"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=20).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def uml_problem() -> str | None:
    """Why UML cannot run here, or None."""
    ver = uml_version()
    if ver is None:
        return f"{UML} is missing (run tools/setup: apt-get install user-mode-linux)"
    if not os.path.exists(f"/lib/modules/{ver}/modules.dep"):
        return f"/lib/modules/{ver} is missing or has no modules.dep (run tools/setup)"
    if os.geteuid() != 0:
        return "the lab runs its command as root; run as root"
    return None


def modprobe(modules: list[str]) -> list[str]:
    """Load what exists; return the modules that could not be loaded."""
    missing = []
    for m in modules:
        r = subprocess.run(["modprobe", "-q", m], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            missing.append(m)
    return missing


def probe_host_esp() -> tuple[bool, str]:
    """Can the running kernel install an ESP AES-GCM SA? Tried in a throwaway netns."""
    if os.geteuid() != 0:
        return False, "not root, cannot probe"
    if shutil.which("ip") is None:
        return False, "iproute2 (ip) is missing"
    modprobe(["esp4", "xfrm_user", "gcm", "seqiv"])
    ns = f"msec-probe-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if add.returncode != 0:
        return False, f"cannot create a netns: {add.stderr.strip()}"
    try:
        r = subprocess.run(
            ["ip", "-n", ns, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
             "proto", "esp", "spi", "0x100", "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
             "0x" + "11" * 20, "128"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, stdin=subprocess.DEVNULL)
    if r.returncode == 0:
        return True, "an ESP rfc4106(gcm(aes)) SA installs"
    return False, f"ESP SA install fails: {r.stderr.strip() or r.returncode}"


def default_choice() -> str:
    return "auto" if in_lab() else os.environ.get("MSEC_LAB_KERNEL", "auto")


def choose_kernel(want: str = "auto") -> tuple[str, str]:
    """Return (backend, reason); backend is 'inside', 'host' or 'uml'."""
    if in_lab():
        return "inside", f"already inside the lab ({os.environ.get('MSEC_LAB_KERNEL', '?')})"
    if want not in ("auto", "host", "uml"):
        raise LabError(f"unknown kernel choice {want!r} (auto, host or uml)")
    if want in ("auto", "host"):
        ok, why = probe_host_esp()
        if ok:
            return "host", f"host kernel {os.uname().release}: {why}"
        if want == "host":
            raise LabError(f"host kernel {os.uname().release} cannot carry ESP: {why}")
        host_why = f"host kernel {os.uname().release} cannot carry ESP ({why})"
    else:
        host_why = "MSEC_LAB_KERNEL=uml"
    problem = uml_problem()
    if problem:
        raise LabError(f"{host_why}, and UML is not usable: {problem}")
    return "uml", f"{host_why}; User-mode Linux {uml_version()}"


# --------------------------------------------------------------------------- running

@dataclass
class Job:
    argv: list[str]
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    mem: str = "1G"
    timeout: float = 1800.0
    keep: bool = False
    rw: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=lambda: list(MODULES))


def job_env(env: dict[str, str], backend: str, out: str) -> dict[str, str]:
    e = {k: v for k, v in env.items()
         if k not in ENV_DROP and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)}
    e.update(MSEC_LAB="1", MSEC_LAB_KERNEL=backend, MSEC_LAB_OUT=out,
             PYTHONDONTWRITEBYTECODE="1")
    e.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    e.setdefault("PYTHONUNBUFFERED", "1")  # output through the console pipes arrives live
    return e


def job_script(job: Job, env: dict[str, str]) -> str:
    """The shell script the guest runs: cwd, environment, then exec of the command."""
    q = shlex.quote
    lines = ["# generated by tools/lab", f"cd {q(job.cwd)} || exit 126"]
    lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
    lines.append(f"export PWD={q(job.cwd)}")
    lines.append("exec " + " ".join(q(a) for a in job.argv))
    return "\n".join(lines) + "\n"


def lab_dir() -> str:
    d = os.environ.get("MSEC_LAB_DIR") or os.path.join(PROJECT, ".lab")
    d = os.path.abspath(d)
    if _below(d, GUEST_HIDDEN):
        raise LabError(f"MSEC_LAB_DIR={d} is under a kernel file system the guest mounts anew")
    os.makedirs(d, exist_ok=True)
    return d


def uml_cmdline(job: Job, rundir: str, umldir: str, umid: str,
                fd_out: int, fd_err: int, fd_con: int) -> list[str]:
    ro = guest_ro_mounts(PROJECT, job.cwd)
    for p in [rundir, PROJECT, *job.rw, *ro]:
        if re.search(r"[\s:\"']", p):
            raise LabError(f"path {p!r} contains blanks, quotes or ':'; the kernel command line "
                           "cannot carry it")
    args = [UML, f"mem={job.mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={GUEST_INIT}", "con=null", f"con0=null,fd:{fd_con}",
            f"con1=null,fd:{fd_out}", f"con2=null,fd:{fd_err}", "ssl=null",
            f"umid={umid}", f"uml_dir={umldir}", f"msec_run={rundir}", f"msec_ovl={PROJECT}"]
    if job.rw:
        args.append("msec_rw=" + ":".join(job.rw))
    if ro:
        args.append("msec_ro=" + ":".join(ro))
    return args


def _die_with_parent() -> None:
    """preexec: the kernel gets SIGKILL if tools/lab itself is killed (no orphaned UML)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pump(proc: subprocess.Popen, fds: dict[int, int], deadline: float | None) -> bool:
    """Copy guest output pipes to our fds until they close; False on timeout."""
    sel = selectors.DefaultSelector()
    for r in fds:
        sel.register(r, selectors.EVENT_READ)
    open_fds = set(fds)
    exited_at = None
    while open_fds:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > 5:
            break  # the kernel is gone; something else holds a pipe open
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - now))
        for key, _ in sel.select(wait):
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
                continue
            dst = fds[key.fd]
            try:
                while data:
                    n = os.write(dst, data)
                    data = data[n:]
            except BrokenPipeError:
                pass
    sel.close()
    return True


KERNEL_TROUBLE = re.compile(r"\b(BUG:|WARNING:|Oops|Kernel panic|general protection|"
                            r"kernel BUG|Call Trace:|page allocation failure|soft lockup)")


def kernel_trouble(console: str, limit: int = 40) -> list[str]:
    """Lines of the guest's kernel log that show a kernel bug, warning or panic."""
    try:
        with open(console, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    hits = [i for i, ln in enumerate(lines) if KERNEL_TROUBLE.search(ln)]
    if not hits:
        return []
    return lines[hits[0]:hits[0] + limit]


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join("  | " + ln for ln in lines[-n:])
    except OSError:
        return "  | (no console log)"


def prune_old_runs(base: str, max_age: float = 86400.0) -> None:
    """Run folders kept after failures pile up; drop those older than a day."""
    now = time.time()
    for d in glob.glob(os.path.join(base, "run-*")):
        try:
            if now - os.stat(d).st_mtime > max_age:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def reap_orphans() -> list[int]:
    """Kill UML processes of lab runs whose tools/lab is gone (it was SIGKILLed: the kernel's
    main process dies with it, its helper processes may not). Runs of live owners are left."""
    killed = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if not args or not args[0].endswith(b"linux.uml"):
            continue
        run = next((a[len(b"msec_run="):].decode() for a in args if a.startswith(b"msec_run=")),
                   None)
        if not run:
            continue
        try:
            owner = int(open(os.path.join(run, "owner")).read())
        except (OSError, ValueError):
            continue  # unknown owner: not ours to judge
        if not _alive(owner):
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except ProcessLookupError:
                pass
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_uml(job: Job) -> int:
    base = lab_dir()
    prune_old_runs(base)
    rundir = tempfile.mkdtemp(prefix="run-", dir=base)
    with open(os.path.join(rundir, "owner"), "w") as f:
        f.write(str(os.getpid()))
    umldir = tempfile.mkdtemp(prefix="msec-uml-")
    umid = "msec-" + os.path.basename(rundir)
    out = os.path.join(rundir, "out")
    os.makedirs(out)
    with open(os.path.join(rundir, "job.sh"), "w") as f:
        f.write(job_script(job, job_env(job.env, "uml", out)))
    with open(os.path.join(rundir, "modules"), "w") as f:
        f.write("\n".join(job.modules) + "\n")
    console = os.path.join(rundir, "console.log")
    con_fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    proc = None
    rc = EXIT_LAB_ERROR
    timed_out = False
    try:
        argv = uml_cmdline(job, rundir, umldir, umid, w_out, w_err, con_fd)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=con_fd, stderr=con_fd,
                                pass_fds=(w_out, w_err, con_fd), start_new_session=True,
                                cwd="/", preexec_fn=_die_with_parent)
        for fd in (w_out, w_err, con_fd):
            os.close(fd)
        w_out = w_err = con_fd = -1
        deadline = time.monotonic() + job.timeout if job.timeout > 0 else None
        if not _pump(proc, {r_out: sys.stdout.fileno(), r_err: sys.stderr.fileno()}, deadline):
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
            log(f"TIMEOUT: the command did not finish within {job.timeout:g} s; "
                f"the UML kernel was killed. Last console lines:\n{_tail(console)}")
            return EXIT_TIMEOUT
        try:
            proc.wait(timeout=max(5.0, (deadline - time.monotonic()) if deadline else 60.0))
        except subprocess.TimeoutExpired:
            log("the guest finished but the UML kernel did not halt; killed it")
        trouble = kernel_trouble(console)
        if trouble:
            log("the kernel logged trouble during the run (console.log):\n"
                + "\n".join("  | " + ln for ln in trouble))
        rcfile = os.path.join(rundir, "rc")
        missing_file = os.path.join(rundir, "modules.missing")
        if os.path.exists(missing_file):
            missing = open(missing_file).read().split()
            if missing:
                log("modules not available in this kernel (ignored): " + " ".join(missing))
        if not os.path.exists(rcfile):
            log(f"the guest did not report an exit status (kernel exit code {proc.returncode}). "
                f"Last console lines:\n{_tail(console)}")
            return EXIT_LAB_ERROR
        rc = int(open(rcfile).read().strip() or EXIT_LAB_ERROR)
        return rc
    finally:
        if proc is not None:
            _kill_group(proc.pid)
            if proc.poll() is None:
                proc.wait()
        for fd in (r_out, r_err, w_out, w_err, con_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        shutil.rmtree(umldir, ignore_errors=True)
        keep = job.keep or os.environ.get("MSEC_LAB_KEEP") == "1"
        if keep or timed_out or rc == EXIT_LAB_ERROR:
            log(f"run folder kept: {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)


def run_direct(job: Job, backend: str) -> int:
    """Run on the current kernel (the host's, or already inside the lab)."""
    env = dict(job.env)
    out = env.get("MSEC_LAB_OUT")
    tmp = None
    if backend == "host" or not out:
        tmp = tempfile.mkdtemp(prefix="msec-lab-out-")
        out = tmp
        missing = modprobe(job.modules)
        if missing and backend == "host":
            log("modules not available in this kernel (ignored): " + " ".join(missing))
    env = job_env(env, os.environ.get("MSEC_LAB_KERNEL", backend) if backend == "inside"
                  else backend, out)
    try:
        proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        log(f"cannot run {job.argv[0]}: {e}")
        return 127
    try:
        proc.wait(timeout=job.timeout if job.timeout > 0 else None)
        return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        log(f"TIMEOUT: the command did not finish within {job.timeout:g} s; killed it")
        return EXIT_TIMEOUT
    finally:
        _kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait()
        if tmp and not job.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(job: Job, want: str = "auto", quiet: bool = True) -> int:
    reap_orphans()
    backend, why = choose_kernel(want)
    if not quiet:
        log(f"kernel: {why}")
    cwd = os.path.abspath(job.cwd)
    if backend == "uml" and _below(cwd, GUEST_HIDDEN):
        raise LabError(f"working directory {cwd} is not visible in the lab (the guest mounts "
                       "its own kernel file systems there)")
    if backend == "uml":
        return run_uml(job)
    return run_direct(job, backend)


# --------------------------------------------------------------------------- CLI

def _term(signum, frame):
    raise SystemExit(128 + signum)


def parse_mem(s: str) -> str:
    if not re.fullmatch(r"\d+[KMG]?", s):
        raise argparse.ArgumentTypeError(f"bad memory size {s!r} (e.g. 512M, 1G)")
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/lab", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exec", help="run CMD as root in a kernel with ESP; exit with its status")
    e.add_argument("--kernel", default=None,
                   help="auto, host or uml (default: $MSEC_LAB_KERNEL or auto)")
    e.add_argument("--mem", type=parse_mem, default="1G", help="UML memory (default 1G)")
    e.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds before the kernel is killed and the run fails (0: none; "
                        "default 1800)")
    e.add_argument("--rw", action="append", default=[], metavar="DIR",
                   help="host folder the command may write (mounted read-write; repeatable)")
    e.add_argument("--keep", action="store_true", help="keep the run folder (.lab/run-*)")
    e.add_argument("-v", "--verbose", action="store_true", help="say which kernel runs it")
    e.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    sub.add_parser("info", help="which kernel would be used, and why")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    try:
        if a.cmd == "info":
            return info()
        cmd = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        if not cmd:
            p.error("exec needs a command: tools/lab exec -- CMD [ARGS...]")
        rw = []
        for d in a.rw:
            d = os.path.abspath(d)
            os.makedirs(d, exist_ok=True)
            rw.append(d)
        job = Job(argv=cmd, mem=a.mem, timeout=a.timeout, keep=a.keep, rw=rw)
        return run(job, a.kernel or default_choice(), quiet=not a.verbose)
    except LabError as err:
        log(f"ERROR: {err}")
        return EXIT_LAB_ERROR
    except KeyboardInterrupt:
        log("interrupted")
        return 130


def info() -> int:
    print(f"host kernel:  {os.uname().release}")
    ok, why = probe_host_esp()
    print(f"host ESP:     {'yes' if ok else 'no'} ({why})")
    ver = uml_version()
    print(f"UML kernel:   {ver or 'not installed'} ({UML})")
    if ver:
        n = len(glob.glob(f"/lib/modules/{ver}/**/*.ko", recursive=True))
        print(f"UML modules:  /lib/modules/{ver}: {n} modules"
              + ("" if os.path.exists(f'/lib/modules/{ver}/modules.dep') else " (no modules.dep)"))
    try:
        backend, reason = choose_kernel(default_choice())
        print(f"would use:    {backend}: {reason}")
        return 0
    except LabError as err:
        print(f"would use:    nothing: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
