"""tools/lab exec as a black box: exit status, stdout/stderr, cwd and environment carried,
timeouts, no processes left behind. On this machine it boots User-mode Linux (one boot per
test, a few seconds each); where the host kernel carries ESP it runs there instead."""
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "tools", "lab")


def lab(*args, timeout=300, **kw):
    env = dict(os.environ)
    env.pop("MSEC_LAB", None)
    env.update(kw.pop("env", {}))
    return subprocess.run([LAB, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env, **kw)


def test_info_names_a_kernel():
    r = lab("info")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would use:" in r.stdout


def test_exec_status_output_cwd_and_environment(tmp_path):
    script = ("import os, sys; print('out', os.getcwd()); print('err', file=sys.stderr);"
              "print(os.environ['MSEC_TEST_TOKEN'], os.environ['MSEC_LAB'],"
              " os.environ['PYTHONDONTWRITEBYTECODE'], os.geteuid());"
              "open('/proc/net/xfrm_stat').close(); sys.exit(7)")
    r = lab("exec", "--", sys.executable, "-c", script, cwd=os.path.join(ROOT, "tests"),
            env={"MSEC_TEST_TOKEN": "tok en'1"})
    assert r.returncode == 7, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"out {os.path.join(ROOT, 'tests')}"
    assert lines[1] == "tok en'1 1 1 0"
    assert "err" in r.stderr.splitlines()
    assert "\r" not in r.stdout


def test_exec_large_output_comes_back_whole():
    r = lab("exec", "--", sys.executable, "-c",
            "import sys; [print(f'line {i:06d} ' + 'x' * 100) for i in range(20000)]")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 20000 and lines[-1].startswith("line 019999 ")


def test_exec_timeout_kills_the_kernel_and_fails_loudly():
    labdir = os.path.join(ROOT, ".lab", f"test-timeout-{os.getpid()}")
    try:
        r = lab("exec", "--timeout", "3", "--", "sleep", "120", timeout=120,
                env={"MSEC_LAB_DIR": labdir})
        assert r.returncode == 124
        assert "TIMEOUT" in r.stderr
        left = subprocess.run(["pgrep", "-f", f"msec_run={labdir}/"], capture_output=True,
                              text=True).stdout.split()
        assert left == [], "lab processes left behind"
    finally:
        shutil.rmtree(labdir, ignore_errors=True)


def test_exec_without_command_is_a_usage_error():
    r = lab("exec")
    assert r.returncode != 0


def test_killing_tools_lab_leaves_no_kernel_behind():
    labdir = os.path.join(ROOT, ".lab", f"test-kill-{os.getpid()}")
    env = dict(os.environ, MSEC_LAB_DIR=labdir)
    env.pop("MSEC_LAB", None)
    p = subprocess.Popen([LAB, "exec", "--kernel", "uml", "--", "sleep", "120"], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _lab_pids(labdir):
            time.sleep(0.2)
        assert _lab_pids(labdir), "the kernel did not start"
        time.sleep(2)
        p.kill()  # SIGKILL: no cleanup code runs in tools/lab
        p.wait()
        lab("exec", "--", "true")  # the next run reaps what a killed run left
        deadline = time.monotonic() + 30  # the kill may take a moment to land under load
        while _lab_pids(labdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _lab_pids(labdir) == []
    finally:
        for pid in _lab_pids(labdir):
            os.kill(int(pid), 9)
        shutil.rmtree(labdir, ignore_errors=True)


def _lab_pids(labdir):
    return subprocess.run(["pgrep", "-f", f"msec_run={labdir}/"], capture_output=True,
                          text=True).stdout.split()
