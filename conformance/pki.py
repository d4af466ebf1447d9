"""A CSIP-AUS-shaped PKI that ``derlink certs`` did not make: written here, directly with ``cryptography``.

SERCA (self-signed root) -> MCA (intermediate) -> leaf certificates for the utility server, each test client
and the notification sink. P-256 ECDSA, as IEEE 2030.5 clause 6.11 requires. Nothing here imports derlink:
the point is that the server accepts a chain that it has never seen the making of.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: id-sep2-device-policy (IEEE 2030.5 clause 6.11.7) — device certificates carry it.
SEP2_DEVICE_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.40732.1.1")


@dataclass(frozen=True)
class Leaf:
    cert: Path  # leaf then intermediate (the chain a peer presents)
    key: Path
    lfdi: str
    sfdi: int


def lfdi_of(cert_der: bytes) -> str:
    """2030.5 clause 6.3.4: the first 160 bits of SHA-256 over the certificate (DER), hex."""
    return hashlib.sha256(cert_der).hexdigest()[:40].upper()


def sfdi_of(lfdi: str) -> int:
    """2030.5 clause 6.3.3: the LFDI's first 36 bits, decimal, and a check digit (digit sum % 10 == 0)."""
    value = int(lfdi[:9], 16)
    check = (10 - sum(int(d) for d in str(value)) % 10) % 10
    return value * 10 + check


def _name(cn: str, org: str = "Conformance Lab") -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


class LabPki:
    """Create the chain under ``root`` (idempotent: existing files are reused)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self.serca_key, self.serca = self._ca("serca", "Lab SERCA", None, None, path_len=2)
        self.mca_key, self.mca = self._ca("mca", "Lab MCA", self.serca_key, self.serca, path_len=0)
        (root / "serca.pem").write_bytes(self.serca.public_bytes(serialization.Encoding.PEM))
        # The bundle the server trusts: root and intermediate.
        (root / "ca-bundle.pem").write_bytes(
            self.serca.public_bytes(serialization.Encoding.PEM)
            + self.mca.public_bytes(serialization.Encoding.PEM)
        )

    @property
    def serca_pem(self) -> Path:
        return self.root / "serca.pem"

    @property
    def ca_bundle(self) -> Path:
        return self.root / "ca-bundle.pem"

    def _load(self, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
        cert, key = self.root / f"{stem}.crt", self.root / f"{stem}.key"
        if not (cert.exists() and key.exists()):
            return None
        k = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(k, ec.EllipticCurvePrivateKey)
        return k, x509.load_pem_x509_certificates(cert.read_bytes())[0]

    def _ca(
        self,
        stem: str,
        cn: str,
        issuer_key: ec.EllipticCurvePrivateKey | None,
        issuer: x509.Certificate | None,
        path_len: int,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        loaded = self._load(stem)
        if loaded:
            return loaded
        key = ec.generate_private_key(ec.SECP256R1())
        sign_key = issuer_key or key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer.subject if issuer else _name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now)
            .not_valid_after(self.now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(sign_key.public_key()), critical=False
            )
        )
        cert = builder.sign(sign_key, hashes.SHA256())
        (self.root / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self.root / f"{stem}.key", key)
        return key, cert

    def leaf(self, stem: str, cn: str, *, server: bool = False, device: bool = True) -> Leaf:
        """A leaf signed by the MCA. ``server`` adds serverAuth and loopback SANs; clients get clientAuth."""
        chain_path = self.root / f"{stem}.chain.pem"
        loaded = self._load(stem)
        if loaded:
            key, cert = loaded
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(cn))
                .issuer_name(self.mca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.now)
                .not_valid_after(self.now + dt.timedelta(days=825))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True
                )
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.mca_key.public_key()),
                    critical=False,
                )
            )
            if server:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(
                        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                    ),
                    critical=False,
                )
            elif device:
                builder = builder.add_extension(
                    x509.CertificatePolicies([x509.PolicyInformation(SEP2_DEVICE_POLICY, None)]),
                    critical=False,
                )
            cert = builder.sign(self.mca_key, hashes.SHA256())
            (self.root / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(self.root / f"{stem}.key", key)
        chain_path.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + self.mca.public_bytes(serialization.Encoding.PEM)
        )
        lfdi = lfdi_of(cert.public_bytes(serialization.Encoding.DER))
        return Leaf(cert=chain_path, key=self.root / f"{stem}.key", lfdi=lfdi, sfdi=sfdi_of(lfdi))
