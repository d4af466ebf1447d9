"""The gateway's ModelMap and the simulators' RegisterLayout are both laid out by one module
(fieldbus.sunspec_types, on pysunspec2's model objects), each from its own inputs: the gateway from the
registers it reads (L and count points), the simulator from its configured counts. This checks both against
a third party: pysunspec2's ``sunspec2.device.Model`` parsing the simulator's register image, and its
Modbus client scanning the simulator over TCP as the gateway does. Every point at the same offset, with the
same size and scale-factor point (SunSpec Information Model Specification: model layout, repeating groups,
scale-factor scope)."""

from __future__ import annotations

import pytest
import sunspec2.device as ss2

from gateway.devices.device import DeviceConnection
from gateway.devices.sunspec import build_model_map
from simulators.config import default_site_config
from simulators.devices import GROUP_COUNTS
from simulators.site import SimulatedSite
from simulators.sunspec_map import END_MODEL_ID, SUNSPEC_BASE_ADDRESS, build_layout
from tests.sim_helpers import scan

CHAINS = [
    (1, 101, 120, 121, 122, 123),
    (1, 103, 120, 121, 122, 123, 124),
    (1, 701, 702, 703, 704, 705),
    (1, 701, 702, 703, 704, 713, 714, 802),
    (1, 201),
    (1, 203),
]


def _flatten(group: object, prefix: str, out: dict[str, tuple[int, int, str | None]]) -> None:
    for name, point in group.points.items():
        out[f"{prefix}{name}"] = (point.offset, point.len, point.sf)
    for name, sub in group.groups.items():
        if isinstance(sub, list):
            for index, g in enumerate(sub, 1):
                _flatten(g, f"{prefix}{name}[{index}].", out)
        else:
            _flatten(sub, f"{prefix}{name}.", out)


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "-".join(map(str, c)))
def test_gateway_simulator_and_pysunspec2_agree_on_every_point(chain: tuple[int, ...]) -> None:
    layout = build_layout(chain, GROUP_COUNTS)
    regs = layout.new_image()
    for block in layout.models:
        if block.model_id == END_MODEL_ID:
            continue
        model_regs = regs[block.offset : block.offset + 2 + block.length]
        data = b"".join(r.to_bytes(2, "big") for r in model_regs)
        theirs: dict[str, tuple[int, int, str | None]] = {}
        model = ss2.Model(block.model_id, SUNSPEC_BASE_ADDRESS + block.offset, block.length, data=data)
        _flatten(model, "", theirs)
        gateway = build_model_map(
            block.model_id, SUNSPEC_BASE_ADDRESS + block.offset, block.length, model_regs
        )
        sim_prefix = f"{block.model_id}."
        simulator = {
            name.removeprefix(sim_prefix): (slot.offset - block.offset, slot.size)
            for name, slot in layout.points.items()
            if slot.model_id == block.model_id
        }
        assert set(gateway.points) == set(simulator) == set(theirs), block.model_id
        for name, (offset, size, sf) in theirs.items():
            point = gateway.points[name]
            assert (point.offset, point.size) == (offset, size) == simulator[name], (block.model_id, name)
            # pysunspec2 names the SF as the definition does; both maps resolve it to a point of the model
            assert (point.sf is None) == (sf is None), (block.model_id, name)
            if sf is not None:
                assert point.sf.rsplit(".", 1)[-1] == sf and point.sf in gateway.points


@pytest.mark.parametrize("family", ["legacy", "der"])
async def test_gateway_and_pysunspec2_client_scan_the_simulator_alike(family: str) -> None:
    """Over real Modbus TCP: the gateway's scan and pysunspec2's own client (its SunSpecModbusClientDevice)
    each walk every simulated device's chain from the wire (L, count points) and place every point at
    the absolute address the simulator serves it from."""
    site = SimulatedSite(default_site_config(family=family, pv_available_w=4000, load_w=1000))
    await site.start()
    try:
        for name, sim in site.devices.items():
            ep = site.endpoint(name)
            gateway = await DeviceConnection.open(ep.host, ep.port, ep.unit_id, timeout=2.0)
            try:
                await gateway.scan()
            finally:
                await gateway.close()
            client = await scan(ep)
            client.close()
            served = {n: (SUNSPEC_BASE_ADDRESS + s.offset, s.size) for n, s in sim.layout.points.items()}
            seen_by_client: dict[str, tuple[int, int]] = {}
            seen_by_gateway: dict[str, tuple[int, int]] = {}
            for model_id, maps in gateway.models.items():
                (mm,) = maps
                (model,) = client.models[model_id]
                theirs: dict[str, tuple[int, int, str | None]] = {}
                _flatten(model, "", theirs)
                for point, (offset, size, _sf) in theirs.items():
                    seen_by_client[f"{model_id}.{point}"] = (model.model_addr + offset, size)
                for point, p in mm.points.items():
                    seen_by_gateway[f"{model_id}.{point}"] = (mm.address + p.offset, p.size)
            assert seen_by_gateway == seen_by_client == served, name
    finally:
        await site.stop()


def test_common_model_without_its_pad_is_laid_out_as_pysunspec2_does() -> None:
    """Model 1 may be 65 registers long, without its Pad point: pysunspec2 accepts it, so the gateway does."""
    mm = build_model_map(1, 40002, 65, [1, 65] + [0] * 65)
    model = ss2.Model(1, 40002, 65, data=bytes(2 * 67))
    assert "Pad" not in mm.points and model.error_info == ""
    assert {n: (p.offset, p.size) for n, p in mm.points.items()} == {
        n: (p.offset, p.len) for n, p in model.points.items()
    }
