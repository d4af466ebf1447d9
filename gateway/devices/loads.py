"""The gateway's driver of controllable loads (EV charger, switched load) over Modbus TCP.

Register map: :mod:`fieldbus.load_map`. :meth:`LoadConnection.read` returns the power drawn and
the allowance in force; :meth:`LoadConnection.allow` sets the allowance in watts (an EV charger: the
current limit for it, rounded down, 0 below 6 A; a switched load: on if the allowance covers its rated
power, else off) and reads the control register back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from fieldbus import load_map as lm
from gateway.devices.device import DeviceError, DeviceExceptionResponse, DeviceUnreachable, DeviceVerifyError

LOAD_KINDS = tuple(lm.KINDS)


@dataclass(frozen=True)
class LoadReading:
    w: float  # + consumption
    allowed_w: float  # the allowance in force (inf: unlimited / on)
    rated_w: float
    read_at: float


class LoadConnection:
    def __init__(
        self, name: str, kind: str, host: str, port: int, unit: int = 1, *, timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if kind not in lm.KINDS:
            raise ValueError(f"kind must be one of {', '.join(lm.KINDS)}, got {kind!r}")
        self.name, self.kind, self.unit, self.timeout, self.clock = name, kind, unit, timeout, clock
        self.where = f"{name} ({kind} at {host}:{port} unit {unit})"
        self.rated_w = 0.0
        self.max_a = 0.0
        self.client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0,
                                           reconnect_delay=0, reconnect_delay_max=0)  # fmt: skip

    @property
    def is_evse(self) -> bool:
        return self.kind == "evse"

    async def _call(self, what: str, fn: Callable[[], object]) -> object:
        try:
            if not self.client.connected and not await self.client.connect():
                raise DeviceUnreachable(self.where, "connection refused or no answer")
            rr = await asyncio.wait_for(fn(), self.timeout + 1)  # type: ignore[arg-type]
        except (TimeoutError, OSError, ModbusException) as exc:
            self.client.close()
            raise DeviceUnreachable(self.where, f"{what}: {exc or type(exc).__name__}") from exc
        if rr.isError():  # type: ignore[attr-defined]
            raise DeviceExceptionResponse(self.where, getattr(rr, "exception_code", 0), what)
        return rr

    async def _registers(self, address: int, count: int, what: str) -> list[int]:
        read = self.client.read_holding_registers
        rr = await self._call(what, lambda: read(address, count=count, device_id=self.unit))
        return list(rr.registers)  # type: ignore[attr-defined]

    async def open(self) -> LoadConnection:
        """Connect and check the device is the configured kind (its rating comes from the device)."""
        reading = await self.read()
        self.rated_w = reading.rated_w
        return self

    async def read(self) -> LoadReading:
        regs = await self._registers(0, lm.REGISTER_COUNT, "read")
        if regs[lm.REG_KIND] != lm.KINDS[self.kind]:
            kind = regs[lm.REG_KIND]
            raise DeviceError(self.where, f"register {lm.REG_KIND} says kind {kind}, not {self.kind}")
        if self.is_evse:
            self.max_a = regs[lm.REG_RATING] / 10.0
            rated, allowed = self.max_a * lm.LINE_V, lm.evse_watts(regs[lm.REG_CONTROL] / 10.0)
        else:
            rated = float(regs[lm.REG_RATING])
            allowed = math.inf if regs[lm.REG_CONTROL] else 0.0
        return LoadReading(float(regs[lm.REG_POWER_W]), allowed, rated, self.clock())

    def control_value(self, w: float) -> int:
        if self.is_evse:
            return round(lm.evse_amps(w, self.max_a) * 10)
        return 1 if w >= self.rated_w else 0

    async def allow(self, w: float) -> int:
        """Write the allowance (W); returns the control register value written and read back."""
        value = self.control_value(w)
        await self._call(
            "write control", lambda: self.client.write_registers(lm.REG_CONTROL, [value], device_id=self.unit)
        )
        (back,) = await self._registers(lm.REG_CONTROL, 1, "read back")
        if back != value:
            raise DeviceVerifyError(self.where, f"control register reads {back} after writing {value}")
        return value

    async def close(self) -> None:
        self.client.close()
