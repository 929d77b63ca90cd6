"""GSA_AUTH (RFC 9838 §2.3.1): a member's registration on a new IKE SA, both roles, sans-I/O:
the member's side and what both share here, the GCKS's in :mod:`.gcks_registration`.
It continues from :class:`~.events.SaInitEstablished` (IKE_SA_INIT [+ IKE_INTERMEDIATE]).

::

    GM   HDR, SK{IDi, [CERT+], AUTH, IDg, [N(GROUP_SENDER)]}           -->
    GCKS                   <--  HDR, SK{IDr, [CERT+], AUTH, GSA, KD, [N(USE_TRANSPORT_MODE)]}
                           <--  HDR, SK{IDr, [CERT+], AUTH, N(error)}    group errors
                           <--  HDR, SK{N(AUTHENTICATION_FAILED)}        the GM did not authenticate

AUTH (:mod:`.auth`): PSK (method 2) or RFC 7427 signatures (method 14), both covering IntAuth
(:mod:`.intauth`).  RFC 8784 post-quantum preshared keys (:mod:`.ppk`): with USE_PPK both ways
and a member PPK, AUTH uses SK_pi'/SK_pr', the request carries N(PPK_IDENTITY) [+ N(NO_PPK_AUTH)]
and the answer N(PPK_IDENTITY) when the GCKS used it; then both sides' IKE SA keys are the
updated ones; a group with ``ppk = "required"`` refuses a member without one
(AUTHENTICATION_FAILED alone).  Message ID: 1, or 1 + the number of IKE_INTERMEDIATE exchanges.

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
(:class:`GsaRegistrationInitiator`; the GCKS side is :mod:`.gcks_registration`)::

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
for :meth:`.gcks_registration.GsaAuthResponder.commit`, which the shell calls after feeding a burst of datagrams:
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
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable

from cryptography import x509

from gkm.gdoi.events import Registered
from gkm.gdoi.phase1 import load_certificate
from gkm.ike.config import Identity as WireId
from policy.identity import Decision
from policy import model
from policy.model import Identity

from . import auth as A
from .outputs import Outputs
from .constants import AuthMethod, CertEncoding, ExchangeType, HeaderFlags, IdType, KeyExchangeMethod, NotifyType
from .errors import WireError
from .events import GsaRegistered, GsaRegistrationFailed, SaInitEstablished
from .gsa import GroupSa, KeyDownload
from .gsa_map import MappingError, read_group
from .intauth import intauth_for
from .keys import IkeKeys, ppk_update
from .message import Header, decode_message
from .payloads import Authentication, Certificate, IdGroup, IdInitiator, IdResponder, Notify
from .ppk import Ppk, decode_ppk_id, encode_ppk_id
from .sk import SkCipher, protect, unprotect

log = logging.getLogger("gkm.ikev2")

__all__ = ["MemberAuthConfig", "GsaAuthInitiator", "GsaRegistrationInitiator", "member_auth_config"]

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


def _notify_of(msg, ntype: int) -> Notify | None:
    return next((n for n in msg.all(Notify) if n.type == ntype), None)


def _check_peer_auth(msg, id_payload, prf_id: int, octets: bytes, *, psk: bytes | None,
                     anchors: tuple, when: datetime, addr: Any,
                     au: Authentication | None = None) -> tuple[Identity, x509.Certificate | None]:
    """Verify the peer's AUTH (or ``au`` instead: NO_PPK_AUTH's); returns the identity bound to
    the key that made it, and the certificate that key came in (None with a PSK)."""
    au = au if au is not None else msg.get(Authentication)
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


# ------------------------------------------------------------------------------------ member


@dataclass(frozen=True)
class MemberAuthConfig:
    group_id: int
    credential: Credential
    accepts_key_server: Callable[[Identity], Decision]  # MemberGroup.accepts_key_server
    trust_anchors: tuple[x509.Certificate, ...] = ()
    sender: bool = False  # send GROUP_SENDER: install the TEKs outbound too
    wall_time_offset: float = 0.0
    #: the group's post-quantum preshared key (RFC 8784, :mod:`.ppk`); None: none
    ppk: Ppk | None = None


class GsaAuthInitiator(Outputs):
    """The member's GSA_AUTH on one established IKE SA.  With a PPK (``config.ppk``) and both
    IKE_SA_INIT messages carrying N(USE_PPK), the AUTH is made with SK_pi' (RFC 8784 §3) and
    the request carries N(PPK_IDENTITY) and, unless the PPK is required, N(NO_PPK_AUTH) (the
    AUTH data made with SK_pi); an answer with PPK_IDENTITY is checked with SK_pr' and from
    then on ``sa`` holds the updated keys (``ppk_used``)."""

    exchange = ExchangeType.GSA_AUTH
    #: the keys with the PPK mixed in, while the request that offered it waits for its answer
    _ppk_keys: IkeKeys | None = None
    #: the IKE SA's keys have the PPK in them (GSA_AUTH's answer used it)
    ppk_used = False

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
        prf_id = sa.keys.suite.prf
        octets = A.signed_octets(sa.message1, sa.nr, sa.keys, True, idi.encode(), self._intauth)
        extra: list = []
        if c.ppk is not None and not sa.ppk and c.ppk.required:
            return self._fail(f"the GCKS did not answer N(USE_PPK) (RFC 8784): it has no post-quantum preshared "
                              f"keys, and this group's PPK {c.ppk.label!r} is required")
        if c.ppk is not None and sa.ppk:
            self._ppk_keys = ppk_update(sa.keys, c.ppk.secret)
            auth = _make_auth(c.credential, prf_id, A.signed_octets(sa.message1, sa.nr, self._ppk_keys, True, idi.encode(),
                                                                    self._intauth))
            extra.append(Notify(0, NotifyType.PPK_IDENTITY, b"", encode_ppk_id(c.ppk.ppk_id)))
            if not c.ppk.required:  # a GCKS without this PPK may still authenticate us without it
                extra.append(Notify(0, NotifyType.NO_PPK_AUTH, b"", _make_auth(c.credential, prf_id, octets).data))
        else:
            auth = _make_auth(c.credential, prf_id, octets)
        self._send([idi, *_certs(c.credential), auth, *self._idg(), *extra])

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
                why = f"GCKS refused: {_name(errors[0].type)}"
                if self._ppk_keys is not None and errors[0].type == NotifyType.AUTHENTICATION_FAILED:
                    why += (f" (this member offered its post-quantum preshared key {c.ppk.label!r}"
                            + (", required, without NO_PPK_AUTH: the GCKS may not have it)" if c.ppk.required else ")"))
                return self._fail(why, int(errors[0].type))
            return self._fail("GSA_AUTH response without IDr or AUTH", tell=NotifyType.INVALID_SYNTAX)
        keys = sa.keys
        used = _notify_of(msg, NotifyType.PPK_IDENTITY)
        if used is not None:  # RFC 8784 §3: the GCKS used our PPK (no data; an echo of our PPK_ID is taken too)
            if self._ppk_keys is None:
                return self._fail("the GCKS answered with PPK_IDENTITY, and no PPK was offered",
                                  tell=NotifyType.AUTHENTICATION_FAILED)
            try:
                other = used.data and decode_ppk_id(used.data) != c.ppk.ppk_id
            except WireError as e:
                return self._fail(f"malformed PPK_IDENTITY in the GCKS's answer: {e}", tell=NotifyType.AUTHENTICATION_FAILED)
            if other:
                return self._fail(f"the GCKS's PPK_IDENTITY names another PPK than {c.ppk.label!r}",
                                  tell=NotifyType.AUTHENTICATION_FAILED)
            keys = self._ppk_keys
        elif self._ppk_keys is not None and c.ppk.required:
            return self._fail(f"the GCKS did not use this group's required post-quantum preshared key {c.ppk.label!r} "
                              "(no PPK_IDENTITY in its answer)", tell=NotifyType.AUTHENTICATION_FAILED)
        octets = A.signed_octets(sa.message2, sa.ni, keys, False, idr.encode(), self._intauth)
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
        self._ppk_keys = None
        if used is not None:  # the IKE SA's keys from now on (KD's GSK_w, later exchanges): RFC 8784 §3
            self.sa, self.ppk_used = replace(sa, keys=keys), True
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
        log.info("g-ikev2 member group %s: registered with %s at %r (%s): %d TEK(s)%s%s", c.group_id, gcks, sa.peer,
                 self.exchange.name, len(got.teks), ", Rekey SA" if got.kek else ", rekeys in band",
                 f", post-quantum preshared key {c.ppk.label!r}" if self.ppk_used else "")
        # no Rekey SA: the GCKS rekeys this member in band, over this IKE SA (RFC 9838 §2.4.2)
        self._events.append(GsaRegistered(reg, sa.spi_i, sa.spi_r, got.rekey_sa, got.signature, got.auth_key, got.key_path,
                                          got.sender_ids, ike=sa if got.kek is None else None, transport=transport,
                                          next_mid=self.mid + 1, peer_mid=self.peer_mid, ppk=self.ppk_used))


class GsaRegistrationInitiator(GsaAuthInitiator):
    """The member's GSA_REGISTRATION (RFC 9838 §2.3.2): ``config``'s group over an IKE SA on
    which an earlier GSA_AUTH (or GSA_REGISTRATION) authenticated the GCKS ``gcks`` (``sa``
    with the keys that GSA_AUTH left, its PPK mixed in: ``ppk``); ``mid``:
    this member's next request's Message ID on it.  Same events as :class:`GsaAuthInitiator`."""

    exchange = ExchangeType.GSA_REGISTRATION

    def __init__(self, config: MemberAuthConfig, sa: SaInitEstablished, mid: int, gcks: Identity,
                 peer_mid: int = 0, ppk: bool = False) -> None:
        Outputs.__init__(self)
        self.config, self.sa, self.mid, self.gcks, self.peer_mid = config, sa, mid, gcks, peer_mid
        self.ppk_used = ppk  # ``sa``'s keys have the PPK in them (GsaRegistered.ppk)
        self._state = "idle"
        self._request = b""

    def start(self, now: float) -> None:
        self._send(self._idg())

    def _on_response(self, msg, data: bytes, now: float) -> None:
        self._take_group(msg, [n for n in msg.all(Notify) if n.is_error])


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
    if group.ppk is not None:
        kw.setdefault("ppk", Ppk(group.ppk.id.encode(), group.ppk.secret.reveal(), group.ppk.required))
    return MemberAuthConfig(group.group_id, auth, group.accepts_key_server, anchors, sender, **kw)
