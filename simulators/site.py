"""A simulated site: physics + SunSpec devices served by pymodbus, faults, fleets, runtime control.

In-process API (what the demo and the gateway/commissioning tests use)::

    site = SimulatedSite(default_site_config(speed=20))
    await site.start()
    for ep in site.endpoints:  # Endpoint(name, kind, host, port, unit_id, family, models)
        ...
    site.meter_reading()["w"]      # W at the connection point, + import / - export
    site.inverter_output_w("pv")   # AC W, + generation
    site.battery_soc("battery")    # percent
    site.set_fault("meter", "frozen")
    await site.stop()

Runtime control for other processes: :func:`control_app` serves a small JSON API on 127.0.0.1
(see simulators/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from .config import LOAD_KINDS, ConfigError, DeviceConfig, ProfileConfig, SiteConfig
from .devices import FAULTS, Fault, SunSpecDevice
from .loads import LoadDevice
from .physics import BatteryParams, ControllableLoad, InverterParams, Profile, SitePhysics

log = logging.getLogger(__name__)


class SimClock:
    """Simulated time (Unix seconds) running `speed` times faster than the wall clock."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ConfigError("speed", "must be > 0")
        self.speed = speed
        self._wall0 = time.monotonic()
        self._sim0 = time.time() if start is None else start

    def now(self) -> float:
        return self._sim0 + (time.monotonic() - self._wall0) * self.speed

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ConfigError("speed", "must be > 0")
        self._sim0, self._wall0, self.speed = self.now(), time.monotonic(), speed

    def jump(self, seconds: float) -> None:
        """Move simulated time forward instantly (physics integrates over the gap on next access)."""
        self._sim0 += seconds


@dataclass(frozen=True)
class Endpoint:
    name: str
    kind: str  # pv | battery | meter
    host: str
    port: int
    unit_id: int
    family: str  # legacy | der (meters report the family of the site config, models 20x either way)
    models: tuple[int, ...]


def _profile(p: ProfileConfig, base_dir: Any) -> Profile:
    if p.kind == "constant":
        return Profile.constant(p.peak_w)
    if p.kind == "clear_sky":
        return Profile.clear_sky(p.peak_w, p.sunrise_h, p.sunset_h)
    if p.kind == "household":
        return Profile.household(p.base_w, p.peak_w)
    from pathlib import Path

    path = Path(p.csv or "")
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return Profile.from_csv_text(path.read_text(), str(path))


class _ModbusEndpoint:
    """One listening Modbus TCP server hosting one or more devices (unit IDs)."""

    def __init__(self, host: str, port: int, devices: list[SunSpecDevice]) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.devices = devices
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        server = ModbusTcpServer([d.sim_device() for d in self.devices], address=(self.host, self.port))
        await server.serve_forever(background=True)
        if not server.transport:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.server = server

    async def stop(self) -> None:
        """Close the listener and every open connection (clients see resets / refusals)."""
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    @property
    def online(self) -> bool:
        return self.server is not None


