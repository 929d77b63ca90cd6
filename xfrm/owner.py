"""Which kernel states and policies belong to msec: a reserved reqid range.

msec shares the kernel's SAD/SPD with strongSwan, libreswan, ``ip xfrm`` and others, so it
must find what it installed, and only that, without ever flushing. The marker is the
**reqid**: every state msec installs has a reqid in :attr:`Owner.reqid_min` ..
:attr:`Owner.reqid_max` (default ``0x6d730000``-``0x6d73ffff``, ASCII "ms"), and every policy
has at least one template with a reqid in that range.

Why reqid rather than the alternatives:

* An XFRM **mark** is part of the lookup: a state or policy with mark v/m only matches packets
  whose ``skb->mark & m == v``. Marking for ownership would change which packets use group SAs
  and collide with marks others use for routing; group traffic is not marked.
* A **policy priority band** only covers policies (states have no priority), and priority is
  the knob that orders msec's policies against strongSwan's on the same selectors.
* The **reqid** only links templates to states; it changes no packet matching. Policy templates
  use it anyway to bind a group's policies to its SAs. strongSwan allocates reqids upward from
  1, libreswan from 16384; nothing in common use reaches 0x6d730000.

Consequence: a policy msec installs has at least one template, including block policies (the
kernel ignores templates on block policies). Pure bypass policies without templates cannot be
owned and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument
from .model import Policy, State

__all__ = ["Owner", "MSEC"]


@dataclass(frozen=True, slots=True)
class Owner:
    reqid_min: int = 0x6D730000
    reqid_max: int = 0x6D73FFFF

    def __post_init__(self) -> None:
        if not 0 < self.reqid_min <= self.reqid_max <= 0xFFFFFFFF:
            raise InvalidArgument("owner", "need 0 < reqid_min <= reqid_max < 2**32")

    def reqid(self, n: int) -> int:
        """The ``n``-th reqid of the range (0-based)."""
        if not 0 <= n <= self.reqid_max - self.reqid_min:
            raise InvalidArgument("owner.reqid", f"{n} is outside the owner's range")
        return self.reqid_min + n

    def owns_reqid(self, reqid: int) -> bool:
        return self.reqid_min <= reqid <= self.reqid_max

    def owns_state(self, state: State) -> bool:
        return self.reqid_min <= state.reqid <= self.reqid_max

    def owns_policy(self, policy: Policy) -> bool:
        return any(self.reqid_min <= t.reqid <= self.reqid_max for t in policy.templates)

    def check_state(self, state: State) -> None:
        if not self.owns_state(state):
            raise InvalidArgument("state.reqid", f"0x{state.reqid:x} is outside msec's range "
                                  f"0x{self.reqid_min:x}-0x{self.reqid_max:x}")

    def check_policy(self, policy: Policy) -> None:
        if not self.owns_policy(policy):
            raise InvalidArgument("policy.templates", "msec's policies need a template with a "
                                  f"reqid in 0x{self.reqid_min:x}-0x{self.reqid_max:x}")


MSEC = Owner()
