"""DERControl Responses posted by sites."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from server.errors import BadRequest, NotFound
from server.store.base import StoreBase
from server.store.quotas import QuotaExceeded
from server.store.schema import (
    VALID_RESPONSE_STATUSES,
    controls,
    responses,
    sites,
)
from server.store.scope import Page, RequestScope, _own_site
from server.store.targets import _site_targets
from server.store.versions import owners


class ResponsesStore(StoreBase):
    """Responses."""

    async def post_response(self, scope: RequestScope, response: r.Response) -> int:
        """Store a DERControl Response. The subject must be a control the responding site can see."""
        if response.status is None or response.status not in VALID_RESPONSE_STATUSES:
            raise BadRequest(f"Response.status: {response.status!r} is not a valid DER response status")
        now = self.clock()

        async def work(conn: AsyncConnection) -> Any:
            site = await _own_site(conn, scope, response.endDeviceLFDI, "Response.endDeviceLFDI")
            self.touch(*(("rsp", owner) for owner in owners(site.lfdi, site.aggregator_id)))
            keys = [k for k, _ in await _site_targets(conn, site.id)]
            control = (
                await conn.execute(
                    sa.select(controls.c.id).where(
                        controls.c.mrid == (response.subject or "").upper(), controls.c.target.in_(keys)
                    )
                )
            ).first()
            if control is None:
                raise BadRequest(
                    f"Response.subject: {response.subject} is not a DERControl of this EndDevice"
                )
            mine = (responses.c.site_id == site.id) & (responses.c.control_id == control.id)
            same = (
                await conn.execute(
                    sa.select(responses.c.id).where(mine, responses.c.status == response.status)
                )
            ).first()
            if same is not None:  # the same Response again (a retry): idempotent, nothing new stored
                return same.id
            held = (
                await conn.execute(sa.select(sa.func.count()).select_from(responses).where(mine))
            ).scalar_one()
            if held >= self.quotas.responses_per_event:
                raise QuotaExceeded(
                    f"Response: this EndDevice already sent its maximum of {held} Responses to this event"
                )
            return (
                await conn.execute(
                    responses.insert().values(
                        site_id=site.id,
                        control_id=control.id,
                        status=response.status,
                        created_time=response.createdDateTime,
                        received_at=now,
                    )
                )
            ).inserted_primary_key[0]

        return await self.grouped(work)

    def _response_query(self, scope: RequestScope) -> sa.Select:
        return (
            sa.select(responses, sites.c.lfdi, controls.c.mrid.label("subject"))
            .join(sites, sites.c.id == responses.c.site_id)
            .join(controls, controls.c.id == responses.c.control_id)
            .where(scope.site_condition())
        )

    async def list_responses(self, scope: RequestScope, page: Page) -> tuple[int, list[sa.Row]]:
        query = self._response_query(scope)
        if page.after is not None:
            query = query.where(responses.c.received_at >= page.after)
        self.depends(("rsp", scope.owner))
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(query.subquery()))
            ).scalar_one()
            rows = (
                await conn.execute(query.order_by(responses.c.id).offset(page.start).limit(page.limit))
            ).all()
        return total, list(rows)

    async def response(self, scope: RequestScope, response_id: int) -> sa.Row:
        self.depends(("rsp", scope.owner))
        async with self.read() as conn:
            row = (
                await conn.execute(self._response_query(scope).where(responses.c.id == response_id))
            ).first()
        if row is None:
            raise NotFound(f"no Response {response_id} for this client")
        return row
