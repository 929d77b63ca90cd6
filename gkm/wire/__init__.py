"""gkm.wire: sans-I/O codec of ISAKMP/IKEv1 (RFC 2408/2407/2409) and GDOI (RFC 6407) messages.

Bytes in, frozen typed values out, and back.  No crypto, no I/O, no state; decoders raise only
:class:`WireError` (payload, offset, reason).

Reading::

    header, next_payload, length = decode_header(datagram)    # before decrypting
    msg = decode_message(header_and_plaintext, block_size=16)  # -> Message(header, payloads, padding)
    msg.get(Sequence).number; msg.all(SaTek); msg.unknown; msg.to_bytes() == input

Writing::

    encode_message(Header(icky, rcky, ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION),
                   (Sequence(1), GdoiSa((SaKek(...), SaTek(...))), KeyDownload(...), Signature(sig)),
                   block_size=16)   # header + chain + zero padding; encrypt bytes 28.. in place

Payload classes: SecurityAssociation/Proposal/Transform, KeyExchange, Identification,
Certificate, CertificateRequest, Hash, Signature, Nonce, Notification, Delete, VendorId
(:mod:`.ikev1`); GdoiSa with SaKek/Gap/SaTek(/SaTekOther), KeyDownload/KeyPacket, Sequence, Gap,
LKH arrays (:mod:`.gdoi`); UnknownPayload.  Attributes are ``Attribute(type, value)`` with an
int value for the TV form and bytes for TLV.  :mod:`.examples` builds every exchange.

Decisions on ambiguities (each also at the code it governs):

* RESERVED fields must be zero, else refused (RFC 2408 §2.5.2).  IKEv1 has no critical bit: the
  octet after Next Payload is RESERVED (§3.2), so every unknown payload type has the bit clear
  and is skipped: kept as UnknownPayload (exact re-encoding) and listed in Message.unknown; the
  engine decides on INVALID-PAYLOAD-TYPE (§5.1).  Proposal/Transform/SA KEK/SA TEK outside an SA
  are refused; GAP is allowed at the top level (RFC 6407 §3.2 message 3).
* SA layout: the GDOI layout (RFC 6407 §5.2) iff DOI 2 in GROUPKEY-PULL/PUSH; a DOI-2 SA in
  phase 1 (RFC 6407 §2.1) uses the RFC 2408 §3.4-3.6 proposal layout.  The encoder refuses
  combinations that would not decode back.
* SA Attribute Next Payload 2 octets (RFC 6407 §5.2); SA KEK RESERVED2 4 octets (§5.3);
  SA KEK/TEK ID Data Len 1 octet, no "DST ID Prot" (figures of §5.3, §5.5.1).
* Padding (RFC 2409 App. B): zeros up to the block size; on receipt the chain end is found by
  Next Payload/Length, up to 255 bytes of padding of any content are kept, and the body length
  must be a multiple of ``block_size`` when given.  Cleartext messages may not have trailing
  bytes; the header Length must equal the data length (RFC 2408 §5.1).
* TV/TLV: both forms are accepted for any attribute and the form is kept (RFC 2409 App. A).
* Delete/Notification Protocol-ID: TEK protocol IDs with 0 = KEK under DOI 2 (RFC 6407 §5.9).
* LKH key data has no length (RFC 6407 §5.6.3.1): arrays stay bytes in the KD and are split by
  :func:`decode_lkh_array` with the key size (or by an even split).
* Not the codec's job: nonce sizes, payload order/counts per exchange, which attributes are
  mandatory, HASH/SIG inputs (use ``encode_payload``/``encode_payloads`` for exact bytes).
"""

from .attributes import Attribute, attr_bytes, attr_int, var_int
from .constants import *  # noqa: F401,F403 - the registries are part of the API
from .errors import WireError
from .gdoi import (
    Gap,
    GdoiSa,
    GroupId,
    KeyDownload,
    KeyPacket,
    LkhArray,
    LkhKey,
    SaKek,
    SaTek,
    SaTekOther,
    Sequence,
    decode_lkh_array,
    encode_lkh_array,
)
from .header import Header, decode_header, encode_header
from .ikev1 import (
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    KeyExchange,
    Nonce,
    Notification,
    Proposal,
    SecurityAssociation,
    Signature,
    Transform,
    UnknownPayload,
    VendorId,
    id_data,
    id_value,
)
from .message import Message, Payload, decode_message, decode_payloads, encode_message, encode_payload, encode_payloads
