"""Issue 12: a configuration file (or a PSK/key file) another user could change is refused, as
secret files readable by others already were: writable by others, owned by another user, or in
a directory others can write to without the sticky bit.  A sticky world-writable directory
(/tmp) is fine."""

from __future__ import annotations

import os

import pytest

from policy.config import ConfigError, load_config
from tests.unit.daemon_fakes import PSK, write_config


def _member_config(tmp, port=848):
    """A member configuration with its PSK in a 0600 file: nothing secret inline, so only the
    file's location can make it unsafe (the inline-secret check stays out of the way)."""
    psk = tmp / "gm1.psk"
    psk.write_text(PSK)
    os.chmod(psk, 0o600)
    cfg = write_config(tmp, member_port=port)
    cfg.write_text(cfg.read_text().replace(f'psk = "{PSK}"', f'psk_file = "{psk}"'))
    return cfg


def _problems(cfg) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    return [str(p) for p in e.value.problems]


def test_world_writable_config_is_refused(tmp_path):
    cfg = _member_config(tmp_path)
    os.chmod(cfg, 0o602)
    (p,) = [p for p in _problems(cfg) if "writable by every user" in p]
    assert p.startswith(f"{cfg}: refused: ") and "mode 0602" in p and "chmod o-w" in p


def test_config_owned_by_another_user_is_refused(tmp_path):
    cfg = _member_config(tmp_path)
    os.chown(cfg, 65534, -1)
    assert any("owned by uid 65534" in p for p in _problems(cfg))


def test_config_in_a_world_writable_directory_without_sticky_bit_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    cfg = _member_config(d)
    os.chmod(d, 0o777)
    ps = _problems(cfg)  # the file itself, and the PSK file next to it
    assert ps[0].startswith(f"{cfg}: refused: ") and len(ps) == 2
    assert all(f"is in '{d}'" in p and "without the sticky bit (mode 0777)" in p for p in ps)
    os.chmod(d, 0o1777)  # sticky, like /tmp: only the owner can replace the file
    assert load_config(cfg).member is not None


def test_problems_are_listed_together_with_the_others(tmp_path):
    cfg = _member_config(tmp_path)
    cfg.write_text(cfg.read_text() + "\n[surprise]\n")
    os.chmod(cfg, 0o602)
    ps = _problems(cfg)
    assert any("writable by every user" in p for p in ps) and any("surprise" in p for p in ps)


def test_psk_file_in_a_world_writable_directory_is_refused(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "gm1.psk").write_text("11" * 16)
    os.chmod(d / "gm1.psk", 0o600)
    cfg = write_config(tmp_path, ks_port=848)
    cfg.write_text(cfg.read_text().replace('secret = "', f'secret_file = "{d}/gm1.psk"\n#'))
    assert load_config(cfg).keyserver is not None
    os.chmod(d, 0o777)
    (p,) = _problems(cfg)
    assert "keyserver.psk[0].secret_file" in p and "without the sticky bit" in p
