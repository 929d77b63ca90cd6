"""How one group's GROUPKEY-PUSH datagrams reach its members, sans-I/O: copies, pacing,
GROUPKEY-PUSH-ACKs (RFC 8263), retransmission and lost members.

The group controller decides *what* is sent (its :class:`~gkm.group.values.Push` values, after
their commit); :class:`RekeyDelivery` decides *when and where*.  The shell gives it the pushes
with the group's registered members (:meth:`~RekeyDelivery.submit`), ACK datagrams
(:meth:`~RekeyDelivery.receive_ack`), registrations (:meth:`~RekeyDelivery.registered`) and its
timer (:meth:`~RekeyDelivery.handle_timer`); it takes :meth:`~RekeyDelivery.datagrams_to_send`,
:meth:`~RekeyDelivery.next_event` and :meth:`~RekeyDelivery.get_timer`.  Time is the shell's
monotonic clock (pacing and retransmission are intervals, nothing here is persisted).

Modes (policy ``[keyserver.group.kek]``):

* ``rekey_delivery = "multicast"`` (default): each rekey goes out ``rekey_copies`` times,
  ``rekey_copy_interval`` apart, byte-identical, to the rekey address and, unicast, to every
  registered member (for members the multicast does not reach); members take the first copy and
  drop the others quietly (:class:`gkm.gdoi.push.PushReceiver`).  No ACKs.
* ``rekey_delivery = "unicast"``: one copy to every registered member that is not lost; the SA
  KEK asks for ACKs (KEK_ACK_REQUESTED); a member that has not acknowledged every PUSH of a
  rekey after ``rekey_ack_timeout`` gets them again, the timeout doubling, up to
  ``rekey_ack_retries`` times; then that rekey counts as missed.  After ``rekey_max_missed``
  rekeys missed in a row the member is lost: nothing more is sent to it until it registers
  again.  Following RFC 8263 section 6 ("a GCKS SHOULD NOT consider a GM to have left the group
  until it has received at least one ACK from the GM"), only a member that acknowledged once
  since its registration can be lost; one that never answers (an implementation without ACKs)
  keeps getting every rekey.  A new rekey supersedes the previous one for a member that has not
  acknowledged it yet (that one counts as missed): an older PUSH sent after a newer one would be
  refused as a replay anyway.

A :class:`~gkm.group.values.Push` of a group that serves G-IKEv2 members carries its GSA_REKEY
twin (``Push.gike``): the rekey address gets both, copies included; a member's unicast copies
(and retransmissions) carry the one of the protocol it registered with (the store's
``protocol``; members drop the other protocol's datagrams anyway).  A G-IKEv2 member sends no
acknowledgement (GSA_REKEY has none), so, as any member that never acknowledged, it is never
lost.

Unicast datagrams (both modes) leave at most ``rekey_unicast_rate`` per second (a token bucket
of 20 ms of datagrams), so a rekey of 10^5 members does not burst 10^5 datagrams at once;
multicast datagrams are not paced (one per copy).

ACK state is soft (decision): it is not written to the store.  After a key server restart every
registered member starts with no missed rekey and not lost; a member that stays silent is lost
again ``rekey_max_missed`` rekeys later.  What an ACK changes is only where the next rekeys go,
never a key, so nothing about it has to survive a crash.

An ACK is checked strictly before it changes anything (:mod:`gkm.gdoi.push_ack`): a copy of
an ACK already taken is dropped before any cryptography (RFC 8263 section 5); then its form, a
PUSH this delivery sent (cookies and SEQ), a registered member at the ID's address, the ID
equal to the source address, the HASH; anything else is an :class:`AckRefused` event and
changes nothing.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from gkm.events import Event
from gkm.gdoi.push_ack import ACK_KEK_SHA256, PushAckError, ack_key, decode_push_ack, verify_push_ack
from policy.model import KekPolicy

from .events import AckRefused, MemberLost, RekeyAcknowledged, RekeyUnacknowledged
from .values import Push

__all__ = ["RekeyDelivery", "Outgoing", "MemberDelivery", "PACING_BURST_S"]

#: the token bucket holds this many seconds of unicast datagrams (the burst after a pause)
PACING_BURST_S = 0.02
#: PUSHes whose ACKs are still recognised (cookies, SEQ) and ACK digests remembered
_RECENT_PUSHES = 64
_RECENT_ACKS = 4096


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One datagram for the rekey transport: ``dest`` is (host, port)."""

    data: bytes = field(repr=False)
    dest: tuple[str, int]
    multicast: bool = False


