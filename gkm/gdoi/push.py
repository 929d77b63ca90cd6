"""GROUPKEY-PUSH (RFC 6407 section 4), both roles, sans-I/O, engine level.

::

    GCKS -> GM   HDR*, SEQ, [D,] [SA, KD,] SIG      (* encrypted with the current KEK)

Key server: :func:`build_push` returns one datagram.  Member: :class:`PushReceiver` takes
datagrams (``receive_datagram``) and hands out events (``next_event``): :class:`Rekeyed`,
:class:`TeksDeleted`, :class:`KekDeleted`, :class:`Evicted`, :class:`PushRejected`.

SEQ contract (RFC 6407 sections 4.3, 3.2): the caller passes ``seq``, durable before the
datagram leaves (the key server's group controller, ``gkm.group``, logs it as a SeqReserved
record that the shell commits before sending; ``KeyStore.next_seq(group)`` commits one on its
own); so a SEQ is never sent twice, even across a crash.  ``build_push`` itself is pure (no store, no clock).
After a PUSH that introduces a new KEK the caller activates that KEK in the store, whose SEQ
starts at 0: the first PUSH under it carries SEQ 1 (RFC 6407 section 4, "the first packet for
the given Rekey SA encrypted with the new KEK attribute will have a Sequence number of 1").

Decisions (ambiguities; docs/decisions/wire.md):

* Signed bytes (RFC 6407 section 4: "the string 'rekey', the GROUPKEY-PUSH HDR, followed by all
  payloads preceding the SIG payload"): ``b"rekey"`` (5 ASCII octets, no NUL; the RFC says
  'rekey', not "GDOI REKEY") || HDR || payloads before SIG, verbatim, no padding.  HDR is the
  header as gdoid hashes it (docs/decisions/wire.md §3.2, ambiguity 1): E flag set, Length = 28 + all
  payloads including SIG, excluding padding.  The receiver also accepts the header as sent
  (Length including padding), the other plausible reading.
* Hash = the signature suite's hash (SIG_HASH_ALGORITHM; implied by the curve for ECDSA,
  RFC 6407 section 5.3.5).  ECDSA: r || s, each left-padded to the coordinate size (RFC 4754
  section 7, RFC 6407 section 5.3.6).  RSA: EMSA-PKCS1-v1_5 with DigestInfo (RFC 6407 section
  5.3.6.1) when signing; the receiver also accepts gdoid's PKCS#1 type 1 over the bare hash
  (docs/decisions/wire.md ambiguity 2).  Signing key: RFC 6407 section 4.1 says it SHOULD differ from the
  phase 1 key; that is the caller's (policy's) business: ``KekPolicy.signing_key``.
* Encryption (RFC 6407 sections 4, 5.3.2, 5.6.2.1): AES-CBC with the current KEK key, the IV
  being the IV half of KEK_ALGORITHM_KEY (IV || key), the same for every PUSH under one KEK (no
  per-message IV exists on the wire; gdoid does the same; docs/decisions/wire.md ambiguity 3).  The first
  plaintext block holds the SEQ payload, unique per KEK, so equal plaintext prefixes are not
  revealed across messages.  Zero padding to the block (RFC 2409 appendix B).
* Check order on receipt (RFC 6407 section 4.4): cookies = KEK SPI, decrypt, parse and
  validate the form, SEQ > last accepted for this KEK, SIG, then process.  The SEQ test before
  the signature is only a cheap filter: the receiver's state changes only after the signature
  verified and the whole message was processed successfully (all or nothing).
* First PUSH after PULL: ``last_seq`` = the SEQ of GROUPKEY-PULL message 4 (the most recently
  *used* number, RFC 6407 section 3.2), so the PUSH must carry a larger one.  A new KEK resets
  ``last_seq`` to 0 (RFC 6407 sections 4 and 4.3).  PUSH under the previous KEK is no longer
  accepted after the switch.
* LKH (RFC 6407 sections 4.3, 4.4, 5.6.3): an eviction PUSH carries an SA KEK (new SPI) and a KD
  with an LKH key packet of LKH_UPDATE_ARRAYs (:meth:`gkm.lkh.LkhUpdate.to_arrays`, Key Type
  :data:`gkm.lkh.KEY_TYPE_AES_KEYWRAP`) plus a KEK key packet with at most the signing public
  key (SIG_ALGORITHM_KEY): none when it is the key this PUSH is signed with, since a member
  that accepts the PUSH verified it with the key it holds and keeps that key for the new KEK
  when the attribute is absent (``PushReceiver``; 95 bytes per datagram for P-256).  The new
  KEK_ALGORITHM_KEY is *not* sent: the evicted members can decrypt the PUSH (they hold the
  current KEK).  "The final decryption yields the new group KEK" (section 4.4):
  the new KEK_ALGORITHM_KEY (IV || key) = HKDF-Expand-SHA-256(new LKH root key, "msec GDOI LKH
  KEK" || new KEK SPI) (:func:`lkh_kek_keymat`; our choice: the RFC does not say how the
  root key maps onto a KEK with its IV).  A member whose keys cannot unwrap the new root is
  told :class:`Evicted`; so is every member of an update with no LKH_UPDATE_ARRAY (the last
  members evicted: the new root is wrapped for nobody, see ``gkm.group.controller``).  An
  evicted (or closed) receiver drops every further datagram at debug level: the TEK PUSH
  under the new KEK follows an eviction by design.  The wire carries no LKH epoch: the
  receiver applies the update as epoch + 1 (SEQ provides the ordering).
* SA TEK direction in PUSH (RFC 6407 section 5.5.1.1.2): one SA payload goes to every member,
  so it cannot carry the per-member directions of GROUPKEY-PULL.  It carries SYMMETRIC for TEKs
  without a sender restriction, else RECEIVER_ONLY (the safe value); a member keeps the
  direction it was given for the same selector at registration (so a restricted sender keeps
  sending and a receiver-only member never starts), and takes the PUSH's value otherwise.
* Delete payloads (RFC 6407 section 5.9): TEK deletes (protocol ESP, SPI size 4; no SPI =
  all) give :class:`TeksDeleted`; a KEK delete (protocol 0, SPI size 16) :class:`KekDeleted`,
  after which the receiver accepts nothing more (re-register).
* Large LKH updates (our choice; RFC 6407 has no fragmentation of its own and leaves large KD
  payloads to IP fragmentation): an update whose PUSH would exceed the group's
  ``max_push_size`` goes out in parts (:func:`lkh_update_parts`, :mod:`gkm.lkh_parts`), part
  ``i`` of ``n`` in a PUSH of its own under the current KEK with SEQ ``s + i - 1``, each with
  the same SA KEK and KEK packet and an LKH key packet holding a private-use attribute
  LKH_UPDATE_PART (128, TLV, index and count as two 16-bit words) and that part's
  LKH_UPDATE_ARRAYs.  The member applies each part as it comes to a pending copy of its LKH
  keys (:class:`LkhPartReceived`) and installs keys and the new KEK only with the last part
  (then :class:`Rekeyed`, or :class:`Evicted`).  A part that does not follow the previous
  one (other KEK, count, index or a SEQ that is not the next) is refused with the reason and
  changes nothing; the member cannot complete that update and registers again when its keys
  run out.  Only the last part may carry TEKs; parts before it carry no Delete.
* GAP (RFC 6407 sections 4, 5.4.1): every PUSH that carries an SA carries the group's GAP
  (ATD, DTD) between the SA KEK and the SA TEKs, so members apply the key server's current
  delays to this rekey; :class:`Rekeyed` hands them on (``gap``).  Except an LKH update PUSH
  without TEKs or Deletes (an eviction's parts): ATD and DTD concern TEKs, and it has none; the
  TEK PUSH under the new KEK that follows carries them, and a member without a GAP keeps the
  values it holds.
* GROUPKEY-PUSH-ACK (RFC 8263, :mod:`gkm.gdoi.push_ack`): when the most recent SA KEK asks
  for one (KEK_ACK_REQUESTED of a type we can answer) and the shell told the receiver its own
  address (:meth:`PushReceiver.acknowledge_as`, the source of its last GROUPKEY-PULL), every
  PUSH processed successfully (an LKH part, a KEK Delete included; an eviction not) is
  answered to the address and port it came from (``datagrams_to_send``), keyed by the KEK that
  decrypted it.  A copy of a PUSH already taken is answered with the same ACK again: the key
  server retransmits when an ACK was lost.
* Copies (the key server sends each rekey several times, multicast and unicast): the digests
  of the last :data:`RECENT_PUSHES` datagrams accepted are kept; a copy of one of them is
  dropped at debug level (:class:`PushRejected` with ``duplicate``), not as a replay.
* Not done here: SIDs (RFC 6054; TEKs are handed over as the PULL does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence as Seq

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding as apadding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from gkm.events import MemberEvent
from gkm import wire
from gkm.lkh import KEY_TYPE_AES_KEYWRAP, LKH_VERSION, LkhError, LkhEvicted, LkhMemberView, LkhUpdate
from gkm.lkh_parts import LkhPartial, apply_part, split_lkh_update
from gkm.wire import (
    Attribute, Delete, GdoiSa, Header, KeyDownload, KeyPacket, Sequence, Signature, attr_bytes,
)
from gkm.wire.constants import Doi, ExchangeType, Flags, KdType, KekKeyAttr, LkhKeyAttr, TekProtocol
from gkm.wire.header import is_ikev2
from policy.model import GroupPolicy, SaDirection
from policy.suites import KEK_CIPHERS, SIGNATURE_SUITES, KekCipher, SignatureSuite

from . import policy_wire as pw
from . import sakd
from .keys import GroupKek, GroupTek, LkhKeys
from .provider import KekKeys, TekKeys
from .push_ack import ACK_TYPES, ack_key, build_push_ack

log = logging.getLogger("gkm.gdoi")

__all__ = [
    "build_push", "PushReceiver", "Rekeyed", "TeksRefreshed", "TeksDeleted", "KekDeleted", "Evicted", "PushRejected",
    "LkhPartReceived", "lkh_update_parts", "lkh_part_budget",
    "lkh_kek_keymat", "sign_push", "verify_push_signature", "REKEY_PREFIX",
]

#: RFC 6407 section 4: the string prefixed to the signed data.
REKEY_PREFIX = b"rekey"
HEADER_LEN = 28
#: digests of the last PUSH datagrams accepted, so their copies are recognised (and answered)
RECENT_PUSHES = 16
_LKH_KEK_INFO = b"msec GDOI LKH KEK"
_KEYWRAP_OVERHEAD = 8
_PART = struct.Struct("!HH")
# RFC 6407 section 5.6.3.2: LKH_UPDATE_ARRAY (Version, #Keys, RESERVED, then LKH ID, RESERVED2,
# Key Handle of the key wrapping the first LKH Key) and LKH Key (LKH ID, Key Type, RESERVED,
# Key Creation Date, Key Expiration Date, Key Handle; Key Data follows)
_LKH_ARRAY_HDR = struct.Struct("!BHBHHI")
_LKH_KEY_HDR = struct.Struct("!HBBIII")
_tnew = tuple.__new__  # Attribute is a NamedTuple: skip its Python-level __new__
_LENGTH = struct.Struct("!I")  # the ISAKMP header's Length field (octets 24-27)
MAX_LKH_PARTS = 0xFFFF


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Rekeyed(MemberEvent):
    """Member: a GROUPKEY-PUSH was accepted.  ``teks``: new TEKs (install them); ``kek``: the
    Rekey SA now in force (new or unchanged); ``seq``: the PUSH's SEQ (persist as last_seq);
    ``lkh``: the member's LKH path after the update (None without LKH); ``gap``: the
    activation/deactivation delays the PUSH carried (None: no GAP payload)."""

    group_id: int
    teks: tuple[GroupTek, ...]
    kek: GroupKek
    seq: int
    lkh: LkhKeys | None = None
    new_kek: bool = False
    gap: pw.GapDelays | None = None


@dataclass(frozen=True, slots=True)
class TeksRefreshed(MemberEvent):
    """Member: the key server gave the group's current TEKs over the registration's own SA
    (G-IKEv2 GSA_INBAND_REKEY, no KEK): install the new ones as after a PUSH; ``seq``: the
    exchange's Message ID + 1 (the member's count of rekeys)."""

    group_id: int
    teks: tuple[GroupTek, ...]
    seq: int
    gap: pw.GapDelays | None = None


@dataclass(frozen=True, slots=True)
class TeksDeleted(MemberEvent):
    """Member: the key server deleted TEKs (``spis``; empty with ``all`` = every TEK)."""

    group_id: int
    spis: tuple[int, ...]
    all: bool = False


@dataclass(frozen=True, slots=True)
class KekDeleted(MemberEvent):
    """Member: the key server deleted the Rekey SA; no more PUSH under it (re-register)."""

    group_id: int
    spi: bytes


@dataclass(frozen=True, slots=True)
class Evicted(MemberEvent):
    """Member: an LKH update renewed the group KEK and this member cannot derive it."""

    group_id: int


@dataclass(frozen=True, slots=True)
class LkhPartReceived(MemberEvent):
    """Member: part ``index`` of ``count`` of a split LKH update was accepted and applied to
    the member's pending LKH keys (nothing installed yet: the last part brings the new KEK, as
    :class:`Rekeyed`, or :class:`Evicted`).  ``seq``: the part's SEQ."""

    group_id: int
    seq: int
    index: int
    count: int


