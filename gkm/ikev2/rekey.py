"""The GSA_REKEY pseudo-exchange (RFC 9838 §2.4, §2.5): ``HDR, SK{GSA, KD, [D,] [AUTH]}``, sans-I/O.

Key server: :class:`RekeySender` builds the datagrams (the shell multicasts them; retransmitting
means sending the same bytes again, §2.4.3 "bitwise identical").  Member: :class:`RekeyReceiver`
takes datagrams and returns typed events; a refused datagram changes nothing and the event names
the reason.

Header: the Rekey SA's 16-byte SPI is SPIi | SPIr; Message ID starts at GSA_INITIAL_MESSAGE_ID
(0 if absent, and always 0 on a Rekey SA a GSA_REKEY installed, §2.4.3) and grows by one per
message; flags 0 (one-way, neither a response nor the IKE SA's initiator); no window (§2.4).
SK: GSK_e/GSK_a of the current Rekey SA.  Keys in KD are wrapped with the current Rekey SA's key
wrap algorithm, under GSK_w (KWK ID 0) or an LKH key (:mod:`.gsa_keys`).

Member checks, in order (each refusal leaves the state as it was): header (exchange, SPI of
the current Rekey SA, R flag clear), Message ID at least the expected one (replay, checked
before any cryptography, as it is covered by the ICV anyway), SK integrity, payload set,
AUTH (digital signature: present and valid; implicit: absent), then GSA and KD as a whole
(every policy has exactly its key bag, every key unwraps), and only then the new state.

Decisions the RFC leaves open or words loosely:

* Member Key Bags in GSA_REKEY: §4.4.2 says "MUST NOT be sent", but the attribute table (§6)
  allows WRAP_KEY and AUTH_KEY there and Appendix A's LKH exclusion sends WRAP_KEYs in one.
  We follow the table: at most one member key bag with WRAP_KEYs and at most one AUTH_KEY (only
  under digital signature); GM_SENDER_ID is refused.
* GCAUTH must not appear (§4.3.1.1.1); GWP_SENDER_ID_BITS must not (§6).  A GSA policy for the
  Rekey SA must carry GSA_KEY_LIFETIME and ENCR, INTEG (unless AEAD) and KWA.
* A new Rekey SA replaces the current one when the message is applied.  Copies of the datagram
  last applied are reported as duplicates (``RekeyRejected.duplicate``, like the GDOI
  PushReceiver); older messages on a replaced SPI are refused as "not the current Rekey SA".
  DTD only delays the deletion of Data-Security SAs, which is the SA installer's business (the
  event carries ATD/DTD).
* GSA_INITIAL_MESSAGE_ID on a Rekey SA a GSA_REKEY installs: the §6 table allows it, §2.4.3
  says such an SA starts at 0; a non-zero value is refused.
* Sender-IDs (§2.4.4): a counter-mode TEK this member would send on, without a Sender-ID from
  registration, is withheld and the event asks for re-registration.
* Forward access control (§3.3.1): :meth:`RekeySender.build` refuses TEKs in a message that
  carries LKH WRAP_KEYs (the excluded members can read that message); send the eviction, then
  the TEKs over the new Rekey SA.
* Delete (§2.5): ESP with SPIs deletes those TEKs, ESP with SPI 0 all TEKs; GIKE_UPDATE with
  SPI 0 or protocol 0 means this member is out of the group (:class:`RekeyExcluded`, re-register);
  GIKE_UPDATE with the current SPI deletes the Rekey SA (no more rekeys: the member re-registers
  before its TEKs expire).  Exclusion also follows from an SA_KEY no key of the member opens.
* GSA_NEXT_SPI: a datagram for an unknown Rekey SA whose SPI the current policy announced means
  a rekey was lost: :class:`RekeyMissed` (the member should re-register, §4.3.1.2.3).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from gkm.gdoi.keys import GroupTek
from gkm.wire.attributes import Attribute
from policy.model import AddressPreservation, Mode, SaDirection

from . import gsa_keys
from .constants import (
    HEADER_LENGTH, ExchangeType, GcAuth, GroupKeyBagAttr, GwAttr, MemberKeyBagAttr, PayloadType, ProtocolId,
)
from .errors import WireError
from .events import Ikev2Event
from .gsa import GroupKeyBag, GroupSa, GsaPolicy, GwPolicy, KeyDownload, MemberKeyBag
from .gsa_keys import Excluded, KeyWrapError, WorkingKeyPath, WrappedKey
from .message import Header, decode_header, encode_payloads
from .payloads import Authentication, Delete, Notify
from .rekey_auth import RekeyAuthError, SignatureAlgorithm, sign_chain, verify_chain
from .rekey_sa import RekeyPolicyError, RekeySa
from .sk import protect, unprotect_chain
from .tek_policy import TekPolicyError, group_tek, tek_policy

# --------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class RekeyApplied(Ikev2Event):
    """A GSA_REKEY was accepted: install ``teks`` (activate after ``atd_s`` when sending), delete
    ``deleted_spis`` (or every TEK with ``delete_all_teks``) after ``dtd_s``; ``rekey_sa`` is the
    new Rekey SA (None: unchanged).  ``next_spis`` maps TEK SPIs to the SPIs announced for their
    successors; ``withheld_spis``: see :attr:`reregister`."""

    group_id: int
    message_id: int
    teks: tuple[GroupTek, ...] = ()
    rekey_sa: RekeySa | None = None
    deleted_spis: tuple[int, ...] = ()
    delete_all_teks: bool = False
    rekey_sa_deleted: bool = False
    atd_s: int | None = None
    dtd_s: int | None = None
    auth_key_changed: bool = False
    next_spis: tuple[tuple[int, tuple[int, ...]], ...] = ()
    withheld_spis: tuple[int, ...] = ()

    @property
    def reregister(self) -> bool:
        """A counter-mode TEK this member would send on came without a Sender-ID to use: the
        TEK is withheld and the member must re-register to get one (RFC 9838 §2.4.4)."""
        return bool(self.withheld_spis)


@dataclass(frozen=True, slots=True)
class RekeyRejected(Ikev2Event):
    """A datagram was dropped; the receiver's state is unchanged.  ``duplicate``: a copy of the
    datagram last applied (the GCKS sends bitwise identical copies, §2.4.3: expected, not an
    attack, worth a debug line only)."""

    group_id: int
    reason: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class RekeyExcluded(Ikev2Event):
    """An authentic GSA_REKEY excludes this member (Delete, or a KEK it cannot derive): it must
    re-register (after a random delay, §2.5) to stay in the group."""

    group_id: int
    message_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class RekeyMissed(Ikev2Event):
    """A datagram on a Rekey SA the current policy announced with GSA_NEXT_SPI: a rekey was lost."""

    group_id: int
    spi: bytes


# --------------------------------------------------------------------------------------------
# Key server


@dataclass(frozen=True, slots=True)
class LkhRekey:
    """LKH material of an eviction: the renewed keys as WRAP_KEYs, and the key (ID, value) the new
    Rekey SA's key material is wrapped under (the new LKH root).  :func:`gkm.ikev2.lkh_map.wrap_update`."""

    wrap_keys: tuple[WrappedKey, ...]
    root_id: int
    root_key: bytes = field(repr=False)


