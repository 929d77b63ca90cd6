"""msecctl's membership commands: request building, usage errors, text rendering; the
daemon's validation of their identities."""

from __future__ import annotations

import json

import pytest

from gkm.daemon import ctl
from gkm.daemon.daemon import member_identities


def _requests(monkeypatch, argv):
    sent = []

    def fake(path, req, timeout=30.0):
        sent.append(req)
        return {"ok": True, "id": req.get("id"), "evicted": [], "denied": [], "lifted": []}
    monkeypatch.setattr(ctl, "request", fake)
    rc = ctl.main(["--socket", "/x", *argv])
    return rc, sent


def test_requests(monkeypatch):
    assert _requests(monkeypatch, ["evict", "1001", "gm3", "dn:CN=x", "--reason", "why"]) == \
        (0, [{"cmd": "evict", "id": 1001, "identities": ["gm3", "dn:CN=x"], "reason": "why"}])
    assert _requests(monkeypatch, ["evict", "1001", "gm3"])[1] == \
        [{"cmd": "evict", "id": 1001, "identities": ["gm3"]}]
    assert _requests(monkeypatch, ["deny", "1001"])[1] == [{"cmd": "deny", "id": 1001}]
    assert _requests(monkeypatch, ["deny", "list", "7"])[1] == [{"cmd": "deny", "id": 7}]
    assert _requests(monkeypatch, ["--json", "deny", "lift", "7", "gm3", "gm4"])[1] == \
        [{"cmd": "deny-lift", "id": 7, "identities": ["gm3", "gm4"]}]


@pytest.mark.parametrize("argv", [["deny", "lift", "7"], ["deny", "gm3"], ["deny", "7", "gm3"],
                                  ["evict", "7"], ["deny", "lift", "x", "gm3"]])
def test_usage_errors_exit_2(monkeypatch, argv, capsys):
    with pytest.raises(SystemExit) as e:
        _requests(monkeypatch, argv)
    assert e.value.code == 2 and "usage" in capsys.readouterr().err


def test_render():
    members = {"ok": True, "id": 1001, "members": [
        {"identity": "key-id:gm1", "state": "registered", "address": "10.0.0.2:848",
         "registered_at": 1},
        {"identity": "key-id:gm3", "state": "evicted", "address": None, "evicted_at": 2,
         "reason": "lost laptop"}]}
    text = ctl.render("members", members)
    assert "STATE" in text and "WHY" in text
    line = next(x for x in text.splitlines() if "gm3" in x)
    assert "evicted" in line and "lost laptop" in line
    assert "ACKED SEQ" not in text  # multicast delivery: no ACK columns
    unicast = {"ok": True, "id": 1001, "members": [
        {"identity": "key-id:gm1", "state": "registered", "address": "10.0.0.2:848",
         "registered_at": 1, "last_acked_seq": 7, "missed_rekeys": 0, "lost": False},
        {"identity": "key-id:gm2", "state": "lost", "address": "10.0.0.3:848",
         "registered_at": 1, "last_acked_seq": 4, "missed_rekeys": 3, "lost": True}]}
    text = ctl.render("members", unicast)
    assert "ACKED SEQ" in text and "MISSED" in text
    assert next(x for x in text.splitlines() if "gm2" in x).split()[1:2] == ["lost"]
    assert " 4 " in next(x for x in text.splitlines() if "gm2" in x)
    r = {"ok": True, "id": 1001, "evicted": ["key-id:gm3"], "reason": "r", "seq": 1,
         "sent_to": ["239.192.0.1:848"], "not_members": ["key-id:x"]}
    text = ctl.render("evict", r)
    assert "evicted key-id:gm3 (r)" in text and "key-id:x: not a registered member" in text
    assert "deny list empty" in ctl.render("deny", {"ok": True, "id": 5, "denied": []})
    assert "lifted key-id:gm3" in ctl.render("deny", {"ok": True, "id": 5,
                                                      "lifted": ["key-id:gm3"]})
    json.dumps(members)


def test_member_identities():
    assert member_identities(["gm1", "key-id:gm1", "dn:CN=a,O=b", "fqdn:h.example.org"]) == \
        ["key-id:gm1", "dn:CN=a,O=b", "fqdn:h.example.org"]
    for bad in (None, [], "gm1", [""], [1], ["a\nb"], ["x" * 1025]):
        assert isinstance(member_identities(bad), str), bad


def test_daemon_membership_requests_validated(tmp_path):
    """Bad requests get a clear error and change nothing; the deny list works without any
    registered member (identities can be denied before they ever register)."""
    from tests.unit.daemon_fakes import FakeFactory, free_udp_port, write_config
    from tests.unit.test_daemon_core import _daemon, _run

    cfg = write_config(tmp_path, ks_port=free_udp_port())

    async def run():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        try:
            bad = [({"cmd": "evict", "id": 1001}, "identities"),
                   ({"cmd": "evict", "id": 1001, "identities": ["gm3"], "reason": ""}, "reason"),
                   ({"cmd": "evict", "id": 1001, "identities": ["gm3"], "reason": 5}, "reason"),
                   ({"cmd": "evict", "id": 77, "identities": ["gm3"]}, "not the key server"),
                   ({"cmd": "deny", "id": "x"}, "group id"),
                   ({"cmd": "deny-lift", "id": 1001, "identities": [None]}, "printable")]
            for req, why in bad:
                r = await d.handle_request(req)
                assert r["ok"] is False and why in r["error"], (req, r)
            assert (await d.handle_request({"cmd": "deny", "id": 1001}))["denied"] == []
            r = await d.handle_request({"cmd": "evict", "id": 1001, "identities": ["gm3"]})
            assert r["ok"] is False  # the fake factory cannot evict: nothing recorded
            d.keyserver.store.deny(1001, "key-id:gm3", at=5, reason="r")
            ms = (await d.handle_request({"cmd": "members", "id": 1001}))["members"]
            assert ms == [{"identity": "key-id:gm3", "address": None, "state": "evicted",
                           "evicted_at": 5, "reason": "r"}]
            r = await d.handle_request({"cmd": "deny-lift", "id": 1001,
                                        "identities": ["gm3", "gm4"]})
            assert r == {"ok": True, "id": 1001, "lifted": ["key-id:gm3"],
                         "not_denied": ["key-id:gm4"]}
        finally:
            d.request_stop("test")
            await d.wait_stopped()
            await d.stop()
    _run(run())


def test_keyserver_group_show_text():
    r = {"ok": True, "id": 1001, "roles": [{"id": 1001, "name": "g", "role": "keyserver",
                                             "state": "serving", "members": 2, "evicted": 1,
                                             "seq": 4, "kek_spi": "ab" * 16, "policy": {},
                                             "teks": []}]}
    text = ctl.render("group", r)
    assert "members: 2, evicted (deny list): 1" in text and f"KEK {'ab' * 16}, last SEQ 4" in text