@dataclass(frozen=True, slots=True)
class PushRejected(MemberEvent):
    """Member: a datagram was dropped (logged); the receiver's state is unchanged.
    ``duplicate``: the very datagram last accepted, again (the key server sends each PUSH to
    the rekey address and, unicast, to the member: the second copy is expected, logged at
    debug level only).  ``resync``: an authentic PUSH (its signature verified) this member
    cannot apply, e.g. an LKH update out of sequence: it missed a rekey and must register
    again (an unauthenticated datagram never sets it)."""

    group_id: int
    reason: str
    duplicate: bool = False
    #: one of :data:`PUSH_REJECT_CAUSES` (a metric label; ``reason`` says it in words)
    cause: str = "content"
    resync: bool = False


#: why a member dropped a GROUPKEY-PUSH, in few words, in the order of the checks:
#: no Rekey SA any more, the datagram does not parse, another KEK's cookies, a source other
#: than the Rekey SA's, a SEQ already seen, a signature that does not verify, an authentic
#: PUSH whose content cannot be used, a copy of the last PUSH, an internal error
PUSH_REJECT_CAUSES = ("not_member", "malformed", "wrong_kek", "wrong_source", "replay",
                      "signature", "content", "duplicate", "internal")


class _Reject(Exception):
    def __init__(self, reason: str, cause: str = "content", *, resync: bool = False,
                 quiet: bool = False) -> None:
        super().__init__(reason)
        self.cause = cause
        self.resync = resync
        self.quiet = quiet  # expected (input after eviction or KEK deletion): debug level


