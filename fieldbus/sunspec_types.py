"""SunSpec model layouts and point types, shared by the gateway and the simulators.

Layout: :func:`model_layout` builds pysunspec2's own model object (``sunspec2.device.Model``) for a model
id, the values of its repeating-group count points and, for a model read from a device, its ``L``, and lists
every point pysunspec2 placed: offset from the model's ID register, length, type, access, scale-factor point
and enum symbols. Offsets, repeating groups, lengths, a legacy model's repetitions counted from ``L`` and
scale-factor scope (the point's own group, else the model's top level) are all pysunspec2's. Layouts are
cached per model id, counts and ``L``.

Types: the integer range of each point type, one value per type being kept for "not implemented"
(0x8000 for int16, 0xFFFF for uint16 ...), and register encoding. The gateway refuses to write a value its
point cannot hold, and the simulators refuse to serve one."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import sunspec2.device as ss2
import sunspec2.mb as mb
import sunspec2.mdef as mdef

VALUE_RANGES: dict[str, tuple[int, int]] = {
    mdef.TYPE_INT16: (-32767, 32767),  # -32768 is "not implemented"
    mdef.TYPE_UINT16: (0, 0xFFFE),
    mdef.TYPE_COUNT: (0, 0xFFFE),
    mdef.TYPE_ACC16: (0, 0xFFFF),
    mdef.TYPE_ENUM16: (0, 0xFFFE),
    mdef.TYPE_BITFIELD16: (0, 0x7FFF),
    mdef.TYPE_PAD: (0, 0xFFFF),
    mdef.TYPE_SUNSSF: (-10, 10),
    mdef.TYPE_INT32: (-(2**31) + 1, 2**31 - 1),
    mdef.TYPE_UINT32: (0, 2**32 - 2),
    mdef.TYPE_ACC32: (0, 2**32 - 1),
    mdef.TYPE_ENUM32: (0, 2**32 - 2),
    mdef.TYPE_BITFIELD32: (0, 2**31 - 1),
    mdef.TYPE_IPADDR: (0, 2**32 - 1),
    mdef.TYPE_INT64: (-(2**63) + 1, 2**63 - 1),
    mdef.TYPE_UINT64: (0, 2**64 - 2),
    mdef.TYPE_ACC64: (0, 2**63 - 1),
}


def decode_registers(ptype: str, regs: list[int]) -> int | float | str | None:
    """A point's raw value from its registers; None for the "not implemented" patterns (and NaN)."""
    info = mb.point_type_info[ptype]
    value = info.data_to(b"".join(r.to_bytes(2, "big") for r in regs))
    if ptype in (mdef.TYPE_FLOAT32, mdef.TYPE_FLOAT64):
        return None if value is None or math.isnan(value) else value
    return value if info.is_impl(value) else None


def encode_registers(ptype: str, size: int, raw: int | float | str | None) -> list[int]:
    """Registers holding a raw value (None = "not implemented"); integers must already be in range."""
    if raw is None:
        data = mb.create_unimpl_value(ptype, size * 2)
    elif ptype == mdef.TYPE_STRING:
        data = str(raw).encode()[: size * 2].ljust(size * 2, b"\0")
    elif ptype in (mdef.TYPE_FLOAT32, mdef.TYPE_FLOAT64):
        data = mb.point_type_info[ptype].to_data(float(raw))
    else:
        data = mb.point_type_info[ptype].to_data(raw)
    return [(data[2 * i] << 8) | data[2 * i + 1] for i in range(size)]


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a laid-out model: its name within the model, register offset and definition."""

    name: str  # "Crv[1].Pt[2].V"
    offset: int  # from the model's ID register
    size: int
    type: str
    access: str  # "R" | "RW"
    sf: str | None  # name of its scale-factor point within the model
    symbols: dict[int, str] | None


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """One model as pysunspec2 lays it out for given counts (and L)."""

    model_id: int
    label: str
    length: int  # registers from the ID register through the last point: L + 2 for a model that fits
    points: tuple[PointDef, ...]


def count_points(model_id: int) -> tuple[str, ...]:
    """The points holding the model's repeating-group counts (always points of its top level)."""
    return tuple(mdef.get_group_len_points(ss2.get_model_def(model_id)[mdef.GROUP]))


def model_layout(model_id: int, counts: Mapping[str, int] | None = None, length: int = 0) -> ModelLayout:
    """Lay out model ``model_id`` with ``counts`` (count point name -> value; every count point needs one).

    ``length`` is the device's L, from which pysunspec2 counts the repetitions of a legacy model (one
    whose definition gives count 0 and no count point) and accepts model 1 without its pad (L=65). A model
    with count points is laid out as they say, whatever L: pysunspec2 would otherwise count a group whose
    point holds 0 from L. 0 lays out the definition as counted. ``sunspec2.device.ModelError`` when a
    count is missing, or L is no whole number of a legacy model's repetitions.
    """
    return _model_layout(model_id, tuple(sorted((counts or {}).items())), length)


@functools.lru_cache(maxsize=1024)
def _model_layout(model_id: int, counts: tuple[tuple[str, int], ...], length: int) -> ModelLayout:
    model_def = ss2.get_model_def(model_id)  # mdef.ModelDefinitionError for a model it does not know
    model = ss2.Model(model_id, model_len=0 if counts else length, model_def=model_def, data=dict(counts))
    points: list[PointDef] = []
    _collect(model, "", points)
    return ModelLayout(model_id, model_def[mdef.GROUP].get(mdef.LABEL, ""), model.len, tuple(points))


def _collect(group: ss2.Group, prefix: str, points: list[PointDef]) -> None:
    """Points of a pysunspec2 group and its groups, named by path; a scale factor resolves as pysunspec2
    resolves it, to the point's own group, else the model's top level."""
    for name, point in group.points.items():
        sf = point.sf  # None for no scale factor or a constant one
        if sf is not None and sf in group.points:
            sf = f"{prefix}{sf}"
        symbols = point.pdef.get(mdef.SYMBOLS)
        points.append(
            PointDef(
                name=f"{prefix}{name}",
                offset=point.offset,
                size=point.len,
                type=point.pdef[mdef.TYPE],
                access=point.pdef.get(mdef.ACCESS, mdef.ACCESS_R),
                sf=sf,
                symbols={int(s[mdef.VALUE]): s[mdef.NAME] for s in symbols} if symbols else None,
            )
        )
    for name, sub in group.groups.items():
        if isinstance(sub, list):  # a repeating group: pysunspec2 numbers its instances from 1
            for g in sub:
                _collect(g, f"{prefix}{name}[{g.index}].", points)
        else:
            _collect(sub, f"{prefix}{name}.", points)
