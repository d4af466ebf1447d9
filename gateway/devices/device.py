"""SunSpec devices over Modbus TCP or Modbus RTU (pymodbus async clients): scan, identify, measure, control,
verify.

Usage::

    dev = await DeviceConnection.open("127.0.0.1", 5020, unit_id=1)
    info = await dev.scan()                  # finds 'SunS' at 40000 (or 0, 50000), walks to 0xFFFF
    m = await dev.read_measurements()        # Measurements: w, hz, v, soc_pct, limit_pct, ...
    await dev.set_active_power_limit_pct(50, ramp_s=0)
    await dev.set_storage_power(-2000)       # battery: + discharge / - charge, W; None = device's own mode
    await dev.set_connected(False)
    await dev.close()

On RS-485 (Modbus RTU) pass ``serial=SerialLine("/dev/ttyUSB0", 9600)``: the devices on one line share a
single client and take turns, since one request at a time may be on the wire.

Both model families are supported: legacy (1, 101-103, 120-124) and DER (1, 701-704, 713, 714); meters
201-204. Every write is read back and compared register for register; a mismatch raises
:class:`DeviceVerifyError` (a device fault). Errors are mapped to :class:`DeviceError` subclasses whose
message names the device (``host:port unit N``) and what failed.

Sign conventions: inverter/battery ``w`` is + generation (battery discharging), - absorption (battery
charging), as SunSpec 701 ``W``; meter ``w`` is + import from the grid, - export (SunSpec meter models,
consumer reference frame).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from gateway.devices.sunspec import (
    BASE_ADDRESSES,
    END_MODEL_ID,
    MAX_READ,
    SUNS_MARKER,
    ModelDefinitionError,
    ModelMap,
    build_model_map,
)

LEGACY_INVERTER_MODELS = (101, 102, 103, 111, 112, 113)
METER_MODELS = (201, 202, 203, 204, 211, 212, 213, 214)
_MAX_MODELS = 200


# ------------------------------------------------------------------------------------------------ errors
class DeviceError(Exception):
    """A SunSpec device problem; the message names the device and what failed."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"device {where}: {message}")
        self.where = where


class DeviceUnreachable(DeviceError):
    """No TCP connection, or no answer within the timeout."""


class DeviceExceptionResponse(DeviceError):
    """The device answered with a Modbus exception code."""

    def __init__(self, where: str, code: int, operation: str) -> None:
        try:
            name = ExcCodes(code).name
        except ValueError:
            name = "UNKNOWN"
        super().__init__(where, f"answered Modbus exception code {code} ({name}) to {operation}")
        self.code = code


class NotSunSpecDevice(DeviceError):
    """No 'SunS' marker at any base address, or a broken model chain."""


class UnsupportedControl(DeviceError):
    """The device lacks the model a command needs."""


class DeviceVerifyError(DeviceError):
    """A control register read back differently from what was written: the device is faulty."""


# ------------------------------------------------------------------------------------------------ data
def _negative(var: Any) -> float | None:
    """A var absorption rating as 2030.5 signs it (rtgMaxVarNeg < 0), whichever sign SunSpec used."""
    return -abs(float(var)) if var is not None else None


def _magnitude(pf: Any) -> float | None:
    """A SunSpec power factor rating (signed by quadrant) as a 2030.5 displacement (0..1)."""
    return abs(float(pf)) if pf is not None else None


