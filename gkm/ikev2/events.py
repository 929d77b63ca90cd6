"""Events of the IKEv2 engines (subclasses of the one hierarchy, :mod:`gkm.events`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gkm.events import Event

from .keys import IkeKeys


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
    IntAuth values the AUTH payloads must also cover (not computed here yet)."""

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
