"""Site configuration: dataclasses, TOML loading and validation.

Every validation error names the offending field (``device[1].rated_w: must be > 0``) and raises
:class:`ConfigError` before anything starts. See simulators/README.md for the file format.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEVICE_KINDS = ("pv", "battery", "meter", "evse", "switched_load")
LOAD_KINDS = ("evse", "switched_load")
FAMILIES = ("legacy", "der")
WIRINGS = ("single", "split", "wye", "delta")
PROFILE_KINDS = ("clear_sky", "household", "constant", "csv")


class ConfigError(ValueError):
    """Invalid site configuration; ``field`` names the offending setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class ProfileConfig:
    kind: str = "clear_sky"  # clear_sky | household | constant | csv
    peak_w: float = 5000.0  # clear_sky / household peak, constant value
    base_w: float = 300.0  # household overnight base
    sunrise_h: float = 6.0
    sunset_h: float = 18.0
    csv: str | None = None  # path (relative to the TOML file) for kind = "csv"


@dataclass
class DeviceConfig:
    name: str
    kind: str  # pv | battery | meter | evse | switched_load
    family: str = "legacy"  # legacy (1xx/12x) or der (70x); meters always use 201-204
    wiring: str = "single"  # single | split | wye | delta (inverters: wye/delta -> 103)
    phase: str = "A"  # single-phase inverters: which site phase
    unit_id: int = 1
    port: int | None = None  # None: on the site's shared port; 0: own auto-picked port
    rated_w: float = 5000.0
    response_delay_s: float = 1.0
    ramp_time_s: float = 10.0  # default WMaxLimPct ramp (123 WMaxLimPct_RmpTms initial value)
    reconnect_ramp_s: float = 30.0
    grid_reconnect_s: float = 60.0  # after a grid outage: grid back this long before the unit reconnects
    pv_profile: ProfileConfig = field(default_factory=ProfileConfig)
    capacity_wh: float = 13500.0
    max_charge_w: float = 5000.0
    max_discharge_w: float = 5000.0
    initial_soc_pct: float = 50.0
    min_soc_pct: float = 0.0
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    serial: str | None = None
    # evse / switched_load: what the EV or appliance draws when allowed (None: rated_w); an EV charger's
    # rated_w is its maximum charging power (single-phase, 230 V)
    demand_w: float | None = None
    # SunSpec accumulators (acc32/acc64) read 0 as "not implemented", so energy counters start here
    energy_start_wh: float = 100000.0


@dataclass
class SiteConfig:
    name: str = "site"
    host: str = "127.0.0.1"
    port: int = 0  # shared Modbus TCP port for devices without their own; 0 = auto-pick
    control_port: int | None = None  # JSON HTTP control endpoint on `host`; None = off, 0 = auto
    speed: float = 1.0  # simulated seconds per wall second
    start: str | None = None  # ISO-8601 simulated start time; None = now
    utc_offset_h: float = 10.0  # local time for the daily profiles
    nominal_v: float = 230.0
    load: ProfileConfig = field(default_factory=lambda: ProfileConfig(kind="household", peak_w=2500.0))
    load_phase_split: tuple[float, float, float] = (1.0, 0.0, 0.0)
    max_step_s: float = 1.0
    devices: list[DeviceConfig] = field(default_factory=list)
    base_dir: Path | None = None  # for resolving relative CSV paths

    def validate(self) -> SiteConfig:
        _validate_site(self)
        return self


# ------------------------------------------------------------------------------------------------


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_name, message)


def _validate_profile(p: ProfileConfig, where: str, base_dir: Path | None) -> None:
    _check(p.kind in PROFILE_KINDS, f"{where}.kind", f"must be one of {', '.join(PROFILE_KINDS)}")
    _check(p.peak_w >= 0, f"{where}.peak_w", "must be >= 0")
    _check(p.base_w >= 0, f"{where}.base_w", "must be >= 0")
    _check(0 <= p.sunrise_h < p.sunset_h <= 24, f"{where}.sunrise_h", "need 0 <= sunrise_h < sunset_h <= 24")
    if p.kind == "csv":
        _check(bool(p.csv), f"{where}.csv", "required when kind = 'csv'")
        path = Path(p.csv)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        _check(path.is_file(), f"{where}.csv", f"file not found: {path}")


