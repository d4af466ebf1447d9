"""Which targets (``all`` / ``g:<id>`` / ``s:<id>``) a site answers to, and a group's member sites.

A fourth kind, ``d:<der id>``, targets one DER of a site: its controls are published only in that DER's
own DERProgramList (2030.5 §10.10 ``DER.AssociatedDERProgramListLink``), never in the site's FSAs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.fast import Query, Reads, Writes
from server.store.schema import (
    ders,
    groups,
    memberships,
    programs,
    sites,
)


def _groups_of(site_id: Any) -> sa.Select[Any]:
    """The groups a site is in, directly or as a descendant: (group id, fewest hops)."""
    direct = sa.select(groups.c.id, groups.c.parent_id, sa.literal(1).label("hop")).where(
        groups.c.id.in_(sa.select(memberships.c.group_id).where(memberships.c.site_id == site_id))
    )
    tree = direct.cte("tree", recursive=True)
    tree = tree.union(
        sa.select(groups.c.id, groups.c.parent_id, (tree.c.hop + 1).label("hop")).where(
            groups.c.id == tree.c.parent_id
        )
    )
    return sa.select(tree.c.id, sa.func.min(tree.c.hop).label("hop")).group_by(tree.c.id)


_GROUPS_OF = Query(_groups_of(sa.bindparam("site_id")))


def _targets(site_id: int, rows: Iterable[Any]) -> list[tuple[str, int]]:
    # A group's specificity: shallower hops from the site are more specific.
    return [(f"s:{site_id}", 1000)] + [(f"g:{gid}", 500 - hop) for gid, hop in rows] + [("all", 0)]


async def _site_targets(conn: AsyncConnection, site_id: int) -> list[tuple[str, int]]:
    """The target keys a site answers to, with a depth (site 1000, groups by nesting depth, all 0)."""
    return _targets(site_id, (await conn.execute(_groups_of(site_id))).all())


async def site_targets(db: Reads, site_id: int) -> list[tuple[str, int]]:
    """:func:`_site_targets` as a prepared read."""
    return _targets(site_id, await db.all(_GROUPS_OF, site_id=site_id))


def site_targets_in(db: Writes, site_id: int) -> list[tuple[str, int]]:
    """:func:`_site_targets` inside a grouped write (``StoreBase.grouped``)."""
    return _targets(site_id, db.all(_GROUPS_OF, site_id=site_id))


_PROGRAMS = Query(
    sa.select(programs)
    .where(
        programs.c.enabled == sa.true(),
        sa.or_(
            programs.c.group_id.is_(None), programs.c.group_id.in_(sa.bindparam("groups", expanding=True))
        ),
    )
    .order_by(programs.c.primacy, programs.c.id)
)


async def _visible_programs(db: Reads, group_keys: Iterable[str]) -> list[Any]:
    group_ids = [int(k[2:]) for k in group_keys if k.startswith("g:")]
    return await db.all(_PROGRAMS, groups=group_ids)


def _group_member_sites(group_id: int) -> sa.Select:
    """Sites in a group or any group nested below it."""
    tree = sa.select(groups.c.id).where(groups.c.id == group_id).cte("subtree", recursive=True)
    tree = tree.union(sa.select(groups.c.id).where(groups.c.parent_id == tree.c.id))
    return sa.select(memberships.c.site_id).where(memberships.c.group_id.in_(sa.select(tree.c.id)))


def der_key(der_id: int) -> str:
    """The target key of one DER."""
    return f"d:{der_id}"


def der_site(key: str) -> sa.Select:
    """The site (id) of the DER of a ``d:<der id>`` key."""
    return sa.select(ders.c.site_id).where(ders.c.id == int(key[2:]))


def key_sites(key: str) -> sa.Select:
    """The ids of the sites a target key reaches (``all``, ``g:``, ``s:``, ``d:``)."""
    if key == "all":
        return sa.select(sites.c.id)
    if key.startswith("g:"):
        return _group_member_sites(int(key[2:]))
    if key.startswith("d:"):
        return der_site(key)
    return sa.select(sites.c.id).where(sites.c.id == int(key[2:]))


# ------------------------------------------------------------------------------------------- admin API