# ------------------------------------------------------------------------------------ crypto


def _cbc(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def lkh_kek_keymat(root_key: bytes, spi: bytes, cipher: KekCipher | str) -> bytes:
    """KEK_ALGORITHM_KEY (IV || key) of a KEK distributed by an LKH update: derived from the
    new LKH root key and the new KEK SPI (see the module docstring)."""
    c = KEK_CIPHERS[cipher] if isinstance(cipher, str) else cipher
    return HKDFExpand(hashes.SHA256(), c.block_bytes + c.key_bytes, _LKH_KEK_INFO + bytes(spi)).derive(bytes(root_key))


def _hash(suite: SignatureSuite) -> hashes.HashAlgorithm:
    return {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[suite.hash_name]()


def _coord_bytes(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def signature_length(suite: SignatureSuite, public_key: Any) -> int:
    """Bytes of the SIG data; ``public_key`` may be the private key too (both carry the curve
    and the size, and deriving the public key costs more than the rest of this)."""
    if suite.key_type == "ec":
        return 2 * _coord_bytes(public_key.curve)
    return (public_key.key_size + 7) // 8


def sign_push(suite: SignatureSuite, private_key: Any, data: bytes) -> bytes:
    """SIG data over ``data`` (= "rekey" || HDR || payloads before SIG)."""
    h = _hash(suite)
    if suite.key_type == "ec":
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != suite.curve:
            raise ValueError(f"signing key does not fit {suite.name}")
        r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(h)))
        n = _coord_bytes(private_key.curve)
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError(f"signing key does not fit {suite.name}")
    return private_key.sign(data, apadding.PKCS1v15(), h)


def verify_push_signature(suite: SignatureSuite, public_key: Any, data: bytes, sig: bytes) -> bool:
    h = _hash(suite)
    try:
        if suite.key_type == "ec":
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            n = _coord_bytes(public_key.curve)
            if len(sig) != 2 * n:
                return False
            r, s = int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big")
            if not (r and s):
                return False
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(h))
            return True
        if not isinstance(public_key, rsa.RSAPublicKey) or len(sig) != (public_key.key_size + 7) // 8:
            return False
        try:
            public_key.verify(sig, data, apadding.PKCS1v15(), h)
            return True
        except InvalidSignature:
            # gdoid: PKCS#1 type 1 over the bare hash, no DigestInfo (docs/decisions/wire.md ambiguity 2)
            digest = hashes.Hash(_hash(suite))
            digest.update(data)
            got = public_key.recover_data_from_signature(sig, apadding.PKCS1v15(), None)
            return hmac.compare_digest(got, digest.finalize())
    except (InvalidSignature, ValueError, OverflowError):
        return False


# ------------------------------------------------------------------------------------ key server


def _push_direction(tp) -> SaDirection:
    return SaDirection.SYMMETRIC if tp.senders is None else SaDirection.RECEIVER_ONLY