def _validate_site(cfg: SiteConfig) -> None:
    _check(bool(cfg.name) and isinstance(cfg.name, str), "site.name", "must be a non-empty string")
    _check(0 <= cfg.port <= 65535, "site.port", "must be 0..65535")
    _check(
        cfg.control_port is None or 0 <= cfg.control_port <= 65535, "site.control_port", "must be 0..65535"
    )
    _check(cfg.speed > 0, "site.speed", "must be > 0")
    _check(cfg.max_step_s > 0, "site.max_step_s", "must be > 0")
    _check(cfg.nominal_v > 0, "site.nominal_v", "must be > 0")
    _check(
        len(cfg.load_phase_split) == 3 and abs(sum(cfg.load_phase_split) - 1.0) < 1e-6
        and all(x >= 0 for x in cfg.load_phase_split),
        "site.load_phase_split", "must be three non-negative fractions summing to 1",
    )  # fmt: skip
    if cfg.start is not None:
        from datetime import datetime

        try:
            datetime.fromisoformat(cfg.start)
        except ValueError:
            raise ConfigError("site.start", f"not an ISO-8601 time: {cfg.start!r}") from None
    _validate_profile(cfg.load, "site.load", cfg.base_dir)
    _check(len(cfg.devices) > 0, "device", "a site needs at least one [[device]]")
    names: set[str] = set()
    shared_units: set[int] = set()
    own_ports: set[int] = set()
    meters = 0
    for i, d in enumerate(cfg.devices):
        w = f"device[{i}]"
        _check(bool(d.name), f"{w}.name", "must be a non-empty string")
        _check(d.name not in names, f"{w}.name", f"duplicate device name {d.name!r}")
        names.add(d.name)
        _check(d.kind in DEVICE_KINDS, f"{w}.kind", f"must be one of {', '.join(DEVICE_KINDS)}")
        _check(d.family in FAMILIES, f"{w}.family", f"must be one of {', '.join(FAMILIES)}")
        _check(d.wiring in WIRINGS, f"{w}.wiring", f"must be one of {', '.join(WIRINGS)}")
        _check(d.phase in ("A", "B", "C"), f"{w}.phase", "must be A, B or C")
        _check(1 <= d.unit_id <= 247, f"{w}.unit_id", "must be 1..247")
        _check(d.energy_start_wh >= 1, f"{w}.energy_start_wh", "must be >= 1 (0 reads as 'not implemented')")
        if d.port is None:
            _check(
                d.unit_id not in shared_units,
                f"{w}.unit_id",
                f"unit id {d.unit_id} already used on the site port",
            )
            shared_units.add(d.unit_id)
        else:
            _check(0 <= d.port <= 65535, f"{w}.port", "must be 0..65535")
            _check(d.port == 0 or d.port not in own_ports, f"{w}.port", f"port {d.port} used twice")
            _check(d.port == 0 or d.port != cfg.port, f"{w}.port", "equals site.port; omit port to share it")
            own_ports.add(d.port)
        if d.kind == "meter":
            meters += 1
            continue
        _check(d.rated_w > 0, f"{w}.rated_w", "must be > 0")
        _check(d.rated_w <= 3_000_000, f"{w}.rated_w", "must be <= 3 MW")
        _check(d.response_delay_s >= 0, f"{w}.response_delay_s", "must be >= 0")
        _check(0 <= d.ramp_time_s <= 65534, f"{w}.ramp_time_s", "must be 0..65534")
        _check(0 <= d.reconnect_ramp_s <= 65534, f"{w}.reconnect_ramp_s", "must be 0..65534")
        _check(0 <= d.grid_reconnect_s <= 3600, f"{w}.grid_reconnect_s", "must be 0..3600")
        if d.kind == "pv":
            _validate_profile(d.pv_profile, f"{w}.pv_profile", cfg.base_dir)
        if d.kind in LOAD_KINDS:
            _check(d.demand_w is None or d.demand_w >= 0, f"{w}.demand_w", "must be >= 0")
        if d.kind == "battery":
            _check(d.capacity_wh > 0, f"{w}.capacity_wh", "must be > 0")
            _check(d.max_charge_w > 0, f"{w}.max_charge_w", "must be > 0")
            _check(d.max_discharge_w > 0, f"{w}.max_discharge_w", "must be > 0")
            _check(0 <= d.min_soc_pct < 100, f"{w}.min_soc_pct", "must be 0..100")
            _check(
                d.min_soc_pct <= d.initial_soc_pct <= 100, f"{w}.initial_soc_pct", "must be min_soc_pct..100"
            )
            _check(0 < d.charge_efficiency <= 1, f"{w}.charge_efficiency", "must be in (0, 1]")
            _check(0 < d.discharge_efficiency <= 1, f"{w}.discharge_efficiency", "must be in (0, 1]")
    _check(meters <= 1, "device", "at most one meter (the connection-point meter) per site")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Dataclass from a TOML table; unknown keys and wrong types are errors naming the field."""
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known or key in ("devices", "base_dir"):
            raise ConfigError(f"{where}.{key}", "unknown setting")
        ftype = str(known[key].type)
        if "ProfileConfig" in ftype:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}", "must be a table")
            value = _build(ProfileConfig, value, f"{where}.{key}")
        elif ftype.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}", f"must be a number, got {value!r}")
            value = float(value)
        elif ftype.startswith("int") or ftype == "int | None":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{key}", f"must be an integer, got {value!r}")
        elif ftype.startswith("str"):
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{key}", f"must be a string, got {value!r}")
        elif ftype.startswith("tuple"):
            if not isinstance(value, list) or not all(isinstance(x, int | float) for x in value):
                raise ConfigError(f"{where}.{key}", "must be a list of numbers")
            value = tuple(float(x) for x in value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [f.name for f in fields(cls) if f.name not in kwargs and "required" in str(exc)]
        raise ConfigError(f"{where}.{missing[0] if missing else '?'}", "required") from None


def site_config_from_dict(data: dict[str, Any], base_dir: Path | None = None) -> SiteConfig:
    """Build and validate from the TOML document structure: [site] + [[device]] tables."""
    unknown = set(data) - {"site", "device"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown top-level table (expected [site] and [[device]])")
    site = _build(SiteConfig, dict(data.get("site", {})), "site")
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise ConfigError("device", "must be an array of tables ([[device]])")
    site.devices = [_build(DeviceConfig, dict(d), f"device[{i}]") for i, d in enumerate(devices)]
    site.base_dir = base_dir
    return site.validate()


def load_site_config(path: str | Path) -> SiteConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"invalid TOML: {exc}") from None
    return site_config_from_dict(data, base_dir=path.parent)


def default_site_config(
    name: str = "site",
    *,
    family: str = "legacy",
    pv_rated_w: float = 5000.0,
    pv_available_w: float | None = None,
    battery: bool = True,
    battery_capacity_wh: float = 13500.0,
    load_w: float | None = None,
    speed: float = 1.0,
    separate_ports: bool = False,
    response_delay_s: float = 1.0,
    ramp_time_s: float = 10.0,
    control_port: int | None = None,
    start: str | None = None,
) -> SiteConfig:
    """A PV + battery + meter site on loopback with auto-picked ports, for tests and the demo.

    ``pv_available_w`` / ``load_w`` make the PV and load constant (handy in tests); otherwise a
    clear-sky day and a household profile are used. Devices share one port (unit IDs 1, 2, 3) unless
    ``separate_ports``, in which case each device gets its own auto-picked port with unit ID 1.
    """
    pv_profile = (
        ProfileConfig(kind="constant", peak_w=pv_available_w)
        if pv_available_w is not None
        else ProfileConfig(kind="clear_sky", peak_w=pv_rated_w)
    )
    load = (
        ProfileConfig(kind="constant", peak_w=load_w)
        if load_w is not None
        else ProfileConfig(kind="household", peak_w=2500.0)
    )
    port = 0 if separate_ports else None
    devices = [
        DeviceConfig(
            name="pv", kind="pv", family=family, unit_id=1, port=port, rated_w=pv_rated_w,
            pv_profile=pv_profile, response_delay_s=response_delay_s, ramp_time_s=ramp_time_s,
        ),
    ]  # fmt: skip
    if battery:
        devices.append(
            DeviceConfig(
                name="battery", kind="battery", family=family, unit_id=1 if separate_ports else 2, port=port,
                rated_w=5000.0, capacity_wh=battery_capacity_wh, response_delay_s=response_delay_s,
                ramp_time_s=ramp_time_s,
            )
        )  # fmt: skip
    devices.append(DeviceConfig(name="meter", kind="meter", unit_id=1 if separate_ports else 3, port=port))
    return SiteConfig(
        name=name, speed=speed, load=load, devices=devices, control_port=control_port, start=start
    ).validate()


def with_devices(cfg: SiteConfig, **changes: Any) -> SiteConfig:
    """Copy a config with every device's fields changed (e.g. family="der"), revalidated."""
    return replace(cfg, devices=[replace(d, **changes) for d in cfg.devices]).validate()
