"""``tools/bench evict`` scaled down: the real group controller evicts from a group of 2,000,
every member's LKH engine and a sample of real PUSH receivers check the result, and the JSON
has the documented shape.  Nothing here is about speed.  The checks are shown to catch a
wrong outcome (they are what makes ``all_applied`` mean something)."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from tools.benchmarks import evict as bench


def test_small_run_prints_the_documented_json(capsys):
    assert bench.main(["--sizes", "1200,2000", "--batch", "100", "--repeats", "2",
                       "--receivers", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["name"] == "evict" and out["members"] == 2000 and out["all_applied"] is True
    for key in ("evict1_ks_ms", "evict1_bytes", "batch1000_ks_ms", "batch1000_bytes", "ratio"):
        assert out[key] > 0, key
    assert set(out["sizes"]) == {"1200", "2000"}
    small = out["sizes"]["2000"]
    # every member's view was checked in both scenarios (1 + 1,999 + 1,998 - 100 + 100)
    assert small["views_checked"] == 2000 + 1998
    assert small["receivers_checked"] == 3 + 1 + 3 + 3
    assert small["batch1000_datagrams"] >= 2 and small["batch1000_max_datagram"] <= 8192
    # naive: one datagram per remaining member, far more bytes than the LKH eviction
    assert small["naive_bytes"] > 100 * small["evict1_bytes"]
    assert out["ratio"] == small["ratio"] == round(small["naive_bytes"] / small["evict1_bytes"], 1)


@pytest.fixture
def eviction(tmp_path):
    g = bench.make_group(300, tmp_path)
    ids = [m for m, _ in g.before.members()]
    epoch = g.state.tree.epoch
    ev = bench.evict(g, random.Random(3).sample(ids, 5), bench.NOW + 10)
    return g, ev, epoch, ids


def test_checks_accept_the_real_eviction(eviction):
    g, ev, epoch, _ids = eviction
    assert bench.check_all_views(g, ev, epoch) == (295, 5)
    assert bench.check_receivers(g, ev, epoch, 4, random.Random(1)) == 4 + 4


def test_checks_catch_a_member_that_was_not_evicted(eviction):
    g, ev, epoch, ids = eviction
    claimed = [next(i for i in ids if i not in ev.gone)] + ev.gone[1:]
    wrong = dataclasses.replace(ev, gone=claimed)
    with pytest.raises(SystemExit, match="could not apply|wrong group key"):
        bench.check_all_views(g, wrong, epoch)
    with pytest.raises(SystemExit, match="did not apply|evicted member"):
        bench.check_receivers(g, wrong, epoch, 300, random.Random(1))


def test_checks_catch_a_tampered_datagram(eviction):
    g, ev, epoch, _ids = eviction
    bad = bytearray(ev.datagrams[0])
    bad[-40] ^= 1  # inside the signature / last block: the receivers must refuse it
    tampered = dataclasses.replace(ev, datagrams=[bytes(bad), *ev.datagrams[1:]])
    with pytest.raises(SystemExit):
        bench.check_receivers(g, tampered, epoch, 3, random.Random(1))
