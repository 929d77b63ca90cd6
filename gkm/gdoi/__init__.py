"""GDOI (RFC 6407) exchanges: GROUPKEY-PULL in both roles (sans-I/O), group key values.

Public API::

    MemberRegistration(phase1_config, group_id, ks_addr, authorize_key_server=..., allowed_suites=...)
        .start(now) / .reregister(now) / .receive_datagram(data, addr, now) / .handle_timer(now)
        .datagrams_to_send() / .next_event() / .get_timer()
        events: Registered(group_id, teks, kek, seq, lkh, key_server, ...), RegistrationFailed(group_id, reason, notify)
    KeyServerEngine(groups, keys_provider, phase1_config, rekey_source=..., max_pending=...)
        same inputs/outputs; events: MemberRegistered, MemberRefused (+ phase 1 events)
    StoreKeysProvider(KeyStore, lkh=False)            group keys provider over gkm.store (.invalidate(gid)
                                                      after changing a group's keys in the store)
    phase1_config(KeyServerSettings | MemberGroup, ...)  gkm.ike.Phase1Config from the policy
    GroupTek, GroupKek, LkhKeys                       keys in protocol terms (for xfrm.groupsa)
    PullInitiator, PullResponder                      the GROUPKEY-PULL engines on a phase 1 SA
    build_push(group, kek=, signing_key=, seq=, new_teks=, new_kek=, lkh_update=, deletes=, now=) -> bytes
    PushReceiver(group_id, kek, lkh, last_seq).receive_datagram(data, addr, now) / .next_event()
        events: Rekeyed, TeksDeleted, KekDeleted, Evicted, PushRejected   (GROUPKEY-PUSH, gkm.gdoi.push)
    gkm.gdoi.policy_wire                              the policy <-> SA TEK/SA KEK/KD mapping
    gkm.gdoi.sakd                                     the one SA/KD reader (order, pairing) for PULL and PUSH

Driving them (the shape of gkm.daemon.adapter): after every input, send
``datagrams_to_send()``, hand ``next_event()`` out until None, re-arm one timer at
``get_timer()``.  The key server enrolls verified messages 3 (one durable store commit) when
its output is pulled, so reading every datagram waiting on the socket before pulling the output
gives group commit.
"""

from .engines import KeyServerEngine, MemberRegistration, RegistrationState
from .events import MemberRefused, MemberRegistered, Registered, RegistrationFailed
from .keys import GroupKek, GroupTek, LkhKeys
from .phase1 import phase1_config
from .provider import Enrollment, GroupKeys, GroupKeysProvider, KekKeys, StaleKeys, StoreKeysProvider, TekKeys
from .pull import PullInitiator, PullResponder, PullState, peer_identity
from .push import (
    Evicted, KekDeleted, LkhPartReceived, PushReceiver, PushRejected, Rekeyed, TeksDeleted, build_push,
    lkh_kek_keymat, lkh_update_parts,
)

__all__ = [
    "KeyServerEngine", "MemberRegistration", "RegistrationState",
    "MemberRefused", "MemberRegistered", "Registered", "RegistrationFailed",
    "GroupKek", "GroupTek", "LkhKeys",
    "phase1_config",
    "Enrollment", "GroupKeys", "GroupKeysProvider", "KekKeys", "StaleKeys", "StoreKeysProvider", "TekKeys",
    "PullInitiator", "PullResponder", "PullState", "peer_identity",
    "build_push", "lkh_kek_keymat", "PushReceiver", "Rekeyed", "TeksDeleted", "KekDeleted", "Evicted", "PushRejected",
    "LkhPartReceived", "lkh_update_parts",
]
