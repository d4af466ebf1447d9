"""Prepared reads (server.store.fast, issue 12): on a SQLite file the hot GETs run on the stdlib driver with
SQL compiled once; they must return exactly what the same statements return through SQLAlchemy (the path
PostgreSQL takes), including empty IN lists, Booleans and paging."""

from __future__ import annotations

import pytest

from server.store import Page, RequestScope, Store, build_control_base

LFDI_A, LFDI_B = "AA" * 20, "BB" * 20


async def _answers(store: Store) -> list:
    """What the hot reads return for two sites (one in a nested group, one in none)."""
    out: list = []
    for lfdi in (LFDI_A, LFDI_B):
        scope = await store.scope_for(lfdi, "device")
        targets = await store.client_targets(scope)
        site_id = next(k for k, _ in targets if k.startswith("s:"))
        view = await store.site_view(scope, int(site_id[2:]))
        out += [scope, targets, tuple(view.site), view.targets, [tuple(p) for p in view.programs]]
        out.append(await store.client_counts(scope))
        out.append(await store.rate(view, "derp", 99))
        for program in view.programs:
            out.append(await store.effective_default(view, program.id))
            out.append(await store.default_control(view, program.id))
            for page in (Page(0, 50), Page(1, 2), Page(0, 1, after=store.clock() + 500)):
                for active in (False, True):
                    total, rows, next_change = await store.program_controls(
                        view, program.id, page, active_only=active
                    )
                    out.append((program.key, page, active, total, [tuple(r) for r in rows], next_change))
    aggregator = RequestScope(lfdi="CC" * 20, kind="aggregator", aggregator_id=1)
    out.append(await store.client_counts(aggregator))
    return out


async def test_prepared_reads_on_the_stdlib_driver_match_sqlalchemy(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite3'}")
    try:
        admin = store.admin
        await admin.ensure_standard_programs()
        await admin.register_site(LFDI_A)
        await admin.register_site(LFDI_B)
        await admin.create_group("zone")
        await admin.create_group("feeder", parent="zone")
        await admin.set_membership(LFDI_A, "feeder")
        await admin.set_rate("derp", 30, "group:zone")
        await admin.set_default_control("doe", "all", base=build_control_base(export_limit_w=5000))
        await admin.set_default_control("doe", "group:feeder", base=build_control_base(import_limit_w=7000))
        now = store.clock()
        for i, target in enumerate(["all", "group:zone", f"site:{LFDI_A}", f"site:{LFDI_B}"] * 3):
            await admin.create_control(
                "doe",
                target,
                start=now - 100 + 400 * i,
                duration=300,
                supersede=False,
                base=build_control_base(export_limit_w=1000 + i),
            )
        assert store.fast.path is not None  # the stdlib driver
        pinned = store.clock()
        store.clock = lambda: pinned  # both paths answer for the same second
        fast = await _answers(store)
        store.fast.path = None  # the same statements through SQLAlchemy and aiosqlite
        assert await _answers(store) == fast
        assert any(isinstance(row[5], bool) for row in fast if isinstance(row, tuple) and len(row) > 5)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["device", "aggregator"])
async def test_a_site_outside_the_scope_is_not_found_on_either_path(tmp_path, kind):
    from server.errors import NotFound

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite3'}")
    try:
        await store.admin.register_site(LFDI_A)
        scope = RequestScope(lfdi=LFDI_B, kind=kind, aggregator_id=7 if kind == "aggregator" else None)
        for path in (store.fast.path, None):
            store.fast.path = path
            with pytest.raises(NotFound):
                await store.site_view(scope, 1)
    finally:
        await store.close()
