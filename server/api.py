"""The 2030.5 resource tree: URL layout, rendering of store rows as sep2 objects, and the handlers.

URL layout (every path below /edev/{e} is reached through the scoped site lookup)::

    /dcap  /tm  /edev  /edev/{e}  /edev/{e}/rg  /edev/{e}/cp
    /edev/{e}/fsa  /edev/{e}/fsa/{f}  /edev/{e}/fsa/{f}/derp
    /edev/{e}/derp/{p}  .../derc  .../derc/{c}  .../actderc  .../dderc
    /edev/{e}/der  /edev/{e}/der/{d}  /edev/{e}/der/{d}/{dercap|derg|ders|dera}
    /edev/{e}/der/{d}/derp  /edev/{e}/der/{d}/derp/{p}  .../derc  .../derc/{c}  .../actderc  .../dderc
    /edev/{e}/sub  /edev/{e}/sub/{s}
    /mup  /mup/{m}          /rsps  /rsps/1  /rsps/1/rsp  /rsps/1/rsp/{r}

FSA ``0`` holds the programs every site sees; FSA ``g`` holds the programs of group ``g``.
A DER's own DERProgramList (2030.5 §10.10 ``DER.AssociatedDERProgramListLink``: "DERPrograms having the
DERControl(s) for this DER") holds the programs with controls or defaults for that DER alone (target
``d:<der id>``); the DER links it only when it holds one, so a site that never targets a DER (every
CSIP-AUS site) publishes exactly what it did before.
Handlers get the request scope from ``request[SCOPE]`` (set by the middleware in ``server.app``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from sep2 import resources as r
from sep2.mrid import derived_mrid
from sep2.nmi import NmiError, validate_nmi
from sep2.time import time_resource
from sep2.xml import Sep2XmlError, from_xml, to_xml
from server.config import ServerConfig
from server.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from server.limits import MAX_ID, MAX_PAGE_START, path_id, query_int, query_time
from server.netpolicy import TargetPolicy
from server.store import (
    DER_DOCUMENT_TYPES,
    Page,
    RequestScope,
    SiteView,
    Store,
    control_base_from_json,
    event_status,
)

SEP_XML = "application/sep+xml"
SCOPE = web.RequestKey("scope", RequestScope)
CACHE_UNTIL = web.ResponseKey("cache_until", float)
RESPONSE_SET_ID = 1
LIST_KINDS = {"derc", "actderc"}


def xml_response(obj: Any, *, status: int = 200, cache_until: float | None = None) -> web.Response:
    response = web.Response(body=to_xml(obj), status=status, content_type=SEP_XML)
    response[CACHE_UNTIL] = cache_until if cache_until is not None else float("inf")
    return response


def created(location: str) -> web.Response:
    return web.Response(status=201, headers={"Location": location})


def no_content(location: str | None = None) -> web.Response:
    return web.Response(status=204, headers={"Location": location} if location else None)


def parse_page(request: web.Request, max_limit: int) -> Page:
    """``s`` start index, ``a`` after-time, ``l`` limit (2030.5 default 1); bounds in server.limits."""
    query = request.query
    return Page(
        start=query_int(query, "s", 0, MAX_PAGE_START),
        limit=min(query_int(query, "l", 1, MAX_ID), max_limit),
        after=query_time(query, "a"),
    )


async def read_document(request: web.Request, expected: Any, max_bytes: int) -> Any:
    """The request body decoded as ``expected``; content type and size checked first."""
    if request.content_type != SEP_XML:
        raise UnsupportedMediaType(f"Content-Type must be {SEP_XML}, got {request.content_type!r}")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body of {request.content_length} bytes exceeds the limit of {max_bytes}")
    body = await request.read()
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        return from_xml(body, expected, max_bytes=max_bytes)
    except Sep2XmlError as exc:
        raise BadRequest(str(exc), reason_code=0) from None


def _int(request: web.Request, name: str) -> int:
    return path_id(request.match_info[name], name)


# ----------------------------------------------------------------------------------------- rendering


class Renderer:
    """Builds sep2 objects for a scope. Shared by the GET handlers and notification delivery."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config

    def der_control(
        self, site_id: int, program_id: int, row: Any, now: int, *, program_href: str | None = None
    ) -> r.DERControl:
        status, status_time = event_status(row, now)
        program_href = program_href or f"/edev/{site_id}/derp/{program_id}"
        return r.DERControl(
            href=f"{program_href}/derc/{row.id}",
            replyTo=f"/rsps/{RESPONSE_SET_ID}/rsp",
            responseRequired=row.response_required,
            mRID=row.mrid,
            description=row.description,
            version=row.version % 65536,
            creationTime=row.creation_time,
            EventStatus=r.EventStatus(
                currentStatus=status, dateTime=status_time, potentiallySuperseded=False
            ),
            interval=r.DateTimeInterval(start=row.start, duration=row.duration),
            randomizeDuration=row.randomize_duration,
            randomizeStart=row.randomize_start,
            DERControlBase=control_base_from_json(row.base),
        )

    async def control_list(
        self, view: SiteView, program_id: int, page: Page, *, active: bool, limit_override: int | None = None
    ) -> tuple[r.DERControlList, float]:
        if limit_override is not None:
            page = Page(start=0, limit=limit_override)
        total, rows, next_change = await self.store.program_controls(
            view, program_id, page, active_only=active
        )
        now = self.store.clock()
        site_id = view.site.id
        kind = "actderc" if active else "derc"
        program_href = view.program_href(program_id)
        doc = r.DERControlList(
            href=f"{program_href}/{kind}",
            subscribable=1,
            all=total,
            results=len(rows),
            DERControl=[
                self.der_control(site_id, program_id, row, now, program_href=program_href) for row in rows
            ],
        )
        return doc, float(next_change) if next_change is not None else float("inf")

    async def default_control(self, view: SiteView, program_id: int) -> r.DefaultDERControl:
        row = await self.store.effective_default(view, program_id)
        return r.DefaultDERControl(
            href=f"{view.program_href(program_id)}/dderc",
            subscribable=1,
            mRID=row.mrid,
            description=row.description,
            version=row.version % 65536,
            DERControlBase=control_base_from_json(row.base),
            setGradW=row.set_grad_w,
        )

    def program(self, view: SiteView, row: Any) -> r.DERProgram:
        base = view.program_href(row.id)
        return r.DERProgram(
            href=base,
            subscribable=1,
            # the DER's own program is another resource than the site's: its own (stable) mRID
            mRID=row.mrid
            if view.der_id is None
            else derived_mrid(self.store.pen, "derp", row.id, view.der_id),
            description=row.description,
            version=row.version % 65536,
            ActiveDERControlListLink=r.ListLink(href=f"{base}/actderc"),
            DefaultDERControlLink=r.Link(href=f"{base}/dderc"),  # every program has one (issue 11 item 8)
            DERControlListLink=r.ListLink(href=f"{base}/derc"),
            primacy=row.primacy,
        )

    async def program_list(self, view: SiteView, fsa_key: int, page: Page) -> r.DERProgramList:
        if fsa_key not in view.fsa_keys():
            raise NotFound(f"no FunctionSetAssignments {fsa_key} for EndDevice {view.site.id}")
        progs = [p for p in view.programs if (p.group_id or 0) == fsa_key]
        chosen = progs[page.start : page.start + page.limit]
        return r.DERProgramList(
            href=f"/edev/{view.site.id}/fsa/{fsa_key}/derp",
            subscribable=1,
            all=len(progs),
            results=len(chosen),
            pollRate=await self.store.rate(view, "derp", self.config.poll_rate),
            DERProgram=[self.program(view, p) for p in chosen],
        )

    async def der_program_list(self, view: SiteView, page: Page) -> r.DERProgramList:
        """A DER's own DERProgramList (``view`` from ``Store.der_view``)."""
        chosen = view.programs[page.start : page.start + page.limit]
        return r.DERProgramList(
            href=f"/edev/{view.site.id}/der/{view.der_id}/derp",
            subscribable=1,
            all=len(view.programs),
            results=len(chosen),
            pollRate=await self.store.rate(view, "derp", self.config.poll_rate),
            DERProgram=[self.program(view, p) for p in chosen],
        )

    @staticmethod
    def der(site_id: int, der_id: int, programs: int = 0) -> r.DER:
        """A DER; it links its own DERProgramList only when that holds a program."""
        base = f"/edev/{site_id}/der/{der_id}"
        return r.DER(
            href=base,
            AssociatedDERProgramListLink=r.ListLink(href=f"{base}/derp", all=programs) if programs else None,
            DERAvailabilityLink=r.Link(href=f"{base}/dera"),
            DERCapabilityLink=r.Link(href=f"{base}/dercap"),
            DERSettingsLink=r.Link(href=f"{base}/derg"),
            DERStatusLink=r.Link(href=f"{base}/ders"),
        )

    def fsa(self, view: SiteView, fsa_key: int, names: dict[int, str]) -> r.FunctionSetAssignments:
        count = sum(1 for p in view.programs if (p.group_id or 0) == fsa_key)
        return r.FunctionSetAssignments(
            href=f"/edev/{view.site.id}/fsa/{fsa_key}",
            subscribable=1,
            DERProgramListLink=r.ListLink(href=f"/edev/{view.site.id}/fsa/{fsa_key}/derp", all=count),
            TimeLink=r.Link(href="/tm"),
            mRID=derived_mrid(self.store.pen, "fsa", fsa_key),
            description=(names.get(fsa_key) or "All sites")[:32],
            version=0,
        )

    async def fsa_list(self, view: SiteView, page: Page) -> r.FunctionSetAssignmentsList:
        keys = view.fsa_keys()
        chosen = keys[page.start : page.start + page.limit]
        names = await self.store.group_names([k for k in chosen if k])
        return r.FunctionSetAssignmentsList(
            href=f"/edev/{view.site.id}/fsa",
            subscribable=1,
            all=len(keys),
            results=len(chosen),
            pollRate=await self.store.rate(view, "fsa", self.config.poll_rate),
            FunctionSetAssignments=[self.fsa(view, k, names) for k in chosen],
        )

    def end_device(self, row: Any, post_rate: int | None = None) -> r.EndDevice:
        base = f"/edev/{row.id}"
        return r.EndDevice(
            href=base,
            subscribable=0,
            DERListLink=r.ListLink(href=f"{base}/der"),
            deviceCategory=row.device_category,
            lFDI=row.lfdi,
            sFDI=row.sfdi,
            changedTime=row.changed_time,
            enabled=row.enabled,
            FunctionSetAssignmentsListLink=r.ListLink(href=f"{base}/fsa"),
            postRate=post_rate,
            RegistrationLink=r.Link(href=f"{base}/rg"),
            SubscriptionListLink=r.ListLink(href=f"{base}/sub"),
            ConnectionPointLink=r.Link(href=f"{base}/cp"),
        )

    async def end_device_list(self, scope: RequestScope, page: Page, targets: Any) -> r.EndDeviceList:
        total, rows = await self.store.list_sites(scope, page)
        return r.EndDeviceList(
            href="/edev",
            subscribable=1,
            all=total,
            results=len(rows),
            pollRate=await self.store.rate(targets, "edev", self.config.poll_rate),
            EndDevice=[self.end_device(row) for row in rows],
        )

    async def subscribed_resource(self, sub: Any, scope: RequestScope) -> Any:
        """The current state of what a subscription watches, honouring its ``limit``."""
        page = Page(start=0, limit=max(1, sub.limit))
        if sub.kind == "edev":  # with the pollRate the client sees on GET (a site's own rate included)
            return await self.end_device_list(scope, page, await self.store.client_targets(scope))
        if sub.kind in PER_DER_SUBSCRIPTIONS:  # one DER's own lists: the DER id is in fsa_key
            view = await self.store.der_view(scope, sub.site_id, sub.fsa_key)
            kind = sub.kind[:-1]
            if kind == "derp":
                return await self.der_program_list(view, page)
            self.store.program_row(view, sub.program_id)
            if kind == "dderc":
                return await self.default_control(view, sub.program_id)
            doc, _ = await self.control_list(view, sub.program_id, page, active=kind == "actderc")
            return doc
        view = await self.store.site_view(scope, sub.site_id)
        if sub.kind == "fsa":
            return await self.fsa_list(view, page)
        if sub.kind == "derp":
            return await self.program_list(view, sub.fsa_key, page)
        if sub.kind == "dderc":
            return await self.default_control(view, sub.program_id)
        doc, _ = await self.control_list(view, sub.program_id, page, active=sub.kind == "actderc")
        return doc


