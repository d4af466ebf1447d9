"""Control writes act through the physics: response delay, ramp, and the meter follows.

Writes go through pysunspec2's client (scale factors applied by a third party); the trajectory is
sampled over Modbus on an accelerated clock and compared with the expected ramp, evaluated over the
simulated-time window each read could have landed in.
"""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators.config import default_site_config, with_devices
from simulators.site import SimulatedSite
from tests.sim_helpers import read_point, scan, write_points

SPEED = 20.0
LOAD_W = 500.0
RATED = 5000.0
AVAILABLE = 4000.0
DELAY = 1.0


def _expected_output(t: float, t_write: float, family: str) -> float:
    """Expected PV output after a 100% -> 40% limit written at t_write."""
    start_w, target_w = RATED, 0.4 * RATED
    t0 = t_write + DELAY
    if family == "legacy":  # 123 WMaxLimPct_RmpTms = 10 s for the whole move
        frac = min(max((t - t0) / 10.0, 0.0), 1.0)
        limit = start_w + (target_w - start_w) * frac
    else:  # 704 WRmp = 10 %WMax/s -> 500 W/s
        limit = max(target_w, start_w - 500.0 * max(t - t0, 0.0))
    return min(AVAILABLE, limit)


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_export_limit_ramps_and_meter_follows(family: str) -> None:
    cfg = with_devices(
        default_site_config(pv_available_w=AVAILABLE, load_w=LOAD_W, battery=False, speed=SPEED),
        family=family,
    )
    async with SimulatedSite(cfg) as site:
        pv_ep = site.endpoint("pv")
        dev = await scan(pv_ep)
        client = AsyncModbusTcpClient(pv_ep.host, port=pv_ep.port, timeout=2)
        await client.connect()
        w_point = "101.W" if family == "legacy" else "701.W"
        try:
            assert await read_point(client, site, "pv", w_point) == pytest.approx(AVAILABLE, abs=1)
            assert await read_point(client, site, "meter", "201.W") == pytest.approx(
                LOAD_W - AVAILABLE, abs=1
            )
            t_before_write = site.clock.now()
            if family == "legacy":
                await write_points(dev, 123, {"WMaxLimPct": 40.0, "WMaxLim_Ena": 1})
            else:
                await write_points(dev, 704, {"WMaxLimPct": 40.0, "WMaxLimPctEna": 1})
            t_after_write = site.clock.now()
            # the register reads back at once; the output does not move until the delay has passed
            samples = []
            end = t_after_write + DELAY + 12.0
            while site.clock.now() < end:
                t_a = site.clock.now()
                w = await read_point(client, site, "pv", w_point)
                meter_w = await read_point(client, site, "meter", "201.W")
                t_b = site.clock.now()
                samples.append((t_a, t_b, w, meter_w))
            assert len(samples) > 20
            for t_a, t_b, w, meter_w in samples:
                # any write time in [t_before_write, t_after_write] and read time in [t_a, t_b]
                candidates = [
                    _expected_output(t, tw, family)
                    for t in (t_a, t_b)
                    for tw in (t_before_write, t_after_write)
                ]
                tol = 0.01 * RATED
                assert min(candidates) - tol <= w <= max(candidates) + tol, (
                    t_a - t_after_write,
                    w,
                    candidates,
                )
                # the meter (read just after) shows load minus PV at nearly the same moment
                assert meter_w == pytest.approx(LOAD_W - w, abs=tol + 500.0 * (t_b - t_a))
            # the trajectory really ramps: some samples strictly between start and final output
            mids = [w for _, _, w, _ in samples if 2100 < w < 3900]
            assert len(mids) >= 3
            assert samples[-1][2] == pytest.approx(0.4 * RATED, abs=1)
            assert site.meter_reading()["w"] == pytest.approx(LOAD_W - 0.4 * RATED, abs=1)
            # lifting the limit ramps back up to the available power
            if family == "legacy":
                await write_points(dev, 123, {"WMaxLim_Ena": 0})
            else:
                await write_points(dev, 704, {"WMaxLimPctEna": 0})
            site.clock.jump(DELAY + 11.0)
            assert await read_point(client, site, "pv", w_point) == pytest.approx(AVAILABLE, abs=1)
        finally:
            client.close()
            dev.close()


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_disconnect_and_soft_reconnect(family: str) -> None:
    cfg = with_devices(
        default_site_config(pv_available_w=AVAILABLE, load_w=LOAD_W, battery=False, speed=1.0), family=family
    )
    async with SimulatedSite(cfg) as site:
        dev = await scan(site.endpoint("pv"))
        try:
            model, point = (123, "Conn") if family == "legacy" else (703, "ES")
            await write_points(dev, model, {point: 0})
            assert site.inverter_output_w() == pytest.approx(AVAILABLE)  # response delay not yet over
            site.clock.jump(DELAY + 0.1)
            assert site.inverter_output_w() == 0.0
            assert site.meter_reading()["w"] == pytest.approx(LOAD_W)
            await write_points(dev, model, {point: 1})
            site.clock.jump(DELAY + 15.0)  # half of the 30 s soft-start ramp
            assert site.inverter_output_w() == pytest.approx(RATED * 15 / 30, rel=0.02)
            site.clock.jump(20.0)
            assert site.inverter_output_w() == pytest.approx(AVAILABLE)
        finally:
            dev.close()


async def test_invalid_enum_write_is_rejected_and_changes_nothing() -> None:
    cfg = default_site_config(pv_available_w=AVAILABLE, load_w=LOAD_W, battery=False)
    async with SimulatedSite(cfg) as site:
        ep = site.endpoint("pv")
        slot = site.devices["pv"].layout.point("123.WMaxLim_Ena")
        client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=2)
        await client.connect()
        try:
            rr = await client.write_registers(40000 + slot.offset, [7], device_id=ep.unit_id)
            assert rr.isError() and rr.exception_code == 3  # ILLEGAL DATA VALUE
            assert site.devices["pv"].get("123.WMaxLim_Ena") == 0
            # read-only points refuse writes (ILLEGAL DATA ADDRESS)
            w_slot = site.devices["pv"].layout.point("101.W")
            rr = await client.write_registers(40000 + w_slot.offset, [1], device_id=ep.unit_id)
            assert rr.isError() and rr.exception_code == 2
        finally:
            client.close()


async def test_an_open_isolator_stops_the_inverter_whatever_is_commanded() -> None:
    """The installer's hands (client procedures ALL-07 / MUL-01: "disconnect all DER from the grid"): an
    open AC isolator stops the output and the inverter reports itself neither connected nor available
    (122 PVConn bits 0 and 1); closing it soft-starts. A PV source at 0 W (ALL-08) leaves it asleep."""
    cfg = default_site_config(pv_available_w=AVAILABLE, load_w=LOAD_W, battery=False)
    async with SimulatedSite(cfg) as site:
        ep = site.endpoint("pv")
        client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=2)
        await client.connect()
        try:
            assert await read_point(client, site, "pv", "122.PVConn") == 0b111
            site.isolate("pv")
            assert site.inverter_output_w() == 0.0
            assert await read_point(client, site, "pv", "122.PVConn") == 0
            assert await read_point(client, site, "pv", "101.St") == 1  # OFF
            site.isolate("pv", False)
            site.clock.jump(40.0)  # past the soft-start ramp
            assert site.inverter_output_w() == pytest.approx(AVAILABLE)
            site.set_pv_source("pv", 0.0)
            assert site.inverter_output_w() == 0.0
            assert await read_point(client, site, "pv", "101.St") == 2  # SLEEPING
        finally:
            client.close()
