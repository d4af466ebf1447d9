"""One command: the public CSIP-AUS server test procedures (cactus) against ``derlink server run``.

    python -m conformance.run                  # every server procedure except S-ALL-50 (72 hours)
    python -m conformance.run S-ALL-01 S-ALL-11
    python -m conformance.run --fast           # the subset CI runs

For each procedure: a fresh data directory, ``derlink server run`` with native mutual TLS on a lab PKI that
this module writes with ``cryptography`` (conformance/pki.py, not ``derlink certs``), then cactus-client in
its own venv (Python >= 3.12) with our admin plugin (conformance/cactus_plugin.py, head-end API only) and
our notification sink. Results go to ``conformance/out/results.json`` and a Markdown table ``results.md``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conformance.pki import LabPki

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv-cactus"
#: Pinned: the procedures are the spec of this run; a new release is a deliberate upgrade.
CACTUS_PACKAGES = ("cactus-client==1.3.3", "cactus-test-definitions==1.15.0", "cactus-schema==1.4.0")
LONG = {"S-ALL-50"}  # Extended Operations: 72 hours of simulated client
#: Fast subset for CI: registration, authorisation, telemetry, one control, one default, a subscription.
FAST = ("S-ALL-01", "S-ALL-03", "S-ALL-11", "S-ALL-19", "S-ALL-55")
PEN = 40732
RATE = 60  # default pollRate/postRate of the lab server: the procedures wait whole posting intervals
_LIVE: set[subprocess.Popen] = set()  # servers and drivers, ended if the runner is stopped


def _stop_all(signum: int, _frame: object) -> None:
    for proc in list(_LIVE):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(128 + signum)


def find_python312() -> str | None:
    """A CPython >= 3.12 for the cactus venv: $CACTUS_PYTHON, then PATH, then pyenv's versions."""
    candidates = [os.environ.get("CACTUS_PYTHON", "")]
    candidates += [shutil.which(n) or "" for n in ("python3.13", "python3.12")]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.1[2-9]*/bin/python3")), reverse=True)
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"), reverse=True)
    for c in candidates:
        if not c or not Path(c).exists():
            continue
        out = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info >= (3, 12))"], capture_output=True, text=True
        )
        if out.stdout.strip() == "True":
            return c
    return None


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run(
            [python, "-c", "import cactus_client, cactus_test_definitions"], capture_output=True
        )
        if check.returncode == 0:
            return python
    interpreter = find_python312()
    if interpreter is None:
        raise SystemExit("cactus-client needs Python >= 3.12: none found (set CACTUS_PYTHON)")
    subprocess.run([interpreter, "-m", "venv", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *CACTUS_PACKAGES], check=True)
    return python


