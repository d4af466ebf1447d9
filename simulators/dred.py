"""A simulated DRED (demand response enabling device, AS/NZS 4755) behind a Modbus TCP digital I/O module.

A real site wires the DRED's mode outputs to the digital inputs of an I/O module (or straight to GPIO);
this simulator is that I/O module: DRM 0..8 are discrete inputs 0..8 of one unit, and the same bits are
mirrored as coils 0..8 (many modules expose their inputs either way). The lab asserts modes with
:meth:`SimulatedDred.set_modes`; the module refuses writes (an input is driven by the DRED, not by the
Modbus master), answering ILLEGAL_FUNCTION.

    dred = SimulatedDred()
    await dred.start()           # dred.host, dred.port, dred.unit
    dred.set_modes({5})          # "do not generate"
    await dred.stop()
"""

from __future__ import annotations

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

DRM_COUNT = 9
_READ_COILS, _READ_DISCRETE_INPUTS = 1, 2


class SimulatedDred:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, unit: int = 1) -> None:
        self.host, self.port, self.unit = host, port, unit
        self.modes: frozenset[int] = frozenset()
        self.reads = 0
        self._server: ModbusTcpServer | None = None

    def set_modes(self, modes: set[int] | frozenset[int]) -> None:
        bad = sorted(m for m in modes if m not in range(DRM_COUNT))
        if bad:
            raise ValueError(f"modes: DRM {bad[0]} does not exist (0..8)")
        self.modes = frozenset(modes)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None or function_code not in (_READ_COILS, _READ_DISCRETE_INPUTS):
            return ExcCodes.ILLEGAL_FUNCTION
        # bits are packed 16 to a register, bit 0 of the first register = input 0
        mask = sum(1 << m for m in self.modes)
        for i in range(len(current_registers)):
            current_registers[i] = (mask >> (16 * i)) & 0xFFFF if i == 0 else 0
        self.reads += 1
        return None

    async def start(self) -> None:
        def bits() -> list[SimData]:
            return [SimData(0, count=DRM_COUNT, values=False, datatype=DataType.BITS)]

        unused = [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(id=self.unit, simdata=(bits(), bits(), unused, list(unused)), action=self._action)
        server = ModbusTcpServer([device], address=(self.host, self.port))
        await server.serve_forever(background=True)
        if not server.transport:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
