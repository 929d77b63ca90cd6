"""gkm.group.delivery on a fake clock: multicast copies, unicast pacing, GROUPKEY-PUSH-ACKs,
retransmission with backoff, lost members and their return."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from gkm.gdoi.push_ack import ack_key, build_push_ack
from gkm.group import (AckRefused, MemberLost, Push, RekeyAcknowledged, RekeyDelivery,
                       RekeyUnacknowledged)
from policy.model import KekPolicy
from policy.suites import KEK_CIPHERS, SIGNATURE_SUITES

SPI = bytes(range(1, 17))
KEY = bytes(range(100, 116))  # the KEK's key without IV


def _kek(**kw) -> KekPolicy:
    return KekPolicy(KEK_CIPHERS["aes-cbc-128"], SIGNATURE_SUITES["ecdsa-p256"], Path("k.pem"),
                     ipaddress.ip_address("239.192.0.1"), **kw)


def _members(n: int) -> list[tuple[str, str]]:
    return [(f"key-id:gm{i}", str(ipaddress.ip_address("10.0.0.0") + i + 1)) for i in range(n)]


def _drain(d: RekeyDelivery) -> list:
    return d.datagrams_to_send()


def _events(d: RekeyDelivery) -> list:
    out = []
    while (ev := d.next_event()) is not None:
        out.append(ev)
    return out


def _run_until(d: RekeyDelivery, end: float, now: float) -> tuple[list, float]:
    """Fire the delivery's timer until ``end``; (time, datagram) pairs sent."""
    sent = []
    while (t := d.get_timer()) is not None and t <= end:
        now = max(now, t)
        d.handle_timer(now)
        sent += [(now, o) for o in _drain(d)]
    return sent, now


def test_multicast_copies_are_byte_identical_and_spaced_by_the_interval():
    d = RekeyDelivery(7, _kek(rekey_copies=3, rekey_copy_interval_s=0.25))
    push = Push(5, SPI, b"push-5")
    dests = d.submit([push], _members(2), {}, now=100.0)
    assert dests == [("239.192.0.1", 848), ("10.0.0.1", 848), ("10.0.0.2", 848)]
    first = _drain(d)
    assert [(o.dest, o.multicast) for o in first] == [(("239.192.0.1", 848), True),
                                                      (("10.0.0.1", 848), False),
                                                      (("10.0.0.2", 848), False)]
    assert d.get_timer() == pytest.approx(100.25)
    sent, _ = _run_until(d, 200.0, 100.0)
    group = [t for t, o in sent if o.multicast]
    assert group == pytest.approx([100.25, 100.5])
    assert all(o.data == b"push-5" for _t, o in sent) and len(sent) == 6
    assert d.get_timer() is None and _events(d) == []


def test_multicast_copies_of_a_rekey_of_several_pushes_keep_their_order():
    d = RekeyDelivery(7, _kek(rekey_copies=2, rekey_copy_interval_s=1.0))
    d.submit([Push(3, SPI, b"a"), Push(1, b"n" * 16, b"b")], [], {}, now=0.0)
    sent = [o.data for o in _drain(d)]
    more, _ = _run_until(d, 10.0, 0.0)
    assert sent + [o.data for _t, o in more] == [b"a", b"b", b"a", b"b"]


def test_unicast_sends_one_copy_per_member_and_nothing_to_the_rekey_address():
    d = RekeyDelivery(7, _kek(rekey_delivery="unicast", rekey_copies=3))
    dests = d.submit([Push(5, SPI, b"p")], _members(3), {SPI: KEY}, now=0.0)
    out = _drain(d)
    assert [o.dest for o in out] == dests == [("10.0.0.1", 848), ("10.0.0.2", 848),
                                             ("10.0.0.3", 848)]
    assert not any(o.multicast for o in out)


def test_a_gsa_rekey_twin_goes_to_the_rekey_address_and_to_g_ikev2_members():
    """A group served over GDOI and G-IKEv2: the rekey address gets each PUSH and its GSA_REKEY,
    every copy; a member's unicast copies (and retransmissions) carry its own protocol's."""
    members = [("key-id:gm0", "10.0.0.1", "gdoi"), ("key-id:gm1", "10.0.0.2", "g-ikev2")]
    d = RekeyDelivery(7, _kek(rekey_copies=2, rekey_copy_interval_s=1.0))
    d.submit([Push(5, SPI, b"push", b"gsa-rekey")], members, {}, now=0.0)
    sent = [(0.0, o) for o in _drain(d)] + _run_until(d, 10.0, 0.0)[0]
    assert [(t, o.dest[0], o.data) for t, o in sent] == [
        (0.0, "239.192.0.1", b"push"), (0.0, "239.192.0.1", b"gsa-rekey"),
        (0.0, "10.0.0.1", b"push"), (0.0, "10.0.0.2", b"gsa-rekey"),
        (1.0, "239.192.0.1", b"push"), (1.0, "239.192.0.1", b"gsa-rekey"),
        (1.0, "10.0.0.1", b"push"), (1.0, "10.0.0.2", b"gsa-rekey")]
    u = _unicast()
    u.submit([Push(5, SPI, b"push", b"gsa-rekey")], members, {SPI: KEY}, now=0.0)
    assert [(o.dest[0], o.data) for o in _drain(u)] == [("10.0.0.1", b"push"),
                                                        ("10.0.0.2", b"gsa-rekey")]
    again, _ = _run_until(u, 3.0, 0.0)
    assert sorted((o.dest[0], o.data) for _t, o in again) == [("10.0.0.1", b"push"),
                                                              ("10.0.0.2", b"gsa-rekey")]
    # a G-IKEv2 member re-registers over GDOI: its copies follow (the store's roster)
    u.submit([Push(6, SPI, b"push6", b"gsa-rekey6")],
             [("key-id:gm0", "10.0.0.1", "gdoi"), ("key-id:gm1", "10.0.0.2", "gdoi")],
             {SPI: KEY}, now=10.0)
    assert [(o.dest[0], o.data) for o in _drain(u)] == [("10.0.0.1", b"push6"),
                                                        ("10.0.0.2", b"push6")]


