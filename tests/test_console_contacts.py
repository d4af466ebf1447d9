"""The console's site counts (issue 14 Overview: sites total, online, silent) from ``sites.last_contact``.

The column is maintained by the contact write path (``SitesStore.flush_contacts``), at most once per site
per ``SITE_CONTACT_EVERY`` seconds, from the site's own certificate or its aggregator's (CSIP-AUS: an
aggregator's client speaks for the EndDevices it registered, 2030.5 clause 6.4.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from server.console.views import site_counts
from server.store import Store, sites
from server.store.engine import make_engine
from server.store.registry import SITE_CONTACT_EVERY

T0 = 1_800_000_000
MIGRATIONS = Path(__file__).resolve().parent.parent / "server" / "migrations"


def _lfdi(n: int) -> str:
    return f"{n:040X}"


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    s.now = T0
    s.clock = lambda: s.now
    yield s
    await s.close()


async def _contact(store: Store, lfdi: str, role: str = "device") -> None:
    """What the TLS listener does on each request: resolve the certificate, note the contact."""
    await store.scope_for(lfdi, role)
    store.note_contact(lfdi)


async def _last_contacts(store: Store) -> dict[str, int | None]:
    async with store.read() as conn:
        return dict((await conn.execute(sa.select(sites.c.lfdi, sites.c.last_contact))).all())


async def test_site_last_contact_is_written_at_most_once_per_period(store: Store) -> None:
    await store.admin.register_site(_lfdi(1))
    await store.admin.register_site(_lfdi(2))
    await _contact(store, _lfdi(1))
    await store.flush_contacts()
    assert await _last_contacts(store) == {_lfdi(1): T0, _lfdi(2): None}
    # Polling every few seconds: the client's last_seen follows, the site row is left alone ...
    for dt in range(1, SITE_CONTACT_EVERY, 5):
        store.now = T0 + dt
        await _contact(store, _lfdi(1))
        await store.flush_contacts()
        assert (await _last_contacts(store))[_lfdi(1)] == T0
    # ... until a period has passed.
    store.now = T0 + SITE_CONTACT_EVERY
    await _contact(store, _lfdi(1))
    await store.flush_contacts()
    assert (await _last_contacts(store))[_lfdi(1)] == T0 + SITE_CONTACT_EVERY


async def test_an_aggregators_contact_counts_for_its_sites(store: Store) -> None:
    agg = _lfdi(0xA66)
    await store.admin.create_aggregator("fleet-co", lfdis=[agg])
    for n in (1, 2, 3):
        await store.admin.register_site(_lfdi(n), aggregator="fleet-co")
    await store.admin.register_site(_lfdi(4))  # its own certificate, never heard from
    await _contact(store, agg, "aggregator")
    await store.flush_contacts()
    assert await _last_contacts(store) == {_lfdi(1): T0, _lfdi(2): T0, _lfdi(3): T0, _lfdi(4): None}


async def test_counts_online_silent_never(store: Store) -> None:
    for n in range(1, 6):
        await store.admin.register_site(_lfdi(n))
    await _contact(store, _lfdi(1))
    await _contact(store, _lfdi(2))
    await store.flush_contacts()
    store.now = T0 + 100
    await _contact(store, _lfdi(3))
    await store.flush_contacts()
    counts = await site_counts(store, store.now, 60)
    assert counts == {"total": 5, "online": 1, "silent": 2, "never": 2}
    one_site = sites.c.lfdi == _lfdi(1)
    assert await site_counts(store, store.now, 60, one_site) == {
        "total": 1, "online": 0, "silent": 1, "never": 0,
    }  # fmt: skip


async def test_migration_backfills_last_contact(tmp_path: Path) -> None:
    """Upgrading a store at p0103 fills sites.last_contact from the clients table (own, else aggregator)."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def upgrade(to: str):
        def run(sync_conn: sa.Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, to)

        return run

    async with engine.begin() as conn:
        await conn.run_sync(upgrade("p0103"))
    async with engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO aggregators (id, name, created_at) VALUES (7, 'agg', 0)"))
        await conn.execute(
            sa.text(
                "INSERT INTO clients (lfdi, kind, aggregator_id, revoked, last_seen) VALUES"
                " ('A1', 'aggregator', 7, 0, 500), ('S1', 'device', NULL, 0, 900),"
                " ('S2', 'device', NULL, 0, 100)"
            )
        )
        await conn.execute(
            sa.text(
                "INSERT INTO sites (id, lfdi, sfdi, aggregator_id, enabled, changed_time, registered_time)"
                " VALUES (1, 'S1', 1, NULL, 1, 0, 0), (2, 'S2', 2, 7, 1, 0, 0), (3, 'S3', 3, 7, 1, 0, 0),"
                " (4, 'S4', 4, NULL, 1, 0, 0)"
            )
        )
    async with engine.begin() as conn:
        await conn.run_sync(upgrade("head"))
    async with engine.connect() as conn:
        rows = dict((await conn.execute(sa.text("SELECT lfdi, last_contact FROM sites"))).all())
    await engine.dispose()
    assert rows == {"S1": 900, "S2": 500, "S3": 500, "S4": None}
