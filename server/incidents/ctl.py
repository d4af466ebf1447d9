"""``derlink ctl incidents ...``: the head-end incident routes (server.ctl hooks it)."""

from __future__ import annotations

from typing import Any

from server.incidents.machine import ACTIONS, KINDS, SEVERITIES


def add_parsers(verbs: Any) -> None:
    v = verbs("incidents", "incidents: raise, triage, refer, respond, verify, resolve (seed 002)")
    p = v.add_parser("list", help="list incidents")
    p.add_argument("--open", action="store_true", help="only those not resolved or closed")
    p.add_argument("--subject", help="site:<LFDI> or group:<name>")
    v.add_parser("show", help="an incident and its timeline").add_argument("id")
    p = v.add_parser("raise", help="raise an incident (one open per subject and kind)")
    p.add_argument("subject", help="site:<LFDI> or group:<name>")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("text")
    p.add_argument("--severity", choices=SEVERITIES, default="medium")
    p.add_argument("--holder", help="the party that triages it (default: the token's name)")
    p = v.add_parser("from-compliance", help="assess compliance; raise an incident per site and kind found")
    p.add_argument("--site", help="one site (LFDI)")
    p.add_argument("--group", help="a group and its nested groups (default: all sites)")
    p.add_argument("--since", type=int, help="Unix seconds (default: a day before --until)")
    p.add_argument("--until", type=int, help="Unix seconds (default: now)")
    for action in (*ACTIONS, "note"):
        p = v.add_parser(action, help=f"{action} an incident" if action != "note" else "add a note")
        p.add_argument("id")
        p.add_argument("--reason", required=True, help="why (recorded in the timeline and the audit log)")
        if action == "refer":
            p.add_argument("--referred-to", dest="referred_to", required=True, help="the party referred to")
        if action == "ready":
            p.add_argument("--root-cause", required=True)


def commands(call: Any) -> dict[tuple[str, str], Any]:
    def act(action: str) -> Any:
        return lambda a: call(a, "POST", f"/api/incidents/{a.id}/actions", body={
            "action": action, "reason": a.reason, "referred_to": getattr(a, "referred_to", None),
            "root_cause": getattr(a, "root_cause", None)})  # fmt: skip

    out: dict[tuple[str, str], Any] = {
        ("incidents", "list"): lambda a: call(a, "GET", "/api/incidents",
                                              query={"open": "1" if a.open else None, "subject": a.subject}),
        ("incidents", "show"): lambda a: call(a, "GET", f"/api/incidents/{a.id}"),
        ("incidents", "raise"): lambda a: call(a, "POST", "/api/incidents", body={
            "subject": a.subject, "kind": a.kind, "severity": a.severity, "text": a.text,
            "holder": a.holder}),
        ("incidents", "from-compliance"): lambda a: call(a, "POST", "/api/incidents/from-compliance", body={
            k: v for k, v in (("site", a.site), ("group", a.group), ("from", a.since), ("to", a.until))
            if v is not None}),
    }  # fmt: skip
    for action in (*ACTIONS, "note"):
        out[("incidents", action)] = act(action)
    return out
