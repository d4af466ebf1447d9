"""Notifications that do not queue behind each other (issue 12): a tarpit subscriber holds a few sending
slots at most and never delays another site's notification; emergency lists go first; a broadcast is
rendered once for the sites that see the same list. 2030.5 clause 5.4 (Subscription/Notification): the
server POSTs a Notification to the notificationURI when the subscribed resource changes."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from sep2 import resources as r
from sep2.xml import from_xml
from server.app import start_server
from server.config import ServerConfig
from server.notifications import NotificationSender
from server.store import RequestScope, Store, build_control_base
from tests.test_server_harness import BACKENDS, Client, end_device, server_config, subscription
from tests.test_server_notifications import Subscriber, free_port

pytest_plugins = ["tests.test_server_harness"]

TARPIT_SUBSCRIPTIONS = 50
PER_HOST = 4


class Tarpit:
    """Accepts TCP connections and never answers (not even the TLS handshake); counts what is open."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.closed = 0  # connections the sender gave up on
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.most_open = max(self.most_open, self.open)
        self.writers.append(writer)
        try:
            while await reader.read(65536):  # swallow the ClientHello and whatever follows
                pass
        finally:
            self.open -= 1
            self.closed += 1

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()


class WitnessSubscriber(Subscriber):
    """Records, for each notification, how many tarpit connections were open when it arrived."""

    def __init__(self, pki_dir, port: int, tarpit: Tarpit) -> None:
        super().__init__(pki_dir, port)
        self.tarpit = tarpit
        self.tarpit_at_arrival: list[tuple[int, int]] = []  # (open, given up on)

    async def handle(self, request: web.Request) -> web.Response:
        self.tarpit_at_arrival.append((self.tarpit.open, self.tarpit.closed))
        return await super().handle(request)


async def test_tarpit_subscriber_does_not_delay_another_sites_emergency(pki, tmp_path):
    tarpit = Tarpit()
    tarpit_port = await tarpit.start()
    good_port = free_port()
    good = WitnessSubscriber(pki.directory, good_port, tarpit)
    await good.start()
    config = server_config(
        pki,
        tmp_path / "data",
        max_subscriptions_per_site=TARPIT_SUBSCRIPTIONS,
        notify_per_host=PER_HOST,
        notify_timeout=3.0,
    )
    running = await start_server(config)
    slow = Client(running.base_url, pki.ssl("dev-a"), pki.identities["dev-a"].lfdi)
    other = Client(running.base_url, pki.ssl("dev-b"), pki.identities["dev-b"].lfdi)
    try:
        assert (await slow.post("/edev", end_device(slow.lfdi))).status == 201
        assert (await other.post("/edev", end_device(other.lfdi))).status == 201
        # One device's 50 subscriptions point at the tarpit; they are older, so they come first in line.
        for i in range(TARPIT_SUBSCRIPTIONS):
            uri = f"https://127.0.0.1:{tarpit_port}/n{i}"
            assert (await slow.post("/edev/1/sub", subscription("/edev/1/derp/1/derc", uri))).status == 201
        uri = f"https://127.0.0.1:{good_port}/notify"
        assert (await other.post("/edev/2/sub", subscription("/edev/2/derp/1/derc", uri))).status == 201

        mrid = await running.store.admin.create_control(
            "emergency", "all", duration=600, base=build_control_base(export_limit_w=0)
        )
        await asyncio.wait_for(good.arrived.wait(), 30)
        note = good.received[0]
        assert note.subscribedResource == "/edev/2/derp/1/derc" and note.subscriptionURI == "/edev/2/sub/51"
        assert [c.mRID for c in note.Resource.DERControl] == [mrid]
        # Causality, not a stopwatch: it arrived while the tarpit still held the sends it had taken, before
        # any of them had timed out.
        open_then, given_up_then = good.tarpit_at_arrival[0]
        assert open_then >= 1 and given_up_then == 0
        assert 1 <= tarpit.most_open <= PER_HOST
        # Once one send to the tarpit has timed out, its other rows wait for their retry unsent.
        for _ in range(100):
            rows = (await running.store.admin.table_dump())["outbox"]
            if len(rows) == TARPIT_SUBSCRIPTIONS and all(row[4] >= 1 for row in rows):  # attempts
                break
            await asyncio.sleep(0.1)
        assert len(rows) == TARPIT_SUBSCRIPTIONS and all(row[4] >= 1 for row in rows)
        assert tarpit.accepted <= 2 * PER_HOST  # the deferred rows did not connect
    finally:
        await slow.close()
        await other.close()
        await running.stop()
        await good.stop()
        await tarpit.stop()


@BACKENDS
async def test_emergency_first_and_a_broadcast_rendered_once(tmp_path, database_url):
    store = await Store.open(database_url or f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        admin = store.admin
        await admin.ensure_standard_programs()
        await admin.create_group("feeder-1")
        lfdis = [f"{i:02X}" * 20 for i in range(1, 6)]
        for i, lfdi in enumerate(lfdis):
            await admin.register_site(lfdi, groups_=["feeder-1"] if i == 4 else ())
        sites = {lfdi: await admin.site_id(lfdi) for lfdi in lfdis}
        for lfdi, site_id in sites.items():
            for program in (2, 1):  # doe, then emergency
                await store.create_subscription(
                    RequestScope(lfdi=lfdi, kind="device"),
                    site_id,
                    kind="derc",
                    program_id=program,
                    fsa_key=0,
                    subscribed_href=f"/edev/{site_id}/derp/{program}/derc",
                    notification_uri=f"https://127.0.0.{site_id}:9/n?a=1&b=2",
                    limit=5,
                    level="+S1",
                )
        await admin.create_control("doe", "all", duration=600, base=build_control_base(export_limit_w=500))
        await admin.create_control(
            "emergency", "all", duration=600, base=build_control_base(export_limit_w=0)
        )
        await admin.create_control(  # a site with a control of its own renders alone
            "emergency", f"site:{lfdis[3]}", duration=900, base=build_control_base(export_limit_w=10)
        )
        rows = await store.due_notifications(time.time() + 1, limit=100)
        assert [row.program_id for row in rows] == [1] * 5 + [2] * 5  # emergency (primacy 1) first

        sender = NotificationSender(store, ServerConfig(notify_allow=["127.0.0.0/8"]))
        emergency = rows[:5]
        shared = await sender.render(emergency)
        # Sites 1-3 share one rendering; site 4 (its own control) and site 5 (another group) render alone.
        assert sender.rendered == 3
        for row, body in zip(emergency, shared, strict=True):
            assert body == await sender._render_one(row)  # the same bytes as rendering it alone
            note = from_xml(body, r.Notification)
            assert note.subscriptionURI == f"/edev/{row.site_id}/sub/{row.id}"
            assert all(
                c.href.startswith(f"/edev/{row.site_id}/derp/1/derc/") for c in note.Resource.DERControl
            )
        assert len(from_xml(shared[3], r.Notification).Resource.DERControl) == 2
    finally:
        await store.close()
