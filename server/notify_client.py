"""A lean HTTPS/1.1 client for POSTing notifications to subscribers.

Why not aiohttp's client: an emergency broadcast is one short POST to each of tens of thousands of
different hosts, and the issue's goal (10,000 sites within 5 s on one core) leaves about 0.4 ms of CPU
per notification. aiohttp's request machinery plus asyncio's TLS transport cost 1.3-2.2 ms per
notification here (measured by ``benchmarks/notify_fanout.py``), most of it per-connection Python work,
not cryptography. This client does only what a notification needs, on the standard library's public
``ssl.SSLObject`` + ``ssl.MemoryBIO`` over a plain asyncio socket transport:

* one request at a time per connection, the request's bytes built once;
* the reply's status line, headers and body (``Content-Length``, chunked, or up to the close), read and
  discarded; 1xx replies skipped;
* connections kept for reuse (``keepalive`` seconds, at most ``max_idle`` in all: an idle connection holds
  only OpenSSL's state, no 256 KiB read buffer), and the TLS session of each subscriber remembered so that
  the next connection resumes it;
* every address it connects to goes through the :class:`~server.netpolicy.TargetPolicy` first (names are
  resolved for each connection, no cache), so a refused target sees no packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from server.netpolicy import TargetPolicy

MAX_HEAD = 64 * 1024  # status line and headers of a reply
MAX_BODY = 1024 * 1024  # a reply body larger than this is not read: the connection is closed
READ_CHUNK = 16 * 1024


class ReplyError(Exception):
    """The subscriber's reply was not HTTP/1.x we can read, or the connection ended before it did."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


