"""The shared SA/KD reader (gkm.gdoi.sakd), driven through both exchanges that use it: a
GROUPKEY-PULL member (message 2's SA, message 4's KD, correctly hashed and encrypted by a peer
holding the phase 1 keys) and a GROUPKEY-PUSH receiver (correctly signed and KEK-encrypted
by a holder of the signing key).  Each malformed SA or KD is refused on both paths with the
same reason, and nothing is installed."""

from __future__ import annotations

import dataclasses
import os
import struct

import pytest

from gkm import wire
from gkm.gdoi import PullInitiator, PullState, Registered, RegistrationFailed
from gkm.gdoi import sakd
from gkm.gdoi.provider import KekKeys
from gkm.gdoi.pull import seal
from gkm.gdoi.push import REKEY_PREFIX, PushRejected, Rekeyed, _cbc, sign_push, signature_length
from gkm.ike import Phase1Established
from gkm.wire import Attribute, Gap, GdoiSa, KeyDownload, KeyPacket, Nonce, SaKek, Sequence, Signature
from gkm.wire.constants import ExchangeType, Flags, GapAttr, KdType
from tests.unit.test_gdoi_push import WALL, Setup
from tests.unit.test_gdoi_support import GID, KS, NOW, events, key_server, member, member_addr, pump

# ------------------------------------------------------------------------------ malformations
# Each takes the (SA, KD) a real key server sent and returns a malformed pair.  Both shapes are
# the same on the two paths: SA KEK + 2 SA TEKs, KD with 2 TEK key packets + 1 KEK key packet.


def _kids(sa: GdoiSa):
    sak = next(p for p in sa.payloads if type(p) is SaKek)
    sats = [p for p in sa.payloads if type(p) not in (SaKek, Gap)]  # the real GAP is left out
    return sak, sats


def _packets(kd: KeyDownload):
    teks = [p for p in kd.packets if p.kd_type == KdType.TEK]
    kek = next(p for p in kd.packets if p.kd_type == KdType.KEK)
    return teks, kek


def _sa(fn):
    def mutate(sa, kd):
        sak, sats = _kids(sa)
        return GdoiSa(tuple(fn(sak, sats))), kd
    return mutate


def _kd(fn):
    def mutate(sa, kd):
        teks, kek = _packets(kd)
        return sa, KeyDownload(tuple(fn(teks, kek)))
    return mutate


_GAP = Gap(())
_OTHER_SPI = bytes(range(16))

