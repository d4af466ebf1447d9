"""The aiohttp application: identity, scope, cache, error mapping, logging and metrics in one middleware;
the listeners (2030.5 over mutual TLS, admin with /metrics); and the server's life cycle.

Errors in one place: whatever a handler or the store raises ends here and becomes a 2030.5 ``Error``
body with the right status (400/403/404/405/409/413/415, 500 for bugs).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.exc import OperationalError

from sep2 import resources as r
from sep2.dnssd import Advertiser
from sep2.identity import lfdi_from_cert_der
from sep2.xml import to_xml
from server.api import CACHE_UNTIL, SCOPE, SEP_XML, Handlers
from server.config import ConfigError, ServerConfig
from server.connlimits import ConnectionGuard, GuardedSite, quiet_accept_errors, watch_fds
from server.errors import (
    INVALID_FORMAT,
    INVALID_VALUES,
    RESOURCE_LIMIT,
    ApiError,
    RequestTimeout,
    Unauthenticated,
)
from server.limits import paging_cache_key
from server.netpolicy import TargetPolicy
from server.store import RequestScope, Store, make_engine, migrate
from server.store.versions import DocumentCache
from server.workers import VersionBus

if TYPE_CHECKING:
    from server.notifications import NotificationSender

access_log = logging.getLogger("derlink.server.access")
log = logging.getLogger("derlink.server")

STORE_KEY = web.AppKey("store", Store)
CONFIG_KEY = web.AppKey("config", ServerConfig)
METRICS_KEY = web.AppKey("metrics", object)
_HTTP_REASON = {400: INVALID_FORMAT, 404: INVALID_VALUES, 405: INVALID_VALUES, 413: RESOURCE_LIMIT}


def error_response(
    status: int, reason_code: int, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(
        status=status, body=to_xml(r.Error(reasonCode=reason_code)), content_type=SEP_XML, headers=headers
    )
    response.headers["X-Error-Detail"] = detail.encode("ascii", "replace").decode()[:300].replace("\n", " ")
    return response


BUSY_RETRY_AFTER_S = 30


def busy_response() -> web.Response:
    """503 with Retry-After and the 2030.5 Error's maxRetryDuration: the request changed nothing."""
    response = web.Response(
        status=503,
        body=to_xml(r.Error(reasonCode=RESOURCE_LIMIT, maxRetryDuration=BUSY_RETRY_AFTER_S)),
        content_type=SEP_XML,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )
    response.headers["X-Error-Detail"] = "the database is busy with another writer; retry later"
    return response


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "derlink_http_requests", "2030.5 requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "derlink_http_request_seconds",
            "2030.5 request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.cache_hits = Counter("derlink_cache_hits", "GETs served from the cache", registry=self.registry)
        self.notifications = Counter(
            "derlink_notifications", "notification delivery attempts", ["outcome"], registry=self.registry
        )


