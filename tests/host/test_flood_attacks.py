"""Denial-of-service attacks against a real msecd key server over loopback (the floods of
``tools/bench flood``, each in its own process).  Assertions are on counts with margins, never
on time: legitimate members either register within a generous deadline or they do not."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tools.benchmarks.flood import Flood, legit, start_keyserver
from tools.benchmarks.registration import write_pki

pytestmark = pytest.mark.host
MEMBERS = 100


@pytest.fixture
def workdir(tmp_path):
    os.chmod(tmp_path, 0o700)
    write_pki(tmp_path)
    return tmp_path


def _wait(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_message3_flood_from_one_address_leaves_room_for_everybody(workdir):
    """One real address sends 1,000 message 1s a second and answers every message 2 with a
    valid message 3 (never a message 5).  Before: it held every exchange slot that costs the
    key server a DH and 0 of 100 members registered.  Now it gets its per-address share and
    the members register."""
    ks, port = start_keyserver(workdir, "mm3")
    fl = None
    try:
        fl = Flood("mm3_one_source", port, 1000, 60)
        time.sleep(4)  # at 1,000/s the old server's 2,000 DH slots are full after ~2 s
        r = asyncio.run(legit(port, 0, MEMBERS, 16, 20))
        fl.stop()
        stats = fl.result(30)
    finally:
        if fl is not None:
            fl.stop()
        ks.stop()
    assert stats.get("mm3_sent", 0) > 0, stats  # the attack ran
    assert r["ok"] >= 0.9 * MEMBERS, (r, stats)
    # the attacker made the key server do at most a few of its share of DHs (64 per 30 s)
    assert stats["mm4_received"] <= 3 * 64, stats
