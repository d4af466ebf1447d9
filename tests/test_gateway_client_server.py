"""The gateway's 2030.5 client against the real derlink server over real mutual TLS on 127.0.0.1.

An outage is made with a small TCP proxy the test controls (between client and server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.pki import DeviceIdentity, PkiPaths, init_pki, issue_device_certificate
from certs.tls import client_ssl_context, server_ssl_context
from gateway.client import mapping as m
from gateway.client.session import ClientConfig, RegistrationError, Sep2Client
from gateway.core import (
    ControlSettings,
    EventState,
    FallbackConfig,
    GatewayConfig,
    Response,
    ResponseStatus,
    SiteController,
)
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.store import build_control_base
from simulators.link_proxy import LinkProxy
from xsd import validate

PIN = 246810


@dataclass
class Lab:
    tmp: Path
    pki: PkiPaths
    device: DeviceIdentity
    server: RunningServer
    clients: list[Sep2Client]

    @property
    def admin(self) -> Any:
        return self.server.store.admin

    def controller(self) -> SiteController:
        return SiteController(
            GatewayConfig(
                self.device.lfdi,
                ControlSettings(export_limit_w=10000),
                FallbackConfig(ControlSettings(export_limit_w=1500)),
            )
        )

    def client(
        self,
        controller: SiteController | None = None,
        *,
        port: int | None = None,
        device: DeviceIdentity | None = None,
        on_change: Callable[[int], Any] | None = None,
        data_dir: Path | None = None,
        **settings: Any,
    ) -> Sep2Client:
        device = device or self.device
        settings.setdefault("pin", PIN)
        config = ClientConfig(
            dcap_url=f"https://127.0.0.1:{port or self.server.port}/dcap",
            lfdi=device.lfdi,
            data_dir=data_dir or self.tmp / f"gw-{len(self.clients)}",
            backoff_initial=0.05,
            backoff_max=0.2,
            request_timeout=2.0,
            **settings,
        )
        assert device.key_path is not None
        client = Sep2Client(
            config,
            client_ssl_context(device.chain_path, device.key_path, self.pki.ca_chain),
            controller or self.controller(),
            listener_ssl_context=server_ssl_context(device.chain_path, device.key_path, self.pki.ca_chain),
            on_schedule_change=on_change,
        )
        self.clients.append(client)
        return client


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    pki = init_pki(tmp_path / "pki")
    device = issue_device_certificate(tmp_path / "pki", "gateway-1")
    config = ServerConfig(
        data_dir=tmp_path / "server",
        cert_dir=tmp_path / "pki",
        port=0,
        admin_enabled=False,
        headend_enabled=False,
        notify_retry_initial=0.05,
        notify_retry_max=0.5,
        notify_allow=["127.0.0.0/8"],  # the gateway listens on loopback
    )
    config.data_dir.mkdir()
    server = await start_server(config)
    await server.store.admin.register_site(device.lfdi, pin=PIN, nmi="4102345678")
    lab = Lab(tmp_path, pki, device, server, [])
    yield lab
    for client in lab.clients:
        await client.stop()
    await server.stop()


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll an (async) check until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def site(w: float) -> m.SiteSnapshot:
    pv = m.DeviceSnapshot(
        "pv-1", m.DER_TYPE_PV, 6000, m.MODE_CONNECT | m.MODE_MAX_LIM_W, measurements=m.Measurements(w=4000)
    )
    battery = m.DeviceSnapshot(
        "bat-1",
        m.DER_TYPE_STORAGE,
        5000,
        m.MODE_CHARGE | m.MODE_DISCHARGE,
        rtg_max_wh=13500,
        measurements=m.Measurements(w=-1000, soc_pct=61.5),
    )
    return m.SiteSnapshot(m.Measurements(w=w, v={"A": 240.1}, hz=50.01), [pv, battery])


# ------------------------------------------------------------------------------------------------ tests


async def test_discovery_registration_and_walk_give_the_expected_core_schedule(lab: Lab) -> None:
    now = int(time.time())
    doe = await lab.admin.create_control(
        "doe",
        f"site:{lab.device.lfdi}",
        start=now - 10,
        duration=600,
        base=build_control_base(export_limit_w=1500, ramp_tms=500),
        response_required="03",
    )
    later = await lab.admin.create_control(
        "emergency",
        f"site:{lab.device.lfdi}",
        start=now + 3600,
        duration=60,
        base=build_control_base(connect=False),
        supersede=False,
    )
    default_mrid = await lab.admin.set_default_control(
        "default", "all", base=build_control_base(export_limit_w=5000), set_grad_w=270
    )
    changes: list[int] = []
    controller = lab.controller()
    client = lab.client(controller, on_change=changes.append)
    await client.start()
    await client.wait_ready(10)
    assert client.status.state == "running" and client.status.end_device == "/edev/1"
    assert changes, "on_schedule_change was called after the walk"
    engine = controller.engine
    assert sorted(p.primacy for p in engine.programs.values()) == [1, 10, 20]
    default_program = next(p for p in engine.programs.values() if p.primacy == 20)
    assert default_program.default == ControlSettings(export_limit_w=5000.0, set_grad_w=270.0)
    assert default_program.default_mrid == default_mrid
    control = engine.control(doe)
    assert control.settings == ControlSettings(export_limit_w=1500.0, ramp_time_s=5.0)
    assert control.response_required == 3 and control.reply_to == "/rsps/1/rsp"
    assert engine.control(later).settings.connect is False
    assert engine.state_of(later, client.now()) is EventState.SCHEDULED
    decision = controller.decide(client.now())
    assert decision.limits.export_w.value == 1500 and doe in decision.limits.export_w.detail
    assert controller.last_contact is not None and abs(controller.last_contact - time.time()) < 5


async def test_wrong_pin_is_a_clear_error_and_nothing_is_walked(lab: Lab) -> None:
    await lab.admin.create_control(
        "doe", f"site:{lab.device.lfdi}", duration=600, base=build_control_base(export_limit_w=1500)
    )
    controller = lab.controller()
    client = lab.client(controller, pin=111111)
    await client.start()
    with pytest.raises(RegistrationError, match=r"pIN 246810 does not match the configured PIN 111111"):
        await client.wait_ready(10)
    assert client.status.state == "registration_failed"
    assert controller.engine.programs == {}


async def test_unregistered_gateway_is_refused_or_registers_in_band(lab: Lab) -> None:
    stranger = issue_device_certificate(lab.tmp / "pki", "gateway-2")
    client = lab.client(device=stranger, pin=None)
    await client.start()
    with pytest.raises(RegistrationError, match="not registered"):
        await client.wait_ready(10)
    inband = lab.client(device=stranger, pin=None, register_inband=True)
    await inband.start()
    await inband.wait_ready(10)
    assert inband.status.state == "running" and inband.end_device is not None
    assert inband.end_device.lFDI == stranger.lfdi


async def test_paging_reads_every_control_of_every_page(lab: Lab) -> None:
    now = int(time.time())
    mrids = [
        await lab.admin.create_control(
            "doe",
            f"site:{lab.device.lfdi}",
            start=now + 600 * i,
            duration=600,
            base=build_control_base(export_limit_w=1000 + i),
            supersede=False,
        )
        for i in range(5)
    ]
    controller = lab.controller()
    client = lab.client(controller, page_size=2)
    await client.start()
    await client.wait_ready(10)
    assert [controller.engine.control(x).settings.export_limit_w for x in mrids] == [
        1000,
        1001,
        1002,
        1003,
        1004,
    ]


async def test_polling_picks_up_new_and_cancelled_controls_at_the_poll_rate(lab: Lab) -> None:
    await lab.admin.set_rate("derp", 1)
    await lab.admin.set_rate("fsa", 1)
    controller = lab.controller()
    client = lab.client(controller)
    await client.start()
    await client.wait_ready(10)
    mrid = await lab.admin.create_control(
        "doe", f"site:{lab.device.lfdi}", duration=600, base=build_control_base(export_limit_w=800)
    )
    await eventually(lambda: mrid in controller.engine.evaluate(client.now()).states, within=5)
    await lab.admin.cancel_control(mrid)
    await eventually(lambda: controller.engine.state_of(mrid, client.now()) is EventState.CANCELLED, within=5)


async def test_der_documents_telemetry_and_responses_reach_the_server(lab: Lab) -> None:
    doe = await lab.admin.create_control(
        "doe", f"site:{lab.device.lfdi}", duration=600, base=build_control_base(export_limit_w=1500)
    )
    await lab.admin.set_rate("post", 30)
    controller = lab.controller()
    client = lab.client(controller)
    await client.start()
    await client.wait_ready(10)
    now = client.now()
    assert await client.queue_telemetry(site(-2500), now)
    assert not await client.queue_telemetry(site(-2400), now + 1), "one sample per postRate"
    decision = controller.decide(now)
    await client.queue_responses(decision.responses)
    for response in decision.responses:
        controller.engine.acknowledge(response)
    await eventually(lambda: _drained(client))
    assert client.post_rate == 30

    stored = await lab.admin.responses_for_control(doe)
    assert [row["status"] for row in stored] == [1, 2]
    assert {row["lfdi"] for row in stored} == {lab.device.lfdi}

    readings = await lab.admin.site_readings(lab.device.lfdi)
    by_key = {(row["description"], row["reading_type"].flowDirection): row for row in readings}
    site_w = by_key[("Active power (W)", 1)]
    assert site_w["value"] == -2500 and site_w["reading_type"].uom == 38 and site_w["time_start"] == now
    assert by_key[("Voltage phase A (V)", None)]["value"] == 2401
    assert len({row["mup_mrid"] for row in readings}) == 3  # site + PV + battery
    # site W/V/Hz, PV W, battery W and stored energy (61.5 % of 13.5 kWh): nothing twice. SoC itself is
    # not a reading (no uom for it) but DERStatus (below).
    assert len(readings) == 3 + 1 + 2
    assert all(row["reading_type"].uom in (38, 29, 33, 72) for row in readings)
    stored = by_key[("Stored energy (Wh)", None)]
    assert stored["value"] == round(0.615 * 13500) and stored["reading_type"].kind == 12

    # the server lists one DER per site: the client reports the site's DER as one aggregate
    docs = await eventually(lambda: _all_der_docs(lab))
    assert docs["dercap"].rtgMaxW.to_watts() == 11000 and docs["dercap"].type == m.DER_TYPE_PV_AND_STORAGE
    assert docs["derg"].setMaxW.to_watts() == 11000
    assert docs["ders"].stateOfChargeStatus.value == 6150
    assert docs["dera"].readingTime is not None


async def _drained(client: Sep2Client) -> bool:
    return await client.outbox.pending() == 0


async def _all_der_docs(lab: Lab) -> dict[str, Any] | None:
    docs = await lab.admin.site_der_documents(lab.device.lfdi)
    return docs if set(docs) == {"dercap", "derg", "ders", "dera"} else None


async def test_every_document_the_client_sends_validates_against_our_schema(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, str, bytes]] = []
    original = Sep2Client._request

    async def recording(self: Sep2Client, method: str, href: str, body: bytes | None = None) -> Any:
        if body is not None:
            sent.append((method, href, body))
        return await original(self, method, href, body)

    monkeypatch.setattr(Sep2Client, "_request", recording)
    await lab.admin.create_control(
        "doe", f"site:{lab.device.lfdi}", duration=600, base=build_control_base(export_limit_w=1500)
    )
    controller = lab.controller()
    client = lab.client(controller, mode="subscribe")
    await client.start()
    await client.wait_ready(10)
    await client.queue_telemetry(site(100.0))
    await client.queue_responses(controller.decide(client.now()).responses)
    await eventually(lambda: _drained(client))
    # the first readings go inside the new MirrorUsagePoints, the next ones as MirrorMeterReadingLists
    await client.queue_telemetry(site(120.0), client.now() + client.post_rate)
    await eventually(lambda: _drained(client))
    await eventually(lambda: _all_der_docs(lab))
    kinds = {body.split(b" ", 1)[0].split(b">", 1)[0] for _, _, body in sent}
    assert kinds >= {
        b"<Subscription",
        b"<MirrorUsagePoint",
        b"<MirrorMeterReadingList",
        b"<DERControlResponse",
        b"<DERCapability",
        b"<DERSettings",
        b"<DERStatus",
        b"<DERAvailability",
    }
    for _, _, body in sent:
        validate(body)


async def test_subscription_notification_updates_the_core_within_milliseconds(lab: Lab) -> None:
    await lab.admin.set_default_control("default", "all", base=build_control_base(export_limit_w=5000))
    controller = lab.controller()
    changes: list[int] = []
    client = lab.client(controller, mode="subscribe", default_poll_rate=3600, on_change=changes.append)
    await client.start()
    await client.wait_ready(10)
    # FSA list, DERProgramList, a DERControlList and a DefaultDERControl per program (every DERProgram
    # links one, empty until set: issue 11 item 8)
    assert client.status.subscriptions == 1 + 1 + 3 + 3
    before = len(changes)
    mrid = await lab.admin.create_control(
        "emergency", f"site:{lab.device.lfdi}", duration=600, base=build_control_base(export_limit_w=0)
    )
    await eventually(lambda: mrid in controller.engine.evaluate(client.now()).states)
    assert client.status.notifications >= 1 and len(changes) > before
    assert controller.decide(client.now()).limits.export_w.value == 0
    assert max(client.notification_latencies) < 0.05  # receipt -> engine updated
    await lab.admin.set_default_control("default", "all", base=build_control_base(export_limit_w=3000))
    await eventually(
        lambda: any(
            p.default == ControlSettings(export_limit_w=3000.0) for p in controller.engine.programs.values()
        )
    )
    await lab.admin.cancel_control(mrid)
    await eventually(lambda: controller.engine.state_of(mrid, client.now()) is EventState.CANCELLED)


async def test_restart_adopts_its_subscriptions_and_drops_stale_ones(lab: Lab) -> None:
    first = lab.client(mode="subscribe", default_poll_rate=3600)
    await first.start()
    await first.wait_ready(10)
    count = first.status.subscriptions
    await first.stop()
    second = lab.client(mode="subscribe", default_poll_rate=3600)  # new listener port
    await second.start()
    await second.wait_ready(10)
    assert second.status.subscriptions == count
    rows = await lab.admin.table_dump()
    assert len(rows["subscriptions"]) == count  # the first run's subscriptions were deleted


async def test_outage_queues_durably_and_delivers_everything_once_after_recovery(lab: Lab) -> None:
    doe = await lab.admin.create_control(
        "doe", f"site:{lab.device.lfdi}", duration=3600, base=build_control_base(export_limit_w=1500)
    )
    await lab.admin.set_rate("post", 10)
    await lab.admin.set_rate("derp", 1)
    proxy = LinkProxy(lab.server.port)
    await proxy.start()
    try:
        controller = lab.controller()
        client = lab.client(controller, port=proxy.port)
        await client.start()
        await client.wait_ready(10)
        t0 = client.now()
        assert await client.queue_telemetry(site(-1000.0), t0)
        await eventually(lambda: _drained(client), within=10)
        assert client.post_rate == 10  # from the MirrorUsagePoints created with the first readings
        proxy.cut()
        for i in range(1, 4):
            assert await client.queue_telemetry(site(-1000.0 - i), t0 + 10 * i)
        await client.queue_responses(
            [
                Response(doe, ResponseStatus.RECEIVED, t0, "/rsps/1/rsp"),
                Response(doe, ResponseStatus.STARTED, t0 + 1, "/rsps/1/rsp"),
            ]
        )
        await asyncio.sleep(1.0)  # several backoff rounds against a dead link
        assert all(not task.done() for task in client._tasks), "the client survived the outage"
        assert not client.status.comms_ok and client.status.last_error
        assert await client.outbox.pending() == 3 * 3 + 2
        contact_during_outage = controller.last_contact
        proxy.restore()
        await eventually(lambda: _drained(client), within=10)
        assert controller.last_contact is not None and contact_during_outage is not None
        assert controller.last_contact >= contact_during_outage and client.status.comms_ok
        assert await client.outbox.rejected() == 0
        readings = await lab.admin.site_readings(lab.device.lfdi)
        site_w = [
            row["value"]
            for row in readings
            if row["description"] == "Active power (W)" and row["reading_type"].flowDirection == 1
        ]
        assert site_w == [-1000, -1001, -1002, -1003]  # all of them, in order, once
        assert len(readings) == 4 * 6  # site W/V/Hz, PV W, battery W and Wh (SoC is in DERStatus)
        assert [row["status"] for row in await lab.admin.responses_for_control(doe)] == [1, 2]
    finally:
        await proxy.stop()


async def test_outbox_survives_a_restart_during_an_outage(lab: Lab) -> None:
    doe = await lab.admin.create_control(
        "doe", f"site:{lab.device.lfdi}", duration=3600, base=build_control_base(export_limit_w=1500)
    )
    proxy = LinkProxy(lab.server.port)
    await proxy.start()
    try:
        first = lab.client(port=proxy.port)
        await first.start()
        await first.wait_ready(10)
        proxy.cut()
        await first.queue_responses([Response(doe, ResponseStatus.RECEIVED, first.now(), "/rsps/1/rsp")])
        await first.stop()  # the gateway goes down with the Response still queued
        proxy.restore()
        second = lab.client(port=proxy.port, data_dir=first.config.data_dir)  # same outbox file
        await second.start()
        await eventually(lambda: _drained(second), within=10)
        assert [row["status"] for row in await lab.admin.responses_for_control(doe)] == [1]
    finally:
        await proxy.stop()


async def test_listener_only_accepts_well_formed_notifications_from_the_server(lab: Lab) -> None:
    import aiohttp

    from sep2 import resources as r
    from sep2.xml import to_xml

    controller = lab.controller()
    client = lab.client(controller, mode="subscribe", default_poll_rate=3600)
    await client.start()
    await client.wait_ready(10)
    url = f"https://127.0.0.1:{client.listener_port}/ntfy"
    note = to_xml(
        r.Notification(
            subscribedResource="/edev/1/fsa", status=0, subscriptionURI="/edev/1/sub/1", Resource=None
        )
    )
    headers = {"Content-Type": "application/sep+xml"}
    other = issue_device_certificate(lab.tmp / "pki", "intruder")
    assert other.key_path is not None
    as_device = client_ssl_context(other.chain_path, other.key_path, lab.pki.ca_chain, check_hostname=False)
    as_server = client_ssl_context(
        lab.pki.server_chain, lab.pki.server_key, lab.pki.ca_chain, check_hostname=False
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=note, headers=headers, ssl=as_device) as resp:
            assert resp.status == 403  # a valid certificate of our CA, but not the utility server's
        async with session.post(url, data=b"<Notification", headers=headers, ssl=as_server) as resp:
            assert resp.status == 400
        async with session.post(url, data=note, headers=headers, ssl=as_server) as resp:
            assert resp.status == 204
    assert client.status.notifications == 1
    assert all(not task.done() for task in client._tasks)


async def test_configured_nmi_becomes_the_connection_point_at_discovery(lab: Lab) -> None:
    """CSIP-AUS ConnectionPoint (client procedure ALL-03): the gateway PUTs the site's NMI to its
    EndDevice's ConnectionPointLink when the server holds another (or none), once."""
    import sqlalchemy as sa

    from server.store import sites

    client = lab.client(nmi="4103456789")
    await client.start()
    await client.wait_ready(10)
    async with lab.server.store.read() as conn:
        nmi = (await conn.execute(sa.select(sites.c.nmi).where(sites.c.lfdi == lab.device.lfdi))).scalar_one()
    assert nmi == "4103456789" and client.status.refusals == {}
    assert client._cp_synced == "/edev/1/cp"


