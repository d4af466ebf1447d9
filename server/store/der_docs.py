"""The DER documents a site PUTs (DERCapability, DERSettings, DERStatus, DERAvailability)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2.xml import from_xml, to_xml
from server.errors import NotFound
from server.store.base import _SITE, StoreBase
from server.store.fast import Query, Writes
from server.store.schema import (
    DER_DOCUMENT_TYPES,
    der_documents,
    ders,
)
from server.store.scope import Page, RequestScope

_DER = Query(
    sa.select(ders.c.id).where(ders.c.id == sa.bindparam("der_id"), ders.c.site_id == sa.bindparam("site_id"))
)


def _document_upsert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(der_documents).values(
        {c: sa.bindparam(f"p_{c}") for c in ("der_id", "kind", "xml", "updated_at")}
    )
    return stmt.on_conflict_do_update(
        index_elements=["der_id", "kind"], set_={c: stmt.excluded[c] for c in ("xml", "updated_at")}
    )


_DOCUMENT_UPSERT = Query(_document_upsert)


class DersStore(StoreBase):
    """DERs of a site and their documents."""

    async def der_ids(self, scope: RequestScope, site_id: int, page: Page) -> tuple[int, list[int]]:
        async with self.read() as conn:
            await self._site(conn, scope, site_id)
            ids = [
                row.id
                for row in (
                    await conn.execute(
                        sa.select(ders.c.id).where(ders.c.site_id == site_id).order_by(ders.c.id)
                    )
                ).all()
            ]
        return len(ids), ids[page.start : page.start + page.limit]

    async def _der(self, conn: AsyncConnection, scope: RequestScope, site_id: int, der_id: int) -> None:
        await self._site(conn, scope, site_id)
        found = (
            await conn.execute(sa.select(ders.c.id).where(ders.c.id == der_id, ders.c.site_id == site_id))
        ).first()
        if found is None:
            raise NotFound(f"no DER {der_id} on EndDevice {site_id}")

    async def der_exists(self, scope: RequestScope, site_id: int, der_id: int) -> None:
        async with self.read() as conn:
            await self._der(conn, scope, site_id, der_id)

    async def der_document(self, scope: RequestScope, site_id: int, der_id: int, kind: str) -> Any | None:
        self.depends(("der", site_id))
        async with self.read() as conn:
            await self._der(conn, scope, site_id, der_id)
            row = (
                await conn.execute(
                    sa.select(der_documents.c.xml).where(
                        der_documents.c.der_id == der_id, der_documents.c.kind == kind
                    )
                )
            ).first()
        if row is None:
            return None
        return from_xml(row.xml.encode(), DER_DOCUMENT_TYPES[kind])

    async def put_der_document(
        self, scope: RequestScope, site_id: int, der_id: int, kind: str, doc: Any
    ) -> None:
        doc = dataclasses.replace(doc, href=None)
        xml = to_xml(doc).decode()
        now = self.clock()

        def work(db: Writes) -> None:
            self.touch(("der", site_id))
            if db.first(_SITE[scope.kind], site_id=site_id, **scope.bind()) is None:
                raise NotFound(f"no EndDevice {site_id} for this client")
            if db.first(_DER, der_id=der_id, site_id=site_id) is None:
                raise NotFound(f"no DER {der_id} on EndDevice {site_id}")
            db.execute(_DOCUMENT_UPSERT, p_der_id=der_id, p_kind=kind, p_xml=xml, p_updated_at=now)

        await self.grouped(work)

    # --------------------------------------------------------------------------------- telemetry
