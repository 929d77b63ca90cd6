"""RFC 8784 PPKs through msecd's engines (``GdoiFactory`` from policy, in memory, real crypto
and store): the key server's ``[[keyserver.ppk]]`` and a group's ``ppk``, a member group's
``ppk``; the PPK-updated IKE SA keys carry the in-band rekeys and a GSA_REGISTRATION over the
kept IKE SA on both sides."""

from __future__ import annotations

import dataclasses
import logging

from gkm.gdoi.events import MemberRefused, MemberRegistered, Registered, RegistrationFailed
from gkm.gdoi.push import TeksRefreshed
from gkm.group.storage import load_state
from gkm.ikev2 import NotifyType
from gkm.ikev2.events import GikeRegistered
from gkm.ikev2.keys import ppk_update
from policy.model import PpkCredential, Secret
from tests.unit.test_gdoi_support import GID, KS, NOW, ks_settings, member_group
from tests.unit.test_ikev2_daemon_engines import _controller_step, both_groups, drain, run
from tests.unit.test_ikev2_inband import exchange, roster

PPK = bytes(range(32, 80))
ADDR = ("192.0.2.41", 848)


def setup(tmp_path, group_ppk="required", ks_ppks=(PpkCredential("gm1-ppk", Secret(PPK)),)):
    from gkm.daemon.engines import GdoiFactory
    from gkm.store import KeyStore
    g, other = both_groups(tmp_path)
    groups = [dataclasses.replace(g, g_ikev2_rekey="inband", ppk=group_ppk), other]
    f = GdoiFactory(kernel=False)
    settings = dataclasses.replace(ks_settings(tmp_path, groups), ppks=ks_ppks)
    ks = f.keyserver(settings, KeyStore(tmp_path / "state"), NOW)
    return f, ks, groups


def gike(tmp_path, who="gm1", ppk=PPK, required=False):
    mg = dataclasses.replace(member_group(tmp_path, who), protocol="g-ikev2")
    if ppk is not None:
        mg = dataclasses.replace(mg, ppk=PpkCredential("gm1-ppk", Secret(ppk), required=required))
    return mg


def test_ppk_registration_inband_rekey_and_gsa_registration(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    f, ks, groups = setup(tmp_path)
    mg = gike(tmp_path, required=True)
    reg_engine = f.member(mg, KS, NOW)
    em, eg = run(ks, reg_engine, addr=ADDR)
    [reg] = [e for e in em if isinstance(e, Registered)]
    [mr] = [e for e in eg if isinstance(e, MemberRegistered)]
    assert isinstance(reg, GikeRegistered) and reg.gsa.ppk and mr.ppk and reg.inband
    ike = reg.gsa.ike
    assert ike.ppk and ike is reg_engine.gsa_auth.sa and reg_engine.gsa_auth.ppk_used
    assert ike.keys == ppk_update(reg_engine.sa_init._keys, PPK) != reg_engine.sa_init._keys  # SK_d', SK_pi', SK_pr'
    # the GCKS keeps the IKE SA with the same, PPK-updated keys
    [kept] = list(ks.g_ikev2.inband._sas.values())
    assert kept.est.keys == ike.keys
    assert "with the post-quantum preshared key 'gm1-ppk'" in caplog.text and PPK.hex() not in caplog.text
    rx = f.push_receiver(mg, reg)
    ctl = f.group_controller(groups[0], load_state(f.provider.store, GID), NOW, signer=f.push_signer(groups[0]))
    result, _pushes = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    assert ks.g_ikev2.inband_rekey(GID, roster(f), NOW) == 1
    # exchange() takes the in-band test's addresses: gm1's is ADDR
    got, ks_events = exchange(ks, {"gm1": rx})
    [ref] = [e for e in got["gm1"] if isinstance(e, TeksRefreshed)]
    assert set(result.tek_spis) <= {t.spi for t in ref.teks}  # unwrapped under the PPK-updated SK_d
    # registering again over the kept IKE SA (GSA_REGISTRATION): same keys on both sides
    again = rx.reregistration(mg)
    again.start(NOW)
    em2, eg2 = run(ks, again, addr=ADDR)
    [reg2] = [e for e in em2 if isinstance(e, Registered)]
    assert reg2.gsa.ppk and {t.spi for t in reg2.teks} >= set(result.tek_spis)
    assert [type(e) for e in eg2 if isinstance(e, (MemberRegistered, MemberRefused))] == [MemberRegistered]


def test_group_requiring_a_ppk_refuses_a_member_without_one(tmp_path):
    f, ks, _groups = setup(tmp_path)
    em, eg = run(ks, f.member(gike(tmp_path, ppk=None), KS, NOW), addr=ADDR)
    [fail] = [e for e in em if isinstance(e, RegistrationFailed)]
    [refused] = [e for e in eg if isinstance(e, MemberRefused)]
    assert fail.notify == refused.notify == NotifyType.AUTHENTICATION_FAILED and refused.cause == "ppk_required"
    assert f.provider.store.member_count(GID) == 0


def test_key_server_without_ppks_and_a_member_with_an_optional_one(tmp_path):
    f, ks, _groups = setup(tmp_path, group_ppk="optional", ks_ppks=())
    em, eg = run(ks, f.member(gike(tmp_path), KS, NOW), addr=ADDR)
    [reg] = [e for e in em if isinstance(e, Registered)]
    assert not reg.gsa.ppk and not reg.gsa.ike.ppk  # no N(USE_PPK) from the key server
    assert [e.ppk for e in eg if isinstance(e, MemberRegistered)] == [False]
    drain(ks)
