"""Event engine: life cycle, Responses, primacy, supersession, randomisation, defaults."""

from __future__ import annotations

import pytest

from gateway.core.events import (
    Control,
    ControlSettings,
    EventEngine,
    EventState,
    Program,
    ResponseStatus,
    ServerStatus,
    random_offset,
)

RR_ALL = 0x3  # received + specific responses
S = ResponseStatus


def exp(w: float) -> ControlSettings:
    return ControlSettings(export_limit_w=w)


def engine_with(*programs: Program, device: str = "dev-1") -> EventEngine:
    engine = EventEngine(device)
    for p in programs:
        engine.set_program(p)
    return engine


def ctl(mrid: str, start: int, duration: int, settings: ControlSettings | None = None, **kw) -> Control:
    kw.setdefault("program_mrid", "P")
    kw.setdefault("creation_time", 0)
    kw.setdefault("response_required", RR_ALL)
    kw.setdefault("reply_to", "/rsps/1")
    return Control(mrid=mrid, start=start, duration=duration, settings=settings or exp(1000), **kw)


def statuses(responses) -> list[tuple[str, ResponseStatus]]:
    return [(r.subject, r.status) for r in responses]


def test_full_life_cycle_and_responses_each_once():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("A", 100, 50), now=10)
    assert e.state_of("A", 10) == EventState.SCHEDULED
    assert statuses(e.advance(10)) == [("A", S.RECEIVED)]
    assert e.advance(10) == []
    assert e.next_change_time(10) == 100
    assert statuses(e.advance(100)) == [("A", S.STARTED)]
    assert e.state_of("A", 120) == EventState.ACTIVE
    assert e.evaluate(120).settings.export_limit_w == 1000
    assert e.evaluate(120).active == {"P": ("A",)}
    assert e.next_change_time(120) == 150
    done = e.advance(150)
    assert statuses(done) == [("A", S.COMPLETED)] and done[0].created_time == 150
    assert done[0].reply_to == "/rsps/1"
    assert e.state_of("A", 150) == EventState.COMPLETED
    assert e.advance(10_000) == []
    assert e.evaluate(120).settings.export_limit_w is None  # completion is sticky even if time goes back
    assert e.next_change_time(150) is None


def test_jump_over_whole_event_emits_started_then_completed_in_order():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("A", 100, 50), now=10)
    out = e.advance(500)
    assert statuses(out) == [("A", S.RECEIVED), ("A", S.STARTED), ("A", S.COMPLETED)]
    assert [r.created_time for r in out] == [10, 100, 150]


@pytest.mark.parametrize(
    ("required", "expected"),
    [
        (0, []),
        (0x1, [S.RECEIVED]),
        (0x2, [S.STARTED, S.COMPLETED]),
        (0x3, [S.RECEIVED, S.STARTED, S.COMPLETED]),
        (0x4, []),
    ],
)
def test_response_required_bits_are_honoured(required, expected):
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("A", 100, 50, response_required=required), now=10)
    assert [r.status for r in e.advance(1000)] == expected


def test_cancel_before_start_and_while_active():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("A", 100, 50), now=10)
    e.upsert_control(
        ctl("B", 100, 500, creation_time=0, settings=ControlSettings(generation_limit_w=0)), now=10
    )
    e.advance(10)
    e.upsert_control(ctl("A", 100, 50, server_status=ServerStatus.CANCELLED), now=20)
    assert statuses(e.advance(20)) == [("A", S.CANCELLED)]
    assert e.state_of("A", 120) == EventState.CANCELLED
    assert statuses(e.advance(100)) == [("B", S.STARTED)]
    e.upsert_control(ctl("B", 100, 500, server_status=ServerStatus.CANCELLED), now=130)
    out = e.advance(130)
    assert statuses(out) == [("B", S.CANCELLED)] and out[0].created_time == 130
    assert e.evaluate(131).settings.generation_limit_w is None
    assert e.advance(1000) == []  # never "completed" after being cancelled


