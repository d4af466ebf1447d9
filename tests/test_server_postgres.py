"""The server on PostgreSQL (a throwaway cluster from tests.postgres_fixture): alembic schema == table
definitions, concurrent start-up of several processes on one database, and scale-out: two server
processes sharing one database, each with its response cache on, see each other's writes within a moment
(each commit is announced with NOTIFY, server.workers; tests/test_server_shared_cache.py for the cache
itself), and deliver each outbox notification once. Plus value ranges and string lengths, which PostgreSQL
enforces and SQLite does not (run on both).

The behaviour tests (walk, access matrix, bad input, resources, notifications) run on both backends
through ``@BACKENDS`` in their own modules."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import server.incidents.tables  # noqa: F401  (registers its tables on metadata until the store imports it)
from sep2 import resources as r
from server.app import start_server
from server.store import (
    AdminError,
    RequestScope,
    Store,
    build_control_base,
    make_engine,
    metadata,
    migrate,
    outbox,
    programs,
)
from tests.test_server_harness import BACKENDS, Client, derg, end_device, mup, server_config, subscription
from tests.test_server_notifications import Subscriber, free_port

pytest_plugins = ["tests.test_server_harness"]
ROOT = Path(__file__).resolve().parent.parent


async def test_migrations_match_table_definitions_on_postgresql(postgres_url):
    engine = make_engine(postgres_url)
    assert engine.dialect.name == "postgresql"
    await migrate(engine)
    await migrate(engine)  # idempotent

    def diff(sync_conn: sa.Connection) -> list:
        return compare_metadata(MigrationContext.configure(sync_conn), metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar_one()
    head = ScriptDirectory(str(ROOT / "server" / "migrations")).get_current_head()
    assert version == head
    await engine.dispose()


async def test_concurrent_startup_on_one_empty_database(postgres_url):
    """Several server processes started together on an empty database: one migrates, the others wait
    for it; the standard programs exist once."""

    async def start() -> Store:
        store = await Store.open(postgres_url)
        await store.admin.ensure_standard_programs()
        return store

    stores = await asyncio.gather(*(start() for _ in range(4)))
    try:
        async with stores[0].read() as conn:
            keys = sorted((await conn.execute(sa.select(programs.c.key))).scalars())
        assert keys == ["default", "doe", "emergency"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_one_outbox_row_is_claimed_by_one_sender(postgres_url):
    """Two stores (as two server processes) see the same due row; exactly one may deliver it."""
    first, second = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        admin = first.admin
        await admin.ensure_standard_programs()
        lfdi = "AB" * 20
        await admin.register_site(lfdi)
        scope = RequestScope(lfdi=lfdi, kind="device")
        site_id = await admin.site_id(lfdi)
        await first.create_subscription(
            scope,
            site_id,
            kind="derc",
            program_id=2,
            fsa_key=0,
            subscribed_href=f"/edev/{site_id}/derp/2/derc",
            notification_uri="https://127.0.0.1:9/n",
            limit=5,
            level="+S1",
        )
        await admin.create_control("doe", f"site:{lfdi}", duration=60, base=build_control_base(target_w=1))
        now = time.time()
        seen = [await s.due_notifications(now) for s in (first, second)]
        assert [len(rows) for rows in seen] == [1, 1]
        outbox_id = seen[0][0].outbox_id
        claims = await asyncio.gather(
            first.claim_notification(outbox_id, now, now + 30),
            second.claim_notification(outbox_id, now, now + 30),
        )
        assert sorted(claims) == [False, True]
        assert await second.due_notifications(now) == []
        assert await first.next_notification_time() == now + 30  # the claim is a lease, not a delete
    finally:
        await first.close()
        await second.close()


def _second_server_process(pki, tmp_path: Path, url: str) -> tuple[list[str], Path]:
    config = tmp_path / "second.toml"
    config.write_text(
        "[server]\n"
        f'database_url = "{url}"\n'
        f'data_dir = "{tmp_path / "second"}"\n'
        f'cert_dir = "{pki.directory}"\n'
        "port = 0\nadmin_port = 0\nheadend_port = 0\n"
        "notify_retry_initial = 0.2\nnotify_retry_max = 1.0\nnotify_timeout = 2.0\n"
        'log_level = "WARNING"\n'
        'notify_allow = ["127.0.0.0/8"]\n'  # its subscribers listen on loopback
    )
    return [
        sys.executable,
        "-m",
        "derlink",
        "server",
        "run",
        "--config",
        str(config),
    ], tmp_path / "second.log"


async def test_two_server_processes_share_one_database(pki, tmp_path, postgres_url):
    """Process A (in this test) and process B (a real `derlink server run`) start together on one empty
    PostgreSQL database. Writes through either are visible through the other within a second (the other's
    cache hears of each commit), revocation included, and a notification is delivered once although both
    senders watch the outbox."""
    command, log_path = _second_server_process(pki, tmp_path, postgres_url)
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log_file
        )
    running = None
    clients: list[Client] = []
    subscriber = Subscriber(pki.directory, free_port())
    try:
        running = await start_server(server_config(pki, tmp_path / "first", database_url=postgres_url))
        assert running.store.engine.dialect.name == "postgresql" and running.config.cache_active
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        found = re.search(rb"2030\.5 on (https://\S+),", line)
        assert found, (line, log_path.read_text())
        lfdi = pki.identities["dev-a"].lfdi
        via_a = Client(running.base_url, pki.ssl("dev-a"), lfdi)
        via_b = Client(found.group(1).decode(), pki.ssl("dev-a"), lfdi)
        clients += [via_a, via_b]
        admin = running.store.admin

        # Registered through B, seen through A.
        reply = await via_b.post("/edev", end_device(lfdi))
        assert reply.status == 201, reply.headers
        edev = reply.headers["Location"]
        assert (await via_a.get(edev)).status == 200
        programs_list = (await via_a.get(f"{edev}/fsa/0/derp?l=10")).doc(r.DERProgramList)
        doe = next(p for p in programs_list.DERProgram if p.description == "Dynamic operating envelope")
        derc = doe.DERControlListLink.href

        # Controls created and cancelled through A: B never answers from a stale copy.
        now = running.store.clock()
        made = []
        for i in range(3):
            for _ in range(2):  # B has just served the list: a cache would keep this answer
                listing = (await via_b.get(f"{derc}?l=50")).doc(r.DERControlList)
                assert listing.all == i
            made.append(
                await admin.create_control(
                    "doe",
                    f"site:{lfdi}",
                    start=now + 3600 * (i + 1),
                    duration=600,
                    base=build_control_base(export_limit_w=1000 * (i + 1)),
                )
            )
            listing = await soon(via_b, f"{derc}?l=50", r.DERControlList, lambda d, n=i + 1: d.all == n)
            assert sorted(c.mRID for c in listing.DERControl) == sorted(made)
        control_href = next(c.href for c in listing.DERControl if c.mRID == made[0])
        assert (await via_b.get(control_href)).doc(r.DERControl).EventStatus.currentStatus == 0
        await admin.cancel_control(made[0])
        await soon(via_b, control_href, r.DERControl, lambda d: d.EventStatus.currentStatus == 2)

        # Revocation through A takes effect on B's next request, and so does lifting it.
        assert (await via_b.get(edev)).status == 200
        await admin.set_revoked(lfdi, True, actor="test", reason="stolen")
        await soon(via_b, edev, status=403)
        await admin.set_revoked(lfdi, False, actor="test")
        await soon(via_b, edev, status=200)

        # DER settings and telemetry through B, read by A's operator side; an update through A, read on B.
        der = f"{edev}/der/{edev.rsplit('/', 1)[1]}"
        assert (await via_b.put(f"{der}/derg", derg(updated=1_700_000_123))).status == 204
        assert (await admin.site_der_documents(lfdi))["derg"].updatedTime == 1_700_000_123
        assert (await via_a.put(f"{der}/derg", derg(updated=1_700_000_456))).status == 204
        await soon(via_b, f"{der}/derg", r.DERSettings, lambda d: d.updatedTime == 1_700_000_456)
        reply = await via_b.post("/mup", mup(lfdi, "CD" * 16, value=10))
        assert reply.status == 201
        mup_href = reply.headers["Location"]
        reply = await via_a.post("/mup", mup(lfdi, "CD" * 16, value=20))  # same mRID and interval
        assert (reply.status, reply.headers["Location"]) == (204, mup_href)
        assert (await via_b.get("/mup?l=10")).doc(r.MirrorUsagePointList).all == 1
        assert [row["value"] for row in await admin.site_readings(lfdi)] == [20]

        # One notification for one change, though both processes' senders retry the same outbox row.
        reply = await via_b.post(
            f"{edev}/sub", subscription(derc, f"https://127.0.0.1:{subscriber.port}/notify", limit=5)
        )
        assert reply.status == 201, reply.headers
        newest = await admin.create_control(
            "doe", f"site:{lfdi}", start=now + 20000, duration=600, base=build_control_base(target_w=5)
        )
        await asyncio.sleep(1.5)  # subscriber down: both senders fail and back off
        attempts = [c.name for c in outbox.columns].index("attempts")
        pending = (await admin.table_dump())["outbox"]
        assert len(pending) == 1 and pending[0][attempts] > 0
        await subscriber.start()
        await asyncio.wait_for(subscriber.arrived.wait(), 10)
        await asyncio.sleep(1.5)  # room for a duplicate to arrive
        assert len(subscriber.received) == 1
        assert {c.mRID for c in subscriber.received[0].Resource.DERControl} == {*made, newest}
        assert (await admin.table_dump())["outbox"] == []
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await subscriber.stop()
        if running is not None:
            await running.stop()
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def soon(
    client: Client, path: str, kind: Any = None, check: Any = None, *, status: int = 200, within: float = 1.0
) -> Any:
    """GET ``path`` until it answers ``status`` (and its document passes ``check``), for ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        reply = await client.get(path)
        if reply.status == status:
            document = reply.doc(kind) if kind is not None else None
            if check is None or check(document):
                return document
        assert time.monotonic() < deadline, (path, reply.status, reply.headers.get("X-Error-Detail"))
        await asyncio.sleep(0.02)


