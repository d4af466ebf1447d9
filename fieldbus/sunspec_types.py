"""The integer range of each SunSpec point type: what a register may hold, one value per type being kept
for "not implemented" (0x8000 for int16, 0xFFFF for uint16 ...). Shared by the gateway, which refuses to
write a value its point cannot hold, and the simulators, which refuse to serve one."""

from __future__ import annotations

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
