"""A small IEEE 2030.5-style PKI: root CA, intermediate CA, server certificate and device certificates.

Everything is ECDSA P-256 with SHA-256, as IEEE 2030.5 requires. The chain mirrors the 2030.5 one: a root
(SERCA-like, pathlen 1) signs an intermediate (MICA-like, pathlen 0), which signs the utility server's
certificate and every device/aggregator client certificate.

Directory layout written by :func:`init_pki` and :func:`issue_device_certificate`::

    D/root-ca.pem  D/root-ca.key                   root CA (self-signed)
    D/intermediate-ca.pem  D/intermediate-ca.key   intermediate CA
    D/ca-chain.pem                                 root + intermediate: the trust file for servers and clients
    D/server.pem  D/server.key  D/server-chain.pem server leaf; server-chain = leaf + intermediate
    D/devices/N.pem  N.key  N-chain.pem            client leaf; N-chain = leaf + intermediate

Private keys are unencrypted PEM (PKCS#8) at mode 0600; files are written atomically.

Client roles: a certificate's role ("device" or "aggregator") is carried in the subject's
organizationalUnitName, which the CA always sets itself (never copied from a CSR). :func:`certificate_role`
reads it; a client certificate without a recognised OU is treated as a plain device (least privilege).
Client certificates also carry the 2030.5 generic-device certificate policy (1.3.6.1.4.1.40732.1.1).

Validity: like 2030.5 device and CA certificates, ours have no well-defined expiration
(notAfter 9999-12-31T23:59:59Z) unless ``days`` is given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sep2.files import write_atomic
from sep2.identity import lfdi_from_cert_der, sfdi_from_lfdi

Role = Literal["device", "aggregator"]

ROLE_DEVICE: Role = "device"
ROLE_AGGREGATOR: Role = "aggregator"
#: OU values the CA writes into client certificates; certificate_role() maps them back.
ROLE_OU: dict[str, str] = {ROLE_DEVICE: "derlink device", ROLE_AGGREGATOR: "derlink aggregator"}

#: IEEE 2030.5 certificate policy id-sep2-dev-generic.
SEP2_DEVICE_POLICY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.40732.1.1")

#: 2030.5 "no well-defined expiration" notAfter.
NO_EXPIRY = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)

ROOT_CERT = "root-ca.pem"
ROOT_KEY = "root-ca.key"
INTERMEDIATE_CERT = "intermediate-ca.pem"
INTERMEDIATE_KEY = "intermediate-ca.key"
CA_CHAIN = "ca-chain.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SERVER_CHAIN = "server-chain.pem"
DEVICES_DIR = "devices"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_CN_LENGTH = 64  # X.520 ub-common-name


class PkiError(ValueError):
    """A PKI operation that cannot be done as asked; the message names the problem."""


class PkiExistsError(PkiError):
    """The target directory already holds a PKI (use force to replace it)."""


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """Files of a PKI. ``ca_chain`` is the trust file; ``server_chain`` is what the server presents."""

    directory: Path
    root_cert: Path
    root_key: Path
    intermediate_cert: Path
    intermediate_key: Path
    ca_chain: Path
    server_cert: Path
    server_key: Path
    server_chain: Path

    @classmethod
    def of(cls, directory: Path | str) -> PkiPaths:
        d = Path(directory)
        return cls(
            directory=d,
            root_cert=d / ROOT_CERT,
            root_key=d / ROOT_KEY,
            intermediate_cert=d / INTERMEDIATE_CERT,
            intermediate_key=d / INTERMEDIATE_KEY,
            ca_chain=d / CA_CHAIN,
            server_cert=d / SERVER_CERT,
            server_key=d / SERVER_KEY,
            server_chain=d / SERVER_CHAIN,
        )

    @property
    def devices_dir(self) -> Path:
        return self.directory / DEVICES_DIR


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A client certificate issued by the PKI and the identity 2030.5 derives from it.

    ``key_path`` is None when the certificate was issued from a CSR (the key stays with the requester).
    ``chain_path`` holds leaf + intermediate: what the client presents in TLS.
    """

    common_name: str
    role: Role
    cert_path: Path
    key_path: Path | None
    chain_path: Path
    ca_chain_path: Path
    lfdi: str
    sfdi: int