@pytest.mark.parametrize("mode", ["unicast", "multicast"])
def test_unicast_datagrams_are_paced_at_the_configured_rate(mode):
    rate, n = 1000, 5000
    d = RekeyDelivery(7, _kek(rekey_delivery=mode, rekey_unicast_rate=rate, rekey_copies=1,
                              rekey_ack_timeout_s=300))  # no retransmission in view
    d.submit([Push(5, SPI, b"p")], _members(n), {SPI: KEY}, now=0.0)
    sent = [(0.0, o) for o in _drain(d) if not o.multicast]
    assert len(sent) == rate * 0.02  # the bucket's burst, at once
    more, _ = _run_until(d, 100.0, 0.0)
    sent += [(t, o) for t, o in more if not o.multicast and t < 50]
    assert len(sent) == n and len({o.dest for _t, o in sent}) == n
    times = [t for t, _o in sent]
    assert times[-1] == pytest.approx((n - 20) / rate, abs=0.03)
    # no 100 ms window holds more than the rate allows plus one burst
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 0.1:
            j += 1
        assert i - j + 1 <= rate * 0.1 + rate * 0.02 + 1
    # and the timer wakes up once per burst, not once per datagram
    assert len({t for t in times}) <= n / 20 + 2


def _ack(seq: int, host: str, spi: bytes = SPI, key: bytes = KEY) -> bytes:
    return build_push_ack(spi=spi, seq=seq, address=host, key=ack_key(key, spi))


def _unicast(**kw) -> RekeyDelivery:
    return RekeyDelivery(7, _kek(rekey_delivery="unicast", rekey_ack_timeout_s=2,
                                 rekey_ack_retries=2, rekey_max_missed=3, **kw))


def test_ack_clears_the_member_and_stops_its_retransmission():
    d = _unicast()
    d.submit([Push(5, SPI, b"p")], _members(2), {SPI: KEY}, now=0.0)
    _drain(d)
    d.receive_ack(_ack(5, "10.0.0.1"), ("10.0.0.1", 848), 0.5)
    assert [type(e) for e in _events(d)] == [RekeyAcknowledged]
    sent, _ = _run_until(d, 3.0, 0.5)
    assert [o.dest[0] for _t, o in sent] == ["10.0.0.2"]  # only the silent one, at 2 s
    assert sent[0][0] == pytest.approx(2.0)
    m = d.members()
    assert m["key-id:gm0"] == {"last_acked_seq": 5, "missed_rekeys": 0, "lost": False,
                               "unacknowledged": []}
    assert m["key-id:gm1"]["unacknowledged"] == [5] and m["key-id:gm1"]["last_acked_seq"] is None


def test_retransmission_backs_off_then_the_rekey_counts_as_missed():
    d = _unicast()
    d.submit([Push(5, SPI, b"p")], _members(1), {SPI: KEY}, now=0.0)
    _drain(d)
    sent, _ = _run_until(d, 100.0, 0.0)
    assert [t for t, _o in sent] == pytest.approx([2.0, 6.0])  # timeout 2 s, then 4 s
    evs = _events(d)
    assert evs == [RekeyUnacknowledged(7, "key-id:gm0", (5,), 1)]
    assert d.members()["key-id:gm0"]["missed_rekeys"] == 1


