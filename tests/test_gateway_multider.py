"""End to end: a site with two PV inverters and a battery shows three DERs on the server (issue 16 item 3).

Our server (real mutual TLS) provides three DER instances in the site's DERList (2030.5 §10.10; the server
creates them, here declared at registration). The gateway reads three devices over real Modbus TCP
(simulated SunSpec site), PUTs each device's DERCapability / DERSettings / DERStatus / DERAvailability to
its own DER and posts each device's telemetry to its own DER MirrorUsagePoint (roleFlags isDER, CSIP-AUS
MUL-02). The head-end shows them (GET /api/sites/{site}/ders).
A site-wide DOE (connection point; the only target CSIP-AUS uses) is met by the devices together. A control
for one DER alone (IEEE 2030.5-2018 §10.10, DER.AssociatedDERProgramListLink: "DERPrograms having the
DERControl(s) for this DER") reaches only the device mapped to that DER.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from sep2 import resources as r
from sep2.xml import from_xml
from server.headend.telemetry import ROLE_DER
from server.store import (
    DER_DOCUMENT_TYPES,
    build_control_base,
    der_documents,
    ders,
    meter_readings,
    mups,
    readings,
)
from simulators.config import DeviceConfig, ProfileConfig
from tests.test_gateway_runtime_harness import Lab, Pki, make_lab, tolerance, wait_until

pytest_plugins = ["tests.test_gateway_runtime_harness"]
TOKEN = "multider-viewer-token-0123"
OPERATOR = "multider-operator-token-0123"


def three_devices(tmp_path: Path, gw_pki: Pki, der_count: int) -> Any:
    """PV 5 kW + battery 5 kW / 13.5 kWh + meter (the lab's default site) and a second PV of 3 kW."""
    pv2 = DeviceConfig(
        name="pv2", kind="pv", unit_id=4, rated_w=3000.0, serial="PV2-0002",
        pv_profile=ProfileConfig(kind="constant", peak_w=2500.0), response_delay_s=0.1, ramp_time_s=0.0,
    )  # fmt: skip
    return make_lab(
        tmp_path, gw_pki, sim_kwargs={"battery": True}, extra_devices=[pv2], der_count=der_count,
        headend_enabled=True, headend_port=0,
        headend_tokens=[{"name": "op", "token": TOKEN, "role": "viewer"},
                        {"name": "dnsp", "token": OPERATOR, "role": "operator"}],
    )  # fmt: skip


@pytest.fixture
async def lab3(tmp_path: Path, gw_pki: Pki) -> AsyncIterator[Lab]:
    async with three_devices(tmp_path, gw_pki, 3) as made:
        yield made


@pytest.fixture
async def lab1(tmp_path: Path, gw_pki: Pki) -> AsyncIterator[Lab]:
    async with three_devices(tmp_path, gw_pki, 1) as made:
        yield made


async def der_docs(lab: Lab) -> dict[int, dict[str, Any]]:
    """DER id -> {kind: document} as stored for the lab's site."""
    site_id = await lab.admin.site_id(lab.lfdi)
    async with lab.server.store.read() as conn:
        ids = (await conn.execute(sa.select(ders.c.id).where(ders.c.site_id == site_id))).scalars().all()
        rows = (await conn.execute(sa.select(der_documents).where(der_documents.c.der_id.in_(ids)))).all()
    out: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for row in rows:
        out[row.der_id][row.kind] = from_xml(row.xml.encode(), DER_DOCUMENT_TYPES[row.kind])
    return out


def watts(power: Any) -> float:
    return power.value * 10.0**power.multiplier


async def gateway_with_three_ders(lab: Lab) -> tuple[Any, dict[Any, Any]]:
    """The gateway started and ready, once each of the three DERs holds its four documents."""
    gw = await lab.gateway()
    assert gw.client is not None
    await gw.client.wait_ready(10)

    async def all_documents() -> bool:
        docs = await der_docs(lab)
        return len(docs) == 3 and all(len(d) == 4 for d in docs.values())

    await wait_until(all_documents, 10, "four documents on each of three DERs")
    return gw, await der_docs(lab)


async def test_two_pv_and_a_battery_are_three_ders_with_own_documents_and_telemetry(lab3: Lab) -> None:
    lab = lab3
    gw, docs = await gateway_with_three_ders(lab)
    caps = {der_id: d["dercap"] for der_id, d in docs.items()}
    # Each DER carries one device's nameplate (not the site's sum): PV 5 kW, PV 3 kW, battery 5 kW + 13.5 kWh.
    assert sorted(watts(c.rtgMaxW) for c in caps.values()) == [3000, 5000, 5000]
    storage = [i for i, c in caps.items() if c.rtgMaxWh is not None]
    assert len(storage) == 1 and watts(caps[storage[0]].rtgMaxWh) == 13500
    assert docs[storage[0]]["ders"].stateOfChargeStatus is not None
    assert all(docs[i]["ders"].stateOfChargeStatus is None for i in caps if i not in storage)

    # Per-DER telemetry: one DER MirrorUsagePoint per device, each posting that device's own power.
    await wait_until(lambda: _count(der_power(lab), 3), 15, "power from three DER MirrorUsagePoints")
    power = await der_power(lab)
    assert len(power) == 3, power
    by_device = {name.rsplit("-", 1)[-1]: w for name, w in power.items()}  # "DER derlink-site-pv" -> pv
    assert set(by_device) == {"pv", "0002", "battery"}, power
    assert abs(by_device["0002"] - 2500) <= 100 and by_device["pv"] > 0, power  # pv2 makes a constant 2.5 kW
    assert by_device["battery"] < 0, power  # charging from the surplus (DER power < 0: charging)

    # The head-end shows the three DERs with their nameplates in W, and the three DERs' telemetry.
    url = f"http://127.0.0.1:{lab.server.headend_port}/api/sites/{lab.lfdi}/ders"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.get(url) as reply:
            assert reply.status == 200, await reply.text()
            view = await reply.json()
    assert sorted(d["documents"]["dercap"]["rtgMaxW"] for d in view["ders"]) == [3000, 5000, 5000]
    assert len(view["telemetry"]) == 3 and all(p["readings"] for p in view["telemetry"])

    # A site-wide DOE (the profile's only control target here) is met by the devices together.
    # The battery charges at its 5 kW maximum: ~2 kW goes out uncontrolled.
    await wait_until(lambda: lab.export_w() > 1000 + tolerance(1000), 5, "uncontrolled export")
    start = int(time.time())
    await lab.admin.create_control(
        "doe", lab.target, start=start, duration=300, base=build_control_base(export_limit_w=1000)
    )
    await wait_until(lambda: lab.export_w() <= 1000 + tolerance(1000), 10, "export within the DOE")
    assert gw.decision is not None and gw.decision.limits.export_w.value == 1000


async def der_power(lab: Lab) -> dict[str, float]:
    """DER MirrorUsagePoint description -> its latest active power (W), as stored."""
    async with lab.server.store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    mups.c.description, mups.c.role_flags, meter_readings.c.reading_type, readings.c.value
                )
                .join(meter_readings, meter_readings.c.mup_id == mups.c.id)
                .join(readings, readings.c.meter_reading_id == meter_readings.c.id)
                .order_by(readings.c.id)
            )
        ).all()
    out = {}
    for row in rows:
        rt = from_xml(row.reading_type.encode(), r.ReadingType)
        if int(row.role_flags, 16) & ROLE_DER and rt.uom == 38:  # W
            out[row.description] = row.value * 10.0 ** (rt.powerOfTenMultiplier or 0)
    return out


