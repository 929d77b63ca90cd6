"""Example messages of every payload the codec knows, for tests, fuzzing and documentation.

Values are fixed (no randomness) so golden bytes can be compared.  The G-IKEv2 examples put the
payloads that normally travel inside SK in the clear chain as well: the codec does not know
which exchange allows which payload, so this exercises every decoder from one datagram.
"""

from __future__ import annotations

import functools

from gkm.wire.attributes import Attribute

from .constants import (
    AuthMethod, CertEncoding, Encr, ExchangeType, GcAuth, GroupKeyBagAttr, GsaAttr, GwAttr, HeaderFlags, IdType,
    Integ, KeyExchangeMethod, KeyWrap, MemberKeyBagAttr, NotifyType, PayloadType, Prf, ProtocolId, TransformAttr,
    TransformType, TsType,
)
from .gsa import GroupKeyBag, GroupSa, GsaPolicy, GwPolicy, KeyDownload, MemberKeyBag
from .message import Header
from .payloads import (
    Authentication, Certificate, CertificateRequest, Delete, Encrypted, IdGroup, IdInitiator, IdResponder,
    KeyExchange, Nonce, Notify, Proposal, SecurityAssociation, TrafficSelector, Transform, TsInitiator,
    TsResponder, UnknownPayload, VendorId,
)

SPI_I = bytes.fromhex("0011223344556677")
SPI_R = bytes.fromhex("8899aabbccddeeff")
ZERO_SPI = bytes(8)


def ike_proposals() -> SecurityAssociation:
    """Two proposals: AES-GCM-16/256 + SHA2-256 PRF + P-256 with ML-KEM-768 as ADDKE1 (RFC 9370),
    and AES-CBC-256 + HMAC-SHA2-256-128 + X25519."""
    kl = (Attribute(TransformAttr.KEY_LENGTH, 256),)
    return SecurityAssociation((
        Proposal(1, ProtocolId.IKE, b"", (
            Transform(TransformType.ENCR, Encr.AES_GCM_16, kl),
            Transform(TransformType.PRF, Prf.HMAC_SHA2_256),
            Transform(TransformType.KE, KeyExchangeMethod.ECP256),
            Transform(TransformType.ADDKE1, KeyExchangeMethod.ML_KEM_768),
        )),
        Proposal(2, ProtocolId.IKE, b"", (
            Transform(TransformType.ENCR, Encr.AES_CBC, kl),
            Transform(TransformType.PRF, Prf.HMAC_SHA2_256),
            Transform(TransformType.INTEG, Integ.HMAC_SHA2_256_128),
            Transform(TransformType.KE, KeyExchangeMethod.CURVE25519),
        )),
    ))


def ts_v4(a: str, b: str, proto: int = 0, sport: int = 0, eport: int = 65535) -> TrafficSelector:
    import ipaddress

    return TrafficSelector(TsType.IPV4_ADDR_RANGE, proto, sport, eport, ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed)


def ts_v6(a: str, b: str) -> TrafficSelector:
    import ipaddress

    return TrafficSelector(TsType.IPV6_ADDR_RANGE, 0, 0, 65535, ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed)


def group_sa() -> GroupSa:
    rekey = GsaPolicy(
        ProtocolId.GIKE_UPDATE, bytes(range(16)),
        ts_v4("192.0.2.1", "192.0.2.1", 17, 848, 848), ts_v4("239.1.1.1", "239.1.1.1", 17, 848, 848),
        (
            Transform(TransformType.ENCR, Encr.AES_GCM_16, (Attribute(TransformAttr.KEY_LENGTH, 256),)),
            Transform(TransformType.KWA, KeyWrap.KW_5649_256),
            Transform(TransformType.GCAUTH, GcAuth.IMPLICIT),
        ),
        (Attribute(GsaAttr.KEY_LIFETIME, (3600).to_bytes(4, "big")), Attribute(GsaAttr.INITIAL_MESSAGE_ID, (7).to_bytes(4, "big"))),
    )
    tek = GsaPolicy(
        ProtocolId.ESP, bytes.fromhex("1a2b3c4d"),
        ts_v4("0.0.0.0", "255.255.255.255"), ts_v4("239.1.1.1", "239.1.1.1"),
        (
            Transform(TransformType.ENCR, Encr.AES_GCM_16, (Attribute(TransformAttr.KEY_LENGTH, 128),)),
            Transform(TransformType.SN, 0),
        ),
        (Attribute(GsaAttr.KEY_LIFETIME, (900).to_bytes(4, "big")), Attribute(GsaAttr.NEXT_SPI, bytes.fromhex("1a2b3c4e"))),
    )
    gw = GwPolicy((Attribute(GwAttr.ATD, 3), Attribute(GwAttr.DTD, 7)))
    return GroupSa((rekey, tek, gw))


