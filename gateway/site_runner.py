"""Async runner for closed-loop site control: read meter and devices, step the pure loop, write changes.

Every period (default 1 s of the runner's clock) it reads the site meter and every PV/battery device
concurrently, runs :class:`gateway.control_loop.SiteControlLoop`, and writes only the setpoints that
changed (PV WMaxLimPct with ramp 0 — the loop does the ramping —, battery W, connect). Each write is
verified by read-back in :class:`gateway.devices.DeviceConnection`; a failed or mismatched write, a device
that does not answer, and the loop's own verification (device not following its command, meter stale or
frozen) all end up in :attr:`SiteRunner.faults` and in the returned :class:`StepReport`.

``clock`` / ``time_scale`` let it run against an accelerated simulator: pass the simulator's clock
(seconds of simulated time) and its speed; the runner then sleeps period / time_scale wall seconds.

Usage::

    runner = await SiteRunner.connect(meter=("127.0.0.1", 5020, 3),
                                      pvs={"pv": ("127.0.0.1", 5020, 1)},
                                      batteries={"battery": ("127.0.0.1", 5020, 2)})
    runner.set_limits(SiteLimits(export_w=1500))      # or SiteLimits.from_effective(decision.limits)
    runner.start()
    ...
    await runner.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fieldbus import load_map
from gateway.control_loop import (
    BatteryState,
    LoadState,
    LoopConfig,
    MeterSample,
    PvState,
    Setpoints,
    SiteControlLoop,
    SiteLimits,
)
from gateway.devices import DeviceConnection, DeviceError, Measurements
from gateway.devices.device import SerialLine
from gateway.devices.loads import LoadConnection, LoadReading
from gateway.observability import event

log = logging.getLogger(__name__)

# host, port, unit id [, SerialLine for a device on Modbus RTU]
Address = tuple[str, int, int] | tuple[str, int, int, SerialLine | None]
_UNKNOWN = object()


@dataclass
class ManagedDevice:
    name: str
    conn: DeviceConnection
    last: Measurements | None = None
    written_limit: object = _UNKNOWN  # pct or None (no limit)
    written_w: object = _UNKNOWN  # battery W
    written_connect: object = _UNKNOWN
    writes: int = 0


@dataclass
class ManagedLoad:
    name: str
    conn: LoadConnection
    last: LoadReading | None = None
    written: object = _UNKNOWN  # the control register value last written
    writes: int = 0


@dataclass
class StepReport:
    at: float
    setpoints: Setpoints
    meter: MeterSample | None
    writes: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    limits: SiteLimits | None = None  # the limits this step acted on
    read_devices: bool = True  # False: it reused the previous readings (see SiteRunner.step)
    acked_at: float | None = None  # wall clock (time.time) when the last setpoint write was acknowledged


class SiteRunner:
    def __init__(
        self,
        meter: DeviceConnection,
        pvs: dict[str, DeviceConnection],
        batteries: dict[str, DeviceConnection],
        *,
        limits: SiteLimits | None = None,
        config: LoopConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_scale: float = 1.0,
        pct_deadband: float = 0.1,
        w_deadband: float = 20.0,
        loads: dict[str, LoadConnection] | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.meter = ManagedDevice("meter", meter)
        self.pvs = [ManagedDevice(n, c) for n, c in pvs.items()]
        self.batteries = [ManagedDevice(n, c) for n, c in batteries.items()]
        self.loads = [ManagedLoad(n, c) for n, c in (loads or {}).items()]  # in priority order
        self.loop = SiteControlLoop(config or LoopConfig())
        self.limits = limits or SiteLimits()
        self.clock = clock
        self.time_scale = time_scale
        self.pct_deadband = pct_deadband
        self.w_deadband = w_deadband
        self.meter_sample: MeterSample | None = None
        self.last_report: StepReport | None = None
        self.faults: list[str] = []
        self.modbus_errors: dict[str, int] = {}  # device name -> failed reads/writes (metrics)
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        meter: Address,
        pvs: dict[str, Address],
        batteries: dict[str, Address] | None = None,
        *,
        loads: dict[str, tuple[str, str, int, int]] | None = None,
        modbus_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        **kwargs,
    ) -> SiteRunner:
        """Open and scan every device (raises DeviceError naming the one that failed). ``loads``: name ->
        (kind, host, port, unit) of each controllable load, in the order they are served."""
        opened: list[DeviceConnection | LoadConnection] = []

        async def one(addr: Address) -> DeviceConnection:
            dev = await DeviceConnection.open(*addr, timeout=modbus_timeout_s, clock=clock)
            opened.append(dev)
            await dev.scan()
            return dev

        try:
            m = await one(meter)
            p = {n: await one(a) for n, a in pvs.items()}
            b = {n: await one(a) for n, a in (batteries or {}).items()}
            ld = {}
            for n, (kind, host, port, unit) in (loads or {}).items():
                ld[n] = LoadConnection(n, kind, host, port, unit, timeout=modbus_timeout_s, clock=clock)
                opened.append(ld[n])
                await ld[n].open()
        except BaseException:
            for dev in opened:
                await dev.close()
            raise
        return cls(m, p, b, clock=clock, loads=ld, **kwargs)

    async def close(self) -> None:
        await self.stop()
        for d in (self.meter, *self.pvs, *self.batteries, *self.loads):
            await d.conn.close()

    def set_limits(self, limits: SiteLimits) -> None:
        problems = limits.errors()
        if problems:
            raise ValueError("; ".join(problems))
        self.limits = limits

    # ---------------------------------------------------------------------------------- one step
    async def _read(self, d: ManagedDevice, faults: list[str]) -> None:
        try:
            d.last = await d.conn.read_measurements()
        except DeviceError as exc:
            self._error(d, faults, exc)

    async def _read_load(self, d: ManagedLoad, faults: list[str]) -> None:
        try:
            d.last = await d.conn.read()
        except DeviceError as exc:
            self.modbus_errors[d.name] = self.modbus_errors.get(d.name, 0) + 1
            faults.append(f"{d.name}: {exc}")

    def readings_age(self) -> float | None:
        """Age of the oldest device reading (None if some device has none)."""
        devices = (self.meter, *self.pvs, *self.batteries)
        if any(d.last is None for d in devices):
            return None
        return self.clock() - min(d.last.read_at for d in devices)  # type: ignore[union-attr]

    async def step(self, reuse_readings_s: float | None = None) -> StepReport:
        """Read every device, step the pure loop, write the setpoints that changed.

        ``reuse_readings_s``: if every device was read at most this long ago and the previous step had no
        device fault, skip the reads and act on those readings — for a limit change, so the new limit's
        write is the first request. The loop's checks (meter age, ramps, verification) apply as usual; the
        next regular step reads again and corrects.
        """
        faults: list[str] = []
        age = self.readings_age() if reuse_readings_s is not None else None
        read = age is None or age > reuse_readings_s or bool(self.faults)  # type: ignore[operator]
        if read:
            await asyncio.gather(
                *(self._read(d, faults) for d in (self.meter, *self.pvs, *self.batteries)),
                *(self._read_load(d, faults) for d in self.loads),
            )
        now = self.clock()
        m = self.meter.last
        if (
            m is not None
            and m.w is not None
            and (self.meter_sample is None or m.read_at > self.meter_sample.t)
        ):
            self.meter_sample = MeterSample(w=float(m.w), t=m.read_at)
        pv_states = [self._pv_state(d) for d in self.pvs if d.last is not None]
        bat_states = [self._bat_state(d) for d in self.batteries if d.last is not None]
        load_states = [self._load_state(d) for d in self.loads if d.last is not None]
        limits = self.limits
        sp = self.loop.step(now, limits, self.meter_sample, pv_states, bat_states, load_states)
        writes: list[str] = []
        acks: list[float] = []
        await asyncio.gather(
            *(self._write_pv(d, sp, writes, faults, acks) for d in self.pvs if d.name in sp.pv_limit_pct),
            *(
                self._write_battery(d, sp, writes, faults, acks)
                for d in self.batteries
                if d.name in sp.battery_w
            ),
            *(self._write_load(d, sp, writes, faults) for d in self.loads if d.name in sp.load_allow_w),
        )
        faults.extend(sp.faults)
        report = StepReport(
            at=now, setpoints=sp, meter=self.meter_sample, writes=writes, faults=faults, limits=limits,
            read_devices=read, acked_at=max(acks) if acks else None,
        )  # fmt: skip
        for f in faults:
            if f not in self.faults:
                event(log, logging.WARNING, "device_fault", f"site control: {f}", fault=f)
        if self.faults and not faults:
            event(log, logging.INFO, "device_ok", "site control: every device fault cleared")
        self.faults = faults
        self.last_report = report
        return report

    def _error(self, d: ManagedDevice, faults: list[str], exc: DeviceError) -> None:
        self.modbus_errors[d.name] = self.modbus_errors.get(d.name, 0) + 1
        faults.append(f"{d.name}: {exc}")

    @staticmethod
    def _pv_state(d: ManagedDevice) -> PvState:
        m, info = d.last, d.conn.info
        assert m is not None
        return PvState(d.name, info.rated_w or 0.0, float(m.w or 0.0), connected=m.connected is not False)

    @staticmethod
    def _bat_state(d: ManagedDevice) -> BatteryState:
        m, info = d.last, d.conn.info
        assert m is not None
        rated = info.rated_w or 0.0
        return BatteryState(
            d.name,
            max_charge_w=info.max_charge_w or rated,
            max_discharge_w=info.max_discharge_w or rated,
            output_w=float(m.w or 0.0),
            soc_pct=m.soc_pct,
            connected=m.connected is not False,
        )

    @staticmethod
    def _load_state(d: ManagedLoad) -> LoadState:
        m = d.last
        assert m is not None
        min_w = load_map.EVSE_MIN_A * load_map.LINE_V if d.conn.is_evse else 0.0
        return LoadState(d.name, d.conn.kind, m.rated_w, m.w, min_w)

    async def _write_load(self, d: ManagedLoad, sp: Setpoints, writes: list[str], faults: list[str]) -> None:
        value = d.conn.control_value(sp.load_allow_w[d.name])
        if d.written is _UNKNOWN and d.last is not None:
            d.written = d.conn.control_value(d.last.allowed_w)
        if value == d.written:
            return
        try:
            d.written = _UNKNOWN
            d.written = await d.conn.allow(sp.load_allow_w[d.name])
            d.writes += 1
            what = f"{value / 10:g} A" if d.conn.is_evse else ("on" if value else "off")
            writes.append(f"{d.name}: {what}")
        except DeviceError as exc:
            self.modbus_errors[d.name] = self.modbus_errors.get(d.name, 0) + 1
            faults.append(f"{d.name}: {exc}")

    async def _write_connect(self, d: ManagedDevice, sp: Setpoints, writes: list[str]) -> None:
        known = (
            d.written_connect if d.written_connect is not _UNKNOWN else (d.last.connected if d.last else None)
        )
        own = self.limits.device(d.name)  # its own DER's opModConnect / opModEnergize
        connect = sp.connect and (own is None or own.connect)
        if known != connect:
            await d.conn.set_connected(connect)
            d.written_connect = connect
            writes.append(f"{d.name}: connect={connect}")

    async def _write_pv(
        self, d: ManagedDevice, sp: Setpoints, writes: list[str], faults: list[str], acks: list[float]
    ) -> None:
        pct = sp.pv_limit_pct[d.name]
        target = None if pct >= 100.0 else pct
        try:
            if not sp.connect:
                target = 0.0
            prev = d.written_limit
            if prev is _UNKNOWN:
                prev = d.last.limit_pct if d.last is not None else _UNKNOWN
            changed = (
                prev is _UNKNOWN
                or (prev is None) != (target is None)
                or (target is not None and abs(float(prev) - target) >= self.pct_deadband)  # type: ignore[arg-type]
            )
            if changed:
                d.written_limit = _UNKNOWN
                await d.conn.set_active_power_limit_pct(target, ramp_s=0)
                d.written_limit = target
                d.writes += 1
                if d.conn.last_write_acked_at is not None:
                    acks.append(d.conn.last_write_acked_at)
                writes.append(f"{d.name}: limit={'none' if target is None else f'{target:.1f}%'}")
            await self._write_connect(d, sp, writes)
        except DeviceError as exc:
            d.written_connect = _UNKNOWN
            self._error(d, faults, exc)

    async def _write_battery(
        self, d: ManagedDevice, sp: Setpoints, writes: list[str], faults: list[str], acks: list[float]
    ) -> None:
        w = sp.battery_w[d.name]
        try:
            prev = d.written_w
            if prev is _UNKNOWN and d.last is not None and d.last.storage_setpoint_w is not None:
                prev = d.last.storage_setpoint_w
            if prev is _UNKNOWN or abs(float(prev) - w) >= self.w_deadband:  # type: ignore[arg-type]
                d.written_w = _UNKNOWN
                await d.conn.set_storage_power(w)
                d.written_w = w
                d.writes += 1
                if d.conn.last_write_acked_at is not None:
                    acks.append(d.conn.last_write_acked_at)
                writes.append(f"{d.name}: power={w:.0f} W")
            await self._write_connect(d, sp, writes)
        except DeviceError as exc:
            d.written_connect = _UNKNOWN
            self._error(d, faults, exc)

    # ---------------------------------------------------------------------------------- running
    async def run(self) -> None:
        period = self.loop.config.period_s
        next_at = self.clock()
        while not self._stop.is_set():
            try:
                await self.step()
            except Exception:  # never let one bad step kill site control
                log.exception("site control step failed")
            next_at += period
            now = self.clock()
            if next_at < now:  # overran: skip missed periods rather than bursting
                next_at = now
            try:
                # asyncio.timeout rather than wait_for, which can swallow a cancellation on Python 3.11.
                async with asyncio.timeout((next_at - now) / self.time_scale):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self.run(), name="site-control")
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
