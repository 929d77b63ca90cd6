"""The key server's shell around its group controllers (``gkm.group``): one controller per
group, fed with the operator's calls (``msecctl rekey``/``evict``), reloads and timers; their
change records written to the store in one transaction (``gkm.group.storage.apply``) before
their PUSH datagrams leave through the non-blocking rekey transport; their events logged.

The store also changes behind the controllers: registrations (GROUPKEY-PULL) record members,
join the LKH tree and make a group's first keys.  The shell notes it (``registered``) and
gives the controller the store's state again (``resync``) before its next input, at once when
a registration brought keys the controller does not know (the first keys start the group's
rotation timeline).

After a run that did not stop cleanly (``announce``, called by the key server role at start)
every group with keys sends them again under a fresh SEQ: a PUSH is committed before it is
sent, so a key server killed between the two lost it; this way members converge at once,
without registering again, and no SEQ is ever used twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from gkm.events import Event
from gkm.ikev2.gcks import ProtocolDemux, serves_g_ikev2
from gkm.group import (AckRefused, ControllerRefused, ControllerState, EvictionScheduled,
                       GroupDissolved, GroupRekeyed, KeysAnnounced, KeysPurged, KeysRotated,
                       MemberLost, MembersEvicted, RekeyAcknowledged, RekeyDelivery,
                       RekeyUnacknowledged)
from gkm.group.storage import apply, load_state
from gkm.store import StoreError
from policy import model as pm

from .engines import RekeyError
from .report import fmt_addr, fmt_time_utc, host_of

if TYPE_CHECKING:
    from .keyserver import KeyServerRole

log = logging.getLogger("msecd")

__all__ = ["GroupShell", "MAX_TIMER_S"]

#: a controller's deadline is in Unix seconds; the loop's timer is monotonic: re-read the
#: wall clock at least this often, so a stepped clock moves a deadline by at most this much
MAX_TIMER_S = 60.0


def _spis(spis) -> str:
    return ", ".join(f"0x{x:08x}" for x in spis) or "none"


class GroupShell:
    def __init__(self, role: "KeyServerRole") -> None:
        self.role = role
        self.controllers: dict[int, Any] = {}
        self._timers: dict[int, Any] = {}
        self._dirty: set[int] = set()
        self._generation: dict[int, int] = {}  # store generation each controller last saw
        self._refresh_soon: set[int] = set()
        self._unavailable: dict[int, str] = {}  # group -> why it has no controller
        #: group -> its rekey delivery (copies, pacing, ACKs), on the loop's monotonic clock
        self.deliveries: dict[int, RekeyDelivery] = {}
        self._delivery_timers: dict[int, Any] = {}

    @property
    def _clock(self) -> Callable[[], float]:
        return self.role.daemon.clock

    # -- life cycle
    def sync(self, settings: pm.KeyServerSettings) -> list[str]:
        """Controllers for ``settings``' groups: new ones made, existing ones given their
        (possibly) new policy, removed ones dropped.  Returns what a reload should report."""
        store, factory, now = self.role.store, self.role.daemon.factory, self._clock()
        changes: list[str] = []
        wanted = {g.group_id: g for g in settings.groups}
        for gid in [g for g in self.controllers if g not in wanted]:
            self._drop(gid)
        for gid, g in wanted.items():
            signer, problem = self._signer(g)
            ctl = self.controllers.get(gid)
            if ctl is None:
                try:
                    ctl = factory.group_controller(g, load_state(store, gid), now,
                                                   signer=signer, signer_error=problem)
                except RekeyError as e:
                    log.debug("group %s: no group controller: %s", g.label, e)
                    self._unavailable[gid] = str(e)
                    continue
                self._unavailable.pop(gid, None)
                self.controllers[gid] = ctl
                self._generation[gid] = store.generation
                self._drive(g, ctl)
                continue
            try:
                self._fresh(gid, ctl)
                result = ctl.update_policy(g, now, signer=signer, signer_error=problem)
                self._drive(g, ctl)
            except (ControllerRefused, RekeyError, StoreError, ValueError) as e:
                log.warning("group %s: new policy not applied to its keys: %s", g.label, e)
                changes.append(f"group {gid}: new policy not applied to its keys: {e}")
                continue
            if result is not None:
                changes.append(f"group {gid}: rekeyed for the new policy: SEQ "
                               f"{', '.join(map(str, result.seqs))}, new TEK SPI "
                               f"{_spis(result.tek_spis)}")
        return changes

    def announce(self) -> None:
        """Every group's current keys again, fresh SEQ (see the module docstring)."""
        for gid in list(self.controllers):
            g = self.role.settings.group(gid)
            if g is None or self.controllers[gid].state is not ControllerState.READY:
                continue
            try:
                self.call(g, lambda ctl, now: ctl.announce(now))
            except ControllerRefused as e:
                log.debug("group %s: nothing to announce: %s", g.label, e)
            except (RekeyError, StoreError) as e:
                log.warning("group %s: cannot send the current keys again: %s", g.label, e)

    def close(self) -> None:
        for gid in list(self.controllers):
            self._drop(gid)

    def _drop(self, gid: int) -> None:
        self.controllers.pop(gid, None)
        self.deliveries.pop(gid, None)
        for timers in (self._timers, self._delivery_timers):
            h = timers.pop(gid, None)
            if h is not None:
                h.cancel()

    def _signer(self, g: pm.GroupPolicy):
        try:
            return self.role.daemon.factory.push_signer(g), None
        except RekeyError as e:
            return None, str(e).split(": cannot load the PUSH signing key: ")[-1]

    # -- registrations changed the store
    def registered(self, group_id: int, tek_spis, identity: str | None = None,
                   host: str | None = None) -> None:
        ctl = self.controllers.get(group_id)
        if ctl is None:
            return
        d = self.deliveries.get(group_id)
        if d is not None and identity is not None:
            d.registered(identity, host or "")
        self._dirty.add(group_id)
        if not set(tek_spis) <= ctl.current_tek_spis() and group_id not in self._refresh_soon:
            self._refresh_soon.add(group_id)
            self.role.daemon.loop.call_soon(self._refresh, group_id)

    def _refresh(self, gid: int) -> None:
        self._refresh_soon.discard(gid)
        ctl, g = self.controllers.get(gid), self.role.settings.group(gid)
        if ctl is None or g is None or self.role.store is None:
            return
        try:
            self._fresh(gid, ctl)
        except Exception as e:  # noqa: BLE001 - a store that cannot be read: try at the timer
            log.warning("group %s: cannot read its state: %s", g.label, e)
        self._arm(g, ctl)

    def _fresh(self, gid: int, ctl) -> None:
        """Give ``ctl`` the store's state if the store changed behind it."""
        store = self.role.store
        if gid in self._dirty or self._generation.get(gid) != store.generation \
                or ctl.state is ControllerState.STALE:
            ctl.resync(load_state(store, gid), self._clock())
            self._dirty.discard(gid)
            self._generation[gid] = store.generation

    def peek(self, gid: int):
        """``gid``'s controller with the store's current state, for a look that changes
        nothing (``msecctl reload --check``); None without one."""
        ctl = self.controllers.get(gid)
        if ctl is not None:
            self._fresh(gid, ctl)
        return ctl

    # -- inputs
    def call(self, g: pm.GroupPolicy, fn: Callable[[Any, float], Any]):
        """Run one user call on ``g``'s controller, commit, send.  Returns (result, sent,
        failed); raises ControllerRefused/RekeyError/StoreError (nothing sent then)."""
        ctl = self.controllers.get(g.group_id)
        if ctl is None:
            raise RekeyError(self._unavailable.get(g.group_id)
                             or f"group {g.group_id} has no group controller")
        self._fresh(g.group_id, ctl)
        try:
            result = fn(ctl, self._clock())
        except ValueError as e:  # the tree could not be split, ...: the store is unchanged
            self._fresh(g.group_id, ctl)
            raise RekeyError(str(e)) from None
        sent, failed = self._drive(g, ctl)
        return result, sent, failed

    def _on_timer(self, gid: int) -> None:
        self._timers.pop(gid, None)
        ctl, g = self.controllers.get(gid), self.role.settings.group(gid)
        if ctl is None or g is None or self.role.store is None:
            return
        deadline = ctl.get_timer()
        if deadline is not None and self._clock() < deadline:
            self._arm(g, ctl)  # a wake-up to re-read the wall clock (MAX_TIMER_S), not due
            return
        try:
            self._fresh(gid, ctl)
            ctl.handle_timer(self._clock())
            self._drive(g, ctl)
        except Exception as e:  # noqa: BLE001 - logged; the timer is armed again
            log.warning("group %s: timed key work failed: %s; trying again", g.label, e)
            self._arm(g, ctl, retry=True)

    # -- commit, send, events, timer
    def _drive(self, g: pm.GroupPolicy, ctl) -> tuple[list[str], list[str]]:
        store = self.role.store
        changes = ctl.pending_changes()
        if changes:
            try:
                apply(store, changes)
            except StoreError:
                ctl.commit_failed()
                raise
            ctl.committed(self._clock())
            self._generation[g.group_id] = store.generation
            self.role.daemon.factory.keys_changed(
                self.role.shell.engine if self.role.shell else None, g.group_id)
        sent: list[str] = []
        failed: list[str] = []
        pushes = ctl.datagrams_to_send()
        if pushes and g.kek is not None:
            sent, failed = self._deliver(g, ctl, pushes)
            # in band; also after a reload that ended it, so the members it kept are told
            # (they register again and get a Rekey SA)
            sent += self._inband(g)
        while (ev := ctl.next_event()) is not None:
            self._log_event(g, ev, sent)
        self._arm(g, ctl)
        return sent, failed

    # -- delivery: copies, pacing, ACKs (gkm.group.delivery)
    def delivery(self, g: pm.GroupPolicy) -> RekeyDelivery:
        d = self.deliveries.get(g.group_id)
        if d is None:
            d = self.deliveries[g.group_id] = RekeyDelivery(g.group_id, g.kek)
        elif d.kek != g.kek:
            d.update_policy(g.kek)
        return d

    def _deliver(self, g: pm.GroupPolicy, ctl, pushes) -> tuple[list[str], list[str]]:
        d = self.delivery(g)
        keys = {}
        if g.kek.unicast:  # the ACKs' base keys: each KEK's key without its IV (RFC 8263)
            keks, block = ctl.group_state.keks, g.kek.cipher.block_bytes
            keys = {p.kek_spi: keks[p.kek_spi].key[block:] for p in pushes if p.kek_spi in keks}
        members = [(m.identity, host_of(m.address) or "", m.protocol)
                   for m in self.role.store.members(g.group_id)
                   if not (g.inband_rekey and m.protocol == "g-ikev2")]  # those: _inband
        dests = d.submit(pushes, members, keys, self.role.daemon.loop.time())
        failed = self._pump_delivery(g.group_id)
        return [fmt_addr(x) for x in dests], failed

    def _inband(self, g: pm.GroupPolicy) -> list[str]:
        """GSA_INBAND_REKEY to the group's G-IKEv2 members (``g_ikev2_rekey = "inband"``),
        by the key server engine that holds their IKE SAs; its datagrams leave at the next turn
        of the loop (this may run inside that engine's own event handling)."""
        shell = self.role.shell
        engine = shell.engine if shell is not None else None
        if not isinstance(engine, ProtocolDemux) or not (
                g.inband_rekey or engine.g_ikev2.inband.members(g.group_id)):
            return []
        roster = [m.identity for m in self.role.store.members(g.group_id)]
        n = engine.g_ikev2.inband_rekey(g.group_id, roster, shell.clock())
        if n:
            self.role.daemon.loop.call_soon(shell.kick)
        return [f"{n} G-IKEv2 member(s) in band"] if n else []

    def _pump_delivery(self, gid: int) -> list[str]:
        """Send what the delivery has due, log its events, arm its timer."""
        d, g = self.deliveries.get(gid), self.role.settings.group(gid)
        if d is None or g is None or g.kek is None:
            return []
        failed = []
        for o in d.datagrams_to_send():
            try:
                self.role.send_datagram(g, o.data, o.dest)
            except OSError as e:
                failed.append(f"{fmt_addr(o.dest)}: {e.strerror or e}")
        for f in failed:
            log.warning("group %s: GROUPKEY-PUSH not sent to %s", g.label, f)
        while (ev := d.next_event()) is not None:
            self._log_delivery(g, ev)
        h = self._delivery_timers.pop(gid, None)
        if h is not None:
            h.cancel()
        deadline = d.get_timer()
        if deadline is not None:
            loop = self.role.daemon.loop
            self._delivery_timers[gid] = loop.call_at(deadline, self._on_delivery_timer, gid)
        return failed

    def _on_delivery_timer(self, gid: int) -> None:
        self._delivery_timers.pop(gid, None)
        d = self.deliveries.get(gid)
        if d is not None:
            d.handle_timer(self.role.daemon.loop.time())
            self._pump_delivery(gid)

    def ack_received(self, data: bytes, addr) -> None:
        """A datagram on a rekey socket (a GROUPKEY-PUSH-ACK): to the group that sent a PUSH
        with its cookies."""
        spi = bytes(data[:16])
        for gid, d in self.deliveries.items():
            if d.expects(spi):
                d.receive_ack(data, (addr[0], addr[1]), self.role.daemon.loop.time())
                self._pump_delivery(gid)
                return
        log.warning("key server: datagram from %s on a rekey socket is no GROUPKEY-PUSH-ACK "
                    "of a PUSH sent recently; dropped", fmt_addr((addr[0], addr[1])))

    def delivery_members(self, gid: int) -> dict[str, dict]:
        d = self.deliveries.get(gid)
        return d.members() if d is not None else {}

    def _log_delivery(self, g: pm.GroupPolicy, ev: Event) -> None:
        match ev:
            case RekeyAcknowledged():
                log.debug("group %s: %s acknowledged SEQ %d", g.label, ev.identity, ev.seq)
            case RekeyUnacknowledged():
                log.warning("group %s: member %s did not acknowledge GROUPKEY-PUSH SEQ %s "
                            "(%d rekey(s) missed in a row)", g.label, ev.identity,
                            ", ".join(map(str, ev.seqs)), ev.missed)
            case MemberLost():
                log.warning("group %s: member %s lost after %d unacknowledged rekeys: no "
                            "GROUPKEY-PUSH to it until it registers again", g.label,
                            ev.identity, ev.missed)
            case AckRefused():
                log.warning("group %s: GROUPKEY-PUSH-ACK from %s refused: %s", g.label,
                            ev.source, ev.reason)
            case _:
                log.debug("group %s: %s", g.label, ev)

    def _arm(self, g: pm.GroupPolicy, ctl, retry: bool = False) -> None:
        gid = g.group_id
        h = self._timers.pop(gid, None)
        if h is not None:
            h.cancel()
        deadline = ctl.get_timer()
        if retry:
            deadline = self._clock() + 5.0
        if deadline is None:
            return
        delay = min(max(0.0, deadline - self._clock()), MAX_TIMER_S)
        self._timers[gid] = self.role.daemon.loop.call_later(delay, self._on_timer, gid)

    def _log_event(self, g: pm.GroupPolicy, ev: Event, sent: list[str]) -> None:
        self.role.daemon.activity.group_event(g.group_id, ev, sent)
        to = ", ".join(sent) or "nobody"
        # a group that serves G-IKEv2 sends each PUSH's GSA_REKEY twin along with it
        push = ("GROUPKEY-PUSH and GSA_INBAND_REKEY" if g.inband_rekey
                else "GROUPKEY-PUSH and GSA_REKEY" if serves_g_ikev2(g) else "GROUPKEY-PUSH")
        match ev:
            case GroupRekeyed(cause="operator"):
                log.info("group %s: rekeyed: SEQ %s, new TEK SPI %s; %s sent to %s",
                         g.label, ", ".join(map(str, ev.seqs)), _spis(ev.tek_spis), push, to)
            case GroupRekeyed():
                log.info("group %s: rekeyed for its new policy: SEQ %s, new TEK SPI %s, "
                         "deleted TEK SPI %s; %s sent to %s", g.label,
                         ", ".join(map(str, ev.seqs)), _spis(ev.tek_spis), _spis(ev.deleted), push,
                         to)
            case KeysRotated():
                what = []
                if ev.tek_spis:
                    what.append(f"TEK SPI {_spis(ev.replaced)} replaced by {_spis(ev.tek_spis)}")
                if ev.new_kek:
                    what.append(f"new KEK {ev.new_kek.hex()} (sent under the old one)")
                log.info("group %s: keys rotated: SEQ %d, %s; %s sent to %s",
                         g.label, ev.seq, ", ".join(what), push, to)
            case MembersEvicted(mode="no-kek"):
                log.warning("group %s: evicted %s (%s): the group has no KEK, so no "
                            "GROUPKEY-PUSH: they keep the current TEKs until those expire; "
                            "refused from now on", g.label, ", ".join(ev.evicted),
                            "; ".join(ev.reasons))
            case MembersEvicted():
                log.warning("group %s: evicted %s (%s): %s SEQ %s (new TEK SPI %s) "
                            "sent to %s; on the deny list", g.label, ", ".join(ev.evicted),
                            "; ".join(ev.reasons), push, ", ".join(map(str, ev.seqs)),
                            _spis(ev.tek_spis), to)
            case EvictionScheduled():
                log.warning("group %s: %s on the deny list; evicted by the batch rekey at %s",
                            g.label, ", ".join(ev.identities), fmt_time_utc(ev.at))
            case GroupDissolved(seq=None):
                log.warning("group %s: deleted; no GROUPKEY-PUSH could tell its %d member(s) "
                            "(no KEK or no keys yet): they keep the TEKs until those expire",
                            g.label, len(ev.members))
            case GroupDissolved():
                log.info("group %s: deleted; %s SEQ %d deleting the KEK and every "
                         "TEK sent to %s", g.label, push, ev.seq, to)
            case KeysAnnounced():
                log.info("group %s: current keys sent again after the start: SEQ %d, TEK SPI "
                         "%s; %s sent to %s", g.label, ev.seq, _spis(ev.tek_spis), push, to)
            case KeysPurged():
                what = ([f"TEK SPI {_spis(ev.tek_spis)}"] if ev.tek_spis else []) + \
                    [f"KEK {k.hex()}" for k in ev.kek_spis]
                log.info("group %s: expired keys deleted: %s", g.label, ", ".join(what))
            case _:
                log.debug("group %s: %s", g.label, ev)
