"""The demo's scenario: a TOML file, its validation, and the timeline of limits that applied.

A scenario is written in *scenario minutes* from its start (``at_min``) and played on an accelerated
clock: ``speed`` scenario seconds per wall second (``--realtime`` plays it at speed 1). The server,
gateway and simulators all run on the real clock; the scenario is compressed onto it, so a 30-minute DOE
interval at speed 200 is a 9-second DERControl on the server. Wall offsets are whole seconds (2030.5 times
are), rounded from ``minute * 60 / speed``. The format is documented in ``README-scenarios.md``.

:func:`applicable_segments` turns a scenario into the timeline the DNSP expects the site to follow:
segments of constant export/import limit with the source that set them (DOE, emergency, staged lift,
default, comms-loss fallback, installer) and the comms state. Compliance is judged against it.

Every validation error is a :class:`ScenarioError` whose message starts with the field, e.g.
``doe[2].export_limit_w: must be a number >= 0, got -5``.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from server.compliance.judge import Rules

EMERGENCY_ACTIONS = ("zero_export", "zero_generation", "disconnect")  # all mean: export 0 at the site
FAULTS = ("stuck", "offline", "slow", "frozen", "exception")
FAULT_DEVICES = ("pv", "battery", "meter")
MODES = ("subscribe", "poll")
BUILTIN = {"default": "default.toml", "stuck-inverter": "stuck_inverter.toml"}


class ScenarioError(ValueError):
    """The scenario cannot be played; ``field`` names the offending setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Doe:
    at_min: float
    duration_min: float
    export_limit_w: float
    import_limit_w: float


@dataclass(frozen=True)
class Emergency:
    at_min: float
    action: str = "zero_export"
    target: str = "all"  # broadcast; or "site" for this site only
    lift_at_min: float | None = None  # None: runs for duration_min
    duration_min: float = 1440.0
    lift_spread_min: float = 0.0  # staged lift: restore spread (randomised) over this many minutes


@dataclass(frozen=True)
class Hems:
    """A home-energy-management setpoint given to the gateway's local API (clipped into the envelope)."""

    at_min: float
    until_min: float
    battery_w: float  # + discharge, - charge


@dataclass(frozen=True)
class Outage:
    at_min: float
    until_min: float


@dataclass(frozen=True)
class Fault:
    at_min: float
    device: str
    fault: str
    until_min: float | None = None


@dataclass(frozen=True)
class Limits:
    export_limit_w: float | None = None
    import_limit_w: float | None = None


@dataclass(frozen=True)
class SiteSpec:
    family: str = "legacy"
    pv_rated_w: float = 6000.0
    pv_w: tuple[tuple[float, float], ...] = ((0.0, 5500.0),)  # (minute, W) points, linear
    load_w: tuple[tuple[float, float], ...] = ((0.0, 600.0),)
    battery: bool = True
    battery_rated_w: float = 5000.0
    battery_capacity_wh: float = 13500.0
    battery_initial_soc_pct: float = 40.0


@dataclass(frozen=True)
class GatewaySpec:
    mode: str = "subscribe"
    installer_export_limit_w: float = 10000.0
    comms_loss_export_limit_w: float = 1500.0
    comms_timeout_s: int = 2  # wall seconds of silence before the link is declared lost
    persistent_loss_s: int = 120  # wall seconds after that before the comms-loss limits apply
    self_consumption: bool = False  # True: the battery also soaks up surplus / covers load on its own
    loop_period_s: float = 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    end_min: float
    description: str = ""
    speed: float = 200.0
    start_clock: str = "10:00"
    utc_offset_h: float = 10.0
    settle_s: float = 5.0
    tolerance_w: float = 100.0
    tolerance_pct: float = 2.0
    site: SiteSpec = field(default_factory=SiteSpec)
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    default: Limits | None = None
    doe: tuple[Doe, ...] = ()
    emergency: tuple[Emergency, ...] = ()
    hems: tuple[Hems, ...] = ()
    outage: tuple[Outage, ...] = ()
    fault: tuple[Fault, ...] = ()
    source: str = "<memory>"

    # -- time ---------------------------------------------------------------------------------------

    def wall(self, minute: float) -> int:
        """Whole wall seconds from the scenario start to scenario minute ``minute``."""
        return math.floor(minute * 60.0 / self.speed + 0.5)

    def minute(self, wall_s: float) -> float:
        return wall_s * self.speed / 60.0

    @property
    def wall_duration_s(self) -> int:
        return self.wall(self.end_min)

    @property
    def start_second_of_day(self) -> int:
        hours, minutes = self.start_clock.split(":")
        return int(hours) * 3600 + int(minutes) * 60

    def clock_label(self, minute: float) -> str:
        """Local clock time of scenario minute ``minute`` (HH:MM)."""
        total = (self.start_second_of_day + round(minute * 60)) % 86400
        return f"{total // 3600:02d}:{total % 3600 // 60:02d}"

    def start_epoch(self, today: datetime | None = None) -> float:
        """Unix time of the scenario start on ``today``'s date in the scenario's time zone."""
        tz = timezone(timedelta(hours=self.utc_offset_h))
        day = (today or datetime.now(tz)).astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp() + self.start_second_of_day

    def with_speed(self, speed: float) -> Scenario:
        return replace(self, speed=speed)

    def tolerance(self, limit_w: float) -> float:
        """Allowed excess over a limit: max(tolerance_pct % of it, tolerance_w) (the server's rule)."""
        return Rules(tolerance_w=self.tolerance_w, tolerance_pct=self.tolerance_pct).tolerance(limit_w)


