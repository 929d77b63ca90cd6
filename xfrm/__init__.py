"""BB1: the kernel's XFRM over netlink (NETLINK_XFRM), for msec's group SAs.

Public API (everything else is internal):

* values: :mod:`xfrm.model` (State, Policy, Selector, Template, Lifetime, Mark, SaId, PolicyId,
  Aead/Cipher/Auth, Mode, Direction, Action, Proto) and :mod:`xfrm.algorithms` factories;
* kernel access: :class:`xfrm.socket.XfrmSocket` and :class:`xfrm.batch.Batch`;
* events: :mod:`xfrm.events` (typed events, ``parse_events``, ``XfrmEvents``);
* ownership: :mod:`xfrm.owner` (reqid range); errors: :mod:`xfrm.errors`.
"""

from .algorithms import aes_cbc, aes_gcm, chacha20_poly1305, hmac_sha2
from .batch import Batch
from .errors import InvalidArgument, KernelError, KernelLacksFeature, XfrmError
from .model import (
    Action, Aead, Auth, Cipher, Direction, Lifetime, Mark, Mode, Policy, PolicyId, Proto, SaId,
    Selector, State, Template,
)
from .owner import MSEC, Owner
from .socket import XfrmSocket

__all__ = [
    "Action", "Aead", "Auth", "Batch", "Cipher", "Direction", "InvalidArgument", "KernelError",
    "KernelLacksFeature", "Lifetime", "MSEC", "Mark", "Mode", "Owner", "Policy", "PolicyId",
    "Proto", "SaId", "Selector", "State", "Template", "XfrmError", "XfrmSocket", "aes_cbc",
    "aes_gcm", "chacha20_poly1305", "hmac_sha2",
]
