"""The GCKS side of G-IKEv2 registration (RFC 9838 §2.3), sans-I/O: GSA_AUTH on every IKE SA its
:class:`~.sa_init.SaInitResponder` established, then GSA_REGISTRATION and INFORMATIONAL on it;
the exchanges, identities, failures and the group commit are described in :mod:`.registration`
(both roles share its helpers), the decisions in ``docs/decisions/g-ikev2-registration.md``."""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from cryptography import x509

from gkm.gdoi.events import MemberRefused, MemberRegistered
from gkm.gdoi.phase1 import ike_identity, load_certificate
from gkm.gdoi.provider import Enrollment, GroupKeysProvider, StaleKeys
from gkm.gdoi.pull import member_key
from gkm.ike.config import Identity as WireId
from policy import model
from policy.model import GroupPolicy, Identity

from . import auth as A
from .constants import AuthMethod, ExchangeType, HeaderFlags, IdType, NotifyType
from .errors import WireError
from .events import GsaMemberLeft, GsaPeerRefused, SaInitEstablished
from .gsa import GroupSa, KeyDownload
from .gsa_map import (
    SENDER_ID_BITS, MappingError, group_payloads, may_send, needs_sender_ids, registration_kwa, rekey_sa_for,
    transport_mode, unicast_gsk_w, unicast_kwa,
)
from .inband import KeptSa, inband_kwa
from .intauth import intauth_for
from .keys import ppk_update
from .message import Header, decode_message
from .payloads import Authentication, IdGroup, IdInitiator, IdResponder, Notify
from .ppk import decode_ppk_id
from .outputs import Outputs
from .registration import (Credential, _check_peer_auth, _certs, _has_mlkem, _host, _ids, _make_auth,
                           _methods, _name, _notify_of, describe_id)
from .rekey_sa import RekeySa
from .sk import SkCipher, protect, unprotect

log = logging.getLogger("gkm.ikev2")

__all__ = ["GcksAuthConfig", "GsaAuthResponder", "gcks_auth_config"]


@dataclass(frozen=True)
class GcksAuthConfig:
    credential: Credential  # the GCKS's own: PSK (its IDr, the secret is each member's) or certificate
    psks: Mapping[WireId, bytes] = field(default_factory=dict, repr=False)  # member ID_KEY_ID -> secret
    trust_anchors: tuple[x509.Certificate, ...] = ()
    rekey_source: tuple[str, int] | None = None
    wall_time_offset: float = 0.0
    max_sas: int = 4096
    sa_lifetime: float = 60.0  # an established IKE SA waits this long for its GSA_AUTH
    #: post-quantum preshared keys (RFC 8784) by PPK_ID (the octets after its type) -> secret
    ppks: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)


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
    #: GSA_AUTH mixed this PPK_ID's PPK into ``est.keys`` (RFC 8784; None: no PPK)
    ppk: bytes | None = None


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