def test_cancel_with_randomization_ends_within_randomize_duration():
    e = engine_with(Program("P", 1), device="dev-9")
    e.upsert_control(ctl("A", 100, 1000, randomize_duration=60), now=0)
    e.advance(150)
    e.upsert_control(ctl("A", 100, 1000, server_status=ServerStatus.CANCELLED_RANDOMIZED), now=200)
    delay = random_offset("dev-9", "A", "cancel", 60)
    assert 0 <= delay <= 60
    e.advance(200)
    assert e.state_of("A", 200 + delay - 1) == (EventState.ACTIVE if delay else EventState.CANCELLED)
    out = e.advance(200 + delay)
    assert statuses(out) == [("A", S.CANCELLED)] and out[0].created_time == 200 + delay


def test_server_superseded_status():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("A", 100, 50), now=0)
    e.upsert_control(ctl("A", 100, 50, server_status=ServerStatus.SUPERSEDED), now=110)
    assert statuses(e.advance(110)) == [("A", S.RECEIVED), ("A", S.STARTED), ("A", S.SUPERSEDED)]


def test_expired_invalid_and_not_applicable_rejections():
    e = engine_with(Program("P", 1))
    e.supported_modes = frozenset({"export_limit_w", "import_limit_w"})
    e.upsert_control(ctl("old", 0, 100), now=500)
    e.upsert_control(ctl("neg", 600, 100, settings=exp(-5)), now=500)
    e.upsert_control(ctl("zero", 600, 0), now=500)
    e.upsert_control(ctl("gen", 600, 100, settings=ControlSettings(generation_limit_w=0)), now=500)
    e.upsert_control(ctl("quiet", 0, 100, response_required=0), now=500)
    assert statuses(e.advance(500)) == [
        ("old", S.REJECTED_EXPIRED),
        ("neg", S.REJECTED_INVALID),
        ("zero", S.REJECTED_INVALID),
        ("gen", S.REJECTED_NOT_APPLICABLE),
    ]
    assert "export_limit_w must be >= 0" in e.reject_reason("neg")
    assert all(e.state_of(m, 650) == EventState.REJECTED for m in ("old", "neg", "zero", "gen", "quiet"))
    assert e.evaluate(650).settings.is_empty()
    assert e.advance(10_000) == []


def test_unknown_program_is_a_clear_error_and_changes_nothing():
    e = engine_with(Program("P", 1))
    with pytest.raises(ValueError, match="program_mrid 'nope'"):
        e.upsert_control(ctl("A", 100, 50, program_mrid="nope"), now=0)
    assert e.advance(1000) == [] and e.evaluate(120).states == {}


def test_primacy_lower_number_wins_per_mode_and_no_supersession_across_primacy():
    e = engine_with(Program("emergency", 0), Program("doe", 5))
    e.upsert_control(ctl("doe1", 0, 1000, exp(3000), program_mrid="doe", creation_time=50), now=0)
    e.upsert_control(
        ctl("em1", 100, 100, ControlSettings(export_limit_w=0, connect=False), program_mrid="emergency"),
        now=0,
    )
    r = e.evaluate(150)
    assert r.settings.export_limit_w == 0 and r.settings.connect is False
    assert r.origins["export_limit_w"].mrid == "em1"
    assert r.active == {"emergency": ("em1",), "doe": ("doe1",)}
    assert e.evaluate(250).settings.export_limit_w == 3000  # lower-primacy event resumes
    assert (S.SUPERSEDED not in {x.status for x in e.advance(2000)}) is True


