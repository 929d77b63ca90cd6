"""Who a peer is (as phase 1 authenticated it) and rules deciding what it may do.

Authorization
    `Authorization` is a list of rules, any of which admits a peer (deny by default). Rules
    match what phase 1 authenticated (`Identity`): PSK identity (ID_KEY_ID, exact), FQDN
    (ID_FQDN, case-insensitive, `*` matches within one label: `*.example.org`, `gm*.lab`),
    peer address in a network (the address phase 1 was authenticated from), certificate
    subject DN (ID_DER_ASN1_DN as RFC 4514 text; same attributes in the same order; attribute
    types case-insensitive; values case-insensitive with `*` matching any run of characters
    inside one RDN value). The subject may be written in either RDN order (RFC 4514 puts the
    most specific RDN first, OpenSSL-style strings last); `Identity.from_x509_name` gives the
    RFC 4514 form. Identity kinds without a rule type (ID_USER_FQDN) can only be admitted by
    an address rule.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Union

__all__ = [
    "IdType",
    "IdKind",
    "Identity",
    "Decision",
    "PskIdMatch",
    "FqdnMatch",
    "AddressMatch",
    "SubjectMatch",
    "Matcher",
    "Authorization",
    "parse_dn",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class IdType(enum.IntEnum):
    """RFC 2407 section 4.6.2.1 identification types used by msec."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_USER_FQDN = 3
    ID_IPV4_ADDR_SUBNET = 4
    ID_IPV6_ADDR = 5
    ID_IPV6_ADDR_SUBNET = 6
    ID_DER_ASN1_DN = 9
    ID_KEY_ID = 11


class IdKind(enum.Enum):
    """What phase 1 authenticated a peer as."""

    KEY_ID = "key-id"  # PSK identity (ID_KEY_ID)
    FQDN = "fqdn"
    USER_FQDN = "user-fqdn"  # no rule matches it except an address rule
    ADDRESS = "address"  # ID_IPV4_ADDR / ID_IPV6_ADDR
    DN = "dn"  # certificate subject


@dataclass(frozen=True, slots=True)
class Identity:
    """A peer as phase 1 authenticated it: ID kind and value, and the peer's address."""

    kind: IdKind
    value: str
    address: IPAddress | None = None

    def __str__(self) -> str:
        at = f" from {self.address}" if self.address is not None else ""
        return f"{self.kind.value} {self.value!r}{at}"

    @classmethod
    def from_id_payload(
        cls, id_type: int, data: bytes, address: IPAddress | None = None
    ) -> "Identity":
        """An identity from a phase 1 ID payload (RFC 2407 section 4.6.2).

        ID_KEY_ID data is taken as UTF-8 text (PSK identities are configured as text; data
        that is not UTF-8 becomes "0x" + hex). ID_DER_ASN1_DN is refused here: use
        `from_x509_name` with the subject of the certificate phase 1 verified.
        """
        t = int(id_type)
        if t == IdType.ID_KEY_ID:
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                value = "0x" + data.hex()
            return cls(IdKind.KEY_ID, value, address)
        if t == IdType.ID_FQDN:
            return cls(IdKind.FQDN, data.decode("ascii", "replace"), address)
        if t == IdType.ID_USER_FQDN:
            return cls(IdKind.USER_FQDN, data.decode("ascii", "replace"), address)
        if t in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            return cls(IdKind.ADDRESS, str(ipaddress.ip_address(data)), address)
        raise ValueError(f"ID type {t} is not usable for authorization here")

    @classmethod
    def from_x509_name(cls, name, address: IPAddress | None = None) -> "Identity":
        """An identity from a verified certificate's subject (a cryptography x509.Name)."""
        return cls(IdKind.DN, name.rfc4514_string(), address)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def parse_dn(text: str) -> tuple[tuple[str, str], ...]:
    """Parse an RFC 4514-style DN string into ((TYPE, value), ...), types upper-cased.

    Separators are `,` or `;`; a backslash escapes the next character. Values keep their
    escapes' meaning (the backslash is dropped). Raises ValueError on a malformed DN.
    """
    rdns: list[tuple[str, str]] = []
    i, n = 0, len(text)
    current: list[str] = []
    parts: list[str] = []
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("DN ends with a lone backslash")
            current.append(text[i : i + 2])
            i += 2
            continue
        if c in ",;":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    for part in parts:
        part = part.strip()
        if not part:
            raise ValueError("DN has an empty RDN")
        if "=" not in part:
            raise ValueError(f"RDN {part!r} has no '='")
        typ, _, value = part.partition("=")
        typ = typ.strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+", typ):
            raise ValueError(f"RDN attribute type {typ!r} is not valid")
        value = re.sub(r"\\(.)", r"\1", value.strip())
        rdns.append((typ.upper(), value))
    return tuple(rdns)