class _Exchange:
    """Parses one HTTP/1.x reply from decrypted bytes."""

    __slots__ = ("body", "buffer", "chunked", "done", "head", "head_done", "length", "status", "to_close")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self.to_close = False  # the body ends with the connection, or the server said "close"
        self.body = bytearray()
        self.head = b""  # the final reply's status line and headers, unparsed
        self.head_done = False
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while not self.done:
            if not self.head_done:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        raise ReplyError("reply headers too large")
                    return
                head, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 4 :]
                if not self._head(head):
                    continue  # a 1xx reply: the real one follows
            if not self._body():
                return

    def _head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ReplyError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return False
        self.status = status
        self.head = head
        self.to_close = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                if not value.isdigit():
                    raise ReplyError("bad Content-Length")
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = value.endswith(b"chunked")
            elif name == b"connection":
                if b"close" in value:
                    self.to_close = True
                elif b"keep-alive" in value:
                    self.to_close = False
        if status in (204, 304):
            self.length, self.chunked = 0, False
        if not self.chunked and self.length is None:
            self.to_close = True  # the body runs to the end of the connection
        self.head_done = True
        return True

    def _body(self) -> bool:
        """Consume what the buffer holds of the body; True once the reply is complete."""
        if self.chunked:
            while True:
                line_end = self.buffer.find(b"\r\n")
                if line_end < 0:
                    return False
                size_text = bytes(self.buffer[:line_end]).split(b";")[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ReplyError("bad chunk size") from None
                if size == 0:  # the last chunk, then trailers up to an empty line
                    trailers_end = self.buffer.find(b"\r\n\r\n", line_end)
                    if self.buffer[line_end : line_end + 4] == b"\r\n\r\n":
                        trailers_end = line_end
                    if trailers_end < 0:
                        return False
                    self.buffer = self.buffer[trailers_end + 4 :]
                    self.done = True
                    return True
                if len(self.buffer) < line_end + 2 + size + 2:
                    if len(self.body) + size > MAX_BODY:
                        raise ReplyError("reply body too large")
                    return False
                start = line_end + 2
                self.body += self.buffer[start : start + size]
                self.buffer = self.buffer[start + size + 2 :]
        if self.length is not None:
            if self.length > MAX_BODY:
                raise ReplyError("reply body too large")
            if len(self.buffer) < self.length:
                return False
            self.body, self.buffer = self.buffer[: self.length], self.buffer[self.length :]
            self.done = True
            return True
        self.body += self.buffer  # up to the close
        self.buffer = bytearray()
        if len(self.body) > MAX_BODY:
            raise ReplyError("reply body too large")
        return False

    def ended(self) -> None:
        """The connection closed: that completes a reply whose body runs to the close."""
        if self.head_done and not self.chunked and self.length is None:
            self.done = True
        elif not self.done:
            raise ReplyError("connection closed before the reply was complete")


class Connection(asyncio.Protocol):
    """One TLS connection to a subscriber, carrying one exchange at a time."""

    def __init__(self, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        self.transport: asyncio.Transport | None = None
        self.handshaken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.idle_since = 0.0
        self.used = 0  # exchanges completed on it
        self._exchange: _Exchange | None = None
        self._reply: asyncio.Future[_Exchange] | None = None

    # -- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self.handshaken.done():
            self._handshake()
            if not self.handshaken.done() or self.closed:
                return
        self._read()

    def eof_received(self) -> bool | None:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    # -- TLS
    def _handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            self._fail(exc)
            return
        self._flush()
        self.handshaken.set_result(None)

    def _read(self) -> None:
        while True:
            try:
                data = self.sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
                return
            if not data:
                self._ended(None)
                return
            if self._exchange is None:
                self._fail(ReplyError("data from the subscriber when no request was sent"))
                return
            try:
                self._exchange.feed(data)
            except ReplyError as exc:
                self._fail(exc)
                return
            if self._exchange.done:
                exchange, self._exchange = self._exchange, None
                if self._reply is not None and not self._reply.done():
                    self._reply.set_result(exchange)
                if exchange.to_close or exchange.buffer:
                    self.close()
                return
        self._flush()  # TLS 1.3 tickets and key updates may want an answer

    def _flush(self) -> None:
        if self._outgoing.pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._outgoing.read())

    def _ended(self, exc: Exception | None) -> None:
        if self._exchange is not None:
            try:
                self._exchange.ended()
            except ReplyError as error:
                self._fail(exc or error)
                return
            exchange, self._exchange = self._exchange, None
            if self._reply is not None and not self._reply.done():
                self._reply.set_result(exchange)
        self._fail(exc or ReplyError("the subscriber closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        for future in (self.handshaken, self._reply):
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: an abandoned future logs nothing
        self.abort()

    # -- use
    async def exchange(self, request: bytes) -> _Exchange:
        if self.closed:
            raise ReplyError("connection already closed")
        self._exchange = _Exchange()
        self._reply = asyncio.get_running_loop().create_future()
        try:
            self.sslobj.write(request)
        except (ssl.SSLError, OSError) as exc:
            self._fail(exc)
        self._flush()
        return await self._reply

    def session(self) -> ssl.SSLSession | None:
        """The TLS session to resume next time (None if the handshake never finished)."""
        try:
            return self.sslobj.session
        except ValueError:
            return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        handshaken = self.handshaken
        if handshaken.done() and not handshaken.cancelled() and handshaken.exception() is None:
            with contextlib.suppress(ssl.SSLError, OSError):
                self.sslobj.unwrap()  # our close_notify; the peer's is not awaited
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class NotificationClient:
    """POSTs to subscribers over mutual TLS: connections kept per subscriber, TLS sessions resumed."""

    MAX_SESSIONS = 100_000  # about a kilobyte each

    def __init__(
        self,
        context: ssl.SSLContext,
        policy: TargetPolicy,
        *,
        max_idle: int = 256,
        keepalive: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.context = context
        self.policy = policy
        self.max_idle = max_idle
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._idle: OrderedDict[str, list[Connection]] = OrderedDict()  # oldest use first
        self._idle_count = 0
        self._sessions: OrderedDict[str, ssl.SSLSession] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections_made = 0
        self.sessions_resumed = 0

    async def post(self, uri: str, body: bytes, content_type: str) -> Reply:
        """POST ``body`` to ``uri``; the caller has checked the URI, set ``CURRENT_TARGET`` and bounds the
        time it waits (a cancelled exchange aborts its connection)."""
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = parts.port or 443
        key = f"https://{host.lower()}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = f"[{host}]" if ":" in host else host
        if port != 443:
            authority += f":{port}"
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nUser-Agent: derlink\r\n\r\n"
        ).encode("latin-1") + body
        connection = self._take_idle(key)
        try:
            if connection is not None:
                try:
                    exchange = await connection.exchange(request)
                except (ReplyError, OSError, ssl.SSLError):
                    connection.abort()  # the kept connection had gone stale: once more on a new one
                    connection = None
            if connection is None:
                connection = await self._connect(key, host, port)
                exchange = await connection.exchange(request)
        except BaseException:
            if connection is not None:
                connection.abort()
            raise
        self._release(key, connection)
        return Reply(exchange.status, bytes(exchange.body))

    # -- connections
    def _take_idle(self, key: str) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if not idle:
                del self._idle[key]
            if not connection.closed and time.monotonic() - connection.idle_since < self.keepalive:
                return connection
            connection.close()
            idle = self._idle.get(key)
        return None

    def _release(self, key: str, connection: Connection) -> None:
        if connection.used == 0:
            self._keep_session(key, connection)
        connection.used += 1
        if connection.closed:
            return
        if self.max_idle <= 0:
            connection.close()
            return
        while self._idle_count >= self.max_idle:  # the least recently used subscriber's goes
            oldest_key, oldest = next(iter(self._idle.items()))
            oldest.pop(0).close()
            self._idle_count -= 1
            if not oldest:
                del self._idle[oldest_key]
        connection.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(connection)
        self._idle.move_to_end(key)
        self._idle_count += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive, self._sweep)

    def _keep_session(self, key: str, connection: Connection) -> None:
        """Remember the session to offer next time. A resumed one is the one kept already: reading
        ``SSLObject.session`` costs about 0.1 ms, a sixth of a resumed notification."""
        if connection.sslobj.session_reused and key in self._sessions:
            self._sessions.move_to_end(key)
            return
        if (session := connection.session()) is None:
            return
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def _sweep(self) -> None:
        """Close connections idle for longer than ``keepalive``."""
        self._sweeper = None
        limit = time.monotonic() - self.keepalive
        for key in list(self._idle):
            idle = self._idle[key]
            keep = [c for c in idle if not c.closed and c.idle_since > limit]
            for connection in idle:
                if connection not in keep:
                    connection.close()
            self._idle_count -= len(idle) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle_count:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive / 2, self._sweep)

    async def _connect(self, key: str, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        async with asyncio.timeout(self.connect_timeout):
            for info in await self._addresses(host, port):
                sock = self.policy.socket_factory(info)  # refuses a forbidden address: no packet sent
                try:
                    await loop.sock_connect(sock, info[4])
                except OSError as exc:
                    sock.close()
                    last_error = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                break
            else:
                raise last_error or OSError(f"{host} has no address")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        session = self._sessions.get(key)
        sslobj = self.context.wrap_bio(incoming, outgoing, server_hostname=host, session=session)
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(sslobj, incoming, outgoing), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        try:
            await connection.handshaken
        except BaseException:
            connection.abort()
            raise
        self.connections_made += 1
        if sslobj.session_reused:
            self.sessions_resumed += 1
        return connection

    async def _addresses(self, host: str, port: int) -> list[tuple[Any, ...]]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sockaddr = (host, port, 0, 0) if address.version == 6 else (host, port)
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
        resolved = await self.policy.resolver.resolve(host, port, family=socket.AF_UNSPEC)
        infos = []
        for entry in resolved:
            family = entry["family"]
            sockaddr = (
                (entry["host"], entry["port"])
                if family == socket.AF_INET
                else (entry["host"], entry["port"], 0, 0)
            )
            infos.append((family, socket.SOCK_STREAM, entry.get("proto") or socket.IPPROTO_TCP, "", sockaddr))
        return infos

    def idle_connections(self) -> int:
        return self._idle_count

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
