"""The sites a target key covers (``all``, ``g:<id>`` with its nested groups, ``s:<id>``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store import groups, memberships, sites
from server.store.targets import der_site


def target_sites_query(key: str) -> sa.Select:
    """A SELECT of (id, lfdi, nmi) of the sites that see a control with target ``key``."""
    columns = (sites.c.id, sites.c.lfdi, sites.c.nmi)
    if key == "all":
        return sa.select(*columns)
    if key.startswith("s:"):
        return sa.select(*columns).where(sites.c.id == int(key[2:]))
    if key.startswith("d:"):  # one DER of a site
        return sa.select(*columns).where(sites.c.id.in_(der_site(key)))
    if not key.startswith("g:"):
        raise ValueError(f"target: {key!r} is not all, g:<id> or s:<id>")
    tree = sa.select(groups.c.id).where(groups.c.id == int(key[2:])).cte("subtree", recursive=True)
    tree = tree.union_all(sa.select(groups.c.id).where(groups.c.parent_id == tree.c.id))
    member_ids = sa.select(memberships.c.site_id).where(memberships.c.group_id.in_(sa.select(tree.c.id)))
    return sa.select(*columns).where(sites.c.id.in_(member_ids))


async def target_sites(conn: AsyncConnection, key: str) -> list[sa.Row]:
    return list((await conn.execute(target_sites_query(key).order_by(sites.c.id))).all())


async def resolve_scope(conn: AsyncConnection, *, lfdi: str | None = None, group: str | None = None) -> str:
    """A target key for an assessment scope: one site (by LFDI), a group (by name), or all sites."""
    if lfdi is not None and group is not None:
        raise ValueError("scope: give a site or a group, not both")
    if lfdi is not None:
        from sep2.identity import normalise_lfdi

        site_id = (
            await conn.execute(sa.select(sites.c.id).where(sites.c.lfdi == normalise_lfdi(lfdi)))
        ).scalar_one_or_none()
        if site_id is None:
            raise ValueError(f"site: no site with LFDI {lfdi}")
        return f"s:{site_id}"
    if group is not None:
        gid = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == group))).scalar_one_or_none()
        if gid is None:
            raise ValueError(f"group: no group {group!r}")
        return f"g:{gid}"
    return "all"
