"""The head-end's core: authentication (bearer tokens or a console session), the error middleware, and
the helpers the route modules share (a site by LFDI or NMI, a control as operator JSON, target names).

The routes themselves live by noun in the modules beside this one (sites, groups, programs, controls,
outcomes, emergencies, does, clients, audit, incidents_api); server.headend.api puts them together.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from sep2.identity import IdentityError, operator_lfdi
from server.config import ServerConfig
from server.errors import ApiError
from server.headend import models as m
from server.headend.doe import (
    IngestError,
)
from server.headend.errors import HeadEndError, Operator, bad
from server.headend.routing import (
    Handler,
    Route,
    add_routes,
    call,
    docs_page,
    ok,
    openapi_document,
    parse_body,
)
from server.headend.tokens import TokenStore
from server.limits import NOT_XML_CHAR
from server.store import (
    AdminError,
    Store,
    build_control_base,
    control_base_from_json,
    controls,
    ders,
    groups,
    sites,
)
from server.store.timeline import operator_status

log = logging.getLogger("derlink.headend")

TOKEN_FILE = "headend-token"
EMERGENCY_PROGRAM = "emergency"
OPERATOR = web.RequestKey("operator", Operator)
PUBLIC = ("/api/openapi.json", "/api/docs")  # the API's description is readable without a token


def check_request_text(request: web.Request) -> None:
    """Path and query values must be text that a 2030.5 document can carry; the error names the field."""
    for name, value in (*request.match_info.items(), *request.query.items()):
        if NOT_XML_CHAR.search(value) or any(c in value for c in "\r\n\t"):
            raise HeadEndError(400, f"{name}: control characters are not allowed", name)


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
        ("storage_target_w", "opModStorageTargetW"),
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


async def live_pieces(conn: Any, ids: list[int]) -> dict[int, int]:
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


async def target_names(conn: Any, keys: list[str]) -> dict[str, str]:
    """Store target keys ("all", "g:1", "s:2") as operator targets ("all", "group:x", "site:LFDI")."""
    group_ids = {int(k[2:]) for k in keys if k.startswith("g:")}
    site_ids = {int(k[2:]) for k in keys if k.startswith("s:")}
    der_ids = {int(k[2:]) for k in keys if k.startswith("d:")}
    names: dict[str, str] = {"all": "all"}
    if der_ids:  # a control for one DER alone: its site (the DER is the control's "der")
        for der_id, lfdi in await conn.execute(
            sa.select(ders.c.id, sites.c.lfdi)
            .join(sites, sites.c.id == ders.c.site_id)
            .where(ders.c.id.in_(der_ids))
        ):
            names[f"d:{der_id}"] = f"site:{lfdi}"
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


def der_of(key: str) -> int | None:
    """The DER id of a ``d:<der id>`` target key (a control for one DER alone), else None."""
    return int(key[2:]) if key.startswith("d:") else None


def control_json(
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
        "der": der_of(row.target),
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


class HeadEnd:
    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.admin = store.admin
        self.config = config
        # Digests only, plus the run-time token file (server.headend.tokens): revocation needs no restart.
        self.tokens = TokenStore(load_tokens(config), config.data_dir, Operator)
        self.writes: set[tuple[str, str]] = set()  # (method, path) that need an operator token
        self.routes: list[Route] = []
        self.handlers: dict[str, Handler] = {}
        self.session_auth: Callable[[web.Request], Operator | None] | None = None  # set by server.console
        data_dir = Path(config.data_dir)
        self.spool_dir = data_dir if data_dir.is_dir() else None  # upload spool next to the database

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
        """A request's JSON object body, for a handler whose route declares no body model."""
        return (await parse_body(m.Document, request)).root

    @staticmethod
    def actor(request: web.Request) -> str:
        return request[OPERATOR].name

    async def site_row(self, conn: Any, ref: str) -> Any:
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

    # -- routes

    def mount(self, app: web.Application, routes: list[Route], handlers: dict[str, Handler]) -> None:
        """Serve ``routes`` with ``handlers`` (by name); their writes need an operator token."""
        add_routes(app, routes, handlers)
        self.routes += routes
        self.handlers.update(handlers)
        self.writes |= {(route.method, route.path) for route in routes if route.write}

    async def answer(self, request: web.Request, handler: str) -> Any:
        """The JSON answer of the read route ``handler`` for this request (its query and match_info): the
        console renders the same data the API serves."""
        route = next(r for r in self.routes if r.handler == handler)
        data, _status = await call(route, self.handlers[handler], request)
        return data

    async def openapi(self, request: web.Request) -> web.Response:
        return ok(openapi_document(self.routes))

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=docs_page(openapi_document(self.routes)), content_type="text/html")


ROUTES = [
    Route("GET", "/api/whoami", "whoami", False, "The caller's token name and role", m.WhoAmI),
]


async def whoami(head: HeadEnd, request: web.Request) -> Any:
    op = request[OPERATOR]
    return {"name": op.name, "role": op.role}
