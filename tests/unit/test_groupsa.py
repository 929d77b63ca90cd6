"""xfrm.groupsa against the in-memory port: what each direction installs, rollover order,
per-group removal next to other groups and foreign entries, adoption after a restart."""

from __future__ import annotations

import errno
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from policy.model import Mode as TekMode
from policy.model import SaDirection, TrafficSelector
from policy.suites import ESP_SUITES
from xfrm import aes_gcm
from xfrm.batch import Batch
from xfrm.errors import InvalidArgument, KernelError
from xfrm.groupsa import DEFAULT_PRIORITY, GroupSaInstaller, KernelTek
from xfrm.memory import MemoryXfrm
from xfrm.model import Direction, Mode, Policy, Selector, State, Template
from xfrm.owner import MSEC, Owner

A, N = ip_address, ip_network
SENDER, RECEIVER, BOTH = SaDirection.SENDER_ONLY, SaDirection.RECEIVER_ONLY, SaDirection.SYMMETRIC
FOREIGN = Owner(1, 0xFFFF)
ME = "10.77.0.1"


def tek(group_id: int = 10, spi: int = 0x1000, direction=RECEIVER, src: str = f"{ME}/32",
        dst: str = "239.1.1.1/32", suite: str = "aes-gcm-128", mode=TekMode.TUNNEL,
        seed: int = 1, **kw) -> KernelTek:
    s = ESP_SUITES[suite]
    keys = bytes((seed * 31 + i) & 0xFF for i in range(s.keymat_bytes))
    return KernelTek(group_id, spi, TrafficSelector(N(src), N(dst), 17, 0, 5000), mode,
                     direction, suite, keys[:s.enc_key_bytes], keys[s.enc_key_bytes:], **kw)


def strip(p: Policy) -> Policy:
    return replace(p, index=0)


@pytest.fixture
def port():
    return MemoryXfrm()


@pytest.fixture
def gsa(port):
    return GroupSaInstaller(port, local=[ME, "fd77::1"])


def test_sender_gets_state_and_outbound_policy_naming_the_spi(port, gsa):
    t = tek(direction=SENDER, lifetime_s=600)
    gsa.install(10, [t])
    (st,) = port.dump_states()
    assert (st.src, st.dst, st.spi, st.mode) == (A(ME), A("239.1.1.1"), 0x1000, Mode.TUNNEL)
    assert st.reqid == MSEC.reqid(10) and st.oseq_may_wrap and st.replay_window == 0
    assert st.aead.name == "rfc4106(gcm(aes))" and st.aead.key == t.keymat
    assert st.aead.icv_bits == 128
    assert (st.lifetime.soft_add_seconds, st.lifetime.hard_add_seconds) == (540, 600)
    assert st.selector == Selector(N(f"{ME}/32"), N("239.1.1.1/32"), 17, None, 5000)
    (p,) = port.dump_policies()
    assert strip(p) == Policy(st.selector, Direction.OUT, priority=DEFAULT_PRIORITY, templates=(
        Template(A(ME), A("239.1.1.1"), Mode.TUNNEL, MSEC.reqid(10), spi=0x1000),))


def test_receiver_gets_state_and_inbound_policy_any_spi(port):
    gsa = GroupSaInstaller(port, forward=True)
    t = tek(src="10.77.0.9/32", replay_window=64, suite="aes-cbc-256-hmac-sha512")
    gsa.install(10, [t])
    (st,) = port.dump_states()
    assert st.src == A("10.77.0.9") and not st.oseq_may_wrap and st.replay_window == 64
    assert (st.cipher.name, st.auth.name, st.auth.trunc_bits) == ("cbc(aes)", "hmac(sha512)",
                                                                 256)
    assert st.cipher.key == t.keymat and st.auth.key == t.auth_key
    pols = sorted(port.dump_policies(), key=lambda p: p.direction)
    assert [p.direction for p in pols] == [Direction.IN, Direction.FWD]
    for p in pols:
        (tm,) = p.templates
        assert (tm.src, tm.dst, tm.spi, tm.reqid) == (A("10.77.0.9"), A("239.1.1.1"), 0,
                                                      MSEC.reqid(10))


