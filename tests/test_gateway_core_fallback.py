"""Fallback regimes through a site controller, and the durable state store."""

from __future__ import annotations

import json

import pytest

from gateway.core import (
    AggregatorInput,
    Control,
    ControlSettings,
    CustomerPrefs,
    FallbackConfig,
    GatewayConfig,
    Program,
    Regime,
    ResponseStatus,
    SiteController,
    SiteInputs,
    Source,
)
from gateway.state_store import load_state, save_state

TIMEOUT, PERSIST = 300, 3600


def config(**kw) -> GatewayConfig:
    return GatewayConfig(
        device_id=kw.get("device_id", "lfdi-1"),
        installer_limits=ControlSettings(export_limit_w=5000),
        fallback=FallbackConfig(ControlSettings(export_limit_w=1500), TIMEOUT, PERSIST),
    )


def site(default: float | None = 3000) -> SiteController:
    sc = SiteController(config())
    dflt = ControlSettings(export_limit_w=default) if default is not None else None
    sc.engine.set_program(Program("doe", 10, dflt, "dflt-1"))
    return sc


def doe(mrid: str, start: int, duration: int, w: float, **kw) -> Control:
    return Control(
        mrid, "doe", kw.pop("creation_time", 0), start, duration, ControlSettings(export_limit_w=w), **kw
    )


def test_full_chain_held_schedule_then_default_then_comms_loss_limits_then_recovery():
    sc = site()
    sc.engine.upsert_control(doe("e1", 1000, 2000, 800, response_required=3, reply_to="/r"), now=0)
    sc.server_contact(900)
    d = sc.decide(900)
    assert d.regime == Regime.NORMAL and d.limits.export_w.value == 3000
    assert d.next_wake == 1000  # the event start comes before the comms timeout (1200)
    d = sc.decide(1200 + 1)  # link lost at 1200, event active
    assert d.regime == Regime.HELD_SCHEDULE and d.link_lost and d.loss_declared_at == 1200
    assert d.limits.export_w.value == 800 and "DERControl e1" in d.limits.export_w.detail
    assert d.next_wake == 3000  # event end, before the persistent-loss timer (4800)
    d = sc.decide(3000)
    assert d.regime == Regime.DEFAULT and d.limits.export_w.value == 3000
    assert "DefaultDERControl dflt-1" in d.limits.export_w.detail
    assert [r.status for r in d.responses] == [ResponseStatus.COMPLETED]
    d = sc.decide(1200 + PERSIST)
    assert d.regime == Regime.COMMS_LOSS_LIMITS and d.limits.export_w.value == 1500
    assert d.limits.export_w.source == Source.UTILITY
    assert "installer comms-loss limits" in d.limits.export_w.detail
    assert any("persistent after 3600 s" in line for line in d.explain())
    sc.server_contact(9000)  # comms back: automatic recovery
    d = sc.decide(9000)
    assert d.regime == Regime.NORMAL and d.limits.export_w.value == 3000


def test_held_event_still_running_after_persistent_period_is_tightened_never_relaxed():
    sc = site()
    sc.engine.upsert_control(doe("zero", 0, 100_000, 0), now=0)
    sc.server_contact(0)
    d = sc.decide(TIMEOUT + PERSIST + 10)
    assert d.regime == Regime.COMMS_LOSS_LIMITS
    assert d.limits.export_w.value == 0 and "DERControl zero" in d.limits.export_w.detail
    sc2 = site()
    sc2.engine.upsert_control(doe("loose", 0, 100_000, 4000), now=0)
    sc2.server_contact(0)
    assert sc2.decide(TIMEOUT + PERSIST + 10).limits.export_w.value == 1500


def test_no_default_ever_received_goes_straight_to_comms_loss_limits():
    sc = site(default=None)
    sc.engine.upsert_control(doe("e1", 1000, 1000, 800), now=0)
    sc.server_contact(0)
    assert sc.decide(TIMEOUT + 1).regime == Regime.COMMS_LOSS_LIMITS  # nothing held to execute
    d = sc.decide(1500)
    assert d.regime == Regime.HELD_SCHEDULE and d.limits.export_w.value == 800  # held schedule first
    d = sc.decide(2000)
    assert d.regime == Regime.COMMS_LOSS_LIMITS and d.limits.export_w.value == 1500


def test_fresh_gateway_never_in_contact_is_under_comms_loss_limits():
    d = SiteController(config()).decide(12345)
    assert d.regime == Regime.COMMS_LOSS_LIMITS and d.limits.export_w.value == 1500
    assert "never in contact" in d.limits.export_w.detail


def test_normal_with_nothing_from_server_uses_installer_limit():
    sc = site(default=None)
    sc.server_contact(0)
    d = sc.decide(10)
    assert d.regime == Regime.NORMAL
    assert (d.limits.export_w.value, d.limits.export_w.source) == (5000, Source.INSTALLER)


def test_aggregator_expiry_wakes_the_shell_and_is_then_ignored():
    sc = site()
    sc.server_contact(0)
    inputs = SiteInputs(aggregator=AggregatorInput(export_target_w=4000, expires_at=60))
    d = sc.decide(10, inputs)
    assert d.limits.export_target_w.value == 3000 and d.next_wake == 60
    assert sc.decide(60).limits.export_target_w is None


