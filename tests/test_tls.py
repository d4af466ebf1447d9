"""Real mutual-TLS handshakes on 127.0.0.1 between derlink's server and client contexts."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from certs import pki, tls


@dataclass
class Pki:
    paths: pki.PkiPaths
    device: pki.DeviceIdentity
    aggregator: pki.DeviceIdentity


@pytest.fixture
def ours(tmp_path: Path) -> Pki:
    paths = pki.init_pki(tmp_path / "ours")
    return Pki(
        paths,
        pki.issue_device_certificate(paths.directory, "gateway-1"),
        pki.issue_device_certificate(paths.directory, "aggregator-1", aggregator=True),
    )


@pytest.fixture
def foreign(tmp_path: Path) -> Pki:
    paths = pki.init_pki(tmp_path / "foreign")
    return Pki(
        paths,
        pki.issue_device_certificate(paths.directory, "gateway-1"),
        pki.issue_device_certificate(paths.directory, "aggregator-1", aggregator=True),
    )


@dataclass
class Server:
    port: int
    accepted: list[tuple[tls.PeerIdentity | None, str]] = field(default_factory=list)


@asynccontextmanager
async def serving(context: ssl.SSLContext) -> AsyncIterator[Server]:
    """A TLS echo-of-identity server: replies with the client's LFDI (or '-') once the handshake is done."""
    server = Server(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        server.accepted.append((tls.peer_identity(ssl_object), ssl_object.cipher()[0]))
        writer.write(((tls.peer_lfdi(ssl_object) or "-") + "\n").encode())
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def our_server_context(p: Pki, **kwargs: bool) -> ssl.SSLContext:
    return tls.server_ssl_context(p.paths.server_chain, p.paths.server_key, p.paths.ca_chain, **kwargs)


async def exchange(server: Server, context: ssl.SSLContext, host: str = "localhost") -> tuple[str, str]:
    """Connect, read the server's reply; return (reply, negotiated cipher). Raises if TLS fails."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", server.port, ssl=context, server_hostname=host), 10
    )
    try:
        cipher = writer.get_extra_info("ssl_object").cipher()[0]
        reply = await asyncio.wait_for(reader.readline(), 10)
        if not reply:
            raise ConnectionResetError("server closed the connection without replying")
        return reply.decode().strip(), cipher
    finally:
        writer.close()


async def test_mutual_tls_handshake_server_sees_client_lfdi(ours: Pki) -> None:
    async with serving(our_server_context(ours)) as server:
        for client in (ours.device, ours.aggregator):
            context = tls.client_ssl_context(client.chain_path, client.key_path, ours.paths.ca_chain)
            reply, cipher = await exchange(server, context)
            assert reply == client.lfdi
            assert cipher in tls.ALLOWED_CIPHERS
        # The client also verified the server by IP address SAN.
        context = tls.client_ssl_context(ours.device.chain_path, ours.device.key_path, ours.paths.ca_chain)
        assert (await exchange(server, context, host="127.0.0.1"))[0] == ours.device.lfdi
    identities = [identity for identity, _ in server.accepted]
    assert [(i.lfdi, i.sfdi, i.role) for i in identities if i] == [
        (ours.device.lfdi, ours.device.sfdi, "device"),
        (ours.aggregator.lfdi, ours.aggregator.sfdi, "aggregator"),
        (ours.device.lfdi, ours.device.sfdi, "device"),
    ]


async def test_client_certificate_from_foreign_ca_is_refused(ours: Pki, foreign: Pki) -> None:
    # The intruder trusts our server (so its side of the handshake is fine) but holds a foreign certificate.
    context = tls.client_ssl_context(foreign.device.chain_path, foreign.device.key_path, ours.paths.ca_chain)
    async with serving(our_server_context(ours)) as server:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await exchange(server, context)
    assert server.accepted == []  # the handler never ran: no authenticated connection (reason: see below)


def server_side_error(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> Exception | None:
    """Handshake on blocking sockets and return the exception the *server* raised (None if it accepted).

    asyncio closes a refused connection without surfacing the reason to the client, so the reason is read
    here on the server side.
    """
    outcome: list[Exception | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve_one() -> None:
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"hello\n")
                    outcome.append(None)
            except (ssl.SSLError, OSError) as exc:
                outcome.append(exc)

        thread = threading.Thread(target=serve_one)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client_context.wrap_socket(raw, server_hostname="localhost") as client,
            ):
                client.recv(16)
        except (ssl.SSLError, OSError):
            pass
        thread.join(10)
    return outcome[0]


def test_server_refusal_reasons(ours: Pki, foreign: Pki) -> None:
    server_context = our_server_context(ours)
    good = tls.client_ssl_context(ours.device.chain_path, ours.device.key_path, ours.paths.ca_chain)
    assert server_side_error(server_context, good) is None
    intruder = tls.client_ssl_context(foreign.device.chain_path, foreign.device.key_path, ours.paths.ca_chain)
    error = server_side_error(server_context, intruder)
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(error)
    anonymous = ssl.create_default_context(cafile=ours.paths.ca_chain)
    error = server_side_error(server_context, anonymous)
    assert isinstance(error, ssl.SSLError) and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(error)


async def test_client_without_certificate_is_refused(ours: Pki) -> None:
    context = ssl.create_default_context(cafile=ours.paths.ca_chain)  # verifies the server, sends no cert
    async with serving(our_server_context(ours)) as server:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await exchange(server, context)
    assert server.accepted == []


async def test_optional_client_certificate_mode(ours: Pki) -> None:
    context = ssl.create_default_context(cafile=ours.paths.ca_chain)
    async with serving(our_server_context(ours, require_client_cert=False)) as server:
        assert (await exchange(server, context))[0] == "-"
    assert server.accepted[0][0] is None
    assert tls.peer_lfdi(None) is None


async def test_client_refuses_server_from_foreign_ca(ours: Pki, foreign: Pki) -> None:
    context = tls.client_ssl_context(ours.device.chain_path, ours.device.key_path, ours.paths.ca_chain)
    async with serving(our_server_context(foreign)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(server, context)


async def test_client_checks_server_name(ours: Pki) -> None:
    context = tls.client_ssl_context(ours.device.chain_path, ours.device.key_path, ours.paths.ca_chain)
    async with serving(our_server_context(ours)) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"utility\.example"):
            await exchange(server, context, host="utility.example")


def tls12_client(p: Pki, ciphers: str) -> ssl.SSLContext:
    context = tls.client_ssl_context(p.device.chain_path, p.device.key_path, p.paths.ca_chain)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def openssl_has_ccm8() -> bool:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.set_ciphers(f"{tls.SEP2_CIPHER}:@SECLEVEL=0")
    except ssl.SSLError:
        return False
    return any(c["name"] == tls.SEP2_CIPHER for c in probe.get_ciphers())


async def test_tls12_2030_5_suite_ccm8(ours: Pki) -> None:
    server_context = our_server_context(ours)
    offered = {c["name"] for c in server_context.get_ciphers()}
    if openssl_has_ccm8():
        assert tls.SEP2_CIPHER in offered
        async with serving(server_context) as server:
            reply, cipher = await exchange(server, tls12_client(ours, f"{tls.SEP2_CIPHER}:@SECLEVEL=0"))
        assert (reply, cipher) == (ours.device.lfdi, tls.SEP2_CIPHER)
        assert server.accepted[0][1] == tls.SEP2_CIPHER
    else:
        # This OpenSSL cannot do CCM8 at all; the suite is still first in what we configure.
        with pytest.raises(ssl.SSLError):
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.SEP2_CIPHER)
        assert tls.TLS12_CIPHERS[0] == tls.SEP2_CIPHER
    # TLS 1.2 only ECDHE-ECDSA suites are offered; everything offered is in the allowed set.
    assert {c for c in offered if c.startswith("ECDHE")} <= tls.ALLOWED_CIPHERS
    assert not any(c.startswith(("ECDHE-RSA", "AES", "DHE")) for c in offered)


async def test_tls12_gcm_accepted_and_other_suites_refused(ours: Pki) -> None:
    async with serving(our_server_context(ours)) as server:
        reply, cipher = await exchange(server, tls12_client(ours, "ECDHE-ECDSA-AES256-GCM-SHA384"))
        assert (reply, cipher) == (ours.device.lfdi, "ECDHE-ECDSA-AES256-GCM-SHA384")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await exchange(server, tls12_client(ours, "ECDHE-ECDSA-CHACHA20-POLY1305"))
    assert len(server.accepted) == 1


async def test_aiohttp_server_and_client_over_mutual_tls(ours: Pki) -> None:
    """The server part's stack: aiohttp reads the peer LFDI/role from the request's transport."""

    async def whoami(request: web.Request) -> web.Response:
        identity = tls.peer_identity(request.transport.get_extra_info("ssl_object"))  # type: ignore[union-attr]
        assert identity is not None
        return web.json_response({"lfdi": identity.lfdi, "role": identity.role})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=our_server_context(ours))
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = ours.aggregator
        context = tls.client_ssl_context(client.chain_path, client.key_path, ours.paths.ca_chain)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.get(f"https://localhost:{port}/whoami") as response,
        ):
            assert response.status == 200
            assert await response.json() == {"lfdi": client.lfdi, "role": "aggregator"}
    finally:
        await runner.cleanup()


def test_context_errors_name_the_file(ours: Pki, tmp_path: Path) -> None:
    with pytest.raises(tls.TlsConfigError, match="not found"):
        tls.server_ssl_context(tmp_path / "missing.pem", ours.paths.server_key, ours.paths.ca_chain)
    with pytest.raises(tls.TlsConfigError, match="CA file not found"):
        tls.client_ssl_context(ours.device.chain_path, ours.device.key_path, tmp_path / "none.pem")
    with pytest.raises(tls.TlsConfigError, match="cannot load certificate chain"):
        # key does not match the certificate
        tls.client_ssl_context(ours.device.chain_path, ours.aggregator.key_path, ours.paths.ca_chain)  # type: ignore[arg-type]
