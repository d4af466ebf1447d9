"""DRM inputs (AS/NZS 4755): read which demand response modes the DRED asserts. The I/O shell only;
what the modes mean is :mod:`gateway.core.drm`.

Sources (``[drm] source`` in site.toml):

* ``modbus``: the DRED's mode outputs wired to a Modbus TCP digital I/O module; DRM n is discrete input
  (or coil) ``address + n``. Read every ``poll_s``.
* ``gpio``: Linux GPIO through sysfs value files (``/sys/class/gpio/gpioN/value``, or a gpio-sysfs
  compatible path), one file per mode DRM 0..8; ``active_low`` for contacts that pull the line low.
* ``local_api``: no hardware; the local API's ``PUT /drm`` sets the modes (tests, labs).

An unreadable input keeps the last known modes (they are persisted with the other local inputs), so a
flaky I/O module neither lifts an asserted DRM 0 nor disconnects every site that cannot read it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

if TYPE_CHECKING:
    from gateway.config import DrmSettings

DRM_COUNT = 9


class DrmInputError(Exception):
    pass


class ModbusDrmInput:
    def __init__(self, s: DrmSettings) -> None:
        self.s = s
        first, last = s.address, s.address + DRM_COUNT - 1
        table = "coils" if s.table == "coils" else "discrete inputs"
        self.describe = f"DRED on Modbus {s.host}:{s.port} unit {s.unit} {table} {first}-{last}"
        self.client = AsyncModbusTcpClient(s.host, port=s.port, timeout=s.timeout_s, retries=0,
                                           reconnect_delay=0, reconnect_delay_max=0)  # fmt: skip

    async def read(self) -> frozenset[int]:
        s = self.s
        try:
            if not self.client.connected and not await self.client.connect():
                raise DrmInputError(f"{self.describe}: connection refused or no answer")
            fn = self.client.read_coils if s.table == "coils" else self.client.read_discrete_inputs
            rr = await asyncio.wait_for(fn(s.address, count=DRM_COUNT, device_id=s.unit), s.timeout_s + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            self.client.close()
            raise DrmInputError(f"{self.describe}: {exc or type(exc).__name__}") from exc
        if rr.isError():
            raise DrmInputError(f"{self.describe}: exception response {getattr(rr, 'exception_code', '?')}")
        return frozenset(m for m in range(DRM_COUNT) if bool(rr.bits[m]) != s.active_low)

    async def close(self) -> None:
        self.client.close()


class GpioDrmInput:
    def __init__(self, s: DrmSettings) -> None:
        self.files = s.value_files
        self.active_low = s.active_low
        self.describe = f"DRED on GPIO {self.files[0].parent.name}..{self.files[-1].parent.name}"

    def _read_sync(self) -> frozenset[int]:
        active = set()
        for mode, path in enumerate(self.files):
            try:
                text = path.read_text().strip()
            except OSError as exc:
                raise DrmInputError(f"DRM {mode} input {path}: {exc.strerror or exc}") from None
            if text not in ("0", "1"):
                raise DrmInputError(f"DRM {mode} input {path}: expected 0 or 1, got {text[:20]!r}")
            if (text == "1") != self.active_low:
                active.add(mode)
        return frozenset(active)

    async def read(self) -> frozenset[int]:
        return await asyncio.to_thread(self._read_sync)

    async def close(self) -> None:
        return None


def open_input(s: DrmSettings) -> ModbusDrmInput | GpioDrmInput | None:
    """The reader for ``[drm]``; None for ``local_api`` (modes come from the local API)."""
    if s.source == "modbus":
        return ModbusDrmInput(s)
    if s.source == "gpio":
        return GpioDrmInput(s)
    return None

