"""IKEv1 phase 1 (Main Mode, RFC 2409) for GDOI (DOI 2, RFC 6407 §2.1): sans-I/O engines.

Modules: :mod:`.crypto` (PRF, DH groups 14/19/20/21, SKEYID family, IVs, AES-CBC),
:mod:`.config` (proposals, identities, PSKs, certificates), :mod:`.auth` (RSA / ECDSA signatures,
X.509 path validation, ID vs certificate), :mod:`.mainmode` (the state machine, both roles, and
protected Informational exchanges), :mod:`.server` (a responder for many peers, with the
anti-flood design), :mod:`.events`.

Both engines take ``(data, addr, now)``, ``(now)`` or user calls and are drained the aioquic way::

    gm = MainMode(config, Role.INITIATOR, ("192.0.2.1", 848))       # group member
    gm.start(now)
    ks = Phase1Server(config)                                       # key server
    ks.receive_datagram(data, addr, now)
    for data, addr in ks.datagrams_to_send(): sock.sendto(data, addr)
    while (ev := ks.next_event()) is not None: ...
    deadline = ks.get_timer()          # absolute, in the caller's clock; then handle_timer(now)

Events: :class:`Phase1Established` ``(sa)``, :class:`Phase1Failed` ``(cookies, peer, reason,
notify)``, :class:`Phase1Deleted`, :class:`InformationalReceived`, and :class:`Phase2Datagram`
for messages under an established SA that phase 1 does not handle (GROUPKEY-PULL, exchange 32):
the GDOI engine decrypts them with ``sa.phase2_iv(message_id)``, ``sa.decrypt`` and checks HASH(n)
with ``sa.hash_a``.  :class:`Phase1SA` carries SKEYID_d/_a/_e, the expanded cipher key, cipher,
PRF, the last CBC block of Main Mode, identities, the peer certificate and the lifetime.

``Phase1Config.wall_time_offset`` maps ``now`` to Unix time for certificate validity (the engines
read no clock).
"""

from .config import AuthMethod, CertCredential, ConfigError, Identity, IdType, Phase1Config, Proposal, PskStore
from .crypto import EncAlg, HashAlg, Prf
from .events import (
    DeleteRequest,
    InformationalReceived,
    Notification,
    Phase1Deleted,
    Phase1Established,
    Phase1Failed,
    Phase1SA,
    Phase2Datagram,
    Role,
)
from .mainmode import LocalProtocolError, MainMode, State, build_informational, parse_informational
from .server import Phase1Server

__all__ = [
    "AuthMethod", "CertCredential", "ConfigError", "Identity", "IdType", "Phase1Config", "Proposal", "PskStore",
    "EncAlg", "HashAlg", "Prf",
    "DeleteRequest", "InformationalReceived", "Notification", "Phase1Deleted", "Phase1Established",
    "Phase1Failed", "Phase1SA", "Phase2Datagram", "Role",
    "LocalProtocolError", "MainMode", "State", "build_informational", "parse_informational",
    "Phase1Server",
]