def build_push(
    group: GroupPolicy,
    *,
    kek: KekKeys,
    signing_key: Any,
    signing_public_key: bytes | None = None,
    seq: int,
    new_teks: Seq[TekKeys] = (),
    new_kek: KekKeys | None = None,
    lkh_update: LkhUpdate | None = None,
    lkh_root_key: bytes | None = None,
    lkh_key_type: int = KEY_TYPE_AES_KEYWRAP,
    lkh_part: tuple[int, int] | None = None,
    deletes: Seq[int] = (),
    delete_kek: bool = False,
    now: int,
    rekey_source: tuple[str, int] | None = None,
) -> bytes:
    """One GROUPKEY-PUSH datagram: ``HDR*, SEQ, [D...,] [SA, KD,] SIG`` (RFC 6407 section 4).

    ``kek``: the current Rekey SA (its SPI is the cookie pair, its key encrypts).  ``seq``: durable
    before the datagram is sent (see the module docstring).
    ``new_teks``: TEKs of ``group``'s TEK policies (by name) to announce.  ``new_kek``: a
    replacement Rekey SA.  ``lkh_update`` (with ``new_kek`` and ``lkh_root_key``, the tree's new
    group key): the KEK is sent as an LKH update and ``new_kek.keymat`` must be
    :func:`lkh_kek_keymat` of the root key.  ``lkh_part=(index, count)``: ``lkh_update`` is part
    ``index`` of ``count`` of a larger update (:func:`lkh_update_parts`; the parts go out with
    consecutive SEQs, only the last may carry TEKs).  ``deletes``: TEK SPIs to delete (``[0]`` =
    all).  ``signing_key``: the group's PUSH private key (``KekPolicy.signing_key`` loaded);
    ``signing_public_key``: its public key (DER SubjectPublicKeyInfo) when the caller holds it
    (:class:`gkm.group.Signer` does), else derived when needed (an LKH update).
    ``now``: wall seconds (remaining lifetimes).  Raises ValueError on inconsistent input.
    """
    if not 1 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"SEQ {seq} out of range")
    if lkh_update is not None:
        if new_kek is None or lkh_root_key is None:
            raise ValueError("an LKH update needs the new KEK and the new root key")
        if not hmac.compare_digest(new_kek.keymat, lkh_kek_keymat(lkh_root_key, new_kek.spi, new_kek.cipher)):
            raise ValueError("new KEK keymat is not derived from the LKH root key (lkh_kek_keymat)")
    # the one key members verify this PUSH with: an LKH PUSH's new KEK need not repeat it
    signer_der = _signer_der(signing_key, signing_public_key) if lkh_update is not None else None
    header, payloads = _push_payloads(group, kek, seq, new_teks, new_kek, lkh_update, lkh_key_type,
                                      lkh_part, deletes, delete_kek, now, rekey_source, signer_der)
    suite = group.kek.signature
    cipher = KEK_CIPHERS[kek.cipher]
    sig_len = signature_length(suite, signing_key)
    # HDR as signed: Length = 28 + payloads incl. SIG (4 + sig_len), no padding (gdoid)
    signed_msg = wire.encode_message(header, (*payloads, Signature(bytes(sig_len))))
    sig_start = len(signed_msg) - 4 - sig_len
    sig = sign_push(suite, signing_key, REKEY_PREFIX + signed_msg[:sig_start])
    assert len(sig) == sig_len
    bs = cipher.block_bytes
    # the sent message is the signed one with the signature filled in, zero padding to the
    # block size and the Length counting it (what encode_message(block_size=bs) gives, without
    # encoding every payload a second time)
    pad = -(len(signed_msg) - HEADER_LEN) % bs
    plain = b"".join((signed_msg[:24], _LENGTH.pack(len(signed_msg) + pad),
                      signed_msg[HEADER_LEN:sig_start + 4], sig, bytes(pad)))
    key = kek.keymat[bs:]
    iv = kek.keymat[:bs]
    return plain[:HEADER_LEN] + _cbc(key, iv, plain[HEADER_LEN:], True)


def _signer_der(signing_key: Any, given: bytes | None) -> bytes:
    """DER SubjectPublicKeyInfo of the signing key: ``given`` (the caller's, e.g. the group's
    :class:`gkm.group.Signer`), else derived."""
    if given is not None:
        return bytes(given)
    return signing_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _lkh_update_attributes(update: LkhUpdate, key_type: int) -> list[Attribute]:
    """One LKH_UPDATE_ARRAY attribute per chain (:meth:`LkhUpdate.chains`): the bytes
    :func:`wire.encode_lkh_array` gives for :meth:`LkhUpdate.to_arrays` (a test holds them
    equal), packed from the entries in one pass: a batch eviction sends ~20,000 keys."""
    array_hdr, key_hdr = _LKH_ARRAY_HDR.pack, _LKH_KEY_HDR.pack
    out = []
    try:
        for chain in update.chains():
            w = chain[0].wrap
            parts = [array_hdr(LKH_VERSION, len(chain), 0, w.level, 0, w.handle)]
            size = len(chain[0].wrapped)
            for e in chain:
                if len(e.wrapped) != size:  # no length on the wire: one size per array
                    raise ValueError("LKH update: wrapped keys of different sizes in one array")
                n = e.new
                parts.append(key_hdr(n.level, key_type, 0, 0, 0, n.handle))
                parts.append(e.wrapped)
            out.append(_tnew(Attribute, (LkhKeyAttr.LKH_UPDATE_ARRAY, b"".join(parts))))
    except struct.error as e:
        raise ValueError(f"LKH update does not fit RFC 6407 LKH arrays: {e}") from None
    return out


