"""GSA_AUTH (RFC 9838 §2.3) in memory with real crypto and a real key store, after a real
IKE_SA_INIT (+ ML-KEM-768 IKE_INTERMEDIATE): every auth method and key exchange combination,
and the failures (wrong PSK, untrusted/expired certificate, unauthorized identity, unknown
group, GCKS not accepted, ML-KEM required but not offered, tampered and replayed messages)."""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager

import pytest

from gkm.gdoi import MemberRefused, MemberRegistered, StoreKeysProvider
from gkm.ike.config import CertCredential, Identity as WireId
from gkm.ikev2 import KeyExchangeMethod as KEM, NotifyType
from gkm.ikev2.auth import CertAuth, PskAuth
from gkm.ikev2.constants import Encr, KeyWrap, Prf
from gkm.ikev2.events import GsaPeerRefused, GsaRegistered, GsaRegistrationFailed, SaInitEstablished, SaInitFailed
from gkm.ikev2.gsa_map import rekey_sa_keys
from gkm.ikev2.keys import Suite
from gkm.ikev2.gcks_registration import GcksAuthConfig, GsaAuthResponder
from gkm.ikev2.registration import GsaAuthInitiator, MemberAuthConfig
from gkm.ikev2.sa_init import SaInitConfig, SaInitInitiator, SaInitResponder
from gkm.store import KeyStore
from policy.model import Authorization, KeyServerAddress, MemberGroup, PskCredential, Secret, SubjectMatch
from tests.unit.ike_data.helpers import ca, leaf
from tests.unit.test_gdoi_support import GID, NOW, PSKS, group_policy

GCM = Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256)
KS, GM = ("192.0.2.1", 848), ("192.0.2.10", 848)
ROOT = ca("Test Root CA")[0]


def drain(engine) -> list:
    out = []
    while (e := engine.next_event()) is not None:
        out.append(e)
    return out


def ks_accepts(who="CN=ks,O=msec test"):
    mg = MemberGroup(GID, (KeyServerAddress(KS[0]),), PskCredential("gm1", Secret(b"x" * 20)),
                     key_server_authorization=Authorization((SubjectMatch(who),)))
    return mg.accepts_key_server


def psk_member(who="gm1", secret=None, gid=GID, **kw) -> MemberAuthConfig:
    mg = MemberGroup(gid, (KeyServerAddress(KS[0]),), PskCredential(who, Secret(secret or PSKS[who])))
    return MemberAuthConfig(gid, PskAuth(WireId.key_id(who.encode()), secret or PSKS[who]), mg.accepts_key_server, **kw)


def cert_member(kind="p256", cn="gm1", accepts=None, **kw) -> MemberAuthConfig:
    c, k = leaf(kind, cn, **kw)
    return MemberAuthConfig(GID, CertAuth(CertCredential(c, k)), accepts or ks_accepts(), (ROOT,))


def gcks_config(cert: bool) -> GcksAuthConfig:
    psks = {WireId.key_id(i.encode()): s for i, s in PSKS.items()}
    if cert:
        c, k = leaf("p256", "ks")
        return GcksAuthConfig(CertAuth(CertCredential(c, k)), psks, (ROOT,), rekey_source=KS)
    return GcksAuthConfig(PskAuth(WireId.key_id(b"gcks"), b""), psks, (ROOT,), rekey_source=KS)


KWA = (KeyWrap.KW_5649_256, KeyWrap.KW_5649_128)


