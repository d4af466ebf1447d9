"""DER function set: DERCapability honoured by the head-end (2030.5 clause 10.10 DERCapability
``modesSupported``; CSIP-AUS ``csipaus:doeModesSupported``), over real mutual TLS and the head-end API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp

from tests.test_server_harness import dercap, end_device

pytest_plugins = ["tests.test_server_harness"]


async def headend(server, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    token = (Path(server.config.data_dir) / "headend-token").read_text().strip()
    url = f"http://127.0.0.1:{server.headend_port}{path}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.request(method, url, json=body) as reply:
            return reply.status, await reply.json()


async def test_control_beyond_the_sites_capability_is_flagged(server, clients):
    """Issue 11 item 12: a control whose modes a site's DERCapability says it does not support is flagged
    to the operator at creation and in the site's view; a supported one is not."""
    a, b = clients["dev-a"], clients["dev-b"]
    for c in (a, b):
        assert (await c.post("/edev", end_device(c.lfdi))).status == 201
    # dev-a: export and import limits only (doeModesSupported 03), no opModConnect (modesSupported bit 2).
    assert (await a.put("/edev/1/der/1/dercap", dercap())).status == 204
    status, made = await headend(
        server,
        "POST",
        "/api/controls",
        {"program": "doe", "target": "all", "duration": 600, "generation_limit_w": 0, "connect": False},
    )
    assert status == 201
    assert made["unsupported"] == {
        "checked": 1,
        "sites": [{"lfdi": a.lfdi, "modes": ["opModGenLimW", "opModConnect"]}],
    }
    status, ok = await headend(
        server,
        "POST",
        "/api/controls",
        {"program": "default", "target": "all", "duration": 600, "export_limit_w": 0},
    )
    assert status == 201 and ok["unsupported"]["sites"] == []
    status, view = await headend(server, "GET", f"/api/sites/{a.lfdi}")
    assert status == 200
    assert [(u["mrid"], u["modes"]) for u in view["unsupported_controls"]] == [
        (made["mrid"], ["opModGenLimW", "opModConnect"])
    ]


async def test_a_site_with_several_ders_can_do_what_any_of_them_can(server, clients):
    """Issue 16 item 3: with one DER per device, a storage-only mode is flagged only if no DER of the site
    supports it (a PV inverter's DERCapability alone does not make the battery's modes unsupported)."""
    a = clients["dev-a"]
    assert (await a.post("/edev", end_device(a.lfdi))).status == 201
    await server.store.admin.set_der_count(a.lfdi, 2)
    pv = replace(dercap(), doeModesSupported="05")  # export + generation limits
    battery = replace(dercap(), doeModesSupported="0B", type=83)  # export, import and load limits
    assert (await a.put("/edev/1/der/1/dercap", pv)).status == 204
    assert (await a.put("/edev/1/der/2/dercap", battery)).status == 204
    status, made = await headend(
        server, "POST", "/api/controls",
        {"program": "doe", "target": "all", "duration": 600, "load_limit_w": 0, "import_limit_w": 0},
    )  # fmt: skip
    assert status == 201 and made["unsupported"] == {"checked": 1, "sites": []}, made
    body = {"program": "default", "target": "all", "duration": 600, "connect": False}
    status, made = await headend(server, "POST", "/api/controls", body)
    assert made["unsupported"] == {"checked": 1, "sites": [{"lfdi": a.lfdi, "modes": ["opModConnect"]}]}
    status, view = await headend(server, "GET", f"/api/sites/{a.lfdi}")
    flagged = [u["modes"] for u in view["unsupported_controls"]]
    assert flagged == [["opModConnect"]], view["unsupported_controls"]
