"""The one exception type of :mod:`gkm.wire`."""

from __future__ import annotations


class WireError(Exception):
    """A message that cannot be decoded (or a value that cannot be encoded).

    ``payload`` names the structure being read ("header", "SA", "SA/Proposal[1]/Transform[0]",
    ...), ``offset`` is the byte offset in the whole message where the problem was found
    (-1 when encoding), ``reason`` says what was wrong.  Decoders raise nothing else.
    """

    __slots__ = ("payload", "offset", "reason")

    def __init__(self, payload: str, offset: int, reason: str) -> None:
        super().__init__(f"{payload} at offset {offset}: {reason}")
        self.payload = payload
        self.offset = offset
        self.reason = reason

    def __reduce__(self):  # keep pickling/copying working with the 3-argument constructor
        return (type(self), (self.payload, self.offset, self.reason))
