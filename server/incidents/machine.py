"""The incident state machine of seed 002 (/work/shared/seeds/002_3de94a9f1b20261b.txt, cited L<line>).

    open --triage--> triaged --refer--> referred --respond--> responded --ready--> ready_to_verify
    triaged --ready--> ready_to_verify            (referral only "where required", L85)
    ready_to_verify --resolve--> resolved         (by the reporter, L91)
    any state before resolved --close--> closed   (withdrawn / duplicate; a reason is required)

No I/O: ``apply`` returns a new Incident with the transition appended to its timeline (who, why, when),
or raises TransitionRefused saying which transition was refused and why. Storage and audit persist it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

STATES = ("open", "triaged", "referred", "responded", "ready_to_verify", "resolved", "closed")
OPEN_STATES = frozenset(STATES[:5])
KINDS = ("breach", "non_responder", "silent", "commissioning_fault", "device_fault", "other")
SEVERITIES = ("low", "medium", "high", "critical")

# action -> (allowed from states, to state)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "triage": (frozenset({"open"}), "triaged"),  # L49
    "refer": (frozenset({"triaged"}), "referred"),  # L50-L51
    "respond": (frozenset({"referred"}), "responded"),  # L53
    "ready": (frozenset({"triaged", "responded"}), "ready_to_verify"),  # L85, L89
    "resolve": (frozenset({"ready_to_verify"}), "resolved"),  # L91
    "close": (OPEN_STATES, "closed"),
}
ACTIONS = tuple(TRANSITIONS)


class TransitionRefused(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Note:
    at: float
    actor: str
    text: str
    action: str | None = None  # None for a plain note
    from_state: str | None = None
    to_state: str | None = None


@dataclass(frozen=True)
class Incident:
    id: str
    subject: str  # "site:<lfdi>" or "group:<name>"
    kind: str
    severity: str
    reporter: str  # the party that raised it (L49: the ADR; in derlink the assessor or an operator)
    holder: str  # the party that triages it (L49: the primary data holder; the DNSP operator)
    state: str = "open"
    referred_to: str | None = None  # L51: the party asked for input
    root_cause: str | None = None  # L89
    timeline: tuple[Note, ...] = field(default_factory=tuple)

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


def new_incident(id: str, subject: str, kind: str, severity: str, reporter: str, holder: str, at: float,
                 text: str) -> Incident:  # fmt: skip
    scheme, _, name = subject.partition(":")
    if scheme not in ("site", "group") or not name:
        raise TransitionRefused("subject", f"must be site:<id> or group:<name>, got {subject!r}")
    if kind not in KINDS:
        raise TransitionRefused("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if severity not in SEVERITIES:
        raise TransitionRefused("severity", f"must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    for name, value in (("reporter", reporter), ("holder", holder), ("text", text)):
        if not value.strip():
            raise TransitionRefused(name, "required")
    return Incident(id, subject, kind, severity, reporter, holder,
                    timeline=(Note(at, reporter, text, "raise", None, "open"),))  # fmt: skip


def apply(incident: Incident, action: str, actor: str, reason: str, at: float, *,
          referred_to: str | None = None, root_cause: str | None = None) -> Incident:  # fmt: skip
    """The incident after `action` by `actor` because `reason`; refused transitions change nothing."""
    if action == "note":
        if not incident.is_open:
            raise TransitionRefused("action", f"incident is {incident.state}: no more notes")
        if not reason.strip():
            raise TransitionRefused("reason", "a note needs text")
        return replace(incident, timeline=(*incident.timeline, Note(at, actor, reason)))
    if action not in TRANSITIONS:
        raise TransitionRefused("action", f"unknown action {action!r}; one of note, {', '.join(ACTIONS)}")
    allowed, to_state = TRANSITIONS[action]
    if incident.state not in allowed:
        only = ", ".join(sorted(allowed))
        raise TransitionRefused("action", f"{action} is not allowed from {incident.state} (only from {only})")
    if not actor.strip():
        raise TransitionRefused("actor", "required: every transition is audited with who")
    if not reason.strip():
        raise TransitionRefused("reason", "required: every transition is audited with why")
    changes: dict[str, object] = {}
    if action == "refer":
        if not referred_to or not referred_to.strip():
            raise TransitionRefused("referred_to", "name the party the incident is referred to (L51)")
        changes["referred_to"] = referred_to
    if action == "respond" and actor != incident.referred_to:
        raise TransitionRefused("actor", f"only {incident.referred_to}, referred to, responds (L53)")
    if action == "ready":
        if not root_cause or not root_cause.strip():
            raise TransitionRefused("root_cause", "required before ready to verify (L89)")
        changes["root_cause"] = root_cause
    if action == "resolve" and actor != incident.reporter:
        raise TransitionRefused("actor", f"only the reporter ({incident.reporter}) confirms resolution (L91)")
    note = Note(at, actor, reason, action, incident.state, to_state)
    return replace(incident, state=to_state, timeline=(*incident.timeline, note), **changes)


@dataclass(frozen=True)
class Finding:
    """What compliance assessment found about a site (or group): the input to automatic raising."""

    subject: str
    kind: str
    severity: str
    detail: str


def raise_from_findings(findings: Iterable[Finding], existing: Iterable[Incident], reporter: str, holder: str,
                        at: float, next_id) -> tuple[list[Incident], list[Incident]]:  # fmt: skip
    """(new incidents, incidents noted): one open incident per subject and kind.  A finding whose subject
    and kind already have an open incident adds a note to it instead of raising a second one."""
    current = {(i.subject, i.kind): i for i in existing if i.is_open}
    raised: set[tuple[str, str]] = set()
    touched: list[tuple[str, str]] = []
    for f in findings:
        key = (f.subject, f.kind)
        if key in current:
            current[key] = apply(current[key], "note", reporter, f"again: {f.detail}", at)
        else:
            inc = new_incident(next_id(), f.subject, f.kind, f.severity, reporter, holder, at, f.detail)
            current[key] = inc
            raised.add(key)
        if key not in touched:
            touched.append(key)
    return ([current[k] for k in touched if k in raised], [current[k] for k in touched if k not in raised])
