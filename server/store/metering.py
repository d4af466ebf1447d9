"""Metering mirrors: MirrorUsagePoints, MirrorMeterReadings and their readings."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import sqlalchemy as sa

from sep2 import resources as r
from sep2.xml import to_xml
from server.errors import BadRequest, Conflict, NotFound
from server.store.base import StoreBase
from server.store.fast import Query, Writes
from server.store.quotas import QuotaExceeded, check_readings
from server.store.schema import (
    meter_readings,
    mups,
    readings,
    sites,
)
from server.store.scope import Page, RequestScope, own_site, own_site_lfdi, scoped
from server.store.versions import owners

_MUP_OWNER = scoped(
    lambda cond: (
        sa.select(sites.c.lfdi, sites.c.aggregator_id)
        .join(mups, mups.c.site_id == sites.c.id)
        .where(mups.c.id == sa.bindparam("mup_id"), cond)
    )
)
_MUP_OF_SITE = Query(
    sa.select(mups.c.id).where(mups.c.site_id == sa.bindparam("site_id"), mups.c.mrid == sa.bindparam("mrid"))
)
_MUP_BY_MRID = Query(sa.select(mups.c.id).where(mups.c.mrid == sa.bindparam("mrid")))
_MUP_COUNT = Query(sa.select(sa.func.count().label("n")).where(mups.c.site_id == sa.bindparam("site_id")))
_MUP_FIELDS = ("description", "role_flags", "service_category", "status", "version")
_MUP_INSERT = Query(
    mups.insert().values({c: sa.bindparam(f"p_{c}") for c in ("site_id", "mrid", "created_at", *_MUP_FIELDS)})
)
_MUP_UPDATE = Query(
    mups.update()
    .where(mups.c.id == sa.bindparam("p_id"))
    .values({c: sa.bindparam(f"p_{c}") for c in _MUP_FIELDS})
)
_MMR_OF_MUP = Query(
    sa.select(meter_readings.c.id).where(
        meter_readings.c.mup_id == sa.bindparam("mup_id"), meter_readings.c.mrid == sa.bindparam("mrid")
    )
)
_MMR_BY_MRID = Query(sa.select(meter_readings.c.id).where(meter_readings.c.mrid == sa.bindparam("mrid")))
_MMR_INSERT = Query(
    meter_readings.insert().values(
        {c: sa.bindparam(f"p_{c}") for c in ("mup_id", "mrid", "description", "reading_type", "last_update")}
    )
)


@functools.cache
def _mmr_update(columns: tuple[str, ...]) -> Query:
    return Query(
        meter_readings.update()
        .where(meter_readings.c.id == sa.bindparam("p_id"))
        .values({c: sa.bindparam(f"p_{c}") for c in columns})
    )


def _readings_upsert(dialect: str) -> Any:
    """A reading re-sent for the same interval replaces the earlier value (both dialects: ON CONFLICT)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    columns = ("meter_reading_id", "value", "quality_flags", "time_start", "duration", "received_at")
    stmt = insert(readings).values({c: sa.bindparam(f"p_{c}") for c in columns})
    return stmt.on_conflict_do_update(
        index_elements=["meter_reading_id", "time_start"],
        set_={c: stmt.excluded[c] for c in ("value", "quality_flags", "duration", "received_at")},
    )


_READINGS_UPSERT = Query(_readings_upsert)


def _reading_type_xml(mmr: r.MirrorMeterReading) -> str:
    return to_xml(dataclasses.replace(mmr.ReadingType, href=None)).decode()


