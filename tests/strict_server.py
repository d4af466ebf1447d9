"""A stricter CSIP-AUS server for the gateway's tests: a mutual-TLS front in front of ours.

Issue 11 ("The gateway against a stricter server"): other CSIP-AUS servers refuse documents that
``derlink server`` accepts. :class:`StrictFront` terminates real mutual TLS on 127.0.0.1 with the lab's
server certificate, enforces the rules below itself (a 4xx with a 2030.5 ``Error`` body and nothing
forwarded), and forwards everything else to our server, which runs behind it in proxy mode
(``tls = false``, ``trusted_proxies = ["127.0.0.1"]``, the client certificate in ``X-Client-Cert``).
Like a server nobody here wrote, the front never sends derlink's ``X-Error-Detail`` header: the gateway
only gets the status and the ``Error``.

Rules (each one is something a real server does; the reference CSIP-AUS server does the first four):

* ``mup-without-readings``: a MirrorUsagePoint POSTed with no MirrorMeterReading is refused;
* ``reading-type-uom``: a MirrorMeterReading whose ReadingType has no ``uom`` (or ``uom`` 0, "not
  applicable") is refused, in a MirrorUsagePoint or in a reading list;
* ``unknown-mrid``: readings POSTed to ``/mup/{m}`` for a MirrorMeterReading mRID that this
  MirrorUsagePoint never declared, without a ReadingType to declare it, are refused;
* ``duplicate-registration``: a POST of an EndDevice whose lFDI is already registered (it is in the
  client's EndDeviceList) is refused (issue 11 item 3: the client finds its EndDevice in the list);
* ``refuse_uoms``: readings of these uoms are refused (a server that takes only some reading types);
  the whole document is refused, as a transactional server does.

``hide_end_device_once`` leaves the client's EndDevice out of the first EndDeviceList it reads: the
race in which the operator registers the device between the gateway's GET and its POST.

Every exchange is recorded in ``exchanges`` (method, path, status, the document's root element).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from lxml import etree

from sep2 import resources as r
from sep2.xml import CONTENT_TYPE, Sep2XmlError, from_xml, to_xml

INVALID_FORMAT, INVALID_VALUES = 0, 1


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int
    document: str | None  # root element of the request body (POST/PUT) or of the answer (GET)
    rule: str | None  # the strict rule that refused it, if the front refused it


def _root(body: bytes) -> str | None:
    if not body:
        return None
    try:
        return etree.QName(etree.fromstring(body)).localname
    except etree.XMLSyntaxError:
        return None


class Refused(Exception):
    def __init__(self, rule: str, status: int = 400, reason: int = INVALID_VALUES) -> None:
        super().__init__(rule)
        self.rule, self.status, self.reason = rule, status, reason


@dataclass
class StrictFront:
    backend: str  # "http://127.0.0.1:<port>" of our server in proxy mode
    ssl_context: ssl.SSLContext  # server context requiring client certificates
    refuse_uoms: set[int] = field(default_factory=set)
    hide_end_device_once: bool = False
    strict: bool = True  # False: a plain recording front (the client procedures' observer)
    # Hooks (method, path, body): ``before`` runs before the request is forwarded, ``after`` once it was
    # answered (with the status). The client test procedures act on the gateway's requests through them.
    before: Callable[[str, str, bytes], Awaitable[None]] | None = None
    after: Callable[[str, str, bytes, int], Awaitable[None]] | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    port: int = 0
    _mrids: dict[str, set[str]] = field(default_factory=dict)  # MUP path -> declared MMR mRIDs
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def refused(self, rule: str) -> list[Exchange]:
        return [x for x in self.exchanges if x.rule == rule]

    # ----------------------------------------------------------------------------------- handling

    async def _handle(self, request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return self._error(request, None, Refused("client-certificate", 403, INVALID_VALUES))
        cert = quote(ssl.DER_cert_to_PEM_cert(der))
        body = await request.read()
        try:
            if self.strict:
                await self._check(request, body, cert)
        except Refused as exc:
            return self._error(request, body, exc)
        if self.before is not None:
            await self.before(request.method, request.path, body)
        status, data, headers = await self._forward(request.method, request.path_qs, body, cert)
        hide = self.hide_end_device_once and request.method == "GET" and request.path == "/edev"
        if hide and status == 200:
            self.hide_end_device_once = False
            doc = from_xml(data, r.EndDeviceList)
            assert isinstance(doc, r.EndDeviceList)
            data = to_xml(r.EndDeviceList(href=doc.href, all=0, results=0, pollRate=doc.pollRate))
        if request.method == "POST" and status == 201 and request.path == "/mup":
            doc = from_xml(body, r.MirrorUsagePoint)
            location = headers.get("Location", "")
            self._mrids.setdefault(location, set()).update(
                (m.mRID or "").upper() for m in doc.MirrorMeterReading
            )
        if request.method == "POST" and status < 300 and request.path.startswith("/mup/"):
            doc = from_xml(body, r.MirrorMeterReadingList)
            self._mrids.setdefault(request.path, set()).update(
                (m.mRID or "").upper() for m in doc.MirrorMeterReading if m.ReadingType is not None
            )
        root = _root(body) if request.method in ("POST", "PUT") else _root(data)
        self.exchanges.append(Exchange(request.method, request.path, status, root, None))
        if self.after is not None:
            await self.after(request.method, request.path, body, status)
        out = {k: v for k, v in headers.items() if k in ("Content-Type", "Location", "Retry-After")}
        return web.Response(status=status, body=data, headers=out)

    def _error(self, request: web.Request, body: bytes | None, exc: Refused) -> web.Response:
        root = _root(body or b"")
        self.exchanges.append(Exchange(request.method, request.path, exc.status, root, exc.rule))
        return web.Response(
            status=exc.status, body=to_xml(r.Error(reasonCode=exc.reason)), content_type=CONTENT_TYPE
        )

    async def _forward(
        self, method: str, path_qs: str, body: bytes, cert: str
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self._session is not None
        headers = {"X-Client-Cert": cert, "Accept": CONTENT_TYPE}
        if body:
            headers["Content-Type"] = CONTENT_TYPE
        url = self.backend + path_qs
        async with self._session.request(method, url, data=body or None, headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    async def _check(self, request: web.Request, body: bytes, cert: str) -> None:
        if request.method != "POST":
            return
        path = request.path
        doc: Any = None
        try:
            if path == "/mup":
                doc = from_xml(body, r.MirrorUsagePoint)
            elif path.startswith("/mup/"):
                doc = from_xml(body, r.MirrorMeterReadingList)
            elif path == "/edev":
                doc = from_xml(body, r.EndDevice)
        except Sep2XmlError:
            raise Refused("schema", 400, INVALID_FORMAT) from None
        if isinstance(doc, r.MirrorUsagePoint):
            if not doc.MirrorMeterReading:
                raise Refused("mup-without-readings")
            self._check_readings(doc.MirrorMeterReading, None)
        elif isinstance(doc, r.MirrorMeterReadingList):
            self._check_readings(doc.MirrorMeterReading, self._mrids.get(path, set()))
        elif isinstance(doc, r.EndDevice):
            status, data, _ = await self._forward("GET", "/edev?s=0&l=255", b"", cert)
            listed = from_xml(data, r.EndDeviceList) if status == 200 else None
            if isinstance(listed, r.EndDeviceList) and any(
                (e.lFDI or "").upper() == (doc.lFDI or "").upper() for e in listed.EndDevice
            ):
                raise Refused("duplicate-registration")

    def _check_readings(self, items: list[r.MirrorMeterReading], declared: set[str] | None) -> None:
        for mmr in items:
            rt = mmr.ReadingType
            if rt is not None and not rt.uom:
                raise Refused("reading-type-uom")
            if rt is not None and rt.uom in self.refuse_uoms:
                raise Refused("refused-uom")
            if declared is not None and rt is None and (mmr.mRID or "").upper() not in declared:
                raise Refused("unknown-mrid")
