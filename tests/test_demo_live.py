"""The demo's live table fits an 80-column terminal without wrapping, and when output is not a terminal
each interval ends with a line carrying the measured power (what the README promises)."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from derlink.demo.live import LiveView
from derlink.demo.samples import Sample
from derlink.demo.scenario import applicable_segments, load_scenario

T0 = 1_000_000.0


def fake_demo() -> SimpleNamespace:
    scenario = load_scenario(None)
    return SimpleNamespace(s=scenario, segments=applicable_segments(scenario), t0=T0)


def sample(t: float, site_w: float, link: str = "up", lost: bool = False) -> Sample:
    return Sample(t=t, site_w=site_w, pv_w=10_250.0, battery_w=-4_999.0, soc_pct=100.0, gw_export_w=10_000.0,
                  gw_import_w=12_500.0, gw_source="local_emergency: DRM 0", regime="x", link=link,
                  gw_link_lost=lost)


def play(view: LiveView, demo: SimpleNamespace) -> None:
    with view:
        for seg in demo.segments:  # the widest values: 5 digit kW, a lost link
            lost = seg.index % 2 == 0
            view.update(demo, sample(T0 + seg.settle_from_s, -10_400.0 - seg.index, "cut", lost))


def rendered(demo: SimpleNamespace, view: LiveView, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(view.render())
    # Without the scenario clock line, which moves with the wall clock.
    return [line for line in console.export_text().splitlines() if not line.startswith("scenario clock")]


def test_live_table_fits_80_columns_without_wrapping() -> None:
    demo = fake_demo()
    view = LiveView(Console(file=io.StringIO()), live=False)
    play(view, demo)
    narrow, wide = rendered(demo, view, 80), rendered(demo, view, 250)
    assert max(len(line) for line in narrow) <= 80
    assert len(narrow) == len(wide), "a cell wrapped at 80 columns"
    assert [line.rstrip() for line in narrow] == [line.rstrip() for line in wide]  # nothing cut short
    rows = [line for line in narrow if re.match(r"\d\d:\d\d ", line)]
    assert len(rows) == len(demo.segments) >= 5
    assert all("exp 10.4" in row and ("lost" in row or "cut" in row) for row in rows)


def test_plain_output_carries_the_measured_power_of_each_interval() -> None:
    demo = fake_demo()
    out = io.StringIO()
    view = LiveView(Console(file=out, width=200), live=False)
    play(view, demo)
    done = [line for line in out.getvalue().splitlines() if " done:" in line]
    assert len(done) == len(demo.segments)
    for seg, line in zip(demo.segments, done, strict=True):
        assert f"interval {seg.index} done:" in line
        assert f"site export {(10_400 + seg.index) / 1000:.2f} kW" in line
        assert "PV 10.25 kW" in line and "battery -5.00 kW at 100 %" in line
