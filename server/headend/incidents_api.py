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

from . import models as m
from .core import HeadEnd
from .errors import HeadEndError
from .routing import Route

ROUTES = [
    Route("GET", "/api/incidents", "incidents_list", False, "Incidents", m.IncidentList,
          query=m.IncidentQuery),
    Route("POST", "/api/incidents", "incidents_raise", True, "Raise an incident (one open per subject+kind)",
          m.IncidentRaised, body=m.IncidentRaise, status=201,
          also=((200, "one is open for that subject and kind: it gets a note, created is false"),)),
    Route("POST", "/api/incidents/from-compliance", "incidents_from_compliance", True,
          "Assess compliance and raise an incident per site and kind found (breach, silent, non_responder)",
          m.IncidentsRaised, body=m.IncidentsFromCompliance),
    Route("GET", "/api/incidents/{id}", "incidents_get", False, "An incident and its timeline", m.Incident),
    Route("POST", "/api/incidents/{id}/actions", "incidents_act", True,
          "Triage, refer, respond, ready, resolve, close or note an incident", m.Incident,
          body=m.IncidentAct, also=((409, "the action is not allowed in the incident's state"),)),
]  # fmt: skip


def _json(inc: Any) -> dict[str, Any]:
    out = asdict(inc)
    out["timeline"] = [asdict(n) for n in inc.timeline]
    return out


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

    async def incidents_list(request: web.Request, query: m.IncidentQuery) -> Any:
        items = await repo.list(open_only=query.open, subject=query.subject)
        return {"total": len(items), "items": [_json(i) for i in items]}

    async def incidents_raise(request: web.Request, body: m.IncidentRaise) -> Any:
        actor = head.actor(request)
        try:
            inc, created = await repo.raise_incident(
                body.subject, body.kind, body.severity, actor, body.holder or actor, body.text
            )
        except TransitionRefused as exc:
            raise refused(exc) from None
        announce([inc])
        return {"created": created, "incident": _json(inc)}, 201 if created else 200

    async def incidents_from_compliance(request: web.Request, body: m.IncidentsFromCompliance) -> Any:
        t1 = int(head.store.clock()) if body.to is None else body.to
        t0 = t1 - 86400 if body.from_ is None else body.from_
        try:
            async with head.store.read() as conn:
                scope = await resolve_scope(conn, lfdi=body.site, group=body.group)
                result = await assess(conn, scope, t0, t1, now=int(head.store.clock()),
                                      default_post_rate=head.config.post_rate, keep_sites=False)  # fmt: skip
        except ValueError as exc:
            field = str(exc).split(":", 1)[0] if ":" in str(exc) else None
            raise HeadEndError(400, str(exc), field if field and " " not in field else None) from None
        findings = findings_from(result)
        outcome = await repo.raise_from_findings(findings, COMPLIANCE_REPORTER, head.actor(request))
        announce([await repo.get(i) for i in outcome["created"] + outcome["noted"]])
        return {"scope": result.scope, "from": t0, "to": t1, "findings": len(findings), **outcome}

    async def incidents_get(request: web.Request) -> Any:
        try:
            return _json(await repo.get(request.match_info["id"]))
        except IncidentNotFound as exc:
            raise HeadEndError(404, str(exc), "id") from None

    async def incidents_act(request: web.Request, body: m.IncidentAct) -> Any:
        try:
            inc = await repo.act(request.match_info["id"], body.action, head.actor(request), body.reason,
                                 referred_to=body.referred_to, root_cause=body.root_cause)  # fmt: skip
        except IncidentNotFound as exc:
            raise HeadEndError(404, str(exc), "id") from None
        except TransitionRefused as exc:
            raise refused(exc) from None
        announce([inc])
        return _json(inc)

    handlers = {"incidents_list": incidents_list, "incidents_raise": incidents_raise,
                "incidents_get": incidents_get, "incidents_act": incidents_act,
                "incidents_from_compliance": incidents_from_compliance}  # fmt: skip
    head.mount(app, ROUTES, handlers)
