"""Realistic example messages, used by the tests, the tshark cross-check and ``tools/bench wire``.

Also the shortest documentation of how to build each exchange with this codec.  Key material
here is fixed dummy bytes: these are wire-format examples, not test vectors for crypto.
"""

from __future__ import annotations

from .attributes import Attribute, var_int
from .constants import (
    AuthMethod,
    CertEncoding,
    Doi,
    EncapsulationMode,
    EncryptionAlgorithm,
    EspTransformId,
    ExchangeType,
    Flags,
    HashAlgorithm,
    IdType,
    IpsecAttr,
    KdType,
    KekAlgorithm,
    KekAttr,
    KekKeyAttr,
    LifeType,
    LkhKeyAttr,
    NotifyType,
    Phase1Attr,
    ProtocolId,
    SaDirection,
    SigAlgorithm,
    SigHashAlgorithm,
    TekKeyAttr,
    TekProtocol,
    TransformId,
    AddressPreservation,
    GapAttr,
    SidKeyAttr,
)
from .gdoi import Gap, GdoiSa, GroupId, KeyDownload, KeyPacket, LkhArray, LkhKey, SaKek, SaTek, Sequence
from .header import Header
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
    VendorId,
)
from .message import encode_message

ICOOKIE = bytes.fromhex("0123456789abcdef")
RCOOKIE = bytes.fromhex("fedcba9876543210")
KEK_SPI = bytes(range(0x10, 0x20))


def phase1_transform(number: int = 1, auth: int = AuthMethod.PRE_SHARED_KEY, group: int = 14) -> Transform:
    return Transform(number, TransformId.KEY_IKE, (
        Attribute(Phase1Attr.ENCRYPTION_ALGORITHM, EncryptionAlgorithm.AES_CBC),
        Attribute(Phase1Attr.KEY_LENGTH, 256),
        Attribute(Phase1Attr.HASH_ALGORITHM, HashAlgorithm.SHA2_256),
        Attribute(Phase1Attr.AUTHENTICATION_METHOD, auth),
        Attribute(Phase1Attr.GROUP_DESCRIPTION, group),
        Attribute(Phase1Attr.LIFE_TYPE, LifeType.SECONDS),
        Attribute(Phase1Attr.LIFE_DURATION, var_int(86400)),
    ))


def phase1_sa(doi: int = Doi.GDOI, transforms: int = 2) -> SecurityAssociation:
    """Phase-1 offer: one SA, one proposal (PROTO_ISAKMP, no SPI), n transforms (RFC 2409 §5)."""
    ts = tuple(
        phase1_transform(i + 1, (AuthMethod.PRE_SHARED_KEY, AuthMethod.RSA_SIGNATURES, AuthMethod.ECDSA_256)[i % 3])
        for i in range(transforms)
    )
    return SecurityAssociation(doi, 0 if doi == Doi.GDOI else 1, (Proposal(1, ProtocolId.ISAKMP, b"", ts),))


def main_mode(exchange_doi: int = Doi.GDOI) -> list[tuple[Header, tuple]]:
    """The six Main Mode messages (signature variant with CERT/CR; MM5/MM6 E flag set)."""
    h0 = Header(ICOOKIE, bytes(8), ExchangeType.IDENTITY_PROTECTION)
    h = Header(ICOOKIE, RCOOKIE, ExchangeType.IDENTITY_PROTECTION)
    he = Header(ICOOKIE, RCOOKIE, ExchangeType.IDENTITY_PROTECTION, Flags.ENCRYPTION)
    vid = VendorId(bytes.fromhex("afcad71368a1f1c96b8696fc77570100"))  # RFC 3706 DPD
    ke = KeyExchange(bytes(range(256)))
    return [
        (h0, (phase1_sa(exchange_doi, 3), vid)),
        (h, (phase1_sa(exchange_doi, 1), vid)),
        (h, (ke, Nonce(bytes(range(32))), CertificateRequest(CertEncoding.X509_SIGNATURE))),
        (h, (ke, Nonce(bytes(range(100, 132))), CertificateRequest(CertEncoding.X509_SIGNATURE, b"0\x0b1\t0\x07\x06\x03U\x04\x03\x0c\x00"))),
        (he, (Identification.of(IdType.IPV4_ADDR, "192.0.2.1", 17, 500), Certificate(CertEncoding.X509_SIGNATURE, b"0\x82" + bytes(300)),
              Signature(bytes(256)), Notification(Doi.IPSEC, ProtocolId.ISAKMP, NotifyType.INITIAL_CONTACT, ICOOKIE + RCOOKIE))),
        (he, (Identification.of(IdType.FQDN, "ks.example.net"), Hash(bytes(32)))),
    ]


