"""Project EDGE bi-directional offers (seed 004): portfolio model, builder, validator, dispatch.

The core (``model``, ``builder``, ``validator``, ``dispatch``) does no I/O; ``io`` reads portfolios from
CSV/JSON and ``publish`` sends dispatch targets to gateways as aggregator setpoints.
"""

from aggregator.boffer.builder import build_offer
from aggregator.boffer.dispatch import Telemetry, dispatch_sites, telemetry
from aggregator.boffer.model import (
    BANDS,
    PERIODS_PER_OFFER,
    Arrangement,
    BuiltOffer,
    Offer,
    PeriodOffer,
    Plan,
    PlanError,
    Portfolio,
    Site,
)
from aggregator.boffer.validator import Finding, validate

__all__ = [
    "BANDS",
    "PERIODS_PER_OFFER",
    "Arrangement",
    "BuiltOffer",
    "Finding",
    "Offer",
    "PeriodOffer",
    "Plan",
    "PlanError",
    "Portfolio",
    "Site",
    "Telemetry",
    "build_offer",
    "dispatch_sites",
    "telemetry",
    "validate",
]