# ------------------------------------------------------------------------------------------- parsing


_TOP = {"scenario", "site", "gateway", "default", "doe", "emergency", "hems", "outage", "fault"}


def _number(
    table: dict[str, Any], key: str, where: str, *, low: float | None = 0.0, default: Any = ...
) -> Any:
    if key not in table:
        if default is ...:
            raise ScenarioError(f"{where}.{key}", "required")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{where}.{key}", f"must be a number, got {value!r}")
    if low is not None and value < low:
        raise ScenarioError(f"{where}.{key}", f"must be a number >= {low:g}, got {value!r}")
    return float(value)


def _bool(table: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}.{key}", f"must be true or false, got {value!r}")
    return value


def _whole(table: dict[str, Any], key: str, where: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScenarioError(f"{where}.{key}", f"must be a whole number of seconds >= 1, got {value!r}")
    return value


def _string(
    table: dict[str, Any], key: str, where: str, choices: tuple[str, ...] | None, default: Any
) -> Any:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, str):
        raise ScenarioError(f"{where}.{key}", f"must be a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ScenarioError(f"{where}.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ScenarioError(key, "must be a table ([" + key + "])")
    return value


def _tables(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ScenarioError(key, f"must be an array of tables ([[{key}]])")
    return value


def _known(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ScenarioError(
                f"{where}.{key}", f"unknown setting (expected one of {', '.join(sorted(allowed))})"
            )


def _points(table: dict[str, Any], key: str, where: str, default: tuple[tuple[float, float], ...]) -> Any:
    """A number (constant) or [[minute, W], ...] with increasing minutes."""
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ScenarioError(f"{where}.{key}", f"must be >= 0, got {value!r}")
        return ((0.0, float(value)),)
    if not isinstance(value, list) or not value:
        raise ScenarioError(f"{where}.{key}", "must be watts or a list of [minute, watts] points")
    points = []
    for i, point in enumerate(value):
        ok = (
            isinstance(point, list)
            and len(point) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in point)
        )
        if not ok:
            raise ScenarioError(f"{where}.{key}[{i}]", f"must be [minute, watts], got {point!r}")
        if point[1] < 0:
            raise ScenarioError(f"{where}.{key}[{i}]", f"watts must be >= 0, got {point[1]!r}")
        if points and point[0] <= points[-1][0]:
            raise ScenarioError(f"{where}.{key}[{i}]", "minutes must increase")
        points.append((float(point[0]), float(point[1])))
    return tuple(points)


def scenario_from_dict(doc: dict[str, Any], source: str = "<memory>") -> Scenario:
    """Build and validate a scenario from a parsed TOML document."""
    _known(doc, "scenario file", _TOP)
    top = _table(doc, "scenario")
    _known(
        top,
        "scenario",
        {"name", "description", "speed", "start_clock", "utc_offset_h", "end_min", "settle_s", "tolerance_w",
         "tolerance_pct"},
    )  # fmt: skip
    site_t = _table(doc, "site")
    _known(
        site_t,
        "site",
        {"family", "pv_rated_w", "pv_w", "load_w", "battery", "battery_rated_w", "battery_capacity_wh",
         "battery_initial_soc_pct"},
    )  # fmt: skip
    battery = _bool(site_t, "battery", "site", True)
    site = SiteSpec(
        family=_string(site_t, "family", "site", ("legacy", "der"), "legacy"),
        pv_rated_w=_number(site_t, "pv_rated_w", "site", low=1.0, default=6000.0),
        pv_w=_points(site_t, "pv_w", "site", SiteSpec.pv_w),
        load_w=_points(site_t, "load_w", "site", SiteSpec.load_w),
        battery=battery,
        battery_rated_w=_number(site_t, "battery_rated_w", "site", low=1.0, default=5000.0),
        battery_capacity_wh=_number(site_t, "battery_capacity_wh", "site", low=1.0, default=13500.0),
        battery_initial_soc_pct=_number(site_t, "battery_initial_soc_pct", "site", default=40.0),
    )
    if site.battery_initial_soc_pct > 100:
        raise ScenarioError("site.battery_initial_soc_pct", "must be 0..100")
    gw_t = _table(doc, "gateway")
    _known(
        gw_t,
        "gateway",
        {"mode", "installer_export_limit_w", "comms_loss_export_limit_w", "comms_timeout_s",
         "persistent_loss_s", "loop_period_s", "self_consumption"},
    )  # fmt: skip
    gateway = GatewaySpec(
        mode=_string(gw_t, "mode", "gateway", MODES, "subscribe"),
        installer_export_limit_w=_number(gw_t, "installer_export_limit_w", "gateway", default=10000.0),
        comms_loss_export_limit_w=_number(gw_t, "comms_loss_export_limit_w", "gateway", default=1500.0),
        comms_timeout_s=_whole(gw_t, "comms_timeout_s", "gateway", 2),
        persistent_loss_s=_whole(gw_t, "persistent_loss_s", "gateway", 120),
        loop_period_s=_number(gw_t, "loop_period_s", "gateway", low=0.05, default=0.5),
        self_consumption=_bool(gw_t, "self_consumption", "gateway", False),
    )
    default = None
    if "default" in doc:
        d_t = _table(doc, "default")
        _known(d_t, "default", {"export_limit_w", "import_limit_w"})
        default = Limits(
            _number(d_t, "export_limit_w", "default", default=None),
            _number(d_t, "import_limit_w", "default", default=None),
        )
        if default.export_limit_w is None and default.import_limit_w is None:
            raise ScenarioError("default", "give export_limit_w and/or import_limit_w")
    does = []
    for i, t in enumerate(_tables(doc, "doe")):
        w = f"doe[{i}]"
        _known(t, w, {"at_min", "duration_min", "export_limit_w", "import_limit_w"})
        does.append(
            Doe(
                _number(t, "at_min", w),
                _number(t, "duration_min", w, low=None),
                _number(t, "export_limit_w", w),
                _number(t, "import_limit_w", w),
            )
        )
    emergencies = []
    for i, t in enumerate(_tables(doc, "emergency")):
        w = f"emergency[{i}]"
        _known(t, w, {"at_min", "action", "target", "lift_at_min", "duration_min", "lift_spread_min"})
        emergencies.append(
            Emergency(
                at_min=_number(t, "at_min", w),
                action=_string(t, "action", w, EMERGENCY_ACTIONS, "zero_export"),
                target=_string(t, "target", w, ("all", "site"), "all"),
                lift_at_min=_number(t, "lift_at_min", w, default=None),
                duration_min=_number(t, "duration_min", w, low=None, default=1440.0),
                lift_spread_min=_number(t, "lift_spread_min", w, default=0.0),
            )
        )
    hems = []
    for i, t in enumerate(_tables(doc, "hems")):
        w = f"hems[{i}]"
        _known(t, w, {"at_min", "until_min", "battery_w"})
        hems.append(
            Hems(_number(t, "at_min", w), _number(t, "until_min", w), _number(t, "battery_w", w, low=None))
        )
    outages = []
    for i, t in enumerate(_tables(doc, "outage")):
        w = f"outage[{i}]"
        _known(t, w, {"at_min", "until_min"})
        outages.append(Outage(_number(t, "at_min", w), _number(t, "until_min", w)))
    faults = []
    for i, t in enumerate(_tables(doc, "fault")):
        w = f"fault[{i}]"
        _known(t, w, {"at_min", "device", "fault", "until_min"})
        if "device" not in t:
            raise ScenarioError(f"{w}.device", "required")
        if "fault" not in t:
            raise ScenarioError(f"{w}.fault", "required")
        faults.append(
            Fault(
                _number(t, "at_min", w),
                _string(t, "device", w, FAULT_DEVICES, None),
                _string(t, "fault", w, FAULTS, None),
                _number(t, "until_min", w, default=None),
            )
        )
    name = _string(top, "name", "scenario", None, Path(source).stem)
    start_clock = _string(top, "start_clock", "scenario", None, "10:00")
    scenario = Scenario(
        name=name,
        description=_string(top, "description", "scenario", None, ""),
        end_min=_number(top, "end_min", "scenario", low=None),
        speed=_number(top, "speed", "scenario", low=None, default=200.0),
        start_clock=start_clock,
        utc_offset_h=_number(top, "utc_offset_h", "scenario", low=-12.0, default=10.0),
        settle_s=_number(top, "settle_s", "scenario", default=5.0),
        tolerance_w=_number(top, "tolerance_w", "scenario", default=100.0),
        tolerance_pct=_number(top, "tolerance_pct", "scenario", default=2.0),
        site=site,
        gateway=gateway,
        default=default,
        doe=tuple(does),
        emergency=tuple(emergencies),
        hems=tuple(hems),
        outage=tuple(outages),
        fault=tuple(faults),
        source=source,
    )
    validate(scenario)
    return scenario


def validate(s: Scenario) -> None:
    """Cross-field rules: times inside the scenario, no overlaps, intervals long enough to judge."""
    if not s.speed > 0:
        raise ScenarioError("scenario.speed", f"must be > 0, got {s.speed:g}")
    if not s.end_min > 0:
        raise ScenarioError("scenario.end_min", f"must be > 0, got {s.end_min:g}")
    parts = s.start_clock.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) > 23 or int(parts[1]) > 59:
        raise ScenarioError("scenario.start_clock", f"must be HH:MM, got {s.start_clock!r}")
    if s.start_second_of_day + s.end_min * 60 > 86400:
        raise ScenarioError("scenario.end_min", "the scenario must end before midnight (profiles are daily)")
    if s.utc_offset_h > 14:
        raise ScenarioError("scenario.utc_offset_h", f"must be -12..14, got {s.utc_offset_h:g}")
    if s.wall_duration_s < 10:
        raise ScenarioError(
            "scenario.end_min", f"lasts {s.wall_duration_s} s of wall time at speed {s.speed:g}"
        )
    need = s.settle_s + 2.0  # a limit must hold long enough to be judged after its settling allowance

    def inside(where: str, minute: float) -> None:
        if not 0 <= minute <= s.end_min:
            raise ScenarioError(where, f"{minute:g} is outside the scenario (0..{s.end_min:g})")

    previous: Doe | None = None
    for i, d in enumerate(sorted(s.doe, key=lambda d: d.at_min)):
        index = s.doe.index(d)
        inside(f"doe[{index}].at_min", d.at_min)
        if not d.duration_min > 0:
            raise ScenarioError(f"doe[{index}].duration_min", f"must be > 0, got {d.duration_min:g}")
        wall = s.wall(d.at_min + d.duration_min) - s.wall(d.at_min)
        if wall < need:
            raise ScenarioError(
                f"doe[{index}].duration_min",
                f"{d.duration_min:g} min lasts {wall} s of wall time at speed {s.speed:g}; "
                f"needs at least {need:g} s (settle_s + 2)",
            )
        if previous is not None and d.at_min < previous.at_min + previous.duration_min:
            raise ScenarioError(f"doe[{index}].at_min", f"overlaps doe[{s.doe.index(previous)}]")
        previous = d
        del i
    for i, e in enumerate(s.emergency):
        w = f"emergency[{i}]"
        inside(f"{w}.at_min", e.at_min)
        end = e.lift_at_min if e.lift_at_min is not None else e.at_min + e.duration_min
        if not end > e.at_min:
            raise ScenarioError(f"{w}.lift_at_min", "must be after at_min")
        if s.wall(end) - s.wall(e.at_min) < need:
            raise ScenarioError(
                f"{w}.lift_at_min", f"the emergency must last at least {need:g} s of wall time"
            )
        spread_s = s.wall(e.lift_spread_min)
        if e.lift_spread_min > 0 and e.lift_at_min is None:
            raise ScenarioError(f"{w}.lift_spread_min", "a staged lift needs lift_at_min")
        if e.lift_spread_min > 0 and not 1 <= spread_s < 2**15:
            raise ScenarioError(
                f"{w}.lift_spread_min", f"is {spread_s} s of wall time at speed {s.speed:g}; needs 1..32767"
            )
        for j, o in enumerate(s.outage):
            for key, minute in (("at_min", e.at_min), ("lift_at_min", e.lift_at_min)):
                if minute is not None and o.at_min <= minute < o.until_min:
                    raise ScenarioError(
                        f"{w}.{key}", f"falls inside outage[{j}]: the gateway could not hear it"
                    )
        for j, other in enumerate(s.emergency[:i]):
            other_end = (
                other.lift_at_min if other.lift_at_min is not None else other.at_min + other.duration_min
            )
            if e.at_min < other_end and other.at_min < end:
                raise ScenarioError(f"{w}.at_min", f"overlaps emergency[{j}]")
    for i, h in enumerate(s.hems):
        inside(f"hems[{i}].at_min", h.at_min)
        if not h.until_min > h.at_min:
            raise ScenarioError(f"hems[{i}].until_min", "must be after at_min")
        if not s.site.battery:
            raise ScenarioError(f"hems[{i}]", "a battery setpoint needs site.battery = true")
        if abs(h.battery_w) > s.site.battery_rated_w:
            raise ScenarioError(
                f"hems[{i}].battery_w", f"exceeds site.battery_rated_w ({s.site.battery_rated_w:g})"
            )
    spans = sorted((o.at_min, o.until_min, i) for i, o in enumerate(s.outage))
    for k, (at, until, i) in enumerate(spans):
        inside(f"outage[{i}].at_min", at)
        if not until > at:
            raise ScenarioError(f"outage[{i}].until_min", "must be after at_min")
        if k and at < spans[k - 1][1]:
            raise ScenarioError(f"outage[{i}].at_min", f"overlaps outage[{spans[k - 1][2]}]")
    for i, f in enumerate(s.fault):
        inside(f"fault[{i}].at_min", f.at_min)
        if f.until_min is not None and not f.until_min > f.at_min:
            raise ScenarioError(f"fault[{i}].until_min", "must be after at_min")
        if f.device == "battery" and not s.site.battery:
            raise ScenarioError(f"fault[{i}].device", "the site has no battery (site.battery = false)")


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Load a scenario file, or a built-in one by name (``default``, ``stuck-inverter``), or the default."""
    if path is None or str(path) in BUILTIN:
        name = BUILTIN["default" if path is None else str(path)]
        text = resources.files("derlink.demo").joinpath(name).read_text()
        source = f"built-in:{name}"
    else:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ScenarioError("--scenario", f"file not found: {path}") from None
        except OSError as exc:
            raise ScenarioError("--scenario", f"cannot read {path}: {exc}") from None
        source = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, f"not valid TOML: {exc}") from None
    return scenario_from_dict(doc, source)


# -------------------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class Segment:
    """A stretch of wall time (offsets from the scenario start) with one set of applicable limits."""

    index: int
    start_s: int
    end_s: int
    export_limit_w: float | None
    import_limit_w: float | None
    source: str  # DOE | emergency | staged lift | default | comms-loss fallback | installer
    comms: str  # up | outage
    settle_from_s: int  # readings before this are within the settling allowance and not judged
    start_min: float = 0.0  # the scenario minutes the boundaries come from (labels; wall times rounded)
    end_min: float = 0.0

    def label(self, s: Scenario) -> str:
        return f"{s.clock_label(self.start_min)}-{s.clock_label(self.end_min)}"

    def describe(self, s: Scenario) -> str:
        parts = []
        if self.export_limit_w is not None:
            parts.append(f"export <= {self.export_limit_w:g} W")
        if self.import_limit_w is not None:
            parts.append(f"import <= {self.import_limit_w:g} W")
        limits = ", ".join(parts) or "no limit"
        comms = ", comms outage" if self.comms == "outage" else ""
        return f"interval {self.index} ({self.label(s)}, {self.source}: {limits}{comms})"


def emergency_end(e: Emergency) -> float:
    return e.lift_at_min if e.lift_at_min is not None else e.at_min + e.duration_min


def limits_at(s: Scenario, x: float) -> tuple[float | None, float | None, str, str]:
    """(export limit, import limit, source, comms) that apply at wall offset ``x``."""
    doe = next((d for d in s.doe if s.wall(d.at_min) <= x < s.wall(d.at_min + d.duration_min)), None)
    emergency = next((e for e in s.emergency if s.wall(e.at_min) <= x < s.wall(emergency_end(e))), None)
    lifting = next(
        (
            e
            for e in s.emergency
            if e.lift_at_min is not None
            and e.lift_spread_min > 0
            and s.wall(e.lift_at_min) <= x < s.wall(e.lift_at_min) + s.wall(e.lift_spread_min)
        ),
        None,
    )
    outage = next((o for o in s.outage if s.wall(o.at_min) <= x < s.wall(o.until_min)), None)
    comms = "outage" if outage else "up"
    installer = s.gateway.installer_export_limit_w
    if outage is not None:
        persistent_at = s.wall(outage.at_min) + s.gateway.comms_timeout_s + s.gateway.persistent_loss_s
        schedule_held = emergency is not None or doe is not None
        if not schedule_held and (s.default is None or x >= persistent_at):
            return (
                min(s.gateway.comms_loss_export_limit_w, installer),
                None,
                "comms-loss fallback",
                comms,
            )
    import_w = doe.import_limit_w if doe else s.default.import_limit_w if s.default else None
    if emergency is not None:
        return 0.0, import_w, "emergency", comms
    if doe is not None:
        source = "staged lift" if lifting else "DOE"
        return min(doe.export_limit_w, installer), import_w, source, comms
    if s.default is not None and s.default.export_limit_w is not None:
        return min(s.default.export_limit_w, installer), import_w, "default", comms
    return installer, import_w, "default" if s.default else "installer", comms


def applicable_segments(s: Scenario) -> list[Segment]:
    """The scenario's timeline of applicable limits, in wall offsets, merged where nothing changes."""
    minutes: dict[int, float] = {}  # wall offset -> the scenario minute it stands for

    def point(minute: float, wall: int | None = None) -> None:
        minutes.setdefault(s.wall(minute) if wall is None else wall, minute)

    point(0.0)
    point(s.end_min)
    for d in s.doe:
        point(d.at_min)
        point(d.at_min + d.duration_min)
    for e in s.emergency:
        point(e.at_min)
        point(emergency_end(e))
        if e.lift_at_min is not None and e.lift_spread_min > 0:
            point(e.lift_at_min + e.lift_spread_min, s.wall(e.lift_at_min) + s.wall(e.lift_spread_min))
    for o in s.outage:
        point(o.at_min)
        point(o.until_min)
        persistent = math.ceil(s.wall(o.at_min) + s.gateway.comms_timeout_s + s.gateway.persistent_loss_s)
        point(s.minute(persistent), persistent)
    bounds = sorted(p for p in minutes if 0 <= p <= s.wall_duration_s)
    segments: list[Segment] = []
    for a, b in itertools.pairwise(bounds):
        exp, imp, source, comms = limits_at(s, a)
        last = segments[-1] if segments else None
        if last is not None and (last.export_limit_w, last.import_limit_w, last.source, last.comms) == (
            exp,
            imp,
            source,
            comms,
        ):
            segments[-1] = replace(last, end_s=b, end_min=minutes[b])
            continue
        # The settling allowance runs from each change that tightens a limit (a control start): a
        # reading within the old, stricter limit is within a looser one too, so loosening needs none.
        tightened = last is None or _tighter(exp, last.export_limit_w) or _tighter(imp, last.import_limit_w)
        settle = a + math.ceil(s.settle_s) if tightened else max(a, last.settle_from_s if last else a)
        segments.append(
            Segment(len(segments) + 1, a, b, exp, imp, source, comms, settle, minutes[a], minutes[b])
        )
    return segments


def _tighter(new: float | None, old: float | None) -> bool:
    return new is not None and (old is None or new < old)
