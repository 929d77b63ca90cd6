"""Post-quantum preshared keys for G-IKEv2 registration (RFC 8784), the parts both roles share:
the PPK a side holds and the PPK_ID codec.  The engines are :mod:`.sa_init` (N(USE_PPK) in
IKE_SA_INIT), :mod:`.registration` (the member's GSA_AUTH) and :mod:`.gcks_registration`
(the GCKS's); the key update is :func:`.keys.ppk_update`.

::

    IKE_SA_INIT   both sides N(USE_PPK) (empty) when configured: SaInitEstablished.ppk
    GSA_AUTH  GM  HDR, SK{IDi, AUTH(SK_pi'), IDg, N(PPK_IDENTITY, PPK_ID), [N(NO_PPK_AUTH, AUTH data(SK_pi))]}
              GCKS  HDR, SK{IDr, AUTH(SK_pr'), N(PPK_IDENTITY), GSA, KD}     PPK used
                    HDR, SK{IDr, AUTH(SK_pr), GSA, KD}                       not used (NO_PPK_AUTH)

PPK_ID (RFC 8784 §3): one type octet, then the identifier; msec sends PPK_ID_FIXED (2) with
the configured ``id`` (UTF-8) and looks up both types by the octets after the type.  The
responder's PPK_IDENTITY carries no data.  NO_PPK_AUTH's data is the Authentication Data
alone, made with the AUTH payload's method (RFC 8784 §3).  The PPK secret never appears in a
``repr`` or a log line; its identifier may.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import PpkIdType
from .errors import WireError

__all__ = ["Ppk", "MIN_PPK_BYTES", "encode_ppk_id", "decode_ppk_id"]

#: the shortest PPK accepted (RFC 8784 §3: at least 256 bits of entropy for the post-quantum claim)
MIN_PPK_BYTES = 32
MAX_PPK_ID = 255


@dataclass(frozen=True)
class Ppk:
    """A member's PPK: ``ppk_id`` (the octets after the PPK_ID type), the secret, and whether
    registration without it is refused (``required``: no NO_PPK_AUTH, a GCKS that did not use it
    is not accepted)."""

    ppk_id: bytes
    secret: bytes = field(repr=False)
    required: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.ppk_id) <= MAX_PPK_ID:
            raise ValueError(f"a PPK_ID has 1..{MAX_PPK_ID} octets")
        if len(self.secret) < MIN_PPK_BYTES:
            raise ValueError(f"a PPK has at least {MIN_PPK_BYTES} octets")

    @property
    def label(self) -> str:
        """The identifier, for log lines and reasons."""
        return self.ppk_id.decode("utf-8", "backslashreplace")


def encode_ppk_id(ppk_id: bytes) -> bytes:
    """PPK_IDENTITY's notification data for ``ppk_id`` (PPK_ID_FIXED)."""
    return bytes((PpkIdType.PPK_ID_FIXED,)) + ppk_id


def decode_ppk_id(data: bytes, offset: int = 0) -> bytes:
    """The identifier in PPK_IDENTITY's notification data; strict: a known type and at least one
    octet of identifier.  ``offset``: where the data starts in the message, for the error."""
    if len(data) < 2:
        raise WireError("N(PPK_IDENTITY)", offset, f"PPK_ID of {len(data)} octets: a type and an identifier are needed")
    if data[0] not in (PpkIdType.PPK_ID_OPAQUE, PpkIdType.PPK_ID_FIXED):
        raise WireError("N(PPK_IDENTITY)", offset, f"unknown PPK_ID type {data[0]} (1 PPK_ID_OPAQUE, 2 PPK_ID_FIXED)")
    if len(data) - 1 > MAX_PPK_ID:
        raise WireError("N(PPK_IDENTITY)", offset + 1, f"PPK_ID of {len(data) - 1} octets, at most {MAX_PPK_ID}")
    return bytes(data[1:])
