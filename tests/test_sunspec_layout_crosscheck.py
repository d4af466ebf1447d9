"""The gateway's ModelMap and the simulators' RegisterLayout are both laid out by one module
(fieldbus.sunspec_types, on pysunspec2's model objects), each from its own inputs: the gateway from the
registers it reads (L and count points), the simulator from its configured counts. This checks both against
a third party, pysunspec2's own ``sunspec2.device.Model`` parsing the simulator's register image: every
point at the same offset, with the same size and scale-factor point (SunSpec Information Model
Specification: model layout, repeating groups, scale-factor scope)."""

from __future__ import annotations

import pytest
import sunspec2.device as ss2

from gateway.devices.sunspec import build_model_map
from simulators.devices import GROUP_COUNTS
from simulators.sunspec_map import END_MODEL_ID, SUNSPEC_BASE_ADDRESS, build_layout

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
