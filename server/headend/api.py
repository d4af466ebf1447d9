"""The head-end operator API: JSON over HTTP on its own listener (loopback by default).

* Authentication: ``Authorization: Bearer <token>``; tokens come from the server config with a role,
  ``operator`` (read and write) or ``viewer`` (read only). Missing or unknown token: 401. A viewer
  writing: 403.
* Every write goes through the store's admin API or the functions below, which audit it (who = token
  name, what, target, when, reason) in the same transaction and queue notifications for subscribers.
* Errors are JSON ``{"error": ..., "field": ...}``; the message names the field. Nothing changes on error.
* Bodies, query strings and answers are pydantic models (server.headend.models), checked by the router
  (server.headend.routing); the OpenAPI document at ``/api/openapi.json`` (browsable at ``/api/docs``) is
  generated from the same routes and models, so it cannot drift from what is served.
"""

from __future__ import annotations

import importlib
import json
import logging
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from sep2.identity import IdentityError, operator_lfdi, sfdi_from_lfdi
from sep2.validation import first_error
from server.compliance.acks import DEFAULT_WITHIN_S, UnknownControl, ack_csv, ack_summary
from server.compliance.assess import act_on_finding, assess, assessment_csv
from server.compliance.judge import Rules
from server.compliance.targets import resolve_scope
from server.config import ServerConfig
from server.errors import ApiError
from server.headend import models as m
from server.headend.capabilities import unsupported_by_target, unsupported_modes
from server.headend.doe import (
    CHUNK_BYTES,
    DOE_ID_BASE,
    IngestError,
    doe_intervals,
    doe_mrid,
    doe_uploads,
    ingest,
    parse_doe_mrid,
    site_intervals,
)
from server.headend.errors import HeadEndError, Operator, bad
from server.headend.routing import Route, add_routes, call, docs_page, ok, openapi_document, parse_body
from server.headend.telemetry import reading_json, telemetry, telemetry_csv
from server.headend.tokens import TokenStore
from server.limits import NOT_XML_CHAR
from server.store import (
    AdminError,
    Page,
    RequestScope,
    Store,
    _enqueue,
    _group_member_sites,
    _site_targets,
    aggregators,
    audit_log,
    build_control_base,
    clients,
    control_base_from_json,
    controls,
    default_controls,
    ders,
    event_status,
    groups,
    memberships,
    meter_readings,
    mups,
    programs,
    rate_settings,
    readings,
    responses,
    sites,
    to_jsonable,
)
from server.store.timeline import operator_status

log = logging.getLogger("derlink.headend")

TOKEN_FILE = "headend-token"
EMERGENCY_PROGRAM = "emergency"


def check_request_text(request: web.Request) -> None:
    """Path and query values must be text that a 2030.5 document can carry; the error names the field."""
    for name, value in (*request.match_info.items(), *request.query.items()):
        if NOT_XML_CHAR.search(value) or any(c in value for c in "\r\n\t"):
            raise HeadEndError(400, f"{name}: control characters are not allowed", name)


# ------------------------------------------------------------------------------------------- tokens


def load_tokens(config: ServerConfig) -> list[dict[str, str]]:
    """Configured tokens, or a generated operator token kept in ``data_dir/headend-token`` (mode 0600)."""
    if config.headend_tokens:
        return config.headend_tokens
    path = Path(config.data_dir) / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        log.warning("no headend_tokens configured: generated an operator token in %s", path)
    return [{"name": "operator", "token": token, "role": "operator"}]


# ------------------------------------------------------------------------------------------- helpers


def control_base(limits: m.ControlLimits) -> Any:
    try:
        return build_control_base(**limits.base_kwargs())
    except AdminError as exc:
        raise bad(str(exc)) from None


def base_summary(text: str) -> dict[str, Any]:
    """A DERControlBase JSON as operator units (watts, flags)."""
    base = control_base_from_json(text)
    out: dict[str, Any] = {}
    for arg, attr in (
        ("import_limit_w", "opModImpLimW"),
        ("export_limit_w", "opModExpLimW"),
        ("generation_limit_w", "opModGenLimW"),
        ("load_limit_w", "opModLoadLimW"),
        ("target_w", "opModTargetW"),
    ):
        value = getattr(base, attr, None)
        if value is not None:
            out[arg] = value.to_watts()
    for arg, attr in (
        ("connect", "opModConnect"),
        ("energize", "opModEnergize"),
        ("fixed_w_percent", "opModFixedW"),
        ("max_lim_w_percent", "opModMaxLimW"),
        ("ramp_tms", "rampTms"),
    ):
        value = getattr(base, attr, None)
        if value is not None:
            out[arg] = value
    return out


# ------------------------------------------------------------------------------------------- the API


