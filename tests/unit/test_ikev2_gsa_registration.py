"""GSA_REGISTRATION (RFC 9838 §2.3.2) in memory with real crypto and the real key store: after
GSA_AUTH a member registers to another group over the same IKE SA (no new key exchange, no
AUTH), the GCKS authorizes the identity GSA_AUTH authenticated for that group; refusals come
as SK{N}; a copy of a request gets the same answer; a member that cannot use a group's policy
says so in GSA_REGISTRATION with IDg and NO_PROPOSAL_CHOSEN, and the GCKS reports that the
member left (msecd evicts it)."""

from __future__ import annotations

import dataclasses

from gkm.gdoi.events import MemberRefused, MemberRegistered
from gkm.ikev2 import NotifyType
from gkm.ikev2.constants import ExchangeType, HeaderFlags, IdType
from gkm.ikev2.events import GsaMemberLeft, GsaRegistered, GsaRegistrationFailed
from gkm.ikev2.message import Header
from gkm.ikev2.payloads import IdGroup, Notify
from gkm.ikev2.registration import GsaRegistrationInitiator, member_auth_config
from gkm.ikev2.sk import SkCipher, protect, unprotect
from policy.model import Authorization, PskIdMatch
from tests.unit.test_gdoi_support import GID, KS, NOW, group_policy, member_group
from tests.unit.test_ikev2_daemon_engines import drain, key_server, run

GM = ("192.0.2.50", 848)


def groups(tmp_path, **second):
    g1 = dataclasses.replace(group_policy(tmp_path), protocols=("g-ikev2",))
    g2 = dataclasses.replace(group_policy(tmp_path, gid=GID + 1), protocols=("g-ikev2",), **second)
    return [g1, g2]


def registered(tmp_path, gs, who="gm1"):
    """A key server with ``gs`` and ``who`` registered to the first one by GSA_AUTH."""
    f, ks = key_server(tmp_path, gs)
    gi = f.member(dataclasses.replace(member_group(tmp_path, who), protocol="g-ikev2"), KS, NOW)
    run(ks, gi, addr=GM)
    assert gi.state == "registered"
    return f, ks, gi.gsa_auth


def register_again(tmp_path, ks, auth, gid, who="gm1", sender=False):
    mg = dataclasses.replace(member_group(tmp_path, who, gid=gid), protocol="g-ikev2", sender=sender)
    r = GsaRegistrationInitiator(member_auth_config(mg, sender=sender), auth.sa, auth.next_mid, auth.gcks)
    r.start(NOW)
    return r, run(ks, r, addr=GM)


def second_group_request(tmp_path, auth, gid=GID + 1):
    """gm1's GSA_REGISTRATION of group ``gid`` over ``auth``'s IKE SA: (initiator, request)."""
    mg = dataclasses.replace(member_group(tmp_path, "gm1", gid=gid), protocol="g-ikev2")
    r = GsaRegistrationInitiator(member_auth_config(mg), auth.sa, auth.next_mid, auth.gcks)
    r.start(NOW)
    [(req, _to)] = r.datagrams_to_send()
    return r, req


def test_another_group_over_the_same_ike_sa(tmp_path):
    gs = groups(tmp_path)
    f, ks, auth = registered(tmp_path, gs)
    r, (em, eg) = register_again(tmp_path, ks, auth, GID + 1)
    [got] = [e for e in em if isinstance(e, GsaRegistered)]
    assert got.group_id == GID + 1 and got.registered.key_server_id == auth.gcks
    [reg] = [e for e in eg if isinstance(e, MemberRegistered)]
    assert reg.group_id == GID + 1 and reg.identity.value == "gm1"
    # the keys are those of the second group, as a GSA_AUTH would have given them
    store = f.provider.store
    assert {t.spi for t in got.registered.teks} == {t.spi for t in store.teks(GID + 1)}
    assert store.member(GID + 1, "key-id:gm1").protocol == "g-ikev2"
    assert store.member_count(GID) == store.member_count(GID + 1) == 1
    assert ks.g_ikev2.auth.sa_count == 1 and ks.half_open == 0  # the one IKE SA, no new one


