"""Phase 1 configuration for both roles from the policy model: :func:`phase1_config`.

Key server (``KeyServerSettings``): one PSK proposal if PSKs are configured, one signature
proposal if a certificate is; the PSK store has each PSK by its ID_KEY_ID identity, the
addresses listed for it pointing at that identity: a PSK authenticates only its own identity,
whichever way Main Mode found it.  Its own identity: ``identity`` from the policy, else the address it
listens on (``local_address``, ID_IPV4_ADDR/ID_IPV6_ADDR), with certificates the subject DN.

Member (``MemberGroup``): a PSK (ID_KEY_ID = the PSK identity, the key server's address as the
PSK lookup key) or a certificate (trust anchors from the policy).

Suites (``phase1`` of the settings, `policy.model.Phase1Suites`): every combination of the DH
groups, ciphers (AES-CBC key lengths) and hashes, in that nesting order, for each
authentication method: the key server's are what it accepts (it picks the first of its own
that the member offered), a member's what it offers.  The signature method follows the key:
P-256/384/521 -> ECDSA-256/384/521, RSA -> RSA signatures (RFC 2409 section 5.1); the signed
HASH uses the curve's hash whatever PRF was negotiated (`gkm.ike.auth.signature_prf`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gkm.ike import AuthMethod, CertCredential, EncAlg, HashAlg, Identity, Phase1Config, Proposal, PskStore
from policy import model
from policy.suites import PHASE1_CIPHERS, PHASE1_HASHES

__all__ = ["phase1_config", "load_certificate", "proposals", "signature_method", "ike_identity"]

_EC_METHOD = {"secp256r1": AuthMethod.ECDSA_256, "secp384r1": AuthMethod.ECDSA_384, "secp521r1": AuthMethod.ECDSA_521}


def signature_method(key: Any) -> AuthMethod:
    """The phase 1 signature method a certificate's private key can use."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_METHOD:
        return _EC_METHOD[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return AuthMethod.RSA_SIG
    raise ValueError("certificate key must be EC (P-256/384/521) or RSA")


def proposals(method: AuthMethod, suites: model.Phase1Suites) -> list[Proposal]:
    """The transforms of ``suites`` for one authentication method, in preference order."""
    return [
        Proposal(method, group, HashAlg(PHASE1_HASHES[h]), EncAlg.AES_CBC, PHASE1_CIPHERS[c], suites.lifetime_s)
        for group in suites.dh_groups for c in suites.ciphers for h in suites.hashes
    ]


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
    **options: Any,
) -> Phase1Config:
    """The :class:`gkm.ike.Phase1Config` of a key server or of a member group.

    Key server: ``local_address`` is the address it presents as its ID with PSKs when the policy
    gives no ``identity``.  Member: ``key_server`` is the (resolved) key server address, host
    or ``(host, port)``, where the PSK is used.  ``options`` go to Phase1Config (timeouts,
    limits, ``wall_time_offset``...).
    """
    offers: list[Proposal] = []
    suites = settings.phase1
    psk = credential = None
    anchors: tuple[x509.Certificate, ...] = ()
    local_id = None
    if isinstance(settings, model.KeyServerSettings):
        allowed = suites.auth if suites.auth is not None else ("psk", "certificate")
        if settings.psks and "psk" in allowed:
            # Each PSK belongs to its ID_KEY_ID identity only; an address selects the entry that
            # lists it.  Trial decryption tries the PSKs without addresses first (those with
            # addresses are found by address), so the first max_trials members without
            # `addresses` are always among the keys tried.
            ordered = sorted(settings.psks, key=lambda p: bool(p.addresses))
            by_id = {Identity.key_id(p.identity.encode()): p.secret.reveal() for p in ordered}
            owners = {str(a): Identity.key_id(p.identity.encode()) for p in settings.psks for a in p.addresses}
            psk = PskStore(by_id=by_id, address_ids=owners)
            offers += proposals(AuthMethod.PRE_SHARED_KEY, suites)
            if settings.identity is not None:
                local_id = ike_identity(settings.identity)
            elif local_address is not None:
                local_id = Identity.ip(local_address)
            elif settings.listen and not settings.listen[0].is_unspecified:
                local_id = Identity.ip(str(settings.listen[0]))
        if settings.certificate is not None and "certificate" in allowed:
            credential, anchors = load_certificate(settings.certificate)
            offers += proposals(signature_method(credential.private_key), suites)
    elif isinstance(settings, model.MemberGroup):
        cred = settings.credentials
        if isinstance(cred, model.PskCredential):
            if key_server is None:
                raise ValueError("a PSK member needs the key server address")
            psk = PskStore({_host(key_server): cred.secret.reveal()})
            local_id = Identity.key_id(cred.identity.encode())
            offers = proposals(AuthMethod.PRE_SHARED_KEY, suites)
        else:
            credential, anchors = load_certificate(cred)
            offers = proposals(signature_method(credential.private_key), suites)
    else:
        raise TypeError(f"phase1_config takes KeyServerSettings or MemberGroup, not {type(settings).__name__}")
    return Phase1Config(tuple(offers), local_id=local_id, psk=psk, credential=credential, trust_anchors=anchors, **options)
