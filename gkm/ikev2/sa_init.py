"""IKE_SA_INIT (RFC 7296 §1.2, §2.6) and the RFC 9370 additional key exchange over
IKE_INTERMEDIATE (RFC 9242), both roles, sans-I/O.

Shells feed ``receive_datagram(data, addr, now)``, send ``datagrams_to_send()`` and read
``next_event()`` (:mod:`.events`).  Scope: one proposal (the configured :class:`SaInitConfig`),
KE methods ECP256 / Curve25519, an optional or required ML-KEM-768 as ADDKE1.

Responder (one :class:`SaInitResponder` serves all peers):

* Unauthenticated input costs nothing before the checks: a datagram that does not decode, is
  not an IKE_SA_INIT request, or (under load) lacks a valid cookie is answered or dropped
  without a key exchange and without state.
* Under load (``cookie_threshold`` half-open SAs or more) a request without a valid COOKIE gets
  a COOKIE response, computed statelessly: ``version | HMAC-SHA-256(secret, Ni | IPi | SPIi)``
  truncated to 16 bytes (RFC 7296 §2.6: the recommended construction, with HMAC as the hash).
  The secret is rotated by :meth:`SaInitResponder.rotate_cookie_secret`; the previous one is
  still accepted, recognised by the version byte.
* At most ``max_half_open`` half-open SAs; beyond, requests are dropped.
* A retransmitted request (same SPIi and Ni from the same address) gets the same response.
* An IKE_SA_INIT request with an unknown critical payload is answered with
  UNSUPPORTED_CRITICAL_PAYLOAD naming its type (RFC 7296 §2.5), statelessly.

Decisions: the AUTH payloads of the next exchange must also cover the IKE_INTERMEDIATE messages
(RFC 9242 §3.3.2 IntAuth); :class:`~.events.SaInitEstablished` hands over the two IKE_SA_INIT
messages and the IKE_INTERMEDIATE datagrams with the keys that protected them, and computing
IntAuth is the GSA_AUTH engine's job (:mod:`.intauth`, :mod:`.registration`).  Retransmission timers on the initiator side are the shell's job
for now (``retransmit()``).

NAT detection (RFC 7296 §2.23, :mod:`.natt`): the engines are told their own address of the
exchange (``local``: the initiator's ``SaInitInitiator(..., local=)``, the responder's
``receive_datagram(..., local=)`` per datagram: the address and port the request arrived on).
With it, both IKE_SA_INIT messages carry NAT_DETECTION_SOURCE_IP / _DESTINATION_IP (the
responder only when the request had them), and :class:`~.events.SaInitEstablished` says in
``nat`` which side is behind a NAT (None: no local address, or the peer sent no NAT detection).
Without ``local`` there is no NAT detection.

Post-quantum preshared keys (RFC 8784 §3, :mod:`.ppk`): ``SaInitConfig.ppk`` adds N(USE_PPK)
to the request, and the responder's answer has it when both are configured;
``SaInitEstablished.ppk`` says both sent it (the PPK itself is mixed in at GSA_AUTH).  What to do about a NAT (the initiator's float to
UDP 4500) is the caller's decision (:mod:`.member_registration`).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from .outputs import Outputs
from .constants import (
    ExchangeType, HeaderFlags, KeyExchangeMethod, NotifyType, ProtocolId, TransformAttr, TransformType,
)
from .errors import UnsupportedCriticalPayload, WireError
from .events import CookieDemanded, SaInitEstablished, SaInitFailed
from .kex import KeyShare, respond
from .keys import IkeKeys, Suite, derive_ike_keys, update_ike_keys
from .message import Header, decode_header, decode_message, encode_message
from .natt import NatStatus, detect, nat_notifies
from .payloads import KeyExchange, Nonce, Notify, Proposal, SecurityAssociation, Transform
from .sk import SkCipher, protect, unprotect
from gkm.wire.attributes import Attribute

NONCE_SIZE = 32
ZERO_SPI = bytes(8)
COOKIE_SIZE = 17  # version byte + 16 bytes of HMAC


@dataclass(frozen=True, slots=True)
class SaInitConfig:
    """What this side offers (initiator) or accepts (responder)."""

    suite: Suite
    groups: tuple[KeyExchangeMethod, ...] = (KeyExchangeMethod.ECP256, KeyExchangeMethod.CURVE25519)
    mlkem: str = "optional"  # "no", "optional" or "required"
    #: RFC 7427 §4 SIGNATURE_HASH_ALGORITHMS announced (empty: none): SHA2-256/384/512 and
    #: "Identity" (RFC 8420, Ed25519); what :mod:`.auth` signs and verifies
    signature_hashes: tuple[int, ...] = (2, 3, 4, 5)
    #: G-IKEv2 key wrap algorithms (RFC 9838 §4.4.3: negotiated in IKE_SA_INIT), preferred
    #: first; empty: none offered and a proposal with a KWA transform is not acceptable
    kwa: tuple[int, ...] = ()
    #: announce N(USE_PPK) (RFC 8784 §3: this side has post-quantum preshared keys); the
    #: responder answers it only to an initiator that sent it
    ppk: bool = False

    def __post_init__(self) -> None:
        if self.mlkem not in ("no", "optional", "required") or not self.groups:
            raise ValueError("mlkem must be no/optional/required and groups not empty")

    def hash_notify(self) -> list[Notify]:
        if not self.signature_hashes:
            return []
        return [Notify(0, NotifyType.SIGNATURE_HASH_ALGORITHMS, b"", b"".join(h.to_bytes(2, "big") for h in self.signature_hashes))]

    def proposal(self) -> SecurityAssociation:
        s = self.suite
        ts = [Transform(TransformType.ENCR, s.encr, (Attribute(TransformAttr.KEY_LENGTH, s.key_bits),)),
              Transform(TransformType.PRF, s.prf)]
        if s.integ:
            ts.append(Transform(TransformType.INTEG, s.integ))
        ts += [Transform(TransformType.KE, g) for g in self.groups]
        if self.mlkem != "no":
            ts.append(Transform(TransformType.ADDKE1, KeyExchangeMethod.ML_KEM_768))
        if self.mlkem == "optional":
            ts.append(Transform(TransformType.ADDKE1, 0))  # NONE: the additional exchange is optional
        ts += [Transform(TransformType.KWA, k) for k in self.kwa]
        return SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", tuple(ts)),))


def _choose(config: SaInitConfig, offer: SecurityAssociation) -> tuple[SecurityAssociation, int, int] | str:
    """``(chosen SA, KE method, ADDKE1 method or 0)`` or the reason for NO_PROPOSAL_CHOSEN."""
    s = config.suite
    want = {TransformType.ENCR: (s.encr, s.key_bits), TransformType.PRF: (s.prf, None)}
    if s.integ:
        want[TransformType.INTEG] = (s.integ, None)
    for prop in offer.proposals:
        if prop.protocol != ProtocolId.IKE or prop.spi:
            continue
        by_type: dict[int, list[Transform]] = {}
        for t in prop.transforms:
            by_type.setdefault(int(t.type), []).append(t)
        if set(by_type) - ({1, 2, 3, 4, 6, 13} if config.kwa else {1, 2, 3, 4, 6}):
            continue
        kwas = {t.id for t in by_type.get(TransformType.KWA, ())}
        kwa = next((k for k in config.kwa if k in kwas), None)
        if kwas and kwa is None:
            continue  # a peer that offers key wrap algorithms needs one of them
        picked = []
        for ttype, (tid, bits) in want.items():
            match = [t for t in by_type.get(ttype, ()) if t.id == tid and t.key_length == bits]
            if not match:
                break
            picked.append(match[0])
        else:
            if not s.integ and any(t.id != 0 for t in by_type.get(3, ())):
                continue
            group = next((g for g in config.groups if any(t.id == g for t in by_type.get(4, ()))), None)
            if group is None:
                continue
            offered = {t.id for t in by_type.get(6, ())}
            if config.mlkem != "no" and KeyExchangeMethod.ML_KEM_768 in offered:
                add = int(KeyExchangeMethod.ML_KEM_768)
            elif config.mlkem == "required":
                return "ML-KEM-768 is required and the peer does not offer it"
            elif offered and 0 not in offered:
                continue  # the peer insists on an additional exchange we do not do
            else:
                add = 0
            picked.append(Transform(TransformType.KE, group))
            if offered:
                picked.append(Transform(TransformType.ADDKE1, add))
            if kwa is not None:
                picked.append(Transform(TransformType.KWA, kwa))
            return SecurityAssociation((Proposal(prop.number, ProtocolId.IKE, b"", tuple(picked)),)), group, add
    return "no acceptable proposal"


def _kwa_of(sa: SecurityAssociation) -> int:
    """The chosen key wrap algorithm, 0 if none was negotiated."""
    return next((int(t.id) for t in sa.proposals[0].transforms if t.type == TransformType.KWA), 0)


def _notify(msg, ntype) -> Notify | None:
    for n in msg.all(Notify):
        if n.type == ntype:
            return n
    return None


# ------------------------------------------------------------------------------------ initiator


class SaInitInitiator(Outputs):
    """One IKE SA's IKE_SA_INIT (+ IKE_INTERMEDIATE) as initiator."""

    def __init__(self, config: SaInitConfig, peer: tuple, local: tuple | None = None) -> None:
        super().__init__()
        self.config = config
        self.peer = peer
        #: our (address, port) toward ``peer``, for NAT detection (None: none)
        self.local = local
        self._nat: NatStatus | None = None
        self.spi_i = os.urandom(8)
        self.ni = os.urandom(NONCE_SIZE)
        self._group = config.groups[0]
        self._share = KeyShare(self._group)
        self._cookie: bytes | None = None
        self._request = b""
        self._state = "idle"
        self._keys: IkeKeys | None = None
        self._pq: KeyShare | None = None
        self._ctx: tuple = ()
        self._intermediate: tuple = ((), None)
        self._kwa = 0
        self._ppk = False

    def start(self, now: float) -> None:
        self._send_init()

    def retransmit(self) -> None:
        """Send the outstanding request again (RFC 7296 §2.1: same bytes)."""
        if self._state in ("init", "intermediate"):
            self._out.append((self._request, self.peer))

    def _send_init(self) -> None:
        payloads = [self.config.proposal(), KeyExchange(self._group, self._share.public), Nonce(self.ni)]
        if self.config.mlkem != "no":
            payloads.append(Notify(0, NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        payloads += self.config.hash_notify()
        if self.config.ppk:
            payloads.append(Notify(0, NotifyType.USE_PPK))
        if self.local is not None:
            payloads += nat_notifies(self.spi_i, ZERO_SPI, self.local, self.peer)
        if self._cookie is not None:
            payloads.insert(0, Notify(0, NotifyType.COOKIE, b"", self._cookie))  # first (§2.6)
        self._request = encode_message(Header(self.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlags.INITIATOR, 0), payloads)
        self._state = "init"
        self._out.append((self._request, self.peer))

    def _fail(self, reason: str) -> None:
        self._state = "failed"
        self._events.append(SaInitFailed(self.peer, self.spi_i, reason))

    def receive_datagram(self, data: bytes, addr: tuple, now: float) -> None:
        if addr != self.peer or self._state not in ("init", "intermediate"):
            return
        try:
            if self._state == "init":
                self._on_init_response(data)
            else:
                self._on_intermediate_response(data)
        except WireError as e:  # a forged or broken response is dropped; a retransmission may follow
            if self._state == "intermediate" and e.payload != "SK" and e.payload != "header":
                self._fail(f"malformed IKE_INTERMEDIATE response: {e}")

    def _on_init_response(self, data: bytes) -> None:
        msg = decode_message(data)
        h = msg.header
        if h.exchange != ExchangeType.IKE_SA_INIT or not h.response or h.spi_i != self.spi_i or h.message_id != 0:
            return
        cookie = _notify(msg, NotifyType.COOKIE)
        if cookie is not None and msg.get(SecurityAssociation) is None:
            if not 1 <= len(cookie.data) <= 64 or self._cookie == cookie.data:
                return self._fail("responder repeats its COOKIE demand")
            self._cookie = cookie.data
            return self._send_init()
        bad_ke = _notify(msg, NotifyType.INVALID_KE_PAYLOAD)
        if bad_ke is not None:
            want = int.from_bytes(bad_ke.data[:2], "big") if len(bad_ke.data) == 2 else None
            if want not in self.config.groups or want == self._group:
                return self._fail(f"INVALID_KE_PAYLOAD asking for group {want}, not one offered")
            self._group, self._share = KeyExchangeMethod(want), KeyShare(want)
            return self._send_init()
        errors = [n for n in msg.all(Notify) if n.is_error]
        if errors:
            kind = errors[0].type
            return self._fail(f"responder refused: {kind.name if isinstance(kind, NotifyType) else kind}")
        sa, ke, nr = msg.get(SecurityAssociation), msg.get(KeyExchange), msg.get(Nonce)
        if sa is None or ke is None or nr is None or h.spi_r == ZERO_SPI:
            return self._fail("IKE_SA_INIT response without SA, KE or Nonce")
        if len(sa.proposals) != 1:
            return self._fail("responder chose more than one proposal")
        chosen = _choose(SaInitConfig(self.config.suite, (self._group,), self.config.mlkem, kwa=self.config.kwa), sa)
        if isinstance(chosen, str) or chosen[1] != ke.group or ke.group != self._group:
            return self._fail(f"responder's choice is not in our offer: {chosen if isinstance(chosen, str) else 'KE method'}")
        if not 16 <= len(nr.data) <= 256:
            return self._fail(f"responder nonce of {len(nr.data)} bytes (RFC 7296 §2.10)")
        add = next((t.id for t in sa.proposals[0].transforms if t.type == TransformType.ADDKE1), 0)
        self._kwa = _kwa_of(sa)
        self._ppk = self.config.ppk and _notify(msg, NotifyType.USE_PPK) is not None
        if self.config.mlkem == "required" and add != KeyExchangeMethod.ML_KEM_768:
            return self._fail("responder did not choose the required ML-KEM-768")
        if self.local is not None:
            self._nat = detect(msg.all(Notify), self.spi_i, h.spi_r, self.local, self.peer, initiator=True)
        self._keys = derive_ike_keys(self.config.suite, self.ni, nr.data, self._share.shared_secret(ke.data), self.spi_i, h.spi_r)
        self._share = None  # the ephemeral key is no longer needed
        self._ctx = (h.spi_r, nr.data, self._request, bytes(data))
        if add == KeyExchangeMethod.ML_KEM_768:
            self._pq = KeyShare(KeyExchangeMethod.ML_KEM_768)
            hd = Header(self.spi_i, h.spi_r, ExchangeType.IKE_INTERMEDIATE, HeaderFlags.INITIATOR, 1)
            self._request = protect(hd, (KeyExchange(KeyExchangeMethod.ML_KEM_768, self._pq.public),),
                                    SkCipher.for_message(self._keys, hd))
            self._state = "intermediate"
            self._out.append((self._request, self.peer))
        else:
            self._done((int(self._group),))

    def _on_intermediate_response(self, data: bytes) -> None:
        spi_r, nr = self._ctx[0], self._ctx[1]
        hd = decode_message(data).header  # before the keys: the cheap checks
        if hd.exchange != ExchangeType.IKE_INTERMEDIATE or not hd.response or hd.message_id != 1 or (hd.spi_i, hd.spi_r) != (self.spi_i, spi_r):
            return
        msg = unprotect(data, SkCipher.for_sender(self._keys, initiator=False))
        ke = msg.get(KeyExchange)
        if ke is None or ke.group != KeyExchangeMethod.ML_KEM_768:
            return self._fail("IKE_INTERMEDIATE response without the ML-KEM-768 KE")
        ss = self._pq.shared_secret(ke.data)
        self._intermediate = ((self._request, bytes(data)), self._keys)
        self._keys = update_ike_keys(self._keys, ss, self.ni, nr, self.spi_i, spi_r)
        self._pq = None
        self._done((int(self._group), int(KeyExchangeMethod.ML_KEM_768)))

    def _done(self, methods: tuple[int, ...]) -> None:
        spi_r, nr, m1, m2 = self._ctx
        self._state = "done"
        inter, inter_keys = self._intermediate
        self._events.append(SaInitEstablished(self.peer, self.spi_i, spi_r, self.ni, nr, m1, m2, self._keys, methods,
                                              inter, inter_keys, self._kwa, self._nat, self._ppk))


# ------------------------------------------------------------------------------------ responder


@dataclass(slots=True)
class _HalfOpen:
    peer: tuple
    spi_r: bytes
    ni: bytes
    nr: bytes
    request: bytes
    response: bytes
    keys: IkeKeys
    group: int
    mlkem: bool
    created: float
    kwa: int = 0
    nat: NatStatus | None = None
    intermediate_request: bytes = b""
    intermediate_response: bytes = b""
    ppk: bool = False  # both sent N(USE_PPK)


class SaInitResponder(Outputs):
    """IKE_SA_INIT responder for every peer, with stateless cookies under load."""

    def __init__(self, config: SaInitConfig, *, cookie_threshold: int = 64, max_half_open: int = 4096,
                 half_open_lifetime: float = 30.0) -> None:
        super().__init__()
        self.config = config
        self.cookie_threshold = cookie_threshold
        self.max_half_open = max_half_open
        self.half_open_lifetime = half_open_lifetime
        self._secrets = [(0, os.urandom(32))]  # (version, secret), newest first, at most two
        self._half: dict[tuple[bytes, tuple], _HalfOpen] = {}

    @property
    def half_open(self) -> int:
        return len(self._half)

    def rotate_cookie_secret(self) -> None:
        version = (self._secrets[0][0] + 1) % 256
        self._secrets = [(version, os.urandom(32)), self._secrets[0]]

    def _cookie(self, version: int, secret: bytes, ni: bytes, addr: tuple, spi_i: bytes) -> bytes:
        ip = str(addr[0]).encode()
        return bytes((version,)) + hmac.new(secret, ni + b"|" + ip + b"|" + spi_i, "sha256").digest()[:COOKIE_SIZE - 1]

    def _cookie_ok(self, cookie: bytes, ni: bytes, addr: tuple, spi_i: bytes) -> bool:
        if len(cookie) != COOKIE_SIZE:
            return False
        for version, secret in self._secrets:
            if cookie[0] == version:
                return hmac.compare_digest(cookie, self._cookie(version, secret, ni, addr, spi_i))
        return False

    def expire(self, now: float) -> None:
        """Forget half-open SAs older than ``half_open_lifetime`` (the shell calls this on a timer)."""
        for k in [k for k, h in self._half.items() if now - h.created > self.half_open_lifetime]:
            del self._half[k]

    def established(self, spi_i: bytes, peer: tuple) -> None:
        """The next exchange finished (or failed): the SA is no longer half-open."""
        self._half.pop((spi_i, peer), None)

    def receive_datagram(self, data: bytes, addr: tuple, now: float, local: tuple | None = None) -> None:
        """``local``: the (address, port) the datagram arrived on, for NAT detection."""
        try:
            msg = decode_message(data)
        except UnsupportedCriticalPayload as e:
            self._critical(data, addr, e.payload_type)
            return
        except WireError:
            return  # unauthenticated garbage: dropped (the shell counts and rate-limits logs)
        h = msg.header
        if h.response or not h.initiator:
            return
        if h.exchange == ExchangeType.IKE_SA_INIT and h.message_id == 0 and h.spi_r == ZERO_SPI:
            self._on_init(msg, bytes(data), addr, now, local)
        elif h.exchange == ExchangeType.IKE_INTERMEDIATE and h.message_id == 1:
            self._on_intermediate(msg, bytes(data), addr)

    def _critical(self, data: bytes, addr: tuple, payload_type: int) -> None:
        """RFC 7296 §2.5: a request with an unknown critical payload is answered with
        UNSUPPORTED_CRITICAL_PAYLOAD naming the type (stateless; IKE_SA_INIT requests only,
        later exchanges are protected and their engine answers)."""
        h = decode_header(data)[0]
        if h.exchange == ExchangeType.IKE_SA_INIT and h.initiator and not h.response and h.message_id == 0:
            self._reply(h, addr, (Notify(0, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, b"", bytes((payload_type,))),))

    def _reply(self, h: Header, addr: tuple, payloads: tuple) -> bytes:
        # an error or COOKIE answer keeps SPIr zero: no IKE SA exists (RFC 7296 §2.6, §3.1)
        out = encode_message(Header(h.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlags.RESPONSE, 0), payloads)
        self._out.append((out, addr))
        return out

    def _on_init(self, msg, data: bytes, addr: tuple, now: float, local: tuple | None) -> None:
        h = msg.header
        ni, ke, sa = msg.get(Nonce), msg.get(KeyExchange), msg.get(SecurityAssociation)
        if ni is None or ke is None or sa is None or not 16 <= len(ni.data) <= 256:
            return  # RFC 7296 §2.10 nonce size; a request without SA/KE/Nonce is not answered
        old = self._half.get((h.spi_i, addr))
        if old is not None:
            if old.request == data or old.ni == ni.data:
                self._out.append((old.response, addr))  # retransmission (§2.1)
            return
        if len(self._half) >= self.cookie_threshold:
            cookie = _notify(msg, NotifyType.COOKIE)
            if cookie is None or not self._cookie_ok(cookie.data, ni.data, addr, h.spi_i):
                version, secret = self._secrets[0]
                self._reply(h, addr, (Notify(0, NotifyType.COOKIE, b"", self._cookie(version, secret, ni.data, addr, h.spi_i)),))
                self._events.append(CookieDemanded(addr))
                return
        if len(self._half) >= self.max_half_open:
            return
        chosen = _choose(self.config, sa)
        if isinstance(chosen, str):
            self._reply(h, addr, (Notify(0, NotifyType.NO_PROPOSAL_CHOSEN),))
            self._events.append(SaInitFailed(addr, h.spi_i, chosen))
            return
        chosen_sa, group, add = chosen
        if ke.group != group:
            self._reply(h, addr, (Notify(0, NotifyType.INVALID_KE_PAYLOAD, b"", int(group).to_bytes(2, "big")),))
            return
        try:
            my_ke, secret = respond(group, ke.data)
        except WireError as e:
            self._reply(h, addr, (Notify(0, NotifyType.INVALID_SYNTAX),))
            self._events.append(SaInitFailed(addr, h.spi_i, f"bad key share: {e.reason}"))
            return
        spi_r, nr = os.urandom(8), os.urandom(NONCE_SIZE)
        keys = derive_ike_keys(self.config.suite, ni.data, nr, secret, h.spi_i, spi_r)
        payloads = [chosen_sa, KeyExchange(group, my_ke), Nonce(nr)]
        if add:
            payloads.append(Notify(0, NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        payloads += self.config.hash_notify()
        ppk = self.config.ppk and _notify(msg, NotifyType.USE_PPK) is not None
        if ppk:  # RFC 8784 §3: only in answer to the initiator's
            payloads.append(Notify(0, NotifyType.USE_PPK))
        nat = None
        if local is not None:
            nat = detect(msg.all(Notify), h.spi_i, ZERO_SPI, local, addr, initiator=False)
            if nat is not None:  # RFC 7296 §2.23: answered in kind
                payloads += nat_notifies(h.spi_i, spi_r, local, addr)
        response = encode_message(Header(h.spi_i, spi_r, ExchangeType.IKE_SA_INIT, HeaderFlags.RESPONSE, 0), payloads)
        self._out.append((response, addr))
        half = _HalfOpen(addr, spi_r, ni.data, nr, data, response, keys, int(group), bool(add), now, _kwa_of(chosen_sa), nat,
                         ppk=ppk)
        self._half[(h.spi_i, addr)] = half
        if not add:
            self._events.append(SaInitEstablished(addr, h.spi_i, spi_r, ni.data, nr, data, response, keys, (int(group),),
                                                  kwa=half.kwa, nat=nat, ppk=ppk))

    def _on_intermediate(self, msg, data: bytes, addr: tuple) -> None:
        h = msg.header
        half = self._half.get((h.spi_i, addr))
        if half is None or half.spi_r != h.spi_r or not half.mlkem:
            return
        if half.intermediate_request:
            if data == half.intermediate_request:
                self._out.append((half.intermediate_response, addr))
            return
        try:
            inner = unprotect(data, SkCipher.for_sender(half.keys, initiator=True))
        except WireError:
            return  # not from the peer that holds the keys: dropped
        ke = inner.get(KeyExchange)
        if ke is None or ke.group != KeyExchangeMethod.ML_KEM_768:
            return self._refuse_intermediate(half, h, addr, "IKE_INTERMEDIATE without the ML-KEM-768 KE")
        try:
            ct, secret = respond(KeyExchangeMethod.ML_KEM_768, ke.data)
        except WireError as e:
            return self._refuse_intermediate(half, h, addr, e.reason)
        out_h = Header(h.spi_i, half.spi_r, ExchangeType.IKE_INTERMEDIATE, HeaderFlags.RESPONSE, 1)
        response = protect(out_h, (KeyExchange(KeyExchangeMethod.ML_KEM_768, ct),), SkCipher.for_message(half.keys, out_h))
        half.intermediate_request, half.intermediate_response = data, response
        before = half.keys
        half.keys = update_ike_keys(half.keys, secret, half.ni, half.nr, h.spi_i, half.spi_r)
        self._out.append((response, addr))
        self._events.append(SaInitEstablished(addr, h.spi_i, half.spi_r, half.ni, half.nr, half.request, half.response,
                                              half.keys, (half.group, int(KeyExchangeMethod.ML_KEM_768)),
                                              (data, response), before, half.kwa, half.nat, half.ppk))

    def _refuse_intermediate(self, half: _HalfOpen, h: Header, addr: tuple, reason: str) -> None:
        out_h = Header(h.spi_i, half.spi_r, ExchangeType.IKE_INTERMEDIATE, HeaderFlags.RESPONSE, 1)
        self._out.append((protect(out_h, (Notify(0, NotifyType.INVALID_SYNTAX),), SkCipher.for_message(half.keys, out_h)), addr))
        self._half.pop((h.spi_i, addr), None)
        self._events.append(SaInitFailed(addr, h.spi_i, reason))


__all__ = ["SaInitConfig", "SaInitInitiator", "SaInitResponder"]
