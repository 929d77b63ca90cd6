"""msecd's log formats: where the lines go decides what they carry.

* ``text`` (default) on a terminal or a file: ``TIME msecd[PID] LEVEL message``.
* ``text`` under systemd, i.e. when stderr is the journal's stream (``$JOURNAL_STREAM`` names
  stderr's device and inode, as systemd.exec(5) says to check): ``<N>message``, the syslog
  priority as a prefix the journal reads (``SyslogLevelPrefix=``, on by default) and neither
  time nor pid, which the journal records itself.  A logger other than ``msecd`` is named
  before the message (``gkm.ike: ...``).
* ``json``: one object per line for log pipelines: ``time`` (RFC 3339, UTC), ``level``
  (``debug`` .. ``critical``), ``logger``, ``message``, ``fields`` (``pid`` and whatever the
  call passed with ``extra=``) and, for an exception, ``exc`` (the traceback text).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os

__all__ = ["JsonFormatter", "JournalFormatter", "TextFormatter", "stderr_is_journal",
           "SYSLOG_PRIORITY"]

#: logging level -> syslog priority (RFC 5424): what the journal's ``<N>`` prefix carries
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                   logging.CRITICAL: 2}

#: the attributes every LogRecord has; anything else came in through ``extra=``
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def stderr_is_journal(fd: int = 2) -> bool:
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return SYSLOG_PRIORITY[logging.DEBUG]


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s msecd[%(process)d] %(levelname)s %(message)s")


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name != "msecd":
            text = f"{record.name}: {text}"
        # a multi-line message (a traceback) stays one journal entry per line, each prefixed
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"pid": record.process}
        fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        obj = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
                      .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "fields": fields,
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)