@dataclass(frozen=True)
class DeviceInfo:
    manufacturer: str
    model: str
    serial: str
    firmware: str
    options: str
    kind: str  # "pv" | "battery" | "meter"
    family: str  # "legacy" | "der" | "meter"
    models: tuple[int, ...]
    base_address: int
    rated_w: float | None = None  # max continuous AC W (nameplate 120 WRtg / 702 WMaxRtg)
    rated_va: float | None = None
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    capacity_wh: float | None = None
    # reactive power and power factor ratings: var injected (+, over-excited) and absorbed (-, under-excited);
    # minimum PF displacement (0..1) when injecting / absorbing (nameplate 120 VArRtgQ1/Q4, PFRtgQ1/Q4;
    # 702 VarMaxInjRtg/VarMaxAbsRtg, PFOvrExtRtg/PFUndExtRtg)
    rated_var: float | None = None
    rated_var_neg: float | None = None
    min_pf_over: float | None = None
    min_pf_under: float | None = None
    reserve_pct: float | None = None  # storage: the reserve kept (124 MinRsvPct / 802 SoCRsvMin), % of Wh

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Measurements:
    """One reading of a device. Units W, V, A, Hz, Wh, %. ``None`` = the device does not implement it."""

    read_at: float  # the connection's clock when the reading completed
    w: float | None
    va: float | None = None
    var: float | None = None
    pf: float | None = None
    hz: float | None = None
    v: float | None = None
    a: float | None = None
    w_phase: tuple[float | None, ...] = ()
    energy_import_wh: float | None = None  # meters: TotWhImp; inverters: energy absorbed
    energy_export_wh: float | None = None  # meters: TotWhExp; inverters: energy generated
    connected: bool | None = None
    available: bool | None = None  # able to connect and operate (122 PVConn/StorConn bit 1); None: unknown
    events: int | None = None  # SunSpec event bits (101-103 Evt1, 701 Alrm); None: not implemented
    state: str | None = None
    available_w: float | None = None  # PV: power available before curtailment (122 WAval)
    limit_pct: float | None = None  # active max-power limit in % of rated, None = no limit enabled
    storage_setpoint_w: float | None = None  # battery: commanded W (+ discharge), None = device's own mode
    soc_pct: float | None = None
    raw: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)


# ------------------------------------------------------------------------------------------------ RS-485
@dataclass(frozen=True)
class SerialLine:
    """A Modbus RTU line: serial device path and its settings (8 data bits)."""

    port: str
    baudrate: int = 9600
    parity: str = "N"  # N | E | O
    stopbits: int = 1

    def __str__(self) -> str:
        return f"{self.port} ({self.baudrate} 8{self.parity}{self.stopbits})"


class _Bus:
    """One serial line shared by every device on it: one client, one request at a time."""

    def __init__(self, line: SerialLine, timeout: float, retries: int) -> None:
        self.line = line
        self.client = AsyncModbusSerialClient(
            line.port,
            framer=FramerType.RTU,
            baudrate=line.baudrate,
            parity=line.parity,
            stopbits=line.stopbits,
            bytesize=8,
            timeout=timeout,
            retries=retries,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )
        self.lock = asyncio.Lock()
        self.users = 0


# (event loop, serial path) -> bus; an entry lives while a DeviceConnection on that line is open
_buses: dict[tuple[int, str], _Bus] = {}


def _bus_for(line: SerialLine, timeout: float, retries: int) -> tuple[tuple[int, str], _Bus]:
    key = (id(asyncio.get_running_loop()), line.port)
    bus = _buses.get(key)
    if bus is not None and bus.line != line:
        raise ValueError(f"{line.port} is already open as {bus.line}, not {line}")
    if bus is None:
        bus = _buses[key] = _Bus(line, timeout, retries)
    bus.users += 1
    return key, bus


