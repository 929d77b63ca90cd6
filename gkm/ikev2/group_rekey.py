"""The GSA_REKEY twin of each GROUPKEY-PUSH the group controller builds (RFC 9838 §2.4), so
that G-IKEv2 members of a group follow the same rotations, policy changes and evictions as its
GDOI members, from the same keys, LKH tree and SEQ.

:func:`gsa_rekey` is called by :class:`gkm.group.GroupController` next to ``build_push`` when
the group lists ``g-ikev2`` in ``protocols``; the datagram travels in the same
:class:`gkm.group.values.Push` (``gike``) and goes wherever the PUSH goes.

Decisions:

* One Rekey SA per KEK: its SPI is the KEK's 16-byte SPI and its keys are derived from the
  KEK's stored key material (:func:`~.gsa_map.rekey_sa_of`, as registration derives them).
  Its key wrap algorithm follows the LKH tree's key size (:func:`~.gsa_map.rekey_kwa`).
* Message ID = SEQ - 1.  The controller reserves one GDOI SEQ per PUSH under each KEK, starting
  at 1 under a new KEK; RFC 9838 §2.4.3 starts a Rekey SA installed by GSA_REKEY at Message ID
  0.  So the SEQ records the controller already commits before sending are the Message IDs'
  durable state too, a Message ID is never used twice on one Rekey SA, and registration hands
  out GSA_INITIAL_MESSAGE_ID = the KEK's current SEQ (the next message's ID).  A member shows
  Message ID + 1 as its SEQ, the same number a GDOI member of the group shows.
* An LKH eviction that GDOI splits over several PUSHes (``max_push_size``) is one GSA_REKEY
  (with the first part's Message ID; the Rekey SA it installs makes the rest moot): G-IKEv2
  has no split, and one message holds some 1,200 WRAP_KEYs (docs/decisions/g-ikev2.md).  One
  that does not fit raises the codec's error, and the controller refuses the eviction as it
  refuses a PUSH that cannot be built.
* The signature is the PUSH signing key's (ECDSA P-256 / P-384, the AUTH_KEY members got at
  registration).  A group signed with another key type cannot serve G-IKEv2 members (their
  registration refuses its AUTH_KEY): :func:`signature_for` gives None and no GSA_REKEY is built.
* Deleting every TEK and the KEK (eviction without an LKH path, dissolution): Delete ESP SPI 0
  and Delete GIKE_UPDATE of the current Rekey SA, so members drop their TEKs and register
  again, exactly what the GDOI PUSH tells GDOI members.
"""

from __future__ import annotations

from typing import Any, Iterable

from cryptography.hazmat.primitives.asymmetric import ec

from gkm.gdoi.provider import KekKeys, TekKeys
from gkm.lkh import LkhTree, LkhUpdate
from policy.model import GroupPolicy

from .constants import GcAuth, ProtocolId
from .gsa_map import SIGNATURE_BY_CURVE, group_tek_of, rekey_kwa, rekey_sa_of
from .lkh_map import wrap_update
from .payloads import Delete
from .rekey import RekeySender
from .rekey_auth import SIGNATURE_ALGORITHMS, SignatureAlgorithm

__all__ = ["gsa_rekey", "signature_for", "message_id_of"]



def signature_for(private_key: Any) -> SignatureAlgorithm | None:
    """The GSA_REKEY signature algorithm of the group's PUSH signing key, None if it has none."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        names = SIGNATURE_BY_CURVE.get(private_key.curve.name)
        return SIGNATURE_ALGORITHMS[names[0]] if names else None
    return None


def message_id_of(seq: int) -> int:
    """The GSA_REKEY Message ID of the PUSH with GDOI SEQ ``seq`` (module docstring)."""
    if seq < 1:
        raise ValueError(f"SEQ {seq}: PUSH SEQs start at 1")
    return seq - 1


def gsa_rekey(policy: GroupPolicy, *, kek: KekKeys, seq: int, signing_key: Any, now: int,
              rekey_source: tuple[str, int] | None, lkh_key_bytes: int | None,
              teks: Iterable[TekKeys] = (), deletes: Iterable[int] = (), delete_all: bool = False,
              new_kek: KekKeys | None = None, lkh: tuple[LkhTree, LkhUpdate] | None = None,
              auth_key: bytes | None = None) -> bytes:
    """The GSA_REKEY sent under ``kek`` with the Message ID of ``seq``.  ``deletes``: TEK SPIs;
    ``delete_all``: every TEK and the Rekey SA itself (members register again); ``new_kek``: the
    next Rekey SA, wrapped under the current one's GSK_w or, with ``lkh`` (the tree right after
    its ``evict`` and that update), under the new LKH root; ``auth_key``: a new GSA_REKEY
    signing key's DER public key (the message is still signed with ``signing_key``)."""
    signature = signature_for(signing_key)
    if signature is None:
        raise ValueError("the PUSH signing key is not ECDSA P-256/P-384: no GSA_REKEY")
    kwa = rekey_kwa(policy, lkh_key_bytes)
    current = rekey_sa_of(policy, bytes(kek.spi), kek.keymat, kek.expires, kwa, now, rekey_source)
    sender = RekeySender(current, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=signature,
                         signing_key=signing_key, message_id=message_id_of(seq))
    tps = {tp.name: tp for tp in policy.teks}
    group_teks = tuple((group_tek_of(policy, tps[tk.name], tk, now), ()) for tk in teks)
    new_sa = None
    if new_kek is not None:
        new_sa = rekey_sa_of(policy, bytes(new_kek.spi), new_kek.keymat, new_kek.expires, kwa, now,
                             rekey_source)
    wrapped = wrap_update(lkh[0], lkh[1], kwa) if lkh is not None else None
    payloads = []
    spis = tuple(int(s) for s in deletes)
    if delete_all:
        payloads += [Delete(ProtocolId.ESP, 4, (bytes(4),)), Delete(ProtocolId.GIKE_UPDATE, 16, (current.spi,))]
    elif spis:
        payloads.append(Delete(ProtocolId.ESP, 4, tuple(s.to_bytes(4, "big") for s in spis)))
    return sender.build(teks=group_teks, new_rekey_sa=new_sa, lkh=wrapped, deletes=tuple(payloads),
                        atd_s=int(policy.activation_delay_s), dtd_s=int(policy.deactivation_delay_s),
                        auth_key=auth_key)
