"""A Boffer portfolio read from a real derlink store (issue 18: "from derlink's own data"): the DER documents
each site PUT (IEEE 2030.5 clause 10.10 DERCapability, DERSettings, DERAvailability), the DOE published to it
per 5-minute period (seed 004 L144; maxAvailGen/Load clipped to export/import limits, L152, L346, L471-472)
and its recent site-power readings as the native-load forecast.  SQLite on disk; readings and documents
go through the store paths the 2030.5 handlers use, built by the gateway's own mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.boffer.builder import build_offer
from aggregator.boffer.cli import DEFAULT_PRICES
from aggregator.boffer.from_store import _period_limits, portfolio_from_store
from aggregator.boffer.model import Plan
from aggregator.boffer.validator import errors, validate
from derlink.cli import main
from gateway.client import mapping as m
from server.compliance.assess import LimitSegment
from server.store import Page, RequestScope, Store, build_control_base

T0 = 1_800_000_000 // 300 * 300
LFDI = {name: f"{n:040X}" for n, name in enumerate("ABCD", 1)}
PRICES = [float(p) for p in DEFAULT_PRICES.split(",")]
PLAN = Plan.thresholds(PRICES, load_on_up_to=0, gen_on_from=300)


async def _documents(store: Store, lfdi: str, device: m.DeviceSnapshot) -> None:
    scope = RequestScope(lfdi=lfdi, kind="device")
    site_id = await store.admin.site_id(lfdi)
    _, (der_id,) = await store.der_ids(scope, site_id, Page(0, 1))
    await store.put_der_document(scope, site_id, der_id, "dercap", m.der_capability(device))
    await store.put_der_document(scope, site_id, der_id, "derg", m.der_settings(device, store.now))
    if device.w_available is not None:
        await store.put_der_document(scope, site_id, der_id, "dera", m.der_availability(device, store.now))


async def _post(store: Store, lfdi: str, at: int, site_w: float) -> None:
    scope = RequestScope(lfdi=lfdi, kind="device")
    point = m.mirror_point(lfdi, "site")
    store.now = at
    doc = m.meter_readings(point, m.Measurements(w=site_w, v={"A": 240.0}), at, 60)
    await store.upsert_mup(scope, m.mirror_usage_point(point, lfdi, doc.MirrorMeterReading))


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """Feeder: A (PV 5 kW rated, 4 kW set, 3.5 kW available), B (battery 2.5 kW charge / 3 kW discharge,
    0.8 kW native load), D (no DER documents).  Elsewhere: C (PV 10 kW).  A DOE on the feeder for the
    first 15 minutes: export 2 kW, import 1.5 kW."""
    path = tmp_path / "derlink.sqlite3"
    s = await Store.open(f"sqlite+aiosqlite:///{path}")
    s.now = T0 - 3600
    s.clock = lambda: s.now
    await s.admin.ensure_standard_programs()
    await s.admin.create_group("feeder")
    await s.admin.create_group("other")
    for name, lfdi in LFDI.items():
        await s.admin.register_site(lfdi, nmi=f"NMI{name}", groups_=["other" if name == "C" else "feeder"])
    pv = m.DeviceSnapshot("pv", 4, 5000.0, 0x0F, set_max_w=4000.0, w_available=3500.0)
    await _documents(s, LFDI["A"], pv)
    await _documents(s, LFDI["B"], m.DeviceSnapshot("bat", 80, 3000.0, 0x0F, rtg_max_wh=10000.0,
                                                    rtg_max_charge_w=2500.0, rtg_max_discharge_w=3000.0))
    await _documents(s, LFDI["C"], m.DeviceSnapshot("pv", 4, 10000.0, 0x0F))
    await s.admin.create_control("doe", "group:feeder", start=T0, duration=900,
                                 base=build_control_base(export_limit_w=2000, import_limit_w=1500))
    for at in range(T0 - 3600, T0, 300):
        await _post(s, LFDI["A"], at, -1000.0)  # exporting: no native load seen
        await _post(s, LFDI["B"], at, 700.0 if at % 600 else 900.0)  # mean 800 W import
    await _post(s, LFDI["B"], T0 + 60, 5000.0)  # after start: not part of the forecast
    await s.close()
    return path


async def test_portfolio_and_offer_from_the_store_clip_to_each_period_doe(db: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{db}", run_migrations=False)
    try:
        found = await portfolio_from_store(store, group="feeder", start=T0, periods=6)
        everyone = await portfolio_from_store(store, group=None, start=T0, periods=6)
        with pytest.raises(ValueError, match="group: no group 'nowhere'"):
            await portfolio_from_store(store, group="nowhere", start=T0, periods=6)
        with pytest.raises(ValueError, match="periods"):
            await portfolio_from_store(store, group="feeder", start=T0, periods=0)
    finally:
        await store.close()
    pf = found.portfolio
    assert pf.site_ids == ["NMIA", "NMIB"] and found.skipped == ["NMID: no DERCapability: site left out"]
    assert everyone.portfolio.site_ids == ["NMIA", "NMIB", "NMIC"]
    # Capability: A least of rtgMaxW 5, setMaxW 4, statWAvail 3.5; B from rtgMaxCharge/DischargeRateW.
    assert pf.flex_gen[:, 0].tolist() == [3.5, 3.0] and pf.flex_load[:, 0].tolist() == [0.0, 2.5]
    assert pf.native_load[:, 0].tolist() == pytest.approx([0.0, 0.8])
    # The DOE applies to periods 1-3 only.
    assert pf.export_limit[0].tolist() == [2.0] * 3 + [np.inf] * 3
    assert pf.import_limit[1].tolist() == [1.5] * 3 + [np.inf] * 3

    built = build_offer(pf, "NMI", PRICES, PLAN)
    assert errors(validate(built.offer, built.capacity_load, built.capacity_gen)) == []
    # maxAvailGen: A 2 (clipped from 3.5) + B 2 (3 - 0.8 = 2.2 clipped) while the DOE holds; then 3.5 + 2.2.
    assert [p.max_avail_gen for p in built.offer.periods] == [4.0] * 3 + [5.7] * 3
    # maxAvailLoad: B's 0.8 + 2.5 = 3.3 kW import clipped to 1.5 kW, then free.
    assert [p.max_avail_load for p in built.offer.periods] == [-1.5] * 3 + [-3.3] * 3
    assert built.capacity_gen.tolist() == pytest.approx([5.7] * 6)
    # C (10 kW, no DOE) adds its whole capability when every site is in scope.
    all_built = build_offer(everyone.portfolio, "NMI", PRICES, PLAN)
    assert [p.max_avail_gen for p in all_built.offer.periods] == [14.0] * 3 + [15.7] * 3


def test_a_limit_that_changes_inside_a_period_applies_to_all_of_it() -> None:
    """The tightest limit at any moment of a 5-minute period bounds the whole period (L144, L471)."""
    seg = LimitSegment
    export, imp = _period_limits(
        [seg(T0 - 600, T0 + 450, 2000.0, None, "a", None), seg(T0 + 450, T0 + 1200, 500.0, 800.0, "b", "b")],
        T0, 5,
    )  # fmt: skip
    assert export.tolist() == [2000.0, 500.0, 500.0, 500.0, np.inf]
    assert imp.tolist() == [np.inf, 800.0, 800.0, 800.0, np.inf]


def _derlink(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "derlink", "boffer", "build", *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip


def test_cli_builds_from_the_server_database_and_names_the_option(db: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{db}"
    window = ["--group", "feeder", "--start", str(T0), "--periods", "4", "--load-on-up-to", "0",
              "--gen-on-from", "300"]  # fmt: skip
    done = _derlink("--from-server", "--database-url", url, *window)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [p["maxAvailGen"] for p in doc["periods"]] == [4.0, 4.0, 4.0, 5.7]
    assert [p["maxAvailLoad"] for p in doc["periods"]] == [-1.5, -1.5, -1.5, -3.3]
    assert "warning: NMID: no DERCapability" in done.stderr
    by_dir = _derlink("--from-server", "--data-dir", str(db.parent), *window)
    assert by_dir.returncode == 0 and json.loads(by_dir.stdout) == doc

    empty = tmp_path / "not-derlink.sqlite3"
    empty.write_bytes(b"")
    before = db.stat().st_mtime_ns
    bad = {
        ("--from-server",): "--from-server: give exactly one of --database-url or --data-dir",
        ("--from-server", "--database-url", url, "--data-dir", str(db.parent)): "exactly one of",
        ("--from-server", "--database-url", url, str(tmp_path / "p.csv")): "not both",
        (): "portfolio: give a PORTFOLIO file, or --from-server",
        (str(tmp_path / "p.csv"), "--database-url", url): "--database-url: only with --from-server",
        ("--from-server", "--data-dir", str(tmp_path / "none")): "--data-dir: no server database",
        ("--from-server", "--database-url", url, "--group", "nowhere"): "group: no group 'nowhere'",
        ("--from-server", "--database-url", f"sqlite+aiosqlite:///{empty}"): "--database-url: cannot read",
    }
    for argv, message in bad.items():  # in-process: a subprocess each costs a second of imports
        with pytest.raises(SystemExit) as exit_:
            main(["boffer", "build", *argv])
        assert message in str(exit_.value.code), (argv, exit_.value.code)
    assert db.stat().st_mtime_ns == before  # read-only
