"""Numbers of ISAKMP (RFC 2408), the IPsec DOI (RFC 2407), IKEv1 (RFC 2409) and GDOI (RFC 6407).

All registries used by :mod:`gkm.wire` live here.  Decoders turn known numbers into these
``IntEnum`` members and keep unknown numbers as plain ``int`` (an ``IntEnum`` member compares
equal to its integer, so values built with either form are equal).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

HEADER_LENGTH = 28  # RFC 2408 §3.1
GENERIC_HEADER_LENGTH = 4  # RFC 2408 §3.2
ISAKMP_VERSION = 0x10  # major 1, minor 0 (RFC 2408 §3.1)
GDOI_PORT = 848  # RFC 6407 §2.2
IKE_PORT = 500


class PayloadType(IntEnum):
    """Next Payload values: RFC 2408 §3.1, RFC 6407 §5 and §8.1."""

    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    NOTIFICATION = 11
    DELETE = 12
    VENDOR_ID = 13
    SA_KEK = 15
    SA_TEK = 16
    KD = 17
    SEQ = 18
    POP = 19  # RFC 3547 §5.7 only; removed by RFC 6407 (decoded as unknown)
    GAP = 22


class ExchangeType(IntEnum):
    """RFC 2408 §3.1; DOI-specific values of GDOI: RFC 6407 §3.2.1, §4.2, RFC 8263 §8."""

    NONE = 0
    BASE = 1
    IDENTITY_PROTECTION = 2  # Main Mode
    AUTHENTICATION_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    GROUPKEY_PULL = 32
    GROUPKEY_PUSH = 33
    GROUPKEY_PUSH_ACK = 35

    MAIN = 2  # alias of IDENTITY_PROTECTION
    QUICK_MODE = 32  # alias: IPsec DOI Quick Mode (RFC 2409 §5.5) has the number of GROUPKEY-PULL


class Flags(IntFlag):
    """ISAKMP header flags, RFC 2408 §3.1."""

    NONE = 0
    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTHENTICATION_ONLY = 0x04


class Doi(IntEnum):
    ISAKMP = 0
    IPSEC = 1  # RFC 2407
    GDOI = 2  # RFC 6407


class ProtocolId(IntEnum):
    """RFC 2407 §4.4.1 (Proposal, Notification, Delete)."""

    ISAKMP = 1
    IPSEC_AH = 2
    IPSEC_ESP = 3
    IPCOMP = 4


class IdType(IntEnum):
    """RFC 2407 §4.6.2.1; ID_OID from RFC 8052."""

    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11
    LIST = 12
    ID_OID = 13


#: Required data length of fixed-size ID types (RFC 2407 §4.6.2.2-4.6.2.12).
ID_DATA_LENGTH = {
    IdType.IPV4_ADDR: 4,
    IdType.IPV4_ADDR_SUBNET: 8,
    IdType.IPV6_ADDR: 16,
    IdType.IPV6_ADDR_SUBNET: 32,
    IdType.IPV4_ADDR_RANGE: 8,
    IdType.IPV6_ADDR_RANGE: 32,
}


class CertEncoding(IntEnum):
    """RFC 2408 §3.9."""

    PKCS7 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    X509_KEY_EXCHANGE = 5
    KERBEROS_TOKENS = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10


class NotifyType(IntEnum):
    """RFC 2408 §3.14.1, RFC 2407 §4.6.3."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578


class TransformId(IntEnum):
    KEY_IKE = 1  # RFC 2407 §4.4.2


class EspTransformId(IntEnum):
    """RFC 2407 §4.4.4 and the IKEv1 ESP transform registry."""

    DES = 2
    TRIPLE_DES = 3
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 23


