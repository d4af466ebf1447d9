"""Control hierarchy: combine every source's limits into one envelope, and clip setpoints into it.

Sources, highest authority first (mission brief, "The gateway: control hierarchy"): LOCAL_EMERGENCY,
UTILITY, AGGREGATOR, CUSTOMER, INSTALLER.

* Limits (export/import at the connection point, generation, load, max W %, battery reserve) combine to the
  most restrictive value over all sources; on a tie the higher-authority source is credited.
* connect/energize: any source saying False wins (credited to the highest such source).
* Ramp parameters come from the highest-authority source that gives them.
* Setpoints (``target_w``, ``storage_target_w``, ``fixed_w_pct``, ``export_target_w``) come from the
  highest-authority source that gives one and are then clipped into the envelope. Limits are obligations
  of every source (a connection agreement binds as much as a DOE), so a setpoint is clipped into the
  whole envelope; an envelope is never widened by a setpoint. A disconnect/de-energise forces setpoints to 0.
* ``None`` means unlimited/unset and is only the result when no source gives a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any

from gateway.core.events import ControlSettings


class Source(IntEnum):
    """Lower value = higher authority."""

    LOCAL_EMERGENCY = 1
    UTILITY = 2
    AGGREGATOR = 3
    CUSTOMER = 4
    INSTALLER = 5


@dataclass(frozen=True)
class Layer:
    """One source's contribution. ``details`` names the origin per field (else ``detail`` is used)."""

    source: Source
    settings: ControlSettings = field(default_factory=ControlSettings)
    detail: str = ""
    details: Mapping[str, str] = field(default_factory=dict)
    export_target_w: float | None = None  # connection-point setpoint (+ export, - import)
    battery_reserve_pct: float | None = None  # minimum state of charge to keep

    def why(self, name: str) -> str:
        return self.details.get(name, self.detail)


@dataclass(frozen=True)
class Limit:
    value: float | bool | None
    source: Source | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "source": self.source.name if self.source else None,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limit:
        return cls(d["value"], Source[d["source"]] if d["source"] else None, d["detail"])


UNSET = Limit(None)


@dataclass(frozen=True)
class Setpoint:
    requested: float
    value: float
    source: Source
    detail: str
    clipped_by: Source | None = None
    clip_detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("requested", "value", "detail", "clip_detail")},
            "source": self.source.name,
            "clipped_by": self.clipped_by.name if self.clipped_by else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Setpoint:
        clipped = Source[d["clipped_by"]] if d["clipped_by"] else None
        return cls(d["requested"], d["value"], Source[d["source"]], d["detail"], clipped, d["clip_detail"])


SETPOINTS = ("target_w", "storage_target_w", "fixed_w_pct", "export_target_w")
_UNITS = {"pct": "%", "_w": " W", "_s": " s"}
# EffectiveLimits field -> ControlSettings field
_LIMIT_MAP = {
    "export_w": "export_limit_w",
    "import_w": "import_limit_w",
    "generation_w": "generation_limit_w",
    "load_w": "load_limit_w",
    "max_w_pct": "max_lim_w_pct",
    "consumption_pct": "max_consumption_pct",
}


@dataclass(frozen=True)
class EffectiveLimits:
    export_w: Limit = UNSET
    import_w: Limit = UNSET
    generation_w: Limit = UNSET
    load_w: Limit = UNSET
    max_w_pct: Limit = UNSET
    consumption_pct: Limit = UNSET  # storage charging / controllable loads, % of rated (DRM 1-3)
    battery_reserve_pct: Limit = UNSET
    connect: Limit = UNSET
    energize: Limit = UNSET
    no_load_increase: Limit = UNSET  # controllable loads frozen at their draw (any source saying True)
    ramp_time_s: Limit = UNSET
    set_grad_w: Limit = UNSET
    target_w: Setpoint | None = None
    storage_target_w: Setpoint | None = None  # CSIP-AUS v1.3 opModStorageTargetW, + discharge
    fixed_w_pct: Setpoint | None = None
    export_target_w: Setpoint | None = None

    def explain(self) -> list[str]:
        """One human-readable line per field: value, and the source that set it."""
        lines = []
        for f in fields(self):
            item = getattr(self, f.name)
            unit = next((u for suffix, u in _UNITS.items() if f.name.endswith(suffix)), "")
            if isinstance(item, Limit):
                if item.value is None:
                    unset = "unlimited" if f.name in _LIMIT_MAP else "not set"
                    lines.append(f"{f.name}: {unset} (no source sets it)")
                else:
                    lines.append(
                        f"{f.name}: {_fmt(item.value)}{unit} from {item.source.name} ({item.detail})"
                    )
            elif item is not None:
                line = f"{f.name}: {_fmt(item.value)}{unit} from {item.source.name} ({item.detail})"
                if item.clipped_by is not None:
                    line += f", requested {_fmt(item.requested)}{unit}, clipped by {item.clipped_by.name}"
                    line += f" ({item.clip_detail})"
                lines.append(line)
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (getattr(self, f.name).to_dict() if getattr(self, f.name) else None) for f in fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EffectiveLimits:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = d.get(f.name)
            if f.name in SETPOINTS:
                kwargs[f.name] = Setpoint.from_dict(raw) if raw else None
            else:
                kwargs[f.name] = Limit.from_dict(raw) if raw else UNSET
        return cls(**kwargs)


