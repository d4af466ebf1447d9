"""The integer range of each SunSpec point type: what a register may hold, one value per type being kept
for "not implemented" (0x8000 for int16, 0xFFFF for uint16 ...), and the point-level helpers (size,
scale-factor scope, register encoding) both register maps are built from. Shared by the gateway, which
refuses to write a value its point cannot hold, and the simulators, which refuse to serve one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


def point_size(pdef: dict) -> int:
    """Registers a point definition takes: its ``size``, else its type's fixed length."""
    return int(pdef.get(mdef.SIZE) or mb.point_type_info[pdef[mdef.TYPE]].len)


def scale_factor_scope(gdef: dict, prefix: str, enclosing: dict[str, str]) -> dict[str, str]:
    """SF name -> full point name for a group: the nearest enclosing group that defines it wins."""
    scope = dict(enclosing)
    for pdef in gdef.get(mdef.POINTS, []):
        if pdef[mdef.TYPE] == mdef.TYPE_SUNSSF:
            scope[pdef[mdef.NAME]] = f"{prefix}{pdef[mdef.NAME]}"
    return scope


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
    """One point of a laid-out model: its full name, register offset and definition."""

    name: str  # prefix + "Crv[1].Pt[2].V"
    offset: int
    size: int
    type: str
    access: str  # "R" | "RW"
    sf: str | None  # full name of its scale-factor point
    symbols: dict[int, str] | None


# (group definition, its full name prefix, offset where it starts, groups after it) -> (count, indexed)
CountOf = Callable[[dict, str, int, list[dict]], tuple[int, bool]]


def walk_group(
    gdef: dict,
    prefix: str,
    offset: int,
    add: Callable[[PointDef], None],
    count_of: CountOf,
    model_prefix: str | None = None,
    sfs: dict[str, str] | None = None,
) -> int:
    """Lay out a group definition (points, then nested and repeating groups) from ``offset``.

    Each point goes to ``add`` before the next group's count is asked of ``count_of``, so a count held
    in a point can be read. A scale factor resolves to the nearest enclosing group that defines it, else
    to the model's top level. Returns the offset after the group.
    """
    model_prefix = prefix if model_prefix is None else model_prefix
    local = scale_factor_scope(gdef, prefix, sfs or {})
    for pdef in gdef.get(mdef.POINTS, []):
        sf_ref = pdef.get(mdef.SF)
        symbols = pdef.get(mdef.SYMBOLS)
        size = point_size(pdef)
        add(
            PointDef(
                name=f"{prefix}{pdef[mdef.NAME]}",
                offset=offset,
                size=size,
                type=pdef[mdef.TYPE],
                access=pdef.get(mdef.ACCESS, mdef.ACCESS_R),
                sf=(local.get(sf_ref) or f"{model_prefix}{sf_ref}") if isinstance(sf_ref, str) else None,
                symbols={int(s[mdef.VALUE]): s[mdef.NAME] for s in symbols} if symbols else None,
            )
        )
        offset += size
    subs = gdef.get(mdef.GROUPS, [])
    for i, sub in enumerate(subs):
        count, indexed = count_of(sub, prefix, offset, subs[i + 1 :])
        for index in range(1, count + 1):
            sub_prefix = f"{prefix}{sub[mdef.NAME]}[{index}]." if indexed else f"{prefix}{sub[mdef.NAME]}."
            offset = walk_group(sub, sub_prefix, offset, add, count_of, model_prefix, local)
    return offset
