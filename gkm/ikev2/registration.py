"""GSA_AUTH (RFC 9838 §2.3.1): a member's registration on a new IKE SA, both roles, sans-I/O.
It continues from :class:`~.events.SaInitEstablished` (IKE_SA_INIT [+ IKE_INTERMEDIATE]).

::

    GM   HDR, SK{IDi, [CERT+], AUTH, IDg, [N(GROUP_SENDER)]}           -->
    GCKS                   <--  HDR, SK{IDr, [CERT+], AUTH, GSA, KD, [N(USE_TRANSPORT_MODE)]}
                           <--  HDR, SK{IDr, [CERT+], AUTH, N(error)}    group errors
                           <--  HDR, SK{N(AUTHENTICATION_FAILED)}        the GM did not authenticate

AUTH (:mod:`.auth`): PSK (method 2) or RFC 7427 signatures (method 14), both covering IntAuth
(:mod:`.intauth`).  Message ID: 1, or 1 + the number of IKE_INTERMEDIATE exchanges.

Identities, as GDOI does it (:func:`gkm.gdoi.pull.peer_identity`): the identity the GCKS
authorizes is the one bound to the key that authenticated the member (the verified
certificate's subject, or the owner of the PSK the AUTH was made with, looked up by IDi),
checked with ``GroupPolicy.authorizes`` and the key server's ``admit`` hook; the member checks
the GCKS's identity with its ``accepts_key_server`` (``MemberGroup.accepts_key_server``).

Failures end the exchange on both sides with a reason: the GCKS answers AUTHENTICATION_FAILED
(alone, RFC 7296 §2.21.2), INVALID_GROUP_ID, AUTHORIZATION_FAILED (also a GROUP_SENDER
request from an identity no TEK lets send), NO_PROPOSAL_CHOSEN (the group's ``mlkem =
"required"`` and the IKE SA was made without ML-KEM-768: RFC 9838 §2.3.1, a member that cannot
support the group's security policy; ``docs/decisions/g-ikev2-registration.md``), INVALID_SYNTAX, or TEMPORARY_FAILURE (the keys
could not be read or recorded: RFC 9838's REGISTRATION_FAILED has no number in the RFC text,
:mod:`.constants`).  The member that cannot accept the GCKS (AUTH, identity) tells it in an
INFORMATIONAL request (AUTHENTICATION_FAILED), which the GCKS answers and reports
(:class:`~.events.GsaPeerRefused`); one that cannot use the group's policy tells it in
GSA_REGISTRATION with IDg and NO_PROPOSAL_CHOSEN (RFC 9838 §2.3.1), and the GCKS reports that
the member left (:class:`~.events.GsaMemberLeft`: it must remove it from the group).

GSA_REGISTRATION (§2.3.2), both roles: another group (or the same again) over an IKE SA whose
GSA_AUTH authenticated the member, for that identity, checked as GSA_AUTH checks it
(:class:`GsaRegistrationInitiator`; the GCKS side in :class:`GsaAuthResponder`)::

    GM   HDR, SK{IDg, [N(GROUP_SENDER)]}  -->   <--  HDR, SK{GSA, KD, [N]}  or  HDR, SK{N(error)}
    GM   HDR, SK{IDg, N(error)}           -->   <--  HDR, SK{}              (the member leaves)

Unauthenticated input (no such IKE SA, SK integrity failure) is dropped without a trace; a
byte-identical retransmitted request gets the stored response (no second enrollment).

Addresses (RFC 7296 §2.23, §2.11): the GCKS takes a member's GSA_AUTH request from another
address or port than its IKE_SA_INIT (a member that floated to UDP 4500, a NAT that changed
its mapping) once the request's integrity verified, and the SA's peer is from then on that
address; a retransmission of it is answered where it came from.  Other requests (the
INFORMATIONAL after it) come from the SA's peer.

Group commit (as GDOI's GROUPKEY-PULL): nothing changes before the member's AUTH verified, and
a registration that passed its checks (group, authorization, ``admit``, sender, ML-KEM) waits
for :meth:`GsaAuthResponder.commit`, which the shell calls after feeding a burst of datagrams:
it enrolls every waiting member (:meth:`~gkm.gdoi.provider.GroupKeysProvider.enroll`, its
Sender-IDs, GSA and KD) in one durable store commit (``keys.batch()``) and only then answers
them, in the order they came, so no key is on the wire before it is durable.  An exception
inside the batch undoes all of it; the waiting registrations are then enrolled one commit each,
so one that fails (a group this IKE SA cannot carry, the store) is refused alone
(TEMPORARY_FAILURE).  A copy of a request that waits is answered with it after the commit.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from cryptography import x509

from gkm.gdoi.events import MemberRefused, MemberRegistered, Registered
from gkm.gdoi.phase1 import ike_identity, load_certificate
from gkm.gdoi.provider import Enrollment, GroupKeysProvider, StaleKeys
from gkm.gdoi.pull import member_key
from gkm.ike.config import Identity as WireId
from policy.identity import Decision
from policy import model
from policy.model import GroupPolicy, Identity

from . import auth as A
from .constants import AuthMethod, CertEncoding, ExchangeType, HeaderFlags, IdType, KeyExchangeMethod, NotifyType
from .errors import WireError
from .events import (GsaMemberLeft, GsaPeerRefused, GsaRegistered, GsaRegistrationFailed, Ikev2Event,
                     SaInitEstablished)
from .gsa import GroupSa, KeyDownload
from .gsa_map import (
    SENDER_ID_BITS, MappingError, group_payloads, may_send, needs_sender_ids, read_group, registration_kwa, rekey_sa_for,
    transport_mode, unicast_gsk_w,
    unicast_kwa,
)
from .inband import KeptSa, inband_kwa
from .intauth import intauth_for
from .message import Header, decode_message
from .payloads import Authentication, Certificate, IdGroup, IdInitiator, IdResponder, Notify
from .rekey_sa import RekeySa
from .sk import SkCipher, protect, unprotect

log = logging.getLogger("gkm.ikev2")

__all__ = ["MemberAuthConfig", "GcksAuthConfig", "GsaAuthInitiator", "GsaRegistrationInitiator", "GsaAuthResponder", "member_auth_config", "gcks_auth_config"]

Credential = A.PskAuth | A.CertAuth


def _name(n: int) -> str:
    return NotifyType(n).name if n in NotifyType._value2member_map_ else str(n)


def _ids(ident: WireId, cls):
    return cls(ident.type, ident.data)


def _certs(cred: Credential) -> tuple:
    if isinstance(cred, A.CertAuth):
        return tuple(Certificate(CertEncoding.X509_SIGNATURE, d) for d in cred.credential.der_chain)
    return ()


def _make_auth(cred: Credential, prf_id: int, octets: bytes, psk: bytes | None = None) -> Authentication:
    if isinstance(cred, A.CertAuth):
        return Authentication(AuthMethod.DIGITAL_SIGNATURE, A.sign(cred.credential.private_key, octets))
    return Authentication(AuthMethod.PSK, A.psk_auth(prf_id, psk if psk is not None else cred.secret, octets))


def _host(addr: Any) -> str:
    return str(addr[0] if isinstance(addr, tuple) else addr)


def _address(addr: Any):
    try:
        return ipaddress.ip_address(_host(addr))
    except ValueError:
        return None


def _has_mlkem(sa: SaInitEstablished) -> bool:
    """The IKE SA's keys include the RFC 9370 ML-KEM-768 additional key exchange."""
    return KeyExchangeMethod.ML_KEM_768 in sa.methods