def test_multi_sender_network_source(port, gsa):
    """Several senders: the source is a network; this host sends from its own address and
    accepts any sender's."""
    gsa.install(10, [tek(direction=BOTH, src="10.77.0.0/24")])
    (st,) = port.dump_states()
    assert st.src == A(ME) and st.oseq_may_wrap
    pols = {p.direction: p for p in port.dump_policies()}
    assert set(pols) == {Direction.OUT, Direction.IN}
    assert pols[Direction.OUT].templates[0].src == A(ME)
    assert pols[Direction.IN].templates[0].src == A("0.0.0.0")
    rx = MemoryXfrm()
    GroupSaInstaller(rx).install(10, [tek(src="10.77.0.0/24")])
    assert rx.dump_states()[0].src == A("0.0.0.0")
    with pytest.raises(InvalidArgument, match="local addresses"):
        GroupSaInstaller(MemoryXfrm()).install(10, [tek(direction=SENDER, src="10.77.0.0/24")])


def test_ipv6_transport(port, gsa):
    t = tek(direction=BOTH, src="fd77::/64", dst="ff3e:30:fd77::8000:1/128",
            mode=TekMode.TRANSPORT)
    view = gsa.install(10, [t])
    (st,) = port.dump_states()
    assert st.mode == Mode.TRANSPORT and st.src == A("fd77::1")
    assert view.teks == (t,)


@pytest.mark.parametrize("direction", [SENDER, RECEIVER, BOTH])
@pytest.mark.parametrize("suite", sorted(ESP_SUITES))
def test_installed_reads_back_the_teks(gsa, direction, suite):
    teks = [tek(spi=0x1000, direction=direction, suite=suite, lifetime_s=100),
            tek(spi=0x1001, direction=direction, suite=suite, dst="239.1.1.2/32", seed=2)]
    view = gsa.install(10, teks)
    again = gsa.installed(10)
    assert (view.teks, view.sending, view.states) == (again.teks, again.sending, again.states)
    assert [strip(p) for p in view.policies] == [strip(p) for p in again.policies]
    assert view.added == {0x1000, 0x1001} and again.added == frozenset()
    assert set(view.teks) == set(teks) and view.group_id == 10
    sending = {t.selector: t.spi for t in teks} if direction != RECEIVER else {}
    assert dict(view.sending) == sending


def test_install_is_idempotent_and_refuses_new_keys_under_an_old_spi(port, gsa):
    t = tek(direction=BOTH)
    gsa.install(10, [t])
    before = (list(port.dump_states()), list(port.dump_policies()))
    port.log.clear()
    gsa.install(10, [t])
    assert port.log == [] and (port.dump_states(), port.dump_policies()) == before
    with pytest.raises(InvalidArgument, match="new SPI"):
        gsa.install(10, [tek(direction=BOTH, seed=9)])


def test_an_install_reads_the_kernel_once(port, gsa):
    old = tek(spi=0x1000, direction=BOTH)
    port.reads = 0
    view = gsa.install(10, [old])
    assert port.reads == 2  # one dump of the SAD, one of the SPD
    new = tek(spi=0x2000, direction=BOTH, seed=2)
    port.reads = 0
    view = gsa.rollover(10, [new], switch=False)
    assert port.reads == 2 and view.added == {0x2000} and view.spis == {0x1000, 0x2000}
    port.reads = 0
    assert dict(gsa.send_on(10, 0x2000).sending) == {new.selector: 0x2000}
    assert port.reads == 2
    port.reads = 0
    assert gsa.remove(10, [0x1000]) == (1, 0) and port.reads == 2
    # the computed views are what the kernel holds
    assert set(gsa.installed(10).teks) == {new}


def test_something_that_is_no_tek_is_refused(port, gsa):
    with pytest.raises(InvalidArgument, match="not a TEK"):
        gsa.install(10, [object()])  # type: ignore[list-item]
    assert port.log == []


