"""gkm.daemon: roles, control protocol, msecctl and reload, with fake engines over loopback UDP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat

import pytest

from gkm.daemon import ctl
from gkm.daemon.control import ControlServer
from gkm.daemon.daemon import Daemon
from policy.config import load_config
from tests.unit.daemon_fakes import FakeFactory, RecordingInstaller, free_udp_port, write_config


def _run(coro, timeout=180):
    # generous: on a loaded machine; the waits inside return as soon as their condition holds
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _until(pred, timeout=60.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def _ctl(*argv):
    """Run msecctl's main in a thread (it blocks on the socket); return (rc, stdout, stderr)."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()

    def call():
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return ctl.main(list(argv))
    rc = await asyncio.get_running_loop().run_in_executor(None, call)
    return rc, out.getvalue(), err.getvalue()


def _daemon(path, factory, **kw):
    kw.setdefault("backoff", (0.01, 0.05))
    kw.setdefault("jitter", False)
    return Daemon(path, load_config(path), factory=factory, **kw)


# --------------------------------------------------------------------------- control socket


def test_control_socket_modes_and_protocol(tmp_path):
    async def run():
        path = tmp_path / "run" / "ctl.sock"

        async def handler(req):
            return {"ok": True, "echo": req["cmd"]}
        srv = ControlServer(path, handler)
        await srv.start()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        r, w = await asyncio.open_unix_connection(str(path))
        for line, want in [
            (b'{"cmd": "status"}\n', {"ok": True, "echo": "status"}),
            (b"not json\n", {"ok": False, "error": "request is not JSON: Expecting value: line 1 column 1 (char 0)"}),
            (b'{"nocmd": 1}\n', {"ok": False, "error": 'request must be an object with a "cmd" string'}),
            (b'{"cmd": "groups"}\n', {"ok": True, "echo": "groups"}),
        ]:
            w.write(line)
            await w.drain()
            assert json.loads(await r.readline()) == want
        w.close()
        await srv.close()
        assert not path.exists()
    _run(run())


def test_control_socket_refuses_second_daemon_and_removes_stale(tmp_path):
    async def run():
        path = tmp_path / "ctl.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()  # a dead daemon's socket file
        a = ControlServer(path, lambda r: {"ok": True})
        await a.start()
        b = ControlServer(path, lambda r: {"ok": True})
        with pytest.raises(OSError, match="another msecd"):
            await b.start()
        await a.close()
    _run(run())


# --------------------------------------------------------------------------- daemon


