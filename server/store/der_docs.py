"""The DER documents a site PUTs (DERCapability, DERSettings, DERStatus, DERAvailability)."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2.xml import Sep2XmlError, from_xml, to_xml
from server.errors import NotFound
from server.store.base import StoreBase
from server.store.codec import to_jsonable
from server.store.engine import _insert
from server.store.schema import (
    DER_DOCUMENT_TYPES,
    der_documents,
    der_history,
    ders,
)
from server.store.scope import Page, RequestScope


class DersStore(StoreBase):
    """DERs of a site and their documents."""

    async def der_ids(self, scope: RequestScope, site_id: int, page: Page) -> tuple[int, list[int]]:
        self.depends(("der", site_id))
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
        new = fields(doc)

        async def work(conn: AsyncConnection) -> Any:
            self.touch(("der", site_id))
            await self._der(conn, scope, site_id, der_id)
            before = (
                await conn.execute(
                    sa.select(der_documents.c.xml).where(
                        der_documents.c.der_id == der_id, der_documents.c.kind == kind
                    )
                )
            ).scalar()
            if before != xml:
                changes = diff(_stored_fields(before, kind), new)
                if changes or before is None:
                    await _record(conn, der_id, kind, now, changes)
            stmt = _insert(conn, der_documents).values(der_id=der_id, kind=kind, xml=xml, updated_at=now)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["der_id", "kind"], set_={"xml": xml, "updated_at": now}
                )
            )

        await self.grouped(work)


# ------------------------------------------------------------------------------------ standing data

# Leaves that move on every PUT without the DER having changed (the time of a reading or of the document).
_TIMESTAMPS = frozenset({"dateTime", "readingTime", "updatedTime", "href", "subscribable"})
HISTORY_KEEP = 500  # newest history rows kept per DER and document kind (at least; see _record)
PRUNE_EVERY = 32  # on average one insert in this many trims its DER's history (a query saved on the rest)


def fields(doc: Any) -> dict[str, Any]:
    """A DER document as flat ``{"rtgMaxW": 5000, "genConnectStatus.value": "01", ...}`` (quantities with
    their multiplier applied), timestamps left out."""
    out: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "multiplier"}:
            power = value.get("multiplier", 0)  # a quantity, in its unit
            out[path] = value["value"] * 10**power if power >= 0 else round(value["value"] * 10.0**power, 6)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in _TIMESTAMPS:
                    walk(item, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            out[path] = json.dumps(value, sort_keys=True)
        else:
            out[path] = value

    walk(to_jsonable(doc), "")
    return out


def _stored_fields(xml: str | None, kind: str) -> dict[str, Any]:
    """The fields of the stored document; none if there is none, or if it no longer parses (a document
    stored by another version must not make the client's PUT fail)."""
    if xml is None:
        return {}
    try:
        return fields(from_xml(xml.encode(), DER_DOCUMENT_TYPES[kind]))
    except Sep2XmlError:
        return {}


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for every field that differs (None where absent)."""
    return {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


async def _record(conn: AsyncConnection, der_id: int, kind: str, now: int, changes: dict[str, Any]) -> None:
    await conn.execute(
        der_history.insert().values(der_id=der_id, kind=kind, at=now, changes=json.dumps(changes))
    )
    # Bounded: status and availability change with every reading; the oldest rows go first. Trimming at
    # random (not every n-th id, which DERs PUTting in lockstep could always miss) keeps about
    # HISTORY_KEEP + PRUNE_EVERY rows per DER and kind.
    if PRUNE_EVERY > 1 and random.randrange(PRUNE_EVERY):
        return
    cutoff = (
        await conn.execute(
            sa.select(der_history.c.id)
            .where(der_history.c.der_id == der_id, der_history.c.kind == kind)
            .order_by(der_history.c.id.desc())
            .offset(HISTORY_KEEP)
            .limit(1)
        )
    ).scalar()
    if cutoff is not None:
        await conn.execute(
            der_history.delete().where(
                der_history.c.der_id == der_id, der_history.c.kind == kind, der_history.c.id <= cutoff
            )
        )