def test_a_copy_of_the_request_gets_the_same_answer_and_enrolls_once(tmp_path):
    f, ks, auth = registered(tmp_path, groups(tmp_path))
    r, req = second_group_request(tmp_path, auth)
    ks.receive_datagram(req, GM, NOW)
    ks.commit(NOW)
    [(answer, _a)] = ks.datagrams_to_send()
    ks.receive_datagram(req, GM, NOW)
    assert ks.datagrams_to_send() == [(answer, GM)]
    assert len([e for e in drain(ks) if isinstance(e, MemberRegistered)]) == 1
    r.receive_datagram(answer, KS, NOW)
    assert [type(e) for e in drain(r)] == [GsaRegistered]


def test_a_copy_of_a_request_waiting_for_the_commit_is_answered_after_it_and_enrolls_once(tmp_path):
    f, ks, auth = registered(tmp_path, groups(tmp_path))
    r, req = second_group_request(tmp_path, auth)
    ks.receive_datagram(req, GM, NOW)
    ks.receive_datagram(req, GM, NOW)  # retransmitted before the key server committed
    assert ks.datagrams_to_send() == [] and f.provider.store.member_count(GID + 1) == 0
    ks.commit(NOW)
    [(answer, a1), (copy, a2)] = ks.datagrams_to_send()
    assert answer == copy and a1 == a2 == GM
    assert len([e for e in drain(ks) if isinstance(e, MemberRegistered)]) == 1
    assert f.provider.store.member_count(GID + 1) == 1
    r.receive_datagram(answer, KS, NOW)
    assert [type(e) for e in drain(r)] == [GsaRegistered]


def test_refusals_come_as_a_notification_alone(tmp_path):
    gs = groups(tmp_path, authorization=Authorization((PskIdMatch("gm2"),)))
    f, ks, auth = registered(tmp_path, gs)
    _r, (em, eg) = register_again(tmp_path, ks, auth, GID + 1)
    [failed] = em
    assert isinstance(failed, GsaRegistrationFailed) and failed.notify == NotifyType.AUTHORIZATION_FAILED
    [refused] = [e for e in eg if isinstance(e, MemberRefused)]
    assert refused.group_id == GID + 1 and "gm1" in str(refused.identity)
    assert f.provider.store.member_count(GID + 1) == 0
    # the next request on the SA (Message ID + 1): an unknown group
    _r, (em, _eg) = register_again(tmp_path, ks, _Next(auth), 4242)
    [failed] = em
    assert failed.notify == NotifyType.INVALID_GROUP_ID


class _Next:
    """The same IKE SA, one Message ID further (the previous GSA_REGISTRATION used one)."""

    def __init__(self, auth) -> None:
        self.sa, self.next_mid, self.gcks = auth.sa, auth.next_mid + 1, auth.gcks


def test_requests_with_a_wrong_message_id_or_not_authentic_are_dropped(tmp_path):
    f, ks, auth = registered(tmp_path, groups(tmp_path))
    sa = auth.sa
    for mid in (auth.next_mid + 1, auth.mid):
        h = Header(sa.spi_i, sa.spi_r, ExchangeType.GSA_REGISTRATION, HeaderFlags.INITIATOR, mid)
        ks.receive_datagram(protect(h, (IdGroup(IdType.KEY_ID, (GID + 1).to_bytes(4, "big")),),
                                    SkCipher.for_message(sa.keys, h)), GM, NOW)
        ks.commit(NOW)
        assert ks.datagrams_to_send() == []
    h = Header(sa.spi_i, sa.spi_r, ExchangeType.GSA_REGISTRATION, HeaderFlags.INITIATOR, auth.next_mid)
    good = protect(h, (IdGroup(IdType.KEY_ID, (GID + 1).to_bytes(4, "big")),), SkCipher.for_message(sa.keys, h))
    ks.receive_datagram(good[:-1] + bytes([good[-1] ^ 1]), GM, NOW)  # ICV broken
    ks.receive_datagram(good, ("192.0.2.99", 848), NOW)  # not the IKE SA's peer
    ks.commit(NOW)
    assert ks.datagrams_to_send() == [] and f.provider.store.member_count(GID + 1) == 0
    ks.receive_datagram(good, GM, NOW)
    ks.commit(NOW)
    [(answer, _a)] = ks.datagrams_to_send()
    assert unprotect(answer, SkCipher.for_sender(sa.keys, initiator=False)).get(IdGroup) is None


