"""The judging rules, pure: is a site's measured flow within the limits that applied to it?

The rules are the ones ``derlink demo`` has used since issue 6, now shared so that the demo and the
server's assessment (seed 000 GS14; seed 001 L695 "assess compliance and conformance") cannot disagree:

* a reading (site power, W: + import / - export) complies when export <= export limit + tolerance and
  import <= import limit + tolerance, tolerance = max(``tolerance_pct`` % of the limit, ``tolerance_w``);
* readings inside the settling allowance (``settle_s`` after a limit tightened) are not judged;
* an interval of constant limits is compliant when every judged reading complies, breached when one does
  not, and not judged (None) when it holds no judged reading.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Rules:
    tolerance_w: float = 100.0
    tolerance_pct: float = 2.0
    settle_s: float = 5.0
    # A site is silent when it posted no site reading for this many postRates.
    silent_posts: int = 3
    # Non-responders: no Response this long after the control was published.
    ack_within_s: int = 300
    # A finding is raised when a site's breaches add up to this much in the range.
    persistent_breach_s: int = 900

    def __post_init__(self) -> None:
        for name in ("tolerance_w", "tolerance_pct", "settle_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name}: a number >= 0, got {value!r}")
        for name, least in (("silent_posts", 1), ("ack_within_s", 0), ("persistent_breach_s", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name}: a whole number >= {least}, got {value!r}")

    def tolerance(self, limit_w: float) -> float:
        """Allowed excess over a limit: max(tolerance_pct % of it, tolerance_w)."""
        return max(self.tolerance_pct / 100.0 * limit_w, self.tolerance_w)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Rules:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown rule (expected {', '.join(cls.__dataclass_fields__)})")
        return cls(**data)


@dataclass(kw_only=True)
class IntervalResult:
    """One interval of constant limits and what the readings in it showed."""

    start_unix: int
    end_unix: int
    judged_from_unix: int
    export_limit_w: float | None
    import_limit_w: float | None
    readings_judged: int = 0
    readings_within: int = 0
    max_export_w: float | None = None
    max_import_w: float | None = None
    worst_excess_w: float = 0.0
    worst_at_unix: int | None = None
    worst_limit: str | None = None  # "export" or "import": the limit the worst reading broke
    breach_s: int = 0  # seconds covered by readings outside the limit

    @property
    def compliant(self) -> bool | None:
        if self.readings_judged == 0:
            return None
        return self.readings_within == self.readings_judged

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["compliant"] = self.compliant
        return out


def excess_w(
    rules: Rules, site_w: float, export_limit_w: float | None, import_limit_w: float | None
) -> tuple[float, str | None]:
    """(W beyond limit + tolerance, which limit) of one reading; <= 0 complies."""
    export_w, import_w = max(-site_w, 0.0), max(site_w, 0.0)
    worst, which = -math.inf, None
    if export_limit_w is not None:
        worst, which = export_w - export_limit_w - rules.tolerance(export_limit_w), "export"
    if import_limit_w is not None:
        e = import_w - import_limit_w - rules.tolerance(import_limit_w)
        if e > worst:
            worst, which = e, "import"
    return (worst if which else 0.0), which


def settle_from(
    rules: Rules,
    start: int,
    previous: tuple[float | None, float | None] | None,
    limits: tuple[float | None, float | None],
) -> int:
    """When judging of an interval starts: ``settle_s`` later if any limit tightened at its start."""
    if previous is None:
        tightened = any(v is not None for v in limits)
    else:
        tightened = any(
            new is not None and (old is None or new < old) for old, new in zip(previous, limits, strict=True)
        )
    return start + math.ceil(rules.settle_s) if tightened else start


def tally(
    rules: Rules,
    results: Sequence[IntervalResult],
    readings: Iterable[tuple[int, float] | tuple[int, float, int]],
) -> Sequence[IntervalResult]:
    """Place each reading ``(unix time, W[, duration s])`` in its interval (sorted, non-overlapping) and
    judge it there; readings outside every interval or inside a settling allowance are skipped.

    The hot loop of a fleet assessment: one merge pass over sorted readings and intervals."""
    ordered = sorted(readings)
    n = len(ordered)
    k = 0
    for res in results:
        exp_cap = (
            None if res.export_limit_w is None else res.export_limit_w + rules.tolerance(res.export_limit_w)
        )
        imp_cap = (
            None if res.import_limit_w is None else res.import_limit_w + rules.tolerance(res.import_limit_w)
        )
        start, end, judged_from = res.start_unix, res.end_unix, res.judged_from_unix
        while k < n and ordered[k][0] < start:
            k += 1
        judged = within = breach_s = 0
        max_exp = max_imp = 0.0
        worst, worst_at, worst_limit = res.worst_excess_w, res.worst_at_unix, res.worst_limit
        while k < n and ordered[k][0] < end:
            reading = ordered[k]
            k += 1
            at, w = reading[0], reading[1]
            if at < judged_from:
                continue
            if w < 0:
                export_w, import_w = -w, 0.0
            else:
                export_w, import_w = 0.0, w
            excess, which = -math.inf, None
            if exp_cap is not None:
                excess, which = export_w - exp_cap, "export"
            if imp_cap is not None and import_w - imp_cap > excess:
                excess, which = import_w - imp_cap, "import"
            if which is None:
                excess = 0.0
            judged += 1
            if excess <= 0:
                within += 1
            else:
                span = reading[2] if len(reading) > 2 and reading[2] else 1  # type: ignore[misc]
                breach_s += min(span, end - at)
                if excess > worst:
                    worst, worst_at, worst_limit = excess, at, which
            if export_w > max_exp:
                max_exp = export_w
            if import_w > max_imp:
                max_imp = import_w
        if judged:
            res.readings_judged += judged
            res.readings_within += within
            res.breach_s += int(breach_s)
            res.max_export_w = max(res.max_export_w or 0.0, max_exp)
            res.max_import_w = max(res.max_import_w or 0.0, max_imp)
            res.worst_excess_w, res.worst_at_unix, res.worst_limit = worst, worst_at, worst_limit
    return results
