"""The storage-target lever (CSIP-AUS v1.3 storage extension, issue 16) on the head-end and ``derlink ctl``.

CSIP-AUS v1.3 adds ``csipaus:opModStorageTargetW`` to DERControlBase: "a target aggregate output, in Watts,
for one or more storage components within an EndDevice" (+ discharge, - charge), advertised by bit 0 of
``csipaus:vppModesSupported``. A control created through the head-end API with ``storage_target_w`` reaches
the site's DERControlList over 2030.5 as that element, valid against the official v1.3 schema.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from sep2 import resources as r
from server.headend.capabilities import unsupported_modes
from tests.official_xsd import official_errors
from tests.test_headend import OPERATOR_TOKEN, HeadEndWorld, _programs, world  # noqa: F401 (fixture)

pytest_plugins = ["tests.test_server_harness"]
DOE_PRIMACY = 10


async def _site_control(w: HeadEndWorld, site_id: int, mrid: str) -> tuple[r.DERControl, bytes]:
    client = w.clients["dev-a"]
    href = (await _programs(client, site_id))[DOE_PRIMACY]
    reply = await client.get(f"{href}/derc?l=50")
    assert reply.status == 200
    control = next(c for c in reply.doc(r.DERControlList).DERControl if c.mRID == mrid)
    return control, reply.body


async def test_storage_target_from_the_api_and_ctl_reaches_the_site_as_v13(
    world: HeadEndWorld,  # noqa: F811 (the fixture imported above)
) -> None:
    w = world
    lfdi = w.clients["dev-a"].lfdi
    site_id = (await w.op.ok("POST", "/api/sites", {"lfdi": lfdi, "nmi": "4103000001"}))["id"]

    body = {"program": "doe", "target": f"site:{lfdi}", "duration": 900, "storage_target_w": -2500}
    created = await w.op.ok("POST", "/api/controls", body)
    control, body = await _site_control(w, site_id, created["mrid"])
    assert control.DERControlBase.opModStorageTargetW.to_watts() == -2500  # charge at 2.5 kW
    assert b"opModStorageTargetW" in body and official_errors(body) == []  # valid CSIP-AUS v1.3
    detail = await w.op.ok("GET", f"/api/controls/{created['mrid']}")
    assert detail["limits"] == {"storage_target_w": -2500}

    argv = [sys.executable, "-m", "derlink", "ctl", "--url", w.base, "--token", OPERATOR_TOKEN, "--json",
            "controls", "create", "doe", f"site:{lfdi}", "--duration", "600",
            "--storage-target-w", "3000", "--reason", "evening peak"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    mrid = json.loads(out)["mrid"]
    control, body = await _site_control(w, site_id, mrid)
    assert control.DERControlBase.opModStorageTargetW.to_watts() == 3000
    assert official_errors(body) == []


def test_a_site_without_the_v13_mode_is_flagged() -> None:
    base = r.DERControlBase(opModStorageTargetW=r.ActivePower.from_watts(1000))
    cap = r.DERCapability(modesSupported="00000000", type=83, rtgMaxW=r.ActivePower.from_watts(5000))
    assert unsupported_modes(base, cap) == ["opModStorageTargetW"]
    v13 = dataclasses.replace(cap, vppModesSupported="01")  # VPPControlType bit 0: opModStorageTargetW
    assert unsupported_modes(base, v13) == []