def test_lost_after_max_missed_in_a_row_only_once_it_acknowledged_then_back_on_registration():
    d = _unicast()
    members = _members(2)
    now = 0.0
    d.submit([Push(1, SPI, b"p1")], members, {SPI: KEY}, now)
    _drain(d)
    for host in ("10.0.0.1", "10.0.0.2"):
        d.receive_ack(_ack(1, host), (host, 848), now + 0.1)
    _events(d)
    lost = []
    for seq in (2, 3, 4):  # gm0 stops answering; gm1 answers every rekey
        now += 60
        d.submit([Push(seq, SPI, b"p%d" % seq)], members, {SPI: KEY}, now)
        d.receive_ack(_ack(seq, "10.0.0.2"), ("10.0.0.2", 848), now + 0.1)
        _sent, now = _run_until(d, now + 30, now)
        lost += [e for e in _events(d) if isinstance(e, MemberLost)]
    assert lost == [MemberLost(7, "key-id:gm0", 3)]
    assert d.members()["key-id:gm0"]["lost"] and d.members()["key-id:gm0"]["missed_rekeys"] == 3
    # a lost member gets nothing more
    now += 60
    dests = d.submit([Push(5, SPI, b"p5")], members, {SPI: KEY}, now)
    assert dests == [("10.0.0.2", 848)]
    assert [o.dest[0] for o in _drain(d)] == ["10.0.0.2"]
    # it registers again: delivered to again, its record fresh
    d.registered("key-id:gm0", "10.0.0.1")
    now += 60
    dests = d.submit([Push(6, SPI, b"p6")], members, {SPI: KEY}, now)
    assert ("10.0.0.1", 848) in dests
    assert d.members()["key-id:gm0"] == {"last_acked_seq": None, "missed_rekeys": 0,
                                         "lost": False, "unacknowledged": [6]}


def test_a_member_that_never_acknowledged_is_never_lost():
    d = _unicast()
    now = 0.0
    for seq in range(1, 8):
        d.submit([Push(seq, SPI, b"p")], _members(1), {SPI: KEY}, now)
        _sent, now = _run_until(d, now + 30, now)
        now += 30
    assert d.members()["key-id:gm0"]["missed_rekeys"] == 7
    assert not d.members()["key-id:gm0"]["lost"]


def test_a_new_rekey_supersedes_an_unacknowledged_one():
    d = _unicast()
    d.submit([Push(1, SPI, b"p1")], _members(1), {SPI: KEY}, 0.0)
    d.submit([Push(2, SPI, b"p2")], _members(1), {SPI: KEY}, 0.5)
    assert [o.data for o in _drain(d)] == [b"p1", b"p2"]
    assert _events(d) == [RekeyUnacknowledged(7, "key-id:gm0", (1,), 1)]
    sent, _ = _run_until(d, 3.0, 0.5)
    assert [o.data for _t, o in sent] == [b"p2"]


@pytest.mark.parametrize("why, data, src", [
    ("forged HASH", lambda: _ack(5, "10.0.0.1", key=bytes(16)), ("10.0.0.1", 848)),
    ("unknown SEQ", lambda: _ack(6, "10.0.0.1"), ("10.0.0.1", 848)),
    ("other SPI", lambda: _ack(5, "10.0.0.1", spi=bytes(16)), ("10.0.0.1", 848)),
    ("ID is not the source", lambda: _ack(5, "10.0.0.1"), ("10.0.0.9", 848)),
    ("no such member", lambda: _ack(5, "10.0.0.7"), ("10.0.0.7", 848)),
    ("truncated", lambda: _ack(5, "10.0.0.1")[:-1], ("10.0.0.1", 848)),
    ("garbage", lambda: b"\x00" * 40, ("10.0.0.1", 848)),
])
def test_a_bad_ack_changes_nothing(why, data, src):
    d = _unicast()
    d.submit([Push(5, SPI, b"p")], _members(1), {SPI: KEY}, 0.0)
    _drain(d)
    before = d.members()
    d.receive_ack(data(), src, 0.5)
    evs = _events(d)
    assert len(evs) == 1 and isinstance(evs[0], AckRefused), (why, evs)
    assert d.members() == before
    sent, _ = _run_until(d, 3.0, 0.5)
    assert len(sent) == 1  # still retransmitted


def test_a_copy_of_an_ack_is_dropped_before_any_check():
    d = _unicast()
    d.submit([Push(5, SPI, b"p")], _members(1), {SPI: KEY}, 0.0)
    a = _ack(5, "10.0.0.1")
    d.receive_ack(a, ("10.0.0.1", 848), 0.1)
    d.receive_ack(a, ("10.0.0.1", 848), 0.2)
    assert [type(e) for e in _events(d)] == [RekeyAcknowledged]
    assert d.stats["ack_copies"] == 1 and d.stats["acks"] == 1


def test_multicast_group_refuses_acks():
    d = RekeyDelivery(7, _kek())
    d.submit([Push(5, SPI, b"p")], _members(1), {SPI: KEY}, 0.0)
    d.receive_ack(_ack(5, "10.0.0.1"), ("10.0.0.1", 848), 0.1)
    assert [type(e) for e in _events(d)] == [AckRefused]


def test_policy_update_applies_the_new_rate():
    d = RekeyDelivery(7, _kek(rekey_unicast_rate=1000, rekey_copies=1))
    d.update_policy(dataclasses.replace(d.kek, rekey_unicast_rate=100))
    d.submit([Push(5, SPI, b"p")], _members(10), {}, 0.0)
    assert len([o for o in _drain(d) if not o.multicast]) == 2