@dataclass(slots=True)
class MemberDelivery:
    """What the key server knows of one member's rekeys (unicast mode)."""

    identity: str
    host: str
    protocol: str = "gdoi"  # the rekey datagram its unicast copies carry
    last_acked_seq: int | None = None
    acked_once: bool = False
    missed: int = 0  # rekeys in a row left unacknowledged
    lost: bool = False
    pending: dict[tuple[bytes, int], Push] = field(default_factory=dict, repr=False)
    attempts: int = 0  # retransmissions of the pending rekey so far
    generation: int = 0  # the retransmission timer entry that is current

    def view(self) -> dict:
        return {"last_acked_seq": self.last_acked_seq, "missed_rekeys": self.missed,
                "lost": self.lost, "unacknowledged": sorted(s for _k, s in self.pending)}


class RekeyDelivery:
    def __init__(self, group_id: int, kek: KekPolicy) -> None:
        self.group_id = group_id
        self.kek = kek
        self._members: dict[str, MemberDelivery] = {}
        self._by_host: dict[str, set[str]] = {}
        #: (when, n, pushes, ((host, port, protocols or None for all), ...))
        self._copies: list[tuple[float, int, tuple[Push, ...], tuple[tuple[str, int, frozenset | None], ...]]] = []
        self._copy_n = 0
        self._paced: deque[tuple[Outgoing, str | None]] = deque()
        self._tokens = self._burst
        self._refilled: float | None = None
        self._retx: list[tuple[float, int, str]] = []  # (deadline, generation, identity)
        self._sent: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()  # -> ack_key
        self._seen_acks: OrderedDict[bytes, None] = OrderedDict()
        self._out: list[Outgoing] = []
        self._events: deque[Event] = deque()
        self.stats = {"acks": 0, "ack_copies": 0, "acks_refused": 0, "retransmitted": 0}

    def __repr__(self) -> str:
        return (f"RekeyDelivery(group={self.group_id}, {self.kek.rekey_delivery}, "
                f"{len(self._members)} members, {len(self._paced)} queued)")

    @property
    def _burst(self) -> float:
        return max(1.0, self.kek.rekey_unicast_rate * PACING_BURST_S)

    @property
    def unicast(self) -> bool:
        return self.kek.unicast

    # -- inputs -----------------------------------------------------------------------------
    def update_policy(self, kek: KekPolicy) -> None:
        """A reload: the new limits apply from the next datagram and the next rekey."""
        self.kek = kek
        self._tokens = min(self._tokens, self._burst)

    def submit(self, pushes: Iterable[Push], members: Iterable[tuple[str, ...]],
               kek_keys: Mapping[bytes, bytes], now: float) -> list[tuple[str, int]]:
        """Deliver ``pushes`` (one rekey, in order) to the registered ``members`` ((identity,
        host, protocol) triples, the store's, or (identity, host) pairs for GDOI members; the
        roster is taken from them); ``kek_keys``: each KEK SPI's key without IV (the ACK's
        base key).  Returns the first copy's destinations."""
        pushes = tuple(pushes)
        self._roster(members)
        if not pushes:
            return []
        if self.unicast:
            for p in pushes:
                if p.kek_spi in kek_keys:
                    self._sent[(p.kek_spi, p.seq)] = ack_key(kek_keys[p.kek_spi], p.kek_spi,
                                                             ACK_KEK_SHA256)
                    while len(self._sent) > _RECENT_PUSHES:
                        self._sent.popitem(last=False)
            dests = []
            for m in self._members.values():
                if m.lost:
                    continue
                if m.pending:
                    self._missed(m)
                    if m.lost:
                        continue
                m.pending = {(p.kek_spi, p.seq): p for p in pushes}
                m.attempts = 0
                m.generation += 1
                self._enqueue(m, pushes)
                dests.append((m.host, self.kek.rekey_port))
            self._release(now)
            return dests
        group = (str(self.kek.rekey_address), self.kek.rekey_port)
        hosts: dict[tuple[str, int], set[str]] = {}
        for m in self._members.values():
            if (m.host, self.kek.rekey_port) != group:
                hosts.setdefault((m.host, self.kek.rekey_port), set()).add(m.protocol)
        dests = [group] + list(hosts)
        plan = ((*group, None),) + tuple((*d, frozenset(ps)) for d, ps in hosts.items())
        for k in range(self.kek.rekey_copies):
            self._copy_n += 1
            heapq.heappush(self._copies, (now + k * self.kek.rekey_copy_interval_s,
                                          self._copy_n, pushes, plan))
        self._due(now)
        self._release(now)
        return dests

    def registered(self, identity: str, host: str, protocol: str = "gdoi") -> None:
        """``identity`` registered (again) from ``host`` over ``protocol``: whatever it missed
        is forgotten; a lost member is delivered to again."""
        old = self._members.pop(identity, None)
        if old is not None:
            self._by_host.get(old.host, set()).discard(identity)
        self._add(identity, host, protocol)

    def receive_ack(self, data: bytes, src: tuple[str, int], now: float) -> None:
        """A datagram on a rekey socket: a GROUPKEY-PUSH-ACK for this group, we hope."""
        data = bytes(data)
        digest = hashlib.sha256(data).digest()
        if digest in self._seen_acks:
            self.stats["ack_copies"] += 1
            return  # a copy of an ACK already taken: dropped before any cryptography
        if not self.unicast:
            return self._refuse(src, "this group does not ask for GROUPKEY-PUSH-ACKs")
        try:
            ack = decode_push_ack(data)
        except PushAckError as e:
            return self._refuse(src, str(e))
        key = self._sent.get((ack.spi, ack.seq))
        if key is None:
            return self._refuse(src, f"SEQ {ack.seq} under KEK {ack.spi.hex()} is no PUSH "
                                     "this key server sent recently")
        host = str(ack.address)
        if src[0].split("%", 1)[0] != host:
            return self._refuse(src, f"ID {host} is not the source address")
        ids = self._by_host.get(host)
        if not ids:
            return self._refuse(src, f"no registered member at {host}")
        if not verify_push_ack(ack, key, ACK_KEK_SHA256):
            return self._refuse(src, "HASH does not verify")
        self._seen_acks[digest] = None
        while len(self._seen_acks) > _RECENT_ACKS:
            self._seen_acks.popitem(last=False)
        self.stats["acks"] += 1
        for identity in sorted(ids):
            m = self._members[identity]
            m.last_acked_seq = ack.seq
            m.acked_once = True
            if m.pending.pop((ack.spi, ack.seq), None) is not None and not m.pending:
                m.missed = 0
                m.generation += 1  # its retransmission timer entry is void
                self._events.append(RekeyAcknowledged(self.group_id, identity, ack.seq))

    def handle_timer(self, now: float) -> None:
        self._due(now)
        while self._retx and self._retx[0][0] <= now:
            _at, gen, identity = heapq.heappop(self._retx)
            m = self._members.get(identity)
            if m is None or gen != m.generation or not m.pending or m.lost:
                continue
            if m.attempts < self.kek.rekey_ack_retries:
                m.attempts += 1
                m.generation += 1
                self.stats["retransmitted"] += 1
                self._enqueue(m, tuple(m.pending.values()))
            else:
                self._missed(m)
        self._release(now)

    # -- outputs ----------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        when = []
        if self._copies:
            when.append(self._copies[0][0])
        if self._paced:
            need = min(self._burst, len(self._paced)) - self._tokens
            when.append(self._refilled + max(0.0, need) / self.kek.rekey_unicast_rate)
        while self._retx and self._stale(self._retx[0]):
            heapq.heappop(self._retx)
        if self._retx:
            when.append(self._retx[0][0])
        return min(when) if when else None

    def members(self) -> dict[str, dict]:
        """Per registered member: last SEQ acknowledged, rekeys missed in a row, lost."""
        return {i: m.view() for i, m in self._members.items()}

    def expects(self, spi: bytes) -> bool:
        """Whether an ACK with these cookies may be for this group."""
        return any(k == spi for k, _s in self._sent)

    @property
    def queued(self) -> int:
        return len(self._paced)

    # -- internals --------------------------------------------------------------------------
    def _roster(self, members: Iterable[tuple[str, ...]]) -> None:
        seen = set()
        for identity, host, *rest in members:
            protocol = rest[0] if rest else "gdoi"
            seen.add(identity)
            m = self._members.get(identity)
            if m is None:
                self._add(identity, host, protocol)
            elif m.host != host or m.protocol != protocol:
                self.registered(identity, host, protocol)
        for identity in [i for i in self._members if i not in seen]:
            m = self._members.pop(identity)
            self._by_host.get(m.host, set()).discard(identity)

    def _add(self, identity: str, host: str, protocol: str = "gdoi") -> None:
        self._members[identity] = MemberDelivery(identity, host, protocol)
        if host:
            self._by_host.setdefault(host, set()).add(identity)

    def _missed(self, m: MemberDelivery) -> None:
        seqs = tuple(sorted(s for _k, s in m.pending))
        m.pending = {}
        m.generation += 1
        m.missed += 1
        self._events.append(RekeyUnacknowledged(self.group_id, m.identity, seqs, m.missed))
        if m.missed >= self.kek.rekey_max_missed and m.acked_once:
            m.lost = True
            self._events.append(MemberLost(self.group_id, m.identity, m.missed))

    def _enqueue(self, m: MemberDelivery, pushes: tuple[Push, ...]) -> None:
        if not m.host:
            return
        for p in pushes:
            for data in _for(p, {m.protocol}):
                self._paced.append((Outgoing(data, (m.host, self.kek.rekey_port)), m.identity))

    def _stale(self, entry: tuple[float, int, str]) -> bool:
        m = self._members.get(entry[2])
        return m is None or entry[1] != m.generation or not m.pending or m.lost

    def _due(self, now: float) -> None:
        while self._copies and self._copies[0][0] <= now:
            _at, _n, pushes, plan = heapq.heappop(self._copies)
            for host, port, protocols in plan:
                for p in pushes:
                    for data in (p.datagrams if protocols is None else _for(p, protocols)):
                        if host == str(self.kek.rekey_address):
                            self._out.append(Outgoing(data, (host, port), multicast=True))
                        else:
                            self._paced.append((Outgoing(data, (host, port)), None))

    def _release(self, now: float) -> None:
        rate = self.kek.rekey_unicast_rate
        if self._refilled is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        armed: set[str] = set()
        while self._paced and self._tokens >= 1.0 - 1e-9:  # float slack: the timer is exact
            o, identity = self._paced.popleft()
            self._tokens = max(0.0, self._tokens - 1.0)
            self._out.append(o)
            if identity is not None:
                armed.add(identity)
        for identity in armed:
            m = self._members.get(identity)
            if m is not None and m.pending:
                # the wait for its ACK starts when its datagrams leave
                wait = self.kek.rekey_ack_timeout_s * (2 ** m.attempts)
                heapq.heappush(self._retx, (now + wait, m.generation, identity))

    def _refuse(self, src: tuple[str, int], reason: str) -> None:
        self.stats["acks_refused"] += 1
        self._events.append(AckRefused(self.group_id, f"{src[0]}:{src[1]}", reason))


def _for(p: Push, protocols) -> tuple[bytes, ...]:
    """The datagrams of ``p`` for members speaking ``protocols``: the PUSH for GDOI, its
    GSA_REKEY twin for G-IKEv2 (the PUSH where there is none: nothing else could reach them)."""
    out = []
    if "gdoi" in protocols or p.gike is None:
        out.append(p.data)
    if "g-ikev2" in protocols and p.gike is not None:
        out.append(p.gike)
    return tuple(out)
