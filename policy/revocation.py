"""Certificate revocation lists for the key server (``[keyserver] crl = [...]``).

A CRL file (PEM or DER) is accepted only if it is signed by one of the key server's trust
anchors (``[keyserver.certificate] trust_anchors``): a CRL from anyone else could not revoke
anything the key server trusts, and one that cannot be verified must not be taken as an
authority.  :class:`RevocationList` answers "is this certificate revoked, and why" for the
checks at registration and at reload (the key server evicts a registered member whose
certificate a reloaded CRL revokes).  An expired CRL (past its nextUpdate) still revokes what it
lists; :meth:`RevocationList.stale` names it so the daemon can warn.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

__all__ = ["RevocationList", "load_crls"]


def _load_anchor(path: Path) -> x509.Certificate | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError:
        return None


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{str(path)!r} cannot be read: {e.strerror}") from None
    try:
        return (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
                else x509.load_der_x509_crl(data))
    except ValueError as e:
        raise ValueError(f"{str(path)!r} is not a certificate revocation list (PEM or DER): "
                         f"{e}") from None


@dataclass(frozen=True)
class _Crl:
    path: Path
    crl: x509.CertificateRevocationList


class RevocationList:
    """The key server's CRLs, each verified against a trust anchor when loaded."""

    def __init__(self, crls: tuple[_Crl, ...] = ()) -> None:
        self._crls = crls

    def __bool__(self) -> bool:
        return bool(self._crls)

    def __len__(self) -> int:
        return len(self._crls)

    def revoked(self, cert: x509.Certificate) -> str | None:
        """Why ``cert`` is revoked (a reason for logs and ``msecctl``), or None."""
        for c in self._crls:
            if c.crl.issuer != cert.issuer:
                continue
            entry = c.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is None:
                continue
            try:
                why = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
                why = f", reason {why}"
            except x509.ExtensionNotFound:
                why = ""
            when = entry.revocation_date_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
            return (f"certificate {cert.subject.rfc4514_string()} (serial "
                    f"0x{cert.serial_number:x}) revoked on {when}{why} (CRL {c.path.name})")
        return None

    def stale(self, now: datetime | None = None) -> list[str]:
        """The CRLs past their nextUpdate (they still revoke what they list)."""
        now = now or datetime.now(timezone.utc)
        return [str(c.path) for c in self._crls
                if c.crl.next_update_utc is not None and c.crl.next_update_utc < now]


def load_crls(paths, trust_anchors) -> RevocationList:
    """Read and verify CRL files; ValueError (naming the file) if one is unreadable, not a
    CRL, or signed by none of ``trust_anchors`` (certificate file paths)."""
    anchors = [a for a in (_load_anchor(Path(p)) for p in trust_anchors) if a is not None]
    out = []
    for p in paths:
        path = Path(p)
        crl = _load_crl(path)
        issuers = [a for a in anchors if a.subject == crl.issuer]
        if not any(_signed_by(crl, a) for a in issuers):
            raise ValueError(f"{str(path)!r}: issued by {crl.issuer.rfc4514_string()!r}, not "
                             f"signed by any of the key server's trust anchors")
        out.append(_Crl(path, crl))
    return RevocationList(tuple(out))


def _signed_by(crl: x509.CertificateRevocationList, anchor: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(anchor.public_key())
    except (TypeError, ValueError):
        return False
