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

    # A finding is answered with a normal control, audited with its reason (seed 001 L847).
    status, err = await w.op.call("POST", "/api/compliance/act", {"site": lfdis[2]})
    assert status == 400 and "reason" in err["error"]
    status, _ = await w.viewer.call("POST", "/api/compliance/act", {"site": lfdis[2], "reason": "x"})
    assert status == 403
    act = await w.op.ok("POST", "/api/compliance/act", {"site": lfdis[2], "reason": "persistent breach"})
    audit = (await w.op.ok("GET", "/api/audit?action=control.create"))["items"][0]
    assert audit["reason"] == "persistent breach" and act["mrid"] in json.dumps(audit)

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


async def test_cli_takes_grouped_identifiers_and_a_closed_pipe_quietly(world: HeadEndWorld) -> None:
    import subprocess

    lfdi = f"{0xABCDEF:040X}"
    grouped = " ".join("-".join(lfdi[i : i + 4] for i in range(j, j + 8, 4)) for j in range(0, 40, 8))
    from sep2.identity import sfdi_from_lfdi

    sfdi = str(sfdi_from_lfdi(lfdi))
    base = [sys.executable, "-m", "derlink", "ctl", "--url", world.base, "--token", OPERATOR_TOKEN]

    def run(*argv: str, close_stdout: bool = False) -> tuple[int, str, str]:
        proc = subprocess.Popen(
            [*base, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent
        )
        if close_stdout:
            proc.stdout.close()  # type: ignore[union-attr]
            err = proc.stderr.read().decode()  # type: ignore[union-attr]
            return proc.wait(), "", err
        out, err = proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await asyncio.to_thread(
        run, "--json", "sites", "register", grouped, "--sfdi", f"{sfdi[:4]}-{sfdi[4:8]} {sfdi[8:]}"
    )
    assert code == 0 and json.loads(out)["lfdi"] == lfdi, out + err
    code, out, err = await asyncio.to_thread(run, "--json", "sites", "show", grouped.lower())
    assert code == 0 and json.loads(out)["lfdi"] == lfdi, out + err
    code, out, err = await asyncio.to_thread(run, "sites", "register", "ABCD-XYZ")
    assert code == 1 and "lfdi" in (out + err)
    # A reader that went away: no traceback, nothing on stderr (rich itself exits 1 on a closed pipe).
    for argv in (("audit",), ("--json", "audit")):
        code, _, err = await asyncio.to_thread(run, *argv, close_stdout=True)
        assert code in (0, 1) and err.strip() == "", err


async def test_telemetry_export_in_real_units_with_devices_phases_and_group_totals(
    world: HeadEndWorld,
) -> None:
    from gateway.client import mapping as gm

    w = world
    store = w.running.store
    now = store.clock()
    await w.op.ok("POST", "/api/groups", {"name": "feeder-t"})
    lfdis = [w.clients[n].lfdi for n in ("dev-a", "dev-b")]
    for i, lfdi in enumerate(lfdis):
        await w.op.ok("POST", "/api/sites", {"lfdi": lfdi, "nmi": f"410400000{i}", "groups": ["feeder-t"]})
        scope = RequestScope(lfdi=lfdi, kind="device")
        # What the gateway posts (its own mapping): site meter W, V per phase (x10^-1), Hz (x10^-2); a DER.
        snapshot = gm.SiteSnapshot(
            site=gm.Measurements(w=-1234.0 - i, v={"A": 230.7, "B": 241.3}, hz=50.02),
            ders=[
                gm.DeviceSnapshot("inv-1", 4, 5000.0, 0x0F, measurements=gm.Measurements(w=2100.0)),
                gm.DeviceSnapshot(
                    "bat-1", 80, 5000.0, 0x0F, rtg_max_wh=10_000.0,
                    measurements=gm.Measurements(w=-800.0 - i, soc_pct=40.0),
                ),
            ],
        )
        for point, doc in gm.site_readings(lfdi, snapshot, now - 30, 60):
            await store.upsert_mup(scope, gm.mirror_usage_point(point, lfdi, doc.MirrorMeterReading))
    data = await w.op.ok("GET", f"/api/telemetry?group=feeder-t&from={now - 60}&to={now}")
    first = [x for x in data["readings"] if x["lfdi"] == lfdis[0]]
    by = {(x["device"], x["quantity"], x["phase"]): (x["value"], x["unit"]) for x in first}
    assert by[("site meter", "W forward (import)", None)] == (-1234.0, "W")
    assert by[("site meter", "V", "A")] == (230.7, "V") and by[("site meter", "V", "B")] == (241.3, "V")
    assert by[("site meter", "Hz", None)] == (50.02, "Hz")
    assert by[("DER: DER inv-1", "W reverse (generation)", None)] == (2100.0, "W")
    assert by[("DER: DER bat-1", "W reverse (generation)", None)] == (-800.0, "W")  # charging
    assert by[("DER: DER bat-1", "Wh", None)] == (4000.0, "Wh")  # 40 % of 10 kWh
    # Each series is tagged with its role (issue 13 item 5): site meter, PV or battery.
    roles = {x["device"]: x["role"] for x in first}
    assert roles == {"site meter": "site meter", "DER: DER inv-1": "PV", "DER: DER bat-1": "battery"}
    assert data["group_totals"] == [{"time": now - 30, "site_power_w": -2469.0, "sites": 2, "unit": "W"}]
    assert data["der_totals"] == [
        {"time": now - 30, "role": "PV", "power_w": 4200.0, "devices": 2, "unit": "W"},
        {"time": now - 30, "role": "battery", "power_w": -1601.0, "devices": 2, "unit": "W"},
    ]
    async with w.op.session.get(f"{w.base}/api/telemetry?site={lfdis[1]}&format=csv&from={now - 60}") as resp:
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert {(row["quantity"], row["value"], row["unit"]) for row in rows} >= {("V", "230.7", "V")}
    assert {row["role"] for row in rows} == {"site meter", "PV", "battery"}
    status, err = await w.op.call("GET", f"/api/telemetry?from={now}&to={now}")
    assert status == 400 and "to:" in err["error"]
