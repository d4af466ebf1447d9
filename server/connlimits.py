"""Connection limits for the 2030.5 listener: no client can hold the server's connections or descriptors.

- ``handshake_timeout``: a TLS handshake must finish in this time (``server.tlsconn`` closes it otherwise);
- ``idle_timeout``: a connection with no complete request header for this long is closed, whether it is
  fresh, sending its header slowly, or idle between keep-alive requests (aiohttp's keep-alive timer,
  which is armed from the start of a connection and stays armed while a header is incomplete);
- ``body_timeout``: the request body must arrive in this time (``server.app`` reads it before the
  handler runs), else 408 and the connection is closed;
- ``max_connections_per_client`` established connections per client certificate (per peer address
  without TLS) and ``max_connections`` in total, never more than the descriptor limit allows. A
  connection over a limit gets a ``503`` with a 2030.5 ``Error`` and is closed at once;
- file descriptors are watched: one warning line when 80 % of the soft limit is in use (and one when it
  is back below 60 %); asyncio's "out of system resource" accept errors are collapsed to one line a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sep2 import resources as r
from sep2.xml import to_xml
from server.errors import RESOURCE_LIMIT
from server.tlsconn import tls_factory

log = logging.getLogger("derlink.server.connections")
FD_RESERVE = 64  # descriptors kept for the database, logs, outgoing notifications


def fd_soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _busy_bytes(detail: str) -> bytes:
    body = to_xml(r.Error(reasonCode=RESOURCE_LIMIT, maxRetryDuration=30))
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/sep+xml\r\nRetry-After: 30\r\n"
        f"X-Error-Detail: {detail}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Counts established connections per client and in total; refuses those over a limit."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        soft = fd_soft_limit()
        self.max_total = max(1, min(max_total, soft - FD_RESERVE)) if soft > FD_RESERVE * 2 else max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self._last_refusal_log = 0.0

    @staticmethod
    def client_key(transport: asyncio.BaseTransport) -> str:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            return "cert:" + hashlib.sha256(der).hexdigest()[:40]
        peer = transport.get_extra_info("peername")
        return f"peer:{peer[0] if peer else '?'}"

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """The client key if admitted (and counted), else None (a 503 was written and it is closing)."""
        key = self.client_key(transport)
        reason = None
        if self.total >= self.max_total:
            reason = f"the server holds its maximum of {self.max_total} connections"
        elif self.per_client.get(key, 0) >= self.max_per_client:
            reason = f"this client already holds its maximum of {self.max_per_client} connections"
        if reason is not None:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 10:  # one line per 10 s, not one per connection
                self._last_refusal_log = now
                log.warning("refusing connections (%d so far): %s", self.refused, reason)
            with contextlib.suppress(Exception):
                transport.write(_busy_bytes(reason))  # type: ignore[attr-defined]
            transport.close()
            return None
        self.total += 1
        self.per_client[key] = self.per_client.get(key, 0) + 1
        return key

    def release(self, key: str) -> None:
        self.total -= 1
        left = self.per_client.get(key, 1) - 1
        if left > 0:
            self.per_client[key] = left
        else:
            self.per_client.pop(key, None)

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GuardedProtocol(self, make)


class GuardedProtocol(asyncio.Protocol):
    """Forwards to aiohttp's request handler once the connection is admitted."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make = make
        self.inner: Any = None
        self.key: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.key = self.guard.admit(transport)
        if self.key is not None:
            self.inner = self.make()
            self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None:
            self.guard.release(self.key)
            self.key = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections pass the guard and whose TLS handshakes are bounded in time."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard,
        handshake_timeout: float, ssl_context: Any = None, backlog: int = 128, reuse_port: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog, reuse_port=reuse_port)
        self.guard = guard
        self.handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        factory = self.guard.factory(server)
        if self._ssl_context is not None:  # TLS terminated by server.tlsconn (a fraction of asyncio's memory)
            factory = tls_factory(self._ssl_context, factory, self.handshake_timeout)
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


async def watch_fds(every: float = 2.0, warn_at: float = 0.8, clear_at: float = 0.6) -> None:
    """One warning line when descriptors run short, one when they recover; never a flood."""
    soft = fd_soft_limit()
    warned = False
    while True:
        used = open_fds()
        if used is not None:
            if not warned and used >= warn_at * soft:
                warned = True
                log.warning(
                    "open file descriptors: %d of the soft limit %d (new connections may fail)", used, soft
                )
            elif warned and used < clear_at * soft:
                warned = False
                log.warning("open file descriptors back to %d of %d", used, soft)
        await asyncio.sleep(every)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Collapse asyncio's repeated accept() EMFILE/ENFILE reports to one line a minute, no traceback."""
    previous = loop.get_exception_handler()
    last = [0.0]

    def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "out of system resource" in message or "socket.accept()" in message:
            now = time.monotonic()
            if now - last[0] > 60:
                last[0] = now
                log.warning("accepting connections failed: %s (%s)", message, context.get("exception"))
            return
        if previous is not None:
            previous(the_loop, context)
        else:
            the_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
