"""What the demo sees at one moment: shared by the orchestrator, the live view and the plot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sample:
    """What the demo sees at one moment (for the live view and the plot)."""

    t: float  # unix
    site_w: float | None  # + import / - export (the simulator's meter)
    pv_w: float | None
    battery_w: float | None
    soc_pct: float | None
    gw_export_w: float | None
    gw_import_w: float | None
    gw_source: str
    regime: str
    link: str  # up | cut
    gw_link_lost: bool