# ------------------------------------------------------------------------------------------------ device
class DeviceConnection:
    """One SunSpec device (one unit ID) behind a Modbus TCP endpoint or on a Modbus RTU line."""

    def __init__(
        self,
        host: str,
        port: int,
        unit_id: int = 1,
        serial: SerialLine | None = None,
        *,
        timeout: float = 2.0,
        retries: int = 1,
        clock: Callable[[], float] = time.monotonic,
        scale_factor_max_age_s: float = 2.0,
    ) -> None:
        """TCP: ``host``, ``port``. RTU: ``serial`` (``host``/``port`` unused); needs a running event loop."""
        self.host, self.port, self.unit_id, self.serial = host, port, unit_id, serial
        self.timeout = timeout
        self.clock = clock
        self.scale_factor_max_age_s = scale_factor_max_age_s
        self.last_write_acked_at: float | None = None  # wall clock (time.time) of the last write's ack
        self._bus_key: tuple[int, str] | None = None
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if serial is None:
            self.where = f"{host}:{port} unit {unit_id}"
            self.client = AsyncModbusTcpClient(
                host, port=port, timeout=timeout, retries=retries, reconnect_delay=0, reconnect_delay_max=0
            )
            self._lock = asyncio.Lock()
        else:
            self.where = f"{serial.port} unit {unit_id}"
            self._bus_key, bus = _bus_for(serial, timeout, retries)
            self.client, self._lock = bus.client, bus.lock  # the line's lock: one request on the wire
        self.models: dict[int, list[ModelMap]] = {}
        self._info: DeviceInfo | None = None
        self._model_regs: dict[int, tuple[float, list[int]]] = {}  # model -> (clock, registers) last read

    @classmethod
    async def open(
        cls, host: str, port: int, unit_id: int = 1, serial: SerialLine | None = None, **kwargs: Any
    ) -> DeviceConnection:
        dev = cls(host, port, unit_id, serial, **kwargs)
        try:
            await dev._ensure_connected()
        except BaseException:
            await dev.close()
            raise
        return dev

    async def close(self) -> None:
        if self._bus_key is None:
            self.client.close()
            return
        key, self._bus_key = self._bus_key, None
        bus = _buses.get(key)
        if bus is not None:
            bus.users -= 1
            if bus.users <= 0:  # the last device on the line closes the port
                bus.client.close()
                del _buses[key]

    async def __aenter__(self) -> DeviceConnection:
        await self._ensure_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def info(self) -> DeviceInfo:
        if self._info is None:
            raise DeviceError(self.where, "not scanned yet (await scan() first)")
        return self._info

    # -------------------------------------------------------------------------------- Modbus I/O
    async def _ensure_connected(self) -> None:
        if self.client.connected:
            return
        try:
            ok = await asyncio.wait_for(self.client.connect(), self.timeout + 1.0)
        except (TimeoutError, OSError, ModbusException) as exc:
            raise DeviceUnreachable(self.where, f"cannot connect: {exc}") from exc
        if not ok:
            what = "cannot open the serial port (missing, or in use)" if self.serial else "connection refused"
            raise DeviceUnreachable(self.where, f"{what} or no answer")

    async def _call(self, operation: str, fn: Callable[[], Any]) -> Any:
        await self._ensure_connected()
        try:
            rr = await asyncio.wait_for(fn(), self.timeout * 2 + 1.0)
        except TimeoutError as exc:
            self.client.close()
            raise DeviceUnreachable(
                self.where, f"did not answer {operation} within {self.timeout:g} s"
            ) from exc
        except (ModbusException, OSError) as exc:
            self.client.close()
            raise DeviceUnreachable(self.where, f"did not answer {operation}: {exc}") from exc
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise DeviceExceptionResponse(self.where, int(code), operation)
        return rr

    async def read_registers(self, address: int, count: int) -> list[int]:
        out: list[int] = []
        async with self._lock:
            while count > 0:
                n = min(count, MAX_READ)
                addr = address
                rr = await self._call(
                    f"read of {n} registers at {addr}",
                    lambda addr=addr, n=n: self.client.read_holding_registers(
                        addr, count=n, device_id=self.unit_id
                    ),
                )
                if len(rr.registers) < n:
                    raise DeviceError(self.where, f"short answer reading {n} registers at {addr}")
                out.extend(rr.registers[:n])
                address += n
                count -= n
        return out

    async def write_registers(self, address: int, values: list[int], what: str) -> None:
        async with self._lock:
            await self._call(
                f"write of {what} at {address}",
                lambda: self.client.write_registers(address, values, device_id=self.unit_id),
            )
            self.last_write_acked_at = time.time()

    # -------------------------------------------------------------------------------- scan
    async def scan(self) -> DeviceInfo:
        """Find the SunSpec map, walk the model chain, read common model and nameplate."""
        base = None
        for candidate in BASE_ADDRESSES:
            try:
                regs = await self.read_registers(candidate, 2)
            except DeviceExceptionResponse:
                continue
            if tuple(regs) == SUNS_MARKER:
                base = candidate
                break
        if base is None:
            tried = ", ".join(str(a) for a in BASE_ADDRESSES)
            raise NotSunSpecDevice(self.where, f"no 'SunS' marker at {tried}")
        models: dict[int, list[ModelMap]] = {}
        addr = base + 2
        for _ in range(_MAX_MODELS):
            model_id, length = await self.read_registers(addr, 2)
            if model_id == END_MODEL_ID:
                break
            regs = await self.read_registers(addr, 2 + length) if length else [model_id, length]
            try:
                mm = build_model_map(model_id, addr, length, regs)
            except ModelDefinitionError as exc:
                raise NotSunSpecDevice(self.where, str(exc)) from exc
            except Exception:  # a model pysunspec2 has no definition for: keep its place, no points
                mm = ModelMap(model_id, addr, length, "unknown model")
            models.setdefault(model_id, []).append(mm)
            addr = mm.end
            if addr + 2 > 0x10000:
                raise NotSunSpecDevice(self.where, "model chain runs past the end of the register space")
        else:
            raise NotSunSpecDevice(self.where, f"no end model after {_MAX_MODELS} models")
        if 1 not in models:
            raise NotSunSpecDevice(self.where, "no common model (1)")
        self.models = models
        self._info = await self._identify(base)
        return self._info

    def has(self, model_id: int) -> bool:
        return model_id in self.models

    def model(self, model_id: int) -> ModelMap:
        try:
            return self.models[model_id][0]
        except KeyError:
            raise UnsupportedControl(self.where, f"has no SunSpec model {model_id}") from None

    async def read_model(self, model_id: int) -> tuple[ModelMap, list[int]]:
        mm = self.model(model_id)
        regs = await self.read_registers(mm.address, 2 + mm.length)
        self._model_regs[model_id] = (self.clock(), regs)
        return mm, regs

    def _recent_model_regs(self, model_id: int) -> list[int] | None:
        """The model's registers from a read at most ``scale_factor_max_age_s`` ago (None if none)."""
        cached = self._model_regs.get(model_id)
        if cached is None or self.clock() - cached[0] > self.scale_factor_max_age_s:
            return None
        return cached[1]

    async def read_values(self, model_id: int) -> dict[str, Any]:
        mm, regs = await self.read_model(model_id)
        return mm.decode_all(regs)

    async def _identify(self, base: int) -> DeviceInfo:
        common = await self.read_values(1)
        ids = tuple(mid for mid in self.models)
        kind = "pv"
        if any(m in self.models for m in METER_MODELS):
            kind = "meter"
        elif any(m in self.models for m in (124, 713, 714, 802)):
            kind = "battery"
        family = "meter" if kind == "meter" else ("der" if 701 in self.models else "legacy")
        ratings: dict[str, float | None] = {}
        if 120 in self.models:
            n = await self.read_values(120)
            if n.get("DERTyp") == 82:
                kind = "battery"
            ratings = dict(
                rated_w=n.get("WRtg"),
                rated_va=n.get("VARtg"),
                max_charge_w=n.get("MaxChaRte"),
                max_discharge_w=n.get("MaxDisChaRte"),
                capacity_wh=n.get("WHRtg"),
                rated_var=n.get("VArRtgQ1"),
                rated_var_neg=_negative(n.get("VArRtgQ4")),
                min_pf_over=_magnitude(n.get("PFRtgQ1")),
                min_pf_under=_magnitude(n.get("PFRtgQ4")),
            )
            if 124 in self.models:
                ratings["reserve_pct"] = (await self.read_values(124)).get("MinRsvPct")
        elif 702 in self.models:
            n = await self.read_values(702)
            ratings = dict(
                rated_w=n.get("WMaxRtg"),
                rated_va=n.get("VAMaxRtg"),
                max_charge_w=n.get("WChaRteMaxRtg"),
                max_discharge_w=n.get("WDisChaRteMaxRtg"),
                rated_var=n.get("VarMaxInjRtg"),
                rated_var_neg=_negative(n.get("VarMaxAbsRtg")),
                min_pf_over=_magnitude(n.get("PFOvrExtRtg")),
                min_pf_under=_magnitude(n.get("PFUndExtRtg")),
            )
            if 713 in self.models:
                ratings["capacity_wh"] = (await self.read_values(713)).get("WHRtg")
            if 802 in self.models:
                ratings["reserve_pct"] = (await self.read_values(802)).get("SoCRsvMin")
        if ratings.get("rated_w") is None and 121 in self.models:
            ratings["rated_w"] = (await self.read_values(121)).get("WMax")
        if kind != "battery":
            ratings.update(max_charge_w=None, max_discharge_w=None, capacity_wh=None, reserve_pct=None)
        return DeviceInfo(
            manufacturer=str(common.get("Mn") or ""),
            model=str(common.get("Md") or ""),
            serial=str(common.get("SN") or ""),
            firmware=str(common.get("Vr") or ""),
            options=str(common.get("Opt") or ""),
            kind=kind,
            family=family,
            models=ids,
            base_address=base,
            **{k: (float(v) if v is not None else None) for k, v in ratings.items()},
        )

    # -------------------------------------------------------------------------------- measurements
    async def read_measurements(self) -> Measurements:
        info = self.info
        raw: dict[int, dict[str, Any]] = {}
        if info.kind == "meter":
            mid = next(m for m in METER_MODELS if m in self.models)
            v = raw[mid] = await self.read_values(mid)
            return Measurements(
                read_at=self.clock(), w=v.get("W"), va=v.get("VA"), var=v.get("VAR"), pf=v.get("PF"),
                hz=v.get("Hz"), v=v.get("PhV"), a=v.get("A"),
                w_phase=tuple(v.get(f"Wph{p}") for p in "ABC"),
                energy_import_wh=v.get("TotWhImp"), energy_export_wh=v.get("TotWhExp"), raw=raw,
            )  # fmt: skip
        if info.family == "der":
            return await self._read_der(raw)
        return await self._read_legacy(raw)

    async def _read_legacy(self, raw: dict[int, dict[str, Any]]) -> Measurements:
        mid = next((m for m in LEGACY_INVERTER_MODELS if m in self.models), None)
        if mid is None:
            raise UnsupportedControl(self.where, "has no inverter measurement model (101-103)")
        v = raw[mid] = await self.read_values(mid)
        st_symbols = self.model(mid).points["St"].symbols or {}
        state = st_symbols.get(v.get("St")) if v.get("St") is not None else None
        connected = None
        can_connect = None
        limit_pct = None
        available = None
        soc = None
        storage_w = None
        if 122 in self.models:
            s = raw[122] = await self.read_values(122)
            bits = s.get("StorConn") if self.info.kind == "battery" else s.get("PVConn")
            connected = bool(bits & 1) if bits is not None else None
            can_connect = bool(bits & 2) if bits is not None else None
            available = s.get("WAval") if self.info.kind == "pv" else None
        if 123 in self.models:
            c = raw[123] = await self.read_values(123)
            if c.get("WMaxLim_Ena") == 1:
                limit_pct = c.get("WMaxLimPct")
            if connected is None and c.get("Conn") is not None:
                connected = c.get("Conn") == 1
        if 124 in self.models:
            b = raw[124] = await self.read_values(124)
            soc = b.get("ChaState")
            storage_w = self._storage_setpoint_124(b)
        return Measurements(
            read_at=self.clock(), w=v.get("W"), va=v.get("VA"), var=v.get("VAr"), pf=v.get("PF"),
            hz=v.get("Hz"), v=v.get("PhVphA"), a=v.get("A"), energy_export_wh=v.get("WH"),
            connected=connected, available=can_connect, state=state, available_w=available,
            limit_pct=limit_pct, storage_setpoint_w=storage_w, soc_pct=soc, events=v.get("Evt1"), raw=raw,
        )  # fmt: skip

    async def _read_der(self, raw: dict[int, dict[str, Any]]) -> Measurements:
        v = raw[701] = await self.read_values(701)
        inv_symbols = self.model(701).points["InvSt"].symbols or {}
        state = inv_symbols.get(v.get("InvSt")) if v.get("InvSt") is not None else None
        connected = v.get("ConnSt") == 1 if v.get("ConnSt") is not None else None
        limit_pct = None
        storage_w = None
        soc = None
        if 704 in self.models:
            c = raw[704] = await self.read_values(704)
            if c.get("WMaxLimPctEna") == 1:
                limit_pct = c.get("WMaxLimPct")
            if self.info.kind == "battery" and c.get("WSetEna") == 1:
                if c.get("WSetMod") == 0:
                    pct = c.get("WSetPct")
                    storage_w = None if pct is None else pct / 100.0 * (self.info.rated_w or 0.0)
                else:
                    storage_w = c.get("WSet")
        if 713 in self.models:
            s = raw[713] = await self.read_values(713)
            soc = s.get("SoC")
        return Measurements(
            read_at=self.clock(), w=v.get("W"), va=v.get("VA"), var=v.get("Var"), pf=v.get("PF"),
            hz=v.get("Hz"), v=v.get("LNV"), a=v.get("A"), energy_export_wh=v.get("TotWhInj"),
            energy_import_wh=v.get("TotWhAbs"), connected=connected, state=state, limit_pct=limit_pct,
            storage_setpoint_w=storage_w, soc_pct=soc, events=v.get("Alrm"), raw=raw,
        )  # fmt: skip

    # -------------------------------------------------------------------------------- writes
    async def write_points(
        self, model_id: int, values: dict[str, Any], verify: bool = True, round_down: tuple[str, ...] = ()
    ) -> None:
        """Write points (engineering values) in the given order; adjacent points go in one request.

        Values are rounded to the register resolution (``round_down`` names points rounded down, e.g. a
        power limit, so the device never gets more than asked). Each request is read back and compared
        register for register (``verify``).

        The scale factors come from the model's registers as last read, if that read is at most
        ``scale_factor_max_age_s`` old (the closed loop reads every model it writes each period), so the
        write is the first request; the read-back then also covers those scale-factor registers, and if
        one has changed meanwhile the points are written again with the new one. Without a recent read
        (or with ``verify`` off) the model is read first.
        """
        mm = self.model(model_id)
        regs = self._recent_model_regs(model_id) if verify else None
        cached = regs is not None
        if regs is None:
            mm, regs = await self.read_model(model_id)
        runs: list[tuple[int, list[int], list[str]]] = []  # (offset, registers, names)
        for name, value in values.items():
            p = mm.point(name)
            if p.access != "RW":
                raise UnsupportedControl(self.where, f"{model_id}.{name} is read-only")
            encoded = mm.encode(regs, name, value, floor=name in round_down)
            if runs and runs[-1][0] + len(runs[-1][1]) == p.offset:
                runs[-1][1].extend(encoded)
                runs[-1][2].append(name)
            else:
                runs.append((p.offset, list(encoded), [name]))
        for offset, data, names in runs:
            what = f"{model_id}.{'+'.join(names)}"
            await self.write_registers(mm.address + offset, data, what)
            if not verify:
                continue
            sfs = {mm.point(n).sf for n in names} - {None} if cached else set()
            sf_offsets = {mm.point(sf).offset for sf in sfs if sf}
            lo = min((offset, *sf_offsets))
            hi = max((offset + len(data), *(o + 1 for o in sf_offsets)))
            span = await self.read_registers(mm.address + lo, hi - lo)
            back = span[offset - lo : offset - lo + len(data)]
            if any(span[o - lo] != regs[o] for o in sf_offsets):  # a scale factor changed: write again
                self._model_regs.pop(model_id, None)
                await self.write_points(model_id, values, verify, round_down)
                return
            if back != data:
                raise DeviceVerifyError(
                    self.where,
                    f"wrote {what} = {data} but read back {back}: the device did not take the setting",
                )
            regs[lo : hi] = span

    async def set_active_power_limit_pct(
        self, pct: float | None, ramp_s: float | None = None, revert_s: float | None = None
    ) -> None:
        """Limit AC output to `pct` % of rated W (None removes the limit).

        ``ramp_s``: time to move from the present limit to the new one (0 = step; None = the device's
        setting). Legacy 123 takes it as WMaxLimPct_RmpTms; DER 704 as the ramp rate WRmp (%WMax/s).
        ``revert_s``: the device drops the limit by itself after this long (0/None = never).
        """
        if pct is not None and (math.isnan(pct) or not 0 <= pct <= 100):
            raise ValueError(f"pct must be within 0..100, got {pct}")
        if ramp_s is not None and not 0 <= ramp_s <= 65534:
            raise ValueError(f"ramp_s must be within 0..65534, got {ramp_s}")
        if 123 in self.models:
            values: dict[str, Any] = {
                "WMaxLimPct": 100.0 if pct is None else pct,
                "WMaxLimPct_WinTms": 0,
                "WMaxLimPct_RvrtTms": round(revert_s or 0),
            }
            if ramp_s is not None:
                values["WMaxLimPct_RmpTms"] = round(ramp_s)
            values["WMaxLim_Ena"] = 0 if pct is None else 1
            await self.write_points(123, values, round_down=("WMaxLimPct",))
        elif 704 in self.models:
            if ramp_s is not None:
                await self.write_points(
                    704, {"WRmp": 0 if ramp_s <= 0 else min(math.ceil(100 / ramp_s), 65534)}
                )
            if revert_s:
                await self.write_points(704, {"WMaxLimPctRvrtTms": round(revert_s)})
            await self.write_points(
                704,
                {"WMaxLimPctEna": 0 if pct is None else 1,
                 "WMaxLimPct": 100.0 if pct is None else pct},
                round_down=("WMaxLimPct",),
            )  # fmt: skip
        else:
            raise UnsupportedControl(self.where, "has no immediate-controls model (123 or 704)")

    async def set_connected(self, connected: bool) -> None:
        """Connect to / disconnect from the grid (legacy 123 Conn, DER 703 ES 'permit enter service')."""
        if 123 in self.models:
            await self.write_points(123, {"Conn_WinTms": 0, "Conn_RvrtTms": 0, "Conn": 1 if connected else 0})
        elif 703 in self.models:
            await self.write_points(703, {"ES": 1 if connected else 0})
        else:
            raise UnsupportedControl(self.where, "has no connect control (123 Conn or 703 ES)")

    async def set_storage_power(self, w: float | None) -> None:
        """Hold the battery at `w` watts: + discharge, - charge (the 701 ``W`` convention).

        None hands control back to the device's own mode (e.g. self-consumption). Legacy 124: StorCtl_Mod
        CHARGE|DISCHARGE with OutWRte (% of max discharge rate) and InWRte (% of WChaMax) set so the
        allowed window is exactly [w, w] (a negative rate forces the opposite flow). DER 704: WSet (W).
        """
        info = self.info
        if info.kind != "battery":
            raise UnsupportedControl(self.where, f"is a {info.kind} device, not a battery")
        if w is not None and math.isnan(w):
            raise ValueError("w must be a number")
        if 124 in self.models:
            b = await self.read_values(124)
            cha_max = b.get("WChaMax") or info.max_charge_w
            dis_max = info.max_discharge_w or cha_max
            if not cha_max or not dis_max:
                raise UnsupportedControl(self.where, "does not report its charge/discharge ratings")
            if w is None:
                await self.write_points(124, {"StorCtl_Mod": 0})
                return
            w = min(max(w, -cha_max), dis_max)
            await self.write_points(
                124,
                {"OutWRte": w / dis_max * 100.0, "InWRte": -w / cha_max * 100.0, "InOutWRte_WinTms": 0,
                 "InOutWRte_RvrtTms": 0, "InOutWRte_RmpTms": 0},
            )  # fmt: skip
            await self.write_points(124, {"StorCtl_Mod": 0b11})
        elif 704 in self.models:
            if w is None:
                await self.write_points(704, {"WSetEna": 0})
                return
            lo = -(info.max_charge_w or info.rated_w or 0.0)
            hi = info.max_discharge_w or info.rated_w or 0.0
            await self.write_points(704, {"WSetEna": 1, "WSetMod": 1, "WSet": min(max(w, lo), hi)})
        else:
            raise UnsupportedControl(self.where, "has no storage control (124 or 704 WSet)")

    def _storage_setpoint_124(self, b: dict[str, Any]) -> float | None:
        """The fixed power a 124 window [lo, hi] holds the battery at, if lo == hi (else None)."""
        mode = b.get("StorCtl_Mod")
        cha_max = b.get("WChaMax") or self.info.max_charge_w
        dis_max = self.info.max_discharge_w or cha_max
        if mode is None or mode & 0b11 != 0b11 or not cha_max or not dis_max:
            return None
        hi = (b.get("OutWRte") or 0.0) / 100.0 * dis_max
        lo = -(b.get("InWRte") or 0.0) / 100.0 * cha_max
        return hi if abs(hi - lo) <= max(1.0, 0.002 * dis_max) else None
