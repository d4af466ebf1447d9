"""Site configuration: pydantic dataclasses, TOML loading and validation.

Every validation error names the offending field (``device[1].rated_w: must be > 0``) and raises
:class:`ConfigError` before anything starts. Types and bounds of single fields are on the dataclasses
(pydantic); rules that join fields (ports and unit IDs, SoC limits, CSV files) are in ``_validate_site``.
See simulators/README.md for the file format.
"""

from __future__ import annotations

import tomllib
from dataclasses import field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, Strict, ValidationError
from pydantic.dataclasses import dataclass

# Numbers must be numbers (TOML "5" is not 5); ints are accepted where floats are expected.
_Float = Annotated[float, Strict()]
_NonNeg = Annotated[float, Strict(), Field(ge=0)]
_Positive = Annotated[float, Strict(), Field(gt=0)]
_Str = Annotated[str, Strict()]
_TcpPort = Annotated[int, Strict(), Field(ge=0, le=65535)]
_Ramp = Annotated[float, Strict(), Field(ge=0, le=65534)]
_Fraction = Annotated[float, Strict(), Field(gt=0, le=1)]
_Pct = Annotated[float, Strict(), Field(ge=0, le=100)]
_TABLE = ConfigDict(extra="forbid")
LOAD_KINDS = ("evse", "switched_load")


class ConfigError(ValueError):
    """Invalid site configuration; ``field`` names the offending setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(config=_TABLE)
class ProfileConfig:
    kind: Literal["clear_sky", "household", "constant", "csv"] = "clear_sky"
    peak_w: _NonNeg = 5000.0  # clear_sky / household peak, constant value
    base_w: _NonNeg = 300.0  # household overnight base
    sunrise_h: _Float = 6.0
    sunset_h: _Float = 18.0
    csv: _Str | None = None  # path (relative to the TOML file) for kind = "csv"


@dataclass(config=_TABLE)
class DeviceConfig:
    name: Annotated[str, Strict(), Field(min_length=1)]
    kind: Literal["pv", "battery", "meter", "evse", "switched_load"]
    family: Literal["legacy", "der"] = "legacy"  # legacy (1xx/12x) or der (70x); meters always use 201-204
    wiring: Literal["single", "split", "wye", "delta"] = "single"  # inverters: wye/delta -> 103
    phase: Literal["A", "B", "C"] = "A"  # single-phase inverters: which site phase
    unit_id: Annotated[int, Strict(), Field(ge=1, le=247)] = 1
    port: _TcpPort | None = None  # None: on the site's shared port; 0: own auto-picked port
    rated_w: Annotated[float, Strict(), Field(gt=0, le=3_000_000)] = 5000.0
    response_delay_s: _NonNeg = 1.0
    ramp_time_s: _Ramp = 10.0  # default WMaxLimPct ramp (123 WMaxLimPct_RmpTms initial value)
    reconnect_ramp_s: _Ramp = 30.0
    # after a grid outage: grid back this long before the unit reconnects
    grid_reconnect_s: Annotated[float, Strict(), Field(ge=0, le=3600)] = 60.0
    pv_profile: ProfileConfig = field(default_factory=ProfileConfig)
    capacity_wh: _Positive = 13500.0
    max_charge_w: _Positive = 5000.0
    max_discharge_w: _Positive = 5000.0
    initial_soc_pct: _Pct = 50.0
    min_soc_pct: Annotated[float, Strict(), Field(ge=0, lt=100)] = 0.0
    charge_efficiency: _Fraction = 0.95
    discharge_efficiency: _Fraction = 0.95
    serial: _Str | None = None
    # evse / switched_load: what the EV or appliance draws when allowed (None: rated_w); an EV charger's
    # rated_w is its maximum charging power (single-phase, 230 V)
    demand_w: _NonNeg | None = None
    # SunSpec accumulators (acc32/acc64) read 0 as "not implemented", so energy counters start here
    energy_start_wh: Annotated[float, Strict(), Field(ge=1)] = 100000.0


@dataclass(config=_TABLE)
class SiteConfig:
    name: Annotated[str, Strict(), Field(min_length=1)] = "site"
    host: _Str = "127.0.0.1"
    port: _TcpPort = 0  # shared Modbus TCP port for devices without their own; 0 = auto-pick
    control_port: _TcpPort | None = None  # JSON HTTP control endpoint on `host`; None = off, 0 = auto
    speed: _Positive = 1.0  # simulated seconds per wall second
    start: _Str | None = None  # ISO-8601 simulated start time; None = now
    utc_offset_h: _Float = 10.0  # local time for the daily profiles
    nominal_v: _Positive = 230.0
    load: ProfileConfig = field(default_factory=lambda: ProfileConfig(kind="household", peak_w=2500.0))
    load_phase_split: tuple[_NonNeg, _NonNeg, _NonNeg] = (1.0, 0.0, 0.0)
    max_step_s: _Positive = 1.0
    devices: list[DeviceConfig] = field(default_factory=list)
    base_dir: Path | None = None  # for resolving relative CSV paths

    def validate(self) -> SiteConfig:
        _validate_site(self)
        return self


_MESSAGES = {
    "missing": "required",
    "missing_argument": "required",
    "unexpected_keyword_argument": "unknown setting",
    "int_type": "must be an integer, got {input!r}",
    "float_type": "must be a number, got {input!r}",
    "string_type": "must be a string, got {input!r}",
    "dataclass_type": "must be a table",
    "tuple_type": "must be a list of numbers",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "literal_error": "must be one of {expected}",
    "string_too_short": "must be a non-empty string",
}


def _build(cls: type, data: Any, where: str) -> Any:
    """One of the dataclasses from a TOML table; the first error names its field under ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(where, "must be a table")
    if cls is SiteConfig and ("devices" in data or "base_dir" in data):
        raise ConfigError(f"{where}.{'devices' if 'devices' in data else 'base_dir'}", "unknown setting")
    try:
        return cls(**data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = [p for p in error["loc"] if not (isinstance(p, int) and error["type"] == "float_type")]
        name = ".".join([where, *(str(p) for p in loc)])
        template = _MESSAGES.get(error["type"], "{msg}")
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
        raise ConfigError(name, template.format(input=error.get("input"), msg=error["msg"], **ctx)) from None


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_name, message)


