"""The demo's live table fits an 80-column terminal without wrapping, when output is not a terminal each
interval ends with a line carrying the measured power (what the README promises), and the table never
disagrees with the verdict judged from the server's stored telemetry (issue 13)."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from derlink.demo.compliance import Verdict, judge
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


def _spike_run(stored_spike: bool) -> tuple[SimpleNamespace, LiveView, Verdict, list[str]]:
    """Stuck-inverter timeline (DOE 3 kW, 1.5 kW, default 5 kW): the live meter, sampled 4 times a second,
    sees one 2.9 kW export spike in the 1.5 kW interval; the server stored one reading a second, with or
    without that spike."""
    scenario = load_scenario("stuck-inverter")
    t0 = 1_000_000
    demo = SimpleNamespace(s=scenario, segments=applicable_segments(scenario), t0=t0)
    spike_at = t0 + 14.25
    out = io.StringIO()
    view = LiveView(Console(file=out, width=200), live=False)
    stored = []
    with view:
        for q in range(4 * 21):
            t = t0 + q / 4
            view.update(demo, sample(t, -2_900.0 if t == spike_at else -1_400.0))
        for t in range(t0, t0 + 21):
            stored.append((t, -2_900.0 if stored_spike and t == int(spike_at) else -1_400.0))
        verdict = Verdict(judge(scenario, demo.segments, t0, stored), [])
        before = _checks(demo, view)
        verdict.seen_live_not_stored = view.reconcile(demo, verdict)  # what Demo.run does
    assert before[1] == "✗"  # the provisional check: the live meter saw it
    return demo, view, verdict, out.getvalue().splitlines()


def _checks(demo: SimpleNamespace, view: LiveView) -> list[str]:
    lines = rendered(demo, view, 80)
    return [line.split()[-1] for line in lines if re.match(r"\d\d:\d\d ", line)]


def test_a_spike_the_server_did_not_store_is_marked_as_such_in_the_table() -> None:
    """Issue 13: the live table showed an interval over its limit and the verdict said PASS. Now, once the
    verdict is in, the table shows the verdict's check and says that the server has no reading of it."""
    demo, view, verdict, plain = _spike_run(stored_spike=False)
    assert verdict.passed and verdict.breached == []  # the stored readings were all within
    assert _checks(demo, view) == ["✓", "✗*", "✓"]
    note = "* 11:47 live exp 2.90 kW over exp≤1.5 imp≤5: no server reading of it"
    assert view.notes == [note] and note in plain  # in the table, and in plain output
    assert max(len(line) for line in rendered(demo, view, 80)) <= 80
    (seen,) = verdict.summary()["seen_live_not_stored"]
    assert seen["interval"] == 2 and seen["live_readings_over"] == 1 and seen["stored_readings"] == 4
    assert seen["live_worst_excess_w"] == 1300.0  # 2900 - (1500 + max(2 % of 1500, 100 W))


def test_a_spike_the_server_stored_fails_the_verdict_and_the_table_agrees() -> None:
    demo, view, verdict, _ = _spike_run(stored_spike=True)
    assert not verdict.passed and [i.index for i in verdict.breached] == [2]
    assert _checks(demo, view) == ["✓", "✗", "✓"]
    assert view.notes == [] and verdict.summary()["seen_live_not_stored"] == []
