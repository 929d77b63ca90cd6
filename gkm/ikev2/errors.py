"""Errors of :mod:`gkm.ikev2`: the same :class:`~gkm.wire.errors.WireError` as the IKEv1/GDOI
codec (payload, offset, reason), so a shell catches one type whatever it decoded."""

from __future__ import annotations

from gkm.wire.errors import WireError


class UnsupportedCriticalPayload(WireError):
    """A payload of an unknown type with the critical bit set (RFC 7296 §2.5): the whole message
    is refused and the responder answers UNSUPPORTED_CRITICAL_PAYLOAD with ``payload_type`` as
    its notification data."""

    __slots__ = ("payload_type",)

    def __init__(self, payload: str, offset: int, reason: str, payload_type: int = 0) -> None:
        super().__init__(payload, offset, reason)
        self.payload_type = payload_type

    def __reduce__(self):
        return (type(self), (self.payload, self.offset, self.reason, self.payload_type))


__all__ = ["WireError", "UnsupportedCriticalPayload"]
