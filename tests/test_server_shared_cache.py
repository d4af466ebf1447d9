"""The response cache on PostgreSQL in every process (issue 12): servers started independently on one
database, and scripts writing with no server, announce each transaction's changes with NOTIFY inside it;
every server's cache LISTENs and drops exactly what changed. CSIP-AUS clients must see a new DERControl at
their next poll (2030.5 clause 10.10, DERControlList; CSIP-AUS 6.4 DOE delivery); a site's own writes must
not cost the other sites their cached documents. A lost listening connection distrusts the whole cache
until it listens again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from server.store import Store, build_control_base
from server.store.versions import MAX_PAYLOAD, Versions, announcements, heard
from server.workers import VersionBus
from tests.test_server_cache import Probe
from tests.test_server_harness import Client, end_device, server_config, subscription

pytest_plugins = ["tests.test_server_harness"]
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "operator-token-0123456789"
SEEN_WITHIN_S = 1.0


async def until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        await asyncio.sleep(0.01)


def controls_in(body: bytes) -> list[str]:
    return [c.mRID for c in from_xml(body, r.DERControlList).DERControl]


async def second_server(pki, tmp_path: Path, url: str) -> tuple[asyncio.subprocess.Process, str, str]:
    """A real `derlink server run` (workers = 1, cache at its default) on ``url``: (process, its 2030.5
    URL, its head-end URL)."""
    data = tmp_path / "second"
    config = tmp_path / "second.toml"
    config.write_text(
        "[server]\n"
        f'database_url = "{url}"\ndata_dir = "{data}"\ncert_dir = "{pki.directory}"\n'
        'port = 0\nadmin_port = 0\nheadend_port = 0\nlog_level = "WARNING"\nnotify_allow = ["127.0.0.0/8"]\n'
        f'[[server.headend_tokens]]\nname = "alice"\ntoken = "{TOKEN}"\nrole = "operator"\n'
    )
    with (tmp_path / "second.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "derlink", "server", "run", "--config", str(config),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log_file,
        )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert "2030.5 on https://" in line, (line, (tmp_path / "second.log").read_text())
    base = line.split("2030.5 on ", 1)[1].split(",", 1)[0]
    headend = json.loads((data / "headend.json").read_text())["url"]
    return proc, base, headend


async def test_independent_servers_on_one_database_keep_their_caches_exact(pki, tmp_path, postgres_url):
    """Server A (here) and server B (`derlink server run`), workers = 1 each, cache on by default. A site's
    write through B leaves the other site's document cached in A (a hit) and rebuilds its own; an operator
    DOE through B's head-end API is in A's cached DERControlList within 1 s, the untargeted site's list
    stays a hit."""
    running = await start_server(server_config(pki, tmp_path / "first", database_url=postgres_url))
    proc = None
    clients: list[Client] = []
    op = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        assert running.config.cache_active and running.bus is not None
        proc, b_url, headend = await second_server(pki, tmp_path, postgres_url)
        lfdi_a, lfdi_b = pki.identities["dev-a"].lfdi, pki.identities["dev-b"].lfdi
        a = Client(running.base_url, pki.ssl("dev-a"), lfdi_a)
        b = Client(running.base_url, pki.ssl("dev-b"), lfdi_b)
        b_via_b = Client(b_url, pki.ssl("dev-b"), lfdi_b)
        clients += [a, b, b_via_b]
        edev_a = (await a.post("/edev", end_device(lfdi_a))).headers["Location"]
        edev_b = (await b_via_b.post("/edev", end_device(lfdi_b))).headers["Location"]
        a_list, b_list = f"{edev_a}/derp/2/derc?l=10", f"{edev_b}/derp/2/derc?l=10"
        b_subs = f"{edev_b}/sub?l=5"
        probe = Probe(running)
        a_body = await probe.primed(a, a_list)
        b_body = await probe.primed(b, b_list)
        assert from_xml(await probe.primed(b, b_subs), r.SubscriptionList).all == 0

        # Site B subscribes through server B: A hears it and rebuilds only B's subscription list.
        applied = running.bus.applied
        sub = subscription(b_list.split("?")[0], "https://127.0.0.1:1/notify")
        assert (await b_via_b.post(f"{edev_b}/sub", sub)).status == 201
        await until(lambda: running.bus.applied > applied, SEEN_WITHIN_S, "A hears B's commit")
        assert await probe.get(a, a_list) == (True, a_body)
        assert await probe.get(b, b_list) == (True, b_body)
        hit, body = await probe.get(b, b_subs)
        assert not hit and from_xml(body, r.SubscriptionList).all == 1

        # An operator DOE for site A through B's head-end: in A's cached list within 1 s.
        started = time.monotonic()
        body = {"program": "doe", "target": f"site:{lfdi_a}", "duration": 600, "export_limit_w": 0}
        async with op.post(f"{headend}/api/controls", json=body) as reply:
            assert reply.status == 201, await reply.text()
            mrid = (await reply.json())["mrid"]

        async def listed() -> bool:
            return controls_in((await a.get(a_list)).body) == [mrid]

        await until(listed, SEEN_WITHIN_S, "the DOE made through B is listed through A")
        assert time.monotonic() - started < SEEN_WITHIN_S
        assert await probe.get(b, b_list) == (True, b_body)  # not aimed at site B: still cached
        assert (await probe.get(a, a_list))[0]  # the new list is cached in its turn
    finally:
        await op.close()
        await asyncio.gather(*(c.close() for c in clients))
        await running.stop()
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


CLI_WRITE = """
import asyncio, sys
from server.store import Store, build_control_base