ROUTES: list[Route] = [
    Route("GET", "/api/whoami", "whoami", False, "The caller's token name and role", m.WhoAmI),
    Route("GET", "/api/sites", "sites_list", False, "List/search sites", m.SiteList, query=m.SiteSearch),
    Route("POST", "/api/sites", "site_register", True, "Register a site out of band", m.SiteRegistered,
          body=m.SiteRegister, status=201),
    Route("POST", "/api/sites/bulk", "sites_bulk", True, "Register many sites in one transaction",
          m.BulkRegistered, body=m.SitesBulk, status=201),
    Route("GET", "/api/sites/{site}", "site_detail", False, "Site detail: contact, DER, controls, telemetry",
          m.SiteDetail),
    Route("DELETE", "/api/sites/{site}", "site_deregister", True, "Deregister (decommission) a site",
          m.Deregistered, query=m.ReasonQuery),
    Route("PUT", "/api/sites/{site}/groups/{group}", "site_join", True, "Add a site to a group", m.Membership,
          query=m.ReasonQuery),
    Route("DELETE", "/api/sites/{site}/groups/{group}", "site_leave", True, "Remove a site from a group",
          m.Membership, query=m.ReasonQuery),
    Route("DELETE", "/api/sites/{site}/mups", "site_clear_mups", True, "Clear a site's MirrorUsagePoints",
          m.MupsCleared, query=m.ReasonQuery),
    Route("GET", "/api/sites/{site}/does", "site_does", False, "A site's DOE intervals", m.SiteDoes,
          query=m.SiteDoesQuery),
    Route("GET", "/api/groups", "groups_list", False, "Groups (nested) with member counts", m.GroupList),
    Route("POST", "/api/groups", "group_create", True, "Create a group", m.Created, body=m.GroupCreate,
          status=201),
    Route("GET", "/api/groups/{group}", "group_detail", False, "A group and its members", m.GroupDetail,
          query=m.Page),
    Route("GET", "/api/programs", "programs_list", False, "DERPrograms with primacy", m.ProgramList),
    Route("POST", "/api/programs", "program_create", True, "Create a DERProgram", m.ProgramCreated,
          body=m.ProgramCreate, status=201),
    Route("PATCH", "/api/programs/{name}", "program_update", True,
          'Rename, re-rank, move (group; "" = every site) or switch off a DERProgram, built-ins included',
          m.ProgramKey, body=m.ProgramUpdate),
    Route("GET", "/api/defaults", "defaults_list", False, "DefaultDERControls", m.DefaultList),
    Route("PUT", "/api/defaults", "default_set", True, "Set the DefaultDERControl of a program for a target",
          m.Mrid, body=m.DefaultSet),
    Route("GET", "/api/controls", "controls_list", False, "DERControls", m.ControlList, query=m.ControlQuery),
    Route("POST", "/api/controls", "control_create", True, "Create a DERControl for a site, group or all",
          m.ControlCreated, body=m.ControlCreate, status=201),
    Route("GET", "/api/controls/{mrid}", "control_detail", False, "A DERControl, its status and responses",
          m.ControlDetail | m.DoeControl),
    Route("GET", "/api/controls/{mrid}/acks", "control_acks", False,
          "Acknowledgements of a control: counts by Response status, non-responders (CSV with format=csv)",
          m.AckSummary, query=m.AckQuery, csv=True),
    Route("POST", "/api/compliance/act", "compliance_act", True,
          "Answer a compliance finding with a normal, audited control (default: zero export for an hour)",
          m.Mrid, body=m.ComplianceAct, status=201),
    Route("GET", "/api/telemetry", "telemetry", False,
          "Telemetry of a site, a group or all sites in real units, with group totals (CSV with format=csv)",
          m.Telemetry, query=m.Scope, csv=True),
    Route("GET", "/api/compliance", "compliance", False,
          "Compliance of a site, a group or all sites over a time range (CSV with format=csv)",
          m.ComplianceReport, query=m.ComplianceQuery, csv=True),
    Route("POST", "/api/controls/{mrid}/cancel", "control_cancel", True, "Cancel a DERControl",
          m.ControlCancelled, body=m.ReasonBody),
    Route("POST", "/api/emergency", "emergency", True, "Emergency command on the emergency program, now",
          m.EmergencyIssued, body=m.Emergency, status=201),
    Route("POST", "/api/emergency/lift", "emergency_lift", True,
          "Lift emergency controls, at once, spread by randomisation, or in group waves", m.Lifted,
          body=m.EmergencyLift),
    Route("POST", "/api/does", "doe_upload", True, "Bulk DOE upload (CSV or JSON, streamed, atomic)",
          m.DoeUploaded, query=m.DoeUploadQuery, status=201, upload=True),
    Route("GET", "/api/does/uploads", "doe_uploads", False, "DOE uploads", m.DoeUploadList, query=m.Limit),
    Route("GET", "/api/rates", "rates_list", False, "pollRate/postRate overrides", m.RateList),
    Route("PUT", "/api/rates", "rate_set", True, "Set a pollRate/postRate for all, a group or a site",
          m.RateItem, body=m.RateSet),
    Route("DELETE", "/api/rates", "rate_clear", True, "Remove a rate override", m.RateCleared,
          query=m.RateClear),
    Route("GET", "/api/clients", "clients_list", False, "Client certificates, revocation, last contact",
          m.ClientList),
    Route("POST", "/api/clients/{lfdi}/revoke", "client_revoke", True, "Revoke a client certificate",
          m.Revoked, body=m.ReasonBody),
    Route("POST", "/api/clients/{lfdi}/restore", "client_restore", True, "Restore a revoked certificate",
          m.Revoked, body=m.ReasonBody),
    Route("GET", "/api/aggregators", "aggregators_list", False, "Aggregators and their certificates",
          m.AggregatorList),
    Route("POST", "/api/aggregators", "aggregator_create", True, "Create an aggregator", m.Created,
          body=m.AggregatorCreate, status=201),
    Route("POST", "/api/aggregators/{name}/certificates", "aggregator_add_cert", True,
          "Add a certificate to an aggregator (rotation step 1)", m.CertificateAdded, body=m.CertificateAdd,
          status=201),
    Route("DELETE", "/api/aggregators/{name}/certificates/{lfdi}", "aggregator_remove_cert", True,
          "Remove (revoke) an aggregator certificate (rotation step 2)", m.CertificateRemoved,
          query=m.ReasonQuery),
    Route("GET", "/api/audit", "audit", False, "The audit log", m.AuditLog, query=m.AuditQuery),
]  # fmt: skip


OPERATOR = web.RequestKey("operator", Operator)
PUBLIC = ("/api/openapi.json", "/api/docs")  # the API's description is readable without a token


