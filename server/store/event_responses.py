"""DERControl Responses posted by sites."""

from __future__ import annotations

import sqlalchemy as sa

from sep2 import resources as r
from server.errors import BadRequest, NotFound
from server.store.base import StoreBase
from server.store.fast import Query, Writes
from server.store.quotas import QuotaExceeded
from server.store.schema import (
    VALID_RESPONSE_STATUSES,
    controls,
    ders,
    responses,
    sites,
)
from server.store.scope import Page, RequestScope, own_site, own_site_lfdi
from server.store.targets import der_key, site_targets_in
from server.store.versions import owners

_CONTROL_BY_MRID = Query(
    sa.select(controls.c.id).where(
        controls.c.mrid == sa.bindparam("mrid"), controls.c.target.in_(sa.bindparam("keys", expanding=True))
    )
)
# A site's DERs: a control for one of them alone (target d:<der id>) is also the site's to answer.
_SITE_DERS = Query(sa.select(ders.c.id).where(ders.c.site_id == sa.bindparam("site_id")))
_MINE = (responses.c.site_id == sa.bindparam("site_id")) & (
    responses.c.control_id == sa.bindparam("control_id")
)
_SAME_RESPONSE = Query(sa.select(responses.c.id).where(_MINE, responses.c.status == sa.bindparam("status")))
_RESPONSE_COUNT = Query(sa.select(sa.func.count().label("n")).where(_MINE))
_RESPONSE_INSERT = Query(
    responses.insert().values(
        {
            c: sa.bindparam(f"p_{c}")
            for c in ("site_id", "control_id", "status", "created_time", "received_at")
        }
    )
)


class ResponsesStore(StoreBase):
    """Responses."""

    async def post_response(self, scope: RequestScope, response: r.Response) -> int:
        """Store a DERControl Response. The subject must be a control the responding site can see."""
        if response.status is None or response.status not in VALID_RESPONSE_STATUSES:
            raise BadRequest(f"Response.status: {response.status!r} is not a valid DER response status")
        now = self.clock()

        device_lfdi = own_site_lfdi(response.endDeviceLFDI, "Response.endDeviceLFDI")
        subject = (response.subject or "").upper()

        def work(db: Writes) -> int:
            site = own_site(db, scope, device_lfdi, "Response.endDeviceLFDI")
            self.touch(*(("rsp", owner) for owner in owners(site.lfdi, site.aggregator_id)))
            keys = [k for k, _ in site_targets_in(db, site.id)]
            keys += [der_key(row.id) for row in db.all(_SITE_DERS, site_id=site.id)]
            control = db.first(_CONTROL_BY_MRID, mrid=subject, keys=keys)
            if control is None:
                raise BadRequest(
                    f"Response.subject: {response.subject} is not a DERControl of this EndDevice"
                )
            mine = dict(site_id=site.id, control_id=control.id)
            same = db.first(_SAME_RESPONSE, **mine, status=response.status)
            if same is not None:  # the same Response again (a retry): idempotent, nothing new stored
                return same.id
            held = db.first(_RESPONSE_COUNT, **mine).n
            if held >= self.quotas.responses_per_event:
                raise QuotaExceeded(
                    f"Response: this EndDevice already sent its maximum of {held} Responses to this event"
                )
            return db.insert(
                _RESPONSE_INSERT,
                p_site_id=site.id,
                p_control_id=control.id,
                p_status=response.status,
                p_created_time=response.createdDateTime,
                p_received_at=now,
            )

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
