"""The responder side of many Main Mode exchanges, multiplexed by cookie pair.

``Phase1Server`` has the same input/output shape as one engine (``receive_datagram``,
``handle_timer``, ``datagrams_to_send``, ``next_event``, ``get_timer``) and owns the resources a
flood could exhaust.  Denial-of-service design (RFC 2522 "Photuris" cookies, FreeBSD syncache):

* **Message 1 is cheap.**  The responder cookie is ``HMAC(secret, CKY-I | peer address)[:8]``, so
  it is deterministic (a retransmitted message 1 gets the same cookie and the stored message 2)
  and bound to the source address.  Message 1 costs one HMAC, a lookup in a cache of checked
  message 1s (keyed by the bytes after the cookies: header, SA and VIDs, so a flood of
  identical offers is not re-parsed; a new one costs a header and chain walk and a proposal
  decision, itself cached by SA body) and a compact :class:`_HalfOpen` record (message 1 and
  2 bytes, the chosen proposal): no engine object, no Diffie-Hellman.  The engine (:class:`MainMode`, state
  MM2_SENT) is built only when a valid message 3 arrives.
* **Half-open state is bounded.**  At most ``max_half_open`` records (FIFO; when full the oldest
  is evicted, so legitimate initiators survive as long as their round trip is shorter than
  ``max_half_open / spoofed rate``), at most ``max_half_open_per_peer`` per source address, and
  each expires after ``half_open_timeout``.
* **Diffie-Hellman only after return routability.**  Message 3 is accepted only with the right
  cookie pair from the address that got message 2, so a spoofer never reaches the DH step.  At
  most ``max_pending`` exchanges may sit between messages 3 and 5 (each cost a DH and is kept
  for ``exchange_timeout``), shared fairly between source addresses: at most
  ``max_pending_per_peer`` per address (a message 3 beyond it is dropped *before* its DH), and
  when the table is full a message 3 from a lighter source reclaims the oldest exchange of the
  heaviest source (one address flooding message 3s from its real address, never sending a
  message 5, only ever holds its own share; everybody else still gets through).
* **Established SAs are bounded.**  At most ``max_sa_per_identity`` ISAKMP SAs per
  authenticated identity and ``max_sa_per_address`` per source address; a new one beyond a bound
  replaces (deletes, with a Delete to the peer) the oldest of that identity or address.
* **New SAs per identity are rate limited.**  An authenticated member completing phase 1 over
  and over (with or without INITIAL-CONTACT, so the bounds above never stop it) makes the key
  server do a Diffie-Hellman and the whole exchange each time: one member could take most of
  the key server's CPU.  Each identity has a token bucket (``sa_burst_per_identity``, refilled
  at ``sa_rate_per_identity`` per second; a member needs one SA per registration).  An SA
  beyond it is deleted as soon as it is established (a Delete to the peer, a
  :class:`Phase1Failed` event instead of :class:`Phase1Established`), and its source address
  is *held*: its message 3s are dropped before the DH until the identity's bucket has a token
  again, and from then on it gets one DH per ``1 / sa_rate_per_identity`` s until the bucket
  could be full again (``sa_burst_per_identity / sa_rate_per_identity`` s after the refusal),
  so the exchanges it keeps in flight cannot all pass when the hold ends.  The identity is only
  known after the DH (message 5), hence the hold on the address, which only an authenticated
  peer can cause (a spoofer cannot hold anybody's address); other members behind the same
  address (NAT) share its pace meanwhile.
* **No reflection.**  The only datagram sent to an unverified source is the notification for a
  message 1 whose proposals are all unacceptable (it lets a misconfigured peer fail at once
  instead of retransmitting until it gives up).  A spoofed flood would turn that into a
  reflector, so those notifications are rate limited: at most one per source address per
  ``NOTIFY_SOURCE_INTERVAL`` and ``NOTIFY_RATE`` per second in all (burst ``NOTIFY_BURST``);
  beyond that the message 1 is dropped silently (counted in ``stats["notify_suppressed"]``).
* Unknown or malformed datagrams are dropped with a log line (DEBUG for the floodable
  message-1 path, INFO otherwise) and counted in :attr:`stats`.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import os
from collections import Counter, OrderedDict, deque
from typing import Callable

from . import _msg as m
from . import crypto
from .config import Identity, Phase1Config
from .events import Address, DeleteRequest, Event, Notification, Phase1Deleted, Phase1Established, Phase1Failed, Phase1SA
from .config import Proposal
from .mainmode import LocalProtocolError, MainMode, State, choose_proposal

log = logging.getLogger("gkm.ike")

__all__ = ["Phase1Server", "MAX_SA_BODY"]

MAX_SA_BODY = 4096
_ZERO8 = bytes(8)


def _host(addr: Address) -> str:
    return str(addr[0] if isinstance(addr, tuple) else addr)


def _addr_bytes(addr: Address) -> bytes:
    return repr(addr).encode()


def _peer_key(sa: Phase1SA) -> tuple[Identity, str]:
    return sa.peer_id, _host(sa.peer_addr)


class _HalfOpen:
    """What the responder keeps between messages 1 and 3 (about 200 bytes + the messages)."""

    __slots__ = ("addr", "host", "message1", "message2", "sai_b", "proposal", "deadline")

    def __init__(self, addr: Address, host: str, message1: bytes, message2: bytes, sai_b: bytes, proposal: Proposal, deadline: float) -> None:
        self.addr = addr
        self.host = host
        self.message1 = message1
        self.message2 = message2
        self.sai_b = sai_b
        self.proposal = proposal
        self.deadline = deadline


class _Pending:
    """The exchanges between messages 3 and 5 (a DH spent on each), oldest first, per source
    host, with the heaviest source found in O(1) (hosts bucketed by their count)."""

    __slots__ = ("_all", "_by_host", "_buckets", "_max")

    def __init__(self) -> None:
        self._all: dict[tuple[bytes, bytes], str] = {}
        self._by_host: dict[str, OrderedDict[tuple[bytes, bytes], None]] = {}
        self._buckets: dict[int, dict[str, None]] = {}  # count -> hosts with that count
        self._max = 0

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def count(self, host: str) -> int:
        keys = self._by_host.get(host)
        return len(keys) if keys else 0

    def add(self, key: tuple[bytes, bytes], host: str) -> None:
        if key in self._all:
            return
        self._all[key] = host
        keys = self._by_host.setdefault(host, OrderedDict())
        self._move(host, len(keys), len(keys) + 1)
        keys[key] = None

    def discard(self, key: tuple[bytes, bytes]) -> None:
        host = self._all.pop(key, None)
        if host is None:
            return
        keys = self._by_host[host]
        del keys[key]
        self._move(host, len(keys) + 1, len(keys))
        if not keys:
            del self._by_host[host]

    def heaviest(self) -> tuple[str, int] | None:
        while self._max and not self._buckets.get(self._max):
            self._max -= 1
        if not self._max:
            return None
        return next(iter(self._buckets[self._max])), self._max

    def oldest_of(self, host: str) -> tuple[bytes, bytes]:
        return next(iter(self._by_host[host]))

    def _move(self, host: str, old: int, new: int) -> None:
        if old:
            b = self._buckets[old]
            del b[host]
            if not b:
                del self._buckets[old]
        if new:
            self._buckets.setdefault(new, {})[host] = None
            self._max = max(self._max, new)


class Phase1Server:
    """Main Mode responder for any number of peers (the key server side)."""

    # unauthenticated notifications (message 1 without an acceptable proposal): see the module
    # docstring, "No reflection"
    NOTIFY_RATE = 10.0  # per second, all sources
    NOTIFY_BURST = 20
    NOTIFY_SOURCE_INTERVAL = 10.0  # seconds between two notifications to one source address
    NOTIFY_SOURCES = 4096  # source addresses remembered for that (oldest forgotten first)
    # identities whose new-SA bucket is remembered (least recently used forgotten first: a
    # forgotten bucket is a full one, which only an identity idle for a while has anyway)
    SA_RATE_IDENTITIES = 16384

    def __init__(self, config: Phase1Config, *, secret: bytes | None = None, random: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._secret = secret or random(32)
        self._random = random
        self._exchanges: dict[tuple[bytes, bytes], MainMode] = {}
        # half-open records in arrival order (= deadline order: one timeout for all)
        self._half_open: OrderedDict[tuple[bytes, bytes], _HalfOpen] = OrderedDict()
        self._per_peer: dict[str, int] = {}  # half-open records per source host
        self._pending = _Pending()
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Address]] = []
        self._heap: list[tuple[float, int, tuple[bytes, bytes]]] = []
        self._seq = itertools.count()
        self._scheduled: dict[tuple[bytes, bytes], float] = {}
        self.stats: Counter[str] = Counter()
        self._offer_cache: dict[bytes, tuple] = {}  # SA body of message 1 -> choose_proposal()
        self._mm1_checked: dict[bytes, tuple] = {}  # message 1 after its cookies -> _check_message1()
        self._cookie_prf = crypto.Prf(crypto.HashAlg.SHA2_256).keyed(self._secret)
        # established SAs by (peer identity, peer host), in order of establishment: INITIAL-CONTACT
        # looks here instead of scanning every exchange
        self._by_peer: dict[tuple[Identity, str], dict[tuple[bytes, bytes], None]] = {}
        # the same SAs by identity and by host alone, oldest first: the per-identity and
        # per-address bounds replace the oldest
        self._sa_by_id: dict[Identity, OrderedDict[tuple[bytes, bytes], None]] = {}
        self._sa_by_host: dict[str, OrderedDict[tuple[bytes, bytes], None]] = {}
        # notification rate limit: a token bucket for all sources, last time per source
        self._notify_tokens = float(self.NOTIFY_BURST)
        self._notify_at: float | None = None
        self._notified: OrderedDict[str, float] = OrderedDict()
        # new SAs per identity: (tokens, when), least recently used first; source hosts held
        # because an identity from there exceeded its rate: (no DH before, paced until)
        self._sa_tokens: OrderedDict[Identity, tuple[float, float]] = OrderedDict()
        self._held: OrderedDict[str, tuple[float, float]] = OrderedDict()

    # ----------------------------------------------------------------- inputs

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self._receive(bytes(data), addr, now)
        except Exception:  # pragma: no cover - defensive: MainMode already contains its errors
            log.exception("ike server: internal error on datagram from %r", addr)
            self.stats["internal_error"] += 1

    def handle_timer(self, now: float) -> None:
        ho = self._half_open
        while ho:
            key, rec = next(iter(ho.items()))
            if rec.deadline > now:
                break
            del ho[key]
            self._dec_peer(rec.host)
            self.stats["expired_half_open"] += 1
            log.debug("ike server: half-open exchange %s:%s from %r expired", key[0].hex(), key[1].hex(), rec.addr)
        while self._heap and self._heap[0][0] <= now:
            t, _s, key = heapq.heappop(self._heap)
            ex = self._exchanges.get(key)
            if ex is None or self._scheduled.get(key) != t:
                continue
            del self._scheduled[key]
            ex.handle_timer(now)
            self._after(key, ex)
        self._clean_heap()

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        self._clean_heap()
        t = self._heap[0][0] if self._heap else None
        if self._half_open:
            h = next(iter(self._half_open.values())).deadline
            t = h if t is None else min(t, h)
        return t

    # ----------------------------------------------------------------- SA access

    def sa(self, spi: bytes) -> Phase1SA | None:
        ex = self._exchanges.get((spi[:8], spi[8:16]))
        return ex.sa if ex is not None and ex.state is State.ESTABLISHED else None

    def established(self) -> list[Phase1SA]:
        return [ex.sa for ex in self._exchanges.values() if ex.state is State.ESTABLISHED and ex.sa is not None]

    def send_informational(self, spi: bytes, now: float, notifications: tuple[Notification, ...] = (), deletes: tuple[DeleteRequest, ...] = ()) -> None:
        key = (spi[:8], spi[8:16])
        ex = self._exchanges.get(key)
        if ex is None:
            raise LocalProtocolError(f"no ISAKMP SA {spi.hex()}")
        ex.send_informational(now, notifications, deletes)
        self._after(key, ex)

    def delete_sa(self, spi: bytes, now: float, reason: str = "deleted locally") -> None:
        key = (spi[:8], spi[8:16])
        ex = self._exchanges.get(key)
        if ex is None:
            raise LocalProtocolError(f"no ISAKMP SA {spi.hex()}")
        ex.delete(now, reason)
        self._after(key, ex)

    @property
    def half_open_count(self) -> int:
        return len(self._half_open)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ----------------------------------------------------------------- internals

    def _cookie(self, icookie: bytes, addr: Address) -> bytes:
        c = self._cookie_prf(icookie + _addr_bytes(addr))[:8]
        return c if any(c) else b"\x00" * 7 + b"\x01"

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        self.stats["received"] += 1
        if len(data) < m.HEADER_LEN:
            self.stats["dropped_short"] += 1
            log.debug("ike server: dropped %d-byte datagram from %r: shorter than a header", len(data), addr)
            return
        icookie, rcookie = data[:8], data[8:16]
        if rcookie == _ZERO8:
            self._message1(data, icookie, addr, now)
            return
        key = (icookie, rcookie)
        ex = self._exchanges.get(key)
        if ex is None:
            rec = self._half_open.get(key)
            if rec is not None:
                self._message3(key, rec, data, addr, now)
                return
            self.stats["dropped_unknown_spi"] += 1
            log.info("ike server: dropped datagram from %r: unknown cookie pair %s:%s", addr, icookie.hex(), rcookie.hex())
            return
        ex.receive_datagram(data, addr, now)
        self._after(key, ex)

    def _message1(self, data: bytes, icookie: bytes, addr: Address, now: float) -> None:
        """Main Mode message 1, checked and answered without building an engine."""
        checked = self._mm1_checked.get(data[16:])
        if checked is None or icookie == _ZERO8:
            checked = self._check_message1(data, icookie, addr)
            if checked is None:
                return
        sa_b, choice, message2_tail = checked
        rcookie = self._cookie(icookie, addr)
        key = (icookie, rcookie)
        rec = self._half_open.get(key)
        if rec is not None:
            if rec.addr == addr and hmac.compare_digest(rec.message1, data):
                self._out.append((rec.message2, addr))  # retransmission: the stored answer
                self.stats["duplicate_mm1"] += 1
            else:
                self.stats["dropped_bad_mm1"] += 1
                log.debug("ike server: dropped message 1 from %r: differs from the first one with this cookie", addr)
            return
        if key in self._exchanges:
            self.stats["dropped_bad_mm1"] += 1
            log.info("ike server: dropped message 1 from %r: exchange %s:%s is past message 2", addr, icookie.hex(), rcookie.hex())
            return
        host = _host(addr)
        n_peer = self._per_peer.get(host, 0)
        if n_peer >= self.config.max_half_open_per_peer:
            self.stats["dropped_peer_limit"] += 1
            log.debug("ike server: dropped message 1 from %r: %d half-open exchanges from this address", addr, n_peer)
            return
        prop, _reply, (reason, notify) = choice
        if prop is None:
            self.stats["no_proposal"] += 1
            if not self._may_notify(host, now):
                # the source is unverified (message 1 can be spoofed): beyond the rate limit
                # the answer would make us a reflector, so drop silently
                self.stats["notify_suppressed"] += 1
                log.debug("ike server: dropped message 1 from %r: %s (notification rate limit)", addr, reason)
                return
            log.warning("ike server: exchange %s:%s with %r failed: %s", icookie.hex(), rcookie.hex(), addr, reason)
            mid = int.from_bytes(self._random(4), "big") or 1
            n = m.encode_notify(notify, icookie + rcookie)
            self._out.append((m.build(icookie, rcookie, m.EXCH_INFO, 0, mid, [(m.N, n)]), addr))
            self._events.append(Phase1Failed(icookie, rcookie, addr, reason, notify))
            return
        ho = self._half_open
        while len(ho) >= self.config.max_half_open:
            _old, old = ho.popitem(last=False)
            self._dec_peer(old.host)
            self.stats["evicted_half_open"] += 1
        message2 = icookie + rcookie + message2_tail
        ho[key] = _HalfOpen(addr, host, data, message2, sa_b, prop, now + self.config.half_open_timeout)
        self._per_peer[host] = n_peer + 1
        self.stats["half_open_created"] += 1
        self._out.append((message2, addr))

    def _check_message1(self, data: bytes, icookie: bytes, addr: Address) -> tuple | None:
        """Validate a message 1 and choose a proposal: (SA body, choose_proposal(), message 2
        after its cookies).  All of it depends only on the bytes after the cookies, so it is
        remembered by them (``_mm1_checked``): a flood of identical message 1s, or members with
        the same configuration, cost a lookup instead of a parse and a message 2 build."""
        try:
            hdr = m.decode_header(data)
            if hdr.exchange != m.EXCH_MAIN or hdr.flags & m.FLAG_E or hdr.message_id or icookie == _ZERO8:
                raise m.MessageError("header", 18, "zero responder cookie but not a Main Mode message 1")
            if hdr.next_payload != m.SA:
                raise m.MessageError("header", 16, "message 1 must start with an SA payload")
            if len(data) > m.HEADER_LEN + MAX_SA_BODY + 1024:
                raise m.MessageError("message", 24, f"oversized message 1 ({len(data)} bytes)")
            chain = m.decode_chain(data[m.HEADER_LEN :], hdr.next_payload, m.HEADER_LEN)
            if len(chain) > 17 or any(t != m.VID for t, _b in chain[1:]):
                raise m.MessageError("message", m.HEADER_LEN, "message 1 may hold only SA [, VID...]")
        except m.MessageError as e:
            self.stats["dropped_bad_mm1"] += 1
            log.debug("ike server: dropped message 1 from %r: %s", addr, e)
            return None
        sa_b = chain[0][1]
        choice = self._offer_cache.get(sa_b)
        if choice is None:
            choice = choose_proposal(self.config, sa_b)
            if len(self._offer_cache) >= 1024:
                self._offer_cache.clear()
            self._offer_cache[sa_b] = choice
        prop, reply, _why = choice
        tail = m.build(_ZERO8, _ZERO8, m.EXCH_MAIN, 0, 0, [(m.SA, reply)])[16:] if prop is not None else b""
        checked = (sa_b, choice, tail)
        if len(self._mm1_checked) >= 1024:
            self._mm1_checked.clear()
        self._mm1_checked[data[16:]] = checked
        return checked

    def _message3(self, key: tuple[bytes, bytes], rec: _HalfOpen, data: bytes, addr: Address, now: float) -> None:
        """A datagram for a half-open exchange: build the engine (state MM2_SENT) and let it
        judge.  Only if it moves on does the record become an exchange."""
        if addr != rec.addr:
            self.stats["dropped_wrong_addr"] += 1
            log.info("ike server: dropped datagram for %s:%s from %r: message 2 went to %r", key[0].hex(), key[1].hex(), addr, rec.addr)
            return
        held = self._held.get(rec.host)
        if held is not None:
            next_dh, release = held
            if now < next_dh:
                self.stats["dropped_sa_rate"] += 1
                log.debug("ike server: dropped message 3 from %r: held %.1f s more (phase 1 SA rate of an identity there)",
                          addr, next_dh - now)
                return
            if now >= release:
                del self._held[rec.host]
            else:  # one DH per token interval until the identity's bucket could be full again
                self._held[rec.host] = (now + 1.0 / self.config.sa_rate_per_identity, release)
        if not self._admit_pending(rec.host, addr, now):
            return
        ex = MainMode.responder_after_message1(
            self.config, addr, key[0], key[1], message1=rec.message1, message2=rec.message2,
            sai_b=rec.sai_b, proposal=rec.proposal, deadline=rec.deadline, random=self._random,
        )
        ex.receive_datagram(data, addr, now)
        if ex.state is State.MM2_SENT:  # dropped (malformed, wrong shape): keep the record only
            self._out.extend(ex.datagrams_to_send())
            return
        del self._half_open[key]
        self._dec_peer(rec.host)
        self._exchanges[key] = ex
        self._after(key, ex)

    def _admit_pending(self, host: str, addr: Address, now: float) -> bool:
        """May a message 3 from ``host`` cost a DH?  Within its share, and when the table is
        full only by reclaiming the oldest exchange of a heavier source."""
        pending = self._pending
        mine = pending.count(host)
        if mine >= self.config.max_pending_per_peer:
            self.stats["dropped_pending_peer_limit"] += 1
            log.warning("ike server: dropped message 3 from %r: %d exchanges of this address wait for message 5", addr, mine)
            return False
        if len(pending) < self.config.max_pending:
            return True
        heavy = pending.heaviest()
        if heavy is None or heavy[1] <= mine + 1:  # nobody holds more than this source would
            self.stats["dropped_pending_full"] += 1
            log.warning("ike server: dropped message 3 from %r: %d exchanges pending", addr, len(pending))
            return False
        victim = pending.oldest_of(heavy[0])
        pending.discard(victim)
        old = self._exchanges.get(victim)
        if old is not None:
            old.state = State.FAILED
            old.failure = "reclaimed for another source (pending exchanges full)"
            self._forget(victim, old)
        self.stats["reclaimed_pending"] += 1
        log.debug("ike server: reclaimed exchange %s:%s of %s (%d pending) for %r", victim[0].hex(), victim[1].hex(), heavy[0], heavy[1], addr)
        return True

    def _may_notify(self, host: str, now: float) -> bool:
        """Rate limit for notifications to unverified sources (see the module docstring)."""
        if self._notify_at is not None:
            self._notify_tokens = min(float(self.NOTIFY_BURST), self._notify_tokens + (now - self._notify_at) * self.NOTIFY_RATE)
        self._notify_at = now
        last = self._notified.get(host)
        if last is not None and now - last < self.NOTIFY_SOURCE_INTERVAL:
            return False
        if self._notify_tokens < 1.0:
            return False
        self._notify_tokens -= 1.0
        self._notified[host] = now
        self._notified.move_to_end(host)
        while len(self._notified) > self.NOTIFY_SOURCES:
            self._notified.popitem(last=False)
        return True

    def _after(self, key: tuple[bytes, bytes], ex: MainMode) -> None:
        """Bookkeeping after an exchange handled an input."""
        if ex.state is State.MM4_SENT:
            self._pending.add(key, _host(ex.peer_addr))
        else:
            self._pending.discard(key)
        self._out.extend(ex.datagrams_to_send())
        established = None
        while (ev := ex.next_event()) is not None:
            if isinstance(ev, Phase1Established) and not self._take_sa_token(ev.sa):
                self._refuse_over_rate(key, ex, ev.sa)
                break
            self._events.append(ev)
            if isinstance(ev, Phase1Established):
                if ev.sa.initial_contact:
                    self._initial_contact(key, ev.sa)
                self._by_peer.setdefault(_peer_key(ev.sa), {})[key] = None
                self._sa_by_id.setdefault(ev.sa.peer_id, OrderedDict())[key] = None
                self._sa_by_host.setdefault(_host(ev.sa.peer_addr), OrderedDict())[key] = None
                established = ev.sa
        if established is not None:
            self._bound_sas(key, established)
        if ex.state in (State.FAILED, State.DELETED):
            self._forget(key, ex)
            self._pending.discard(key)
        else:
            self._schedule(key, ex)

    def _take_sa_token(self, sa: Phase1SA) -> bool:
        """One new SA for ``sa.peer_id``'s bucket: True if it had a token (see the module
        docstring); False holds the source host until the bucket has one again."""
        burst, rate = float(self.config.sa_burst_per_identity), self.config.sa_rate_per_identity
        now = sa.established_at
        buckets = self._sa_tokens
        tokens, at = buckets.pop(sa.peer_id, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        else:
            host = _host(sa.peer_addr)
            self._held.pop(host, None)
            self._held[host] = (now + (1.0 - tokens) / rate, now + burst / rate)
            while len(self._held) > self.SA_RATE_IDENTITIES:
                self._held.popitem(last=False)
        buckets[sa.peer_id] = (tokens, now)
        while len(buckets) > self.SA_RATE_IDENTITIES:
            buckets.popitem(last=False)
        return ok

    def _refuse_over_rate(self, key: tuple[bytes, bytes], ex: MainMode, sa: Phase1SA) -> None:
        """Delete an SA just established beyond its identity's rate: the peer gets a Delete
        (its message 6 is already out), the owner a Phase1Failed, never a Phase1Established."""
        rate = self.config.sa_rate_per_identity
        reason = (f"more than {self.config.sa_burst_per_identity} new phase 1 SAs for this identity "
                  f"(then {rate:g} per second); its address is held")
        self.stats["refused_sa_rate"] += 1
        ex.delete(sa.established_at, reason)
        self._out.extend(ex.datagrams_to_send())
        while ex.next_event() is not None:  # its Phase1Deleted: the SA was never announced
            pass
        self._events.append(Phase1Failed(key[0], key[1], sa.peer_addr, f"{sa.peer_id}: {reason}"))

    def _bound_sas(self, key: tuple[bytes, bytes], sa: Phase1SA) -> None:
        """A new SA beyond the per-identity or per-address bound replaces the oldest one."""
        for index, who, limit, what in (
            (self._sa_by_id, sa.peer_id, self.config.max_sa_per_identity, "identity"),
            (self._sa_by_host, _host(sa.peer_addr), self.config.max_sa_per_address, "address"),
        ):
            keys = index.get(who)
            while keys is not None and len(keys) > limit:
                old_key = next(iter(keys))
                if old_key == key:  # pragma: no cover - the new SA is the youngest
                    break
                old = self._exchanges.get(old_key)
                if old is None:
                    del keys[old_key]
                else:
                    self.stats["replaced_sa"] += 1
                    log.info("ike server: SA %s:%s of %s replaced: more than %d phase 1 SAs for this %s",
                             old_key[0].hex(), old_key[1].hex(), sa.peer_id, limit, what)
                    old.delete(sa.established_at, f"replaced: more than {limit} phase 1 SAs for this {what}")
                    self._out.extend(old.datagrams_to_send())
                    while (ev := old.next_event()) is not None:
                        self._events.append(ev)
                    self._forget(old_key, old)
                keys = index.get(who)

    def _forget(self, key: tuple[bytes, bytes], ex: MainMode) -> None:
        self._exchanges.pop(key, None)
        self._scheduled.pop(key, None)
        if ex.sa is not None:
            pk = _peer_key(ex.sa)
            keys = self._by_peer.get(pk)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._by_peer[pk]
            for index, who in ((self._sa_by_id, ex.sa.peer_id), (self._sa_by_host, _host(ex.sa.peer_addr))):
                keys = index.get(who)
                if keys is not None:
                    keys.pop(key, None)
                    if not keys:
                        del index[who]

    def _initial_contact(self, key: tuple[bytes, bytes], sa: Phase1SA) -> None:
        """The peer has rebooted: forget its older ISAKMP SAs (same identity *and* same source host:
        with address-keyed PSKs the ID is not bound to the key, so the ID alone must not let one
        member delete another's SAs), without telling it (it has no state for them).  The
        candidates come from the (identity, host) index, not from a scan of every exchange."""
        for other_key in list(self._by_peer.get(_peer_key(sa), ())):
            other = self._exchanges.get(other_key)
            if (
                other_key != key and other is not None and other.state is State.ESTABLISHED and other.sa is not None
                and other.sa.peer_id == sa.peer_id and _host(other.peer_addr) == _host(sa.peer_addr)
            ):
                other.state = State.DELETED
                self._forget(other_key, other)
                self._events.append(Phase1Deleted(other_key[0], other_key[1], other.peer_addr, f"replaced by {key[0].hex()}:{key[1].hex()} (INITIAL-CONTACT)"))
                log.info("ike server: SA %s:%s of %s replaced after INITIAL-CONTACT", other_key[0].hex(), other_key[1].hex(), sa.peer_id)

    def _dec_peer(self, host: str) -> None:
        n = self._per_peer.get(host, 0) - 1
        if n <= 0:
            self._per_peer.pop(host, None)
        else:
            self._per_peer[host] = n

    def _schedule(self, key: tuple[bytes, bytes], ex: MainMode) -> None:
        t = ex.get_timer()
        if t is not None and self._scheduled.get(key) != t:
            self._scheduled[key] = t
            heapq.heappush(self._heap, (t, next(self._seq), key))
        elif t is None:
            self._scheduled.pop(key, None)

    def _clean_heap(self) -> None:
        """Pop heap entries that are no longer any exchange's current deadline."""
        h = self._heap
        while h:
            t, _s, key = h[0]
            if key in self._exchanges and self._scheduled.get(key) == t:
                return
            heapq.heappop(h)
