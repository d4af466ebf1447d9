"""The gateway's 2030.5 client against a stricter server than ours (issue 11, gateway part).

The strict server (tests/strict_server.py) is a real mutual-TLS front on 127.0.0.1 in front of
``derlink server`` (proxy mode, client certificate in ``X-Client-Cert``). It refuses MirrorUsagePoints
without readings, ReadingTypes without ``uom``, readings of an undeclared mRID, a duplicate EndDevice
POST, and here also every frequency (Hz) reading. The gateway must complete discovery, apply a DOE and
post everything else; each refusal is logged once and shown in the status.

Clauses: IEEE 2030.5-2018 §10.10 (Metering Mirror: the client creates a MirrorUsagePoint and posts
MirrorMeterReadings, each identified by mRID with its ReadingType), §6.5 / CSIP-AUS §5.2 (a client finds
its EndDevice in the EndDeviceList by lFDI; a second registration may be refused), CSIP-AUS v1.2
"Telemetry" (uom, kind, phase, flowDirection of the site and DER readings; SoC in DERStatus
``stateOfChargeStatus``), §3.5.3 / §5.2.4 (a 4xx answer carries an Error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certs.pki import DeviceIdentity, PkiPaths, init_pki, issue_device_certificate
from certs.tls import client_ssl_context, server_ssl_context
from gateway.client import mapping as m
from gateway.client.session import ClientConfig, Sep2Client
from gateway.config import lfdi_from_cert_file
from gateway.core import ControlSettings, FallbackConfig, GatewayConfig, SiteController
from sep2 import resources as r
from sep2.identity import sfdi_from_lfdi
from sep2.mrid import derived_mrid
from sep2.xml import CONTENT_TYPE, from_xml, to_xml
from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.store import build_control_base
from tests.strict_server import StrictFront

PIN = 424242
UOM_HZ = 33


@dataclass
class StrictLab:
    tmp: Path
    pki: PkiPaths
    device: DeviceIdentity
    server: RunningServer
    front: StrictFront

    @property
    def admin(self) -> Any:
        return self.server.store.admin

    def client(self, controller: SiteController, **settings: Any) -> Sep2Client:
        assert self.device.key_path is not None
        config = ClientConfig(
            dcap_url=f"https://127.0.0.1:{self.front.port}/dcap",
            lfdi=self.device.lfdi,
            data_dir=self.tmp / "gw",
            pin=PIN,
            backoff_initial=0.05,
            backoff_max=0.2,
            request_timeout=2.0,
            **settings,
        )
        return Sep2Client(
            config,
            client_ssl_context(self.device.chain_path, self.device.key_path, self.pki.ca_chain),
            controller,
            listener_ssl_context=server_ssl_context(
                self.device.chain_path, self.device.key_path, self.pki.ca_chain
            ),
        )


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[StrictLab]:
    pki = init_pki(tmp_path / "pki")
    device = issue_device_certificate(tmp_path / "pki", "gateway-strict")
    config = ServerConfig(
        data_dir=tmp_path / "server",
        cert_dir=tmp_path / "pki",
        port=0,
        tls=False,  # behind the front, which terminates mutual TLS
        trusted_proxies=["127.0.0.1"],
        admin_enabled=False,
        headend_enabled=False,
        poll_rate=1,
        post_rate=1,
        notify_allow=["127.0.0.1/32"],  # the gateway's listener is on loopback (server.netpolicy)
    )
    config.data_dir.mkdir()
    server = await start_server(config)
    await server.store.admin.register_site(device.lfdi, pin=PIN, nmi="4102345678")
    front = StrictFront(
        server.base_url,
        server_ssl_context(pki.server_chain, pki.server_key, pki.ca_chain),
        refuse_uoms={UOM_HZ},
        hide_end_device_once=True,
    )
    await front.start()
    try:
        yield StrictLab(tmp_path, pki, device, server, front)
    finally:
        await front.stop()
        await server.stop()


def controller_for(lfdi: str) -> SiteController:
    return SiteController(
        GatewayConfig(
            lfdi, ControlSettings(export_limit_w=10000), FallbackConfig(ControlSettings(export_limit_w=1500))
        )
    )


def snapshot(w: float) -> m.SiteSnapshot:
    pv = m.DeviceSnapshot(
        "pv-1", m.DER_TYPE_PV, 6000, m.MODE_CONNECT | m.MODE_MAX_LIM_W,
        measurements=m.Measurements(w=4000, var=150, hz=50.0),
    )  # fmt: skip
    battery = m.DeviceSnapshot(
        "bat-1", m.DER_TYPE_STORAGE, 5000, m.MODE_CHARGE | m.MODE_DISCHARGE, rtg_max_wh=13500,
        measurements=m.Measurements(w=-1000, v={"A": 239.5}, soc_pct=61.5),
    )  # fmt: skip
    return m.SiteSnapshot(m.Measurements(w=w, var=-300, v={"A": 240.1}, hz=50.01), [pv, battery])


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_gateway_completes_discovery_applies_a_doe_and_posts_everything_a_strict_server_takes(
    strict: StrictLab, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="derlink.gateway.client")
    lfdi = strict.device.lfdi
    doe = await strict.admin.create_control(
        "doe", f"site:{lfdi}", duration=600, base=build_control_base(export_limit_w=2000)
    )
    controller = controller_for(lfdi)
    notifier = lfdi_from_cert_file(strict.server.config.notify_files()[0])
    client = strict.client(controller, register_inband=True, mode=mode, notifier_lfdis=(notifier,))
    await client.start()
    try:
        await client.wait_ready(10)
        # Discovery completed although the EndDevice POST was refused: the EndDeviceList was read again.
        assert client.status.state == "running" and client.status.end_device == "/edev/1"
        ex = strict.front.exchanges
        post = next(i for i, x in enumerate(ex) if x.method == "POST" and x.path == "/edev")
        assert ex[post].rule == "duplicate-registration" and ex[post].status == 400
        assert any(x.method == "GET" and x.path == "/edev" and x.status == 200 for x in ex[post + 1 :])
        assert "in-band registration refused" in caplog.text
        assert await strict.admin.site_id(lfdi) == 1  # nothing registered twice

        # The DOE reached the core and is the effective export limit.
        decision = controller.decide(client.now())
        assert decision.limits.export_w.value == 2000 and doe in decision.limits.export_w.detail
        if mode == "subscribe":  # a change reaches the gateway by Notification, straight from the server
            assert client.status.subscriptions > 0
            tighter = await strict.admin.create_control(
                "emergency", f"site:{lfdi}", duration=60, base=build_control_base(export_limit_w=0)
            )
            await eventually(lambda: controller.decide(client.now()).limits.export_w.value == 0)
            assert tighter in controller.decide(client.now()).limits.export_w.detail
            assert client.status.notifications > 0

        # Three telemetry cycles: every reading but frequency is stored, each refusal logged once.
        now = client.now()
        for cycle in range(3):
            assert await client.queue_telemetry(snapshot(-2500 - cycle), now + cycle * client.post_rate)
            await eventually(lambda: _drained(client))
        readings = await strict.admin.site_readings(lfdi)
        kinds = {(row["mup_mrid"], row["reading_type"].uom, row["reading_type"].phase) for row in readings}
        site_mup = m.mirror_point(lfdi, "site").mrid
        assert {(u, p) for mup, u, p in kinds if mup == site_mup} == {(38, None), (63, None), (29, 129)}
        assert len({mup for mup, _, _ in kinds}) == 3  # site, PV, battery: a refused reading stalls nothing
        assert all(row["reading_type"].uom not in (None, 0, UOM_HZ) for row in readings)
        per_mmr = {}
        for row in readings:
            per_mmr.setdefault(row["mmr_mrid"], []).append(row["value"])
        assert all(len(values) == 3 for values in per_mmr.values()), "every accepted reading, every cycle"
        assert sorted(per_mmr[derived_mrid(0, site_mup, "w")]) == [-2502, -2501, -2500]
        assert await client.outbox.rejected() == 0, "no batch was dropped whole"

        # Two frequency readings (site, PV) were refused in every cycle, each logged once, both shown.
        assert len(strict.front.refused("refused-uom")) >= 6
        refusals = client.status.refusals
        hz_keys = {k for k in refusals if "Frequency (Hz)" in k}
        assert hz_keys == {f"MirrorMeterReading Frequency (Hz) ({key})" for key in ("site", "der:pv-1")}
        assert all("HTTP 400" in refusals[k] and "Error reasonCode 1" in refusals[k] for k in hz_keys)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("server refused")]
        logged = sorted(line.split(": POST")[0] for line in lines)
        assert logged == sorted(f"server refused {k}" for k in hz_keys)

        # The strict rules the gateway must never trip: it sends readings with every MUP, a real uom each.
        for rule in ("mup-without-readings", "reading-type-uom", "unknown-mrid", "schema"):
            assert strict.front.refused(rule) == [], rule
        # Battery state of charge: DERStatus stateOfChargeStatus (hundredths of a percent), not a reading.
        docs = await eventually(lambda: _der_docs(strict, lfdi))
        assert docs["ders"].stateOfChargeStatus.value == 6150
    finally:
        await client.stop()


async def _drained(client: Sep2Client) -> bool:
    return await client.outbox.pending() == 0


async def _der_docs(lab: StrictLab, lfdi: str) -> dict[str, Any] | None:
    docs = await lab.admin.site_der_documents(lfdi)
    return docs if "ders" in docs else None


async def test_the_strict_front_refuses_what_it_says_and_forwards_nothing(strict: StrictLab) -> None:
    """The fixture's rules are real: documents our gateway used to send are refused with an Error."""
    lfdi = strict.device.lfdi
    assert strict.device.key_path is not None
    context = client_ssl_context(strict.device.chain_path, strict.device.key_path, strict.pki.ca_chain)
    point = m.mirror_point(lfdi, "site")
    good = m.meter_readings(point, m.Measurements(w=100.0), 1_700_000_000, 60)
    assert good is not None
    first = good.MirrorMeterReading[0]
    no_uom = replace(first, ReadingType=replace(first.ReadingType, uom=0))
    documents = {
        "mup-without-readings": ("/mup", m.mirror_usage_point(point, lfdi)),
        "reading-type-uom": ("/mup", m.mirror_usage_point(point, lfdi, [no_uom])),
        "duplicate-registration": ("/edev", r.EndDevice(sFDI=sfdi_from_lfdi(lfdi), lFDI=lfdi, changedTime=1)),
    }
    base = f"https://127.0.0.1:{strict.front.port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for rule, (path, doc) in documents.items():
            headers = {"Content-Type": CONTENT_TYPE}
            async with session.post(base + path, data=to_xml(doc), headers=headers) as resp:
                assert resp.status == 400, rule
                error = from_xml(await resp.read(), r.Error)
                assert isinstance(error, r.Error) and error.reasonCode == 1
                assert "X-Error-Detail" not in resp.headers
            assert [x.rule for x in strict.front.exchanges][-1] == rule
        async with session.get(base + "/mup") as resp:
            listed = from_xml(await resp.read(), r.MirrorUsagePointList)
    assert listed.all == 0, "nothing refused reached the server"
    assert await strict.admin.site_readings(lfdi) == []