def _methods(sa: SaInitEstablished) -> str:
    return " + ".join(KeyExchangeMethod(m).name if m in KeyExchangeMethod._value2member_map_ else str(m)
                      for m in sa.methods) or "none"


def describe_id(p) -> str:
    return A.describe(WireId(int(p.id_type), bytes(p.data)))


def _check_peer_auth(msg, id_payload, prf_id: int, octets: bytes, *, psk: bytes | None,
                     anchors: tuple, when: datetime, addr: Any) -> tuple[Identity, x509.Certificate | None]:
    """Verify the peer's AUTH; returns the identity bound to the key that made it, and the
    certificate that key came in (None with a PSK)."""
    au = msg.get(Authentication)
    wire_id = WireId(int(id_payload.id_type), bytes(id_payload.data))
    if au.method == AuthMethod.PSK:
        if psk is None:
            raise A.AuthFailed(f"no pre-shared key for {describe_id(id_payload)}")
        if not A.compare(A.psk_auth(prf_id, psk, octets), au.data):
            raise A.AuthFailed(f"AUTH of {describe_id(id_payload)} does not verify with its pre-shared key")
        try:
            return Identity.from_id_payload(wire_id.type, wire_id.data, _address(addr)), None
        except ValueError as e:
            raise A.AuthFailed(str(e)) from None
    if au.method == AuthMethod.DIGITAL_SIGNATURE:
        certs = [c.data for c in msg.all(Certificate) if c.encoding == CertEncoding.X509_SIGNATURE]
        leaf = A.verify_certificate(certs, wire_id, anchors, when)
        try:
            key = leaf.public_key()
        except Exception as e:  # UnsupportedAlgorithm: a key type cryptography does not know
            raise A.AuthFailed(f"certificate key not usable: {e}") from None
        A.verify_signature(key, au.data, octets)
        return Identity.from_x509_name(leaf.subject, _address(addr)), leaf
    raise A.AuthFailed(f"AUTH method {int(au.method)} is not supported (PSK or RFC 7427 signatures)")


class _Engine:
    def __init__(self) -> None:
        self._out: list[tuple[bytes, Any]] = []
        self._events: list[Ikev2Event | MemberRegistered | MemberRefused] = []

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.pop(0) if self._events else None


# ------------------------------------------------------------------------------------ member


@dataclass(frozen=True)
class MemberAuthConfig:
    group_id: int
    credential: Credential
    accepts_key_server: Callable[[Identity], Decision]  # MemberGroup.accepts_key_server
    trust_anchors: tuple[x509.Certificate, ...] = ()
    sender: bool = False  # send GROUP_SENDER: install the TEKs outbound too
    wall_time_offset: float = 0.0


