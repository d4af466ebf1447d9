"""Simulated controllable loads on Modbus TCP: an EV charger and a switched load (register map:
:mod:`fieldbus.load_map`, declared once for the simulator and the gateway).

The physics lives in :class:`simulators.physics.ControllableLoad` (it counts at the site meter); this
is its Modbus face. A write of the control register becomes an ``allow`` command that takes effect after
the device's response delay; reads show the power drawn now. An EV charger starts unlimited (at its
maximum current), a switched load on: an uncontrolled site draws everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from fieldbus import load_map as lm

from .config import DeviceConfig
from .physics import ControllableLoad, SitePhysics


@dataclass
class LoadDevice:
    """One controllable load (one Modbus unit ID)."""

    cfg: DeviceConfig
    physics: SitePhysics
    now: Callable[[], float]
    fault: object = None  # faults are not simulated for loads; the attribute keeps the site API uniform
    own_server: bool = False
    reads: int = 0
    writes: int = 0
    control: int = field(init=False)
    model_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.control = round(self.max_a * 10) if self.is_evse else 1

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def unit(self) -> None:  # not an inverter
        return None

    @property
    def is_evse(self) -> bool:
        return self.cfg.kind == "evse"

    @property
    def max_a(self) -> float:
        return self.cfg.rated_w / lm.LINE_V

    @property
    def load(self) -> ControllableLoad:
        return self.physics.loads[self.cfg.name]

    def registers(self) -> list[int]:
        load = self.load
        w = round(load.output_w)
        if self.is_evse:
            state = lm.STATE_C_CHARGING if w > 0 else lm.STATE_B_CONNECTED
            rating = round(self.max_a * 10)
        else:
            state, rating = self.control, round(self.cfg.rated_w)
        return [self.control, min(w, 0xFFFF), state, rating, lm.KINDS[self.cfg.kind]]

    def sim_device(self) -> SimDevice:
        block = SimData(0, values=self.registers(), datatype=DataType.REGISTERS)
        return SimDevice(id=self.cfg.unit_id, simdata=[block], action=self._action)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        t = self.now()
        self.physics.advance(t)
        if set_values is None:
            self.reads += 1
            regs = self.registers()
            current_registers[address - start_address : address - start_address + count] = regs[
                address : address + count
            ]
            return None
        if address != lm.REG_CONTROL or len(set_values) != 1:
            return ExcCodes.ILLEGAL_ADDRESS  # only the control register is writable
        value = int(set_values[0])
        top = round(self.max_a * 10) if self.is_evse else 1
        if not 0 <= value <= top:
            return ExcCodes.ILLEGAL_VALUE
        self.writes += 1
        self.control = value
        allowed = lm.evse_watts(value / 10.0) if self.is_evse else (math.inf if value else 0.0)
        self.physics.command(t, self.cfg.name, "allow", w=allowed)
        return None