SA_CASES = {
    "two-sa-keks": (_sa(lambda k, t: [k, k, *t]), "2 SA KEK payloads, at most one"),
    "two-gaps": (_sa(lambda k, t: [k, _GAP, _GAP, *t]), "2 GAP payloads, at most one"),
    "gap-after-tek": (_sa(lambda k, t: [k, t[0], _GAP, t[1]]), "SA children in the order SA KEK, SA TEK, GAP, SA TEK"),
    "tek-before-kek": (_sa(lambda k, t: [t[0], k, t[1]]), "SA children in the order SA TEK, SA KEK, SA TEK"),
    "two-teks-one-spi": (_sa(lambda k, t: [k, t[0], t[0]]), "two SA TEKs with SPI"),
    # GAP from a key server (RFC 6407 section 5.4: abort on what is not understood)
    "gap-sender-id-request": (_sa(lambda k, t: [k, Gap((Attribute(GapAttr.SENDER_ID_REQUEST, 2),)), *t]),
                              "GAP: SENDER_ID_REQUEST (a member's request) not understood"),
    "gap-unknown-attribute": (_sa(lambda k, t: [k, Gap((Attribute(200, 1),)), *t]),
                              "GAP: attribute 200 not understood"),
    "gap-atd-twice": (_sa(lambda k, t: [k, Gap((Attribute(GapAttr.ACTIVATION_TIME_DELAY, 2),
                                                Attribute(GapAttr.ACTIVATION_TIME_DELAY, 9))), *t]),
                      "GAP: ACTIVATION_TIME_DELAY twice"),
    "gap-dtd-variable-form": (_sa(lambda k, t: [k, Gap((Attribute(GapAttr.DEACTIVATION_TIME_DELAY, b"\0\0\0\6"),)), *t]),
                              "GAP: DEACTIVATION_TIME_DELAY in the variable form"),
}
KD_CASES = {
    "tek-spi-3-octets": (_kd(lambda t, k: [dataclasses.replace(t[0], spi=t[0].spi[:3]), t[1], k]), "key packet 0: TEK SPI of 3 octets, need 4"),
    "tek-packet-twice": (_kd(lambda t, k: [t[0], t[0], t[1], k]), "key packet 1: a second TEK key packet for SPI"),
    "kek-packet-twice": (_kd(lambda t, k: [*t, k, k]), "key packet 3: a second KEK key packet"),
    "lkh-packet-twice": (_kd(lambda t, k: [*t, k, KeyPacket(KdType.LKH, k.spi), KeyPacket(KdType.LKH, k.spi)]),
                         "key packet 4: a second LKH key packet"),
    "unknown-kd-type": (_kd(lambda t, k: [*t, k, KeyPacket(9, b"")]), "key packet 3: KD type 9 not supported here"),
    "tek-packet-missing": (_kd(lambda t, k: [t[1], k]), "key packets do not match the SA TEK SPIs: no key packet for SA TEK SPI"),
    "tek-packet-extra": (_kd(lambda t, k: [*t, dataclasses.replace(t[0], spi=b"\x01\x02\x03\x04"), k]),
                         "key packets do not match the SA TEK SPIs: key packet for SPI 0x01020304 not in the SA"),
    "kek-packet-missing": (_kd(lambda t, k: [*t]), "no KEK key packet for the SA KEK SPI"),
    "kek-packet-other-spi": (_kd(lambda t, k: [*t, dataclasses.replace(k, spi=_OTHER_SPI)]), "KEK key packet for SPI 000102"),
    "lkh-packet-other-spi": (_kd(lambda t, k: [*t, k, KeyPacket(KdType.LKH, _OTHER_SPI)]), "LKH key packet for SPI 000102"),
}
CASES = {**SA_CASES, **KD_CASES}


# ------------------------------------------------------------------------------ GROUPKEY-PULL


class PullPath:
    """A real registration recorded once; then a fresh member at message 2 per case, fed a
    message 2 and 4 built from the real ones with the SA/KD replaced."""

    def __init__(self, tmp_path):
        ks, _store = key_server(tmp_path)
        m = member(tmp_path, "gm1")
        log = []

        def keep(direction, n, data):
            log.append(data)
            return data

        m.start(NOW)
        pump(ks, {member_addr(0): m}, tamper=keep)
        assert any(isinstance(e, Registered) for e in events(m))
        self.isa = m.phase1_sa
        self.ssa = next(e.sa for e in events(ks) if isinstance(e, Phase1Established))
        pull = [d for d in log if d[18] == ExchangeType.GROUPKEY_PULL]
        m2 = self._payloads(pull[1], pull[0][-16:])
        m4 = self._payloads(pull[3], pull[2][-16:])
        self.sa = next(p for p in m2 if type(p) is GdoiSa)
        self.seq = next(p for p in m4 if type(p) is Sequence)
        self.kd = next(p for p in m4 if type(p) is KeyDownload)

    def _payloads(self, data, iv):
        return wire.decode_message(data[:28] + self.isa.decrypt(iv, data[28:]), block_size=16).payloads[1:]

    def run(self, sa, kd):
        """-> the member's one event after message 2 (and 4, if it got that far)."""
        gm = PullInitiator(self.isa, GID)
        gm.start(NOW)
        (msg1, _), = gm.datagrams_to_send()
        mid = struct.unpack("!I", msg1[20:24])[0]
        ni = wire.decode_message(msg1[:28] + self.ssa.decrypt(self.ssa.phase2_iv(mid), msg1[28:]), block_size=16).payloads[1].data
        nr = os.urandom(32)
        msg2, _ = seal(self.ssa, mid, msg1[-16:], (Nonce(nr), sa), ni)
        gm.receive_datagram(msg2, KS, NOW)
        if gm.state is PullState.M3_SENT:
            (msg3, _), = gm.datagrams_to_send()
            msg4, _ = seal(self.ssa, mid, msg3[-16:], (self.seq, kd), ni + nr)
            gm.receive_datagram(msg4, KS, NOW)
        evs = events(gm)
        assert len(evs) == 1, evs
        return evs[0]


