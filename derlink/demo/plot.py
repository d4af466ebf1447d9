"""The demo's picture: site power against the DNSP's envelope over the scenario (matplotlib, Agg).

Top: the connection-point flow from the telemetry the server stored (export up, import down), the
applicable export limit and (negated) import limit as steps, the emergency shaded red, its staged lift
orange, the comms outage grey; readings outside limit + tolerance are marked with a red x. The dashed line
is the export limit the gateway itself was applying (from its decisions), which shows it holding the
schedule through the outage. Bottom: PV output, battery power and state of charge (the simulator).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from derlink.demo.compliance import Verdict
    from derlink.demo.scenario import Scenario, Segment
    from derlink.samples import Sample


def plot_demo(s: Scenario, t0: float, segments: Sequence[Segment], samples: Sequence[Sample],
              verdict: Verdict, readings: list[tuple[int, float]], path: Path) -> Path:
    """Draw the run (scenario, its start time, its intervals and the samples the demo took) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    def minute(unix: float) -> float:
        return s.minute(unix - t0)

    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(13, 8.2), sharex=True, gridspec_kw={"height_ratios": [2.6, 1]}, layout="constrained"
    )

    def at(m: float) -> float:
        """Where scenario minute ``m`` really happened (its wall offset is rounded to whole seconds)."""
        return s.minute(s.wall(m))

    # Shading: emergency, staged lift, outage.
    for e in s.emergency:
        lift = e.lift_at_min if e.lift_at_min is not None else e.at_min + e.duration_min
        ax.axvspan(at(e.at_min), at(min(lift, s.end_min)), color="#e53935", alpha=0.13, lw=0)
        ax.text(at(e.at_min) + 1, 0.97, "emergency\nzero export", transform=ax.get_xaxis_transform(),
                va="top", fontsize=9, color="#b71c1c")  # fmt: skip
        if e.lift_at_min is not None and e.lift_spread_min > 0:
            lift_end = s.minute(s.wall(e.lift_at_min) + s.wall(e.lift_spread_min))
            ax.axvspan(at(e.lift_at_min), lift_end, color="#fb8c00", alpha=0.18, lw=0)
            ax.text(at(e.lift_at_min) + 0.5, 0.97, "staged\nlift", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=8, color="#e65100")  # fmt: skip
    for o in s.outage:
        for a in (ax, ax2):
            a.axvspan(
                o.at_min, o.until_min, facecolor="#9e9e9e", alpha=0.16, hatch="//", edgecolor="#757575", lw=0
            )
        ax.text(at(o.at_min) + 1, 0.97, "comms outage\n(gateway offline)", transform=ax.get_xaxis_transform(),
                va="top", fontsize=9, color="#424242")  # fmt: skip
    for h in s.hems:
        arrow = {"arrowstyle": "<->", "color": "#6a1b9a"}
        ax.annotate("", xy=(at(h.until_min), 0.03), xytext=(at(h.at_min), 0.03),
                    xycoords=ax.get_xaxis_transform(), arrowprops=arrow)  # fmt: skip
        ax.text((h.at_min + h.until_min) / 2, 0.05, f"HEMS charges battery {abs(h.battery_w) / 1000:g} kW",
                transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="#6a1b9a")  # fmt: skip

    # The envelope: applicable export limit (up) and import limit (down), as steps.
    xs, exp, imp = [], [], []
    for seg in segments:
        a, b = s.minute(seg.start_s), s.minute(seg.end_s)
        xs += [a, b]
        e_kw = seg.export_limit_w / 1000 if seg.export_limit_w is not None else float("nan")
        i_kw = -seg.import_limit_w / 1000 if seg.import_limit_w is not None else float("nan")
        exp += [e_kw, e_kw]
        imp += [i_kw, i_kw]
    ax.plot(xs, exp, color="#c62828", lw=2.2, label="export limit (DOE / emergency / default)")
    ax.plot(xs, imp, color="#6a1b9a", lw=2.2, label="import limit (shown negative)")
    for seg in segments:
        if seg.settle_from_s > seg.start_s:
            ax.axvspan(s.minute(seg.start_s), s.minute(seg.settle_from_s), color="#000", alpha=0.04, lw=0)

    # What the gateway applied (its own decisions), dashed.
    g_x = [minute(x.t) for x in samples if x.gw_export_w is not None]
    g_y = [x.gw_export_w / 1000 for x in samples if x.gw_export_w is not None]
    if g_x:
        ax.step(
            g_x, g_y, where="post", color="#ef9a9a", lw=1.2, ls="--", label="export limit the gateway applied"
        )

    # The site's flow from the server's stored telemetry (+ export).
    r_x = [minute(t) for t, _ in readings]
    r_y = [-w / 1000 for _, w in readings]
    ax.plot(
        r_x,
        r_y,
        color="#1565c0",
        lw=1.6,
        marker=".",
        ms=4,
        label="site export (+) / import (−), server telemetry",
    )
    bad_x, bad_y = [], []
    for res in verdict.intervals:
        for t, w in readings:
            if res.judged_from_unix <= t < res.end_unix:
                over = (
                    res.export_limit_w is not None
                    and -w > res.export_limit_w + s.tolerance(res.export_limit_w)
                ) or (
                    res.import_limit_w is not None
                    and w > res.import_limit_w + s.tolerance(res.import_limit_w)
                )
                if over:
                    bad_x.append(minute(t))
                    bad_y.append(-w / 1000)
    if bad_x:
        ax.plot(
            bad_x, bad_y, ls="", marker="x", color="#d50000", ms=9, mew=2, label="outside limit + tolerance"
        )
    ax.axhline(0, color="#616161", lw=0.8)
    ax.set_ylabel("power at the connection point (kW)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(color="#000", alpha=0.08))
    labels.append("settling allowance (not judged)")
    ax.legend(handles, labels, loc="lower left", fontsize=8, ncol=2, framealpha=0.9, bbox_to_anchor=(0, 0.08))
    summary = verdict.summary()
    if summary["passed"]:
        verdict_text = (
            f"PASS — within every limit ({summary['readings_within']}/{summary['readings_judged']} readings, "
            f"{summary['intervals_compliant']}/{summary['intervals_judged']} intervals), "
            "all Responses received"
        )
    else:
        parts = []
        if summary["breached_intervals"]:
            parts.append("breached intervals " + ", ".join(map(str, summary["breached_intervals"])))
        if summary["missing_responses"]:
            parts.append(f"{len(summary['missing_responses'])} missing Responses")
        verdict_text = "FAIL — " + ("; ".join(parts) or "nothing judged")
    ax.set_title(f"{s.name}\n{verdict_text}", fontsize=11, loc="left", pad=16,
                 color="#1b5e20" if summary["passed"] else "#b71c1c")  # fmt: skip
    for seg in segments:
        middle = s.minute((seg.start_s + seg.end_s) / 2)
        ax.text(middle, 1.005, str(seg.index), transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="#757575")  # fmt: skip

    # Bottom: devices.
    d_x = [minute(x.t) for x in samples]
    pv_points = (
        list(s.site.pv_w) if len(s.site.pv_w) > 1 else [s.site.pv_w[0], (s.end_min, s.site.pv_w[0][1])]
    )
    pv_points = [(0.0, pv_points[0][1]), *pv_points, (s.end_min, pv_points[-1][1])]
    ax2.plot([m for m, _ in pv_points], [w / 1000 for _, w in pv_points], color="#f9a825", lw=1, ls=":",
             label="PV available (sun)")  # fmt: skip
    ax2.plot(d_x, [(x.pv_w or 0) / 1000 for x in samples], color="#f9a825", lw=1.6, label="PV output")
    if s.site.battery:
        ax2.plot(d_x, [(x.battery_w or 0) / 1000 for x in samples], color="#2e7d32", lw=1.4,
                 label="battery (+ discharge / − charge)")  # fmt: skip
        soc = ax2.twinx()
        soc.plot(d_x, [x.soc_pct or 0 for x in samples], color="#2e7d32", lw=1, ls=":", label="SoC")
        soc.set_ylim(0, 100)
        soc.set_ylabel("battery SoC (%)", fontsize=9)
    ax2.axhline(0, color="#616161", lw=0.8)
    ax2.set_ylabel("device power (kW)")
    ax2.grid(alpha=0.3)
    handles, labels = ax2.get_legend_handles_labels()
    if s.site.battery:
        more = soc.get_legend_handles_labels()
        handles, labels = handles + more[0], [*labels, "battery SoC (right axis)"]
    ax2.legend(handles, labels, loc="lower right", fontsize=8, ncol=2, framealpha=0.9)
    ax2.set_xlim(0, s.end_min)
    ax2.xaxis.set_major_locator(MultipleLocator(30 if s.end_min > 90 else 10))
    ax2.xaxis.set_major_formatter(FuncFormatter(lambda m, _pos: s.clock_label(m)))
    ax2.set_xlabel(
        f"scenario clock (played at {s.speed:g}× speed: {s.end_min:g} min in {s.wall_duration_s} s); "
        "numbers above the plot are the intervals of the JSON summary"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