def test_rollover_adds_new_states_before_switching_outbound(port, gsa):
    old = tek(spi=0x1000, direction=BOTH)
    gsa.install(10, [old])
    port.log.clear()
    new = tek(spi=0x2000, direction=BOTH, seed=2)
    view = gsa.rollover(10, [new])
    assert port.log == ["add_state", "update_policy"]
    assert view.spis == {0x1000, 0x2000}  # old SA kept for packets still in flight
    assert dict(view.sending) == {new.selector: 0x2000}
    (inb,) = [p for p in port.dump_policies() if p.direction == Direction.IN]
    assert inb.templates[0].spi == 0  # one inbound policy takes both SPIs
    # retire the old TEK: its state goes, the switched policies stay
    assert gsa.remove(10, spis=[0x1000]) == (1, 0)
    assert gsa.installed(10).teks == (new,)
    assert len(port.dump_policies()) == 2


def test_rollover_to_a_new_selector_adds_its_policies(port, gsa):
    gsa.install(10, [tek(spi=0x1000, direction=RECEIVER)])
    view = gsa.rollover(10, [tek(spi=0x2000, direction=RECEIVER, dst="239.1.1.9/32")])
    assert len([p for p in view.policies if p.direction == Direction.IN]) == 2
    assert gsa.remove(10, spis=[0x1000]) == (1, 1)  # the old selector's policy goes with it
    assert [p.selector.dst for p in port.dump_policies()] == [N("239.1.1.9/32")]


def test_removing_the_sending_spi_switches_to_a_spare_or_drops_the_policy(port, gsa):
    a, b = tek(spi=0x1000, direction=SENDER), tek(spi=0x2000, direction=SENDER, seed=2)
    gsa.install(10, [b, a])  # the last listed is the one sent on
    assert dict(gsa.installed(10).sending) == {a.selector: 0x1000}
    assert gsa.remove(10, spis=[0x1000]) == (1, 0)
    assert dict(gsa.installed(10).sending) == {a.selector: 0x2000}
    assert gsa.remove(10, spis=[0x2000]) == (1, 1)
    assert port.dump_policies() == [] and port.dump_states() == []


def test_remove_group_leaves_other_groups_and_foreign_entries(port, gsa):
    gsa.install(10, [tek(10, 0x1000, BOTH)])
    gsa.install(11, [tek(11, 0x1100, RECEIVER, dst="239.1.1.11/32", src="10.77.0.5/32")])
    foreign_state = State(A("10.0.0.1"), A("239.1.1.1"), 0x9999, Mode.TUNNEL, 1,
                          aead=aes_gcm(bytes(20)))
    foreign_pol = Policy(Selector(N("10.0.0.0/8"), N("239.1.1.1/32")), Direction.IN, templates=(
        Template(A("0.0.0.0"), A("239.1.1.1"), Mode.TUNNEL, 1),))
    port.run(Batch(FOREIGN).add_state(foreign_state).add_policy(foreign_pol))
    assert gsa.remove(10) == (1, 2)
    assert {s.spi for s in port.dump_states()} == {0x1100, 0x9999}
    assert {p.templates[0].reqid for p in port.dump_policies()} == {MSEC.reqid(11), 1}
    assert gsa.installed(10).states == () and len(gsa.installed(11).teks) == 1
    assert gsa.remove(10) == (0, 0)


def test_adopt_after_restart(port, gsa):
    g10 = [tek(10, 0x1000, BOTH), tek(10, 0x1001, BOTH, seed=2)]
    g11 = [tek(11, 0x1100, RECEIVER, dst="239.1.1.11/32", src="10.77.0.5/32")]
    big = [tek(0x10000 + 12, 0x1200, SENDER, dst="239.1.1.12/32")]
    gsa.install(10, g10)
    gsa.install(11, g11)
    gsa.install(0x10000 + 12, big)
    port.log.clear()
    again = GroupSaInstaller(port, local=[ME])  # the daemon restarted; same kernel
    found = again.adopt(groups=[0x10000 + 12])
    assert port.log == []  # adopting changes nothing
    assert set(found) == {10, 11, 0x10000 + 12}
    assert set(found[10].teks) == set(g10) and found[11].teks == tuple(g11)
    assert found[0x10000 + 12].teks == tuple(big)
    # the restarted installer manages them as its own: install again is a no-op, remove works
    again.install(10, g10)
    assert port.log == []
    assert again.remove(11) == (1, 1)
    # without the configured id, a group above the span shows under its slot
    assert set(GroupSaInstaller(port).adopt()) == {10, 12}