# ------------------------------------------------------------------------------ GROUPKEY-PUSH


class PushPath:
    """A registered member's PushReceiver; PUSHes carry a new KEK and two new TEKs, re-signed
    with the group's signing key after the SA/KD are replaced."""

    def __init__(self, tmp_path):
        self.s = Setup(tmp_path)
        old = self.s.kek()
        self.new_kek = KekKeys(os.urandom(16), old.cipher, os.urandom(32), WALL + 7200, self.s.pub)
        data = self.s.push(seq=1, new_kek=self.new_kek, new_teks=[self.s.new_tek("video"), self.s.new_tek("control")])
        msg = self._decrypt(data)
        self.sa = next(p for p in msg.payloads if type(p) is GdoiSa)
        self.kd = next(p for p in msg.payloads if type(p) is KeyDownload)

    def _decrypt(self, data):
        k = self.s.kek()
        return wire.decode_message(data[:28] + _cbc(k.keymat[16:], k.keymat[:16], data[28:], False), block_size=16)

    def signed(self, payloads) -> bytes:
        """What build_push does after choosing the payloads: sign, pad, KEK-encrypt."""
        k = self.s.kek()
        suite = self.s.group.kek.signature
        header = wire.Header(k.spi[:8], k.spi[8:], ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION)
        n = signature_length(suite, self.s.signing_key.public_key())
        signed = wire.encode_message(header, (*payloads, Signature(bytes(n))))
        sig = sign_push(suite, self.s.signing_key, REKEY_PREFIX + signed[: len(signed) - 4 - n])
        plain = wire.encode_message(header, (*payloads, Signature(sig)), block_size=16)
        return plain[:28] + _cbc(k.keymat[16:], k.keymat[:16], plain[28:], True)

    def run(self, sa, kd, seq=2):
        r = self.s.receiver()
        before = (r.kek, r.last_seq)
        r.receive_datagram(self.signed((Sequence(seq), sa, kd)), None, NOW)
        evs = events(r)
        assert len(evs) == 1, evs
        if isinstance(evs[0], PushRejected):
            assert (r.kek, r.last_seq) == before  # a refusal changes nothing
        return evs[0]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return PullPath(tmp_path_factory.mktemp("pull")), PushPath(tmp_path_factory.mktemp("push"))


def test_unmodified_sa_kd_accepted_on_both_paths(paths):
    """The harness itself: the key servers' own SA/KD pass (so the refusals below are the
    malformation's doing)."""
    pull, push = paths
    assert isinstance(pull.run(pull.sa, pull.kd), Registered)
    ev = push.run(push.sa, push.kd)
    assert isinstance(ev, Rekeyed) and ev.new_kek and len(ev.teks) == 2


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_refused_on_both_paths_with_one_reason(paths, case):
    mutate, reason = CASES[case]
    pull, push = paths
    ev = pull.run(*mutate(pull.sa, pull.kd))
    assert isinstance(ev, RegistrationFailed), ev
    assert reason in ev.reason, ev.reason
    if case in KD_CASES:
        assert ev.reason.startswith("unusable keys: ")
    ev = push.run(*mutate(push.sa, push.kd))
    assert isinstance(ev, PushRejected), ev
    assert reason in ev.reason, ev.reason


