"""Issue 11, packaging: ``tools/install-service --dest DIR`` builds msec's wheel, installs it
with its dependencies (from the package index) into a fresh virtual environment, links the
entry points and installs the unit.  The installed ``msecd`` and ``msecctl`` work from there
(``--version``, ``--help``, ``msecctl init``, ``msecd --check``), and the installed unit, with
ExecStart at the staged msecd, passes ``systemd-analyze verify``.  About 30 s (pip)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gkm import __version__

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, **kw)


def test_install_service_stages_a_working_installation(tmp_path):
    dest = tmp_path / "sv-dest"
    # the virtual environment must not see this tree: run from elsewhere, clean environment
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = _run(ROOT / "tools/install-service", "--dest", dest, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    venv = dest / "opt/msec"
    msecd, msecctl = venv / "bin/msecd", venv / "bin/msecctl"
    for b in ("msecd", "msecctl"):
        assert os.readlink(dest / "usr/local/bin" / b) == f"/opt/msec/bin/{b}"
    assert _run(msecd, "--version", cwd="/").stdout.strip() == f"msecd {__version__}"
    assert _run(msecctl, "--version", cwd="/").stdout.strip() == f"msecctl {__version__}"
    h = _run(msecctl, "--help", cwd="/")
    assert h.returncode == 0 and "init" in h.stdout and "status" in h.stdout
    # the code comes from the installed wheel, not from this tree
    where = _run(venv / "bin/python", "-c", "import gkm; print(gkm.__file__)", cwd="/")
    assert where.stdout.startswith(str(venv)), where.stdout
    # getting started with the installed commands: init, then the real check
    ex = tmp_path / "sv-examples"
    shutil.copytree(ROOT / "examples", ex)
    init = _run(msecctl, "init", ex / "keyserver.toml", ex / "member.toml", cwd="/")
    assert init.returncode == 0, init.stderr
    for cfg in ("keyserver.toml", "member.toml"):
        check = _run(msecd, "--check", "--config", ex / cfg, cwd="/")
        assert check.returncode == 0, check.stderr
    # the unit as installed, pointed at the staged msecd
    unit = dest / "etc/systemd/system/msecd.service"
    assert unit.read_bytes() == (ROOT / "systemd/msecd.service").read_bytes()
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert oct((dest / "etc/msec").stat().st_mode & 0o777) == "0o700"
    # bash completion: the shipped script, which the installed msecctl also generates
    comp = dest / "usr/share/bash-completion/completions/msecctl"
    assert comp.read_text() == (ROOT / "tools/completion/msecctl.bash").read_text()
    assert _run(msecctl, "completion", "bash", cwd="/").stdout == comp.read_text()
    staged = tmp_path / "msecd.service"
    staged.write_text(unit.read_text().replace("/usr/local/bin/msecd", str(msecd)))
    v = _run("systemd-analyze", "verify", staged)
    assert v.returncode == 0 and "msecd" not in v.stderr, v.stderr