class Gateway:
    """The per-request path: who is calling, what they may see, cached answers, errors, logs, metrics."""

    def __init__(self, store: Store, config: ServerConfig, metrics: Metrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.proxy_networks = config.proxy_networks()
        self._identities: dict[bytes | str, tuple[str, str] | str] = {}  # a str: why it is refused
        self._cert_policy: Any = None  # server.certpolicy.ClientCertPolicy, made on first use
        self._scopes: dict[str, tuple[int, RequestScope]] = {}
        self.cache = DocumentCache(store.versions, config.cache_max_bytes) if config.cache_active else None

    def identify(self, request: web.Request) -> tuple[str, str]:
        """(LFDI, role) of the client certificate: from TLS, or from the proxy header of a trusted peer."""
        transport = request.transport
        if self.proxy_networks and transport is not None:
            peer = transport.get_extra_info("peername")
            header = request.headers.get(self.config.proxy_cert_header)
            if peer and header and any(ipaddress.ip_address(peer[0]) in n for n in self.proxy_networks):
                return self._identity_from_pem(header)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise Unauthenticated("a client certificate is required")
        known = self._identities.get(der)
        if known is None:
            from cryptography import x509

            known = self._admit(x509.load_der_x509_certificate(der), der, check_chain=False)
            if len(self._identities) > 10000:
                self._identities.clear()
            self._identities[der] = known
        if isinstance(known, str):
            raise Unauthenticated(known)
        return known

    def _admit(self, cert: Any, der: bytes, *, check_chain: bool) -> tuple[str, str] | str:
        """(LFDI, role) of an acceptable client certificate, or why it is refused (server.certpolicy)."""
        from certs.pki import certificate_role
        from server.certpolicy import ClientCertPolicy

        if self._cert_policy is None:
            self._cert_policy = ClientCertPolicy.from_config(self.config)
        problem = self._cert_policy.problem(cert, check_chain=check_chain)
        if problem is not None:
            log.warning("client certificate refused (lfdi=%s): %s", lfdi_from_cert_der(der), problem)
            return problem
        return lfdi_from_cert_der(der), certificate_role(der)

    def _identity_from_pem(self, header: str) -> tuple[str, str]:
        known = self._identities.get(header)
        if known is None:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            try:
                cert = x509.load_pem_x509_certificate(unquote(header).encode())
            except ValueError:
                raise Unauthenticated(f"{self.config.proxy_cert_header}: not a PEM certificate") from None
            known = self._admit(cert, cert.public_bytes(Encoding.DER), check_chain=True)
            if len(self._identities) > 10000:
                self._identities.clear()
            self._identities[header] = known
        if isinstance(known, str):
            raise Unauthenticated(known)
        return known

    async def scope(self, lfdi: str, role: str) -> RequestScope:
        if self.cache is None or not self.store.versions.trusted:  # revocation elsewhere may go unheard
            return await self.store.scope_for(lfdi, role)
        stamp = self.store.versions.stamp(("client", lfdi))  # revocation, aggregator attachment
        cached = self._scopes.get(lfdi)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        scope = await self.store.scope_for(lfdi, role)
        self._scopes[lfdi] = (stamp, scope)
        return scope

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        lfdi = "-"
        cache_hit = False
        try:
            lfdi, role = self.identify(request)
            scope = await self.scope(lfdi, role)
            request[SCOPE] = scope
            if request.body_exists:  # a slow body holds nothing for longer than body_timeout
                try:
                    async with asyncio.timeout(self.config.body_timeout):
                        await request.read()
                except TimeoutError:
                    raise RequestTimeout(
                        f"request body not received within {self.config.body_timeout:g} s"
                    ) from None
            self.store.note_contact(lfdi)
            if self.cache is not None and request.method in ("GET", "HEAD"):
                key = (lfdi, paging_cache_key(request.path, request.query))  # other parameters: one entry
                body = self.cache.get(key, self.store.clock())
                if body is not None:
                    cache_hit = True
                    response = web.Response(body=body, content_type=SEP_XML)
                else:
                    with self.store.versions.reading() as deps:
                        response = await handler(request)
                    until = response.get(CACHE_UNTIL, 0.0)
                    if response.status == 200 and until > self.store.clock():
                        self.cache.put(key, deps, until, response.body)
            else:
                response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.reason_code, exc.detail)
            if exc.status == 408:
                response.force_close()
        except web.HTTPException as exc:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            detail = exc.text or exc.reason
            if exc.status == 405:
                detail = f"method {request.method} is not allowed on {request.path}"
            if exc.status == 413:
                detail = f"body exceeds the limit of {self.config.max_body_bytes} bytes"
            response = error_response(
                exc.status, _HTTP_REASON.get(exc.status, INVALID_VALUES), detail, headers
            )
        except OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                log.exception("database error on %s %s", request.method, request.path)
                response = error_response(500, INVALID_VALUES, "internal server error")
            else:  # another writer (e.g. a bulk DOE upload) holds the database: nothing changed, retry later
                log.warning("database busy on %s %s", request.method, request.path)
                response = busy_response()
        except ConnectionResetError:  # the client went away mid-request: its business, not a server fault
            log.info("client disconnected during %s %s (lfdi=%s)", request.method, request.path, lfdi)
            response = error_response(400, INVALID_FORMAT, "client disconnected")
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(500, INVALID_VALUES, "internal server error")
        elapsed = time.perf_counter() - started
        route = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        )
        self.metrics.requests.labels(request.method, route, response.status).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        if cache_hit:
            self.metrics.cache_hits.inc()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "method=%s path=%s status=%d lfdi=%s ms=%.2f cache=%s%s",
                request.method,
                request.path_qs,
                response.status,
                lfdi,
                elapsed * 1000,
                "hit" if cache_hit else "miss",
                f" error={response.headers['X-Error-Detail']!r}"
                if "X-Error-Detail" in response.headers
                else "",
            )
        return response


