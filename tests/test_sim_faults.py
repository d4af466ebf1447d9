"""Every fault mode, and what a Modbus client sees."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from simulators.config import ConfigError, default_site_config
from simulators.site import SimulatedSite
from tests.sim_helpers import read_point

pytestmark = pytest.mark.asyncio


async def _client(site: SimulatedSite, device: str, io_timeout: float = 1.0) -> AsyncModbusTcpClient:
    ep = site.endpoint(device)
    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=io_timeout, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def test_offline_own_port_refuses_and_drops_connections() -> None:
    cfg = default_site_config(pv_available_w=3000, load_w=500, battery=False, separate_ports=True)
    async with SimulatedSite(cfg) as site:
        client = await _client(site, "pv")
        assert await read_point(client, site, "pv", "101.W") == pytest.approx(3000, abs=1)
        port = site.endpoint("pv").port
        await site.set_fault_async("pv", "offline")
        for _ in range(100):  # the open connection is dropped (the client sees it on a later loop turn)
            if not client.connected:
                break
            await asyncio.sleep(0.02)
        assert not client.connected
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        # other devices of the site keep answering
        meter = await _client(site, "meter")
        assert await read_point(meter, site, "meter", "201.W") == pytest.approx(-2500, abs=1)
        # back online on the same port, same state
        await site.set_fault_async("pv", None)
        assert site.endpoint("pv").port == port
        client2 = await _client(site, "pv")
        assert await read_point(client2, site, "pv", "101.W") == pytest.approx(3000, abs=1)
        for c in (client, client2, meter):
            c.close()


async def test_offline_on_shared_port_answers_gateway_no_response() -> None:
    async with SimulatedSite(default_site_config(pv_available_w=3000, load_w=500)) as site:
        client = await _client(site, "meter")
        site.set_fault("meter", "offline")
        rr = await client.read_holding_registers(40000, count=2, device_id=site.endpoint("meter").unit_id)
        assert rr.isError() and rr.exception_code == 0x0B  # gateway target device failed to respond
        # the inverter on the same port still answers
        assert await read_point(client, site, "pv", "101.W") == pytest.approx(3000, abs=1)
        client.close()


async def test_slow_responses_delay_and_time_out() -> None:
    async with SimulatedSite(default_site_config(pv_available_w=3000, load_w=500)) as site:
        site.set_fault("pv", "slow", delay_s=0.4)
        client = await _client(site, "pv", io_timeout=2.0)
        start = time.monotonic()
        assert await read_point(client, site, "pv", "101.W") == pytest.approx(3000, abs=1)
        assert time.monotonic() - start >= 0.8  # two reads (value + scale factor), 0.4 s each
        client.close()
        impatient = await _client(site, "pv", io_timeout=0.2)
        with pytest.raises(ModbusIOException):
            await impatient.read_holding_registers(40000, count=2, device_id=1)
        impatient.close()


async def test_stuck_device_accepts_writes_and_ignores_them() -> None:
    async with SimulatedSite(default_site_config(pv_available_w=4000, load_w=500, battery=False)) as site:
        site.set_fault("pv", "stuck")
        client = await _client(site, "pv")
        lay = site.devices["pv"].layout
        pct, ena = lay.point("123.WMaxLimPct"), lay.point("123.WMaxLim_Ena")
        rr = await client.write_registers(40000 + pct.offset, [200], device_id=1)  # 20.0 % (SF -1)
        assert not rr.isError()
        rr = await client.write_registers(40000 + ena.offset, [1], device_id=1)
        assert not rr.isError()
        assert await read_point(client, site, "pv", "123.WMaxLimPct") == pytest.approx(20.0)  # reads back
        site.clock.jump(60.0)
        assert await read_point(client, site, "pv", "101.W") == pytest.approx(4000, abs=1)  # ...ignored
        assert site.meter_reading()["w"] == pytest.approx(-3500, abs=1)
        client.close()


@pytest.mark.parametrize("code", [4, 6])
async def test_exception_responses(code: int) -> None:
    async with SimulatedSite(default_site_config(pv_available_w=3000, load_w=500)) as site:
        site.set_fault("battery", "exception", code=code)
        client = await _client(site, "battery")
        rr = await client.read_holding_registers(40000, count=2, device_id=2)
        assert rr.isError() and rr.exception_code == code
        writable = site.devices["battery"].layout.point("123.WMaxLimPct").offset
        rr = await client.write_registers(40000 + writable, [500], device_id=2)
        assert rr.isError() and rr.exception_code == code
        site.clear_fault("battery")
        rr = await client.read_holding_registers(40000, count=2, device_id=2)
        assert not rr.isError() and rr.registers == [0x5375, 0x6E53]  # "SunS"
        client.close()


async def test_frozen_meter_keeps_reporting_stale_values() -> None:
    cfg = default_site_config(
        pv_available_w=4000, load_w=500, battery=False, ramp_time_s=0, response_delay_s=0
    )
    async with SimulatedSite(cfg) as site:
        client = await _client(site, "meter")
        assert await read_point(client, site, "meter", "201.W") == pytest.approx(-3500, abs=1)
        site.set_fault("meter", "frozen")
        site.physics.command(site.clock.now(), "pv", "limit", pct=20.0)  # PV drops to 1 kW
        site.clock.jump(5.0)
        assert site.meter_reading()["w"] == pytest.approx(-500, abs=1)  # the truth moved
        assert await read_point(client, site, "meter", "201.W") == pytest.approx(-3500, abs=1)  # frozen
        site.clear_fault("meter")
        assert await read_point(client, site, "meter", "201.W") == pytest.approx(-500, abs=1)
        client.close()


async def test_fault_api_validates() -> None:
    site = SimulatedSite(default_site_config())
    with pytest.raises(ConfigError) as e:
        site.set_fault("nope", "slow")
    assert e.value.field == "device"
    with pytest.raises(ConfigError) as e:
        site.set_fault("pv", "melting")
    assert e.value.field == "fault"
    with pytest.raises(ConfigError) as e:
        site.set_fault("pv", "slow", delay_s=-1)
    assert e.value.field == "delay_s"
    assert site.devices["pv"].fault is None  # nothing changed


async def test_http_control_endpoint_switches_faults() -> None:
    cfg = default_site_config(pv_available_w=3000, load_w=500, battery=False, control_port=0)
    async with SimulatedSite(cfg) as site:
        base = f"http://127.0.0.1:{site.control_port}/sites/{site.name}"
        client = await _client(site, "meter")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/faults", json={"device": "meter", "fault": "exception"}) as r:
                assert r.status == 200
                body = await r.json()
                assert {d["name"]: d["fault"] for d in body["devices"]}["meter"] == "exception"
            rr = await client.read_holding_registers(40000, count=2, device_id=3)
            assert rr.isError() and rr.exception_code == 4
            async with http.post(f"{base}/faults", json={"device": "meter", "fault": "bogus"}) as r:
                assert r.status == 400
                assert (await r.json())["field"] == "fault"
            async with http.delete(f"{base}/faults/meter") as r:
                assert r.status == 200
            rr = await client.read_holding_registers(40000, count=2, device_id=3)
            assert not rr.isError()
            async with http.get(base) as r:
                status = await r.json()
                assert status["meter"]["w"] == pytest.approx(-2500, abs=1)
        client.close()
