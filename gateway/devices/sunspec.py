"""SunSpec model maps for the gateway, computed from pysunspec2's model definitions.

No register address is typed by hand: each model's point offsets, sizes, types, access and scale-factor
references come from the JSON definitions pysunspec2 ships (``sunspec2.device.get_model_def``), and values
are converted with ``sunspec2.mb.point_type_info``. A :class:`ModelMap` is built for every model found
while walking a device's chain, from its start address and its ``L`` (repeating groups are counted from
the model's own count points, or from the space ``L`` leaves for them).

Values: :meth:`ModelMap.decode` returns engineering values (scale factor applied; ``None`` for the
"not implemented" patterns 0x8000 / 0xFFFF / NaN / empty string); :meth:`ModelMap.encode` is the
inverse and refuses values the point's type cannot hold, naming the point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import sunspec2.mb as mb
import sunspec2.mdef as mdef
from sunspec2.device import get_model_def

from fieldbus.sunspec_types import (
    VALUE_RANGES,
    PointDef,
    decode_registers,
    encode_registers,
    point_size,
    walk_group,
)

BASE_ADDRESSES = (40000, 0, 50000)
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = mb.SUNS_END_MODEL_ID
MAX_READ = 125  # registers per Modbus read request


class ModelDefinitionError(ValueError):
    """The device's model does not fit its definition (e.g. L too short)."""


Point = PointDef  # one point of a ModelMap


@dataclass
class ModelMap:
    """One model instance on one device: where it is and where each of its points is."""

    model_id: int
    address: int  # absolute register address of the model's ID register
    length: int  # L: registers after ID and L
    label: str = ""
    points: dict[str, Point] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.address + 2 + self.length

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"model {self.model_id} has no point {name!r}") from None

    # -------------------------------------------------------------------------------- values
    def raw(self, regs: list[int], name: str) -> int | float | str | None:
        """The raw value of a point from the model's registers (index 0 = ID), None if unimplemented."""
        p = self.point(name)
        if p.offset + p.size > len(regs):
            raise ModelDefinitionError(f"model {self.model_id} point {name} lies beyond the model's data")
        if p.type == mdef.TYPE_PAD:
            return None
        return decode_registers(p.type, regs[p.offset : p.offset + p.size])

    def scale(self, regs: list[int], name: str) -> int:
        """The point's scale factor exponent (0 if it has none); error if the SF is unimplemented."""
        p = self.point(name)
        if p.sf is None:
            return 0
        sf = self.raw(regs, p.sf)
        if sf is None or not -10 <= int(sf) <= 10:
            raise ModelDefinitionError(f"model {self.model_id}: scale factor {p.sf} of {name} is {sf!r}")
        return int(sf)

    def decode(self, regs: list[int], name: str) -> float | int | str | None:
        """Engineering value of a point (scale factor applied), None when not implemented."""
        raw = self.raw(regs, name)
        p = self.points[name]
        if raw is None or p.sf is None or isinstance(raw, str):
            return raw
        sf = self.raw(regs, p.sf)
        if sf is None:  # a value whose scale factor is unimplemented cannot be interpreted
            return None
        return raw * 10 ** int(sf) if int(sf) >= 0 else raw / 10 ** -int(sf)

    def decode_all(self, regs: list[int]) -> dict[str, Any]:
        return {n: self.decode(regs, n) for n, p in self.points.items() if p.type != mdef.TYPE_SUNSSF}

    def encode(
        self, regs: list[int], name: str, value: float | int | str | None, floor: bool = False
    ) -> list[int]:
        """Registers for `value` (engineering units, scaled with the SF in `regs`). None = unimplemented.

        The value is rounded to the register's resolution (down if `floor`)."""
        p = self.point(name)
        if value is None or p.type in (mdef.TYPE_STRING, mdef.TYPE_FLOAT32, mdef.TYPE_FLOAT64):
            return encode_registers(p.type, p.size, value)
        sf = self.scale(regs, name)
        scaled = float(value) * 10.0**-sf
        raw = math.floor(scaled + 1e-9) if floor else round(scaled)
        lo, hi = VALUE_RANGES.get(p.type, (0, 2 ** (16 * p.size) - 1))
        if not lo <= raw <= hi:
            unit = f" (x10^{sf})" if sf else ""
            raise ValueError(
                f"{self.model_id}.{name}: {value} does not fit a {p.type}{unit}; "
                f"allowed {lo * 10**sf:g}..{hi * 10**sf:g}"
            )
        if p.symbols is not None and p.type.startswith("enum") and raw not in p.symbols:
            raise ValueError(f"{self.model_id}.{name}: {raw} is not one of {sorted(p.symbols)}")
        return encode_registers(p.type, p.size, raw)


def build_model_map(model_id: int, address: int, length: int, regs: list[int] | None = None) -> ModelMap:
    """Lay out model `model_id` found at `address` with length `length`.

    `regs` (the model's registers from its ID on) resolves repeating-group counts held in points; without
    it, or when a count is not a point, a trailing repeating group fills the space ``L`` leaves.
    """
    mdef_json = get_model_def(model_id)
    group = mdef_json[mdef.GROUP]
    mm = ModelMap(model_id=model_id, address=address, length=length, label=group.get(mdef.LABEL, ""))
    limit = 2 + length

    def add(point: PointDef) -> None:
        mm.points[point.name] = point

    def count_of(sub: dict, prefix: str, offset: int, following: list[dict]) -> tuple[int, bool]:
        count_ref = sub.get(mdef.COUNT, 1)
        if isinstance(count_ref, int) and count_ref > 0:
            return count_ref, count_ref > 1
        count = None
        if isinstance(count_ref, str):
            name = f"{prefix}{count_ref}" if f"{prefix}{count_ref}" in mm.points else count_ref
            if regs is not None and name in mm.points and len(regs) >= limit:
                value = mm.raw(regs, name)
                count = int(value) if isinstance(value, int) else 0
        if count is None:  # only a trailing group can fill the rest of L
            size = _group_size(sub)
            rest = limit - offset - sum(_group_size(s) for s in following)
            count = max(rest, 0) // size if size else 0
        return count, True

    end = walk_group(group, "", 0, add, count_of)
    if end > limit:
        raise ModelDefinitionError(
            f"model {model_id} at {address}: definition needs {end - 2} registers, device says L={length}"
        )
    return mm


def _group_size(gdef: dict) -> int:
    size = sum(point_size(p) for p in gdef.get(mdef.POINTS, []))
    for sub in gdef.get(mdef.GROUPS, []):
        count = sub.get(mdef.COUNT, 1)
        size += _group_size(sub) * (count if isinstance(count, int) else 0)
    return size
