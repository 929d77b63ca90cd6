"""GROUPKEY-PULL (RFC 6407 section 3), both roles, sans-I/O, under an established phase 1 SA.

::

    (1) GM -> KS  HDR*, HASH(1), Ni, ID(group)     HASH(1) = prf(SKEYID_a, M-ID | Ni | ID)
    (2) KS -> GM  HDR*, HASH(2), Nr, SA            HASH(2) = prf(SKEYID_a, M-ID | Ni_b | Nr | SA)
    (3) GM -> KS  HDR*, HASH(3) [, GAP]            HASH(3) = prf(SKEYID_a, M-ID | Ni_b | Nr_b [| GAP])
    (4) KS -> GM  HDR*, HASH(4), [SEQ,] KD         HASH(4) = prf(SKEYID_a, M-ID | Ni_b | Nr_b [| SEQ] | KD)

``M-ID`` is the 4 header bytes; ``Ni``/``Nr``/``ID``/``SA``/``GAP``/``SEQ``/``KD`` are the
payloads after HASH *verbatim as on the wire* (generic headers included, padding excluded);
``Ni_b``/``Nr_b`` are the nonce data only.  The key server's SA (message 2) is SA KEK, GAP
(the group's activation and deactivation delays, RFC 6407 section 5.4.1), SA TEKs; the
member hands the delays on in :class:`Registered` (``gap``).  RFC 6407 removed RFC 3547's KE/CERT/POP here, and so
do we.  Encryption: the phase 1 cipher and key; the first message of an M-ID starts from
``hash(P1last | M-ID)`` and each later message's IV is the last ciphertext block of the one
before it in the same exchange (RFC 2409 Appendix B).

Key server (:class:`PullResponder`): **no state changes before a valid HASH(3)** (RFC 6407
section 3.2).  Message 1 and 2 live in a bounded table of pending exchanges keyed by (phase 1
SPI, M-ID) with a timeout; keys for message 2 come from
:meth:`~gkm.gdoi.provider.GroupKeysProvider.peek` (no persistent change).  A verified message
3 is queued; the queue is enrolled (:meth:`~gkm.gdoi.provider.GroupKeysProvider.enroll`, all
of it inside one :meth:`~gkm.gdoi.provider.GroupKeysProvider.batch`, i.e. one durable commit)
when the caller pulls the output (``datagrams_to_send``/``next_event``), and messages 4 are
built only after that commit returned.  A shell that reads every datagram waiting on its
socket before pulling the output thus gets group commit; one that pulls after each datagram
commits once per registration.  A byte-identical retransmission of message 1 (or 3) is answered with the stored
message 2 (or 4), without new crypto or state.

Refusals (RFC 6407 defines no notify type of its own; docs/decisions/wire.md §4): an unknown group or
a malformed group ID gets INVALID-ID-INFORMATION (18), an identity the group's policy does not
authorize gets AUTHENTICATION-FAILED (24); both in a protected Informational exchange (HASH(1),
RFC 2409 section 5.7), notification data = the 4-octet group ID.

Member (:class:`PullInitiator`): the state table :data:`MEMBER_TRANSITIONS`, retransmission
with exponential backoff, refusal (event :class:`RegistrationFailed`) of replies it cannot use
(unsupported or not-asked-for suites, SPIs without keys, keys of the wrong length...).

Malformed, unauthenticated or unexpected datagrams are dropped with a log line saying why;
no exception escapes an input method.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import ipaddress
import logging
import os
import struct
from collections import Counter, OrderedDict, deque
from typing import Any, Callable, Mapping

from gkm import wire
from gkm.ike import Notification, Phase1SA, build_informational
from gkm.store import StoreError
from gkm.wire import Gap, GdoiSa, Hash, Identification, KeyDownload, Nonce, Sequence
from gkm.wire.constants import ExchangeType, Flags, IdType, NotifyType, PayloadType
from policy.model import GroupPolicy, Identity

from . import policy_wire as pw
from . import sakd
from .events import MemberRefused, MemberRegistered, Registered, RegistrationFailed
from .provider import GroupKeys, GroupKeysProvider, StaleKeys

log = logging.getLogger("gkm.gdoi")

__all__ = [
    "PullInitiator", "PullResponder", "PullState", "MEMBER_TRANSITIONS", "ALLOWED_PAYLOADS",
    "peer_identity", "member_key", "seal", "open_message", "PullDrop",
]

EXCHANGE = ExchangeType.GROUPKEY_PULL
PROTO_ISAKMP = 1
NONCE_MIN, NONCE_MAX = 8, 128  # RFC 6407 section 5.8
_I = struct.Struct("!I")

#: message number -> payload type -> (min, max) count, HASH first and exactly once in every one
ALLOWED_PAYLOADS: dict[int, dict[int, tuple[int, int]]] = {
    1: {PayloadType.NONCE: (1, 1), PayloadType.ID: (1, 1)},
    2: {PayloadType.NONCE: (1, 1), PayloadType.SA: (1, 1)},
    3: {PayloadType.GAP: (0, 1)},
    4: {PayloadType.SEQ: (0, 1), PayloadType.KD: (1, 1)},
}


class _Encoded:
    """A payload body encoded once (the SA payload, reused across members)."""

    __slots__ = ("TYPE", "body")

    def __init__(self, payload_type: int, body: bytes) -> None:
        self.TYPE = payload_type
        self.body = body

    def encode(self) -> bytes:
        return self.body


class PullDrop(Exception):
    """This datagram is not usable here (logged, nothing changes)."""


class _Refuse(Exception):
    def __init__(self, reason: str, notify: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify


# ---------------------------------------------------------------------------------- codec


# ISAKMP header (RFC 2408 section 3.1) of an encrypted GROUPKEY-PULL message starting with HASH:
# cookies, next payload, version 1.0, exchange, flags, M-ID, length
_PULL_HDR = struct.Struct("!16sBBBBII")
_GEN = struct.Struct("!BBH")  # generic payload header (RFC 2408 section 3.2)


def seal(sa: Phase1SA, mid: int, iv: bytes, payloads: tuple, prefix: bytes) -> tuple[bytes, bytes]:
    """``HDR*, HASH(n), payloads`` encrypted; returns (datagram, last ciphertext block).

    HASH(n) = prf(SKEYID_a, M-ID | prefix | payloads as encoded)."""
    np, rest = wire.encode_payloads(payloads)
    h = sa.hash_a(_I.pack(mid) + prefix + rest)
    chain = _GEN.pack(np, 0, 4 + len(h)) + h + rest
    bs = sa.block_size
    chain += bytes(-len(chain) % bs)
    ct = sa.encrypt(iv, chain)
    hdr = _PULL_HDR.pack(sa.icookie + sa.rcookie, PayloadType.HASH, 0x10, EXCHANGE, Flags.ENCRYPTION, mid, 28 + len(ct))
    return hdr + ct, ct[-bs:]


def open_message(sa: Phase1SA, data: bytes, iv: bytes, number: int, prefix: Callable[[], bytes] | bytes) -> tuple[tuple, bytes]:
    """Decrypt, decode and authenticate message ``number``; returns (payloads after HASH, last
    ciphertext block).  ``prefix`` is what HASH(n) covers between M-ID and the payloads (or a
    function giving it once the payloads are known).  Raises :class:`PullDrop`."""
    bs = sa.block_size
    body = data[28:]
    if not body or len(body) % bs:
        raise PullDrop(f"encrypted body of {len(body)} bytes is not a multiple of {bs}")
    try:
        pt = sa.decrypt(iv, body)
        msg = wire.decode_message(data[:28] + pt, block_size=bs)
    except wire.WireError as e:
        raise PullDrop(f"malformed message {number} (or wrong IV/key): {e}") from None
    except Exception as e:  # cipher errors
        raise PullDrop(f"cannot decrypt message {number}: {e}") from None
    h = msg.header
    if h.exchange != EXCHANGE or not h.flags & Flags.ENCRYPTION:
        raise PullDrop("not an encrypted GROUPKEY-PULL message")
    if not msg.payloads or type(msg.payloads[0]) is not Hash:
        raise PullDrop(f"message {number} does not start with HASH")
    rest = msg.payloads[1:]
    allowed = ALLOWED_PAYLOADS[number]
    counts: dict[int, int] = {}
    for p in rest:
        t = p.TYPE
        n = counts.get(t, 0) + 1
        lim = allowed.get(t)
        if lim is None:
            raise PullDrop(f"payload type {t} not allowed in message {number}")
        if n > lim[1]:
            raise PullDrop(f"payload type {t} repeated in message {number}")
        counts[t] = n
    for t, (lo, _hi) in allowed.items():
        if lo and counts.get(t, 0) < lo:
            raise PullDrop(f"message {number} lacks payload type {t}")
    hash_len = 4 + len(msg.payloads[0].data)
    end = len(pt) - len(msg.padding)
    pre = prefix(rest) if callable(prefix) else prefix
    want = sa.hash_a(_I.pack(h.message_id) + pre + pt[hash_len:end])
    if not hmac.compare_digest(want, msg.payloads[0].data):
        raise PullDrop(f"HASH({number}) does not verify")
    return rest, body[-bs:]


def _get(payloads: tuple, cls: type):
    return next((p for p in payloads if type(p) is cls), None)


def peer_identity(sa: Phase1SA) -> Identity:
    """The authorization identity: the one the credential that authenticated phase 1 belongs
    to (``Phase1SA.authenticated_id``), never merely the ID payload the peer presented: the
    verified certificate's subject, or the owner of the pre-shared key.  ValueError if the SA
    carries no such identity."""
    addr = sa.peer_addr[0] if isinstance(sa.peer_addr, tuple) else sa.peer_addr
    try:
        address = ipaddress.ip_address(addr)
    except ValueError:
        address = None
    if sa.peer_certificate is not None:
        return Identity.from_x509_name(sa.peer_certificate.subject, address)
    if sa.proposal.auth.is_signature:
        raise ValueError("signature authentication without a verified certificate")
    if sa.authenticated_id != sa.peer_id:  # the engine refuses this; never authorize a claim
        raise ValueError(f"ID {sa.peer_id} is not {sa.authenticated_id}, whose pre-shared key authenticated it")
    return Identity.from_id_payload(sa.authenticated_id.type, sa.authenticated_id.data, address)


def member_key(identity: Identity) -> str:
    """The member's key in the store and the LKH tree: ``kind:value``."""
    return f"{identity.kind.value}:{identity.value}"


