"""A lean server-side TLS transport for the 2030.5 listener, on the standard library's public
``ssl.SSLObject`` + ``ssl.MemoryBIO``.

Why: asyncio's own TLS transport gives every connection a fixed 256 KiB receive buffer for its whole
life, so an idle keep-alive site costs ~270 KB of server memory (100,000 sites: ~27 GB). Here the only
per-connection buffers are OpenSSL's (released while idle) and the two memory BIOs, and each read hands
aiohttp what is decrypted, up to 16 KiB at a time.

The transport offers what aiohttp's request handler and the connection guard use: write/writelines,
close/abort, is_closing, pause/resume_reading (so aiohttp's flow control reaches the socket),
write-buffer size and limits (the raw socket's), and ``get_extra_info`` with ``ssl_object``, ``peercert``,
``sslcontext`` and ``cipher`` besides the socket's own keys. Session resumption (TLS 1.3 tickets, TLS 1.2
tickets) works as with any server socket of the same context. A handshake that does not finish within
``handshake_timeout`` is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("derlink.server.tls")
READ_CHUNK = 16 * 1024  # one TLS record's worth of plaintext per read


class TLSTransport(asyncio.Transport):
    """What the application protocol sees: plaintext in and out of one TLS connection."""

    def __init__(self, link: TLSServerProtocol) -> None:
        super().__init__()
        self._link = link

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._link.extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._link.send(data)

    def writelines(self, list_of_data: Any) -> None:
        self._link.send(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._link.closing

    def close(self) -> None:
        self._link.close()

    def abort(self) -> None:
        self._link.abort()

    def is_reading(self) -> bool:
        return not self._link.paused

    def pause_reading(self) -> None:
        self._link.pause_reading()

    def resume_reading(self) -> None:
        self._link.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._link.raw is not None:
            self._link.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._link.raw.get_write_buffer_size() if self._link.raw is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._link.raw.get_write_buffer_limits() if self._link.raw is not None else (0, 0)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._link.app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._link.app


class TLSServerProtocol(asyncio.Protocol):
    """The raw TCP side: handshake, then decrypt into ``app`` and encrypt what it writes."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol, handshake_timeout: float) -> None:
        self.context = context
        self.app = app
        self.handshake_timeout = handshake_timeout
        self.raw: asyncio.Transport | None = None
        self.transport = TLSTransport(self)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshaken = False
        self._app_started = False
        self._timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.paused = False

    # -- raw transport events ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(self.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._handshaken and not self._handshake():
            return
        self._deliver()

    def eof_received(self) -> bool | None:
        # A peer that half-closes without close_notify: the application sees the end of its stream.
        if self._app_started and not self.closing:
            with contextlib.suppress(Exception):
                self.app.eof_received()
        return False  # the raw transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timer()
        if self._app_started:
            self._app_started = False
            self.app.connection_lost(exc)
        self.raw = None

    def pause_writing(self) -> None:
        if self._app_started:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_started:
            self.app.resume_writing()

    # -- TLS ---------------------------------------------------------------------------------------------
    def _handshake(self) -> bool:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            self.closing = True
            self._flush()  # the alert, then close (not abort) so that it reaches the peer
            if self.raw is not None:
                self.raw.close()
            return False
        self._handshaken = True
        self._cancel_timer()
        self._flush()
        self._app_started = True
        self.app.connection_made(self.transport)
        return True

    def _deliver(self) -> None:
        """Hand the application every complete record received, unless it paused reading."""
        while not self.paused and not self.closing:
            try:
                chunk = self._sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS read failed: %s", exc)
                self.abort()
                break
            if not chunk:  # the peer's close_notify: it is done sending
                self.eof_received()
                self.close()
                break
            self.app.data_received(chunk)
        self._flush()  # TLS 1.3 tickets and key updates ride along with the next reads

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or not data:
            return
        try:
            self._sslobj.write(data)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self._outgoing.pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self._outgoing.read())

    # -- application requests ------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            if self.raw is not None and not self.raw.is_closing():
                self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.raw is not None and not self.raw.is_closing():
                self.raw.resume_reading()
            asyncio.get_running_loop().call_soon(self._deliver)  # what arrived while paused

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self._handshaken:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._sslobj.unwrap()  # our close_notify; the peer's is not awaited
        self._flush()
        if self.raw is not None:
            self.raw.close()

    def abort(self) -> None:
        self.closing = True
        if self.raw is not None:
            self.raw.abort()

    def _handshake_expired(self) -> None:
        self._timer = None
        if not self._handshaken:
            log.debug("TLS handshake not finished in %.1f s; closing", self.handshake_timeout)
            self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "sslcontext":
            return self.context
        if name == "peercert":
            return self._sslobj.getpeercert() if self._handshaken else default
        if name == "cipher":
            return self._sslobj.cipher() if self._handshaken else default
        if name == "compression":
            return self._sslobj.compression() if self._handshaken else default
        return self.raw.get_extra_info(name, default) if self.raw is not None else default


def tls_factory(
    context: ssl.SSLContext, app_factory: Callable[[], asyncio.Protocol], handshake_timeout: float
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` (with ``ssl=None``) that terminates TLS itself."""
    return lambda: TLSServerProtocol(context, app_factory(), handshake_timeout)
