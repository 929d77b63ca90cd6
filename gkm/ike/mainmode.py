"""IKEv1 Main Mode (RFC 2409 section 5) for GDOI (DOI 2, RFC 6407 section 2.1), both roles.

Sans-I/O, in the aioquic/h11 style.  Inputs: :meth:`MainMode.start` (initiator),
:meth:`MainMode.receive_datagram` and :meth:`MainMode.handle_timer`, each with the caller's
``now`` (a monotonic float).  Outputs are pulled: :meth:`datagrams_to_send`, :meth:`next_event`,
:meth:`get_timer`.  No clock reads, no network I/O.

The protocol is on one screen in :data:`RECEIVE_TRANSITIONS` (what each role accepts in each
state and where it goes) and :data:`DUPLICATE_OF` (which identical retransmission a responder
answers with its stored reply).  Every message not allowed by the tables is dropped with a log
line naming the state and the reason; a message that proves the exchange cannot succeed (no
proposal, authentication failure, bad public value) ends it with :class:`Phase1Failed` and,
where the protocol has a way, a notification to the peer.  No exception escapes an input method.

Messages (signatures: CERT payloads and SIG instead of HASH; CR in 3 to 6)::

    1 I->R  SA                     2 R->I  SA (one transform)
    3 I->R  KE, Ni [,CR]           4 R->I  KE, Nr [,CR]
    5 I->R  E{IDii, [CERT,] [CR,] HASH_I|SIG_I}
    6 R->I  E{IDir, [CERT,] [CR,] HASH_R|SIG_R}

Failure notifications: a failure in which the peer can read what we send, so that it stops at
once instead of retransmitting until it gives up.  Once both sides hold the same keys (message 5
decrypted to a valid payload chain, or message 6), the notification is a protected
Informational exchange (HASH(1), the notification and a Delete of the ISAKMP SA; RFC 2409
section 5.7), its IV derived from the last CBC block of Main Mode as the peer has it; many IKEv1
implementations discard clear-text notifications at that point.  Before that (messages 1 to 4,
or a message 5 that does not decrypt under any key we hold: a wrong PSK) no keys are shared, so
it is a clear-text Informational, the only form the peer can read at all.  A clear-text
notification can only be sent by someone who saw the cookies (on path), and ends the exchange
with a reason saying that it was unauthenticated.  An initiator waiting for message 6 accepts a
protected notification under the keys of the exchange.
"""

from __future__ import annotations

import enum
import hmac
import logging
import os
import struct
from collections import OrderedDict, deque
from datetime import datetime as _DT
from datetime import timezone as _TZ
from typing import Callable

from cryptography import x509

from . import _msg as m
from . import auth, crypto
from .config import AuthMethod, Identity, Phase1Config, Proposal
from .events import (
    Address,
    DeleteRequest,
    Event,
    InformationalReceived,
    Notification,
    Phase1Deleted,
    Phase1Established,
    Phase1Failed,
    Phase1SA,
    Phase2Datagram,
    Role,
)

log = logging.getLogger("gkm.ike")

__all__ = ["State", "MainMode", "RECEIVE_TRANSITIONS", "DUPLICATE_OF", "LocalProtocolError"]

# Notify types, RFC 2408 section 3.14.1
N_INVALID_PAYLOAD_TYPE = 1
N_INVALID_EXCHANGE_TYPE = 7
N_NO_PROPOSAL_CHOSEN = 14
N_PAYLOAD_MALFORMED = 16
N_INVALID_KEY_INFORMATION = 17
N_INVALID_ID_INFORMATION = 18
N_INVALID_CERTIFICATE = 20
N_INVALID_CERT_AUTHORITY = 22
N_INVALID_HASH_INFORMATION = 23
N_AUTHENTICATION_FAILED = 24
N_INVALID_SIGNATURE = 25
N_INITIAL_CONTACT = 24578

NOTIFY_NAMES = {
    1: "INVALID-PAYLOAD-TYPE", 7: "INVALID-EXCHANGE-TYPE", 14: "NO-PROPOSAL-CHOSEN", 16: "PAYLOAD-MALFORMED",
    17: "INVALID-KEY-INFORMATION", 18: "INVALID-ID-INFORMATION", 20: "INVALID-CERTIFICATE",
    22: "INVALID-CERT-AUTHORITY", 23: "INVALID-HASH-INFORMATION", 24: "AUTHENTICATION-FAILED",
    25: "INVALID-SIGNATURE", 24578: "INITIAL-CONTACT",
}


def notify_name(t: int) -> str:
    return NOTIFY_NAMES.get(t, f"notify {t}")


class State(enum.Enum):
    START = "START"
    MM1_SENT = "MM1_SENT"  # initiator
    MM3_SENT = "MM3_SENT"
    MM5_SENT = "MM5_SENT"
    MM2_SENT = "MM2_SENT"  # responder
    MM4_SENT = "MM4_SENT"
    ESTABLISHED = "ESTABLISHED"
    FAILED = "FAILED"
    DELETED = "DELETED"

    # Members are singletons compared by identity, so the identity hash is consistent with ==;
    # it is computed in C (Enum's own hashes the name in Python) for the per-datagram table lookups.
    __hash__ = object.__hash__


#: (role, state) -> (Main Mode message number accepted, handler name, next state)
RECEIVE_TRANSITIONS: dict[tuple[Role, State], tuple[int, str, State]] = {
    (Role.RESPONDER, State.START): (1, "_recv_mm1", State.MM2_SENT),
    (Role.INITIATOR, State.MM1_SENT): (2, "_recv_mm2", State.MM3_SENT),
    (Role.RESPONDER, State.MM2_SENT): (3, "_recv_mm3", State.MM4_SENT),
    (Role.INITIATOR, State.MM3_SENT): (4, "_recv_mm4", State.MM5_SENT),
    (Role.RESPONDER, State.MM4_SENT): (5, "_recv_mm5", State.ESTABLISHED),
    (Role.INITIATOR, State.MM5_SENT): (6, "_recv_mm6", State.ESTABLISHED),
}

#: responder state -> the message whose byte-identical retransmission is answered by resending
#: the stored reply (no new state, no new crypto)
DUPLICATE_OF: dict[State, int] = {State.MM2_SENT: 1, State.MM4_SENT: 3, State.ESTABLISHED: 5}

