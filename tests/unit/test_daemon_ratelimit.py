"""msecd's repeated-warning rate limit, with a fake clock."""

from __future__ import annotations

import logging

from gkm.daemon.ratelimit import RepeatFilter


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def _logger(clock):
    out: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            out.append(record.getMessage())

    h = H()
    h.addFilter(RepeatFilter(h.handle, burst=3, window=10.0, clock=clock))
    lg = logging.getLogger("msec-test-ratelimit")
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg, out


def test_flood_of_one_warning_is_summarized():
    clock = _Clock()
    lg, out = _logger(clock)
    for i in range(1000):
        lg.warning("phase 1 with %s failed: %s", f"10.0.{i}.1", "no proposal")
    assert len(out) == 3
    lg.info("registered %s", "gm1")  # INFO is never limited
    lg.warning("another template")
    assert out[-2:] == ["registered gm1", "another template"]
    clock.t = 11.0
    lg.warning("phase 1 with %s failed: %s", "10.9.9.9", "no proposal")
    assert out[-2] == "997 more like this in the last 11 s: phase 1 with %s failed: %s"
    assert out[-1] == "phase 1 with 10.9.9.9 failed: no proposal"


def test_summary_on_flush_when_the_flood_stops():
    clock = _Clock()
    lg, out = _logger(clock)
    for _ in range(5):
        lg.warning("x %d", 1)
    f = lg.handlers[0].filters[0]
    f.flush(5.0)
    assert len(out) == 3
    f.flush(10.0)
    assert out[-1] == "2 more like this in the last 10 s: x %d"
    f.flush(30.0)
    assert len(out) == 4  # nothing more to say
