"""Schedule semantics: a new control or DOE replaces earlier ones only over its own span (mission: "an
operator's 90-second step never removes the hour around it"); statuses computed in one place
(server.store.timeline; IEEE 2030.5-2018 Table 26 EventStatus)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from server.headend.doe import doe_mrid, ingest, iterate, site_intervals
from server.store import Page, RequestScope, Store
from server.store.timeline import Window, event_status, operator_status, paint, remainders, value_at

T0 = 1_800_000_000  # a half-hour boundary


def test_paint_newest_wins_only_over_its_span() -> None:
    hour = Window(T0, T0 + 3600, T0 - 10, None, (1,), "2000W")
    step = Window(T0 + 600, T0 + 690, T0 - 5, None, (2,), "800W")
    pieces = paint([hour, step])
    assert [(p.start - T0, p.end - T0, p.item) for p in pieces] == [
        (0, 600, "2000W"),
        (600, 690, "800W"),
        (690, 3600, "2000W"),
    ]
    assert value_at(pieces, T0 + 689) == "800W" and value_at(pieces, T0 + 690) == "2000W"
    assert value_at(pieces, T0 + 3600) is None and value_at(pieces, T0 - 1) is None


def test_paint_respects_publication_and_retirement() -> None:
    # Published 100 s after its start and cancelled at 300 s: it applied over [100, 300) only.
    w = Window(T0, T0 + 1000, T0 + 100, T0 + 300, (1,), "x")
    assert [(p.start - T0, p.end - T0) for p in paint([w])] == [(100, 300)]
    assert paint([w], since=T0 + 300) == []


def test_remainders_drop_what_is_already_over() -> None:
    assert remainders(0, 3600, 600, 690, now=0) == [(0, 600), (690, 3600)]
    assert remainders(0, 3600, 600, 690, now=600) == [(690, 3600)]
    assert remainders(0, 3600, 0, 3600, now=0) == []
    assert remainders(0, 3600, -10, 100, now=0) == [(100, 3600)]


def _row(**kw: object) -> SimpleNamespace:
    base = dict(start=T0, duration=600, creation_time=T0 - 60, cancelled_at=None, superseded_at=None)
    base.update(randomize_start=None, randomize_duration=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_statuses_are_live() -> None:
    assert operator_status(_row(), T0 - 1) == "scheduled" and event_status(_row(), T0 - 1)[0] == 0
    assert operator_status(_row(), T0) == "active" and event_status(_row(), T0)[0] == 1
    # A finished control is completed, not "scheduled" (issue 13).
    assert operator_status(_row(), T0 + 600) == "completed"
    assert operator_status(_row(cancelled_at=T0 + 5), T0 + 10) == "cancelled"
    assert event_status(_row(cancelled_at=T0 + 5, randomize_duration=30), T0 + 10) == (3, T0 + 5)
    split = _row(superseded_at=T0 + 5)
    assert operator_status(split, T0 + 10, live_pieces=2) == "partly superseded"
    assert operator_status(split, T0 + 10) == "superseded" and event_status(split, T0 + 10) == (4, T0 + 5)


# ------------------------------------------------------------------------------ bulk DOE uploads


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    s.clock = lambda: T0 - 3600
    await s.admin.ensure_standard_programs()
    await s.admin.register_site("A" * 40, nmi="4100000001")
    yield s
    await s.close()


async def _upload(store: Store, rows: list[tuple[int, int, int]]) -> int:
    text = "nmi,start,duration,import_limit_w,export_limit_w\n" + "".join(
        f"4100000001,{start},{duration},9000,{export}\n" for start, duration, export in rows
    )
    return (await ingest(store, iterate([text.encode()]), fmt="csv", actor="test")).upload_id


async def _published(store: Store) -> list[tuple[int, int, str]]:
    scope = RequestScope(lfdi="A" * 40, kind="device")
    view = await store.site_view(scope, 1)
    doe = next(p for p in view.programs if p.key == "doe")
    total, rows, _ = await store.program_controls(view, doe.id, Page(0, 100))
    assert total == len(rows)
    from server.store import control_base_from_json

    out = []
    for row in rows:
        exp = control_base_from_json(row.base).opModExpLimW.to_watts()
        out.append((row.start - T0, row.duration, f"{exp:g}"))
    return out


async def test_five_minute_row_inside_a_thirty_minute_row_splits_it(store: Store) -> None:
    first = await _upload(store, [(T0, 1800, 3000), (T0 + 1800, 1800, 3000)])
    second = await _upload(store, [(T0 + 600, 300, 1000)])
    assert await _published(store) == [
        (0, 600, "3000"),
        (600, 300, "1000"),
        (900, 900, "3000"),
        (1800, 1800, "3000"),
    ]
    # Provenance: which upload and which uploaded row set each piece; the cut row has a new mRID, the
    # untouched one keeps the mRID it had before.
    pieces = await site_intervals(store, 1)
    assert [(p["upload"], p["row_start"] - T0, p["row_duration"]) for p in pieces] == [
        (first, 0, 1800),
        (second, 600, 300),
        (first, 0, 1800),
        (first, 1800, 1800),
    ]
    assert pieces[0]["mrid"] == doe_mrid(0, 1, T0, second) != doe_mrid(0, 1, T0, first)
    assert pieces[3]["mrid"] == doe_mrid(0, 1, T0 + 1800, first)
    assert len({p["mrid"] for p in pieces}) == 4


async def test_a_shorter_row_at_the_same_start_keeps_the_rest(store: Store) -> None:
    await _upload(store, [(T0, 1800, 3000)])
    await _upload(store, [(T0, 300, 0)])
    assert await _published(store) == [(0, 300, "0"), (300, 1500, "3000")]
    # Re-uploading the same interval still replaces it outright.
    await _upload(store, [(T0, 1800, 2500)])
    assert await _published(store) == [(0, 1800, "2500")]


async def test_shorter_row_in_the_same_upload_wins(store: Store) -> None:
    await _upload(store, [(T0, 1800, 3000), (T0 + 300, 300, 500)])
    assert await _published(store) == [(0, 300, "3000"), (300, 300, "500"), (600, 1200, "3000")]


async def test_a_90_second_step_splits_the_hour_around_it(store: Store) -> None:
    from server.store import build_control_base, controls

    admin = store.admin
    store.clock = lambda: T0 - 60
    hour = await admin.create_control(
        "doe", f"site:{'A' * 40}", start=T0, duration=3600, base=build_control_base(export_limit_w=2000)
    )
    store.clock = lambda: T0 - 30
    step = await admin.create_control(
        "doe", f"site:{'A' * 40}", start=T0 + 900, duration=90, base=build_control_base(export_limit_w=800)
    )
    scope = RequestScope(lfdi="A" * 40, kind="device")
    view = await store.site_view(scope, 1)
    doe = next(p for p in view.programs if p.key == "doe")
    _, rows, _ = await store.program_controls(view, doe.id, Page(0, 10))
    live = [(r.start - T0, r.duration, r.mrid) for r in rows if event_status(r, T0 - 30)[0] in (0, 1)]
    assert [(a, d) for a, d, _ in live] == [(0, 900), (900, 90), (990, 2610)]
    assert live[1][2] == step and hour not in {m for _, _, m in live}
    original = next(r for r in rows if r.mrid == hour)
    assert event_status(original, T0 - 30) == (4, T0 - 30)  # superseded: clients answer 7
    async with store.read() as conn:
        pieces = (await conn.execute(controls.select().where(controls.c.split_from == original.id))).all()
    assert sorted(p.start - T0 for p in pieces) == [0, 990]
    assert operator_status(original, T0, live_pieces=len(pieces)) == "partly superseded"
    # Cancelling the original cancels its pieces too; the step stays.
    await admin.cancel_control(hour)
    _, rows, _ = await store.program_controls(view, doe.id, Page(0, 10))
    assert [r.mrid for r in rows if event_status(r, T0)[0] in (0, 1)] == [step]
    assert event_status(next(r for r in rows if r.mrid == hour), T0)[0] == 4  # stays superseded


async def test_a_step_inside_the_hour_in_force_leaves_no_gap_for_a_client_behind(store: Store) -> None:
    """The piece continuing an hour already in force starts a few seconds before the server's now (inside
    the hour), not at it: a client whose clock is behind (CSIP-AUS clients follow /tm, whose currentTime
    has 1 s resolution) would otherwise see the hour superseded and its continuation not yet started. An
    event whose start has passed and whose end has not is in force at once (IEEE 2030.5-2018 event rules;
    EventStatus Active, Table 26). Randomisation stays off the piece (it would delay it: a gap again)."""
    from server.store import build_control_base, controls
    from server.store.admin import CONTINUATION_BACKDATE_S

    admin = store.admin
    store.clock = lambda: T0 - 60
    hour = await admin.create_control(
        "doe",
        f"site:{'A' * 40}",
        start=T0,
        duration=3600,
        randomize_start=30,
        base=build_control_base(export_limit_w=2000),
    )
    now = T0 + 600
    store.clock = lambda: now
    await admin.create_control(
        "doe", f"site:{'A' * 40}", start=now + 5, duration=90, base=build_control_base(export_limit_w=800)
    )
    async with store.read() as conn:
        original = (await conn.execute(controls.select().where(controls.c.mrid == hour))).one()
        pieces = (
            await conn.execute(
                controls.select().where(controls.c.split_from == original.id).order_by(controls.c.start)
            )
        ).all()
    assert [(p.start - now, p.start + p.duration - now) for p in pieces] == [
        (-CONTINUATION_BACKDATE_S, 5),
        (95, T0 + 3600 - now),
    ]
    assert pieces[0].randomize_start is None
    for behind in (0, 0.4, 0.999, 3):  # the client's idea of now, seconds behind the server's
        client_now = now - behind
        applying = [p for p in pieces if p.start <= client_now < p.start + p.duration]
        assert len(applying) == 1, behind
    # Never before the original itself: a control that began 2 s ago continues from its own start.
    store.clock = lambda: T0 + 1002
    began = await admin.create_control(
        "emergency",
        f"site:{'A' * 40}",
        start=T0 + 1000,
        duration=600,
        base=build_control_base(export_limit_w=0),
    )
    await admin.create_control(
        "emergency",
        f"site:{'A' * 40}",
        start=T0 + 1010,
        duration=60,
        base=build_control_base(export_limit_w=0),
    )
    async with store.read() as conn:
        row = (await conn.execute(controls.select().where(controls.c.mrid == began))).one()
        starts = (
            (
                await conn.execute(
                    sa.select(controls.c.start)
                    .where(controls.c.split_from == row.id)
                    .order_by(controls.c.start)
                )
            )
            .scalars()
            .all()
        )
    assert [t - T0 for t in starts] == [1000, 1070]


async def _live(store: Store, now: int) -> list[tuple[int, int, str]]:
    """The site's doe program as published: (start - T0, duration, export W) of the events in force."""
    from server.store import control_base_from_json

    view = await store.site_view(RequestScope(lfdi="A" * 40, kind="device"), 1)
    doe = next(p for p in view.programs if p.key == "doe")
    _, rows, _ = await store.program_controls(view, doe.id, Page(0, 100))
    return [
        (r.start - T0, r.duration, f"{control_base_from_json(r.base).opModExpLimW.to_watts():g}")
        for r in rows
        if event_status(r, now)[0] in (0, 1)
    ]


