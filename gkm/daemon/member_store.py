"""The member's saved group state on disk: ``<state_dir>/member/group-<id>.state``.

One file per group, written whole and durably before the engine relies on it (the engine asks
with :class:`gkm.gdoi.member.SaveState`): a temporary file in the same directory (0600),
written, fsync'ed, renamed over the old one, and the directory fsync'ed, so a crash leaves
either the old state or the new one, never a torn file.  The directory is 0700.  What the
file holds and how it is checked: :mod:`gkm.gdoi.member_state`.
"""

from __future__ import annotations

import os
from pathlib import Path

from gkm.durable import remove_file, replace_file
from gkm.gdoi import member_state
from gkm.gdoi.member_state import MemberSnapshot, MemberStateError

__all__ = ["MemberStateFiles", "MemberStateError"]


class MemberStateFiles:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "member"

    def path(self, group_id: int) -> Path:
        return self.dir / f"group-{group_id}.state"

    def load(self, group_id: int, wall_offset: float) -> MemberSnapshot | None:
        """The saved snapshot, None if there is no file; MemberStateError if unusable."""
        try:
            data = self.path(group_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise MemberStateError(f"cannot read {self.path(group_id)}: {e.strerror or e}") \
                from None
        return member_state.decode(data, wall_offset)

    def save(self, snapshot: MemberSnapshot, wall_offset: float) -> None:
        """Atomically and durably replace the group's file (OSError on failure)."""
        self._ensure_dir()
        data = member_state.encode(snapshot, wall_offset)
        replace_file(self.path(snapshot.group_id), data, 0o600)

    def forget(self, group_id: int) -> None:
        remove_file(self.path(group_id))

    def _ensure_dir(self) -> None:
        if not self.dir.parent.exists():  # the state directory itself: private too
            self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
