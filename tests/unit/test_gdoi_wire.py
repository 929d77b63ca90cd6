"""GROUPKEY-PULL on the wire: decrypted messages field by field against the policy, HASH(1..4)
recomputed independently from RFC 6407 section 3.2, crafted replies the member must refuse,
tampered and malformed datagrams dropped without exceptions."""

from __future__ import annotations

import hmac
import ipaddress
import struct

import pytest

from gkm import wire
from gkm.gdoi import PullInitiator, PullState, Registered, RegistrationFailed, RegistrationState
from gkm.gdoi import policy_wire as pw
from gkm.gdoi.pull import seal
from gkm.ike import Phase1Established
from gkm.store import KeyState
from gkm.wire import Attribute, Gap, GdoiSa, KeyDownload, KeyPacket, Nonce, SaKek, SaTek, Sequence, var_int
from gkm.wire.constants import GapAttr, IdType, IpsecAttr, KdType, KekAttr, KekKeyAttr, PayloadType, TekKeyAttr
from policy.model import SaDirection
from tests.unit.test_gdoi_support import GID, KS, NOW, events, group_policy, key_server, member, member_addr, pump, register

PULL = 32


def _pull_messages(log):
    return [(d, a, data) for d, a, data in log if data[18] == PULL]


def _decrypt_exchange(sa, msgs):
    """Decrypt the four messages with the RFC 2409 Appendix B IV chain; plaintext bodies."""
    mid = struct.unpack("!I", msgs[0][20:24])[0]
    iv = sa.phase2_iv(mid)
    out = []
    for data in msgs:
        assert struct.unpack("!I", data[20:24])[0] == mid and data[19] & 1
        pt = sa.decrypt(iv, data[28:])
        iv = data[-sa.block_size:]
        out.append(pt)
    return mid, out


def _chain_end(pt: bytes, first: int) -> list[tuple[int, int, int]]:
    """(type, start, end) of each top-level payload (walk NP/Length)."""
    pos, np, res = 0, first, []
    while np:
        nnp, _r, length = struct.unpack_from("!BBH", pt, pos)
        res.append((np, pos, pos + length))
        np, pos = nnp, pos + length
    return res


