"""The lean HTTPS client the server POSTs notifications with (2030.5 clause 5.4: the server POSTs a
Notification to the subscription's notificationURI over the same mutual TLS as every other exchange).

Against real subscribers over real TLS: aiohttp's server (what a gateway runs) and scripted raw replies
for the HTTP/1.1 framings a subscriber may use (RFC 9112: Content-Length, chunked, close-delimited, 1xx
interim replies, ``Connection: close``)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from certs.pki import load_pki
from certs.tls import server_ssl_context
from server.netpolicy import CURRENT_TARGET, Target, TargetPolicy
from server.notifications import notification_client_ssl
from server.notify_client import NotificationClient, ReplyError, _Exchange
from tests.test_notification_fanout import Tarpit
from tests.test_server_harness import server_config
from tests.test_server_notifications import Subscriber, free_port

pytest_plugins = ["tests.test_server_harness"]

BODY = b"<Notification xmlns='urn:ieee:std:2030.5:ns'/>"


class ResumptionWitness(Subscriber):
    """Records, per request, whether its TLS connection resumed a session, and which connection it was."""

    def __init__(self, pki_dir, port: int) -> None:
        super().__init__(pki_dir, port)
        self.resumed: list[bool] = []
        self.connections: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        assert await request.read() == BODY
        self.resumed.append(request.transport.get_extra_info("ssl_object").session_reused)
        self.connections.append(id(request.transport))
        self.arrived.set()
        return web.Response(status=201)


def make_client(pki, tmp_path, **kwargs) -> NotificationClient:
    policy = TargetPolicy(["127.0.0.0/8"])
    CURRENT_TARGET.set(Target(owner_lfdi="00" * 20, host="127.0.0.1"))
    return NotificationClient(
        notification_client_ssl(server_config(pki, tmp_path / "data")), policy, **kwargs
    )


async def test_connections_are_kept_bounded_and_sessions_resumed(pki, tmp_path):
    """A second notification to a subscriber reuses its open connection; past the cap of idle connections
    the least recently used one is closed, and the next connection to it resumes its TLS session."""
    subscribers = [ResumptionWitness(pki.directory, free_port()) for _ in range(3)]
    for s in subscribers:
        await s.start()
    client = make_client(pki, tmp_path, max_idle=2)
    try:
        for s in subscribers:
            reply = await client.post(f"https://127.0.0.1:{s.port}/notify", BODY, "application/sep+xml")
            assert reply.status == 201
        assert client.idle_connections() == 2 and client.connections_made == 3
        for s in (subscribers[2], subscribers[0]):  # kept alive, then closed as the oldest
            reply = await client.post(f"https://127.0.0.1:{s.port}/notify", BODY, "application/sep+xml")
            assert reply.status == 201
        assert [s.resumed for s in subscribers] == [[False, True], [False], [False, False]]
        assert subscribers[2].connections[0] == subscribers[2].connections[1]  # the same connection
        assert subscribers[0].connections[0] != subscribers[0].connections[1]
        assert client.connections_made == 4 and client.sessions_resumed == 1
    finally:
        await client.close()
        for s in subscribers:
            await s.stop()


async def test_a_subscriber_that_closed_the_kept_connection_gets_a_new_one(pki, tmp_path):
    """aiohttp closes idle keep-alive connections (here after 0.1 s); the kept connection is stale and
    the notification goes over a new one, resumed."""
    witness = ResumptionWitness(pki.directory, free_port())
    paths = load_pki(pki.directory)
    app = web.Application()
    app.router.add_post("/notify", witness.handle)
    runner = web.AppRunner(app, keepalive_timeout=0.1)
    await runner.setup()
    context = server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain)
    await web.TCPSite(runner, "127.0.0.1", witness.port, ssl_context=context).start()
    client = make_client(pki, tmp_path)
    try:
        uri = f"https://127.0.0.1:{witness.port}/notify"
        assert (await client.post(uri, BODY, "application/sep+xml")).status == 201
        await asyncio.sleep(0.4)
        assert (await client.post(uri, BODY, "application/sep+xml")).status == 201
        assert witness.resumed == [False, True] and client.connections_made == 2
    finally:
        await client.close()
        await runner.cleanup()


class Scripted:
    """A TLS listener that answers every request with the given bytes (then closes if told to)."""

    def __init__(self, pki, reply: bytes, *, close: bool = False) -> None:
        self.pki, self.reply, self.close = pki, reply, close
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.reply)
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def start(self) -> int:
        paths = load_pki(self.pki.directory)
        context = server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        return self.server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "close", "status", "body", "kept"),
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", False, 201, b"ok", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
         False, 200, b"abcde", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True),
        (b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", True, 201, b"", False),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the close", True, 200, b"until the close", False),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", False, 503, b"busy", True),
    ],
)  # fmt: skip
async def test_reply_framings(pki, tmp_path, reply, close, status, body, kept):
    scripted = Scripted(pki, reply, close=close)
    port = await scripted.start()
    client = make_client(pki, tmp_path)
    try:
        answer = await client.post(f"https://127.0.0.1:{port}/n/7?x=1", BODY, "application/sep+xml")
        assert (answer.status, answer.body) == (status, body)
        assert client.idle_connections() == (1 if kept else 0)
        request = scripted.requests[0]
        assert request.startswith(b"POST /n/7?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)
        assert b"Content-Type: application/sep+xml\r\n" in request and request.endswith(BODY)
    finally:
        await client.close()
        scripted.server.close()


async def test_a_reply_that_is_not_http_is_an_error_and_the_connection_is_dropped(pki, tmp_path):
    scripted = Scripted(pki, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    port = await scripted.start()
    client = make_client(pki, tmp_path)
    try:
        with pytest.raises(ReplyError, match=r"not an HTTP/1\.x status line"):
            await client.post(f"https://127.0.0.1:{port}/n", BODY, "application/sep+xml")
        assert client.idle_connections() == 0
    finally:
        await client.close()
        scripted.server.close()


async def test_a_tarpit_leaves_no_connection_and_no_session(pki, tmp_path):
    """A subscriber that accepts TCP and never answers the handshake: the caller's deadline aborts the
    connection (the tarpit sees it close) and nothing is kept; a real subscriber is unaffected."""
    tarpit = Tarpit()
    port = await tarpit.start()
    good = ResumptionWitness(pki.directory, free_port())
    await good.start()
    client = make_client(pki, tmp_path)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post(f"https://127.0.0.1:{port}/n", BODY, "application/sep+xml")
        for _ in range(50):
            if tarpit.closed:
                break
            await asyncio.sleep(0.02)
        assert tarpit.accepted == 1 and tarpit.closed == 1
        assert client.idle_connections() == 0 and client.connections_made == 0
        assert not client._sessions
        reply = await client.post(f"https://127.0.0.1:{good.port}/notify", BODY, "application/sep+xml")
        assert reply.status == 201
    finally:
        await client.close()
        await good.stop()
        await tarpit.stop()


async def test_a_subscriber_with_a_certificate_from_another_ca_is_refused(pki, tmp_path, tmp_path_factory):
    from certs.pki import init_pki

    other = tmp_path_factory.mktemp("other-pki")
    init_pki(other)
    stranger = Subscriber(other, free_port())
    await stranger.start()
    client = make_client(pki, tmp_path)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.post(f"https://127.0.0.1:{stranger.port}/notify", BODY, "application/sep+xml")
        assert stranger.received == [] and client.idle_connections() == 0
    finally:
        await client.close()
        await stranger.stop()


REPLIES = st.sampled_from(
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello", 201, b"hello"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\nX: y\r\n\r\n",
         200, b"hello!"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 400, b""),
    ]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(REPLIES, st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_a_reply_reads_the_same_however_it_is_split(reply, cuts):
    """TLS records and TCP segments cut a reply anywhere: the parser's result does not depend on where."""
    data, status, body = reply
    exchange, position = _Exchange(), 0
    for size in cuts:
        exchange.feed(data[position : position + size])
        position += size
    exchange.feed(data[position:])
    assert exchange.done and (exchange.status, bytes(exchange.body)) == (status, body)
    assert not exchange.buffer


