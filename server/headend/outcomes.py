"""Outcomes: telemetry in real units, compliance over a time range, and acting on a finding."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.compliance.assess import act_on_finding, assess, assessment_csv
from server.compliance.judge import Rules
from server.compliance.targets import resolve_scope
from server.headend import models as m
from server.headend.core import (
    HeadEnd,
)
from server.headend.errors import bad
from server.headend.routing import Route
from server.headend.telemetry import telemetry as telemetry_of
from server.headend.telemetry import telemetry_csv

ROUTES = [
    Route("GET", "/api/telemetry", "telemetry", False,
          "Telemetry of a site, a group or all sites in real units, with group totals (CSV with format=csv)",
          m.Telemetry, query=m.Scope, csv=True),
    Route("GET", "/api/compliance", "compliance", False,
          "Compliance of a site, a group or all sites over a time range (CSV with format=csv)",
          m.ComplianceReport, query=m.ComplianceQuery, csv=True),
    Route("POST", "/api/compliance/act", "compliance_act", True,
          "Answer a compliance finding with a normal, audited control (default: zero export for an hour)",
          m.Mrid, body=m.ComplianceAct, status=201),
]  # fmt: skip


async def telemetry(head: HeadEnd, request: web.Request, query: m.Scope) -> Any:
    to = head.store.clock() if query.to is None else query.to
    since = to - 3600 if query.from_ is None else query.from_
    try:
        async with head.store.read() as conn:
            scope = await resolve_scope(conn, lfdi=query.site, group=query.group)
            data = await telemetry_of(conn, scope, since, to)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if query.format == "csv":
        return web.Response(text=telemetry_csv(data), content_type="text/csv")
    return data


async def compliance(head: HeadEnd, request: web.Request, query: m.ComplianceQuery) -> Any:
    """The compliance service (server.compliance.assess) over HTTP; rules default to the demo's."""
    now = head.store.clock()
    to = now if query.to is None else query.to
    since = to - 86400 if query.from_ is None else query.from_
    names = ("tolerance_w", "tolerance_pct", "settle_s")
    names += ("silent_posts", "ack_within_s", "persistent_breach_s")
    rules = {n: getattr(query, n) for n in names if getattr(query, n) is not None}
    try:
        parsed = Rules.from_mapping(rules)
        async with head.store.read() as conn:
            scope = await resolve_scope(conn, lfdi=query.site, group=query.group)
            result = await assess(
                conn,
                scope,
                since,
                to,
                now=now,
                rules=parsed,
                default_post_rate=head.config.post_rate,
                detail=query.detail,
            )
    except ValueError as exc:
        raise bad(str(exc)) from None
    if query.format == "csv":
        return web.Response(text=assessment_csv(result), content_type="text/csv")
    return result.as_json()


async def compliance_act(head: HeadEnd, request: web.Request, body: m.ComplianceAct) -> Any:
    mrid = await act_on_finding(
        head.admin,
        body.site,
        duration=body.duration,
        export_limit_w=body.export_limit_w,
        actor=head.actor(request),
        reason=body.reason,
    )
    return {"mrid": mrid}
