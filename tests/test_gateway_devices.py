"""Device shell against the SunSpec simulators over real Modbus TCP: scan, measure, control, errors."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest

from gateway.devices import (
    DeviceConnection,
    DeviceExceptionResponse,
    DeviceUnreachable,
    DeviceVerifyError,
    UnsupportedControl,
    build_model_map,
)
from simulators.config import default_site_config
from simulators.site import SimulatedSite

SPEED = 20.0  # simulated seconds per wall second


async def _site(family: str, **kw) -> SimulatedSite:
    cfg = default_site_config(family=family, pv_available_w=4000, load_w=1000, speed=SPEED, **kw)
    site = SimulatedSite(cfg)
    await site.start()
    return site


async def _open(site: SimulatedSite, name: str) -> DeviceConnection:
    ep = site.endpoint(name)
    dev = await DeviceConnection.open(ep.host, ep.port, ep.unit_id, timeout=1.0)
    await dev.scan()
    return dev


async def _sim_sleep(site: SimulatedSite, seconds: float) -> None:
    await asyncio.sleep(seconds / site.clock.speed)


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_scan_identifies_each_device_and_reads_scaled_measurements(family: str) -> None:
    site = await _site(family)
    try:
        pv, bat, meter = [await _open(site, n) for n in ("pv", "battery", "meter")]
        assert pv.info.kind == "pv" and bat.info.kind == "battery" and meter.info.kind == "meter"
        assert pv.info.family == family and bat.info.family == family
        assert pv.info.manufacturer == "derlink" and pv.info.serial == "site-pv"
        assert pv.info.firmware == "0.1.0" and pv.info.base_address == 40000
        expected_chain = {"legacy": (1, 101, 120, 121, 122, 123), "der": (1, 701, 702, 703, 704, 705)}
        assert pv.info.models == expected_chain[family]
        assert pv.info.rated_w == 5000 and bat.info.max_charge_w == 5000 and bat.info.capacity_wh == 13500
        # var and PF ratings (120 VArRtgQ1/Q4, PFRtgQ1/Q4; 702 VarMaxInjRtg/AbsRtg, PFOvrExtRtg/UndExtRtg)
        # signed as 2030.5 signs them: var received negative, PF as a displacement
        assert pv.info.rated_var == pytest.approx(3000) and pv.info.rated_var_neg == pytest.approx(-3000)
        assert pv.info.min_pf_over == pytest.approx(0.8) and pv.info.min_pf_under == pytest.approx(0.8)
        assert pv.info.reserve_pct is None and bat.info.reserve_pct is not None  # 124 MinRsvPct/802 SoCRsvMin
        assert meter.info.models == (1, 201)

        m_pv = await pv.read_measurements()
        m_bat = await bat.read_measurements()
        m_meter = await meter.read_measurements()
        assert m_pv.w == pytest.approx(site.inverter_output_w("pv"), abs=5) and m_pv.w == pytest.approx(4000)
        assert m_pv.hz == pytest.approx(50.0) and m_pv.v == pytest.approx(230.0, abs=1)  # V_SF -1
        assert m_pv.a == pytest.approx(4000 / 230, abs=0.02)  # A_SF -2
        assert m_pv.connected is True and m_pv.limit_pct is None
        assert m_bat.soc_pct == pytest.approx(site.battery_soc(), abs=0.1)
        # self-consumption battery absorbs the surplus: +discharge / -charge convention
        assert m_bat.w == pytest.approx(-3000, abs=20)
        assert m_meter.w == pytest.approx(site.meter_reading()["w"], abs=20)
        assert m_meter.energy_import_wh is not None and m_meter.v == pytest.approx(230, abs=1)
        for d in (pv, bat, meter):
            await d.close()
    finally:
        await site.stop()


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_limit_written_read_back_and_followed(family: str) -> None:
    site = await _site(family, battery=False)
    pv = await _open(site, "pv")
    try:
        await pv.set_active_power_limit_pct(40.0, ramp_s=0)
        assert (await pv.read_measurements()).limit_pct == pytest.approx(40.0)
        await _sim_sleep(site, 2.0)  # 1 s response delay, step change
        assert (await pv.read_measurements()).w == pytest.approx(2000, abs=10)
        assert site.inverter_output_w("pv") == pytest.approx(2000, abs=1)
        # a limit is rounded *down* to the register's resolution (WMaxLimPct_SF = -1)
        await pv.set_active_power_limit_pct(33.339, ramp_s=0)
        assert (await pv.read_measurements()).limit_pct == pytest.approx(33.3)
        await pv.set_active_power_limit_pct(None)
        assert (await pv.read_measurements()).limit_pct is None
        await _sim_sleep(site, 2.0)
        assert site.inverter_output_w("pv") == pytest.approx(4000, abs=1)
        with pytest.raises(ValueError, match="pct"):
            await pv.set_active_power_limit_pct(120)
    finally:
        await pv.close()
        await site.stop()


async def test_limit_with_ramp_moves_gradually() -> None:
    site = await _site("legacy", battery=False)
    pv = await _open(site, "pv")
    try:
        await pv.set_active_power_limit_pct(0.0, ramp_s=20)
        await _sim_sleep(site, 6.0)  # 1 s delay + 5 s of a 20 s ramp from 5000 W: limit ~3750 W
        mid = site.inverter_output_w("pv")
        assert 3000 < mid < 4000
        await _sim_sleep(site, 18.0)
        assert site.inverter_output_w("pv") == pytest.approx(0, abs=1)
    finally:
        await pv.close()
        await site.stop()


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_connect_disconnect_and_storage_power(family: str) -> None:
    site = await _site(family)
    pv, bat = await _open(site, "pv"), await _open(site, "battery")
    try:
        await pv.set_connected(False)
        await bat.set_storage_power(-1500)
        assert (await bat.read_measurements()).storage_setpoint_w == pytest.approx(-1500)
        await _sim_sleep(site, 2.0)
        m = await pv.read_measurements()
        assert m.connected is False and m.w == 0
        assert (await bat.read_measurements()).w == pytest.approx(-1500, abs=5)
        await bat.set_storage_power(2000)  # discharge
        await pv.set_connected(True)
        await _sim_sleep(site, 2.0)
        assert (await pv.read_measurements()).connected is True
        assert site.battery_power_w() == pytest.approx(2000, abs=5)
        await bat.set_storage_power(None)  # back to the battery's own mode
        assert (await bat.read_measurements()).storage_setpoint_w is None
        with pytest.raises(UnsupportedControl, match="not a battery"):
            await pv.set_storage_power(100)
    finally:
        await pv.close()
        await bat.close()
        await site.stop()


async def test_several_der_on_separate_ports() -> None:
    cfg = default_site_config(pv_available_w=3000, load_w=500, speed=SPEED, separate_ports=True)
    cfg = replace(cfg, devices=[*cfg.devices, replace(cfg.devices[0], name="pv2", serial="second-pv")])
    async with SimulatedSite(cfg) as site:
        devs = [await _open(site, n) for n in ("pv", "pv2", "battery", "meter")]
        assert [d.info.kind for d in devs] == ["pv", "pv", "battery", "meter"]
        assert devs[1].info.serial == "second-pv" and devs[0].port != devs[1].port
        await devs[1].set_active_power_limit_pct(10, ramp_s=0)
        await _sim_sleep(site, 2.0)
        assert (await devs[0].read_measurements()).w == pytest.approx(3000, abs=5)
        assert (await devs[1].read_measurements()).w == pytest.approx(500, abs=5)
        for d in devs:
            await d.close()


async def test_readback_mismatch_is_a_device_fault() -> None:
    """A device that silently keeps its old limit (writes land, then revert) fails verification."""
    site = await _site("legacy", battery=False)
    pv = await _open(site, "pv")
    sim = site.devices["pv"]
    slot = sim.layout.point("123.WMaxLimPct")
    original = sim._handle_write

    def refuse_limit(touched, t):  # the firmware puts the old value back
        sim.regs[slot.offset] = 1000
        original(touched, t)

    sim._handle_write = refuse_limit
    try:
        with pytest.raises(DeviceVerifyError, match=r"123\.WMaxLimPct.*read back"):
            await pv.set_active_power_limit_pct(25, ramp_s=0)
    finally:
        await pv.close()
        await site.stop()


async def test_errors_name_the_device() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    with pytest.raises(DeviceUnreachable, match=rf"127\.0\.0\.1:{free_port} unit 1"):
        await DeviceConnection.open("127.0.0.1", free_port, 1, timeout=0.5)

    site = await _site("legacy")
    pv = await _open(site, "pv")
    try:
        site.set_fault("pv", "exception", code=4)
        with pytest.raises(DeviceExceptionResponse, match=r"exception code 4 \(DEVICE_FAILURE\)") as err:
            await pv.read_measurements()
        assert err.value.code == 4
        # far beyond 1 s x (1 + 1 retry), so a late answer can never satisfy the retried request
        site.set_fault("pv", "slow", delay_s=6.0)
        with pytest.raises(DeviceUnreachable, match="did not answer"):
            await pv.read_measurements()
        site.set_fault("pv", None)
        await asyncio.sleep(0.3)
        assert (await pv.read_measurements()).w is not None  # recovers once the device answers again
    finally:
        await pv.close()
        await site.stop()


def test_model_map_codec_from_definitions() -> None:
    mm = build_model_map(123, 40100, 24)
    p = mm.point("WMaxLimPct")
    assert (p.offset, p.sf, p.access) == (5, "WMaxLimPct_SF", "RW")  # computed, never typed
    regs = [123, 24] + [0xFFFF] * 24
    regs[mm.point("WMaxLimPct_SF").offset] = (-1) & 0xFFFF
    assert mm.decode(regs, "WMaxLimPct") is None  # 0xFFFF = not implemented
    regs[p.offset : p.offset + 1] = mm.encode(regs, "WMaxLimPct", 42.5)
    assert regs[p.offset] == 425 and mm.decode(regs, "WMaxLimPct") == pytest.approx(42.5)
    assert mm.encode(regs, "WMaxLimPct", 42.59, floor=True) == [425]
    with pytest.raises(ValueError, match=r"123\.WMaxLimPct"):
        mm.encode(regs, "WMaxLimPct", 7000)
    with pytest.raises(ValueError, match=r"123\.Conn"):
        mm.encode(regs, "Conn", 7)  # not a listed enum value
    m101 = build_model_map(101, 40002, 50)
    regs = [101, 50] + [0] * 50
    regs[m101.point("W").offset] = 0x8000  # int16 not implemented
    assert m101.decode(regs, "W") is None
    regs[m101.point("W").offset] = (-1234) & 0xFFFF
    regs[m101.point("W_SF").offset] = 1
    assert m101.decode(regs, "W") == -12340


async def test_scale_factor_changed_since_the_last_read_is_caught_and_rewritten() -> None:
    """Writes use the scale factors of a recent read (so the write is the first request); if the device
    changed one meanwhile, the read-back sees it and the value is written again with the new one."""
    site = await _site("legacy", battery=False)
    pv = await _open(site, "pv")
    sim = site.devices["pv"]
    pct, sf = sim.layout.point("123.WMaxLimPct"), sim.layout.point("123.WMaxLimPct_SF")
    requests: list[str] = []
    read, write = pv.read_registers, pv.write_registers

    async def logged_read(*a, **kw):
        requests.append("read")
        return await read(*a, **kw)

    async def logged_write(*a, **kw):
        requests.append("write")
        return await write(*a, **kw)

    pv.read_registers, pv.write_registers = logged_read, logged_write  # type: ignore[method-assign]
    try:
        await pv.read_measurements()  # reads model 123 (WMaxLimPct_SF = -1)
        requests.clear()
        await pv.set_active_power_limit_pct(40.0, ramp_s=0)
        assert requests == ["write", "read"] and sim.regs[pct.offset] == 400
        sim.regs[sf.offset] = 0xFFFE  # the device now scales WMaxLimPct by 10^-2
        requests.clear()
        await pv.set_active_power_limit_pct(30.0, ramp_s=0)
        assert requests[:2] == ["write", "read"] and len(requests) > 2  # caught, then read and rewritten
        assert sim.regs[pct.offset] == 3000
        assert (await pv.read_measurements()).limit_pct == pytest.approx(30.0)
    finally:
        await pv.close()
        await site.stop()
