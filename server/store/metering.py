"""Metering mirrors: MirrorUsagePoints, MirrorMeterReadings and their readings."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from sep2.xml import to_xml
from server.errors import BadRequest, Conflict, NotFound
from server.store.base import StoreBase
from server.store.engine import _insert
from server.store.quotas import QuotaExceeded, check_readings
from server.store.schema import (
    meter_readings,
    mups,
    readings,
    sites,
)
from server.store.scope import Page, RequestScope, _own_site
from server.store.versions import owners


class MeteringStore(StoreBase):
    """MirrorUsagePoints and readings."""

    def _mup_condition(self, scope: RequestScope) -> sa.ColumnElement[bool]:
        return mups.c.site_id.in_(sa.select(sites.c.id).where(scope.site_condition()))

    async def list_mups(self, scope: RequestScope, page: Page) -> tuple[int, list[sa.Row]]:
        cond = self._mup_condition(scope)
        self.depends(("mup", scope.owner))
        async with self.read() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(mups).where(cond))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(mups, sites.c.lfdi)
                    .join(sites, sites.c.id == mups.c.site_id)
                    .where(cond)
                    .order_by(mups.c.id)
                    .offset(page.start)
                    .limit(page.limit)
                )
            ).all()
        return total, list(rows)

    async def mup(self, scope: RequestScope, mup_id: int) -> tuple[sa.Row, list[sa.Row]]:
        self.depends(("mup", scope.owner))
        async with self.read() as conn:
            row = (
                await conn.execute(
                    sa.select(mups, sites.c.lfdi)
                    .join(sites, sites.c.id == mups.c.site_id)
                    .where(mups.c.id == mup_id, self._mup_condition(scope))
                )
            ).first()
            if row is None:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")
            mmrs = (
                await conn.execute(
                    sa.select(meter_readings)
                    .where(meter_readings.c.mup_id == mup_id)
                    .order_by(meter_readings.c.id)
                )
            ).all()
        return row, list(mmrs)

    async def upsert_mup(self, scope: RequestScope, mup: r.MirrorUsagePoint) -> tuple[int, bool]:
        """POST MirrorUsagePoint: the same mRID for the same device updates it. Returns (id, created)."""
        check_readings(self.quotas, mup.MirrorMeterReading, "MirrorUsagePoint")
        now = self.clock()

        async def work(conn: AsyncConnection) -> Any:
            site = await _own_site(conn, scope, mup.deviceLFDI, "MirrorUsagePoint.deviceLFDI")
            self.touch(*(("mup", owner) for owner in owners(site.lfdi, site.aggregator_id)))
            values = dict(
                description=mup.description,
                role_flags=mup.roleFlags,
                service_category=mup.serviceCategoryKind,
                status=mup.status,
                version=mup.version,
            )
            existing = (
                await conn.execute(
                    sa.select(mups.c.id).where(mups.c.site_id == site.id, mups.c.mrid == mup.mRID.upper())
                )
            ).first()
            if existing is None:
                # mRIDs are globally unique (2030.5 clause 8.2.4.1 / CSIP-AUS): not another site's MUP.
                taken = (
                    await conn.execute(sa.select(mups.c.id).where(mups.c.mrid == mup.mRID.upper()))
                ).first()
                if taken is not None:
                    raise Conflict(
                        f"MirrorUsagePoint.mRID: {mup.mRID.upper()} is already used by another resource"
                    )
                held = (
                    await conn.execute(
                        sa.select(sa.func.count()).select_from(mups).where(mups.c.site_id == site.id)
                    )
                ).scalar_one()
                if held >= self.quotas.mups_per_site:
                    raise QuotaExceeded(
                        f"MirrorUsagePoint: this EndDevice has its maximum of {held} MirrorUsagePoints"
                    )
                mup_id = (
                    await conn.execute(
                        mups.insert().values(site_id=site.id, mrid=mup.mRID.upper(), created_at=now, **values)
                    )
                ).inserted_primary_key[0]
            else:
                mup_id = existing.id
                await conn.execute(mups.update().where(mups.c.id == mup_id).values(**values))
            for mmr in mup.MirrorMeterReading:
                await self._store_meter_reading(conn, mup_id, mmr, now)
            return mup_id, existing is None

        return await self.grouped(work)

    async def post_meter_readings(
        self, scope: RequestScope, mup_id: int, items: list[r.MirrorMeterReading]
    ) -> list[tuple[int, bool]]:
        check_readings(self.quotas, items, "MirrorMeterReading")
        now = self.clock()

        async def work(conn: AsyncConnection) -> Any:
            found = (
                await conn.execute(
                    sa.select(sites.c.lfdi, sites.c.aggregator_id)
                    .join(mups, mups.c.site_id == sites.c.id)
                    .where(mups.c.id == mup_id, self._mup_condition(scope))
                )
            ).first()
            if found is None:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")
            self.touch(*(("mup", owner) for owner in owners(found.lfdi, found.aggregator_id)))
            return [await self._store_meter_reading(conn, mup_id, mmr, now) for mmr in items]

        return await self.grouped(work)

    async def _store_meter_reading(
        self, conn: AsyncConnection, mup_id: int, mmr: r.MirrorMeterReading, now: int
    ) -> tuple[int, bool]:
        mrid = (mmr.mRID or "").upper()
        existing = (
            await conn.execute(
                sa.select(meter_readings.c.id).where(
                    meter_readings.c.mup_id == mup_id, meter_readings.c.mrid == mrid
                )
            )
        ).first()
        if existing is None:
            if mmr.ReadingType is None:
                raise BadRequest(f"MirrorMeterReading.ReadingType: required for a new reading (mRID {mrid})")
            taken = (
                await conn.execute(sa.select(meter_readings.c.id).where(meter_readings.c.mrid == mrid))
            ).first()
            if taken is not None:  # globally unique, as for the MirrorUsagePoint
                raise Conflict(f"MirrorMeterReading.mRID: {mrid} is already used by another resource")
            mmr_id = (
                await conn.execute(
                    meter_readings.insert().values(
                        mup_id=mup_id,
                        mrid=mrid,
                        description=mmr.description,
                        reading_type=to_xml(dataclasses.replace(mmr.ReadingType, href=None)).decode(),
                        last_update=mmr.lastUpdateTime,
                    )
                )
            ).inserted_primary_key[0]
        else:
            mmr_id = existing.id
            values: dict[str, Any] = {"last_update": mmr.lastUpdateTime}
            if mmr.ReadingType is not None:
                values["reading_type"] = to_xml(dataclasses.replace(mmr.ReadingType, href=None)).decode()
            if mmr.description is not None:
                values["description"] = mmr.description
            await conn.execute(meter_readings.update().where(meter_readings.c.id == mmr_id).values(**values))
        batch = []
        single = [mmr.Reading] if mmr.Reading is not None else []
        for reading in single + [rd for rs in mmr.MirrorReadingSet for rd in rs.Reading]:
            if reading.value is None:
                raise BadRequest(f"Reading.value: required (MirrorMeterReading {mrid})")
            period = reading.timePeriod
            batch.append(
                dict(
                    meter_reading_id=mmr_id,
                    value=reading.value,
                    quality_flags=reading.qualityFlags,
                    time_start=period.start if period else None,
                    duration=period.duration if period else None,
                    received_at=now,
                )
            )
        if batch:
            stmt = _insert(conn, readings)
            stmt = stmt.on_conflict_do_update(
                index_elements=["meter_reading_id", "time_start"],
                set_={
                    "value": stmt.excluded.value,
                    "quality_flags": stmt.excluded.quality_flags,
                    "duration": stmt.excluded.duration,
                    "received_at": stmt.excluded.received_at,
                },
            )
            await conn.execute(stmt, batch)
        return mmr_id, existing is None

    async def delete_mup(self, scope: RequestScope, mup_id: int) -> None:
        async with self.changing() as conn:
            for site in await conn.execute(
                sa.select(sites.c.lfdi, sites.c.aggregator_id)
                .join(mups, mups.c.site_id == sites.c.id)
                .where(mups.c.id == mup_id)
            ):
                self.touch(*(("mup", owner) for owner in owners(site.lfdi, site.aggregator_id)))
            result = await conn.execute(mups.delete().where(mups.c.id == mup_id, self._mup_condition(scope)))
            if result.rowcount == 0:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")

    # --------------------------------------------------------------------------------- responses
