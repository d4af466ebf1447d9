"""Client certificates (revoke, restore) and aggregators (create, certificate rotation)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.headend import models as m
from server.headend.core import (
    HeadEnd,
)
from server.headend.errors import HeadEndError, bad
from server.headend.routing import Route
from server.store import (
    aggregators,
    clients,
    sites,
)

ROUTES = [
    Route("GET", "/api/clients", "clients_list", False, "Client certificates, revocation, last contact",
          m.ClientList),
    Route("POST", "/api/clients/{lfdi}/revoke", "client_revoke", True, "Revoke a client certificate",
          m.Revoked, body=m.ReasonBody),
    Route("POST", "/api/clients/{lfdi}/restore", "client_restore", True, "Restore a revoked certificate",
          m.Revoked, body=m.ReasonBody),
    Route("GET", "/api/aggregators", "aggregators_list", False, "Aggregators and their certificates",
          m.AggregatorList),
    Route("POST", "/api/aggregators", "aggregator_create", True, "Create an aggregator", m.Created,
          body=m.AggregatorCreate, status=201),
    Route("POST", "/api/aggregators/{name}/certificates", "aggregator_add_cert", True,
          "Add a certificate to an aggregator (rotation step 1)", m.CertificateAdded, body=m.CertificateAdd,
          status=201),
    Route("DELETE", "/api/aggregators/{name}/certificates/{lfdi}", "aggregator_remove_cert", True,
          "Remove (revoke) an aggregator certificate (rotation step 2)", m.CertificateRemoved,
          query=m.ReasonQuery),
]  # fmt: skip


async def clients_list(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(clients, aggregators.c.name.label("aggregator"))
                .join(aggregators, aggregators.c.id == clients.c.aggregator_id, isouter=True)
                .order_by(clients.c.lfdi)
            )
        ).all()
    return {
        "items": [
            {
                "lfdi": row.lfdi,
                "kind": row.kind,
                "aggregator": row.aggregator,
                "revoked": row.revoked,
                "first_seen": row.first_seen,
                "last_seen": row.last_seen,
            }
            for row in rows
        ]
    }


async def client_revoke(head: HeadEnd, request: web.Request, body: m.ReasonBody) -> Any:
    return await _revoke(head, request, True, body.reason)


async def client_restore(head: HeadEnd, request: web.Request, body: m.ReasonBody) -> Any:
    return await _revoke(head, request, False, body.reason)


async def _revoke(head: HeadEnd, request: web.Request, revoked: bool, reason: str | None) -> Any:
    lfdi = request.match_info["lfdi"]
    await head.admin.set_revoked(lfdi, revoked, actor=head.actor(request), reason=reason)
    return {"lfdi": lfdi.upper(), "revoked": revoked}


async def aggregators_list(head: HeadEnd, request: web.Request) -> Any:
    async with head.store.read() as conn:
        rows = (await conn.execute(sa.select(aggregators).order_by(aggregators.c.id))).all()
        certs = (
            await conn.execute(
                sa.select(clients.c.lfdi, clients.c.aggregator_id, clients.c.revoked).where(
                    clients.c.aggregator_id.is_not(None)
                )
            )
        ).all()
        counts = dict(
            (
                await conn.execute(
                    sa.select(sites.c.aggregator_id, sa.func.count()).group_by(sites.c.aggregator_id)
                )
            ).all()
        )
    return {
        "items": [
            {
                "name": row.name,
                "sites": counts.get(row.id, 0),
                "certificates": [
                    {"lfdi": c.lfdi, "revoked": c.revoked} for c in certs if c.aggregator_id == row.id
                ],
            }
            for row in rows
        ]
    }


async def aggregator_create(head: HeadEnd, request: web.Request, body: m.AggregatorCreate) -> Any:
    agg = await head.admin.create_aggregator(
        body.name, lfdis=body.lfdis or [], actor=head.actor(request), reason=body.reason
    )
    return {"id": agg, "name": body.name}


async def aggregator_add_cert(head: HeadEnd, request: web.Request, body: m.CertificateAdd) -> Any:
    name = request.match_info["name"]
    await head.admin.add_aggregator_certificate(
        name, body.lfdi, actor=head.actor(request), reason=body.reason
    )
    return {"aggregator": name, "added": body.lfdi.upper()}


async def aggregator_remove_cert(head: HeadEnd, request: web.Request, query: m.ReasonQuery) -> Any:
    """Rotation step 2: the old certificate is revoked (so it cannot re-enrol as a new aggregator);
    the aggregator and its sites stay with the remaining certificates."""
    name, lfdi = request.match_info["name"], request.match_info["lfdi"].upper()
    async with head.store.write() as conn:
        agg = (await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == name))).scalar()
        if agg is None:
            raise HeadEndError(404, f"aggregator: no aggregator named {name!r}", "aggregator")
        certs = (
            await conn.execute(
                sa.select(clients.c.lfdi, clients.c.revoked).where(clients.c.aggregator_id == agg)
            )
        ).all()
        if lfdi not in {c.lfdi for c in certs}:
            raise HeadEndError(404, f"lfdi: {lfdi} is not a certificate of {name}", "lfdi")
        if not any(c.lfdi != lfdi and not c.revoked for c in certs):
            raise bad(f"lfdi: {lfdi} is the last active certificate of {name}; add the new one first")
        await conn.execute(clients.update().where(clients.c.lfdi == lfdi).values(revoked=True))
        await head.admin._audit(
            conn,
            head.actor(request),
            "aggregator.remove_certificate",
            name,
            query.reason,
            lfdi=lfdi,
        )
    return {"aggregator": name, "removed": lfdi}
