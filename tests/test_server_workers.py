"""``workers = 2`` on PostgreSQL: two server processes on one port (SO_REUSEPORT), each with its response
cache on; an operator change made through the first is seen through every connection, whichever process
serves it, because the processes tell each other what changed (LISTEN/NOTIFY, server.workers). CSIP-AUS
relies on clients seeing a new DERControl at their next poll (2030.5 clause 10.10, DERControlList)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sep2 import resources as r
from server.app import start_server
from server.store import build_control_base
from tests.test_server_harness import Client, end_device, server_config

pytest_plugins = ["tests.test_server_harness"]

CONNECTIONS = 16


def sockets_held(pid: int) -> int:
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:"))


async def test_an_operator_change_is_seen_through_every_worker(pki, tmp_path, postgres_url):
    running = await start_server(server_config(pki, tmp_path / "data", database_url=postgres_url, workers=2))
    lfdi = pki.identities["dev-a"].lfdi
    clients: list[Client] = []
    try:
        assert running.config.cache_active and len(running.workers) == 1
        worker = running.workers[0].pid
        first = Client(running.base_url, pki.ssl("dev-a"), lfdi)
        clients.append(first)
        reply = await first.post("/edev", end_device(lfdi))
        assert reply.status == 201
        derc = f"{reply.headers['Location']}/derp/2/derc?l=10"
        before = sockets_held(worker)
        # Separate connections: the kernel spreads them over both processes; each caches the empty list.
        for _ in range(CONNECTIONS):
            client = Client(running.base_url, pki.ssl("dev-a"), lfdi)
            clients.append(client)
            for _ in range(2):
                assert (await client.get(derc)).doc(r.DERControlList).all == 0
        assert sockets_held(worker) > before  # the second process holds some of these connections

        mrid = await running.store.admin.create_control(
            "doe", f"site:{lfdi}", duration=600, base=build_control_base(export_limit_w=0)
        )
        for client in clients[1:]:
            for _ in range(200):  # the change reaches the other process as a NOTIFY, moments after it
                listing = (await client.get(derc)).doc(r.DERControlList)
                if listing.all == 1:
                    break
                await asyncio.sleep(0.05)
            assert [c.mRID for c in listing.DERControl] == [mrid]
    finally:
        for client in clients:
            await client.close()
        await running.stop()
    assert running.workers[0].returncode is not None  # stopped with the first process