def test_keyserver_and_member_register_and_report(tmp_path, caplog):
    caplog.set_level("INFO")
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)
    fac = FakeFactory()

    async def run():
        d = _daemon(cfg, fac)
        await d.start()
        sock = str(tmp_path / "run" / "control.sock")
        await _until(lambda: d.sessions[1001].state == "registered")
        assert fac.inst.calls[0] == ("adopt", (1001,))
        assert fac.inst.calls[1][0:2] == ("install", 1001)

        rc, out, err = await _ctl("--socket", sock, "--json", "status")
        st = json.loads(out)
        assert rc == 0 and st["ok"] and st["roles"] == ["keyserver", "member"]
        assert st["keyserver"]["listen"] == [f"127.0.0.1:{port}"]
        assert st["member"] == {"groups": 1, "registered": 1, "kernel": True}

        rc, out, _ = await _ctl("--socket", sock, "status")
        assert rc == 0 and "roles: keyserver, member" in out and "1/1 group(s) registered" in out

        rc, out, _ = await _ctl("--socket", sock, "groups", "--json")
        gs = json.loads(out)["groups"]
        assert [(g["id"], g["role"], g["state"]) for g in gs] == [
            (1001, "keyserver", "serving"), (1001, "member", "registered")]
        assert gs[0]["members"] == 1
        rc, out, _ = await _ctl("--socket", sock, "groups")
        assert "ID" in out.splitlines()[0] and "registered" in out

        rc, out, _ = await _ctl("--socket", sock, "--json", "group", "show", "1001")
        g = json.loads(out)
        assert {r["role"] for r in g["roles"]} == {"keyserver", "member"}
        ks = next(r for r in g["roles"] if r["role"] == "keyserver")
        assert ks["teks"][0]["spi"] == "0x00001234" and "key" not in json.dumps(ks["teks"])
        mem = next(r for r in g["roles"] if r["role"] == "member")
        (tek,) = mem["teks"]
        assert (tek["spi"], tek["suite"], tek["lifetime_s"]) == ("0x00001234", "aes-gcm-128", 3600)
        assert "key" not in json.dumps(mem["teks"])
        rc, out, _ = await _ctl("--socket", sock, "group", "show", "1001")
        assert "TEK 0x00001234" in out and "registered with 127.0.0.1" in out

        rc, out, _ = await _ctl("--socket", sock, "members", "1001", "--json")
        assert [m["identity"] for m in json.loads(out)["members"]] == ["gm1"]
        rc, out, _ = await _ctl("--socket", sock, "members", "1001")
        assert "gm1" in out and "127.0.0.1" in out

        rc, out, err = await _ctl("--socket", sock, "group", "show", "77")
        assert rc == 1 and "no group 77" in err
        rc, out, err = await _ctl("--socket", sock, "members", "77")
        assert rc == 1 and "not the key server of group 77" in err

        d.request_stop("test")
        await d.wait_stopped()
        await d.stop()
        assert not os.path.exists(sock)
        assert ("remove", 1001) not in fac.inst.calls  # members keep SAs across a restart
    _run(run())
    text = caplog.text
    assert "group g1001 (1001): member key-id 'gm1' (127.0.0.1" in text and "registered" in text
    assert "group m1001 (1001): registered with key server" in text
    assert "group m1001 (1001): installed 1 SA(s) (SPI 0x00001234)" in text
    assert "stay in the kernel" in text
    assert "\\x11" not in text and "1111111111" not in text  # no key bytes in the log


def test_keyserver_state_survives_restart(tmp_path):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def once():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        await _until(lambda: d.sessions[1001].state == "registered")
        info = d.group(1001)["roles"][0]
        await d.stop()
        return info["teks"]
    first = _run(once())
    second = _run(once())
    assert first == second  # same TEK from the store, not a new one


def test_refusal_logged_and_retried_with_backoff(tmp_path, caplog):
    caplog.set_level("INFO")
    port = free_udp_port()
    # the member asks for 1002, which the key server does not serve
    cfg = write_config(tmp_path, ks_port=port, member_port=port, member_groups=(1002,))

    async def run():
        fac = FakeFactory()
        d = _daemon(cfg, fac)
        await d.start()
        await _until(lambda: len(fac.members) >= 3)
        s = d.sessions[1002]
        assert s.state in ("backoff", "registering") and s.describe()["last_error"] == "not authorized"
        assert d.keyserver.refusals >= 2
        assert not [c for c in fac.inst.calls if c[0] == "install"]
        await d.stop()
    _run(run())
    assert "group 1002: member key-id 'gm1' (127.0.0.1" in caplog.text and "refused" in caplog.text
    assert "registration with 127.0.0.1" in caplog.text and "retrying in" in caplog.text


def test_no_answer_tries_next_key_server_then_backs_off(tmp_path):
    # bound and silent (a closed port would answer ICMP port unreachable: failover at once)
    silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in silent:
        s.bind(("127.0.0.1", 0))
    dead1, dead2 = (s.getsockname()[1] for s in silent)
    cfg = write_config(tmp_path, member_port=dead1,
                       extra="")
    text = cfg.read_text().replace(f'key_servers = ["127.0.0.1:{dead1}"]',
                                   f'key_servers = ["127.0.0.1:{dead1}", "127.0.0.1:{dead2}"]')
    cfg.write_text(text)

    async def run():
        fac = FakeFactory(member_kwargs={"rto": 0.01, "tries": 2})
        d = _daemon(cfg, fac)
        await d.start()
        await _until(lambda: len(fac.members) >= 4)
        ports = [m.ks[1] for m in fac.members[:4]]
        assert ports == [dead1, dead2, dead1, dead2]
        assert d.sessions[1001].engine.failures >= 1
        assert d.sessions[1001].describe()["last_error"] == "no answer from key server"
        await d.stop()
    try:
        _run(run())
    finally:
        for s in silent:
            s.close()


