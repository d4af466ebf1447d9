"""`derlink demo` end to end, as a subprocess: the default scenario passes, a stuck inverter fails, Ctrl-C
shuts everything down.

The default and the stuck-inverter runs start together (module fixture) so the suite waits about one
demo's length. The default run uses ``--keep``: its JSON summary is checked against the server's SQLite
database directly (readings, DOE intervals, the emergency's Responses), with this file's own SQL and XML
parsing, not the demo's code.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
NS = {"s": "urn:ieee:std:2030.5:ns"}


@dataclass
class Run:
    proc: subprocess.Popen
    out: Path
    log: Path

    def wait(self, timeout: float = 150) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        return rc, self.log.read_text()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(tmp: Path, name: str, *args: str) -> Run:
    out = tmp / name
    log = tmp / f"{name}.log"
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "derlink", "demo", "--out", str(out), *args],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
        # A shell that starts the test run in the background leaves SIGINT ignored, and Python then never
        # turns Ctrl-C into KeyboardInterrupt: give the demo the terminal's default, as a user has.
        preexec_fn=_default_sigint,
    )  # fmt: skip
    return Run(proc, out, log)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("demo")
    started = {
        "default": start(tmp, "default", "--keep"),
        "stuck": start(tmp, "stuck", "--scenario", "stuck-inverter"),
    }
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _work_dir(output: str) -> Path:
    match = re.search(r"work dir: (\S+)", output)
    assert match, output
    return Path(match.group(1))


def _site_readings(db: Path, t0: int, t_end: int) -> list[tuple[int, float]]:
    """(time, W + import) of the site's power MirrorMeterReading, straight from the server's tables."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT r.time_start, r.value, mr.reading_type FROM readings r "
            "JOIN meter_readings mr ON mr.id = r.meter_reading_id "
            "WHERE r.time_start >= ? AND r.time_start < ?",
            (t0, t_end),
        ).fetchall()
    finally:
        con.close()
    out = []
    for at, value, rt_xml in rows:
        rt = etree.fromstring(rt_xml.encode())
        uom = rt.findtext("s:uom", namespaces=NS)
        flow = rt.findtext("s:flowDirection", namespaces=NS)
        if uom == "38" and flow == "1":
            mult = int(rt.findtext("s:powerOfTenMultiplier", default="0", namespaces=NS))
            out.append((at, value * 10.0**mult))
    return out