def test_wire_messages_match_policy_and_hashes(tmp_path):
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    log = register(ks, {member_addr(0): m})
    (reg,) = events(m)
    assert isinstance(reg, Registered)
    sa = m.phase1_sa
    msgs = [data for _d, _a, data in _pull_messages(log)]
    assert len(msgs) == 4
    mid, pts = _decrypt_exchange(sa, msgs)
    decoded = [wire.decode_message(data[:28] + pt, block_size=16) for data, pt in zip(msgs, pts)]
    assert [tuple(p.TYPE for p in d.payloads) for d in decoded] == [
        (PayloadType.HASH, PayloadType.NONCE, PayloadType.ID),
        (PayloadType.HASH, PayloadType.NONCE, PayloadType.SA),
        (PayloadType.HASH,),
        (PayloadType.HASH, PayloadType.SEQ, PayloadType.KD),
    ]
    # HASH(n) = prf(SKEYID_a, M-ID | ... ) over the verbatim payloads after HASH, no padding
    m_id = msgs[0][20:24]
    spans = [_chain_end(pt, data[16]) for data, pt in zip(msgs, pts)]
    after = [pt[s[0][2]:s[-1][2]] for pt, s in zip(pts, spans)]
    ni_b, nr_b = decoded[0].payloads[1].data, decoded[1].payloads[1].data
    prf = lambda data: hmac.new(sa.skeyid_a, data, "sha256").digest()  # noqa: E731 (phase 1 hash SHA2-256)
    assert decoded[0].payloads[0].data == prf(m_id + after[0])
    assert decoded[1].payloads[0].data == prf(m_id + ni_b + after[1])
    assert decoded[2].payloads[0].data == prf(m_id + ni_b + nr_b)
    assert decoded[3].payloads[0].data == prf(m_id + ni_b + nr_b + after[3])
    # message 1: ID_KEY_ID with the 4-octet group number (RFC 6407 section 5.1), 32-byte nonce
    idp = decoded[0].payloads[2]
    assert (idp.id_type, idp.data, idp.protocol, idp.port) == (IdType.KEY_ID, GID.to_bytes(4, "big"), 0, 0)
    assert len(ni_b) == 32 and len(nr_b) == 32
    # message 2: SA = SAK, GAP, SAT(video), SAT(control), field by field against the policy
    policy = group_policy(tmp_path)
    gsa = decoded[1].payloads[2]
    assert isinstance(gsa, GdoiSa) and gsa.situation == 0
    sak, gap, sat_v, sat_c = gsa.payloads
    assert isinstance(gap, Gap) and gap.attributes == (
        (GapAttr.ACTIVATION_TIME_DELAY, policy.activation_delay_s),
        (GapAttr.DEACTIVATION_TIME_DELAY, policy.deactivation_delay_s))
    assert reg.gap == pw.GapDelays(policy.activation_delay_s, policy.deactivation_delay_s)
    kek = store.current_kek(GID)
    assert isinstance(sak, SaKek) and sak.spi == kek.spi and sak.protocol == 17
    assert (sak.src.id_type, sak.src.value(), sak.src.port) == (IdType.IPV4_ADDR, ipaddress.ip_address(KS[0]), 848)
    assert (sak.dst.id_type, sak.dst.value(), sak.dst.port) == (IdType.IPV4_ADDR, policy.kek.rekey_address, 848)
    sa_attrs = dict(sak.attributes)
    assert sa_attrs[KekAttr.KEK_ALGORITHM] == 3 and sa_attrs[KekAttr.KEK_KEY_LENGTH] == 128
    assert 86390 <= int.from_bytes(sa_attrs[KekAttr.KEK_KEY_LIFETIME], "big") <= 86400
    assert sa_attrs[KekAttr.SIG_ALGORITHM] == 4 and sa_attrs[KekAttr.SIG_HASH_ALGORITHM] == 3
    assert sa_attrs[KekAttr.SIG_KEY_LENGTH] == 256 and KekAttr.KEK_MANAGEMENT_ALGORITHM not in sa_attrs
    teks = {t.algorithm.split("/")[0]: t for t in store.teks(GID, KeyState.CURRENT)}
    for sat, tp in ((sat_v, policy.teks[0]), (sat_c, policy.teks[1])):
        assert isinstance(sat, SaTek) and sat.protocol_id == 1 and sat.spi == teks[tp.name].spi
        sel = tp.selector
        assert sat.protocol == sel.protocol and sat.src.port == sel.src_port and sat.dst.port == sel.dst_port
        assert sat.transform_id == tp.suite.transform_id
        a = dict(sat.attributes)
        assert a[IpsecAttr.SA_LIFE_TYPE] == 1 and int.from_bytes(a[IpsecAttr.SA_LIFE_DURATION], "big") == tp.lifetime_s
        assert a[IpsecAttr.ENCAPSULATION_MODE] == 1 and a[IpsecAttr.ADDRESS_PRESERVATION] == 4
        assert a[IpsecAttr.KEY_LENGTH] == tp.suite.key_length_bits
        assert a.get(IpsecAttr.AUTHENTICATION_ALGORITHM) == (None if tp.suite.aead else int(tp.suite.auth_algorithm))
        assert IpsecAttr.GROUP_DESCRIPTION not in a
    assert (sat_v.src.id_type, sat_v.src.value()) == (IdType.IPV4_ADDR_SUBNET, ipaddress.ip_network("10.0.0.0/8"))
    assert (sat_v.dst.id_type, sat_v.dst.value()) == (IdType.IPV4_ADDR, ipaddress.ip_address("239.1.1.1"))
    assert dict(sat_v.attributes)[IpsecAttr.SA_DIRECTION] == SaDirection.SYMMETRIC
    assert dict(sat_c.attributes)[IpsecAttr.SA_DIRECTION] == SaDirection.SENDER_ONLY
    # message 4: SEQ 0 (no PUSH yet), KD = TEK, TEK, KEK in SA order, SPIs and keys from the store
    seq, kd = decoded[3].payloads[1:]
    assert seq.number == 0
    assert [p.kd_type for p in kd.packets] == [KdType.TEK, KdType.TEK, KdType.KEK]
    for p, name in zip(kd.packets, ("video", "control")):
        t = teks[name]
        assert p.spi == t.spi.to_bytes(4, "big")
        a = dict(p.attributes)
        assert a[TekKeyAttr.TEK_ALGORITHM_KEY] == t.key and a.get(TekKeyAttr.TEK_INTEGRITY_KEY) == t.auth_key
    assert len(dict(kd.packets[0].attributes)[TekKeyAttr.TEK_ALGORITHM_KEY]) == 16 + 4  # AES-128 + salt
    kp = dict(kd.packets[2].attributes)
    assert kd.packets[2].spi == kek.spi and kp[KekKeyAttr.KEK_ALGORITHM_KEY] == kek.key and len(kek.key) == 16 + 16
    assert kp[KekKeyAttr.SIG_ALGORITHM_KEY] == reg.kek.signing_public_key


