"""Black-start hold in the pure core (seed 000 GS09, L569 "generate at 0 or export at 0" during restart):
zero export from grid loss until a randomised moment after restore, spread over the window across a
fleet, ended early by a server connect/energize control, and persisted across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, settings_from_dict
from gateway.core import (
    BlackStartConfig,
    Control,
    ControlSettings,
    FallbackConfig,
    GatewayConfig,
    Program,
    SiteController,
    Source,
)
from gateway.state_store import load_state, save_state
from tests.test_gateway_runtime import site_dict
from tests.test_gateway_runtime_harness import Pki

pytest_plugins = ["tests.test_gateway_runtime_harness"]

HOLD = BlackStartConfig(delay_min_s=60, window_s=600)


def controller(device_id: str = "lfdi-1", config: BlackStartConfig = HOLD) -> SiteController:
    fallback = FallbackConfig(ControlSettings(export_limit_w=1500))
    sc = SiteController(
        GatewayConfig(device_id, ControlSettings(export_limit_w=5000), fallback, black_start=config)
    )
    sc.engine.set_program(Program("doe", 10, None, None))
    return sc


def test_hold_from_grid_loss_until_the_randomised_release() -> None:
    sc = controller()
    sc.server_contact(900)
    assert sc.decide(1000).limits.export_w.value == 5000
    assert sc.grid_observed(1000, False) and not sc.grid_observed(1001, False)
    d = sc.decide(1001)
    assert d.limits.export_w.value == 0 and d.limits.export_w.source == Source.INSTALLER
    assert "black-start hold: grid down since 1000" in d.limits.export_w.detail
    assert sc.grid_observed(1100, True)
    sc.server_contact(1100)  # the comms timeout (1400) is not the next wake-up
    until = sc.grid.hold_until
    assert until is not None and 1100 + 60 <= until <= 1100 + 660
    d = sc.decide(1101)
    assert d.limits.export_w.value == 0 and f"released at {until}" in d.limits.export_w.detail
    assert d.next_wake == until  # the shell wakes up for the release
    assert sc.decide(until - 1).limits.export_w.value == 0
    assert sc.decide(until).limits.export_w.value == 5000
    # a stricter DOE during the hold still wins; a looser hold limit never relaxes it
    sc2 = controller(config=BlackStartConfig(hold_export_limit_w=1500, delay_min_s=60, window_s=0))
    sc2.engine.upsert_control(Control("e1", "doe", 0, 0, 9999, ControlSettings(export_limit_w=800)), 0)
    sc2.grid_observed(10, False)
    assert sc2.decide(11).limits.export_w.value == 800


def test_a_fleet_spreads_its_release_over_the_window() -> None:
    offsets = []
    for i in range(1000):
        sc = controller(f"{i:040x}")
        sc.grid_observed(0, False)
        sc.grid_observed(500, True)
        offsets.append(sc.grid.hold_until - 500 - 60)
    assert min(offsets) >= 0 and max(offsets) <= 600
    deciles = [sum(1 for o in offsets if k * 60 <= o < (k + 1) * 60) for k in range(10)]
    assert all(60 <= n <= 140 for n in deciles), deciles  # ~100 each: uniform, not one step
    # the same device and outage: the same moment (a restart computes the same release)
    again = controller(f"{7:040x}")
    again.grid_observed(0, False)
    again.grid_observed(500, True)
    assert again.grid.hold_until - 560 == offsets[7]


def test_a_server_connect_control_ends_the_hold_for_good() -> None:
    sc = controller()
    sc.server_contact(200)
    sc.grid_observed(100, False)
    sc.grid_observed(200, True)
    until = sc.grid.hold_until
    assert sc.decide(201).limits.export_w.value == 0
    sc.engine.upsert_control(Control("go", "doe", 0, 210, 20, ControlSettings(connect=True)), 205)
    d = sc.decide(210)
    assert d.limits.export_w.value == 5000 and d.limits.connect.value is True
    assert sc.grid.hold_until == 210  # latched: the hold does not come back when the control ends
    sc.server_contact(235)
    assert sc.decide(235).limits.export_w.value == 5000 and 235 < until


def test_disabled_hold_and_the_hold_survives_a_restart(tmp_path: Path) -> None:
    off = controller(config=BlackStartConfig(enabled=False))
    off.server_contact(0)
    off.grid_observed(0, False)
    assert off.decide(1).limits.export_w.value == 5000
    sc = controller()
    sc.grid_observed(100, False)
    sc.grid_observed(200, True)
    d = sc.decide(201)
    path = tmp_path / "state.json"
    save_state(path, sc)
    loaded = load_state(path, sc.config)
    assert loaded.error is None and loaded.controller.grid == sc.grid
    again = loaded.controller.decide(202)
    assert again.limits.export_w.value == 0 and again.next_wake == sc.grid.hold_until == d.next_wake


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"window_s": -1}, "black_start.window_s"),
        ({"hold_export_limit_w": -5}, "black_start.hold_export_limit_w"),
        ({"grid_lost_below_v": 0}, "black_start.grid_lost_below_v"),
        ({"enabled": "yes"}, "black_start.enabled"),
        ({"delay": 3}, "black_start.delay"),
        ({"cold_start_after_s": 30}, "black_start.cold_start_after_s"),
    ],
)
def test_black_start_config_errors_name_the_field(
    tmp_path: Path, gw_pki: Pki, section: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_dict({**site_dict(gw_pki, tmp_path), "black_start": section}, tmp_path)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_cold_start_a_boot_long_after_the_last_heartbeat_holds_from_boot() -> None:
    """Seed 000 GS09 (L421): in a black system the gateway loses power with the site and never sees the
    grid go; a boot more than cold_start_after_s (120 s) after its last heartbeat is the grid's return."""
    sc = controller()
    assert not sc.booted(1000, None), "never commissioned (no heartbeat): nothing to hold"
    assert not sc.booted(1000, 1000 - 119), "a quick restart (an update, a crash) does not hold"
    assert sc.booted(5000, 1000)
    until = sc.grid.hold_until
    assert sc.grid.restored_at == 5000 and 5000 + 60 <= until <= 5000 + 660
    sc.server_contact(5000)
    d = sc.decide(5001)
    assert d.limits.export_w.value == 0 and d.limits.export_w.source == Source.INSTALLER
    assert "cold start at 5000 (no power since 1000)" in d.limits.export_w.detail
    sc.server_contact(until - 1)
    assert sc.decide(until - 1).limits.export_w.value == 0
    assert sc.decide(until).limits.export_w.value == 5000
    # a second boot during the hold keeps it; one after it with a fresh heartbeat does not hold again
    again = controller()
    again.booted(5000, 1000)
    assert not again.booted(5030, 5020) and again.grid.hold_until == until
    assert not again.booted(until + 10, until + 5)
    # the same outage seen by a fleet: releases spread over the window
    offsets = []
    for i in range(300):
        one = controller(f"{i:040x}")
        one.booted(5000, 1000)
        offsets.append(one.grid.hold_until - 5060)
    assert min(offsets) >= 0 and max(offsets) <= 600 and len(set(offsets)) > 200
    off = controller(config=BlackStartConfig(cold_start_after_s=None))
    assert not off.booted(5000, 1000)
