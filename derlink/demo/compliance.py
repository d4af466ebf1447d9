"""Compliance of the site with the limits that applied, judged from the telemetry the server stored. Pure.

The rules are the server's (:mod:`server.compliance.judge`), so this verdict and the head-end's
assessment agree on the same data. This is the DNSP's view (mission: "compare telemetry with the envelopes
and emergency commands that applied"): each site power reading the gateway posted (a MirrorUsagePoint
reading, W, + import / - export) is placed in the scenario's interval of applicable limits
(:func:`derlink.demo.scenario.applicable_segments`) and compared with them:

* a reading complies if export <= export limit + tolerance and import <= import limit + tolerance, with
  tolerance = max(tolerance_pct % of the limit, tolerance_w) (issue 6: max(2 %, 100 W));
* readings inside the settling allowance (``settle_s`` wall seconds after a limit tightened: a control's
  start) are not judged;
* an interval is compliant if every judged reading complies, breached if any does not, and ``None`` (not
  judged) if it holds no judged reading.

Responses: each control the demo issued that asks for Responses must have them at the server: received
(1) and started (2), then cancelled (6) for a lifted emergency or completed (3) for one that ran out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from derlink.demo.scenario import Scenario, Segment
from server.compliance import judge as judge_rules

RECEIVED, STARTED, COMPLETED, CANCELLED = 1, 2, 3, 6


@dataclass(kw_only=True)
class IntervalResult(judge_rules.IntervalResult):
    """A judged interval of the scenario, with its place in the story."""

    index: int
    clock: str
    source: str
    comms: str
    description: str = ""


@dataclass
class Verdict:
    intervals: list[IntervalResult]
    responses: list[dict[str, Any]] = field(default_factory=list)
    # The head-end's assessment of the same site and range (server.compliance.assess), for comparison.
    server: dict[str, Any] | None = None
    # Intervals the live table saw over the limit where no stored reading is (LiveView.reconcile): the
    # verdict judges what the server stored, and says what it could not see.
    seen_live_not_stored: list[dict[str, Any]] = field(default_factory=list)

    @property
    def breached(self) -> list[IntervalResult]:
        return [i for i in self.intervals if i.compliant is False]

    @property
    def missing_responses(self) -> list[dict[str, Any]]:
        return [r for r in self.responses if not r["ok"]]

    @property
    def passed(self) -> bool:
        judged = any(i.compliant is not None for i in self.intervals)
        return judged and not self.breached and not self.missing_responses

    def summary(self) -> dict[str, Any]:
        judged = [i for i in self.intervals if i.compliant is not None]
        readings = sum(i.readings_judged for i in self.intervals)
        within = sum(i.readings_within for i in self.intervals)
        return {
            "passed": self.passed,
            "intervals_total": len(self.intervals),
            "intervals_judged": len(judged),
            "intervals_compliant": sum(1 for i in judged if i.compliant),
            "breached_intervals": [i.index for i in self.breached],
            "breaches": [breach_text(i) for i in self.breached],
            "readings_judged": readings,
            "readings_within": within,
            "compliance_pct": round(100.0 * within / readings, 2) if readings else None,
            "responses_required": len(self.responses),
            "responses_complete": len(self.responses) - len(self.missing_responses),
            "missing_responses": [
                f"{r['what']} ({r['mrid']}): missing status {', '.join(map(str, r['missing']))}"
                for r in self.missing_responses
            ],
            "seen_live_not_stored": self.seen_live_not_stored,
        }


def breach_text(i: IntervalResult) -> str:
    over = i.readings_judged - i.readings_within
    worst = f"worst {i.worst_excess_w:.0f} W over the limit+tolerance"
    return f"{i.description}: {over} of {i.readings_judged} readings outside, {worst}"


def rules_of(scenario: Scenario) -> judge_rules.Rules:
    return judge_rules.Rules(
        tolerance_w=scenario.tolerance_w, tolerance_pct=scenario.tolerance_pct, settle_s=scenario.settle_s
    )


def judge(
    scenario: Scenario, segments: list[Segment], t0: int, readings: list[tuple[int, float]]
) -> list[IntervalResult]:
    """Judge site power readings ``(unix time, W: + import / - export)`` against ``segments``, by the
    server's rules (:func:`server.compliance.judge.tally`)."""
    results = [
        IntervalResult(
            index=seg.index,
            clock=seg.label(scenario),
            source=seg.source,
            comms=seg.comms,
            start_unix=t0 + seg.start_s,
            end_unix=t0 + seg.end_s,
            judged_from_unix=t0 + seg.settle_from_s,
            export_limit_w=seg.export_limit_w,
            import_limit_w=seg.import_limit_w,
            description=seg.describe(scenario),
        )
        for seg in segments
    ]
    judge_rules.tally(rules_of(scenario), results, readings)
    return results


def required_statuses(response_required: str | None, lifted: bool, ended: bool) -> set[int]:
    """Statuses a control asks for by the end of the scenario (2030.5 responseRequired bitmap, hex)."""
    bits = int(response_required or "0", 16)
    wanted: set[int] = set()
    if bits & 1:
        wanted.add(RECEIVED)
    if bits & 2:
        wanted.add(STARTED)
        if lifted:
            wanted.add(CANCELLED)
        elif ended:
            wanted.add(COMPLETED)
    return wanted


def check_responses(what: str, mrid: str, wanted: set[int], received: list[int]) -> dict[str, Any]:
    missing = sorted(wanted - set(received))
    return {
        "what": what,
        "mrid": mrid,
        "required": sorted(wanted),
        "received": sorted(set(received)),
        "missing": missing,
        "ok": not missing,
    }
