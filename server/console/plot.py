"""The site plot: metered power against the envelope, drawn as SVG on the server (no JavaScript needed).

Import is up, export is down (the export limit is drawn at minus its value). Emergency windows are shaded
red, telemetry gaps (comms outages: no reading for more than ``gap_s``) grey.
"""

from __future__ import annotations

import itertools
import time
from html import escape
from typing import Any

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 240, 56, 12, 12, 28
PH = H - PAD_T - PAD_B


def _effective(windows: list[dict[str, Any]], key: str, t: float) -> float | None:
    """The most restrictive of the windows' limits at ``t`` (limits combine to the minimum)."""
    values = [w[key] for w in windows if w[key] is not None and w["start"] <= t < w["end"]]
    return min(values) if values else None


def site_svg(series: dict[str, Any], gap_s: int = 30) -> str:
    t0, t1 = series["since"], series["until"]
    points = [(t, w) for t, w in series["points"] if t0 <= t <= t1]
    windows = series["windows"]
    steps = sorted({t0, t1, *[w["start"] for w in windows], *[w["end"] for w in windows]})
    steps = [t for t in steps if t0 <= t <= t1]
    exp = [(t, _effective(windows, "export_w", t)) for t in steps]
    imp = [(t, _effective(windows, "import_w", t)) for t in steps]
    values = (
        [w for _, w in points] + [-v for _, v in exp if v is not None] + [v for _, v in imp if v is not None]
    )
    lo, hi = min([*values, -1000.0]), max([*values, 1000.0])
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.08 * span, hi + 0.08 * span

    def x(t: float) -> float:
        return PAD_L + (t - t0) / max(1, t1 - t0) * (W - PAD_L - PAD_R)

    def y(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * (H - PAD_T - PAD_B)

    out = [
        f'<svg viewBox="0 0 {W} {H}" role="img" class="plot" aria-label="Site power against the envelope">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{PH}" class="bg"/>',
    ]
    for w in windows:
        if w["program"] == "emergency" and w["end"] > t0 and w["start"] < t1:
            a, b = x(max(t0, w["start"])), x(min(t1, w["end"]))
            out.append(
                f'<rect x="{a:.1f}" y="{PAD_T}" width="{max(1.0, b - a):.1f}" '
                f'height="{H - PAD_T - PAD_B}" class="emergency"><title>emergency</title></rect>'
            )
    times = [t for t, _ in points]
    for a, b in zip([t0, *times], [*times, t1], strict=False):
        if b - a > gap_s and points:
            out.append(
                f'<rect x="{x(a):.1f}" y="{PAD_T}" width="{x(b) - x(a):.1f}" height="{H - PAD_T - PAD_B}" '
                'class="outage"><title>no telemetry</title></rect>'
            )
    # axes and grid
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        v = lo + frac * (hi - lo)
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        out.append(
            f'<text x="{PAD_L - 4}" y="{y(v) + 4:.1f}" class="tick" text-anchor="end">{v / 1e3:.1f} kW</text>'
        )
    out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(0):.1f}" y2="{y(0):.1f}" class="zero"/>')
    for frac in (0.0, 0.5, 1.0):
        t = t0 + frac * (t1 - t0)
        label = time.strftime("%H:%M", time.gmtime(t))
        out.append(f'<text x="{x(t):.1f}" y="{H - 8}" class="tick" text-anchor="middle">{label} UTC</text>')

    def step_path(series_: list[tuple[int, float | None]], sign: float, cls: str, title: str) -> None:
        segs: list[str] = []
        for (ta, va), (tb, _) in itertools.pairwise(series_):
            if va is None:
                continue
            segs.append(f"M{x(ta):.1f},{y(sign * va):.1f}H{x(tb):.1f}")
        if segs:
            out.append(f'<path d="{"".join(segs)}" class="{cls}"><title>{escape(title)}</title></path>')

    step_path(exp, -1.0, "limit export", "export limit")
    step_path(imp, 1.0, "limit import", "import limit")
    if points:
        pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        out.append(f'<polyline points="{pts}" class="power"><title>site power</title></polyline>')
    else:
        out.append(
            f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">no telemetry this hour</text>'
        )
    out.append("</svg>")
    return "".join(out)
