"""Incidents between parties (seed 002 referral workflow): a pure state machine and de-duplicated raising."""

from server.incidents.machine import (
    ACTIONS,
    KINDS,
    OPEN_STATES,
    SEVERITIES,
    STATES,
    TRANSITIONS,
    Finding,
    Incident,
    Note,
    TransitionRefused,
    apply,
    new_incident,
    raise_from_findings,
)

__all__ = [
    "ACTIONS",
    "KINDS",
    "OPEN_STATES",
    "SEVERITIES",
    "STATES",
    "TRANSITIONS",
    "Finding",
    "Incident",
    "Note",
    "TransitionRefused",
    "apply",
    "new_incident",
    "raise_from_findings",
]
