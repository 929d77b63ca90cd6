"""Events of the IKEv2 engines (subclasses of the one hierarchy, :mod:`gkm.events`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gkm.events import Event

from gkm.gdoi.events import Registered

from .gsa_keys import WorkingKeyPath
from .rekey_auth import SignatureAlgorithm
from .rekey_sa import RekeySa
from .keys import IkeKeys
from .natt import NatStatus


class Ikev2Event(Event):
    """An IKEv2 / G-IKEv2 engine's event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SaInitEstablished(Ikev2Event):
    """IKE_SA_INIT (and the IKE_INTERMEDIATE key exchanges) are done: the keys the next exchange
    (IKE_AUTH / GSA_AUTH) uses.  ``message1``/``message2`` are the IKE_SA_INIT datagrams the AUTH
    payloads sign (RFC 7296 §2.15).  ``methods`` lists the key exchanges that fed the keys.
    ``intermediate`` holds the IKE_INTERMEDIATE request and response datagrams and
    ``intermediate_keys`` the keys that protected them, the inputs of the RFC 9242 §3.3.2
    IntAuth values the AUTH payloads must also cover (:mod:`.intauth`)."""

    peer: tuple
    spi_i: bytes
    spi_r: bytes
    ni: bytes
    nr: bytes
    message1: bytes = field(repr=False)
    message2: bytes = field(repr=False)
    keys: IkeKeys = field(repr=False)
    methods: tuple[int, ...] = ()
    intermediate: tuple[bytes, ...] = field(default=(), repr=False)
    intermediate_keys: IkeKeys | None = field(default=None, repr=False)
    kwa: int = 0  # the key wrap algorithm negotiated (RFC 9838 §4.4.3), 0: none
    #: NAT detection's result (RFC 7296 §2.23, :mod:`.natt`); None: not done (no local
    #: address given, or the peer sent no NAT_DETECTION notifications)
    nat: NatStatus | None = None
    #: both IKE_SA_INIT messages carried N(USE_PPK) (RFC 8784 §3): GSA_AUTH may mix in a PPK
    #: (then ``keys`` is replaced by the updated ones, :func:`.keys.ppk_update`)
    ppk: bool = False


@dataclass(frozen=True, slots=True)
class SaInitFailed(Ikev2Event):
    peer: tuple
    spi_i: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class CookieDemanded(Ikev2Event):
    """The responder answered a request with a COOKIE (under load, RFC 7296 §2.6): no state kept,
    no key exchange computed.  For logs (rate limited by the shell)."""

    peer: tuple


@dataclass(frozen=True, slots=True)
class GsaRegistered(Ikev2Event):
    """Member: GSA_AUTH completed (RFC 9838 §2.3).  ``registered`` is the same hand-off the GDOI
    member engine takes (:class:`gkm.gdoi.events.Registered`: GroupTek, GroupKek, GAP delays;
    ``seq`` is GSA_INITIAL_MESSAGE_ID: the SEQ of the GSA_REKEY before the next one, whose
    Message ID is SEQ - 1 (:mod:`gkm.ikev2.group_rekey`); None without a Rekey SA); the rest is what a
    :class:`~.rekey.RekeyReceiver` starts from: the Rekey SA, the signature algorithm and
    AUTH_KEY that GSA_REKEY messages are checked with, and the member's Key Path."""

    registered: Registered
    spi_i: bytes
    spi_r: bytes
    rekey_sa: RekeySa | None = field(default=None, repr=False)
    signature: SignatureAlgorithm | None = None
    auth_key: bytes | None = field(default=None, repr=False)
    key_path: WorkingKeyPath = field(default_factory=WorkingKeyPath, repr=False)
    #: GM_SENDER_ID values for this sender (RFC 9838 §2.5.1), empty for a receiver
    sender_ids: tuple[int, ...] = ()
    #: the IKE SA it registered on, kept for GSA_INBAND_REKEY when the GCKS gave no Rekey SA
    ike: SaInitEstablished | None = field(default=None, repr=False)
    transport: bool = False  # USE_TRANSPORT_MODE was in the answer
    #: Message IDs on that IKE SA: the member's next request's, and the GCKS's next request's
    #: (its GSA_INBAND_REKEYs; 0 after GSA_AUTH, carried on by a GSA_REGISTRATION)
    next_mid: int = 0
    peer_mid: int = 0
    #: GSA_AUTH mixed a post-quantum preshared key into the IKE SA's keys (RFC 8784): ``ike``
    #: holds the updated keys, and the KD's keys were wrapped under them
    ppk: bool = False

    @property
    def group_id(self) -> int:
        return self.registered.group_id


@dataclass(frozen=True, slots=True)
class GikeRegistered(Registered):
    """Member: a G-IKEv2 registration, as the GDOI member engine takes it (a
    :class:`gkm.gdoi.events.Registered`), with the :class:`GsaRegistered` its GSA_REKEY
    receiver is built from (:class:`gkm.ikev2.member_rekey.GikePushReceiver`)."""

    gsa: GsaRegistered | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class GsaRegistrationFailed(Ikev2Event):
    """Member: GSA_AUTH ended without keys; ``notify`` the notification received or sent."""

    group_id: int
    peer: tuple
    reason: str
    notify: int | None = None


@dataclass(frozen=True, slots=True)
class GsaPeerRefused(Ikev2Event):
    """GCKS: after GSA_AUTH the member told us (INFORMATIONAL) it refuses our answer:
    AUTHENTICATION_FAILED (our identity or AUTH), NO_PROPOSAL_CHOSEN (the group's policy)."""

    peer: tuple
    spi_i: bytes
    notify: int
    reason: str


@dataclass(frozen=True, slots=True)
class InbandRekeyAcknowledged(Ikev2Event):
    """GCKS: a member answered a GSA_INBAND_REKEY (RFC 9838 §2.4.2): it holds ``tek_spis``
    (empty: it acknowledged its exclusion)."""

    group_id: int
    member: str
    message_id: int
    tek_spis: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class InbandRekeyFailed(Ikev2Event):
    """GCKS: a member's in-band rekey failed (no answer after the retransmissions, or refused);
    its IKE SA is forgotten and it gets no in-band rekey until it registers again."""

    group_id: int
    member: str
    reason: str


@dataclass(frozen=True, slots=True)
class GsaMemberLeft(Ikev2Event):
    """GCKS: a member told us in GSA_REGISTRATION (IDg and an error notification: it cannot
    use the group's policy, or leaves) that it is not in group ``group_id`` any more; RFC 9838
    §2.3.2: the GCKS MUST remove it from the group."""

    group_id: int
    member: str  # the store's key (gkm.gdoi.pull.member_key)
    identity: object
    notify: int
    reason: str