def key_download() -> KeyDownload:
    return KeyDownload((
        GroupKeyBag(ProtocolId.GIKE_UPDATE, bytes(range(16)), (Attribute(GroupKeyBagAttr.SA_KEY, bytes(4) + bytes(range(32))),)),
        GroupKeyBag(ProtocolId.ESP, bytes.fromhex("1a2b3c4d"), (Attribute(GroupKeyBagAttr.SA_KEY, bytes(4) + bytes(20)),)),
        MemberKeyBag((
            Attribute(MemberKeyBagAttr.WRAP_KEY, (5).to_bytes(4, "big") + bytes(range(40))),
            Attribute(MemberKeyBagAttr.GM_SENDER_ID, (1).to_bytes(4, "big")),
        )),
    ))


@functools.lru_cache(maxsize=1)
def certificate_der() -> bytes:
    """A real, deterministic X.509 certificate (Ed25519 signatures are deterministic)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gcks.example")])
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(t0).not_valid_after(t0 + datetime.timedelta(days=365))
            .sign(key, None))
    return cert.public_bytes(serialization.Encoding.DER)


def all_examples() -> dict[str, tuple[Header, tuple]]:
    ke_p256 = KeyExchange(KeyExchangeMethod.ECP256, bytes(range(64)))
    ni = Nonce(bytes(range(100, 132)))
    nr = Nonce(bytes(range(200, 232)))
    init_req = (
        ike_proposals(), ke_p256, ni,
        Notify(0, NotifyType.NAT_DETECTION_SOURCE_IP, b"", bytes(20)),
        Notify(0, NotifyType.NAT_DETECTION_DESTINATION_IP, b"", bytes(range(20))),
        Notify(0, NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED),
        VendorId(b"msec"),
    )
    return {
        "ike_sa_init_request": (Header(SPI_I, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlags.INITIATOR, 0), init_req),
        "ike_sa_init_cookie": (
            Header(SPI_I, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlags.RESPONSE, 0),
            (Notify(0, NotifyType.COOKIE, b"", bytes(range(32))),),
        ),
        "ike_sa_init_response": (
            Header(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, HeaderFlags.RESPONSE, 0),
            (SecurityAssociation((ike_proposals().proposals[0],)), KeyExchange(KeyExchangeMethod.ECP256, bytes(range(64, 128))), nr,
             CertificateRequest(CertEncoding.X509_SIGNATURE, bytes(20)),
             UnknownPayload(200, b"non-critical extension")),
        ),
        "ike_intermediate": (
            Header(SPI_I, SPI_R, ExchangeType.IKE_INTERMEDIATE, HeaderFlags.INITIATOR, 1),
            (Encrypted(PayloadType.KE, bytes(range(48))),),
        ),
        "gsa_auth_request_inner": (
            Header(SPI_I, SPI_R, ExchangeType.GSA_AUTH, HeaderFlags.INITIATOR, 1),
            (IdInitiator(IdType.FQDN, b"member1.example"), IdGroup(IdType.KEY_ID, b"\x00\x00\x04\xd2"),
             Authentication(AuthMethod.PSK, bytes(32)),
             SecurityAssociation((Proposal(1, ProtocolId.ESP, b"", (Transform(TransformType.ENCR, Encr.AES_GCM_16, (Attribute(TransformAttr.KEY_LENGTH, 128),)),)),)),
             Notify(0, NotifyType.GROUP_SENDER)),
        ),
        "gsa_auth_response_inner": (
            Header(SPI_I, SPI_R, ExchangeType.GSA_AUTH, HeaderFlags.RESPONSE, 1),
            (IdResponder(IdType.FQDN, b"gcks.example"), Certificate(CertEncoding.X509_SIGNATURE, certificate_der()),
             Authentication(AuthMethod.DIGITAL_SIGNATURE, b"\x05" + bytes(5) + bytes(64)),
             group_sa(), key_download()),
        ),
        "gsa_rekey_inner": (
            Header(bytes(range(8)), bytes(range(8, 16)), ExchangeType.GSA_REKEY, 0, 7),
            (group_sa(), key_download(), Authentication(AuthMethod.DIGITAL_SIGNATURE, bytes(40))),
        ),
        "informational_inner": (
            Header(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, HeaderFlags.INITIATOR, 2),
            (Delete(ProtocolId.ESP, 4, (bytes(4), b"\x01\x02\x03\x04")), Delete(ProtocolId.IKE, 0),
             Notify(ProtocolId.ESP, NotifyType.REKEY_SA, b"\x01\x02\x03\x04"),
             TsInitiator((ts_v4("10.0.0.0", "10.0.0.255", 6, 0, 65535), ts_v6("2001:db8::", "2001:db8::ffff"))),
             TsResponder((ts_v4("10.1.0.0", "10.1.0.255"),))),
        ),
    }
