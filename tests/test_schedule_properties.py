"""Property: whatever the operator does (creates, cancels, overlapping bulk uploads at 5- and 30-minute
resolution), the published DERControls of a program never overlap (IEEE 2030.5-2018 §12.1.3 supersession,
made unnecessary by splitting), and at every instant the limit the gateway's event engine computes from
them equals the limit the operator last set for that instant.

Controls are issued on program ``step`` (primacy 5) or on the bulk DOEs' own program ``doe`` (primacy 10):
a bulk upload and a site control in the same program are split against each other like two controls (the
newest wins over its own span), whichever came first.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.client import mapping as gm
from gateway.core.events import EventEngine, Program
from server.api import Renderer
from server.compliance.assess import published_controls, site_limits, site_targets_bulk
from server.headend.doe import ingest, iterate
from server.store import Page, RequestScope, Store, build_control_base

T0 = 1_800_000_000 // 1800 * 1800
SPAN = 6 * 3600
LIMITS = (0, 500, 1000, 1500, 2000, 3000)


def _create(res: int) -> st.SearchStrategy:
    n = st.integers(1, 6)
    return n.flatmap(
        lambda k: st.tuples(
            st.just("create"),
            st.just(res),
            st.integers(0, SPAN // res - k),
            st.just(k),
            st.sampled_from(LIMITS),
            st.sampled_from(("step", "doe")),
        )
    )


def _upload(res: int) -> st.SearchStrategy:
    return st.integers(1, 4).flatmap(
        lambda k: st.tuples(
            st.just("upload"),
            st.just(res),
            st.integers(0, SPAN // res - k),
            st.just(k),
            st.sampled_from(LIMITS),
        )
    )


OPS = st.lists(
    st.one_of(
        _create(300),
        _create(1800),
        _upload(300),
        _upload(1800),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
    ),
    min_size=1,
    max_size=10,
)


class World:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.store: Store = self.loop.run_until_complete(
            Store.open(f"sqlite+aiosqlite:///{tmp / 'p.sqlite'}")
        )
        self.now = T0 - 5000
        self.store.clock = lambda: self.now
        self.loop.run_until_complete(self._setup())
        self.sites = itertools.count(1)

    async def _setup(self) -> None:
        await self.store.admin.ensure_standard_programs()
        await self.store.admin.create_program("step", primacy=5)

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    w = World(tmp_path_factory.mktemp("props"))
    yield w
    w.close()


def _model(items: list[list], t: int) -> int | None:
    """The limit the operator last set for instant ``t``: the newest create or upload covering it (None
    once that create was cancelled: cancelling removes a control's effect, it does not bring back what it
    replaced). ``items``: [start, end, limit, cancelled] in the order the operator issued them."""
    value = None
    for start, end, limit, cancelled in items:
        if start <= t < end:
            value = None if cancelled else limit
    return value


async def _published(store: Store, lfdi: str, site_id: int, now: int):  # type: ignore[no-untyped-def]
    view = await store.site_view(RequestScope(lfdi=lfdi, kind="device"), site_id)
    renderer = Renderer(store, None)  # type: ignore[arg-type]
    out = {}
    for program in view.programs:
        if program.key not in ("step", "doe"):
            continue
        _, rows, _ = await store.program_controls(view, program.id, Page(0, 1000))
        docs = [renderer.der_control(site_id, program.id, row, now) for row in rows]
        out[program.key] = (program, docs)
    return out


async def _run(world: World, ops: list[tuple]) -> None:
    store = world.store
    n = next(world.sites)
    lfdi, nmi = f"{n:040X}", f"42{n:08d}"
    world.now = T0 - 5000
    site_id = await store.admin.register_site(lfdi, nmi=nmi)
    engine = EventEngine(lfdi)
    issued: dict[str, list[list]] = {"step": [], "doe": []}  # per program, in the operator's order
    creates: list[list] = []
    mrids: list[str] = []
    for op in ops:
        world.now += 7
        if op[0] == "create":
            _, res, slot, k, limit, program = op
            start = T0 + slot * res
            mrid = await store.admin.create_control(
                program,
                f"site:{lfdi}",
                start=start,
                duration=k * res,
                base=build_control_base(export_limit_w=limit),
            )
            creates.append([start, start + k * res, limit, False])
            issued[program].append(creates[-1])
            mrids.append(mrid)
        elif op[0] == "cancel":
            if not mrids:
                continue
            i = op[1] % len(mrids)
            await store.admin.cancel_control(mrids[i])
            creates[i][3] = True
        else:
            _, res, slot, k, limit = op
            text = "nmi,start,duration,import_limit_w,export_limit_w\n" + "".join(
                f"{nmi},{T0 + (slot + j) * res},{res},9000,{limit}\n" for j in range(k)
            )
            await ingest(store, iterate([text.encode()]), fmt="csv", actor="prop")
            rows = [[T0 + (slot + j) * res, T0 + (slot + j + 1) * res, limit, False] for j in range(k)]
            issued["doe"].extend(rows)
        # The gateway polls after each operator action.
        for program, docs in (await _published(store, lfdi, site_id, world.now)).values():
            core = Program(mrid=program.mrid.upper(), primacy=program.primacy)
            engine.sync_program(core, [gm.control(d, program.mrid) for d in docs], world.now)

    published = await _published(store, lfdi, site_id, world.now)
    for key, (_program, docs) in published.items():
        live = sorted(
            (d.interval.start, d.interval.start + d.interval.duration)
            for d in docs
            if d.EventStatus.currentStatus in (0, 1)
        )
        for (a0, a1), (b0, b1) in itertools.pairwise(live):
            assert a1 <= b0, f"{key}: published controls overlap: [{a0}, {a1}) and [{b0}, {b1})"
    # The compliance assessment rebuilds the same limits from what was published (server.compliance).
    async with store.read() as conn:
        targets, _ = await site_targets_bulk(conn, [site_id])
        published_then = await published_controls(conn, [site_id], T0, T0 + SPAN)
    assessed = site_limits(published_then, targets[site_id], site_id, T0, T0 + SPAN)
    cuts = sorted({T0, T0 + SPAN} | {t for s, e, _, _ in issued["step"] + issued["doe"] for t in (s, e)})
    instants = sorted({t for c in cuts for t in (c, c - 1)} | set(range(T0, T0 + SPAN, 150)))
    for t in instants:
        if not T0 <= t < T0 + SPAN:
            continue
        step, doe = _model(issued["step"], t), _model(issued["doe"], t)
        expected = step if step is not None else doe
        got = engine.evaluate(t).settings.export_limit_w
        assert got == (None if expected is None else float(expected)), (t - T0, step, doe, got)
        judged = next((seg.export_limit_w for seg in assessed if seg.start <= t < seg.end), None)
        assert judged == got, ("assessment", t - T0, step, doe, judged)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_published_controls_never_overlap_and_the_gateway_applies_what_the_operator_last_set(
    world: World, ops: list[tuple]
) -> None:
    world.loop.run_until_complete(_run(world, ops))
