"""Helpers shared by the simulator tests: a pysunspec2 scan run off the event loop, raw point reads."""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from simulators.site import Endpoint, SimulatedSite
from simulators.sunspec_map import SUNSPEC_BASE_ADDRESS


def scan_blocking(ep: Endpoint) -> SunSpecModbusClientDeviceTCP:
    """Connect pysunspec2's own client, scan the whole device, leave it connected."""
    dev = SunSpecModbusClientDeviceTCP(slave_id=ep.unit_id, ipaddr=ep.host, ipport=ep.port, timeout=5)
    dev.scan(connect=True)
    dev.connect()
    for model_list in dev.models.values():  # read every model a second time, after the scan
        for model in model_list:
            model.read()
    return dev


async def scan(ep: Endpoint) -> SunSpecModbusClientDeviceTCP:
    return await asyncio.to_thread(scan_blocking, ep)


async def write_points(dev: SunSpecModbusClientDeviceTCP, model_id: int, values: dict[str, Any]) -> None:
    """Set engineering values (scale factors applied by pysunspec2) and write them, in order."""

    def _write() -> None:
        model = dev.models[model_id][0]
        for name, value in values.items():
            model.points[name].cvalue = value
            model.points[name].write()

    await asyncio.to_thread(_write)


async def read_point(client: AsyncModbusTcpClient, site: SimulatedSite, device: str, point: str) -> float:
    """Read one point over Modbus and decode it with the device's layout (scale factor applied)."""
    sim = site.devices[device]
    layout = sim.layout
    slot = layout.point(point)
    regs = [0] * layout.size
    rr = await client.read_holding_registers(
        SUNSPEC_BASE_ADDRESS + slot.offset, count=slot.size, device_id=sim.cfg.unit_id
    )
    assert not rr.isError(), rr
    regs[slot.offset : slot.offset + slot.size] = rr.registers
    if slot.sf:
        sf_slot = layout.point(slot.sf)
        rs = await client.read_holding_registers(
            SUNSPEC_BASE_ADDRESS + sf_slot.offset, count=1, device_id=sim.cfg.unit_id
        )
        regs[sf_slot.offset] = rs.registers[0]
    value = layout.get(regs, point)
    assert value is not None, point
    return float(value)