def create_app(
    store: Store,
    config: ServerConfig,
    metrics: Metrics | None = None,
    target_policy: TargetPolicy | None = None,
) -> web.Application:
    metrics = metrics or Metrics()
    gateway = Gateway(store, config, metrics)
    app = web.Application(middlewares=[gateway.middleware], client_max_size=config.max_body_bytes)
    app[STORE_KEY] = store
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = metrics
    handlers = Handlers(store, config)
    if target_policy is not None:
        handlers.target_policy = target_policy
    handlers.add_routes(app)
    return app


def create_admin_app(metrics: Metrics) -> web.Application:
    async def serve_metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", health)
    return app


def server_ssl(config: ServerConfig) -> ssl.SSLContext:
    from certs.tls import server_ssl_context

    chain, key, ca = config.tls_files()
    return server_ssl_context(chain, key, ca, require_client_cert=not config.proxy_mode)


@dataclass
class RunningServer:
    """A started server: its bound ports and how to stop it."""

    store: Store
    config: ServerConfig
    port: int
    admin_port: int | None
    runners: list[web.AppRunner]
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    metrics: Metrics | None = None
    headend_port: int | None = None
    advertiser: Advertiser | None = None  # when config.dnssd
    target_policy: TargetPolicy | None = None  # where notifications may go (server.netpolicy)
    connection_guard: ConnectionGuard | None = None  # connection counts and limits (server.connlimits)
    bus: VersionBus | None = None  # the other processes' commits, heard on PostgreSQL (server.workers)
    workers: list[asyncio.subprocess.Process] = field(default_factory=list)  # the other processes
    sender: NotificationSender | None = None  # this process's notification delivery

    @property
    def base_url(self) -> str:
        scheme = "http" if self.config.proxy_mode and not self.config.tls else "https"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def stop(self) -> None:
        if self.advertiser is not None:  # goodbye first, so clients stop finding a server that is going away
            await self.advertiser.stop()
        await _stop_workers(self.workers)
        for task in self.tasks:
            task.cancel()
        # gather (not a suppressing await per task) so that a cancellation of stop() itself propagates.
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for runner in self.runners:
            await runner.cleanup()
        if self.bus is not None:
            await self.bus.stop()
        await self.store.close()


