"""Head-end routes for incidents (seed 002), registered on the head-end app by ``register``.

    GET  /api/incidents                 ?open=1&subject=site:<lfdi>
    POST /api/incidents                 {"subject", "kind", "severity", "text", "holder"?}: raise, de-duped
    GET  /api/incidents/{id}            one incident with its timeline
    POST /api/incidents/{id}/actions    {"action", "reason", "referred_to"?, "root_cause"?}: the actor is the
                                        token's name; a refused transition is 409 and writes nothing
    POST /api/incidents/from-compliance {"site"? | "group"?, "from"?, "to"?}: assess (server.compliance) and
                                        raise one incident per site and kind found, de-duplicated

With ``incident_webhook_url`` configured, every raise, note and transition is also POSTed to the webhook
(server.incidents.webhook) in the background, after its commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import aiohttp
from aiohttp import web

from server.compliance.assess import Assessment, assess
from server.compliance.targets import resolve_scope
from server.incidents import Finding, Incident, TransitionRefused
from server.incidents.repo import IncidentNotFound, Incidents
from server.incidents.webhook import notify
from server.logsafe import escape_control

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
    Route(
        "POST",
        "/api/incidents/from-compliance",
        "incidents_from_compliance",
        True,
        "Assess compliance and raise an incident per site and kind found (breach, silent, non_responder)",
        body={"site": "string", "group": "string", "from": "integer", "to": "integer"},
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


log = logging.getLogger("derlink.server.incidents")
COMPLIANCE_REPORTER = "compliance"


def findings_from(result: Assessment) -> list[Finding]:
    """The incidents an assessment calls for: persistent breaches and silences (its findings), sites silent
    now, and sites that did not answer a control that asked for a Response."""
    out: list[Finding] = []
    for f in result.findings:
        kind = "breach" if f["kind"] == "persistent breach" else "silent"
        detail = f"{f['kind']} for {f['seconds']} s in [{result.t0}, {result.t1}); {f['suggested_action']}"
        out.append(Finding(f"site:{f['lfdi']}", kind, "high", detail))
    for lfdi in result.silent:
        out.append(Finding(f"site:{lfdi}", "silent", "medium", f"no telemetry at {result.t1}"))
    for mrid, lfdis in result.non_responders.items():
        for lfdi in lfdis:
            out.append(Finding(f"site:{lfdi}", "non_responder", "medium", f"no Response to control {mrid}"))
    first: dict[tuple[str, str], Finding] = {}
    for finding in out:  # one per site and kind: a persistent silence is also silent now
        first.setdefault((finding.subject, finding.kind), finding)
    return list(first.values())


def register(head: HeadEnd, app: web.Application) -> None:
    repo = Incidents(head.store)
    webhook_url = head.config.incident_webhook_url
    pending: set[asyncio.Task[None]] = set()
    http: dict[str, aiohttp.ClientSession] = {}

    async def deliver(incident: Incident) -> None:
        if "session" not in http:
            http["session"] = aiohttp.ClientSession()
        result = await notify(http["session"], webhook_url, incident, head.config.incident_webhook_secret)
        if not (isinstance(result, int) and 200 <= result < 300):
            log.warning("incident webhook for %s failed: %s", incident.id, escape_control(str(result)))

    def announce(incidents_: Iterable[Incident]) -> None:
        """Fire the webhook for committed changes; never awaited by the request."""
        if not webhook_url:
            return
        for incident in incidents_:
            task = asyncio.get_running_loop().create_task(deliver(incident))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def close_webhook(_app: web.Application) -> None:
        if pending:
            await asyncio.wait(set(pending), timeout=5)
        if "session" in http:
            await http.pop("session").close()

    app.on_cleanup.append(close_webhook)

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
        announce([inc])
        return ok({"created": created, "incident": _json(inc)}, status=201 if created else 200)

    async def incidents_from_compliance(request: web.Request) -> web.Response:
        body = await head.body(request)
        unknown = sorted(set(body) - {"site", "group", "from", "to"})
        if unknown:
            raise HeadEndError(400, f"{unknown[0]}: unknown field", unknown[0])
        now = head.store.clock()
        bounds = {}
        for name, default in (("to", int(now)), ("from", None)):
            value = body.get(name, default)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise HeadEndError(400, f"{name}: expected an integer (Unix seconds)", name)
            bounds[name] = value
        t1 = bounds["to"]
        t0 = bounds["from"] if bounds["from"] is not None else t1 - 86400
        try:
            async with head.store.read() as conn:
                scope = await resolve_scope(conn, lfdi=_string(body, "site", False),
                                            group=_string(body, "group", False))  # fmt: skip
                result = await assess(conn, scope, t0, t1, now=int(now),
                                      default_post_rate=head.config.post_rate, keep_sites=False)  # fmt: skip
        except ValueError as exc:
            field = str(exc).split(":", 1)[0] if ":" in str(exc) else None
            raise HeadEndError(400, str(exc), field if field and " " not in field else None) from None
        findings = findings_from(result)
        outcome = await repo.raise_from_findings(findings, COMPLIANCE_REPORTER, head.actor(request))
        announce([await repo.get(i) for i in outcome["created"] + outcome["noted"]])
        return ok({"scope": result.scope, "from": t0, "to": t1, "findings": len(findings), **outcome})

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
        announce([inc])
        return ok(_json(inc))

    handlers = {"incidents_list": incidents_list, "incidents_raise": incidents_raise,
                "incidents_get": incidents_get, "incidents_act": incidents_act,
                "incidents_from_compliance": incidents_from_compliance}  # fmt: skip
    for route in ROUTES:
        app.router.add_route(route.method, route.path, handlers[route.handler])
        if route.write:
            head.writes.add((route.method, route.path))
