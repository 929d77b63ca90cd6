"""LKH (:mod:`gkm.lkh`) over G-IKEv2 (RFC 9838 Appendix A): tree keys as WRAP_KEYs.

Mapping decisions:

* Key ID = the LKH key handle (32 bits, non-zero, unique over the tree's life: exactly what a
  Key ID must be, and why a member never confuses an old and a new key of one node).
* The LKH root is an ordinary KWK; the Rekey SA's key material (the RFC's ``K_sa``) is one
  SA_KEY wrapped under the root.  (Appendix A wraps K_sa under each child of the root instead;
  a member's Key Path algorithm handles both, and one SA_KEY is smaller.)
* :class:`~gkm.lkh.LkhUpdate` entries are RFC 3394 wrapped (the GDOI format); G-IKEv2's KW_5649
  algorithms are RFC 5649, so each entry is re-wrapped from the tree's current keys
  (:meth:`~gkm.lkh.LkhTree.key`), call this right after :meth:`~gkm.lkh.LkhTree.evict`.
  Every entry becomes one WRAP_KEY ``(new handle, wrapping handle, RFC 5649 wrap)``.
* Registration (GSA_AUTH / GSA_REGISTRATION) hands a member its path: :func:`member_path` gives
  the Working Key Path it ends up with, top first.
"""

from __future__ import annotations

from gkm.lkh import LkhTree, LkhUpdate

from .gsa_keys import WorkingKeyPath, WrappedKey, kwa_key_bytes, wrap
from .rekey import LkhRekey


def wrap_update(tree: LkhTree, update: LkhUpdate, kwa: int) -> LkhRekey:
    if tree.key_len != kwa_key_bytes(kwa):
        raise ValueError(f"LKH keys of {tree.key_len} bytes do not fit key wrap algorithm {kwa}")
    out = []
    for e in update.entries:
        out.append(WrappedKey(e.new.handle, e.wrap.handle, wrap(kwa, tree.key(e.wrap), tree.key(e.new))))
    root, root_key = tree.group_key()
    return LkhRekey(tuple(out), root.handle, root_key)


def member_path(tree: LkhTree, member_id) -> WorkingKeyPath:
    return WorkingKeyPath(tuple((kid.handle, key) for kid, key in reversed(tree.path(member_id))))


__all__ = ["wrap_update", "member_path"]