async def _flush_contacts_forever(store: Store, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await store.flush_contacts()
        except Exception:
            log.exception("could not record client contact times")


async def start_server(
    config: ServerConfig, store: Store | None = None, *, worker: bool = False
) -> RunningServer:
    """Migrate, open the store, start the listeners and the notification sender. Port 0 picks a free port.
    With ``workers`` > 1 the other server processes are started too (``worker``: this is one of them).

    A failure part-way (database, certificates, a port in use) releases what was already opened, so the
    caller can report it in one line (server.faults) and nothing is left running.
    """
    if store is None:
        engine = make_engine(config.resolved_database_url)
        try:
            await migrate(engine)
            store = Store(engine, pen=config.iana_pen)
            await store.admin.ensure_standard_programs()
        except BaseException:
            await engine.dispose()
            raise
    from server.store.quotas import Quotas

    store.quotas = Quotas.from_config(config)
    opened: list[web.AppRunner] = []
    bus = None
    if config.workers > 1 and config.is_sqlite:
        await store.close()
        raise ConfigError("workers: more than one server process needs PostgreSQL (set database_url)")
    try:
        if not config.is_sqlite and config.cache_active:  # every cache hears the other processes' commits
            bus = VersionBus(store.versions, config.resolved_database_url)
            await bus.start()
        running = await _start_listeners(config, store, opened, reuse_port=config.workers > 1 or worker)
    except BaseException:
        for runner in opened:
            await runner.cleanup()
        if bus is not None:
            await bus.stop()
        await store.close()
        raise
    running.bus = bus
    if config.workers > 1 and not worker:
        try:
            running.workers = await _start_workers(config, running.port)
        except BaseException:
            await running.stop()
            raise
    return running


async def _start_workers(config: ServerConfig, port: int) -> list[asyncio.subprocess.Process]:
    """The other ``workers - 1`` processes, on the same port; each answers one line when it listens and
    stops when its standard input closes (so also when this process dies)."""
    import json
    import sys

    values = config.model_dump(mode="json")
    values.update(port=port, admin_enabled=False, headend_enabled=False, dnssd=False)
    document = json.dumps({k: v for k, v in values.items() if v is not None}).encode() + b"\n"
    started: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(config.workers - 1):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from server.app import worker_main; worker_main()",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            started.append(proc)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(document)
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            if not line.startswith(b"ready"):
                raise RuntimeError(f"server worker process {proc.pid} did not start (exit {proc.returncode})")
    except BaseException:
        await _stop_workers(started)
        raise
    return started


async def _stop_workers(workers: list[asyncio.subprocess.Process]) -> None:
    for proc in workers:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in workers:
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def worker_main() -> None:
    """Entry point of a worker process (``_start_workers``): its configuration arrives on stdin."""
    import json
    import sys

    from server.config import config_from_mapping
    from server.logsafe import configure_logging

    config = config_from_mapping(json.loads(sys.stdin.readline()))
    configure_logging(config.log_level)

    async def serve() -> None:
        running = await start_server(config, worker=True)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the first process closes it (or dies)
        await running.stop()

    asyncio.run(serve())


async def _start_listeners(
    config: ServerConfig, store: Store, opened: list[web.AppRunner], *, reuse_port: bool = False
) -> RunningServer:
    from server.notifications import NotificationSender

    metrics = Metrics()
    target_policy = TargetPolicy.from_config(config)
    app = create_app(store, config, metrics, target_policy)
    # keepalive_timeout is armed from the start of a connection and while a header is incomplete, so it is
    # also the header timeout; lingering (draining an unread body after an error) is bounded to 1 s.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=config.idle_timeout, lingering_time=1.0
    )
    await runner.setup()
    opened.append(runner)
    context = server_ssl(config) if config.tls else None
    quiet_accept_errors(asyncio.get_running_loop())
    guard = ConnectionGuard(config.max_connections, config.max_connections_per_client)
    site = GuardedSite(
        runner,
        config.host,
        config.port,
        guard=guard,
        handshake_timeout=config.handshake_timeout,
        ssl_context=context,
        backlog=512,
        reuse_port=reuse_port or None,
    )
    await site.start()
    port = runner.addresses[0][1]
    runners = [runner]
    admin_port = None
    if config.admin_enabled:
        admin_runner = web.AppRunner(create_admin_app(metrics), access_log=None, handle_signals=False)
        await admin_runner.setup()
        opened.append(admin_runner)
        admin_site = web.TCPSite(admin_runner, config.admin_host, config.admin_port)
        await admin_site.start()
        admin_port = admin_runner.addresses[0][1]
        runners.append(admin_runner)
    running = RunningServer(
        store=store,
        config=config,
        port=port,
        admin_port=admin_port,
        runners=runners,
        metrics=metrics,
        target_policy=target_policy,
    )
    if config.headend_enabled:  # the operators' JSON API on its own listener (server.headend)
        from server.headend.api import start_headend

        headend_runner, running.headend_port = await start_headend(store, config)
        runners.append(headend_runner)
        opened.append(headend_runner)
    target_policy.own_ports.update(p for p in (port, admin_port, running.headend_port) if p)
    sender = running.sender = NotificationSender(store, config, metrics, target_policy)
    running.tasks.append(asyncio.create_task(sender.run(), name="derlink-notifications"))
    running.tasks.append(asyncio.create_task(_flush_contacts_forever(store, 10.0), name="derlink-contacts"))
    running.tasks.append(asyncio.create_task(watch_fds(), name="derlink-fd-watch"))
    running.connection_guard = guard
    if config.dnssd:
        running.advertiser = Advertiser(config.dnssd_instance, config.dnssd_address or config.host, port)
        try:
            await running.advertiser.start()
        except Exception:
            for task in running.tasks:  # start_server releases the listeners and the store
                task.cancel()
            await asyncio.gather(*running.tasks, return_exceptions=True)
            raise
    log.info("2030.5 server listening on %s:%d (admin %s)", config.host, port, admin_port)
    return running
