"""Subscriptions, and the durable notification outbox they feed (``_enqueue`` runs in the writer's
transaction; ``server.notifications`` delivers)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.errors import BadRequest, NotFound
from server.store.base import StoreBase
from server.store.engine import _insert
from server.store.quotas import QuotaExceeded
from server.store.schema import (
    SUBSCRIPTION_KINDS,
    clients,
    outbox,
    sites,
    subscriptions,
)
from server.store.scope import Page, RequestScope
from server.store.targets import _group_member_sites


async def _enqueue(
    conn: AsyncConnection,
    now: int,
    *,
    kinds: tuple[str, ...],
    program_id: int | None = None,
    target: str | None = None,
    site_ids: list[int] | None = None,
    owner_scope: RequestScope | None = None,
) -> None:
    """Queue a notification for every subscription watching ``kinds`` that the change reaches.

    ``target`` ("all" / "g:<id>" / "s:<id>") selects the affected sites as controls do; ``owner_scope``
    selects EndDeviceList subscriptions of that client.
    """
    cond: list[Any] = [subscriptions.c.kind.in_(kinds)]
    if program_id is not None:
        cond.append(subscriptions.c.program_id == program_id)
    if site_ids is not None:
        cond.append(subscriptions.c.site_id.in_(site_ids))
    if target is not None and target != "all":
        if target.startswith("s:"):
            cond.append(subscriptions.c.site_id == int(target[2:]))
        else:
            cond.append(subscriptions.c.site_id.in_(_group_member_sites(int(target[2:]))))
    if owner_scope is not None:
        cond.append(subscriptions.c.site_id.in_(sa.select(sites.c.id).where(owner_scope.site_condition())))
    select = sa.select(
        subscriptions.c.id, sa.literal(0), sa.literal(now), sa.literal(0), sa.literal(float(now))
    ).where(*cond)
    stmt = _insert(conn, outbox).from_select(
        ["subscription_id", "seq", "created_at", "attempts", "next_attempt_at"], select
    )
    stmt = stmt.on_conflict_do_update(index_elements=["subscription_id"], set_={"seq": outbox.c.seq + 1})
    await conn.execute(stmt)


class SubscriptionsStore(StoreBase):
    """Subscriptions and the outbox."""

    # --------------------------------------------------------------------------------- subscriptions

    async def create_subscription(
        self,
        scope: RequestScope,
        site_id: int,
        *,
        kind: str,
        program_id: int | None,
        fsa_key: int | None,
        subscribed_href: str,
        notification_uri: str,
        limit: int,
        level: str,
    ) -> int:
        if kind not in SUBSCRIPTION_KINDS:
            raise BadRequest(f"Subscription.subscribedResource: {subscribed_href} is not subscribable")
        if len(notification_uri) > 512:
            raise BadRequest("Subscription.notificationURI: at most 512 characters")
        now = self.clock()
        async with self.changing(("sub", site_id)) as conn:
            await self._site(conn, scope, site_id)
            held = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(subscriptions)
                    .where(subscriptions.c.site_id == site_id)
                )
            ).scalar_one()
            if held >= self.quotas.subscriptions_per_site:
                raise QuotaExceeded(
                    f"Subscription: this EndDevice already holds its maximum of {held} subscriptions"
                )
            return (
                await conn.execute(
                    subscriptions.insert().values(
                        site_id=site_id,
                        kind=kind,
                        program_id=program_id,
                        fsa_key=fsa_key,
                        subscribed_href=subscribed_href,
                        notification_uri=notification_uri,
                        limit=limit,
                        level=level,
                        owner_lfdi=scope.lfdi,
                        created_at=now,
                    )
                )
            ).inserted_primary_key[0]

    async def list_subscriptions(
        self, scope: RequestScope, site_id: int, page: Page
    ) -> tuple[int, list[sa.Row]]:
        self.depends(("sub", site_id))
        async with self.read() as conn:
            await self._site(conn, scope, site_id)
            cond = subscriptions.c.site_id == site_id
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(subscriptions).where(cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(subscriptions)
                    .where(cond)
                    .order_by(subscriptions.c.id)
                    .offset(page.start)
                    .limit(page.limit)
                )
            ).all()
        return total, list(rows)

    async def subscription(self, scope: RequestScope, site_id: int, sub_id: int) -> sa.Row:
        self.depends(("sub", site_id))
        async with self.read() as conn:
            await self._site(conn, scope, site_id)
            row = (
                await conn.execute(
                    sa.select(subscriptions).where(
                        subscriptions.c.id == sub_id, subscriptions.c.site_id == site_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no Subscription {sub_id} on EndDevice {site_id}")
        return row

    async def delete_subscription(self, scope: RequestScope, site_id: int, sub_id: int) -> None:
        async with self.changing(("sub", site_id)) as conn:
            await self._site(conn, scope, site_id)
            result = await conn.execute(
                subscriptions.delete().where(subscriptions.c.id == sub_id, subscriptions.c.site_id == site_id)
            )
            if result.rowcount == 0:
                raise NotFound(f"no Subscription {sub_id} on EndDevice {site_id}")

    # --------------------------------------------------------------------------------- outbox (internal)

    async def due_notifications(self, now: float, limit: int = 50) -> list[sa.Row]:
        """Outbox rows due for delivery, with their subscription and its owner's scope."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        outbox.c.id.label("outbox_id"),
                        outbox.c.seq,
                        outbox.c.attempts,
                        subscriptions,
                        clients.c.kind.label("owner_kind"),
                        clients.c.aggregator_id.label("owner_aggregator"),
                    )
                    .join(subscriptions, subscriptions.c.id == outbox.c.subscription_id)
                    .join(clients, clients.c.lfdi == subscriptions.c.owner_lfdi, isouter=True)
                    .where(outbox.c.next_attempt_at <= now)
                    .order_by(outbox.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        return list(rows)

    async def next_notification_time(self) -> float | None:
        async with self.read() as conn:
            return (await conn.execute(sa.select(sa.func.min(outbox.c.next_attempt_at)))).scalar_one()

    async def claim_notification(self, outbox_id: int, due_by: float, lease_until: float) -> bool:
        """Take a due outbox row for delivery. Server processes sharing a database all see it due; this
        compare-and-set lets exactly one send it. The claim moves its next attempt to ``lease_until``,
        so a sender that dies mid-delivery only delays the notification, never drops it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                outbox.update()
                .where(outbox.c.id == outbox_id, outbox.c.next_attempt_at <= due_by)
                .values(next_attempt_at=lease_until)
            )
            return result.rowcount == 1

    async def notification_delivered(self, outbox_id: int, seq: int) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(outbox.delete().where(outbox.c.id == outbox_id, outbox.c.seq == seq))
            if result.rowcount == 0:  # changed again while in flight: deliver the newer state now
                await conn.execute(
                    outbox.update().where(outbox.c.id == outbox_id).values(attempts=0, next_attempt_at=0.0)
                )

    async def notification_failed(self, outbox_id: int, next_attempt_at: float, error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == outbox_id)
                .values(
                    attempts=outbox.c.attempts + 1, next_attempt_at=next_attempt_at, last_error=error[:256]
                )
            )