#: payload types allowed in each Main Mode message: type -> (min, max) count
ALLOWED_PAYLOADS: dict[int, dict[int, tuple[int, int]]] = {
    1: {m.SA: (1, 1), m.VID: (0, 16)},
    2: {m.SA: (1, 1), m.VID: (0, 16)},
    3: {m.KE: (1, 1), m.NONCE: (1, 1), m.CR: (0, 8), m.VID: (0, 16)},
    4: {m.KE: (1, 1), m.NONCE: (1, 1), m.CR: (0, 8), m.VID: (0, 16)},
    5: {m.ID: (1, 1), m.HASH: (0, 1), m.CERT: (0, 8), m.CR: (0, 8), m.SIG: (0, 1), m.N: (0, 4), m.VID: (0, 16)},
    6: {m.ID: (1, 1), m.HASH: (0, 1), m.CERT: (0, 8), m.CR: (0, 8), m.SIG: (0, 1), m.N: (0, 4), m.VID: (0, 16)},
}
# A Certificate Request may come "at any point during the exchange" (RFC 2408 section 3.10):
# IKEv1 initiators with certificates commonly put one into message 5.  We always send our
# certificate with signature authentication, so a request is accepted and needs no answer.

#: Informational message IDs an established SA remembers to refuse replays (about 100 KB)
MAX_SEEN_INFORMATIONALS = 4096

#: states in which the exchange is in progress
IN_PROGRESS = frozenset({State.MM1_SENT, State.MM3_SENT, State.MM5_SENT, State.MM2_SENT, State.MM4_SENT})


class LocalProtocolError(Exception):
    """The caller used the engine wrongly (e.g. start() on a responder)."""


class _Drop(Exception):
    """Ignore this message, keep the state."""


class _Ended(Exception):
    """The exchange was just ended (and logged) while handling this message; nothing more to say."""


