"""Installer commissioning through the gateway (``derlink gateway commission``): see :mod:`.flow`."""

from gateway.commissioning.common import Options, StepFailed
from gateway.commissioning.flow import Outcome, run_commissioning
from gateway.commissioning.nmi import Nmi, NmiError, nmi_checksum, validate_nmi
from gateway.commissioning.state import STEPS, CommissioningState

__all__ = [
    "STEPS",
    "CommissioningState",
    "Nmi",
    "NmiError",
    "Options",
    "Outcome",
    "StepFailed",
    "nmi_checksum",
    "run_commissioning",
    "validate_nmi",
]
