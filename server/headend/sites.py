"""Sites: search, registration (one or in bulk), detail, deregistration, group membership."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from sep2 import resources as r
from sep2.identity import operator_lfdi, sfdi_from_lfdi
from sep2.validation import first_error
from sep2.xml import from_xml
from server.headend import models as m
from server.headend.capabilities import combined, unsupported_modes
from server.headend.core import (
    HeadEnd,
    base_summary,
    control_json,
    target_names,
)
from server.headend.doe import (
    doe_intervals,
)
from server.headend.errors import HeadEndError, bad
from server.headend.routing import Route
from server.headend.telemetry import reading_json
from server.store import (
    Page,
    RequestScope,
    Store,
    _enqueue,
    _group_member_sites,
    _site_targets,
    aggregators,
    clients,
    control_base_from_json,
    controls,
    default_controls,
    der_documents,
    ders,
    event_status,
    groups,
    memberships,
    meter_readings,
    mups,
    rate_settings,
    readings,
    responses,
    sites,
    to_jsonable,
)

ROUTES = [
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
]  # fmt: skip


async def sites_list(head: HeadEnd, request: web.Request, query: m.SiteSearch) -> Any:
    offset, limit = query.offset, query.limit
    cond: list[Any] = []
    q = query.q
    if q:
        like = f"%{q}%"
        cond.append(
            sa.or_(sites.c.lfdi.like(f"{q.upper()}%"), sites.c.nmi.like(f"{q}%"), sites.c.label.like(like))
        )
    group = query.group
    async with head.store.read() as conn:
        if group:
            gid = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == group))).scalar()
            if gid is None:
                raise bad(f"group: no group named {group!r}")
            cond.append(sites.c.id.in_(_group_member_sites(gid)))
        total = (await conn.execute(sa.select(sa.func.count()).select_from(sites).where(*cond))).scalar_one()
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


async def site_register(head: HeadEnd, request: web.Request, body: m.SiteRegister) -> Any:
    site_id = await head.admin.register_site(
        body.lfdi,
        sfdi=body.sfdi,
        nmi=body.nmi,
        pin=body.pin,
        aggregator=body.aggregator,
        groups_=body.groups or [],
        label=body.label,
        device_category=body.device_category,
        actor=head.actor(request),
        reason=body.reason,
    )
    return {"id": site_id, "lfdi": operator_lfdi(body.lfdi), "href": f"/edev/{site_id}"}


async def sites_bulk(head: HeadEnd, request: web.Request, body: m.SitesBulk) -> Any:
    count = await bulk_register(head.store, body.sites, actor=head.actor(request), reason=body.reason)
    return {"registered": count}


async def site_detail(head: HeadEnd, request: web.Request) -> Any:
    ref = request.match_info["site"]
    now = head.store.clock()
    async with head.store.read() as conn:
        site = await head.site_row(conn, ref)
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
            await conn.execute(sa.select(sa.func.count()).select_from(mups).where(mups.c.site_id == site.id))
        ).scalar_one()
    async with head.store.read() as conn:
        names = await target_names(conn, [k for k, _ in await _site_targets(conn, site.id)])
        caps = (  # every DER's: a site with several can do what any of them can
            await conn.execute(
                sa.select(der_documents.c.xml)
                .join(ders, ders.c.id == der_documents.c.der_id)
                .where(ders.c.site_id == site.id, der_documents.c.kind == "dercap")
                .order_by(ders.c.id)
            )
        ).scalars()
        site_cap = combined([from_xml(xml.encode(), r.DERCapability) for xml in caps])
    der_docs = await head.admin.site_der_documents(site.lfdi)
    last_seen = max((c.last_seen for c in contact if c.last_seen), default=None)
    # Active and next controls per program, as the site itself sees them over 2030.5.
    scope = RequestScope(lfdi=site.lfdi, kind="device")
    view = await head.store.site_view(scope, site.id)
    program_controls = []
    unsupported: list[dict[str, Any]] = []
    for program in view.programs:
        _total, rows, _ = await head.store.program_controls(view, program.id, Page(0, 100))
        live = [row for row in rows if event_status(row, now)[0] in (0, 1)]
        active = [row for row in live if row.start <= now]
        upcoming = [row for row in live if row.start > now]
        default = await head.store.default_control(view, program.id)
        for row in active + upcoming[:1]:  # flagged in the site's view too (issue 11 item 12)
            modes = unsupported_modes(control_base_from_json(row.base), site_cap)
            if modes:
                unsupported.append({"mrid": row.mrid, "program": program.key, "modes": modes})
        program_controls.append(
            {
                "program": program.key,
                "primacy": program.primacy,
                "active": [control_json(row, program.key, now, names) for row in active],
                "next": control_json(upcoming[0], program.key, now, names) if upcoming else None,
                "default": base_summary(default.base) if default is not None else None,
            }
        )
    return {
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


async def site_deregister(head: HeadEnd, request: web.Request, query: m.ReasonQuery) -> Any:
    ref = request.match_info["site"]
    actor, reason = head.actor(request), query.reason
    now = head.store.clock()
    async with head.store.write() as conn:
        site = await head.site_row(conn, ref)
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
        await head.admin._audit(
            conn, actor, "site.deregister", site.lfdi, reason, nmi=site.nmi, removed=counts
        )
    return {"deregistered": site.lfdi, "removed": counts}


async def site_join(head: HeadEnd, request: web.Request, query: m.ReasonQuery) -> Any:
    return await _membership(head, request, True, query.reason)


async def site_leave(head: HeadEnd, request: web.Request, query: m.ReasonQuery) -> Any:
    return await _membership(head, request, False, query.reason)


async def _membership(head: HeadEnd, request: web.Request, member: bool, reason: str | None) -> Any:
    async with head.store.read() as conn:
        site = await head.site_row(conn, request.match_info["site"])
    group = request.match_info["group"]
    await head.admin.set_membership(site.lfdi, group, member, actor=head.actor(request), reason=reason)
    return {"site": site.lfdi, "group": group, "member": member}


async def site_clear_mups(head: HeadEnd, request: web.Request, query: m.ReasonQuery) -> Any:
    actor, reason = head.actor(request), query.reason
    async with head.store.write() as conn:
        site = await head.site_row(conn, request.match_info["site"])
        removed = (await conn.execute(mups.delete().where(mups.c.site_id == site.id))).rowcount
        await head.admin._audit(conn, actor, "site.clear_mups", site.lfdi, reason, removed=removed)
    return {"site": site.lfdi, "removed": removed}


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
