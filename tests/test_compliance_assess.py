"""The server's compliance assessment over stored telemetry (seed 000 GS14; seed 001 L695, L847).

Readings are posted through the same store path the 2030.5 MirrorUsagePoint handlers use, built by the
gateway's own telemetry mapping, so units and sign conventions are the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.client import mapping as m
from sep2 import resources as r
from server.compliance.assess import act_on_finding, assess
from server.compliance.judge import Rules
from server.store import Page, RequestScope, Store, build_control_base

T0 = 1_800_000_000
LFDI = {name: f"{n:040X}" for n, name in enumerate("ABCD", 1)}


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    s.now = T0 - 600
    s.clock = lambda: s.now
    await s.admin.ensure_standard_programs()
    await s.admin.create_group("feeder")
    for lfdi in LFDI.values():
        await s.admin.register_site(lfdi, groups_=["feeder"])
    yield s
    await s.close()


async def _post(store: Store, lfdi: str, at: int, site_w: float) -> None:
    scope = RequestScope(lfdi=lfdi, kind="device")
    point = m.mirror_point(lfdi, "site")
    store.now = at
    doc = m.meter_readings(point, m.Measurements(w=site_w, v={"A": 240.0}), at, 60)
    await store.upsert_mup(scope, m.mirror_usage_point(point, lfdi, doc.MirrorMeterReading))


async def post_the_hour(store: Store, emergency: str) -> None:
    """One hour of telemetry from T0: A follows both limits, B's inverter is stuck at 3 kW export, C stops
    posting after 25 minutes, D complies; only A answers the emergency."""
    for at in range(T0, T0 + 3600, 60):
        in_emergency = T0 + 1800 <= at < T0 + 2100
        await _post(store, LFDI["A"], at, -40.0 if in_emergency else -1900.0)
        await _post(store, LFDI["B"], at, -3000.0)
        if at < T0 + 1500:
            await _post(store, LFDI["C"], at, -1500.0)
        await _post(store, LFDI["D"], at, -30.0 if in_emergency else -1000.0)
    await store.post_response(
        RequestScope(lfdi=LFDI["A"], kind="device"),
        r.Response(subject=emergency, endDeviceLFDI=LFDI["A"], status=1, createdDateTime=T0 + 1801),
    )


async def _capability(store: Store, lfdi: str, doe_modes: int) -> None:
    scope = RequestScope(lfdi=lfdi, kind="device")
    site_id = await store.admin.site_id(lfdi)
    _, (der_id,) = await store.der_ids(scope, site_id, Page(0, 1))
    device = m.DeviceSnapshot("inv", 4, 5000.0, 0x0F, doe_modes_supported=doe_modes)
    await store.put_der_document(scope, site_id, der_id, "dercap", m.der_capability(device))


async def test_assessment_finds_breaches_silence_non_responders_and_curtailment(store: Store) -> None:
    admin = store.admin
    store.now = T0 - 60
    await admin.create_control(
        "doe",
        "group:feeder",
        start=T0,
        duration=3600,
        base=build_control_base(export_limit_w=2000),
        response_required="00",
    )
    store.now = T0 + 1800
    emergency = await admin.create_control(
        "emergency", "group:feeder", start=T0 + 1800, duration=300, base=build_control_base(export_limit_w=0)
    )
    for name in "ABCD":
        await _capability(store, LFDI[name], 0x0E if name == "D" else 0x0F)  # D cannot limit export
    # A follows both limits; B's inverter is stuck at 3 kW export; C stops posting after 25 minutes;
    # D complies but declared no export-limit mode.
    await post_the_hour(store, emergency)
    store.now = T0 + 3600
    async with store.read() as conn:
        result = (await assess(conn, "all", T0, T0 + 3600, now=T0 + 3600, rules=Rules())).as_json()
    by = {s["lfdi"]: s for s in result["site_results"]}
    a, b, c, d = (by[LFDI[n]] for n in "ABCD")
    # Exactly B's three intervals breach: the hour before, during and after the emergency.
    assert a["breaches"] == [] and a["intervals_judged"] == 3 == a["intervals_compliant"]
    assert [(x["from"] - T0, x["to"] - T0, x["limit"], x["limit_w"]) for x in b["breaches"]] == [
        (0, 1800, "export", 2000.0),
        (1800, 2100, "export", 0.0),
        (2100, 3600, "export", 2000.0),
    ]
    assert [x["worst_excess_w"] for x in b["breaches"]] == [900.0, 2900.0, 900.0]  # over limit + 100 W
    assert b["breaches"][1]["set_by"] == f"control {emergency}"
    # 60 one-minute readings, less the two inside a settling allowance (at T0 and at the emergency).
    assert b["breach_s"] == 58 * 60 and c["breaches"] == [] and d["breaches"] == []
    assert result["sites_judged"] == 4 and result["sites_compliant"] == 3 and result["breaches"] == 3
    # Silence: C's last reading is 25 min in; with postRate 300 s x 3 it is silent from then.
    assert result["silent"] == [LFDI["C"]]
    assert c["silent_periods"] == [{"from": T0 + 1440, "to": T0 + 3600, "seconds": 2160}]
    # Only the emergency asks for Responses; only A answered.
    assert result["non_responders"] == {emergency: [LFDI["B"], LFDI["C"], LFDI["D"]]}
    assert result["capability_mismatches"] == [
        {"lfdi": LFDI["D"], "mode": "export", "problem": "csipaus:doeModesSupported does not include it"}
    ]
    # Persistent breach (B) and persistent silence (C) are findings an operator can act on.
    assert {(f["lfdi"], f["kind"]) for f in result["findings"]} == {
        (LFDI["B"], "persistent breach"),
        (LFDI["C"], "persistent silence"),
    }
    # Curtailment: A shed 1860 W of 1900, B nothing of 3000, D 970 of 1000; C had no telemetry.
    (curtail,) = result["curtailment"]
    everyone = next(g for g in curtail["groups"] if g["group"] == "all targeted")
    assert everyone["sites"] == 4 and everyone["unmeasured_sites"] == 1
    assert everyone["asked_w"] == pytest.approx(1900 + 3000 + 1000)
    assert everyone["achieved_w"] == pytest.approx(1860 + 0 + 970)
    assert {g["group"] for g in curtail["groups"]} == {"all targeted", "feeder"}

    # Acting on a finding issues a normal, audited control.
    mrid = await act_on_finding(admin, LFDI["B"], duration=3600, actor="op", reason="persistent breach")
    audit = await admin.audit(limit=1)
    assert audit[0]["action"] == "control.create" and audit[0]["reason"] == "persistent breach"
    assert mrid in audit[0]["detail"]


async def test_one_site_scope_rules_and_bad_input(store: Store) -> None:
    store.now = T0 - 60
    await store.admin.create_control(
        "doe", f"site:{LFDI['A']}", start=T0, duration=600, base=build_control_base(export_limit_w=1000)
    )
    for at in range(T0, T0 + 600, 60):
        await _post(store, LFDI["A"], at, -1150.0)  # 150 W over: within 200 W, not within 100 W
    async with store.read() as conn:
        strict = await assess(conn, "s:1", T0, T0 + 600, now=T0 + 600, rules=Rules(settle_s=0))
        loose = await assess(conn, "s:1", T0, T0 + 600, now=T0 + 600, rules=Rules(tolerance_w=200))
        assert strict.sites == 1 and strict.breaches == 1 and loose.breaches == 0
        with pytest.raises(ValueError, match="to:"):
            await assess(conn, "all", T0, T0, now=T0)
    with pytest.raises(ValueError, match="tolerance_w"):
        Rules(tolerance_w=-1)
    with pytest.raises(ValueError, match="bogus: unknown rule"):
        Rules.from_mapping({"bogus": 1})