class World:
    """A GCKS (SA_INIT responder + GSA_AUTH responder on a real store) and member configs; both
    negotiate a key wrap algorithm unless ``kwa=()`` (a peer without one: the fallback)."""

    def __init__(self, tmp_path, *, cert_gcks=False, lkh=False, groups=None, group=(KEM.ECP256,), i_pq="no", r_pq="optional",
                 kwa=KWA):
        self.store = KeyStore(tmp_path / "state")
        self.provider = StoreKeysProvider(self.store, lkh=lkh)
        self.groups = groups or {GID: group_policy(tmp_path)}
        self.sa_r = SaInitResponder(SaInitConfig(GCM, (KEM.ECP256, KEM.CURVE25519), r_pq, kwa=KWA))
        self.gcks = GsaAuthResponder(gcks_config(cert_gcks), self.groups, self.provider)
        self.i_cfg = SaInitConfig(GCM, group, i_pq, kwa=kwa)
        self.log: list = []

    def establish(self):
        ini = SaInitInitiator(self.i_cfg, KS)
        ini.start(NOW)
        for _ in range(4):
            for d, _a in ini.datagrams_to_send():
                self.sa_r.receive_datagram(d, GM, NOW)
            for d, _a in self.sa_r.datagrams_to_send():
                ini.receive_datagram(d, KS, NOW)
        ei, er = drain(ini), drain(self.sa_r)
        if not (ei and isinstance(ei[0], SaInitEstablished)):
            return ei, er
        self.gcks.add_sa(er[0], NOW)
        return ei[0], er[0]

    def register(self, member_cfg: MemberAuthConfig, *, tamper=None, drop=None, rounds=6):
        est, _ = self.establish()
        m = GsaAuthInitiator(member_cfg, est)
        m.start(NOW)
        n = 0
        for _ in range(rounds):
            moved = False
            for d, a in m.datagrams_to_send():
                assert a == KS
                self.log.append(("up", d))
                moved = True
                if drop and drop("up", n, d):
                    continue
                self.gcks.receive_datagram(tamper("up", n, d) if tamper else d, GM, NOW)
                n += 1
            self.gcks.commit(NOW)  # the shell's durable step: registrations are enrolled and answered
            for d, a in self.gcks.datagrams_to_send():
                assert a == GM
                self.log.append(("down", d))
                moved = True
                if drop and drop("down", n, d):
                    continue
                m.receive_datagram(tamper("down", n, d) if tamper else d, KS, NOW)
                n += 1
            if not moved:
                if m.state == "sent":
                    m.retransmit()
                    continue
                break
        return m, drain(m), drain(self.gcks)


def _ok(w: World, em, eg, identity_kind="key-id", first_message_id=0):
    assert len(em) == 1 and isinstance(em[0], GsaRegistered), em
    assert len(eg) == 1 and isinstance(eg[0], MemberRegistered), eg
    reg = em[0].registered
    keys = w.provider.peek(w.groups[GID], int(NOW))
    assert [t.spi for t in reg.teks] == [t.spi for t in keys.teks] == list(eg[0].tek_spis)
    for got, want in zip(reg.teks, keys.teks):
        assert (got.keymat, got.auth_key, got.suite) == (want.enc_keymat, want.auth_key, want.suite)
    kp = w.groups[GID].kek
    assert reg.kek.spi == keys.kek.spi and reg.kek.signing_public_key == keys.kek.public_key
    assert (reg.kek.dst, reg.kek.dst_port) == (ipaddress.ip_network("239.192.0.1/32"), kp.rekey_port)
    assert (reg.kek.src, reg.kek.src_port) == (ipaddress.ip_network(KS[0] + "/32"), KS[1])
    rk = rekey_sa_keys(keys.kek.keymat, keys.kek.spi, kp.cipher.key_length_bits, em[0].rekey_sa.kwa)
    assert em[0].rekey_sa.keys == rk and reg.kek.key == rk.gsk_e and em[0].auth_key == keys.kek.public_key
    assert em[0].signature.name == "ecdsa-p256-sha256" and em[0].rekey_sa.initial_message_id == first_message_id
    assert reg.seq == first_message_id  # the SEQ before the next GSA_REKEY (Message ID = SEQ - 1)
    assert reg.gap.activation_s == w.groups[GID].activation_delay_s
    assert eg[0].identity.kind.value == identity_kind
    assert len(w.store.members(GID)) == 1
    return reg