def test_default_demo_passes_and_its_figures_match_the_server_database(runs) -> None:
    rc, output = runs["default"].wait()
    assert rc == 0, output
    assert "PASS" in output
    png = runs["default"].out / "derlink-demo.png"
    js = runs["default"].out / "derlink-demo.json"
    assert f"plot: {png.resolve()}" in output and f"summary: {js.resolve()}" in output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    summary = json.loads(js.read_text())
    work = _work_dir(output)
    try:
        db = Path(summary["files"]["database"])
        assert db.is_file() and db.parent.parent == work.resolve()
        t0 = summary["scenario"]["t0_unix"]
        t_end = t0 + summary["scenario"]["wall_duration_s"]
        readings = _site_readings(db, t0, t_end)
        # Telemetry covered the scenario, outage included (delivered after it): postRate 1 s.
        assert len(readings) >= summary["scenario"]["wall_duration_s"] - 3
        assert summary["telemetry"]["site_readings"] == len(readings)
        assert summary["telemetry"]["outbox"] == {"pending_at_end": 0, "rejected": 0}
        times = sorted(t for t, _ in readings)
        assert max(b - a for a, b in itertools.pairwise(times)) <= 2, "a gap in the telemetry"

        # Recompute every interval's figures from the database with the tolerance of the issue.
        total = within = 0
        for interval in summary["intervals"]:
            judged = [w for t, w in readings if interval["judged_from_unix"] <= t < interval["end_unix"]]
            ok = 0
            for w in judged:
                fine = True
                if interval["export_limit_w"] is not None:
                    limit = interval["export_limit_w"]
                    fine &= -w <= limit + max(0.02 * limit, 100.0)
                if interval["import_limit_w"] is not None:
                    limit = interval["import_limit_w"]
                    fine &= w <= limit + max(0.02 * limit, 100.0)
                ok += fine
            assert interval["readings_judged"] == len(judged), interval
            assert interval["readings_within"] == ok, interval
            if judged:
                assert interval["max_export_w"] == pytest.approx(max(max(-w, 0.0) for w in judged))
            total, within = total + len(judged), within + ok
            assert interval["compliant"] is (ok == len(judged) if judged else None)
        comp = summary["compliance"]
        assert comp["readings_judged"] == total and comp["readings_within"] == within == total
        assert comp["intervals_judged"] >= 8 and comp["breached_intervals"] == []
        assert summary["passed"] is True
        # The head-end's own assessment (server.compliance.assess) of the same telemetry agrees.
        server = summary["server_assessment"]
        assert server["breaches"] == [] and server["intervals_judged"] >= 1

        con = sqlite3.connect(db)
        try:
            # The DOE intervals the JSON judged against are the ones the server holds.
            does = dict(con.execute("SELECT start, export_w FROM doe_intervals").fetchall())
            for interval in summary["intervals"]:
                if interval["source"] == "DOE" and interval["comms"] == "up":
                    start = max(s for s in does if s <= interval["start_unix"])
                    assert does[start] == interval["export_limit_w"], interval
            # The emergency: received, started, cancelled (the staged lift) Responses at the server.
            (mrid,) = [r["mrid"] for r in summary["responses"]]
            statuses = {
                row[0]
                for row in con.execute(
                    "SELECT r.status FROM responses r JOIN controls c ON c.id = r.control_id "
                    "WHERE c.mrid = ?",
                    (mrid,),
                )
            }
            assert statuses >= {1, 2, 6}
            (randomize,) = con.execute(
                "SELECT randomize_duration FROM controls WHERE mrid = ?", (mrid,)
            ).fetchone()
            assert randomize and randomize > 0, "the lift was staged (randomised restore)"
        finally:
            con.close()
        # The gateway went through the outage on its held schedule, then the default, then back.
        regimes = summary["gateway"]["regimes_seen"]
        assert regimes.index("HELD_SCHEDULE") < regimes.index("DEFAULT") < len(regimes) - 1
        assert regimes[-1] == "NORMAL"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_stuck_inverter_is_detected_and_the_breached_intervals_named(runs) -> None:
    rc, output = runs["stuck"].wait()
    assert rc == 1, output
    assert "FAIL" in output
    assert "breached interval 1 (11:00-11:30, DOE: export <= 3000 W" in output
    assert "breached interval 2 (11:30-12:00, DOE: export <= 1500 W" in output
    summary = json.loads((runs["stuck"].out / "derlink-demo.json").read_text())
    assert summary["passed"] is False
    assert summary["compliance"]["breached_intervals"] == [1, 2]
    # The head-end's assessment of the same stored telemetry, against what the server published, finds
    # breaches exactly where the demo did: inside intervals 1 and 2, none elsewhere.
    breached = [i for i in summary["intervals"] if i["compliant"] is False]
    server = summary["server_assessment"]["breaches"]
    assert server, summary["server_assessment"]
    for b in server:
        assert any(i["start_unix"] <= b["worst_at"] < i["end_unix"] for i in breached), b
        assert b["limit"] == "export"
    for i in breached:
        assert any(b["from"] < i["end_unix"] and i["start_unix"] < b["to"] for b in server), i
    assert (runs["stuck"].out / "derlink-demo.png").is_file()
    assert not _work_dir(output).exists(), "the work dir is removed without --keep"


def test_ctrl_c_shuts_everything_down(tmp_path: Path) -> None:
    run = start(tmp_path, "interrupted", "--no-live")
    deadline = time.monotonic() + 60
    while "playing" not in run.log.read_text():
        assert run.proc.poll() is None, run.log.read_text()
        assert time.monotonic() < deadline, "the demo did not start playing"
        time.sleep(0.2)
    time.sleep(2)  # mid-scenario: server, gateway, simulators, proxies all busy
    run.proc.send_signal(signal.SIGINT)
    t = time.monotonic()
    rc, output = run.wait(timeout=20)
    assert rc == 130, output
    assert time.monotonic() - t < 10
    assert "interrupted: everything was shut down" in output
    assert "Traceback" not in output and "Task was destroyed" not in output
    assert "Unclosed" not in output and "never awaited" not in output
    assert not _work_dir(output).exists(), "the throwaway PKI and database are removed"
    assert not (run.out / "derlink-demo.json").exists()
