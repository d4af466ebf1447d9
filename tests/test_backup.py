"""Backup and restore of the SQLite store (server.backup): a backup taken while the server serves writes
is a consistent, checked copy; restore brings exactly that state back and is refused while a server
runs on the data directory."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from server.app import start_server
from server.backup import BackupError, backup, restore
from tests.test_server_harness import Client, end_device, server_config

pytest_plugins = ["tests.test_server_harness"]


async def test_backup_while_serving_then_restore(pki, tmp_path):
    data_dir = tmp_path / "data"
    config = server_config(pki, data_dir)
    database = data_dir / "derlink.sqlite3"
    target = tmp_path / "backup.sqlite3"
    running = await start_server(config)
    a = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    b = Client(running.base_url, pki.ssl("dev-b"), pki.identities["dev-b"].lfdi)
    try:
        assert (await a.post("/edev", end_device(a.lfdi))).status == 201
        kept = await running.store.admin.table_dump()
        # The backup runs (in a thread) while the server keeps answering.
        size, reply = await asyncio.gather(asyncio.to_thread(backup, database, target), a.get("/edev/1"))
        assert size > 0 and reply.status == 200
        assert (await b.post("/edev", end_device(b.lfdi))).status == 201  # after the backup
        later = await running.store.admin.table_dump()
        assert later != kept
        # Refused while a server runs here (derlink server run records its pid in headend.json).
        (data_dir / "headend.json").write_text(json.dumps({"url": "http://x", "pid": os.getpid()}))
        with pytest.raises(BackupError, match="stop it before restoring"):
            restore(target, database, data_dir)
    finally:
        await a.close()
        await b.close()
        await running.stop()
    (data_dir / "headend.json").unlink()
    restore(target, database, data_dir)
    running = await start_server(config)
    try:
        assert await running.store.admin.table_dump() == kept
    finally:
        await running.stop()
    # A damaged backup is refused and the database is left as it was.
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(target.read_bytes()[:4096])
    with pytest.raises(BackupError):
        restore(broken, database, data_dir)
    running = await start_server(config)
    try:
        assert await running.store.admin.table_dump() == kept
    finally:
        await running.stop()
