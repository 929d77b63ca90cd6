"""More PSKs without addresses than Main Mode tries by trial decryption: `msecd --check` warns,
and the key server's log says why such a member failed."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

from gkm.gdoi import KeyServerEngine, MemberRegistration, RegistrationFailed, StoreKeysProvider, phase1_config
from gkm.store import KeyStore
from policy.config import PSK_TRIAL_LIMIT
from policy.model import Authorization, KeyServerAddress, KeyServerSettings, MemberGroup, PskCredential, PskIdMatch, Secret
from tests.unit.daemon_fakes import write_config
from tests.unit.test_gdoi_support import GID, KS, events, group_policy, member_addr, register

REPO = Path(__file__).resolve().parents[2]
N = PSK_TRIAL_LIMIT + 2


def _secret(i: int) -> str:
    return f"{i:02d}" + "0123456789abcdef0123456789abcd"


def test_check_warns_about_psks_beyond_the_trial_limit(tmp_path):
    cfg = write_config(tmp_path, ks_port=40000, ks_psks={f"gm{i}": _secret(i) for i in range(N)})
    r = subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--check"],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "is valid, " in r.stdout and "advisory note(s)" in r.stdout
    (line,) = [ln for ln in r.stdout.splitlines() if "advisory: keyserver.psk:" in ln]
    assert f"{N} PSKs have no addresses" in line and f"at most {PSK_TRIAL_LIMIT}" in line
    assert f"gm{N - 2}, gm{N - 1};" in line and "AUTHENTICATION-FAILED" in line
    assert _secret(0) not in r.stdout + r.stderr


def test_check_without_advisories_says_just_valid(tmp_path):
    cfg = write_config(tmp_path, ks_port=40000, ks_psks={f"gm{i}": _secret(i) for i in range(3)})
    r = subprocess.run([sys.executable, "-m", "gkm.daemon", "--config", str(cfg), "--check"],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 0 and "advisory: keyserver.psk" not in r.stdout


def test_member_beyond_the_trial_limit_is_told_why_in_the_log(tmp_path, caplog):
    groups = [group_policy(tmp_path)]
    groups[0] = type(groups[0])(GID, groups[0].teks, Authorization(tuple(PskIdMatch(f"gm{i}") for i in range(N))),
                                groups[0].kek, name="test")
    addressed = PskCredential("far", Secret(b"far away key 0123456789"), addresses=(ipaddress.ip_address("198.51.100.7"),))
    psks = (addressed,) + tuple(PskCredential(f"gm{i}", Secret(_secret(i).encode())) for i in range(N))
    settings = KeyServerSettings(listen=(ipaddress.ip_address(KS[0]),), psks=psks, groups=tuple(groups))
    ks = KeyServerEngine(groups, StoreKeysProvider(KeyStore(tmp_path / "state")), phase1_config(settings), rekey_source=KS)

    def member(i: int) -> MemberRegistration:
        mg = MemberGroup(GID, (KeyServerAddress(KS[0]),), PskCredential(f"gm{i}", Secret(_secret(i).encode())))
        return MemberRegistration(phase1_config(mg, key_server=KS), GID, KS)

    # the first PSKs without addresses are tried (the addressed one comes after them) ...
    ok = member(PSK_TRIAL_LIMIT - 1)
    register(ks, {member_addr(0): ok})
    assert [type(e).__name__ for e in events(ok)] == ["Registered"]
    # ... the last ones are not: the log says so and what to do
    late = member(N - 1)
    register(ks, {member_addr(1): late})
    (fail,) = events(late)
    assert isinstance(fail, RegistrationFailed) and "AUTHENTICATION-FAILED" in fail.reason
    text = caplog.text
    assert f"HASH_I does not verify with any of the {PSK_TRIAL_LIMIT} pre-shared keys tried by trial decryption" in text
    assert f"{N + 1 - PSK_TRIAL_LIMIT} more were not tried" in text and "give this member's PSK its `addresses`" in text
