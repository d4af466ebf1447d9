"""Sites and registration: certificate -> scope, contacts, EndDevices, connection points."""

from __future__ import annotations

import sqlalchemy as sa

from sep2.identity import IdentityError, normalise_lfdi, sfdi_from_lfdi
from server.errors import BadRequest, Conflict, Forbidden
from server.store.base import StoreBase
from server.store.fast import Query
from server.store.pubsub import _enqueue
from server.store.schema import (
    aggregators,
    clients,
    ders,
    groups,
    mups,
    sites,
)
from server.store.scope import Page, RequestScope, scoped
from server.store.targets import site_targets
from server.store.versions import owners

SITE_CONTACT_EVERY = 20  # s: resolution of sites.last_contact (the console's silent threshold is >= 60 s)
_CLIENT = Query(sa.select(clients).where(clients.c.lfdi == sa.bindparam("lfdi")))
_SITE_ID = Query(sa.select(sites.c.id).where(sites.c.lfdi == sa.bindparam("lfdi")))
_COUNTS = scoped(
    lambda cond: sa.select(
        sa.select(sa.func.count()).select_from(sites).where(cond).scalar_subquery().label("edev"),
        sa.select(sa.func.count())
        .select_from(mups)
        .where(mups.c.site_id.in_(sa.select(sites.c.id).where(cond)))
        .scalar_subquery()
        .label("mup"),
    )
)


