"""The gateway core and loop with a DER's own programs (IEEE 2030.5-2018 §10.10 DER resource,
AssociatedDERProgramListLink: "DERPrograms having the DERControl(s) for this DER"), pure: a per-DER control
bounds its device alone inside the site's limits, is answered like the site's, is named in the explanation
and survives a restart of the gateway (state file)."""

from __future__ import annotations

from gateway.control_loop import (
    BatteryState,
    DeviceLimits,
    MeterSample,
    PvState,
    SiteControlLoop,
    SiteLimits,
)
from gateway.core.events import Control, ControlSettings, Program, ResponseStatus
from gateway.core.fallback import FallbackConfig
from gateway.core.site_controller import GatewayConfig, SiteController
from gateway.state_store import controller_from_dict, controller_to_dict

CONFIG = GatewayConfig(
    device_id="gw-1",
    installer_limits=ControlSettings(export_limit_w=10000),
    fallback=FallbackConfig(ControlSettings(export_limit_w=1500)),
)


def test_a_der_control_sets_that_device_alone_and_is_answered_named_and_kept() -> None:
    controller = SiteController(CONFIG)
    controller.server_contact(100)
    engine = controller.der_engine("pv2", "/edev/1/der/3 (pv2)")
    engine.sync_program(Program("DERP", 10), [Control(
        mrid="C1", program_mrid="DERP", creation_time=90, start=100, duration=600,
        settings=ControlSettings(max_lim_w_pct=40), response_required=3, reply_to="/rsps/1/rsp",
    )], 100)  # fmt: skip
    decision = controller.decide(110)
    assert decision.limits.max_w_pct.value is None  # the site's envelope is not narrowed
    own = decision.der_limits["pv2"]
    assert own.max_w_pct.value == 40
    assert any(
        line.startswith("DER pv2: max_w_pct: 40%") and "/edev/1/der/3" in line and "C1" in line
        for line in decision.explain()
    ), decision.explain()
    # Received and started (responseRequired 03), from the DER's engine, acknowledged there.
    pending = controller.pending_responses()
    assert [(r.subject, r.status) for r in pending] == [
        ("C1", ResponseStatus.RECEIVED),
        ("C1", ResponseStatus.STARTED),
    ]
    controller.acknowledge(pending[0])
    assert [r.status for r in controller.pending_responses()] == [ResponseStatus.STARTED]
    # A restart keeps the DER's schedule and its unanswered Response.
    restored = controller_from_dict(controller_to_dict(controller), CONFIG).controller
    assert [r.status for r in restored.pending_responses()] == [ResponseStatus.STARTED]
    assert restored.decide(120).der_limits["pv2"].max_w_pct.value == 40
    assert controller.decide(800).der_limits == {}  # ended: nothing of its own any more
    # A site without per-DER programs saves the same document as before (no der_engines key).
    assert "der_engines" not in controller_to_dict(SiteController(CONFIG))


def test_the_loop_caps_only_the_device_whose_der_is_limited() -> None:
    pv1, pv2 = PvState("pv", 5000, 5000), PvState("pv2", 3000, 2500)
    bat = BatteryState("bat", 5000, 5000, output_w=0, soc_pct=50)
    meter = MeterSample(500 - 7500, 0.0)
    free = SiteControlLoop().step(0.0, SiteLimits(export_w=10000), meter, [pv1, pv2], [bat])
    limits = SiteLimits(export_w=10000, devices=(("pv2", DeviceLimits(max_w_pct=40)),))
    sp = SiteControlLoop().step(0.0, limits, meter, [pv1, pv2], [bat])
    assert sp.pv_limit_pct["pv2"] == 40 and sp.pv_limit_pct["pv"] == free.pv_limit_pct["pv"] == 100
    # opModConnect false on the battery's DER: it neither charges nor discharges; PV is untouched.
    off = SiteLimits(export_w=10000, devices=(("bat", DeviceLimits(connect=False)),))
    sp = SiteControlLoop().step(0.0, off, meter, [pv1, pv2], [bat])
    assert sp.battery_w["bat"] == 0 and free.battery_w["bat"] < 0
    assert sp.pv_limit_pct == free.pv_limit_pct
    # The site's limits still bound the site: an export limit curtails both inverters together.
    tight = SiteLimits(export_w=1000, devices=(("pv2", DeviceLimits(max_w=500)),))
    sp = SiteControlLoop().step(0.0, tight, MeterSample(500 - 7500, 0.0), [pv1, pv2], [bat])
    assert sp.pv_limit_w["pv2"] <= 500
    assert sp.pv_limit_w["pv"] + sp.pv_limit_w["pv2"] <= 500 + 1000 + 5000  # load + export + charging