@pytest.mark.parametrize("attrs, want", [
    (((GapAttr.ACTIVATION_TIME_DELAY, 7), (GapAttr.DEACTIVATION_TIME_DELAY, 21)), (7, 21)),
    (((GapAttr.DEACTIVATION_TIME_DELAY, 21),), (None, 21)),
    ((), (None, None)),
])
def test_gap_delays_reach_the_member_on_both_paths(paths, attrs, want):
    """Whatever GAP the key server's SA carries is what Registered/Rekeyed hand on."""
    pull, push = paths
    g = Gap(tuple(Attribute(t, v) for t, v in attrs))
    for path in (pull, push):
        sak, sats = _kids(path.sa)
        ev = path.run(GdoiSa((sak, g, *sats)), path.kd)
        assert isinstance(ev, (Registered, Rekeyed)), ev
        assert (ev.gap.activation_s, ev.gap.deactivation_s) == want
        sak, sats = _kids(path.sa)
        ev = path.run(GdoiSa((sak, *sats)), path.kd)  # no GAP at all
        assert ev.gap is None


def test_sid_packets_pull_only(paths):
    """RFC 6054 SID key packets: ignored (logged) in GROUPKEY-PULL message 4, refused in PUSH."""
    pull, push = paths
    add_sid = _kd(lambda t, k: [*t, k, KeyPacket(KdType.SID, b"")])
    assert isinstance(pull.run(*add_sid(pull.sa, pull.kd)), Registered)
    ev = push.run(*add_sid(push.sa, push.kd))
    assert isinstance(ev, PushRejected) and "KD type 4 not supported here" in ev.reason


def test_kek_or_lkh_packet_without_sa_kek_refused_in_push(paths):
    """A TEK-only PUSH (no SA KEK) may not smuggle a KEK or LKH key packet in."""
    _pull, push = paths
    sak, sats = _kids(push.sa)
    teks, kek = _packets(push.kd)
    for extra, reason in ((kek, "KEK key packet without an SA KEK"),
                          (KeyPacket(KdType.LKH, kek.spi), "LKH key packet without an SA KEK")):
        ev = push.run(GdoiSa(tuple(sats)), KeyDownload((*teks, extra)))
        assert isinstance(ev, PushRejected) and reason in ev.reason, ev
    assert isinstance(push.run(GdoiSa(tuple(sats)), KeyDownload(tuple(teks))), Rekeyed)


def test_pull_needs_a_tek_push_does_not(paths):
    pull, push = paths
    sak, _sats = _kids(pull.sa)
    ev = pull.run(GdoiSa((sak,)), pull.kd)
    assert isinstance(ev, RegistrationFailed) and "offered no TEK" in ev.reason
    sak, _sats = _kids(push.sa)
    _teks, kek = _packets(push.kd)
    ev = push.run(GdoiSa((sak,)), KeyDownload((kek,)))
    assert isinstance(ev, Rekeyed) and ev.new_kek and ev.teks == ()


def test_reader_directly():
    """The reader's own contract, without an exchange around it."""
    empty = sakd.read_sa(GdoiSa(()))
    assert empty == sakd.GroupSa(None, None, ())
    sakd.pair(empty, sakd.sort_kd(KeyDownload(())))
    with pytest.raises(sakd.SaKdError, match="KD type 4 not supported"):
        sakd.sort_kd(KeyDownload((KeyPacket(KdType.SID, b""),)))
    packets = sakd.sort_kd(KeyDownload((KeyPacket(KdType.SID, b""),)), sid_allowed=True)
    assert len(packets.sids) == 1 and not packets.teks
    key = KeyPacket(KdType.TEK, b"\x00\x00\x10\x01", ((1, b"k" * 16),))
    assert "k" * 16 not in repr(sakd.sort_kd(KeyDownload((key,))))  # key material stays out of repr