def _fmt(value: float | bool) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}"


def _most_restrictive(candidates: Iterable[tuple[float | None, Layer, str]], pick_max: bool = False) -> Limit:
    best = UNSET
    for value, layer, name in candidates:  # candidates arrive highest authority first
        if value is None:
            continue
        if best.value is None or (value > best.value if pick_max else value < best.value):
            best = Limit(value, layer.source, layer.why(name))
    return best


def combine(layers: Iterable[Layer], soc_pct: float | None = None) -> EffectiveLimits:
    """Combine the sources' layers into the effective limits (pure). ``soc_pct`` feeds the reserve check."""
    ordered = sorted(layers, key=lambda layer: layer.source)
    out: dict[str, Any] = {}
    for name, setting in _LIMIT_MAP.items():
        out[name] = _most_restrictive((getattr(lay.settings, setting), lay, setting) for lay in ordered)
    out["battery_reserve_pct"] = _most_restrictive(
        ((lay.battery_reserve_pct, lay, "battery_reserve_pct") for lay in ordered), pick_max=True
    )
    for name in ("connect", "energize"):
        given = [
            (getattr(lay.settings, name), lay) for lay in ordered if getattr(lay.settings, name) is not None
        ]
        off = next(((v, lay) for v, lay in given if v is False), None)
        chosen = off or (given[0] if given else None)
        out[name] = Limit(chosen[0], chosen[1].source, chosen[1].why(name)) if chosen else UNSET
    freeze = next((lay for lay in ordered if lay.settings.no_load_increase), None)
    out["no_load_increase"] = Limit(True, freeze.source, freeze.why("no_load_increase")) if freeze else UNSET
    for name in ("ramp_time_s", "set_grad_w"):
        lay = next((lay for lay in ordered if getattr(lay.settings, name) is not None), None)
        out[name] = Limit(getattr(lay.settings, name), lay.source, lay.why(name)) if lay else UNSET

    off = next((out[n] for n in ("connect", "energize") if out[n].value is False), None)

    def clip(name: str, requested_from: list[tuple[float | None, Layer]], bounds: list[tuple[str, Limit]]):
        found = next(((v, lay) for v, lay in requested_from if v is not None), None)
        if found is None:
            return None
        requested, lay = found
        value, by, why = requested, None, ""
        if off is not None:
            return Setpoint(
                requested, 0.0, lay.source, lay.why(name), off.source, f"disconnect: {off.detail}"
            )
        for kind, bound in bounds:
            if bound.value is None:
                continue
            if (kind == "max" and value > bound.value) or (kind == "min" and value < bound.value):
                value, by, why = bound.value, bound.source, bound.detail
        return Setpoint(requested, value, lay.source, lay.why(name), by, why)

    def neg(limit: Limit) -> Limit:
        return Limit(-limit.value, limit.source, limit.detail) if limit.value is not None else limit

    reserve = out["battery_reserve_pct"]
    reserve_bound = UNSET
    if reserve.value is not None and (soc_pct is None or soc_pct <= reserve.value):
        soc_text = "unknown" if soc_pct is None else f"{soc_pct:g}%"
        reserve_bound = Limit(0.0, reserve.source, f"battery reserve {reserve.value:g}%, SoC {soc_text}")
    # A battery setpoint: discharge counts as generation, charging as load (CSIP-AUS opModGenLimW /
    # opModLoadLimW), and the reserve stops discharge.
    battery_bounds = [("max", out["generation_w"]), ("max", reserve_bound), ("min", neg(out["load_w"]))]
    for name in ("target_w", "storage_target_w"):
        out[name] = clip(name, [(getattr(lay.settings, name), lay) for lay in ordered], battery_bounds)
    out["fixed_w_pct"] = clip(
        "fixed_w_pct",
        [(lay.settings.fixed_w_pct, lay) for lay in ordered],
        [("max", out["max_w_pct"]), ("min", neg(out["consumption_pct"]))],
    )
    out["export_target_w"] = clip(
        "export_target_w",
        [(lay.export_target_w, lay) for lay in ordered],
        [("max", out["export_w"]), ("min", neg(out["import_w"]))],
    )
    return EffectiveLimits(**out)
