"""Demand response modes (AS/NZS 4755): what each asserted DRM means for the site's limits. Pure.

The modes, as AS/NZS 4755 defines them for a demand response enabled device (and AS/NZS 4777.2 for
inverters):

    DRM 0  operate the disconnection device
    DRM 1  do not consume power
    DRM 2  do not consume at more than 50 % of rated power
    DRM 3  do not consume at more than 75 % of rated power, and source reactive power if capable
    DRM 4  increase power consumption (subject to the constraints of other active DRMs)
    DRM 5  do not generate power
    DRM 6  do not generate at more than 50 % of rated power
    DRM 7  do not generate at more than 75 % of rated power, and sink reactive power if capable
    DRM 8  increase power generation (subject to the constraints of other active DRMs)

How they enter the hierarchy (choices documented in gateway/README-drm.md): the asserted modes form one
layer of source ``LOCAL_EMERGENCY`` (the alternate pathway is hard-wired and works without the internet,
so it ranks above every utility control), with each field's detail naming the DRM and the input it came
from. Limits combine most-restrictively as usual, so a DRM never relaxes a utility or installer limit,
and the "increase" modes are setpoints that the hierarchy clips into the whole envelope.

    DRM 0      connect = False (disconnect: every setpoint forced to 0)
    DRM 1/2/3  max_consumption_pct = 0 / 50 / 75 (battery charging, controllable loads; % of rated)
    DRM 5      generation_limit_w = 0 (PV and battery discharge)
    DRM 6/7    max_lim_w_pct = 50 / 75 (each generating device, % of its rating)
    DRM 4      fixed_w_pct = -(consumption cap, else 100): charge the battery as hard as allowed
    DRM 8      fixed_w_pct = +(generation cap, else 100, 0 with DRM 5): discharge as hard as allowed

DRM 4 and DRM 8 together ask one battery to charge and discharge at once: neither setpoint is applied
(the limits still are). The reactive-power parts of DRM 3 and DRM 7 are not acted on (the gateway does
no volt-var control); the explanation says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.events import ControlSettings
from gateway.core.hierarchy import Layer, Source

MODES = range(9)
MEANING = {
    0: "operate the disconnection device",
    1: "do not consume power",
    2: "consume at most 50% of rated power",
    3: "consume at most 75% of rated power (reactive power part not acted on)",
    4: "increase power consumption",
    5: "do not generate power",
    6: "generate at most 50% of rated power",
    7: "generate at most 75% of rated power (reactive power part not acted on)",
    8: "increase power generation",
}
_CONSUME_CAP = {1: 0.0, 2: 50.0, 3: 75.0}
_GENERATE_CAP = {6: 50.0, 7: 75.0}


def mode_errors(modes: Iterable[object]) -> list[str]:
    return [f"DRM {m!r} is not a demand response mode (0..8)" for m in modes
            if isinstance(m, bool) or not isinstance(m, int) or m not in MODES]  # fmt: skip


def _name(mode: int) -> str:
    return f"DRM {mode} ({MEANING[mode]})"


def drm_layer(modes: Iterable[int], source: str) -> Layer | None:
    """The LOCAL_EMERGENCY layer for the asserted ``modes`` read from ``source`` (None if none)."""
    active = sorted(set(modes))
    if not active:
        return None
    via = f" via {source}"
    values: dict[str, object] = {}
    why: dict[str, str] = {}

    def put(name: str, value: object, mode: int) -> None:
        values[name] = value
        why[name] = _name(mode) + via

    if 0 in active:
        put("connect", False, 0)
    consume = [m for m in active if m in _CONSUME_CAP]
    if consume:
        m = min(consume, key=_CONSUME_CAP.__getitem__)
        put("max_consumption_pct", _CONSUME_CAP[m], m)
    if 5 in active:
        put("generation_limit_w", 0.0, 5)
    generate = [m for m in active if m in _GENERATE_CAP]
    if generate:
        m = min(generate, key=_GENERATE_CAP.__getitem__)
        put("max_lim_w_pct", _GENERATE_CAP[m], m)
    if (4 in active) != (8 in active):
        if 4 in active:
            put("fixed_w_pct", -values.get("max_consumption_pct", 100.0), 4)  # type: ignore[operator]
        else:
            cap = 0.0 if 5 in active else values.get("max_lim_w_pct", 100.0)
            put("fixed_w_pct", cap, 8)
    modes_text = ", ".join(_name(m) for m in active)
    if 4 in active and 8 in active:
        modes_text += "; DRM 4 and DRM 8 together: no charge/discharge setpoint"
    settings = ControlSettings(**values)  # type: ignore[arg-type]
    return Layer(Source.LOCAL_EMERGENCY, settings, modes_text + via, why)
