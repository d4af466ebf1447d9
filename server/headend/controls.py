"""DERControls: list, create, detail (with the pieces of a split), acknowledgements, cancel."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.compliance.acks import DEFAULT_WITHIN_S, UnknownControl, ack_csv, ack_summary
from server.headend import models as m
from server.headend.capabilities import unsupported_by_target
from server.headend.core import (
    HeadEnd,
    control_base,
    control_json,
    live_pieces,
    target_names,
)
from server.headend.doe import (
    DOE_ID_BASE,
    doe_intervals,
    parse_doe_mrid,
)
from server.headend.errors import HeadEndError
from server.headend.routing import Route
from server.store import (
    AdminError,
    controls,
    programs,
    sites,
)

ROUTES = [
    Route("GET", "/api/controls", "controls_list", False, "DERControls", m.ControlList, query=m.ControlQuery),
    Route("POST", "/api/controls", "control_create", True, "Create a DERControl for a site, group or all",
          m.ControlCreated, body=m.ControlCreate, status=201),
    Route("GET", "/api/controls/{mrid}", "control_detail", False, "A DERControl, its status and responses",
          m.ControlDetail | m.DoeControl),
    Route("GET", "/api/controls/{mrid}/acks", "control_acks", False,
          "Acknowledgements of a control: counts by Response status, non-responders (CSV with format=csv)",
          m.AckSummary, query=m.AckQuery, csv=True),
    Route("POST", "/api/controls/{mrid}/cancel", "control_cancel", True, "Cancel a DERControl",
          m.ControlCancelled, body=m.ReasonBody),
]  # fmt: skip


async def controls_list(head: HeadEnd, request: web.Request, query: m.ControlQuery) -> Any:
    offset, limit = query.offset, query.limit
    now = head.store.clock()
    # The operator's own controls; the pieces a split republished show in their original's detail.
    cond: list[Any] = [controls.c.split_from.is_(None)]
    async with head.store.read() as conn:
        if query.program:
            cond.append(programs.c.key == query.program)
        if query.target:
            cond.append(controls.c.target == await head.admin._resolve_target(conn, query.target))
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
        total = (await conn.execute(sa.select(sa.func.count()).select_from(query.subquery()))).scalar_one()
        rows = (await conn.execute(query.order_by(controls.c.id.desc()).offset(offset).limit(limit))).all()
        targets = await target_names(conn, [row.target for row in rows])
        pieces = await live_pieces(conn, [row.id for row in rows])
    items = []
    for row in rows:
        item = control_json(row, row.program, now, pieces=pieces)
        item["target"] = targets[row.target]
        items.append(item)
    return {"total": total, "offset": offset, "items": items}


async def control_create(head: HeadEnd, request: web.Request, body: m.ControlCreate) -> Any:
    base = control_base(body)
    mrid = await head.admin.create_control(
        body.program,
        body.target,
        start=None if body.start == "now" else body.start,
        duration=body.duration,
        base=base,
        randomize_start=body.randomize_start,
        randomize_duration=body.randomize_duration,
        response_required=body.response_required,
        description=body.description,
        der=body.der,
        actor=head.actor(request),
        reason=body.reason,
    )
    # Sites whose DERCapability says they cannot apply it are flagged to the operator (issue 11 item 12).
    async with head.store.read() as conn:
        key = await head.admin._resolve_target(conn, body.target)
        key = f"d:{body.der}" if body.der is not None else key
        unsupported = await unsupported_by_target(conn, key, base)
    return {"mrid": mrid, "unsupported": unsupported}


async def control_detail(head: HeadEnd, request: web.Request) -> Any:
    mrid = request.match_info["mrid"].upper()
    now = head.store.clock()
    async with head.store.read() as conn:
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
                    return {
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
            raise HeadEndError(404, f"mrid: no control {mrid}", "mrid")
        targets = await target_names(conn, [row.target])
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
    item = control_json(row, row.program, now, pieces={row.id: live})
    item["target"] = targets[row.target]
    item["split_from"] = row.split_from
    item["pieces"] = [control_json(p, p.program, now, targets) for p in piece_rows]
    item["acknowledgements"] = {k: acks[k] for k in ("sites_targeted", "acknowledged", "latest", "none")}
    item["responses"] = await head.admin.responses_for_control(mrid)
    return item


async def control_acks(head: HeadEnd, request: web.Request, query: m.AckQuery) -> Any:
    mrid = request.match_info["mrid"].upper()
    within = DEFAULT_WITHIN_S if query.within is None else query.within
    async with head.store.read() as conn:
        try:
            if query.format == "csv":
                return web.Response(text=await ack_csv(conn, mrid, within_s=within), content_type="text/csv")
            return await ack_summary(conn, mrid, now=head.store.clock(), within_s=within)
        except UnknownControl as exc:
            raise HeadEndError(404, str(exc), "mrid") from None


async def control_cancel(head: HeadEnd, request: web.Request, body: m.ReasonBody) -> Any:
    mrid = request.match_info["mrid"]
    try:
        await head.admin.cancel_control(mrid, actor=head.actor(request), reason=body.reason)
    except AdminError as exc:
        raise HeadEndError(404, str(exc), "mrid") from None
    return {"mrid": mrid.upper(), "status": "cancelled"}
