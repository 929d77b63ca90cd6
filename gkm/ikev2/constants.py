"""Numbers of IKEv2 (RFC 7296 §3 and the IANA "IKEv2 Parameters" registries), the intermediate
exchange (RFC 9242), multiple key exchanges (RFC 9370), ML-KEM in IKEv2
(draft-ietf-ipsecme-ikev2-mlkem) and G-IKEv2 (RFC 9838).

Decoders turn known numbers into these ``IntEnum`` members and keep unknown numbers as plain
``int`` (a member compares equal to its integer).  RFC 9838's IANA section leaves some numbers
"TBA"; the values below are the ones IANA assigned (IKEv2 Parameters registry): GSA_INBAND_REKEY
42, GIKE_UPDATE protocol 6, transform types KWA 13 and GCAUTH 14.  The REGISTRATION_FAILED
notify, the Signature Algorithm Identifier transform attribute and the "32-bit Unspecified
Numbers" SN transform are not included: their numbers are not written in the RFC text this
package was built from, and a guessed number on the wire is worse than none.
"""

from __future__ import annotations

from enum import IntEnum

HEADER_LENGTH = 28  # RFC 7296 §3.1
GENERIC_HEADER_LENGTH = 4  # RFC 7296 §3.2
IKEV2_VERSION = 0x20  # major 2, minor 0 (RFC 7296 §3.1)


class PayloadType(IntEnum):
    """Next Payload values (RFC 7296 §3.2, RFC 9838 §4)."""

    NONE = 0
    SA = 33  # also SAg, the GM's supported transforms (RFC 9838 §4.2)
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    GSPM = 49  # RFC 6467
    IDG = 50  # RFC 9838 §4.1
    GSA = 51  # RFC 9838 §4.3
    KD = 52  # RFC 9838 §4.4
    SKF = 53  # RFC 7383


class ExchangeType(IntEnum):
    """RFC 7296 §3.1, RFC 9838 §7 (IANA), RFC 9242 §3, RFC 9370 §2.2.3."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    GSA_AUTH = 39
    GSA_REGISTRATION = 40
    GSA_REKEY = 41
    GSA_INBAND_REKEY = 42
    IKE_INTERMEDIATE = 43
    IKE_FOLLOWUP_KE = 44


class HeaderFlags(IntEnum):
    """Header flag bits (RFC 7296 §3.1); the other five bits are reserved."""

    NONE = 0
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class ProtocolId(IntEnum):
    """Security Protocol Identifiers (RFC 7296 §3.3.1, RFC 9838: GIKE_UPDATE)."""

    NONE = 0  # also the GW policy / member key bag marker (RFC 9838 §4.3.2, §4.4.2)
    IKE = 1
    AH = 2
    ESP = 3
    GIKE_UPDATE = 6


class TransformType(IntEnum):
    """RFC 7296 §3.3.2, RFC 9370 §2.2.1 (ADDKE1..7), RFC 9838 §4.3.1.1 (KWA, GCAUTH)."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    KE = 4  # "Diffie-Hellman group" in RFC 7296, renamed by RFC 9370
    SN = 5  # "Extended Sequence Numbers" in RFC 7296, renamed by RFC 9827
    ADDKE1 = 6
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12
    KWA = 13
    GCAUTH = 14


class TransformAttr(IntEnum):
    KEY_LENGTH = 14  # RFC 7296 §3.3.5, TV


class Encr(IntEnum):
    AES_CBC = 12  # RFC 3602
    AES_GCM_8 = 18  # RFC 5282
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28  # RFC 7634


class Prf(IntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5  # RFC 4868
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class Integ(IntEnum):
    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12  # RFC 4868
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class KeyExchangeMethod(IntEnum):
    """Transform Type 4 IDs (RFC 7296, RFC 5903, RFC 8031, draft-ietf-ipsecme-ikev2-mlkem)."""

    MODP2048 = 14
    ECP256 = 19
    ECP384 = 20
    ECP521 = 21
    CURVE25519 = 31
    CURVE448 = 32
    ML_KEM_512 = 35
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class KeyWrap(IntEnum):
    """RFC 9838 §4.3.1.1.2."""

    KW_5649_128 = 1
    KW_5649_192 = 2
    KW_5649_256 = 3
    KW_ARX = 4


class GcAuth(IntEnum):
    """Group Controller Authentication Method (RFC 9838 §4.3.1.1.1)."""

    IMPLICIT = 1
    DIGITAL_SIGNATURE = 2


class IdType(IntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class AuthMethod(IntEnum):
    RSA_SIG = 1
    PSK = 2  # Shared Key Message Integrity Code
    DSS_SIG = 3
    ECDSA_P256 = 9
    ECDSA_P384 = 10
    ECDSA_P521 = 11
    DIGITAL_SIGNATURE = 14  # RFC 7427


class CertEncoding(IntEnum):
    X509_SIGNATURE = 4
    CRL = 7
    HASH_URL_X509 = 12


class NotifyType(IntEnum):
    """Error types (1..16383) and status types (16384..) used by msec (RFC 7296 §3.10.1,
    RFC 8784, RFC 9242, RFC 9370, RFC 9838 §7)."""

    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    TS_UNACCEPTABLE = 38
    TEMPORARY_FAILURE = 43
    INVALID_GROUP_ID = 45
    AUTHORIZATION_FAILED = 46
    STATE_NOT_FOUND = 47  # RFC 9370
    INITIAL_CONTACT = 16384
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391  # RFC 7296; RFC 9838 §2.3.4: the Data-Security SAs' mode
    REKEY_SA = 16393
    GROUP_SENDER = 16429  # RFC 9838 (was SENDER_REQUEST_ID)
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431
    USE_PPK = 16435  # RFC 8784: post-quantum preshared keys
    PPK_IDENTITY = 16436
    NO_PPK_AUTH = 16437
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    ADDITIONAL_KEY_EXCHANGE = 16441  # RFC 9370


class PpkIdType(IntEnum):
    """The first octet of a PPK_ID (RFC 8784 §3)."""

    PPK_ID_OPAQUE = 1
    PPK_ID_FIXED = 2


class TsType(IntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class GsaAttr(IntEnum):
    """GSA policy attributes (RFC 9838 §4.3.1.2), all TLV."""

    KEY_LIFETIME = 1
    INITIAL_MESSAGE_ID = 2
    NEXT_SPI = 3


class GwAttr(IntEnum):
    """Group-wide policy attributes (RFC 9838 §4.3.2), all TV."""

    ATD = 1
    DTD = 2
    SENDER_ID_BITS = 3


class GroupKeyBagAttr(IntEnum):
    SA_KEY = 1  # RFC 9838 §4.4.1.1


class MemberKeyBagAttr(IntEnum):
    WRAP_KEY = 1  # RFC 9838 §4.4.2.1
    AUTH_KEY = 2
    GM_SENDER_ID = 3