class SimulatedSite:
    """One site: physics, its SunSpec devices and their Modbus TCP endpoints."""

    def __init__(self, config: SiteConfig, clock: SimClock | None = None) -> None:
        self.config = config.validate()
        start = datetime.fromisoformat(config.start).timestamp() if config.start else None
        self.clock = clock or SimClock(config.speed, start)
        self.physics = SitePhysics(
            t=self.clock.now(),
            load=_profile(config.load, config.base_dir),
            load_phase_split=config.load_phase_split,
            utc_offset_s=config.utc_offset_h * 3600.0,
            nominal_v=config.nominal_v,
            max_step_s=config.max_step_s,
        )
        for d in config.devices:
            self._add_unit(d)
        self.physics.advance(self.physics.t)
        self.devices: dict[str, SunSpecDevice | LoadDevice] = {
            d.name: LoadDevice(cfg=d, physics=self.physics, now=self.clock.now)
            if d.kind in LOAD_KINDS
            else SunSpecDevice(cfg=d, site_name=config.name, physics=self.physics, now=self.clock.now)
            for d in config.devices
        }
        shared = [self.devices[d.name] for d in config.devices if d.port is None]
        self._endpoints: list[_ModbusEndpoint] = []
        if shared:
            self._endpoints.append(_ModbusEndpoint(config.host, config.port, shared))
        for d in config.devices:
            if d.port is not None:
                self.devices[d.name].own_server = True
                self._endpoints.append(_ModbusEndpoint(config.host, d.port, [self.devices[d.name]]))
        self._device_endpoint = {dev.name: ep for ep in self._endpoints for dev in ep.devices}
        self._control_runner: web.AppRunner | None = None
        self.control_port: int | None = None
        self._rtu_servers: list[ModbusSerialServer] = []
        self.started = False

    def _add_unit(self, d: DeviceConfig) -> None:
        if d.kind == "meter":
            return
        if d.kind in LOAD_KINDS:
            demand = Profile.constant(d.rated_w if d.demand_w is None else d.demand_w)
            self.physics.add_load(
                ControllableLoad(d.name, d.kind, d.rated_w, demand, ("A", "B", "C").index(d.phase),
                                 d.response_delay_s)
            )  # fmt: skip
            return
        params = InverterParams(
            rated_w=d.rated_w,
            phases=3 if d.wiring in ("wye", "delta") else 1,
            phase=("A", "B", "C").index(d.phase),
            response_delay_s=d.response_delay_s,
            default_ramp_s=d.ramp_time_s,
            reconnect_ramp_s=d.reconnect_ramp_s,
            grid_reconnect_s=d.grid_reconnect_s,
        )
        if d.kind == "pv":
            self.physics.add_pv(d.name, params, _profile(d.pv_profile, self.config.base_dir))
        else:
            battery = BatteryParams(
                capacity_wh=d.capacity_wh,
                max_charge_w=d.max_charge_w,
                max_discharge_w=d.max_discharge_w,
                charge_efficiency=d.charge_efficiency,
                discharge_efficiency=d.discharge_efficiency,
                min_soc_pct=d.min_soc_pct,
            )
            self.physics.add_battery(d.name, params, battery, d.initial_soc_pct)

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            for ep in self._endpoints:
                await ep.start()
            if self.config.control_port is not None:
                self.control_port = await self._start_control(self.config.control_port)
        except BaseException:
            await self.stop()
            raise
        self.started = True

    async def serve_rtu(self, port: str, baudrate: int = 9600, parity: str = "N", stopbits: int = 1) -> None:
        """Also serve every device as Modbus RTU on the serial device ``port`` (an RS-485 adapter, or one end
        of a :class:`simulators.serial_link.PtyLink`), each at its unit ID, beside its TCP endpoint."""
        ids = [d.cfg.unit_id for d in self.devices.values()]
        if len(set(ids)) != len(ids):
            raise ConfigError("devices", f"unit IDs must differ to share one RTU line, got {sorted(ids)}")
        server = ModbusSerialServer(
            [d.sim_device() for d in self.devices.values()],
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError:  # pymodbus' way of saying the port did not open
            raise OSError(f"cannot open serial port {port}") from None
        await asyncio.sleep(0)  # let the transport's own setup callback run before anyone may stop it
        if not server.transport:
            raise OSError(f"cannot open serial port {port}")
        self._rtu_servers.append(server)

    async def stop(self) -> None:
        for server in self._rtu_servers:
            await server.shutdown()
        self._rtu_servers.clear()
        for ep in self._endpoints:
            await ep.stop()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None
        self.started = False

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start_control(self, port: int) -> int:
        runner = web.AppRunner(control_app({self.config.name: self}))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._control_runner = runner
        return runner.addresses[0][1]

    # ------------------------------------------------------------------------------ observation
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def endpoints(self) -> list[Endpoint]:
        out = []
        for d in self.config.devices:
            ep = self._device_endpoint[d.name]
            out.append(Endpoint(d.name, d.kind, ep.host, ep.port, d.unit_id, d.family,
                                self.devices[d.name].model_ids))  # fmt: skip
        return out

    def endpoint(self, name: str) -> Endpoint:
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        raise KeyError(f"no device {name!r} in site {self.name!r}")

    def advance(self) -> float:
        """Bring the physics up to the clock; returns simulated now."""
        t = self.clock.now()
        self.physics.advance(t)
        return t

    def _unit_name(self, kind: str, name: str | None) -> str:
        if name is not None:
            if name not in self.physics.units:
                raise KeyError(f"no {kind} named {name!r} in site {self.name!r}")
            return name
        for d in self.config.devices:
            if d.kind == kind:
                return d.name
        raise KeyError(f"site {self.name!r} has no {kind}")

    def meter_reading(self) -> dict[str, Any]:
        """Connection-point flow now: w (+ import / - export), per-phase w/v/a, hz, energy counters."""
        self.advance()
        m = self.physics.meter
        return {
            "w": m.w, "w_phase": list(m.w_phase), "v_phase": list(m.v_phase), "a_phase": list(m.a_phase),
            "hz": m.hz, "import_wh": m.import_wh, "export_wh": m.export_wh, "load_w": self.physics.load_w,
        }  # fmt: skip

    def inverter_output_w(self, name: str | None = None) -> float:
        """AC output of a PV inverter (first PV if no name): + generation."""
        self.advance()
        return self.physics.units[self._unit_name("pv", name)].output_w

    def load_power_w(self, name: str) -> float:
        """What a controllable load (EV charger, switched load) draws now: + consumption."""
        self.advance()
        return self.physics.loads[name].output_w

    def battery_power_w(self, name: str | None = None) -> float:
        """Battery AC power: + discharging, - charging."""
        self.advance()
        return self.physics.units[self._unit_name("battery", name)].output_w

    def set_grid(self, up: bool) -> None:
        """Drop (False) or restore (True) the grid: see :meth:`SitePhysics.set_grid`."""
        self.physics.set_grid(self.clock.now(), up)

    def isolate(self, device_name: str, isolated: bool = True) -> None:
        """Open (or close) a PV or battery inverter's AC isolator: see :meth:`SitePhysics.isolate`."""
        self.physics.isolate(self.clock.now(), self._unit_name("inverter", device_name), isolated)

    def set_pv_source(self, device_name: str, watts: float) -> None:
        """What a PV inverter's panels give from now on, W (0: no sun / DC isolator open)."""
        self.physics.set_source(self.clock.now(), self._unit_name("pv", device_name), watts)

    @property
    def grid_up(self) -> bool:
        return self.physics.grid_up

    def battery_soc(self, name: str | None = None) -> float:
        self.advance()
        return self.physics.units[self._unit_name("battery", name)].soc_pct

    def status(self) -> dict[str, Any]:
        t = self.advance()
        devices = []
        for ep in self.endpoints:
            dev = self.devices[ep.name]
            unit = dev.unit
            row: dict[str, Any] = {
                "name": ep.name, "kind": ep.kind, "family": ep.family, "models": list(ep.models),
                "host": ep.host, "port": ep.port, "unit_id": ep.unit_id,
                "online": self._device_endpoint[ep.name].online, "reads": dev.reads, "writes": dev.writes,
                "fault": None if dev.fault is None else dev.fault.kind,
            }  # fmt: skip
            if unit is not None:
                row.update(output_w=unit.output_w, limit_pct=unit.limit_pct, connected=unit.connected,
                           limit_w=unit.limit_w.at(t))  # fmt: skip
                if unit.is_battery:
                    row["soc_pct"] = unit.soc_pct
                else:
                    row["available_w"] = unit.available_w
            devices.append(row)
        return {"site": self.name, "sim_time": t, "speed": self.clock.speed, "grid_up": self.grid_up,
                "meter": self.meter_reading(), "devices": devices}  # fmt: skip

    # ------------------------------------------------------------------------------ faults
    def set_fault(self, device_name: str, fault: str | None, **params: Any) -> asyncio.Task | None:
        """Switch a fault on, or off with fault=None/"none". Takes effect for the next request.

        Faults: offline, slow (delay_s), stuck, exception (code), frozen — see simulators/README.md.
        For 'offline' on a device with its own port the listener is closed (and later reopened) by a
        task, which is returned so callers can await it; otherwise returns None.
        """
        if device_name not in self.devices:
            raise ConfigError("device", f"no device {device_name!r} in site {self.name!r}")
        dev = self.devices[device_name]
        if fault in (None, "none", "clear"):
            new = None
        elif fault not in FAULTS:
            raise ConfigError("fault", f"must be one of {', '.join(FAULTS)} or none")
        else:
            unknown = set(params) - {"delay_s", "code"}
            if unknown:
                raise ConfigError(sorted(unknown)[0], "unknown fault parameter (delay_s, code)")
            delay = params.get("delay_s", 2.0)
            if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
                raise ConfigError("delay_s", "must be a number >= 0")
            if params.get("code", 4) not in (1, 2, 3, 4, 5, 6, 8, 10, 11):
                raise ConfigError("code", "must be a Modbus exception code (1-6, 8, 10, 11)")
            new = Fault(kind=fault, **params)
        dev.fault = new
        if not dev.own_server:
            return None
        ep = self._device_endpoint[device_name]
        want_offline = new is not None and new.kind == "offline"
        if want_offline and ep.online:
            return asyncio.get_running_loop().create_task(ep.stop())
        if not want_offline and self.started and not ep.online:
            return asyncio.get_running_loop().create_task(ep.start())
        return None

    async def set_fault_async(self, device_name: str, fault: str | None, **params: Any) -> None:
        """As :meth:`set_fault`, returning once any listener change has happened."""
        task = self.set_fault(device_name, fault, **params)
        if task is not None:
            await task

    def clear_fault(self, device_name: str) -> asyncio.Task | None:
        return self.set_fault(device_name, None)


# ---------------------------------------------------------------------------------------------------
# Runtime control over HTTP (JSON, loopback)


def control_app(sites: dict[str, SimulatedSite]) -> web.Application:
    """JSON control API.

    GET    /sites                         -> ["site0001", ...]
    GET    /sites/{site}                  -> status (devices, meter, faults)
    POST   /sites/{site}/faults           {"device": "meter", "fault": "frozen", "delay_s": 2, "code": 4}
    DELETE /sites/{site}/faults/{device}  -> clears the device's fault
    POST   /sites/{site}/clock            {"speed": 60} or {"jump_s": 3600}
    POST   /sites/{site}/grid             {"up": false} drops the grid, {"up": true} restores it
    Errors: 400/404 {"error": "...", "field": "..."}.
    """
    app = web.Application()

    def _site(request: web.Request) -> SimulatedSite:
        name = request.match_info["site"]
        if name not in sites:
            raise web.HTTPNotFound(text=f'{{"error": "no site {name}", "field": "site"}}',
                                   content_type="application/json")  # fmt: skip
        return sites[name]

    def _bad(exc: ConfigError) -> web.Response:
        return web.json_response({"error": str(exc), "field": exc.field}, status=400)

    async def list_sites(request: web.Request) -> web.Response:
        return web.json_response(sorted(sites))

    async def get_site(request: web.Request) -> web.Response:
        return web.json_response(_site(request).status())

    async def post_fault(request: web.Request) -> web.Response:
        site = _site(request)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON", "field": "body"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object", "field": "body"}, status=400)
        params = {k: v for k, v in body.items() if k not in ("device", "fault")}
        try:
            await site.set_fault_async(str(body.get("device", "")), body.get("fault"), **params)
        except ConfigError as exc:
            return _bad(exc)
        return web.json_response(site.status())

    async def delete_fault(request: web.Request) -> web.Response:
        site = _site(request)
        try:
            await site.set_fault_async(request.match_info["device"], None)
        except ConfigError as exc:
            return _bad(exc)
        return web.json_response(site.status())

    async def post_clock(request: web.Request) -> web.Response:
        site = _site(request)
        body = await request.json()
        try:
            if "speed" in body:
                if not isinstance(body["speed"], int | float):
                    raise ConfigError("speed", "must be a number")
                site.advance()
                site.clock.set_speed(float(body["speed"]))
            if "jump_s" in body:
                if not isinstance(body["jump_s"], int | float) or body["jump_s"] < 0:
                    raise ConfigError("jump_s", "must be a number >= 0")
                site.clock.jump(float(body["jump_s"]))
        except ConfigError as exc:
            return _bad(exc)
        return web.json_response(site.status())

    async def post_grid(request: web.Request) -> web.Response:
        site = _site(request)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("up"), bool):
            return web.json_response({"error": "give {\"up\": true|false}", "field": "up"}, status=400)
        site.set_grid(body["up"])
        return web.json_response(site.status())

    app.router.add_get("/sites", list_sites)
    app.router.add_get("/sites/{site}", get_site)
    app.router.add_post("/sites/{site}/faults", post_fault)
    app.router.add_delete("/sites/{site}/faults/{device}", delete_fault)
    app.router.add_post("/sites/{site}/clock", post_clock)
    app.router.add_post("/sites/{site}/grid", post_grid)
    return app


# ---------------------------------------------------------------------------------------------------
# Fleets


def process_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


def process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class SimulatedFleet:
    """N sites in one process sharing one clock; each site gets its own port (devices as unit IDs).

    A port per site mirrors the field (one gateway talks to one site's LAN) and keeps faults local;
    within a site the devices share the port as unit IDs, like an inverter acting as a Modbus TCP
    gateway for its meter. 1,000 sites = 1,000 listening sockets, well within the fd limit.
    """

    def __init__(self, configs: list[SiteConfig], clock: SimClock | None = None) -> None:
        self.clock = clock or SimClock(configs[0].speed if configs else 1.0)
        self.sites = [SimulatedSite(c, clock=self.clock) for c in configs]
        self._control_runner: web.AppRunner | None = None
        self.control_port: int | None = None

    async def start(self, control_port: int | None = None) -> None:
        try:
            for site in self.sites:
                await site.start()
            if control_port is not None:
                runner = web.AppRunner(control_app({s.name: s for s in self.sites}))
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", control_port).start()
                self._control_runner = runner
                self.control_port = runner.addresses[0][1]
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for site in self.sites:
            await site.stop()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None

    def site(self, name: str) -> SimulatedSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)
