"""Each failure ends with a clear message naming what to do next AND a resumable state: re-running (with the
problem fixed) continues from the failed step, not from the start."""

from __future__ import annotations

from typing import Any

from certs.pki import issue_device_certificate
from gateway.commissioning import CommissioningState, Options, run_commissioning
from simulators.site import SimulatedSite
from tests.test_commissioning_harness import DNSP_PIN, Bench, RecordingUI, sim_config

pytest_plugins = ["tests.test_commissioning_harness"]


def attempts(opts: Options) -> dict[str, int]:
    state = CommissioningState.load(opts.state_path)
    return {name: int(rec.get("attempts", 0)) for name, rec in state.data["steps"].items()}


async def run(opts: Options) -> tuple[Any, CommissioningState, RecordingUI]:
    ui = RecordingUI()
    outcome = await run_commissioning(opts, ui)
    return outcome, CommissioningState.load(opts.state_path), ui


async def test_wrong_pin_then_corrected_pin_continues_at_register(bench: Bench) -> None:
    ident = issue_device_certificate(bench.pki.directory, "gw-pin")
    await bench.register_site(ident.lfdi, pin=DNSP_PIN)
    opts = bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, pin=111115)
    outcome, state, _ = await run(opts)
    assert not outcome.ok and outcome.failed_step == "register"
    assert "PIN wrong" in outcome.message and "246802" in outcome.message and "111115" in outcome.message
    assert "--pin" in outcome.next_action and "ask the DNSP" in outcome.next_action
    assert state.status("register") == "failed" and state.status("site") == "done"
    assert state.step("register")["error"]["server_pin"] == DNSP_PIN
    assert await bench.settled_pv_limit_pct() == 30.0  # the static limits stay applied

    before = attempts(opts)
    outcome, state, ui = await run(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, pin=None)
    )
    assert not outcome.ok  # nothing changed: the same step fails the same way, nothing earlier is redone
    assert (
        attempts(opts)["discover"] == before["discover"]
        and attempts(opts)["register"] == before["register"] + 1
    )

    # The installer had the wrong PIN: rerun with the DNSP's one; identity is redone, not discovery.
    outcome, state, ui = await run(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, pin=DNSP_PIN)
    )
    assert outcome.ok, (outcome.message, ui.text)
    after = attempts(opts)
    assert after["discover"] == before["discover"] and after["identity"] == before["identity"] + 1
    assert state.get("registration")["pin_verified"] is True


async def test_certificate_from_a_foreign_ca_is_refused_then_a_dnsp_certificate_continues(
    bench: Bench, foreign_pki: Any
) -> None:
    foreign = issue_device_certificate(foreign_pki.directory, "gw-foreign")
    await bench.register_site(foreign.lfdi)
    opts = bench.options(cert=foreign.chain_path, key=foreign.key_path, sign_with_ca=None)
    outcome, state, _ = await run(opts)
    assert not outcome.ok and outcome.failed_step == "register"
    assert "did not accept this gateway's certificate" in outcome.message
    assert "Some Other CA" in outcome.message  # names who issued the refused certificate
    assert "DNSP's CA" in outcome.next_action and "--cert" in outcome.next_action
    assert state.status("identity") == "done" and state.status("register") == "failed"
    before = attempts(opts)

    good = issue_device_certificate(bench.pki.directory, "gw-good")
    await bench.register_site(good.lfdi)
    outcome, state, ui = await run(bench.options(cert=good.chain_path, key=good.key_path, sign_with_ca=None))
    assert outcome.ok, (outcome.message, ui.text)
    after = attempts(opts)
    assert after["discover"] == before["discover"] and after["identity"] == before["identity"] + 1
    assert state.get("identity")["lfdi"] == good.lfdi


async def test_unknown_device_then_registered_out_of_band_continues(bench: Bench) -> None:
    """Key generated on the gateway, CSR signed by the DNSP CA; the DNSP registers the LFDI after the call."""
    opts = bench.options()
    outcome, state, ui = await run(opts)
    assert not outcome.ok and outcome.failed_step == "register"
    identity = state.get("identity")
    assert "does not know this gateway" in outcome.message and identity["sfdi_grouped"] in outcome.message
    assert f"{DNSP_PIN:06d}" in outcome.next_action
    assert identity["csr_path"] and (opts.identity_dir / "gateway.key").stat().st_mode & 0o077 == 0
    assert identity["lfdi_grouped"] in ui.text and identity["sfdi_grouped"] in ui.text
    await bench.register_site(identity["lfdi"])
    outcome, state, ui = await run(bench.options())
    assert outcome.ok, (outcome.message, ui.text)
    assert state.get("identity")["lfdi"] == identity["lfdi"]  # same key, same certificate