# ---------------------------------------------------------------------------------- crafted replies


@pytest.fixture
def sas(tmp_path):
    """An established phase 1 SA pair (member side, key server side)."""
    ks, _store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    m.start(NOW)

    def drop(direction, n, data):
        return data[18] == PULL  # phase 1 only
    pump(ks, {member_addr(0): m}, drop=drop)
    ssa = next(e.sa for e in events(ks) if isinstance(e, Phase1Established))
    return m.phase1_sa, ssa


def _gm_and_msg1(isa, ssa, **kw):
    gm = PullInitiator(isa, GID, **kw)
    gm.start(NOW)
    (msg1, _a), = gm.datagrams_to_send()
    mid = struct.unpack("!I", msg1[20:24])[0]
    pt = ssa.decrypt(ssa.phase2_iv(mid), msg1[28:])
    ni = wire.decode_message(msg1[:28] + pt, block_size=16).payloads[1].data
    return gm, mid, ni, msg1[-16:]


def _sat(spi=0x1000, suite="aes-gcm-128", **over):
    from policy.model import TekPolicy, TrafficSelector
    from policy.suites import ESP_SUITES
    tp = TekPolicy("t", TrafficSelector(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("239.1.1.1/32")), ESP_SUITES[suite])
    sat = pw.sa_tek(tp, spi, SaDirection.SYMMETRIC, 600)
    if over:
        sat = SaTek(sat.protocol_id, sat.protocol, sat.src, sat.dst, over.get("transform_id", sat.transform_id), spi,
                    over.get("attributes", sat.attributes))
    return sat


def _run(ssa, gm, mid, ni, iv, sa_kids, kd_payloads):
    nr = bytes(range(32))
    msg2, iv2 = seal(ssa, mid, iv, (Nonce(nr), GdoiSa(tuple(sa_kids))), ni)
    gm.receive_datagram(msg2, KS, NOW)
    if gm.state is not PullState.M3_SENT:
        return events(gm)
    (msg3, _a), = gm.datagrams_to_send()
    iv3 = msg3[-16:]
    msg4, _ = seal(ssa, mid, iv3, tuple(kd_payloads), ni + nr)
    gm.receive_datagram(msg4, KS, NOW)
    return events(gm)


def _tek_kd(spi=0x1000, key=bytes(20), auth=b""):
    return KeyPacket(KdType.TEK, spi.to_bytes(4, "big"), (Attribute(TekKeyAttr.TEK_ALGORITHM_KEY, key),) +
                     ((Attribute(TekKeyAttr.TEK_INTEGRITY_KEY, auth),) if auth else ()))


def test_crafted_good_reply_accepted(sas):
    isa, ssa = sas
    gm, mid, ni, iv = _gm_and_msg1(isa, ssa)
    (ev,) = _run(ssa, gm, mid, ni, iv, [_sat()], [KeyDownload((_tek_kd(),))])
    assert isinstance(ev, Registered) and ev.teks[0].spi == 0x1000 and ev.kek is None and ev.seq is None


@pytest.mark.parametrize("case", [
    "suite_not_asked", "3des", "unknown_attribute", "missing_key_packet", "short_key", "seq_without_kek",
    "extra_key_packet", "kek_without_key", "no_tek", "ah_tek", "life_kilobytes",
])
def test_member_refuses_bad_replies(sas, case):
    isa, ssa = sas
    kw = {"allowed_suites": frozenset({"aes-cbc-128-hmac-sha256"})} if case == "suite_not_asked" else {}
    gm, mid, ni, iv = _gm_and_msg1(isa, ssa, **kw)
    sats, kd = [_sat()], [KeyDownload((_tek_kd(),))]
    if case == "3des":
        sats = [_sat(transform_id=3)]
    elif case == "unknown_attribute":
        sats = [_sat(attributes=_sat().attributes + (Attribute(IpsecAttr.EXTENDED_SEQUENCE_NUMBER, 1),))]
    elif case == "missing_key_packet":
        kd = [KeyDownload((_tek_kd(0x2000),))]
    elif case == "short_key":
        kd = [KeyDownload((_tek_kd(key=bytes(16)),))]
    elif case == "seq_without_kek":
        kd = [Sequence(0)] + kd
    elif case == "extra_key_packet":
        kd = [KeyDownload((_tek_kd(), KeyPacket(KdType.KEK, bytes(16), (Attribute(KekKeyAttr.KEK_ALGORITHM_KEY, bytes(32)),))))]
    elif case == "kek_without_key":
        sak = SaKek(17, wire.GroupId.of(IdType.IPV4_ADDR, KS[0], 848), wire.GroupId.of(IdType.IPV4_ADDR, "239.192.0.1", 848),
                    bytes(range(1, 17)), (Attribute(KekAttr.KEK_ALGORITHM, 3), Attribute(KekAttr.KEK_KEY_LENGTH, 128),
                                          Attribute(KekAttr.KEK_KEY_LIFETIME, var_int(600)), Attribute(KekAttr.SIG_ALGORITHM, 4)))
        sats = [sak] + sats
        kd = [Sequence(0)] + kd
    elif case == "no_tek":
        sats = []
    elif case == "ah_tek":
        s = _sat()
        sats = [SaTek(2, s.protocol, s.src, s.dst, 5, s.spi, s.attributes)]
    elif case == "life_kilobytes":
        sats = [_sat(attributes=tuple(Attribute(t, 2) if t == IpsecAttr.SA_LIFE_TYPE else Attribute(t, v) for t, v in _sat().attributes))]
    evs = _run(ssa, gm, mid, ni, iv, sats, kd)
    assert len(evs) == 1 and isinstance(evs[0], RegistrationFailed), (case, evs)
    assert gm.state is PullState.FAILED and gm.get_timer() is None