class Phase1Attr(IntEnum):
    """IKEv1 SA attribute classes, RFC 2409 Appendix A."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


class EncryptionAlgorithm(IntEnum):
    DES_CBC = 1
    TRIPLE_DES_CBC = 5
    AES_CBC = 7  # RFC 3602 §5.1


class HashAlgorithm(IntEnum):
    MD5 = 1
    SHA1 = 2
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6  # RFC 4868 §4


class AuthMethod(IntEnum):
    PRE_SHARED_KEY = 1
    DSS_SIGNATURES = 2
    RSA_SIGNATURES = 3
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11  # RFC 4754 §8


class LifeType(IntEnum):
    SECONDS = 1
    KILOBYTES = 2


class IpsecAttr(IntEnum):
    """RFC 2407 §4.5 SA attributes, plus RFC 6407 §5.5.1.1 address preservation / SA direction."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTHENTICATION_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMPRESS_DICTIONARY_SIZE = 8
    COMPRESS_PRIVATE_ALGORITHM = 9
    ECN_TUNNEL = 10
    EXTENDED_SEQUENCE_NUMBER = 11
    ADDRESS_PRESERVATION = 14
    SA_DIRECTION = 15


class EncapsulationMode(IntEnum):
    TUNNEL = 1
    TRANSPORT = 2


class AddressPreservation(IntEnum):
    NONE = 1
    SOURCE_ONLY = 2
    DESTINATION_ONLY = 3
    SOURCE_AND_DESTINATION = 4


class SaDirection(IntEnum):
    SENDER_ONLY = 1
    RECEIVER_ONLY = 2
    SYMMETRIC = 3


class KekAttr(IntEnum):
    """SA KEK attributes, RFC 6407 §5.3; KEK_ACK_REQUESTED from RFC 8263 §8."""

    KEK_MANAGEMENT_ALGORITHM = 1
    KEK_ALGORITHM = 2
    KEK_KEY_LENGTH = 3
    KEK_KEY_LIFETIME = 4
    SIG_HASH_ALGORITHM = 5
    SIG_ALGORITHM = 6
    SIG_KEY_LENGTH = 7
    KE_OAKLEY_GROUP = 8  # RFC 3547 only, RESERVED in RFC 6407
    KEK_ACK_REQUESTED = 9


class KekAlgorithm(IntEnum):
    DES = 1
    TRIPLE_DES = 2
    AES = 3


class SigHashAlgorithm(IntEnum):
    """RFC 6407 §5.3.5.  gdoid maps SHA384 and SHA512 to 3 (docs/decisions/wire.md §7); the RFC numbers win."""

    MD5 = 1
    SHA1 = 2
    SHA256 = 3
    SHA384 = 4
    SHA512 = 5


class SigAlgorithm(IntEnum):
    RSA = 1
    DSS = 2
    ECDSS = 3
    ECDSA_256 = 4
    ECDSA_384 = 5
    ECDSA_521 = 6


class GapAttr(IntEnum):
    """RFC 6407 §5.4."""

    ACTIVATION_TIME_DELAY = 1
    DEACTIVATION_TIME_DELAY = 2
    SENDER_ID_REQUEST = 3


class TekProtocol(IntEnum):
    """SA TEK Protocol-ID, RFC 6407 §5.5; IEC 61850 from RFC 8052.

    Under DOI 2 these are also the Protocol-IDs of Delete (and Notification) payloads, with 0
    naming the KEK (RFC 6407 §5.9).
    """

    KEK = 0  # Delete payloads only (RFC 6407 §5.9)
    IPSEC_ESP = 1
    IPSEC_AH = 2
    IEC61850 = 3


class KdType(IntEnum):
    """Key Download key packet types, RFC 6407 §5.6."""

    TEK = 1
    KEK = 2
    LKH = 3
    SID = 4


class TekKeyAttr(IntEnum):
    TEK_ALGORITHM_KEY = 1
    TEK_INTEGRITY_KEY = 2
    TEK_SOURCE_AUTH_KEY = 3


class KekKeyAttr(IntEnum):
    KEK_ALGORITHM_KEY = 1
    SIG_ALGORITHM_KEY = 2


class LkhKeyAttr(IntEnum):
    LKH_DOWNLOAD_ARRAY = 1
    LKH_UPDATE_ARRAY = 2
    SIG_ALGORITHM_KEY = 3
    #: private use (RFC 6407 section 5.6.3): "part INDEX of COUNT" of an LKH update split over
    #: several GROUPKEY-PUSH messages (gkm.lkh_parts); TLV, 2 + 2 octets, 1 <= INDEX <= COUNT
    LKH_UPDATE_PART = 128


class SidKeyAttr(IntEnum):
    NUMBER_OF_SID_BITS = 1
    SID_VALUE = 2
