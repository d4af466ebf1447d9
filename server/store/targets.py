"""Which targets (``all`` / ``g:<id>`` / ``s:<id>``) a site answers to, and a group's member sites."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.schema import (
    groups,
    memberships,
    programs,
)


async def _site_targets(conn: AsyncConnection, site_id: int) -> list[tuple[str, int]]:
    """The target keys a site answers to, with a depth (site 1000, groups by nesting depth, all 0)."""
    direct = sa.select(groups.c.id, groups.c.parent_id, sa.literal(1).label("hop")).where(
        groups.c.id.in_(sa.select(memberships.c.group_id).where(memberships.c.site_id == site_id))
    )
    tree = direct.cte("tree", recursive=True)
    tree = tree.union(
        sa.select(groups.c.id, groups.c.parent_id, (tree.c.hop + 1).label("hop")).where(
            groups.c.id == tree.c.parent_id
        )
    )
    rows = (await conn.execute(sa.select(tree.c.id, sa.func.min(tree.c.hop)).group_by(tree.c.id))).all()
    # A group's specificity: shallower hops from the site are more specific.
    targets = [(f"s:{site_id}", 1000)] + [(f"g:{gid}", 500 - hop) for gid, hop in rows] + [("all", 0)]
    return targets


async def _visible_programs(conn: AsyncConnection, group_keys: Iterable[str]) -> list[sa.Row]:
    group_ids = [int(k[2:]) for k in group_keys if k.startswith("g:")]
    query = (
        sa.select(programs)
        .where(
            programs.c.enabled == sa.true(),
            sa.or_(programs.c.group_id.is_(None), programs.c.group_id.in_(group_ids)),
        )
        .order_by(programs.c.primacy, programs.c.id)
    )
    return list((await conn.execute(query)).all())


def _group_member_sites(group_id: int) -> sa.Select:
    """Sites in a group or any group nested below it."""
    tree = sa.select(groups.c.id).where(groups.c.id == group_id).cte("subtree", recursive=True)
    tree = tree.union(sa.select(groups.c.id).where(groups.c.parent_id == tree.c.id))
    return sa.select(memberships.c.site_id).where(memberships.c.group_id.in_(sa.select(tree.c.id)))


# ------------------------------------------------------------------------------------------- admin API
