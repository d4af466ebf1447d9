"""The operator's picture over the head-end API and CLI: live statuses, acknowledgements, compliance."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path

from sep2 import resources as r
from server.store import RequestScope
from tests.test_headend import OPERATOR_TOKEN, HeadEndWorld

pytest_plugins = ["tests.test_server_harness", "tests.test_headend"]


async def test_statuses_acks_and_compliance_over_the_api_and_cli(world: HeadEndWorld) -> None:
    w = world
    store = w.running.store
    now = store.clock()
    await w.op.ok("POST", "/api/groups", {"name": "feeder"})
    lfdis = [w.clients[n].lfdi for n in ("dev-a", "dev-b", "dev-c")]
    for i, lfdi in enumerate(lfdis):
        await w.op.ok("POST", "/api/sites", {"lfdi": lfdi, "nmi": f"410300000{i}", "groups": ["feeder"]})
    body = {"program": "doe", "target": "group:feeder", "duration": 3600, "export_limit_w": 2000}
    hour = (await w.op.ok("POST", "/api/controls", {**body, "start": now + 60}))["mrid"]
    step = (await w.op.ok("POST", "/api/controls", {**body, "start": now + 600, "duration": 90}))["mrid"]
    done = (
        await w.op.ok(
            "POST", "/api/controls", {**body, "program": "default", "start": now - 100, "duration": 50}
        )
    )["mrid"]
    listed = {c["mrid"]: c for c in (await w.op.ok("GET", "/api/controls"))["items"]}
    # Live statuses (issue 13): the split hour is partly superseded; a finished control is completed;
    # the pieces are not listed as the operator's controls.
    assert listed[hour]["status"] == "partly superseded" and listed[step]["status"] == "scheduled"
    assert listed[done]["status"] == "completed" and len(listed) == 3
    detail = await w.op.ok("GET", f"/api/controls/{hour}")
    assert [(p["start"] - now, p["duration"]) for p in detail["pieces"]] == [(60, 540), (690, 2970)]

    await store.post_response(
        RequestScope(lfdi=lfdis[0], kind="device"),
        r.Response(subject=step, endDeviceLFDI=lfdis[0], status=1, createdDateTime=now),
    )
    acks = await w.op.ok("GET", f"/api/controls/{step}/acks?within=0")
    assert (acks["sites_targeted"], acks["acknowledged"]) == (3, 1)
    assert sorted(acks["non_responders"]) == sorted(lfdis[1:])
    async with w.op.session.get(f"{w.base}/api/controls/{step}/acks?format=csv&within=0") as response:
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert response.status == 200 and {row["lfdi"]: row["latest"] for row in rows}[lfdis[0]] == "received"
    status, err = await w.op.call("GET", "/api/controls/00000000000000000000000000000000/acks")
    assert status == 404 and err["field"] == "mrid"

    report = await w.op.ok("GET", f"/api/compliance?group=feeder&from={now - 3600}&to={now + 3600}")
    assert report["sites"] == 3 and report["scope"].startswith("g:")
    status, err = await w.op.call("GET", "/api/compliance?tolerance_w=-5")
    assert status == 400 and "tolerance_w" in err["error"]
    status, err = await w.op.call("GET", "/api/compliance?group=nope")
    assert status == 400 and "group" in err["error"]

    base = [sys.executable, "-m", "derlink", "ctl", "--url", w.base, "--token", OPERATOR_TOKEN]

    async def ctl(*argv: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *base,
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode() + err.decode()

    code, out = await ctl("controls", "acks", step, "--within", "0", "--csv")
    assert code == 0 and out.startswith("mrid,lfdi,nmi,latest") and len(out.splitlines()) == 4, out
    code, out = await ctl("--json", "compliance", "--group", "feeder", "--since", str(now - 60))
    assert code == 0 and json.loads(out)["sites"] == 3, out
