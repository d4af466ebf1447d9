"""The DER documents a site PUTs (DERCapability, DERSettings, DERStatus, DERAvailability)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2.xml import from_xml, to_xml
from server.errors import NotFound
from server.store.base import StoreBase
from server.store.engine import _insert
from server.store.schema import (
    DER_DOCUMENT_TYPES,
    der_documents,
    ders,
)
from server.store.scope import Page, RequestScope


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

        async def work(conn: AsyncConnection) -> Any:
            self.touch(("der", site_id))
            await self._der(conn, scope, site_id, der_id)
            stmt = _insert(conn, der_documents).values(der_id=der_id, kind=kind, xml=xml, updated_at=now)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["der_id", "kind"], set_={"xml": xml, "updated_at": now}
                )
            )

        await self.grouped(work)

    # --------------------------------------------------------------------------------- telemetry
