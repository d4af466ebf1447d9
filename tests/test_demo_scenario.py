"""The demo's scenario format, its timeline of applicable limits, and the compliance judgement (pure)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from derlink.demo.compliance import Verdict, check_responses, judge, required_statuses
from derlink.demo.scenario import (
    Scenario,
    ScenarioError,
    applicable_segments,
    load_scenario,
    scenario_from_dict,
)

ROOT = Path(__file__).resolve().parent.parent


def default_doc() -> dict:
    return tomllib.loads(resources.files("derlink.demo").joinpath("default.toml").read_text())


def test_builtin_scenarios_load_and_fit_in_about_a_minute() -> None:
    default = load_scenario()
    assert default.source == "built-in:default.toml"
    assert 30 <= default.wall_duration_s <= 60
    assert default.emergency and default.outage and default.hems and len(default.doe) >= 3
    stuck = load_scenario("stuck-inverter")
    assert stuck.fault[0].fault == "stuck" and not stuck.site.battery


def test_default_timeline_sources_and_settling() -> None:
    s = load_scenario()
    segments = applicable_segments(s)
    assert [(x.source, x.comms) for x in segments] == [
        ("DOE", "up"),
        ("DOE", "up"),
        ("DOE", "up"),
        ("DOE", "up"),
        ("emergency", "up"),
        ("staged lift", "up"),
        ("DOE", "outage"),  # the held schedule
        ("default", "outage"),  # the schedule ran out during the outage
        ("default", "up"),
    ]
    assert [x.export_limit_w for x in segments] == [3000, 1500, 3000, 4000, 0, 2000, 2000, 3000, 3000]
    assert segments[2].import_limit_w == 1500  # the import limit while the HEMS charges the battery
    # contiguous, covering the whole scenario
    assert segments[0].start_s == 0 and segments[-1].end_s == s.wall_duration_s
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(segments))
    # a settling allowance only where a limit tightens (a control start), none where it loosens
    tightened = {1, 2, 3, 5}
    for seg in segments:
        expected = seg.start_s + 5 if seg.index in tightened else seg.start_s
        assert seg.settle_from_s == expected, seg
    assert segments[1].label(s) == "10:30-11:00"


def test_outage_longer_than_persistent_loss_expects_comms_loss_limits() -> None:
    doc = default_doc()
    doc["gateway"]["persistent_loss_s"] = 3
    segments = applicable_segments(scenario_from_dict(doc))
    fallback = [x for x in segments if x.source == "comms-loss fallback"]
    assert fallback and all(x.comms == "outage" and x.export_limit_w == 1500 for x in fallback)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["scenario"].update(colour="red"), "scenario.colour"),
        (lambda d: d.update(extra={}), "scenario file.extra"),
        (lambda d: d["doe"][2].update(export_limit_w=-5), "doe[2].export_limit_w"),
        (lambda d: d["doe"][1].pop("import_limit_w"), "doe[1].import_limit_w"),
        (lambda d: d["doe"][1].update(at_min=20), "doe[1].at_min"),  # overlaps doe[0]
        (lambda d: d["doe"][0].update(duration_min=10), "doe[0].duration_min"),  # 3 s of wall time
        (lambda d: d["scenario"].update(speed=0), "scenario.speed"),
        (lambda d: d["scenario"].update(start_clock="25:00"), "scenario.start_clock"),
        (lambda d: d["scenario"].update(end_min=2000), "scenario.end_min"),  # past midnight
        (lambda d: d["emergency"][0].update(action="explode"), "emergency[0].action"),
        (lambda d: d["emergency"][0].update(lift_at_min=150), "emergency[0].lift_at_min"),  # in the outage
        (lambda d: d["emergency"][0].update(lift_at_min=90), "emergency[0].lift_at_min"),  # before at_min
        (lambda d: d["site"].update(battery=False), "hems[0]"),
        (lambda d: d["site"].update(pv_w=[[0, 5000], [0, 100]]), "site.pv_w[1]"),
        (lambda d: d["hems"][0].update(battery_w=-9000), "hems[0].battery_w"),
        (lambda d: d["outage"][0].update(until_min=100), "outage[0].until_min"),
        (lambda d: d["gateway"].update(comms_timeout_s=1.5), "gateway.comms_timeout_s"),
        (lambda d: d.update(fault=[{"at_min": 0, "device": "pv", "fault": "melted"}]), "fault[0].fault"),
        (lambda d: d.update(fault=[{"at_min": 0, "fault": "stuck"}]), "fault[0].device"),
    ],
)
def test_bad_scenarios_name_the_field(change, field: str) -> None:
    doc = default_doc()
    change(doc)
    with pytest.raises(ScenarioError) as caught:
        scenario_from_dict(doc)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_scenario_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="--scenario: file not found"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname = 1\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    good = tmp_path / "mine.toml"
    good.write_text("[scenario]\nend_min = 60\n[[doe]]\nat_min = 0\nduration_min = 30\n"
                    "export_limit_w = 1000\nimport_limit_w = 2000\n")  # fmt: skip
    s = load_scenario(good)
    assert s.name == "mine" and s.speed == 200 and s.doe[0].export_limit_w == 1000


def _scenario() -> tuple[Scenario, list]:
    s = load_scenario("stuck-inverter")  # DOE 3000 [0, 9), DOE 1500 [9, 18), default 5000 [18, 21)
    return s, applicable_segments(s)


def test_judge_tolerance_settling_and_breaches() -> None:
    s, segments = _scenario()
    t0 = 1_000_000
    readings = [
        (t0 + 1, -4900.0),  # settling allowance of interval 1: not judged
        (t0 + 5, -3100.0),  # limit 3000 + tolerance max(60, 100) -> within
        (t0 + 6, -3101.0),  # just outside
        (t0 + 12, -4000.0),  # settling of interval 2: not judged
        (t0 + 14, -1600.0),  # 1500 + 100: within
        (t0 + 15, 200.0),  # importing: within
        (t0 + 18, -5100.0),  # default 5000 + 100, loosened -> judged at once, within
        (t0 + 25, -9000.0),  # after the scenario: ignored
    ]
    results = judge(s, segments, t0, readings)
    assert [r.readings_judged for r in results] == [2, 2, 1]
    assert [r.compliant for r in results] == [False, True, True]
    assert results[0].worst_excess_w == pytest.approx(1.0) and results[0].worst_at_unix == t0 + 6
    verdict = Verdict(results, [check_responses("x", "M", {1, 2}, [1, 2])])
    summary = verdict.summary()
    assert not verdict.passed and summary["breached_intervals"] == [1]
    assert summary["breaches"][0].startswith("interval 1 (11:00-11:30, DOE: export <= 3000 W")
    assert summary["readings_judged"] == 5 and summary["readings_within"] == 4


def test_verdict_needs_judged_readings_and_responses() -> None:
    s, segments = _scenario()
    assert not Verdict(judge(s, segments, 0, []), []).passed  # nothing judged proves nothing
    ok = judge(s, segments, 0, [(6, -2000.0)])
    assert Verdict(ok, []).passed
    missing = check_responses("emergency", "M", {1, 2, 6}, [1, 2])
    assert missing["missing"] == [6]
    verdict = Verdict(ok, [missing])
    assert not verdict.passed and "missing status 6" in verdict.summary()["missing_responses"][0]


def test_required_statuses() -> None:
    assert required_statuses("03", lifted=True, ended=True) == {1, 2, 6}
    assert required_statuses("03", lifted=False, ended=True) == {1, 2, 3}
    assert required_statuses("03", lifted=False, ended=False) == {1, 2}
    assert required_statuses("01", lifted=True, ended=True) == {1}
    assert required_statuses(None, lifted=True, ended=True) == set()


def test_cli_rejects_a_bad_scenario_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "lab.toml"
    bad.write_text("[scenario]\nend_min = 60\n[[doe]]\nat_min = 0\nduration_min = 30\nexport_limit_w = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "derlink", "demo", "--scenario", str(bad), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "doe[0].export_limit_w: must be a number >= 0, got -1" in proc.stderr
    assert not (tmp_path / "out").exists()
