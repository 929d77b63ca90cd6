"""An LKH update in parts: one too large for one GROUPKEY-PUSH datagram, split and applied in order.

Key server: :func:`split_lkh_update` cuts an :class:`~gkm.lkh.LkhUpdate` into parts whose RFC
6407 encoding (:meth:`~gkm.lkh.LkhUpdate.wire_size`) each fits a byte budget; the caller sends
part ``i`` of ``n`` in the PUSH with SEQ ``s + i - 1`` (consecutive SEQs, one Rekey SA).

Member: :func:`apply_part` applies part ``i`` to the keys the member derived from parts
``1 .. i - 1`` (an :class:`LkhPartial`, kept by the caller between datagrams) and installs the
result in the :class:`~gkm.lkh.LkhMemberView` only with the last part, with the same checks
as a whole update (:meth:`~gkm.lkh.LkhMemberView.apply`): an evicted member learns it at the
last part.  A part out of order (a lost or reordered datagram) raises
:class:`LkhPartOutOfOrder` and changes nothing: the member cannot finish that update and must
register again (its next registration gives it the current keys).

Why parts can be applied one at a time: :class:`~gkm.lkh.LkhTree` emits entries bottom-up (by
the level of the new key), and an entry is wrapped under a key of a lower level or under the
previous key of the same node, never under a key delivered after it.  Cutting the sequence
into contiguous runs keeps that order across parts, so a member climbing its path part by part
always holds the wrapping key when it meets an entry.  The entries of the group key (the root)
are kept together in the last part whenever they fit one part, so the new group key exists
only once every part has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .lkh import (
    _ATTR_HDR, _LKH_KEY_HDR, _UPDATE_ARRAY_HDR, KeyId, LkhEntry, LkhError, LkhMemberView,
    LkhUpdate, LkhUpdateError,
)

__all__ = ["split_lkh_update", "apply_part", "LkhPartial", "LkhPartOutOfOrder"]


class LkhPartOutOfOrder(LkhUpdateError):
    """A part that does not follow the parts applied so far (lost or reordered datagram)."""


class _Sizer:
    """One part's chains (the grouping of :meth:`LkhUpdate.chains`, replayed entry by entry)
    and its bytes as :meth:`LkhUpdate.wire_size` counts them."""

    __slots__ = ("size", "chains", "_tail_of")

    def __init__(self) -> None:
        self.size = 0
        self.chains: list[list[LkhEntry]] = []
        self._tail_of: dict[int, list[LkhEntry]] = {}  # new key handle -> chain it may continue

    def copy(self) -> "_Sizer":
        """For sizing only (its ``chains`` stay empty): shares no chain with this one."""
        c = _Sizer()
        c.size = self.size
        c._tail_of = {h: chain.copy() for h, chain in self._tail_of.items()}
        return c

    def cost(self, e: LkhEntry) -> int:
        c = _LKH_KEY_HDR + len(e.wrapped)
        return c if e.wrap.handle in self._tail_of else c + _ATTR_HDR + _UPDATE_ARRAY_HDR

    def add(self, e: LkhEntry, cost: int | None = None) -> None:
        """Append ``e``; ``cost``: :meth:`cost` of ``e``, if the caller has it."""
        self.size += self.cost(e) if cost is None else cost
        chain = self._tail_of.pop(e.wrap.handle, None)
        if chain is None:
            chain = []
            self.chains.append(chain)
        chain.append(e)
        other = self._tail_of.get(e.new.handle)
        if other is None or len(other) < len(chain):
            self._tail_of[e.new.handle] = chain

    def part(self, epoch: int, entries: tuple[LkhEntry, ...]) -> LkhUpdate:
        """The part of these entries, its chains and size as computed here (what
        :meth:`LkhUpdate.chains` and :meth:`~LkhUpdate.wire_size` would compute again)."""
        return LkhUpdate.with_chains(epoch, entries, self.chains, self.size)


def split_lkh_update(update: LkhUpdate, budget_bytes: int) -> list[LkhUpdate]:
    """``update`` cut into parts (same epoch, entries in order) whose ``wire_size()`` is at most
    ``budget_bytes`` each; ``[update]`` when it fits.  The top level's entries (the new group
    key) go together into the last part when they fit one part.  Raises :class:`LkhError` if
    one entry alone exceeds the budget or the entries are not bottom-up."""
    entries = update.entries
    if budget_bytes < _ATTR_HDR + _UPDATE_ARRAY_HDR + _LKH_KEY_HDR:
        raise LkhError(f"LKH part budget of {budget_bytes} bytes cannot hold one entry")
    if not entries or (update.min_wire_size() <= budget_bytes and update.wire_size() <= budget_bytes):
        return [update]
    level, first_top = -1, 0  # the top level's first entry
    for n, e in enumerate(entries):
        lv = e.new.level
        if lv < level:
            raise LkhError(f"entry {n}: level {lv} after level {level}: entries not bottom-up")
        if lv > level:
            level, first_top = lv, n
    top_sizer = _Sizer()
    for e in entries[first_top:]:
        top_sizer.add(e)
    parts: list[LkhUpdate] = []
    start = 0
    sizer = _Sizer()
    for n, e in enumerate(entries):
        if n == first_top and n > start and top_sizer.size <= budget_bytes:
            rest = sizer.copy()
            for r in entries[n:]:
                rest.add(r)
            if rest.size > budget_bytes:
                # keep the group key's entries together, last
                parts.append(sizer.part(update.epoch, entries[start:n]))
                start, sizer = n, _Sizer()
        cost = sizer.cost(e)
        if sizer.size + cost > budget_bytes:
            if n == start:
                raise LkhError(f"entry {n} alone needs {cost} bytes, over the {budget_bytes} byte budget")
            parts.append(sizer.part(update.epoch, entries[start:n]))
            start, sizer = n, _Sizer()
            cost = sizer.cost(e)
        sizer.add(e, cost)
    if not parts:
        return [update]
    parts.append(sizer.part(update.epoch, entries[start:]))
    return parts


@dataclass(frozen=True)
class LkhPartial:
    """A member's keys after parts ``1 .. applied`` of ``count`` of the update of ``epoch``
    (not installed yet: the view keeps its keys until the last part)."""

    epoch: int
    count: int
    applied: int
    path: tuple[tuple[KeyId, bytes], ...] = field(repr=False)
    renewed: frozenset[int]
    top_touched: bool
    changed_top: bool


def apply_part(view: LkhMemberView, update: LkhUpdate, index: int, count: int,
               partial: LkhPartial | None = None) -> LkhPartial | None:
    """Apply part ``index`` (1-based) of ``count`` of an update to ``view``.

    ``partial``: what the previous part returned (None for part 1).  Returns the new partial
    state for parts before the last; at the last part installs the new keys in ``view`` and
    returns None.  All or nothing per part: on error neither ``view`` nor ``partial`` change.
    Raises :class:`LkhPartOutOfOrder`, and whatever :meth:`LkhMemberView.apply` raises
    (at the last part :class:`~gkm.lkh.LkhEvicted` for an evicted member)."""
    if not 1 <= index <= count:
        raise LkhUpdateError(f"part {index} of {count}")
    view._check_epoch(update)
    if not update.entries:
        if count == 1:
            view._check_not_empty(update)  # the whole update, empty: evicted
        raise LkhUpdateError(f"part {index}/{count} has no entries")
    if index == 1:
        if partial is not None:
            raise LkhPartOutOfOrder(f"part 1/{count} while parts 1..{partial.applied}/{partial.count} are held")
        path = list(view.path)
        renewed: set[int] = set()
        top_touched = changed_top = False
    else:
        if partial is None:
            raise LkhPartOutOfOrder(f"part {index}/{count} without parts 1..{index - 1}")
        if (partial.epoch, partial.count, partial.applied + 1) != (update.epoch, count, index):
            raise LkhPartOutOfOrder(
                f"part {index}/{count} of epoch {update.epoch}, expected part "
                f"{partial.applied + 1}/{partial.count} of epoch {partial.epoch}")
        path = list(partial.path)
        renewed = set(partial.renewed)
        top_touched, changed_top = partial.top_touched, partial.changed_top
    by_wrap, touched = view._index(update)
    changed = view._climb(path, by_wrap, renewed)
    top_touched |= touched
    changed_top |= changed
    if index < count:
        return LkhPartial(update.epoch, count, index, tuple(path), frozenset(renewed), top_touched, changed_top)
    view._check_complete(renewed, top_touched, changed_top)
    view._path = path
    view.epoch = update.epoch
    return None