def test_group_ids_sharing_a_slot_are_refused(gsa):
    gsa.install(10, [tek(10)])
    with pytest.raises(InvalidArgument, match="slot"):
        gsa.install(10 + 65536, [tek(10 + 65536, 0x2000, dst="239.1.1.2/32")])


def test_failed_state_batch_leaves_nothing_of_ours_and_keeps_the_foreign(port, gsa):
    clash = State(A("10.0.0.1"), A("239.1.1.2"), 0x2000, Mode.TUNNEL, 1,
                  aead=aes_gcm(bytes(20)))
    port.run(Batch(FOREIGN).add_state(clash))
    with pytest.raises(KernelError) as info:
        gsa.install(10, [tek(spi=0x1000), tek(spi=0x2000, dst="239.1.1.2/32")])
    assert info.value.errno == errno.EEXIST
    assert port.dump_states() == [clash] and port.dump_policies() == []


def test_foreign_policy_on_the_selector_is_never_replaced(port, gsa):
    t = tek(direction=SENDER)
    foreign = Policy(Selector(N(f"{ME}/32"), N("239.1.1.1/32"), 17, None, 5000), Direction.OUT,
                     templates=(Template(A(ME), A("239.1.1.1"), Mode.TUNNEL, 1),))
    port.run(Batch(FOREIGN).add_policy(foreign))
    with pytest.raises(InvalidArgument, match="someone else"):
        gsa.install(10, [t])
    assert port.dump_states() == [] and [strip(p) for p in port.dump_policies()] == [foreign]


def test_failed_policy_batch_restores_policies_and_drops_new_states(port, gsa):
    gsa.install(10, [tek(spi=0x1000, direction=SENDER)])
    before = [strip(p) for p in port.dump_policies()]

    real_run = port.run

    def failing_run(batch, ignore=()):
        if any(op.name == "update_policy" for op in batch.ops) and not ignore:
            real_run(batch, ignore)
            raise KernelError("update_policy", errno.ENOMEM, None, 0)
        return real_run(batch, ignore)

    port.run = failing_run
    with pytest.raises(KernelError):
        gsa.rollover(10, [tek(spi=0x2000, direction=SENDER, seed=2)])
    port.run = real_run
    assert [strip(p) for p in port.dump_policies()] == before
    assert {s.spi for s in port.dump_states()} == {0x1000}


@pytest.mark.parametrize("change, field", [
    (dict(spi=0x10), "spi"), (dict(suite="aes-gcm-999"), "suite"),
    (dict(keymat=b"short"), "keymat"), (dict(auth_key=b"x"), "auth_key"),
    (dict(lifetime_s=0), "lifetime_s"), (dict(replay_window=5000), "replay_window"),
    (dict(direction=7), "direction"),
])
def test_bad_teks_are_refused_before_anything_changes(port, gsa, change, field):
    good = tek()
    bad = object.__new__(KernelTek)
    for name in KernelTek.__dataclass_fields__:
        object.__setattr__(bad, name, change.get(name, getattr(good, name)))
    with pytest.raises(InvalidArgument) as info:
        gsa.install(10, [good, bad])
    assert field in info.value.field
    assert port.dump_states() == [] and port.log == []


def test_selector_destination_must_be_one_address(gsa):
    with pytest.raises(InvalidArgument, match="one address"):
        gsa.install(10, [tek(dst="239.1.1.0/24", mode=TekMode.TRANSPORT)])
    with pytest.raises(InvalidArgument, match="group_id"):
        gsa.install(11, [tek(10)])