def _push_payloads(group, kek, seq, new_teks, new_kek, lkh_update, lkh_key_type, lkh_part,
                   deletes, delete_kek, now, rekey_source, signer_der=None):
    """HDR and the payloads before SIG of a PUSH (:func:`build_push`, :func:`lkh_part_budget`).
    ``signer_der``: the public key (DER) of the key signing this PUSH, if known."""
    if group.kek is None:
        raise ValueError(f"group {group.group_id} has no KEK policy: no GROUPKEY-PUSH")
    if len(kek.spi) != 16:
        raise ValueError("KEK SPI must be 16 octets")
    if new_kek is not None and new_kek.spi == kek.spi:
        raise ValueError("a new KEK needs a new SPI (RFC 6407 section 4)")
    if lkh_part is not None:
        index, count = lkh_part
        if lkh_update is None or not 1 <= index <= count <= MAX_LKH_PARTS:
            raise ValueError(f"LKH part {index}/{count} (needs an LKH update, 1 <= index <= count <= {MAX_LKH_PARTS})")
        if index < count and (new_teks or deletes or delete_kek):
            raise ValueError(f"LKH part {index}/{count}: only the last part may carry TEKs or deletes")
        if count == 1:
            lkh_part = None
    payloads: list = [Sequence(seq)]
    tek_dels = tuple(int(s) for s in deletes)
    if tek_dels:
        spis = () if tek_dels == (0,) else tuple(s.to_bytes(4, "big") for s in tek_dels)
        payloads.append(Delete(Doi.GDOI, TekProtocol.IPSEC_ESP, 4, spis))
    if delete_kek:
        payloads.append(Delete(Doi.GDOI, TekProtocol.KEK, 16, (bytes(kek.spi),)))
    kids: list = []
    packets: list = []
    if new_kek is not None:
        pub = new_kek.public_key
        kids.append(pw.sa_kek(group.kek, new_kek.spi, rekey_source, new_kek.expires - now, pw.signature_key_bits(pub)))
    # SA KEK, GAP, SA TEKs (RFC 6407 section 5.2.1); no GAP in an LKH update without TEKs or
    # Deletes (an eviction's parts): the delays apply to TEKs, and it has none
    if new_teks or (new_kek is not None and (lkh_update is None or tek_dels)):
        kids.append(pw.gap(group))
    policies = {tp.name: tp for tp in group.teks}
    for tk in new_teks:
        tp = policies.get(tk.name)
        if tp is None:
            raise ValueError(f"TEK {tk.name!r} is not in group {group.group_id}'s policy")
        kids.append(pw.sa_tek(tp, tk.spi, _push_direction(tp), tk.expires - now))
        packets.append(pw.tek_packet(tk.spi, tk.enc_keymat, tk.auth_key))
    if new_kek is not None:
        if lkh_update is None:
            packets.append(pw.kek_packet(new_kek.spi, new_kek.keymat, new_kek.public_key))
        else:
            # The KEK packet says only which key verifies PUSHes under the new KEK; when that
            # is the key this PUSH is signed with, a member that accepts the PUSH holds it
            # already (it verified the signature with it) and keeps it: nothing to send.
            kek_attrs = () if signer_der == new_kek.public_key else \
                (Attribute(KekKeyAttr.SIG_ALGORITHM_KEY, bytes(new_kek.public_key)),)
            packets.append(KeyPacket(KdType.KEK, bytes(new_kek.spi), kek_attrs))
            attrs = []
            if lkh_part is not None:
                attrs.append(Attribute(LkhKeyAttr.LKH_UPDATE_PART, _PART.pack(*lkh_part)))
            attrs += _lkh_update_attributes(lkh_update, lkh_key_type)
            packets.append(KeyPacket(KdType.LKH, bytes(new_kek.spi), tuple(attrs)))
    if kids:
        payloads.append(GdoiSa(tuple(kids)))
        payloads.append(KeyDownload(tuple(packets)))
    if len(payloads) == 1:
        raise ValueError("a GROUPKEY-PUSH without SA, KD or Delete says nothing")
    header = Header(bytes(kek.spi[:8]), bytes(kek.spi[8:]), ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION)
    return header, payloads


#: More than the bytes of an LKH part PUSH that are neither LKH arrays, the new KEK's public key
#: nor the signature (HDR, SEQ, SA KEK with IPv6 IDs, KD and key packet headers, the part
#: attribute, SIG header, CBC padding: about 300); a test holds it against lkh_part_budget.
FIXED_PUSH_BOUND = 512


def lkh_part_budget(group: GroupPolicy, *, kek: KekKeys, new_kek: KekKeys, signing_key: Any,
                    now: int, max_size: int | None = None,
                    rekey_source: tuple[str, int] | None = None,
                    signing_public_key: bytes | None = None) -> int:
    """Bytes of LKH_UPDATE_ARRAYs (:meth:`LkhUpdate.wire_size`) that fit one LKH part PUSH
    (:func:`build_push` with ``lkh_part``, no TEKs) of at most ``max_size`` bytes (default: the
    group's ``kek.max_push_size``): the datagram minus its HDR, SEQ, SA KEK, KEK packet, LKH
    packet header, part attribute, SIG and the worst case of CBC padding.  No signing.
    ``signing_public_key``: as for :func:`build_push` (pass the same)."""
    if group.kek is None:
        raise ValueError(f"group {group.group_id} has no KEK policy: no GROUPKEY-PUSH")
    limit = group.kek.max_push_size if max_size is None else max_size
    header, payloads = _push_payloads(group, kek, 1, (), new_kek, LkhUpdate(0, ()), KEY_TYPE_AES_KEYWRAP,
                                      (1, 2), (), False, now, rekey_source,
                                      _signer_der(signing_key, signing_public_key))
    sig_len = signature_length(group.kek.signature, signing_key)
    fixed = len(wire.encode_message(header, (*payloads, Signature(bytes(sig_len)))))
    return limit - fixed - (KEK_CIPHERS[kek.cipher].block_bytes - 1)


def lkh_update_parts(group: GroupPolicy, update: LkhUpdate, *, kek: KekKeys, new_kek: KekKeys,
                     signing_key: Any, now: int, max_size: int | None = None,
                     rekey_source: tuple[str, int] | None = None,
                     signing_public_key: bytes | None = None) -> list[LkhUpdate]:
    """``update`` as the parts to send, part ``i`` of ``n`` in a PUSH built with
    ``build_push(..., lkh_update=parts[i - 1], lkh_part=(i, n))`` under ``kek``, SEQs
    consecutive (reserve ``n`` with ``store.next_seq`` first), so that no datagram exceeds
    ``max_size`` (default: the group's ``kek.max_push_size``).  ``[update]`` when it fits one.
    Raises ValueError when the update needs more than 65535 parts."""
    if group.kek is None:
        raise ValueError(f"group {group.group_id} has no KEK policy: no GROUPKEY-PUSH")
    limit = group.kek.max_push_size if max_size is None else max_size
    sig_len = signature_length(group.kek.signature, signing_key)
    spare = limit - len(new_kek.public_key) - sig_len - FIXED_PUSH_BOUND
    if update.min_wire_size() <= spare and update.wire_size() <= spare:
        return [update]  # fits with room to spare: no need to measure the budget exactly
    budget = lkh_part_budget(group, kek=kek, new_kek=new_kek, signing_key=signing_key, now=now,
                             max_size=max_size, rekey_source=rekey_source,
                             signing_public_key=signing_public_key)
    try:
        parts = split_lkh_update(update, budget)
    except LkhError as e:
        raise ValueError(f"LKH update cannot be split into PUSHes of {group.kek.max_push_size if max_size is None else max_size} bytes: {e}") from None
    if len(parts) > MAX_LKH_PARTS:
        raise ValueError(f"LKH update needs {len(parts)} parts, more than {MAX_LKH_PARTS}")
    return parts


# ------------------------------------------------------------------------------------ member


def _selector(t: GroupTek):
    return t.selector