SUBSCRIBABLE_PATHS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/edev$"), "edev"),
    (re.compile(r"^/edev/(?P<e>\d+)/fsa$"), "fsa"),
    (re.compile(r"^/edev/(?P<e>\d+)/fsa/(?P<f>\d+)/derp$"), "derp"),
    (re.compile(r"^/edev/(?P<e>\d+)/derp/(?P<p>\d+)/derc$"), "derc"),
    (re.compile(r"^/edev/(?P<e>\d+)/derp/(?P<p>\d+)/actderc$"), "actderc"),
    (re.compile(r"^/edev/(?P<e>\d+)/derp/(?P<p>\d+)/dderc$"), "dderc"),
    # a DER's own lists (kind + "d"; the DER id travels as the fsa key)
    (re.compile(r"^/edev/(?P<e>\d+)/der/(?P<f>\d+)/derp$"), "derpd"),
    (re.compile(r"^/edev/(?P<e>\d+)/der/(?P<f>\d+)/derp/(?P<p>\d+)/derc$"), "dercd"),
    (re.compile(r"^/edev/(?P<e>\d+)/der/(?P<f>\d+)/derp/(?P<p>\d+)/actderc$"), "actdercd"),
    (re.compile(r"^/edev/(?P<e>\d+)/der/(?P<f>\d+)/derp/(?P<p>\d+)/dderc$"), "ddercd"),
]
PER_DER_SUBSCRIPTIONS = frozenset(kind for _, kind in SUBSCRIBABLE_PATHS[-4:])