async def test_a_read_that_spans_a_notification_does_not_undo_it(lab: Lab) -> None:
    """A poll answered before a change, and applied after the Notification of that change, is older
    than what the client holds. 2030.5-2018 §12.1.3.1: a DERControl stays in force unless the server
    cancels or supersedes it, so the stale list must not withdraw the new control (a withdrawal cancels
    it); the client reads the program again instead."""
    controller = lab.controller()
    client = RacingClient.make(lab, controller)
    await client.start()
    await client.wait_ready(10)
    (doe,) = [state for state in client._programs.values() if state.doc.primacy == 10]
    start = int(time.time()) + 60  # scheduled: the ActiveDERControlList read after it cannot list it

    async def change_during_the_read() -> None:
        seen = client.status.notifications
        client.created = await lab.admin.create_control(
            "doe", f"site:{lab.device.lfdi}", start=start, duration=600,
            base=build_control_base(export_limit_w=800),
        )  # fmt: skip
        await eventually(lambda: client.status.notifications > seen)
        assert controller.engine.state_of(client.created, client.now()) is EventState.SCHEDULED

    client.race = (doe.doc.DERControlListLink.href, change_during_the_read)
    client._request_job(f"prog:{doe.doc.mRID.upper()}")
    await eventually(lambda: client.race is None and client.reads_after_race >= 1)  # read again
    await asyncio.sleep(0.3)  # and synced
    assert controller.engine.state_of(client.created, client.now()) is EventState.SCHEDULED
    assert controller.decide(start + 1).limits.export_w.value == 800


