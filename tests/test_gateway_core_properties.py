"""Hypothesis properties over simulated days: random programs, events, cancellations, local inputs and
outage patterns, driven through SiteController.decide with a fake clock."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import (
    AggregatorInput,
    Control,
    ControlSettings,
    CustomerPrefs,
    FallbackConfig,
    GatewayConfig,
    Program,
    Regime,
    ServerStatus,
    SiteController,
    SiteInputs,
)
from gateway.core.hierarchy import _LIMIT_MAP
from gateway.state_store import controller_from_dict, controller_to_dict

DAY = 86_400
COMMS_LOSS = ControlSettings(export_limit_w=1500, generation_limit_w=6000)
INSTALLER = ControlSettings(export_limit_w=5000, import_limit_w=14_000)
CONFIG = GatewayConfig(
    "lfdi-prop", INSTALLER, FallbackConfig(COMMS_LOSS, comms_timeout_s=600, persistent_loss_s=7200)
)
TERMINAL = {3, 6, 7}
REJECTIONS = {252, 253, 254}

watts = st.sampled_from([0, 250, 1500, 3000, 7000, 20_000])
settings_st = st.fixed_dictionaries(
    {},
    optional={
        "export_limit_w": watts,
        "import_limit_w": watts,
        "generation_limit_w": watts,
        "load_limit_w": watts,
        "connect": st.booleans(),
        "target_w": st.integers(-8000, 8000),
        "max_lim_w_pct": st.integers(0, 100),
    },
).map(lambda d: ControlSettings(**d))


@dataclass(frozen=True)
class Ev:
    program: int
    publish: int
    start: int
    duration: int
    settings: ControlSettings
    rand_start: int
    rand_duration: int
    rr: int
    status_change: tuple[int, int] | None  # (time, new server status)


events_st = st.builds(
    Ev,
    program=st.integers(0, 2),
    publish=st.integers(0, DAY),
    start=st.integers(-4 * 3600, DAY),
    duration=st.integers(1, 6 * 3600),
    settings=settings_st,
    rand_start=st.sampled_from([0, 0, 120, -120]),
    rand_duration=st.sampled_from([0, 0, 300, -60]),
    rr=st.integers(0, 7),
    status_change=st.none() | st.tuples(st.integers(0, DAY), st.sampled_from([2, 3, 4])),
)
programs_st = st.lists(
    st.tuples(st.integers(0, 3), st.none() | settings_st), min_size=3, max_size=3
)  # (primacy, default)
outages_st = st.lists(st.tuples(st.integers(0, DAY), st.integers(60, 10 * 3600)), max_size=5)
local_st = st.lists(
    st.tuples(
        st.integers(0, DAY),
        st.builds(
            SiteInputs,
            emergency=st.none()
            | st.sampled_from([ControlSettings(export_limit_w=0), ControlSettings(connect=False)]),
            aggregator=st.none()
            | st.builds(
                AggregatorInput,
                settings=settings_st,
                export_target_w=st.none() | st.integers(-20_000, 20_000),
                expires_at=st.none() | st.integers(0, DAY),
            ),
            customer=st.builds(
                CustomerPrefs, battery_reserve_pct=st.none() | st.integers(0, 100), settings=settings_st
            ),
            soc_pct=st.none() | st.integers(0, 100),
        ),
    ),
    max_size=6,
)


def link_up(t: int, outages: list[tuple[int, int]]) -> bool:
    return not any(s <= t < s + d for s, d in outages)


def to_control(i: int, ev: Ev, t: int) -> Control:
    status = 0
    if ev.status_change is not None and ev.status_change[0] <= t:
        status = ev.status_change[1]
    return _control(i, ev, status)


@lru_cache(maxsize=4096)
def _control(i: int, ev: Ev, status: int) -> Control:
    return Control(
        mrid=f"ev{i:03d}",
        program_mrid=f"prog{ev.program}",
        creation_time=ev.publish,
        start=ev.start,
        duration=ev.duration,
        settings=ev.settings,
        randomize_start=ev.rand_start,
        randomize_duration=ev.rand_duration,
        server_status=ServerStatus(status),
        response_required=ev.rr,
        reply_to="/rsps",
    )


def deliver(sc: SiteController, t: int, programs, events: list[Ev]) -> None:
    """What a successful poll at ``t`` would hand to the engine: the server's current lists."""
    for p, (primacy, default) in enumerate(programs):
        listed = [
            to_control(i, ev, t)
            for i, ev in enumerate(events)
            if ev.program == p and ev.publish <= t < ev.start + ev.duration + 3600  # server drops old ones
        ]
        program = Program(f"prog{p}", primacy, default, f"dflt{p}" if default else None)
        sc.engine.sync_program(program, listed, t)
    sc.server_contact(t)