def parse_subscribed_resource(href: str) -> tuple[str, int | None, int | None, int | None]:
    """(kind, site id, program id, fsa key, or DER id for a DER's own lists) of a subscribable href;
    BadRequest otherwise."""
    path = urlsplit(href).path if "://" in href else href.split("?", 1)[0]
    for pattern, kind in SUBSCRIBABLE_PATHS:
        match = pattern.match(path)
        if match:
            groups = match.groupdict()
            try:
                as_int = {k: path_id(v, k) for k, v in groups.items()}
            except NotFound:
                raise BadRequest(f"Subscription.subscribedResource: no such resource {href[:80]!r}") from None
            return kind, as_int.get("e"), as_int.get("p"), as_int.get("f")
    raise BadRequest(f"Subscription.subscribedResource: {href!r} is not a subscribable list on this server")


# ------------------------------------------------------------------------------------------ handlers


class Handlers:
    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.render = Renderer(store, config)
        self.target_policy = TargetPolicy.from_config(config)  # create_app shares it with the sender

    def page(self, request: web.Request) -> Page:
        return parse_page(request, self.config.max_list_limit)

    async def body(self, request: web.Request, expected: Any) -> Any:
        return await read_document(request, expected, self.config.max_body_bytes)

    async def view(self, request: web.Request) -> SiteView:
        """The site's view; under /edev/{e}/der/{d}/derp the DER's own (``Store.der_view``)."""
        if "d" in request.match_info:
            return await self.store.der_view(request[SCOPE], _int(request, "e"), _int(request, "d"))
        return await self.store.site_view(request[SCOPE], _int(request, "e"))

    # -- client level

    async def dcap(self, request: web.Request) -> web.Response:
        scope: RequestScope = request[SCOPE]
        targets = await self.store.client_targets(scope)
        counts = await self.store.client_counts(scope)
        return xml_response(
            r.DeviceCapability(
                href="/dcap",
                pollRate=await self.store.rate(targets, "dcap", self.config.poll_rate),
                ResponseSetListLink=r.ListLink(href="/rsps", all=1),
                TimeLink=r.Link(href="/tm"),
                EndDeviceListLink=r.ListLink(href="/edev", all=counts["edev"]),
                MirrorUsagePointListLink=r.ListLink(href="/mup", all=counts["mup"]),
            )
        )

    async def time(self, request: web.Request) -> web.Response:
        targets = await self.store.client_targets(request[SCOPE])
        rate = await self.store.rate(targets, "tm", self.config.poll_rate)
        response = xml_response(time_resource(self.store.clock(), href="/tm", poll_rate=rate))
        response[CACHE_UNTIL] = 0.0
        return response

    async def edev_list(self, request: web.Request) -> web.Response:
        scope = request[SCOPE]
        targets = await self.store.client_targets(scope)
        return xml_response(await self.render.end_device_list(scope, self.page(request), targets))

    async def edev_create(self, request: web.Request) -> web.Response:
        doc: r.EndDevice = await self.body(request, r.EndDevice)
        site_id, _created = await self.store.register_site(
            request[SCOPE],
            lfdi=doc.lFDI,
            sfdi=doc.sFDI,
            device_category=doc.deviceCategory,
            inband_allowed=self.config.inband_registration,
        )
        return created(f"/edev/{site_id}")

    async def edev(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        post_rate = await self.store.rate(view, "post", self.config.post_rate)
        return xml_response(self.render.end_device(view.site, post_rate))

    async def registration(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        if view.site.pin is None:
            raise NotFound(f"EndDevice {view.site.id} has no Registration (no PIN was issued)")
        return xml_response(
            r.Registration(
                href=f"/edev/{view.site.id}/rg",
                pollRate=await self.store.rate(view, "rg", self.config.poll_rate),
                dateTimeRegistered=view.site.registered_time,
                pIN=view.site.pin,
            )
        )

    async def connection_point(self, request: web.Request) -> web.Response:
        site = await self.store.site(request[SCOPE], _int(request, "e"))
        if site.nmi is None:
            raise NotFound(f"EndDevice {site.id} has no ConnectionPoint yet")
        return xml_response(r.ConnectionPoint(href=f"/edev/{site.id}/cp", connectionPointId=site.nmi))

    async def connection_point_put(self, request: web.Request) -> web.Response:
        doc: r.ConnectionPoint = await self.body(request, r.ConnectionPoint)
        site_id = _int(request, "e")
        try:  # AEMO NMI format and checksum (CSIP-AUS ConnectionPoint: connectionPointId is the NMI)
            nmi = validate_nmi(doc.connectionPointId or "")
        except NmiError as exc:
            raise BadRequest(f"ConnectionPoint/connectionPointId: {exc}") from None
        cleaned = nmi.with_checksum if nmi.checksum_given else nmi.nmi
        first = (await self.store.site(request[SCOPE], site_id)).nmi is None
        await self.store.set_connection_point(request[SCOPE], site_id, cleaned)
        if request.method == "POST" or first:  # HTTP PUT: 201 + Location when it created the resource
            return created(f"/edev/{site_id}/cp")
        return no_content(f"/edev/{site_id}/cp")  # replaced: 204, still naming it (clients resolve it)

    # -- function set assignments, programs, controls

    async def fsa_list(self, request: web.Request) -> web.Response:
        return xml_response(await self.render.fsa_list(await self.view(request), self.page(request)))

    async def fsa(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        key = _int(request, "f")
        if key not in view.fsa_keys():
            raise NotFound(f"no FunctionSetAssignments {key} for EndDevice {view.site.id}")
        names = await self.store.group_names([key] if key else [])
        return xml_response(self.render.fsa(view, key, names))

    async def derp_list(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        return xml_response(await self.render.program_list(view, _int(request, "f"), self.page(request)))

    async def derp(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        program_id = _int(request, "p")
        row = self.store.program_row(view, program_id)
        return xml_response(self.render.program(view, row))

    async def derc_list(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        doc, until = await self.render.control_list(
            view, _int(request, "p"), self.page(request), active=False
        )
        return xml_response(doc, cache_until=until)

    async def actderc_list(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        doc, until = await self.render.control_list(view, _int(request, "p"), self.page(request), active=True)
        return xml_response(doc, cache_until=until)

    async def derc(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        program_id = _int(request, "p")
        row = await self.store.control(view, program_id, _int(request, "c"))
        now = self.store.clock()
        # Cached only until the event's status can change with time.
        until = row.start if now < row.start else row.start + row.duration
        doc = self.render.der_control(
            view.site.id, program_id, row, now, program_href=view.program_href(program_id)
        )
        return xml_response(doc, cache_until=until)

    async def dderc(self, request: web.Request) -> web.Response:
        view = await self.view(request)
        return xml_response(await self.render.default_control(view, _int(request, "p")))

    # -- DER

    async def der_list(self, request: web.Request) -> web.Response:
        scope = request[SCOPE]
        site_id = _int(request, "e")
        page = self.page(request)
        total, ids = await self.store.der_ids(scope, site_id, page)
        view = await self.store.site_view(scope, site_id)
        held = await self.store.der_programs(view, ids)
        return xml_response(
            r.DERList(
                href=f"/edev/{site_id}/der",
                all=total,
                results=len(ids),
                pollRate=await self.store.rate(view, "der", self.config.poll_rate),
                DER=[self.render.der(site_id, der_id, len(held[der_id])) for der_id in ids],
            )
        )

    async def der(self, request: web.Request) -> web.Response:
        site_id, der_id = _int(request, "e"), _int(request, "d")
        scope = request[SCOPE]
        await self.store.der_exists(scope, site_id, der_id)
        held = await self.store.der_programs(await self.store.site_view(scope, site_id), [der_id])
        return xml_response(self.render.der(site_id, der_id, len(held[der_id])))

    async def der_derp_list(self, request: web.Request) -> web.Response:
        return xml_response(await self.render.der_program_list(await self.view(request), self.page(request)))

    async def der_document(self, request: web.Request) -> web.Response:
        site_id, der_id, kind = _int(request, "e"), _int(request, "d"), request.match_info["kind"]
        doc = await self.store.der_document(request[SCOPE], site_id, der_id, kind)
        if doc is None:
            raise NotFound(f"no {DER_DOCUMENT_TYPES[kind].__name__} has been reported for DER {der_id}")
        doc.href = request.path
        return xml_response(doc)

    async def der_document_put(self, request: web.Request) -> web.Response:
        site_id, der_id, kind = _int(request, "e"), _int(request, "d"), request.match_info["kind"]
        doc = await self.body(request, DER_DOCUMENT_TYPES[kind])
        await self.store.put_der_document(request[SCOPE], site_id, der_id, kind, doc)
        return no_content()

    # -- subscriptions

    def _subscription(self, site_id: int, row: Any) -> r.Subscription:
        return r.Subscription(
            href=f"/edev/{site_id}/sub/{row.id}",
            subscribedResource=row.subscribed_href,
            encoding=0,
            level=row.level,
            limit=row.limit,
            notificationURI=row.notification_uri,
        )

    async def sub_list(self, request: web.Request) -> web.Response:
        site_id = _int(request, "e")
        scope = request[SCOPE]
        total, rows = await self.store.list_subscriptions(scope, site_id, self.page(request))
        view = await self.store.site_view(scope, site_id)
        return xml_response(
            r.SubscriptionList(
                href=f"/edev/{site_id}/sub",
                all=total,
                results=len(rows),
                pollRate=await self.store.rate(view, "sub", self.config.poll_rate),
                Subscription=[self._subscription(site_id, row) for row in rows],
            )
        )

    async def sub_create(self, request: web.Request) -> web.Response:
        site_id = _int(request, "e")
        doc: r.Subscription = await self.body(request, r.Subscription)
        kind, target_site, program_id, fsa_key = parse_subscribed_resource(doc.subscribedResource)
        if kind != "edev" and target_site != site_id:
            raise BadRequest("Subscription.subscribedResource: must be a resource of this EndDevice")
        await self.target_policy.check_subscription(doc.notificationURI, request[SCOPE].lfdi)
        if doc.encoding != 0:
            raise BadRequest("Subscription.encoding: only 0 (application/sep+xml) is supported")
        if not doc.limit or doc.limit < 1:
            raise BadRequest("Subscription.limit: must be at least 1")
        scope = request[SCOPE]
        # The watched resource must exist for this client now.
        if kind in PER_DER_SUBSCRIPTIONS:  # fsa_key is the DER id: the DER's own view must hold it
            view = await self.store.der_view(scope, site_id, fsa_key)  # type: ignore[arg-type]
        else:
            view = await self.store.site_view(scope, site_id)
        if program_id is not None:
            self.store.program_row(view, program_id)
        if fsa_key is not None and kind not in PER_DER_SUBSCRIPTIONS and fsa_key not in view.fsa_keys():
            raise BadRequest(f"Subscription.subscribedResource: no FunctionSetAssignments {fsa_key}")
        sub_id = await self.store.create_subscription(
            scope,
            site_id,
            kind=kind,
            program_id=program_id,
            fsa_key=fsa_key,
            subscribed_href=doc.subscribedResource,
            notification_uri=doc.notificationURI,
            limit=min(doc.limit, self.config.max_list_limit),
            level=doc.level,
        )
        return created(f"/edev/{site_id}/sub/{sub_id}")

    async def sub(self, request: web.Request) -> web.Response:
        site_id = _int(request, "e")
        row = await self.store.subscription(request[SCOPE], site_id, _int(request, "s"))
        return xml_response(self._subscription(site_id, row))

    async def sub_delete(self, request: web.Request) -> web.Response:
        await self.store.delete_subscription(request[SCOPE], _int(request, "e"), _int(request, "s"))
        return no_content()

    # -- telemetry

    async def _mup(self, row: Any, mmrs: list[Any]) -> r.MirrorUsagePoint:
        return r.MirrorUsagePoint(
            href=f"/mup/{row.id}",
            mRID=row.mrid,
            description=row.description,
            version=row.version,
            roleFlags=row.role_flags,
            serviceCategoryKind=row.service_category,
            status=row.status,
            deviceLFDI=row.lfdi,
            MirrorMeterReading=[
                r.MirrorMeterReading(
                    mRID=m.mrid,
                    description=m.description,
                    lastUpdateTime=m.last_update,
                    ReadingType=from_xml(m.reading_type.encode(), r.ReadingType),
                )
                for m in mmrs
            ],
            postRate=None,
        )

    async def mup_list(self, request: web.Request) -> web.Response:
        scope = request[SCOPE]
        total, rows = await self.store.list_mups(scope, self.page(request))
        targets = await self.store.client_targets(scope)
        items = []
        for row in rows:
            item = await self._mup(row, [])
            item.postRate = await self.store.rate(targets, "post", self.config.post_rate)
            items.append(item)
        return xml_response(
            r.MirrorUsagePointList(
                href="/mup",
                all=total,
                results=len(rows),
                pollRate=await self.store.rate(targets, "mup", self.config.poll_rate),
                MirrorUsagePoint=items,
            )
        )

    async def mup_create(self, request: web.Request) -> web.Response:
        doc: r.MirrorUsagePoint = await self.body(request, r.MirrorUsagePoint)
        mup_id, was_created = await self.store.upsert_mup(request[SCOPE], doc)
        return created(f"/mup/{mup_id}") if was_created else no_content(f"/mup/{mup_id}")

    async def mup(self, request: web.Request) -> web.Response:
        scope = request[SCOPE]
        row, mmrs = await self.store.mup(scope, _int(request, "m"))
        doc = await self._mup(row, mmrs)
        doc.postRate = await self.store.rate(
            await self.store.client_targets(scope), "post", self.config.post_rate
        )
        return xml_response(doc)

    async def mup_post(self, request: web.Request) -> web.Response:
        doc = await self.body(request, (r.MirrorMeterReading, r.MirrorMeterReadingList))
        items = doc.MirrorMeterReading if isinstance(doc, r.MirrorMeterReadingList) else [doc]
        mup_id = _int(request, "m")
        results = await self.store.post_meter_readings(request[SCOPE], mup_id, items)
        if any(new for _, new in results):
            return created(f"/mup/{mup_id}")
        return no_content(f"/mup/{mup_id}")

    async def mup_delete(self, request: web.Request) -> web.Response:
        await self.store.delete_mup(request[SCOPE], _int(request, "m"))
        return no_content()

    # -- responses

    def _check_response_set(self, request: web.Request) -> None:
        if _int(request, "rs") != RESPONSE_SET_ID:
            raise NotFound(f"no ResponseSet {request.match_info['rs']}")

    def _response_set(self, total: int) -> r.ResponseSet:
        return r.ResponseSet(
            href=f"/rsps/{RESPONSE_SET_ID}",
            mRID=derived_mrid(self.store.pen, "rsps", RESPONSE_SET_ID),
            description="DER control responses",
            ResponseListLink=r.ListLink(href=f"/rsps/{RESPONSE_SET_ID}/rsp", all=total),
        )

    async def rsps_list(self, request: web.Request) -> web.Response:
        scope = request[SCOPE]
        page = self.page(request)
        total, _ = await self.store.list_responses(scope, Page(0, 0))
        targets = await self.store.client_targets(scope)
        items = [self._response_set(total)][page.start : page.start + page.limit]
        return xml_response(
            r.ResponseSetList(
                href="/rsps",
                all=1,
                results=len(items),
                pollRate=await self.store.rate(targets, "rsps", self.config.poll_rate),
                ResponseSet=items,
            )
        )

    async def rsps(self, request: web.Request) -> web.Response:
        self._check_response_set(request)
        total, _ = await self.store.list_responses(request[SCOPE], Page(0, 0))
        return xml_response(self._response_set(total))

    @staticmethod
    def _response(row: Any) -> r.Response:
        return r.Response(
            href=f"/rsps/{RESPONSE_SET_ID}/rsp/{row.id}",
            createdDateTime=row.created_time,
            endDeviceLFDI=row.lfdi,
            status=row.status,
            subject=row.subject,
        )

    async def rsp_list(self, request: web.Request) -> web.Response:
        self._check_response_set(request)
        total, rows = await self.store.list_responses(request[SCOPE], self.page(request))
        return xml_response(
            r.ResponseList(
                href=f"/rsps/{RESPONSE_SET_ID}/rsp",
                all=total,
                results=len(rows),
                Response=[self._response(row) for row in rows],
            )
        )

    async def rsp_create(self, request: web.Request) -> web.Response:
        self._check_response_set(request)
        doc = await self.body(request, r.Response)
        response_id = await self.store.post_response(request[SCOPE], doc)
        return created(f"/rsps/{RESPONSE_SET_ID}/rsp/{response_id}")

    async def rsp(self, request: web.Request) -> web.Response:
        self._check_response_set(request)
        return xml_response(self._response(await self.store.response(request[SCOPE], _int(request, "r"))))

    # -- routing

    def add_routes(self, app: web.Application) -> None:
        """Each path gets exactly the methods 2030.5 defines for it; aiohttp answers 405 to the rest."""
        n = r"{%s:\d+}"
        e, f, p, c, d = n % "e", n % "f", n % "p", n % "c", n % "d"
        table: list[tuple[str, dict[str, Any]]] = [
            ("/dcap", {"GET": self.dcap}),
            ("/tm", {"GET": self.time}),
            ("/edev", {"GET": self.edev_list, "POST": self.edev_create}),
            (f"/edev/{e}", {"GET": self.edev}),
            (f"/edev/{e}/rg", {"GET": self.registration}),
            (
                f"/edev/{e}/cp",
                {
                    "GET": self.connection_point,
                    "PUT": self.connection_point_put,
                    "POST": self.connection_point_put,
                },
            ),
            (f"/edev/{e}/fsa", {"GET": self.fsa_list}),
            (f"/edev/{e}/fsa/{f}", {"GET": self.fsa}),
            (f"/edev/{e}/fsa/{f}/derp", {"GET": self.derp_list}),
            (f"/edev/{e}/derp/{p}", {"GET": self.derp}),
            (f"/edev/{e}/derp/{p}/derc", {"GET": self.derc_list}),
            (f"/edev/{e}/derp/{p}/derc/{c}", {"GET": self.derc}),
            (f"/edev/{e}/derp/{p}/actderc", {"GET": self.actderc_list}),
            (f"/edev/{e}/derp/{p}/dderc", {"GET": self.dderc}),
            (f"/edev/{e}/der", {"GET": self.der_list}),
            (f"/edev/{e}/der/{d}", {"GET": self.der}),
            (f"/edev/{e}/der/{d}/derp", {"GET": self.der_derp_list}),
            (f"/edev/{e}/der/{d}/derp/{p}", {"GET": self.derp}),
            (f"/edev/{e}/der/{d}/derp/{p}/derc", {"GET": self.derc_list}),
            (f"/edev/{e}/der/{d}/derp/{p}/derc/{c}", {"GET": self.derc}),
            (f"/edev/{e}/der/{d}/derp/{p}/actderc", {"GET": self.actderc_list}),
            (f"/edev/{e}/der/{d}/derp/{p}/dderc", {"GET": self.dderc}),
            (
                f"/edev/{e}/der/{d}/{{kind:dercap|derg|ders|dera}}",
                {"GET": self.der_document, "PUT": self.der_document_put},
            ),
            (f"/edev/{e}/sub", {"GET": self.sub_list, "POST": self.sub_create}),
            (f"/edev/{e}/sub/{n % 's'}", {"GET": self.sub, "DELETE": self.sub_delete}),
            ("/mup", {"GET": self.mup_list, "POST": self.mup_create}),
            (f"/mup/{n % 'm'}", {"GET": self.mup, "POST": self.mup_post, "DELETE": self.mup_delete}),
            ("/rsps", {"GET": self.rsps_list}),
            (f"/rsps/{n % 'rs'}", {"GET": self.rsps}),
            (f"/rsps/{n % 'rs'}/rsp", {"GET": self.rsp_list, "POST": self.rsp_create}),
            (f"/rsps/{n % 'rs'}/rsp/{n % 'r'}", {"GET": self.rsp}),
        ]
        for path, methods in table:
            resource = app.router.add_resource(path)
            for method, handler in methods.items():
                resource.add_route(method, handler)
                if method == "GET":
                    resource.add_route("HEAD", handler)
