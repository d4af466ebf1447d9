"""The head-end operator API: JSON over HTTP on its own listener (loopback by default).

* Authentication: ``Authorization: Bearer <token>``; tokens come from the server config with a role,
  ``operator`` (read and write) or ``viewer`` (read only). Missing or unknown token: 401. A viewer
  writing: 403.
* Every write goes through the store's admin API or the functions below, which audit it (who = token
  name, what, target, when, reason) in the same transaction and queue notifications for subscribers.
* Errors are JSON ``{"error": ..., "field": ...}``; the message names the field. Nothing changes on error.
* The OpenAPI document at ``/api/openapi.json`` is generated from the same route table as the router, so
  it cannot drift from what is served.
"""

from __future__ import annotations

import importlib
import json
import logging
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from sep2.identity import IdentityError, operator_lfdi, sfdi_from_lfdi
from sep2.nmi import NmiError, validate_nmi
from server.compliance.acks import DEFAULT_WITHIN_S, UnknownControl, ack_csv, ack_summary
from server.compliance.assess import act_on_finding, assess, assessment_csv
from server.compliance.judge import Rules
from server.compliance.targets import resolve_scope
from server.config import ServerConfig
from server.errors import ApiError
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
from server.headend.telemetry import reading_json, telemetry, telemetry_csv
from server.headend.tokens import TokenStore
from server.limits import NOT_XML_CHAR, InputError, load_json
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
BASE_FIELDS = {
    "import_limit_w": "number",
    "export_limit_w": "number",
    "generation_limit_w": "number",
    "load_limit_w": "number",
    "target_w": "number",
    "connect": "boolean",
    "energize": "boolean",
    "fixed_w_percent": "integer",
    "max_lim_w_percent": "integer",
    "ramp_tms": "integer",
}
EMERGENCY_ACTIONS = {
    "zero_export": {"export_limit_w": 0},
    "zero_generation": {"generation_limit_w": 0},
    "generation_limit": {},  # generation_limit_w from the request
    "disconnect": {"connect": False},
    "deenergise": {"energize": False},
}
EMERGENCY_PROGRAM = "emergency"


MAX_JSON_BYTES = 16 * 1024 * 1024  # JSON bodies; DOE uploads are streamed and bounded by their handler


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(value)
    return value


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(_jsonable(data), status=status, dumps=lambda v: json.dumps(v, default=str))