@pytest.mark.parametrize("mlkem", ["no", "required"], ids=["classic", "mlkem"])
@pytest.mark.parametrize("group", [KEM.ECP256, KEM.CURVE25519], ids=["p256", "x25519"])
@pytest.mark.parametrize("method", ["psk", "p256", "rsa", "ed25519"], ids=["psk", "ecdsa", "rsa-pss", "ed25519"])
def test_registration(tmp_path, method, group, mlkem):
    w = World(tmp_path, cert_gcks=method != "psk", group=(group,), i_pq=mlkem)
    cfg = psk_member() if method == "psk" else cert_member(method)
    m, em, eg = w.register(cfg)
    reg = _ok(w, em, eg, "key-id" if method == "psk" else "dn")
    assert m.mid == (2 if mlkem == "required" else 1)
    assert reg.key_server_id.kind.value == ("key-id" if method == "psk" else "dn")
    # no sender: inbound only (RFC 9838 §2.3.3)
    assert {t.direction.name for t in reg.teks} == {"RECEIVER_ONLY"}


@pytest.mark.parametrize("lkh", [False, True], ids=["plain", "lkh"])
def test_member_without_key_wrap_negotiation_gets_the_fallback(tmp_path, lkh):
    w = World(tmp_path, lkh=lkh, kwa=())
    m, em, eg = w.register(psk_member())
    assert m.sa.kwa == 0
    _ok(w, em, eg)


def test_sender_and_lkh_path(tmp_path):
    w = World(tmp_path, lkh=True)
    m, em, eg = w.register(psk_member(sender=True))
    reg = _ok(w, em, eg)
    assert {t.direction.name for t in reg.teks} == {"SYMMETRIC"}
    path = em[0].key_path
    assert path.ids and all(i > 0 for i in path.ids)  # the member holds its LKH path, root first
    # a second member gets the same group keys through its own path
    _m2, em2, eg2 = w.register(psk_member("gm2"))
    assert em2[0].rekey_sa == em[0].rekey_sa and em2[0].key_path.ids[0] == path.ids[0]


def _refused(em, eg, notify, gcks_identity=True):
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and em[0].notify == notify, em
    assert len(eg) == 1 and isinstance(eg[0], MemberRefused) and eg[0].notify == notify, eg
    assert (eg[0].identity is not None) == gcks_identity
    return em[0], eg[0]


def test_wrong_psk(tmp_path):
    w = World(tmp_path)
    _m, em, eg = w.register(psk_member(secret=b"not the secret of gm1 at all"))
    f, r = _refused(em, eg, NotifyType.AUTHENTICATION_FAILED, gcks_identity=False)
    assert "pre-shared key" in r.reason and "AUTHENTICATION_FAILED" in f.reason
    assert w.store.group(GID) is None or not w.store.members(GID)


def test_unknown_psk_identity(tmp_path):
    w = World(tmp_path)
    _m, em, eg = w.register(psk_member("gm9", secret=b"some secret nobody has 123"))
    _refused(em, eg, NotifyType.AUTHENTICATION_FAILED, gcks_identity=False)


@pytest.mark.parametrize("kw,why", [({"issuer": "Other CA"}, "not trusted"), ({"expired": True}, "expired")])
def test_bad_certificate(tmp_path, kw, why):
    w = World(tmp_path, cert_gcks=True)
    _m, em, eg = w.register(cert_member(**kw))
    _f, r = _refused(em, eg, NotifyType.AUTHENTICATION_FAILED, gcks_identity=False)
    assert why in r.reason


def test_unauthorized_identity(tmp_path):
    w = World(tmp_path)
    _m, em, eg = w.register(psk_member("intruder"))
    f, r = _refused(em, eg, NotifyType.AUTHORIZATION_FAILED)
    assert r.identity.value == "intruder" and "AUTHORIZATION_FAILED" in f.reason
    assert w.store.group(GID) is None or not w.store.members(GID)


def test_unauthorized_certificate_subject(tmp_path):
    w = World(tmp_path, cert_gcks=True)
    _m, em, eg = w.register(cert_member(cn="mallory"))
    _refused(em, eg, NotifyType.AUTHORIZATION_FAILED)


def test_unknown_group(tmp_path):
    w = World(tmp_path)
    _m, em, eg = w.register(psk_member(gid=999))
    _refused(em, eg, NotifyType.INVALID_GROUP_ID)


