"""The daemon's configuration-changing requests (gkm.daemon.config_edit) with fake engines:
malformed requests and refused groups write nothing and change nothing; join and leave go
through the reload (sessions started and stopped, SAs removed); main-file groups are refused."""

from __future__ import annotations

import pytest

from policy.dropin import dropin_dir
from tests.unit.daemon_fakes import FakeFactory, free_udp_port, write_config
from tests.unit.test_daemon_core import _daemon, _run, _until


def _member(gid, key_server, psk_file):
    return {"id": gid, "key_servers": [key_server],
            "credentials": {"psk_identity": "gm1", "psk_file": str(psk_file)}}


@pytest.mark.parametrize("req", [
    {"cmd": "group-create"}, {"cmd": "group-create", "group": [1]},
    {"cmd": "group-create", "group": {"name": "x"}},
    {"cmd": "group-create", "group": {"id": 7, "tek": [{"lifetime": 1.5}]}},
    {"cmd": "group-create", "group": {"id": 7, "tek": [{"src": None}]}},
    {"cmd": "group-create", "group": {"id": 7, "tek": "x"}},
    {"cmd": "group-create", "group": {"id": 1001, "tek": []}},      # exists (main file)
    {"cmd": "group-delete", "id": 1001}, {"cmd": "group-delete", "id": "1001"},
    {"cmd": "group-delete", "id": 5}, {"cmd": "leave", "id": True},
    {"cmd": "group-authorize", "id": 1001, "identities": ["gm2"]},
    {"cmd": "group-authorize", "id": 1001, "identities": []},
    {"cmd": "group-deauthorize", "id": 1001, "identities": [3]},
    {"cmd": "join", "group": {"id": 1001, "key_servers": ["127.0.0.1"]}},  # exists
    {"cmd": "join", "group": {"id": 9, "key_servers": "x"}},
    {"cmd": "reload-check", "file": 5},
])
def test_refused_requests_change_nothing(tmp_path, req):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)

    async def run():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        old = d.config
        r = await d.handle_request(req)
        assert r["ok"] is False and r["error"], r
        assert d.config is old
        assert not dropin_dir(cfg).exists()
        await d.stop()
    _run(run())


def test_join_and_leave_through_the_reload(tmp_path):
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port, ks_groups=(1001, 1002))
    psk = tmp_path / "gm1.psk"
    from tests.unit.daemon_fakes import PSK
    psk.write_text(PSK)
    psk.chmod(0o600)

    async def run():
        fac = FakeFactory()
        d = _daemon(cfg, fac)
        await d.start()
        r = await d.handle_request({"cmd": "join",
                                    "group": _member(1002, f"127.0.0.1:{port}", psk)})
        assert r["ok"] and r["action"] == "joined" and "member group 1002 added" in r["changes"]
        await _until(lambda: d.sessions[1002].state == "registered")
        assert (dropin_dir(cfg) / "member-group-1002.toml").exists()
        r = await d.handle_request({"cmd": "leave", "id": 1002})
        assert r["ok"] and "member group 1002 removed" in r["changes"], r
        assert ("remove", 1002) in fac.inst.calls and set(d.sessions) == {1001}
        assert list(dropin_dir(cfg).iterdir()) == []
        r = await d.handle_request({"cmd": "leave", "id": 1001})  # the main file's
        assert not r["ok"] and "edit the file that defines it" in r["error"]
        await d.stop()
    _run(run())


def test_a_change_waits_for_unreloaded_edits(tmp_path):
    """The change is applied by a reload of everything: an edit of the main file not reloaded
    yet would slip in with it, so the change is refused until the operator reloads."""
    port = free_udp_port()
    cfg = write_config(tmp_path, ks_port=port, member_port=port)
    group = {"id": 7, "authorize": {"psk_identities": ["gm1"]},
             "tek": [{"src": "10.7.0.0/16", "dst": "239.7.7.7", "cipher": "aes-gcm-128"}]}

    async def run():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        cfg.write_text(cfg.read_text().replace('name = "g1001"', 'name = "renamed"'))
        r = await d.handle_request({"cmd": "group-create", "group": group})
        assert not r["ok"] and "differs from the running one" in r["error"], r
        assert not dropin_dir(cfg).exists()
        cfg.write_text(cfg.read_text() + "\n[bogus]\n")
        r = await d.handle_request({"cmd": "group-create", "group": group})
        assert not r["ok"] and "on disk is refused" in r["error"] and r["problems"], r
        cfg.write_text(cfg.read_text().replace("\n[bogus]\n", ""))
        assert (await d.handle_request({"cmd": "reload"}))["ok"]
        r = await d.handle_request({"cmd": "group-create", "group": group})
        assert r["ok"] and "keyserver group 7 added" in r["changes"], r
        assert [g.name for g in d.config.keyserver.groups] == ["renamed", None]
        await d.stop()
    _run(run())
