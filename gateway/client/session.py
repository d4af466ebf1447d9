"""The gateway's 2030.5 client shell: aiohttp over mutual TLS, around the pure core.

What it does, in order (``Sep2Client.start`` runs it in the background and never raises for network
trouble):

1. discovery: GET the DeviceCapability, the Time (server offset), our EndDevice (SelfDeviceLink, else the
   EndDeviceList entry whose lFDI is ours, else in-band registration if allowed), the Registration (the
   PIN must equal the configured one, or the client stops with a clear error), the DERList and the
   MirrorUsagePointList;
2. the walk: EndDevice -> FunctionSetAssignmentsList -> DERProgramList -> DERProgram -> DERControlList +
   ActiveDERControlList + DefaultDERControl, all pages of every list, mapped by ``gateway.client.mapping``
   and fed to the controller's event engine (``sync_program``/``remove_program``); when each device has
   its own DER, each DER's own DERProgramList (2030.5 §10.10 ``AssociatedDERProgramListLink``) too, fed to
   that device's engine (``SiteController.der_engine``);
3. steady state: each list is polled again at its own ``pollRate`` (Time and DeviceCapability too), or, in
   subscription mode, Subscriptions are kept on the FSA list, every DERProgramList, DERControlList and
   DefaultDERControl and Notifications to the local HTTPS listener update the engine at once (polling then
   only runs as a slow safety net);
4. DER documents: DERCapability/DERSettings are PUT when they change, DERStatus/DERAvailability every
   ``postRate``;
5. telemetry and Responses go through the durable :class:`~gateway.client.outbox.Outbox` and are POSTed in
   order, to the MirrorUsagePoints (each created with its first readings) and to each control's ``replyTo``.
   A document the server refuses (4xx) is recorded once in ``status.refusals`` with the server's Error and
   never stalls the rest: a refused batch of readings is split and the accepted ones kept.

Every successful exchange calls ``controller.server_contact(now)``. Network errors and 5xx are retried
with exponential backoff and jitter; a 4xx on an outbox entry moves it to the dead-letter table (the server
will never accept it, and it must not block the queue). A server that refuses a second POST of our
EndDevice is fine: the EndDeviceList is read again for our lFDI. Times given to the core are server time
(local clock + offset from ``/tm``); see :meth:`Sep2Client.now`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from gateway.client import mapping
from gateway.client.outbox import Outbox, OutboxEntry
from gateway.core import Response, SiteController
from sep2 import resources as r
from sep2.identity import lfdi_from_cert_der, normalise_lfdi, sfdi_from_lfdi
from sep2.xml import CONTENT_TYPE, Sep2XmlError, from_xml, to_xml

log = logging.getLogger("derlink.gateway.client")
T = TypeVar("T")
NOTIFY_PATH = "/ntfy"


class ClientError(Exception):
    """Base class of the client's errors."""


class CommsError(ClientError):
    """The server could not be reached or answered 5xx: retried with backoff."""


class ServerRejected(ClientError):
    """The server answered 4xx: retrying the same request will not help.

    ``reason_code`` is the 2030.5 ``Error.reasonCode`` of the answer's body, when it had one.
    """

    def __init__(
        self, method: str, url: str, status: int, detail: str, reason_code: int | None = None
    ) -> None:
        self.status = status
        self.reason_code = reason_code
        error = f" (Error reasonCode {reason_code})" if reason_code is not None else ""
        super().__init__(f"{method} {url}: HTTP {status} {detail}".strip() + error)


class RegistrationError(ClientError):
    """Our EndDevice is unknown to the server or its Registration PIN is not ours: the client stops."""


