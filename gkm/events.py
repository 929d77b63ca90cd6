"""The one event hierarchy of msec's sans-I/O engines (aioquic's ``QuicEvent``, h11's ``Event``).

Every value an engine hands its shell through ``next_event()`` is an instance of :class:`Event`,
a frozen dataclass defined next to the engine that emits it, and the shells dispatch on these
classes with ``isinstance``/``match``, never on class names or attribute probing.

* :class:`Phase1Event` (``gkm.ike.events``): Main Mode and Informational exchanges;
* :class:`MemberEvent` (``gkm.gdoi.events``, ``gkm.gdoi.push``): a group member's registration
  (GROUPKEY-PULL) and GROUPKEY-PUSH receiver;
* :class:`KeyServerEvent` (``gkm.gdoi.events``): a key server's registrations and refusals.

The base classes carry no fields (``__slots__ = ()``), so subclasses stay slotted dataclasses.
"""

from __future__ import annotations

__all__ = ["Event", "Phase1Event", "MemberEvent", "KeyServerEvent"]


class Event:
    """Base of every engine event."""

    __slots__ = ()


class Phase1Event(Event):
    """An IKEv1 phase 1 engine's event (established, failed, deleted, Informational)."""

    __slots__ = ()


class MemberEvent(Event):
    """A group member's event, always about one group (``group_id``)."""

    __slots__ = ()


class KeyServerEvent(Event):
    """A key server's event about one group (``group_id``) and one member."""

    __slots__ = ()