class PushReceiver:
    """Member side of GROUPKEY-PUSH for one group (RFC 6407 section 4.4).

    ``kek``, ``last_seq`` and ``lkh`` come from :class:`~gkm.gdoi.events.Registered` (or the
    previous :class:`Rekeyed`); ``teks``: the TEKs held (to keep their SA direction).  Inputs:
    ``receive_datagram(data, addr, now)``; outputs: ``next_event()``.  No exception escapes an
    input; any rejection leaves ``kek``/``last_seq``/``lkh_view`` unchanged.

    A group served over GDOI and G-IKEv2 multicasts both protocols' rekeys to one address: an
    IKEv2 datagram (major version 2 at offset 17) is dropped first and quietly, counted as
    ``other_protocol`` (:mod:`gkm.ikev2.member_rekey` does the converse).
    """

    def reregistration(self, group, wall_time_offset: float = 0.0) -> None:
        """A registration over what this receiver holds (G-IKEv2 in band: GSA_REGISTRATION over
        the kept IKE SA); None: a new registration (GDOI: GROUPKEY-PULL after phase 1)."""
        return None

    def receiver_state(self) -> None:
        """What the member's saved state (:mod:`gkm.gdoi.member_state`) needs of this receiver
        beyond the member engine's KEK, SEQ and LKH path: nothing (G-IKEv2's receiver gives
        a :class:`~gkm.gdoi.member_state.GikeRekeyState`)."""
        return None

    def __init__(
        self,
        group_id: int,
        kek: GroupKek,
        lkh_view: LkhMemberView | LkhKeys | None = None,
        last_seq: int = 0,
        *,
        teks: Iterable[GroupTek] = (),
        allowed_suites: frozenset[str] | None = None,
        check_source: bool = False,
    ) -> None:
        self.group_id = group_id
        self.kek = kek
        if isinstance(lkh_view, LkhKeys):
            lkh_view = LkhMemberView.from_download_array(lkh_view.keys, epoch=0)
        self.lkh_view: LkhMemberView | None = lkh_view
        self.last_seq = int(last_seq or 0)
        self.allowed_suites = allowed_suites
        self.check_source = check_source
        self.evicted = False
        self.closed = False
        #: parts 1..k of a split LKH update so far: (new KEK SPI, SEQ of part k, keys derived)
        self._lkh_parts: tuple[bytes, int, LkhPartial] | None = None
        self._directions = {_selector(t): t.direction for t in teks}
        self._events: deque = deque()
        self.stats = {"accepted": 0, "rejected": 0, "duplicates": 0, "acks": 0, "other_protocol": 0}
        #: SHA-256 of the last datagrams accepted -> (its SEQ, the ACK sent for it or None)
        self._recent: OrderedDict[bytes, tuple[int, tuple[bytes, Any] | None]] = OrderedDict()
        self.ack_address: Any = None  # our address in the ACK's ID (None: no ACKs)
        self._seq_taken = 0
        self._out: list[tuple[bytes, Any]] = []

    def acknowledge_as(self, address) -> None:
        """Our IP address (the source of the last GROUPKEY-PULL): ACKs name it in their ID."""
        self.ack_address = ipaddress.ip_address(address) if address is not None else None

    def __repr__(self) -> str:
        return f"PushReceiver(group={self.group_id}, kek={self.kek.spi.hex()}, last_seq={self.last_seq})"

    def next_event(self):
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        """GROUPKEY-PUSH-ACKs: (datagram, address of the PUSH it answers)."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        data = bytes(data)
        if is_ikev2(data):
            self.stats["other_protocol"] += 1  # a GSA_REKEY for the group's G-IKEv2 members
            return
        digest = hashlib.sha256(data).digest()
        if digest in self._recent:
            self.stats["duplicates"] += 1
            seq, ack = self._recent[digest]
            log.debug("gdoi member group %s: GROUPKEY-PUSH from %r: a copy of the one of "
                      "SEQ %d already taken, dropped", self.group_id, addr, seq)
            self._events.append(PushRejected(self.group_id, f"copy of the PUSH of SEQ {seq} "
                                             "already taken", duplicate=True,
                                             cause="duplicate"))
            if ack is not None:  # our ACK may have been lost: the key server sent it again
                self._out.append((ack[0], addr))
                self.stats["acks"] += 1
            return
        kek_before = self.kek
        try:
            events = self._receive(data, addr)
        except _Reject as e:
            self._reject(str(e), addr, e.cause, resync=e.resync, quiet=e.quiet)
        except Exception as e:  # noqa: BLE001 - no exception escapes an input
            self._reject(f"internal error: {type(e).__name__}: {e}", addr, "internal")
        else:
            self.stats["accepted"] += 1
            ack = self._ack(kek_before, self._seq_taken, addr)
            self._recent[digest] = (self._seq_taken, ack)
            while len(self._recent) > RECENT_PUSHES:
                self._recent.popitem(last=False)
            self._events.extend(events)

    def _ack(self, kek: GroupKek, seq: int, addr: Any) -> tuple[bytes, Any] | None:
        """The ACK of a PUSH just processed (RFC 8263 section 4), queued; None if none is due."""
        if self.evicted or self.ack_address is None or addr is None \
                or self.kek.ack_requested not in ACK_TYPES:
            return None
        t = self.kek.ack_requested
        data = build_push_ack(spi=kek.spi, seq=seq, address=self.ack_address,
                              key=ack_key(kek.key, kek.spi, t), ack_type=t)
        self._out.append((data, addr))
        self.stats["acks"] += 1
        return data, addr

    def _reject(self, reason: str, addr: Any, cause: str, *, resync: bool = False,
                quiet: bool = False) -> None:
        self.stats["rejected"] += 1
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "gdoi member group %s: GROUPKEY-PUSH from %r dropped: %s", self.group_id, addr, reason)
        self._events.append(PushRejected(self.group_id, reason, cause=cause, resync=resync))

    # -- the checks, in RFC 6407 section 4.4 order; state is assigned only at the end

    def _receive(self, data: bytes, addr: Any) -> list:
        # After its end the receiver refuses everything, quietly: the key server's follow-up
        # (the TEK PUSH under the new KEK of an eviction, the unicast copies) is expected.
        if self.closed:
            raise _Reject("the Rekey SA was deleted: re-register", "not_member", quiet=True)
        if self.evicted:
            raise _Reject("evicted from the group: re-register", "not_member", quiet=True)
        try:
            header, np, length = wire.decode_header(data)
        except wire.WireError as e:
            raise _Reject(f"bad header: {e}", "malformed") from None
        if header.exchange != ExchangeType.GROUPKEY_PUSH:
            raise _Reject(f"exchange {header.exchange} is not GROUPKEY-PUSH", "malformed")
        if int(header.flags) != int(Flags.ENCRYPTION) or header.message_id != 0:
            raise _Reject("flags must be E only and Message ID 0 (RFC 6407 section 4.2)", "malformed")
        if not hmac.compare_digest(header.icookie + header.rcookie, self.kek.spi):
            raise _Reject("cookies do not match the KEK SPI", "wrong_kek")
        if self.check_source and addr is not None:
            try:
                host = addr[0] if isinstance(addr, tuple) else addr
                ok = self.kek.src.prefixlen == 0 or ipaddress.ip_address(host) in self.kek.src
            except ValueError:
                ok = False
            if not ok:
                raise _Reject(f"source {addr!r} is not the Rekey SA's source", "wrong_source")
        kc = self.kek.kek_cipher
        bs = kc.block_bytes
        if length != len(data):
            raise _Reject(f"header Length {length} but {len(data)} bytes", "malformed")
        body = data[HEADER_LEN:]
        if not body or len(body) % bs:
            raise _Reject(f"encrypted body of {len(body)} bytes is not a multiple of {bs}", "malformed")
        plain = _cbc(self.kek.key, self.kek.iv, body, False)
        try:
            msg = wire.decode_message(data[:HEADER_LEN] + plain, block_size=bs)
        except wire.WireError as e:
            raise _Reject(f"malformed: {e}", "malformed") from None
        pl = msg.payloads
        # form: SEQ first, SIG last, Deletes, then at most one SA followed by one KD
        if len(pl) < 2 or type(pl[0]) is not Sequence or type(pl[-1]) is not Signature:
            raise _Reject("not SEQ ... SIG (RFC 6407 section 4)", "malformed")
        mid = pl[1:-1]
        kinds = [type(p) for p in mid]
        dels = [p for p in mid if type(p) is Delete]
        rest = [p for p in mid if type(p) is not Delete]
        if [type(p) for p in rest] not in ([], [GdoiSa, KeyDownload]):
            raise _Reject(f"payloads {[getattr(t, '__name__', t) for t in kinds]} are not [D...] [SA, KD]", "malformed")
        if not mid:
            raise _Reject("neither SA/KD nor Delete", "malformed")
        seq = pl[0].number
        if seq <= self.last_seq:
            raise _Reject(f"SEQ {seq} not greater than {self.last_seq} (replay)", "replay")
        # signature: "rekey" || HDR || payloads before SIG (see the module docstring)
        sig = pl[-1].data
        chain_len = len(plain) - len(msg.padding)
        sig_start = chain_len - 4 - len(sig)
        before = plain[:sig_start]
        if sig_start < 0 or plain[sig_start + 4:chain_len] != sig:
            raise _Reject("SIG payload position", "signature")
        suite = SIGNATURE_SUITES.get(self.kek.signature)
        if suite is None:
            raise _Reject(f"signature suite {self.kek.signature!r} unknown", "signature")
        try:
            pub = load_der_public_key(self.kek.signing_public_key)
        except (ValueError, UnsupportedAlgorithm):
            raise _Reject("the KEK's signing public key does not load", "signature") from None
        hdr_signed = wire.encode_header(msg.header, np, HEADER_LEN + chain_len)
        ok = verify_push_signature(suite, pub, REKEY_PREFIX + hdr_signed + before, sig)
        if not ok:
            hdr_sent = data[:HEADER_LEN]
            ok = verify_push_signature(suite, pub, REKEY_PREFIX + hdr_sent + before, sig)
        if not ok:
            raise _Reject("signature does not verify", "signature")
        self._seq_taken = seq  # read by receive_datagram only if the processing succeeds
        # -- authentic: process into new values, assign at the end
        events: list = []
        closed = False
        deleted_teks: list[int] = []
        delete_all = False
        for d in dels:
            if d.doi != Doi.GDOI:
                raise _Reject(f"Delete DOI {d.doi}")
            if d.protocol_id == TekProtocol.KEK:
                if d.spi_size != 16 or any(s != self.kek.spi for s in d.spis):
                    raise _Reject("KEK Delete for another SPI")
                closed = True
            elif d.protocol_id == TekProtocol.IPSEC_ESP:
                if d.spi_size != 4:
                    raise _Reject("TEK Delete SPI size is not 4")
                if not d.spis:
                    delete_all = True
                for s in d.spis:
                    v = int.from_bytes(s, "big")
                    if v == 0:
                        delete_all = True
                    else:
                        deleted_teks.append(v)
            else:
                raise _Reject(f"Delete of protocol {d.protocol_id} not supported")
        teks: tuple[GroupTek, ...] = ()
        new_kek = None
        new_view = None
        evicted = False
        part = None
        gap = None
        if rest:
            teks, new_kek, new_view, evicted, part = self._process_sa_kd(rest[0], rest[1], seq)
            gap = _gap_of(rest[0])  # sakd.read_sa checked it
        if part is not None:
            # a part before the last of a split LKH update: keep what it gave, install nothing
            if dels:
                raise _Reject("Delete payloads in an LKH update part before the last")
            spi, partial = part
            self._lkh_parts = (spi, seq, partial)
            self.last_seq = seq
            log.info("gdoi member group %s: GROUPKEY-PUSH SEQ %d accepted: LKH update part %d/%d",
                     self.group_id, seq, partial.applied, partial.count)
            return [LkhPartReceived(self.group_id, seq, partial.applied, partial.count)]
        if delete_all or deleted_teks:
            events.append(TeksDeleted(self.group_id, () if delete_all else tuple(deleted_teks), delete_all))
        if evicted:
            self.evicted = True
            self._lkh_parts = None
            self.last_seq = seq
            log.warning("gdoi member group %s: evicted by LKH update (SEQ %d)", self.group_id, seq)
            return [*events, Evicted(self.group_id)]
        # commit
        for t in teks:
            self._directions[_selector(t)] = t.direction
        lkh = None
        if new_view is not None:
            self.lkh_view = new_view
            self._lkh_parts = None
        if self.lkh_view is not None:
            lkh = LkhKeys(tuple((k.level, k.handle, key) for k, key in self.lkh_view.path))
        if new_kek is not None:
            self.kek = new_kek
            self.last_seq = 0  # RFC 6407 sections 4, 4.3: SEQ restarts at 1 under a new KEK
        else:
            self.last_seq = seq
        if rest:
            events.append(Rekeyed(self.group_id, teks, self.kek, seq, lkh, new_kek is not None, gap))
        if closed:
            self.closed = True
            events.append(KekDeleted(self.group_id, self.kek.spi))
        log.info("gdoi member group %s: GROUPKEY-PUSH SEQ %d accepted: %d TEK(s)%s%s", self.group_id, seq, len(teks),
                 ", new KEK" if new_kek else "", ", deletes" if dels else "")
        return events

    def _process_sa_kd(self, sa: GdoiSa, kd: KeyDownload, seq: int):
        try:
            offer = sakd.read_sa(sa, self.allowed_suites)
            packets = sakd.sort_kd(kd)
            sakd.pair(offer, packets)
        except sakd.SaKdError as e:
            raise _Reject(e.reason) from None
        kparams, kek_pkt, lkh_pkt = offer.kek, packets.kek, packets.lkh
        try:
            teks = []
            for t in offer.teks:
                g = pw.group_tek(self.group_id, t, packets.teks[t.spi])
                held = self._directions.get(_selector(g))
                if held is not None and held != g.direction:
                    g = _replace_direction(g, held)
                teks.append(g)
        except (pw.MappingError, ValueError) as e:
            raise _Reject(f"unusable TEK: {e}") from None
        new_kek = new_view = None
        if kparams is None:
            return tuple(teks), None, None, False, None
        if kparams.spi == self.kek.spi:
            raise _Reject("new SA KEK with the current SPI (RFC 6407 section 4: new cookie pair)")
        keymat = attr_bytes(kek_pkt.attributes, KekKeyAttr.KEK_ALGORITHM_KEY)
        pub = attr_bytes(kek_pkt.attributes, KekKeyAttr.SIG_ALGORITHM_KEY) or self.kek.signing_public_key
        if lkh_pkt is not None:
            if keymat is not None:
                raise _Reject("LKH update and a clear KEK_ALGORITHM_KEY (readable by evicted members)")
            if self.lkh_view is None:
                raise _Reject("LKH update but this member holds no LKH keys", resync=True)
            key_len = len(self.lkh_view.path[0][1])
            arrays = []
            part = None
            for t, v in lkh_pkt.attributes:
                if t == LkhKeyAttr.LKH_UPDATE_PART:
                    if part is not None or not isinstance(v, bytes) or len(v) != _PART.size:
                        raise _Reject("LKH update part attribute: one, TLV, 4 octets")
                    part = _PART.unpack(v)
                    if not 1 <= part[0] <= part[1]:
                        raise _Reject(f"LKH update part {part[0]} of {part[1]}")
                    continue
                if t != LkhKeyAttr.LKH_UPDATE_ARRAY or not isinstance(v, bytes):
                    raise _Reject(f"LKH key packet attribute {t} not supported in PUSH")
                try:
                    arr = wire.decode_lkh_array(v, update=True, key_data_length=key_len + _KEYWRAP_OVERHEAD)
                except wire.WireError as e:
                    raise _Reject(f"LKH update array: {e}") from None
                if any(k.key_type != KEY_TYPE_AES_KEYWRAP for k in arr.keys):
                    raise _Reject("LKH key type is not AES key wrap")
                arrays.append((arr.update, [(k.lkh_id, k.handle, k.key_data) for k in arr.keys]))
            view = LkhMemberView(self.lkh_view.path, epoch=self.lkh_view.epoch, degree=self.lkh_view.degree)
            update = LkhUpdate.from_arrays(view.epoch + 1, arrays)
            if part is not None and part[1] > 1:
                index, count = part
                partial = self._partial_for(kparams.spi, seq, index, count)
                if index < count and teks:
                    raise _Reject(f"TEKs in LKH update part {index}/{count} (only the last part may carry them)")
                try:
                    partial = apply_part(view, update, index, count, partial)
                except LkhEvicted:
                    return (), None, None, True, None
                except LkhError as e:
                    raise _Reject(f"LKH update part {index}/{count}: {e}", resync=True) from None
                if partial is not None:
                    return (), None, None, False, (bytes(kparams.spi), partial)
            else:
                try:
                    view.apply(update)
                except LkhEvicted:
                    return (), None, None, True, None
                except LkhError as e:
                    raise _Reject(f"LKH update: {e}", resync=True) from None
            if view.group_key[0].handle == self.lkh_view.group_key[0].handle:
                # An authentic PUSH moving the group to a new KEK that this member's keys do
                # not reach: it is out of the group (not a malformed message to shrug off).
                log.debug("gdoi member group %s: the LKH update of SEQ %d leaves this member's "
                          "group key as it was: it cannot derive the new KEK", self.group_id, seq)
                return (), None, None, True, None
            keymat = lkh_kek_keymat(view.group_key[1], kparams.spi, kparams.cipher)
            new_view = view
        elif keymat is None:
            raise _Reject("new KEK without KEK_ALGORITHM_KEY")
        attrs = (Attribute(KekKeyAttr.KEK_ALGORITHM_KEY, keymat), Attribute(KekKeyAttr.SIG_ALGORITHM_KEY, pub))
        try:
            new_kek = pw.group_kek(self.group_id, kparams, KeyPacket(KdType.KEK, kparams.spi, attrs))
        except pw.MappingError as e:
            raise _Reject(f"unusable KEK: {e}") from None
        return tuple(teks), new_kek, new_view, False, None

    def _partial_for(self, spi: bytes, seq: int, index: int, count: int) -> LkhPartial | None:
        """The pending parts part ``index`` continues (None for part 1, which starts over), or
        a precise refusal: parts must come one after the other, SEQ after SEQ, for one KEK."""
        held = self._lkh_parts
        if index == 1:
            return None
        if held is None:
            raise _Reject(f"LKH update part {index}/{count} at SEQ {seq} without parts 1..{index - 1} "
                          "(lost or reordered: re-register)", resync=True)
        h_spi, h_seq, partial = held
        if not hmac.compare_digest(h_spi, bytes(spi)) or partial.count != count \
                or index != partial.applied + 1 or seq != h_seq + 1:
            raise _Reject(f"LKH update part {index}/{count} at SEQ {seq} out of order: expected part "
                          f"{partial.applied + 1}/{partial.count} at SEQ {h_seq + 1}", resync=True)
        return partial


def _gap_of(sa: GdoiSa) -> pw.GapDelays | None:
    g = next((p for p in sa.payloads if type(p) is wire.Gap), None)
    return None if g is None else pw.read_gap(g)


def _replace_direction(t: GroupTek, direction: SaDirection) -> GroupTek:
    return dataclasses.replace(t, direction=direction)