class GsaAuthInitiator(_Engine):
    """The member's GSA_AUTH on one established IKE SA."""

    exchange = ExchangeType.GSA_AUTH

    def __init__(self, config: MemberAuthConfig, sa: SaInitEstablished) -> None:
        super().__init__()
        self.config = config
        self.sa = sa
        self.mid = 1 + len(sa.intermediate) // 2
        self._intauth = intauth_for(sa.intermediate, sa.intermediate_keys).octets(self.mid)
        self._state = "idle"
        self._request = b""
        #: the GCKS's identity once authenticated (GSA_REGISTRATION on this SA starts from it)
        self.gcks: Identity | None = None
        self.peer_mid = 0  # the GCKS's next request's Message ID on the IKE SA

    @property
    def state(self) -> str:
        return self._state

    @property
    def next_mid(self) -> int:
        """The Message ID of this member's next request on the IKE SA."""
        return self.mid + 1

    def _header(self, exchange: int, mid: int, response: bool = False) -> Header:
        flags = HeaderFlags.INITIATOR | (HeaderFlags.RESPONSE if response else 0)
        return Header(self.sa.spi_i, self.sa.spi_r, exchange, flags, mid)

    def _idg(self) -> list:
        c = self.config
        payloads = [IdGroup(IdType.KEY_ID, c.group_id.to_bytes(4, "big"))]
        if c.sender:
            payloads.append(Notify(0, NotifyType.GROUP_SENDER))
        return payloads

    def _send(self, payloads) -> None:
        h = self._header(self.exchange, self.mid)
        self._request = protect(h, tuple(payloads), SkCipher.for_message(self.sa.keys, h))
        self._state = "sent"
        self._out.append((self._request, self.sa.peer))

    def start(self, now: float) -> None:
        c, sa = self.config, self.sa
        ident = c.credential.id if isinstance(c.credential, A.CertAuth) else c.credential.identity
        idi = _ids(ident, IdInitiator)
        octets = A.signed_octets(sa.message1, sa.nr, sa.keys, True, idi.encode(), self._intauth)
        self._send([idi, *_certs(c.credential), _make_auth(c.credential, sa.keys.suite.prf, octets), *self._idg()])

    def retransmit(self) -> None:
        if self._state == "sent":
            self._out.append((self._request, self.sa.peer))

    def _fail(self, reason: str, notify: int | None = None, tell: int | None = None) -> None:
        self._state = "failed"
        if tell == NotifyType.NO_PROPOSAL_CHOSEN:
            # RFC 9838 §2.3.1: a policy the member cannot use is told in GSA_REGISTRATION with
            # IDg (the GCKS removes the member from the group)
            h = self._header(ExchangeType.GSA_REGISTRATION, self.next_mid)
            payloads = (IdGroup(IdType.KEY_ID, self.config.group_id.to_bytes(4, "big")), Notify(0, tell))
            self._out.append((protect(h, payloads, SkCipher.for_message(self.sa.keys, h)), self.sa.peer))
        elif tell is not None:  # INFORMATIONAL request telling the GCKS why (RFC 7296 §2.21.2)
            h = self._header(ExchangeType.INFORMATIONAL, self.next_mid)
            self._out.append((protect(h, (Notify(0, tell),), SkCipher.for_message(self.sa.keys, h)), self.sa.peer))
        log.warning("g-ikev2 member group %s: registration with %r failed: %s", self.config.group_id, self.sa.peer, reason)
        self._events.append(GsaRegistrationFailed(self.config.group_id, self.sa.peer, reason, notify if notify is not None else tell))

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if addr != self.sa.peer or self._state != "sent":
            return
        try:
            h = decode_message(data).header
            if (h.exchange != self.exchange or not h.response or h.initiator or h.message_id != self.mid
                    or (h.spi_i, h.spi_r) != (self.sa.spi_i, self.sa.spi_r)):
                return
            msg = unprotect(data, SkCipher.for_sender(self.sa.keys, initiator=False))
        except WireError:
            return  # not from the holder of the keys (or broken in transit): a retransmission may follow
        self._on_response(msg, bytes(data), now)

    def _on_response(self, msg, data: bytes, now: float) -> None:
        c, sa = self.config, self.sa
        errors = [n for n in msg.all(Notify) if n.is_error]
        idr, au = msg.get(IdResponder), msg.get(Authentication)
        if idr is None or au is None:
            if errors:
                return self._fail(f"GCKS refused: {_name(errors[0].type)}", int(errors[0].type))
            return self._fail("GSA_AUTH response without IDr or AUTH", tell=NotifyType.INVALID_SYNTAX)
        octets = A.signed_octets(sa.message2, sa.ni, sa.keys, False, idr.encode(), self._intauth)
        psk = c.credential.secret if isinstance(c.credential, A.PskAuth) else None
        when = datetime.fromtimestamp(now + c.wall_time_offset, timezone.utc)
        try:
            if isinstance(c.credential, A.PskAuth) and au.method != AuthMethod.PSK:
                raise A.AuthFailed("the GCKS answered a PSK registration with a signature")
            gcks, _cert = _check_peer_auth(msg, idr, sa.keys.suite.prf, octets, psk=psk, anchors=c.trust_anchors, when=when,
                                           addr=sa.peer)
        except A.AuthFailed as e:
            return self._fail(f"GCKS not authenticated: {e.reason}", tell=NotifyType.AUTHENTICATION_FAILED)
        decision = c.accepts_key_server(gcks)
        if not decision.allowed:
            return self._fail(decision.reason, tell=NotifyType.AUTHENTICATION_FAILED)
        self.gcks = gcks
        self._take_group(msg, errors)

    def _take_group(self, msg, errors) -> None:
        """The group part of the answer (GSA_AUTH after the GCKS authenticated, GSA_REGISTRATION)."""
        c, sa, gcks = self.config, self.sa, self.gcks
        if errors:
            why = f"GCKS {gcks} refused: {_name(errors[0].type)}"
            if errors[0].type == NotifyType.NO_PROPOSAL_CHOSEN and not _has_mlkem(sa):
                # no SAg was sent: the one policy the GCKS can find lacking is this IKE SA's
                why += (": the group requires the ML-KEM-768 key exchange (RFC 9370) and this IKE SA "
                        f"was made without it ({_methods(sa)})")
            return self._fail(why, int(errors[0].type))
        gsa, kd = msg.get(GroupSa), msg.get(KeyDownload)
        if gsa is None or kd is None:
            return self._fail(f"{self.exchange.name} response without GSA or KD", tell=NotifyType.INVALID_SYNTAX)
        transport = any(n.type == NotifyType.USE_TRANSPORT_MODE for n in msg.all(Notify))
        try:
            got = read_group(c.group_id, gsa, kd, sa.keys, sender=c.sender, transport=transport, negotiated_kwa=sa.kwa)
        except MappingError as e:
            return self._fail(f"unusable group policy or keys: {e}", tell=NotifyType.NO_PROPOSAL_CHOSEN)
        self._state = "done"
        first = got.rekey_sa.initial_message_id if got.rekey_sa is not None else 0
        reg = Registered(c.group_id, got.teks, got.kek, first if got.kek is not None else None, None, sa.peer, gcks,
                         sa.spi_i + sa.spi_r, got.gap)
        log.info("g-ikev2 member group %s: registered with %s at %r (%s): %d TEK(s)%s", c.group_id, gcks, sa.peer,
                 self.exchange.name, len(got.teks), ", Rekey SA" if got.kek else ", rekeys in band")
        # no Rekey SA: the GCKS rekeys this member in band, over this IKE SA (RFC 9838 §2.4.2)
        self._events.append(GsaRegistered(reg, sa.spi_i, sa.spi_r, got.rekey_sa, got.signature, got.auth_key, got.key_path,
                                          got.sender_ids, ike=sa if got.kek is None else None, transport=transport,
                                          next_mid=self.mid + 1, peer_mid=self.peer_mid))


