"""tools/fuzz (the long campaign, not run by CI) still runs every target, and a parser that
lets an unexpected exception out is reported as a crash with its input kept."""

from __future__ import annotations

import json

from tools import fuzzing


def test_every_target_runs(tmp_path, capsys):
    assert fuzzing.main(["--iterations", "40", "--seed", "1", "--out", str(tmp_path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["targets"]) == set(fuzzing.TARGETS) and last["crashes"] == 0
    assert all(t["iterations"] == 40 for t in last["targets"].values())


def test_a_crash_is_reported_and_kept(tmp_path, capsys, monkeypatch):
    def broken():
        def run(data: bytes) -> bool:
            if len(data) > 3:
                raise IndexError("boom")
            return False
        return [b"abcdef"], run
    monkeypatch.setitem(fuzzing.TARGETS, "broken", broken)
    assert fuzzing.main(["--iterations", "20", "--parser", "broken", "--seed", "1",
                         "--out", str(tmp_path)]) == 1
    assert "fuzz broken: CRASH IndexError: boom" in capsys.readouterr().err
    kept = sorted(tmp_path.glob("crash-broken-*.txt"))
    assert kept and "IndexError: boom" in kept[0].read_text()
