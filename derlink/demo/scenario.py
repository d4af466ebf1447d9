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

import dataclasses
import itertools
import math
import tomllib
from dataclasses import field, replace
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic.dataclasses import dataclass

from server.compliance.judge import Rules

BUILTIN = {"default": "default.toml", "stuck-inverter": "stuck_inverter.toml"}


class ScenarioError(ValueError):
    """The scenario cannot be played; ``field`` names the offending setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


# ---------------------------------------------------------------------------------------------- model
# pydantic dataclasses: each field's type and bounds are declared here (numbers must be finite numbers,
# TOML "5" is not 5; unknown keys are refused); validate() checks the rules that join fields.

_Num = Annotated[float, Strict()]
_NonNeg = Annotated[float, Strict(), Field(ge=0)]
_Bool = Annotated[bool, Strict()]
_Str = Annotated[str, Strict()]
_Seconds = Annotated[int, Strict(), Field(ge=1)]
_TABLE = ConfigDict(extra="forbid", allow_inf_nan=False)


def _constant(value: Any) -> Any:
    """A number for a constant profile, or [[minute, W], ...]."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [[0.0, value]]
    if isinstance(value, list) and not value:
        raise ValueError("must be watts or a list of [minute, watts] points")
    return value


_Points = Annotated[tuple[tuple[_Num, _NonNeg], ...], BeforeValidator(_constant)]


@dataclass(frozen=True, config=_TABLE)
class Doe:
    at_min: _NonNeg
    duration_min: Annotated[float, Strict(), Field(gt=0)]
    export_limit_w: _NonNeg
    import_limit_w: _NonNeg


@dataclass(frozen=True, config=_TABLE)
class Emergency:
    at_min: _NonNeg
    # all three mean: export 0 at the site
    action: Literal["zero_export", "zero_generation", "disconnect"] = "zero_export"
    target: Literal["all", "site"] = "all"  # broadcast; or "site" for this site only
    lift_at_min: _NonNeg | None = None  # None: runs for duration_min
    duration_min: _Num = 1440.0
    lift_spread_min: _NonNeg = 0.0  # staged lift: restore spread (randomised) over this many minutes


@dataclass(frozen=True, config=_TABLE)
class Hems:
    """A home-energy-management setpoint given to the gateway's local API (clipped into the envelope)."""

    at_min: _NonNeg
    until_min: _NonNeg
    battery_w: _Num  # + discharge, - charge


@dataclass(frozen=True, config=_TABLE)
class Outage:
    at_min: _NonNeg
    until_min: _NonNeg


@dataclass(frozen=True, config=_TABLE)
class Fault:
    at_min: _NonNeg
    device: Literal["pv", "battery", "meter"]
    fault: Literal["stuck", "offline", "slow", "frozen", "exception"]
    until_min: _NonNeg | None = None


@dataclass(frozen=True, config=_TABLE)
class Limits:
    export_limit_w: _NonNeg | None = None
    import_limit_w: _NonNeg | None = None


@dataclass(frozen=True, config=_TABLE)
class SiteSpec:
    family: Literal["legacy", "der"] = "legacy"
    pv_rated_w: Annotated[float, Strict(), Field(ge=1)] = 6000.0
    pv_w: _Points = ((0.0, 5500.0),)  # (minute, W) points, linear
    load_w: _Points = ((0.0, 600.0),)
    battery: _Bool = True
    battery_rated_w: Annotated[float, Strict(), Field(ge=1)] = 5000.0
    battery_capacity_wh: Annotated[float, Strict(), Field(ge=1)] = 13500.0
    battery_initial_soc_pct: Annotated[float, Strict(), Field(ge=0, le=100)] = 40.0


@dataclass(frozen=True, config=_TABLE)
class GatewaySpec:
    mode: Literal["subscribe", "poll"] = "subscribe"
    installer_export_limit_w: _NonNeg = 10000.0
    comms_loss_export_limit_w: _NonNeg = 1500.0
    comms_timeout_s: _Seconds = 2  # wall seconds of silence before the link is declared lost
    persistent_loss_s: _Seconds = 120  # wall seconds after that before the comms-loss limits apply
    self_consumption: _Bool = False  # True: the battery also soaks up surplus / covers load on its own
    loop_period_s: Annotated[float, Strict(), Field(ge=0.05)] = 0.5


@dataclass(frozen=True, config=_TABLE)
class Scenario:
    name: _Str
    end_min: Annotated[float, Strict(), Field(gt=0)]
    description: _Str = ""
    speed: Annotated[float, Strict(), Field(gt=0)] = 200.0
    start_clock: _Str = "10:00"
    utc_offset_h: Annotated[float, Strict(), Field(ge=-12, le=14)] = 10.0
    settle_s: _NonNeg = 5.0
    tolerance_w: _NonNeg = 100.0
    tolerance_pct: _NonNeg = 2.0
    site: SiteSpec = field(default_factory=SiteSpec)
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    default: Limits | None = None
    doe: tuple[Doe, ...] = ()
    emergency: tuple[Emergency, ...] = ()
    hems: tuple[Hems, ...] = ()
    outage: tuple[Outage, ...] = ()
    fault: tuple[Fault, ...] = ()
    source: _Str = "<memory>"

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

