"""gkm.wire: sans-I/O codec of ISAKMP/IKEv1 (RFC 2408/2407/2409) and GDOI (RFC 6407) messages.

Bytes in, frozen typed values out, and back: ``decode_message(data) -> Message``,
``encode_message(header, payloads, *, block_size=None) -> bytes``.  No crypto, no I/O.
Decoders raise only :class:`WireError`.
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
