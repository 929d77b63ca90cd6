"""IKEv1 phase 1 (Main Mode) for GDOI: sans-I/O engines, key derivation, authentication.

Public API::

    Phase1Config, Proposal, AuthMethod, Identity, PskStore, CertCredential   (config)
    MainMode(config, Role.INITIATOR, peer_addr).start(now)                    (one exchange)
    Phase1Server(config)                                                      (responder, many peers)
    events: Phase1Established(sa: Phase1SA), Phase1Failed, Phase1Deleted,
            InformationalReceived, Phase2Datagram
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