_TABLES = ("site", "gateway", "default")  # [site] ...
_ARRAYS = ("doe", "emergency", "hems", "outage", "fault")  # [[doe]] ...
_TOP = {"scenario", *_TABLES, *_ARRAYS}
_SCENARIO_KEYS = ("name", "description", "speed", "start_clock", "utc_offset_h", "end_min", "settle_s",
                  "tolerance_w", "tolerance_pct")  # fmt: skip
_MESSAGES = {
    "missing": "required",
    "missing_argument": "required",
    "unexpected_keyword_argument": "unknown setting",
    "extra_forbidden": "unknown setting",
    "float_type": "must be a number, got {input!r}",
    "finite_number": "must be a finite number, got {input!r}",
    "int_type": "must be a whole number of seconds >= 1, got {input!r}",
    "bool_type": "must be true or false, got {input!r}",
    "string_type": "must be a string, got {input!r}",
    "greater_than_equal": "must be a number >= {ge}, got {input!r}",
    "greater_than": "must be > {gt}, got {input!r}",
    "less_than_equal": "must be <= {le}, got {input!r}",
    "literal_error": "must be one of {expected}, got {input!r}",
    "dataclass_type": "must be a table",
    "tuple_type": "must be an array of tables",
    "dataclass_args_type": "must be a table",
}


def _field(loc: tuple[Any, ...]) -> str:
    """Where in the file: ("doe", 2, "at_min") -> doe[2].at_min; ("speed",) -> scenario.speed."""
    head, *rest = loc
    where = str(head) if head in _TOP else f"scenario.{head}"
    for part in rest:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where


def scenario_from_dict(doc: dict[str, Any], source: str = "<memory>") -> Scenario:
    """Build and validate a scenario from a parsed TOML document."""
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise ScenarioError(f"scenario file.{unknown[0]}",
                            f"unknown setting (expected one of {', '.join(sorted(_TOP))})")  # fmt: skip
    top = doc.get("scenario", {})
    if not isinstance(top, dict):
        raise ScenarioError("scenario", "must be a table ([scenario])")
    unknown = sorted(set(top) - set(_SCENARIO_KEYS))
    if unknown:
        expected = ", ".join(sorted(_SCENARIO_KEYS))
        raise ScenarioError(f"scenario.{unknown[0]}", f"unknown setting (expected one of {expected})")
    values = {"name": Path(source).stem, **top, **{k: doc[k] for k in (*_TABLES, *_ARRAYS) if k in doc},
              "source": source}  # fmt: skip
    try:
        scenario = Scenario(**values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
        template = _MESSAGES.get(error["type"])
        if template is not None:
            message = template.format(input=error.get("input"), **ctx)
        else:  # a validator's own ValueError, or a message pydantic words well enough
            message = str(ctx["error"]) if error["type"] == "value_error" else error["msg"]
        raise ScenarioError(_field(error["loc"]), message) from None
    validate(scenario)
    return scenario


def validate(s: Scenario) -> None:
    """Cross-field rules: times inside the scenario, no overlaps, intervals long enough to judge."""
    parts = s.start_clock.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) > 23 or int(parts[1]) > 59:
        raise ScenarioError("scenario.start_clock", f"must be HH:MM, got {s.start_clock!r}")
    if s.start_second_of_day + s.end_min * 60 > 86400:
        raise ScenarioError("scenario.end_min", "the scenario must end before midnight (profiles are daily)")
    if s.wall_duration_s < 10:
        raise ScenarioError(
            "scenario.end_min", f"lasts {s.wall_duration_s} s of wall time at speed {s.speed:g}"
        )
    for key in ("pv_w", "load_w"):
        points = getattr(s.site, key)
        for i in range(1, len(points)):
            if points[i][0] <= points[i - 1][0]:
                raise ScenarioError(f"site.{key}[{i}]", "minutes must increase")
    if s.default is not None and s.default.export_limit_w is None and s.default.import_limit_w is None:
        raise ScenarioError("default", "give export_limit_w and/or import_limit_w")
    need = s.settle_s + 2.0  # a limit must hold long enough to be judged after its settling allowance

    def inside(where: str, minute: float) -> None:
        if not 0 <= minute <= s.end_min:
            raise ScenarioError(where, f"{minute:g} is outside the scenario (0..{s.end_min:g})")

    previous: Doe | None = None
    for i, d in enumerate(sorted(s.doe, key=lambda d: d.at_min)):
        index = s.doe.index(d)
        inside(f"doe[{index}].at_min", d.at_min)
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


@dataclasses.dataclass(frozen=True)
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