def test_overlap_in_same_program_newer_supersedes_at_its_start():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("old", 0, 600, exp(2000), creation_time=1), now=0)
    e.upsert_control(ctl("new", 300, 600, exp(500), creation_time=2), now=10)
    assert e.evaluate(100).settings.export_limit_w == 2000  # old runs until new starts: no gap
    assert e.state_of("old", 299) == EventState.ACTIVE
    out = statuses(e.advance(300))
    assert ("old", S.SUPERSEDED) in out and ("new", S.STARTED) in out
    assert out.index(("old", S.SUPERSEDED)) < out.index(("new", S.STARTED))
    assert e.evaluate(400).settings.export_limit_w == 500
    assert e.state_of("old", 10_000) == EventState.SUPERSEDED
    assert statuses(e.advance(900)) == [("new", S.COMPLETED)]


def test_newer_event_starting_earlier_supersedes_immediately():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("old", 500, 600, exp(2000), creation_time=1), now=0)
    e.advance(0)
    e.upsert_control(ctl("new", 400, 600, exp(500), creation_time=2), now=50)
    assert statuses(e.advance(50)) == [("new", S.RECEIVED), ("old", S.SUPERSEDED)]
    assert e.evaluate(600).origins["export_limit_w"].mrid == "new"


def test_equal_primacy_across_programs_supersedes_and_disjoint_modes_coexist():
    e = engine_with(Program("A", 3), Program("B", 3))
    e.upsert_control(ctl("a1", 0, 600, exp(2000), program_mrid="A", creation_time=1), now=0)
    e.upsert_control(ctl("b1", 0, 600, exp(900), program_mrid="B", creation_time=2), now=0)
    e.upsert_control(
        ctl("a2", 0, 600, ControlSettings(generation_limit_w=4000), program_mrid="A", creation_time=3), now=0
    )
    out = statuses(e.advance(0))
    assert ("a1", S.SUPERSEDED) in out
    r = e.evaluate(10)
    assert r.settings.export_limit_w == 900 and r.settings.generation_limit_w == 4000
    assert e.state_of("a2", 10) == EventState.ACTIVE


def test_cancelled_superseder_supersedes_nothing():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("old", 0, 600, exp(2000), creation_time=1), now=0)
    e.upsert_control(ctl("new", 300, 600, exp(500), creation_time=2), now=10)
    e.upsert_control(ctl("new", 300, 600, exp(500), server_status=ServerStatus.CANCELLED), now=100)
    e.advance(400)
    assert e.state_of("old", 400) == EventState.ACTIVE
    assert e.evaluate(400).settings.export_limit_w == 2000


def test_same_second_replacement_follows_the_server_not_the_mrid_tie_break():
    """Two controls created in the same second: the mRID tie-break would pick the first ("Z" > "A"), but
    the server marked it superseded. The replacement must run, never leave the site without a control."""
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("Z-first", 100, 3600, exp(1000), creation_time=100), now=100)
    e.sync_program(
        Program("P", 1),
        [
            ctl("Z-first", 100, 3600, exp(1000), creation_time=100, server_status=ServerStatus.SUPERSEDED),
            ctl("A-second", 100, 3600, exp(2000), creation_time=100),
        ],
        now=100,
    )
    e.advance(100)
    assert e.state_of("Z-first", 100) == EventState.SUPERSEDED
    assert e.state_of("A-second", 100) == EventState.ACTIVE
    assert e.evaluate(100).settings.export_limit_w == 2000


def test_default_applies_per_mode_when_no_event_is_active():
    e = engine_with(
        Program("P", 2, ControlSettings(export_limit_w=5000, generation_limit_w=8000), "dflt-P"),
        Program("Q", 1, ControlSettings(export_limit_w=4000), "dflt-Q"),
    )
    r = e.evaluate(0)
    assert r.settings.export_limit_w == 4000 and r.settings.generation_limit_w == 8000
    assert r.origins["export_limit_w"].kind == "default" and r.origins["export_limit_w"].mrid == "dflt-Q"
    assert not r.event_active and r.default_applied
    e.upsert_control(ctl("A", 100, 100, exp(1000)), now=0)
    r = e.evaluate(150)
    assert r.settings.export_limit_w == 1000 and r.settings.generation_limit_w == 8000
    assert r.origins["generation_limit_w"].kind == "default"
    assert e.evaluate(250).settings.export_limit_w == 4000


