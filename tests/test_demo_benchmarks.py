"""benchmarks/run_all.py: the RESULT convention is parsed, goals are checked, a failing script counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


def test_result_lines_parsed_and_goals_checked() -> None:
    ra = _run_all()
    figures = ra.parse_results(
        "some human output\n"
        "RESULT doe_ingest_seconds 41.8 s ratio=1.93 goal=<=60\n"
        "RESULT list_req_per_s 1552 req/s ratio=0.40 goal=ratio>=0.5\n"
        "RESULT cpu 3.2 ms/step ratio=x2.5\n"
        "RESULT broken notanumber s\n"
        "  RESULT p99 61 ms goal=<=50\n"
    )
    assert [f.name for f in figures] == ["doe_ingest_seconds", "list_req_per_s", "cpu", "p99"]
    assert figures[0].value == 41.8 and figures[0].unit == "s" and figures[0].ratio == 1.93
    assert [f.met for f in figures] == [True, False, None, False]
    assert figures[2].ratio == 2.5


def test_quick_args_read_without_importing(tmp_path: Path) -> None:
    ra = _run_all()
    script = tmp_path / "bench.py"
    script.write_text('import nonexistent_module\nQUICK_ARGS = ["--sites", "10"]\n')
    assert ra.quick_args(script) == ["--sites", "10"]
    assert ra.quick_args(ROOT / "benchmarks" / "doe_ingest.py") == ["--sites", "5000"]


def test_every_benchmark_prints_results_and_a_failing_script_fails(tmp_path: Path) -> None:
    ra = _run_all()
    for path in ra.discover(None):  # each script follows the convention (it has RESULT lines)
        assert "RESULT " in path.read_text(), path.name
    bad = tmp_path / "bad.py"
    bad.write_text("print('RESULT x 1 s goal=<=2')\nraise SystemExit(3)\n")
    run = ra.run_script(bad, [], timeout=30)
    assert run.returncode == 3 and run.figures[0].met is True and not run.ok
    good = tmp_path / "good.py"
    good.write_text("print('RESULT x 1 s ratio=0.5 goal=ratio<1')\n")
    assert ra.run_script(good, [], timeout=30).ok
