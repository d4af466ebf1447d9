"""Incidents in the server's store (SQLite on disk): raise with de-duplication, transitions committed with
their timeline and audit rows, refused transitions writing nothing."""

import pytest

from server.incidents import Finding, TransitionRefused
from server.incidents.repo import IncidentNotFound, Incidents
from server.store import Store


@pytest.fixture
async def repo(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.sqlite3")
    yield Incidents(store)
    await store.close()


async def test_raise_dedup_transitions_and_audit(repo):
    findings = [Finding("site:AB12", "breach", "high", "export 6 kW over 5 kW"),
                Finding("site:AB12", "breach", "high", "export 5.4 kW over 5 kW"),
                Finding("site:CD34", "silent", "medium", "no readings for 15 min")]  # fmt: skip
    result = await repo.raise_from_findings(findings, "assessor", "dnsp-operator")
    assert result == {"created": ["INC-1", "INC-2"], "noted": ["INC-1"]}
    inc = await repo.act("INC-1", "triage", "alice", "confirmed from telemetry")
    inc = await repo.act("INC-1", "refer", "alice", "installer to check", referred_to="installer-co")
    with pytest.raises(TransitionRefused, match="actor: only installer-co"):
        await repo.act("INC-1", "respond", "alice", "pretending")
    with pytest.raises(TransitionRefused, match="resolve is not allowed from referred"):
        await repo.act("INC-1", "resolve", "assessor", "too early")
    stored = await repo.get("INC-1")
    assert stored == inc and stored.state == "referred"  # refused actions wrote nothing
    await repo.act("INC-1", "respond", "installer-co", "export limit not configured; fixed")
    await repo.act("INC-1", "ready", "alice", "installer fixed it", root_cause="limit unset at install")
    done = await repo.act("INC-1", "resolve", "assessor", "no breach for 24 h")
    assert [(n.actor, n.action, n.to_state) for n in done.timeline] == [
        ("assessor", "raise", "open"), ("assessor", None, None), ("alice", "triage", "triaged"),
        ("alice", "refer", "referred"), ("installer-co", "respond", "responded"),
        ("alice", "ready", "ready_to_verify"), ("assessor", "resolve", "resolved"),
    ]  # fmt: skip
    audit = await repo.store.admin.audit(limit=50)
    trail = [(a["actor"], a["action"], a["target"], a["reason"]) for a in reversed(audit)
             if a["action"].startswith("incident.")]  # fmt: skip
    assert trail[:3] == [("assessor", "incident.raise", "INC-1", "export 6 kW over 5 kW"),
                         ("assessor", "incident.note", "INC-1", "export 5.4 kW over 5 kW"),
                         ("assessor", "incident.raise", "INC-2", "no readings for 15 min")]  # fmt: skip
    assert trail[-1] == ("assessor", "incident.resolve", "INC-1", "no breach for 24 h")
    assert len(trail) == 8  # 2 raises, 1 note, 5 transitions; the 2 refused ones are not there
    # Resolved: the same finding now raises a new incident; the open silent one is only noted.
    result = await repo.raise_from_findings(findings[:1] + findings[2:], "assessor", "dnsp-operator")
    assert result == {"created": ["INC-3"], "noted": ["INC-2"]}
    assert [i.id for i in await repo.list(open_only=True)] == ["INC-2", "INC-3"]
    with pytest.raises(IncidentNotFound, match="id: no incident"):
        await repo.get("INC-99")
    with pytest.raises(IncidentNotFound, match="ids look like"):
        await repo.get("42")
