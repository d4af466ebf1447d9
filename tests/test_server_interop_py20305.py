"""Interop with a 2030.5 client nobody here wrote: py20305 (Project Satori) against our server.

py20305 registers and discovers over mutual TLS with a certificate from our PKI, receives a
DefaultDERControl and a scheduled DOE DERControl created through the store/admin API, applies them with its
no-hardware ``print_demo`` connector, and POSTs Responses and telemetry which our server stores.

py20305 speaks IEEE 2030.5-2023 by default (``schemaVer`` attributes); CSIP-AUS v1.2 is 2018-based, so it
runs with ``server_2018_compat``. Its DERCapability omits ``csipaus:doeModesSupported``, which the
CSIP-AUS schema requires (minOccurs=1), so that one PUT is rightly refused with 400.
"""

from __future__ import annotations

import asyncio
import json
import sys

from certs.pki import load_pki
from server.store import build_control_base

pytest_plugins = ["tests.test_server_harness"]


async def _wait_for(predicate, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.5)
    return False


async def test_py20305_registers_discovers_applies_and_reports(server, pki, tmp_path):
    ident = pki.identities["dev-c"]
    admin = server.store.admin
    await admin.register_site(ident.lfdi, pin=246801, nmi="4102001234")
    await admin.set_rate("post", 2)
    default_mrid = await admin.set_default_control(
        "default", "all", base=build_control_base(export_limit_w=5000, generation_limit_w=6000)
    )
    doe_mrid = await admin.create_control(
        "doe",
        f"site:{ident.lfdi}",
        start=server.store.clock() + 3,
        duration=600,
        base=build_control_base(export_limit_w=1500),
    )
    config = {
        "server": {"url": server.base_url, "server_2018_compat": True},
        "tls": {
            "client_cert": str(ident.chain_path),
            "client_key": str(ident.key_path),
            "ca_cert": str(load_pki(pki.directory).ca_chain),
        },
        "devices": [{"type": "print_demo", "lfdi": ident.lfdi, "pin": 246801}],
        "registration_pins": {ident.lfdi: 246801},
        "subscription": {"enabled": False},
        "telemetry": {"post_rate_seconds": 2},
        "history": {"enabled": False},
        "logging": {"level": "DEBUG"},
    }
    (tmp_path / "py20305.json").write_text(json.dumps(config))
    log_path = tmp_path / "py20305.log"
    with log_path.open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "py20305",
            "-c",
            str(tmp_path / "py20305.json"),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:

            async def reported() -> bool:
                statuses = {x["status"] for x in await admin.responses_for_control(doe_mrid)}
                readings = await admin.site_readings(ident.lfdi)
                documents = await admin.site_der_documents(ident.lfdi)
                return {1, 2} <= statuses and len(readings) > 0 and {"derg", "ders", "dera"} <= set(documents)

            assert await _wait_for(reported, 40), log_path.read_text()[-4000:]
        finally:
            proc.terminate()
            await proc.wait()
    log = log_path.read_text()
    # It applied the DOE through its connector, and it holds the default for when no event is active.
    assert "update_exp_lim({'exp_lim_mode_enable': 1, 'exp_lim_w': 1500})" in log
    assert f"mrid={default_mrid.lower()}" in log.lower()
    readings = await admin.site_readings(ident.lfdi)
    assert {x["reading_type"].uom for x in readings} >= {38}  # watts
    documents = await admin.site_der_documents(ident.lfdi)
    assert documents["derg"].setMaxW.to_watts() > 0