@BACKENDS
async def test_full_2030_5_ranges_and_column_limits_on_both_backends(server, clients):
    """PostgreSQL's INTEGER is 32-bit and it enforces VARCHAR lengths; SQLite does neither. UInt32 values
    2030.5 allows are stored and read back; over-long operator input is an error naming the field that
    changes nothing, never a database error."""
    admin = server.store.admin
    client = clients["dev-a"]
    lfdi = client.lfdi
    assert (await client.post("/edev", end_device(lfdi))).status == 201
    uint32_max = 2**32 - 1
    await admin.set_rate("dcap", uint32_max)
    assert (await client.get("/dcap")).doc(r.DeviceCapability).pollRate == uint32_max
    await admin.create_control(
        "doe", f"site:{lfdi}", duration=uint32_max, base=build_control_base(target_w=1)
    )
    listing = (await client.get("/edev/1/derp/2/derc?l=5")).doc(r.DERControlList)
    assert listing.DERControl[0].interval.duration == uint32_max
    reading = mup(lfdi, "CD" * 16)
    reading.MirrorMeterReading[0].Reading.timePeriod.duration = uint32_max
    assert (await client.post("/mup", reading)).status == 201
    assert [row["duration"] for row in await admin.site_readings(lfdi)] == [uint32_max]

    before = await admin.table_dump()
    refused = {
        "reason": admin.create_group("g1", reason="x" * 257),
        "actor": admin.create_group("g2", actor="y" * 65),
        "description": admin.create_group("g3", description="z" * 129),
        "name": admin.create_aggregator("n" * 65),
        "label": admin.register_site("CD" * 20, label="l" * 129),
        "device_category": admin.register_site("CE" * 20, device_category="1" * 9),
    }
    for field, attempt in refused.items():
        with pytest.raises(AdminError, match=f"^{field}:"):
            await attempt
    long_uri = "https://127.0.0.1:9/" + "n" * 600
    reply = await client.post("/edev/1/sub", subscription("/edev/1/derp/2/derc", long_uri))
    assert reply.status == 400 and "notificationURI" in reply.headers["X-Error-Detail"]
    assert await admin.table_dump() == before
