"""An in-memory stand-in for the kernel's XFRM, behind the same narrow port as XfrmSocket.

For unit tests of code that installs through :class:`xfrm.batch.Batch` (the group SA installer,
:mod:`xfrm.groupsa`): it takes the same batches, validated by the same ``Batch`` methods, and
answers like the kernel does for the operations that code uses, as checked by the shared
contract test (tests/unit/test_groupsa_contract.py here, tests/kernel/test_groupsa_kernel.py
against the real kernel):

* states are keyed by (destination, SPI, protocol, mark); adding one that exists fails with
  EEXIST, deleting, updating or getting a missing one with ESRCH;
* policies are keyed by (selector, direction, mark, if_id); adding one that exists fails with
  EEXIST, deleting a missing one ENOENT; UPDPOLICY replaces (keeping the kernel's index) or
  adds; the index is assigned as the kernel does (a counter, direction in the low 3 bits);
* a batch is applied item by item, each independently: a failing item does not stop the
  others (the kernel handles every message of a send), and the first failure is raised as
  :class:`KernelError` with its ``index`` and ``failures`` listing all of them;
* ``ignore`` errnos are not failures; dumps filter by ``owned`` and ``proto`` and addresses.

It does not model packet processing, lifetimes or events; :meth:`expire` removes a state the
way a hard expiry would.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import replace

from .batch import Batch, SingleOperations
from .errors import KernelError
from .model import Network, Policy, PolicyId, SaCounters, SaId, State
from .owner import MSEC, Owner

__all__ = ["MemoryXfrm"]


def _sa_key(sa: SaId) -> tuple:
    return (sa.dst, sa.spi, sa.proto, sa.mark)


class MemoryXfrm(SingleOperations):
    """One namespace's SAD and SPD in memory, owned by ``owner`` like an XfrmSocket."""

    def __init__(self, owner: Owner = MSEC) -> None:
        self.owner = owner
        self.states: dict[tuple, State] = {}
        self.policies: dict[PolicyId, Policy] = {}
        self._index = 0
        self.log: list[str] = []  # operation names in the order applied (for tests)
        self.reads = 0  # dumps answered (for tests: how often a caller reads the kernel)
        self.counted: dict[int, tuple[int, int]] = {}  # SPI -> (bytes, packets), for tests

    # -- context manager, like XfrmSocket ------------------------------------------------------
    def close(self) -> None:
        pass

    def __enter__(self) -> MemoryXfrm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    # -- batches ------------------------------------------------------------------------------
    def batch(self) -> Batch:
        return Batch(self.owner)

    def run(self, batch: Batch, ignore: Sequence[int] = ()) -> None:
        failures = []
        for i, op in enumerate(batch.ops):
            code = self._apply(op.name, op.item, op.index)
            if code and code not in ignore:
                failures.append((i, code, None))
        if failures:
            idx, code, _ = failures[0]
            op = batch.ops[idx]
            exc = KernelError(op.name, code, None, idx, op.describe())
            exc.failures = failures  # type: ignore[attr-defined]
            raise exc

    def _apply(self, name: str, item, index: int) -> int:
        self.log.append(name)
        if name == "add_state":
            key = _sa_key(item.id)
            if key in self.states:
                return errno.EEXIST
            self.states[key] = item
        elif name == "update_state":
            key = _sa_key(item.id)
            if key not in self.states:
                return errno.ESRCH
            self.states[key] = item
        elif name == "delete_state":
            if self.states.pop(_sa_key(item), None) is None:
                return errno.ESRCH
        elif name == "add_policy":
            if item.id in self.policies:
                return errno.EEXIST
            self.policies[item.id] = replace(item, index=self._next_index(item))
        elif name == "update_policy":
            old = self.policies.get(item.id)
            self.policies[item.id] = replace(
                item, index=old.index if old else self._next_index(item))
        elif name == "delete_policy":
            if index:
                found = [pid for pid, p in self.policies.items() if p.index == index]
                if not found:
                    return errno.ENOENT
                del self.policies[found[0]]
            elif self.policies.pop(item, None) is None:
                return errno.ENOENT
        else:  # pragma: no cover - Batch has no other operations
            return errno.EOPNOTSUPP
        return 0

    def _next_index(self, p: Policy) -> int:
        self._index += 1
        return (self._index << 3) | int(p.direction)

    # -- single operations --------------------------------------------------------------------

    def get_state(self, sa: SaId) -> State:
        st = self.states.get(_sa_key(sa))
        if st is None:
            raise KernelError("get_state", errno.ESRCH)
        return st

    def get_policy(self, pid: PolicyId) -> Policy:
        p = self.policies.get(pid)
        if p is None:
            raise KernelError("get_policy", errno.ENOENT)
        return p

    # -- dumps --------------------------------------------------------------------------------
    def dump_states(self, proto: int | None = None, owned: bool = False,
                    src: Network | None = None, dst: Network | None = None) -> list[State]:
        self.reads += 1
        out = []
        for st in self.states.values():
            if proto and st.proto != proto:
                continue
            if owned and not self.owner.owns_state(st):
                continue
            if src is not None and (st.src.version != src.version or st.src not in src):
                continue
            if dst is not None and (st.dst.version != dst.version or st.dst not in dst):
                continue
            out.append(st)
        return out

    def dump_sa_counters(self, owned: bool = True) -> list[SaCounters]:
        """Like XfrmSocket's; no traffic flows through memory: ``counted`` (SPI -> (bytes,
        packets)) is what a test says the kernel counted."""
        self.reads += 1
        return [SaCounters(st.dst, st.spi, st.proto, st.reqid, *self.counted.get(st.spi, (0, 0)),
                           0, 0, 0, 0)
                for st in self.states.values() if not owned or self.owner.owns_state(st)]

    def dump_policies(self, owned: bool = False) -> list[Policy]:
        self.reads += 1
        return [p for p in self.policies.values() if not owned or self.owner.owns_policy(p)]

    def remove_owned(self) -> tuple[int, int]:
        b = self.batch()
        for p in self.dump_policies(owned=True):
            b.delete_policy(p.id, p.index)
        n_pol = len(b)
        for st in self.dump_states(owned=True):
            b.delete_state(st.id)
        self.run(b, ignore=(errno.ENOENT, errno.ESRCH))
        return len(b) - n_pol, n_pol

    # -- test support -------------------------------------------------------------------------
    def expire(self, sa: SaId) -> None:
        """Drop a state as its hard lifetime would (no event is modelled)."""
        self.states.pop(_sa_key(sa), None)
