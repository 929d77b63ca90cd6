"""RFC 9242 §3.3.2: the IntAuth chain, which makes the AUTH payloads of IKE_AUTH / GSA_AUTH
cover the IKE_INTERMEDIATE messages too.

::

    IntAuth_i1 = prf(SK_pi(1),              IntAuth_i1_A | IntAuth_i1_P)
    IntAuth_iN = prf(SK_pi(N), IntAuth_i(N-1) | IntAuth_iN_A | IntAuth_iN_P)
    IntAuth_rN  likewise with SK_pr(N) over the responses
    IntAuth    = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID        (appended to both signed octets)

``IntAuth_*_A``: the message from the first octet of the IKE header through the SK payload's
generic header, as sent (no fragmentation here, so no length adjustment); ``IntAuth_*_P``: the
inner payload chain in clear, without IV, padding, pad length and ICV.  ``SK_p*(N)``: the keys
in force when exchange N was protected, i.e. before the RFC 9370 update it carried.  With no
IKE_INTERMEDIATE exchange IntAuth is empty and the signed octets are RFC 7296 §2.15's
(RFC 9242 §3.3.2 appends IntAuth only when IKE_INTERMEDIATE took place).

Each message is unprotected again to get its clear chain (``unprotect_chain``): the engines hand over
the datagrams, and checking the ICV once more costs little and keeps one path for both roles.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .keys import IkeKeys, prf
from .message import decode_message
from .sk import SkCipher, unprotect_chain

__all__ = ["IntAuth", "intauth_chain", "intauth_for"]

_MID = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class IntAuth:
    """The last values of both chains (empty: no IKE_INTERMEDIATE exchange)."""

    initiator: bytes = field(default=b"", repr=False)
    responder: bytes = field(default=b"", repr=False)

    @property
    def present(self) -> bool:
        return bool(self.initiator)

    def octets(self, auth_message_id: int) -> bytes:
        """What is appended to both signed octets: ``IntAuth_iN | IntAuth_rN | IKE_AUTH_MID``."""
        if not self.present:
            return b""
        return self.initiator + self.responder + _MID.pack(auth_message_id)


def intauth_chain(exchanges: list[tuple[bytes, bytes, IkeKeys]]) -> IntAuth:
    """``exchanges``: (request, response, keys that protected them) of each IKE_INTERMEDIATE
    exchange in order.  Raises the SK payload's WireError if a message does not open with its
    keys (the engines only hand over messages that did)."""
    ia = ir = b""
    for request, response, keys in exchanges:
        ia = prf(keys.suite.prf, keys.sk_pi, ia + _a_and_p(request, SkCipher.for_sender(keys, initiator=True)))
        ir = prf(keys.suite.prf, keys.sk_pr, ir + _a_and_p(response, SkCipher.for_sender(keys, initiator=False)))
    return IntAuth(ia, ir)


def _a_and_p(data: bytes, cipher: SkCipher) -> bytes:
    """``IntAuth_A | IntAuth_P`` of one message (checked and decrypted first)."""
    _msg, chain = unprotect_chain(data, cipher)
    body = decode_message(data).encrypted.body  # SK is last: A ends where its body starts
    return bytes(data[: len(data) - len(body)]) + bytes(chain)


def intauth_for(intermediate: tuple[bytes, ...], keys: IkeKeys | None) -> IntAuth:
    """IntAuth from :class:`~.events.SaInitEstablished`'s ``intermediate`` datagrams (request,
    response pairs) and ``intermediate_keys`` (the one IKE_INTERMEDIATE exchange msec does,
    ML-KEM-768, is protected by the IKE_SA_INIT keys)."""
    if not intermediate:
        return IntAuth()
    if keys is None or len(intermediate) % 2:
        raise ValueError("IKE_INTERMEDIATE datagrams come in request/response pairs with their keys")
    pairs = [(intermediate[i], intermediate[i + 1], keys) for i in range(0, len(intermediate), 2)]
    return intauth_chain(pairs)
