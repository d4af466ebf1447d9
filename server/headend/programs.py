"""Programs, their DefaultDERControls, and the pollRate/postRate overrides sites are told."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.headend import models as m
from server.headend.core import (
    HeadEnd,
    base_summary,
    control_base,
    der_of,
    target_names,
)
from server.headend.errors import HeadEndError
from server.headend.routing import Route
from server.store import (
    default_controls,
    groups,
    programs,
    rate_settings,
)

ROUTES = [
    Route("GET", "/api/programs", "programs_list", False, "DERPrograms with primacy", m.ProgramList),
    Route("PATCH", "/api/programs/{name}", "program_update", True,
          'Rename, re-rank, move (group; "" = every site) or switch off a DERProgram, built-ins included',
          m.ProgramKey, body=m.ProgramUpdate),
    Route("POST", "/api/programs", "program_create", True, "Create a DERProgram", m.ProgramCreated,
          body=m.ProgramCreate, status=201),
    Route("GET", "/api/defaults", "defaults_list", False, "DefaultDERControls", m.DefaultList),
    Route("PUT", "/api/defaults", "default_set", True, "Set the DefaultDERControl of a program for a target",
          m.Mrid, body=m.DefaultSet),
    Route("GET", "/api/rates", "rates_list", False, "pollRate/postRate overrides", m.RateList),
    Route("PUT", "/api/rates", "rate_set", True, "Set a pollRate/postRate for all, a group or a site",
          m.RateItem, body=m.RateSet),
    Route("DELETE", "/api/rates", "rate_clear", True, "Remove a rate override", m.RateCleared,
          query=m.RateClear),
]  # fmt: skip


async def programs_list(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(programs, groups.c.name.label("group"))
                .join(groups, groups.c.id == programs.c.group_id, isouter=True)
                .order_by(programs.c.primacy, programs.c.id)
            )
        ).all()
    return {
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


async def program_update(head: HeadEnd, request: web.Request, body: m.ProgramUpdate) -> Any:
    key = request.match_info["name"]
    values = body.model_dump(exclude={"reason"})
    await head.admin.update_program(key, **values, actor=head.actor(request), reason=body.reason)
    return {"key": key}


async def program_create(head: HeadEnd, request: web.Request, body: m.ProgramCreate) -> Any:
    pid = await head.admin.create_program(
        body.key,
        primacy=body.primacy,
        description=body.description,
        group=body.group,
        actor=head.actor(request),
        reason=body.reason,
    )
    return {"id": pid, "key": body.key}


async def defaults_list(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(default_controls, programs.c.key.label("program")).join(
                    programs, programs.c.id == default_controls.c.program_id
                )
            )
        ).all()
        targets = await target_names(conn, [row.target for row in rows])
    return {
        "items": [
            {
                "mrid": row.mrid,
                "program": row.program,
                "target": targets[row.target],
                "der": der_of(row.target),
                "limits": base_summary(row.base),
                "set_grad_w": row.set_grad_w,
                "changed": row.changed_time,
            }
            for row in rows
        ]
    }


async def default_set(head: HeadEnd, request: web.Request, body: m.DefaultSet) -> Any:
    mrid = await head.admin.set_default_control(
        body.program,
        body.target,
        base=control_base(body),
        set_grad_w=body.set_grad_w,
        description=body.description,
        der=body.der,
        actor=head.actor(request),
        reason=body.reason,
    )
    return {"mrid": mrid}


async def rates_list(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
        rows = (await conn.execute(sa.select(rate_settings))).all()
        targets = await target_names(conn, [row.target for row in rows])
    return {
        "defaults": {"poll_rate": head.config.poll_rate, "post_rate": head.config.post_rate},
        "items": [
            {"resource": row.resource, "target": targets[row.target], "value": row.value} for row in rows
        ],
    }


async def rate_set(head: HeadEnd, request: web.Request, body: m.RateSet) -> Any:
    target = body.target or "all"
    await head.admin.set_rate(
        body.resource, body.value, target, actor=head.actor(request), reason=body.reason
    )
    return {"resource": body.resource, "value": body.value, "target": target}


async def rate_clear(head: HeadEnd, request: web.Request, query: m.RateClear) -> Any:
    resource, target = query.resource, query.target
    async with head.store.write() as conn:
        key = await head.admin._resolve_target(conn, target)
        removed = (
            await conn.execute(
                rate_settings.delete().where(
                    rate_settings.c.resource == resource, rate_settings.c.target == key
                )
            )
        ).rowcount
        if not removed:
            raise HeadEndError(404, f"resource: no {resource} rate set for {target}", "resource")
        await head.admin._audit(
            conn, head.actor(request), "rate.clear", target, query.reason, resource=resource
        )
    return {"resource": resource, "target": target, "removed": True}
