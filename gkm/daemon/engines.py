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
        provider = gdoi.StoreKeysProvider(store)
        phase1 = gdoi.phase1_config(settings)
        return gdoi.KeyServerEngine(settings.groups, provider, phase1)

    def update_keyserver_groups(self, engine, groups) -> bool:
        """Give a running key server engine new group policies; False if it cannot."""
        update = getattr(engine, "update_groups", None)
        if update is None:
            return False
        update(groups)
        return True

    def member(self, group, key_server: tuple[str, int], now: float):
        gdoi = self._gdoi()
        phase1 = gdoi.phase1_config(group, key_server=key_server)
        engine = gdoi.MemberRegistration(phase1, group.group_id, key_server,
                                         authorize_key_server=group.accepts_key_server)
        engine.start(now)
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
