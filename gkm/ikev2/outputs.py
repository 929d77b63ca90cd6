"""The output side every G-IKEv2 engine shares (the engine interface msecd's shells drive):
datagrams to send and events, each taken once by the shell."""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["Outputs"]


class Outputs:
    def __init__(self) -> None:
        self._out: list[tuple[bytes, Any]] = []
        self._events: deque = deque()

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None