def test_bad_inputs_are_rejected_naming_the_field_and_change_nothing():
    sc = site()
    good = SiteInputs(customer=CustomerPrefs(battery_reserve_pct=20))
    sc.decide(0, good)
    with pytest.raises(ValueError, match=r"customer.battery_reserve_pct"):
        sc.decide(1, SiteInputs(customer=CustomerPrefs(battery_reserve_pct=120)))
    with pytest.raises(ValueError, match=r"emergency.export_limit_w must be >= 0"):
        sc.decide(1, SiteInputs(emergency=ControlSettings(export_limit_w=-1)))
    assert sc.inputs == good


def test_config_validation_names_fields():
    with pytest.raises(ValueError, match=r"installer_limits\.export_limit_w is required"):
        GatewayConfig("d", ControlSettings(), FallbackConfig(ControlSettings(export_limit_w=0)))
    with pytest.raises(ValueError, match="comms_loss_limits must set at least one limit"):
        FallbackConfig(ControlSettings(ramp_time_s=5))
    with pytest.raises(ValueError, match="comms_timeout_s"):
        FallbackConfig(ControlSettings(export_limit_w=0), comms_timeout_s=0)


# ---- persistence -------------------------------------------------------------------------------------


def outage_site() -> SiteController:
    sc = site()
    sc.engine.upsert_control(doe("e1", 1000, 2000, 800, response_required=3, reply_to="/r"), now=0)
    sc.server_contact(500)
    sc.decide(
        1500,
        SiteInputs(
            emergency=None,
            aggregator=AggregatorInput(
                ControlSettings(target_w=2000), export_target_w=1000, expires_at=10**9
            ),
            customer=CustomerPrefs(battery_reserve_pct=25),
            soc_pct=60,
        ),
    )
    return sc


def test_restart_mid_outage_reapplies_the_same_limits_before_any_network_activity(tmp_path):
    path = tmp_path / "state.json"
    sc = outage_site()
    before = sc.decide(1600)
    assert before.regime == Regime.HELD_SCHEDULE
    save_state(path, sc)
    loaded = load_state(path, config())
    assert loaded.error is None and loaded.saved_at == 1600
    assert loaded.last_limits == before.limits
    after = loaded.controller.decide(1600)
    assert (after.limits, after.regime, after.next_wake) == (before.limits, before.regime, before.next_wake)
    assert after.responses == ()  # nothing re-emitted
    assert [r.status for r in loaded.controller.engine.pending_responses()] == [
        ResponseStatus.RECEIVED,
        ResponseStatus.STARTED,
    ]
    # and the chain continues from the restored state
    assert loaded.controller.decide(3000 + 10).regime == Regime.DEFAULT
    assert loaded.controller.decide(800 + PERSIST).regime == Regime.COMMS_LOSS_LIMITS


def test_missing_state_starts_safe(tmp_path):
    loaded = load_state(tmp_path / "none.json", config())
    assert loaded.error is None and loaded.last_limits is None
    assert loaded.controller.decide(100).limits.export_w.value == 1500


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"version": 99}', b'{"version": 1, "device_id": "lfdi-1"}', b"\xff\xfe"],
)
def test_corrupt_state_gives_clear_error_and_comms_loss_limits(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    loaded = load_state(path, config())
    assert loaded.error is not None and str(path) in loaded.error
    d = loaded.controller.decide(100)
    assert d.regime == Regime.COMMS_LOSS_LIMITS and d.limits.export_w.value == 1500
    assert (tmp_path / "state.json.corrupt").read_bytes() == content
    assert not path.exists()


def test_state_for_another_device_is_refused(tmp_path):
    path = tmp_path / "state.json"
    save_state(path, outage_site())
    loaded = load_state(path, config(device_id="other"))
    assert "device_id" in loaded.error and loaded.controller.engine.programs == {}


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    sc = outage_site()
    save_state(path, sc)
    good = path.read_bytes()
    assert json.loads(good)["version"] == 1

    def boom(*_a, **_k):
        raise OSError("disk gone")

    monkeypatch.setattr("gateway.state_store.os.replace", boom)
    sc.server_contact(99_999)
    with pytest.raises(OSError, match="disk gone"):
        save_state(path, sc)
    assert path.read_bytes() == good  # the old state is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize(
    ("configured", "interval", "slack", "effective"),
    [(300, None, 10, 300), (300, 60, 10, 300), (60, 300, 10, 310), (1, 2.5, 0.2, 4), (2, 1, 1, 2),
     (5, 5, 1, 6), (300, 300, 10, 310)],
)  # fmt: skip
def test_comms_timeout_is_kept_above_the_contact_interval(
    configured: int, interval: float | None, slack: float, effective: int
) -> None:
    """Issue 11 item 15: a timeout shorter than the time between two exchanges would call a healthy link
    lost; it is raised to the interval plus the time an exchange may take (at least 1 s), never lowered
    below the configured value."""
    from gateway.core.fallback import effective_comms_timeout

    assert effective_comms_timeout(configured, interval, slack) == effective
