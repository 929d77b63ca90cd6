"""gkm.ikev2: sans-I/O IKEv2 (RFC 7296) and G-IKEv2 (RFC 9838) building blocks.

* :mod:`.message`, :mod:`.payloads`, :mod:`.gsa`: the wire codec (bytes <-> frozen values);
  decoders raise only :class:`~gkm.wire.errors.WireError` (payload, offset, reason), with the
  subclass :class:`~.errors.UnsupportedCriticalPayload` for RFC 7296 §2.5.
* :mod:`.keys`: prf+, SKEYSEED and SK_* (RFC 7296 §2.13-2.14), the RFC 9370 update after an
  additional key exchange; :mod:`.sk`: SK payload protect/unprotect (AES-GCM-16, AES-CBC with
  HMAC-SHA2).
* :mod:`.kex`: P-256, X25519, ML-KEM-768; :mod:`.sa_init`: IKE_SA_INIT (+ ML-KEM-768 over
  IKE_INTERMEDIATE, RFC 9370) initiator and responder engines, COOKIE under load;
  :mod:`.events`: their events (``Ikev2Event``, a :class:`gkm.events.Event`).
* :mod:`.intauth` (RFC 9242 IntAuth), :mod:`.auth` (AUTH: PSK, RFC 7427 signatures),
  :mod:`.registration` (GSA_AUTH, member and GCKS), :mod:`.gsa_map` (group policy and keys <->
  GSA/KD).
* :mod:`.constants`: the registries.

No sockets, clocks or state: engines built on these take bytes and time and return bytes.

GSA_REKEY (RFC 9838 §2.4): :mod:`.rekey` (``RekeySender``, ``RekeyReceiver``, their events),
:mod:`.rekey_sa` (the Rekey SA), :mod:`.rekey_auth` (its signatures), :mod:`.gsa_keys` (wrapped
keys, Key Paths), :mod:`.tek_policy` (ESP policy <-> ``GroupTek``), :mod:`.lkh_map` (LKH updates as
WRAP_KEYs); decisions in docs/decisions/g-ikev2.md.
"""

from .constants import *  # noqa: F401,F403 - the registries are part of the API
from .errors import UnsupportedCriticalPayload, WireError
from .gsa import GroupKeyBag, GroupSa, GsaPolicy, GwPolicy, KeyDownload, MemberKeyBag
from .message import Header, Message, decode_header, decode_message, decode_payloads, encode_message, encode_payload, encode_payloads
from .payloads import (
    Authentication, Certificate, CertificateRequest, Delete, Encrypted, IdGroup, IdInitiator, IdResponder,
    KeyExchange, Nonce, Notify, Proposal, SecurityAssociation, TrafficSelector, Transform, TsInitiator,
    TsResponder, UnknownPayload, VendorId,
)
