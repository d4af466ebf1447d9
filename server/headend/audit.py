"""The audit log: who changed what, when and why."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.headend import models as m
from server.headend.core import (
    HeadEnd,
)
from server.headend.routing import Route
from server.store import (
    audit_log,
)

ROUTES = [
    Route("GET", "/api/audit", "audit", False, "The audit log", m.AuditLog, query=m.AuditQuery),
]  # fmt: skip


async def audit(head: HeadEnd, request: web.Request, query: m.AuditQuery) -> Any:
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
    async with head.store.read() as conn:
        total = (
            await conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(*cond))
        ).scalar_one()
        rows = (
            await conn.execute(
                sa.select(audit_log).where(*cond).order_by(audit_log.c.id.desc()).offset(offset).limit(limit)
            )
        ).all()
    items = []
    for row in rows:
        item = dict(row._mapping)
        item["detail"] = json.loads(row.detail) if row.detail else None
        items.append(item)
    return {"total": total, "offset": offset, "items": items}
