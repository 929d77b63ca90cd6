"""Rate limit for repeated log lines (a flood must not fill the disk through the log).

:class:`RepeatFilter` is a ``logging.Filter`` for msecd's handler: records of level WARNING and
above that share (logger, level, message template) pass ``burst`` times per ``window`` seconds;
the rest are counted and, when that window has closed (checked on the next record of any key,
or by :meth:`flush`), one summary line says ``N more like this in the last M s: TEMPLATE``.
DEBUG and INFO lines pass untouched (INFO is one line per registration or SA change, which an
operator wants complete; a flood's per-datagram lines are at WARNING or DEBUG).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable

__all__ = ["RepeatFilter"]


class _Window:
    __slots__ = ("start", "passed", "suppressed", "name", "levelno", "template")

    def __init__(self, start: float, record: logging.LogRecord, template: str) -> None:
        self.start = start
        self.passed = 1
        self.suppressed = 0
        self.name = record.name
        self.levelno = record.levelno
        self.template = template


class RepeatFilter(logging.Filter):
    def __init__(self, emit: Callable[[logging.LogRecord], object], *, burst: int = 10, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        super().__init__()
        self._emit = emit
        self.burst = burst
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._windows: OrderedDict[tuple, _Window] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "msec_summary", False) or record.levelno < logging.WARNING:
            return True
        now = self._clock()
        self.flush(now)
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, template)
        w = self._windows.get(key)
        if w is None:
            self._windows[key] = _Window(now, record, template)
            while len(self._windows) > self._max_keys:
                _k, old = self._windows.popitem(last=False)
                self._summary(old, now)
            return True
        if w.passed < self.burst:
            w.passed += 1
            return True
        w.suppressed += 1
        return False

    def flush(self, now: float | None = None) -> None:
        """Close every window older than ``window``: one summary line for each that suppressed."""
        now = self._clock() if now is None else now
        for key in [k for k, w in self._windows.items() if now - w.start >= self.window]:
            self._summary(self._windows.pop(key), now)

    def _summary(self, w: _Window, now: float) -> None:
        if not w.suppressed:
            return
        r = logging.LogRecord(w.name, w.levelno, __file__, 0, "%d more like this in the last %.0f s: %s",
                              (w.suppressed, max(now - w.start, 0.0), w.template), None)
        r.msec_summary = True
        self._emit(r)
