"""The PKI toolkit: certificate chain, device identities, CSRs, and the `derlink certs` CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from certs import pki
from derlink.cli import main as derlink_main
from sep2.identity import format_sfdi, sfdi_from_lfdi, sfdi_is_valid

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_derlink(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "derlink", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def verify_client_chain(paths: pki.PkiPaths, leaf_path: Path) -> list[x509.Certificate]:
    """Path-validate a client certificate to our root with cryptography's RFC 5280 verifier.

    2030.5 client certificates need no subjectAltName, which the web-PKI defaults demand, so only that
    requirement is relaxed; signatures, CA constraints, path length, validity and EKU are still checked.
    """
    root = pki.load_certificate(paths.root_cert)
    intermediate = pki.load_certificate(paths.intermediate_cert)
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(dt.datetime.now(dt.UTC))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    return verifier.verify(pki.load_certificate(leaf_path), [intermediate]).chain


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def der_lfdi(cert_path: Path) -> str:
    der = pki.load_certificate(cert_path).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()[:20].hex().upper()


# ------------------------------------------------------------------------------------------ spec vector


def test_spec_vector_lfdi_to_sfdi() -> None:
    sfdi = sfdi_from_lfdi("3E4F45AB31EDFE5B67E343E5E4562E31984E23E5")
    assert sfdi == 167261211391
    assert sfdi_is_valid(sfdi)
    assert not sfdi_is_valid(167261211392)
    assert format_sfdi(sfdi) == "167-261-211-391"


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_init_and_device_produce_a_working_chain(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    init = run_derlink("certs", "init", "--dir", pki_dir)
    assert init.returncode == 0, init.stderr
    device = run_derlink("certs", "device", "--dir", pki_dir, "--name", "gateway-1")
    assert device.returncode == 0, device.stderr

    paths = pki.PkiPaths.of(pki_dir)
    cert_path = paths.devices_dir / "gateway-1.pem"
    chain = verify_client_chain(paths, cert_path)
    assert [c.subject for c in chain] == [
        pki.load_certificate(p).subject for p in (cert_path, paths.intermediate_cert, paths.root_cert)
    ]

    printed_lfdi = re.search(r"LFDI\s+│\s+([0-9A-F]{40})", device.stdout)
    printed_sfdi = re.search(r"SFDI\s+│\s+(\d+)", device.stdout)
    assert printed_lfdi and printed_sfdi, device.stdout
    assert printed_lfdi.group(1) == der_lfdi(cert_path)
    sfdi = int(printed_sfdi.group(1))
    assert sfdi == sfdi_from_lfdi(printed_lfdi.group(1))
    assert sfdi_is_valid(sfdi)
    assert format_sfdi(sfdi) in device.stdout  # grouped for reading aloud

    for key in (
        paths.root_key,
        paths.intermediate_key,
        paths.server_key,
        paths.devices_dir / "gateway-1.key",
    ):
        assert mode_of(key) == 0o600, key
    assert mode_of(cert_path) == 0o644


def test_cli_device_json_and_aggregator_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert derlink_main(["certs", "init", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (
        derlink_main(["certs", "device", "--dir", str(tmp_path), "--name", "agg", "--aggregator", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["role"] == "aggregator"
    assert out["lfdi"] == der_lfdi(Path(out["cert"]))
    assert out["sfdi"] == sfdi_from_lfdi(out["lfdi"]) and sfdi_is_valid(out["sfdi"])
    assert out["sfdi_grouped"] == format_sfdi(out["sfdi"])
    assert pki.certificate_role(pki.load_certificate(out["cert"])) == "aggregator"

    assert derlink_main(["certs", "show", out["chain"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lfdi"] == out["lfdi"] and shown["role"] == "aggregator"
    assert "OU=derlink aggregator" in shown["subject"]


def test_cli_show_table(tmp_path: Path) -> None:
    paths = pki.init_pki(tmp_path)
    device = pki.issue_device_certificate(tmp_path, "meter-9")
    shown = run_derlink("certs", "show", device.cert_path)
    assert shown.returncode == 0, shown.stderr
    for expected in ("CN=meter-9", "valid until", "9999-12-31", device.lfdi, str(device.sfdi), "device"):
        assert expected in shown.stdout
    server = run_derlink("certs", "show", paths.server_cert)
    assert "server" in server.stdout and "127.0.0.1" in server.stdout


def test_cli_init_refuses_existing_pki_unless_forced(tmp_path: Path) -> None:
    assert run_derlink("certs", "init", "--dir", tmp_path).returncode == 0
    pki.issue_device_certificate(tmp_path, "old")
    root_before = (tmp_path / pki.ROOT_CERT).read_bytes()

    again = run_derlink("certs", "init", "--dir", tmp_path)
    assert again.returncode == 2
    assert "already holds a PKI" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / pki.ROOT_CERT).read_bytes() == root_before

    forced = run_derlink("certs", "init", "--dir", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / pki.ROOT_CERT).read_bytes() != root_before
    assert not (tmp_path / "devices" / "old.pem").exists()  # issued by the replaced CA


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["certs", "device", "--dir", "{d}/missing", "--name", "x"], "does not exist"),
        (["certs", "device", "--dir", "{d}", "--name", "../escape"], "device name '../escape' is invalid"),
        (["certs", "show", "{d}/nope.pem"], "certificate file not found"),
        (["certs", "show", "{d}/root-ca.key"], "is not a PEM or DER X.509 certificate"),
        (["certs", "sign", "--dir", "{d}", "--csr", "{d}/none.csr"], "CSR file not found"),
        (["certs", "init", "--dir", "{d}/new", "--server-ip", "300.1.1.1"], "'300.1.1.1' is not a valid IP"),
    ],
)
def test_cli_errors_are_clear_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    pki.init_pki(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert derlink_main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_cli_duplicate_device_name_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init_pki(tmp_path)
    first = pki.issue_device_certificate(tmp_path, "gw")
    cert_before = first.cert_path.read_bytes()
    assert derlink_main(["certs", "device", "--dir", str(tmp_path), "--name", "gw"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert first.cert_path.read_bytes() == cert_before


def test_cli_csr_and_sign(tmp_path: Path) -> None:
    pki_dir, site = tmp_path / "ca", tmp_path / "site"
    pki.init_pki(pki_dir)
    made = run_derlink(
        "certs", "csr", "--key", site / "gw.key", "--out", site / "gw.csr", "--cn", "Site 42 gw"
    )
    assert made.returncode == 0, made.stderr
    assert mode_of(site / "gw.key") == 0o600
    signed = run_derlink(
        "certs", "sign", "--dir", pki_dir, "--csr", site / "gw.csr", "--out", site / "gw.pem", "--json"
    )
    assert signed.returncode == 0, signed.stderr
    out = json.loads(signed.stdout)
    assert out["key"] is None and out["cert"] == str(site / "gw.pem")
    assert out["lfdi"] == der_lfdi(site / "gw.pem")
    verify_client_chain(pki.PkiPaths.of(pki_dir), site / "gw.pem")


# -------------------------------------------------------------------------------------------- library


def test_chain_structure(tmp_path: Path) -> None:
    paths = pki.init_pki(
        tmp_path, server_names=["localhost", "utility.example"], server_ips=["127.0.0.1", "::1"]
    )
    root = pki.load_certificate(paths.root_cert)
    inter = pki.load_certificate(paths.intermediate_cert)
    server = pki.load_certificate(paths.server_cert)
    for cert in (root, inter, server):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert isinstance(cert.public_key().curve, ec.SECP256R1)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert inter.issuer == root.subject and server.issuer == inter.subject
    inter.verify_directly_issued_by(root)
    server.verify_directly_issued_by(inter)
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "utility.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]

    ca_bundle = x509.load_pem_x509_certificates(paths.ca_chain.read_bytes())
    assert [c.subject for c in ca_bundle] == [root.subject, inter.subject]
    server_chain = x509.load_pem_x509_certificates(paths.server_chain.read_bytes())
    assert server_chain == [server, inter]

    # The server certificate validates as a TLS server certificate for its names.
    PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName("utility.example")).verify(
        server, [inter]
    )


def test_device_certificate(tmp_path: Path) -> None:
    pki.init_pki(tmp_path)
    device = pki.issue_device_certificate(tmp_path, "inv-1", days=30)
    cert = pki.load_certificate(device.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "inv-1"
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier for p in policies] == [pki.SEP2_DEVICE_POLICY_OID]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)
    assert device.lfdi == der_lfdi(device.cert_path)
    assert device.sfdi == sfdi_from_lfdi(device.lfdi)
    assert device.role == pki.certificate_role(cert.public_bytes(serialization.Encoding.DER)) == "device"
    key = serialization.load_pem_private_key(device.key_path.read_bytes(), None)  # type: ignore[union-attr]
    assert key.public_key() == cert.public_key()
    assert x509.load_pem_x509_certificates(device.chain_path.read_bytes()) == [
        cert,
        pki.load_certificate(tmp_path / pki.INTERMEDIATE_CERT),
    ]
    info = pki.describe_certificate(device.chain_path)
    assert info["lfdi"] == device.lfdi and info["sfdi"] == device.sfdi and info["role"] == "device"
    assert info["serial"] == format(cert.serial_number, "X")
    assert info["not_after"] == cert.not_valid_after_utc.isoformat()
    assert pki.describe_certificate(tmp_path / pki.ROOT_CERT)["role"] == "ca"


def test_default_validity_is_2030_5_no_expiry(tmp_path: Path) -> None:
    paths = pki.init_pki(tmp_path)
    device = pki.issue_device_certificate(tmp_path, "d")
    for path in (paths.root_cert, paths.intermediate_cert, device.cert_path):
        assert pki.load_certificate(path).not_valid_after_utc == pki.NO_EXPIRY


def test_foreign_ca_device_does_not_validate(tmp_path: Path) -> None:
    ours = pki.init_pki(tmp_path / "ours")
    pki.init_pki(tmp_path / "foreign")
    foreign = pki.issue_device_certificate(tmp_path / "foreign", "intruder")
    with pytest.raises(x509.verification.VerificationError):
        verify_client_chain(ours, foreign.cert_path)


def _csr(key: object, subject: list[x509.NameAttribute]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_csr_round_trip_key_stays_put(tmp_path: Path) -> None:
    pki.init_pki(tmp_path / "ca")
    key_path, csr_path = tmp_path / "gw" / "gw.key", tmp_path / "gw" / "gw.csr"
    pki.create_key_and_csr(key_path, csr_path, "gateway 7")
    assert mode_of(key_path) == 0o600
    identity = pki.sign_csr(tmp_path / "ca", csr_path, aggregator=True)
    assert identity.key_path is None
    assert identity.cert_path == tmp_path / "ca" / "devices" / "gateway-7.pem"
    assert not list((tmp_path / "ca" / "devices").glob("*.key"))
    cert = pki.load_certificate(identity.cert_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert cert.public_key() == key.public_key()
    assert identity.role == "aggregator" and identity.common_name == "gateway 7"
    verify_client_chain(pki.PkiPaths.of(tmp_path / "ca"), identity.cert_path)
    with pytest.raises(pki.PkiError, match="refusing to overwrite a private key"):
        pki.create_key_and_csr(key_path, tmp_path / "other.csr", "again")


def test_csr_cannot_claim_aggregator_role(tmp_path: Path) -> None:
    """Only the CA decides the role: an OU smuggled into a CSR is ignored."""
    pki.init_pki(tmp_path)
    csr_path = tmp_path / "sneaky.csr"
    csr_path.write_bytes(
        _csr(
            ec.generate_private_key(ec.SECP256R1()),
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, pki.ROLE_OU["aggregator"]),
                x509.NameAttribute(NameOID.COMMON_NAME, "sneaky"),
            ],
        )
    )
    identity = pki.sign_csr(tmp_path, csr_path)
    assert identity.role == "device"
    assert pki.certificate_role(pki.load_certificate(identity.cert_path)) == "device"


def _tampered_csr() -> bytes:
    pem = _csr(
        ec.generate_private_key(ec.SECP256R1()), [x509.NameAttribute(NameOID.COMMON_NAME, "gateway-7")]
    )
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"gateway-7", b"gateway-8")
    assert tampered != der
    return x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make_csr", "message"),
    [
        (
            lambda: _csr(
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                [x509.NameAttribute(NameOID.COMMON_NAME, "rsa")],
            ),
            "CSR key is RSA; IEEE 2030.5 requires ECDSA P-256",
        ),
        (
            lambda: _csr(
                ec.generate_private_key(ec.SECP384R1()), [x509.NameAttribute(NameOID.COMMON_NAME, "p384")]
            ),
            "CSR key is on curve secp384r1",
        ),
        (_tampered_csr, "CSR signature does not verify"),
        (
            lambda: _csr(
                ec.generate_private_key(ec.SECP256R1()), [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]
            ),
            "CSR subject has no common name",
        ),
        (
            lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
            "is not a",
        ),
    ],
    ids=["rsa", "p384", "tampered", "no-cn", "garbage"],
)
def test_bad_csr_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_csr: object, message: str
) -> None:
    pki.init_pki(tmp_path / "ca")
    csr_path = tmp_path / "bad.csr"
    csr_path.write_bytes(make_csr())  # type: ignore[operator]
    with pytest.raises(pki.PkiError, match=re.escape(message)):
        pki.sign_csr(tmp_path / "ca", csr_path)
    assert derlink_main(["certs", "sign", "--dir", str(tmp_path / "ca"), "--csr", str(csr_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ca" / "devices").exists()  # nothing issued
