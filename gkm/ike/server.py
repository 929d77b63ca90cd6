"""The responder side of many Main Mode exchanges, multiplexed by cookie pair.

``Phase1Server`` has the same input/output shape as one engine (``receive_datagram``,
``handle_timer``, ``datagrams_to_send``, ``next_event``, ``get_timer``) and owns the resources a
flood could exhaust.  Denial-of-service design (RFC 2522 "Photuris" cookies, FreeBSD syncache):

* **Message 1 is cheap.**  The responder cookie is ``HMAC(secret, CKY-I | peer address)[:8]``, so
  it is deterministic (a retransmitted message 1 gets the same cookie and the stored message 2)
  and bound to the source address.  Message 1 costs a header + SA parse, one HMAC and a small
  half-open record (the initiator's SA body, <= ``MAX_SA_BODY`` bytes).  No Diffie-Hellman.
* **Half-open state is bounded.**  At most ``max_half_open`` records (FIFO; when full the oldest
  is evicted, so legitimate initiators survive as long as their round trip is shorter than
  ``max_half_open / spoofed rate``), at most ``max_half_open_per_peer`` per source address, and
  each expires after ``half_open_timeout``.
* **Diffie-Hellman only after return routability.**  Message 3 is accepted only with the right
  cookie pair from the address that got message 2, so a spoofer never reaches the DH step.  At
  most ``max_pending`` exchanges may sit between messages 3 and 5.
* Unknown or malformed datagrams are dropped with a log line (DEBUG for the floodable
  message-1 path, INFO otherwise) and counted in :attr:`stats`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import logging
import os
from collections import Counter, OrderedDict, deque
from typing import Callable

from . import _msg as m
from .config import Phase1Config
from .events import Address, DeleteRequest, Event, Notification, Phase1SA, Role
from .mainmode import LocalProtocolError, MainMode, State

log = logging.getLogger("gkm.ike")

__all__ = ["Phase1Server", "MAX_SA_BODY"]

MAX_SA_BODY = 4096


def _host(addr: Address) -> str:
    return str(addr[0] if isinstance(addr, tuple) else addr)


def _addr_bytes(addr: Address) -> bytes:
    return repr(addr).encode()


class Phase1Server:
    """Main Mode responder for any number of peers (the key server side)."""

    def __init__(self, config: Phase1Config, *, secret: bytes | None = None, random: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._secret = secret or random(32)
        self._random = random
        self._exchanges: dict[tuple[bytes, bytes], MainMode] = {}
        self._half_open: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._per_peer: Counter[str] = Counter()
        self._pending: set[tuple[bytes, bytes]] = set()
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Address]] = []
        self._heap: list[tuple[float, int, tuple[bytes, bytes]]] = []
        self._seq = itertools.count()
        self._scheduled: dict[tuple[bytes, bytes], float] = {}
        self.stats: Counter[str] = Counter()
        self._offer_cache: dict = {}  # SA body of message 1 -> selection (pure per config)

    # ----------------------------------------------------------------- inputs

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self._receive(bytes(data), addr, now)
        except Exception:  # pragma: no cover - defensive: MainMode already contains its errors
            log.exception("ike server: internal error on datagram from %r", addr)
            self.stats["internal_error"] += 1

    def handle_timer(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            t, _s, key = heapq.heappop(self._heap)
            ex = self._exchanges.get(key)
            if ex is None or self._scheduled.get(key) != t:
                continue
            del self._scheduled[key]
            ex.handle_timer(now)
            self._after(key, ex)
        # drop stale heads so get_timer() stays exact
        self._clean_heap()

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        self._clean_heap()
        return self._heap[0][0] if self._heap else None

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
        c = hmac.digest(self._secret, icookie + _addr_bytes(addr), hashlib.sha256)[:8]
        return c if any(c) else b"\x00" * 7 + b"\x01"

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        self.stats["received"] += 1
        if len(data) < m.HEADER_LEN:
            self.stats["dropped_short"] += 1
            log.debug("ike server: dropped %d-byte datagram from %r: shorter than a header", len(data), addr)
            return
        icookie, rcookie = data[:8], data[8:16]
        if rcookie == bytes(8):
            self._message1(data, icookie, addr, now)
            return
        key = (icookie, rcookie)
        ex = self._exchanges.get(key)
        if ex is None:
            self.stats["dropped_unknown_spi"] += 1
            log.info("ike server: dropped datagram from %r: unknown cookie pair %s:%s", addr, icookie.hex(), rcookie.hex())
            return
        if ex.state is State.MM2_SENT and key not in self._pending:
            # message 3: this is where Diffie-Hellman happens; check the budget first
            if data[18] == m.EXCH_MAIN and addr == ex.peer_addr and len(self._pending) >= self.config.max_pending:
                self.stats["dropped_pending_full"] += 1
                log.warning("ike server: dropped message 3 from %r: %d exchanges pending", addr, len(self._pending))
                return
        ex.receive_datagram(data, addr, now)
        self._after(key, ex)

    def _message1(self, data: bytes, icookie: bytes, addr: Address, now: float) -> None:
        if data[18] != m.EXCH_MAIN or data[19] & m.FLAG_E or icookie == bytes(8):
            self.stats["dropped_bad_mm1"] += 1
            log.debug("ike server: dropped datagram from %r: zero responder cookie but not a Main Mode message 1", addr)
            return
        if len(data) > m.HEADER_LEN + MAX_SA_BODY + 1024:
            self.stats["dropped_bad_mm1"] += 1
            log.debug("ike server: dropped oversized message 1 (%d bytes) from %r", len(data), addr)
            return
        rcookie = self._cookie(icookie, addr)
        key = (icookie, rcookie)
        ex = self._exchanges.get(key)
        if ex is not None:  # retransmitted message 1: MainMode answers from its stored reply
            ex.receive_datagram(data, addr, now)
            self._after(key, ex)
            return
        host = _host(addr)
        if self._per_peer[host] >= self.config.max_half_open_per_peer:
            self.stats["dropped_peer_limit"] += 1
            log.debug("ike server: dropped message 1 from %r: %d half-open exchanges from this address", addr, self._per_peer[host])
            return
        while len(self._half_open) >= self.config.max_half_open:
            old, _ = self._half_open.popitem(last=False)
            self.stats["evicted_half_open"] += 1
            self._forget(old, evicted=True)
        ex = MainMode(self.config, Role.RESPONDER, addr, icookie=icookie, rcookie=rcookie, random=self._random, offer_cache=self._offer_cache)
        ex.receive_datagram(data, addr, now)
        if ex.state is State.MM2_SENT:
            self._exchanges[key] = ex
            self._half_open[key] = None
            self._per_peer[host] += 1
            self.stats["half_open_created"] += 1
        self._drain(ex)
        if key in self._exchanges:
            self._schedule(key, ex)

    def _after(self, key: tuple[bytes, bytes], ex: MainMode) -> None:
        """Bookkeeping after an exchange handled an input."""
        if key in self._half_open and ex.state is not State.MM2_SENT:
            del self._half_open[key]
            self._dec_peer(ex.peer_addr)
            if ex.state is State.MM4_SENT:
                self._pending.add(key)
        if key in self._pending and ex.state is not State.MM4_SENT:
            self._pending.discard(key)
        self._drain(ex)
        if ex.state in (State.FAILED, State.DELETED):
            self._forget(key)
        else:
            self._schedule(key, ex)

    def _drain(self, ex: MainMode) -> None:
        self._out.extend(ex.datagrams_to_send())
        while (ev := ex.next_event()) is not None:
            self._events.append(ev)

    def _dec_peer(self, addr: Address) -> None:
        host = _host(addr)
        self._per_peer[host] -= 1
        if self._per_peer[host] <= 0:
            del self._per_peer[host]

    def _forget(self, key: tuple[bytes, bytes], evicted: bool = False) -> None:
        ex = self._exchanges.pop(key, None)
        self._scheduled.pop(key, None)
        if key in self._half_open:
            del self._half_open[key]
            if ex is not None:
                self._dec_peer(ex.peer_addr)
        elif evicted and ex is not None:
            self._dec_peer(ex.peer_addr)
        self._pending.discard(key)
        if evicted:
            log.debug("ike server: evicted half-open exchange %s:%s", key[0].hex(), key[1].hex())

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