class GsaRegistrationInitiator(GsaAuthInitiator):
    """The member's GSA_REGISTRATION (RFC 9838 §2.3.2): ``config``'s group over an IKE SA on
    which an earlier GSA_AUTH (or GSA_REGISTRATION) authenticated the GCKS ``gcks``; ``mid``:
    this member's next request's Message ID on it.  Same events as :class:`GsaAuthInitiator`."""

    exchange = ExchangeType.GSA_REGISTRATION

    def __init__(self, config: MemberAuthConfig, sa: SaInitEstablished, mid: int, gcks: Identity,
                 peer_mid: int = 0) -> None:
        _Engine.__init__(self)
        self.config, self.sa, self.mid, self.gcks, self.peer_mid = config, sa, mid, gcks, peer_mid
        self._state = "idle"
        self._request = b""

    def start(self, now: float) -> None:
        self._send(self._idg())

    def _on_response(self, msg, data: bytes, now: float) -> None:
        self._take_group(msg, [n for n in msg.all(Notify) if n.is_error])


# ------------------------------------------------------------------------------------ GCKS


@dataclass(frozen=True)
class GcksAuthConfig:
    credential: Credential  # the GCKS's own: PSK (its IDr, the secret is each member's) or certificate
    psks: Mapping[WireId, bytes] = field(default_factory=dict, repr=False)  # member ID_KEY_ID -> secret
    trust_anchors: tuple[x509.Certificate, ...] = ()
    rekey_source: tuple[str, int] | None = None
    wall_time_offset: float = 0.0
    max_sas: int = 4096
    sa_lifetime: float = 60.0  # an established IKE SA waits this long for its GSA_AUTH


@dataclass(slots=True)
class _Sa:
    est: SaInitEstablished
    created: float
    mid: int
    intauth: bytes
    request: bytes = b""
    response: bytes = b""
    #: after GSA_AUTH: the member's next request's Message ID, its last request and our answer
    next_mid: int = 0
    last: tuple[bytes, bytes] = (b"", b"")
    #: the identity GSA_AUTH authenticated (None: it did not), its certificate
    identity: Identity | None = None
    cert: x509.Certificate | None = None
    inband_group: int | None = None  # the in-band group this IKE SA takes rekeys of
    peer: Any = None  # where the member is: IKE_SA_INIT's address until its GSA_AUTH verified
    #: the request whose registration waits for :meth:`GsaAuthResponder.commit` (b"": none)
    queued: bytes = b""