def main_mode_message(index: int = 0, block_size: int = 16) -> bytes:
    header, payloads = main_mode()[index]
    return encode_message(header, payloads, block_size=block_size if header.encrypted else None)


def sak(ack: bool = False) -> SaKek:
    attrs = [
        Attribute(KekAttr.KEK_MANAGEMENT_ALGORITHM, 1),
        Attribute(KekAttr.KEK_ALGORITHM, KekAlgorithm.AES),
        Attribute(KekAttr.KEK_KEY_LENGTH, 128),
        Attribute(KekAttr.KEK_KEY_LIFETIME, var_int(86400)),
        Attribute(KekAttr.SIG_HASH_ALGORITHM, SigHashAlgorithm.SHA256),
        Attribute(KekAttr.SIG_ALGORITHM, SigAlgorithm.RSA),
        Attribute(KekAttr.SIG_KEY_LENGTH, 2048),
    ]
    if ack:
        attrs.append(Attribute(KekAttr.KEK_ACK_REQUESTED, 1))
    return SaKek(17, GroupId.of(IdType.IPV4_ADDR, "192.0.2.1", 848), GroupId.of(IdType.IPV4_ADDR, "239.192.0.1", 848), KEK_SPI, tuple(attrs))


def sat(spi: int, dst: str = "239.1.1.1", gcm: bool = False) -> SaTek:
    attrs = [
        Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
        Attribute(IpsecAttr.SA_LIFE_DURATION, var_int(3600)),
        Attribute(IpsecAttr.ENCAPSULATION_MODE, EncapsulationMode.TUNNEL),
        Attribute(IpsecAttr.KEY_LENGTH, 256 if gcm else 128),
    ]
    if not gcm:
        attrs.append(Attribute(IpsecAttr.AUTHENTICATION_ALGORITHM, 5))  # HMAC-SHA2-256
    attrs += [Attribute(IpsecAttr.ADDRESS_PRESERVATION, AddressPreservation.SOURCE_AND_DESTINATION),
              Attribute(IpsecAttr.SA_DIRECTION, SaDirection.SYMMETRIC)]
    return SaTek(
        TekProtocol.IPSEC_ESP, 0, GroupId.of(IdType.IPV4_ADDR_SUBNET, "10.0.0.0/8"),
        GroupId.of(IdType.IPV4_ADDR, dst), EspTransformId.AES_GCM_16 if gcm else EspTransformId.AES_CBC, spi, tuple(attrs),
    )


def lkh_update(n: int = 20) -> LkhArray:
    keys = tuple(LkhKey(i + 1, KekAlgorithm.AES, 1_700_000_000, 1_700_086_400, 0x1000 + i, bytes([i]) * 32) for i in range(n))
    return LkhArray(keys, update=(21, 0x2000))


def key_download(lkh_keys: int = 20) -> KeyDownload:
    packets = [
        KeyPacket(KdType.TEK, (0x11111111).to_bytes(4, "big"), (
            Attribute(TekKeyAttr.TEK_ALGORITHM_KEY, bytes(16)), Attribute(TekKeyAttr.TEK_INTEGRITY_KEY, bytes(32)))),
        KeyPacket(KdType.TEK, (0x22222222).to_bytes(4, "big"), (Attribute(TekKeyAttr.TEK_ALGORITHM_KEY, bytes(36)),)),
        KeyPacket(KdType.KEK, KEK_SPI, (
            Attribute(KekKeyAttr.KEK_ALGORITHM_KEY, bytes(32)), Attribute(KekKeyAttr.SIG_ALGORITHM_KEY, b"0\x82\x01\x22" + bytes(290)))),
    ]
    if lkh_keys:
        packets.append(KeyPacket(KdType.LKH, KEK_SPI, (Attribute(LkhKeyAttr.LKH_UPDATE_ARRAY, lkh_update(lkh_keys).encode()),)))
    return KeyDownload(tuple(packets))


