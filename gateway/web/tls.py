"""HTTPS for the installer page on the local network.

Either a certificate the operator gives (the gateway's own, ``--tls-cert``/``--tls-key``) or, with
``--tls``, a self-signed one made on the first start and kept in the commissioning directory, so that its
fingerprint stays the same across restarts. No CA on a roof vouches for either: the installer checks the
SHA-256 fingerprint the browser shows against the one printed on the gateway's console (also as a QR code
of the page's address with the fingerprint in its fragment).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sep2.files import write_atomic

VALID_DAYS = 3650  # a self-signed certificate that no CA trusts: its pinning, not its expiry, protects


class TlsError(ValueError):
    """A TLS option that cannot be used; the message names the flag."""


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, as browsers show it: ``AB:CD:...`` (32 pairs)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _names(host: str) -> list[x509.GeneralName]:
    dns = {"localhost", socket.gethostname()}
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    try:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified:
            ips.add(ip)
    except ValueError:
        if host:
            dns.add(host)
    return [x509.DNSName(n) for n in sorted(dns)] + [x509.IPAddress(i) for i in sorted(ips, key=str)]


def self_signed(directory: Path, host: str = "") -> tuple[Path, Path]:
    """The installer page's certificate and key in ``directory``, made on first use (EC P-256)."""
    cert_path, key_path = directory / "installer-cert.pem", directory / "installer-key.pem"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
                return cert_path, key_path
        except ValueError:
            pass  # unreadable: make a new one (its new fingerprint is printed)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"derlink installer {socket.gethostname()}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the page; errors name the flag to fix."""
    for flag, path in (("--tls-cert", cert_path), ("--tls-key", key_path)):
        if not path.is_file():
            raise TlsError(f"{flag} {path}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise TlsError(f"--tls-key {key_path}: does not belong to --tls-cert {cert_path} ({exc})") from None
    return ctx
