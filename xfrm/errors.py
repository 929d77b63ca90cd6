"""Errors raised by the ``xfrm`` package.

Two kinds, one base:

* :class:`InvalidArgument` -- the caller built a value the binding refuses. Raised before
  anything is sent to the kernel; ``field`` names the offending field (``"state.aead.key"``).
* :class:`KernelError` -- the kernel refused a request. Carries the operation, the errno
  (number and symbolic name), the kernel's extended-ack text and, for batches, the index of the
  failed item. :class:`KernelLacksFeature` is the subclass for a kernel that lacks ESP or an
  algorithm, with a message saying so in plain words.
"""

from __future__ import annotations

import errno as _errno

__all__ = ["XfrmError", "InvalidArgument", "KernelError", "KernelLacksFeature", "DecodeError"]


class XfrmError(Exception):
    """Base of every error raised by ``xfrm``."""


class InvalidArgument(XfrmError, ValueError):
    """A value refused before it reached the kernel; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DecodeError(XfrmError):
    """Bytes from the kernel that do not parse as the XFRM message they claim to be."""

    def __init__(self, what: str, offset: int, reason: str) -> None:
        super().__init__(f"{what} at offset {offset}: {reason}")
        self.what = what
        self.offset = offset
        self.reason = reason


class KernelError(XfrmError, OSError):
    """The kernel answered a request with an error.

    ``op`` is the operation (``"add_state"``), ``errno``/``errname`` the error (``EEXIST``),
    ``extack`` the kernel's extended-ack message or ``None``, ``index`` the position of the
    failed item in a batch (``None`` outside batches) and ``item`` a short, key-free description
    of that item.
    """

    def __init__(
        self,
        op: str,
        errno: int,
        extack: str | None = None,
        index: int | None = None,
        item: str | None = None,
        message: str | None = None,
    ) -> None:
        self.op = op
        self.errname = _errno.errorcode.get(errno, f"E{errno}")
        self.extack = extack
        self.index = index
        self.item = item
        parts = [f"{op}"]
        if index is not None:
            parts.append(f"item {index}")
        if item:
            parts.append(item)
        text = message or (extack or _errno_text(errno))
        full = f"{': '.join([' '.join(parts[:2])] + parts[2:])}: {self.errname}: {text}"
        OSError.__init__(self, errno, full)

    def __str__(self) -> str:  # OSError's str would prepend "[Errno N]"
        return self.strerror or ""


class KernelLacksFeature(KernelError):
    """The kernel lacks what a request needs (ESP, an algorithm); ``feature`` names it."""

    def __init__(self, op: str, errno: int, feature: str, extack: str | None = None,
                 index: int | None = None, item: str | None = None) -> None:
        self.feature = feature
        super().__init__(op, errno, extack, index, item,
                         message=f"this kernel lacks {feature}"
                         + (f" (kernel says: {extack})" if extack else ""))


def _errno_text(code: int) -> str:
    import os

    return os.strerror(code)
