"""DOE routes: bulk upload (streamed, spooled, atomic; parsed by server.headend.doe), the uploads, and a
site's published schedule."""

from __future__ import annotations

import tempfile
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from server.headend import models as m
from server.headend.core import (
    HeadEnd,
)
from server.headend.doe import (
    CHUNK_BYTES,
    IngestError,
    ingest,
    site_intervals,
)
from server.headend.doe import (
    doe_uploads as uploads_table,
)
from server.headend.routing import Route

ROUTES = [
    Route("POST", "/api/does", "doe_upload", True, "Bulk DOE upload (CSV or JSON, streamed, atomic)",
          m.DoeUploaded, query=m.DoeUploadQuery, status=201, upload=True),
    Route("GET", "/api/does/uploads", "doe_uploads", False, "DOE uploads", m.DoeUploadList, query=m.Limit),
    Route("GET", "/api/sites/{site}/does", "site_does", False, "A site's DOE intervals", m.SiteDoes,
          query=m.SiteDoesQuery),
]  # fmt: skip


async def doe_upload(head: HeadEnd, request: web.Request, query: m.DoeUploadQuery) -> Any:
    fmt = query.format
    if fmt is None:
        ctype = request.content_type
        fmt = "json" if ctype in ("application/json", "application/x-ndjson", "application/jsonl") else "csv"
    reason = query.reason

    async def chunks() -> Any:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            part = await reader.next()
            while part is not None and getattr(part, "name", None) not in ("file", "does", None):
                part = await reader.next()
            if part is None:
                raise IngestError([(0, "file: no file part in the multipart body")])
            while True:
                chunk = await part.read_chunk(CHUNK_BYTES)  # type: ignore[union-attr]
                if not chunk:
                    break
                yield chunk
            return
        while True:
            chunk = await request.content.read(CHUNK_BYTES)
            if not chunk:
                break
            yield chunk

    # Spool the body to an unlinked temp file first, so the database write lock is held only while
    # rows are parsed and written, never while a slow client is still sending.
    with tempfile.TemporaryFile(dir=head.spool_dir) as spool:
        async for chunk in chunks():
            spool.write(chunk)
        spool.seek(0)

        async def spooled() -> Any:
            while chunk := spool.read(CHUNK_BYTES):
                yield chunk

        result = await ingest(head.store, spooled(), fmt=fmt, actor=head.actor(request), reason=reason)
    return result.as_json()


async def doe_uploads(head: HeadEnd, request: web.Request, query: m.Limit) -> Any:
    async with head.store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(uploads_table).order_by(uploads_table.c.id.desc()).limit(query.limit)
            )
        ).all()
    return {"items": [dict(row._mapping) for row in rows]}


async def site_does(head: HeadEnd, request: web.Request, query: m.SiteDoesQuery) -> Any:
    async with head.store.read() as conn:
        site = await head.site_row(conn, request.match_info["site"])
    items = await site_intervals(head.store, site.id, since=query.since, limit=query.limit)
    return {"site": site.lfdi, "items": items}