@pytest.mark.parametrize(("tls13", "version"), [(False, "TLSv1.2"), (True, "TLSv1.3")])
async def test_notifications_speak_tls_1_2_unless_told(pki, tmp_path, tls13, version):
    """IEEE 2030.5-2018 6.11: TLS 1.2 with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8. The subscriber here offers
    TLS 1.3 too; the sender only takes it with ``notify_tls13``."""
    seen: list[tuple[str, str]] = []

    class Witness(Subscriber):
        async def handle(self, request: web.Request) -> web.Response:
            ssl_object = request.transport.get_extra_info("ssl_object")
            seen.append((ssl_object.version(), ssl_object.cipher()[0]))
            return web.Response(status=201)

    subscriber = Witness(pki.directory, free_port())
    await subscriber.start()
    config = server_config(pki, tmp_path / "data", notify_tls13=tls13)
    client = NotificationClient(notification_client_ssl(config), TargetPolicy(["127.0.0.0/8"]))
    CURRENT_TARGET.set(Target(owner_lfdi="00" * 20, host="127.0.0.1"))
    try:
        uri = f"https://127.0.0.1:{subscriber.port}/notify"
        assert (await client.post(uri, BODY, "application/sep+xml")).status == 201
        assert seen[0][0] == version
        if not tls13:
            assert seen[0][1] == "ECDHE-ECDSA-AES128-CCM8"
    finally:
        await client.close()
        await subscriber.stop()


async def test_a_kept_connection_is_closed_after_the_keepalive(pki, tmp_path):
    """``notify_keepalive``: past it, the kept connection is closed by the sweep (the subscriber sees it go)
    and the next notification connects again, resuming the TLS session."""
    witness = ResumptionWitness(pki.directory, free_port())
    await witness.start()
    client = make_client(pki, tmp_path, keepalive=0.2)
    try:
        uri = f"https://127.0.0.1:{witness.port}/notify"
        assert (await client.post(uri, BODY, "application/sep+xml")).status == 201
        assert client.idle_connections() == 1
        await asyncio.sleep(0.5)
        assert client.idle_connections() == 0
        assert (await client.post(uri, BODY, "application/sep+xml")).status == 201
        assert witness.resumed == [False, True] and client.connections_made == 2
    finally:
        await client.close()
        await witness.stop()