async def test_missing_meter_then_meter_found_continues(bench: Bench) -> None:
    no_meter = SimulatedSite(sim_config(meter=False))
    await no_meter.start()
    bench.extra_sims.append(no_meter)
    opts = bench.options(scan=bench.scan(no_meter))
    outcome, state, _ = await run(opts)
    assert not outcome.ok and outcome.failed_step == "discover"
    assert "no SunSpec meter" in outcome.message
    assert "--scan" in outcome.next_action and "unit ID" in outcome.next_action
    assert state.status("discover") == "failed" and state.status("identity") == "pending"
    # the meter is found once it answers on the network (here: the bench site's port)
    ident = issue_device_certificate(bench.pki.directory, "gw-meter")
    await bench.register_site(ident.lfdi)
    outcome, state, ui = await run(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None)
    )
    assert outcome.ok, (outcome.message, ui.text)
    assert {d["role"] for d in state.get("devices")} == {"pv", "battery", "meter"}


async def test_nothing_answers_on_the_port(bench: Bench) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome, _, _ = await run(bench.options(scan=[f"127.0.0.1:{port}"]))
    assert not outcome.ok and outcome.failed_step == "discover"
    assert f"no connection at all on 127.0.0.1:{port}" in outcome.message
    assert "Modbus TCP" in outcome.next_action


async def test_malformed_nmi_leaves_static_limits_applied_then_continues(bench: Bench) -> None:
    ident = issue_device_certificate(bench.pki.directory, "gw-nmi")
    await bench.register_site(ident.lfdi)
    opts = bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, nmi="41020000O7")
    assert bench.pv_limit_pct() in (None, 100.0)  # nothing limits the inverter before commissioning
    outcome, state, _ = await run(opts)
    assert not outcome.ok and outcome.failed_step == "site"
    assert "NMI malformed" in outcome.message and "'O'" in outcome.message
    assert "--nmi" in outcome.next_action
    assert state.status("site") == "failed"
    # safety: the static limits were applied before the NMI was checked, and stay on the devices
    assert state.get("static_limits_applied")["limit_pct"] == 30.0
    assert await bench.settled_pv_limit_pct() == 30.0
    # a wrong checksum digit is caught too
    outcome, _, _ = await run(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, nmi="41020000771")
    )
    assert not outcome.ok and "checksum digit" in outcome.message
    before = attempts(opts)
    outcome, state, ui = await run(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, nmi="4102000077")
    )
    assert outcome.ok, (outcome.message, ui.text)
    assert attempts(opts)["identity"] == before["identity"] and attempts(opts)["site"] == before["site"] + 1


async def test_stuck_inverter_fails_verification_then_continues_when_fixed(bench: Bench) -> None:
    ident = issue_device_certificate(bench.pki.directory, "gw-stuck")
    await bench.register_site(ident.lfdi)
    bench.sim.set_fault("pv", "stuck")
    opts = bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None, verify_window_s=2.0)
    outcome, state, _ = await run(opts)
    assert not outcome.ok and outcome.failed_step == "verify"
    assert "pv ignores writes" in outcome.message and "stayed at" in outcome.message
    assert "remote" in outcome.next_action
    measured = state.step("verify")["error"]["measured"]
    assert measured["before"]["pv_w"] > 3500 and measured["after"]["pv_w"] > 3500
    assert state.status("register") == "done"
    before = attempts(opts)
    bench.sim.set_fault("pv", None)
    outcome, state, ui = await run(
        bench.options(cert=ident.chain_path, key=ident.key_path, sign_with_ca=None)
    )
    assert outcome.ok, (outcome.message, ui.text)
    assert (
        attempts(opts)["register"] == before["register"] and attempts(opts)["verify"] == before["verify"] + 1
    )
