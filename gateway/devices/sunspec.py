"""SunSpec model maps for the gateway, laid out by pysunspec2's own model objects.

No register address is typed by hand: a :class:`ModelMap` is built for every model found while walking a
device's chain, from its start address, its ``L`` and the repeating-group counts its count points hold;
``fieldbus.sunspec_types.model_layout`` has pysunspec2's ``sunspec2.device.Model`` place every point
(offset, size, type, access, scale-factor point), and values are converted with
``sunspec2.mb.point_type_info``.

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

from fieldbus.sunspec_types import (
    VALUE_RANGES,
    PointDef,
    count_points,
    decode_registers,
    encode_registers,
    model_layout,
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
    """Lay out model `model_id` found at `address` with length `length`, as pysunspec2 lays it out.

    `regs` (the model's registers from its ID on) gives the repeating-group counts held in points; a count
    it does not hold (or an unimplemented one) is 0. A legacy model's repetitions are counted from ``L``
    (``sunspec2.device.ModelError`` if L holds no whole number of them: the scan keeps such a model's place
    as an unknown model).
    """
    counts: dict[str, int] = {}
    names = count_points(model_id)
    if names:
        top = {p.name: p for p in model_layout(model_id, dict.fromkeys(names, 0)).points}
        for name in names:
            p = top[name]
            value = None
            if regs is not None and p.offset + p.size <= len(regs):
                value = decode_registers(p.type, regs[p.offset : p.offset + p.size])
            counts[name] = value if isinstance(value, int) else 0
            if counts[name] > length:  # each repetition takes a register at least
                raise ModelDefinitionError(f"model {model_id} at {address}: {name}={value} with L={length}")
    layout = model_layout(model_id, counts, length)
    if layout.length > 2 + length:
        raise ModelDefinitionError(
            f"model {model_id} at {address}: definition needs {layout.length - 2} registers, "
            f"device says L={length}"
        )
    return ModelMap(model_id, address, length, layout.label, {p.name: p for p in layout.points})
