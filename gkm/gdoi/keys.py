"""Group keys in protocol terms: what a member got from GROUPKEY-PULL, for the group SA installer.

No xfrm import here (key management never touches netlink): :class:`GroupTek` carries the TEK
as RFC 6407 describes it (selector, SPI, mode, direction, suite name from
:mod:`policy.suites`, keys), and ``xfrm.groupsa`` turns it into kernel states and policies.
``repr`` of every value here hides key material (HACKING.md).

Key formats (RFC 6407 section 5.6.1, RFC 4106 section 8.1): for AES-GCM the KD payload's
TEK_ALGORITHM_KEY is ``key || 4-byte salt``; :class:`GroupTek` keeps it whole (``keymat``), as
the kernel's ``rfc4106(gcm(aes))`` takes it.  For AES-CBC + HMAC, ``auth_key`` is the HMAC key (as long as the
hash output, RFC 4868 section 2.1.1).  KEK_ALGORITHM_KEY is ``IV || key`` (RFC 6407
section 5.6.2.1).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Callable, Union

from policy.model import AddressPreservation, Mode, SaDirection, TrafficSelector
from policy.suites import ESP_SUITES, KEK_CIPHERS, EspSuite, KekCipher

__all__ = ["GroupTek", "GroupKek", "LkhKeys", "new_tek_keymat", "new_kek_keymat", "random_spi", "MIN_SPI"]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: SPIs 1..255 are reserved by IANA (RFC 4303 section 2.1).
MIN_SPI = 256


@dataclass(frozen=True, slots=True)
class GroupTek:
    """One data-security SA of a group, as the member installs it: the one TEK value handed
    from key management to the kernel (it is an ``xfrm.groupsa.TekSpec``).

    ``direction``: SENDER_ONLY (install outbound only), RECEIVER_ONLY (inbound only) or
    SYMMETRIC (both; RFC 6407 section 5.5.1.1.2).  ``keymat`` is TEK_ALGORITHM_KEY as the KD
    payload carries it (AES-GCM: key || salt, which the kernel takes as is), ``auth_key``
    TEK_INTEGRITY_KEY.  ``lifetime_s`` is the remaining lifetime the key server announced when
    the member received the TEK.  ``replay_window`` is not carried by GDOI: 0, as multi-sender
    group SAs need (RFC 5374 section 3).
    """

    group_id: int
    spi: int
    selector: TrafficSelector
    mode: Mode
    address_preservation: AddressPreservation
    direction: SaDirection
    suite: str  # key of policy.suites.ESP_SUITES
    keymat: bytes = field(repr=False)
    auth_key: bytes = field(repr=False)
    lifetime_s: int
    replay_window: int = 0

    def __post_init__(self) -> None:
        if not MIN_SPI <= self.spi <= 0xFFFFFFFF:
            raise ValueError(f"TEK SPI {self.spi} out of range")
        s = ESP_SUITES.get(self.suite)
        if s is None:
            raise ValueError(f"unknown ESP suite {self.suite!r}")
        if len(self.keymat) != s.enc_key_bytes or len(self.auth_key) != s.integrity_key_bytes:
            raise ValueError(f"key lengths do not fit {self.suite}")

    def __repr__(self) -> str:
        sel = self.selector
        return (
            f"GroupTek(group={self.group_id}, spi={self.spi:#010x}, {sel.src}->{sel.dst} proto {sel.protocol}, "
            f"{self.mode.value}, {self.direction.name}, {self.suite}, {self.lifetime_s} s)"
        )

    @property
    def esp_suite(self) -> EspSuite:
        return ESP_SUITES[self.suite]

    @property
    def sends(self) -> bool:
        return self.direction in (SaDirection.SENDER_ONLY, SaDirection.SYMMETRIC)

    @property
    def receives(self) -> bool:
        return self.direction in (SaDirection.RECEIVER_ONLY, SaDirection.SYMMETRIC)


@dataclass(frozen=True, slots=True)
class GroupKek:
    """The group's Rekey SA (SA KEK + KD KEK packet): how GROUPKEY-PUSH arrives and is checked."""

    group_id: int
    spi: bytes  # 16 bytes: the PUSH header's cookie pair
    src: IPNetwork  # key server address the PUSH comes from
    src_port: int
    dst: IPNetwork  # rekey address (multicast or the member's unicast)
    dst_port: int
    cipher: str  # key of policy.suites.KEK_CIPHERS
    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    signature: str  # key of policy.suites.SIGNATURE_SUITES
    signing_public_key: bytes  # DER SubjectPublicKeyInfo of the key server's PUSH signing key
    lifetime_s: int
    #: KEK_ACK_REQUESTED (RFC 8263): the GROUPKEY-PUSH-ACK type the key server asks for, 0: none
    ack_requested: int = 0

    def __repr__(self) -> str:
        return (
            f"GroupKek(group={self.group_id}, spi={self.spi.hex()}, {self.src}:{self.src_port}->"
            f"{self.dst}:{self.dst_port}, {self.cipher}, {self.signature}, {self.lifetime_s} s)"
        )

    @property
    def kek_cipher(self) -> KekCipher:
        return KEK_CIPHERS[self.cipher]


@dataclass(frozen=True, slots=True)
class LkhKeys:
    """The member's LKH path from LKH_DOWNLOAD_ARRAY: (level, key handle, key), leaf first,
    the group key last (RFC 6407 section 3.3)."""

    keys: tuple[tuple[int, int, bytes], ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"LkhKeys(depth={len(self.keys) - 1}, handles={[h for _l, h, _k in self.keys]})"


def new_tek_keymat(suite: EspSuite, random: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """Fresh (TEK_ALGORITHM_KEY, TEK_INTEGRITY_KEY) for ``suite``: AES-GCM key || salt (RFC 4106
    section 8.1) or the AES-CBC key and the HMAC key (RFC 4868 section 2.1.1)."""
    return random(suite.enc_key_bytes), (random(suite.integrity_key_bytes) if suite.integrity_key_bytes else b"")


def new_kek_keymat(cipher: KekCipher, random: Callable[[int], bytes] = os.urandom) -> bytes:
    """Fresh KEK_ALGORITHM_KEY: IV || key (RFC 6407 section 5.6.2.1)."""
    return random(cipher.block_bytes) + random(cipher.key_bytes)


def random_spi(taken: Callable[[int], bool], random: Callable[[int], bytes] = os.urandom, tries: int = 64) -> int:
    """A random 32-bit SPI >= 256 for which ``taken(spi)`` is false."""
    for _ in range(tries):
        spi = int.from_bytes(random(4), "big")
        if spi >= MIN_SPI and not taken(spi):
            return spi
    raise RuntimeError("no free SPI found")
