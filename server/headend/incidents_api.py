"""Head-end routes for incidents (seed 002), registered on the head-end app by ``register``.

GET  /api/incidents                 ?open=1&subject=site:<lfdi>
POST /api/incidents                 {"subject", "kind", "severity", "text", "holder"?}: raise, de-duped
GET  /api/incidents/{id}            one incident with its timeline
POST /api/incidents/{id}/actions    {"action", "reason", "referred_to"?, "root_cause"?}: the actor is the
                                    token's name; a refused transition is 409 and writes nothing
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from server.incidents import TransitionRefused
from server.incidents.repo import IncidentNotFound, Incidents

from .api import HeadEnd, HeadEndError, Route, ok

ROUTES = [
    Route("GET", "/api/incidents", "incidents_list", False, "Incidents", query=("open", "subject")),
    Route(
        "POST",
        "/api/incidents",
        "incidents_raise",
        True,
        "Raise an incident (one open per subject+kind)",
        body={k: "string" for k in ("subject", "kind", "severity", "text", "holder")},
    ),
    Route("GET", "/api/incidents/{id}", "incidents_get", False, "An incident and its timeline"),
    Route(
        "POST",
        "/api/incidents/{id}/actions",
        "incidents_act",
        True,
        "Triage, refer, respond, ready, resolve, close or note an incident",
        body={"action": "string", "reason": "string", "referred_to": "string", "root_cause": "string"},
    ),
]


def _json(inc: Any) -> dict[str, Any]:
    out = asdict(inc)
    out["timeline"] = [asdict(n) for n in inc.timeline]
    return out


def _string(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise HeadEndError(400, f"{name}: a non-empty string is required", name)
    return value


def register(head: HeadEnd, app: web.Application) -> None:
    repo = Incidents(head.store)

    def refused(exc: TransitionRefused) -> HeadEndError:
        return HeadEndError(409 if exc.field == "action" else 400, str(exc), exc.field)

    async def incidents_list(request: web.Request) -> web.Response:
        items = await repo.list(open_only=request.query.get("open") in ("1", "true"),
                                subject=request.query.get("subject"))  # fmt: skip
        return ok({"total": len(items), "items": [_json(i) for i in items]})

    async def incidents_raise(request: web.Request) -> web.Response:
        body = await head.body(request)
        try:
            inc, created = await repo.raise_incident(
                _string(body, "subject"), _string(body, "kind"), _string(body, "severity"),
                head.actor(request), _string(body, "holder", False) or head.actor(request),
                _string(body, "text"),
            )  # fmt: skip
        except TransitionRefused as exc:
            raise refused(exc) from None
        return ok({"created": created, "incident": _json(inc)}, status=201 if created else 200)

    async def incidents_get(request: web.Request) -> web.Response:
        try:
            return ok(_json(await repo.get(request.match_info["id"])))
        except IncidentNotFound as exc:
            raise HeadEndError(404, str(exc), "id") from None

    async def incidents_act(request: web.Request) -> web.Response:
        body = await head.body(request)
        try:
            inc = await repo.act(request.match_info["id"], _string(body, "action"), head.actor(request),
                                 _string(body, "reason"), referred_to=_string(body, "referred_to", False),
                                 root_cause=_string(body, "root_cause", False))  # fmt: skip
        except IncidentNotFound as exc:
            raise HeadEndError(404, str(exc), "id") from None
        except TransitionRefused as exc:
            raise refused(exc) from None
        return ok(_json(inc))

    handlers = {"incidents_list": incidents_list, "incidents_raise": incidents_raise,
                "incidents_get": incidents_get, "incidents_act": incidents_act}  # fmt: skip
    for route in ROUTES:
        app.router.add_route(route.method, route.path, handlers[route.handler])
        if route.write:
            head.writes.add((route.method, route.path))