def _int_query(request: web.Request, name: str, default: int | None, low: int = 0, high: int = 10**12) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad(f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise bad(f"{name}: must be in {low}..{high}, got {value}")
    return value


def checked_nmi(value: Any, field: str) -> str | None:
    """An AEMO NMI (10 characters, or 11 with a matching checksum), cleaned; errors name ``field``."""
    if value is None:
        return None
    try:
        nmi = validate_nmi(value)
    except NmiError as exc:
        raise bad(f"{field}: {exc}") from None
    return nmi.with_checksum if nmi.checksum_given else nmi.nmi


def norm_target(target: Any) -> str:
    if not isinstance(target, str) or not target:
        raise bad("target: required ('all', 'group:NAME', 'site:LFDI' or 'nmi:NMI')")
    if target in ("broadcast", "group:all", "group:broadcast"):
        return "all"
    return target


def _check_fields(body: dict[str, Any], allowed: set[str], required: tuple[str, ...] = ()) -> None:
    for name in body:
        if name not in allowed:
            raise bad(f"{name}: unknown field (expected one of {', '.join(sorted(allowed))})")
    for name in required:
        if body.get(name) is None:
            raise bad(f"{name}: required")


def _typed(body: dict[str, Any], name: str, kind: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad(f"{name}: expected an integer, got {value!r}")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise bad(f"{name}: expected a number, got {value!r}")
    if kind == "boolean" and not isinstance(value, bool):
        raise bad(f"{name}: expected true or false, got {value!r}")
    if kind == "string" and not isinstance(value, str):
        raise bad(f"{name}: expected a string, got {value!r}")
    return value


def control_base(body: dict[str, Any]) -> Any:
    kwargs = {name: _typed(body, name, kind) for name, kind in BASE_FIELDS.items()}
    try:
        return build_control_base(**kwargs)
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


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str
    write: bool
    summary: str
    body: dict[str, str] | None = None  # field -> JSON type, for the OpenAPI document
    query: tuple[str, ...] = ()
    content: str = "application/json"


ROUTES: list[Route] = [
    Route("GET", "/api/whoami", "whoami", False, "The caller's token name and role"),
    Route(
        "GET", "/api/sites", "sites_list", False, "List/search sites", query=("q", "group", "offset", "limit")
    ),
    Route(
        "POST",
        "/api/sites",
        "site_register",
        True,
        "Register a site out of band",
        {
            "lfdi": "string",
            "sfdi": "integer",
            "nmi": "string",
            "pin": "integer",
            "label": "string",
            "groups": "array",
            "aggregator": "string",
            "device_category": "string",
            "reason": "string",
        },
    ),
    Route(
        "POST",
        "/api/sites/bulk",
        "sites_bulk",
        True,
        "Register many sites in one transaction",
        {"sites": "array", "reason": "string"},
    ),
    Route("GET", "/api/sites/{site}", "site_detail", False, "Site detail: contact, DER, controls, telemetry"),
    Route(
        "DELETE",
        "/api/sites/{site}",
        "site_deregister",
        True,
        "Deregister (decommission) a site",
        query=("reason",),
    ),
    Route(
        "PUT",
        "/api/sites/{site}/groups/{group}",
        "site_join",
        True,
        "Add a site to a group",
        query=("reason",),
    ),
    Route(
        "DELETE",
        "/api/sites/{site}/groups/{group}",
        "site_leave",
        True,
        "Remove a site from a group",
        query=("reason",),
    ),
    Route(
        "DELETE",
        "/api/sites/{site}/mups",
        "site_clear_mups",
        True,
        "Clear a site's MirrorUsagePoints",
        query=("reason",),
    ),
    Route(
        "GET",
        "/api/sites/{site}/does",
        "site_does",
        False,
        "A site's DOE intervals",
        query=("since", "limit"),
    ),
    Route("GET", "/api/groups", "groups_list", False, "Groups (nested) with member counts"),
    Route(
        "POST",
        "/api/groups",
        "group_create",
        True,
        "Create a group",
        {"name": "string", "parent": "string", "description": "string", "reason": "string"},
    ),
    Route(
        "GET",
        "/api/groups/{group}",
        "group_detail",
        False,
        "A group and its members",
        query=("offset", "limit"),
    ),
    Route("GET", "/api/programs", "programs_list", False, "DERPrograms with primacy"),
    Route(
        "POST",
        "/api/programs",
        "program_create",
        True,
        "Create a DERProgram",
        {
            "key": "string",
            "primacy": "integer",
            "description": "string",
            "group": "string",
            "reason": "string",
        },
    ),
    Route(
        "PATCH",
        "/api/programs/{name}",
        "program_update",
        True,
        'Rename, re-rank, move (group; "" = every site) or switch off a DERProgram, built-ins included',
        {
            "description": "string",
            "primacy": "integer",
            "group": "string",
            "enabled": "boolean",
            "reason": "string",
        },
    ),
    Route("GET", "/api/defaults", "defaults_list", False, "DefaultDERControls"),
    Route(
        "PUT",
        "/api/defaults",
        "default_set",
        True,
        "Set the DefaultDERControl of a program for a target",
        {
            "program": "string",
            "target": "string",
            "set_grad_w": "integer",
            "description": "string",
            "reason": "string",
            **BASE_FIELDS,
        },
    ),
    Route(
        "GET",
        "/api/controls",
        "controls_list",
        False,
        "DERControls",
        query=("program", "target", "active", "offset", "limit"),
    ),
    Route(
        "POST",
        "/api/controls",
        "control_create",
        True,
        "Create a DERControl for a site, group or all",
        {
            "program": "string",
            "target": "string",
            "start": "integer",
            "duration": "integer",
            "randomize_start": "integer",
            "randomize_duration": "integer",
            "response_required": "string",
            "description": "string",
            "reason": "string",
            **BASE_FIELDS,
        },
    ),
    Route("GET", "/api/controls/{mrid}", "control_detail", False, "A DERControl, its status and responses"),
    Route(
        "GET",
        "/api/controls/{mrid}/acks",
        "control_acks",
        False,
        "Acknowledgements of a control: counts by Response status, non-responders (CSV with format=csv)",
        query=("within", "format"),
    ),
    Route(
        "POST",
        "/api/compliance/act",
        "compliance_act",
        True,
        "Answer a compliance finding with a normal, audited control (default: zero export for an hour)",
        {"site": "string", "duration": "integer", "export_limit_w": "number", "reason": "string"},
    ),
    Route(
        "GET",
        "/api/telemetry",
        "telemetry",
        False,
        "Telemetry of a site, a group or all sites in real units, with group totals (CSV with format=csv)",
        query=("site", "group", "from", "to", "format"),
    ),
    Route(
        "GET",
        "/api/compliance",
        "compliance",
        False,
        "Compliance of a site, a group or all sites over a time range (CSV with format=csv)",
        query=(
            "site",
            "group",
            "from",
            "to",
            "tolerance_w",
            "tolerance_pct",
            "settle_s",
            "silent_posts",
            "ack_within_s",
            "persistent_breach_s",
            "detail",
            "format",
        ),
    ),
    Route(
        "POST",
        "/api/controls/{mrid}/cancel",
        "control_cancel",
        True,
        "Cancel a DERControl",
        {"reason": "string"},
    ),
    Route(
        "POST",
        "/api/emergency",
        "emergency",
        True,
        "Emergency command on the emergency program, now",
        {
            "target": "string",
            "action": "string",
            "generation_limit_w": "number",
            "duration": "integer",
            "randomize_duration": "integer",
            "reason": "string",
        },
    ),
    Route(
        "POST",
        "/api/emergency/lift",
        "emergency_lift",
        True,
        "Lift emergency controls, at once, spread by randomisation, or in group waves",
        {
            "target": "string",
            "mrid": "string",
            "spread": "integer",
            "waves": "array",
            "wave_interval": "integer",
            "reason": "string",
        },
    ),
    Route(
        "POST",
        "/api/does",
        "doe_upload",
        True,
        "Bulk DOE upload (CSV or JSON, streamed, atomic)",
        query=("format", "reason"),
        content="text/csv",
    ),
    Route("GET", "/api/does/uploads", "doe_uploads", False, "DOE uploads", query=("limit",)),
    Route("GET", "/api/rates", "rates_list", False, "pollRate/postRate overrides"),
    Route(
        "PUT",
        "/api/rates",
        "rate_set",
        True,
        "Set a pollRate/postRate for all, a group or a site",
        {"resource": "string", "value": "integer", "target": "string", "reason": "string"},
    ),
    Route(
        "DELETE",
        "/api/rates",
        "rate_clear",
        True,
        "Remove a rate override",
        query=("resource", "target", "reason"),
    ),
    Route("GET", "/api/clients", "clients_list", False, "Client certificates, revocation, last contact"),
    Route(
        "POST",
        "/api/clients/{lfdi}/revoke",
        "client_revoke",
        True,
        "Revoke a client certificate",
        {"reason": "string"},
    ),
    Route(
        "POST",
        "/api/clients/{lfdi}/restore",
        "client_restore",
        True,
        "Restore a revoked certificate",
        {"reason": "string"},
    ),
    Route("GET", "/api/aggregators", "aggregators_list", False, "Aggregators and their certificates"),
    Route(
        "POST",
        "/api/aggregators",
        "aggregator_create",
        True,
        "Create an aggregator",
        {"name": "string", "lfdis": "array", "reason": "string"},
    ),
    Route(
        "POST",
        "/api/aggregators/{name}/certificates",
        "aggregator_add_cert",
        True,
        "Add a certificate to an aggregator (rotation step 1)",
        {"lfdi": "string", "reason": "string"},
    ),
    Route(
        "DELETE",
        "/api/aggregators/{name}/certificates/{lfdi}",
        "aggregator_remove_cert",
        True,
        "Remove (revoke) an aggregator certificate (rotation step 2)",
        query=("reason",),
    ),
    Route(
        "GET",
        "/api/audit",
        "audit",
        False,
        "The audit log",
        query=("actor", "action", "target", "since", "until", "offset", "limit"),
    ),
]


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    extra = [r for m in EXTENSIONS for r in importlib.import_module(m).ROUTES]
    for route in ROUTES + extra:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler,
            "security": [{"bearer": []}],
            "x-derlink-role": "operator" if route.write else "viewer",
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in _path_params(route.path)
            ]
            + [{"name": q, "in": "query", "schema": {"type": "string"}} for q in route.query],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "400": {"description": "invalid request; error names the field"},
                "401": {"description": "missing or unknown bearer token"},
                "403": {"description": "the token's role may not do this"},
                "404": {"description": "not found"},
            },
        }
        if route.body is not None:
            op["requestBody"] = {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {k: {"type": v} for k, v in route.body.items()},
                        }
                    }
                }
            }
        elif route.content != "application/json":
            op["requestBody"] = {
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                }
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "derlink head-end API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