async def test_a_site_control_inside_a_bulk_doe_row_cuts_it(store: Store) -> None:
    """A bulk DOE and a control in the same program are split against each other (issue 13 item 1)."""
    from server.store import build_control_base, doe_uploads

    first = await _upload(store, [(T0, 1800, 3000)])
    store.clock = lambda: T0 - 3000
    step = await store.admin.create_control(
        "doe", f"site:{'A' * 40}", start=T0 + 600, duration=300, base=build_control_base(export_limit_w=1000)
    )
    assert await _live(store, T0 - 3000) == [(0, 600, "3000"), (600, 300, "1000"), (900, 900, "3000")]
    pieces = await site_intervals(store, 1)
    assert [(p["upload"], p["start"] - T0, p["duration"]) for p in pieces] == [
        (first, 0, 600),
        (first, 900, 900),
    ]
    # The cut pieces are new events (new mRIDs); the upload history says which control cut them.
    assert doe_mrid(0, 1, T0, first) not in {p["mrid"] for p in pieces}
    async with store.read() as conn:
        cut = (await conn.execute(doe_uploads.select().order_by(doe_uploads.c.id.desc()))).first()
    assert cut.reason == f"replaced by control {step}" and cut.id > first
    # Cancelling the control removes its effect; it does not bring the DOE back under it.
    await store.admin.cancel_control(step)
    assert await _live(store, T0 - 3000) == [(0, 600, "3000"), (900, 900, "3000")]
    # A later upload over the same span wins again.
    await _upload(store, [(T0 + 600, 300, 2000)])
    assert await _live(store, T0 - 3000) == [(0, 600, "3000"), (600, 300, "2000"), (900, 900, "3000")]


async def test_a_bulk_doe_row_inside_a_site_control_supersedes_it_there(store: Store) -> None:
    from server.store import build_control_base

    hour = await store.admin.create_control(
        "doe", f"site:{'A' * 40}", start=T0, duration=1800, base=build_control_base(export_limit_w=3000)
    )
    store.clock = lambda: T0 - 3000
    await _upload(store, [(T0 + 600, 300, 1000)])
    assert await _live(store, T0 - 3000) == [(0, 600, "3000"), (600, 300, "1000"), (900, 900, "3000")]
    view = await store.site_view(RequestScope(lfdi="A" * 40, kind="device"), 1)
    doe = next(p for p in view.programs if p.key == "doe")
    _, rows, _ = await store.program_controls(view, doe.id, Page(0, 100))
    original = next(r for r in rows if r.mrid == hour)
    assert event_status(original, T0 - 3000) == (4, T0 - 3000)  # superseded: its clients answer 7
    # Cancelling the operator's control cancels its pieces; the uploaded row stays.
    await store.admin.cancel_control(hour)
    assert await _live(store, T0 - 3000) == [(600, 300, "1000")]