async def main(url, lfdi):
    store = await Store.open(url, run_migrations=False)
    try:
        base = build_control_base(export_limit_w=1500)
        print(await store.admin.create_control("doe", f"site:{lfdi}", duration=600, base=base), flush=True)
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_an_admin_write_with_no_server_is_seen_by_a_running_server(pki, tmp_path, postgres_url):
    """A separate process writing through the Store (an admin script, no server in it) announces its
    commit; the running server's cached DERControlList shows the new control at once (within 1 s)."""
    running = await start_server(server_config(pki, tmp_path / "data", database_url=postgres_url))
    lfdi = pki.identities["dev-a"].lfdi
    a = Client(running.base_url, pki.ssl("dev-a"), lfdi)
    try:
        edev = (await a.post("/edev", end_device(lfdi))).headers["Location"]
        listing = f"{edev}/derp/2/derc?l=10"
        probe = Probe(running)
        assert controls_in(await probe.primed(a, listing)) == []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLI_WRITE, postgres_url, lfdi, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        mrid = out.decode().strip()
        exited = time.monotonic()

        async def listed() -> bool:
            return controls_in((await a.get(listing)).body) == [mrid]

        await until(listed, SEEN_WITHIN_S, "the script's control is listed")
        assert time.monotonic() - exited < SEEN_WITHIN_S
    finally:
        await a.close()
        await running.stop()


async def test_a_lost_listener_trusts_nothing_cached_until_it_listens_again(
    pki, tmp_path, postgres_url, postgres_cluster
):
    """The listening connection is killed (pg_terminate_backend) and cannot come back at first: nothing is
    served from the cache, so another process's change is seen on the next request; once it listens
    again, documents are cached and changes heard as before."""
    running = await start_server(server_config(pki, tmp_path / "data", database_url=postgres_url))
    other = await Store.open(postgres_url, run_migrations=False)  # another process's writes
    lfdi = pki.identities["dev-a"].lfdi
    a = Client(running.base_url, pki.ssl("dev-a"), lfdi)
    bus = running.bus
    assert bus is not None
    try:
        edev = (await a.post("/edev", end_device(lfdi))).headers["Location"]
        listing = f"{edev}/derp/2/derc?l=10"
        probe = Probe(running)
        await probe.primed(a, listing)
        reachable, bus.dsn = bus.dsn, f"postgresql://derlink@127.0.0.1:{postgres_cluster.port}/no_such_db"
        postgres_cluster.execute(f"SELECT pg_terminate_backend({bus.listener_pid})")
        await until(lambda: not running.store.versions.trusted, 5, "the loss is noticed")
        for _ in range(3):  # neither served from the cache nor cached
            assert not (await probe.get(a, listing))[0]
        base = build_control_base(export_limit_w=700)
        mrid = await other.admin.create_control("doe", f"site:{lfdi}", duration=600, base=base)
        assert controls_in((await a.get(listing)).body) == [mrid]  # unheard, but nothing cached to be stale

        bus.dsn = reachable
        await until(lambda: running.store.versions.trusted, 5, "listening again")
        assert bus.lost == 1
        await probe.primed(a, listing)
        await other.admin.cancel_control(mrid)

        async def cancelled() -> bool:
            control = from_xml((await a.get(listing)).body, r.DERControlList).DERControl[0]
            return control.EventStatus.currentStatus == 2

        await until(cancelled, SEEN_WITHIN_S, "the cancellation is heard")
    finally:
        await a.close()
        await other.close()
        await running.stop()