class RekeySender:
    """The key server's side of one group's Rekey SA chain.

    ``rekey_sa`` and ``message_id`` are the durable state: the shell records them (as it records
    the GDOI SEQ) before it sends what :meth:`build` returned, and passes them back after a
    restart, so a Message ID is never used twice on one Rekey SA."""

    def __init__(self, rekey_sa: RekeySa, *, gcauth: GcAuth, signature: SignatureAlgorithm | None = None,
                 signing_key=None, message_id: int | None = None) -> None:
        if (gcauth == GcAuth.DIGITAL_SIGNATURE) != (signature is not None and signing_key is not None):
            raise ValueError("digital signature needs an algorithm and a key; implicit needs neither")
        self.rekey_sa = rekey_sa
        self.message_id = rekey_sa.initial_message_id if message_id is None else message_id
        self.gcauth = gcauth
        self._signature = signature
        self._signing_key = signing_key

    def build(self, *, teks: tuple[tuple[GroupTek, tuple[int, ...]], ...] = (), new_rekey_sa: RekeySa | None = None,
              lkh: LkhRekey | None = None, deletes: tuple[Delete, ...] = (), atd_s: int | None = None,
              dtd_s: int | None = None, auth_key: bytes | None = None) -> bytes:
        """One GSA_REKEY datagram; the Message ID advances and a new Rekey SA becomes current.
        ``teks``: (TEK, next SPIs announced for it)."""
        if lkh is not None and new_rekey_sa is None:
            raise ValueError("an LKH update renews the Rekey SA")
        if lkh is not None and teks:
            raise ValueError("TEKs in a membership-changing rekey break forward access control (RFC 9838 §3.3.1)")
        if auth_key is not None and self.gcauth != GcAuth.DIGITAL_SIGNATURE:
            raise ValueError("AUTH_KEY only with digital signature authentication")
        if self.message_id > 0xFFFFFFFF:
            raise ValueError("Message ID space of this Rekey SA exhausted: install a new Rekey SA")
        cur = self.rekey_sa
        policies, bags = [], []
        if new_rekey_sa is not None:
            if new_rekey_sa.initial_message_id:
                raise ValueError("a Rekey SA installed by GSA_REKEY starts at Message ID 0 (RFC 9838 §2.4.3)")
            keymat = new_rekey_sa.keys.keymat
            policies.append(new_rekey_sa.policy())
            if lkh is None:
                sa_key = WrappedKey(0, 0, gsa_keys.wrap(cur.kwa, cur.keys.gsk_w, keymat))
            else:
                sa_key = WrappedKey(0, lkh.root_id, gsa_keys.wrap(cur.kwa, lkh.root_key, keymat))
            bags.append(GroupKeyBag(ProtocolId.GIKE_UPDATE, new_rekey_sa.spi, (Attribute(GroupKeyBagAttr.SA_KEY, sa_key.encode()),)))
        for tek, nxt in teks:
            policy, keymat = tek_policy(tek, nxt)
            policies.append(policy)
            w = WrappedKey(0, 0, gsa_keys.wrap(cur.kwa, cur.keys.gsk_w, keymat))
            bags.append(GroupKeyBag(ProtocolId.ESP, policy.spi, (Attribute(GroupKeyBagAttr.SA_KEY, w.encode()),)))
        gw = tuple(Attribute(t, v) for t, v in ((GwAttr.ATD, atd_s), (GwAttr.DTD, dtd_s)) if v is not None)
        if gw:
            policies.append(GwPolicy(gw))
        member = [Attribute(MemberKeyBagAttr.WRAP_KEY, w.encode()) for w in (lkh.wrap_keys if lkh else ())]
        if auth_key is not None:
            member.append(Attribute(MemberKeyBagAttr.AUTH_KEY, auth_key))
        if member:
            bags.append(MemberKeyBag(tuple(member)))
        inner: tuple = ()
        if policies:
            inner += (GroupSa(tuple(policies)),)
        if bags:
            inner += (KeyDownload(tuple(bags)),)
        inner += tuple(deletes)
        if not inner:
            raise ValueError("empty rekey")
        spi_i, spi_r = cur.header_spis
        header = Header(spi_i, spi_r, ExchangeType.GSA_REKEY, 0, self.message_id)
        if self.gcauth == GcAuth.DIGITAL_SIGNATURE:
            inner += (sign_chain(self._signature, self._signing_key, header, inner, encode_payloads),)
        datagram = protect(header, inner, cur.cipher)
        if new_rekey_sa is not None:
            self.rekey_sa = new_rekey_sa
            self.message_id = 0
        else:
            self.message_id += 1
        return datagram