# --------------------------------------------------------------------------------------------------- files


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_atomic(path, _key_pem(key), 0o600)


def _write_certs(path: Path, *certs: x509.Certificate) -> None:
    write_atomic(path, _cert_pem(*certs), 0o644)


def load_certificate(path: Path | str) -> x509.Certificate:
    """Load the first certificate of a PEM or DER file, with a clear error if it is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"certificate file not found: {path}") from None
    except OSError as exc:
        raise PkiError(f"cannot read certificate file {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM or DER X.509 certificate ({exc})") from None


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"private key file not found: {path}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(f"{path}: private key must be ECDSA P-256 (secp256r1)")
    return key


# ------------------------------------------------------------------------------------------ certificates


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _not_after(now: dt.datetime, days: int | None) -> dt.datetime:
    if days is None:
        return NO_EXPIRY
    if not isinstance(days, int) or days <= 0:
        raise PkiError(f"days must be a positive whole number of days, got {days!r}")
    return now + dt.timedelta(days=days)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_public_key: ec.EllipticCurvePublicKey,
    days: int | None,
) -> x509.CertificateBuilder:
    # Back-date notBefore a little so freshly issued certificates verify on peers with slightly slow clocks.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(_not_after(now, days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _name(organisation: str, common_name: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)]
    if unit is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _organisation(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else "derlink"


def init_pki(
    directory: Path | str,
    *,
    server_names: tuple[str, ...] | list[str] = ("localhost",),
    server_ips: tuple[str, ...] | list[str] = ("127.0.0.1",),
    organisation: str = "derlink",
    force: bool = False,
) -> PkiPaths:
    """Create root CA, intermediate CA and a server certificate (serverAuth, SANs) in ``directory``.

    Raises PkiExistsError if the directory already holds a PKI, unless ``force``; ``force`` replaces the
    whole PKI, including previously issued device certificates under ``devices/`` (they would no longer
    chain to the new root).
    """
    paths = PkiPaths.of(directory)
    if paths.directory.exists() and not paths.directory.is_dir():
        raise PkiError(f"{paths.directory} exists and is not a directory")
    existing = [p for p in (paths.root_cert, paths.root_key, paths.intermediate_cert) if p.exists()]
    if existing and not force:
        raise PkiExistsError(
            f"{paths.directory} already holds a PKI ({existing[0].name}); use force/--force to replace it"
        )
    if not server_names and not server_ips:
        raise PkiError("the server certificate needs at least one server name or server IP address")
    sans: list[x509.GeneralName] = []
    for name in server_names:
        if not name or not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
            raise PkiError(f"server name {name!r} is not a valid DNS name")
        sans.append(x509.DNSName(name))
    for ip in server_ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"server IP {ip!r} is not a valid IP address") from None

    root_key = _new_key()
    root_name = _name(organisation, f"{organisation} root CA (SERCA)")
    root = (
        _builder(root_name, root_name, root_key.public_key(), root_key.public_key(), None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .sign(root_key, hashes.SHA256())
    )

    inter_key = _new_key()
    inter_name = _name(organisation, f"{organisation} intermediate CA (MICA)")
    intermediate = (
        _builder(inter_name, root_name, inter_key.public_key(), root_key.public_key(), None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .sign(root_key, hashes.SHA256())
    )

    server_key = _new_key()
    server_cn = server_names[0] if server_names else server_ips[0]
    server = (
        _builder(
            _name(organisation, server_cn, "derlink server"),
            inter_name,
            server_key.public_key(),
            inter_key.public_key(),
            None,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        # clientAuth too: the server is the TLS client when it delivers Notifications to subscribers.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(inter_key, hashes.SHA256())
    )

    if force and paths.devices_dir.is_dir():
        shutil.rmtree(paths.devices_dir)
    paths.directory.mkdir(parents=True, exist_ok=True)
    _write_key(paths.root_key, root_key)
    _write_key(paths.intermediate_key, inter_key)
    _write_key(paths.server_key, server_key)
    _write_certs(paths.intermediate_cert, intermediate)
    _write_certs(paths.ca_chain, root, intermediate)
    _write_certs(paths.server_cert, server)
    _write_certs(paths.server_chain, server, intermediate)
    _write_certs(paths.root_cert, root)  # last: its presence marks a complete PKI
    return paths


def load_pki(directory: Path | str) -> PkiPaths:
    """Return the paths of an existing PKI, or raise PkiError naming the missing file."""
    paths = PkiPaths.of(directory)
    if not paths.directory.is_dir():
        raise PkiError(f"PKI directory {paths.directory} does not exist; run `derlink certs init` first")
    for p in (paths.root_cert, paths.intermediate_cert, paths.intermediate_key, paths.ca_chain):
        if not p.exists():
            raise PkiError(f"{paths.directory} is not a complete PKI: {p.name} is missing")
    return paths


def _issue_client_certificate(
    paths: PkiPaths,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    aggregator: bool,
    days: int | None,
) -> x509.Certificate:
    intermediate = load_certificate(paths.intermediate_cert)
    inter_key = _load_private_key(paths.intermediate_key)
    role = ROLE_AGGREGATOR if aggregator else ROLE_DEVICE
    return (
        _builder(
            _name(_organisation(intermediate), common_name, ROLE_OU[role]),
            intermediate.subject,
            public_key,
            inter_key.public_key(),
            days,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        # serverAuth too: a gateway serves its Notification listener (subscriptions) with this identity.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(SEP2_DEVICE_POLICY_OID, None)]), critical=False
        )
        .sign(inter_key, hashes.SHA256())
    )


def _identity(
    paths: PkiPaths, cert: x509.Certificate, cert_path: Path, key_path: Path | None, chain_path: Path
) -> DeviceIdentity:
    lfdi = lfdi_from_cert_der(cert.public_bytes(serialization.Encoding.DER))
    return DeviceIdentity(
        common_name=str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
        role=certificate_role(cert),
        cert_path=cert_path,
        key_path=key_path,
        chain_path=chain_path,
        ca_chain_path=paths.ca_chain,
        lfdi=lfdi,
        sfdi=sfdi_from_lfdi(lfdi),
    )


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise PkiError(
            f"device name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _chain_path_for(cert_path: Path) -> Path:
    return cert_path.with_name(f"{cert_path.stem}-chain.pem")


def issue_device_certificate(
    directory: Path | str,
    name: str,
    *,
    aggregator: bool = False,
    days: int | None = None,
    force: bool = False,
) -> DeviceIdentity:
    """Generate a key and a clientAuth certificate for a device (or an aggregator) under ``devices/``.

    ``name`` becomes the subject CN and the file stem. Refuses to overwrite an existing device of the same
    name unless ``force``.
    """
    paths = load_pki(directory)
    _check_name(name)
    cert_path = paths.devices_dir / f"{name}.pem"
    key_path = paths.devices_dir / f"{name}.key"
    chain_path = _chain_path_for(cert_path)
    if not force and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"device {name!r} already exists in {paths.devices_dir}; choose another name")
    key = _new_key()
    cert = _issue_client_certificate(paths, name, key.public_key(), aggregator, days)
    intermediate = load_certificate(paths.intermediate_cert)
    _write_key(key_path, key)
    _write_certs(chain_path, cert, intermediate)
    _write_certs(cert_path, cert)
    return _identity(paths, cert, cert_path, key_path, chain_path)


# -------------------------------------------------------------------------------------------------- CSRs


def create_key_and_csr(
    key_path: Path | str, csr_path: Path | str, common_name: str, *, force: bool = False
) -> x509.CertificateSigningRequest:
    """Generate a P-256 key at ``key_path`` (mode 0600) and a CSR for it at ``csr_path``.

    The key never leaves the machine that runs this: only the CSR goes to the CA. Refuses to overwrite an
    existing key unless ``force`` (losing a key would orphan its certificate).
    """
    key_path, csr_path = Path(key_path), Path(csr_path)
    if not isinstance(common_name, str) or not common_name.strip() or len(common_name) > _MAX_CN_LENGTH:
        raise PkiError(f"common name must be 1-{_MAX_CN_LENGTH} characters, got {common_name!r}")
    if key_path.exists() and not force:
        raise PkiError(f"key file {key_path} already exists; refusing to overwrite a private key")
    if key_path.resolve() == csr_path.resolve():
        raise PkiError("the key and the CSR must be different files")
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    return csr


def load_csr(csr_path: Path | str) -> x509.CertificateSigningRequest:
    """Load and check a CSR: parseable, self-signature valid, P-256 key, has a CN. Raises PkiError."""
    csr_path = Path(csr_path)
    try:
        data = csr_path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"CSR file not found: {csr_path}") from None
    try:
        csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise PkiError(f"{csr_path} is not a PEM or DER certificate signing request ({exc})") from None
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        kind = type(public_key).__name__.removeprefix("_").replace("PublicKey", "")
        raise PkiError(f"{csr_path}: CSR key is {kind}; IEEE 2030.5 requires ECDSA P-256 (secp256r1)")
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise PkiError(
            f"{csr_path}: CSR key is on curve {public_key.curve.name}; "
            "IEEE 2030.5 requires ECDSA P-256 (secp256r1)"
        )
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType):
        valid = False
    if not valid:
        raise PkiError(f"{csr_path}: CSR signature does not verify (the request was altered or is corrupt)")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or not str(cns[0].value).strip():
        raise PkiError(f"{csr_path}: CSR subject has no common name (CN)")
    return csr


def sign_csr(
    directory: Path | str,
    csr_path: Path | str,
    *,
    aggregator: bool = False,
    out: Path | str | None = None,
    days: int | None = None,
    force: bool = False,
) -> DeviceIdentity:
    """Issue a client certificate for a CSR. Only the CSR's CN and key are used; the CA sets the rest.

    The certificate goes to ``out`` (default ``devices/<CN>.pem`` with unsafe characters replaced) and a
    leaf + intermediate chain next to it as ``<stem>-chain.pem``. ``key_path`` of the result is None.
    """
    paths = load_pki(directory)
    csr = load_csr(csr_path)
    common_name = str(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    if out is None:
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", common_name).lstrip(".-") or "device"
        cert_path = paths.devices_dir / f"{stem[:64]}.pem"
    else:
        cert_path = Path(out)
    chain_path = _chain_path_for(cert_path)
    if cert_path.exists() and not force:
        raise PkiError(f"certificate file {cert_path} already exists; pass another output path")
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked by load_csr
    cert = _issue_client_certificate(paths, common_name, public_key, aggregator, days)
    _write_certs(chain_path, cert, load_certificate(paths.intermediate_cert))
    _write_certs(cert_path, cert)
    return _identity(paths, cert, cert_path, None, chain_path)


# ------------------------------------------------------------------------------------------- inspection


def _as_certificate(cert: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if cert.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(cert)
    return x509.load_der_x509_certificate(cert)


def certificate_role(cert: x509.Certificate | bytes) -> Role:
    """The client role a certificate grants: "aggregator" only if our CA marked it so, else "device".

    Accepts a cryptography certificate, DER bytes (as from ``getpeercert(binary_form=True)``) or PEM bytes.
    """
    cert = _as_certificate(cert)
    units = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    return ROLE_AGGREGATOR if ROLE_OU[ROLE_AGGREGATOR] in units else ROLE_DEVICE


def _kind(cert: x509.Certificate) -> str:
    """ "ca", "server" or the client role, for display."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = []
    try:
        policies = {
            p.policy_identifier
            for p in cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
        }
    except x509.ExtensionNotFound:
        policies = set()
    if ExtendedKeyUsageOID.SERVER_AUTH in usages and SEP2_DEVICE_POLICY_OID not in policies:
        return "server"
    return certificate_role(cert)


def describe_certificate(path: Path | str) -> dict[str, Any]:
    """Summarise the first certificate in a file (JSON-friendly values).

    ``role`` is "ca" for CA certificates, "server" for serverAuth certificates without the 2030.5 device
    policy, otherwise the client role from :func:`certificate_role`. ``serial`` is upper-case hex; times
    are ISO 8601 UTC.
    """
    cert = load_certificate(path)
    der = cert.public_bytes(serialization.Encoding.DER)
    lfdi = lfdi_from_cert_der(der)
    public_key = cert.public_key()
    key = (
        f"ECDSA {public_key.curve.name}"
        if isinstance(public_key, ec.EllipticCurvePublicKey)
        else type(public_key).__name__.removeprefix("_").replace("PublicKey", "")
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {
        "path": str(path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "X"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": key,
        "subject_alt_names": names,
        "lfdi": lfdi,
        "sfdi": sfdi_from_lfdi(lfdi),
        "role": _kind(cert),
    }
