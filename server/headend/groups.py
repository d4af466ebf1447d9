"""Groups: the nested site groups controls and programs are aimed at."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.headend import models as m
from server.headend.core import (
    HeadEnd,
)
from server.headend.errors import HeadEndError
from server.headend.routing import Route
from server.store import (
    _group_member_sites,
    groups,
    memberships,
    programs,
    sites,
)

ROUTES = [
    Route("GET", "/api/groups", "groups_list", False, "Groups (nested) with member counts", m.GroupList),
    Route("POST", "/api/groups", "group_create", True, "Create a group", m.Created, body=m.GroupCreate,
          status=201),
    Route("GET", "/api/groups/{group}", "group_detail", False, "A group and its members", m.GroupDetail,
          query=m.Page),
]  # fmt: skip


async def groups_list(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
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
    return {"items": items}


async def group_create(head: HeadEnd, request: web.Request, body: m.GroupCreate) -> Any:
    gid = await head.admin.create_group(
        body.name,
        parent=body.parent,
        description=body.description,
        actor=head.actor(request),
        reason=body.reason,
    )
    return {"id": gid, "name": body.name}


async def group_detail(head: HeadEnd, request: web.Request, query: m.Page) -> Any:
    name = request.match_info["group"]
    offset, limit = query.offset, query.limit
    async with head.store.read() as conn:
        row = (await conn.execute(sa.select(groups).where(groups.c.name == name))).first()
        if row is None:
            raise HeadEndError(404, f"group: no group named {name!r}", "group")
        members = sa.select(sites.c.lfdi, sites.c.nmi).where(sites.c.id.in_(_group_member_sites(row.id)))
        total = (await conn.execute(sa.select(sa.func.count()).select_from(members.subquery()))).scalar_one()
        page = (await conn.execute(members.order_by(sites.c.id).offset(offset).limit(limit))).all()
        children = (
            await conn.execute(sa.select(groups.c.name).where(groups.c.parent_id == row.id))
        ).scalars()
        parent = None
        if row.parent_id is not None:
            parent = (
                await conn.execute(sa.select(groups.c.name).where(groups.c.id == row.parent_id))
            ).scalar()
        progs = (await conn.execute(sa.select(programs.c.key).where(programs.c.group_id == row.id))).scalars()
        return {
            "name": row.name,
            "parent": parent,
            "description": row.description,
            "children": list(children),
            "programs": list(progs),
            "fsa": row.id,
            "total_sites": total,
            "sites": [dict(row._mapping) for row in page],
        }