class RacingClient(Sep2Client):
    """Runs ``race[1]`` (a server-side change) between reading the DERControlList ``race[0]`` and
    returning it: the interleaving a slow link gives, made certain."""

    race: tuple[str, Callable[[], Any]] | None = None
    created = ""
    reads_after_race = 0

    @classmethod
    def make(cls, lab: Lab, controller: SiteController) -> RacingClient:
        client = lab.client(controller, mode="subscribe", default_poll_rate=3600)
        client.__class__ = cls
        return client

    async def _get_list(self, href: str, expected: type, item: str) -> tuple[Any, list[Any]]:
        answer = await super()._get_list(href, expected, item)
        if self.race is not None and href == self.race[0]:
            _, change = self.race
            await change()
            self.race = None
        elif self.race is None and self.created and href.endswith("/derc"):
            self.reads_after_race += 1
        return answer


async def test_the_client_runs_on_the_server_clock(lab: Lab) -> None:
    """IEEE 2030.5-2018 §11.2 (Time): the client's event times are the server's. A server two minutes
    ahead of this host gives an offset of about 120 s, within the 1 s resolution of currentTime."""
    lab.server.store.clock = lambda: int(time.time()) + 120
    client = lab.client()
    await client.start()
    await client.wait_ready(10)
    assert abs(client.status.server_offset - 120) <= 1.5
    assert abs(client.now() - (time.time() + 120)) <= 1.5