async def _count(probe: Any, n: int) -> bool:
    return len(await probe) == n


async def test_one_aggregated_der_by_default_then_three_once_the_dnsp_declares_them(lab1: Lab) -> None:
    """The default stays as before (and as CSIP-AUS MUL-01...03 expect): one DER with the site's totals.
    The DNSP then declares three; the gateway sees the longer DERList at its next DeviceCapability poll."""
    lab = lab1
    gw = await lab.gateway()
    assert gw.client is not None
    await gw.client.wait_ready(10)

    async def documents(n: int) -> bool:
        docs = await der_docs(lab)
        return len(docs) == n and all(len(d) == 4 for d in docs.values())

    await wait_until(lambda: documents(1), 10, "four documents on the one DER")
    (only,) = (await der_docs(lab)).values()
    assert watts(only["dercap"].rtgMaxW) == 13000  # 5 + 3 + 5 kW: the GFEMS total

    await lab.admin.set_der_count(lab.lfdi, 3, reason="2 PV inverters + battery")
    await wait_until(lambda: documents(3), 15, "four documents on each of three DERs")
    caps = [d["dercap"] for d in (await der_docs(lab)).values()]
    assert sorted(watts(c.rtgMaxW) for c in caps) == [3000, 5000, 5000]
    # The first DER's nameplate went from the site's total to its own device's: kept as history.
    url = f"http://127.0.0.1:{lab.server.headend_port}/api/sites/{lab.lfdi}/ders/history"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.get(url, params={"kind": "dercap"}) as reply:
            history = (await reply.json())["items"]
    first = min(i["der"] for i in history)
    changes = [i["changes"] for i in history if i["der"] == first]
    assert changes[0]["rtgMaxW"][0] == 13000 and changes[0]["rtgMaxW"][1] in (3000, 5000), changes


