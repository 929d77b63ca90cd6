"""A G-IKEv2 member's saved state: the GSA_REKEY receiver's part of the strict codec
(gkm.gdoi.member_state.GikeRekeyState), and a real member engine (msecd's factory: G-IKEv2
registration, GSA_REKEY receiver) restarted from its saved file, fed the same GSA_REKEYs as
its twin that was not restarted (a rekey, replays, an LKH eviction of another member): it
must do exactly what the twin does.  The version 1 (GDOI) file an earlier msecd wrote still
loads, and a GDOI snapshot is still written as that version."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gkm.daemon.member_store import MemberStateFiles
from gkm.gdoi import member_state
from gkm.gdoi.member import (
    ActivateOutbound, ForgetState, GroupRekeyed, InstallSas, ListenForPush, MemberEngine,
    MemberState, OpenRegistration, RemoveSas, SaveState, StateDiscarded, StateRestored,
)
from gkm.gdoi.member_state import GikeRekeyState, MemberStateError
from gkm.gdoi.push import Evicted, PushRejected
from gkm.group.storage import load_state
from gkm.ikev2.member_rekey import GikePushReceiver
from tests.unit.test_gdoi_support import GID, KS, NOW, member_group
from tests.unit.test_ikev2_daemon_engines import _controller_step, both_groups, key_server

DATA = Path(__file__).parent / "member_state_data"


def gike_snap(**kw) -> member_state.MemberSnapshot:
    """A G-IKEv2 snapshot made by hand (no key server): AES-CBC-128 / HMAC-SHA2-256 Rekey SA,
    KW_5649_128, one Key Path key (also a seed of tools/fuzzing.py's member_state target)."""
    from dataclasses import replace

    from gkm.gdoi.keys import GroupKek
    from gkm.ikev2.constants import Encr, Integ, KeyWrap, TsType
    from gkm.ikev2.gsa_keys import RekeySaKeys, WorkingKeyPath
    from gkm.ikev2.payloads import TrafficSelector as Ts
    from gkm.ikev2.rekey_auth import SIGNATURE_ALGORITHMS
    from gkm.ikev2.rekey_sa import RekeySa
    from policy.model import AddressPreservation, Mode, SaDirection
    from tests.unit.test_member_state import GID as SNAP_GID
    from tests.unit.test_member_state import N, PUB, snap
    keys = RekeySaKeys.split(bytes(range(64)), Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128, KeyWrap.KW_5649_128)
    src = Ts(TsType.IPV4_ADDR_RANGE, 17, 848, 848, bytes((10, 0, 0, 1)), bytes((10, 0, 0, 1)))
    dst = Ts(TsType.IPV4_ADDR_RANGE, 17, 848, 848, bytes((239, 192, 0, 1)), bytes((239, 192, 0, 1)))
    sa = RekeySa(b"R" * 16, Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128, KeyWrap.KW_5649_128, keys, src, dst,
                 1000, 0, (b"N" * 16,))
    g = GikeRekeyState(sa, 3, b"d" * 32, SIGNATURE_ALGORITHMS["ecdsa-p256-sha256"], PUB,
                       WorkingKeyPath(((7, b"k" * 16),)), (), Mode.TUNNEL,
                       AddressPreservation.SOURCE_AND_DESTINATION, SaDirection.RECEIVER_ONLY)
    kek = GroupKek(SNAP_GID, sa.spi, N("10.0.0.1/32"), 848, N("239.192.0.1/32"), 848, "aes-cbc-128", keys.gsk_e, b"",
                   "ecdsa-p256", PUB, 1000)
    return replace(snap(), kek=kek, lkh=None, gike=g, **kw)


class Member:
    """One real G-IKEv2 member engine, its actions answered as msecd's member shell does (SA
    changes succeed, the saved state goes through the file codec), its registration talking
    to the in-memory key server."""

    def __init__(self, f, ks, tmp_path, who: str, addr):
        self.f, self.ks, self.addr = f, ks, addr
        self.group = dataclasses.replace(member_group(tmp_path, who), protocol="g-ikev2")
        self.e = MemberEngine(self.group, new_registration=f.member, new_push_receiver=f.push_receiver,
                              random=lambda: 0.5)
        self.actions: list = []
        self.events: list = []
        self.file: bytes | None = None  # the saved state as msecd writes it

    def drain(self) -> "Member":
        for _ in range(20):
            moved = False
            while (act := self.e.next_action()) is not None:
                self.actions.append(act)
                match act:
                    case OpenRegistration():
                        self.e.registration_opened(KS, NOW)
                    case InstallSas() | ActivateOutbound() | RemoveSas():
                        self.e.sas_installed(act, NOW)
                    case ListenForPush():
                        self.e.push_listening(NOW)
                    case SaveState():
                        self.file = member_state.encode(act.snapshot)
                        self.e.state_saved(act, NOW)
                    case ForgetState():
                        self.file = None
            for d, a in self.e.datagrams_to_send():
                assert a == KS
                self.ks.receive_datagram(d, self.addr, NOW)
                moved = True
            self.ks.commit(NOW)
            for d, a in self.ks.datagrams_to_send():
                assert a == self.addr
                self.e.receive_registration(d, KS, NOW)
                moved = True
            if not moved:
                break
        while (ev := self.e.next_event()) is not None:
            self.events.append(ev)
        return self

    def register(self) -> "Member":
        self.e.start(NOW)
        self.drain()
        assert self.e.state is MemberState.REGISTERED and self.e.registrations == 1
        return self

    def restarted(self, tmp_path, who: str) -> "Member":
        """A new engine (a new msecd) resumed from this one's saved file."""
        new = Member(self.f, self.ks, tmp_path, who, self.addr)
        new.e.resume(member_state.decode(self.file), NOW)
        return new.drain()

    def rekey(self, *datagrams) -> list:
        """The member's events for these GSA_REKEYs, in order."""
        start = len(self.events)
        for d in datagrams:
            self.e.receive_push(d, KS, NOW)
            self.drain()
        return self.events[start:]


def _world(tmp_path):
    groups = both_groups(tmp_path)
    f, ks = key_server(tmp_path, groups)
    gm1 = Member(f, ks, tmp_path, "gm1", ("192.0.2.21", 848)).register()
    gm3 = Member(f, ks, tmp_path, "gm3", ("192.0.2.23", 848)).register()
    g = groups[0]
    ctl = f.group_controller(g, load_state(f.provider.store, GID), NOW, signer=f.push_signer(g))
    return f, ks, ctl, gm1, gm3


def _gike(pushes) -> list[bytes]:
    assert all(p.gike is not None for p in pushes)
    return [p.gike for p in pushes]


def _same(events) -> list:
    """What to compare of two members' events: the kinds, TEKs, KEK and SEQ, the reasons."""
    out = []
    for e in events:
        match e:
            case GroupRekeyed():
                out.append(("rekeyed", e.seq, e.spis, e.new_kek))
            case PushRejected():
                out.append(("rejected", e.reason, e.duplicate, e.cause, e.resync))
            case _:
                out.append(type(e).__name__)
    return out


# ------------------------------------------------------------------------------- engine

def test_a_restarted_g_ikev2_member_resumes_and_follows_gsa_rekeys_as_before(tmp_path):
    f, ks, ctl, gm1, gm3 = _world(tmp_path)
    assert gm1.file is not None  # saved at registration
    p1 = _gike(_controller_step(f, ctl, lambda: ctl.rekey(NOW))[1])
    p2 = _gike(_controller_step(f, ctl, lambda: ctl.rekey(NOW))[1])
    assert [type(e) for e in gm1.rekey(*p1, *p2) if isinstance(e, GroupRekeyed)] == [GroupRekeyed] * 2
    saved = member_state.decode(gm1.file)
    assert saved.protocol == "g-ikev2" and saved.gike == gm1.e.push.receiver_state()

    gm1b = gm1.restarted(tmp_path, "gm1")  # kill -9 and a new msecd
    assert not [a for a in gm1b.actions if isinstance(a, OpenRegistration)]
    [restored] = [e for e in gm1b.events if isinstance(e, StateRestored)]
    assert restored.protocol == "g-ikev2" and gm1b.e.restored and gm1b.e.state is MemberState.REGISTERED
    assert isinstance(gm1b.e.push, GikePushReceiver) and gm1b.e.kek_spi == gm1.e.kek_spi
    assert gm1b.e.push._rx.state() == gm1.e.push._rx.state()
    assert {t.spi for t in gm1b.e.held if not t.removing} == {t.spi for t in gm1.e.held if not t.removing}
    registrations = gm1b.e.registrations

    # replays: the last GSA_REKEY (a duplicate) and an older Message ID (refused), exactly as
    # the member that was not restarted handles them
    for replay in (p2, p1):
        before = gm1.e.push._rx.state()
        got, want = gm1b.rekey(*replay), gm1.rekey(*replay)
        assert _same(got) == _same(want) and got and all(isinstance(e, PushRejected) for e in got)
        assert gm1b.e.push._rx.state() == gm1.e.push._rx.state() == before
    assert _same(gm1b.rekey(*p2))[0][2] is True  # a copy of the last one: a duplicate
    assert "replayed" in _same(gm1b.rekey(*p1))[0][1]
    gm1.rekey(*p2, *p1)

    # the next rekey applies
    p3 = _gike(_controller_step(f, ctl, lambda: ctl.rekey(NOW))[1])
    got, want = gm1b.rekey(*p3), gm1.rekey(*p3)
    assert _same(got) == _same(want) and type(got[0]) is GroupRekeyed

    # an LKH eviction of another member: a new Rekey SA through the Key Path, then its TEKs
    ev, pushes = _controller_step(f, ctl, lambda: ctl.evict(["key-id:gm3"], "test", NOW))
    assert ev.mode == "lkh"
    evict = _gike(pushes)
    got, want = gm1b.rekey(*evict), gm1.rekey(*evict)
    assert _same(got) == _same(want)
    assert any(isinstance(e, GroupRekeyed) and e.new_kek for e in got)
    assert gm1b.e.push._rx.state() == gm1.e.push._rx.state()
    assert gm1b.e.kek_spi == gm1.e.kek_spi == pushes[-1].kek_spi
    assert [(h.tek, h.removing) for h in gm1b.e.held] == [(h.tek, h.removing) for h in gm1.e.held]
    assert set(ev.tek_spis) <= {h.spi for h in gm1b.e.held}
    assert any(isinstance(e, Evicted) for e in gm3.rekey(*evict)) or gm3.e.push is None
    # the saved state follows the new Rekey SA and Key Path (a second restart goes on)
    assert member_state.decode(gm1b.file).gike == gm1.e.push.receiver_state()
    assert gm1b.e.registrations == registrations == 0
    p4 = _gike(_controller_step(f, ctl, lambda: ctl.rekey(NOW))[1])
    gm1c = gm1b.restarted(tmp_path, "gm1")
    got, want = gm1c.rekey(*p4), gm1.rekey(*p4)
    assert _same(got) == _same(want) and type(got[0]) is GroupRekeyed


def test_a_g_ikev2_member_evicted_or_deleted_forgets_its_saved_state(tmp_path):
    f, ks, ctl, gm1, gm3 = _world(tmp_path)
    assert gm3.file is not None
    _ev, pushes = _controller_step(f, ctl, lambda: ctl.evict(["key-id:gm3"], "test", NOW))
    gm3.rekey(*_gike(pushes))
    assert gm3.file is None and gm3.e.push is None


def test_a_saved_state_of_the_other_protocol_is_discarded_and_the_member_registers(tmp_path):
    f, ks, ctl, gm1, _gm3 = _world(tmp_path)
    gdoi = dataclasses.replace(member_state.decode(gm1.file), gike=None, lkh=None)
    gm1b = Member(f, ks, tmp_path, "gm1", gm1.addr)
    gm1b.e.resume(gdoi, NOW)
    gm1b.drain()
    [d] = [e for e in gm1b.events if isinstance(e, StateDiscarded)]
    assert "gdoi" in d.reason and gm1b.e.registrations == 1 and not gm1b.e.restored


def test_an_auth_key_only_gsa_rekey_is_saved(tmp_path):
    """A GSA_REKEY that only brings a new AUTH_KEY changes how later ones are checked: it is a
    Rekeyed (no TEKs) and the saved state keeps the new key."""
    from gkm.ikev2.constants import GcAuth
    from gkm.ikev2.rekey import RekeySender
    f, _ks, _ctl, gm1, _gm3 = _world(tmp_path)
    rx = gm1.e.push._rx
    new_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signer = f.push_signer(both_groups(tmp_path)[0])
    s = RekeySender(rx.rekey_sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=rx.signature,
                    signing_key=signer.private_key, message_id=rx.expected_message_id)
    evs = gm1.rekey(s.build(auth_key=new_pub))
    assert [type(e) for e in evs] == [GroupRekeyed]
    assert member_state.decode(gm1.file).gike.auth_key == new_pub


# -------------------------------------------------------------------------------- codec

@pytest.fixture(scope="module")
def gike_file(tmp_path_factory) -> bytes:
    """A real G-IKEv2 member's saved file after a rekey and an LKH eviction of another member
    (a Key Path, a last digest, a Rekey SA installed by GSA_REKEY)."""
    tmp_path = tmp_path_factory.mktemp("gike")
    f, _ks, ctl, gm1, _gm3 = _world(tmp_path)
    gm1.rekey(*_gike(_controller_step(f, ctl, lambda: ctl.rekey(NOW))[1]))
    gm1.rekey(*_gike(_controller_step(f, ctl, lambda: ctl.evict(["key-id:gm3"], "test", NOW))[1]))
    g = member_state.decode(gm1.file).gike
    assert g.key_path.keys and g.last_digest is not None
    return gm1.file


def test_codec_round_trips_the_g_ikev2_part_and_hides_its_keys(gike_file, tmp_path):
    s = member_state.decode(gike_file, wall_offset=100.0)
    assert json.loads(gike_file)["state"]["version"] == 2
    assert json.loads(gike_file)["state"]["protocol"] == "g-ikev2"
    again = member_state.encode(s, wall_offset=100.0)
    assert again == gike_file and member_state.decode(again, wall_offset=100.0) == s
    g = s.gike
    assert isinstance(g, GikeRekeyState) and s.lkh is None and s.kek.spi == g.rekey_sa.spi
    secrets = [g.rekey_sa.keys.gsk_e, g.rekey_sa.keys.gsk_a, g.rekey_sa.keys.gsk_w,
               *(k for _i, k in g.key_path.keys), *(t.tek.keymat for t in s.teks)]
    for text in (repr(s), repr(g), repr(g.rekey_sa), str(s)):
        assert not [k for k in secrets if k and k.hex() in text], text
    files = MemberStateFiles(tmp_path)
    files.save(s, 0.0)
    assert (files.path(GID).stat().st_mode & 0o777) == 0o600
    assert files.load(GID, 0.0) == s


def test_codec_round_trips_a_g_ikev2_snapshot_made_by_hand():
    s = gike_snap()
    assert member_state.decode(member_state.encode(s, 10.0), 10.0) == s
    assert "6b" * 16 not in repr(s) and bytes(range(16)).hex() not in repr(s)


def _tamper(data: bytes, change) -> bytes:
    doc = json.loads(data)
    change(doc["state"])
    doc["sha256"] = member_state._digest(doc["state"])  # consistent: the field checks answer
    return json.dumps(doc).encode()


_P384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def _g(**kw):
    return lambda b: b["gike"].update(**kw)


def _sa(**kw):
    return lambda b: b["gike"]["rekey_sa"].update(**kw)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("gike"), "state: missing ['gike']"),
    (lambda b: b.pop("protocol"), "state: missing ['protocol']"),
    (lambda b: b.update(version=1), "state: unknown ['gike', 'protocol']"),
    (lambda b: b.update(version="2"), "version: '2', this msecd reads 1 and 2"),
    (lambda b: b.update(protocol="ikev3"), "protocol: 'ikev3', not one of gdoi, g-ikev2"),
    (lambda b: b.update(protocol="gdoi"), "gike: must be null for a GDOI member"),
    (lambda b: b.update(gike=None), "gike: not an object"),
    (_g(extra=1), "gike: unknown ['extra']"),
    (lambda b: b["gike"].pop("key_path"), "gike: missing ['key_path']"),
    (lambda b: b["gike"]["rekey_sa"].pop("kwa"), "gike.rekey_sa: missing ['kwa']"),
    (_sa(spi="00" * 16), "gike.rekey_sa.spi: not 16 bytes, not all zero"),
    (_sa(spi="ab" * 8), "gike.rekey_sa.spi: not 16 bytes"),
    (_sa(encr=3), "gike.rekey_sa.encr: unsupported Rekey SA cipher 3"),
    (_sa(encr="12"), "gike.rekey_sa.encr: not an integer"),
    (_sa(key_bits=100), "gike.rekey_sa.key_bits: 100, not 128, 192 or 256"),
    (_sa(integ=None), "gike.rekey_sa.integ: not an integer"),
    (_sa(integ=99), "gike.rekey_sa.integ: unsupported 99"),
    (_sa(kwa=99), "gike.rekey_sa.kwa: unsupported key wrap algorithm 99"),
    (_sa(keymat="00" * 10), "gike.rekey_sa.keymat: Rekey SA key material of 10 bytes"),
    (_sa(keymat="zz"), "gike.rekey_sa.keymat: not a hex string"),
    (_sa(lifetime_s=0), "gike.rekey_sa.lifetime_s: not an integer in 1.."),
    (_sa(next_spis=["00"]), "gike.rekey_sa.next_spis: an SPI not of 16 bytes"),
    (_sa(next_spis="x"), "gike.rekey_sa.next_spis: not a list"),
    (lambda b: b["gike"]["rekey_sa"]["source"].update(type=9), "gike.rekey_sa.source.type: 9 is not a TsType"),
    (lambda b: b["gike"]["rekey_sa"]["destination"].update(start_address="00"),
     "gike.rekey_sa.destination: addresses not of"),
    (lambda b: b["gike"]["rekey_sa"]["source"].update(end_port=70000),
     "gike.rekey_sa.source.end_port: not an integer in 0..65535"),
    (lambda b: b["gike"]["rekey_sa"]["source"].pop("ip_protocol"), "gike.rekey_sa.source: missing ['ip_protocol']"),
    (_g(expected_message_id=-1), "gike.expected_message_id: not an integer"),
    (_g(expected_message_id=1.5), "gike.expected_message_id: not an integer"),
    (_g(last_digest="00"), "gike.last_digest: not a SHA-256"),
    (_g(last_digest=7), "gike.last_digest: not a hex string"),
    (_g(signature="rsa"), "gike.signature: unknown 'rsa'"),
    (_g(auth_key="00"), "gike.auth_key: not a DER public key"),
    (_g(auth_key=_P384), "gike.auth_key: key does not fit signature algorithm"),
    (_g(key_path=[[0, "aa" * 16]]), "gike.key_path[0].id: not an integer in 1.."),
    (_g(key_path=[[5, "aa" * 16], [5, "bb" * 16]]), "gike.key_path: a key ID twice"),
    (_g(key_path=[[5, "aa" * 3]]), "gike.key_path[0].key: 3 bytes"),
    (_g(key_path=[5]), "gike.key_path[0]: not [key ID, key]"),
    (_g(sender_ids=["x"]), "gike.sender_ids[0]: not an integer"),
    (_g(sender_ids=[1, 1]), "gike.sender_ids: a Sender-ID twice"),
    (_g(mode="bridge"), "gike.mode: 'bridge' is not a mode"),
    (_g(direction=9), "gike.direction: not an integer in 1..3"),
    (_g(address_preservation=True), "gike.address_preservation: not an integer"),
    (lambda b: b["kek"].update(spi="ab" * 16), "kek.spi: not the Rekey SA's"),
    (lambda b: b["kek"].update(iv="00" * 16), "kek.key/kek.iv: lengths do not fit"),
    (lambda b: b.update(lkh=[[0, 1, "aa" * 16]]), "lkh: must be null for a G-IKEv2 member"),
])
def test_decode_refuses_a_damaged_g_ikev2_part_naming_the_field(gike_file, change, message):
    with pytest.raises(MemberStateError) as e:
        member_state.decode(_tamper(gike_file, change))
    assert message in str(e.value)


