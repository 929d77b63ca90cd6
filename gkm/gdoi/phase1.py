"""Phase 1 configuration for both roles from the policy model: :func:`phase1_config`.

Key server (``KeyServerSettings``): one PSK proposal if PSKs are configured, one signature
proposal if a certificate is; the PSK store has each PSK by its ID_KEY_ID identity, the
addresses listed for it pointing at that identity: a PSK authenticates only its own identity,
whichever way Main Mode found it.  Its own identity: ``identity`` from the policy, else the address it
listens on (``local_address``, ID_IPV4_ADDR/ID_IPV6_ADDR), with certificates the subject DN.

Member (``MemberGroup``): a PSK (ID_KEY_ID = the PSK identity, the key server's address as the
PSK lookup key) or a certificate (trust anchors from the policy).

Signature proposals follow the key: P-256 -> ECDSA-256 with SHA2-256, P-384 -> ECDSA-384 with
SHA2-384, P-521 -> ECDSA-521 with SHA2-512, RSA -> RSA signatures with SHA2-256.  Both sides
build their proposals with this module, so they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gkm.ike import AuthMethod, CertCredential, HashAlg, Identity, Phase1Config, Proposal, PskStore
from policy import model

__all__ = ["phase1_config", "load_certificate", "proposals_for_key", "ike_identity"]

DEFAULT_DH_GROUPS = (19,)

_EC_METHOD = {
    "secp256r1": (AuthMethod.ECDSA_256, HashAlg.SHA2_256),
    "secp384r1": (AuthMethod.ECDSA_384, HashAlg.SHA2_384),
    "secp521r1": (AuthMethod.ECDSA_521, HashAlg.SHA2_512),
}


def proposals_for_key(key: Any, dh_groups: tuple[int, ...]) -> tuple[Proposal, ...]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method, hash_alg = _EC_METHOD[key.curve.name]
    elif isinstance(key, rsa.RSAPrivateKey):
        method, hash_alg = AuthMethod.RSA_SIG, HashAlg.SHA2_256
    else:
        raise ValueError("certificate key must be EC (P-256/384/521) or RSA")
    return tuple(Proposal(method, g, hash_alg) for g in dh_groups)


def load_certificate(cred: model.CertCredential) -> tuple[CertCredential, tuple[x509.Certificate, ...]]:
    """(our credential, trust anchors) from the files a policy CertCredential names."""
    certs = x509.load_pem_x509_certificates(Path(cred.cert_file).read_bytes())
    key = serialization.load_pem_private_key(Path(cred.key_file).read_bytes(), password=None)
    anchors: list[x509.Certificate] = []
    for p in cred.trust_anchors:
        anchors.extend(x509.load_pem_x509_certificates(Path(p).read_bytes()))
    return CertCredential(certs[0], key, tuple(certs[1:])), tuple(anchors)


def ike_identity(identity: model.Identity) -> Identity:
    """policy Identity -> phase 1 ID payload value."""
    kind = identity.kind
    if kind is model.IdKind.KEY_ID:
        return Identity.key_id(identity.value.encode())
    if kind is model.IdKind.FQDN:
        return Identity.fqdn(identity.value)
    if kind is model.IdKind.USER_FQDN:
        return Identity.user_fqdn(identity.value)
    if kind is model.IdKind.ADDRESS:
        return Identity.ip(identity.value)
    return Identity.dn(x509.Name.from_rfc4514_string(identity.value))


def _host(addr: Any) -> str:
    return str(addr[0] if isinstance(addr, tuple) else addr)


def phase1_config(
    settings: model.KeyServerSettings | model.MemberGroup,
    *,
    local_address: str | None = None,
    key_server: Any = None,
    dh_groups: tuple[int, ...] = DEFAULT_DH_GROUPS,
    **options: Any,
) -> Phase1Config:
    """The :class:`gkm.ike.Phase1Config` of a key server or of a member group.

    Key server: ``local_address`` is the address it presents as its ID with PSKs when the policy
    gives no ``identity``.  Member: ``key_server`` is the (resolved) key server address, host
    or ``(host, port)``, where the PSK is used.  ``options`` go to Phase1Config (timeouts,
    limits, ``wall_time_offset``...).
    """
    proposals: list[Proposal] = []
    psk = credential = None
    anchors: tuple[x509.Certificate, ...] = ()
    local_id = None
    if isinstance(settings, model.KeyServerSettings):
        if settings.psks:
            # Each PSK belongs to its ID_KEY_ID identity only; an address selects the entry that
            # lists it.  Trial decryption tries the PSKs without addresses first (those with
            # addresses are found by address), so the first max_trials members without
            # `addresses` are always among the keys tried.
            ordered = sorted(settings.psks, key=lambda p: bool(p.addresses))
            by_id = {Identity.key_id(p.identity.encode()): p.secret.reveal() for p in ordered}
            owners = {str(a): Identity.key_id(p.identity.encode()) for p in settings.psks for a in p.addresses}
            psk = PskStore(by_id=by_id, address_ids=owners)
            proposals += [Proposal(AuthMethod.PRE_SHARED_KEY, g) for g in dh_groups]
            if settings.identity is not None:
                local_id = ike_identity(settings.identity)
            elif local_address is not None:
                local_id = Identity.ip(local_address)
            elif settings.listen and not settings.listen[0].is_unspecified:
                local_id = Identity.ip(str(settings.listen[0]))
        if settings.certificate is not None:
            credential, anchors = load_certificate(settings.certificate)
            proposals += list(proposals_for_key(credential.private_key, dh_groups))
    elif isinstance(settings, model.MemberGroup):
        cred = settings.credentials
        if isinstance(cred, model.PskCredential):
            if key_server is None:
                raise ValueError("a PSK member needs the key server address")
            psk = PskStore({_host(key_server): cred.secret.reveal()})
            local_id = Identity.key_id(cred.identity.encode())
            proposals = [Proposal(AuthMethod.PRE_SHARED_KEY, g) for g in dh_groups]
        else:
            credential, anchors = load_certificate(cred)
            proposals = list(proposals_for_key(credential.private_key, dh_groups))
    else:
        raise TypeError(f"phase1_config takes KeyServerSettings or MemberGroup, not {type(settings).__name__}")
    return Phase1Config(tuple(proposals), local_id=local_id, psk=psk, credential=credential, trust_anchors=anchors, **options)