def _nonzero_mid(random: Callable[[int], bytes]) -> int:
    while True:
        mid = _I.unpack(random(4))[0]
        if mid:
            return mid


def _host(addr: Any) -> str:
    return str(addr[0] if isinstance(addr, tuple) else addr)


# ---------------------------------------------------------------------------------- member


class PullState(enum.Enum):
    START = "START"
    M1_SENT = "M1_SENT"
    M3_SENT = "M3_SENT"
    DONE = "DONE"
    FAILED = "FAILED"


#: member state -> (message number accepted, handler, next state)
MEMBER_TRANSITIONS: dict[PullState, tuple[int, str, PullState]] = {
    PullState.M1_SENT: (2, "_recv_m2", PullState.M3_SENT),
    PullState.M3_SENT: (4, "_recv_m4", PullState.DONE),
}


class PullInitiator:
    """One GROUPKEY-PULL as group member, on an established phase 1 SA.

    ``allowed_suites``: ESP suite names (policy.suites) this member accepts (None: all that
    policy.suites knows).  Inputs ``start(now)``, ``receive_datagram(data, addr, now)``,
    ``handle_timer(now)``; outputs ``datagrams_to_send()``, ``next_event()``, ``get_timer()``.
    """

    def __init__(
        self,
        sa: Phase1SA,
        group_id: int,
        *,
        allowed_suites: frozenset[str] | None = None,
        nonce_size: int = 32,
        retransmit_timeout: float = 1.0,
        max_retransmits: int = 5,
        exchange_timeout: float = 30.0,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not NONCE_MIN <= nonce_size <= NONCE_MAX:
            raise ValueError(f"nonce size {nonce_size} not in {NONCE_MIN}..{NONCE_MAX}")
        self.sa = sa
        self.group_id = group_id
        self.allowed_suites = allowed_suites
        self.state = PullState.START
        self._nonce_size = nonce_size
        self._retx_timeout = retransmit_timeout
        self._max_retx = max_retransmits
        self._exchange_timeout = exchange_timeout
        self._random = random
        self._out: list[tuple[bytes, Any]] = []
        self._events: deque = deque()
        self.mid = 0
        self._ni = self._nr = b""
        self._iv = b""
        self._last_sent: bytes | None = None
        self._retx_at: float | None = None
        self._retx_count = 0
        self._deadline: float | None = None
        self._offer = sakd.GroupSa(None, None, ())  # what message 2's SA offered (sakd.read_sa)
        self.result: Registered | None = None
        self.failure: str | None = None
        self.refused = False  # the key server's reply was refused (not a timeout)

    # -- inputs

    def start(self, now: float) -> None:
        if self.state is not PullState.START:
            raise RuntimeError(f"start() in state {self.state.value}")
        self.mid = _nonzero_mid(self._random)
        self._ni = self._random(self._nonce_size)
        payloads = (Nonce(self._ni), Identification(IdType.KEY_ID, self.group_id.to_bytes(4, "big")))
        data, self._iv = seal(self.sa, self.mid, self.sa.phase2_iv(self.mid), payloads, b"")
        self._deadline = now + self._exchange_timeout
        self._send(data, now)
        self.state = PullState.M1_SENT

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        try:
            self._receive(bytes(data), addr, now)
        except PullDrop as d:
            log.info("gdoi member group %s M-ID %08x: dropped message from %r in state %s: %s",
                     self.group_id, self.mid, addr, self.state.value, d)
        except _Refuse as r:
            self.refused = True
            self._fail(r.reason, r.notify)
        except Exception as exc:  # never let the peer's bytes raise out of the engine
            log.exception("gdoi member group %s: internal error", self.group_id)
            self._fail(f"internal error: {exc!r}")

    def handle_timer(self, now: float) -> None:
        if self.state not in MEMBER_TRANSITIONS:
            return
        if self._deadline is not None and now >= self._deadline:
            self._fail("timeout: no answer from the key server")
            return
        if self._retx_at is not None and now >= self._retx_at and self._last_sent is not None:
            if self._retx_count >= self._max_retx:
                self._fail(f"no answer after {self._retx_count} retransmissions")
                return
            self._retx_count += 1
            self._out.append((self._last_sent, self.sa.peer_addr))
            self._retx_at = now + self._retx_timeout * (2 ** self._retx_count)
            log.debug("gdoi member group %s: retransmission %d in state %s", self.group_id, self._retx_count, self.state.value)

    # -- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.state not in MEMBER_TRANSITIONS:
            return None
        t = [x for x in (self._retx_at, self._deadline) if x is not None]
        return min(t) if t else None

    def fail(self, reason: str, notify: int | None = None) -> None:
        """End the exchange from outside (e.g. the key server sent a refusal notification)."""
        self._fail(reason, notify)

    # -- internals

    def _send(self, data: bytes, now: float) -> None:
        self._out.append((data, self.sa.peer_addr))
        self._last_sent = data
        self._retx_count = 0
        self._retx_at = now + self._retx_timeout

    def _fail(self, reason: str, notify: int | None = None) -> None:
        if self.state in (PullState.DONE, PullState.FAILED):
            return
        log.warning("gdoi member group %s: registration with %r failed in state %s: %s",
                    self.group_id, self.sa.peer_addr, self.state.value, reason)
        self.state = PullState.FAILED
        self.failure = reason
        self._retx_at = self._deadline = None
        self._events.append(RegistrationFailed(self.group_id, reason, notify))

    def _receive(self, data: bytes, addr: Any, now: float) -> None:
        entry = MEMBER_TRANSITIONS.get(self.state)
        if entry is None:
            raise PullDrop("exchange is not waiting for a message")
        if addr != self.sa.peer_addr:
            raise PullDrop(f"source {addr!r} is not the key server {self.sa.peer_addr!r}")
        if len(data) < 28:
            raise PullDrop("shorter than an ISAKMP header")
        try:
            hdr, _np, length = wire.decode_header(data)
        except wire.WireError as e:
            raise PullDrop(f"malformed header: {e}") from None
        if hdr.icookie != self.sa.icookie or hdr.rcookie != self.sa.rcookie:
            raise PullDrop("cookies are not those of the phase 1 SA")
        if hdr.exchange != EXCHANGE or hdr.message_id != self.mid:
            raise PullDrop(f"not this exchange (type {hdr.exchange}, M-ID {hdr.message_id:08x})")
        if length != len(data):
            raise PullDrop(f"header length {length} but {len(data)} bytes received")
        number, handler, next_state = entry
        getattr(self, handler)(data, now)
        self.state = next_state

    def _recv_m2(self, data: bytes, now: float) -> None:
        def prefix(rest: tuple) -> bytes:
            return self._ni
        rest, iv = open_message(self.sa, data, self._iv, 2, prefix)
        nr = _get(rest, Nonce).data
        if not NONCE_MIN <= len(nr) <= NONCE_MAX:
            raise PullDrop(f"Nr of {len(nr)} bytes")
        sa = _get(rest, GdoiSa)
        if sa is None:
            raise _Refuse("SA payload is not a GDOI SA")
        self._read_policy(sa)
        self._nr = nr
        self._iv = iv
        out, self._iv = seal(self.sa, self.mid, iv, (), self._ni + self._nr)
        self._send(out, now)

    def _read_policy(self, sa: GdoiSa) -> None:
        try:
            offer = sakd.read_sa(sa, self.allowed_suites)
        except sakd.SaKdError as e:
            raise _Refuse(e.reason, e.notify) from None
        if not offer.teks:
            raise _Refuse("the key server offered no TEK")
        self._offer = offer

    def _recv_m4(self, data: bytes, now: float) -> None:
        rest, _iv = open_message(self.sa, data, self._iv, 4, self._ni + self._nr)
        seq = _get(rest, Sequence)
        kd = _get(rest, KeyDownload)
        offer = self._offer
        if (seq is None) != (offer.kek is None):
            raise _Refuse("SEQ must come with, and only with, a KEK (RFC 6407 section 3.2)")
        try:
            packets = sakd.sort_kd(kd, sid_allowed=True)
            sakd.pair(offer, packets)
        except sakd.SaKdError as e:
            raise _Refuse(f"unusable keys: {e.reason}", e.notify) from None
        if packets.sids:
            log.info("gdoi member group %s: SID key packet ignored (RFC 6054 sender IDs not implemented)", self.group_id)
        by_spi = packets.teks
        try:
            teks = tuple(pw.group_tek(self.group_id, t, by_spi[t.spi]) for t in offer.teks)
            kek = pw.group_kek(self.group_id, offer.kek, packets.kek) if offer.kek is not None else None
            lkh = pw.read_lkh_packet(packets.lkh) if packets.lkh is not None else None
        except pw.MappingError as e:
            raise _Refuse(f"unusable keys: {e}") from None
        self._retx_at = self._deadline = None
        self.result = Registered(
            self.group_id, teks, kek, None if seq is None else seq.number, lkh, self.sa.peer_addr,
            None, self.sa.spi, offer.gap,
        )
        log.info("gdoi member group %s: registered with %r: %d TEK(s)%s", self.group_id, self.sa.peer_addr,
                 len(teks), ", KEK" if kek else "")
        self._events.append(self.result)


# ---------------------------------------------------------------------------------- key server


class _Pending:
    __slots__ = ("sa", "addr", "group", "identity", "ni", "nr", "msg1", "msg2", "iv", "keys", "deadline")

    def __init__(self, sa, addr, group, identity, ni, nr, msg1, msg2, iv, keys, deadline) -> None:
        self.sa = sa
        self.addr = addr
        self.group = group
        self.identity = identity
        self.ni = ni
        self.nr = nr
        self.msg1 = msg1
        self.msg2 = msg2
        self.iv = iv
        self.keys = keys
        self.deadline = deadline


class PullResponder:
    """The key server side of every GROUPKEY-PULL, multiplexed by (phase 1 SPI, M-ID).

    ``groups``: group ID -> policy.  ``rekey_source``: (address, port) the key server sends
    GROUPKEY-PUSH from (SA KEK SRC ID).  ``wall_time_offset``: added to ``now`` for the Unix
    time the store records.  Bounds: ``max_pending`` exchanges between messages 1 and 3 (new
    ones are dropped when full), ``max_pending_per_sa`` per phase 1 SA, each for
    ``pending_timeout`` seconds; ``max_completed`` finished exchanges kept ``completed_timeout``
    seconds to answer a retransmitted message 3.
    """

    def __init__(
        self,
        groups: Mapping[int, GroupPolicy],
        keys: GroupKeysProvider,
        *,
        rekey_source: tuple[str, int] | None = None,
        wall_time_offset: float = 0.0,
        max_pending: int = 4096,
        max_pending_per_sa: int = 4,
        pending_timeout: float = 30.0,
        max_completed: int = 4096,
        completed_timeout: float = 60.0,
        nonce_size: int = 32,
        random: Callable[[int], bytes] = os.urandom,
        admit: Callable[[GroupPolicy, Identity, Phase1SA], str | None] | None = None,
    ) -> None:
        self.groups = dict(groups)
        #: the key server's own refusals after the group policy admitted a member (deny list,
        #: revoked certificate): a reason to refuse, or None
        self.admit = admit
        self.keys = keys
        self.rekey_source = rekey_source
        self.wall_time_offset = wall_time_offset
        self.max_pending = max_pending
        self.max_pending_per_sa = max_pending_per_sa
        self.pending_timeout = pending_timeout
        self.max_completed = max_completed
        self.completed_timeout = completed_timeout
        self._nonce_size = nonce_size
        self._random = random
        self._pending: OrderedDict[tuple[bytes, int], _Pending] = OrderedDict()
        self._per_sa: Counter[bytes] = Counter()
        self._completed: OrderedDict[tuple[bytes, int], tuple[bytes, bytes, float]] = OrderedDict()
        self._out: list[tuple[bytes, Any]] = []
        self._events: deque = deque()
        self._sig_bits: dict[bytes, int] = {}
        self._enroll: list = []
        self._sa_cache: dict = {}
        self._kd_cache: dict = {}  # (id(GroupKeys), with KEK) -> (keys, encoded KD payload): holds key material, in memory only
        self.stats: Counter[str] = Counter()

    # -- inputs

    def receive(self, sa: Phase1SA, data: bytes, addr: Any, now: float) -> None:
        """A GROUPKEY-PULL datagram under ``sa`` (from :class:`gkm.ike.Phase2Datagram`)."""
        try:
            self._receive(sa, bytes(data), addr, now)
        except PullDrop as d:
            self.stats["dropped"] += 1
            log.info("gdoi ks: dropped GROUPKEY-PULL from %r (SA %s): %s", addr, sa.spi.hex(), d)
        except Exception:
            self.stats["internal_error"] += 1
            log.exception("gdoi ks: internal error on GROUPKEY-PULL from %r", addr)

    def handle_timer(self, now: float) -> None:
        for table in (self._pending, self._completed):
            while table:
                key, rec = next(iter(table.items()))
                deadline = rec.deadline if isinstance(rec, _Pending) else rec[2]
                if deadline > now:
                    break
                del table[key]
                if isinstance(rec, _Pending):
                    self._per_sa[key[0]] -= 1
                    if self._per_sa[key[0]] <= 0:
                        del self._per_sa[key[0]]
                    self.stats["expired_pending"] += 1
                    log.info("gdoi ks: GROUPKEY-PULL %s/%08x from %r expired before message 3", key[0].hex(), key[1], rec.addr)

    def forget_sa(self, spi: bytes) -> None:
        """The phase 1 SA is gone: drop its exchanges."""
        for table in (self._pending, self._completed):
            for key in [k for k in table if k[0] == spi]:
                del table[key]
        self._per_sa.pop(spi, None)

    # -- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        t = [next(iter(self._pending.values())).deadline] if self._pending else []
        if self._completed:
            t.append(next(iter(self._completed.values()))[2])
        return min(t) if t else None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # -- internals

    def _wall(self, now: float) -> int:
        return int(now + self.wall_time_offset)

    def _receive(self, sa: Phase1SA, data: bytes, addr: Any, now: float) -> None:
        if len(data) < 28:
            raise PullDrop("shorter than an ISAKMP header")
        try:
            hdr, _np, length = wire.decode_header(data)
        except wire.WireError as e:
            raise PullDrop(f"malformed header: {e}") from None
        if length != len(data):
            raise PullDrop(f"header length {length} but {len(data)} bytes received")
        if hdr.exchange != EXCHANGE or not hdr.flags & Flags.ENCRYPTION:
            raise PullDrop("not an encrypted GROUPKEY-PULL message")
        if hdr.message_id == 0:
            raise PullDrop("M-ID 0")
        key = (sa.spi, hdr.message_id)
        done = self._completed.get(key)
        if done is not None:
            if hmac.compare_digest(done[0], data):
                self._out.append((done[1], addr))
                self.stats["retransmitted_4"] += 1
                return
            raise PullDrop("message for a completed exchange")
        p = self._pending.get(key)
        if p is not None:
            if hmac.compare_digest(p.msg1, data):
                self._out.append((p.msg2, addr))
                self.stats["retransmitted_2"] += 1
                return
            self._message3(key, p, data, addr, now)
            return
        self._message1(sa, hdr.message_id, data, addr, now)

    def _message1(self, sa: Phase1SA, mid: int, data: bytes, addr: Any, now: float) -> None:
        rest, iv = open_message(sa, data, sa.phase2_iv(mid), 1, b"")
        if len(self._pending) >= self.max_pending:
            self.stats["dropped_full"] += 1
            raise PullDrop(f"{len(self._pending)} exchanges pending (max_pending)")
        if self._per_sa[sa.spi] >= self.max_pending_per_sa:
            self.stats["dropped_full_sa"] += 1
            raise PullDrop(f"{self._per_sa[sa.spi]} exchanges pending on this phase 1 SA")
        ni = _get(rest, Nonce).data
        if not NONCE_MIN <= len(ni) <= NONCE_MAX:
            raise PullDrop(f"Ni of {len(ni)} bytes")
        idp = _get(rest, Identification)
        try:
            identity = peer_identity(sa)
        except ValueError as e:
            identity = None
            why = f"phase 1 identity not usable for authorization: {e}"
        if idp.id_type != IdType.KEY_ID or len(idp.data) != 4:
            self._refuse(sa, mid, 0, identity, addr, f"group ID payload of type {idp.id_type}, {len(idp.data)} bytes "
                         "(need ID_KEY_ID with a 4-octet group number, RFC 6407 section 5.1)", NotifyType.INVALID_ID_INFORMATION,
                         "bad_group_id")
            return
        gid = _I.unpack(idp.data)[0]
        group = self.groups.get(gid)
        if group is None:
            self._refuse(sa, mid, gid, identity, addr, f"unknown group {gid}", NotifyType.INVALID_ID_INFORMATION,
                         "unknown_group")
            return
        if identity is None:
            self._refuse(sa, mid, gid, None, addr, why, NotifyType.AUTHENTICATION_FAILED,
                         "identity_unusable")
            return
        decision = group.authorizes(identity)
        if not decision.allowed:
            self._refuse(sa, mid, gid, identity, addr, decision.reason, NotifyType.AUTHENTICATION_FAILED,
                         "not_authorized")
            return
        refusal = self.admit(group, identity, sa) if self.admit is not None else None
        if refusal is not None:
            self._refuse(sa, mid, gid, identity, addr, f"group {group.label}: may not join: {refusal}",
                         NotifyType.AUTHENTICATION_FAILED, "not_admitted")
            return
        wall = self._wall(now)
        try:
            keys = self.keys.peek(group, wall)
            sa_payload = self._sa_payload(group, keys, identity, wall)
        except Exception as e:  # store or signing key trouble: ours, not the member's
            self.stats["keys_unavailable"] += 1
            log.error("gdoi ks: group %s: keys unavailable, %s not answered: %r", group.group_id, identity, e)
            return
        nr = self._random(self._nonce_size)
        msg2, iv2 = seal(sa, mid, iv, (Nonce(nr), sa_payload), ni)
        self._pending[(sa.spi, mid)] = _Pending(sa, addr, group, identity, ni, nr, data, msg2, iv2, keys, now + self.pending_timeout)
        self._per_sa[sa.spi] += 1
        self._out.append((msg2, addr))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("gdoi ks: GROUPKEY-PULL %s/%08x: %s asks for group %s", sa.spi.hex(), mid, identity, group.label)

    def _sa_payload(self, group: GroupPolicy, keys: GroupKeys, identity: Identity, wall: int) -> "_Encoded":
        """The SA payload for this member, encoded.  Cached by everything it depends on (group
        policy, SPIs, the member's SA directions, remaining lifetimes in whole seconds)."""
        dirs = tuple(tp.direction_for(identity) for tp in group.teks)
        ck = (id(group), tuple(t.spi for t in keys.teks), keys.kek.spi if keys.kek else None, dirs, wall)
        hit = self._sa_cache.get(ck)
        if hit is not None and hit[0] is group:  # the reference keeps id(group) from being reused
            return hit[1]
        kids: list = []
        if group.kek is not None and keys.kek is not None:
            pub = keys.kek.public_key
            bits = self._sig_bits.get(pub)
            if bits is None:
                bits = self._sig_bits[pub] = pw.signature_key_bits(pub)
            kids.append(pw.sa_kek(group.kek, keys.kek.spi, self.rekey_source, keys.kek.expires - wall, bits))
        kids.append(pw.gap(group))  # SA KEK, GAP, SA TEKs (RFC 6407 section 5.2.1)
        for tp, direction in zip(group.teks, dirs):
            tk = keys.tek(tp.name)
            remaining = tk.expires - wall
            if remaining <= 0:
                log.warning("gdoi ks: group %s TEK %s (SPI %#010x) is past its lifetime; the rekey engine should have replaced it",
                            group.label, tp.name, tk.spi)
            kids.append(pw.sa_tek(tp, tk.spi, direction, remaining))
        enc = _Encoded(PayloadType.SA, GdoiSa(tuple(kids)).encode())
        if len(self._sa_cache) >= 64:
            self._sa_cache.clear()
        self._sa_cache[ck] = (group, enc)
        return enc

    def _message3(self, key: tuple[bytes, int], p: _Pending, data: bytes, addr: Any, now: float) -> None:
        rest, iv = open_message(p.sa, data, p.iv, 3, p.ni + p.nr)
        # From here the member is live (HASH(3) covers Nr): state may change.
        gap = _get(rest, Gap)
        if gap is not None:
            log.info("gdoi ks: %s sent GAP %s (sender ID requests are not implemented)", p.identity, gap.attributes)
        del self._pending[key]
        self._per_sa[key[0]] -= 1
        if self._per_sa[key[0]] <= 0:
            del self._per_sa[key[0]]
        self._enroll.append((key, p, data, addr, now, iv))

    @property
    def commit_pending(self) -> int:
        """Verified messages 3 waiting for :meth:`commit`."""
        return len(self._enroll)

    def commit(self) -> None:
        """The durable step, which the shell performs explicitly: enroll the members whose
        message 3 arrived, in one commit, then build their messages 4 (group commit: a shell
        that feeds every datagram waiting on its socket and then commits answers them all
        after one fsync; nothing is sent before the commit returned).  Outputs never commit."""
        queue, self._enroll = self._enroll, []
        if not queue:
            return
        done = []
        self.stats["commits"] += 1
        batch = getattr(self.keys, "batch", None)
        try:
            with batch() if batch is not None else contextlib.nullcontext():
                for item in queue:
                    key, p, data, addr, now, iv = item
                    try:
                        enr = self.keys.enroll(p.group, p.keys, member_key(p.identity), _host(addr), self._wall(now))
                    except StaleKeys as e:
                        self.stats["stale"] += 1
                        log.warning("gdoi ks: registration of %s in group %s abandoned: %s (the member will retry)",
                                    p.identity, p.group.label, e)
                        continue
                    done.append((item, enr))
        except Exception as e:
            self.stats["store_error"] += len(queue)
            if isinstance(e, StoreError):  # e.g. StoreFull: says which file and why, no traceback
                log.error("gdoi ks: %d registration(s) not recorded, so not answered (a retransmitted "
                          "message 3 tries again): %s", len(queue), e)
            else:
                log.exception("gdoi ks: enrolling %d member(s) failed; nothing was registered (a "
                              "retransmitted message 3 tries again)", len(queue))
            for key, p, _data, _addr, _now, _iv in queue:  # back to pending: nothing was changed
                if key not in self._pending and len(self._pending) < self.max_pending:
                    self._pending[key] = p
                    self._per_sa[key[0]] += 1
            return
        for (key, p, data, addr, now, iv), enr in done:
            self._reply4(key, p, data, addr, now, iv, enr)

    def _reply4(self, key, p: _Pending, data: bytes, addr: Any, now: float, iv: bytes, enr) -> None:
        group, keys = p.group, p.keys
        with_kek = keys.kek is not None and group.kek is not None
        payloads: list = [Sequence(enr.seq or 0)] if with_kek else []
        if with_kek and enr.lkh_path:
            packets = [pw.tek_packet(tk.spi, tk.enc_keymat, tk.auth_key) for tk in keys.teks]
            packets.append(pw.kek_packet(keys.kek.spi, keys.kek.keymat, keys.kek.public_key))
            packets.append(pw.lkh_packet(keys.kek.spi, list(enr.lkh_path), enr.lkh_key_type))
            payloads.append(KeyDownload(tuple(packets)))
        else:
            payloads.append(self._kd_payload(keys, with_kek))
        msg4, _ = seal(p.sa, key[1], iv, tuple(payloads), p.ni + p.nr)
        self._completed[key] = (data, msg4, now + self.completed_timeout)
        while len(self._completed) > self.max_completed:
            self._completed.popitem(last=False)
        self._out.append((msg4, addr))
        self.stats["registered"] += 1
        log.info("gdoi ks: %s from %r registered in group %s", p.identity, addr, group.group_id)
        self._events.append(MemberRegistered(group.group_id, p.identity, addr, tuple(t.spi for t in keys.teks), enr.lkh_update))

    def _kd_payload(self, keys: GroupKeys, with_kek: bool) -> "_Encoded":
        """The KD payload without an LKH path: the same bytes for every member getting these
        keys, encoded once per keys value (the reference in the entry keeps id(keys) from being
        reused while it is cached)."""
        ck = (id(keys), with_kek)
        hit = self._kd_cache.get(ck)
        if hit is not None and hit[0] is keys:
            return hit[1]
        packets = [pw.tek_packet(tk.spi, tk.enc_keymat, tk.auth_key) for tk in keys.teks]
        if with_kek:
            packets.append(pw.kek_packet(keys.kek.spi, keys.kek.keymat, keys.kek.public_key))
        enc = _Encoded(PayloadType.KD, KeyDownload(tuple(packets)).encode())
        if len(self._kd_cache) >= 16:
            self._kd_cache.clear()
        self._kd_cache[ck] = (keys, enc)
        return enc

    def _refuse(self, sa: Phase1SA, mid: int, gid: int, identity: Identity | None, addr: Any, reason: str, notify: int,
                cause: str) -> None:
        self.stats["refused"] += 1
        log.warning("gdoi ks: refused %s from %r for group %s: %s (%s)", identity if identity is not None else sa.peer_id,
                    addr, gid, reason, NotifyType(notify).name)
        note = Notification(int(notify), PROTO_ISAKMP, sa.spi, gid.to_bytes(4, "big"))
        self._out.append((build_informational(sa, (note,), random=self._random), addr))
        self._events.append(MemberRefused(gid, identity, addr, reason, int(notify), cause))
