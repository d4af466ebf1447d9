"""Group commit (issue 12): concurrent durable writes share one transaction, each is acknowledged only after
the commit that holds it, a failing write does not take the others down, and nothing acknowledged is lost
when the server is killed with SIGKILL in the middle of a stream of writes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from sep2 import resources as r
from server.errors import BadRequest
from server.store import RequestScope, Store
from tests.test_headend_bulk import _free_port
from tests.test_server_harness import Client, Pki, end_device, meter_reading, mup

pytest_plugins = ["tests.test_server_harness", "tests.postgres_fixture"]

LFDI = "AB" * 20
T0 = 1_700_000_000


async def _store_with_mup(tmp_path: Path, url: str | None = None) -> tuple[Store, RequestScope, int]:
    store = await Store.open(url or f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite3'}")
    await store.admin.register_site(LFDI)
    scope = RequestScope(lfdi=LFDI, kind="device")
    mup_id, _ = await store.upsert_mup(scope, mup(LFDI))
    return store, scope, mup_id


def _stored_starts(store: Store) -> set[int]:
    with sqlite3.connect(store.engine.url.database) as conn:  # a fresh connection: what is on disk
        return {row[0] for row in conn.execute("SELECT time_start FROM readings")}


async def test_concurrent_writes_share_commits_and_each_returns_after_its_commit(tmp_path):
    store, scope, mup_id = await _store_with_mup(tmp_path)
    try:
        commits, writes = store.commits, store.grouped_writes
        n = 64

        async def post(i: int) -> set[int]:
            await store.post_meter_readings(scope, mup_id, [meter_reading(i, T0 + 300 * (i + 1))])
            return _stored_starts(store)  # read from disk the moment this write is acknowledged

        seen = await asyncio.gather(*(post(i) for i in range(n)))
        assert store.grouped_writes - writes == n
        assert store.commits - commits < n / 4, "64 concurrent writes should need only a few commits"
        for i, on_disk in enumerate(seen):
            assert T0 + 300 * (i + 1) in on_disk  # acknowledged after the commit that holds it
    finally:
        await store.close()


async def test_a_failing_write_gets_its_error_and_the_rest_of_its_group_commits(tmp_path):
    store, scope, mup_id = await _store_with_mup(tmp_path)
    try:
        bad = [
            meter_reading(1, T0 + 10_000),  # written first, then the next item fails: none of it may stay
            r.MirrorMeterReading(mRID="AA" * 16, Reading=r.Reading(value=None)),
        ]
        good = [
            store.post_meter_readings(scope, mup_id, [meter_reading(i, T0 + 300 * (i + 1))]) for i in range(8)
        ]
        results = await asyncio.gather(
            *good[:4], store.post_meter_readings(scope, mup_id, bad), *good[4:], return_exceptions=True
        )
        assert isinstance(results[4], BadRequest) and "Reading.value" in str(results[4])
        assert not any(isinstance(x, BaseException) for i, x in enumerate(results) if i != 4)
        starts = _stored_starts(store)
        assert {T0 + 300 * (i + 1) for i in range(8)} <= starts and T0 + 10_000 not in starts
    finally:
        await store.close()


def _server_toml(pki: Pki, data_dir: Path, port: int, headend_port: int) -> Path:
    path = data_dir.parent / "server.toml"
    path.write_text(
        "[server]\n"
        f'data_dir = "{data_dir}"\ncert_dir = "{pki.directory}"\n'
        f"port = {port}\nadmin_port = 0\nheadend_port = {headend_port}\n"
    )
    return path


async def test_kill_9_during_a_stream_of_grouped_writes_loses_nothing_acknowledged(pki: Pki, tmp_path: Path):
    port, headend_port = _free_port(), _free_port()
    config = _server_toml(pki, tmp_path / "data", port, headend_port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "derlink",
        "server",
        "run",
        "--config",
        str(config),
        "--log-level",
        "WARNING",
        cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    client = Client(f"https://127.0.0.1:{port}", pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await client.post("/edev", end_device(client.lfdi))).status == 201:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline and proc.returncode is None, "server did not start"
            await asyncio.sleep(0.1)
        mup_path = (await client.post("/mup", mup(client.lfdi))).headers["Location"]
        acked: set[int] = set()
        enough = asyncio.Event()
        counter = iter(range(1, 10**9))

        async def writer() -> None:
            while True:
                start = T0 + 300 * next(counter)
                try:
                    reply = await client.post(mup_path, meter_reading(start % 100_000, start))
                except (aiohttp.ClientError, ConnectionError):
                    return  # the server is gone
                if reply.status == 204:
                    acked.add(start)
                    if len(acked) >= 300:
                        enough.set()

        writers = [asyncio.create_task(writer()) for _ in range(32)]
        await asyncio.wait_for(enough.wait(), 120)
        os.kill(proc.pid, signal.SIGKILL)  # groups are being committed all the time at this concurrency
        assert await proc.wait() == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*writers), 30)
        with sqlite3.connect(tmp_path / "data" / "derlink.sqlite3") as conn:
            stored = {row[0] for row in conn.execute("SELECT time_start FROM readings")}
        assert acked <= stored, f"{len(acked - stored)} acknowledged readings were lost"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await client.close()


async def test_the_same_new_mup_posted_twice_at_once_creates_it_once(tmp_path):
    """A gateway that retries POST /mup after a timeout can race its own first attempt (found with group
    commit under load: a UNIQUE violation answered 500). One creates the MUP, the other updates it."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite3'}")
    try:
        await store.admin.register_site(LFDI)
        scope = RequestScope(lfdi=LFDI, kind="device")
        doc = mup(LFDI)
        results = await asyncio.gather(*(store.upsert_mup(scope, doc) for _ in range(4)))
        assert len({mup_id for mup_id, _ in results}) == 1
        assert sorted(created for _, created in results) == [False, False, False, True]
    finally:
        await store.close()


async def test_group_commit_on_postgresql_shares_commits_and_drops_only_the_failing_write(
    tmp_path, postgres_url
):
    """The same group commit on PostgreSQL (the writes run inside ``run_sync``, not a writer thread)."""
    store, scope, mup_id = await _store_with_mup(tmp_path, postgres_url)
    try:
        commits = store.commits
        bad = [
            meter_reading(1, T0 + 10_000),
            r.MirrorMeterReading(mRID="AA" * 16, Reading=r.Reading(value=None)),
        ]
        posts = [
            store.post_meter_readings(scope, mup_id, [meter_reading(i, T0 + 300 * (i + 1))])
            for i in range(32)
        ]
        results = await asyncio.gather(
            *posts[:16], store.post_meter_readings(scope, mup_id, bad), *posts[16:], return_exceptions=True
        )
        assert isinstance(results[16], BadRequest) and "Reading.value" in str(results[16])
        assert not any(isinstance(x, BaseException) for i, x in enumerate(results) if i != 16)
        assert store.commits - commits < 32 / 4
        async with store.read() as conn:
            starts = {row[0] for row in await conn.execute(sa.text("SELECT time_start FROM readings"))}
        assert {T0 + 300 * (i + 1) for i in range(32)} <= starts and T0 + 10_000 not in starts
    finally:
        await store.close()
