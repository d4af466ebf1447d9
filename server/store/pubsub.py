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
    PER_DER_KINDS,
    SUBSCRIPTION_KINDS,
    clients,
    controls,
    default_controls,
    doe_intervals,
    memberships,
    outbox,
    programs,
    sites,
    subscriptions,
)
from server.store.scope import Page, RequestScope
from server.store.targets import _group_member_sites, der_site


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

    ``target`` ("all" / "g:<id>" / "s:<id>" / "d:<der id>") selects the affected sites as controls do;
    ``owner_scope`` selects EndDeviceList subscriptions of that client.
    """
    if target is not None and target.startswith("d:"):  # one DER's own lists (DER id in fsa_key)
        kinds = tuple(f"{k}d" for k in kinds if k in PER_DER_KINDS)
    cond: list[Any] = [subscriptions.c.kind.in_(kinds)]
    if program_id is not None:
        cond.append(subscriptions.c.program_id == program_id)
    if site_ids is not None:
        cond.append(subscriptions.c.site_id.in_(site_ids))
    if target is not None and target != "all":
        if target.startswith("s:"):
            cond.append(subscriptions.c.site_id == int(target[2:]))
        elif target.startswith("d:"):
            cond += [
                subscriptions.c.site_id.in_(der_site(target)),
                subscriptions.c.fsa_key == int(target[2:]),
            ]
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

    async def due_notifications(self, now: float, limit: int = 50, offset: int = 0) -> list[sa.Row]:
        """Outbox rows due for delivery, most urgent first: by the primacy of the watched program (the
        emergency program is primacy 1; lists without a program come last), then by due time. Each row
        carries its subscription, its owner's scope and the site's owner columns (for the scope check)."""
        urgency = sa.func.coalesce(programs.c.primacy, 1 << 30)
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
                        sites.c.lfdi.label("site_lfdi"),
                        sites.c.aggregator_id.label("site_aggregator"),
                    )
                    .join(subscriptions, subscriptions.c.id == outbox.c.subscription_id)
                    .join(sites, sites.c.id == subscriptions.c.site_id)
                    .join(clients, clients.c.lfdi == subscriptions.c.owner_lfdi, isouter=True)
                    .join(programs, programs.c.id == subscriptions.c.program_id, isouter=True)
                    .where(outbox.c.next_attempt_at <= now)
                    .order_by(urgency, outbox.c.next_attempt_at, outbox.c.id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return list(rows)

    async def next_notification_time(self) -> float | None:
        async with self.read() as conn:
            return (await conn.execute(sa.select(sa.func.min(outbox.c.next_attempt_at)))).scalar_one()

    async def claim_notifications(self, outbox_ids: list[int], due_by: float, lease_until: float) -> set[int]:
        """Take due outbox rows for delivery, in one statement. Server processes sharing a database all
        see them due; this compare-and-set lets exactly one send each (on PostgreSQL a concurrent claim
        waits for the row and then finds it no longer due). The claim moves the next attempt to
        ``lease_until``, so a sender that dies mid-delivery only delays the notification, never drops it."""
        if not outbox_ids:
            return set()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(outbox_ids), outbox.c.next_attempt_at <= due_by)
                .values(next_attempt_at=lease_until)
                .returning(outbox.c.id)
            )
            return set(result.scalars())

    async def claim_notification(self, outbox_id: int, due_by: float, lease_until: float) -> bool:
        return bool(await self.claim_notifications([outbox_id], due_by, lease_until))

    async def notifications_delivered(self, delivered: list[tuple[int, int]]) -> None:
        """Clear delivered rows ``(outbox id, seq)`` in one transaction. A row whose ``seq`` moved while it
        was in flight (changed again) stays, due at once, so the newer state is delivered too."""
        if not delivered:
            return
        async with self.engine.begin() as conn:
            ids = [i for i, _ in delivered]
            await conn.execute(  # the id list lets SQLite use the key (a row-value IN alone scans the table)
                outbox.delete().where(
                    outbox.c.id.in_(ids), sa.tuple_(outbox.c.id, outbox.c.seq).in_(delivered)
                )
            )
            await conn.execute(
                outbox.update().where(outbox.c.id.in_(ids)).values(attempts=0, next_attempt_at=0.0)
            )

    async def notification_delivered(self, outbox_id: int, seq: int) -> None:
        await self.notifications_delivered([(outbox_id, seq)])

    async def notification_failed(self, outbox_id: int, next_attempt_at: float, error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == outbox_id)
                .values(
                    attempts=outbox.c.attempts + 1, next_attempt_at=next_attempt_at, last_error=error[:256]
                )
            )

    async def defer_notifications(
        self, outbox_ids: list[int], due_by: float, next_attempt_at: float, error: str
    ) -> None:
        """Count a failed attempt for due rows not sent (their subscriber is known to be unresponsive),
        without claiming them first: the compare-and-set skips rows another process has taken."""
        if not outbox_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id.in_(outbox_ids), outbox.c.next_attempt_at <= due_by)
                .values(
                    attempts=outbox.c.attempts + 1, next_attempt_at=next_attempt_at, last_error=error[:256]
                )
            )

    async def notification_sharing(self, site_ids: list[int]) -> tuple[set[int], dict[int, frozenset[int]]]:
        """For rendering a broadcast once: the sites among ``site_ids`` with anything aimed at them alone
        (controls, defaults, bulk DOE intervals), and each site's direct groups. Two sites outside the
        first set with the same groups see the same control lists, up to their hrefs."""
        if not site_ids:
            return set(), {}
        keys = [f"s:{i}" for i in site_ids]
        own = sa.union(
            sa.select(controls.c.target).where(controls.c.target.in_(keys)),
            sa.select(default_controls.c.target).where(default_controls.c.target.in_(keys)),
            sa.select(sa.literal("s:") + sa.cast(doe_intervals.c.site_id, sa.String)).where(
                doe_intervals.c.site_id.in_(site_ids)
            ),
        )
        async with self.read() as conn:
            alone = {int(k[2:]) for k in (await conn.execute(own)).scalars()}
            member = (
                await conn.execute(
                    sa.select(memberships.c.site_id, memberships.c.group_id).where(
                        memberships.c.site_id.in_(site_ids)
                    )
                )
            ).all()
        found: dict[int, set[int]] = {i: set() for i in site_ids}
        for site_id, group_id in member:
            found[site_id].add(group_id)
        return alone, {i: frozenset(g) for i, g in found.items()}
