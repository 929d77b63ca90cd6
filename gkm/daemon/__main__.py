"""msecd: ``msecd --config FILE [--foreground] [--log-level LEVEL] [--log-format text|json]
[--no-kernel]``, ``msecd --version``.

Exit status: 0 after a clean shutdown, 2 when the configuration is refused (every problem is
printed on stderr, nothing was changed), 1 when the daemon cannot start (state directory
locked, port in use, control socket taken, missing component).

Without ``--foreground`` msecd detaches (double fork, ``setsid``, stdio to /dev/null) after the
configuration was validated, logs to syslog (``/dev/log``) when available, and the command
returns once the daemon is up (0) or failed to start (1, reason on stderr); with it, logs go
to stderr, in the journal's conventions when stderr is the journal (:mod:`.logfmt`), and the
daemon tells systemd when it is ready, reloading and stopping (``Type=notify``,
:mod:`.sdnotify`; the unit is ``systemd/msecd.service``).  With ``$NOTIFY_SOCKET`` set msecd
never detaches: ``--foreground`` is implied.  ``--log-format json``: one JSON
object per line.  Signals: SIGHUP reloads, SIGTERM/SIGINT stop (member SAs stay in the kernel).
``--no-kernel`` makes members skip SA installation (they register and log what they would
install), for hosts whose kernel lacks ESP.  ``--accept-state``: the key server serves its
state database even though it is missing, empty, another one or older than its anchor
(:mod:`gkm.store_anchor`; a start without it refuses and says what it found), once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path

from policy.config import ConfigError, advisories, load_config
from gkm import __version__

from .logfmt import JournalFormatter, JsonFormatter, TextFormatter, stderr_is_journal
from .ratelimit import RepeatFilter
from .sdnotify import Notifier

__all__ = ["main", "parse_args"]

DEFAULT_CONFIG = "/etc/msec/msecd.toml"
_repeats: RepeatFilter | None = None  # the log handler's rate limit (flushed by _run)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msecd", description="msec group key manager daemon")
    p.add_argument("--version", action="version", version=f"msecd {__version__}")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    p.add_argument("--foreground", "-f", action="store_true", help="do not detach; log to stderr")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], type=str.lower)
    p.add_argument("--log-format", default="text", choices=["text", "json"], type=str.lower,
                   help="text (default; the journal's conventions under systemd) or json "
                        "(one object per line: time, level, logger, message, fields)")
    p.add_argument("--control-socket", default=None,
                   help="override [daemon] control_socket")
    p.add_argument("--no-kernel", action="store_true",
                   help="members do not install SAs in the kernel (log them instead)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration and exit (0 valid, 2 refused)")
    p.add_argument("--accept-state", action="store_true",
                   help="key server: serve the state database even though it is missing, "
                        "empty, another one or older than its anchor (after a refused start "
                        "said why); each group's SEQ is raised above the last one sent")
    return p.parse_args(argv)


def _setup_logging(level: str, foreground: bool, fmt: str = "text") -> None:
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    for h in list(root.handlers):
        root.removeHandler(h)
    if foreground or not os.path.exists("/dev/log"):
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setFormatter(JsonFormatter() if fmt == "json" else
                       JournalFormatter() if stderr_is_journal() else TextFormatter())
    else:
        h = logging.handlers.SysLogHandler(address="/dev/log",
                                           facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        h.setFormatter(JsonFormatter() if fmt == "json" else
                       logging.Formatter("msecd[%(process)d]: %(levelname)s %(message)s"))
    # a flood must not fill the disk through the log: repeated warnings are summarized
    global _repeats
    _repeats = RepeatFilter(h.handle)
    h.addFilter(_repeats)
    root.addHandler(h)
    # msecd logs one line per registration, refusal and SA change itself; the engines' own
    # lines (gkm.ike, gkm.gdoi) would repeat them, so they show only at debug level (and
    # their errors always)
    logging.getLogger("gkm").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)


def _daemonize() -> int:
    """Detach; the original process waits until the daemon reports that it started (exit 0)
    or failed (exit 1), so ``msecd`` in a boot script returns an honest status.  Returns the
    write end of that report pipe, in the daemon."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            report = f.read()
        if report.startswith(b"ok"):
            os._exit(0)
        sys.stderr.write("msecd: " + (report.decode(errors="replace").strip()
                                      or "failed to start") + "\n")
        os._exit(1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    fd = os.open(os.devnull, os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
    if fd > 2:
        os.close(fd)
    return w


def _report(fd: int | None, text: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, text.encode())
        os.close(fd)
    except OSError:
        pass


async def _run(args: argparse.Namespace, config) -> int:
    from .daemon import Daemon, StartupError
    from .engines import GdoiFactory

    daemon = Daemon(args.config, config, factory=GdoiFactory(kernel=not args.no_kernel),
                    control_socket=args.control_socket, accept_state=args.accept_state)
    notifier = Notifier()
    try:
        await daemon.start()
    except StartupError as e:
        logging.getLogger("msecd").error("cannot start: %s", e)
        _report(args.ready_fd, f"cannot start: {e}")
        notifier.status(f"cannot start: {e}")
        return 1
    _report(args.ready_fd, "ok")
    # listening (UDP and the control socket) and the kernel's SAs adopted: ready
    notifier.ready(daemon.status_line())
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task] = set()

    async def reload() -> None:
        notifier.reloading()
        try:
            r = await daemon.reload()
        finally:
            notifier.ready(daemon.status_line())
        if not r.get("ok"):
            notifier.status(f"{daemon.status_line()}; last reload refused")

    def on_hup() -> None:
        t = loop.create_task(reload())
        reloads.add(t)
        t.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def every_5s() -> None:
        if _repeats is not None:  # the summary of a flood that stopped
            _repeats.flush()
        if not reloads:
            notifier.status(daemon.status_line())  # sent only when it changed
        loop.call_later(5.0, every_5s)

    every_5s()
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop, "SIGINT")
    await daemon.wait_stopped()
    notifier.stopping()
    await daemon.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is in place
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"msecd: configuration {args.config} refused, {len(e.problems)} problem(s):",
              file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    if args.check:
        notes = advisories(config)
        print(f"msecd: configuration {args.config} is valid"
              + (f", {len(notes)} advisory note(s):" if notes else ""))
        for a in notes:
            print(f"  advisory: {a}")
        return 0
    args.config = str(Path(args.config).resolve())
    # under systemd's Type=notify ($NOTIFY_SOCKET set) the service manager supervises the
    # process it started: a detached msecd would be a child it never hears READY=1 from
    args.foreground = args.foreground or Notifier().enabled
    args.ready_fd = None if args.foreground else _daemonize()
    _setup_logging(args.log_level, args.foreground, args.log_format)
    try:
        return asyncio.run(_run(args, config))
    except KeyboardInterrupt:
        return 0
    except BaseException as e:
        _report(args.ready_fd, f"cannot start: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
