"""Post-quantum preshared keys in G-IKEv2 registration (RFC 8784) in memory, after a real
IKE_SA_INIT, with the real GSA_AUTH engines and key store: the PPK used by both sides (keys
updated on both, checked against an independent prf+), the fallback with NO_PPK_AUTH, a
member's required PPK, a group's ``ppk = "required"``, a wrong PPK, tampered PPK_IDENTITY."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import replace

import pytest

from gkm.gdoi import MemberRefused
from gkm.ikev2 import KeyExchangeMethod as KEM, NotifyType
from gkm.ikev2.errors import WireError
from gkm.ikev2.events import GsaRegistrationFailed
from gkm.ikev2.gcks_registration import GsaAuthResponder
from gkm.ikev2.keys import ppk_update
from gkm.ikev2.message import decode_message
from gkm.ikev2.payloads import Notify
from gkm.ikev2.ppk import Ppk, decode_ppk_id, encode_ppk_id
from gkm.ikev2.sa_init import SaInitConfig, SaInitResponder
from gkm.ikev2.sk import SkCipher, protect, unprotect
from tests.unit.test_gdoi_support import GID, group_policy
from tests.unit.test_ikev2_registration import GCM, KWA, World, _ok, gcks_config, psk_member

PPK = os.urandom(32)
PPK2 = os.urandom(40)


def prf_plus(key: bytes, seed: bytes, n: int) -> bytes:
    """RFC 7296 §2.13 prf+ with HMAC-SHA-256, written here independently of gkm.ikev2.keys."""
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(key, t + seed + bytes((i,)), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


class PpkWorld(World):
    """World with PPKs: the GCKS's ``gcks_ppks`` (PPK_ID -> secret; announced in IKE_SA_INIT
    when not empty), the member announcing USE_PPK when ``member_ppk``, the group's ``ppk``."""

    def __init__(self, tmp_path, *, gcks_ppks=None, member_ppk=True, group_ppk="optional", **kw):
        gcks_ppks = {b"ppk1": PPK} if gcks_ppks is None else gcks_ppks
        super().__init__(tmp_path, groups={GID: replace(group_policy(tmp_path), ppk=group_ppk)}, **kw)
        self.sa_r = SaInitResponder(SaInitConfig(GCM, (KEM.ECP256, KEM.CURVE25519), "optional", kwa=KWA,
                                                 ppk=bool(gcks_ppks)))
        self.gcks = GsaAuthResponder(replace(gcks_config(False), ppks=gcks_ppks), self.groups, self.provider)
        self.i_cfg = replace(self.i_cfg, ppk=member_ppk)
        self.est = None

    def establish(self):
        ei, er = super().establish()
        self.est = ei
        return ei, er

    def gcks_keys(self):
        (s,) = self.gcks._sas.values()
        return s.est.keys


def member(ppk_id=b"ppk1", secret=PPK, required=False, **kw):
    return psk_member(ppk=Ppk(ppk_id, secret, required), **kw)


def request_notifies(w: PpkWorld) -> dict:
    up = next(d for k, d in w.log if k == "up")
    msg = unprotect(up, SkCipher.for_sender(w.est.keys, initiator=True))
    return {int(n.type): bytes(n.data) for n in msg.all(Notify)}