# --------------------------------------------------------------------------------------------
# Member


class _Refused(Exception):
    """Internal: the datagram is refused with this reason (becomes :class:`RekeyRejected`)."""


class _Excluded(Exception):
    """Internal: the authentic datagram excludes this member (becomes :class:`RekeyExcluded`)."""


class _Missed(Exception):
    """Internal: the datagram is on an announced next Rekey SA (becomes :class:`RekeyMissed`)."""

    def __init__(self, spi: bytes) -> None:
        self.spi = spi


@dataclass(frozen=True, slots=True)
class MemberConfig:
    """What the member's configuration says about the TEKs it installs (not on the wire), and
    the Sender-IDs it got at registration (GM_SENDER_ID; GSA_REKEY never carries them)."""

    group_id: int
    mode: Mode
    address_preservation: AddressPreservation
    direction: SaDirection
    sender_ids: tuple[int, ...] = ()


class RekeyReceiver:
    """The member's side: the current Rekey SA, expected Message ID, Working Key Path, AUTH key."""

    def __init__(self, config: MemberConfig, rekey_sa: RekeySa, *, gcauth: GcAuth,
                 signature: SignatureAlgorithm | None = None, auth_key: bytes | None = None,
                 key_path: WorkingKeyPath = WorkingKeyPath(), expected_message_id: int | None = None,
                 last_digest: bytes | None = None) -> None:
        """``expected_message_id`` and ``last_digest`` (see :attr:`last_digest`): a receiver
        resumed from a saved state (:mod:`gkm.gdoi.member_state`); a new one starts at the Rekey
        SA's initial Message ID with no message applied."""
        if (gcauth == GcAuth.DIGITAL_SIGNATURE) != (signature is not None and auth_key is not None):
            raise ValueError("digital signature needs an algorithm and AUTH_KEY; implicit needs neither")
        if last_digest is not None and len(last_digest) != hashlib.sha256().digest_size:
            raise ValueError("last_digest must be a SHA-256")
        self.config = config
        self.rekey_sa: RekeySa | None = rekey_sa
        self.expected_message_id = rekey_sa.initial_message_id if expected_message_id is None else expected_message_id
        self.gcauth = gcauth
        self.signature = signature
        self.auth_key = auth_key
        self.key_path = key_path
        self.excluded = False
        self.stats = {"accepted": 0, "rejected": 0, "duplicates": 0, "internal_error": 0}
        self._last_digest: bytes | None = last_digest  # SHA-256 of the last datagram applied

    @property
    def last_digest(self) -> bytes | None:
        """SHA-256 of the datagram last applied (its copies are duplicates), None before one."""
        return self._last_digest

    def state(self) -> tuple:
        """Everything a datagram can change (a refused one must leave it equal)."""
        return (self.rekey_sa, self.expected_message_id, self.auth_key, self.key_path, self.excluded)

    def receive(self, datagram: bytes) -> tuple[Ikev2Event, ...]:
        gid = self.config.group_id
        data = bytes(datagram)
        digest = hashlib.sha256(data).digest()
        if self._last_digest is not None and hmac.compare_digest(digest, self._last_digest):
            self.stats["duplicates"] += 1
            return (RekeyRejected(gid, "copy of the GSA_REKEY last applied", duplicate=True),)
        try:
            event = self._receive(data)
        except _Refused as e:
            event = RekeyRejected(gid, str(e))
        except _Missed as e:
            event = RekeyMissed(gid, e.spi)
        except Exception as e:  # noqa: BLE001 - no exception escapes an input (the fuzz test counts these)
            self.stats["internal_error"] += 1
            event = RekeyRejected(gid, f"internal error: {type(e).__name__}")
        if isinstance(event, (RekeyApplied, RekeyExcluded)):
            self.stats["accepted"] += 1
            self._last_digest = digest
        else:
            self.stats["rejected"] += 1
        return (event,)

    def _receive(self, data: bytes) -> Ikev2Event:
        cur = self.rekey_sa
        if self.excluded or cur is None:
            raise _Refused("no Rekey SA (excluded or deleted): re-register")
        try:
            header, _np, _len = decode_header(data)
        except WireError as e:
            raise _Refused(f"malformed: {e}") from None
        if header.exchange != ExchangeType.GSA_REKEY:
            raise _Refused(f"exchange {header.exchange}, not GSA_REKEY")
        spi = header.spi_i + header.spi_r
        if spi != cur.spi:
            if spi in cur.next_spis:
                raise _Missed(spi)
            raise _Refused(f"SPI {spi.hex()} is not the current Rekey SA")
        if header.response:
            raise _Refused("R flag set on a GSA_REKEY")
        mid = header.message_id
        if mid < self.expected_message_id:
            raise _Refused(f"replayed: Message ID {mid}, expected at least {self.expected_message_id}")
        if _np != PayloadType.SK:
            raise _Refused("GSA_REKEY must carry only an SK payload")
        try:
            msg, chain = unprotect_chain(data, cur.cipher)
        except WireError as e:
            raise _Refused(f"integrity or format: {e}") from None
        sk = msg.payloads  # nothing precedes SK in a GSA_REKEY
        first = data[HEADER_LENGTH]  # the SK payload's Next Payload: the first inner payload
        gsas, kds, auths, deletes = [], [], [], []
        for p in sk:
            match p:
                case GroupSa():
                    gsas.append(p)
                case KeyDownload():
                    kds.append(p)
                case Delete():
                    deletes.append(p)
                case Notify():
                    pass  # no notify is defined for GSA_REKEY; status notifies are ignored
                case Authentication():
                    auths.append(p)
                case _:
                    raise _Refused(f"payload {p.TYPE} not allowed in GSA_REKEY")
        if len(gsas) > 1 or len(kds) > 1:
            raise _Refused("more than one GSA or KD payload")
        if self.gcauth == GcAuth.DIGITAL_SIGNATURE:
            try:
                verify_chain(self.signature, self.auth_key, header, first, chain)
            except RekeyAuthError as e:
                raise _Refused(f"authentication: {e}") from None
        elif auths:
            raise _Refused("AUTH payload under implicit authentication (RFC 9838 §2.4)")
        return self._apply(mid, gsas[0] if gsas else None, kds[0] if kds else None, deletes)

    def _apply(self, mid: int, gsa: GroupSa | None, kd: KeyDownload | None, deletes: list[Delete]) -> Ikev2Event:
        gid = self.config.group_id
        try:
            deleted, delete_all, sa_deleted = self._deletes(deletes)
            group_bags, wrap_keys, auth_key = self._key_bags(kd)
            new_sa, new_path, teks, nexts, withheld, atd, dtd = None, self.key_path, [], [], [], None, None
            for p in (gsa.policies if gsa else ()):
                if isinstance(p, GwPolicy):
                    atd, dtd = _gw_delays(p)
                    continue
                bag = group_bags.pop((int(p.protocol), bytes(p.spi)), None)
                if bag is None:
                    raise _Refused(f"no key bag for policy {p.spi.hex()}")
                sa_keys = _sa_keys(bag)
                if p.protocol == ProtocolId.GIKE_UPDATE:
                    if new_sa is not None:
                        raise _Refused("two Rekey SA policies")
                    new_sa, new_path = self._new_rekey_sa(p, sa_keys, wrap_keys)
                elif p.protocol == ProtocolId.ESP:
                    tek, nxt = self._tek(p, sa_keys)
                    if any(t.spi == tek.spi for t in teks) or tek.spi in withheld:
                        raise _Refused(f"TEK SPI {tek.spi:#x} twice")
                    if tek.sends and tek.esp_suite.counter_mode and not self.config.sender_ids:
                        withheld.append(tek.spi)  # §2.4.4: no Sender-ID, no counter-mode sending SA
                        continue
                    teks.append(tek)
                    if nxt:
                        nexts.append((tek.spi, nxt))
                else:
                    raise _Refused(f"policy for protocol {p.protocol} (only GIKE_UPDATE and ESP)")
        except _Excluded as e:
            self.excluded = True
            return RekeyExcluded(gid, mid, str(e))
        if group_bags:
            raise _Refused("key bag without a policy")
        if wrap_keys and new_sa is None:
            raise _Refused("WRAP_KEYs without a new Rekey SA")
        if not (new_sa or teks or withheld or deletes or auth_key):
            raise _Refused("the rekey carries nothing")
        # Everything checked: commit.
        if new_sa is not None:
            self.rekey_sa, self.expected_message_id, self.key_path = new_sa, 0, new_path
        elif sa_deleted:
            self.rekey_sa = None
        else:
            self.expected_message_id = mid + 1
        if auth_key is not None:
            self.auth_key = auth_key
        return RekeyApplied(gid, mid, tuple(teks), new_sa, tuple(deleted), delete_all, sa_deleted, atd, dtd,
                            auth_key is not None, tuple(nexts), tuple(withheld))

    def _deletes(self, deletes: list[Delete]) -> tuple[list[int], bool, bool]:
        """(deleted TEK SPIs, delete all TEKs, delete the Rekey SA); :class:`_Excluded` for a
        Delete of the whole group SA (§2.5)."""
        deleted, delete_all, sa_deleted = [], False, False
        for d in deletes:
            zero = not d.spis or all(not any(s) for s in d.spis)
            if d.protocol == 0 or (d.protocol == ProtocolId.GIKE_UPDATE and zero):
                raise _Excluded("Delete of the whole group SA (RFC 9838 §2.5)")
            if d.protocol == ProtocolId.GIKE_UPDATE:
                if any(s != self.rekey_sa.spi for s in d.spis):
                    raise _Refused("Delete of an unknown Rekey SA")
                sa_deleted = True
            elif d.protocol == ProtocolId.ESP:
                if d.spi_size != 4:
                    raise _Refused(f"ESP Delete with {d.spi_size}-byte SPIs")
                if zero:
                    delete_all = True
                else:
                    deleted += [int.from_bytes(s, "big") for s in d.spis]
            else:
                raise _Refused(f"Delete for protocol {d.protocol}")
        return deleted, delete_all, sa_deleted

    def _key_bags(self, kd: KeyDownload | None) -> tuple[dict, list[WrappedKey], bytes | None]:
        """(group key bags by (protocol, SPI), WRAP_KEYs, new AUTH_KEY or None)."""
        group_bags: dict[tuple[int, bytes], GroupKeyBag] = {}
        member_bags = []
        for b in (kd.bags if kd else ()):
            if isinstance(b, MemberKeyBag):
                member_bags.append(b)
                continue
            k = (int(b.protocol), bytes(b.spi))
            if k in group_bags:
                raise _Refused(f"two key bags for SA {b.spi.hex()}")
            group_bags[k] = b
        if len(member_bags) > 1:
            raise _Refused("more than one member key bag")
        wrap_keys, auth_key = [], None
        for t, v in (member_bags[0].attributes if member_bags else ()):
            if not isinstance(v, bytes):
                raise _Refused(f"member key bag attribute {t} must be TLV")
            if t == MemberKeyBagAttr.WRAP_KEY:
                try:
                    wrap_keys.append(WrappedKey.decode(v))
                except KeyWrapError as e:
                    raise _Refused(f"WRAP_KEY: {e}") from None
            elif t == MemberKeyBagAttr.AUTH_KEY and auth_key is None and self.gcauth == GcAuth.DIGITAL_SIGNATURE:
                auth_key = bytes(v)
            else:
                raise _Refused(f"member key bag attribute {t} not allowed in GSA_REKEY")
        return group_bags, wrap_keys, auth_key

    def _new_rekey_sa(self, p: GsaPolicy, sa_keys: tuple[WrappedKey, ...],
                      wrap_keys: list[WrappedKey]) -> tuple[RekeySa, WorkingKeyPath]:
        cur = self.rekey_sa
        try:
            keymat, new_path = self.key_path.resolve(cur.kwa, cur.keys.gsk_w, sa_keys, tuple(wrap_keys))
        except Excluded as e:
            raise _Excluded(str(e)) from None
        except KeyWrapError as e:
            raise _Refused(f"Rekey SA key: {e}") from None
        try:
            new_sa = RekeySa.from_policy(p, keymat)
        except RekeyPolicyError as e:
            raise _Refused(f"Rekey SA policy: {e}") from None
        if new_sa.initial_message_id:
            raise _Refused("GSA_INITIAL_MESSAGE_ID on a Rekey SA installed by GSA_REKEY (it starts at 0)")
        if new_sa.spi == cur.spi:
            raise _Refused("new Rekey SA reuses the current SPI")
        return new_sa, new_path

    def _tek(self, p: GsaPolicy, sa_keys: tuple[WrappedKey, ...]) -> tuple[GroupTek, tuple[int, ...]]:
        if len(sa_keys) != 1 or sa_keys[0].key_id or sa_keys[0].kwk_id:
            raise _Refused("an ESP key bag needs exactly one SA_KEY under GSK_w (RFC 9838 §4.4.1.1)")
        cur, c = self.rekey_sa, self.config
        try:
            keymat = gsa_keys.unwrap(cur.kwa, cur.keys.gsk_w, sa_keys[0].encrypted)
            return group_tek(p, keymat, group_id=c.group_id, mode=c.mode,
                             address_preservation=c.address_preservation, direction=c.direction)
        except (KeyWrapError, TekPolicyError) as e:
            raise _Refused(f"TEK {p.spi.hex()}: {e}") from None


def _gw_delays(p: GwPolicy) -> tuple[int | None, int | None]:
    atd = dtd = None
    for t, v in p.attributes:
        if t == GwAttr.ATD and atd is None and isinstance(v, int):
            atd = v
        elif t == GwAttr.DTD and dtd is None and isinstance(v, int):
            dtd = v
        else:
            raise _Refused(f"GW attribute {t} not allowed (or repeated) in GSA_REKEY")
    return atd, dtd


def _sa_keys(bag: GroupKeyBag) -> tuple[WrappedKey, ...]:
    out = []
    for t, v in bag.attributes:
        if t != GroupKeyBagAttr.SA_KEY or not isinstance(v, bytes):
            raise _Refused(f"group key bag attribute {t}")
        try:
            out.append(WrappedKey.decode(v))
        except KeyWrapError as e:
            raise _Refused(f"SA_KEY: {e}") from None
    return tuple(out)


__all__ = [
    "LkhRekey", "MemberConfig", "RekeyApplied", "RekeyExcluded", "RekeyMissed", "RekeyPolicyError", "RekeyReceiver",
    "RekeyRejected", "RekeySa", "RekeySender",
]
