"""Which client certificates the 2030.5 listener accepts (CSIP-AUS: device certificates are EC P-256).

The TLS handshake already proves possession of the key and a chain to the configured CA bundle. On top of
that a client certificate must:

1. carry an EC key on P-256 (secp256r1): the only key type 2030.5 / CSIP-AUS device certificates use;
2. carry the Extended Key Usage ``clientAuth``;
3. not be the server's own certificate (or the notification certificate it presents to subscribers),
   nor any certificate with the server's public key;
4. chain to the configured CA and be within its validity period. Over TLS the handshake checks this;
   behind a TLS-terminating proxy the PEM header is checked here, signature by signature.

The verdict is cached per certificate, so the cost is paid once per client, not per request.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

POLICY_TEXT = "EC P-256 key, clientAuth EKU, chained to the configured CA, never the server's own"


def _load_all(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def _public(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class ClientCertPolicy:
    def __init__(self, ca_file: Path, own_cert_files: list[Path]) -> None:
        self.cas = _load_all(ca_file)
        self.own_keys = {_public(c) for f in own_cert_files for c in _load_all(f)[:1]}

    @classmethod
    def from_config(cls, config: object) -> ClientCertPolicy:
        chain, _key, ca = config.tls_files()  # type: ignore[attr-defined]
        notify_chain, _nkey, _ca = config.notify_files()  # type: ignore[attr-defined]
        return cls(ca, [chain, notify_chain])

    def problem(self, cert: x509.Certificate, *, check_chain: bool) -> str | None:
        """Why ``cert`` may not be a 2030.5 client, or None when it may."""
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            return "the client certificate's key must be EC P-256"
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return "the client certificate has no Extended Key Usage (clientAuth is required)"
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            return "the client certificate's Extended Key Usage lacks clientAuth"
        if _public(cert) in self.own_keys:
            return "the server's own certificate cannot be used as a client certificate"
        if check_chain:
            return self._chain_problem(cert)
        return None

    def _chain_problem(self, cert: x509.Certificate) -> str | None:
        """Walk issuer signatures up the CA bundle to a self-signed root, checking validity on the way."""
        now = dt.datetime.now(dt.UTC)
        current = cert
        for _ in range(8):
            if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
                return "the client certificate (or its issuer) is outside its validity period"
            issuer = next(
                (ca for ca in self.cas if ca.subject == current.issuer and _signed(current, ca)), None
            )
            if issuer is None:
                return "the client certificate does not chain to the configured CA"
            if issuer.subject == issuer.issuer:
                return None
            current = issuer
        return "the client certificate chain is too long"


def _signed(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
