"""msecctl's groups in the kernel lab: a group created with `msecctl group create` and joined
with `msecctl join` carries ESP between members; `msecctl group delete` removes its SAs and
policies on every member (one GROUPKEY-PUSH); `msecctl leave` removes the member's."""

from __future__ import annotations

import os
import time

import pytest

from tests.host.daemon_proc import Msecd
from tests.host.test_daemon_process import _push_signing_key
from tests.kernel.test_registration import GROUP, PORT, PSKS, SPI_LOG, states, traffic, xfrm_text

pytestmark = pytest.mark.kernel
OTHER = "239.1.1.2"


def _config(d, text):
    d.mkdir()
    p = d / "msecd.toml"
    p.write_text(f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
                 + text)
    os.chmod(p, 0o600)
    return p


def _tek(dst):
    return (f"src=10.77.0.0/24,dst={dst},protocol=udp,dst_port={PORT},mode=tunnel,"
            "cipher=aes-gcm-128,lifetime=1h")


def _until(pred, what, timeout=60.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.1)


def _group_sas(h, dst):
    return {spi for d, spi, _ in states(h) if d == dst}


def test_created_joined_deleted_and_left(netlab_factory, tmp_path):
    lab = netlab_factory(3)
    h1, h2, h3 = lab.hosts
    ks_text = f'[keyserver]\nlisten = ["{h1.ip4}"]\n'
    for ident in ("gm1", "gm2"):
        ks_text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{PSKS[ident]}"\n'
    ks = Msecd(_config(tmp_path / "ks", ks_text), host=h1)
    gms = {}
    for name, h in (("gm1", h2), ("gm2", h3)):
        cfg = _config(tmp_path / name, "[member]\n")
        psk = cfg.with_name(f"{name}.psk")
        psk.write_text(PSKS[name])
        os.chmod(psk, 0o600)
        gms[name] = (Msecd(cfg, host=h), psk)
    signing = _push_signing_key(tmp_path / "ks" / "push.pem")
    kek = f"signing_key={signing},signature=ecdsa-p256,rekey_address=239.192.0.1"
    try:
        ks.start(timeout=120)
        for d, _ in gms.values():
            d.start(timeout=120)
        ks.ctl("group", "create", "1001", "--tek", _tek(GROUP), "--kek", kek,
               "--authorize", "gm1", "--authorize", "gm2", check=True)
        ks.ctl("group", "create", "1002", "--tek", _tek(OTHER), "--kek", kek,
               "--authorize", "gm1", check=True)
        for name, (d, psk) in gms.items():
            d.ctl("join", "1001", "--key-server", h1.ip4, "--psk-identity", name,
                  "--psk-file", str(psk), check=True)
        d1, psk1 = gms["gm1"]
        d1.ctl("join", "1002", "--key-server", h1.ip4, "--psk-identity", "gm1",
               "--psk-file", str(psk1), check=True)
        d1.wait_log(SPI_LOG, count=2, timeout=120)
        gms["gm2"][0].wait_log(SPI_LOG, timeout=120)
        assert _group_sas(h2, GROUP) and _group_sas(h3, GROUP) and _group_sas(h2, OTHER)
        got, _, _ = traffic(lab, h2, [h3])
        assert len(got[0]) == 20

        r = ks.ctl_json("group", "delete", "1001")
        assert r["ok"] and r["push_seq"] is not None, r
        for h in (h2, h3):  # the PUSH deleted the KEK and TEKs: SAs and policies gone
            _until(lambda: not _group_sas(h, GROUP), f"{h.name}: SAs of {GROUP} removed")
            _until(lambda: GROUP not in xfrm_text(h, "policy"),
                   f"{h.name}: policies of {GROUP} removed")
        assert _group_sas(h2, OTHER)  # the other group is undisturbed

        r = d1.ctl_json("leave", "1002")
        assert r["ok"], r
        _until(lambda: not _group_sas(h2, OTHER), "gm1 left 1002: its SAs removed")
        assert OTHER not in xfrm_text(h2, "policy")
    finally:
        for d, _ in gms.values():
            d.stop()
        ks.stop()
