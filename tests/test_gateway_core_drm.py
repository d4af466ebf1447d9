"""AS/NZS 4755 demand response modes in the pure core: each DRM's effect on the effective limits, its
source named in the explanation, DRM 0 over a live utility DOE, and the closed loop's reading of the
consumption and generation caps (AS/NZS 4755.3 mode table; issue 16 "DRM")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.control_loop import BatteryState, MeterSample, PvState, SiteControlLoop, SiteLimits
from gateway.core import (
    Control,
    ControlSettings,
    FallbackConfig,
    GatewayConfig,
    Program,
    SiteController,
    SiteInputs,
    Source,
)
from gateway.core.drm import drm_layer
from gateway.core.hierarchy import Layer, combine
from gateway.state_store import inputs_from_dict, inputs_to_dict

VIA = "modbus 127.0.0.1:5030 unit 7"


def controller_with_doe() -> SiteController:
    """A site in contact with the server, a DOE (export 1500 W, import 4000 W) active from t=0."""
    sc = SiteController(
        GatewayConfig("lfdi-1", ControlSettings(export_limit_w=5000), FallbackConfig(ControlSettings(0.0)))
    )
    sc.engine.set_program(Program("doe", 10, None, None))
    doe = ControlSettings(export_limit_w=1500, import_limit_w=4000, fixed_w_pct=20)
    sc.engine.upsert_control(Control("e1", "doe", 0, 0, 3600, doe), now=0)
    sc.server_contact(10)
    return sc


def decide(sc: SiteController, *modes: int):
    return sc.decide(20, SiteInputs(drm_modes=frozenset(modes), drm_source=VIA)).limits


# mode -> (field of EffectiveLimits, expected value)
EXPECTED = {
    0: ("connect", False),
    1: ("consumption_pct", 0.0),
    2: ("consumption_pct", 50.0),
    3: ("consumption_pct", 75.0),
    5: ("generation_w", 0.0),
    6: ("max_w_pct", 50.0),
    7: ("max_w_pct", 75.0),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_each_restricting_mode_sets_its_limit_from_the_drm_source(mode: int) -> None:
    sc = controller_with_doe()
    limits = decide(sc, mode)
    name, value = EXPECTED[mode]
    item = getattr(limits, name)
    assert item.value == value and item.source == Source.LOCAL_EMERGENCY
    assert item.detail.startswith(f"DRM {mode} (") and VIA in item.detail
    # the DOE's limits are untouched: a DRM never relaxes the utility's envelope
    assert limits.export_w.value == 1500 and limits.export_w.source == Source.UTILITY
    assert limits.import_w.value == 4000
    assert any(line.startswith(f"{name}:") and f"DRM {mode}" in line for line in sc.last_decision.explain())


def test_drm0_beats_a_live_utility_doe_and_lifting_it_restores_the_doe() -> None:
    sc = controller_with_doe()
    before = decide(sc)
    assert before.connect.value is None and before.fixed_w_pct.value == 20
    limits = decide(sc, 0)
    assert limits.connect.value is False and limits.connect.source == Source.LOCAL_EMERGENCY
    # the DOE's setpoint is forced to 0 by the disconnect, credited to DRM 0
    assert limits.fixed_w_pct.value == 0 and limits.fixed_w_pct.clipped_by == Source.LOCAL_EMERGENCY
    assert "DRM 0" in limits.fixed_w_pct.clip_detail
    assert SiteLimits.from_effective(limits, 5000).connect is False
    assert decide(sc).fixed_w_pct.value == 20  # lifted: the DOE again


def test_increase_modes_are_setpoints_clipped_by_the_other_modes_and_the_envelope() -> None:
    sc = controller_with_doe()
    charge = decide(sc, 4).fixed_w_pct
    # DRM 4 outranks the DOE's own setpoint (20 %): charge at 100 % of rating
    assert charge.value == -100 and charge.source == Source.LOCAL_EMERGENCY and "DRM 4" in charge.detail
    assert decide(sc, 2, 4).fixed_w_pct.value == -50  # DRM 2 caps the increase
    assert decide(sc, 1, 4).fixed_w_pct.value == 0  # "do not consume" wins over "increase"
    assert decide(sc, 8).fixed_w_pct.value == 100
    assert decide(sc, 6, 8).fixed_w_pct.value == 50
    assert decide(sc, 5, 8).fixed_w_pct.value == 0
    # both increases at once: no setpoint from the DRM layer, the DOE's setpoint is used
    both = decide(sc, 4, 8).fixed_w_pct
    assert both.value == 20 and both.source == Source.UTILITY
    # a utility max_lim_w_pct below the DRM 8 request clips it
    layers = [drm_layer({8}, VIA), *sc.layers(20, sc.engine.evaluate(20))[0]]
    tight = combine([*layers, Layer(Source.UTILITY, ControlSettings(max_lim_w_pct=30), "DOE 30 %")])
    assert tight.fixed_w_pct.value == 30 and tight.fixed_w_pct.clipped_by == Source.UTILITY


def test_bad_modes_are_refused_naming_the_field_and_change_nothing() -> None:
    sc = controller_with_doe()
    decide(sc, 5)
    for bad in (9, -1, True):
        with pytest.raises(ValueError, match="drm_modes"):
            sc.decide(30, SiteInputs(drm_modes=frozenset({bad})))
    assert sc.inputs.drm_modes == {5}


def test_drm_inputs_survive_the_state_file() -> None:
    inputs = SiteInputs(drm_modes=frozenset({0, 6}), drm_source=VIA)
    back = inputs_from_dict(inputs_to_dict(inputs))
    assert back.drm_modes == {0, 6} and back.drm_source == VIA
    old = inputs_to_dict(SiteInputs())
    del old["drm_modes"], old["drm_source"]  # a state file written before DRM inputs existed
    assert inputs_from_dict(old).drm_modes == frozenset()


def loop_step(limits: SiteLimits, soc: float = 50.0) -> tuple[float, float]:
    """(PV limit W, battery W) after one step: 5 kW PV available, 500 W load, 5 kW battery."""
    loop = SiteControlLoop()
    pv = PvState("pv", 5000.0, 4000.0)
    bat = BatteryState("battery", 5000.0, 5000.0, 0.0, soc_pct=soc)
    sp = loop.step(100.0, limits, MeterSample(-3500.0, 100.0), [pv], [bat])
    return sp.pv_limit_w["pv"], sp.battery_w["battery"]


def test_closed_loop_reads_consumption_and_generation_caps_per_device() -> None:
    _, bat = loop_step(SiteLimits())
    assert bat <= -3000  # self-consumption soaks the surplus
    _, bat = loop_step(SiteLimits(consumption_pct=50))
    assert bat == pytest.approx(-2500)  # DRM 2: at most 50 % of the battery's 5 kW rating
    _, bat = loop_step(SiteLimits(consumption_pct=0))
    assert bat == 0  # DRM 1
    _, bat = loop_step(SiteLimits(battery_target_w=5000, max_w_pct=50))
    assert bat == pytest.approx(2500)  # DRM 6 + 8: discharge at most 50 % of rating
    pv, bat = loop_step(SiteLimits(generation_w=0, battery_target_w=5000))
    assert pv == 0 and bat <= 0  # DRM 5: nothing generates


@given(st.sets(st.integers(0, 8)), st.sets(st.integers(0, 8)))
def test_more_modes_never_relax_a_limit(base: set[int], extra: set[int]) -> None:
    """Asserting more modes can only tighten every limit (a DRM layer is an envelope, not a permit)."""
    few = combine([drm_layer(base, VIA) or Layer(Source.LOCAL_EMERGENCY)])
    many = combine([drm_layer(base | extra, VIA) or Layer(Source.LOCAL_EMERGENCY)])
    for name in ("generation_w", "max_w_pct", "consumption_pct"):
        a, b = getattr(few, name).value, getattr(many, name).value
        assert a is None or (b is not None and b <= a)
    assert few.connect.value is not False or many.connect.value is False