def check_envelope(d, sc: SiteController) -> None:
    lim = d.limits
    inputs = sc.inputs
    # (a) never unlimited: the connection point export always has a value
    assert lim.export_w.value is not None
    assert lim.export_w.value <= INSTALLER.export_limit_w
    assert lim.import_w.value is not None and lim.import_w.value <= INSTALLER.import_limit_w
    # (b) the effective limit never exceeds any active source's limit
    active_sources = [d.schedule.settings, INSTALLER, inputs.customer.settings]
    if inputs.emergency is not None:
        active_sources.append(inputs.emergency)
    agg = inputs.aggregator
    if agg is not None and (agg.expires_at is None or d.now < agg.expires_at):
        active_sources.append(agg.settings)
    if d.regime == Regime.COMMS_LOSS_LIMITS:
        active_sources.append(COMMS_LOSS)
    for eff_name, field in _LIMIT_MAP.items():
        eff = getattr(lim, eff_name).value
        given = [getattr(s, field) for s in active_sources if getattr(s, field) is not None]
        if given:
            assert eff is not None and eff <= min(given), (eff_name, eff, given)
            assert eff == min(given)
        else:
            assert eff is None
    if any(s.connect is False for s in active_sources):
        assert lim.connect.value is False
    # (c) setpoints sit inside the envelope
    off = lim.connect.value is False or lim.energize.value is False
    if lim.target_w is not None:
        tw = lim.target_w.value
        assert tw <= (lim.generation_w.value if lim.generation_w.value is not None else math.inf)
        assert tw >= -(lim.load_w.value if lim.load_w.value is not None else math.inf)
        reserve = lim.battery_reserve_pct.value
        if reserve is not None and (inputs.soc_pct is None or inputs.soc_pct <= reserve):
            assert tw <= 0
        if off:
            assert tw == 0
    if lim.export_target_w is not None:
        et = lim.export_target_w.value
        assert -(lim.import_w.value) <= et <= lim.export_w.value
    if lim.fixed_w_pct is not None and lim.max_w_pct.value is not None:
        assert lim.fixed_w_pct.value <= lim.max_w_pct.value


def check_regime(d, last_contact: int | None, ever_default: bool) -> None:
    cfg = CONFIG.fallback
    if last_contact is None:
        assert d.regime == Regime.COMMS_LOSS_LIMITS
    elif d.now < last_contact + cfg.comms_timeout_s:
        assert d.regime == Regime.NORMAL
    elif d.now >= last_contact + cfg.comms_timeout_s + cfg.persistent_loss_s:
        assert d.regime == Regime.COMMS_LOSS_LIMITS
    elif d.schedule.event_active:
        assert d.regime == Regime.HELD_SCHEDULE
    else:
        assert d.regime == (Regime.DEFAULT if ever_default else Regime.COMMS_LOSS_LIMITS)
    if d.regime == Regime.COMMS_LOSS_LIMITS:
        assert d.limits.export_w.value <= COMMS_LOSS.export_limit_w
        assert d.limits.generation_w.value <= COMMS_LOSS.generation_limit_w