def test_randomization_is_bounded_deterministic_and_device_specific():
    offsets = {random_offset(f"dev-{i}", "E1", "start", 300) for i in range(200)}
    assert offsets <= set(range(0, 301)) and len(offsets) > 50
    assert all(-120 <= random_offset(f"d{i}", "E1", "start", -120) <= 0 for i in range(200))
    assert random_offset("dev-1", "E1", "start", 300) == random_offset("dev-1", "E1", "start", 300)
    assert random_offset("dev-1", "E1", "start", 0) == 0
    for device in ("dev-1", "dev-2", "dev-3"):
        e = engine_with(Program("P", 1), device=device)
        e.upsert_control(ctl("E1", 1000, 600, randomize_start=300, randomize_duration=-60), now=0)
        s_off = random_offset(device, "E1", "start", 300)
        d_off = random_offset(device, "E1", "duration", -60)
        assert e.next_change_time(0) == 1000 + s_off
        assert e.state_of("E1", 1000 + s_off - 1) == EventState.SCHEDULED
        assert e.state_of("E1", 1000 + s_off) == EventState.ACTIVE
        assert e.state_of("E1", 1000 + s_off + 600 + d_off) == EventState.COMPLETED
        # a restarted engine (fresh object, same device) reproduces the same times
        again = EventEngine.from_dict(e.to_dict())
        assert again.next_change_time(0) == 1000 + s_off


def test_sync_program_withdraws_unlisted_controls_and_forgets_finished_ones():
    e = EventEngine("dev")
    p = Program("P", 1)
    a, b = ctl("A", 0, 100), ctl("B", 200, 100)
    e.sync_program(p, [a, b], now=0)
    e.advance(50)
    e.sync_program(p, [b], now=60)  # A vanished while active -> cancelled
    assert statuses(e.advance(60)) == [("A", S.CANCELLED)]
    with pytest.raises(KeyError):
        e.state_of("A", 60)  # finished and unlisted: forgotten
    e.sync_program(p, [b], now=400)
    e.sync_program(p, [], now=500)
    assert statuses(e.advance(500)) == [("B", S.STARTED), ("B", S.COMPLETED)]
    assert e.evaluate(500).states == {}


def test_remove_program_cancels_its_events_and_drops_default():
    e = engine_with(Program("P", 1, exp(3000)))
    e.upsert_control(ctl("A", 0, 1000), now=0)
    e.advance(10)
    e.remove_program("P", now=20)
    assert statuses(e.advance(20)) == [("A", S.CANCELLED)]
    assert not e.has_default() and e.evaluate(30).settings.is_empty()


def test_an_empty_or_ramp_only_default_is_no_default_to_fall_back_on():
    """CSIP-AUS servers link a DefaultDERControl from every DERProgram, empty until the operator sets one
    (2030.5 clause 10.10). Only a default that sets a mode replaces the installer's comms-loss limits."""
    assert not engine_with(Program("P", 1, ControlSettings())).has_default()
    assert not engine_with(Program("P", 1, ControlSettings(set_grad_w=500))).has_default()
    assert engine_with(Program("P", 1, ControlSettings()), Program("Q", 2, exp(3000))).has_default()


def test_pending_responses_survive_until_acknowledged_and_persist():
    e = engine_with(Program("P", 1))
    e.upsert_control(ctl("A", 100, 50), now=10)
    first = e.advance(120)
    assert [r.status for r in first] == [S.RECEIVED, S.STARTED]
    e.acknowledge(first[0])
    restored = EventEngine.from_dict(e.to_dict())
    assert restored.pending_responses() == [first[1]]
    assert restored.advance(120) == []  # already handed out before the restart
    assert [r.status for r in restored.advance(200)] == [S.COMPLETED]
    assert len(restored.pending_responses()) == 2
