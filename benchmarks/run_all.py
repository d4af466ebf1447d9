"""Run every benchmark in benchmarks/ and print one table of figures and ratios.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout 1800] [--json results.json]

Each ``benchmarks/*.py`` script (not this one, not ``_*.py``) runs in its own process from the repository
root. Its figures are the lines it prints in this form (see benchmarks/README.md)::

    RESULT <name> <value> <unit> [ratio=<number>] [goal=<op><number> | goal=ratio<op><number>]

``ratio`` is the figure against a baseline measured in the same run; ``goal`` is checked (``<=``, ``>=``,
``<``, ``>``) against the value or, with the ``ratio`` prefix, against the ratio. ``--quick`` passes the
script's module-level ``QUICK_ARGS`` list (read without importing the script) for a short smoke run.
Exit status: 0 if every script exited 0 and met its goals, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = re.compile(r"^RESULT\s+(?P<name>\S+)\s+(?P<value>\S+)\s+(?P<unit>\S+)(?P<rest>(?:\s+\S+=\S+)*)\s*$")
GOAL = re.compile(r"^(?P<what>ratio)?(?P<op><=|>=|<|>)(?P<number>[-+0-9.eE]+)$")
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    ratio: float | None = None
    goal: str | None = None
    met: bool | None = None


@dataclass
class ScriptRun:
    script: str
    args: list[str]
    returncode: int | None
    seconds: float
    figures: list[Figure] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(f.met is not False for f in self.figures)


def parse_results(text: str) -> list[Figure]:
    """The RESULT lines of a benchmark's output (other lines are ignored)."""
    figures = []
    for line in text.splitlines():
        m = RESULT.match(line.strip())
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        extras = dict(part.split("=", 1) for part in m["rest"].split())
        ratio = None
        if "ratio" in extras:
            try:
                ratio = float(extras["ratio"].lstrip("x"))
            except ValueError:
                ratio = None
        fig = Figure(m["name"], value, m["unit"], ratio, extras.get("goal"))
        if fig.goal:
            g = GOAL.match(fig.goal)
            if g:
                subject = fig.ratio if g["what"] else fig.value
                fig.met = None if subject is None else OPS[g["op"]](subject, float(g["number"]))
        figures.append(fig)
    return figures


def quick_args(path: Path) -> list[str]:
    """The script's module-level ``QUICK_ARGS = [...]``, without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "QUICK_ARGS" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
    return []


def discover(only: list[str] | None) -> list[Path]:
    scripts = sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    if only:
        wanted = {o.removesuffix(".py") for o in only}
        unknown = wanted - {p.stem for p in scripts}
        if unknown:
            raise SystemExit(f"--only: no benchmark named {', '.join(sorted(unknown))}")
        scripts = [p for p in scripts if p.stem in wanted]
    return scripts


def run_script(path: Path, args: list[str], timeout: float) -> ScriptRun:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(path), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output += f"\n(timed out after {timeout:g} s)"
        rc = None
    run = ScriptRun(path.stem, args, rc, time.perf_counter() - started, parse_results(output))
    run.tail = [line for line in output.splitlines() if line.strip()][-8:]
    return run


def print_table(runs: list[ScriptRun]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="derlink benchmarks", title_justify="left")
    for name, justify in (("benchmark", "left"), ("figure", "left"), ("value", "right"), ("unit", "left"),
                          ("ratio vs baseline", "right"), ("goal", "left"), ("", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for run in runs:
        status = (
            "exit 0"
            if run.returncode == 0
            else "timed out"
            if run.returncode is None
            else f"exit {run.returncode}"
        )
        if not run.figures:
            table.add_row(
                run.script, f"[yellow]no RESULT lines[/] ({status}, {run.seconds:.0f} s)", "", "", "", "", ""
            )
            continue
        for i, f in enumerate(run.figures):
            mark = "" if f.met is None else "[green]met[/]" if f.met else "[red]NOT met[/]"
            table.add_row(
                run.script if i == 0 else "",
                f.name,
                f"{f.value:,.6g}",
                f.unit,
                "" if f.ratio is None else f"{f.ratio:.2f}",
                f.goal or "",
                mark,
            )
        if run.returncode != 0:
            table.add_row("", f"[red]{status}[/]", "", "", "", "", "")
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)
    for run in runs:
        if run.returncode != 0 or not run.figures:
            status = "timed out" if run.returncode is None else f"exit {run.returncode}"
            print(f"\n--- {run.script} ({status}), last lines:")
            print("\n".join(run.tail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass each script's QUICK_ARGS (smoke run)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (file stems)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script (default 1800)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    runs = []
    for path in discover(args.only):
        extra = quick_args(path) if args.quick else []
        print(f"running {path.name} {' '.join(extra)}".rstrip(), flush=True)
        run = run_script(path, extra, args.timeout)
        print(f"  {len(run.figures)} figures in {run.seconds:.1f} s (exit {run.returncode})", flush=True)
        runs.append(run)
    print()
    print_table(runs)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