def check_responses(all_responses, events: list[Ev]) -> None:
    by_subject: dict[str, list] = {}
    for r in all_responses:
        by_subject.setdefault(r.subject, []).append(r)
    for subject, rs in by_subject.items():
        codes = [int(r.status) for r in rs]
        rr = events[int(subject[2:])].rr
        assert len(codes) == len(set(codes)), (subject, codes)  # (d) at most once
        assert [r.created_time for r in rs] == sorted(r.created_time for r in rs)
        if codes[0] in REJECTIONS:
            assert len(codes) == 1 and rr != 0
            continue
        assert all(c not in REJECTIONS for c in codes)
        rank = {1: 0, 2: 1, 3: 2, 6: 2, 7: 2}
        assert [rank[c] for c in codes] == sorted(rank[c] for c in codes), codes
        assert len([c for c in codes if c in TERMINAL]) <= 1
        if 1 in codes:
            assert rr & 1
        if set(codes) - {1}:
            assert rr & 2


def clone(sc: SiteController) -> SiteController:
    data = json.loads(json.dumps(controller_to_dict(sc)))
    return controller_from_dict(data, CONFIG).controller


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    programs=programs_st,
    events=st.lists(events_st, max_size=25),
    outages=outages_st,
    local=local_st,
    step=st.integers(300, 3600),
    days=st.integers(1, 2),
    restore_every=st.integers(3, 40),
)
def test_simulated_days(programs, events, outages, local, step, days, restore_every):
    sc = SiteController(CONFIG)
    local = sorted(local, key=lambda x: x[0])
    t, n, last_contact, ever_default = 0, 0, None, False
    responses = []
    while t < days * DAY:
        if link_up(t, outages):
            deliver(sc, t, programs, events)
            last_contact = t
            # a default that sets no mode (empty, or only ramps) is nothing to fall back on
            ever_default = ever_default or any(d is not None and d.modes for _, d in programs)
        current = [inp for at, inp in local if at <= t]
        if n % restore_every == 0 and n:
            # (e) a save/load round trip reproduces the same decision, and the run continues from it
            twin = clone(sc)
            d, d2 = (
                sc.decide(t, current[-1] if current else None),
                twin.decide(t, current[-1] if current else None),
            )
            assert (d.limits, d.regime, d.next_wake, d.responses) == (
                d2.limits,
                d2.regime,
                d2.next_wake,
                d2.responses,
            )
            assert twin.engine.pending_responses() == sc.engine.pending_responses()
            sc = twin
        else:
            d = sc.decide(t, current[-1] if current else None)
        responses.extend(d.responses)
        check_envelope(d, sc)
        check_regime(d, last_contact, ever_default)
        assert d.next_wake is None or d.next_wake > t
        n += 1
        t = min(t + step, d.next_wake or math.inf)
    check_responses(responses, events)
    assert set(responses) == set(sc.engine.pending_responses())  # nothing acknowledged: all still queued


def test_a_simulated_week_forgets_finished_events():
    """A week of 5-minute DOE intervals (2016 events) with daily outages, polled and decided every 5 min."""
    import time

    sc = SiteController(CONFIG)
    events = [
        Ev(
            0,
            (k // 288) * DAY - 3600,
            k * 300,
            300,
            ControlSettings(export_limit_w=1000 + (k % 7) * 500),
            0,
            0,
            3,
            None,
        )
        for k in range(7 * 288)
    ]
    programs = [(1, ControlSettings(export_limit_w=2500)), (0, None), (2, None)]
    outages = [(d * DAY + 3 * 3600, 2 * 3600) for d in range(7)]
    started = time.process_time()
    regimes = set()
    for t in range(0, 7 * DAY, 300):
        if link_up(t, outages):
            deliver(sc, t, programs, events)
        d = sc.decide(t)
        regimes.add(d.regime)
        check_envelope(d, sc)
    elapsed = time.process_time() - started
    assert regimes == {Regime.NORMAL, Regime.HELD_SCHEDULE}
    assert len(sc.engine.evaluate(7 * DAY).states) < 400  # finished, unlisted events are forgotten
    print(f"simulated week: {7 * DAY // 300} decisions in {elapsed:.2f} s CPU")