def _wildcard_re(pattern: str, star: str) -> re.Pattern[str]:
    return re.compile(
        "".join(star if ch == "*" else re.escape(ch) for ch in pattern), re.IGNORECASE | re.DOTALL
    )


_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9*_-]{1,63}(?<!-)")


@dataclass(frozen=True, slots=True)
class PskIdMatch:
    """Peer authenticated with a PSK under this ID_KEY_ID identity (exact match)."""

    identity: str

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("PSK identity must not be empty")

    def matches(self, peer: Identity) -> bool:
        return peer.kind is IdKind.KEY_ID and peer.value == self.identity

    def __str__(self) -> str:
        return f"psk:{self.identity}"

    @property
    def single(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class FqdnMatch:
    """Peer's ID_FQDN matches `pattern`; `*` matches within one label."""

    pattern: str

    def __post_init__(self) -> None:
        name = self.pattern.rstrip(".")
        labels = name.split(".")
        if not name or not all(_LABEL_RE.fullmatch(lbl) for lbl in labels):
            raise ValueError(f"{self.pattern!r} is not a valid FQDN pattern")

    def matches(self, peer: Identity) -> bool:
        if peer.kind is not IdKind.FQDN:
            return False
        return _wildcard_re(self.pattern.rstrip("."), "[^.]*").fullmatch(
            peer.value.rstrip(".")
        ) is not None

    def __str__(self) -> str:
        return f"fqdn:{self.pattern}"

    @property
    def single(self) -> bool:
        return "*" not in self.pattern


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """The address phase 1 was authenticated from lies in `network`."""

    network: IPNetwork

    def matches(self, peer: Identity) -> bool:
        a = peer.address
        if a is None and peer.kind is IdKind.ADDRESS:
            try:
                a = ipaddress.ip_address(peer.value)
            except ValueError:
                return False
        return a is not None and a.version == self.network.version and a in self.network

    def __str__(self) -> str:
        return f"address:{self.network}"

    @property
    def single(self) -> bool:
        return self.network.num_addresses == 1


@dataclass(frozen=True, slots=True)
class SubjectMatch:
    """Certificate subject DN matches `pattern` RDN by RDN (see module docstring)."""

    pattern: str

    def __post_init__(self) -> None:
        parse_dn(self.pattern)  # raises ValueError

    def matches(self, peer: Identity) -> bool:
        if peer.kind is not IdKind.DN:
            return False
        try:
            subject = parse_dn(peer.value)
        except ValueError:
            return False
        pattern = parse_dn(self.pattern)
        if len(subject) != len(pattern):
            return False
        # RFC 4514 strings list the most specific RDN first, OpenSSL-style ones last: accept
        # the subject in either order, never a mix.
        return _rdns_match(pattern, subject) or _rdns_match(pattern, subject[::-1])

    def __str__(self) -> str:
        return f"dn:{self.pattern}"

    @property
    def single(self) -> bool:
        return "*" not in self.pattern


def _rdns_match(pattern, subject) -> bool:
    return all(
        ptype == stype and _wildcard_re(pvalue, ".*").fullmatch(svalue)
        for (ptype, pvalue), (stype, svalue) in zip(pattern, subject)
    )


Matcher = Union[PskIdMatch, FqdnMatch, AddressMatch, SubjectMatch]


@dataclass(frozen=True, slots=True)
class Authorization:
    """Who may join (or send): any matching rule admits; no rules admits nobody."""

    rules: tuple[Matcher, ...] = ()

    def decide(self, peer: Identity) -> Decision:
        for rule in self.rules:
            if rule.matches(peer):
                return Decision(True, f"{peer} matches {rule}")
        if not self.rules:
            return Decision(False, f"{peer}: no authorization rules, nobody may join")
        return Decision(False, f"{peer} matches none of {len(self.rules)} rules")

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.rules) or "nobody"
