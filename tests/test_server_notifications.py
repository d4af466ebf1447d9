"""Subscriptions and the durable notification outbox: a subscriber that is down for a while, across a
server restart, still receives its notification (over mutual TLS), honouring the subscription's limit."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from aiohttp import web

from certs.pki import load_pki
from certs.tls import server_ssl_context
from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from server.store import build_control_base
from tests.test_server_harness import BACKENDS, Client, end_device, server_config, subscription

pytest_plugins = ["tests.test_server_harness"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Subscriber:
    """A notification listener over mutual TLS (it presents a serverAuth certificate from our CA)."""

    def __init__(self, pki_dir: Path, port: int) -> None:
        self.pki_dir = pki_dir
        self.port = port
        self.received: list[r.Notification] = []
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/sep+xml"
        assert request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.received.append(from_xml(await request.read(), r.Notification))
        self.arrived.set()
        return web.Response(status=201)

    async def start(self) -> None:
        paths = load_pki(self.pki_dir)
        app = web.Application()
        app.router.add_post("/notify", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        context = server_ssl_context(paths.server_chain, paths.server_key, paths.ca_chain)
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


async def _outbox_rows(store) -> list:
    return (await store.admin.table_dump())["outbox"]


@BACKENDS
async def test_notification_survives_subscriber_outage_and_server_restart(pki, tmp_path, database_url):
    data_dir = tmp_path / "data"
    port = free_port()
    uri = f"https://127.0.0.1:{port}/notify"
    running = await start_server(server_config(pki, data_dir, database_url=database_url))
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        assert (await client.post("/edev", end_device(client.lfdi))).status == 201
        reply = await client.post("/edev/1/sub", subscription("/edev/1/derp/2/derc", uri, limit=1))
        assert reply.status == 201
        sub_path = reply.headers["Location"]
        sub = (await client.get(sub_path)).doc(r.Subscription)
        assert sub.notificationURI == uri and sub.limit == 1
        admin = running.store.admin
        now = running.store.clock()
        first = await admin.create_control(
            "doe",
            f"site:{client.lfdi}",
            start=now + 600,
            duration=300,
            base=build_control_base(export_limit_w=1000),
        )
        await admin.create_control(
            "doe", "all", start=now + 3600, duration=300, base=build_control_base(export_limit_w=2000)
        )
        # The subscriber is down: delivery is attempted and fails, the row stays with a growing count.
        for _ in range(50):
            rows = await _outbox_rows(running.store)
            if rows and rows[0][4] >= 2:  # attempts
                break
            await asyncio.sleep(0.1)
        rows = await _outbox_rows(running.store)
        assert len(rows) == 1 and rows[0][4] >= 2 and rows[0][6]  # attempts, last_error
    finally:
        await client.close()
        await running.stop()

    # Restart the server on the same database, then bring the subscriber up.
    running = await start_server(server_config(pki, data_dir, database_url=database_url))
    subscriber = Subscriber(pki.directory, port)
    await subscriber.start()
    try:
        await asyncio.wait_for(subscriber.arrived.wait(), 15)
        note = subscriber.received[0]
        assert note.subscribedResource == "/edev/1/derp/2/derc"
        assert note.subscriptionURI == sub_path and note.status == 0
        listing = note.Resource
        assert isinstance(listing, r.DERControlList)
        assert listing.all == 2 and listing.results == 1  # limit honoured
        assert listing.DERControl[0].mRID == first
        for _ in range(50):
            if not await _outbox_rows(running.store):
                break
            await asyncio.sleep(0.05)
        assert await _outbox_rows(running.store) == []
        # A change while the subscriber is up is pushed promptly; deleting the subscription stops it.
        subscriber.arrived.clear()
        await running.store.admin.cancel_control(first)
        await asyncio.wait_for(subscriber.arrived.wait(), 5)
        cancelled = subscriber.received[-1].Resource.DERControl[0]
        assert cancelled.mRID == first and cancelled.EventStatus.currentStatus == 2
        client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
        assert (await client.delete(sub_path)).status == 204
        assert (await client.get(sub_path)).status == 404
        await client.close()
        count = len(subscriber.received)
        await running.store.admin.create_control(
            "doe", "all", duration=60, base=build_control_base(export_limit_w=1)
        )
        await asyncio.sleep(0.5)
        assert len(subscriber.received) == count
        assert await _outbox_rows(running.store) == []
    finally:
        await subscriber.stop()
        await running.stop()


@BACKENDS
async def test_group_change_notifies_only_member_subscriptions(pki, tmp_path, database_url):
    port = free_port()
    subscriber = Subscriber(pki.directory, port)
    await subscriber.start()
    running = await start_server(server_config(pki, tmp_path / "data", database_url=database_url))
    clients = {n: Client(running.base_url, pki.ssl(n), pki.identities[n].lfdi) for n in ("dev-a", "dev-b")}
    try:
        admin = running.store.admin
        await admin.create_group("feeder-9")
        for n, c in clients.items():
            reply = await c.post("/edev", end_device(c.lfdi))
            edev = reply.headers["Location"]
            assert (
                await c.post(
                    f"{edev}/sub",
                    subscription(f"{edev}/derp/2/derc", f"https://127.0.0.1:{port}/notify?who={n}"),
                )
            ).status == 201
        subscriber.arrived.clear()
        await admin.set_membership(clients["dev-a"].lfdi, "feeder-9")  # dev-a's lists change: notified
        await asyncio.wait_for(subscriber.arrived.wait(), 5)
        await asyncio.sleep(0.3)
        assert {n.subscribedResource for n in subscriber.received} == {"/edev/1/derp/2/derc"}
        subscriber.arrived.clear()
        subscriber.received.clear()
        await admin.create_control(
            "doe", "group:feeder-9", duration=600, base=build_control_base(export_limit_w=0)
        )
        await asyncio.wait_for(subscriber.arrived.wait(), 5)
        await asyncio.sleep(0.3)
        assert [n.subscribedResource for n in subscriber.received] == ["/edev/1/derp/2/derc"]
        assert subscriber.received[0].Resource.DERControl[0].DERControlBase.opModExpLimW.value == 0
    finally:
        for c in clients.values():
            await c.close()
        await running.stop()
        await subscriber.stop()


class SlowSubscriber(Subscriber):
    """Answers each notification after ``delay`` seconds and records when each arrived."""

    def __init__(self, pki_dir: Path, port: int, delay: float) -> None:
        super().__init__(pki_dir, port)
        self.delay = delay
        self.arrivals: list[float] = []
        self.in_flight = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(asyncio.get_running_loop().time())
        self.in_flight.set()
        reply = await super().handle(request)
        await asyncio.sleep(self.delay)
        return reply


async def test_a_change_while_its_notification_is_in_flight_is_sent_promptly(pki, tmp_path):
    """2030.5 clause 5.4: a Notification follows every change of the subscribed resource. A second change
    while the first one's notification is still in flight leaves the row leased (its due time is the
    lease, 40 s away); once the first delivery is recorded the row is due again and the sender is woken
    for it, instead of sleeping until its next look (5 s)."""
    port = free_port()
    subscriber = SlowSubscriber(pki.directory, port, delay=0.3)
    await subscriber.start()
    running = await start_server(server_config(pki, tmp_path / "data"))
    client = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    try:
        assert (await client.post("/edev", end_device(client.lfdi))).status == 201
        uri = f"https://127.0.0.1:{port}/notify"
        assert (await client.post("/edev/1/sub", subscription("/edev/1/derp/2/derc", uri))).status == 201
        admin = running.store.admin
        now = running.store.clock()
        base = build_control_base(export_limit_w=1000)
        first = await admin.create_control(
            "doe", f"site:{client.lfdi}", start=now + 600, duration=60, base=base
        )
        await asyncio.wait_for(subscriber.in_flight.wait(), 10)
        second = await admin.create_control(
            "doe", f"site:{client.lfdi}", start=now + 900, duration=60, base=base
        )  # while the subscriber still holds the first
        for _ in range(100):
            if len(subscriber.received) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(subscriber.received) >= 2
        assert {c.mRID for c in subscriber.received[-1].Resource.DERControl} == {first, second}
        assert subscriber.arrivals[1] - subscriber.arrivals[0] < 2.0
    finally:
        await client.close()
        await running.stop()
        await subscriber.stop()