class _Fail(Exception):
    """End the exchange; ``notify`` (if any) is sent to the peer."""

    def __init__(self, reason: str, notify: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


class _BadPayloads(_Drop):
    """A message's payload set is not allowed; ``notify`` says how to report it."""

    def __init__(self, reason: str, notify: int) -> None:
        super().__init__(reason)
        self.notify = notify


def _payload_map(payloads: list[tuple[int, bytes]], number: int) -> dict[int, list[bytes]]:
    allowed = ALLOWED_PAYLOADS[number]
    out: dict[int, list[bytes]] = {}
    for ptype, body in payloads:
        if ptype not in allowed:
            raise _BadPayloads(f"payload type {ptype} not allowed in message {number}", N_INVALID_PAYLOAD_TYPE)
        out.setdefault(ptype, []).append(body)
    for ptype, (lo, hi) in allowed.items():
        n = len(out.get(ptype, ()))
        if not lo <= n <= hi:
            raise _BadPayloads(f"message {number} has {n} payloads of type {ptype} (allowed {lo}..{hi})", N_PAYLOAD_MALFORMED)
    return out


_CERT_X509 = bytes([m.CERT_X509_SIG])
_ID_PAYLOADS: dict[Identity, bytes] = {}


def _id_payload(identity: Identity) -> bytes:
    """Our own ID payload body (the same few identities in every exchange: encoded once)."""
    b = _ID_PAYLOADS.get(identity)
    if b is None:
        b = m.encode_id(identity.type, identity.data)
        if len(_ID_PAYLOADS) >= 64:
            _ID_PAYLOADS.clear()
        _ID_PAYLOADS[identity] = b
    return b


class MainMode:
    """One Main Mode exchange and, once established, its ISAKMP SA (Informational exchanges).

    Initiator: ``MainMode(config, Role.INITIATOR, peer_addr)`` then ``start(now)``.  Responders are
    normally created by :class:`gkm.ike.server.Phase1Server`, which owns cookies and limits.
    """

    def __init__(
        self,
        config: Phase1Config,
        role: Role,
        peer_addr: Address,
        *,
        icookie: bytes | None = None,
        rcookie: bytes | None = None,
        random: Callable[[int], bytes] = os.urandom,
        offer_cache: dict | None = None,
    ) -> None:
        self.config = config
        self._offer_cache = offer_cache
        self.role = role
        self.peer_addr = peer_addr
        self._random = random
        if role is Role.INITIATOR:
            self.icookie = icookie or self._nonzero(8)
            self.rcookie = bytes(8)
        else:
            if icookie is None or rcookie is None:
                raise LocalProtocolError("a responder needs both cookies")
            self.icookie, self.rcookie = icookie, rcookie
        self.state = State.START
        self.sa: Phase1SA | None = None
        self.failure: str | None = None
        self._events: deque[Event] = deque()
        self._out: list[tuple[bytes, Address]] = []
        # exchange data
        self._proposal: Proposal | None = None
        self._offered: tuple[Proposal, ...] = ()
        self._sai_b = b""
        self._dh: crypto.DhPrivate | None = None
        self._gxi = self._gxr = b""
        self._gxy = b""
        self._ni = self._nr = b""
        self._keys: crypto.Phase1Keys | None = None
        self._prf: crypto.Prf | None = None
        self._iv = b""
        self._peer_cr = False
        self._psk_owner: Identity | None = None  # initiator: whom our PSK belongs to, if named
        # retransmission / duplicates
        self._last_sent: bytes | None = None
        self._last_received: bytes | None = None
        self._started = 0.0
        self._retx_at: float | None = None
        self._retx_count = 0
        self._deadline: float | None = None
        self._seen_mids: OrderedDict[int, None] = OrderedDict()  # bounded, oldest first
        self._initial_contact = False

    @classmethod
    def responder_after_message1(
        cls,
        config: Phase1Config,
        peer_addr: Address,
        icookie: bytes,
        rcookie: bytes,
        *,
        message1: bytes,
        message2: bytes,
        sai_b: bytes,
        proposal: Proposal,
        deadline: float,
        random: Callable[[int], bytes] = os.urandom,
    ) -> "MainMode":
        """A responder in state MM2_SENT rebuilt from the compact half-open record the server
        keeps for message 1 (see :mod:`gkm.ike.server`): same state as after ``_recv_mm1``."""
        ex = cls(config, Role.RESPONDER, peer_addr, icookie=icookie, rcookie=rcookie, random=random)
        ex.state = State.MM2_SENT
        ex._proposal = proposal
        ex._sai_b = sai_b
        ex._last_received = message1
        ex._last_sent = message2
        ex._deadline = deadline
        return ex

    # ------------------------------------------------------------------ public inputs

    def start(self, now: float) -> None:
        """Initiator: send message 1."""
        if self.role is not Role.INITIATOR or self.state is not State.START:
            raise LocalProtocolError(f"start() in role {self.role.value}, state {self.state.value}")
        self._started = now
        self._deadline = now + self.config.exchange_timeout
        self._offered = self.config.proposals
        self._sai_b = m.encode_sa([p.attributes() for p in self._offered])
        self._send(self._message(m.EXCH_MAIN, 0, [(m.SA, self._sai_b)]), now, retransmit=True)
        self.state = State.MM1_SENT

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            self._receive(bytes(data), addr, now)
        except _Ended:
            pass  # already reported by _fail
        except _Drop as d:
            log.info("ike %s %s: dropped message from %r in state %s: %s", self.role.value, self._spi_str(), addr, self.state.value, d)
        except _Fail as f:
            self._fail(f.reason, f.notify, now)
        except Exception as exc:  # never let the peer's bytes raise out of the engine
            log.exception("ike %s %s: internal error", self.role.value, self._spi_str())
            self._fail(f"internal error: {exc!r}", None, now)

    def handle_timer(self, now: float) -> None:
        try:
            self._timer(now)
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("ike %s: timer error", self._spi_str())
            self._fail(f"internal error: {exc!r}", None, now)

    # ------------------------------------------------------------------ public outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        r, d = self._retx_at, self._deadline
        if r is None:
            return d
        return r if d is None or r < d else d

    @property
    def spi(self) -> bytes:
        return self.icookie + self.rcookie

    # ------------------------------------------------------------------ Informational (section 5.7)

    def send_informational(
        self, now: float, notifications: tuple[Notification, ...] = (), deletes: tuple[DeleteRequest, ...] = ()
    ) -> None:
        """Send one protected Informational exchange: HDR*, HASH(1), N/D..."""
        if self.state is not State.ESTABLISHED or self.sa is None:
            raise LocalProtocolError(f"send_informational() in state {self.state.value}")
        self._out.append((build_informational(self.sa, notifications, deletes, self._random), self.peer_addr))

    def delete(self, now: float, reason: str = "deleted locally") -> None:
        """Send a Delete for this ISAKMP SA and forget it."""
        if self.state is State.ESTABLISHED and self.sa is not None:
            self.send_informational(now, deletes=(DeleteRequest(m.PROTO_ISAKMP, (self.spi,)),))
            self.state = State.DELETED
            self._deadline = None
            self._events.append(Phase1Deleted(self.icookie, self.rcookie, self.peer_addr, reason))

    # ------------------------------------------------------------------ internals

    def _spi_str(self) -> str:
        return f"{self.icookie.hex()}:{self.rcookie.hex()}"

    def _nonzero(self, n: int) -> bytes:
        while True:
            b = self._random(n)
            if any(b):
                return b

    def _message(self, exchange: int, flags: int, payloads: list[tuple[int, bytes]], message_id: int = 0) -> bytes:
        return m.build(self.icookie, self.rcookie, exchange, flags, message_id, payloads)

    def _encrypted_message(self, payloads: list[tuple[int, bytes]]) -> bytes:
        assert self._keys is not None and self._proposal is not None
        np, chain = m.encode_chain(payloads)
        ct = crypto.cbc_encrypt(self._proposal.enc, self._keys.enc_key, self._iv, chain)
        self._iv = ct[-self._proposal.enc.block_size :]
        hdr = m.encode_header(self.icookie, self.rcookie, np, m.EXCH_MAIN, m.FLAG_E, 0, m.HEADER_LEN + len(ct))
        return hdr + ct

    def _decrypt_body(self, hdr: m.Header, data: bytes, keys: crypto.Phase1Keys, iv: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
        """Decrypt and walk the chain; returns (payloads, next IV)."""
        assert self._proposal is not None
        ct = data[m.HEADER_LEN :]
        pt = crypto.cbc_decrypt(self._proposal.enc, keys.enc_key, iv, ct)
        payloads = m.decode_chain(pt, hdr.next_payload, m.HEADER_LEN, allow_trailing=True)
        return payloads, ct[-self._proposal.enc.block_size :]

    def _send(self, data: bytes, now: float, *, retransmit: bool) -> None:
        self._out.append((data, self.peer_addr))
        self._last_sent = data
        if retransmit:
            self._retx_count = 0
            self._retx_at = now + self.config.retransmit_timeout
        else:
            self._retx_at = None

    def _fail(self, reason: str, notify: int | None, now: float, *, send: bool = True, quiet: bool = False) -> None:
        if self.state in (State.FAILED, State.DELETED):
            return
        was_established = self.state is State.ESTABLISHED
        if not quiet:
            log.warning("ike %s %s with %r failed in state %s: %s", self.role.value, self._spi_str(), self.peer_addr, self.state.value, reason)
        if send and notify is not None:
            n = m.encode_notify(notify, self.spi)
            mid = struct.unpack("!I", self._nonzero(4))[0]
            self._out.append((self._message(m.EXCH_INFO, 0, [(m.N, n)], mid), self.peer_addr))
        self.failure = reason
        self.state = State.FAILED
        self._retx_at = None
        self._deadline = None
        self._dh = None
        if quiet:
            return
        if was_established:
            self._events.append(Phase1Deleted(self.icookie, self.rcookie, self.peer_addr, reason))
        else:
            self._events.append(Phase1Failed(self.icookie, self.rcookie, self.peer_addr, reason, notify))

    def _timer(self, now: float) -> None:
        if self.state is State.ESTABLISHED:
            if self._deadline is not None and now >= self._deadline:
                self.state = State.DELETED
                self._deadline = None
                self._events.append(Phase1Deleted(self.icookie, self.rcookie, self.peer_addr, "lifetime expired"))
            return
        if self.state not in IN_PROGRESS:
            return
        if self._deadline is not None and now >= self._deadline:
            if self.state is State.MM2_SENT:
                # half-open: most likely a spoofed message 1; not worth an event
                log.debug("ike %s: half-open exchange with %r expired", self._spi_str(), self.peer_addr)
                self._fail("timeout waiting for message 3", None, now, send=False, quiet=True)
                return
            what = "message 5" if self.state is State.MM4_SENT else "a response"
            self._fail(f"timeout waiting for {what}", None, now, send=False)
            return
        if self._retx_at is not None and now >= self._retx_at and self._last_sent is not None:
            if self._retx_count >= self.config.max_retransmits:
                self._fail(f"no response after {self._retx_count} retransmissions", None, now, send=False)
                return
            self._retx_count += 1
            self._out.append((self._last_sent, self.peer_addr))
            self._retx_at = now + self.config.retransmit_timeout * (2 ** self._retx_count)
            log.debug("ike %s: retransmission %d in state %s", self._spi_str(), self._retx_count, self.state.value)

    # -- receive dispatch

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        if self.state in (State.FAILED, State.DELETED):
            raise _Drop("exchange is over")
        try:
            hdr = m.decode_header(data)
        except m.MessageError as e:
            raise _Drop(f"malformed header: {e}") from None
        if addr != self.peer_addr:
            raise _Drop(f"source address {addr!r} is not the peer {self.peer_addr!r}")
        if hdr.icookie != self.icookie:
            raise _Drop("initiator cookie mismatch")
        if self.state is State.MM1_SENT and self.rcookie == bytes(8):
            if hdr.rcookie == bytes(8) and hdr.exchange != m.EXCH_INFO:
                raise _Drop("zero responder cookie")
        elif self.role is Role.RESPONDER and hdr.rcookie == bytes(8) and self.state in (State.START, State.MM2_SENT):
            pass  # message 1 (or its retransmission) carries no responder cookie yet
        elif hdr.rcookie != self.rcookie:
            raise _Drop("responder cookie mismatch")

        if hdr.exchange == m.EXCH_INFO:
            self._recv_informational(hdr, data, now)
            return
        if hdr.exchange != m.EXCH_MAIN:
            if self.state is State.ESTABLISHED and self.sa is not None:
                self._events.append(Phase2Datagram(self.sa, hdr.exchange, hdr.message_id, data, addr))
                return
            raise _Drop(f"exchange type {hdr.exchange} before phase 1 is established")
        if hdr.message_id != 0:
            raise _Drop("non-zero message ID in Main Mode")

        dup = DUPLICATE_OF.get(self.state) if self.role is Role.RESPONDER else None
        if dup is not None and self._last_received is not None and hmac.compare_digest(data, self._last_received):
            if self._last_sent is not None:
                self._out.append((self._last_sent, self.peer_addr))
                log.debug("ike %s: retransmitted message %d answered from the stored reply", self._spi_str(), dup)
            return
        got = self._classify(hdr)
        entry = RECEIVE_TRANSITIONS.get((self.role, self.state))
        if entry is None or got != entry[0]:
            what = f"message {got}" if got else "unrecognisable Main Mode message"
            raise _Drop(f"unexpected {what} in state {self.state.value}")
        number, handler, next_state = entry
        getattr(self, handler)(hdr, data, now)
        self._last_received = data
        self.state = next_state
        if next_state is State.ESTABLISHED:
            assert self.sa is not None
            self._retx_at = None
            self._deadline = self.sa.expires_at
            self._events.append(Phase1Established(self.sa))

    def _classify(self, hdr: m.Header) -> int | None:
        """Main Mode message number from its shape (the role says which direction)."""
        r = self.role is Role.RESPONDER
        if hdr.flags & m.FLAG_E:
            return 5 if r else 6
        if hdr.next_payload == m.SA:
            return 1 if r else 2
        if hdr.next_payload == m.KE:
            return 3 if r else 4
        return None

    def _clear_payloads(self, hdr: m.Header, data: bytes, number: int) -> dict[int, list[bytes]]:
        if hdr.flags & m.FLAG_E:
            raise _Drop(f"message {number} must not be encrypted")
        try:
            chain = m.decode_chain(data[m.HEADER_LEN :], hdr.next_payload, m.HEADER_LEN)
        except m.MessageError as e:
            raise _Drop(f"malformed message {number}: {e}") from None
        return _payload_map(chain, number)

    # -- message 1 (responder)

    def _recv_mm1(self, hdr: m.Header, data: bytes, now: float) -> None:
        p = self._clear_payloads(hdr, data, 1)
        sa_b = p[m.SA][0]
        cache = self._offer_cache
        choice = cache.get(sa_b) if cache is not None else None
        if choice is None:
            choice = self._choose(sa_b)
            if cache is not None:
                if len(cache) >= 1024:
                    cache.clear()
                cache[sa_b] = choice
        prop, reply, failure = choice
        if prop is None:
            raise _Fail(failure[0], failure[1])
        self._proposal = prop
        self._sai_b = sa_b
        self._started = now
        self._deadline = now + self.config.half_open_timeout
        self._send(self._message(m.EXCH_MAIN, 0, [(m.SA, reply)]), now, retransmit=False)

    def _choose(self, sa_b: bytes) -> tuple[Proposal | None, bytes, tuple[str, int]]:
        return choose_proposal(self.config, sa_b)


    # -- message 2 (initiator)

    def _recv_mm2(self, hdr: m.Header, data: bytes, now: float) -> None:
        p = self._clear_payloads(hdr, data, 2)
        try:
            offer = m.decode_sa(p[m.SA][0])
        except m.MessageError as e:
            raise _Drop(f"malformed SA: {e}") from None
        if len(offer.transforms) != 1:
            raise _Drop(f"responder chose {len(offer.transforms)} transforms")
        try:
            chosen = Proposal.from_attributes(offer.transforms[0][1])
        except ValueError as e:
            raise _Fail(f"responder chose an unsupported transform: {e}", N_NO_PROPOSAL_CHOSEN) from None
        ours = next((o for o in self._offered if o.matches(chosen)), None)
        if ours is None:
            raise _Fail(f"responder chose a transform we did not offer: {chosen}", N_NO_PROPOSAL_CHOSEN)
        chosen = ours.agreed(chosen)
        self.rcookie = hdr.rcookie
        self._proposal = chosen
        self._prf = crypto.prf_of(chosen.hash)
        self._dh = crypto.dh_group(chosen.group).generate()
        self._gxi = self._dh.public
        self._ni = self._random(self.config.nonce_size)
        payloads = [(m.KE, self._gxi), (m.NONCE, self._ni)]
        if chosen.auth.is_signature and self.config.send_cert_request:
            payloads.append((m.CR, bytes([m.CERT_X509_SIG])))
        self._send(self._message(m.EXCH_MAIN, 0, payloads), now, retransmit=True)

    # -- message 3 (responder)

    def _ke_nonce(self, p: dict[int, list[bytes]]) -> tuple[bytes, bytes]:
        assert self._proposal is not None
        ke, nonce = p[m.KE][0], p[m.NONCE][0]
        if not 8 <= len(nonce) <= 256:
            raise _Fail(f"nonce length {len(nonce)} outside 8..256", N_PAYLOAD_MALFORMED)
        want = crypto.dh_group(self._proposal.group).public_len
        if len(ke) != want:
            raise _Fail(f"KE length {len(ke)}, group {self._proposal.group} needs {want}", N_INVALID_KEY_INFORMATION)
        self._peer_cr = bool(p.get(m.CR))
        return ke, nonce

    def _dh_exchange(self, dh: crypto.DhPrivate, peer: bytes) -> bytes:
        """g^xy; the peer's value is validated here (range / on the curve)."""
        try:
            return dh.exchange(peer)
        except crypto.CryptoError as e:
            raise _Fail(f"bad KE: {e}", N_INVALID_KEY_INFORMATION) from None

    def _recv_mm3(self, hdr: m.Header, data: bytes, now: float) -> None:
        assert self._proposal is not None
        p = self._clear_payloads(hdr, data, 3)
        self._gxi, self._ni = self._ke_nonce(p)
        self._prf = crypto.prf_of(self._proposal.hash)
        self._dh = crypto.dh_group(self._proposal.group).generate()  # DH deferred until here
        self._gxr = self._dh.public
        self._nr = self._random(self.config.nonce_size)
        self._gxy = self._dh_exchange(self._dh, self._gxi)
        self._dh = None
        payloads = [(m.KE, self._gxr), (m.NONCE, self._nr)]
        if self._proposal.auth.is_signature and self.config.send_cert_request:
            payloads.append((m.CR, bytes([m.CERT_X509_SIG])))
        self._deadline = now + self.config.exchange_timeout
        self._send(self._message(m.EXCH_MAIN, 0, payloads), now, retransmit=False)

    # -- message 4 (initiator)

    def _derive(self, psk: bytes | None) -> crypto.Phase1Keys:
        assert self._proposal is not None and self._prf is not None
        return crypto.derive_phase1_keys(
            self._prf, psk=psk, ni_b=self._ni, nr_b=self._nr, gxy=self._gxy,
            cky_i=self.icookie, cky_r=self.rcookie, key_len=self._proposal.key_len,
        )

    def _recv_mm4(self, hdr: m.Header, data: bytes, now: float) -> None:
        assert self._proposal is not None and self._dh is not None and self._prf is not None
        p = self._clear_payloads(hdr, data, 4)
        self._gxr, self._nr = self._ke_nonce(p)
        self._gxy = self._dh_exchange(self._dh, self._gxr)
        self._dh = None
        method = self._proposal.auth
        psk = None
        if method is AuthMethod.PRE_SHARED_KEY:
            assert self.config.psk is not None
            found = self.config.psk.for_responder(self.peer_addr, self.config.peer_id)
            if found is None:
                raise _Fail(f"no pre-shared key for peer {self.peer_addr!r}", None)
            psk, self._psk_owner = found
        self._keys = self._derive(psk)
        self._iv = crypto.phase1_iv(self._prf, self._gxi, self._gxr, self._proposal.enc.block_size)
        my_id = self.config.identity_for(method)
        id_b = _id_payload(my_id)
        payloads = [(m.ID, id_b)] + self._auth_payloads(id_b, initiator=True)
        if self.config.initial_contact:
            # RFC 2407 §4.6.3.3 (IPsec DOI number): "forget the SAs you had with me"
            n = m.encode_notify(N_INITIAL_CONTACT, self.icookie + self.rcookie, doi=m.DOI_IPSEC)
            payloads.append((m.N, n))
        self._local_id = my_id
        self._send(self._encrypted_message(payloads), now, retransmit=True)

    def _auth_payloads(self, id_b: bytes, *, initiator: bool) -> list[tuple[int, bytes]]:
        assert self._proposal is not None and self._keys is not None and self._prf is not None
        method = self._proposal.auth
        if method is AuthMethod.PRE_SHARED_KEY:
            return [(m.HASH, self._hash(self._prf, id_b, initiator))]
        cred = self.config.credential
        assert cred is not None
        digest = self._hash(auth.signature_prf(method, self._prf), id_b, initiator)
        out = [(m.CERT, _CERT_X509 + der) for der in cred.der_chain]
        out.append((m.SIG, auth.sign(cred, method, digest)))
        return out

    def _hash(self, prf: crypto.Prf, id_b: bytes, initiator: bool, keys: crypto.Phase1Keys | None = None) -> bytes:
        """HASH_I or HASH_R under ``prf`` (the negotiated one, or the curve's hash for ECDSA)."""
        k = keys or self._keys
        assert k is not None
        f = crypto.hash_i_input if initiator else crypto.hash_r_input
        data = f(self._gxi, self._gxr, self.icookie, self.rcookie, self._sai_b, id_b)
        if prf is self._prf and k.skeyid_prf is not None:
            return k.skeyid_prf(data)  # SKEYID keyed once for the whole exchange
        return prf(k.skeyid, data)

    # -- message 5 (responder)

    def _recv_mm5(self, hdr: m.Header, data: bytes, now: float) -> None:
        assert self._proposal is not None and self._prf is not None
        if not hdr.flags & m.FLAG_E:
            raise _Drop("message 5 must be encrypted")
        bs = self._proposal.enc.block_size
        if (len(data) - m.HEADER_LEN) % bs or len(data) == m.HEADER_LEN:
            raise _Drop(f"message 5 ciphertext length {len(data) - m.HEADER_LEN} not a multiple of {bs}")
        iv = crypto.phase1_iv(self._prf, self._gxi, self._gxr, bs)
        method = self._proposal.auth
        if method is AuthMethod.PRE_SHARED_KEY:
            assert self.config.psk is not None
            candidates = self.config.psk.candidates(self.peer_addr)
            if not candidates:
                raise _Fail(f"no pre-shared key for {self.peer_addr!r}", N_AUTHENTICATION_FAILED)
            for psk, psk_id in candidates:
                keys = self._derive(psk)
                try:
                    payloads, next_iv = self._decrypt_body(hdr, data, keys, iv)
                    p = _payload_map(payloads, 5)
                except (m.MessageError, _Drop):
                    continue
                if not p.get(m.HASH) or p.get(m.SIG):
                    continue
                id_b = p[m.ID][0]
                if hmac.compare_digest(p[m.HASH][0], self._hash(self._prf, id_b, True, keys)):
                    # HASH_I proves that the peer holds this key: from here on it can read a
                    # protected notification
                    try:
                        peer_id = self._identity(id_b)
                        if peer_id != psk_id:  # a key authenticates its owner, nobody else
                            raise _Fail(f"peer ID {peer_id} does not own the pre-shared key it used (that of {psk_id})", N_INVALID_ID_INFORMATION)
                        if self.config.peer_id is not None and peer_id != self.config.peer_id:
                            raise _Fail(f"peer ID {peer_id} is not the configured {self.config.peer_id}", N_INVALID_ID_INFORMATION)
                    except _Fail as f:
                        self._fail_protected(f, keys, data[-bs:], now)
                    self._keys = keys
                    self._iv = next_iv
                    self._complete(peer_id, psk_id, None, now, p.get(m.N, []))
                    return
            raise _Fail(self._psk_failure(candidates), N_AUTHENTICATION_FAILED)
        keys = self._derive(None)
        try:
            payloads, next_iv = self._decrypt_body(hdr, data, keys, iv)
        except m.MessageError as e:
            # garbage under the keys of this exchange: nothing shows that the peer has them
            raise _Fail(f"message 5 does not decrypt to valid payloads (tampered?): {e}", N_PAYLOAD_MALFORMED) from None
        try:
            try:
                p = _payload_map(payloads, 5)
            except _BadPayloads as e:
                raise _Fail(f"message 5: {e}", e.notify) from None
            id_b = p[m.ID][0]
            self._keys = keys
            peer_id, cert = self._check_signature(p, id_b, now, initiator=True)
        except _Fail as f:
            self._fail_protected(f, keys, data[-bs:], now)
        self._iv = next_iv
        self._complete(peer_id, Identity.dn(cert.subject), cert, now, p.get(m.N, []))

    def _psk_failure(self, candidates: list) -> str:
        """Why no pre-shared key verified HASH_I, with what the operator can do about it."""
        assert self.config.psk is not None
        untried = self.config.psk.untried(self.peer_addr)
        if self.config.psk.selected_by_address(self.peer_addr):
            return f"HASH_I does not verify with the pre-shared key of {candidates[0][1]} (selected by the source address; wrong key or tampered message)"
        why = f"HASH_I does not verify with any of the {len(candidates)} pre-shared keys tried by trial decryption"
        if untried:
            why += (f"; {untried} more were not tried (at most {self.config.psk.max_trials} are, for a peer whose "
                    "address no PSK lists): give this member's PSK its `addresses`")
        return why

    def _provisional_sa(self, keys: crypto.Phase1Keys, last_block: bytes, now: float) -> Phase1SA:
        """The ISAKMP SA of an exchange that will not complete, for one protected notification:
        keys as agreed, ``last_block`` the last CBC block of Main Mode as the peer has it."""
        assert self._proposal is not None and self._prf is not None
        nobody = Identity(0, b"")
        return Phase1SA(
            icookie=self.icookie, rcookie=self.rcookie, role=self.role, peer_addr=self.peer_addr,
            proposal=self._proposal, prf=self._prf, cipher=self._proposal.enc,
            skeyid_d=keys.skeyid_d, skeyid_a=keys.skeyid_a, skeyid_e=keys.skeyid_e, enc_key=keys.enc_key,
            last_block=last_block, local_id=nobody, peer_id=nobody, authenticated_id=nobody,
            peer_certificate=None, established_at=now, expires_at=now,
        )

    def _fail_protected(self, f: _Fail, keys: crypto.Phase1Keys, last_block: bytes, now: float) -> None:
        """End the exchange with a protected Informational (the notification, if any, and a
        Delete of the ISAKMP SA), which a peer holding ``keys`` reads; raise _Drop."""
        sa = self._provisional_sa(keys, last_block, now)
        notes = (Notification(f.notify, m.PROTO_ISAKMP, self.spi),) if f.notify else ()
        info = build_informational(sa, notes, (DeleteRequest(m.PROTO_ISAKMP, (self.spi,)),), self._random)
        self._out.append((info, self.peer_addr))
        self._fail(f.reason, f.notify, now, send=False)
        raise _Ended() from None

    def _identity(self, id_b: bytes) -> Identity:
        try:
            t, _proto, _port, d = m.decode_id(id_b)
        except m.MessageError as e:
            raise _Fail(f"malformed ID: {e}", N_INVALID_ID_INFORMATION) from None
        return Identity(t, d)

    def _check_signature(self, p: dict[int, list[bytes]], id_b: bytes, now: float, *, initiator: bool) -> tuple[Identity, x509.Certificate]:
        assert self._proposal is not None and self._prf is not None
        method = self._proposal.auth
        if not p.get(m.SIG) or p.get(m.HASH):
            raise _Fail("signature method but no SIG payload", N_AUTHENTICATION_FAILED)
        certs = []
        for body in p.get(m.CERT, []):
            if not body or body[0] != m.CERT_X509_SIG:
                continue
            try:
                certs.append(x509.load_der_x509_certificate(body[1:]))
            except ValueError as e:
                raise _Fail(f"malformed certificate: {e}", N_INVALID_CERTIFICATE) from None
        if not certs:
            raise _Fail("peer sent no X.509 certificate", N_INVALID_CERTIFICATE)
        leaf = certs[0]
        when = _DT.fromtimestamp(now + self.config.wall_time_offset, _TZ.utc)
        peer_id = self._identity(id_b)
        try:
            auth.validate_chain(leaf, certs[1:], self.config.trust_anchors, when)
            if not auth.id_matches_certificate(peer_id, leaf):
                raise auth.AuthError(f"peer ID {peer_id} does not match its certificate {leaf.subject.rfc4514_string()}", N_INVALID_ID_INFORMATION)
            if self.config.peer_id is not None and peer_id != self.config.peer_id:
                raise auth.AuthError(f"peer ID {peer_id} is not the configured {self.config.peer_id}", N_INVALID_ID_INFORMATION)
            digest = self._hash(auth.signature_prf(method, self._prf), id_b, initiator)
            auth.verify(leaf.public_key(), method, digest, p[m.SIG][0])
        except auth.AuthError as e:
            raise _Fail(e.reason, e.notify) from None
        return peer_id, leaf

    def _complete(self, peer_id: Identity, authenticated_id: Identity, cert: x509.Certificate | None, now: float, notes: list[bytes] = ()) -> None:
        """Responder: send message 6 and build the SA."""
        for body in notes:
            try:
                if m.decode_notify(body)[2] == N_INITIAL_CONTACT:
                    self._initial_contact = True
            except m.MessageError:
                log.info("ike %s: malformed notification in message 5 ignored", self._spi_str())
        assert self._proposal is not None
        method = self._proposal.auth
        my_id = self.config.identity_for(method)
        id_b = _id_payload(my_id)
        msg6 = self._encrypted_message([(m.ID, id_b)] + self._auth_payloads(id_b, initiator=False))
        self._send(msg6, now, retransmit=False)
        self._make_sa(my_id, peer_id, authenticated_id, cert, now)

    def _make_sa(self, my_id: Identity, peer_id: Identity, authenticated_id: Identity, cert: x509.Certificate | None, now: float) -> None:
        assert self._proposal is not None and self._keys is not None and self._prf is not None
        k = self._keys
        self.sa = Phase1SA(
            icookie=self.icookie, rcookie=self.rcookie, role=self.role, peer_addr=self.peer_addr,
            proposal=self._proposal, prf=self._prf, cipher=self._proposal.enc,
            skeyid_d=k.skeyid_d, skeyid_a=k.skeyid_a, skeyid_e=k.skeyid_e, enc_key=k.enc_key,
            last_block=self._iv, local_id=my_id, peer_id=peer_id, authenticated_id=authenticated_id, peer_certificate=cert,
            established_at=now, expires_at=now + self._proposal.life_seconds,
            initial_contact=self._initial_contact,
        )
        # exchange secrets no longer needed
        self._gxy = b""

    # -- message 6 (initiator)

    def _recv_mm6(self, hdr: m.Header, data: bytes, now: float) -> None:
        assert self._proposal is not None and self._keys is not None and self._prf is not None
        if not hdr.flags & m.FLAG_E:
            raise _Drop("message 6 must be encrypted")
        bs = self._proposal.enc.block_size
        if (len(data) - m.HEADER_LEN) % bs or len(data) == m.HEADER_LEN:
            raise _Drop("message 6 ciphertext length not a multiple of the block size")
        try:
            try:
                payloads, next_iv = self._decrypt_body(hdr, data, self._keys, self._iv)
                p = _payload_map(payloads, 6)
            except (m.MessageError, _Drop) as e:
                raise _Fail(f"message 6 does not decrypt to valid payloads (wrong key or tampered): {e}", N_PAYLOAD_MALFORMED) from None
            id_b = p[m.ID][0]
            if self._proposal.auth is AuthMethod.PRE_SHARED_KEY:
                if not p.get(m.HASH) or p.get(m.SIG):
                    raise _Fail("PSK method but no HASH_R", N_AUTHENTICATION_FAILED)
                if not hmac.compare_digest(p[m.HASH][0], self._hash(self._prf, id_b, False)):
                    raise _Fail("HASH_R does not verify (wrong pre-shared key or tampered message)", N_AUTHENTICATION_FAILED)
                peer_id, cert = self._identity(id_b), None
                if self._psk_owner is not None and peer_id != self._psk_owner:
                    raise _Fail(f"responder ID {peer_id} does not own the pre-shared key it used (that of {self._psk_owner})", N_INVALID_ID_INFORMATION)
                if self.config.peer_id is not None and peer_id != self.config.peer_id:
                    raise _Fail(f"responder ID {peer_id} is not the configured {self.config.peer_id}", N_INVALID_ID_INFORMATION)
                authenticated_id = peer_id
            else:
                peer_id, cert = self._check_signature(p, id_b, now, initiator=False)
                authenticated_id = Identity.dn(cert.subject)
        except _Fail as f:
            # The keys are agreed and the responder believes the SA is up: tell it with a
            # protected Informational.  Its IV comes from the last block of message 6 as received.
            self._fail_protected(f, self._keys, data[-bs:], now)
        self._iv = next_iv
        self._make_sa(self._local_id, peer_id, authenticated_id, cert, now)

    # -- Informational

    def _recv_informational(self, hdr: m.Header, data: bytes, now: float) -> None:
        if self.state is State.ESTABLISHED and self.sa is not None:
            if not hdr.flags & m.FLAG_E:
                raise _Drop("clear-text Informational under an established SA")
            try:
                mid, notes, deletes = parse_informational(self.sa, data)
            except InformationalError as e:
                raise _Drop(str(e)) from None
            if mid in self._seen_mids:
                raise _Drop(f"replayed Informational M-ID {mid:08x}")
            # IKEv1 message IDs are random, so there is no window: remember the last
            # MAX_SEEN_INFORMATIONALS, forgetting the oldest (never all at once, which would
            # let every earlier one be replayed).  Only one older than the last 4,096 the peer
            # sent on this SA could be replayed; an honest peer sends a handful per SA.
            if len(self._seen_mids) >= MAX_SEEN_INFORMATIONALS:
                self._seen_mids.popitem(last=False)
            self._seen_mids[mid] = None
            self._events.append(InformationalReceived(self.icookie, self.rcookie, self.peer_addr, mid, notes, deletes))
            if any(d.protocol == m.PROTO_ISAKMP and self.spi in d.spis for d in deletes):
                why = ", ".join(notify_name(n.type) for n in notes) or "no reason given"
                self.state = State.DELETED
                self._deadline = None
                self._events.append(Phase1Deleted(self.icookie, self.rcookie, self.peer_addr, f"peer deleted the ISAKMP SA ({why})"))
            return
        if self.state not in IN_PROGRESS:
            raise _Drop(f"Informational in state {self.state.value}")
        if hdr.flags & m.FLAG_E:
            if self.state is State.MM5_SENT and self._keys is not None:
                self._recv_protected_refusal(data, now)
                return
            raise _Drop("encrypted Informational before phase 1 is established")
        try:
            chain = m.decode_chain(data[m.HEADER_LEN :], hdr.next_payload, m.HEADER_LEN)
        except m.MessageError as e:
            raise _Drop(f"malformed Informational: {e}") from None
        for ptype, body in chain:
            if ptype == m.N:
                try:
                    _doi, _proto, ntype, _spi, _d = m.decode_notify(body)
                except m.MessageError as e:
                    raise _Drop(f"malformed notification: {e}") from None
                if ntype < 16384:  # error types, RFC 2408 section 3.14.1
                    raise _Fail(f"peer reported {notify_name(ntype)} (unauthenticated notification)", ntype)
                log.info("ike %s: status notification %s ignored", self._spi_str(), notify_name(ntype))
                return
        raise _Drop("Informational without a notification")


    def _recv_protected_refusal(self, data: bytes, now: float) -> None:
        """Initiator after message 5: the responder refused it with a protected Informational
        (keys of this exchange, IV from the last block of our message 5)."""
        sa = self._provisional_sa(self._keys, self._iv, now)  # type: ignore[arg-type]
        try:
            mid, notes, deletes = parse_informational(sa, data)
        except InformationalError as e:
            raise _Drop(str(e)) from None
        errors = [n.type for n in notes if n.type < 16384]
        deleted = any(d.protocol == m.PROTO_ISAKMP and self.spi in d.spis for d in deletes)
        if not errors and not deleted:
            log.info("ike %s: protected status notification %s ignored", self._spi_str(), ", ".join(notify_name(n.type) for n in notes))
            return
        what = ", ".join(notify_name(t) for t in errors) or "a Delete of the ISAKMP SA"
        self._fail(f"peer refused message 5: {what}", errors[0] if errors else None, now, send=False)


def choose_proposal(config: Phase1Config, sa_b: bytes) -> tuple[Proposal | None, bytes, tuple[str, int]]:
    """Responder policy: the first local proposal (in configured order) that one of the offered
    transforms matches.  Returns ``(proposal, reply SA body, ("", 0))`` or
    ``(None, b"", (reason, notify))``.  A pure function of (config, SA body): cacheable."""
    try:
        offer = m.decode_sa(sa_b)
    except m.MessageError as e:
        return None, b"", (f"malformed SA: {e}", N_PAYLOAD_MALFORMED)
    if offer.doi not in (m.DOI_GDOI, m.DOI_IPSEC):
        return None, b"", (f"DOI {offer.doi} not supported", 2)
    if offer.doi == m.DOI_IPSEC:
        log.info("ike: peer offers phase 1 under DOI 1, GDOI needs 2 (RFC 6407 §2.1); accepted")
    parsed: list[tuple[int, tuple[tuple[int, int], ...], Proposal]] = []
    for tnum, attrs in offer.transforms:
        try:
            parsed.append((tnum, attrs, Proposal.from_attributes(attrs)))
        except ValueError as e:
            log.debug("ike: offered transform %d skipped: %s", tnum, e)
    for local in config.proposals:
        for tnum, attrs, prop in parsed:
            if local.matches(prop):
                return local.agreed(prop), m.encode_sa([list(attrs)], doi=offer.doi, numbers=[tnum]), ("", 0)
    offered = ", ".join(str(p) for _t, _a, p in parsed) or "nothing usable"
    return None, b"", (f"no acceptable proposal (offered: {offered})", N_NO_PROPOSAL_CHOSEN)


# ---------------------------------------------------------------------------- Informational codec

class InformationalError(Exception):
    pass


def build_informational(
    sa: Phase1SA,
    notifications: tuple[Notification, ...] = (),
    deletes: tuple[DeleteRequest, ...] = (),
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """``HDR*, HASH(1), N/D...`` with HASH(1) = prf(SKEYID_a, M-ID | N/D payloads) (RFC 2409 §5.7)."""
    while True:
        mid = int.from_bytes(random(4), "big")
        if mid:
            break
    payloads = [(m.N, m.encode_notify(n.type, n.spi, n.data, proto=n.protocol)) for n in notifications]
    payloads += [(m.D, m.encode_delete(list(d.spis), proto=d.protocol)) for d in deletes]
    if not payloads:
        raise LocalProtocolError("an Informational exchange needs a notification or a delete")
    _np, rest = m.encode_chain(payloads)
    h = sa.hash_a(struct.pack("!I", mid) + rest)
    np, chain = m.encode_chain([(m.HASH, h)] + payloads)
    ct = sa.encrypt(sa.phase2_iv(mid), chain)
    return m.encode_header(sa.icookie, sa.rcookie, np, m.EXCH_INFO, m.FLAG_E, mid, m.HEADER_LEN + len(ct)) + ct


def parse_informational(sa: Phase1SA, data: bytes) -> tuple[int, tuple[Notification, ...], tuple[DeleteRequest, ...]]:
    """Decrypt and authenticate a protected Informational; InformationalError says why not."""
    try:
        hdr = m.decode_header(data)
        if hdr.exchange != m.EXCH_INFO or not hdr.flags & m.FLAG_E:
            raise InformationalError("not a protected Informational")
        if hdr.message_id == 0:
            raise InformationalError("Informational with M-ID 0")
        pt = sa.decrypt(sa.phase2_iv(hdr.message_id), data[m.HEADER_LEN :])
        end = m.chain_length(pt, hdr.next_payload)
        chain = m.decode_chain(pt[:end], hdr.next_payload, m.HEADER_LEN)
    except (m.MessageError, crypto.CryptoError) as e:
        raise InformationalError(f"malformed Informational: {e}") from None
    if not chain or chain[0][0] != m.HASH:
        raise InformationalError("Informational does not start with HASH(1)")
    hash_len = 4 + len(chain[0][1])
    want = sa.hash_a(struct.pack("!I", hdr.message_id) + pt[hash_len:end])
    if not hmac.compare_digest(want, chain[0][1]):
        raise InformationalError("HASH(1) does not verify")
    notes, deletes = [], []
    try:
        for ptype, body in chain[1:]:
            if ptype == m.N:
                _doi, proto, ntype, spi, d = m.decode_notify(body)
                notes.append(Notification(ntype, proto, spi, d))
            elif ptype == m.D:
                _doi, proto, spis = m.decode_delete(body)
                deletes.append(DeleteRequest(proto, tuple(spis)))
            else:
                raise InformationalError(f"payload type {ptype} not allowed in Informational")
    except m.MessageError as e:
        raise InformationalError(f"malformed Informational payload: {e}") from None
    if not notes and not deletes:
        raise InformationalError("Informational without N or D")
    return hdr.message_id, tuple(notes), tuple(deletes)