class HeadEnd:
    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.admin = store.admin
        self.config = config
        # Digests only, plus the run-time token file (server.headend.tokens): revocation needs no restart.
        self.tokens = TokenStore(load_tokens(config), config.data_dir, Operator)
        self.writes = {(r.method, r.path) for r in ROUTES if r.write}
        self.session_auth: Callable[[web.Request], Operator | None] | None = None  # set by server.console
        data_dir = Path(config.data_dir)
        self.spool_dir = data_dir if data_dir.is_dir() else None  # upload spool next to the database

    # -- auth and errors

    def authenticate(self, request: web.Request) -> Operator:
        if "Authorization" not in request.headers and self.session_auth is not None:
            if (session_operator := self.session_auth(request)) is not None:
                return session_operator
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HeadEndError(401, "Authorization: a bearer token is required", "Authorization")
        # Header bytes that are not UTF-8 arrive as surrogate escapes: still just an unknown token.
        found = self.tokens.lookup(token.strip())
        if found is None:
            raise HeadEndError(401, "Authorization: unknown token", "Authorization")
        return found

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            check_request_text(request)
            if request.path.startswith("/api/") and request.path not in PUBLIC:
                operator = self.authenticate(request)
                request[OPERATOR] = operator
                resource = request.match_info.route.resource
                canonical = resource.canonical if resource is not None else ""
                if (request.method, canonical) in self.writes and not operator.can_write:
                    raise HeadEndError(403, f"role: {operator.role} tokens cannot write", "role")
            return await handler(request)
        except HeadEndError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return web.json_response(
                {"error": exc.detail, "field": exc.field}, status=exc.status, headers=headers
            )
        except IngestError as exc:
            return web.json_response(exc.as_json(), status=400)
        except AdminError as exc:
            err = bad(str(exc))
            return web.json_response({"error": err.detail, "field": err.field}, status=400)
        except ApiError as exc:
            return web.json_response({"error": exc.detail, "field": None}, status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"error": exc.reason, "field": None}, status=exc.status)
        except Exception:
            log.exception("head-end error on %s %s", request.method, request.path)
            return web.json_response({"error": "internal error", "field": None}, status=500)

    @staticmethod
    async def body(request: web.Request) -> dict[str, Any]:
        """A JSON object body for routes outside this module's table (server.headend.incidents_api)."""
        return (await parse_body(m.Document, request)).root

    @staticmethod
    def actor(request: web.Request) -> str:
        return request[OPERATOR].name

    async def _site_row(self, conn: Any, ref: str) -> Any:
        if ref.startswith("nmi:"):
            cond = sites.c.nmi == ref[4:]
        else:
            try:
                cond = sites.c.lfdi == operator_lfdi(ref)
            except IdentityError as exc:
                raise HeadEndError(404, f"site: {exc}", "site") from None
        row = (await conn.execute(sa.select(sites).where(cond))).first()
        if row is None:
            raise HeadEndError(404, f"site: no site {ref!r}", "site")
        return row

    # -- basics

    async def whoami(self, request: web.Request) -> Any:
        op = request[OPERATOR]
        return {"name": op.name, "role": op.role}

    def routes(self) -> list[Route]:
        return ROUTES + [r for ext in EXTENSIONS for r in importlib.import_module(ext).ROUTES]

    async def openapi(self, request: web.Request) -> web.Response:
        return ok(openapi_document(self.routes()))

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=docs_page(openapi_document(self.routes())), content_type="text/html")

    # -- sites

    async def sites_list(self, request: web.Request, query: m.SiteSearch) -> Any:
        offset, limit = query.offset, query.limit
        cond: list[Any] = []
        q = query.q
        if q:
            like = f"%{q}%"
            cond.append(
                sa.or_(
                    sites.c.lfdi.like(f"{q.upper()}%"), sites.c.nmi.like(f"{q}%"), sites.c.label.like(like)
                )
            )
        group = query.group
        async with self.store.read() as conn:
            if group:
                gid = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == group))).scalar()
                if gid is None:
                    raise bad(f"group: no group named {group!r}")
                cond.append(sites.c.id.in_(_group_member_sites(gid)))
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(sites).where(*cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(sites, aggregators.c.name.label("aggregator"), clients.c.last_seen)
                    .join(aggregators, aggregators.c.id == sites.c.aggregator_id, isouter=True)
                    .join(clients, clients.c.lfdi == sites.c.lfdi, isouter=True)
                    .where(*cond)
                    .order_by(sites.c.id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
            member_rows = (
                await conn.execute(
                    sa.select(memberships.c.site_id, groups.c.name)
                    .join(groups, groups.c.id == memberships.c.group_id)
                    .where(memberships.c.site_id.in_([row.id for row in rows]))
                )
            ).all()
        names: dict[int, list[str]] = {}
        for member in member_rows:
            names.setdefault(member.site_id, []).append(member.name)
        items = [
            {
                "id": row.id,
                "lfdi": row.lfdi,
                "sfdi": row.sfdi,
                "nmi": row.nmi,
                "label": row.label,
                "aggregator": row.aggregator,
                "groups": sorted(names.get(row.id, [])),
                "registered": row.registered_time,
                "last_contact": row.last_seen,
            }
            for row in rows
        ]
        return {"total": total, "offset": offset, "items": items}

    async def site_register(self, request: web.Request, body: m.SiteRegister) -> Any:
        site_id = await self.admin.register_site(
            body.lfdi,
            sfdi=body.sfdi,
            nmi=body.nmi,
            pin=body.pin,
            aggregator=body.aggregator,
            groups_=body.groups or [],
            label=body.label,
            device_category=body.device_category,
            actor=self.actor(request),
            reason=body.reason,
        )
        return {"id": site_id, "lfdi": operator_lfdi(body.lfdi), "href": f"/edev/{site_id}"}

    async def sites_bulk(self, request: web.Request, body: m.SitesBulk) -> Any:
        count = await bulk_register(self.store, body.sites, actor=self.actor(request), reason=body.reason)
        return {"registered": count}

    async def site_detail(self, request: web.Request) -> Any:
        ref = request.match_info["site"]
        now = self.store.clock()
        async with self.store.read() as conn:
            site = await self._site_row(conn, ref)
            agg = None
            if site.aggregator_id is not None:
                agg = (
                    await conn.execute(
                        sa.select(aggregators.c.name).where(aggregators.c.id == site.aggregator_id)
                    )
                ).scalar()
            contact = (
                await conn.execute(
                    sa.select(clients.c.last_seen, clients.c.revoked, clients.c.kind).where(
                        sa.or_(
                            clients.c.lfdi == site.lfdi,
                            sa.and_(
                                clients.c.aggregator_id == site.aggregator_id,
                                clients.c.aggregator_id.is_not(None),
                            ),
                        )
                    )
                )
            ).all()
            group_names = (
                (
                    await conn.execute(
                        sa.select(groups.c.name)
                        .join(memberships, memberships.c.group_id == groups.c.id)
                        .where(memberships.c.site_id == site.id)
                        .order_by(groups.c.name)
                    )
                )
                .scalars()
                .all()
            )
            latest = (
                await conn.execute(
                    sa.select(
                        readings.c.time_start,
                        readings.c.duration,
                        readings.c.value,
                        readings.c.received_at,
                        meter_readings.c.mrid,
                        meter_readings.c.description,
                        meter_readings.c.reading_type,
                        mups.c.mrid.label("mup_mrid"),
                        mups.c.role_flags,
                        mups.c.description.label("device"),
                    )
                    .join(meter_readings, meter_readings.c.id == readings.c.meter_reading_id)
                    .join(mups, mups.c.id == meter_readings.c.mup_id)
                    .where(mups.c.site_id == site.id)
                    .order_by(readings.c.id.desc())
                    .limit(20)
                )
            ).all()
            response_rows = (
                await conn.execute(
                    sa.select(
                        responses.c.status, responses.c.created_time, responses.c.received_at, controls.c.mrid
                    )
                    .join(controls, controls.c.id == responses.c.control_id)
                    .where(responses.c.site_id == site.id)
                    .order_by(responses.c.id.desc())
                    .limit(20)
                )
            ).all()
            mup_count = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(mups).where(mups.c.site_id == site.id)
                )
            ).scalar_one()
        async with self.store.read() as conn:
            target_names = await _target_names(conn, [k for k, _ in await _site_targets(conn, site.id)])
        der_docs = await self.admin.site_der_documents(site.lfdi)
        last_seen = max((c.last_seen for c in contact if c.last_seen), default=None)
        # Active and next controls per program, as the site itself sees them over 2030.5.
        scope = RequestScope(lfdi=site.lfdi, kind="device")
        view = await self.store.site_view(scope, site.id)
        program_controls = []
        unsupported: list[dict[str, Any]] = []
        for program in view.programs:
            _total, rows, _ = await self.store.program_controls(view, program.id, Page(0, 100))
            live = [row for row in rows if event_status(row, now)[0] in (0, 1)]
            active = [row for row in live if row.start <= now]
            upcoming = [row for row in live if row.start > now]
            default = await self.store.default_control(view, program.id)
            for row in active + upcoming[:1]:  # flagged in the site's view too (issue 11 item 12)
                modes = unsupported_modes(control_base_from_json(row.base), der_docs.get("dercap"))
                if modes:
                    unsupported.append({"mrid": row.mrid, "program": program.key, "modes": modes})
            program_controls.append(
                {
                    "program": program.key,
                    "primacy": program.primacy,
                    "active": [self._control_json(row, program.key, now, target_names) for row in active],
                    "next": self._control_json(upcoming[0], program.key, now, target_names)
                    if upcoming
                    else None,
                    "default": base_summary(default.base) if default is not None else None,
                }
            )
        return (
            {
                "id": site.id,
                "lfdi": site.lfdi,
                "sfdi": site.sfdi,
                "nmi": site.nmi,
                "pin": site.pin,
                "label": site.label,
                "aggregator": agg,
                "groups": list(group_names),
                "registered": site.registered_time,
                "edev": f"/edev/{site.id}",
                "comms": {
                    "last_contact": last_seen,
                    "seconds_since_contact": now - last_seen if last_seen else None,
                    "revoked": any(c.revoked for c in contact if c.kind == "device"),
                },
                "der": {kind: to_jsonable(doc) for kind, doc in der_docs.items()},
                "programs": program_controls,
                "unsupported_controls": unsupported,
                "telemetry": [reading_json(row) for row in latest],
                "responses": [dict(row._mapping) for row in response_rows],
                "mirror_usage_points": mup_count,
            }
        )

    @staticmethod
    def _control_json(
        row: Any,
        program: str,
        now: int,
        names: dict[str, str] | None = None,
        pieces: dict[int, int] | None = None,
    ) -> dict[str, Any]:
        return {
            "mrid": row.mrid,
            "program": program,
            "target": (names or {}).get(row.target, row.target),
            "start": row.start,
            "duration": row.duration,
            "status": operator_status(row, now, live_pieces=pieces.get(row.id, 0) if pieces else 0),
            "limits": base_summary(row.base),
            "randomize_start": row.randomize_start,
            "randomize_duration": row.randomize_duration,
            "response_required": row.response_required,
            "description": row.description,
            "created": row.creation_time,
        }

    async def site_deregister(self, request: web.Request, query: m.ReasonQuery) -> Any:
        ref = request.match_info["site"]
        actor, reason = self.actor(request), query.reason
        now = self.store.clock()
        async with self.store.write() as conn:
            site = await self._site_row(conn, ref)
            key = f"s:{site.id}"
            counts = {
                "controls": (await conn.execute(controls.delete().where(controls.c.target == key))).rowcount,
                "does": (
                    await conn.execute(doe_intervals.delete().where(doe_intervals.c.site_id == site.id))
                ).rowcount,
                "mups": (
                    await conn.execute(
                        sa.select(sa.func.count()).select_from(mups).where(mups.c.site_id == site.id)
                    )
                ).scalar_one(),
            }
            await conn.execute(default_controls.delete().where(default_controls.c.target == key))
            await conn.execute(rate_settings.delete().where(rate_settings.c.target == key))
            await conn.execute(sites.delete().where(sites.c.id == site.id))  # cascades ders, mups, subs...
            if site.aggregator_id is not None:  # the aggregator's EndDeviceList changed
                await _enqueue(
                    conn,
                    now,
                    kinds=("edev",),
                    owner_scope=RequestScope(lfdi="-", kind="aggregator", aggregator_id=site.aggregator_id),
                )
            await self.admin._audit(
                conn, actor, "site.deregister", site.lfdi, reason, nmi=site.nmi, removed=counts
            )
        return {"deregistered": site.lfdi, "removed": counts}

    async def site_join(self, request: web.Request, query: m.ReasonQuery) -> Any:
        return await self._membership(request, True, query.reason)

    async def site_leave(self, request: web.Request, query: m.ReasonQuery) -> Any:
        return await self._membership(request, False, query.reason)

    async def _membership(self, request: web.Request, member: bool, reason: str | None) -> Any:
        async with self.store.read() as conn:
            site = await self._site_row(conn, request.match_info["site"])
        group = request.match_info["group"]
        await self.admin.set_membership(
            site.lfdi, group, member, actor=self.actor(request), reason=reason
        )
        return {"site": site.lfdi, "group": group, "member": member}

    async def site_clear_mups(self, request: web.Request, query: m.ReasonQuery) -> Any:
        actor, reason = self.actor(request), query.reason
        async with self.store.write() as conn:
            site = await self._site_row(conn, request.match_info["site"])
            removed = (await conn.execute(mups.delete().where(mups.c.site_id == site.id))).rowcount
            await self.admin._audit(conn, actor, "site.clear_mups", site.lfdi, reason, removed=removed)
        return {"site": site.lfdi, "removed": removed}

    async def site_does(self, request: web.Request, query: m.SiteDoesQuery) -> Any:
        async with self.store.read() as conn:
            site = await self._site_row(conn, request.match_info["site"])
        items = await site_intervals(self.store, site.id, since=query.since, limit=query.limit)
        return {"site": site.lfdi, "items": items}

    # -- groups and programs

    async def groups_list(self, request: web.Request) -> Any:
        async with self.store.read() as conn:
            rows = (await conn.execute(sa.select(groups).order_by(groups.c.id))).all()
            direct = dict(
                (
                    await conn.execute(
                        sa.select(memberships.c.group_id, sa.func.count()).group_by(memberships.c.group_id)
                    )
                ).all()
            )
            total_sites = (await conn.execute(sa.select(sa.func.count()).select_from(sites))).scalar_one()
        names = {row.id: row.name for row in rows}
        items = [
            {
                "name": "all",
                "parent": None,
                "description": "Broadcast: every site (built in)",
                "members": total_sites,
                "builtin": True,
            }
        ]
        items += [
            {
                "name": row.name,
                "parent": names.get(row.parent_id),
                "description": row.description,
                "members": direct.get(row.id, 0),
                "builtin": False,
            }
            for row in rows
        ]
        return {"items": items}

    async def group_create(self, request: web.Request, body: m.GroupCreate) -> Any:
        gid = await self.admin.create_group(
            body.name,
            parent=body.parent,
            description=body.description,
            actor=self.actor(request),
            reason=body.reason,
        )
        return {"id": gid, "name": body.name}

    async def group_detail(self, request: web.Request, query: m.Page) -> Any:
        name = request.match_info["group"]
        offset, limit = query.offset, query.limit
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(groups).where(groups.c.name == name))).first()
            if row is None:
                raise HeadEndError(404, f"group: no group named {name!r}", "group")
            members = sa.select(sites.c.lfdi, sites.c.nmi).where(sites.c.id.in_(_group_member_sites(row.id)))
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(members.subquery()))
            ).scalar_one()
            page = (await conn.execute(members.order_by(sites.c.id).offset(offset).limit(limit))).all()
            children = (
                await conn.execute(sa.select(groups.c.name).where(groups.c.parent_id == row.id))
            ).scalars()
            parent = None
            if row.parent_id is not None:
                parent = (
                    await conn.execute(sa.select(groups.c.name).where(groups.c.id == row.parent_id))
                ).scalar()
            progs = (
                await conn.execute(sa.select(programs.c.key).where(programs.c.group_id == row.id))
            ).scalars()
            return (
                {
                    "name": row.name,
                    "parent": parent,
                    "description": row.description,
                    "children": list(children),
                    "programs": list(progs),
                    "fsa": row.id,
                    "total_sites": total,
                    "sites": [dict(row._mapping) for row in page],
                }
            )

    async def programs_list(self, request: web.Request) -> Any:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(programs, groups.c.name.label("group"))
                    .join(groups, groups.c.id == programs.c.group_id, isouter=True)
                    .order_by(programs.c.primacy, programs.c.id)
                )
            ).all()
        return (
            {
                "items": [
                    {
                        "id": row.id,
                        "key": row.key,
                        "mrid": row.mrid,
                        "primacy": row.primacy,
                        "description": row.description,
                        "group": row.group,
                        "enabled": row.enabled,
                    }
                    for row in rows
                ]
            }
        )

    async def program_update(self, request: web.Request, body: m.ProgramUpdate) -> Any:
        key = request.match_info["name"]
        values = body.model_dump(exclude={"reason"})
        await self.admin.update_program(key, **values, actor=self.actor(request), reason=body.reason)
        return {"key": key}

    async def program_create(self, request: web.Request, body: m.ProgramCreate) -> Any:
        pid = await self.admin.create_program(
            body.key,
            primacy=body.primacy,
            description=body.description,
            group=body.group,
            actor=self.actor(request),
            reason=body.reason,
        )
        return {"id": pid, "key": body.key}

    # -- defaults

    async def defaults_list(self, request: web.Request) -> Any:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(default_controls, programs.c.key.label("program")).join(
                        programs, programs.c.id == default_controls.c.program_id
                    )
                )
            ).all()
            targets = await _target_names(conn, [row.target for row in rows])
        return (
            {
                "items": [
                    {
                        "mrid": row.mrid,
                        "program": row.program,
                        "target": targets[row.target],
                        "limits": base_summary(row.base),
                        "set_grad_w": row.set_grad_w,
                        "changed": row.changed_time,
                    }
                    for row in rows
                ]
            }
        )

    async def default_set(self, request: web.Request, body: m.DefaultSet) -> Any:
        mrid = await self.admin.set_default_control(
            body.program,
            body.target,
            base=control_base(body),
            set_grad_w=body.set_grad_w,
            description=body.description,
            actor=self.actor(request),
            reason=body.reason,
        )
        return {"mrid": mrid}

    # -- controls

    async def controls_list(self, request: web.Request, query: m.ControlQuery) -> Any:
        offset, limit = query.offset, query.limit
        now = self.store.clock()
        # The operator's own controls; the pieces a split republished show in their original's detail.
        cond: list[Any] = [controls.c.split_from.is_(None)]
        async with self.store.read() as conn:
            if query.program:
                cond.append(programs.c.key == query.program)
            if query.target:
                cond.append(controls.c.target == await self.admin._resolve_target(conn, query.target))
            if query.active:
                cond += [
                    controls.c.cancelled_at.is_(None),
                    controls.c.superseded_at.is_(None),
                    controls.c.start + controls.c.duration > now,
                ]
            query = (
                sa.select(controls, programs.c.key.label("program"))
                .join(programs, programs.c.id == controls.c.program_id)
                .where(*cond)
            )
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(query.subquery()))
            ).scalar_one()
            rows = (
                await conn.execute(query.order_by(controls.c.id.desc()).offset(offset).limit(limit))
            ).all()
            targets = await _target_names(conn, [row.target for row in rows])
            pieces = await _live_pieces(conn, [row.id for row in rows])
        items = []
        for row in rows:
            item = self._control_json(row, row.program, now, pieces=pieces)
            item["target"] = targets[row.target]
            items.append(item)
        return {"total": total, "offset": offset, "items": items}

    async def control_create(self, request: web.Request, body: m.ControlCreate) -> Any:
        base = control_base(body)
        mrid = await self.admin.create_control(
            body.program,
            body.target,
            start=None if body.start == "now" else body.start,
            duration=body.duration,
            base=base,
            randomize_start=body.randomize_start,
            randomize_duration=body.randomize_duration,
            response_required=body.response_required,
            description=body.description,
            actor=self.actor(request),
            reason=body.reason,
        )
        # Sites whose DERCapability says they cannot apply it are flagged to the operator (issue 11 item 12).
        async with self.store.read() as conn:
            key = await self.admin._resolve_target(conn, body.target)
            unsupported = await unsupported_by_target(conn, key, base)
        return {"mrid": mrid, "unsupported": unsupported}

    async def control_detail(self, request: web.Request) -> Any:
        mrid = request.match_info["mrid"].upper()
        now = self.store.clock()
        async with self.store.read() as conn:
            row = (
                await conn.execute(
                    sa.select(controls, programs.c.key.label("program"))
                    .join(programs, programs.c.id == controls.c.program_id)
                    .where(controls.c.mrid == mrid)
                )
            ).first()
            if row is None:
                doe = parse_doe_mrid(mrid)
                if doe is not None:
                    found = (
                        await conn.execute(
                            sa.select(doe_intervals, sites.c.lfdi)
                            .join(sites, sites.c.id == doe_intervals.c.site_id)
                            .where(doe_intervals.c.site_id == doe[0], doe_intervals.c.start == doe[1])
                        )
                    ).first()
                    if found is not None and found.upload_id == doe[2]:
                        return (
                            {
                                "mrid": mrid,
                                "program": "doe",
                                "target": f"site:{found.lfdi}",
                                "start": found.start,
                                "duration": found.duration,
                                "upload": found.upload_id,
                                "limits": {
                                    k: v
                                    for k, v in (
                                        ("import_limit_w", found.import_w),
                                        ("export_limit_w", found.export_w),
                                        ("generation_limit_w", found.generation_w),
                                        ("load_limit_w", found.load_w),
                                    )
                                    if v is not None
                                },
                                "href_id": DOE_ID_BASE + found.start,
                            }
                        )
                raise HeadEndError(404, f"mrid: no control {mrid}", "mrid")
            targets = await _target_names(conn, [row.target])
            piece_rows = (
                await conn.execute(
                    sa.select(controls, programs.c.key.label("program"))
                    .join(programs, programs.c.id == controls.c.program_id)
                    .where(controls.c.split_from == row.id)
                    .order_by(controls.c.start)
                )
            ).all()
            acks = await ack_summary(conn, mrid, now=now)
        live = sum(1 for p in piece_rows if p.cancelled_at is None and p.superseded_at is None)
        item = self._control_json(row, row.program, now, pieces={row.id: live})
        item["target"] = targets[row.target]
        item["split_from"] = row.split_from
        item["pieces"] = [self._control_json(p, p.program, now, targets) for p in piece_rows]
        item["acknowledgements"] = {k: acks[k] for k in ("sites_targeted", "acknowledged", "latest", "none")}
        item["responses"] = await self.admin.responses_for_control(mrid)
        return item

    async def control_acks(self, request: web.Request, query: m.AckQuery) -> Any:
        mrid = request.match_info["mrid"].upper()
        within = DEFAULT_WITHIN_S if query.within is None else query.within
        async with self.store.read() as conn:
            try:
                if query.format == "csv":
                    return web.Response(
                        text=await ack_csv(conn, mrid, within_s=within), content_type="text/csv"
                    )
                return await ack_summary(conn, mrid, now=self.store.clock(), within_s=within)
            except UnknownControl as exc:
                raise HeadEndError(404, str(exc), "mrid") from None

    async def compliance_act(self, request: web.Request, body: m.ComplianceAct) -> Any:
        mrid = await act_on_finding(
            self.admin,
            body.site,
            duration=body.duration,
            export_limit_w=body.export_limit_w,
            actor=self.actor(request),
            reason=body.reason,
        )
        return {"mrid": mrid}

    async def telemetry(self, request: web.Request, query: m.Scope) -> Any:
        to = self.store.clock() if query.to is None else query.to
        since = to - 3600 if query.from_ is None else query.from_
        try:
            async with self.store.read() as conn:
                scope = await resolve_scope(conn, lfdi=query.site, group=query.group)
                data = await telemetry(conn, scope, since, to)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if query.format == "csv":
            return web.Response(text=telemetry_csv(data), content_type="text/csv")
        return data

    async def compliance(self, request: web.Request, query: m.ComplianceQuery) -> Any:
        """The compliance service (server.compliance.assess) over HTTP; rules default to the demo's."""
        now = self.store.clock()
        to = now if query.to is None else query.to
        since = to - 86400 if query.from_ is None else query.from_
        names = ("tolerance_w", "tolerance_pct", "settle_s")
        names += ("silent_posts", "ack_within_s", "persistent_breach_s")
        rules = {n: getattr(query, n) for n in names if getattr(query, n) is not None}
        try:
            parsed = Rules.from_mapping(rules)
            async with self.store.read() as conn:
                scope = await resolve_scope(conn, lfdi=query.site, group=query.group)
                result = await assess(
                    conn,
                    scope,
                    since,
                    to,
                    now=now,
                    rules=parsed,
                    default_post_rate=self.config.post_rate,
                    detail=query.detail,
                )
        except ValueError as exc:
            raise bad(str(exc)) from None
        if query.format == "csv":
            return web.Response(text=assessment_csv(result), content_type="text/csv")
        return result.as_json()

    async def control_cancel(self, request: web.Request, body: m.ReasonBody) -> Any:
        mrid = request.match_info["mrid"]
        try:
            await self.admin.cancel_control(mrid, actor=self.actor(request), reason=body.reason)
        except AdminError as exc:
            raise HeadEndError(404, str(exc), "mrid") from None
        return {"mrid": mrid.upper(), "status": "cancelled"}

    # -- emergency

    async def emergency(self, request: web.Request, body: m.Emergency) -> Any:
        limits = {**m.EMERGENCY_ACTIONS[body.action], "generation_limit_w": body.generation_limit_w}
        mrid = await self.admin.create_control(
            EMERGENCY_PROGRAM,
            body.target,
            start=None,
            duration=body.duration,
            base=control_base(m.ControlLimits.model_validate(limits)),
            randomize_duration=body.randomize_duration,
            response_required="03",
            description=f"Emergency {body.action}"[:32],
            actor=self.actor(request),
            reason=body.reason,
        )
        return {"mrid": mrid, "action": body.action, "target": body.target, "duration": body.duration}

    async def emergency_lift(self, request: web.Request, body: m.EmergencyLift) -> Any:
        return await lift_emergency(
            self.store,
            target=body.target,
            mrid=body.mrid,
            spread=body.spread,
            waves=body.waves,
            wave_interval=body.wave_interval,
            actor=self.actor(request),
            reason=body.reason,
        )

    # -- DOE bulk upload

    async def doe_upload(self, request: web.Request, query: m.DoeUploadQuery) -> Any:
        fmt = query.format
        if fmt is None:
            ctype = request.content_type
            fmt = (
                "json"
                if ctype in ("application/json", "application/x-ndjson", "application/jsonl")
                else "csv"
            )
        reason = query.reason

        async def chunks() -> Any:
            if request.content_type.startswith("multipart/"):
                reader = await request.multipart()
                part = await reader.next()
                while part is not None and getattr(part, "name", None) not in ("file", "does", None):
                    part = await reader.next()
                if part is None:
                    raise IngestError([(0, "file: no file part in the multipart body")])
                while True:
                    chunk = await part.read_chunk(CHUNK_BYTES)  # type: ignore[union-attr]
                    if not chunk:
                        break
                    yield chunk
                return
            while True:
                chunk = await request.content.read(CHUNK_BYTES)
                if not chunk:
                    break
                yield chunk

        # Spool the body to an unlinked temp file first, so the database write lock is held only while
        # rows are parsed and written, never while a slow client is still sending.
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            async for chunk in chunks():
                spool.write(chunk)
            spool.seek(0)

            async def spooled() -> Any:
                while chunk := spool.read(CHUNK_BYTES):
                    yield chunk

            result = await ingest(self.store, spooled(), fmt=fmt, actor=self.actor(request), reason=reason)
        return result.as_json()

    async def doe_uploads(self, request: web.Request, query: m.Limit) -> Any:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(doe_uploads).order_by(doe_uploads.c.id.desc()).limit(query.limit)
                )
            ).all()
        return {"items": [dict(row._mapping) for row in rows]}

    # -- rates

    async def rates_list(self, request: web.Request) -> Any:
        async with self.store.read() as conn:
            rows = (await conn.execute(sa.select(rate_settings))).all()
            targets = await _target_names(conn, [row.target for row in rows])
        return (
            {
                "defaults": {"poll_rate": self.config.poll_rate, "post_rate": self.config.post_rate},
                "items": [
                    {"resource": row.resource, "target": targets[row.target], "value": row.value}
                    for row in rows
                ],
            }
        )

    async def rate_set(self, request: web.Request, body: m.RateSet) -> Any:
        target = body.target or "all"
        await self.admin.set_rate(
            body.resource, body.value, target, actor=self.actor(request), reason=body.reason
        )
        return {"resource": body.resource, "value": body.value, "target": target}

    async def rate_clear(self, request: web.Request, query: m.RateClear) -> Any:
        resource, target = query.resource, query.target
        async with self.store.write() as conn:
            key = await self.admin._resolve_target(conn, target)
            removed = (
                await conn.execute(
                    rate_settings.delete().where(
                        rate_settings.c.resource == resource, rate_settings.c.target == key
                    )
                )
            ).rowcount
            if not removed:
                raise HeadEndError(404, f"resource: no {resource} rate set for {target}", "resource")
            await self.admin._audit(
                conn, self.actor(request), "rate.clear", target, query.reason, resource=resource
            )
        return {"resource": resource, "target": target, "removed": True}

    # -- clients and aggregators

    async def clients_list(self, request: web.Request) -> Any:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(clients, aggregators.c.name.label("aggregator"))
                    .join(aggregators, aggregators.c.id == clients.c.aggregator_id, isouter=True)
                    .order_by(clients.c.lfdi)
                )
            ).all()
        return (
            {
                "items": [
                    {
                        "lfdi": row.lfdi,
                        "kind": row.kind,
                        "aggregator": row.aggregator,
                        "revoked": row.revoked,
                        "first_seen": row.first_seen,
                        "last_seen": row.last_seen,
                    }
                    for row in rows
                ]
            }
        )

    async def client_revoke(self, request: web.Request, body: m.ReasonBody) -> Any:
        return await self._revoke(request, True, body.reason)

    async def client_restore(self, request: web.Request, body: m.ReasonBody) -> Any:
        return await self._revoke(request, False, body.reason)

    async def _revoke(self, request: web.Request, revoked: bool, reason: str | None) -> Any:
        lfdi = request.match_info["lfdi"]
        await self.admin.set_revoked(lfdi, revoked, actor=self.actor(request), reason=reason)
        return {"lfdi": lfdi.upper(), "revoked": revoked}

    async def aggregators_list(self, request: web.Request) -> Any:
        async with self.store.read() as conn:
            rows = (await conn.execute(sa.select(aggregators).order_by(aggregators.c.id))).all()
            certs = (
                await conn.execute(
                    sa.select(clients.c.lfdi, clients.c.aggregator_id, clients.c.revoked).where(
                        clients.c.aggregator_id.is_not(None)
                    )
                )
            ).all()
            counts = dict(
                (
                    await conn.execute(
                        sa.select(sites.c.aggregator_id, sa.func.count()).group_by(sites.c.aggregator_id)
                    )
                ).all()
            )
        return (
            {
                "items": [
                    {
                        "name": row.name,
                        "sites": counts.get(row.id, 0),
                        "certificates": [
                            {"lfdi": c.lfdi, "revoked": c.revoked} for c in certs if c.aggregator_id == row.id
                        ],
                    }
                    for row in rows
                ]
            }
        )

    async def aggregator_create(self, request: web.Request, body: m.AggregatorCreate) -> Any:
        agg = await self.admin.create_aggregator(
            body.name, lfdis=body.lfdis or [], actor=self.actor(request), reason=body.reason
        )
        return {"id": agg, "name": body.name}

    async def aggregator_add_cert(self, request: web.Request, body: m.CertificateAdd) -> Any:
        name = request.match_info["name"]
        await self.admin.add_aggregator_certificate(
            name, body.lfdi, actor=self.actor(request), reason=body.reason
        )
        return {"aggregator": name, "added": body.lfdi.upper()}

    async def aggregator_remove_cert(self, request: web.Request, query: m.ReasonQuery) -> Any:
        """Rotation step 2: the old certificate is revoked (so it cannot re-enrol as a new aggregator);
        the aggregator and its sites stay with the remaining certificates."""
        name, lfdi = request.match_info["name"], request.match_info["lfdi"].upper()
        async with self.store.write() as conn:
            agg = (await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == name))).scalar()
            if agg is None:
                raise HeadEndError(404, f"aggregator: no aggregator named {name!r}", "aggregator")
            certs = (
                await conn.execute(
                    sa.select(clients.c.lfdi, clients.c.revoked).where(clients.c.aggregator_id == agg)
                )
            ).all()
            if lfdi not in {c.lfdi for c in certs}:
                raise HeadEndError(404, f"lfdi: {lfdi} is not a certificate of {name}", "lfdi")
            if not any(c.lfdi != lfdi and not c.revoked for c in certs):
                raise bad(f"lfdi: {lfdi} is the last active certificate of {name}; add the new one first")
            await conn.execute(clients.update().where(clients.c.lfdi == lfdi).values(revoked=True))
            await self.admin._audit(
                conn,
                self.actor(request),
                "aggregator.remove_certificate",
                name,
                query.reason,
                lfdi=lfdi,
            )
        return {"aggregator": name, "removed": lfdi}

    # -- audit

    async def audit(self, request: web.Request, query: m.AuditQuery) -> Any:
        offset, limit = query.offset, query.limit
        cond = []
        for name in ("actor", "action"):
            if value := getattr(query, name):
                cond.append(audit_log.c[name].like(value.replace("*", "%")))
        if query.target:
            cond.append(audit_log.c.target.like(f"%{query.target}%"))
        if query.since is not None:
            cond.append(audit_log.c.at >= query.since)
        if query.until is not None:
            cond.append(audit_log.c.at < query.until)
        async with self.store.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(*cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(audit_log)
                    .where(*cond)
                    .order_by(audit_log.c.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        items = []
        for row in rows:
            item = dict(row._mapping)
            item["detail"] = json.loads(row.detail) if row.detail else None
            items.append(item)
        return {"total": total, "offset": offset, "items": items}

    # -- wiring

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/openapi.json", self.openapi)
        app.router.add_get("/api/docs", self.docs)
        add_routes(app, ROUTES, {route.handler: getattr(self, route.handler) for route in ROUTES})

    async def answer(self, request: web.Request, handler: str) -> Any:
        """The JSON answer of the read route ``handler`` for this request (its query and match_info): the
        console renders the same data the API serves."""
        route = next(r for r in ROUTES if r.handler == handler)
        data, _status = await call(route, getattr(self, handler), request)
        return data


async def _live_pieces(conn: Any, ids: list[int]) -> dict[int, int]:
    """For each control id, how many of its pieces (after a split) are still published."""
    if not ids:
        return {}
    rows = await conn.execute(
        sa.select(controls.c.split_from, sa.func.count())
        .where(
            controls.c.split_from.in_(ids),
            controls.c.cancelled_at.is_(None),
            controls.c.superseded_at.is_(None),
        )
        .group_by(controls.c.split_from)
    )
    return dict(rows.all())


async def _target_names(conn: Any, keys: list[str]) -> dict[str, str]:
    """Store target keys ("all", "g:1", "s:2") as operator targets ("all", "group:x", "site:LFDI")."""
    group_ids = {int(k[2:]) for k in keys if k.startswith("g:")}
    site_ids = {int(k[2:]) for k in keys if k.startswith("s:")}
    names: dict[str, str] = {"all": "all"}
    if group_ids:
        for gid, name in await conn.execute(
            sa.select(groups.c.id, groups.c.name).where(groups.c.id.in_(group_ids))
        ):
            names[f"g:{gid}"] = f"group:{name}"
    if site_ids:
        for sid, lfdi in await conn.execute(
            sa.select(sites.c.id, sites.c.lfdi).where(sites.c.id.in_(site_ids))
        ):
            names[f"s:{sid}"] = f"site:{lfdi}"
    return {k: names.get(k, k) for k in keys}


# ------------------------------------------------------------------------------------------- operations


_BULK = TypeAdapter(list[m.BulkSite])


async def bulk_register(
    store: Store,
    items: list[m.BulkSite] | list[dict[str, Any]],
    *,
    actor: str,
    reason: str | None = None,
    aggregator: str | None = None,
) -> int:
    """Register many sites in one transaction (all or none); errors name the item index and field."""
    if items and not isinstance(items[0], m.BulkSite):
        try:
            items = _BULK.validate_python(items)
        except ValidationError as exc:
            where, message = first_error(exc)
            raise HeadEndError(400, f"sites{where}: {message}", f"sites{where}") from None
    now = store.clock()
    values = []
    wanted_groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        assert isinstance(item, m.BulkSite)
        if item.lfdi in seen:
            raise bad(f"sites[{i}].lfdi: {item.lfdi} appears twice")
        seen.add(item.lfdi)
        values.append(
            dict(
                lfdi=item.lfdi,
                sfdi=sfdi_from_lfdi(item.lfdi),
                aggregator_id=item.aggregator or aggregator,
                device_category=item.device_category,
                enabled=True,
                changed_time=now,
                registered_time=now,
                pin=item.pin,
                nmi=item.nmi,
                label=item.label,
            )
        )
        if item.groups:
            wanted_groups.append((item.lfdi, item.groups))
    if not values:
        return 0
    async with store.write() as conn:
        agg_ids = dict((await conn.execute(sa.select(aggregators.c.name, aggregators.c.id))).all())
        group_ids = dict((await conn.execute(sa.select(groups.c.name, groups.c.id))).all())
        for i, v in enumerate(values):
            if v["aggregator_id"] is not None:
                if v["aggregator_id"] not in agg_ids:
                    raise bad(f"sites[{i}].aggregator: no aggregator named {v['aggregator_id']!r}")
                v["aggregator_id"] = agg_ids[v["aggregator_id"]]
        existing = set()
        lfdis = [v["lfdi"] for v in values]
        for i in range(0, len(lfdis), 5000):
            existing |= set(
                (
                    await conn.execute(sa.select(sites.c.lfdi).where(sites.c.lfdi.in_(lfdis[i : i + 5000])))
                ).scalars()
            )
        if existing:
            raise bad(
                f"lfdi: {sorted(existing)[0]} is already registered ({len(existing)} already registered)"
            )
        await conn.execute(sites.insert(), values)
        ids = dict(
            (
                await conn.execute(sa.select(sites.c.lfdi, sites.c.id).where(sites.c.registered_time == now))
            ).all()
        )
        await conn.execute(ders.insert(), [{"site_id": ids[v["lfdi"]]} for v in values])
        member_rows = []
        for lfdi, names in wanted_groups:
            for name in names:
                if name not in group_ids:
                    raise bad(f"groups: no group named {name!r} (site {lfdi})")
                member_rows.append({"site_id": ids[lfdi], "group_id": group_ids[name]})
        if member_rows:
            await conn.execute(memberships.insert(), member_rows)
        await store.admin._audit(
            conn, actor, "site.bulk_register", f"{len(values)} sites", reason, count=len(values)
        )
    return len(values)


async def lift_emergency(
    store: Store,
    *,
    target: str | None,
    mrid: str | None,
    spread: int | None,
    waves: list[str] | None,
    wave_interval: int | None,
    actor: str,
    reason: str | None,
) -> dict[str, Any]:
    """End the live emergency controls of ``target`` (or the one ``mrid``).

    * at once: cancelled (EventStatus 2);
    * ``spread``: cancelled with randomisation (EventStatus 3, randomizeDuration = spread), so each site
      ends the curtailment at a random moment within the spread;
    * ``waves``: cancelled, and each wave group k>0 gets the same limits again on the emergency program
      for k x ``wave_interval`` seconds, so wave k is released at now + k x interval. Sites of the
      lifted target that are in no wave are released with the first wave.
    """
    now = store.clock()
    admin = store.admin
    async with store.write() as conn:
        program_id = await admin._program_id(conn, EMERGENCY_PROGRAM)
        cond = [
            controls.c.program_id == program_id,
            controls.c.cancelled_at.is_(None),
            controls.c.superseded_at.is_(None),
            controls.c.start + controls.c.duration > now,
        ]
        if mrid is not None:
            cond.append(controls.c.mrid == mrid.upper())
        else:
            cond.append(controls.c.target == await admin._resolve_target(conn, target))
        rows = (await conn.execute(sa.select(controls).where(*cond))).all()
        if not rows:
            raise HeadEndError(
                404,
                f"{'mrid' if mrid else 'target'}: no live emergency control to lift",
                "mrid" if mrid else "target",
            )
        wave_keys = [await admin._resolve_target(conn, w) for w in waves] if waves else []
        created = []
        for row in rows:
            values: dict[str, Any] = {"cancelled_at": now, "version": controls.c.version + 1}
            if spread is not None:
                values["randomize_duration"] = spread
            await conn.execute(controls.update().where(controls.c.id == row.id).values(**values))
            await _enqueue(conn, now, kinds=("derc", "actderc"), program_id=program_id, target=row.target)
            for k, key in enumerate(wave_keys):
                if k == 0:
                    continue
                new = doe_free_mrid(store)
                await conn.execute(
                    controls.insert().values(
                        mrid=new,
                        program_id=program_id,
                        target=key,
                        start=now,
                        duration=k * wave_interval,
                        randomize_start=None,
                        randomize_duration=None,
                        response_required=row.response_required,
                        base=row.base,
                        description=f"Staged restore wave {k + 1}"[:32],
                        creation_time=now,
                        version=0,
                    )
                )
                await _enqueue(conn, now, kinds=("derc", "actderc"), program_id=program_id, target=key)
                created.append(
                    {"mrid": new, "wave": k + 1, "target": waves[k], "release_at": now + k * wave_interval}
                )
        await admin._audit(
            conn,
            actor,
            "emergency.lift",
            target or mrid,
            reason,
            lifted=[row.mrid for row in rows],
            spread=spread,
            waves=waves,
            wave_interval=wave_interval,
        )
    return {
        "lifted": [row.mrid for row in rows],
        "mode": "spread" if spread is not None else "waves" if waves else "immediate",
        "spread": spread,
        "waves": created,
    }


def doe_free_mrid(store: Store) -> str:
    """A random mRID that can never be mistaken for a derived DOE mRID (those start with D)."""
    from sep2.mrid import new_mrid

    while True:
        mrid = new_mrid(store.pen)
        if not mrid.startswith("D"):
            return mrid


# ------------------------------------------------------------------------------------------- listener


# Modules adding their own routes: each has ``register(head, app)`` (routes kept out of this file).
EXTENSIONS = ("server.headend.incidents_api",)


def create_headend_app(store: Store, config: ServerConfig) -> web.Application:
    head = HeadEnd(store, config)
    # Large bodies (DOE uploads) are streamed by their handler; JSON bodies are bounded here.
    app = web.Application(middlewares=[head.middleware], client_max_size=64 * 1024 * 1024)
    head.add_routes(app)
    for extension in EXTENSIONS:
        importlib.import_module(extension).register(head, app)
    from server.console import mount_console

    mount_console(app, head)
    return app


async def start_headend(store: Store, config: ServerConfig) -> tuple[web.AppRunner, int]:
    from server.config import check_headend_transport

    check_headend_transport(config)  # also for configs built without load_config
    context = headend_ssl(config) if config.headend_tls else None
    runner = web.AppRunner(create_headend_app(store, config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.headend_host, config.headend_port, ssl_context=context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    scheme = "https" if context else "http"
    log.info("head-end API listening on %s://%s:%d/api", scheme, config.headend_host, port)
    return runner, port


def headend_ssl(config: ServerConfig) -> Any:
    """TLS with the server's own certificate; operators authenticate with bearer tokens, not certificates."""
    import ssl

    from certs.tls import server_ssl_context

    chain, key, ca = config.tls_files()
    context = server_ssl_context(chain, key, ca, require_client_cert=False)
    context.verify_mode = ssl.CERT_NONE
    return context


__all__ = ["ROUTES", "HeadEnd", "bulk_register", "create_headend_app", "doe_mrid", "start_headend"]
