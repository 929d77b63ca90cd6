"""Drop-in files (policy.dropin): merged into the main configuration and validated with it,
problems reported against the drop-in that has them, only group and PSK entries allowed, the
would-be configuration checked without touching the disk, and the TOML writer's round trip."""

from __future__ import annotations

import os
import tomllib

import pytest
from hypothesis import example, given, settings, strategies as st

from policy.config import ConfigError, load_config
from policy.dropin import (authorize_entry, dropin_dir, dumps, keyserver_group_file,
                           member_group_file, write_atomic)

MAIN = """[daemon]
state_dir = "/var/lib/msec-test"
[keyserver]
listen = ["127.0.0.1"]
[[keyserver.psk]]
identity = "gm1"
secret = "00112233445566778899aabbccddeeff"
[[keyserver.group]]
id = 900
authorize = { psk_identities = ["gm1"] }
[[keyserver.group.tek]]
src = "10.9.0.0/16"
dst = "239.9.9.9"
cipher = "aes-gcm-128"
"""


def _group(gid: int, cipher: str = "aes-gcm-128", dst: str = "239.1.1.1") -> str:
    return dumps({"keyserver": {"group": [{
        "id": gid, "name": f"g{gid}", "authorize": {"psk_identities": ["gm1"]},
        "tek": [{"src": "10.1.0.0/16", "dst": dst, "cipher": cipher, "lifetime": "1h"}]}]}})


@pytest.fixture
def main(tmp_path):
    p = tmp_path / "msecd.toml"
    p.write_text(MAIN)
    os.chmod(p, 0o600)
    return p


def _write(main, name, text):
    d = dropin_dir(main)
    write_atomic(d / name, text)
    return d / name


def test_dropins_are_merged_in_name_order(main):
    assert [g.group_id for g in load_config(main).keyserver.groups] == [900]
    _write(main, keyserver_group_file(1002), _group(1002, dst="239.1.1.2"))
    _write(main, keyserver_group_file(1001), _group(1001))
    (dropin_dir(main) / "notes.txt").write_text("ignored")
    (dropin_dir(main) / ".keyserver-group-7.toml.1.tmp").write_text("ignored = [")
    assert [g.group_id for g in load_config(main).keyserver.groups] == [900, 1001, 1002]
    assert dropin_dir(main).name == "msecd.toml.d"


def test_a_problem_is_reported_against_its_drop_in(main):
    f = _write(main, keyserver_group_file(1001), _group(1001, cipher="rot13"))
    with pytest.raises(ConfigError) as e:
        load_config(main)
    [p] = e.value.problems
    assert p.source == str(f) and p.path == "keyserver.group[0].tek[0].cipher", p


def test_cross_file_problems_are_found(main):
    # the same id, the same selector as the main file's group: the whole document is checked
    f = _write(main, keyserver_group_file(900), _group(900, dst="239.9.9.8"))
    with pytest.raises(ConfigError) as e:
        load_config(main)
    [p] = e.value.problems
    assert p.source == str(f) and "duplicate group id 900" in p.reason, p


@pytest.mark.parametrize("text", ['[daemon]\nstate_dir = "/x"\n',
                                  '[keyserver]\nport = 1848\n',
                                  '[member]\nfoo = 1\n'])
def test_only_groups_and_psks_in_a_drop_in(main, text):
    f = _write(main, "x.toml", text)
    with pytest.raises(ConfigError) as e:
        load_config(main)
    assert all(p.source == str(f) and "main configuration file" in p.reason
               for p in e.value.problems), e.value


def test_a_broken_drop_in_refuses_the_whole_configuration(main):
    f = _write(main, "x.toml", "[[keyserver.group]\n")
    with pytest.raises(ConfigError) as e:
        load_config(main)
    assert e.value.problems[0].source == str(f) and "not valid TOML" in e.value.problems[0].reason


def test_unsafe_drop_in_is_refused(main):
    f = _write(main, keyserver_group_file(1001), _group(1001))
    os.chmod(f, 0o666)
    with pytest.raises(ConfigError) as e:
        load_config(main)
    assert any(p.source == str(f) and "writable by every user" in p.reason
               for p in e.value.problems)


def test_would_be_configuration_checked_without_writing(main):
    name = keyserver_group_file(1001)
    cfg = load_config(main, dropins={name: _group(1001)})
    assert [g.group_id for g in cfg.keyserver.groups] == [900, 1001]
    assert not dropin_dir(main).exists()
    with pytest.raises(ConfigError):
        load_config(main, dropins={name: _group(1001, cipher="rot13")})
    _write(main, name, _group(1001))
    assert [g.group_id for g in load_config(main, dropins={name: None}).keyserver.groups] == [900]


def test_a_member_joins_from_a_drop_in(tmp_path):
    main = tmp_path / "msecd.toml"
    main.write_text('[daemon]\nstate_dir = "/var/lib/msec-test"\n[member]\n')
    psk = tmp_path / "gm1.psk"
    psk.write_text("00112233445566778899aabbccddeeff")
    os.chmod(psk, 0o600)
    assert load_config(main).member.groups == ()
    _write(main, member_group_file(5), dumps({"member": {"group": [{
        "id": 5, "key_servers": ["192.0.2.1"],
        "credentials": {"psk_identity": "gm1", "psk_file": str(psk)}}]}}))
    assert [g.group_id for g in load_config(main).member.groups] == [5]


def test_write_atomic_mode_and_no_leftovers(tmp_path):
    f = tmp_path / "d" / "a.toml"
    write_atomic(f, "x = 1\n")
    write_atomic(f, "x = 2\n")
    assert f.read_text() == "x = 2\n" and (f.stat().st_mode & 0o777) == 0o600
    assert os.listdir(f.parent) == ["a.toml"]


def test_authorize_entry():
    assert authorize_entry("gm1") == ("psk_identities", "gm1")
    assert authorize_entry("key-id:gm1") == ("psk_identities", "gm1")
    assert authorize_entry("dn:CN=gm*, O=Example") == ("subjects", "CN=gm*, O=Example")
    assert authorize_entry("address:192.0.2.0/24") == ("addresses", "192.0.2.0/24")
    assert authorize_entry("fqdn:*.example.org") == ("fqdns", "*.example.org")


def test_dumps_refuses_what_toml_cannot_hold():
    for bad in ({"a": {"x": 1.5}}, {"a": {"x": None}}, {"a": 1}):
        with pytest.raises(ValueError):
            dumps(bad)


_scalars = st.one_of(st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.booleans())
_keys = st.text(min_size=1, max_size=10)
_tables = st.recursive(
    st.dictionaries(_keys, st.one_of(_scalars, st.lists(_scalars, max_size=3)), max_size=4),
    lambda inner: st.dictionaries(_keys, st.one_of(
        _scalars, inner, st.lists(inner, min_size=1, max_size=2)), max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _tables, max_size=3))
@example({"0": {"0\n": "", "a\n[b]": 1}, "x\n": {}})  # a key must never end a line early
def test_dumps_round_trips(doc):
    assert tomllib.loads(dumps(doc)) == doc
