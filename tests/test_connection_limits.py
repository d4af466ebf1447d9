"""Connection limits (server.connlimits): one client holding its maximum of idle and slow connections
cannot delay another client, and every idle, slow-header, slow-body or stalled-handshake connection is
closed after its timeout.

While client A holds its maximum and is refused more, client B's GET /dcap is served, and served while
A's connections are still held (before the idle timeout frees them): B never waits on A."""

from __future__ import annotations

import asyncio
import ssl
import time

from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from tests.test_server_harness import Client, server_config

pytest_plugins = ["tests.test_server_harness"]

PER_CLIENT = 8
TIMEOUT_S = 1.0
IDLE_S = 3.0  # long enough that B is served while A still holds its quota, even on a loaded machine


async def _open(port: int, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after ``seconds``."""
    data = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def test_one_client_at_its_limit_cannot_delay_another(pki, tmp_path):
    config = server_config(
        pki,
        tmp_path / "data",
        idle_timeout=IDLE_S,
        body_timeout=IDLE_S,
        handshake_timeout=TIMEOUT_S,
        max_connections_per_client=PER_CLIENT,
    )
    running = await start_server(config)
    a_context = pki.ssl("dev-a")
    b = Client(running.base_url, pki.ssl("dev-b"), pki.identities["dev-b"].lfdi)
    held = []
    try:
        started = time.monotonic()
        # A fills its quota: half idle after the handshake, half sending a header slowly.
        for i in range(PER_CLIENT):
            reader, writer = await _open(running.port, a_context)
            if i % 2:
                writer.write(b"GET /dcap HTTP/1.1\r\nHost: x\r\n")  # never finished
                await writer.drain()
            held.append((reader, writer))
        await asyncio.sleep(0.1)
        assert running.connection_guard.total == PER_CLIENT
        # More connections from A are answered 503 with a 2030.5 Error and closed at once.
        for _ in range(PER_CLIENT):
            reader, writer = await _open(running.port, a_context)
            data = await _closed_within(reader, 2.0)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and b"maximum of 8 connections" in head, head
            assert from_xml(body, r.Error).reasonCode == 2
            writer.close()
        # B is served promptly meanwhile.
        reply = await b.get("/dcap")
        assert reply.status == 200
        assert running.connection_guard.total == PER_CLIENT + 1  # A's quota still held while B was served
        assert not any(reader.at_eof() for reader, _writer in held)
        # A's idle and slow-header connections are closed by the server after the idle timeout.
        for reader, _writer in held:
            assert await _closed_within(reader, IDLE_S + 5.0) == b""
        assert time.monotonic() - started >= IDLE_S * 0.9
        for _ in range(40):
            if running.connection_guard.total <= 1:
                break
            await asyncio.sleep(0.05)
        assert running.connection_guard.total <= 1  # only B's keep-alive connection may remain
        # Once A's connections are gone, A is admitted again.
        reader, writer = await _open(running.port, a_context)
        writer.write(b"GET /tm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _closed_within(reader, 5.0)).startswith(b"HTTP/1.1 200")
    finally:
        for _reader, writer in held:
            writer.close()
        await b.close()
        await running.stop()


async def test_slow_body_and_stalled_handshake_are_cut_off(pki, tmp_path):
    config = server_config(
        pki, tmp_path / "data", idle_timeout=30.0, body_timeout=TIMEOUT_S, handshake_timeout=TIMEOUT_S
    )
    running = await start_server(config)
    try:
        # A body that never completes: 408 with an Error after body_timeout, then closed.
        reader, writer = await _open(running.port, pki.ssl("dev-a"))
        writer.write(
            b"POST /edev HTTP/1.1\r\nHost: x\r\nContent-Type: application/sep+xml\r\n"
            b"Content-Length: 500\r\n\r\n<EndDevice"
        )
        t0 = time.monotonic()
        data = await _closed_within(reader, TIMEOUT_S + 5.0)
        assert time.monotonic() - t0 >= TIMEOUT_S * 0.9
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert from_xml(body, r.Error) is not None
        writer.close()
        # A TCP connection that never starts its TLS handshake is closed after handshake_timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        t0 = time.monotonic()
        assert await _closed_within(reader, TIMEOUT_S + 5.0) == b""
        assert time.monotonic() - t0 >= TIMEOUT_S * 0.9
        writer.close()
        assert (await running.store.admin.table_dump())["sites"] == []
    finally:
        await running.stop()
