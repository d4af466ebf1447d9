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
from server.store.base import _SITE, StoreBase
from server.store.codec import to_jsonable
from server.store.fast import Query, Writes
from server.store.schema import (
    DER_DOCUMENT_TYPES,
    der_documents,
    der_history,
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
_DOCUMENT_XML = Query(
    sa.select(der_documents.c.xml).where(
        der_documents.c.der_id == sa.bindparam("der_id"), der_documents.c.kind == sa.bindparam("kind")
    )
)
_HISTORY_INSERT = Query(
    der_history.insert().values({c: sa.bindparam(f"h_{c}") for c in ("der_id", "kind", "at", "changes")})
)
_HISTORY_THIS = sa.and_(
    der_history.c.der_id == sa.bindparam("der_id"), der_history.c.kind == sa.bindparam("kind")
)


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

        def work(db: Writes) -> None:
            self.touch(("der", site_id))
            if db.first(_SITE[scope.kind], site_id=site_id, **scope.bind()) is None:
                raise NotFound(f"no EndDevice {site_id} for this client")
            if db.first(_DER, der_id=der_id, site_id=site_id) is None:
                raise NotFound(f"no DER {der_id} on EndDevice {site_id}")
            stored = db.first(_DOCUMENT_XML, der_id=der_id, kind=kind)
            before = stored.xml if stored is not None else None
            if before != xml:
                changes = diff(_stored_fields(before, kind), new)
                if changes or before is None:
                    _record(db, der_id, kind, now, changes)
            db.execute(_DOCUMENT_UPSERT, p_der_id=der_id, p_kind=kind, p_xml=xml, p_updated_at=now)

        await self.grouped(work)

    # --------------------------------------------------------------------------------- telemetry


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


_HISTORY_CUTOFF = Query(
    sa.select(der_history.c.id)
    .where(_HISTORY_THIS)
    .order_by(der_history.c.id.desc())
    .offset(sa.bindparam("keep", type_=sa.Integer))
    .limit(1)
)
_HISTORY_TRIM = Query(der_history.delete().where(_HISTORY_THIS, der_history.c.id <= sa.bindparam("cutoff")))


def _record(db: Writes, der_id: int, kind: str, now: int, changes: dict[str, Any]) -> None:
    db.execute(_HISTORY_INSERT, h_der_id=der_id, h_kind=kind, h_at=now, h_changes=json.dumps(changes))
    # Bounded: status and availability change with every reading; the oldest rows go first. Trimming at
    # random (not every n-th id, which DERs PUTting in lockstep could always miss) keeps about
    # HISTORY_KEEP + PRUNE_EVERY rows per DER and kind.
    if PRUNE_EVERY > 1 and random.randrange(PRUNE_EVERY):
        return
    cutoff = db.first(_HISTORY_CUTOFF, der_id=der_id, kind=kind, keep=HISTORY_KEEP)
    if cutoff is not None:
        db.execute(_HISTORY_TRIM, der_id=der_id, kind=kind, cutoff=cutoff.id)
