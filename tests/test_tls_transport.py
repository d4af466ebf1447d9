"""server.tlsconn, the 2030.5 listener's own TLS transport (ssl.SSLObject on memory BIOs), over real
mutual TLS on loopback: large bodies both ways through aiohttp's flow control, pipelined requests,
close_notify, session resumption with the client still identified, and refusal of a client without a
certificate (IEEE 2030.5 §6.11: TLS with mutual authentication on every connection)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl

import aiohttp
import pytest
from aiohttp import web

from certs.pki import load_pki
from server.app import server_ssl, start_server
from server.tlsconn import tls_factory
from tests.test_server_harness import server_config

pytest_plugins = ["tests.test_server_harness"]


async def test_megabytes_both_ways_through_flow_control(pki, tmp_path):
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(0.2)  # let the body pile up past aiohttp's high-water mark: reading pauses
        body = await request.read()
        peer = request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        reply = web.StreamResponse(headers={"X-Sha": hashlib.sha256(body).hexdigest(),
                                            "X-Peer": hashlib.sha256(peer).hexdigest()})  # fmt: skip
        await reply.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        for _ in range(48):  # 3 MiB, written faster than a slow reader takes it
            await reply.write(block)
        await reply.write_eof()
        return reply

    config = server_config(pki, tmp_path / "data")
    loop = asyncio.get_running_loop()
    factory = tls_factory(server_ssl(config), web.Server(handler), 5.0)
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upload = bytes(reversed(range(256))) * 3072  # 768 KiB (aiohttp's own limit is 1 MiB)
    try:
        connector = aiohttp.TCPConnector(ssl=pki.ssl("dev-a"))
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(2):  # the second request rides the same kept-alive connection
                async with session.post(f"https://127.0.0.1:{port}/", data=upload) as reply:
                    assert reply.headers["X-Sha"] == hashlib.sha256(upload).hexdigest()
                    received = hashlib.sha256()
                    async for chunk in reply.content.iter_chunked(4096):
                        received.update(chunk)
                        await asyncio.sleep(0)  # a reader slower than the writer
            assert received.hexdigest() == hashlib.sha256(bytes(range(256)) * 256 * 48).hexdigest()
            leaf = ssl.PEM_cert_to_DER_cert(pki.identities["dev-a"].cert_path.read_text())
            assert reply.headers["X-Peer"] == hashlib.sha256(leaf).hexdigest()
    finally:
        server.close()
        await server.wait_closed()


def _request(sock: ssl.SSLSocket, path: str, count: int = 1) -> list[bytes]:
    """``count`` pipelined GETs in one write; the status line of each response."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * count)
    data, statuses = b"", []
    while len(statuses) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "server closed early"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        while len(data) < length:
            data += sock.recv(65536)
        data = data[length:]
        statuses.append(head.split(b"\r\n")[0])
    return statuses


def _connect(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1", session=session)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_resumed_sessions_are_served_as_the_same_client(pki, tmp_path, version):
    running = await start_server(server_config(pki, tmp_path / "data"))
    context = pki.ssl("dev-a")
    context.maximum_version = version

    def walk() -> tuple[list[bytes], bool, list[bytes], bool]:
        first = _connect(running.port, context)
        statuses = _request(first, "/dcap", count=20)  # pipelined: several records per read
        session = first.session  # TLS 1.3: the ticket arrived with the responses
        first.unwrap()  # close_notify, answered by the server's own
        first.close()
        second = _connect(running.port, context, session)
        again = _request(second, "/dcap")
        reused = second.session_reused
        second.close()
        return statuses, first.version() is not None, again, reused

    try:
        statuses, _, again, reused = await asyncio.to_thread(walk)
        assert statuses == [b"HTTP/1.1 200 OK"] * 20
        assert reused, "the second connection did not resume the first one's session"
        # The server still knows the certificate of a resumed session: /dcap is served, not refused.
        assert again == [b"HTTP/1.1 200 OK"]
    finally:
        await running.stop()


async def test_a_client_without_a_certificate_gets_no_http_at_all(pki, tmp_path):
    running = await start_server(server_config(pki, tmp_path / "data"))
    anonymous = ssl.create_default_context(cafile=str(load_pki(pki.directory).ca_chain))
    anonymous.check_hostname = False
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", running.port, ssl=anonymous, server_hostname="127.0.0.1"
            )
            writer.write(b"GET /dcap HTTP/1.1\r\nHost: x\r\n\r\n")
            # TLS 1.3 reports the missing certificate after the client's side of the handshake.
            assert await asyncio.wait_for(reader.read(1024), 10) == b""
            raise ConnectionError("closed without a response")
        assert running.connection_guard.total == 0
    finally:
        await running.stop()