def test_reply_of_another_exchange_dropped(sas):
    """A reply bound to another request (other M-ID, e.g. another group's PULL) never verifies."""
    isa, ssa = sas
    gm_a, mid_a, ni_a, iv_a = _gm_and_msg1(isa, ssa)
    gm_b = PullInitiator(isa, GID + 1)
    gm_b.start(NOW)
    (msg1b, _), = gm_b.datagrams_to_send()
    mid_b = struct.unpack("!I", msg1b[20:24])[0]
    ni_b = wire.decode_message(msg1b[:28] + ssa.decrypt(ssa.phase2_iv(mid_b), msg1b[28:]), block_size=16).payloads[1].data
    msg2_b, _ = seal(ssa, mid_b, msg1b[-16:], (Nonce(bytes(32)), GdoiSa((_sat(),))), ni_b)
    gm_a.receive_datagram(msg2_b, KS, NOW)  # other M-ID
    forged = msg2_b[:20] + struct.pack("!I", mid_a) + msg2_b[24:]  # M-ID rewritten: HASH / IV fail
    gm_a.receive_datagram(forged, KS, NOW)
    assert gm_a.state is PullState.M1_SENT and events(gm_a) == []


def test_member_retransmits_with_backoff_then_fails(sas):
    isa, _ssa = sas
    gm = PullInitiator(isa, GID, retransmit_timeout=1.0, max_retransmits=3, exchange_timeout=100)
    gm.start(NOW)
    (first, _), = gm.datagrams_to_send()
    times = []
    t = NOW
    while gm.get_timer() is not None:
        t = gm.get_timer()
        gm.handle_timer(t)
        for d, _a in gm.datagrams_to_send():
            assert d == first
            times.append(t - NOW)
    assert times == [1.0, 3.0, 7.0]
    (ev,) = events(gm)
    assert isinstance(ev, RegistrationFailed) and "retransmissions" in ev.reason


# ---------------------------------------------------------------------------------- tampering


def test_tampered_and_malformed_datagrams_dropped(tmp_path):
    """Flip bits, truncate, extend every PULL message in both directions: no exception, no
    registration from a damaged message, and the key server store is unchanged."""
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    log = register(ks, {member_addr(0): m})
    _reg = events(m)
    events(ks)
    msgs = [(d, data) for d, _a, data in _pull_messages(log)]
    isa = m.phase1_sa
    ssa = ks.phase1.sa(isa.spi)
    members_before = len(store.members(GID))
    variants = []
    for direction, data in msgs:
        for pos in (0, 17, 18, 19, 20, 25, 28, 40, len(data) - 1):
            b = bytearray(data)
            b[pos] ^= 0x41
            variants.append((direction, bytes(b)))
        variants += [(direction, data[:-16]), (direction, data[:27]), (direction, data + bytes(16)), (direction, b"")]
    for direction, data in variants:
        if direction == "up":
            ks.pull.receive(ssa, data, member_addr(0), NOW)
            ks.receive_datagram(data, member_addr(0), NOW)
        else:
            p = PullInitiator(isa, GID)
            p.start(NOW)
            p.datagrams_to_send()
            p.receive_datagram(data, KS, NOW)
            assert p.state is PullState.M1_SENT and events(p) == []
            m.receive_datagram(data, KS, NOW)
    assert len(store.members(GID)) == members_before
    assert ks.pull.stats["internal_error"] == 0
    assert not [e for e in events(ks) if type(e).__name__ == "MemberRegistered"]


