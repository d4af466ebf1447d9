"""Client certificate policy (server.certpolicy): EC P-256, clientAuth EKU, chained to the configured CA,
never the server's own. CSIP-AUS requires EC P-256 (secp256r1) device certificates; 2030.5 clause 6.11
(security) names ECDHE-ECDSA with P-256 as the mandatory cipher suite."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pki import init_pki, load_pki
from certs.tls import client_ssl_context
from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from tests.test_server_harness import Client, server_config

pytest_plugins = ["tests.test_server_harness"]


def make_client_cert(
    pki_dir: Path, out: Path, name: str, *, key: object = None, eku: list | None = None
) -> tuple[Path, Path, x509.Certificate]:
    """A leaf signed by the PKI's intermediate (the issuer of device certificates)."""
    paths = load_pki(pki_dir)
    issuer = x509.load_pem_x509_certificate(paths.intermediate_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(paths.intermediate_key.read_bytes(), None)
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + paths.intermediate_cert.read_bytes()
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert


CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
HANDSHAKE_MAY_REFUSE = {"rsa", "server-auth-only"}


async def test_only_p256_client_auth_certificates_that_are_not_the_servers_own(pki, tmp_path):
    paths = load_pki(pki.directory)
    made = {
        "good": make_client_cert(pki.directory, tmp_path, "good", eku=CLIENT),
        "rsa": make_client_cert(
            pki.directory, tmp_path, "rsa", key=rsa.generate_private_key(65537, 2048), eku=CLIENT
        ),
        "p384": make_client_cert(
            pki.directory, tmp_path, "p384", key=ec.generate_private_key(ec.SECP384R1()), eku=CLIENT
        ),
        "no-eku": make_client_cert(pki.directory, tmp_path, "no-eku"),
        "server-auth-only": make_client_cert(
            pki.directory, tmp_path, "sa", eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        ),
    }
    running = await start_server(server_config(pki, tmp_path / "data"))
    try:
        expect = {
            "good": 200,
            "rsa": "EC P-256",
            "p384": "EC P-256",
            "no-eku": "no Extended Key Usage",
            "server-auth-only": "lacks clientAuth",
        }
        contexts = {
            name: client_ssl_context(chain, key, paths.ca_chain) for name, (chain, key, _) in made.items()
        }
        contexts["server's own"] = client_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain)
        expect["server's own"] = "server's own certificate"
        refused_in_handshake: set[str] = set()
        for name, context in contexts.items():
            client = Client(running.base_url, context, "")
            try:
                for _ in range(2):  # the second time from the verdict cache
                    try:
                        reply = await client.get("/dcap")
                    except aiohttp.ClientError:
                        # OpenSSL itself may already refuse it in the handshake (TLS 1.2 ECDSA suites
                        # only; a present EKU without clientAuth): refused either way.
                        assert expect[name] != 200 and name in HANDSHAKE_MAY_REFUSE, name
                        refused_in_handshake.add(name)
                        break
                    if expect[name] == 200:
                        assert reply.status == 200, (name, reply.headers.get("X-Error-Detail"))
                    else:
                        assert reply.status == 403, (name, reply.status)
                        assert from_xml(reply.body, r.Error) is not None
                        assert expect[name] in reply.headers["X-Error-Detail"], name
            finally:
                await client.close()
    finally:
        await running.stop()


async def test_behind_a_proxy_the_header_certificate_must_chain_to_the_ca(pki, tmp_path):
    _, _, good = make_client_cert(pki.directory, tmp_path, "good", eku=CLIENT)
    other = init_pki(tmp_path / "other-pki")  # a different CA, same policy otherwise
    _, _, foreign = make_client_cert(other.directory, tmp_path, "foreign", eku=CLIENT)
    config = server_config(pki, tmp_path / "data", tls=False, trusted_proxies=["127.0.0.1"])
    running = await start_server(config)

    def header(cert: x509.Certificate) -> dict[str, str]:
        return {"X-Client-Cert": quote(cert.public_bytes(serialization.Encoding.PEM).decode())}

    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(running.base_url + "/dcap", headers=header(good)) as reply:
                assert reply.status == 200
            async with session.get(running.base_url + "/dcap", headers=header(foreign)) as reply:
                assert reply.status == 403
                assert "does not chain to the configured CA" in reply.headers["X-Error-Detail"]
            own = x509.load_pem_x509_certificate(load_pki(pki.directory).server_cert.read_bytes())
            async with session.get(running.base_url + "/dcap", headers=header(own)) as reply:
                assert reply.status == 403
    finally:
        await running.stop()


def test_an_expired_header_certificate_is_refused(pki, tmp_path):
    from server.certpolicy import ClientCertPolicy

    paths = load_pki(pki.directory)
    _, _, cert = make_client_cert(pki.directory, tmp_path, "fresh", eku=CLIENT)
    policy = ClientCertPolicy(paths.ca_chain, [paths.server_chain])
    assert policy.problem(cert, check_chain=True) is None
    issuer_key = serialization.load_pem_private_key(paths.intermediate_key.read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3))
        .not_valid_after(now - dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage(CLIENT), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    assert "validity period" in policy.problem(expired, check_chain=True)
