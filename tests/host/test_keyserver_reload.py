"""A key server reload that cannot be served is refused and the running one keeps serving;
one that can moves the key server (real msecd processes in a private namespace)."""

from __future__ import annotations

from tests.host.daemon_proc import Msecd
from tests.unit.daemon_fakes import free_udp_port, write_config


def _member(tmp_path, port, name):
    d = tmp_path / name
    d.mkdir()
    return write_config(d, member_port=port)


def test_reload_with_unbindable_listen_address_is_refused_and_keeps_serving(tmp_path, netns):
    port = free_udp_port()
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml")
    good = ks_cfg.read_text()
    ks = Msecd(ks_cfg, host=netns)
    gm = Msecd(_member(tmp_path, port, "gm"), host=netns, args=["--no-kernel"])
    try:
        ks.start()
        # 192.0.2.77 is no address of this namespace: EADDRNOTAVAIL
        ks_cfg.write_text(good.replace('listen = ["127.0.0.1"]',
                                       'listen = ["127.0.0.1", "192.0.2.77"]'))
        r = ks.ctl("reload")
        assert r.returncode == 1, r
        assert "refused" in r.stderr and f"192.0.2.77:{port}" in r.stderr, r.stderr
        st = ks.ctl_json("status")
        assert st["keyserver"]["listen"] == [f"127.0.0.1:{port}"]
        assert st["last_reload"]["ok"] is False
        # only the new address: refused as well
        ks_cfg.write_text(good.replace('listen = ["127.0.0.1"]', 'listen = ["192.0.2.77"]'))
        r = ks.ctl_json("reload")
        assert r["ok"] is False and "cannot listen" in r["error"], r
        # the running configuration still registers members
        gm.start()
        gm.wait_log("registered with key server")
        ks.wait_log("registered (TEK SPI")
        assert [m["identity"] for m in ks.ctl_json("members", "1001")["members"]] == ["key-id:gm1"]
    finally:
        gm.stop()
        ks.stop()


def test_reload_to_another_port_serves_there(tmp_path, netns):
    port, port2 = free_udp_port(), free_udp_port()
    ks_cfg = write_config(tmp_path, ks_port=port, name="ks.toml")
    ks = Msecd(ks_cfg, host=netns)
    gm = Msecd(_member(tmp_path, port2, "gm"), host=netns, args=["--no-kernel"])
    try:
        ks.start()
        ks_cfg.write_text(ks_cfg.read_text().replace(f"port = {port}\n", f"port = {port2}\n"))
        r = ks.ctl_json("reload")
        assert r["ok"], r
        assert ks.ctl_json("status")["keyserver"]["listen"] == [f"127.0.0.1:{port2}"]
        gm.start()
        gm.wait_log("registered with key server")
    finally:
        gm.stop()
        ks.stop()