@pytest.mark.parametrize("which", range(4))
@pytest.mark.parametrize("pos", [20, 30, -1])
def test_tampered_in_flight_dropped_then_recovered(tmp_path, which, pos):
    """PULL message ``which`` is damaged once in flight: it is dropped (no state, no exception),
    the member retransmits and the registration completes."""
    ks, store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    seen = []

    def tamper(direction, n, data):
        if data[18] != PULL:
            return data
        seen.append(data)
        if len(seen) == which + 1:
            b = bytearray(data)
            b[pos] ^= 0x80
            return bytes(b)
        return data

    register(ks, {member_addr(0): m}, tamper=tamper)
    t = NOW
    for _ in range(4):
        if m.state is RegistrationState.REGISTERED:
            break
        t += 4
        m.handle_timer(t)
        ks.handle_timer(t)
        pump(ks, {member_addr(0): m}, t)
    evs = events(m)
    assert len(evs) == 1 and isinstance(evs[0], Registered), evs
    assert len(store.members(GID)) == 1
    assert ks.pull.stats["internal_error"] == 0 and ks.pull.stats["dropped"] >= (1 if which % 2 == 0 else 0)


def test_member_state_table_walk(sas):
    """Every (state, input) pair: only MEMBER_TRANSITIONS moves the exchange; everything else is
    dropped with the state unchanged, and start() outside START is refused."""
    from gkm.gdoi.pull import MEMBER_TRANSITIONS

    isa, ssa = sas
    assert MEMBER_TRANSITIONS == {PullState.M1_SENT: (2, "_recv_m2", PullState.M3_SENT),
                                  PullState.M3_SENT: (4, "_recv_m4", PullState.DONE)}
    nr = bytes(range(32))

    def messages(mid, ni, iv1):
        msg2, iv2 = seal(ssa, mid, iv1, (Nonce(nr), GdoiSa((_sat(),))), ni)
        return msg2, iv2

    def exchange_at(state):
        gm, mid, ni, iv = _gm_and_msg1(isa, ssa)
        msg2, _ = messages(mid, ni, iv)
        msg4 = None
        if state in (PullState.M3_SENT, PullState.DONE):
            gm.receive_datagram(msg2, KS, NOW)
            (msg3, _a), = gm.datagrams_to_send()
            msg4, _ = seal(ssa, mid, msg3[-16:], (KeyDownload((_tek_kd(),)),), ni + nr)
            if state is PullState.DONE:
                gm.receive_datagram(msg4, KS, NOW)
        if state is PullState.FAILED:
            gm.fail("test")
        events(gm)
        assert gm.state is state
        return gm, msg2, msg4

    for state in (PullState.M1_SENT, PullState.M3_SENT, PullState.DONE, PullState.FAILED):
        gm, msg2, msg4 = exchange_at(state)
        inputs = {"message 2": msg2, "message 4": msg4, "garbage": bytes(60), "header only": msg2[:28]}
        for name, data in inputs.items():
            if data is None:
                continue
            legal = (state, name) in ((PullState.M1_SENT, "message 2"), (PullState.M3_SENT, "message 4"))
            probe, p2, p4 = exchange_at(state)
            data = {"message 2": p2, "message 4": p4}.get(name, data)
            if data is None:
                continue
            probe.receive_datagram(data, KS, NOW)
            if legal:
                assert probe.state is MEMBER_TRANSITIONS[state][2], (state, name)
            else:
                assert probe.state is state and events(probe) == [], (state, name)
        with pytest.raises(RuntimeError):
            gm.start(NOW)
    idle = PullInitiator(isa, GID)
    idle.receive_datagram(bytes(60), KS, NOW)
    idle.handle_timer(NOW + 100)
    assert idle.state is PullState.START and idle.get_timer() is None and idle.datagrams_to_send() == []


def test_refused_reply_sets_refused_timeout_does_not(sas):
    isa, ssa = sas
    gm, mid, ni, iv = _gm_and_msg1(isa, ssa)
    _run(ssa, gm, mid, ni, iv, [_sat()], [Sequence(0), KeyDownload((_tek_kd(),))])
    assert gm.state is PullState.FAILED and gm.refused
    quiet = PullInitiator(isa, GID, max_retransmits=0)
    quiet.start(NOW)
    quiet.handle_timer(NOW + 2)
    assert quiet.state is PullState.FAILED and not quiet.refused