OPERATOR = web.RequestKey("operator", Operator)


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
            if request.path.startswith("/api/") and request.path != "/api/openapi.json":
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
        if not request.can_read_body:
            return {}
        try:
            data = load_json(await request.read(), max_bytes=MAX_JSON_BYTES)
        except InputError as exc:
            raise HeadEndError(400, exc.detail, exc.field) from None
        if not isinstance(data, dict):
            raise bad("body: expected a JSON object")
        return data

    @staticmethod
    def actor(request: web.Request) -> str:
        return request[OPERATOR].name

    @staticmethod
    def reason(request: web.Request, body: dict[str, Any] | None = None) -> str | None:
        value = (body or {}).get("reason", request.query.get("reason"))
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise bad("reason: a string of at most 256 characters")
        return value

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

    async def whoami(self, request: web.Request) -> web.Response:
        op = request[OPERATOR]
        return ok({"name": op.name, "role": op.role})

    async def openapi(self, request: web.Request) -> web.Response:
        return ok(openapi_document())

    # -- sites

    async def sites_list(self, request: web.Request) -> web.Response:
        offset = _int_query(request, "offset", 0)
        limit = _int_query(request, "limit", 50, 1, 1000)
        cond: list[Any] = []
        q = request.query.get("q")
        if q:
            like = f"%{q}%"
            cond.append(
                sa.or_(
                    sites.c.lfdi.like(f"{q.upper()}%"), sites.c.nmi.like(f"{q}%"), sites.c.label.like(like)
                )
            )
        group = request.query.get("group")
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
        for m in member_rows:
            names.setdefault(m.site_id, []).append(m.name)
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
        return ok({"total": total, "offset": offset, "items": items})

    async def site_register(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(
            body,
            {"lfdi", "sfdi", "nmi", "pin", "label", "groups", "aggregator", "device_category", "reason"},
            ("lfdi",),
        )
        for name, kind in (
            ("lfdi", "string"),
            ("nmi", "string"),
            ("label", "string"),
            ("sfdi", "integer"),
            ("pin", "integer"),
            ("aggregator", "string"),
            ("device_category", "string"),
        ):
            _typed(body, name, kind)
        group_names = body.get("groups") or []
        if not isinstance(group_names, list) or not all(isinstance(g, str) for g in group_names):
            raise bad("groups: expected a list of group names")
        if body.get("label") is not None and len(body["label"]) > 128:
            raise bad("label: at most 128 characters")
        site_id = await self.admin.register_site(
            body["lfdi"],
            sfdi=body.get("sfdi"),
            nmi=checked_nmi(body.get("nmi"), "nmi"),
            pin=body.get("pin"),
            aggregator=body.get("aggregator"),
            groups_=group_names,
            label=body.get("label"),
            device_category=body.get("device_category"),
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok({"id": site_id, "lfdi": operator_lfdi(body["lfdi"]), "href": f"/edev/{site_id}"}, 201)

    async def sites_bulk(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"sites", "reason"}, ("sites",))
        if not isinstance(body["sites"], list):
            raise bad("sites: expected a list of site objects")
        count = await bulk_register(
            self.store, body["sites"], actor=self.actor(request), reason=self.reason(request, body)
        )
        return ok({"registered": count}, 201)

    async def site_detail(self, request: web.Request) -> web.Response:
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
        return ok(
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

    async def site_deregister(self, request: web.Request) -> web.Response:
        ref = request.match_info["site"]
        actor, reason = self.actor(request), self.reason(request)
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
        return ok({"deregistered": site.lfdi, "removed": counts})

    async def site_join(self, request: web.Request) -> web.Response:
        return await self._membership(request, True)

    async def site_leave(self, request: web.Request) -> web.Response:
        return await self._membership(request, False)

    async def _membership(self, request: web.Request, member: bool) -> web.Response:
        async with self.store.read() as conn:
            site = await self._site_row(conn, request.match_info["site"])
        group = request.match_info["group"]
        await self.admin.set_membership(
            site.lfdi, group, member, actor=self.actor(request), reason=self.reason(request)
        )
        return ok({"site": site.lfdi, "group": group, "member": member})

    async def site_clear_mups(self, request: web.Request) -> web.Response:
        actor, reason = self.actor(request), self.reason(request)
        async with self.store.write() as conn:
            site = await self._site_row(conn, request.match_info["site"])
            removed = (await conn.execute(mups.delete().where(mups.c.site_id == site.id))).rowcount
            await self.admin._audit(conn, actor, "site.clear_mups", site.lfdi, reason, removed=removed)
        return ok({"site": site.lfdi, "removed": removed})

    async def site_does(self, request: web.Request) -> web.Response:
        async with self.store.read() as conn:
            site = await self._site_row(conn, request.match_info["site"])
        items = await site_intervals(
            self.store,
            site.id,
            since=_int_query(request, "since", None),
            limit=_int_query(request, "limit", 500, 1, 10000),
        )
        return ok({"site": site.lfdi, "items": items})

    # -- groups and programs

    async def groups_list(self, request: web.Request) -> web.Response:
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
        return ok({"items": items})

    async def group_create(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"name", "parent", "description", "reason"}, ("name",))
        for name in ("name", "parent", "description"):
            _typed(body, name, "string")
        if body["name"] in ("all", "broadcast"):
            raise bad(f"name: {body['name']!r} is the built-in broadcast group")
        gid = await self.admin.create_group(
            body["name"],
            parent=body.get("parent"),
            description=body.get("description"),
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok({"id": gid, "name": body["name"]}, 201)

    async def group_detail(self, request: web.Request) -> web.Response:
        name = request.match_info["group"]
        offset = _int_query(request, "offset", 0)
        limit = _int_query(request, "limit", 100, 1, 1000)
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
            return ok(
                {
                    "name": row.name,
                    "parent": parent,
                    "description": row.description,
                    "children": list(children),
                    "programs": list(progs),
                    "fsa": row.id,
                    "total_sites": total,
                    "sites": [dict(m._mapping) for m in page],
                }
            )

    async def programs_list(self, request: web.Request) -> web.Response:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(programs, groups.c.name.label("group"))
                    .join(groups, groups.c.id == programs.c.group_id, isouter=True)
                    .order_by(programs.c.primacy, programs.c.id)
                )
            ).all()
        return ok(
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

    async def program_update(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"description", "primacy", "group", "enabled", "reason"}, ())
        kinds = {"description": "string", "primacy": "integer", "group": "string", "enabled": "boolean"}
        values = {name: _typed(body, name, kind) for name, kind in kinds.items()}
        key = request.match_info["name"]
        await self.admin.update_program(
            key, **values, actor=self.actor(request), reason=self.reason(request, body)
        )
        return ok({"key": key})

    async def program_create(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"key", "primacy", "description", "group", "reason"}, ("key", "primacy"))
        for name, kind in (
            ("key", "string"),
            ("primacy", "integer"),
            ("description", "string"),
            ("group", "string"),
        ):
            _typed(body, name, kind)
        pid = await self.admin.create_program(
            body["key"],
            primacy=body["primacy"],
            description=body.get("description"),
            group=body.get("group"),
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok({"id": pid, "key": body["key"]}, 201)

    # -- defaults

    async def defaults_list(self, request: web.Request) -> web.Response:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(default_controls, programs.c.key.label("program")).join(
                        programs, programs.c.id == default_controls.c.program_id
                    )
                )
            ).all()
            targets = await _target_names(conn, [row.target for row in rows])
        return ok(
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

    async def default_set(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(
            body,
            {"program", "target", "set_grad_w", "description", "reason", *BASE_FIELDS},
            ("program", "target"),
        )
        base = control_base(body)
        mrid = await self.admin.set_default_control(
            _typed(body, "program", "string"),
            norm_target(body["target"]),
            base=base,
            set_grad_w=_typed(body, "set_grad_w", "integer"),
            description=_typed(body, "description", "string"),
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok({"mrid": mrid})

    # -- controls

    async def controls_list(self, request: web.Request) -> web.Response:
        offset = _int_query(request, "offset", 0)
        limit = _int_query(request, "limit", 100, 1, 1000)
        now = self.store.clock()
        # The operator's own controls; the pieces a split republished show in their original's detail.
        cond: list[Any] = [controls.c.split_from.is_(None)]
        async with self.store.read() as conn:
            if request.query.get("program"):
                cond.append(programs.c.key == request.query["program"])
            if request.query.get("target"):
                key = await self.admin._resolve_target(conn, norm_target(request.query["target"]))
                cond.append(controls.c.target == key)
            if request.query.get("active") in ("1", "true", "yes"):
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
        return ok({"total": total, "offset": offset, "items": items})

    async def control_create(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        allowed = {
            "program",
            "target",
            "start",
            "duration",
            "randomize_start",
            "randomize_duration",
            "response_required",
            "description",
            "reason",
            *BASE_FIELDS,
        }
        _check_fields(body, allowed, ("program", "target", "duration"))
        start = body.get("start")
        if start == "now":
            start = None
        for name in ("duration", "randomize_start", "randomize_duration"):
            _typed(body, name, "integer")
        if start is not None:
            _typed({"start": start}, "start", "integer")
        base = control_base(body)
        mrid = await self.admin.create_control(
            _typed(body, "program", "string"),
            norm_target(body["target"]),
            start=start,
            duration=body["duration"],
            base=base,
            randomize_start=body.get("randomize_start"),
            randomize_duration=body.get("randomize_duration"),
            response_required=_typed(body, "response_required", "string")
            if "response_required" in body
            else "03",
            description=_typed(body, "description", "string"),
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        # Sites whose DERCapability says they cannot apply it are flagged to the operator (issue 11 item 12).
        async with self.store.read() as conn:
            key = await self.admin._resolve_target(conn, norm_target(body["target"]))
            unsupported = await unsupported_by_target(conn, key, base)
        return ok({"mrid": mrid, "unsupported": unsupported}, 201)

    async def control_detail(self, request: web.Request) -> web.Response:
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
                        return ok(
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
        return ok(item)

    async def control_acks(self, request: web.Request) -> web.Response:
        mrid = request.match_info["mrid"].upper()
        within = _int_query(request, "within", DEFAULT_WITHIN_S, 0, 10**7)
        async with self.store.read() as conn:
            try:
                if request.query.get("format") == "csv":
                    return web.Response(
                        text=await ack_csv(conn, mrid, within_s=within), content_type="text/csv"
                    )
                return ok(await ack_summary(conn, mrid, now=self.store.clock(), within_s=within))
            except UnknownControl as exc:
                raise HeadEndError(404, str(exc), "mrid") from None

    async def compliance_act(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"site", "duration", "export_limit_w", "reason"}, ("site", "reason"))
        duration = _typed(body, "duration", "integer")
        limit = _typed(body, "export_limit_w", "number")
        mrid = await act_on_finding(
            self.admin,
            _typed(body, "site", "string"),
            duration=3600 if duration is None else duration,
            export_limit_w=0.0 if limit is None else limit,
            actor=self.actor(request),
            reason=_typed(body, "reason", "string"),
        )
        return ok({"mrid": mrid}, 201)

    async def telemetry(self, request: web.Request) -> web.Response:
        now = self.store.clock()
        to = _int_query(request, "to", now)
        since = _int_query(request, "from", to - 3600)
        try:
            async with self.store.read() as conn:
                scope = await resolve_scope(
                    conn, lfdi=request.query.get("site"), group=request.query.get("group")
                )
                data = await telemetry(conn, scope, since, to)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if request.query.get("format") == "csv":
            return web.Response(text=telemetry_csv(data), content_type="text/csv")
        return ok(data)

    async def compliance(self, request: web.Request) -> web.Response:
        """The compliance service (server.compliance.assess) over HTTP; rules default to the demo's."""
        now = self.store.clock()
        to = _int_query(request, "to", now)
        since = _int_query(request, "from", to - 86400)
        rules: dict[str, Any] = {}
        for name in ("tolerance_w", "tolerance_pct", "settle_s"):
            if request.query.get(name):
                try:
                    rules[name] = float(request.query[name])
                except ValueError:
                    raise bad(f"{name}: expected a number, got {request.query[name]!r}") from None
        for name in ("silent_posts", "ack_within_s", "persistent_breach_s"):
            value = _int_query(request, name, None)
            if value is not None:
                rules[name] = value
        try:
            parsed = Rules.from_mapping(rules)
            async with self.store.read() as conn:
                scope = await resolve_scope(
                    conn, lfdi=request.query.get("site"), group=request.query.get("group")
                )
                result = await assess(
                    conn,
                    scope,
                    since,
                    to,
                    now=now,
                    rules=parsed,
                    default_post_rate=self.config.post_rate,
                    detail=request.query.get("detail") in ("1", "true", "yes"),
                )
        except ValueError as exc:
            raise bad(str(exc)) from None
        if request.query.get("format") == "csv":
            return web.Response(text=assessment_csv(result), content_type="text/csv")
        return ok(result.as_json())

    async def control_cancel(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"reason"})
        mrid = request.match_info["mrid"]
        try:
            await self.admin.cancel_control(
                mrid, actor=self.actor(request), reason=self.reason(request, body)
            )
        except AdminError as exc:
            raise HeadEndError(404, str(exc), "mrid") from None
        return ok({"mrid": mrid.upper(), "status": "cancelled"})

    # -- emergency

    async def emergency(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(
            body,
            {"target", "action", "generation_limit_w", "duration", "randomize_duration", "reason"},
            ("target", "action"),
        )
        action = body["action"]
        if action not in EMERGENCY_ACTIONS:
            raise bad(f"action: must be one of {', '.join(EMERGENCY_ACTIONS)}, got {action!r}")
        limits = dict(EMERGENCY_ACTIONS[action])
        if action == "generation_limit":
            if body.get("generation_limit_w") is None:
                raise bad("generation_limit_w: required for action generation_limit")
            limits["generation_limit_w"] = _typed(body, "generation_limit_w", "number")
        elif body.get("generation_limit_w") is not None:
            raise bad("generation_limit_w: only for action generation_limit")
        duration = _typed(body, "duration", "integer")
        duration = 86400 if duration is None else duration  # until lifted (a day at most by default)
        base = control_base(limits)
        mrid = await self.admin.create_control(
            EMERGENCY_PROGRAM,
            norm_target(body["target"]),
            start=None,
            duration=duration,
            base=base,
            randomize_duration=_typed(body, "randomize_duration", "integer"),
            response_required="03",
            description=f"Emergency {action}"[:32],
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok({"mrid": mrid, "action": action, "target": body["target"], "duration": duration}, 201)

    async def emergency_lift(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"target", "mrid", "spread", "waves", "wave_interval", "reason"})
        spread = _typed(body, "spread", "integer")
        waves = body.get("waves")
        interval = _typed(body, "wave_interval", "integer")
        if spread is not None and not 0 < spread < 2**15:
            raise bad(f"spread: seconds in 1..32767 (randomizeDuration is Int16), got {spread}")
        if waves is not None:
            if spread is not None:
                raise bad("waves: give either spread or waves, not both")
            if not isinstance(waves, list) or not waves or not all(isinstance(w, str) for w in waves):
                raise bad("waves: expected a non-empty list of group targets")
            if interval is None or interval <= 0:
                raise bad("wave_interval: required, a positive number of seconds")
        result = await lift_emergency(
            self.store,
            target=norm_target(body["target"]) if body.get("target") is not None else None,
            mrid=_typed(body, "mrid", "string"),
            spread=spread,
            waves=[norm_target(w) for w in waves] if waves else None,
            wave_interval=interval,
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok(result)

    # -- DOE bulk upload

    async def doe_upload(self, request: web.Request) -> web.Response:
        fmt = request.query.get("format")
        if fmt is None:
            ctype = request.content_type
            fmt = (
                "json"
                if ctype in ("application/json", "application/x-ndjson", "application/jsonl")
                else "csv"
            )
        reason = self.reason(request)

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
        return ok(result.as_json(), 201)

    async def doe_uploads(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", 50, 1, 1000)
        async with self.store.read() as conn:
            rows = (
                await conn.execute(sa.select(doe_uploads).order_by(doe_uploads.c.id.desc()).limit(limit))
            ).all()
        return ok({"items": [dict(row._mapping) for row in rows]})

    # -- rates

    async def rates_list(self, request: web.Request) -> web.Response:
        async with self.store.read() as conn:
            rows = (await conn.execute(sa.select(rate_settings))).all()
            targets = await _target_names(conn, [row.target for row in rows])
        return ok(
            {
                "defaults": {"poll_rate": self.config.poll_rate, "post_rate": self.config.post_rate},
                "items": [
                    {"resource": row.resource, "target": targets[row.target], "value": row.value}
                    for row in rows
                ],
            }
        )

    async def rate_set(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"resource", "value", "target", "reason"}, ("resource", "value"))
        await self.admin.set_rate(
            _typed(body, "resource", "string"),
            _typed(body, "value", "integer"),
            norm_target(body.get("target", "all")),
            actor=self.actor(request),
            reason=self.reason(request, body),
        )
        return ok({"resource": body["resource"], "value": body["value"], "target": body.get("target", "all")})

    async def rate_clear(self, request: web.Request) -> web.Response:
        resource = request.query.get("resource")
        if not resource:
            raise bad("resource: required")
        target = norm_target(request.query.get("target", "all"))
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
                conn, self.actor(request), "rate.clear", target, self.reason(request), resource=resource
            )
        return ok({"resource": resource, "target": target, "removed": True})

    # -- clients and aggregators

    async def clients_list(self, request: web.Request) -> web.Response:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(clients, aggregators.c.name.label("aggregator"))
                    .join(aggregators, aggregators.c.id == clients.c.aggregator_id, isouter=True)
                    .order_by(clients.c.lfdi)
                )
            ).all()
        return ok(
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

    async def client_revoke(self, request: web.Request) -> web.Response:
        return await self._revoke(request, True)

    async def client_restore(self, request: web.Request) -> web.Response:
        return await self._revoke(request, False)

    async def _revoke(self, request: web.Request, revoked: bool) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"reason"})
        lfdi = request.match_info["lfdi"]
        await self.admin.set_revoked(
            lfdi, revoked, actor=self.actor(request), reason=self.reason(request, body)
        )
        return ok({"lfdi": lfdi.upper(), "revoked": revoked})

    async def aggregators_list(self, request: web.Request) -> web.Response:
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
        return ok(
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

    async def aggregator_create(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"name", "lfdis", "reason"}, ("name",))
        _typed(body, "name", "string")
        lfdis = body.get("lfdis") or []
        if not isinstance(lfdis, list) or not all(isinstance(x, str) for x in lfdis):
            raise bad("lfdis: expected a list of LFDIs")
        agg = await self.admin.create_aggregator(
            body["name"], lfdis=lfdis, actor=self.actor(request), reason=self.reason(request, body)
        )
        return ok({"id": agg, "name": body["name"]}, 201)

    async def aggregator_add_cert(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        _check_fields(body, {"lfdi", "reason"}, ("lfdi",))
        name = request.match_info["name"]
        await self.admin.add_aggregator_certificate(
            name, _typed(body, "lfdi", "string"), actor=self.actor(request), reason=self.reason(request, body)
        )
        return ok({"aggregator": name, "added": body["lfdi"].upper()}, 201)

    async def aggregator_remove_cert(self, request: web.Request) -> web.Response:
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
                self.reason(request),
                lfdi=lfdi,
            )
        return ok({"aggregator": name, "removed": lfdi})

    # -- audit

    async def audit(self, request: web.Request) -> web.Response:
        offset = _int_query(request, "offset", 0)
        limit = _int_query(request, "limit", 100, 1, 10000)
        cond = []
        for name in ("actor", "action"):
            if request.query.get(name):
                value = request.query[name]
                cond.append(audit_log.c[name].like(value.replace("*", "%")))
        if request.query.get("target"):
            cond.append(audit_log.c.target.like(f"%{request.query['target']}%"))
        since = _int_query(request, "since", None)
        until = _int_query(request, "until", None)
        if since is not None:
            cond.append(audit_log.c.at >= since)
        if until is not None:
            cond.append(audit_log.c.at < until)
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
        return ok({"total": total, "offset": offset, "items": items})

    # -- wiring

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/openapi.json", self.openapi)
        for route in ROUTES:
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = getattr(self, route.handler)
            app.router.add_route(route.method, route.path, handler)


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


async def bulk_register(
    store: Store, items: list[Any], *, actor: str, reason: str | None = None, aggregator: str | None = None
) -> int:
    """Register many sites in one transaction (all or none); errors name the item index and field."""
    now = store.clock()
    values = []
    wanted_groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"sites[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where}: expected an object")
        unknown = set(item) - {"lfdi", "nmi", "pin", "label", "groups", "aggregator", "device_category"}
        if unknown:
            raise bad(f"{where}.{sorted(unknown)[0]}: unknown field")
        try:
            lfdi = operator_lfdi(item.get("lfdi") or "")
        except IdentityError as exc:
            raise bad(f"{where}.lfdi: {exc}") from None
        if lfdi in seen:
            raise bad(f"{where}.lfdi: {lfdi} appears twice")
        seen.add(lfdi)
        pin = item.get("pin")
        if pin is not None and (not isinstance(pin, int) or not 0 <= pin <= 999999):
            raise bad(f"{where}.pin: must be 0..999999")
        nmi = checked_nmi(item.get("nmi"), f"{where}.nmi")
        values.append(
            dict(
                lfdi=lfdi,
                sfdi=sfdi_from_lfdi(lfdi),
                aggregator_id=item.get("aggregator") or aggregator,
                device_category=item.get("device_category"),
                enabled=True,
                changed_time=now,
                registered_time=now,
                pin=pin,
                nmi=nmi,
                label=item.get("label"),
            )
        )
        gl = item.get("groups") or []
        if not isinstance(gl, list) or not all(isinstance(g, str) for g in gl):
            raise bad(f"{where}.groups: expected a list of group names")
        if gl:
            wanted_groups.append((lfdi, gl))
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
    if (target is None) == (mrid is None):
        raise bad("target: give either target or mrid")
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
EXTENSIONS = ("server.headend.incidents_api", "server.headend.standing")


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
