"""Durable, ordered outbox for what the gateway must deliver to the server: telemetry and Responses.

One SQLite file in the gateway's data directory (``synchronous=FULL``: a commit is on disk, fsync'd,
before :meth:`Outbox.put` returns). Entries are delivered oldest first; an entry is deleted in its own
committed transaction right after the server accepted it, so after a crash at most the one entry whose
POST was in flight is sent again, and nothing that was queued is ever lost.

Blocking SQLite calls run in a worker thread so an fsync never stalls the event loop (notification
latency matters). A lock serialises access to the single connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,          -- "response" | "readings"
    target TEXT NOT NULL,        -- response: replyTo URL/href; readings: MirrorUsagePoint key
    body BLOB NOT NULL,          -- the sep2 XML document to POST
    meta TEXT NOT NULL,          -- JSON: what the entry stands for (subject/status, timestamps ...)
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL, target TEXT NOT NULL, body BLOB NOT NULL, meta TEXT NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    kind: str
    target: str
    body: bytes
    meta: dict[str, Any]
    created: float
    attempts: int


class Outbox:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.changed = asyncio.Event()  # set whenever something is queued

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- blocking primitives (run in a thread)

    def _put(self, items: list[tuple[str, str, bytes, dict[str, Any], float]]) -> list[int]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    self._db.execute(
                        "INSERT INTO outbox (kind, target, body, meta, created) VALUES (?, ?, ?, ?, ?)",
                        (kind, target, body, json.dumps(meta, sort_keys=True), created),
                    ).lastrowid
                    for kind, target, body, meta, created in items
                ]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [i for i in ids if i is not None]

    def _peek(self, limit: int) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, target, body, meta, created, attempts FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxEntry(r[0], r[1], r[2], bytes(r[3]), json.loads(r[4]), r[5], r[6]) for r in rows]

    def _delete(self, entry_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def _failed(self, entry_id: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, entry_id)
            )

    def _dead(self, entry: OutboxEntry, reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letter VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.id,
                    entry.kind,
                    entry.target,
                    entry.body,
                    json.dumps(entry.meta, sort_keys=True),
                    entry.created,
                    entry.attempts + 1,
                    reason,
                ),
            )
            self._db.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            self._db.execute("COMMIT")

    def _count(self, table: str) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # -- async API

    async def put(self, kind: str, target: str, body: bytes, meta: dict[str, Any], created: float) -> int:
        """Queue one entry; returns once it is committed to disk."""
        (entry_id,) = await asyncio.to_thread(self._put, [(kind, target, body, meta, created)])
        self.changed.set()
        return entry_id

    async def put_many(self, items: list[tuple[str, str, bytes, dict[str, Any], float]]) -> list[int]:
        """Queue several entries atomically (all or none), in order."""
        ids = await asyncio.to_thread(self._put, items)
        self.changed.set()
        return ids

    async def peek(self, limit: int = 32) -> list[OutboxEntry]:
        return await asyncio.to_thread(self._peek, limit)

    async def delivered(self, entry: OutboxEntry) -> None:
        await asyncio.to_thread(self._delete, entry.id)

    async def failed(self, entry: OutboxEntry, error: str) -> None:
        await asyncio.to_thread(self._failed, entry.id, error[:500])

    async def reject(self, entry: OutboxEntry, reason: str) -> None:
        """The server refused the entry for good (4xx): move it aside so it cannot block the queue."""
        await asyncio.to_thread(self._dead, entry, reason[:500])

    async def pending(self) -> int:
        return await asyncio.to_thread(self._count, "outbox")

    async def rejected(self) -> int:
        return await asyncio.to_thread(self._count, "dead_letter")
