"""Where msecd gets its engines and its SA installer: the only module that knows how
`gkm.gdoi` and `xfrm.groupsa` are constructed.  Unit tests pass their own factory to
`Daemon` instead.

``EngineFactory``:

* ``keyserver(settings, store, now) -> engine``: a ``KeyServerEngine`` (phase 1 responder +
  GROUPKEY-PULL responder) for the key server role, keys persisted in ``store``;
* ``member(group, key_server, now) -> engine``: a started ``MemberRegistration`` towards
  ``key_server`` = (host, port), datagrams queued;
* ``installer() -> installer``: a ``GroupSaInstaller`` on an ``XfrmSocket`` in the daemon's
  network namespace (or :class:`NullInstaller` with ``--no-kernel``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Protocol

log = logging.getLogger("msecd")

__all__ = ["EngineFactory", "GdoiFactory", "NullInstaller", "EngineUnavailable"]


class EngineUnavailable(RuntimeError):
    """This build of msec lacks a component the configuration needs."""


class EngineFactory(Protocol):
    def keyserver(self, settings: Any, store: Any, now: float) -> Any: ...
    def member(self, group: Any, key_server: tuple[str, int], now: float) -> Any: ...
    def installer(self) -> Any: ...


class NullInstaller:
    """``--no-kernel``: remembers what would be installed and touches no kernel state."""

    def __init__(self) -> None:
        self._groups: dict[int, tuple] = {}

    def install(self, group_id: int, teks) -> None:
        self._groups[group_id] = tuple(teks)

    def rollover(self, group_id: int, teks) -> None:
        self._groups[group_id] = tuple(teks)

    def remove(self, group_id: int) -> None:
        self._groups.pop(group_id, None)

    def adopt(self):
        return {}

    def installed(self):
        return dict(self._groups)


def _call(fn, /, *args, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts (the gdoi constructors are young)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(*args, **kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


class GdoiFactory:
    """The real engines (gkm.gdoi) and installer (xfrm.groupsa)."""

    def __init__(self, *, kernel: bool = True, netns=None) -> None:
        self.kernel = kernel
        self.netns = netns

    @staticmethod
    def _gdoi():
        try:
            import gkm.gdoi as gdoi
        except ImportError as e:  # pragma: no cover - depends on the build
            raise EngineUnavailable(f"gkm.gdoi is not available: {e}") from None
        return gdoi

    def keyserver(self, settings, store, now: float):
        gdoi = self._gdoi()
        cls = getattr(gdoi, "KeyServerEngine", None)
        if cls is None:
            raise EngineUnavailable("gkm.gdoi has no KeyServerEngine yet")
        return _call(cls, settings, store, now=now)

    def member(self, group, key_server: tuple[str, int], now: float):
        gdoi = self._gdoi()
        cls = getattr(gdoi, "MemberRegistration", None)
        if cls is None:
            raise EngineUnavailable("gkm.gdoi has no MemberRegistration yet")
        engine = _call(cls, group, key_server, now=now)
        start = getattr(engine, "start", None)
        if callable(start):
            start(now)
        return engine

    def installer(self):
        if not self.kernel:
            return NullInstaller()
        try:
            from xfrm.groupsa import GroupSaInstaller
        except ImportError as e:  # pragma: no cover
            raise EngineUnavailable(f"xfrm.groupsa is not available: {e}") from None
        from xfrm import XfrmSocket

        return GroupSaInstaller(XfrmSocket(self.netns))