def test_install_failure_logged_and_retried(tmp_path, caplog):
    from xfrm.errors import KernelLacksFeature
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        fac = FakeFactory(installer=RecordingInstaller(
            fail=KernelLacksFeature("add_state", 93, "esp4")))
        d = _daemon(cfg, fac)
        await d.start()
        await _until(lambda: len([c for c in fac.inst.calls if c[0] == "install"]) >= 2)
        assert "esp4" in d.sessions[1001].describe()["last_error"]
        await d.stop()
    _run(run())
    assert "cannot install SAs: add_state: EPROTONOSUPPORT: this kernel lacks esp4" in caplog.text


def test_adopted_sas_kept_unconfigured_removed(tmp_path, caplog):
    caplog.set_level("INFO")
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        inst = RecordingInstaller(adopted={1001: {0x999}, 4242: {0x777}})
        fac = FakeFactory(installer=inst)
        d = _daemon(cfg, fac)
        await d.start()
        assert ("remove", 4242) in inst.calls and ("remove", 1001) not in inst.calls
        assert d.sessions[1001].adopted
        await _until(lambda: d.sessions[1001].state == "registered")
        assert ("install", 1001) == inst.calls[-1][:2]  # new keys next to the adopted ones
        # the adopted SA the registration did not bring back goes after the deactivation delay
        await _until(lambda: ("remove", 1001, (0x999,)) in inst.calls)
        await d.stop()
    _run(run())
    assert "group 1001: adopted the SAs an earlier msecd left in the kernel (SPI 0x00000999)" \
        in caplog.text
    assert "group m1001 (1001): rolled over 1 SA(s) (SPI 0x00001234)" in caplog.text


def test_reregisters_before_teks_expire(tmp_path, caplog):
    caplog.set_level("INFO")
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        fac = FakeFactory(member_kwargs={"lifetime": 1})
        d = _daemon(cfg, fac, reregister_fraction=0.5, reregister_min=0.2)  # after 0.5 s
        await d.start()
        await _until(lambda: d.sessions[1001].engine.registrations >= 2)
        assert [c[0] for c in fac.inst.calls][:3] == ["adopt", "install", "install"]
        await d.stop()
    _run(run())
    assert "group m1001 (1001): SAs unchanged (SPI 0x00001234)" in caplog.text


# --------------------------------------------------------------------------- reload


def test_reload_refused_keeps_old_policy(tmp_path, caplog):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        sock = str(tmp_path / "run" / "control.sock")
        old = d.config
        cfg.write_text(cfg.read_text().replace('cipher = "aes-gcm-128"', 'cipher = "rot13"')
                       + "\n[bogus]\n")
        rc, out, err = await _ctl("--socket", sock, "reload")
        assert rc == 1
        assert "configuration refused; the running configuration is unchanged" in err
        assert "keyserver.group[0].tek[0].cipher" in err and "bogus" in err
        rc, out, _ = await _ctl("--socket", sock, "--json", "reload")
        r = json.loads(out)
        assert r["ok"] is False and len(r["problems"]) >= 2
        assert d.config is old and d.keyserver.shell is not None
        st = d.status()
        assert st["last_reload"]["ok"] is False
        rc, out, _ = await _ctl("--socket", sock, "status")
        assert "REFUSED" in out
        await d.stop()
    _run(run())
    assert "reload refused, keeping the running configuration" in caplog.text


