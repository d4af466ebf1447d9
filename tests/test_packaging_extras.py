"""Each part installs alone: `pip install derlink[gateway]` in a clean venv runs the gateway and its device
tests without the server's database drivers or matplotlib, and `derlink[server]` runs the server without
pymodbus. Real venvs, real pip (through the machine's package mirror), the wheel built from this tree."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("sqlalchemy", "asyncpg", "aiosqlite", "alembic")  # Jinja2 is shared: both serve pages
GATEWAY_ONLY = ("pymodbus", "sunspec2", "aiomqtt", "zeroconf", "segno")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT],
        check=True, capture_output=True,
    )
    (built,) = out.glob("derlink-*.whl")
    return built


@pytest.fixture(scope="module")
def venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clean venv per part, built side by side (pip mostly waits on the mirror, so two at once take
    about as long as one). Each holds only its extra, installed by this interpreter's pip."""
    wanted = {
        "gateway": (f"{wheel}[gateway]", "pytest>=8.0", "pytest-asyncio>=0.23"),
        "server": (f"{wheel}[server]",),
    }
    installs = {}
    for part, requirements in wanted.items():
        where = tmp_path_factory.mktemp(f"venv-{part}")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
        installs[part] = (where / "bin", subprocess.Popen(
            [sys.executable, "-m", "pip", "--python", where / "bin" / "python", "install", "-q",
             "--no-compile", *requirements],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))
    for part, (_bin_dir, pip) in installs.items():
        _out, err = pip.communicate(timeout=600)
        assert pip.returncode == 0, f"{part}: {err[-2000:]}"
    return {part: bin_dir for part, (bin_dir, _pip) in installs.items()}


def installed(bin_dir: Path, modules: tuple[str, ...]) -> dict[str, bool]:
    code = "import importlib.util as u, sys; print(*[u.find_spec(m) is not None for m in sys.argv[1:]])"
    out = subprocess.run([bin_dir / "python", "-c", code, *modules], capture_output=True, text=True,
                         check=True)
    return dict(zip(modules, [word == "True" for word in out.stdout.split()], strict=True))


def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_gateway_extra_runs_without_server_or_plot_deps(venvs: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = venvs["gateway"]
    absent = (*SERVER_ONLY, "matplotlib", "numpy")
    assert installed(bin_dir, absent) == dict.fromkeys(absent, False)
    assert installed(bin_dir, GATEWAY_ONLY) == dict.fromkeys(GATEWAY_ONLY, True)

    # Run from outside the tree, so that the installed wheel (not this checkout) is what starts.
    help_ = run(bin_dir / "derlink", "gateway", "--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert "status" in help_.stdout and "commission" in help_.stdout
    missing = run(bin_dir / "derlink", "gateway", "--config", tmp_path / "missing.toml", cwd=tmp_path)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "missing.toml" in missing.stderr

    # A part that is not installed says which extra to install, in one line.
    server = run(bin_dir / "derlink", "server", "run", cwd=tmp_path)
    assert server.returncode == 2
    assert server.stderr.strip().splitlines() == [
        "derlink server: sqlalchemy is not installed; install the part: pip install 'derlink[server]'"
    ]

    # The gateway's device tests, against real simulated SunSpec devices over Modbus TCP.
    tests = run(bin_dir / "python", "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                "tests/test_gateway_devices.py", cwd=ROOT, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    summary = tests.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), summary


def test_server_extra_runs_the_server_without_modbus(venvs: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = venvs["server"]
    absent = (*GATEWAY_ONLY, "matplotlib", "numpy")
    assert installed(bin_dir, absent) == dict.fromkeys(absent, False)
    assert installed(bin_dir, SERVER_ONLY) == dict.fromkeys(SERVER_ONLY, True)

    derlink = bin_dir / "derlink"
    assert run(derlink, "ctl", "--help", cwd=tmp_path).returncode == 0
    data = tmp_path / "data"
    init = run(derlink, "certs", "init", "--dir", data / "pki", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen(
        [derlink, "server", "run", "--data-dir", data, "--port", "0", "--admin-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("derlink server: 2030.5 on https://"), line + server.stderr.read()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert (data / "derlink.sqlite3").is_file()