def _store_meter_reading(db: Writes, mup_id: int, mmr: r.MirrorMeterReading, now: int) -> tuple[int, bool]:
    """A MirrorMeterReading of a MUP and its readings, inside a grouped write. Returns (id, created)."""
    mrid = (mmr.mRID or "").upper()
    existing = db.first(_MMR_OF_MUP, mup_id=mup_id, mrid=mrid)
    if existing is None:
        if mmr.ReadingType is None:
            raise BadRequest(f"MirrorMeterReading.ReadingType: required for a new reading (mRID {mrid})")
        if db.first(_MMR_BY_MRID, mrid=mrid) is not None:  # globally unique, as for the MirrorUsagePoint
            raise Conflict(f"MirrorMeterReading.mRID: {mrid} is already used by another resource")
        mmr_id = db.insert(
            _MMR_INSERT,
            p_mup_id=mup_id,
            p_mrid=mrid,
            p_description=mmr.description,
            p_reading_type=_reading_type_xml(mmr),
            p_last_update=mmr.lastUpdateTime,
        )
    else:
        mmr_id = existing.id
        values: dict[str, Any] = {"p_last_update": mmr.lastUpdateTime}
        if mmr.ReadingType is not None:
            values["p_reading_type"] = _reading_type_xml(mmr)
        if mmr.description is not None:
            values["p_description"] = mmr.description
        db.execute(_mmr_update(tuple(k[2:] for k in values)), p_id=mmr_id, **values)
    batch = []
    single = [mmr.Reading] if mmr.Reading is not None else []
    for reading in single + [rd for rs in mmr.MirrorReadingSet for rd in rs.Reading]:
        if reading.value is None:
            raise BadRequest(f"Reading.value: required (MirrorMeterReading {mrid})")
        period = reading.timePeriod
        batch.append(
            dict(
                p_meter_reading_id=mmr_id,
                p_value=reading.value,
                p_quality_flags=reading.qualityFlags,
                p_time_start=period.start if period else None,
                p_duration=period.duration if period else None,
                p_received_at=now,
            )
        )
    db.execute(_READINGS_UPSERT, batch)
    return mmr_id, existing is None


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
        mrid = mup.mRID.upper()
        device_lfdi = own_site_lfdi(mup.deviceLFDI, "MirrorUsagePoint.deviceLFDI")
        values = dict(
            p_description=mup.description,
            p_role_flags=mup.roleFlags,
            p_service_category=mup.serviceCategoryKind,
            p_status=mup.status,
            p_version=mup.version,
        )

        def work(db: Writes) -> tuple[int, bool]:
            site = own_site(db, scope, device_lfdi, "MirrorUsagePoint.deviceLFDI")
            self.touch(*(("mup", owner) for owner in owners(site.lfdi, site.aggregator_id)))
            existing = db.first(_MUP_OF_SITE, site_id=site.id, mrid=mrid)
            if existing is None:
                # mRIDs are globally unique (2030.5 clause 8.2.4.1 / CSIP-AUS): not another site's MUP.
                if db.first(_MUP_BY_MRID, mrid=mrid) is not None:
                    raise Conflict(f"MirrorUsagePoint.mRID: {mrid} is already used by another resource")
                held = db.first(_MUP_COUNT, site_id=site.id).n
                if held >= self.quotas.mups_per_site:
                    raise QuotaExceeded(
                        f"MirrorUsagePoint: this EndDevice has its maximum of {held} MirrorUsagePoints"
                    )
                mup_id = db.insert(_MUP_INSERT, p_site_id=site.id, p_mrid=mrid, p_created_at=now, **values)
            else:
                mup_id = existing.id
                db.execute(_MUP_UPDATE, p_id=mup_id, **values)
            for mmr in mup.MirrorMeterReading:
                _store_meter_reading(db, mup_id, mmr, now)
            return mup_id, existing is None

        try:
            return await self.grouped(work)
        except sa.exc.IntegrityError:
            # The same new mRID POSTed twice at once (a client retrying after a timeout): the other one
            # created it, so this one is an update of it now.
            return await self.grouped(work)

    async def post_meter_readings(
        self, scope: RequestScope, mup_id: int, items: list[r.MirrorMeterReading]
    ) -> list[tuple[int, bool]]:
        check_readings(self.quotas, items, "MirrorMeterReading")
        now = self.clock()
        bound = scope.bind()
        owner_query = _MUP_OWNER[scope.kind]

        def work(db: Writes) -> list[tuple[int, bool]]:
            found = db.first(owner_query, mup_id=mup_id, **bound)
            if found is None:
                raise NotFound(f"no MirrorUsagePoint {mup_id} for this client")
            self.touch(*(("mup", owner) for owner in owners(found.lfdi, found.aggregator_id)))
            return [_store_meter_reading(db, mup_id, mmr, now) for mmr in items]

        return await self.grouped(work)

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
