"""Compensatory fallback on loss of communications with the utility server.

Why: the CER roadmap names the missing "default behaviours ... during communications outages" as gap GS10
(seed 000 L542: "Designs of CER and interactions with them need fallbacks when complexity fails"), and
lists "reversion to zero export limits for persistent breaches of comms/connectivity obligations" as a
compensatory control (seed 001 L847). CSIP-AUS conformance checks the first two steps.

Order (mission brief, "Compensatory fallback"):

1. NORMAL: the link is up; the held schedule (events, DefaultDERControl per mode) is the utility layer.
2. HELD_SCHEDULE: the link is lost and an event is still active: keep executing it.
3. DEFAULT: the link is lost, no event is active, a DefaultDERControl is held: apply it.
4. COMMS_LOSS_LIMITS: the link has been lost for ``persistent_loss_s`` (counted from the moment the loss
   was declared), or it is lost and no default was ever received: the installer's comms-loss limits apply.
   They *tighten* whatever the held schedule still says (most restrictive per field) rather than replace
   it, so an active zero-export event is never relaxed to a 1.5 kW cap.

The link is lost when no successful exchange happened for ``comms_timeout_s`` (or never). Recovery is
automatic: the next successful contact makes the regime NORMAL again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from gateway.core.events import LIMIT_FIELDS, ControlSettings, ScheduleResult
from gateway.core.hierarchy import Layer, Source


class Regime(StrEnum):
    NORMAL = "NORMAL"
    HELD_SCHEDULE = "HELD_SCHEDULE"
    DEFAULT = "DEFAULT"
    COMMS_LOSS_LIMITS = "COMMS_LOSS_LIMITS"


@dataclass(frozen=True)
class FallbackConfig:
    comms_loss_limits: ControlSettings
    comms_timeout_s: int = 300
    persistent_loss_s: int = 3600

    def __post_init__(self) -> None:
        problems = self.comms_loss_limits.errors()
        if not any(getattr(self.comms_loss_limits, n) is not None for n in LIMIT_FIELDS) and (
            self.comms_loss_limits.connect is not False
        ):
            problems.append("comms_loss_limits must set at least one limit (e.g. export_limit_w)")
        if self.comms_timeout_s <= 0:
            problems.append(f"comms_timeout_s must be > 0, got {self.comms_timeout_s}")
        if self.persistent_loss_s < 0:
            problems.append(f"persistent_loss_s must be >= 0, got {self.persistent_loss_s}")
        if problems:
            raise ValueError("; ".join(problems))


def effective_comms_timeout(configured_s: int, contact_interval_s: float | None, slack_s: float = 1.0) -> int:
    """The comms timeout to apply, given the longest the client goes without an exchange with a healthy
    server (its most frequent periodic request, which follows the server's pollRate/postRate).

    A ``comms_timeout_s`` shorter than that would declare the link lost between two normal exchanges (and
    back at the next one), so it is raised to the interval plus ``slack_s`` (the time the next exchange
    itself may take; at least 1 s, the resolution of contact times); the shell logs the adjustment.
    ``None`` (rates not known yet): the configured value.
    """
    if contact_interval_s is None:
        return configured_s
    return max(configured_s, math.ceil(contact_interval_s + max(1.0, slack_s)))


@dataclass(frozen=True)
class FallbackResult:
    regime: Regime
    link_lost: bool
    loss_declared_at: int | None  # None while the link is up, or when there was never any contact
    layers: tuple[Layer, ...]  # UTILITY-level layers for the hierarchy
    next_change: int | None  # when the regime may change on its own (timeouts), if in the future


def decide_fallback(
    now: int, config: FallbackConfig, last_contact: int | None, schedule: ScheduleResult, has_default: bool
) -> FallbackResult:
    """Pick the regime and the UTILITY layers that go with it (pure)."""
    details = {name: origin.describe() for name, origin in schedule.origins.items()}
    held = Layer(Source.UTILITY, schedule.settings, "held schedule", details)
    declared = None if last_contact is None else last_contact + config.comms_timeout_s
    if declared is not None and now < declared:
        return FallbackResult(Regime.NORMAL, False, None, (held,), declared)
    persistent_at = None if declared is None else declared + config.persistent_loss_s
    if persistent_at is not None and now < persistent_at and (schedule.event_active or has_default):
        regime = Regime.HELD_SCHEDULE if schedule.event_active else Regime.DEFAULT
        return FallbackResult(regime, True, declared, (held,), persistent_at)
    why = (
        "never in contact with the server"
        if declared is None
        else f"link lost since {declared}"
        + ("" if has_default else ", no DefaultDERControl ever received")
        + (f", persistent after {config.persistent_loss_s} s" if now >= persistent_at else "")
    )
    loss_layer = Layer(Source.UTILITY, config.comms_loss_limits, f"installer comms-loss limits ({why})")
    return FallbackResult(Regime.COMMS_LOSS_LIMITS, True, declared, (held, loss_layer), None)