def push(seq: int = 7) -> tuple[Header, tuple]:
    """GROUPKEY-PUSH (RFC 6407 §4): SEQ, SA(SAK, SAT, SAT), KD(TEK, TEK, KEK, LKH update), SIG."""
    header = Header(KEK_SPI[:8], KEK_SPI[8:], ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION)
    sa = GdoiSa((sak(), sat(0x11111111), sat(0x22222222, "239.1.1.2", gcm=True)))
    return header, (Sequence(seq), sa, key_download(), Signature(bytes(256)))


def push_message(block_size: int = 16, encrypted: bool = True) -> bytes:
    header, payloads = push()
    if not encrypted:
        header = Header(header.icookie, header.rcookie, header.exchange, Flags.NONE)
        return encode_message(header, payloads)
    return encode_message(header, payloads, block_size=block_size)


def pull() -> list[tuple[Header, tuple]]:
    """GROUPKEY-PULL (RFC 6407 §3.2), messages 1-4; E flag set (the bodies are plaintext here)."""
    h = Header(ICOOKIE, RCOOKIE, ExchangeType.GROUPKEY_PULL, Flags.ENCRYPTION, 0x5EED1234)
    return [
        (h, (Hash(bytes(32)), Nonce(bytes(range(16))), Identification.of(IdType.KEY_ID, 1234))),
        (h, (Hash(bytes(32)), Nonce(bytes(range(16, 48))), GdoiSa((sak(ack=True), Gap((Attribute(GapAttr.ACTIVATION_TIME_DELAY, 5),)), sat(0x11111111))))),
        (h, (Hash(bytes(32)), Gap((Attribute(GapAttr.SENDER_ID_REQUEST, 2),)))),
        (h, (Hash(bytes(32)), Sequence(0), KeyDownload((
            KeyPacket(KdType.TEK, (0x11111111).to_bytes(4, "big"), (Attribute(TekKeyAttr.TEK_ALGORITHM_KEY, bytes(16)), Attribute(TekKeyAttr.TEK_INTEGRITY_KEY, bytes(32)))),
            KeyPacket(KdType.KEK, KEK_SPI, (Attribute(KekKeyAttr.KEK_ALGORITHM_KEY, bytes(32)),)),
            KeyPacket(KdType.LKH, KEK_SPI, (Attribute(LkhKeyAttr.LKH_DOWNLOAD_ARRAY, LkhArray(lkh_update(3).keys).encode()),)),
            KeyPacket(KdType.SID, b"", (Attribute(SidKeyAttr.NUMBER_OF_SID_BITS, 16), Attribute(SidKeyAttr.SID_VALUE, var_int(3)))),
        )))),
    ]


def delete_push(seq: int = 9) -> tuple[Header, tuple]:
    """A delete-only GROUPKEY-PUSH (RFC 6407 §5.9): TEK and KEK deletes."""
    header = Header(KEK_SPI[:8], KEK_SPI[8:], ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION)
    return header, (
        Sequence(seq),
        Delete(Doi.GDOI, TekProtocol.IPSEC_ESP, 4, ((0x11111111).to_bytes(4, "big"),)),
        Delete(Doi.GDOI, TekProtocol.KEK, 16, (KEK_SPI,)),
        Signature(bytes(256)),
    )


def push_ack() -> tuple[Header, tuple]:
    """GROUPKEY-PUSH-ACK (RFC 8263 §3): HASH, SEQ, ID; cleartext."""
    header = Header(KEK_SPI[:8], KEK_SPI[8:], ExchangeType.GROUPKEY_PUSH_ACK)
    return header, (Hash(bytes(32)), Sequence(7), Identification.of(IdType.IPV4_ADDR, "192.0.2.77"))


def informational() -> tuple[Header, tuple]:
    """Informational after phase 1 (RFC 2409 §5.7): HASH(1), N."""
    h = Header(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, Flags.ENCRYPTION, 0x01020304)
    return h, (Hash(bytes(32)), Notification(Doi.GDOI, ProtocolId.ISAKMP, NotifyType.INVALID_ID_INFORMATION, ICOOKIE + RCOOKIE))


def all_examples() -> dict[str, tuple[Header, tuple]]:
    out = {f"mm{i + 1}": m for i, m in enumerate(main_mode())}
    out.update({f"pull{i + 1}": m for i, m in enumerate(pull())})
    out["push"] = push()
    out["push_delete"] = delete_push()
    out["push_ack"] = push_ack()
    out["informational"] = informational()
    return out