@dataclass(frozen=True)
class ClientConfig:
    """Settings of the 2030.5 client (the runtime fills it from site.toml).

    ``mode`` is "poll" or "subscribe". In subscribe mode the listener binds ``listener_host:listener_port``
    (0 = free port) and advertises ``https://{notify_host}:{port}/ntfy``. Rates are seconds; the server's
    ``pollRate``/``postRate`` override the defaults.
    """

    dcap_url: str
    lfdi: str
    data_dir: Path
    pin: int | None = None
    mode: str = "poll"
    register_inband: bool = False
    listener_host: str = "127.0.0.1"
    listener_port: int = 0
    notify_host: str | None = None
    notifier_lfdis: tuple[str, ...] = ()  # certificates allowed to notify besides the server's own
    subscription_limit: int = 100
    subscribed_poll_rate: int = 3600  # safety-net re-walk while subscriptions are active
    page_size: int = 100
    default_poll_rate: int = 900  # 2030.5 default when a resource gives none
    default_post_rate: int = 300
    request_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    pen: int = 0
    nmi: str | None = None  # PUT as the EndDevice's ConnectionPoint at discovery when the server differs
    device_category: str | None = None  # EndDevice.deviceCategory of an in-band registration (HexBinary32)

    def __post_init__(self) -> None:
        problems = []
        parts = urlsplit(self.dcap_url)
        if parts.scheme != "https" or not parts.hostname:
            problems.append(f"dcap_url: must be an https:// URL, got {self.dcap_url!r}")
        try:
            object.__setattr__(self, "lfdi", normalise_lfdi(self.lfdi))
        except ValueError as exc:
            problems.append(f"lfdi: {exc}")
        if self.mode not in ("poll", "subscribe"):
            problems.append(f"mode: must be 'poll' or 'subscribe', got {self.mode!r}")
        if self.pin is not None and not 0 <= self.pin <= 999999:
            problems.append(f"pin: must be 0..999999, got {self.pin}")
        for name in ("page_size", "subscription_limit", "default_poll_rate", "default_post_rate"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.backoff_initial <= self.backoff_max:
            problems.append("backoff_initial/backoff_max: need 0 < backoff_initial <= backoff_max")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class ClientStatus:
    state: str = "starting"  # starting | discovering | running | registration_failed | stopped
    last_contact: float | None = None  # server time of the last successful exchange
    comms_ok: bool = False
    last_error: str | None = None
    server_offset: float = 0.0
    end_device: str | None = None
    subscriptions: int = 0
    notifications: int = 0
    post_rate: int | None = None
    # documents the server refused for good: what -> the server's answer (logged once each)
    refusals: dict[str, str] = field(default_factory=dict)


@dataclass
class _ProgramState:
    doc: r.DERProgram
    lists: set[str] = field(default_factory=set)  # DERProgramList hrefs that list it
    default: r.DefaultDERControl | None = None
    notified: int = 0  # Notifications applied to it: a read of it that spans one may be older than it
    der: str | None = None  # from a DER's own list: the key of the device mapped to that DER


def clock_offset(current: float, server_time: int, sent: float, received: float) -> float:
    """The offset (server minus local clock) to use after a Time read sent at ``sent`` and answered at
    ``received`` (local clock) with ``server_time``.

    The server's clock read some instant of [sent, received] and has 1 s resolution, so every offset in
    [server_time - received, server_time + 1 - sent] agrees with the sample. The ``current`` offset is
    kept while it agrees, and only a disagreeing sample moves it (to the middle of that range): a slow
    answer on a loaded link must not shift the clock by a second and open a gap between a superseded
    control and the piece that continues it.
    """
    low, high = server_time - received - 0.001, server_time + 1 - sent + 0.001  # 1 ms for float error
    if low <= current <= high:
        return current
    return (low + high) / 2


def _path(href: str) -> str:
    """The path (and query) of an href, so absolute and relative forms of one resource compare equal."""
    parts = urlsplit(href)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_query(url: str, **params: int) -> str:
    parts = urlsplit(url)
    query = "&".join(p for p in (parts.query, urlencode(params)) if p)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class Sep2Client:
    """Async 2030.5 client for one gateway (one EndDevice).

    ``controller`` is the gateway core: the client feeds its ``engine`` and calls ``server_contact``.
    ``on_schedule_change(now)`` (sync or async) runs after every change fed to the engine, so the runtime
    can call ``controller.decide(now)`` and act. ``listener_ssl_context`` is needed in subscribe mode:
    ``certs.tls.server_ssl_context(our chain, our key, CA)``.
    """

    def __init__(
        self,
        config: ClientConfig,
        ssl_context: ssl.SSLContext,
        controller: SiteController,
        *,
        listener_ssl_context: ssl.SSLContext | None = None,
        on_schedule_change: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> None:
        if config.mode == "subscribe" and listener_ssl_context is None:
            raise ValueError("listener_ssl_context: required when mode is 'subscribe'")
        self.config = config
        self.ssl_context = ssl_context
        self.listener_ssl_context = listener_ssl_context
        self.controller = controller
        self.on_schedule_change = on_schedule_change
        self.outbox = Outbox(Path(config.data_dir) / "outbox.sqlite3")
        self.status = ClientStatus()
        parts = urlsplit(config.dcap_url)
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._offset = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self.listener_port: int | None = None
        self._server_lfdi: str | None = None
        self._ready = asyncio.Event()  # discovery + first walk done
        self._failed: ClientError | None = None
        self._contact = asyncio.Event()  # set on every successful exchange (wakes backoff sleeps)
        self._wake = asyncio.Event()
        self._due: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._rates: dict[str, int] = {}
        # discovered resources
        self.dcap: r.DeviceCapability | None = None
        self.end_device: r.EndDevice | None = None
        self._programs: dict[str, _ProgramState] = {}  # program mRID -> state
        self._program_lists: set[str] = set()
        self._subscriptions: dict[str, str] = {}  # subscribed resource path -> Subscription href
        self._der_hrefs: list[r.DER] = []
        self._der_lists: dict[str, str] = {}  # a mapped DER's own DERProgramList -> its device's key
        self._der_layout: tuple[tuple[str | None, str], ...] = ()
        self._mups: dict[str, str] = {}  # MirrorUsagePoint mRID -> href
        self._post_rate: int | None = None
        self._next_post: float | None = None
        self._last_post: float | None = None
        self._site: mapping.SiteSnapshot | None = None
        self._put_docs: dict[str, bytes] = {}  # DER document href -> last body PUT (cap/settings)
        self._connected_once = False
        self._cp_synced: str | None = None  # ConnectionPoint href known to hold the configured NMI
        # seconds from a Notification's receipt to the engine updated (the latest 5000)
        self.notification_latencies: deque[float] = deque(maxlen=5000)
        # server time of the receipt of the Notification being handled, while on_schedule_change runs
        self.notification_received_at: float | None = None

    # ------------------------------------------------------------------------------------ public API

    def now(self) -> int:
        """Server time in Unix seconds (local clock + the offset measured from /tm)."""
        return int(time.time() + self._offset)

    async def start(self) -> None:
        """Open the session (and the listener in subscribe mode) and start the background tasks."""
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout)
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=8)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        if self.config.mode == "subscribe":
            await self._start_listener()
        self._tasks = [
            asyncio.create_task(self._supervise(self._main_loop(), "main"), name="sep2-client-main"),
            asyncio.create_task(self._supervise(self._deliver_loop(), "outbox"), name="sep2-client-outbox"),
        ]

    async def wait_ready(self, wait_s: float | None = None) -> None:
        """Wait for discovery and the first walk; raises RegistrationError if registration failed."""
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait_for(waiter, wait_s)
        finally:
            waiter.cancel()
        if self._failed is not None:
            raise self._failed

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # gather, not a suppressing await per task, so a cancellation of stop() itself still propagates.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.outbox.close()
        if self.status.state != "registration_failed":
            self.status.state = "stopped"

    async def queue_response(self, response: Response) -> None:
        """Durably queue a Response for its control's ``replyTo``; after this returns the engine may
        ``acknowledge`` it (the outbox owns delivery from then on)."""
        doc = mapping.response_document(response, self.config.lfdi)
        target = urljoin(self.config.dcap_url, response.reply_to) if response.reply_to else ""
        meta = {"subject": response.subject, "status": int(response.status)}
        await self.outbox.put("response", target, to_xml(doc), meta, response.created_time)

    async def queue_responses(self, responses: list[Response] | tuple[Response, ...]) -> None:
        """Several Responses in one durable transaction, in order."""
        items = [
            (
                "response",
                urljoin(self.config.dcap_url, resp.reply_to) if resp.reply_to else "",
                to_xml(mapping.response_document(resp, self.config.lfdi)),
                {"subject": resp.subject, "status": int(resp.status)},
                float(resp.created_time),
            )
            for resp in responses
        ]
        if items:
            await self.outbox.put_many(items)

    async def queue_telemetry(self, snapshot: mapping.SiteSnapshot, now: int | None = None) -> bool:
        """Offer a snapshot; readings are queued durably once per ``postRate``. Returns True if queued.

        The snapshot also becomes the latest DER information (PUT as DERCapability/Settings/Status/
        Availability by the background loop).
        """
        now = self.now() if now is None else now
        self.update_site(snapshot)
        if self._next_post is not None and now < self._next_post:
            return False
        interval = self.post_rate
        items = [
            ("readings", point.key, to_xml(doc), {"mrid": point.mrid, "time": now}, float(now))
            for point, doc in mapping.site_readings(
                self.config.lfdi, snapshot, now, interval, self.config.pen
            )
        ]
        if items:
            await self.outbox.put_many(items)
        self._next_post = now + interval
        self._last_post = now
        return bool(items)

    def update_site(self, snapshot: mapping.SiteSnapshot) -> None:
        """Latest nameplate/settings/status of the devices; changed documents are PUT soon."""
        first = self._site is None
        self._site = snapshot
        if first:
            self._due["der_docs"] = 0.0
            if self._ready.is_set() and self._der_program_lists():  # now known: which device each is for
                self._due["walk"] = 0.0
            self._wake.set()

    @property
    def post_rate(self) -> int:
        return self._post_rate or self.config.default_post_rate

    def contact_interval(self) -> float | None:
        """Seconds between two exchanges with a healthy server: the period of the client's most frequent
        request (polls at the server's pollRates, DER documents and readings at its postRate). None before
        discovery has finished. The runtime keeps ``comms_timeout_s`` above it (see
        :func:`gateway.core.fallback.effective_comms_timeout`)."""
        if not self._ready.is_set() or self._failed is not None or self.dcap is None:
            return None
        jobs = [j for j in self._due if j in ("dcap", "walk") or j.startswith("derp:")]
        if self.dcap.TimeLink is not None:
            jobs.append("time")
        rates = [self._job_rate(j) for j in jobs]
        if self._der_targets() or (self._site is not None and self.dcap.MirrorUsagePointListLink):
            rates.append(self.post_rate)  # DERStatus PUTs / readings at every postRate
        return min(rates, default=None)

    async def put_connection_point(self, nmi: str) -> str:
        """PUT our EndDevice's csipaus ConnectionPoint (the site's NMI); returns its href.

        Call after :meth:`wait_ready`. Raises ServerRejected (4xx), CommsError, or RegistrationError when
        the EndDevice offers no ConnectionPointLink.
        """
        if self.end_device is None:
            raise RegistrationError("no EndDevice yet: wait_ready() first")
        link = self.end_device.ConnectionPointLink
        if link is None:
            raise RegistrationError("EndDevice has no ConnectionPointLink: the server cannot record the NMI")
        await self._put(link.href, r.ConnectionPoint(connectionPointId=nmi))
        return link.href

    # ----------------------------------------------------------------------------------- plumbing

    async def _supervise(self, coro: Awaitable[None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except RegistrationError:
            return
        except Exception:  # a bug: log it and keep the gateway alive without this loop
            log.exception("sep2 client %s loop crashed", name)
            self.status.last_error = f"{name} loop crashed"

    def _url(self, href: str) -> str:
        return urljoin(self.config.dcap_url, href)

    def _backoff(self, attempts: int) -> float:
        delay = min(self.config.backoff_max, self.config.backoff_initial * 2 ** min(attempts, 30))
        return delay * random.uniform(0.5, 1.0)

    def _note_contact(self) -> None:
        now = self.now()
        self.status.last_contact = now
        self.status.comms_ok = True
        self.controller.server_contact(now)
        self._contact.set()
        self._contact.clear()

    def _note_comms_error(self, error: Exception) -> None:
        self.status.comms_ok = False
        self.status.last_error = str(error)

    async def _request(
        self, method: str, href: str, body: bytes | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self._session is not None, "start() first"
        url = self._url(href)
        headers = {"Accept": CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        try:
            async with self._session.request(method, url, data=body, headers=headers) as resp:
                data = await resp.read()
                status, resp_headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise CommsError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if status >= 500 or status in (408, 429):
            raise CommsError(f"{method} {url}: HTTP {status}")
        self._note_contact()  # any answer below 500 shows the link and the server work
        if status >= 400:
            reason = None
            if data:
                with contextlib.suppress(Sep2XmlError, TypeError):
                    error = from_xml(data, r.Error)
                    reason = error.reasonCode if isinstance(error, r.Error) else None
            raise ServerRejected(method, url, status, resp_headers.get("X-Error-Detail", ""), reason)
        return status, data, resp_headers

    async def _learn_server_identity(self) -> None:
        """The LFDI of the server's certificate: only that certificate may deliver Notifications.

        aiohttp does not expose the peer certificate of a pooled connection, so one extra TLS handshake
        (same context, same host) reads it.
        """
        parts = urlsplit(self.config.dcap_url)
        port = parts.port or 443
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port, ssl=self.ssl_context),
                self.config.request_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise CommsError(f"TLS handshake with {parts.hostname}:{port}: {exc}") from None
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            self._server_lfdi = lfdi_from_cert_der(der)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _get(self, href: str, expected: type[T]) -> T:
        _, data, _ = await self._request("GET", href)
        try:
            return from_xml(data, expected)  # type: ignore[arg-type, return-value]
        except Sep2XmlError as exc:
            raise CommsError(f"GET {href}: server sent an invalid {expected.__name__}: {exc}") from None

    async def _get_optional(self, href: str, expected: type[T]) -> T | None:
        try:
            return await self._get(href, expected)
        except ServerRejected as exc:
            if exc.status == 404:
                return None
            raise

    async def _get_list(self, href: str, expected: type[T], item: str) -> tuple[T, list[Any]]:
        """Every page of a list (``s``/``l`` paging until ``all`` entries are read)."""
        items: list[Any] = []
        first: Any = None
        start = 0
        while True:
            page: Any = await self._get(_with_query(href, s=start, l=self.config.page_size), expected)
            if first is None:
                first = page
            got = getattr(page, item)
            items.extend(got)
            start += len(got)
            if not got or start >= (page.all or 0):
                break
        return first, items

    async def _post(self, href: str, doc: Any) -> str | None:
        _, _, headers = await self._request("POST", href, to_xml(doc))
        return headers.get("Location")

    async def _put(self, href: str, doc: Any) -> None:
        await self._request("PUT", href, to_xml(doc))

    async def _changed(self) -> None:
        if self.on_schedule_change is None:
            return
        try:
            result = self.on_schedule_change(self.now())
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_schedule_change callback failed")

    # ----------------------------------------------------------------------------------- discovery

    async def _discover(self) -> None:
        if self.status.state != "running":  # the periodic re-read of the DeviceCapability is not discovery
            self.status.state = "discovering"
        dcap = await self._get(self.config.dcap_url, r.DeviceCapability)
        self.dcap = dcap
        self._rates["dcap"] = dcap.pollRate or self.config.default_poll_rate
        if dcap.TimeLink is not None:
            await self._sync_time()
        if self.config.mode == "subscribe" and self._server_lfdi is None:
            await self._learn_server_identity()
        if not self._connected_once:
            log.info("connected to %s (DeviceCapability read)", self.config.dcap_url)
            self._connected_once = True
        self.end_device = await self._find_end_device(dcap)
        if self.status.end_device != self.end_device.href:
            log.info("registered: EndDevice %s (lFDI %s)", self.end_device.href, self.config.lfdi)
        self.status.end_device = self.end_device.href
        await self._check_registration(self.end_device)
        await self._sync_connection_point(self.end_device)
        if self.end_device.DERListLink is not None:
            _, self._der_hrefs = await self._get_list(self.end_device.DERListLink.href, r.DERList, "DER")
        if dcap.MirrorUsagePointListLink is not None:
            _, mups = await self._get_list(
                dcap.MirrorUsagePointListLink.href, r.MirrorUsagePointList, "MirrorUsagePoint"
            )
            for mup in mups:
                if mup.mRID and mup.href:
                    self._mups[mup.mRID.upper()] = mup.href
                if mup.postRate:
                    self._set_post_rate(mup.postRate)
            # MirrorUsagePoints are created with their first readings (_deliver_readings), not here: a
            # server may refuse one without readings, and a refused one must not stop discovery.
        if self.end_device.postRate:
            self._set_post_rate(self.end_device.postRate)

    def _set_post_rate(self, rate: int) -> None:
        """A (new) postRate from the server: the next sample is due one new interval after the last one."""
        if rate != self._post_rate and self._next_post is not None and self._last_post is not None:
            self._next_post = self._last_post + rate
        self._post_rate = rate
        self.status.post_rate = rate

    async def _sync_time(self) -> None:
        assert self.dcap is not None and self.dcap.TimeLink is not None
        sent = time.time()
        doc = await self._get(self.dcap.TimeLink.href, r.Time)
        received = time.time()
        if doc.currentTime is not None:
            self._offset = clock_offset(self._offset, doc.currentTime, sent, received)
            self.status.server_offset = self._offset
        self._rates["time"] = doc.pollRate or self.config.default_poll_rate

    async def _find_end_device(self, dcap: r.DeviceCapability) -> r.EndDevice:
        lfdi = self.config.lfdi
        if dcap.SelfDeviceLink is not None:
            doc = await self._get_optional(dcap.SelfDeviceLink.href, r.EndDevice)
            if doc is not None and (doc.lFDI or "").upper() == lfdi:
                return doc
        if dcap.EndDeviceListLink is None:
            raise RegistrationError("DeviceCapability has no EndDeviceListLink: cannot find our EndDevice")
        href = dcap.EndDeviceListLink.href
        edl, devices = await self._get_list(href, r.EndDeviceList, "EndDevice")
        self._rates["edev"] = edl.pollRate or self.config.default_poll_rate
        for device in devices:
            if (device.lFDI or "").upper() == lfdi:
                return device
        if not self.config.register_inband:
            raise RegistrationError(
                f"EndDevice with lFDI {lfdi} is not registered on the server "
                "(ask the DNSP to register it, or enable in-band registration)"
            )
        try:
            location = await self._post(
                href,
                r.EndDevice(
                    sFDI=sfdi_from_lfdi(lfdi),
                    lFDI=lfdi,
                    changedTime=self.now(),
                    deviceCategory=self.config.device_category,
                ),
            )
        except ServerRejected as exc:
            # 2030.5 / CSIP-AUS: a server may refuse a second POST of a registered lFDI; the client finds its
            # EndDevice in the EndDeviceList. Read the list again (it may have been registered meanwhile).
            _, devices = await self._get_list(href, r.EndDeviceList, "EndDevice")
            for device in devices:
                if (device.lFDI or "").upper() == lfdi:
                    log.info("in-band registration refused (%s); our EndDevice is in the EndDeviceList", exc)
                    return device
            raise RegistrationError(f"in-band registration refused by the server: {exc}") from None
        if not location:
            raise CommsError("EndDevice registration: server gave no Location")
        return await self._get(location, r.EndDevice)

    async def _sync_connection_point(self, device: r.EndDevice) -> None:
        """CSIP-AUS ConnectionPoint: PUT the configured NMI unless the server already holds it. A refusal
        is recorded (status.refusals) and discovery goes on: the NMI is the operator's to fix."""
        link = device.ConnectionPointLink
        if self.config.nmi is None or link is None or self._cp_synced == link.href:
            return
        held = await self._get_optional(link.href, r.ConnectionPoint)
        if held is not None and held.connectionPointId == self.config.nmi:
            self._cp_synced = link.href
            return
        what = f"ConnectionPoint {link.href} (NMI {self.config.nmi})"
        try:
            await self._put(link.href, r.ConnectionPoint(connectionPointId=self.config.nmi))
        except ServerRejected as exc:
            self._refused(what, exc)
        else:
            self._forgive(what)
            self._cp_synced = link.href
            log.info("NMI %s recorded as the ConnectionPoint of %s", self.config.nmi, device.href)

    async def _check_registration(self, device: r.EndDevice) -> None:
        if self.config.pin is None:
            return
        if device.RegistrationLink is None:
            raise RegistrationError("EndDevice has no RegistrationLink: cannot check the PIN")
        registration = await self._get_optional(device.RegistrationLink.href, r.Registration)
        if registration is None:
            raise RegistrationError("the server has no Registration (PIN) for this EndDevice")
        if registration.pIN != self.config.pin:
            raise RegistrationError(
                f"Registration.pIN {registration.pIN} does not match the configured PIN {self.config.pin}: "
                "this server did not register this gateway; refusing to proceed"
            )

    # ------------------------------------------------------------------------------------ the walk

    def _poll_rate(self, rate: int | None) -> int:
        value = rate or self.config.default_poll_rate
        if self.config.mode == "subscribe" and self._subscriptions:
            value = max(value, self.config.subscribed_poll_rate)
        return value

    async def _walk(self, *, known_lists: bool = True) -> None:
        """Walk EndDevice -> FSAs -> programs -> controls; drop programs no longer assigned.

        ``known_lists=False`` (the FSA list's own poll) reads only the program lists not yet known: each
        known one is polled at its own pollRate (``derp:`` jobs), and reading it here as well would ask
        for the same list twice in a row, which a server may answer with changes in between (a control
        created between the two reads supersedes one created just before, before either has started)."""
        assert self.end_device is not None
        link = self.end_device.FunctionSetAssignmentsListLink
        seen_lists: set[str] = set()
        if link is not None:
            fsal, fsas = await self._get_list(
                link.href, r.FunctionSetAssignmentsList, "FunctionSetAssignments"
            )
            self._rates["fsa"] = fsal.pollRate or self.config.default_poll_rate
            for fsa in fsas:
                if fsa.DERProgramListLink is not None:
                    seen_lists.add(_path(fsa.DERProgramListLink.href))
        # Each DER mapped to one device may link its own DERProgramList (2030.5 §10.10 DER.
        # AssociatedDERProgramListLink: "DERPrograms having the DERControl(s) for this DER"): its controls
        # are that device's alone. CSIP-AUS servers link none.
        self._der_lists = self._der_program_lists()
        seen_lists |= set(self._der_lists)
        for list_href in sorted(seen_lists):
            if known_lists or list_href not in self._program_lists:
                await self._walk_program_list(list_href, changed=False)
        for gone in self._program_lists - seen_lists:
            self._drop_list(gone)
        self._program_lists = seen_lists
        await self._changed()

    async def _walk_program_list(self, list_href: str, *, changed: bool = True) -> None:
        plist, programs = await self._get_list(list_href, r.DERProgramList, "DERProgram")
        self._rates[f"derp:{list_href}"] = plist.pollRate or self.config.default_poll_rate
        self._program_lists.add(list_href)
        listed = set()
        for doc in programs:
            if not doc.mRID:
                continue
            listed.add(doc.mRID.upper())
            await self._walk_program(doc, list_href)
        for mrid, state in list(self._programs.items()):
            if list_href in state.lists and mrid not in listed:
                self._forget_program(mrid, list_href)
        if changed:
            await self._changed()

    async def _walk_program(self, doc: r.DERProgram, list_href: str) -> None:
        mrid = (doc.mRID or "").upper()
        state = self._programs.get(mrid) or _ProgramState(doc=doc)
        state.doc = doc
        state.lists.add(list_href)
        state.der = self._der_lists.get(list_href)
        self._programs[mrid] = state
        notified = state.notified
        default = None
        if doc.DefaultDERControlLink is not None:
            default = await self._get_optional(doc.DefaultDERControlLink.href, r.DefaultDERControl)
        controls: dict[str, r.DERControl] = {}
        if doc.DERControlListLink is not None:
            _, items = await self._get_list(doc.DERControlListLink.href, r.DERControlList, "DERControl")
            controls.update({(c.mRID or "").upper(): c for c in items})
        if doc.ActiveDERControlListLink is not None:
            _, items = await self._get_list(doc.ActiveDERControlListLink.href, r.DERControlList, "DERControl")
            for c in items:
                controls.setdefault((c.mRID or "").upper(), c)
        if state.notified != notified:
            # A Notification was applied while these GETs ran, and the answers may predate it: syncing
            # them would withdraw controls it brought (a withdrawal cancels them), so read again instead.
            self._request_job(f"prog:{mrid}")
            return
        state.default = default
        self._sync_program(state, list(controls.values()))

    def _core_program(self, state: _ProgramState) -> Any:
        """The core Program; a DefaultDERControl the core would refuse is ignored (and logged)."""
        try:
            program = mapping.program(state.doc, state.default)
        except mapping.MappingError as exc:
            log.warning("DefaultDERControl ignored: %s", exc)
            return mapping.program(state.doc, None)
        if program.default is not None and program.default.errors():
            log.warning(
                "DefaultDERControl %s ignored: %s", program.default_mrid, "; ".join(program.default.errors())
            )
            return replace(program, default=None, default_mrid=None)
        return program

    def _sync_program(self, state: _ProgramState, docs: list[r.DERControl]) -> None:
        program = self._core_program(state)
        controls = []
        for doc in docs:
            try:
                controls.append(mapping.control(doc, program.mrid))
            except mapping.MappingError as exc:
                log.warning("DERControl ignored: %s", exc)
        log.debug("program %s synced: %s", program.mrid, [(c.mrid, c.start, c.duration) for c in controls])
        self._engine(state).sync_program(program, controls, self.now())

    def _forget_program(self, mrid: str, list_href: str) -> None:
        state = self._programs.get(mrid)
        if state is None:
            return
        state.lists.discard(list_href)
        if not state.lists:
            del self._programs[mrid]
            self._engine(state).remove_program(mrid, self.now())

    def _engine(self, state: _ProgramState) -> Any:
        """The event engine a program feeds: the site's, or for a DER's own program its device's."""
        if not state.der:
            return self.controller.engine
        href = next((h for h, key in self._der_lists.items() if key == state.der), "")
        return self.controller.der_engine(state.der, f"{href.removesuffix('/derp')} ({state.der})")

    def _der_program_lists(self) -> dict[str, str]:
        """Each DER's own DERProgramList -> the key of the device mapped to that DER, when the devices are
        mapped one to one (an aggregated DER's programs would not say which device they are for)."""
        if self._site is None or len(self._site.ders) > len(self._der_hrefs):
            return {}
        return {
            _path(der.AssociatedDERProgramListLink.href): device.device_id
            for der, device in self._der_targets()
            if der.AssociatedDERProgramListLink is not None
        }

    def _drop_list(self, list_href: str) -> None:
        for mrid in [m for m, s in self._programs.items() if list_href in s.lists]:
            self._forget_program(mrid, list_href)
        self._rates.pop(f"derp:{list_href}", None)
        self._due.pop(f"derp:{list_href}", None)

    # ------------------------------------------------------------------------------- subscriptions

    def _notification_uri(self) -> str:
        host = self.config.notify_host or self.config.listener_host
        return f"https://{host}:{self.listener_port}{NOTIFY_PATH}"

    def _wanted_subscriptions(self) -> set[str]:
        assert self.end_device is not None
        wanted = set(self._program_lists)
        if self.end_device.FunctionSetAssignmentsListLink is not None:
            wanted.add(_path(self.end_device.FunctionSetAssignmentsListLink.href))
        for state in self._programs.values():
            for link in (state.doc.DERControlListLink, state.doc.DefaultDERControlLink):
                if link is not None:
                    wanted.add(_path(link.href))
        return wanted

    async def _sync_subscriptions(self) -> None:
        assert self.end_device is not None
        link = self.end_device.SubscriptionListLink
        if link is None:
            log.warning("EndDevice has no SubscriptionListLink; staying with polling")
            return
        uri = self._notification_uri()
        if not self._subscriptions:  # first time (or after a restart): adopt or clear what the server holds
            _, subs = await self._get_list(link.href, r.SubscriptionList, "Subscription")
            for sub in subs:
                if sub.notificationURI == uri and sub.subscribedResource and sub.href:
                    self._subscriptions[_path(sub.subscribedResource)] = sub.href
                elif sub.href:  # left by an earlier run of this gateway (other port): remove it
                    with contextlib.suppress(ServerRejected):
                        await self._request("DELETE", sub.href)
        wanted = self._wanted_subscriptions()
        for resource in sorted(wanted - set(self._subscriptions)):
            doc = r.Subscription(
                subscribedResource=resource,
                encoding=0,
                level="+S1",
                limit=self.config.subscription_limit,
                notificationURI=uri,
            )
            try:
                location = await self._post(link.href, doc)
            except ServerRejected as exc:
                log.warning("subscription to %s refused: %s", resource, exc)
                continue
            if location:
                self._subscriptions[resource] = location
        for resource in sorted(set(self._subscriptions) - wanted):
            href = self._subscriptions.pop(resource)
            with contextlib.suppress(ServerRejected):
                await self._request("DELETE", href)
        self.status.subscriptions = len(self._subscriptions)

    async def _start_listener(self) -> None:
        app = web.Application(client_max_size=512 * 1024)
        app.router.add_post(NOTIFY_PATH, self._handle_notification)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.listener_host,
            self.config.listener_port,
            ssl_context=self.listener_ssl_context,
        )
        await site.start()
        self.listener_port = self._runner.addresses[0][1]

    async def _handle_notification(self, request: web.Request) -> web.Response:
        received = time.perf_counter()
        received_at = time.time() + self._offset
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        peer = lfdi_from_cert_der(der) if der else None
        allowed = {normalise_lfdi(x) for x in self.config.notifier_lfdis}
        if self._server_lfdi:
            allowed.add(self._server_lfdi)
        if peer is None or peer not in allowed:
            log.warning("notification from %s refused: not the utility server's certificate", peer)
            return web.Response(status=403)
        if request.content_type != CONTENT_TYPE:
            return web.Response(status=415)
        try:
            note = from_xml(await request.read(), r.Notification)
        except Sep2XmlError as exc:
            return web.Response(status=400, text=str(exc))
        assert isinstance(note, r.Notification)
        log.debug("notification for %s: %s", note.subscribedResource, type(note.Resource).__name__)
        self.status.notifications += 1
        self._note_contact()
        try:
            changed = self._apply_notification(note)
        except Exception as exc:  # acknowledged anyway (a retry would fail the same way): re-read by GET
            log.warning("notification not applied (%s); walking again", exc)
            self._request_walk()
            changed = False
        if changed:
            self.notification_latencies.append(time.perf_counter() - received)
            # read by on_schedule_change before its first await (so concurrent notifications cannot mix)
            self.notification_received_at = received_at
            try:
                await self._changed()
            finally:
                self.notification_received_at = None
        return web.Response(status=204)

    def _apply_notification(self, note: r.Notification) -> bool:
        """Feed what a Notification carries into the engine now; schedule GETs for what it lacks."""
        resource_path = _path(note.subscribedResource or "")
        doc = note.Resource
        if note.status != 0 or doc is None:
            self._request_walk()
            return False
        if isinstance(doc, r.DERControlList):
            state = self._program_with(lambda p: p.DERControlListLink, resource_path)
            if state is None:
                self._request_walk()
                return False
            state.notified += 1
            if (doc.results or 0) < (doc.all or 0):  # truncated by the subscription limit: fetch it all
                self._request_job(f"prog:{(state.doc.mRID or '').upper()}")
                return False
            self._sync_program(state, doc.DERControl)
            return True
        if isinstance(doc, r.DefaultDERControl):
            state = self._program_with(lambda p: p.DefaultDERControlLink, resource_path)
            if state is None:
                self._request_walk()
                return False
            state.notified += 1
            state.default = doc
            self._engine(state).set_program(self._core_program(state))
            return True
        if isinstance(doc, r.DERProgramList):
            if resource_path not in self._program_lists or (doc.results or 0) < (doc.all or 0):
                self._request_walk()
                return False
            changed = False
            listed = set()
            for program_doc in doc.DERProgram:
                mrid = (program_doc.mRID or "").upper()
                listed.add(mrid)
                state = self._programs.get(mrid)
                if state is None:  # a new program: its controls need GETs
                    self._request_job(f"derp:{resource_path}")
                    continue
                links_changed = any(
                    (getattr(state.doc, name) is None) != (getattr(program_doc, name) is None)
                    for name in ("DefaultDERControlLink", "DERControlListLink", "ActiveDERControlListLink")
                )
                state.doc = program_doc
                state.lists.add(resource_path)
                if links_changed:  # e.g. a DefaultDERControl appeared: read it (and subscribe to it)
                    self._request_job(f"prog:{mrid}")
                self._engine(state).set_program(self._core_program(state))
                changed = True
            for mrid, state in list(self._programs.items()):
                if resource_path in state.lists and mrid not in listed:
                    self._forget_program(mrid, resource_path)
                    changed = True
            return changed
        self._request_walk()  # FunctionSetAssignmentsList or anything else: walk again
        return False

    def _program_with(self, link_of: Callable[[r.DERProgram], Any], path: str) -> _ProgramState | None:
        for state in self._programs.values():
            link = link_of(state.doc)
            if link is not None and _path(link.href) == path:
                return state
        return None

    def _request_job(self, job: str) -> None:
        self._due[job] = 0.0
        self._wake.set()

    def _request_walk(self) -> None:
        self._request_job("walk")

    # ---------------------------------------------------------------------------- DER documents

    def _der_targets(self) -> list[tuple[r.DER, mapping.DeviceSnapshot]]:
        """Each device to its own DER (in device-name and DERList order) when the server provides enough
        DERs (2030.5 §10.10: the server creates them); else the site as one aggregated DER on the first
        (the GFEMS representation). A DER mapped to one device may have its own programs
        (:meth:`_der_program_lists`); CSIP-AUS reaches DERPrograms through the FSAs only."""
        if self._site is None or not self._der_hrefs or not self._site.ders:
            return []
        devices = sorted(self._site.ders, key=lambda d: d.device_id)
        if len(devices) <= len(self._der_hrefs):
            targets = list(zip(self._der_hrefs, devices, strict=False))
        else:
            targets = [(self._der_hrefs[0], mapping.aggregate_device(devices))]
        layout = tuple((der.href, device.device_id) for der, device in targets)
        if layout != self._der_layout:
            self._der_layout = layout
            log.info("DER documents: %s", ", ".join(f"{device} -> {href}" for href, device in layout))
            if len(devices) > len(self._der_hrefs) > 0 and len(devices) > 1:
                log.info("the server's DERList holds %d DER for %d devices: the site is reported as one "
                         "aggregated DER (the DNSP can declare %d)", len(self._der_hrefs), len(devices),
                         len(devices))  # fmt: skip
        return targets

    async def _put_der_documents(self) -> None:
        now = self.now()
        for der, device in self._der_targets():
            # DERCapability (the nameplate) when it changes; the settings in force, the status and the
            # availability every post interval: a server (and the CSIP-AUS demand response procedures,
            # DRG-01 / DRL-01 / DRD-01) reads the DERSettings a DER runs with while an instruction is in force
            docs: list[tuple[r.Link | None, Any, bool]] = [
                (der.DERCapabilityLink, mapping.der_capability(device), True),
                (der.DERSettingsLink, mapping.der_settings(device, now), False),
                (der.DERStatusLink, mapping.der_status(device, now), False),
                (der.DERAvailabilityLink, mapping.der_availability(device, now), False),
            ]
            for link, doc, only_on_change in docs:
                if link is None:
                    continue
                if only_on_change:
                    key = to_xml(doc)
                    if self._put_docs.get(link.href) == key:
                        continue
                try:
                    await self._put(link.href, doc)
                except ServerRejected as exc:
                    self._refused(f"{type(doc).__name__} {link.href}", exc)
                    if not only_on_change:
                        continue
                else:
                    self._forgive(f"{type(doc).__name__} {link.href}")
                if only_on_change:  # refused or accepted: the same document is not PUT again
                    self._put_docs[link.href] = key

    # --------------------------------------------------------------------------------- main loop

    async def _main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        attempts = 0
        while True:  # discovery + first walk, retried until it works (or registration fails)
            try:
                await self._discover()
                await self._walk()
                if self.config.mode == "subscribe":
                    await self._sync_subscriptions()
                break
            except RegistrationError as exc:
                self._failed = exc
                self.status.state = "registration_failed"
                self.status.last_error = str(exc)
                log.error("%s", exc)
                self._ready.set()
                raise
            except Exception as exc:  # network or unexpected: never give up, never crash
                if isinstance(exc, CommsError):
                    self._note_comms_error(exc)
                else:
                    log.exception("discovery failed unexpectedly")
                    self.status.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff(attempts)
                attempts += 1
                log.warning("discovery failed (%s); retrying in %.1f s", exc, delay)
                await self._sleep_or_contact(delay)
        self.status.state = "running"
        self._ready.set()
        self._wake.set()
        now = loop.time()
        for job in ("dcap", "time", "walk", *(f"derp:{h}" for h in self._program_lists)):
            self._due.setdefault(job, now + self._job_rate(job))
        self._due.setdefault("der_docs", now)
        while True:
            now = loop.time()
            for job, due in sorted(self._due.items(), key=lambda kv: kv[1]):
                if due > now:
                    continue
                one_shot = self._job_rate(job) == float("inf")
                if one_shot:  # taken off the schedule first: a request made while it runs runs it again
                    del self._due[job]
                try:
                    await self._run_job(job)
                    self._failures.pop(job, None)
                    if job in self._due and not one_shot:
                        self._due[job] = loop.time() + self._job_rate(job)
                except RegistrationError as exc:
                    self._failed = exc
                    self.status.state = "registration_failed"
                    self.status.last_error = str(exc)
                    log.error("%s", exc)
                    raise
                except Exception as exc:  # ServerRejected, CommsError, or a bug: retry the job later
                    if isinstance(exc, CommsError):
                        self._note_comms_error(exc)
                    elif not isinstance(exc, ClientError):
                        log.exception("%s failed unexpectedly", job)
                        self.status.last_error = f"{job}: {type(exc).__name__}: {exc}"
                    failures = self._failures.get(job, 0)
                    self._failures[job] = failures + 1
                    delay = min(self._backoff(failures), self._job_rate(job))
                    log.warning("%s failed (%s); retrying in %.1f s", job, exc, delay)
                    if one_shot:  # retried later, or at once if requested again meanwhile
                        self._due[job] = min(self._due.get(job, float("inf")), loop.time() + delay)
                    elif job in self._due:
                        self._due[job] = loop.time() + delay
            wait = min(self._due.values(), default=now + 60) - loop.time()
            self._wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout rather than wait_for, which can swallow a cancellation on Python 3.11.
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    def _job_rate(self, job: str) -> float:
        if job == "dcap":
            return self._rates.get("dcap", self.config.default_poll_rate)
        if job == "time":
            return self._rates.get("time", self.config.default_poll_rate)
        if job == "walk":
            return self._poll_rate(self._rates.get("fsa"))
        if job.startswith("derp:"):
            return self._poll_rate(self._rates.get(job))
        if job == "der_docs":
            return self.post_rate
        return float("inf")  # one-shot jobs (prog:<mRID>)

    async def _run_job(self, job: str) -> None:
        if job == "dcap":
            before = self.end_device.href if self.end_device else None
            lists_before = self._der_program_lists()
            await self._discover()
            if self.end_device is not None and self.end_device.href != before:
                await self._walk()
            elif self._der_program_lists() != lists_before:  # a DER gained (or lost) its own programs
                await self._walk(known_lists=False)
        elif job == "time":
            if self.dcap is not None and self.dcap.TimeLink is not None:
                await self._sync_time()
        elif job == "walk":
            await self._walk(known_lists=False)
            for list_href in self._program_lists:
                job_name = f"derp:{list_href}"
                self._due.setdefault(job_name, asyncio.get_running_loop().time() + self._job_rate(job_name))
        elif job.startswith("derp:"):
            list_href = job.removeprefix("derp:")
            if list_href in self._program_lists:
                await self._walk_program_list(list_href)
            else:
                self._due.pop(job, None)
        elif job.startswith("prog:"):
            state = self._programs.get(job.removeprefix("prog:"))
            if state is not None:
                await self._walk_program(state.doc, next(iter(state.lists)))
                await self._changed()
        elif job == "der_docs":
            await self._put_der_documents()
        if self.config.mode == "subscribe" and (
            job in ("walk", "dcap") or job.startswith(("derp:", "prog:"))
        ):
            await self._sync_subscriptions()

    async def _sleep_or_contact(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if another exchange with the server succeeds meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._contact.wait()

    # ------------------------------------------------------------------------------ outbox delivery

    async def _deliver_loop(self) -> None:
        await self._ready.wait()
        if self._failed is not None:
            return
        while True:
            entries = await self.outbox.peek(32)
            if not entries:
                self.outbox.changed.clear()
                if not await self.outbox.pending():
                    await self.outbox.changed.wait()
                continue
            for entry in entries:
                try:
                    await self._deliver(entry)
                except ServerRejected as exc:
                    self._refused(f"{entry.kind} {entry.target}", exc, f"outbox entry {entry.id}")
                    await self.outbox.reject(entry, str(exc))
                except Exception as exc:  # network, 5xx or a bug: keep the entry, back off, retry
                    if isinstance(exc, CommsError):
                        self._note_comms_error(exc)
                    else:
                        log.exception("delivery of outbox entry %d failed unexpectedly", entry.id)
                    await self.outbox.failed(entry, str(exc))
                    delay = self._backoff(entry.attempts)
                    log.warning(
                        "delivery of outbox entry %d failed (%s); retry in %.1f s", entry.id, exc, delay
                    )
                    await self._sleep_or_contact(delay)
                    break  # keep the order: retry this entry before any later one
                else:
                    await self.outbox.delivered(entry)

    async def _deliver(self, entry: OutboxEntry) -> None:
        if entry.kind == "response":
            target = entry.target or await self._default_response_list()
            await self._request("POST", target, entry.body)
        elif entry.kind == "readings":
            await self._deliver_readings(entry)
        else:
            raise ServerRejected("POST", entry.target, 0, f"unknown outbox kind {entry.kind!r}")

    async def _deliver_readings(self, entry: OutboxEntry) -> None:
        """POST one snapshot of a MirrorUsagePoint's readings; a refused batch is split, never dropped whole.

        The MirrorUsagePoint is created (POST to the MirrorUsagePointList) with these, its first readings.
        When the server refuses a batch, each MirrorMeterReading is tried alone: the accepted ones are
        kept, each refused one is recorded (once) with the server's Error. Raises ServerRejected only when
        nothing of the batch was accepted.
        """
        try:
            doc = from_xml(entry.body, r.MirrorMeterReadingList)
        except Sep2XmlError as exc:
            raise ServerRejected("POST", entry.target, 0, f"unreadable outbox entry: {exc}") from None
        assert isinstance(doc, r.MirrorMeterReadingList)
        items = list(doc.MirrorMeterReading)
        point = mapping.mirror_point(self.config.lfdi, entry.target, self.config.pen)
        href = self._mups.get(point.mrid)
        if href is None:
            href, items = await self._create_mup(point, items)
            if not items:
                return  # every reading went with the new MirrorUsagePoint
        try:
            await self._request("POST", href, entry.body if len(items) == len(doc.MirrorMeterReading) else
                                to_xml(self._reading_list(items)))  # fmt: skip
            return
        except ServerRejected as exc:
            if exc.status == 404:  # the MirrorUsagePoint vanished on the server: create it again
                self._mups = {m: h for m, h in self._mups.items() if h != href}
                href, items = await self._create_mup(point, items)
                if not items:
                    return
            elif len(items) == 1:
                raise
        accepted = 0
        last: ServerRejected | None = None
        for mmr in items:
            what = f"MirrorMeterReading {mmr.description or mmr.mRID} ({point.key})"
            try:
                await self._request("POST", href, to_xml(self._reading_list([mmr])))
            except ServerRejected as exc:
                self._refused(what, exc)
                last = exc
            else:
                accepted += 1
                self._forgive(what)
        if not accepted and last is not None:
            raise last

    @staticmethod
    def _reading_list(items: list[r.MirrorMeterReading]) -> r.MirrorMeterReadingList:
        return r.MirrorMeterReadingList(all=len(items), results=len(items), MirrorMeterReading=items)

    async def _create_mup(
        self, point: mapping.MirrorPoint, items: list[r.MirrorMeterReading]
    ) -> tuple[str, list[r.MirrorMeterReading]]:
        """POST the MirrorUsagePoint with its first readings; returns (its href, readings still to POST).

        If the server refuses it with all of them, it is tried with each single reading until one is
        accepted (the others are then POSTed to it). Raises ServerRejected if it is refused with every one.
        """
        if self.dcap is None or self.dcap.MirrorUsagePointListLink is None:
            raise ServerRejected("POST", "-", 0, "the server offers no MirrorUsagePointList")
        list_href = self.dcap.MirrorUsagePointListLink.href
        attempts = [(items, [])] + (
            [([m], [x for x in items if x is not m]) for m in items] if len(items) > 1 else []
        )
        error: ServerRejected | None = None
        for first, rest in attempts:
            try:
                location = await self._post(
                    list_href, mapping.mirror_usage_point(point, self.config.lfdi, first)
                )
            except ServerRejected as exc:
                error = exc
                if len(first) == 1 and len(items) > 1:
                    self._refused(
                        f"MirrorMeterReading {first[0].description or first[0].mRID} ({point.key})", exc
                    )
                continue
            if not location:
                raise CommsError("MirrorUsagePoint: the server gave no Location")
            self._forgive(f"MirrorUsagePoint {point.key}")
            self._mups[point.mrid] = location
            mup = await self._get_optional(location, r.MirrorUsagePoint)
            if mup is not None and mup.postRate:
                self._set_post_rate(mup.postRate)
            return location, rest
        assert error is not None
        self._refused(f"MirrorUsagePoint {point.key}", error)
        raise error

    def _refused(self, what: str, exc: ServerRejected, where: str = "") -> None:
        """Record a refusal; logged once per document (until it is accepted again), shown in the status."""
        text = str(exc)
        if self.status.refusals.get(what) != text:
            log.error("server refused %s%s: %s", what, f" ({where})" if where else "", text)
        self.status.refusals[what] = text
        while len(self.status.refusals) > 50:
            self.status.refusals.pop(next(iter(self.status.refusals)))

    def _forgive(self, what: str) -> None:
        self.status.refusals.pop(what, None)

    async def _default_response_list(self) -> str:
        """Where a Response without replyTo goes: the first ResponseSet's ResponseList."""
        if self.dcap is None or self.dcap.ResponseSetListLink is None:
            raise ServerRejected("POST", "-", 0, "no replyTo and the server offers no ResponseSetList")
        _, sets = await self._get_list(self.dcap.ResponseSetListLink.href, r.ResponseSetList, "ResponseSet")
        for rs in sets:
            if rs.ResponseListLink is not None:
                return rs.ResponseListLink.href
        raise ServerRejected("POST", "-", 0, "no replyTo and no ResponseSet has a ResponseList")
