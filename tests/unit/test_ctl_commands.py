"""msecctl's configuration commands and conventions: the requests `group create`, `join`,
`reload --check` send (SPECs parsed, file names made absolute), usage errors exit 2 before
anything is sent, exit 3 when msecd is not running, --help for every command, and the bash
completion script (the shipped copy equals the generated one, is valid bash, completes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gkm.daemon import ctl
from gkm.daemon.completion import bash_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "completion" / "msecctl.bash"


def _sent(monkeypatch, argv, answer=None):
    sent = []

    def fake(path, req, timeout=30.0):
        sent.append(req)
        return answer or {"ok": True, "id": req.get("id"), "action": "created", "file": "f"}
    monkeypatch.setattr(ctl, "request", fake)
    rc = ctl.main(["--socket", "/x", *argv])
    return rc, sent


def test_group_create_request(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc, [req] = _sent(monkeypatch, [
        "group", "create", "1001", "--name", "video",
        "--tek", "src=10.1.0.0/16,dst=239.1.1.1,protocol=udp,dst_port=5004,cipher=aes-gcm-128,"
                 "lifetime=1h,senders=gm1;dn:CN=cam",
        "--tek", "name=ctl,src=10.1.0.0/16,dst=239.1.1.2,cipher=aes-gcm-256,lifetime=3600",
        "--kek", "signing_key=ks.pem,rekey_address=239.192.0.1,lkh=false,rekey_port=1848",
        "--authorize", "gm1", "--authorize", "address:192.0.2.0/24", "--activation-delay", "1s"])
    assert rc == 0
    assert req == {"cmd": "group-create", "group": {
        "id": 1001, "name": "video", "activation_delay": "1s",
        "authorize": {"psk_identities": ["gm1"], "addresses": ["192.0.2.0/24"]},
        "tek": [{"src": "10.1.0.0/16", "dst": "239.1.1.1", "protocol": "udp", "dst_port": 5004,
                 "cipher": "aes-gcm-128", "lifetime": "1h",
                 "senders": {"psk_identities": ["gm1"], "subjects": ["CN=cam"]}},
                {"name": "ctl", "src": "10.1.0.0/16", "dst": "239.1.1.2",
                 "cipher": "aes-gcm-256", "lifetime": 3600}],
        "kek": {"signing_key": str(tmp_path / "ks.pem"), "rekey_address": "239.192.0.1",
                "lkh": False, "rekey_port": 1848}}}


def test_join_leave_delete_authorize_requests(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _, [req] = _sent(monkeypatch, ["join", "7", "--key-server", "192.0.2.1",
                                   "--key-server", "[2001:db8::1]:848", "--psk-identity", "gm1",
                                   "--psk-file", "gm1.psk", "--interface", "eth0"])
    assert req == {"cmd": "join", "group": {
        "id": 7, "key_servers": ["192.0.2.1", "[2001:db8::1]:848"], "interface": "eth0",
        "credentials": {"psk_identity": "gm1", "psk_file": str(tmp_path / "gm1.psk")}}}
    _, [req] = _sent(monkeypatch, ["join", "7", "--key-server", "ks", "--cert", "c.pem",
                                   "--key", "k.pem", "--ca", "ca.pem",
                                   "--key-server-identity", "dn:CN=ks1"])
    assert req["group"]["credentials"] == {"cert_file": str(tmp_path / "c.pem"),
                                           "key_file": str(tmp_path / "k.pem"),
                                           "trust_anchors": [str(tmp_path / "ca.pem")]}
    assert req["group"]["key_server_identity"] == {"subjects": ["CN=ks1"]}
    assert _sent(monkeypatch, ["leave", "7"])[1] == [{"cmd": "leave", "id": 7}]
    assert _sent(monkeypatch, ["group", "delete", "7"])[1] == [{"cmd": "group-delete", "id": 7}]
    assert _sent(monkeypatch, ["group", "deauthorize", "7", "gm1", "gm2"])[1] == [
        {"cmd": "group-deauthorize", "id": 7, "identities": ["gm1", "gm2"]}]
    assert _sent(monkeypatch, ["reload", "--check"])[1] == [{"cmd": "reload-check"}]
    assert _sent(monkeypatch, ["reload", "--check", "new.toml"])[1] == [
        {"cmd": "reload-check", "file": str(tmp_path / "new.toml")}]
    assert _sent(monkeypatch, ["reload"])[1] == [{"cmd": "reload"}]


@pytest.mark.parametrize("argv", [
    ["group", "create", "1001"],                                  # no --tek
    ["group", "create", "1001", "--tek", "src"],                  # not key=value
    ["group", "create", "1001", "--tek", "src=a,src=b"],          # twice
    ["group", "create", "0", "--tek", "src=a"],                   # not a group id
    ["join", "7", "--key-server", "ks"],                          # no credentials
    ["join", "7", "--key-server", "ks", "--psk-file", "f"],       # half a PSK
    ["join", "7", "--key-server", "ks", "--psk-identity", "a", "--psk-file", "f", "--cert", "c"],
    ["group", "authorize", "7"], ["leave"], ["completion", "zsh"], ["frobnicate"]])
def test_usage_errors_exit_2_and_send_nothing(monkeypatch, argv, capsys):
    with pytest.raises(SystemExit) as e:
        _sent(monkeypatch, argv)
    assert e.value.code == ctl.EXIT_USAGE == 2
    assert capsys.readouterr().err


def test_exit_codes(monkeypatch, tmp_path, capsys):
    assert _sent(monkeypatch, ["status"], {"ok": True})[0] == ctl.EXIT_OK == 0
    assert _sent(monkeypatch, ["leave", "7"], {"ok": False, "error": "no"})[0] == \
        ctl.EXIT_REFUSED == 1
    monkeypatch.undo()
    assert ctl.main(["--socket", str(tmp_path / "none.sock"), "groups"]) == \
        ctl.EXIT_NOT_RUNNING == 3
    assert "msecd is not running" in capsys.readouterr().err


def test_render_edit_and_reload_check():
    text = ctl.render("edit", {"ok": True, "id": 7, "action": "deleted", "file": "/f",
                               "push_seq": 4, "sent_to": ["239.192.0.1:848"], "changes": []})
    assert "group 7 deleted (/f)" in text and "SEQ 4" in text
    text = ctl.render("reload-check", {
        "ok": True, "file": "/n.toml", "unchanged": False,
        "groups_added": [{"id": 2, "role": "keyserver"}],
        "groups_removed": [{"id": 3, "role": "member"}], "groups_changed": [],
        "members_evicted": [{"id": 1, "identity": "key-id:gm2", "reason": "gone"}],
        "teks_rolled": [{"id": 1, "teks": ["0x00000001"], "why": "TEK or KEK policy changed"}],
        "restart_needed": []})
    for s in ("add keyserver group 2", "remove member group 3",
              "evict key-id:gm2 from group 1 (gone)", "0x00000001"):
        assert s in text, text


def test_every_command_has_help(capsys):
    for argv in (["--help"], ["group", "--help"], ["group", "create", "--help"],
                 ["join", "--help"], ["reload", "--help"]):
        with pytest.raises(SystemExit) as e:
            ctl.main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "exit status" in out and "usage: msecctl" in out
    with pytest.raises(SystemExit):
        ctl.main(["group", "create", "--help"])
    assert "key=value" in capsys.readouterr().out


def test_shipped_completion_is_the_generated_one():
    assert SCRIPT.read_text() == bash_script(ctl._parser()), \
        "regenerate: msecctl completion bash > tools/completion/msecctl.bash"


def _complete(*words: str) -> list[str]:
    prog = (f'source "{SCRIPT}"\nCOMP_WORDS=({" ".join(repr(w) for w in words)})\n'
            'COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n_msecctl\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    r = subprocess.run([shutil.which("bash"), "-c", prog], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PATH": "/nonexistent"})  # no msecctl: no ids
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.split("\n") if w]


def test_completion_is_valid_bash_and_completes():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
    top = _complete("msecctl", "")
    for c in ("status", "groups", "group", "join", "leave", "members", "reload", "rekey",
              "evict", "deny", "completion"):
        assert c in top
    assert _complete("msecctl", "gr") == ["group", "groups"]
    assert _complete("msecctl", "--json", "group", "")[:5] == ["authorize", "create",
                                                                 "deauthorize", "delete", "show"]
    assert "--tek" in _complete("msecctl", "-s", "/x", "group", "create", "1001", "--")
    assert _complete("msecctl", "join", "5", "--key-server", "ks", "--psk-f") == ["--psk-file"]
    assert _complete("msecctl", "completion", "")[0] == "bash"


def test_request_reads_an_answer_sent_before_the_request_was_read(tmp_path):
    """msecd answers a refused peer at once and closes without reading its request: msecctl
    must show that answer, not the broken pipe of its own write."""
    import socket
    import threading

    from gkm.daemon.ctl import request

    path = str(tmp_path / "c.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def refuse():
        c, _ = srv.accept()
        c.sendall(b'{"ok": false, "error": "permission denied"}\n')
        c.close()  # unread: the client's write fails with EPIPE
    t = threading.Thread(target=refuse)
    t.start()
    try:
        # a request larger than the socket buffers, so the write is still going on at the close
        assert request(path, {"cmd": "status", "pad": "x" * (8 << 20)}, timeout=10) == \
            {"ok": False, "error": "permission denied"}
    finally:
        t.join(10)
        srv.close()