class GsaAuthResponder(Outputs):
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
            if self._answered_again(s, s.request, s.response, data, addr):
                return
            msg = self._open(s, data)
            if msg is None:
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
            if (s.queued or h.message_id == s.next_mid - 1) and \
                    self._answered_again(s, s.last[0], s.last[1], data, addr):
                return
            if h.message_id != s.next_mid:
                self.stats["dropped"] += 1
                return
            msg = self._open(s, data)
            if msg is None:
                return
            s.next_mid += 1
            if h.exchange == ExchangeType.INFORMATIONAL:
                self._on_informational(s, msg, data, addr)
            else:
                self._on_registration(s, msg, data, addr, now)
        else:
            self.stats["dropped"] += 1

    def _answered_again(self, s: _Sa, request: bytes, response: bytes, data: bytes, addr: Any) -> bool:
        """``data`` is a request already taken on ``s``: waiting for the commit (answered after
        it), answered (``request``: the same answer again, where it came from) or, with the same
        Message ID, not a copy (dropped).  False: a new request."""
        if s.queued:
            self._queued_copy(s, data, addr)
            return True
        if not request:
            return False
        if A.compare(request, data):
            self._out.append((response, addr))
            self.stats["retransmitted"] += 1
        else:
            self.stats["dropped"] += 1
        return True

    def _open(self, s: _Sa, data: bytes):
        """The request decrypted and checked, or None (dropped: not from the holder of the keys)."""
        try:
            return unprotect(data, SkCipher.for_sender(s.est.keys, initiator=True))
        except WireError:
            self.stats["dropped"] += 1
            return None

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
        keys, ppk_id, used = est.keys, None, None
        ppk_n, no_ppk = _notify_of(msg, NotifyType.PPK_IDENTITY), _notify_of(msg, NotifyType.NO_PPK_AUTH)
        if est.ppk and ppk_n is not None:  # RFC 8784 §3 (without USE_PPK both ways the notifications mean nothing)
            try:
                ppk_id = decode_ppk_id(ppk_n.data)
            except WireError as e:
                return self._refuse(s, data, (), gid, None, f"member {describe_id(idi)}: {e}", NotifyType.INVALID_SYNTAX)
            secret = c.ppks.get(ppk_id)
            if secret is not None:  # ours: the AUTH must verify with it, no fallback to NO_PPK_AUTH
                keys, used = ppk_update(est.keys, secret), ppk_id
            elif no_ppk is not None:
                au = Authentication(au.method, no_ppk.data)  # the AUTH made without the PPK
            else:
                return self._refuse(s, data, (), gid, None,
                                    f"member {describe_id(idi)} not authenticated: unknown PPK_ID "
                                    f"{ppk_id.decode('utf-8', 'backslashreplace')!r} and no NO_PPK_AUTH (RFC 8784 §3)",
                                    NotifyType.AUTHENTICATION_FAILED, "ppk_required")
        octets = A.signed_octets(est.message1, est.nr, keys, True, idi.encode(), s.intauth)
        psk = c.psks.get(WireId(int(idi.id_type), bytes(idi.data))) if au.method == AuthMethod.PSK else None
        when = datetime.fromtimestamp(now + c.wall_time_offset, timezone.utc)
        try:
            identity, cert = _check_peer_auth(msg, idi, keys.suite.prf, octets, psk=psk, anchors=c.trust_anchors,
                                              when=when, addr=addr, au=au)
        except A.AuthFailed as e:  # RFC 7296 §2.21.2: the notification alone, no IDr / AUTH
            how = f" (with the PPK {ppk_id.decode('utf-8', 'backslashreplace')!r})" if used is not None else ""
            return self._refuse(s, data, (), gid, None, f"member {describe_id(idi)} not authenticated{how}: {e.reason}",
                                NotifyType.AUTHENTICATION_FAILED)
        ident = c.credential.id if isinstance(c.credential, A.CertAuth) else c.credential.identity
        idr = _ids(ident, IdResponder)
        r_octets = A.signed_octets(est.message2, est.ni, keys, False, idr.encode(), s.intauth)
        mine = (idr, *_certs(c.credential), _make_auth(c.credential, keys.suite.prf, r_octets, psk))
        if used is not None:
            # RFC 8784 §3: PPK_IDENTITY (no data) says the PPK was used; the IKE SA's keys are
            # the updated ones from now on (GSK_w for KD, GSA_REGISTRATION, in-band rekeys)
            mine += (Notify(0, NotifyType.PPK_IDENTITY),)
            s.est, s.ppk = replace(est, keys=keys), used
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
        if group.ppk == "required" and s.ppk is None:
            # RFC 8784 §3: a responder whose PPK is mandatory and was not used answers
            # AUTHENTICATION_FAILED (alone: no IDr / AUTH, RFC 7296 §2.21.2)
            if mine:  # GSA_AUTH: the IKE SA did not authenticate, nothing may be registered over it
                s.identity = None
            return self._refuse(s, data, (), gid, identity,
                                f"group {group.label} requires a post-quantum preshared key (RFC 8784) and the "
                                "member's GSA_AUTH used none", NotifyType.AUTHENTICATION_FAILED, "ppk_required")
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
        ppk = s.ppk is not None
        log.info("g-ikev2 gcks: %s from %r registered in group %s%s", identity, q.addr, gid,
                 f" with the post-quantum preshared key {s.ppk.decode('utf-8', 'backslashreplace')!r}" if ppk else "")
        self._events.append(MemberRegistered(gid, identity, q.addr, tuple(t.spi for t in r.keys.teks), r.enr.lkh_update,
                                             ppk=ppk))

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


def gcks_auth_config(settings: model.KeyServerSettings, **kw: Any) -> GcksAuthConfig:
    """The GCKS's GSA_AUTH configuration from the key server's policy: its certificate if it has
    one (else it answers PSK members under ``settings.identity`` or its first listen address),
    the members' PSKs by their ID_KEY_ID, the post-quantum preshared keys by their PPK_ID."""
    psks = {WireId.key_id(p.identity.encode()): p.secret.reveal() for p in settings.psks}
    kw.setdefault("ppks", {p.id.encode(): p.secret.reveal() for p in settings.ppks})
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