def test_gcks_not_accepted_by_member(tmp_path):
    w = World(tmp_path, cert_gcks=True)
    _m, em, eg = w.register(cert_member(accepts=ks_accepts("CN=someone else,O=msec test")))
    assert len(em) == 1 and isinstance(em[0], GsaRegistrationFailed) and em[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert "refused" in em[0].reason
    # the GCKS registered the member, then heard why the member gave up
    assert [type(e) for e in eg] == [MemberRegistered, GsaPeerRefused] and eg[1].notify == NotifyType.AUTHENTICATION_FAILED


def test_gcks_with_untrusted_certificate(tmp_path):
    w = World(tmp_path, cert_gcks=True)
    c, k = leaf("p256", "ks", issuer="Other CA")
    w.gcks.config = GcksAuthConfig(CertAuth(CertCredential(c, k)), w.gcks.config.psks, (ROOT,), rekey_source=KS)
    _m, em, eg = w.register(cert_member())
    assert isinstance(em[0], GsaRegistrationFailed) and "not trusted" in em[0].reason
    assert isinstance(eg[-1], GsaPeerRefused)


def test_mlkem_required_but_not_offered(tmp_path):
    w = World(tmp_path, i_pq="no", r_pq="required")
    ei, er = w.establish()
    assert isinstance(ei[0], SaInitFailed) and isinstance(er[0], SaInitFailed)
    assert "ML-KEM-768 is required" in er[0].reason and w.gcks.sa_count == 0


@pytest.mark.parametrize("direction", ["up", "down"])
def test_tampered_message_is_dropped_then_retransmission_succeeds(tmp_path, direction):
    w = World(tmp_path)
    hit = []

    def tamper(d, n, data):
        if d == direction and not hit:
            hit.append(n)
            b = bytearray(data)
            b[-5] ^= 0x40  # inside the ICV / ciphertext
            return bytes(b)
        return data

    _m, em, eg = w.register(psk_member(), tamper=tamper)
    assert hit
    _ok(w, em, eg)
    assert w.gcks.stats["dropped"] == (1 if direction == "up" else 0)


def test_replayed_request_gets_the_stored_response_and_no_second_enrollment(tmp_path):
    w = World(tmp_path)
    m, em, eg = w.register(psk_member())
    _ok(w, em, eg)
    request = next(d for x, d in w.log if x == "up")
    response = next(d for x, d in w.log if x == "down")
    w.gcks.receive_datagram(request, GM, NOW)
    assert w.gcks.datagrams_to_send() == [(response, GM)] and drain(w.gcks) == []
    assert len(w.store.members(GID)) == 1
    m.receive_datagram(response, KS, NOW)  # a replayed response changes nothing for the member
    assert drain(m) == [] and m.datagrams_to_send() == []
    # the same request under another IKE SA (other SPIs in its header) is not this SA's
    est, _ = w.establish()
    forged = request[:8] + est.spi_r + request[16:]
    w.gcks.receive_datagram(forged, GM, NOW)
    assert w.gcks.datagrams_to_send() == [] and drain(w.gcks) == [] and w.gcks.stats["dropped"] == 1


@pytest.mark.parametrize("cert", [False, True], ids=["psk", "ecdsa"])
def test_malformed_address_id_is_refused_not_raised(tmp_path, cert):
    """An ID_IPV4_ADDR of 3 bytes (found by tools/fuzz): the reason names it without parsing it."""
    w = World(tmp_path, cert_gcks=cert)
    cfg = cert_member() if cert else psk_member()
    bad = CertAuth(cfg.credential.credential, WireId(1, b"gm1")) if cert else PskAuth(WireId(1, b"gm1"), PSKS["gm1"])
    _m, em, eg = w.register(MemberAuthConfig(GID, bad, cfg.accepts_key_server, cfg.trust_anchors))
    _f, r = _refused(em, eg, NotifyType.AUTHENTICATION_FAILED, gcks_identity=False)
    assert "ID type 1 with 3 bytes" in r.reason


def _group_with(tmp_path, **tek_kw):
    from dataclasses import replace
    g = group_policy(tmp_path)
    return {GID: replace(g, teks=tuple(replace(t, **tek_kw) for t in g.teks))}


def test_transport_mode_group(tmp_path):
    from policy.model import Mode
    w = World(tmp_path, groups=_group_with(tmp_path, mode=Mode.TRANSPORT))
    _m, em, eg = w.register(psk_member())
    reg = _ok(w, em, eg)
    assert {(t.mode, t.address_preservation.name) for t in reg.teks} == {(Mode.TRANSPORT, "NONE")}
    # and a tunnel-mode group's TEKs keep their addresses (RFC 5374 address preservation)
    w2 = World(tmp_path / "tunnel")
    _m, em2, eg2 = w2.register(psk_member())
    assert {t.address_preservation.name for t in _ok(w2, em2, eg2).teks} == {"SOURCE_AND_DESTINATION"}


def test_group_sender_from_a_member_no_tek_lets_send(tmp_path):
    from policy.model import PskIdMatch
    w = World(tmp_path, groups=_group_with(tmp_path, senders=Authorization((PskIdMatch("gm1"),)), replay_window=0))
    _m, em, eg = w.register(psk_member("gm2", sender=True))
    _f, r = _refused(em, eg, NotifyType.AUTHORIZATION_FAILED)
    assert "may not send" in r.reason
    _m, em, eg = w.register(psk_member("gm1", sender=True))
    assert isinstance(em[0], GsaRegistered)


@pytest.mark.parametrize("cert", [False, True], ids=["psk", "ecdsa"])
def test_configs_from_policy(tmp_path, cert):
    """The same policy files the GDOI key server and member use configure GSA_AUTH."""
    from gkm.ikev2.gcks_registration import gcks_auth_config
    from gkm.ikev2.registration import member_auth_config
    from tests.unit.test_gdoi_support import ks_settings, member_group
    w = World(tmp_path)
    w.gcks.config = gcks_auth_config(ks_settings(tmp_path, list(w.groups.values()), cert=cert), rekey_source=KS)
    _m, em, eg = w.register(member_auth_config(member_group(tmp_path, "gm2", cert=cert)))
    reg = _ok(w, em, eg, "dn" if cert else "key-id")
    assert reg.key_server_id.value == ("CN=ks,O=msec test" if cert else KS[0])


@pytest.mark.parametrize("lkh", [False, True], ids=["plain", "lkh"])
def test_registered_member_follows_a_gsa_rekey(tmp_path, lkh):
    """What GSA_AUTH hands over is enough for GSA_REKEY: the GCKS's RekeySender on the group's
    Rekey SA (from the same store) signs a TEK rekey, the member's RekeyReceiver built from
    GsaRegistered applies it."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from gkm.ikev2.constants import GcAuth
    from gkm.gdoi.keys import GroupTek
    from gkm.ikev2.gsa_map import rekey_sa_for
    from gkm.ikev2.rekey import MemberConfig, RekeyApplied, RekeyReceiver, RekeySender
    from policy.model import AddressPreservation, Mode, SaDirection
    w = World(tmp_path, lkh=lkh)
    w.gcks.rekey_message_id = lambda group, spi: 7  # the sender already sent 7 GSA_REKEYs on this SA
    _m, em, eg = w.register(psk_member())
    reg = _ok(w, em, eg, first_message_id=7)
    g = em[0]
    group = w.groups[GID]
    sa = rekey_sa_for(group, w.provider.peek(group, int(NOW)), g.rekey_sa.kwa, int(NOW), KS, 7)
    assert sa == g.rekey_sa  # the GCKS side recomputes the same Rekey SA from the store
    signing = load_pem_private_key(group.kek.signing_key.read_bytes(), None)
    tx = RekeySender(sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=g.signature, signing_key=signing)
    rx = RekeyReceiver(MemberConfig(GID, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION, SaDirection.RECEIVER_ONLY),
                       g.rekey_sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=g.signature, auth_key=g.auth_key,
                       key_path=g.key_path)
    new_tek = GroupTek(GID, 0x12345678, reg.teks[0].selector, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION,
                                    SaDirection.RECEIVER_ONLY, reg.teks[0].suite, bytes(len(reg.teks[0].keymat)),
                                    bytes(len(reg.teks[0].auth_key)), 600)
    [ev] = rx.receive(tx.build(teks=((new_tek, ()),)))
    assert isinstance(ev, RekeyApplied) and ev.message_id == 7 and [t.spi for t in ev.teks] == [0x12345678]


@pytest.mark.parametrize("lkh,kwa,ok", [(False, "256", True), (False, "128", True), (True, "256", True), (True, "128", False)],
                         ids=["kwa256", "kwa128", "lkh-kwa256", "lkh-kwa128-refused"])
def test_negotiated_key_wrap_algorithm(tmp_path, lkh, kwa, ok):
    alg = {"128": KeyWrap.KW_5649_128, "256": KeyWrap.KW_5649_256}[kwa]
    w = World(tmp_path, lkh=lkh, kwa=(alg,))
    m, em, eg = w.register(psk_member())
    assert m.sa.kwa == alg
    if ok:
        _ok(w, em, eg)
        # the Rekey SA's KWA follows its keys: the LKH tree's 32-byte keys, else the 128-bit KEK cipher
        assert em[0].rekey_sa.kwa == (KeyWrap.KW_5649_256 if lkh else KeyWrap.KW_5649_128)
    else:
        _f, r = _refused(em, eg, NotifyType.TEMPORARY_FAILURE)
        assert "does not fit" in r.reason
        assert w.store.group(GID) is None or not w.store.members(GID)  # the enrollment was undone


# ------------------------------------------------------------------------------------ group commit


def _count_transactions(store: KeyStore) -> list:
    """Wrap the real store's ``transaction`` (it still does all the work) to count the outermost
    ones that committed: one durable commit each (WAL and anchor fsync'ed)."""
    real, depth, committed = store.transaction, [0], [0]

    @contextmanager
    def counted():
        depth[0] += 1
        try:
            with real() as st:
                yield st
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            committed[0] += 1

    store.transaction = counted
    return committed


def _burst(w: World, members, configs=None):
    """One GSA_AUTH request of each member (``configs``: its IKE_SA_INIT's), each on an IKE SA
    of its own, fed to the GCKS before any commit; returns the member engines and requests."""
    engines = []
    for i, cfg in enumerate(members):
        if configs is not None:
            w.i_cfg = configs[i]
        est, _ = w.establish()
        m = GsaAuthInitiator(cfg, est)
        m.start(NOW)
        [(req, _a)] = m.datagrams_to_send()
        engines.append((m, req))
    for _m, req in engines:
        w.gcks.receive_datagram(req, GM, NOW)
    return engines


def _deliver(w: World, engines) -> dict:
    """The GCKS's answers to the members (by IKE SA), their events."""
    by_spi = {m.sa.spi_i: m for m, _req in engines}
    for d, a in w.gcks.datagrams_to_send():
        assert a == GM
        by_spi[d[:8]].receive_datagram(d, KS, NOW)
    return {id(m): drain(m) for m, _req in engines}


@pytest.mark.parametrize("lkh", [False, True], ids=["plain", "lkh"])
def test_a_burst_of_gsa_auths_is_enrolled_in_one_commit_and_answered_after_it(tmp_path, lkh):
    w = World(tmp_path, lkh=lkh)
    commits = _count_transactions(w.store)
    generation = w.store.generation
    who = ["gm1", "gm2", "gm3", "gm1"]  # gm1 again on another IKE SA (a member that started over)
    engines = _burst(w, [psk_member(x, sender=x == "gm1") for x in who])
    # nothing on the wire, reported or durable before the commit
    assert w.gcks.datagrams_to_send() == [] and drain(w.gcks) == []
    assert w.store.group(GID) is None and commits[0] == 0 and w.gcks.commit_pending == 4
    w.gcks.commit(NOW)
    assert commits[0] == 1 and w.gcks.commit_pending == 0
    assert w.store.generation == generation + 1  # the keys (and LKH tree) written in that one commit
    got = _deliver(w, engines)
    eg = drain(w.gcks)
    assert [type(e) for e in eg] == [MemberRegistered] * 4
    assert [e.identity.value for e in eg] == who  # in the order the requests came
    assert all(len(got[id(m)]) == 1 and isinstance(got[id(m)][0], GsaRegistered) for m, _r in engines)
    assert len({tuple(t.spi for t in got[id(m)][0].registered.teks) for m, _r in engines}) == 1  # the same keys
    assert sorted(m.identity for m in w.store.members(GID)) == ["key-id:gm1", "key-id:gm2", "key-id:gm3"]
    # the two sender registrations of gm1 got a Sender-ID each, never the same one
    sids = [got[id(m)][0].sender_ids for (m, _r), x in zip(engines, who) if x == "gm1"]
    assert all(sids) and not set(sids[0]) & set(sids[1])
    assert w.gcks.stats["registered"] == 4 and w.gcks.stats["commits"] == 1 and w.gcks.stats["batches_undone"] == 0
    w.gcks.commit(NOW)  # nothing queued: no store commit
    assert commits[0] == 1


def test_one_registration_that_fails_at_mapping_does_not_refuse_the_others_of_its_commit(tmp_path):
    """An LKH group over an IKE SA whose only key wrap algorithm is AES-128 KW cannot carry the
    LKH path (test_negotiated_key_wrap_algorithm): that one is refused, the others of the same
    burst enrolled, each in a commit of its own after the group commit was undone."""
    w = World(tmp_path, lkh=True)
    commits = _count_transactions(w.store)
    ok, bad = SaInitConfig(GCM, (KEM.ECP256,), "no", kwa=KWA), SaInitConfig(GCM, (KEM.ECP256,), "no", kwa=(KeyWrap.KW_5649_128,))
    engines = _burst(w, [psk_member("gm1"), psk_member("gm2"), psk_member("gm3")], [ok, bad, ok])
    assert w.gcks.datagrams_to_send() == []
    w.gcks.commit(NOW)
    assert w.gcks.stats["batches_undone"] == 1 and commits[0] == 2  # the batch rolled back, then one each
    got = _deliver(w, engines)
    eg = drain(w.gcks)
    assert [type(e) for e in eg] == [MemberRegistered, MemberRefused, MemberRegistered]
    assert [e.identity.value for e in eg] == ["gm1", "gm2", "gm3"]
    assert eg[1].notify == NotifyType.TEMPORARY_FAILURE and "does not fit" in eg[1].reason
    (m1, _), (m2, _), (m3, _) = engines
    assert isinstance(got[id(m1)][0], GsaRegistered) and isinstance(got[id(m3)][0], GsaRegistered)
    [failed] = got[id(m2)]
    assert isinstance(failed, GsaRegistrationFailed) and failed.notify == NotifyType.TEMPORARY_FAILURE
    assert sorted(m.identity for m in w.store.members(GID)) == ["key-id:gm1", "key-id:gm3"]
    # the LKH tree holds the two enrolled members only (the undone batch's joins reloaded away)
    assert sorted(m for m, _leaf in w.store.load_lkh(GID).members()) == ["key-id:gm1", "key-id:gm3"]
    assert got[id(m1)][0].key_path.ids[0] == got[id(m3)][0].key_path.ids[0]


def test_a_copy_of_a_queued_gsa_auth_is_answered_after_the_commit_and_enrolled_once(tmp_path):
    w = World(tmp_path)
    [(m, req)] = _burst(w, [psk_member()])
    w.gcks.receive_datagram(req, GM, NOW)  # the member retransmitted before the commit
    w.gcks.receive_datagram(req, ("192.0.2.77", 4500), NOW)  # and once more from elsewhere
    assert w.gcks.datagrams_to_send() == [] and w.gcks.commit_pending == 1
    w.gcks.commit(NOW)
    [(answer, a1), (copy1, a2), (copy2, a3)] = w.gcks.datagrams_to_send()
    assert answer == copy1 == copy2 and (a1, a2, a3) == (GM, GM, ("192.0.2.77", 4500))
    assert [type(e) for e in drain(w.gcks)] == [MemberRegistered] and len(w.store.members(GID)) == 1
    m.receive_datagram(answer, KS, NOW)
    assert [type(e) for e in drain(m)] == [GsaRegistered]