def test_member_that_leaves_a_group_is_reported(tmp_path):
    f, ks, auth = registered(tmp_path, groups(tmp_path))
    sa = auth.sa
    h = Header(sa.spi_i, sa.spi_r, ExchangeType.GSA_REGISTRATION, HeaderFlags.INITIATOR, auth.next_mid)
    req = protect(h, (IdGroup(IdType.KEY_ID, GID.to_bytes(4, "big")), Notify(0, NotifyType.NO_PROPOSAL_CHOSEN)),
                  SkCipher.for_message(sa.keys, h))
    ks.receive_datagram(req, GM, NOW)
    [(answer, _a)] = ks.datagrams_to_send()
    msg = unprotect(answer, SkCipher.for_sender(sa.keys, initiator=False))
    assert msg.all(Notify) == () and msg.get(IdGroup) is None  # SK{}
    [left] = [e for e in drain(ks) if isinstance(e, GsaMemberLeft)]
    assert (left.group_id, left.member, left.notify) == (GID, "key-id:gm1", NotifyType.NO_PROPOSAL_CHOSEN)


def test_member_refusing_the_policy_tells_the_gcks_in_gsa_registration(tmp_path, monkeypatch):
    """RFC 9838 §2.3.1: a member that cannot use the policy the GCKS sent says so with
    GSA_REGISTRATION (IDg, NO_PROPOSAL_CHOSEN), not INFORMATIONAL."""
    import gkm.ikev2.registration as reg
    from gkm.ikev2.gsa_map import MappingError

    def unusable(*_a, **_k):
        raise MappingError("test: not this policy")
    gs = groups(tmp_path)
    f, ks = key_server(tmp_path, gs)
    gi = f.member(dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2"), KS, NOW)
    monkeypatch.setattr(reg, "read_group", unusable)
    em, eg = run(ks, gi, addr=GM)
    assert gi.state == "failed"
    [left] = [e for e in eg if isinstance(e, GsaMemberLeft)]
    assert left.group_id == GID and left.notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_a_group_requiring_a_ppk_over_an_ike_sa_without_one_is_refused(tmp_path):
    """RFC 8784: the second group's ``ppk = "required"`` is checked on GSA_REGISTRATION too,
    against the PPK the IKE SA's GSA_AUTH used (none here)."""
    f, ks, auth = registered(tmp_path, groups(tmp_path, ppk="required"))
    assert not auth.ppk_used
    _r, (em, eg) = register_again(tmp_path, ks, auth, GID + 1)
    [refused] = [e for e in eg if isinstance(e, MemberRefused)]
    assert refused.notify == NotifyType.AUTHENTICATION_FAILED and refused.cause == "ppk_required"
    assert not [e for e in em if isinstance(e, GsaRegistered)]
    assert f.provider.store.member_count(GID + 1) == 0
    # the IKE SA still takes the groups that do not require one
    mg = dataclasses.replace(member_group(tmp_path, "gm1", gid=GID), protocol="g-ikev2")
    again = GsaRegistrationInitiator(member_auth_config(mg), auth.sa, _r.next_mid, auth.gcks)
    again.start(NOW)
    em2, _eg2 = run(ks, again, addr=GM)
    assert [type(e) for e in em2] == [GsaRegistered]