async def test_a_silently_dead_listener_is_found_by_the_heartbeat(postgres_url):
    """The listening backend stops answering without closing (SIGSTOP, as a network partition would look):
    the heartbeat finds it, the cache is distrusted and a new connection listens."""
    store = await Store.open(postgres_url)
    versions = Versions()
    bus = VersionBus(versions, postgres_url, heartbeat=0.2)
    await bus.start()
    stopped = bus.listener_pid
    try:
        os.kill(stopped, signal.SIGSTOP)
        await until(lambda: bus.lost == 1, 3, "the heartbeat drops the connection")
        await until(lambda: versions.trusted and bus.listener_pid != stopped, 5, "listening again")
        async with store.changing(("site", 3)):
            pass
        await until(lambda: bus.applied == 1, SEEN_WITHIN_S, "a commit heard on the new connection")
        assert versions.stamp(("site", 3))[1] > 0
    finally:
        os.kill(stopped, signal.SIGCONT)
        await bus.stop()
        await store.close()


async def test_announcements_are_made_at_commit_and_never_for_a_rollback(postgres_url):
    """Process X (this store, with a bus on its versions) ignores its own announcements; another store's
    rolled-back write is never heard, its committed ``changing``, ``grouped`` and ``write`` are, each with
    what it changed (``write`` names nothing: everything)."""
    x = await Store.open(postgres_url)
    z = await Store.open(postgres_url, run_migrations=False)
    bus = VersionBus(x.versions, postgres_url)
    await bus.start()
    try:
        async with x.changing(("site", 1)):
            pass
        try:
            async with z.changing(("site", 99)) as conn:
                await conn.execute(sa.text("SELECT 1"))
                raise LookupError("rolled back")
        except LookupError:
            pass
        async with z.changing(("site", 7)):
            pass
        # Delivered in commit order: when Z's commit arrives, X's own (before it) was seen and skipped.
        await until(lambda: bus.applied == 1, SEEN_WITHIN_S, "Z's commit heard")
        assert x.versions.stamp(("site", 99))[1] == 0 and x.versions.stamp(("site", 7))[1] > 0

        def work(db: Any) -> None:
            z.touch(("der", 5))

        await z.grouped(work)
        await until(lambda: bus.applied == 2, SEEN_WITHIN_S, "Z's group commit heard")
        assert x.versions.stamp(("der", 5))[1] > 0
        epoch = x.versions.epoch
        async with z.write():
            pass
        await until(lambda: bus.applied == 3, SEEN_WITHIN_S, "Z's unnamed write heard")
        assert x.versions.epoch > epoch
    finally:
        await bus.stop()
        await x.close()
        await z.close()


def test_announcement_payloads_fit_notify_and_round_trip():
    tokens = [("site", i) for i in range(3000)] + [("edev", "d:" + "AB" * 20)]
    texts = announcements(tokens, "o1")
    assert len(texts) > 1 and all(len(t.encode()) <= MAX_PAYLOAD for t in texts)
    got = [heard(t) for t in texts]
    assert {o for o, _ in got} == {"o1"}
    assert sorted((tok for _, ts in got for tok in ts), key=repr) == sorted(tokens, key=repr)
    assert heard(announcements(None, "o1")[0]) == ("o1", None)
    (everything,) = announcements([("site", i) for i in range(200_000)], "o1")  # more than 32 payloads
    assert heard(everything) == ("o1", None)
    for garbage in ("", "not json", "[1]", '{"t": [1]}', '{"t": "x"}'):
        assert heard(garbage)[1] is None  # an unreadable announcement moves everything