def _validate_profile(p: ProfileConfig, where: str, base_dir: Path | None) -> None:
    _check(0 <= p.sunrise_h < p.sunset_h <= 24, f"{where}.sunrise_h", "need 0 <= sunrise_h < sunset_h <= 24")
    if p.kind == "csv":
        _check(bool(p.csv), f"{where}.csv", "required when kind = 'csv'")
        path = Path(p.csv or "")
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        _check(path.is_file(), f"{where}.csv", f"file not found: {path}")


def _validate_site(cfg: SiteConfig) -> None:
    """The rules that join fields; each field's own type and bounds were checked when it was built."""
    _check(abs(sum(cfg.load_phase_split) - 1.0) < 1e-6, "site.load_phase_split",
           "must be three non-negative fractions summing to 1")  # fmt: skip
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
    for i, d in enumerate(cfg.devices):
        w = f"device[{i}]"
        _check(d.name not in names, f"{w}.name", f"duplicate device name {d.name!r}")
        names.add(d.name)
        if d.port is None:
            _check(d.unit_id not in shared_units, f"{w}.unit_id",
                   f"unit id {d.unit_id} already used on the site port")  # fmt: skip
            shared_units.add(d.unit_id)
        else:
            _check(d.port == 0 or d.port not in own_ports, f"{w}.port", f"port {d.port} used twice")
            _check(d.port == 0 or d.port != cfg.port, f"{w}.port", "equals site.port; omit port to share it")
            own_ports.add(d.port)
        if d.kind == "pv":
            _validate_profile(d.pv_profile, f"{w}.pv_profile", cfg.base_dir)
        if d.kind == "battery":
            _check(d.min_soc_pct <= d.initial_soc_pct, f"{w}.initial_soc_pct", "must be min_soc_pct..100")
    _check(sum(d.kind == "meter" for d in cfg.devices) <= 1, "device",
           "at most one meter (the connection-point meter) per site")  # fmt: skip


def site_config_from_dict(data: dict[str, Any], base_dir: Path | None = None) -> SiteConfig:
    """Build and validate from the TOML document structure: [site] + [[device]] tables."""
    unknown = set(data) - {"site", "device"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown top-level table (expected [site] and [[device]])")
    site = _build(SiteConfig, data.get("site", {}), "site")
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise ConfigError("device", "must be an array of tables ([[device]])")
    site.devices = [_build(DeviceConfig, d, f"device[{i}]") for i, d in enumerate(devices)]
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
    pv: bool = True,
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
    ``pv=False`` / ``battery=False`` leave that device out.
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
    ] if pv else []  # fmt: skip
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


def with_site(cfg: SiteConfig, **changes: Any) -> SiteConfig:
    """Copy a config with site fields changed (e.g. speed=60), revalidated; errors name ``site.FIELD``."""
    fields_ = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("devices", "base_dir")}
    site = _build(SiteConfig, {**fields_, **changes}, "site")
    return replace(site, devices=cfg.devices, base_dir=cfg.base_dir).validate()


def with_devices(cfg: SiteConfig, **changes: Any) -> SiteConfig:
    """Copy a config with every device's fields changed (e.g. family="der"), revalidated."""
    devices = [_build(DeviceConfig, {**{k: getattr(d, k) for k in d.__dataclass_fields__}, **changes},
                      f"device[{i}]") for i, d in enumerate(cfg.devices)]  # fmt: skip
    return replace(cfg, devices=devices).validate()
