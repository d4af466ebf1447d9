"""Read-only access to the utility server as this gateway, connection diagnosis, and the gateway run."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.commissioning.common import Context, StepFailed, T
from gateway.commissioning.limits import apply_static_limits


class ServerProbe:
    """Read-only 2030.5 requests as this gateway (mutual TLS): preflight checks and verification reads."""

    def __init__(self, dcap_url: str, ssl_context: ssl.SSLContext, timeout: float = 5.0) -> None:
        self.dcap_url = dcap_url
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._session: Any = None

    async def __aenter__(self) -> ServerProbe:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, href: str) -> str:
        from urllib.parse import urljoin

        return urljoin(self.dcap_url, href)

    async def get(self, href: str, kind: type[T]) -> T:
        from sep2.xml import CONTENT_TYPE, from_xml

        async with self._session.get(self.url(href), headers={"Accept": CONTENT_TYPE}) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise ProbeHttpError(
                    resp.status,
                    f"GET {href}: HTTP {resp.status} {resp.headers.get('X-Error-Detail', '')}".strip(),
                )
        return from_xml(body, kind)  # type: ignore[arg-type, return-value]

    async def get_list(self, href: str, kind: type[T], item: str) -> list[Any]:
        from urllib.parse import urlencode

        out: list[Any] = []
        while True:
            sep = "&" if "?" in href else "?"
            page: Any = await self.get(f"{href}{sep}{urlencode({'s': len(out), 'l': 100})}", kind)
            got = getattr(page, item)
            out.extend(got)
            if not got or len(out) >= (page.all or 0):
                return out


class ProbeHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def diagnose_connection(
    exc: BaseException, dcap_url: str, identity: dict[str, Any], server_ca: Path
) -> StepFailed:
    """Turn a failed first request into what the installer can act on."""
    import aiohttp

    parts = urlsplit(dcap_url)
    where = f"{parts.hostname}:{parts.port or 443}"
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return StepFailed(
            f"the utility server's certificate at {where} is not trusted by this gateway ({text}); "
            "the server "
            f"CA file is {server_ca}",
            "check --dcap-url points at the DNSP's server and pass the DNSP's CA chain with --server-ca, "
            "then "
            "rerun",
        )
    rejected_markers = (
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "certificate required",
        "alert",
        "Server disconnected",
        "Connection reset",
        "ServerDisconnected",
    )
    if isinstance(exc, ProbeHttpError) and exc.status == 403:
        return StepFailed(
            f"the utility server refused this gateway's certificate (HTTP 403: revoked or not allowed) — "
            f"LFDI {identity.get('lfdi')}",
            "ask the DNSP why the certificate is refused (revoked?); a new certificate needs --redo identity",
        )
    if (
        isinstance(exc, aiohttp.ClientConnectorError)
        and not isinstance(exc, aiohttp.ClientSSLError)
        and "ssl" not in text.lower()
    ):
        return StepFailed(
            f"cannot connect to the utility server at {where}: {getattr(exc, 'os_error', exc)}",
            "check --dcap-url (host and port) and that the site's internet connection works, then rerun",
        )
    if any(m.lower() in text.lower() for m in rejected_markers) or isinstance(
        exc, ssl.SSLError | ConnectionError
    ):
        return StepFailed(
            f"the utility server at {where} did not accept this gateway's certificate (TLS handshake "
            f"rejected: {text}). The certificate was issued by {identity.get('issuer')}; the server only "
            "trusts certificates from the DNSP's certificate authority",
            "have the DNSP's CA issue the gateway certificate (send it the CSR made on this gateway, "
            f"{identity.get('csr_path') or 'see --redo identity'}), then rerun with --cert ISSUED.pem "
            "(and --key if the key was made elsewhere)",
        )
    return StepFailed(
        f"the utility server at {where} could not be reached: {text}",
        "check --dcap-url and the network, then rerun",
    )


@contextlib.asynccontextmanager
async def running_gateway(ctx: Context, settings: Any) -> Any:
    """The real gateway daemon on the commissioned site.toml; the static cap is put back afterwards."""
    from gateway.runtime import GatewayRuntime

    runtime = GatewayRuntime(settings)
    try:
        await runtime.start()
        yield runtime
    finally:
        with contextlib.suppress(Exception):
            await runtime.stop()
        await apply_static_limits(ctx, "after the gateway's test run")
