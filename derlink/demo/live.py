"""The live terminal view of a demo run (rich), or plain progress lines when output is not a terminal.

One row per interval of applicable limits: the DNSP's limit and where it comes from, the limit the gateway
is actually applying and its source, the measured flow at the connection point, PV, battery and SoC, and
the comms state. The check column is provisional (the simulator's meter, sampled 4 times a second); the
verdict at the end is judged from the telemetry the server stored. So that the two never disagree, once
the verdict is in (:meth:`LiveView.reconcile`) the column shows the verdict's judgement, and an interval
where the live meter saw the site over its limit but no stored reading shows it is marked ``✗*`` with a
note that the server has no reading of it (a spike between two posted readings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from derlink.demo.compliance import rules_of
from server.compliance.judge import excess_w

if TYPE_CHECKING:
    from derlink.demo.compliance import Verdict
    from derlink.demo.orchestrator import Demo
    from derlink.demo.samples import Sample
    from derlink.demo.scenario import Segment


def _kw(w: float | None) -> str:
    return "-" if w is None else f"{w / 1000:.2f} kW"


def flow_text(site_w: float | None) -> str:
    if site_w is None:
        return "-"
    return f"export {_kw(-site_w)}" if site_w < 0 else f"import {_kw(site_w)}"


def _k(w: float | None) -> str:
    """Compact kW for the table (the header says kW)."""
    return "-" if w is None else f"{w / 1000:.2f}"


def _flow(site_w: float | None) -> str:
    if site_w is None:
        return "-"
    return f"exp {_k(-site_w)}" if site_w < 0 else f"imp {_k(site_w)}"


def limit_text(seg: Segment, unit: str = " kW") -> str:
    parts = []
    if seg.export_limit_w is not None:
        parts.append(f"exp<={seg.export_limit_w / 1000:g}")
    if seg.import_limit_w is not None:
        parts.append(f"imp<={seg.import_limit_w / 1000:g}")
    return (" ".join(parts) or "none") + unit


# Short names of the DNSP's sources, so that the live table fits 80 columns.
_SHORT_SOURCE = {"comms-loss fallback": "fallback", "staged lift": "lift"}


@dataclass
class _Row:
    worst_export_w: float = 0.0
    worst_import_w: float = 0.0
    judged: int = 0
    over: int = 0
    gateway: str = ""
    last: Sample | None = None
    worst_excess_w: float = 0.0  # the live reading furthest over limit + tolerance ...
    worst_at: float | None = None  # ... when, and its site power
    worst_site_w: float = 0.0


class LiveView:
    """``with LiveView(console): ...``; the demo calls :meth:`update` and :meth:`message`."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None) -> None:
        self.console = console or Console()
        self.live_enabled = self.console.is_terminal if live is None else live
        self._live: Live | None = None
        self._rows: dict[int, _Row] = {}
        self._demo: Demo | None = None
        self._current: int | None = None
        self._verdict: Verdict | None = None
        self.notes: list[str] = []  # where the live table and the stored telemetry differed

    def __enter__(self) -> LiveView:
        if self.live_enabled:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._demo is not None:
            self.finish(self._demo)
        if self._live is not None:
            if self._demo is not None:
                self._live.update(self.render())
            self._live.__exit__(None, None, None)
            self._live = None

    def message(self, text: str) -> None:
        self.console.print(Text(text), highlight=False)

    def update(self, demo: Demo, sample: Sample) -> None:
        self._demo = demo
        offset = sample.t - demo.t0
        seg = next((x for x in demo.segments if x.start_s <= offset < x.end_s), None)
        if seg is None:
            return
        row = self._rows.setdefault(seg.index, _Row())
        row.last = sample
        if sample.gw_export_w is not None or sample.gw_import_w is not None:
            g_exp = "-" if sample.gw_export_w is None else f"{sample.gw_export_w / 1000:g}"
            g_imp = "-" if sample.gw_import_w is None else f"{sample.gw_import_w / 1000:g}"
            by = sample.gw_source.split(":")[0].replace("local_emergency", "local")
            row.gateway = f"{g_exp}/{g_imp} {by}"
        if sample.site_w is not None and offset >= seg.settle_from_s:
            export_w, import_w = max(-sample.site_w, 0.0), max(sample.site_w, 0.0)
            row.worst_export_w = max(row.worst_export_w, export_w)
            row.worst_import_w = max(row.worst_import_w, import_w)
            row.judged += 1
            excess, _ = excess_w(rules_of(demo.s), sample.site_w, seg.export_limit_w, seg.import_limit_w)
            if excess > 0:  # the verdict's own rule (server.compliance.judge)
                row.over += 1
                if row.worst_at is None or excess > row.worst_excess_w:
                    row.worst_excess_w, row.worst_at, row.worst_site_w = excess, sample.t, sample.site_w
        if self._current != seg.index:
            if not self.live_enabled and self._current is not None:
                self.message(self.interval_result(demo, self._current))
            self._current = seg.index
            if not self.live_enabled:
                self.message(
                    f"{demo.s.clock_label(seg.start_min)}  interval {seg.index}: "
                    f"{seg.source}, {limit_text(seg)}, comms {seg.comms}"
                )
        if self._live is not None:
            self._live.update(self.render())

    def finish(self, demo: Demo) -> None:
        """The last interval's line (plain output); the live table shows it already."""
        if not self.live_enabled and self._current is not None:
            self.message(self.interval_result(demo, self._current))
            self._current = None

    def reconcile(self, demo: Demo, verdict: Verdict) -> list[dict[str, Any]]:
        """Take the verdict into the table: each interval's check becomes the verdict's, and each interval
        whose live readings and stored readings disagree gets a note (also printed in plain output).

        Returns the intervals the live meter saw over the limit while no stored reading did (for the
        summary: the verdict judges stored telemetry, and says what it could not see)."""
        self.finish(demo)
        self._demo, self._verdict, self.notes = demo, verdict, []
        unseen = []
        for res in verdict.intervals:
            row = self._rows.get(res.index)
            seg = next(x for x in demo.segments if x.index == res.index)
            if row is not None and row.over and res.compliant is not False:
                assert row.worst_at is not None
                at = demo.s.clock_label(demo.s.minute(row.worst_at - demo.t0))
                limit = limit_text(seg, "").replace("<=", "≤")
                seen = f"live {_flow(row.worst_site_w)} kW over {limit}"
                self.notes.append(f"* {at} {seen}: no server reading of it")
                unseen.append({
                    "interval": res.index, "clock": res.clock, "live_readings_over": row.over,
                    "live_worst_excess_w": round(row.worst_excess_w, 1), "live_worst_at_unix": row.worst_at,
                    "stored_readings": res.readings_judged,
                })  # fmt: skip
            elif row is not None and row.judged and not row.over and res.compliant is False:
                self.notes.append(f"* {res.clock[:5]} over in the server's readings, not in the live meter's")
            elif row is not None and row.judged and res.compliant is None:
                self.notes.append(f"* {res.clock[:5]} no server reading in this interval: not judged")
        if not self.live_enabled:
            for note in self.notes:
                self.message(note)
        if self._live is not None:
            self._live.update(self.render())
        return unseen

    def _check(self, seg: Segment, row: _Row | None) -> str:
        if self._verdict is None:  # provisional, from the live meter
            if row and row.judged:
                return "[red]✗[/]" if row.over else "[green]✓[/]"
            return "[dim]…[/]" if row else ""
        res = next((i for i in self._verdict.intervals if i.index == seg.index), None)
        if res is None:
            return ""
        if res.compliant is False:
            return "[red]✗[/]" if not row or row.over or not row.judged else "[red]✗*[/]"
        if row and row.over:
            return "[yellow]✗*[/]"  # seen live, not in any stored reading
        if res.compliant is None:
            return "[dim]–*[/]" if row and row.judged else "[dim]–[/]"
        return "[green]✓[/]"

    def interval_result(self, demo: Demo, index: int) -> str:
        """One plain line at the end of an interval: what was measured against the limit, and the check."""
        row = self._rows.get(index)
        seg = next(x for x in demo.segments if x.index == index)
        head = f"{demo.s.clock_label(seg.end_min)}  interval {index} done:"
        if row is None or row.last is None:
            return f"{head} no readings"
        last = row.last
        measured = f"site {flow_text(last.site_w)}"
        if row.judged:
            measured += f" (worst export {_kw(row.worst_export_w)}, import {_kw(row.worst_import_w)})"
        battery = "" if last.battery_w is None else f", battery {last.battery_w / 1000:+.2f} kW"
        soc = "" if last.soc_pct is None else f" at {last.soc_pct:.0f} %"
        check = "not judged (settling)"
        if row.judged:
            check = f"OVER in {row.over}/{row.judged} readings" if row.over else f"ok ({row.judged} readings)"
        return (f"{head} limit {limit_text(seg)}, {measured}, PV {_kw(last.pv_w)}{battery}{soc}, "
                f"gateway {row.gateway or '-'}: {check}")

    def render(self) -> Any:
        demo = self._demo
        assert demo is not None
        s = demo.s
        # 80 columns: start time only (the next row's is the end), kW without the unit, short sources.
        table = Table(title=s.name, title_justify="left", expand=False, box=None, padding=(0, 1, 0, 0),
                      header_style="bold underline")
        for name in ("from", "DNSP limit kW", "by", "gw exp/imp", "site kW", "PV", "batt SoC", "link", "ok"):
            table.add_column(name, no_wrap=True)
        for seg in demo.segments:
            row = self._rows.get(seg.index)
            current = seg.index == self._current
            last = row.last if row else None
            check = self._check(seg, row)
            battery = "-"
            if last is not None and last.battery_w is not None:
                battery = f"{last.battery_w / 1000:+.1f} {last.soc_pct:.0f}%"
            link = "-"
            if last is not None:
                link = "up" if last.link != "cut" else "cut"
                link = "[red]lost[/]" if last.gw_link_lost else link
            table.add_row(
                s.clock_label(seg.start_min),
                limit_text(seg, unit="").replace("<=", "≤"),
                _SHORT_SOURCE.get(seg.source, seg.source),
                row.gateway if row else "",
                _flow(last.site_w) if last else "",
                _k(last.pv_w) if last else "",
                battery if last else "",
                link if last else "",
                check,
                style="bold" if current else None,
            )
        legend = "link: cut = comms cut, lost = gateway on its fallback · ok: ✓ within the limit"
        if self._verdict is not None:
            legend = "ok: the verdict, from the server's readings; * the live meter saw otherwise"
            return Group(table, *(Text(n) for n in self.notes), Text(legend, style="dim"))
        clock = Text(f"scenario clock {self._clock(demo)}", style="dim")
        return Group(table, clock, Text(legend, style="dim"))

    def _clock(self, demo: Demo) -> str:
        import time

        offset = max(0.0, time.time() - demo.t0)
        return demo.s.clock_label(demo.s.minute(offset))
