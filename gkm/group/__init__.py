"""The key server's group controllers (sans-I/O, one per group) and what they log.

Public API::

    GroupController(policy, state, now=, signer=, signer_error=)
        inputs:  rekey(now) / announce(now) / evict(identities, reason, now) / update_policy(policy, now, signer=)
                 handle_timer(now) / resync(state, now)
        commit:  pending_changes() -> records; the shell writes them (storage.apply, one
                 transaction) then committed(now), or commit_failed() and resync(...)
        outputs: datagrams_to_send() -> [Push(seq, kek_spi, data)], next_event(), get_timer()
    RekeyDelivery(group_id, kek_policy)  where and when the pushes go (delivery.py: copies,
                 pacing, GROUPKEY-PUSH-ACKs, retransmission, lost members; soft state)
    GroupState                      the group's durable state in memory
    storage.load_state(store, gid)  / storage.apply(store, records)   (the shell's side)
    changes.*                       the change records (an ordered, replayable log)
    events.*                        GroupRekeyed, KeysAnnounced, KeysRotated, MembersEvicted, EvictionScheduled,
                                    KeysPurged, GroupDissolved, RekeyAcknowledged, RekeyUnacknowledged,
                                    MemberLost, AckRefused (gkm.events.KeyServerEvent)
"""

from .changes import Change
from .controller import (ControllerRefused, ControllerState, EvictionResult, GroupController,
                         Push, RekeyResult, Signer)
from .delivery import MemberDelivery, Outgoing, RekeyDelivery
from .events import (AckRefused, EvictionScheduled, GroupControllerEvent, GroupDissolved,
                     GroupRekeyed, KeysAnnounced, KeysPurged, KeysRotated, MemberLost,
                     MembersEvicted, RekeyAcknowledged, RekeyUnacknowledged)
from .state import GroupState

__all__ = ["GroupDissolved", "Change", "ControllerRefused", "ControllerState", "EvictionResult", "GroupController",
           "Push", "RekeyResult", "Signer", "EvictionScheduled", "GroupControllerEvent",
           "GroupRekeyed", "KeysAnnounced", "KeysPurged", "KeysRotated", "MembersEvicted", "GroupState",
           "RekeyDelivery", "Outgoing", "MemberDelivery", "AckRefused", "MemberLost",
           "RekeyAcknowledged", "RekeyUnacknowledged"]
