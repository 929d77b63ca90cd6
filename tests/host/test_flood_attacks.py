"""Denial-of-service attacks against a real msecd key server over loopback (the floods of
``tools/bench flood``, each in its own process).  Assertions are on counts with margins, never
on time: legitimate members either register within a generous deadline or they do not."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tools.benchmarks.flood import legit, start_keyserver
from tools.benchmarks.registration import write_pki
from tools.flood_attacks import Flood

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


@pytest.mark.timeout(120)
def test_spoofed_message1_with_refused_proposal_is_not_reflected(workdir):
    """Message 1s with an unacceptable proposal spoofed from 50 victim addresses, 1,000/s for
    3 s: the key server used to answer each with a notification (a reflector); now a few."""
    from tools.flood_attacks import flood_mm1_spoofed

    ks, port = start_keyserver(workdir, "reflect")
    try:
        stats = asyncio.run(flood_mm1_spoofed(port, 1000, 3, group=14, victims=50))
    finally:
        ks.stop()
    assert stats["mm1_sent"] >= 1000, stats
    # at most one per victim per 10 s, and 10/s (burst 20) in all: <= 50 here
    assert stats["reflected"] <= 60, stats


@pytest.mark.timeout(120)
def test_one_member_cannot_hold_unbounded_phase1_sas_nor_open_them_at_will(workdir):
    """An authenticated member opening phase 1 SA after SA (no INITIAL-CONTACT, 8 at a time) for
    6 s.  It used to get thousands (each a DH and a whole exchange for the key server: most of
    its CPU).  Now the key server keeps at most 32 for its identity (deleting the oldest, the
    member receives the Deletes) and completes at most its burst of 32, the 8 already past
    message 3 when the first was refused (deleted at once, its address then held), and about
    one per second."""
    from tools.flood_attacks import flood_sa_exhaustion

    ks, port = start_keyserver(workdir, "sas")
    try:
        stats = asyncio.run(flood_sa_exhaustion(port, 6))
    finally:
        ks.stop()
    assert stats["established"] > 32, stats  # the burst, so the bound of 32 was reached
    assert stats["established"] <= 32 + 8 + 6 + 4, stats
    assert stats["deleted_by_server"] >= stats["established"] - 32 - 8, stats
