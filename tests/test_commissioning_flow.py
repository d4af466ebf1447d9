"""The whole commissioning flow, non-interactively, against our server (real mutual TLS, in-process on a
free port, site pre-registered out-of-band) and a simulated PV + battery + meter site (real Modbus TCP)."""

from __future__ import annotations

import json
import tomllib

from certs.pki import issue_device_certificate
from gateway.commissioning import CommissioningState, run_commissioning
from gateway.config import load_settings
from server.store import build_control_base
from tests.test_commissioning_harness import DNSP_PIN, NMI, Bench, RecordingUI

pytest_plugins = ["tests.test_commissioning_harness"]


async def test_whole_flow_ends_with_a_report_with_measured_values(bench: Bench) -> None:
    ident = issue_device_certificate(bench.pki.directory, "gw-full")
    await bench.register_site(ident.lfdi)
    # The DNSP issues a test control for the site; commissioning must see it acknowledged.
    mrid = await bench.admin.create_control(
        "doe", f"site:{ident.lfdi}", duration=600, base=build_control_base(export_limit_w=2500)
    )
    ui = RecordingUI()
    opts = bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None)
    outcome = await run_commissioning(opts, ui)
    assert outcome.ok, (outcome.message, outcome.next_action, ui.text)

    state = CommissioningState.load(opts.state_path)
    assert all(state.status(s) == "done" for s in state.data["steps"])
    report = json.loads((opts.work_dir / "report.json").read_text())
    # devices with nameplate, confirmed roles
    roles = {d["role"]: d for d in report["devices"]}
    assert set(roles) == {"pv", "battery", "meter"}
    assert roles["pv"]["rated_w"] == 5000 and roles["pv"]["serial"]
    # identity shown as the DNSP needs it
    assert report["identity"]["lfdi"] == ident.lfdi and report["identity"]["pin"] == DNSP_PIN
    assert report["identity"]["sfdi"] % 10 == report["identity"]["sfdi_check_digit"]
    assert "-" in report["identity"]["sfdi_grouped"]
    # site record on the server
    assert report["site"]["nmi"] == NMI
    assert report["registration"]["registered"] == "out-of-band"
    assert report["registration"]["connection_point_on_server"] == NMI
    assert report["registration"]["der_on_server"]["rtg_max_w"] == 10000  # PV 5 kW + battery 5 kW
    # verification with measured values
    ver = report["verification"]
    assert ver["passed"] is True
    local = ver["local"]
    assert local["before"]["pv_w"] > 3500  # 4 kW available, battery held at 0
    assert (
        local["inverter"]["obeyed"] and local["inverter"]["pv_after_w"] <= local["inverter"]["limit_w"] + 150
    )
    assert local["meter"]["saw_effect"]
    assert (
        abs(local["meter"]["meter_change_w"] + local["meter"]["pv_change_w"]) <= local["meter"]["tolerance_w"]
    )
    assert local["meter"]["meter_change_w"] > 1000  # half of ~4 kW less export
    telemetry = ver["server"]["telemetry"]
    assert telemetry["readings"] and all(
        r["last_update"] >= ver["server"]["started_at"] for r in telemetry["readings"]
    )
    control = ver["server"]["test_control"]
    assert control["issued"] and control["acknowledged"]
    assert {r["control"].upper() for r in control["responses"]} == {mrid.upper()}
    # the server agrees: responses, readings, NMI
    assert await bench.admin.responses_for_control(mrid)
    readings = await bench.admin.site_readings(ident.lfdi)
    assert readings
    html = (opts.work_dir / "report.html").read_text()
    assert NMI in html and ident.lfdi[:4] in html and "PASSED" in html
    assert f"{local['inverter']['pv_before_w']:g}" in html
    # site.toml loads with the daemon's reader and describes the commissioned site
    settings = load_settings(opts.site_toml_path)
    assert settings.lfdi == ident.lfdi and settings.server.pin == DNSP_PIN
    assert settings.installer_limits.export_limit_w == 3000
    assert settings.fallback.comms_loss_limits.export_limit_w == 1500
    assert sorted(d.role for d in settings.devices) == ["battery", "meter", "pv"]
    data = tomllib.loads(opts.site_toml_path.read_text())
    assert data["server"]["dcap_url"] == bench.dcap_url
    # the site is left with the static cap applied: 3000 W over 10 kW of inverters = 30 %
    assert report["static_limits_applied"]["limit_pct"] == 30.0
    assert await bench.settled_pv_limit_pct() == 30.0
    # rerunning does nothing more
    again = await run_commissioning(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None), RecordingUI()
    )
    assert again.ok
