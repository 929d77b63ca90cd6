"""Files replaced whole or not at all, and durably: the key server's anchor
(:mod:`gkm.store_anchor`) and the member's saved group state (:mod:`gkm.daemon.member_store`).

:func:`replace_file` writes a temporary file in the same directory (created with ``mode``,
which the umask cannot widen or narrow: fchmod), fsyncs it, renames it over the target and
fsyncs the directory, so after a crash the target holds either the old or the new contents,
and once it returns the new contents survive a power loss.  An OSError (ENOSPC, EIO) leaves
the old file in place and no temporary file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_file", "remove_file", "fsync_dir"]


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def remove_file(path: Path) -> bool:
    """Remove ``path`` durably; False if it was not there."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
