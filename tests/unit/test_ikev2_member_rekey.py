"""gkm.ikev2.member_rekey.GikePushReceiver, the G-IKEv2 member's GSA_REKEY reception behind
GDOI's PushReceiver interface: fed real GSA_REKEYs from a key server's group controller (the
registration and the controller over one real store), and damaged copies of them."""

from __future__ import annotations

import dataclasses
import random

from gkm.gdoi.push import PushRejected, Rekeyed
from gkm.group.storage import load_state
from gkm.ikev2.member_rekey import GikePushReceiver
from tests.unit.test_gdoi_support import GID, KS, NOW, member_group
from tests.unit.test_ikev2_daemon_engines import _controller_step, both_groups, drain, key_server, run


def _world(tmp_path):
    groups = both_groups(tmp_path)
    f, ks = key_server(tmp_path, groups)
    mg = dataclasses.replace(member_group(tmp_path, "gm1"), protocol="g-ikev2")
    em, _eg = run(ks, f.member(mg, KS, NOW))
    rx = f.push_receiver(mg, em[0])
    assert isinstance(rx, GikePushReceiver)
    g = groups[0]
    ctl = f.group_controller(g, load_state(f.provider.store, GID), NOW, signer=f.push_signer(g))
    return f, ctl, rx


def test_damaged_gsa_rekeys_change_nothing_and_the_real_one_still_applies(tmp_path):
    f, ctl, rx = _world(tmp_path)
    _r, [push] = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    good = push.gike
    state = rx._rx.state()
    rnd = random.Random(7)
    for i in range(400):
        bad = bytearray(good)
        if i % 4 == 0:
            bad = bad[:rnd.randrange(len(bad))]  # truncated
        else:
            for _ in range(rnd.randint(1, 3)):
                bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        if bytes(bad) == good:
            continue
        rx.receive_datagram(bytes(bad), KS, NOW)
        evs = drain(rx)
        assert not [e for e in evs if isinstance(e, Rekeyed)], i
        assert rx._rx.state() == state, i
    assert rx.stats["accepted"] == 0 and rx.stats["rejected"] + rx.stats["other_protocol"] >= 390
    rx.receive_datagram(good, KS, NOW)
    [rk] = drain(rx)
    assert isinstance(rk, Rekeyed) and rk.seq == push.seq
    # the same datagram again: a duplicate, quietly
    rx.receive_datagram(good, KS, NOW)
    [dup] = drain(rx)
    assert isinstance(dup, PushRejected) and dup.duplicate


def test_a_gdoi_push_is_dropped_quietly_and_random_bytes_are_refused(tmp_path):
    f, ctl, rx = _world(tmp_path)
    _r, [push] = _controller_step(f, ctl, lambda: ctl.rekey(NOW))
    rx.receive_datagram(push.data, KS, NOW)  # the GDOI twin: another protocol
    assert drain(rx) == [] and rx.stats["other_protocol"] == 1
    rnd = random.Random(3)
    for n in (0, 1, 17, 18, 28, 100, 2000):
        data = bytearray(rnd.randbytes(n))
        if n > 17:
            data[17] = 0x20  # looks like IKEv2
        rx.receive_datagram(bytes(data), KS, NOW)
        assert all(isinstance(e, PushRejected) and not e.resync for e in drain(rx))
    rx.receive_datagram(push.gike, KS, NOW)
    assert [type(e) for e in drain(rx)] == [Rekeyed]
