"""SunSpec register maps laid out by pysunspec2's own model objects.

Nothing here hand-types an address: every point's offset, size, type, access and scale-factor name is
where pysunspec2's ``sunspec2.device.Model`` places it, for the repeating-group counts of the device type
(``fieldbus.sunspec_types.model_layout``). Encoding and decoding use ``sunspec2.mb.point_type_info``.

A :class:`RegisterLayout` is computed once per device type (model chain + repeating-group counts) and
shared by every simulated device of that type, so a fleet of thousands of devices holds one layout
and one ``list[int]`` register image per device.

Addressing: the map starts at the SunSpec base address 40000 as a Modbus PDU address (what pysunspec2,
and most SunSpec clients, call "40000"): registers 40000-40001 hold ``SunS``, model 1 starts at 40002,
and the chain ends with the end model (ID 0xFFFF, L 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sunspec2.mb as mb

from fieldbus.sunspec_types import (
    VALUE_RANGES,
    count_points,
    decode_registers,
    encode_registers,
    model_layout,
)

SUNSPEC_BASE_ADDRESS = 40000
END_MODEL_ID = mb.SUNS_END_MODEL_ID


@dataclass(frozen=True, slots=True)
class PointSlot:
    """Where one point lives in a device's register image (offset from the base address)."""

    name: str  # "123.WMaxLimPct", "705.Crv[1].Pt[2].V"
    model_id: int
    offset: int
    size: int
    type: str
    access: str  # "R" or "RW"
    sf: str | None  # full name of the scale-factor point, or None
    symbols: frozenset[int] | None  # allowed enum values, if the definition lists them


@dataclass(slots=True)
class ModelBlock:
    model_id: int
    offset: int  # offset of the ID register
    length: int  # the L value (registers after ID and L)


@dataclass
class RegisterLayout:
    """The register map of one device type, derived from the model definitions."""

    model_ids: tuple[int, ...]
    group_counts: dict[str, int]
    points: dict[str, PointSlot] = field(default_factory=dict)
    models: list[ModelBlock] = field(default_factory=list)
    size: int = 0  # total registers including 'SunS' and the end model
    _by_register: list[tuple[PointSlot, ...]] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------------
    def point(self, name: str) -> PointSlot:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"no point {name!r} in SunSpec layout {self.model_ids}") from None

    def has(self, name: str) -> bool:
        return name in self.points

    def points_touching(self, offset: int, count: int) -> list[PointSlot]:
        """Points overlapping registers [offset, offset+count) — used to route writes."""
        seen: dict[str, PointSlot] = {}
        for reg in range(max(offset, 0), min(offset + count, self.size)):
            for slot in self._by_register[reg]:
                seen[slot.name] = slot
        return list(seen.values())

    def writable_runs(self) -> list[tuple[int, int, bool]]:
        """Consecutive (offset, count, writable) runs, so read-only registers reject writes."""
        runs: list[tuple[int, int, bool]] = []
        for reg in range(self.size):
            writable = any(slot.access == "RW" for slot in self._by_register[reg])
            if runs and runs[-1][2] == writable and runs[-1][0] + runs[-1][1] == reg:
                start, count, w = runs[-1]
                runs[-1] = (start, count + 1, w)
            else:
                runs.append((reg, 1, writable))
        return runs

    # ----------------------------------------------------------------------------------------------
    def encode_raw(self, regs: list[int], slot: PointSlot, raw: int | float | str | None) -> None:
        """Write a raw (unscaled) value; None writes the 'not implemented' pattern. Integers are clamped."""
        if raw is not None and slot.type in VALUE_RANGES:
            lo, hi = VALUE_RANGES[slot.type]
            raw = min(max(int(raw), lo), hi)
        regs[slot.offset : slot.offset + slot.size] = encode_registers(slot.type, slot.size, raw)

    def decode_raw(self, regs: list[int], slot: PointSlot) -> int | float | str | None:
        """Read a raw value; None when the register holds the 'not implemented' pattern."""
        return decode_registers(slot.type, regs[slot.offset : slot.offset + slot.size])

    def set(self, regs: list[int], name: str, value: float | str | None) -> None:
        """Write an engineering value, applying the point's scale factor as currently encoded."""
        slot = self.point(name)
        if value is None or slot.sf is None or isinstance(value, str):
            self.encode_raw(regs, slot, value)
            return
        sf = self.decode_raw(regs, self.points[slot.sf])
        self.encode_raw(regs, slot, round(value / 10 ** int(sf or 0)))

    def get(self, regs: list[int], name: str) -> float | str | None:
        """Read an engineering value with its scale factor applied."""
        slot = self.point(name)
        raw = self.decode_raw(regs, slot)
        if raw is None or slot.sf is None or isinstance(raw, str):
            return raw
        sf = self.decode_raw(regs, self.points[slot.sf])
        return raw * 10 ** int(sf or 0)

    def new_image(self) -> list[int]:
        """A fresh register image: 'SunS', every model's ID and L, all points 'not implemented'."""
        regs = [0] * self.size
        regs[0], regs[1] = 0x5375, 0x6E53  # "SunS"
        for slot in self.points.values():
            self.encode_raw(regs, slot, None)
        for block in self.models:
            regs[block.offset] = block.model_id
            regs[block.offset + 1] = block.length
        for name, count in self.group_counts.items():
            if name in self.points:
                self.encode_raw(regs, self.points[name], count)
        return regs


def _add_model(layout: RegisterLayout, model_id: int, offset: int) -> int:
    """Add model `model_id`'s points from `offset` (its ID register); return the offset after it."""
    counts = {}
    for name in count_points(model_id):
        key = f"{model_id}.{name}"
        if key not in layout.group_counts:
            raise ValueError(f"model {model_id} repeats groups by {name}; give group_counts[{key!r}]")
        counts[name] = layout.group_counts[key]
    model = model_layout(model_id, counts)
    for point in model.points:
        name = f"{model_id}.{point.name}"
        layout.points[name] = PointSlot(
            name=name,
            model_id=model_id,
            offset=offset + point.offset,
            size=point.size,
            type=point.type,
            access=point.access,
            sf=f"{model_id}.{point.sf}" if point.sf else None,
            symbols=frozenset(point.symbols) if point.symbols else None,
        )
    return offset + model.length


_LAYOUT_CACHE: dict[tuple[tuple[int, ...], tuple[tuple[str, int], ...]], RegisterLayout] = {}


def build_layout(model_ids: tuple[int, ...], group_counts: dict[str, int] | None = None) -> RegisterLayout:
    """Layout for the model chain `model_ids` (the end model is appended). Cached per argument set."""
    counts = dict(group_counts or {})
    key = (tuple(model_ids), tuple(sorted(counts.items())))
    if key in _LAYOUT_CACHE:
        return _LAYOUT_CACHE[key]
    layout = RegisterLayout(model_ids=tuple(model_ids), group_counts=counts)
    offset = 2  # after "SunS"
    for model_id in model_ids:
        start = offset
        end = _add_model(layout, model_id, offset)
        layout.models.append(ModelBlock(model_id=model_id, offset=start, length=end - start - 2))
        offset = end
    layout.models.append(ModelBlock(model_id=END_MODEL_ID, offset=offset, length=0))
    layout.size = offset + 2
    by_register: list[list[PointSlot]] = [[] for _ in range(layout.size)]
    for slot in layout.points.values():
        for reg in range(slot.offset, slot.offset + slot.size):
            by_register[reg].append(slot)
    layout._by_register = [tuple(x) for x in by_register]
    _LAYOUT_CACHE[key] = layout
    return layout
