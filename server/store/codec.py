"""sep2 objects <-> compact JSON (stored control bases), and operator units -> DERControlBase."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from sep2 import resources as r
from sep2.base import resolve_type


def to_jsonable(obj: Any) -> dict[str, Any]:
    """A sep2 dataclass as a compact dict (None and empty lists dropped)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or value == []:
            continue
        if dataclasses.is_dataclass(value):
            out[f.name] = to_jsonable(value)
        elif isinstance(value, list):
            out[f.name] = [to_jsonable(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out


def from_jsonable(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        xsd_type = fields[name].metadata.get("xsd_type")
        if isinstance(value, dict):
            kwargs[name] = from_jsonable(resolve_type(xsd_type), value)
        elif isinstance(value, list):
            kwargs[name] = [
                from_jsonable(resolve_type(xsd_type), v) if isinstance(v, dict) else v for v in value
            ]
        else:
            kwargs[name] = value
    return cls(**kwargs)


@functools.lru_cache(maxsize=8192)
def control_base_from_json(text: str) -> r.DERControlBase:
    """The stored control base as a sep2 object. Memoised by its text (a fleet shares few distinct bases,
    and decoding was a quarter of an uncached DERControlList): the result is shared, never mutate it."""
    return from_jsonable(r.DERControlBase, json.loads(text))


class AdminError(ValueError):
    """An operator request that cannot be applied; the message names the field. Nothing was changed."""


_POWER_FIELDS = {
    "import_limit_w": "opModImpLimW",
    "export_limit_w": "opModExpLimW",
    "generation_limit_w": "opModGenLimW",
    "load_limit_w": "opModLoadLimW",
    "target_w": "opModTargetW",
    "storage_target_w": "opModStorageTargetW",  # CSIP-AUS v1.3 storage extension: + discharge, - charge
}


def build_control_base(
    *,
    import_limit_w: float | None = None,
    export_limit_w: float | None = None,
    generation_limit_w: float | None = None,
    load_limit_w: float | None = None,
    target_w: float | None = None,
    storage_target_w: float | None = None,
    connect: bool | None = None,
    energize: bool | None = None,
    fixed_w_percent: int | None = None,
    max_lim_w_percent: int | None = None,
    ramp_tms: int | None = None,
) -> r.DERControlBase:
    """A DERControlBase from operator units (watts, percent, 1/100 s). Errors name the argument.

    Every field is optional: an empty DERControlBase is valid 2030.5 (e.g. a DefaultDERControl that only
    sets ``setGradW``, or a control that only sets ``rampTms``)."""
    kwargs: dict[str, Any] = {}
    given = dict(
        import_limit_w=import_limit_w,
        export_limit_w=export_limit_w,
        generation_limit_w=generation_limit_w,
        load_limit_w=load_limit_w,
        target_w=target_w,
        storage_target_w=storage_target_w,
    )
    for arg, value in given.items():
        if value is None:
            continue
        if arg not in ("target_w", "storage_target_w") and value < 0:
            raise AdminError(f"{arg}: must not be negative, got {value}")
        try:
            kwargs[_POWER_FIELDS[arg]] = r.ActivePower.from_watts(float(value))
        except ValueError as exc:
            raise AdminError(
                f"{arg}: {value} W cannot be expressed as a 2030.5 ActivePower ({exc})"
            ) from None
    if connect is not None:
        kwargs["opModConnect"] = bool(connect)
    if energize is not None:
        kwargs["opModEnergize"] = bool(energize)
    for arg, field_name, low, high in (
        ("fixed_w_percent", "opModFixedW", -10000, 10000),
        ("max_lim_w_percent", "opModMaxLimW", 0, 10000),
        ("ramp_tms", "rampTms", 0, 65535),
    ):
        value = locals()[arg]
        if value is None:
            continue
        if not isinstance(value, int) or not low <= value <= high:
            raise AdminError(f"{arg}: must be an integer in [{low}, {high}], got {value!r}")
        kwargs[field_name] = value
    return r.DERControlBase(**kwargs)


# ----------------------------------------------------------------------------------------- the engine