def procedures(python: Path) -> list[str]:
    out = subprocess.run(
        [
            python,
            "-c",
            "from cactus_test_definitions.server.test_procedures import TestProcedureId as T;"
            "print(' '.join(t.value for t in T))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"derlink server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"derlink server did not listen on {port} within {timeout}s")


class Lab:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.pki = LabPki(out / "pki")
        self.server = self.pki.leaf("server", "derlink utility server", server=True)
        self.sink = self.pki.leaf("sink", "notification sink", server=True)
        self.dev1 = self.pki.leaf("device1", "cactus device 1")
        self.dev2 = self.pki.leaf("device2", "cactus device 2")
        self.agg = self.pki.leaf("aggregator1", "cactus aggregator 1", device=False)
        self.agg_der = self.pki.leaf("aggregator1-der", "aggregator 1 site")  # only its LFDI is used
        self.token = secrets.token_urlsafe(24)

    def server_config(self, data: Path, port: int, headend_port: int) -> Path:
        path = data / "server.toml"
        path.write_text(
            "\n".join(
                [
                    f'data_dir = "{data}"',
                    f"port = {port}",
                    "admin_enabled = false",
                    f"headend_port = {headend_port}",
                    f'server_cert = "{self.server.cert}"',
                    f'server_key = "{self.server.key}"',
                    f'ca_cert = "{self.pki.ca_bundle}"',
                    f"iana_pen = {PEN}",
                    f"poll_rate = {RATE}",
                    f"post_rate = {RATE}",
                    "notify_retry_initial = 1.0",
                    "notify_retry_max = 5.0",
                    'notify_allow = ["127.0.0.0/8"]',
                    f'headend_tokens = [{{name = "cactus", token = "{self.token}", role = "operator"}}]',
                ]
            )
            + "\n"
        )
        return path

    def cactus_config(self, data: Path, port: int, sink_admin: int, sink_hook: int) -> Path:
        out_dir = data / "cactus"
        out_dir.mkdir()

        def client(cid: str, kind: str, leaf, lfdi: str, sfdi: int, pin: int) -> dict:
            return {
                "id": cid,
                "type": kind,
                "certificate_file": str(leaf.cert),
                "key_file": str(leaf.key),
                "lfdi": lfdi,
                "sfdi": sfdi,
                "pen": PEN,
                "pin": pin,
                "max_watts": 5000,
            }

        config = {
            "output_dir": str(out_dir),
            "server": {
                "device_capability_uri": f"https://127.0.0.1:{port}/dcap",
                "verify_ssl": True,
                "verify_host_name": True,
                "serca_pem_file": str(self.pki.ca_bundle),
                "notification_uri": f"http://127.0.0.1:{sink_admin}/",
                "pen": PEN,
            },
            "clients": [
                client("device1", "device", self.dev1, self.dev1.lfdi, self.dev1.sfdi, 111115),
                client("device2", "device", self.dev2, self.dev2.lfdi, self.dev2.sfdi, 222220),
                client("aggregator1", "aggregator", self.agg, self.agg_der.lfdi, self.agg_der.sfdi, 333335),
            ],
        }
        path = data / "cactus.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML: cactus reads it as its .cactus.yaml
        return path

    def run_one(self, python: Path, procedure: str, timeout: int) -> dict:
        data = self.out / "runs" / procedure
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        port, headend, sink_admin, sink_hook = (free_port() for _ in range(4))
        server_log = (data / "server.log").open("w")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "derlink",
                "server",
                "run",
                "--config",
                str(self.server_config(data, port, headend)),
            ],
            cwd=ROOT,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started = time.monotonic()
        try:
            wait_port(port, server)
            wait_port(headend, server)
            result_path = data / "result.json"
            env = dict(
                os.environ,
                DERLINK_HEADEND_URL=f"http://127.0.0.1:{headend}",
                DERLINK_HEADEND_TOKEN=self.token,
            )
            with (data / "cactus.out").open("w") as cactus_out:
                driver = subprocess.Popen(
                    [
                        python, str(HERE / "cactus_driver.py"),
                        "--config", str(self.cactus_config(data, port, sink_admin, sink_hook)),
                        "--procedure", procedure, "--result", str(result_path), "--timeout", str(timeout),
                        "--ca", str(self.pki.ca_bundle), "--sink-cert", str(self.sink.cert),
                        "--sink-key", str(self.sink.key),
                        "--admin-port", str(sink_admin), "--webhook-port", str(sink_hook),
                    ],
                    cwd=data, env=env, stdout=cactus_out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
                _LIVE.add(driver)
                try:
                    driver.wait(timeout + 120)
                finally:
                    if driver.poll() is None:
                        os.killpg(driver.pid, signal.SIGKILL)
                    _LIVE.discard(driver)
            if result_path.exists():
                result = json.loads(result_path.read_text())
            else:
                result = {
                    "procedure": procedure,
                    "status": "ERROR",
                    "why": f"no result; see {data}/cactus.out",
                }
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result = {"procedure": procedure, "status": "ERROR", "why": str(exc)}
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
            server_log.close()
            _LIVE.discard(server)
        result["seconds"] = round(time.monotonic() - started, 1)
        return result


def table(results: list[dict]) -> str:
    lines = ["| procedure | result | steps | first failing step: why |", "|---|---|---|---|"]
    for r in results:
        steps = f"{r.get('steps_passed', '-')}/{r.get('steps', '-')}"
        why = (
            ""
            if r["status"] == "PASSED"
            else f"{r.get('failed_step') or ''}: {r.get('why') or r.get('note') or ''}"
        )
        why = why.replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {r['procedure']} | {r['status'].lower()} | {steps} | {why} |")
    passed = sum(r["status"] == "PASSED" for r in results)
    lines.append("")
    lines.append(f"{passed} of {len(results)} procedures pass.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conformance/run", description=__doc__.split("\n")[0])
    parser.add_argument("procedures", nargs="*", help="procedure IDs (default: all but S-ALL-50)")
    parser.add_argument("--fast", action="store_true", help=f"the CI subset: {' '.join(FAST)}")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--timeout", type=int, default=1200, help="per-procedure timeout (s)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="procedures run side by side (each its own server)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_all)
    signal.signal(signal.SIGINT, _stop_all)
    python = ensure_venv()
    wanted = list(FAST) if args.fast else args.procedures or [p for p in procedures(python) if p not in LONG]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    lab = Lab(args.out)
    results: list[dict] = []

    def one(procedure: str) -> None:
        result = lab.run_one(python, procedure, args.timeout)
        results.append(result)
        results.sort(key=lambda r: wanted.index(r["procedure"]))
        print(
            f"{procedure}: {result['status']} {result.get('failed_step') or ''} {result.get('why') or ''}"[
                :400
            ],
            flush=True,
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "results.md").write_text(table(results) + "\n")

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(one, wanted))
    print(table(results))
    return 0 if all(r["status"] == "PASSED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