def test_both_with_the_same_ppk_register_with_the_updated_keys(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    w = PpkWorld(tmp_path)
    m, em, eg = w.register(member())
    _ok(w, em, eg)  # the TEKs arrived: GSK_w = prf+(SK_d', ...) matched on both sides
    assert w.est.ppk  # both IKE_SA_INIT messages carried N(USE_PPK)
    assert em[0].ppk and eg[0].ppk and m.ppk_used
    before, mine, theirs = w.est.keys, m.sa.keys, w.gcks_keys()
    for k in ("sk_d", "sk_pi", "sk_pr"):
        assert getattr(mine, k) == getattr(theirs, k) == prf_plus(PPK, getattr(before, k), 32) != getattr(before, k)
    for k in ("sk_ai", "sk_ar", "sk_ei", "sk_er"):  # RFC 8784 §3: unchanged
        assert getattr(mine, k) == getattr(theirs, k) == getattr(before, k)
    assert mine == ppk_update(before, PPK)
    n = request_notifies(w)
    assert n[NotifyType.PPK_IDENTITY] == b"\x02ppk1" and NotifyType.NO_PPK_AUTH in n  # optional: the fallback too
    assert "post-quantum preshared key 'ppk1'" in caplog.text
    for secret in (PPK.hex(), repr(PPK)[2:-1]):
        assert secret not in caplog.text and secret not in repr(em) + repr(eg) + repr(m.config)


def test_required_member_ppk_sends_no_fallback(tmp_path):
    w = PpkWorld(tmp_path, group_ppk="required")
    m, em, eg = w.register(member(required=True))
    _ok(w, em, eg)
    assert em[0].ppk and eg[0].ppk
    n = request_notifies(w)
    assert NotifyType.PPK_IDENTITY in n and NotifyType.NO_PPK_AUTH not in n


def test_no_ppk_anywhere_is_unchanged(tmp_path):
    w = PpkWorld(tmp_path, gcks_ppks={}, member_ppk=False)
    m, em, eg = w.register(psk_member())
    _ok(w, em, eg)
    assert not w.est.ppk and not em[0].ppk and not eg[0].ppk and m.sa.keys == w.est.keys


@pytest.mark.parametrize("gcks_ppks", [{b"other": PPK2}, {}], ids=["unknown-id", "gcks-without-ppks"])
def test_gcks_without_the_ppk_falls_back_for_an_optional_ppk(tmp_path, gcks_ppks):
    w = PpkWorld(tmp_path, gcks_ppks=gcks_ppks)
    m, em, eg = w.register(member())
    _ok(w, em, eg)
    assert w.est.ppk == bool(gcks_ppks)
    assert not em[0].ppk and not eg[0].ppk and not m.ppk_used
    assert m.sa.keys == w.est.keys == w.gcks_keys()  # no PPK in the keys


def test_required_member_ppk_and_gcks_without_it(tmp_path):
    w = PpkWorld(tmp_path, gcks_ppks={b"other": PPK2})
    _m, em, eg = w.register(member(required=True))
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and em[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert "AUTHENTICATION_FAILED" in em[0].reason and "'ppk1'" in em[0].reason and "required" in em[0].reason
    assert len(eg) == 1 and isinstance(eg[0], MemberRefused) and "unknown PPK_ID 'ppk1'" in eg[0].reason
    assert not w.store.members(GID) if w.store.group(GID) is not None else True


def test_required_member_ppk_and_gcks_without_ppks_at_all(tmp_path):
    w = PpkWorld(tmp_path, gcks_ppks={})
    m, em, eg = w.register(member(required=True))
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and "USE_PPK" in em[0].reason
    assert "'ppk1' is required" in em[0].reason and not eg and m.state == "failed"


@pytest.mark.parametrize("with_ppk", [False, True], ids=["no-ppk", "unknown-ppk-fallback"])
def test_group_requires_a_ppk(tmp_path, with_ppk):
    w = PpkWorld(tmp_path, group_ppk="required", member_ppk=with_ppk,
                 gcks_ppks={b"other": PPK2} if with_ppk else None)
    _m, em, eg = w.register(member() if with_ppk else psk_member())
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and em[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert len(eg) == 1 and isinstance(eg[0], MemberRefused) and eg[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert eg[0].cause == "ppk_required" and "requires a post-quantum preshared key" in eg[0].reason
    assert w.store.group(GID) is None or not w.store.members(GID)  # nothing recorded


@pytest.mark.parametrize("side", ["gcks", "member"])
def test_wrong_ppk_secret_is_authentication_failed(tmp_path, side):
    w = PpkWorld(tmp_path, gcks_ppks={b"ppk1": PPK2 if side == "gcks" else PPK})
    _m, em, eg = w.register(member(secret=PPK2 if side == "member" else PPK))
    # the GCKS has the PPK_ID: its AUTH must verify with it, no fallback to NO_PPK_AUTH
    assert len(eg) == 1 and isinstance(eg[0], MemberRefused) and eg[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert "with the PPK 'ppk1'" in eg[0].reason
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and em[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert w.store.group(GID) is None or not w.store.members(GID)


def _rewrite(keys_of, initiator: bool, change):
    """A tamper hook re-protecting the first message of one direction with ``change``d notifies
    (as a peer holding SK_e/SK_a could: PPK_IDENTITY is only integrity protected by them)."""
    done = []

    def tamper(direction, n, data):
        if (direction == "up") != initiator or done:
            return data
        done.append(1)
        keys = keys_of()
        msg = unprotect(data, SkCipher.for_sender(keys, initiator=initiator))
        payloads = tuple(change(p) if isinstance(p, Notify) else p for p in msg.payloads)
        return protect(msg.header, payloads, SkCipher.for_message(keys, msg.header))
    return tamper


def test_tampered_ppk_identity_naming_another_known_ppk_is_refused(tmp_path):
    w = PpkWorld(tmp_path, gcks_ppks={b"ppk1": PPK, b"ppk2": PPK2})
    swap = lambda n: replace(n, data=encode_ppk_id(b"ppk2")) if n.type == NotifyType.PPK_IDENTITY else n  # noqa: E731
    _m, em, eg = w.register(member(), tamper=_rewrite(lambda: w.est.keys, True, swap))
    assert len(eg) == 1 and isinstance(eg[0], MemberRefused) and eg[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert "'ppk2'" in eg[0].reason and isinstance(em[0], GsaRegistrationFailed)


def test_malformed_ppk_identity_is_refused(tmp_path):
    w = PpkWorld(tmp_path)
    bad = lambda n: replace(n, data=b"\x09ppk1") if n.type == NotifyType.PPK_IDENTITY else n  # noqa: E731
    _m, em, eg = w.register(member(), tamper=_rewrite(lambda: w.est.keys, True, bad))
    assert len(eg) == 1 and isinstance(eg[0], MemberRefused) and eg[0].notify == NotifyType.INVALID_SYNTAX
    assert "PPK_ID type 9" in eg[0].reason


def test_answer_whose_ppk_identity_names_another_ppk_is_refused_by_the_member(tmp_path):
    w = PpkWorld(tmp_path)
    other = lambda n: replace(n, data=encode_ppk_id(b"nope")) if n.type == NotifyType.PPK_IDENTITY else n  # noqa: E731
    _m, em, eg = w.register(member(), tamper=_rewrite(lambda: w.est.keys, False, other))
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and em[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert "another PPK" in em[0].reason


def test_answer_without_ppk_identity_fails_the_member(tmp_path):
    # a GCKS that used the PPK but whose PPK_IDENTITY went missing: the member checks the AUTH
    # with SK_pr (no PPK), which fails
    w = PpkWorld(tmp_path)
    gone = lambda n: Notify(0, NotifyType.INITIAL_CONTACT) if n.type == NotifyType.PPK_IDENTITY else n  # noqa: E731
    _m, em, eg = w.register(member(), tamper=_rewrite(lambda: w.est.keys, False, gone))
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and "not authenticated" in em[0].reason


def test_ppk_id_codec_is_strict():
    assert decode_ppk_id(b"\x01x") == decode_ppk_id(b"\x02x") == b"x"
    for bad in (b"", b"\x02", b"\x03abc", b"\x02" + b"x" * 256):
        with pytest.raises(WireError) as e:
            decode_ppk_id(bad, 40)
        assert e.value.payload == "N(PPK_IDENTITY)" and e.value.offset >= 40
    with pytest.raises(ValueError):
        Ppk(b"id", b"short")
    assert "secret" not in repr(Ppk(b"id", PPK)) or PPK.hex() not in repr(Ppk(b"id", PPK))
    assert repr(PPK)[2:-1] not in repr(Ppk(b"id", PPK))


def test_ppk_notifies_decode(tmp_path):
    w = PpkWorld(tmp_path)
    w.register(member())
    # the responder's PPK_IDENTITY has no data (RFC 8784 §3)
    down = next(d for k, d in w.log if k == "down")
    msg = unprotect(down, SkCipher.for_sender(w.est.keys, initiator=False))
    assert [bytes(n.data) for n in msg.all(Notify) if n.type == NotifyType.PPK_IDENTITY] == [b""]
    assert decode_message(down).header.message_id == 1