class SitesStore(StoreBase):
    """Identity and EndDevices."""

    async def scope_for(self, lfdi: str, role: str) -> RequestScope:
        """Resolve a certificate to a scope; a revoked certificate is refused (403).

        An aggregator-role certificate seen for the first time gets its own aggregator, so it can start
        registering sites at once; the operator can attach further certificates to it for rotation.
        """
        row = await self.fast.first(_CLIENT, lfdi=lfdi)
        if row is None:
            try:
                row = await self._first_contact(lfdi, role)
            except sa.exc.IntegrityError:  # a concurrent first request registered it: use that
                async with self.read() as conn:
                    row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
        if row.revoked:
            raise Forbidden("client certificate access has been revoked")
        if row.kind == "aggregator":
            return RequestScope(lfdi=lfdi, kind="aggregator", aggregator_id=row.aggregator_id)
        return RequestScope(lfdi=lfdi, kind="device")

    async def _first_contact(self, lfdi: str, role: str) -> sa.Row:
        now = self.clock()
        async with self.changing(("client", lfdi)) as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
            if row is None:
                aggregator_id = None
                if role == "aggregator":
                    aggregator_id = (
                        await conn.execute(
                            aggregators.insert().values(name=f"aggregator-{lfdi[:12]}", created_at=now)
                        )
                    ).inserted_primary_key[0]
                await conn.execute(
                    clients.insert().values(
                        lfdi=lfdi,
                        kind=role,
                        aggregator_id=aggregator_id,
                        revoked=False,
                        first_seen=now,
                        last_seen=now,
                    )
                )
                row = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
        return row

    def note_contact(self, lfdi: str) -> None:
        """Remember a client's last contact; written in batches by :meth:`flush_contacts`."""
        self._pending_contacts[lfdi] = self.clock()

    async def flush_contacts(self) -> None:
        """Write the pending contacts: every client's ``last_seen``, and the ``last_contact`` of the sites
        it speaks for (its own, or all of an aggregator's) at most once per site per SITE_CONTACT_EVERY s,
        so that a fleet polling every few seconds costs one site-row write per site per that period."""
        if not self._pending_contacts:
            return
        pending, self._pending_contacts = self._pending_contacts, {}
        written = self._site_contact_written
        due = [
            {"k": k, "t": t}
            for k, t in pending.items()
            if k not in written or t - written[k] >= SITE_CONTACT_EVERY
        ]
        async with self.engine.begin() as conn:  # not a content change: no generation bump
            await conn.execute(
                clients.update()
                .where(clients.c.lfdi == sa.bindparam("k"))
                .values(last_seen=sa.bindparam("t")),
                [{"k": k, "t": t} for k, t in pending.items()],
            )
            if due:
                stale = sa.or_(
                    sites.c.last_contact.is_(None),
                    sites.c.last_contact <= sa.bindparam("t") - SITE_CONTACT_EVERY,
                )
                values = {"last_contact": sa.bindparam("t")}
                own = sites.update().where(sites.c.lfdi == sa.bindparam("k"), stale).values(values)
                await conn.execute(own, due)
                aggregator = (
                    sa.select(clients.c.aggregator_id)
                    .where(clients.c.lfdi == sa.bindparam("k"), clients.c.kind == "aggregator")
                    .scalar_subquery()
                )
                agg = sites.update().where(sites.c.aggregator_id == aggregator, stale).values(values)
                await conn.execute(agg, due)
        written.update((d["k"], d["t"]) for d in due)

    # --------------------------------------------------------------------------------- sites

    async def site(self, scope: RequestScope, site_id: int) -> sa.Row:
        async with self.read() as conn:
            return await self._site(conn, scope, site_id)

    async def list_sites(self, scope: RequestScope, page: Page) -> tuple[int, list[sa.Row]]:
        cond = scope.site_condition()
        self.depends(("edev", scope.owner))
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(sites).where(cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(sites)
                    .where(cond)
                    .order_by(sites.c.sfdi, sites.c.id)
                    .offset(page.start)
                    .limit(page.limit)
                )
            ).all()
        return total, list(rows)

    async def register_site(
        self,
        scope: RequestScope,
        *,
        lfdi: str | None,
        sfdi: int | None,
        device_category: str | None,
        inband_allowed: bool,
    ) -> tuple[int, bool]:
        """In-band registration (POST EndDevice). Returns (site id, created).

        An LFDI that is already registered is refused, whoever holds it: a client finds its EndDevice
        through the EndDeviceList (2030.5 clause 6.4.2 / CSIP-AUS registration). A deregistered
        certificate (or an LFDI the operator revoked) cannot enrol again in-band: only the operator
        registers it again."""
        if lfdi is None:
            if scope.kind == "aggregator":
                raise BadRequest("EndDevice.lFDI: required when an aggregator registers a device")
            lfdi = scope.lfdi
        try:
            lfdi = normalise_lfdi(lfdi)
        except IdentityError as exc:
            raise BadRequest(f"EndDevice.lFDI: {exc}") from None
        if scope.kind == "device" and lfdi != scope.lfdi:
            raise Forbidden("EndDevice.lFDI: does not match the client certificate's LFDI")
        expected_sfdi = sfdi_from_lfdi(lfdi)
        if sfdi is not None and sfdi != expected_sfdi:
            raise BadRequest(f"EndDevice.sFDI: {sfdi} is not the SFDI of lFDI {lfdi} ({expected_sfdi})")
        async with self.read() as conn:
            existing = (await conn.execute(sa.select(sites.c.id).where(sites.c.lfdi == lfdi))).first()
            holder = (await conn.execute(sa.select(clients).where(clients.c.lfdi == lfdi))).first()
        if existing is not None:
            raise Conflict(
                f"EndDevice.lFDI: {lfdi} is already registered; find its EndDevice in the EndDeviceList"
            )
        if holder is not None and holder.revoked:
            raise Forbidden(
                f"EndDevice.lFDI: {lfdi} was deregistered; only the operator can register it again"
            )
        if scope.kind == "aggregator" and holder is not None and lfdi != scope.lfdi:
            raise Conflict(f"EndDevice.lFDI: {lfdi} is another client's certificate")
        if not inband_allowed:
            raise Forbidden("in-band registration is disabled; ask the operator to register this device")
        now = self.clock()
        async with self.changing(*(("edev", owner) for owner in owners(lfdi, scope.aggregator_id))) as conn:
            site_id = (
                await conn.execute(
                    sites.insert().values(
                        lfdi=lfdi,
                        sfdi=expected_sfdi,
                        aggregator_id=scope.aggregator_id,
                        device_category=device_category,
                        enabled=True,
                        changed_time=now,
                        registered_time=now,
                    )
                )
            ).inserted_primary_key[0]
            await conn.execute(ders.insert().values(site_id=site_id))
            await _enqueue(conn, now, kinds=("edev",), owner_scope=scope)
        return site_id, True

    async def set_connection_point(self, scope: RequestScope, site_id: int, nmi: str) -> None:
        nmi = nmi.strip()
        if not nmi or len(nmi) > 32:
            raise BadRequest("ConnectionPoint.connectionPointId: must be 1 to 32 characters")
        async with self.changing() as conn:
            site = await self._site(conn, scope, site_id)
            self.touch(
                ("site", site_id), *(("edev", owner) for owner in owners(site.lfdi, site.aggregator_id))
            )
            # An NMI belongs to one site (issue 11 item 11); the checksum digit, if given, is not compared.
            other = (
                await conn.execute(
                    sa.select(sites.c.id).where(
                        sa.func.substr(sites.c.nmi, 1, 10) == nmi[:10], sites.c.id != site_id
                    )
                )
            ).first()
            if other is not None:
                raise Conflict(f"ConnectionPoint.connectionPointId: NMI {nmi} belongs to another site")
            await conn.execute(
                sites.update().where(sites.c.id == site_id).values(nmi=nmi, changed_time=self.clock())
            )

    async def client_targets(self, scope: RequestScope) -> list[tuple[str, int]]:
        """Rate targets for client-level resources: a device client's own site, else everyone."""
        if scope.kind == "aggregator":
            return [("all", 0)]
        self.depends(("edev", scope.owner))
        async with self.fast.connect() as db:
            row = await db.first(_SITE_ID, lfdi=scope.lfdi)
            if row is not None:
                self.depends(("site", row.id))
            return await site_targets(db, row.id) if row else [("all", 0)]

    async def client_counts(self, scope: RequestScope) -> dict[str, int]:
        self.depends(("edev", scope.owner), ("mup", scope.owner))
        row = await self.fast.first(_COUNTS[scope.kind], **scope.bind())
        return {"edev": row.edev, "mup": row.mup}

    async def group_names(self, group_ids: list[int]) -> dict[int, str]:
        if not group_ids:
            return {}
        self.depends(("groups", 0))
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(groups.c.id, groups.c.name, groups.c.description).where(
                        groups.c.id.in_(group_ids)
                    )
                )
            ).all()
        # The FSA's description: the one the operator gave the group, else its name.
        return {row.id: row.description or row.name for row in rows}

    # --------------------------------------------------------------------------------- programs & controls