def test_repr_hides_keys():
    t = tek()
    assert t.keymat.hex() not in repr(t) and "keymat" not in repr(t)


def test_gdoi_group_tek_is_installed_as_handed_over(port, gsa):
    """gkm.gdoi's TEK is the installer's input as it is: no conversion, key || salt whole."""
    from gkm.gdoi import GroupTek as GdoiTek
    from policy.model import AddressPreservation
    from xfrm.groupsa import TekSpec

    keymat = bytes(range(16)) + b"salt"
    sel = TrafficSelector(N(f"{ME}/32"), N("239.1.1.1/32"), 17, 0, 5000)
    g = GdoiTek(group_id=10, spi=0x4242, selector=sel, mode=TekMode.TUNNEL,
                address_preservation=AddressPreservation.SOURCE_AND_DESTINATION,
                direction=BOTH, suite="aes-gcm-128", keymat=keymat, auth_key=b"",
                lifetime_s=300)
    assert isinstance(g, TekSpec)
    view = gsa.install(10, [g])
    assert view.teks == (KernelTek(10, 0x4242, sel, TekMode.TUNNEL, BOTH, "aes-gcm-128",
                                   keymat, b"", 300, 0),)
    assert port.dump_states()[0].aead.key == keymat
    # GDOI values that this kernel mapping cannot honour are refused
    bad = replace(g, address_preservation=AddressPreservation.NONE)
    with pytest.raises(InvalidArgument, match="address_preservation"):
        gsa.install(10, [bad])


def test_same_spi_with_a_shorter_remaining_lifetime_is_left_alone(port, gsa):
    """Re-registration hands back installed TEKs with less lifetime left: nothing changes."""
    gsa.install(10, [tek(lifetime_s=600)])
    port.log.clear()
    gsa.install(10, [tek(lifetime_s=420)])
    assert port.log == []
    assert port.dump_states()[0].lifetime.hard_add_seconds == 600


def test_states_in_the_range_not_made_here_are_reported_as_unknown(port, gsa):
    odd = State(A(ME), A("239.1.1.1"), 0x5000, Mode.TUNNEL, MSEC.reqid(10),
                aead=aes_gcm(bytes(20)))  # no selector, no lifetime
    port.add_state(odd)
    gsa.install(10, [tek()])
    view = gsa.installed(10)
    assert len(view.teks) == 1 and view.unknown == (odd,)


def test_installing_known_teks_again_never_moves_the_sender_back(port, gsa):
    old, new = tek(spi=0x1000, direction=SENDER), tek(spi=0x2000, direction=SENDER, seed=2)
    gsa.install(10, [old])
    gsa.rollover(10, [new])
    port.log.clear()
    assert dict(gsa.install(10, [new, old]).sending) == {old.selector: 0x2000}
    assert port.log == []


def test_rollover_without_switch_then_send_on(port, gsa):
    old, new = tek(spi=0x1000, direction=BOTH), tek(spi=0x2000, direction=BOTH, seed=2)
    gsa.install(10, [old])
    port.log.clear()
    view = gsa.rollover(10, [new], switch=False)
    assert port.log == ["add_state"] and dict(view.sending) == {old.selector: 0x1000}
    assert dict(gsa.send_on(10, 0x2000).sending) == {old.selector: 0x2000}
    assert port.log == ["add_state", "update_policy"]
    gsa.send_on(10, 0x2000)  # already: nothing to do
    assert len(port.log) == 2
    with pytest.raises(InvalidArgument, match="no sending TEK"):
        gsa.send_on(10, 0x3000)


def test_an_outbound_policy_naming_an_expired_sa_is_repaired_by_install(port, gsa):
    a = tek(spi=0x1000, direction=SENDER)
    gsa.install(10, [a])
    port.expire(port.dump_states()[0].id)
    b = tek(spi=0x2000, direction=SENDER, seed=2)
    assert dict(gsa.install(10, [b], switch=False).sending) == {a.selector: 0x2000}
