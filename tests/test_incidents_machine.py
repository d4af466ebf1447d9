"""Seed 002 incident workflow as a pure state machine: every allowed and every refused transition, the
audit of who and why on each, and de-duplicated raising from compliance findings."""

import itertools
from dataclasses import replace

import pytest

from server.incidents import (
    ACTIONS,
    STATES,
    Finding,
    TransitionRefused,
    apply,
    new_incident,
    raise_from_findings,
)

REPORTER, HOLDER, AEMO = "assessor", "dnsp-operator", "aemo"
ALLOWED = {  # (from, action) -> to, as seed 002 L49-L54, L85-L91 describe it
    ("open", "triage"): "triaged",
    ("triaged", "refer"): "referred",
    ("referred", "respond"): "responded",
    ("triaged", "ready"): "ready_to_verify",
    ("responded", "ready"): "ready_to_verify",
    ("ready_to_verify", "resolve"): "resolved",
    **{(s, "close"): "closed" for s in ("open", "triaged", "referred", "responded", "ready_to_verify")},
}


def incident(state="open", referred_to=AEMO):
    inc = new_incident("inc-1", "site:0123", "breach", "high", REPORTER, HOLDER, 0.0, "export over DOE")
    return replace(inc, state=state, referred_to=referred_to)


def actor_for(action):
    return {"respond": AEMO, "resolve": REPORTER}.get(action, HOLDER)


def act(inc, action):
    return apply(inc, action, actor_for(action), f"because {action}", 10.0, referred_to=AEMO,
                 root_cause="inverter firmware")  # fmt: skip


@pytest.mark.parametrize(("state", "action"), sorted(ALLOWED))
def test_allowed_transition_is_audited(state, action):
    before = incident(state)
    after = act(before, action)
    assert after.state == ALLOWED[(state, action)]
    note = after.timeline[-1]
    assert (note.actor, note.text, note.action, note.from_state, note.to_state, note.at) == (
        actor_for(action), f"because {action}", action, state, after.state, 10.0)  # fmt: skip
    assert after.timeline[:-1] == before.timeline


REFUSED = [(s, a) for s, a in itertools.product(STATES, ACTIONS) if (s, a) not in ALLOWED]


@pytest.mark.parametrize(("state", "action"), REFUSED)
def test_refused_transition_changes_nothing(state, action):
    before = incident(state)
    with pytest.raises(TransitionRefused, match=f"action: {action} is not allowed from {state}") as exc:
        act(before, action)
    assert exc.value.field == "action"
    assert before.state == state and len(before.timeline) == 1


def test_every_state_action_pair_is_covered():
    assert len(ALLOWED) + len(REFUSED) == len(STATES) * len(ACTIONS) == 42


def test_full_referral_path_L49_L91():
    inc = incident()
    for action in ("triage", "refer", "respond", "ready", "resolve"):
        inc = act(inc, action)
    assert inc.state == "resolved" and inc.referred_to == AEMO and inc.root_cause == "inverter firmware"
    assert [n.action for n in inc.timeline] == ["raise", "triage", "refer", "respond", "ready", "resolve"]
    with pytest.raises(TransitionRefused, match="no more notes"):
        apply(inc, "note", HOLDER, "late", 11.0)


