"""Drive a real gkm.group.GroupController over a real KeyStore the way the key server's shell
does: state read from the store, one input, the change records applied in one transaction,
committed, then the datagrams and events."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from gkm.gdoi.provider import load_signing_public_key
from gkm.group import GroupController, Signer
from gkm.group.storage import apply, load_state


def signer_of(group) -> Signer:
    pem = group.kek.signing_key
    return Signer(serialization.load_pem_private_key(open(pem, "rb").read(), None),
                  load_signing_public_key(pem))


def controller(store, group, now, **kw) -> GroupController:
    kw.setdefault("signer", signer_of(group) if group.kek is not None else None)
    return GroupController(group, load_state(store, group.group_id), now=now, **kw)


def commit(store, ctl, now):
    """Apply the controller's pending records, commit; (datagrams, events)."""
    changes = ctl.pending_changes()
    if changes:
        apply(store, changes)
        ctl.committed(now)
    pushes = ctl.datagrams_to_send()
    events = []
    while (e := ctl.next_event()) is not None:
        events.append(e)
    return pushes, events


def drive(store, group, call, now, ctl=None):
    """(result of ``call(ctl)``, datagrams, events, ctl)."""
    ctl = ctl or controller(store, group, now)
    result = call(ctl)
    pushes, events = commit(store, ctl, now)
    return result, pushes, events, ctl