def test_reload_adds_and_removes_groups(tmp_path):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        fac = FakeFactory()
        d = _daemon(cfg, fac)
        await d.start()
        await _until(lambda: d.sessions[1001].state == "registered")
        from gkm.daemon.member_store import MemberStateFiles
        from tests.unit.test_member_state import snap
        files = MemberStateFiles(tmp_path / "state")
        files.save(snap(), 0.0)  # group 1001's saved state (the fake registration has no KEK)
        write_config(tmp_path, ks_port=port, member_port=port, ks_groups=(1002,),
                     member_groups=(1002,))
        r = await d.reload()
        assert r["ok"], r
        assert files.load(1001, 0.0) is None  # a group that goes takes its saved state along
        assert "member group 1001 removed" in r["changes"]
        assert "member group 1002 added" in r["changes"]
        assert ("remove", 1001) in fac.inst.calls
        assert set(d.sessions) == {1002}
        await _until(lambda: d.sessions[1002].state == "registered")
        assert [g.group_id for g in d.keyserver.settings.groups] == [1002]
        r = await d.reload()
        assert r == {"ok": True, "changes": []}
        await d.stop()
    _run(run())


# --------------------------------------------------------------------------- msecctl alone


def test_msecctl_not_running(tmp_path, capsys):
    path = tmp_path / "nope.sock"
    assert ctl.main(["--socket", str(path), "status"]) == 3
    err = capsys.readouterr().err
    assert f"msecd is not running (no control socket at {path})" in err
    # a socket file nobody listens on: connection refused, same message
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert ctl.main(["--socket", str(path), "--json", "groups"]) == 3
    assert "msecd is not running" in capsys.readouterr().err


def test_msecctl_render_error_lists_problems():
    text = ctl.render("reload", {"ok": False, "error": "refused", "problems": ["a: b: c"]})
    assert text == "error: refused\n  a: b: c"


def test_msecctl_usage_errors():
    with pytest.raises(SystemExit) as e:
        ctl.main(["frobnicate"])
    assert e.value.code == 2


# --------------------------------------------------------------------------- real engines


def test_real_gdoi_engines_in_one_daemon(tmp_path, caplog):
    """gkm.gdoi's KeyServerEngine and MemberRegistration behind the daemon's shells, both
    roles in one process over loopback, SA installation off (NullInstaller)."""
    from gkm.daemon.engines import GdoiFactory
    caplog.set_level("INFO")
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port, member_groups=(1001, 1002),
                       ks_groups=(1001,))

    async def run():
        d = _daemon(cfg, GdoiFactory(kernel=False))
        await d.start()
        await _until(lambda: d.sessions[1001].state == "registered")
        await _until(lambda: d.sessions[1002].describe()["last_error"] is not None)
        ks_spis = {t["spi"] for t in d.group(1001)["roles"][0]["teks"]}
        assert {t["spi"] for t in d.sessions[1001].teks} == ks_spis
        assert d.sessions[1001].teks[0]["suite"] == "aes-gcm-128"
        assert d.members(1001)["members"][0]["address"] == "127.0.0.1"
        assert d.status()["member"]["kernel"] is False
        # a reload that adds a group to the key server: the running engine takes it
        engine = d.keyserver.shell.engine
        write_config(tmp_path, ks_port=port, member_port=port, member_groups=(1001, 1002),
                     ks_groups=(1001, 1002))
        r = await d.reload()
        assert r["ok"] and "keyserver group 1002 added" in r["changes"], r
        assert d.keyserver.shell.engine is engine
        await _until(lambda: d.sessions[1002].state == "registered")
        await d.stop()
    _run(run(), timeout=240)
    text = caplog.text
    assert "(kernel installation off)" in text
    assert "group 1002: member key-id 'gm1'" in text and "refused" in text
    assert "0123456789abcdef" not in text


def test_member_interface_that_does_not_exist_is_a_logged_failure(tmp_path, caplog):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)
    cfg.write_text(cfg.read_text().replace('name = "m1001"', 'name = "m1001"\ninterface = "nosuch0"'))

    async def run():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        await _until(lambda: d.sessions[1001].describe()["last_error"] is not None)
        assert "OSError" in d.sessions[1001].describe()["last_error"]
        await d.stop()
    _run(run())
