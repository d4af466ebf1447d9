"""stdlib ``ssl`` contexts for derlink's mutual TLS, and the peer identity they authenticate.

TLS 1.2 suites: ``ECDHE-ECDSA-AES128-CCM8`` (the IEEE 2030.5 suite) first, then ECDHE-ECDSA AES-GCM. TLS 1.3
is allowed with OpenSSL's TLS 1.3 suites (the stdlib cannot narrow them). Key exchange is on P-256, the
2030.5 curve. Some OpenSSL builds (3.2+) only enable the CCM8 suites at security level 0 because of their
64-bit tag; when that is so we lower the level so the 2030.5 suite stays available. The certificate chain
still has to validate against our own CA file, so this admits no weaker peer certificates in practice.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from certs.pki import Role, certificate_role
from sep2.identity import lfdi_from_cert_der, sfdi_from_lfdi

SEP2_CIPHER = "ECDHE-ECDSA-AES128-CCM8"
TLS12_CIPHERS: tuple[str, ...] = (
    SEP2_CIPHER,
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
)
TLS13_CIPHERS: tuple[str, ...] = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
#: Every suite a derlink context may negotiate.
ALLOWED_CIPHERS: frozenset[str] = frozenset(TLS12_CIPHERS + TLS13_CIPHERS)
ECDH_CURVE = "prime256v1"


class TlsConfigError(ValueError):
    """A TLS context could not be built from the given files; the message names the file."""


def _set_ciphers(context: ssl.SSLContext, ciphers: str) -> None:
    context.set_ciphers(ciphers)
    if SEP2_CIPHER in ciphers and not any(c["name"] == SEP2_CIPHER for c in context.get_ciphers()):
        context.set_ciphers(ciphers + ":@SECLEVEL=0")


def _base_context(
    protocol: int, cert_chain_file: Path | str, key_file: Path | str, ca_file: Path | str
) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    _set_ciphers(context, ":".join(TLS12_CIPHERS))
    context.set_ecdh_curve(ECDH_CURVE)
    try:
        context.load_cert_chain(str(cert_chain_file), str(key_file))
    except FileNotFoundError as exc:
        raise TlsConfigError(
            f"certificate or key file not found: {exc.filename or cert_chain_file}"
        ) from None
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"cannot load certificate chain {cert_chain_file} with key {key_file}: {exc.reason or exc}"
        ) from None
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except FileNotFoundError:
        raise TlsConfigError(f"CA file not found: {ca_file}") from None
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cannot load CA file {ca_file}: {exc.reason or exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_ssl_context(
    cert_chain_file: Path | str,
    key_file: Path | str,
    ca_file: Path | str,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """Server context: presents ``cert_chain_file``; validates client chains against ``ca_file``.

    With ``require_client_cert=False`` a client certificate is asked for and validated if sent, but not
    required (for a deployment behind a proxy or for public resources).
    """
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert_chain_file, key_file, ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def client_ssl_context(
    cert_chain_file: Path | str,
    key_file: Path | str,
    ca_file: Path | str,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Client context: verifies the server against ``ca_file`` (and its name) and presents our chain."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert_chain_file, key_file, ca_file)
    context.check_hostname = check_hostname
    return context


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of an authenticated TLS connection."""

    lfdi: str
    sfdi: int
    role: Role
    cert_der: bytes = field(repr=False)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity | None:
    """LFDI, SFDI and role of the peer's (already validated) certificate, or None if it sent none."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    lfdi = lfdi_from_cert_der(der)
    return PeerIdentity(lfdi=lfdi, sfdi=sfdi_from_lfdi(lfdi), role=certificate_role(der), cert_der=der)


def peer_lfdi(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The LFDI of the peer's certificate (upper-case hex), or None if it sent none.

    With aiohttp: ``peer_lfdi(request.transport.get_extra_info("ssl_object"))``.
    """
    identity = peer_identity(ssl_object)
    return identity.lfdi if identity else None