@pytest.mark.parametrize(
    ("state", "action", "kwargs", "field"),
    [
        ("open", "triage", {"actor": " "}, "actor"),
        ("open", "triage", {"reason": ""}, "reason"),
        ("triaged", "refer", {"referred_to": None}, "referred_to"),
        ("referred", "respond", {"actor": HOLDER}, "actor"),  # only the party referred to (L53)
        ("responded", "ready", {"root_cause": ""}, "root_cause"),  # L89
        ("ready_to_verify", "resolve", {"actor": HOLDER}, "actor"),  # only the reporter (L91)
        ("open", "escalate", {}, "action"),
    ],
)
def test_transition_preconditions_name_the_field(state, action, kwargs, field):
    args = {"actor": actor_for(action), "reason": "why", "referred_to": AEMO, "root_cause": "rc", **kwargs}
    with pytest.raises(TransitionRefused) as exc:
        apply(incident(state), action, args["actor"], args["reason"], 1.0, referred_to=args["referred_to"],
              root_cause=args["root_cause"])  # fmt: skip
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [({"subject": "0123"}, "subject"), ({"subject": "site:"}, "subject"), ({"kind": "fire"}, "kind"),
     ({"severity": "urgent"}, "severity"), ({"reporter": ""}, "reporter"), ({"text": " "}, "text")],
)  # fmt: skip
def test_bad_new_incident_names_the_field(change, field):
    args = {"subject": "site:1", "kind": "silent", "severity": "low", "reporter": "a", "holder": "b",
            "text": "t", **change}  # fmt: skip
    with pytest.raises(TransitionRefused) as exc:
        new_incident("i", args["subject"], args["kind"], args["severity"], args["reporter"], args["holder"],
                     0.0, args["text"])  # fmt: skip
    assert exc.value.field == field


def test_raise_from_findings_one_open_incident_per_site_and_kind():
    ids = iter(f"inc-{n}" for n in range(1, 100))
    findings = [
        Finding("site:A", "breach", "high", "export 6 kW over a 5 kW limit"),
        Finding("site:A", "breach", "high", "export 5.5 kW over a 5 kW limit"),  # same site+kind: a note
        Finding("site:A", "silent", "medium", "no telemetry for 15 min"),  # other kind: its own incident
        Finding("site:B", "breach", "low", "export 5.1 kW"),
    ]
    created, noted = raise_from_findings(findings, [], REPORTER, HOLDER, 5.0, lambda: next(ids))
    assert [(i.id, i.subject, i.kind) for i in created] == [
        ("inc-1", "site:A", "breach"),
        ("inc-2", "site:A", "silent"),
        ("inc-3", "site:B", "breach"),
    ]
    assert [n.text for n in created[0].timeline] == ["export 6 kW over a 5 kW limit",
                                                     "again: export 5.5 kW over a 5 kW limit"]  # fmt: skip
    assert noted == []
    # A second assessment: A/breach is still open (triaged) -> noted, B/breach was resolved -> a new one.
    a_breach = act(created[0], "triage")
    b_breach = replace(created[2], state="resolved")
    created2, noted2 = raise_from_findings(findings[:1] + findings[3:], [a_breach, created[1], b_breach],
                                           REPORTER, HOLDER, 6.0, lambda: next(ids))  # fmt: skip
    assert [(i.id, i.subject) for i in created2] == [("inc-4", "site:B")]
    assert [(i.id, i.state, i.timeline[-1].text) for i in noted2] == [
        ("inc-1", "triaged", "again: export 6 kW over a 5 kW limit")]  # fmt: skip


async def test_webhook_posts_each_transition_signed():
    import hashlib
    import hmac
    import json as _json

    import aiohttp
    from aiohttp import web

    from server.incidents.webhook import notify

    received: list[tuple[dict, str]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((_json.loads(body), request.headers.get("X-Derlink-Signature", "")))
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        return web.Response(status=204 if received[-1][1] == expected else 401)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        inc = act(incident(), "triage")
        async with aiohttp.ClientSession() as session:
            assert await notify(session, url, inc, secret="s3cret") == 204
            assert await notify(session, url, inc, secret="wrong") == 401
        await runner.cleanup()
        async with aiohttp.ClientSession() as session:
            refused = await notify(session, url, inc, timeout_s=1)
    finally:
        await runner.cleanup()
    assert isinstance(refused, str) and "Error" in refused
    body = received[0][0]
    assert (body["id"], body["state"], body["event"]["action"], body["event"]["actor"]) == (
        "inc-1", "triaged", "triage", HOLDER)  # fmt: skip