@dataclass(slots=True)
class _Queued:
    """A registration whose checks passed, waiting for :meth:`GsaAuthResponder.commit`: the
    store's part (enrollment, Sender-IDs, GSA and KD) and the answer come there."""

    s: _Sa
    data: bytes  # the request
    addr: Any
    now: float
    group: GroupPolicy
    identity: Identity
    sender: bool
    mine: tuple  # GSA_AUTH: our IDr, CERT, AUTH
    copies: list = field(default_factory=list)  # where copies of the request came from meanwhile


@dataclass(slots=True)
class _Enrolled:
    keys: Any  # GroupKeys
    enr: Enrollment
    gsa: GroupSa
    kd: KeyDownload
    transport: bool


class GsaAuthResponder(_Engine):
    """The GCKS side of every member's GSA_AUTH.  Feed it the IKE SAs its
    :class:`~.sa_init.SaInitResponder` established (:meth:`add_sa`), then datagrams, then
    :meth:`commit` before taking the outputs (registrations are answered there)."""

    def __init__(self, config: GcksAuthConfig, groups: Mapping[int, GroupPolicy], keys: GroupKeysProvider, *,
                 admit: Callable[[GroupPolicy, Identity, x509.Certificate | None], str | None] | None = None,
                 rekey_message_id: Callable[[GroupPolicy, bytes], int] | None = None) -> None:
        super().__init__()
        self.config = config
        self.groups = dict(groups)
        self.keys = keys
        #: the key server's own refusals after the group policy admitted a member (deny list...)
        self.admit = admit
        #: (group, Rekey SA SPI) -> the GSA_REKEY sender's current Message ID on that Rekey SA
        #: (GSA_INITIAL_MESSAGE_ID; ``RekeySender.message_id``); None: the KEK's current SEQ,
        #: which is that Message ID for msecd's group controller (gkm.ikev2.group_rekey)
        self.rekey_message_id = rekey_message_id
        self._sas: OrderedDict[tuple[bytes, bytes], _Sa] = OrderedDict()
        self.stats: Counter[str] = Counter()
        #: IKE SAs of members of in-band groups registered since the engine last took them
        #: (:class:`~.inband.InbandRekeyer`)
        self.kept: list[KeptSa] = []
        #: (SPIi, IKE_SA_INIT's address) of the IKE SAs whose GSA_AUTH was answered since the
        #: engine last took them (no longer half-open: ``SaInitResponder.established``)
        self.answered: list[tuple[bytes, Any]] = []
        self._queue: list[_Queued] = []  # registrations waiting for commit()

    def add_sa(self, est: SaInitEstablished, now: float) -> None:
        while len(self._sas) >= self.config.max_sas:
            self._sas.popitem(last=False)
            self.stats["evicted"] += 1
        mid = 1 + len(est.intermediate) // 2
        self._sas[(est.spi_i, est.spi_r)] = _Sa(est, now, mid, intauth_for(est.intermediate, est.intermediate_keys).octets(mid),
                                                peer=est.peer)

    def sa_peer(self, spi_i: bytes, spi_r: bytes) -> Any:
        """The address the IKE SA's IKE_SA_INIT came from (None: no such SA)."""
        s = self._sas.get((bytes(spi_i), bytes(spi_r)))
        return s.est.peer if s is not None else None

    def expire(self, now: float, keep: Callable[[bytes, bytes], bool] | None = None) -> None:
        """Forget IKE SAs older than ``sa_lifetime``, except those ``keep`` names (an in-band
        group's: GSA_REGISTRATION over them stays possible while they are kept)."""
        for k in [k for k, s in self._sas.items() if now - s.created > self.config.sa_lifetime
                  and not (keep is not None and s.inband_group is not None and keep(*k))]:
            del self._sas[k]

    @property
    def sa_count(self) -> int:
        return len(self._sas)

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        try:
            h = decode_message(data).header
        except WireError:
            self.stats["dropped"] += 1
            return
        s = self._sas.get((h.spi_i, h.spi_r))
        if s is None or h.response or not h.initiator:
            self.stats["dropped"] += 1
            return
        data = bytes(data)
        if h.exchange == ExchangeType.GSA_AUTH and h.message_id == s.mid:  # from anywhere (docstring)
            if s.queued:
                self._queued_copy(s, data, addr)
                return
            if s.request:
                if A.compare(s.request, data):
                    self._out.append((s.response, addr))  # retransmission: the same answer
                    self.stats["retransmitted"] += 1
                else:
                    self.stats["dropped"] += 1
                return
            try:
                msg = unprotect(data, SkCipher.for_sender(s.est.keys, initiator=True))
            except WireError:
                self.stats["dropped"] += 1
                return
            if addr != s.peer:
                self.stats["moved"] += 1
                log.info("g-ikev2 gcks: IKE SA %s: the member's GSA_AUTH came from %r (IKE_SA_INIT from %r)",
                         s.est.spi_i.hex(), addr, s.peer)
                s.peer = addr
            s.next_mid = s.mid + 1
            self._on_request(s, msg, data, addr, now)
        elif addr != s.peer:
            self.stats["dropped"] += 1
        elif h.exchange in (ExchangeType.INFORMATIONAL, ExchangeType.GSA_REGISTRATION) and s.request:
            # later requests on the IKE SA (RFC 7296 §2.1: one at a time, a copy of the last
            # one gets the last answer)
            if s.queued:
                self._queued_copy(s, data, addr)
                return
            if h.message_id == s.next_mid - 1 and s.last[0]:
                if A.compare(s.last[0], data):
                    self._out.append((s.last[1], addr))
                    self.stats["retransmitted"] += 1
                else:
                    self.stats["dropped"] += 1
                return
            if h.message_id != s.next_mid:
                self.stats["dropped"] += 1
                return
            try:
                msg = unprotect(data, SkCipher.for_sender(s.est.keys, initiator=True))
            except WireError:
                self.stats["dropped"] += 1
                return
            s.next_mid += 1
            if h.exchange == ExchangeType.INFORMATIONAL:
                self._on_informational(s, msg, data, addr)
            else:
                self._on_registration(s, msg, data, addr, now)
        else:
            self.stats["dropped"] += 1

    def _respond(self, s: _Sa, request: bytes, payloads: tuple) -> None:
        """Answer ``request``: the GSA_AUTH (Message ID ``s.mid``) or, after it, the later
        request with Message ID ``s.next_mid - 1``, in that exchange."""
        est = s.est
        h0 = decode_message(request).header
        h = Header(est.spi_i, est.spi_r, h0.exchange, HeaderFlags.RESPONSE, h0.message_id)
        response = protect(h, payloads, SkCipher.for_message(est.keys, h))
        if h0.exchange == ExchangeType.GSA_AUTH:
            s.request, s.response = request, response
            self.answered.append((est.spi_i, est.peer))
        else:
            s.last = (request, response)
        self._out.append((response, s.peer))

    def _refuse(self, s: _Sa, request: bytes, payloads: tuple, gid: int, identity: Identity | None, reason: str, notify: int,
                cause: str = "not_authorized") -> None:
        self.stats["refused"] += 1
        log.warning("g-ikev2 gcks: refused %s from %r for group %s: %s (%s)", identity, s.peer, gid, reason, _name(notify))
        self._respond(s, request, payloads + (Notify(0, notify),))
        self._events.append(MemberRefused(gid, identity, s.peer, reason, int(notify), cause))

    def _on_request(self, s: _Sa, msg, data: bytes, addr: Any, now: float) -> None:
        c, est = self.config, s.est
        idi, au, idg = msg.get(IdInitiator), msg.get(Authentication), msg.get(IdGroup)
        if idi is None or au is None or idg is None:
            return self._refuse(s, data, (), 0, None, "GSA_AUTH request without IDi, AUTH or IDg", NotifyType.INVALID_SYNTAX)
        gid = int.from_bytes(idg.data, "big") if idg.id_type == IdType.KEY_ID and len(idg.data) == 4 else 0
        octets = A.signed_octets(est.message1, est.nr, est.keys, True, idi.encode(), s.intauth)
        psk = c.psks.get(WireId(int(idi.id_type), bytes(idi.data))) if au.method == AuthMethod.PSK else None
        when = datetime.fromtimestamp(now + c.wall_time_offset, timezone.utc)
        try:
            identity, cert = _check_peer_auth(msg, idi, est.keys.suite.prf, octets, psk=psk, anchors=c.trust_anchors,
                                              when=when, addr=addr)
        except A.AuthFailed as e:  # RFC 7296 §2.21.2: the notification alone, no IDr / AUTH
            return self._refuse(s, data, (), gid, None, f"member {describe_id(idi)} not authenticated: {e.reason}",
                                NotifyType.AUTHENTICATION_FAILED)
        ident = c.credential.id if isinstance(c.credential, A.CertAuth) else c.credential.identity
        idr = _ids(ident, IdResponder)
        r_octets = A.signed_octets(est.message2, est.ni, est.keys, False, idr.encode(), s.intauth)
        mine = (idr, *_certs(c.credential), _make_auth(c.credential, est.keys.suite.prf, r_octets, psk))
        s.identity, s.cert = identity, cert
        self._join(s, msg, data, addr, now, gid, idg, mine)

    def _on_registration(self, s: _Sa, msg, data: bytes, addr: Any, now: float) -> None:
        """GSA_REGISTRATION (RFC 9838 §2.3.2): another group (or the same again) for the
        identity GSA_AUTH authenticated on this IKE SA; or, with an error notification, the
        member telling us it cannot use a group's policy or leaves it."""
        idg = msg.get(IdGroup)
        if s.identity is None:  # GSA_AUTH did not authenticate it: nothing to register
            return self._refuse(s, data, (), 0, None, "GSA_REGISTRATION on an IKE SA whose GSA_AUTH failed",
                                NotifyType.AUTHENTICATION_FAILED)
        if idg is None:
            return self._refuse(s, data, (), 0, s.identity, "GSA_REGISTRATION without IDg", NotifyType.INVALID_SYNTAX)
        gid = int.from_bytes(idg.data, "big") if idg.id_type == IdType.KEY_ID and len(idg.data) == 4 else 0
        errors = [n for n in msg.all(Notify) if n.is_error]
        if errors:
            self._respond(s, data, ())
            reason = f"the member left group {gid} (GSA_REGISTRATION with {_name(errors[0].type)})"
            log.warning("g-ikev2 gcks: %s at %r: %s", s.identity, addr, reason)
            self._events.append(GsaMemberLeft(gid, member_key(s.identity), s.identity, int(errors[0].type), reason))
            return
        self._join(s, msg, data, addr, now, gid, idg, ())

    def _join(self, s: _Sa, msg, data: bytes, addr: Any, now: float, gid: int, idg, mine: tuple) -> None:
        """The group part of a registration (GSA_AUTH after its AUTH verified, with ``mine``
        = our IDr, CERT, AUTH; GSA_REGISTRATION with nothing before GSA and KD)."""
        est, identity, cert = s.est, s.identity, s.cert
        group = self.groups.get(gid)
        if group is None:
            why = f"unknown group {gid}" if gid else f"IDg of type {int(idg.id_type)} with {len(idg.data)} bytes (need ID_KEY_ID, 4-octet group number)"
            return self._refuse(s, data, mine, gid, identity, why, NotifyType.INVALID_GROUP_ID)
        decision = group.authorizes(identity)
        if not decision.allowed:
            return self._refuse(s, data, mine, gid, identity, decision.reason, NotifyType.AUTHORIZATION_FAILED)
        refusal = self.admit(group, identity, cert) if self.admit is not None else None
        if refusal is not None:
            return self._refuse(s, data, mine, gid, identity, f"group {group.label}: may not join: {refusal}", NotifyType.AUTHORIZATION_FAILED)
        sender = any(n.type == NotifyType.GROUP_SENDER for n in msg.all(Notify))
        if sender and not may_send(group, identity):
            return self._refuse(s, data, mine, gid, identity, f"group {group.label}: {identity} may not send", NotifyType.AUTHORIZATION_FAILED)
        if group.mlkem == "required" and not _has_mlkem(est):
            # RFC 9838 §2.3.1: a member that cannot support the group's security policy gets
            # NO_PROPOSAL_CHOSEN (RFC 9370 §2.2.2: the notify for key exchanges local policy refuses)
            return self._refuse(s, data, mine, gid, identity,
                                f"group {group.label} requires the ML-KEM-768 key exchange (RFC 9370): the member's "
                                f"IKE SA was made without it ({_methods(est)})", NotifyType.NO_PROPOSAL_CHOSEN, "mlkem_required")
        if group.inband_rekey and s.inband_group not in (None, gid):
            # GSA_INBAND_REKEY names no group: one IKE SA takes the in-band rekeys of one group
            return self._refuse(s, data, mine, gid, identity,
                                f"group {group.label} is rekeyed in band and this IKE SA already takes group "
                                f"{s.inband_group}'s in-band rekeys: register it on an IKE SA of its own",
                                NotifyType.TEMPORARY_FAILURE, "not_admitted")
        # the store's part waits for commit(): one durable commit for the burst (group commit)
        s.queued = data
        self._queue.append(_Queued(s, data, addr, now, group, identity, sender, mine))

    def _queued_copy(self, s: _Sa, data: bytes, addr: Any) -> None:
        """A request on ``s`` while its registration waits for :meth:`commit`: a copy of it is
        answered after the commit (where it came from), anything else dropped."""
        q = next((q for q in self._queue if q.s is s), None) if A.compare(s.queued, data) else None
        if q is not None:
            q.copies.append(addr)
        else:
            self.stats["dropped"] += 1

    @property
    def commit_pending(self) -> int:
        """Registrations waiting for :meth:`commit`."""
        return len(self._queue)

    def commit(self, now: float) -> None:
        """The durable step the shell performs after feeding a burst of datagrams: enroll the
        members whose registration was checked since, in one store commit
        (:meth:`~gkm.gdoi.provider.GroupKeysProvider.batch`), then answer them and report them,
        in the order their requests came (nothing is on the wire before it is durable).  Any
        exception inside the batch undoes all of it: then each registration is enrolled in a
        commit of its own, so that only the one that fails (a group this IKE SA cannot carry,
        keys that changed twice, the store) is refused, with TEMPORARY_FAILURE."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        self.stats["commits"] += 1
        results: list[_Enrolled | Exception]
        try:
            with self.keys.batch():
                results = [self._enroll(q) for q in queue]
        except Exception as e:
            if len(queue) == 1:
                results = [e]
            else:
                self.stats["batches_undone"] += 1
                log.warning("g-ikev2 gcks: a commit of %d registrations was undone (%r): enrolling them one by one",
                            len(queue), e)
                results = [self._enroll_alone(q) for q in queue]
        for q, r in zip(queue, results):
            q.s.queued = b""
            if isinstance(r, _Enrolled):
                self._answer(q, r)
            else:
                self._not_enrolled(q, r)
            response = q.s.response if q.s.request == q.data else q.s.last[1]  # GSA_AUTH's or a later one's
            for addr in q.copies:  # a copy of the request that came meanwhile: the same answer
                self._out.append((response, addr))
                self.stats["retransmitted"] += 1

    def _enroll_alone(self, q: _Queued) -> _Enrolled | Exception:
        try:
            with self.keys.batch():
                return self._enroll(q)
        except Exception as e:
            return e

    def _enroll(self, q: _Queued) -> _Enrolled:
        """The store's part of one registration, inside the caller's ``keys.batch()`` (an
        exception here, a group this IKE SA cannot carry included, undoes the batch)."""
        group, est, sender = q.group, q.s.est, q.sender
        wall = int(q.now + self.config.wall_time_offset)
        transport = transport_mode(group)
        for attempt in (1, 2):
            keys = self.keys.peek(group, wall)
            try:  # StaleKeys: raised before enroll changed anything
                enr = self.keys.enroll(group, keys, member_key(q.identity), _host(q.addr), wall, "g-ikev2")
                break
            except StaleKeys:
                if attempt == 2:
                    raise
        if group.inband_rekey:  # no Rekey SA: rekeys over this IKE SA (.inband)
            kwa, rekey_sa, enr = inband_kwa(est.kwa), None, Enrollment(None)
        else:
            kwa = registration_kwa(group, enr, est.kwa)
            rekey_sa = self._rekey_sa(group, keys, unicast_kwa(group, enr), wall, enr.seq)
        # §2.5.1: one new Sender-ID per sender registration, durable with it
        sids = self.keys.allocate_sender_ids(group, 1, 1 << SENDER_ID_BITS) if sender and needs_sender_ids(group) else ()
        gsa, kd = group_payloads(group, keys, enr, unicast_gsk_w(est.keys, kwa), kwa, wall, rekey_sa, sids)
        return _Enrolled(keys, enr, gsa, kd, transport)

    def _not_enrolled(self, q: _Queued, e: Exception) -> None:
        s, group, identity = q.s, q.group, q.identity
        self.stats["keys_unavailable"] += 1
        if isinstance(e, MappingError):  # the group cannot be sent over this IKE SA (configuration)
            log.warning("g-ikev2 gcks: group %s: %s, %s refused", group.group_id, e, identity)
            why = f"group not expressible here: {e}"
        else:  # store, signing key trouble: ours, not the member's
            log.error("g-ikev2 gcks: group %s: keys unavailable, %s refused: %r", group.group_id, identity, e)
            why = f"keys unavailable: {e}"
        self._refuse(s, q.data, q.mine, group.group_id, identity, why, NotifyType.TEMPORARY_FAILURE)

    def _answer(self, q: _Queued, r: _Enrolled) -> None:
        s, group, identity, gid = q.s, q.group, q.identity, q.group.group_id
        extra = (Notify(0, NotifyType.USE_TRANSPORT_MODE),) if r.transport else ()
        self._respond(s, q.data, q.mine + (r.gsa, r.kd) + extra)
        if group.inband_rekey:
            self.kept.append(KeptSa(s.est, gid, member_key(identity), identity, frozenset(t.spi for t in r.keys.teks),
                                    address=s.peer))
            s.inband_group = gid
        self.stats["registered"] += 1
        log.info("g-ikev2 gcks: %s from %r registered in group %s", identity, q.addr, gid)
        self._events.append(MemberRegistered(gid, identity, q.addr, tuple(t.spi for t in r.keys.teks), r.enr.lkh_update))

    def _rekey_sa(self, group: GroupPolicy, keys, kwa: int, wall: int, seq: int | None) -> RekeySa | None:
        if group.kek is None or keys.kek is None:
            return None
        first = self.rekey_message_id(group, bytes(keys.kek.spi)) if self.rekey_message_id is not None else int(seq or 0)
        return rekey_sa_for(group, keys, kwa, wall, self.config.rekey_source, first)

    def _on_informational(self, s: _Sa, msg, data: bytes, addr: Any) -> None:
        self._respond(s, data, ())
        for n in msg.all(Notify):
            if n.is_error:
                reason = f"the member refused our GSA_AUTH answer: {_name(n.type)}"
                log.warning("g-ikev2 gcks: %r: %s", addr, reason)
                self._events.append(GsaPeerRefused(addr, s.est.spi_i, int(n.type), reason))


# ------------------------------------------------------------------------------------ from policy


def member_auth_config(group: model.MemberGroup, *, sender: bool = False, **kw: Any) -> MemberAuthConfig:
    """A member group's GSA_AUTH configuration from its policy (files read here, as
    :func:`gkm.gdoi.phase1.phase1_config` does for GDOI)."""
    cred = group.credentials
    if isinstance(cred, model.PskCredential):
        auth, anchors = A.PskAuth(WireId.key_id(cred.identity.encode()), cred.secret.reveal()), ()
    else:
        credential, anchors = load_certificate(cred)
        auth = A.CertAuth(credential)
    return MemberAuthConfig(group.group_id, auth, group.accepts_key_server, anchors, sender, **kw)


def gcks_auth_config(settings: model.KeyServerSettings, **kw: Any) -> GcksAuthConfig:
    """The GCKS's GSA_AUTH configuration from the key server's policy: its certificate if it has
    one (else it answers PSK members under ``settings.identity`` or its first listen address),
    the members' PSKs by their ID_KEY_ID."""
    psks = {WireId.key_id(p.identity.encode()): p.secret.reveal() for p in settings.psks}
    anchors: tuple = ()
    if settings.certificate is not None:
        credential, anchors = load_certificate(settings.certificate)
        ident = ike_identity(settings.identity) if settings.identity is not None else None
        return GcksAuthConfig(A.CertAuth(credential, ident), psks, anchors, **kw)
    if settings.identity is not None:
        ident = ike_identity(settings.identity)
    else:
        ident = WireId.ip(str(settings.listen[0]))
    return GcksAuthConfig(A.PskAuth(ident, b""), psks, anchors, **kw)