def test_a_damaged_g_ikev2_file_is_a_fresh_registration(gike_file, tmp_path):
    """The shell's path: the file does not load (MemberStateError), the member registers."""
    files = MemberStateFiles(tmp_path)
    files.path(GID).parent.mkdir(parents=True)
    files.path(GID).write_bytes(_tamper(gike_file, _g(auth_key="00")))
    with pytest.raises(MemberStateError, match="gike.auth_key"):
        files.load(GID, 0.0)


# ------------------------------------------------------------------------- compatibility

def test_a_version_1_gdoi_file_still_loads_and_gdoi_is_still_written_as_version_1():
    """``gdoi-v1.state`` was written by msecd before the G-IKEv2 part existed."""
    data = (DATA / "gdoi-v1.state").read_bytes()
    s = member_state.decode(data, wall_offset=5000.0)
    assert s.protocol == "gdoi" and s.gike is None and s.seq == 7 and s.lkh is not None
    assert member_state.encode(s, wall_offset=5000.0) == data


def test_a_gdoi_snapshot_in_version_2_form_loads_too():
    """Version 2 may carry a GDOI state (protocol "gdoi", gike null), though msecd writes
    GDOI as version 1."""
    def v2(b):
        b.update(version=2, protocol="gdoi", gike=None)
    data = (DATA / "gdoi-v1.state").read_bytes()
    assert member_state.decode(_tamper(data, v2), 5000.0) == member_state.decode(data, 5000.0)


def test_msecds_factory_rebuilds_a_gdoi_receiver_for_a_gdoi_resume(tmp_path):
    """``ResumedRegistration`` without ``gike``: GDOI's PushReceiver from the saved KEK, SEQ
    and LKH path, as before version 2."""
    from gkm.daemon.engines import GdoiFactory
    from gkm.gdoi.member import ResumedRegistration
    from gkm.gdoi.push import PushReceiver
    s = member_state.decode((DATA / "gdoi-v1.state").read_bytes(), 5000.0)
    reg = ResumedRegistration(s.group_id, tuple(t.tek for t in s.teks), s.kek, s.seq, s.lkh, None)
    rx = GdoiFactory(kernel=False).push_receiver(member_group(tmp_path), reg)
    assert type(rx) is PushReceiver and rx.kek == s.kek and rx.receiver_state() is None
