"""A null-modem cable in software: two pseudo-terminals whose bytes are copied to each other.

A lab without RS-485 hardware serves the simulated devices' Modbus RTU on one end (``device_end``) and points
the gateway's ``serial_port`` at the other (``gateway_end``). Both are ordinary tty paths, so pyserial and
pymodbus open them exactly as they would /dev/ttyUSB0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty


class PtyLink:
    """Two linked ptys, relayed by the running event loop between :meth:`start` and :meth:`close`."""

    def __init__(self) -> None:
        self._masters: list[int] = []
        self._slaves: list[int] = []
        paths: list[str] = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(master)
            tty.setraw(slave)
            self._masters.append(master)
            self._slaves.append(slave)  # held open so the far end never sees a hang-up between opens
            paths.append(os.ttyname(slave))
        self.device_end, self.gateway_end = paths
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> PtyLink:
        self._loop = asyncio.get_running_loop()
        a, b = self._masters
        self._loop.add_reader(a, self._pump, a, b)
        self._loop.add_reader(b, self._pump, b, a)
        return self

    @staticmethod
    def _pump(source: int, sink: int) -> None:
        try:
            data = os.read(source, 65536)
        except OSError:  # the other side closed its end; it may open again
            return
        with contextlib.suppress(OSError):
            os.write(sink, data)

    def close(self) -> None:
        if self._loop is not None:
            for fd in self._masters:
                self._loop.remove_reader(fd)
            self._loop = None
        for fd in self._masters + self._slaves:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._masters, self._slaves = [], []