def device_row(lab: Lab, name: str) -> dict[str, Any]:
    return next(d for d in lab.sim.status()["devices"] if d["name"] == name)


async def test_a_control_for_one_der_reaches_only_its_device(lab3: Lab) -> None:
    """IEEE 2030.5-2018 §10.10: a DER's AssociatedDERProgramListLink lists "DERPrograms having the
    DERControl(s) for this DER". The DNSP gives PV #2's DER an opModMaxLimW of 40 % through the head-end; the
    gateway follows that DER's link and writes the limit to that inverter alone: the other inverter's
    written limit is unchanged, and the gateway answers the control (Response to its replyTo)."""
    lab = lab3
    gw, docs = await gateway_with_three_ders(lab)
    (pv2_der,) = [i for i, d in docs.items() if watts(d["dercap"].rtgMaxW) == 3000]  # pv2 is the 3 kW one
    await wait_until(lambda: device_row(lab, "pv2")["output_w"] > 2000, 10, "pv2 producing")
    pv_before = device_row(lab, "pv")["limit_pct"]
    assert device_row(lab, "pv2")["limit_pct"] == 100.0

    url = f"http://127.0.0.1:{lab.server.headend_port}/api/controls"
    body = {
        "program": "doe",
        "target": lab.target,
        "der": pv2_der,
        "duration": 300,
        "max_lim_w_percent": 4000,
    }
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {OPERATOR}"}) as http:
        async with http.post(url, json=body) as reply:
            assert reply.status == 201, await reply.text()
            mrid = (await reply.json())["mrid"]

    await wait_until(lambda: abs(device_row(lab, "pv2")["limit_pct"] - 40.0) < 1.0, 15, "pv2 limited to 40 %")
    await wait_until(lambda: device_row(lab, "pv2")["output_w"] <= 1200 + tolerance(1200), 5, "pv2 output")
    assert device_row(lab, "pv")["limit_pct"] == pv_before  # the other inverter: as it was
    assert gw.decision is not None and gw.decision.limits.max_w_pct.value is None  # not site-wide
    explained = [line for line in gw.decision.explain() if line.startswith("DER ")]
    # the explanation names the per-DER source: the DER, its device and the DERControl
    assert any(
        f"/der/{pv2_der}" in line and "PV2-0002" in line and "max_w_pct: 40%" in line and mrid in line
        for line in explained
    ), explained

    async def answered() -> bool:
        return bool(await lab.admin.responses_for_control(mrid))

    await wait_until(answered, 10, "a Response to the per-DER control")
