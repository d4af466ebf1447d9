"""Gateway latency and control-loop cost, with baselines measured in the same run.

    /work/venv/bin/python benchmarks/gateway_latency.py [--notifications 120] [--starts 12] [--cpu-seconds 15]

1. Notification receipt -> Modbus write: our server (mutual TLS, subscriptions) publishes a control whose
   limit differs from the last one; the gateway (``GatewayRuntime``, subscribe mode) receives the
   Notification, decides, steps the closed loop and writes the inverter's PV limit. Measured from the
   listener's receipt of the Notification (timestamp taken on entry to its request handler) to the device's
   acknowledgement of the Modbus write (``runtime.latency_log``); the read-back that verifies the write is
   reported separately ("... verified"). Every notification changes the limit, so every one must produce a
   sample: the script reports how many did not, and why.
   Baseline: a bare pymodbus write round trip (one register) to the same simulator; the ratio is figure /
   baseline at the same percentile (lower is better).
2. DERControl start -> Modbus write: controls scheduled ahead (start times on whole seconds); measured from
   the control's start time to the write acknowledged by the device (only samples triggered by one of
   those start times count: the end of the last control is not a start).
   The simulated site runs in its own process, as a real inverter is its own device.
3. CPU of the closed loop for 8 devices (4 PV + 3 batteries + meter) at 1 Hz, with the simulator in a
   separate process: CPU ms per step and % of one core. Baseline: 8 bare pymodbus reads per second (one
   per device) over the same period.

Three processes, as in the field: the server (this one), the gateway, the simulated site.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from certs.pki import init_pki, issue_device_certificate, load_pki  # noqa: E402
from gateway.config import lfdi_from_cert_file, settings_from_dict  # noqa: E402
from gateway.control_loop import LoopConfig, SiteLimits  # noqa: E402
from gateway.runtime import GatewayRuntime, LatencySample  # noqa: E402
from gateway.site_runner import SiteRunner  # noqa: E402
from server.app import start_server  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.store import build_control_base  # noqa: E402

PIN = 424242


QUICK_ARGS = ["--notifications", "30", "--starts", "5", "--cpu-seconds", "5"]  # run_all.py --quick


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(name: str, values_s: list[float], baseline_s: list[float] | None = None) -> None:
    p50, p99 = pct(values_s, 50) * 1000, pct(values_s, 99) * 1000
    line = f"{name:<44} n={len(values_s):<4} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms"
    if baseline_s:
        b50, b99 = pct(baseline_s, 50) * 1000, pct(baseline_s, 99) * 1000
        line += f"   ratio vs baseline p50 x{p50 / b50:.1f}  p99 x{p99 / b99:.1f}"
    print(line, flush=True)
    # benchmarks/run_all.py convention (benchmarks/README.md)
    key = "_".join(name.lower().replace("->", " to ").replace(":", "").split())
    for q, value in (("p50", p50), ("p99", p99)):
        ratio = f" ratio={value / (pct(baseline_s, int(q[1:])) * 1000):.1f}" if baseline_s else ""
        goal = " goal=<=50" if q == "p99" and name == "notification receipt -> Modbus write" else ""
        print(f"RESULT {key}_{q} {value:.2f} ms{ratio}{goal}", flush=True)


def breakdown(samples: list[Any]) -> None:
    """Where the time goes: trigger -> decided -> step begins -> write acknowledged -> read back."""
    if not samples:
        return
    parts = {
        "trigger -> limits decided": [s.decided_at - s.trigger_at for s in samples],
        "decided -> step begins": [s.step_at - s.decided_at for s in samples],
        "step begins -> write acked": [s.acked_at - s.step_at for s in samples],
        "acked -> read back": [s.verified_at - s.acked_at for s in samples],
    }
    print("  p50: " + "   ".join(f"{k} {pct(v, 50) * 1000:.1f} ms" for k, v in parts.items()))
    print("  p99: " + "   ".join(f"{k} {pct(v, 99) * 1000:.1f} ms" for k, v in parts.items()))
    reused = sum(1 for s in samples if not s.read_devices)
    print(f"  {reused} of {len(samples)} steps wrote at once from the last period's readings")


async def bare_write_round_trips(host: str, port: int, unit: int, address: int, n: int) -> list[float]:
    client = AsyncModbusTcpClient(host, port=port)
    await client.connect()
    times = []
    try:
        value = (await client.read_holding_registers(address, count=1, device_id=unit)).registers[0]
        for _ in range(n):
            t = time.perf_counter()
            rr = await client.write_register(address, value, device_id=unit)
            times.append(time.perf_counter() - t)
            assert not rr.isError()
    finally:
        client.close()
    return times


SITE_DEVICES = [
    '[[device]]\nname = "pv"\nkind = "pv"\nunit_id = 1\nrated_w = 5000\nresponse_delay_s = 0.05\n'
    'ramp_time_s = 0\npv_profile = { kind = "constant", peak_w = 5000 }\n',
    '[[device]]\nname = "meter"\nkind = "meter"\nunit_id = 2\n',
]


async def latency_parts(tmp: Path, notifications: int, starts: int) -> None:
    async with sim_process(tmp, "latency-bench", SITE_DEVICES) as sim_port:
        await _latency_parts(tmp, notifications, starts, sim_port)


def gateway_process(data: dict[str, Any], tmp: str, conn: Any) -> None:
    """Child process: run the gateway until told to stop, then send back its latency samples."""
    import logging

    logging.basicConfig(level=logging.ERROR)

    async def run() -> None:
        gw = GatewayRuntime(settings_from_dict(data, Path(tmp)))
        await gw.start()
        assert gw.client is not None
        await gw.client.wait_ready(15)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        samples = [dataclasses.astuple(x) for x in gw.latency_log]
        conn.send((samples, list(gw.client.notification_latencies), gw.latency_unwritten))
        await gw.stop()

    asyncio.run(run())


async def _latency_parts(tmp: Path, notifications: int, starts: int, sim_port: int) -> None:
    pki_dir = tmp / "pki"
    init_pki(pki_dir)
    paths = load_pki(pki_dir)
    ident = issue_device_certificate(pki_dir, "bench-gw")
    server = await start_server(
        ServerConfig(data_dir=tmp / "server", port=0, admin_enabled=False, headend_enabled=False,
                     cert_dir=pki_dir, poll_rate=60, post_rate=60, notify_retry_initial=0.1,
                     notify_retry_max=0.5, notify_allow=["127.0.0.0/8"])
    )  # fmt: skip
    admin = server.store.admin
    await admin.register_site(ident.lfdi, pin=PIN)
    notifier = lfdi_from_cert_file(server.config.notify_files()[0])
    data = {
        "gateway": {"data_dir": str(tmp / "gw"), "lfdi": ident.lfdi},
        "server": {"dcap_url": f"{server.base_url}/dcap", "pin": PIN, "mode": "subscribe",
                   "notifier_lfdis": [notifier], "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "tls": {"cert": str(ident.chain_path), "key": str(ident.key_path), "ca": str(paths.ca_chain)},
        "device": [{"name": "pv", "role": "pv", "port": sim_port, "unit": 1},
                   {"name": "meter", "role": "meter", "port": sim_port, "unit": 2}],
        "installer_limits": {"export_limit_w": 10000},
        "comms_loss": {"export_limit_w": 1500, "comms_timeout_s": 600},
        "local_api": {"enabled": False},
    }  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=gateway_process, args=(data, str(tmp), child), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    try:
        assert await asyncio.wait_for(loop.run_in_executor(None, parent.recv), 60) == "ready"
        # baseline: the same simulator, a bare pymodbus write of one register (123 WMaxLimPct_WinTms)
        from gateway.devices import DeviceConnection

        async with DeviceConnection("127.0.0.1", sim_port, 1) as probe:
            await probe.scan()
            model = probe.model(123)
            address = model.address + model.point("WMaxLimPct_WinTms").offset
        baseline = await bare_write_round_trips("127.0.0.1", sim_port, 1, address, 300)
        report("baseline: bare pymodbus write round trip", baseline)

        target = f"site:{ident.lfdi}"
        last = ""
        for i in range(notifications):
            limit = 1000 + 1000 * (i % 2)
            # 20 s controls: the list the Notification carries stays at ~70 controls (more than a day of
            # 30-minute DOEs) and below the subscription limit (100), above which the gateway re-reads
            # the truncated list by GET (timed as a "schedule" change, not a notification)
            last = await admin.create_control(
                "emergency", target, duration=20, base=build_control_base(export_limit_w=limit)
            )
            await asyncio.sleep(0.3)
        await admin.cancel_control(last)
        await asyncio.sleep(1.0)
        first = int(time.time()) + 3
        for i in range(starts):
            limit = 2500 + 500 * (i % 2)
            await admin.create_control(
                "doe", target, start=first + i, duration=1, supersede=False,
                base=build_control_base(export_limit_w=limit),
            )  # fmt: skip
        await asyncio.sleep(first + starts + 2 - time.time())
        parent.send("stop")
        raw, receipt, unwritten = await asyncio.wait_for(loop.run_in_executor(None, parent.recv), 30)
    finally:
        proc.join(15)
        if proc.is_alive():
            proc.kill()
        await server.stop()
    samples = [LatencySample(*x) for x in raw]
    notes = [x for x in samples if x.kind == "notification"]
    start_times = {float(first + i) for i in range(starts)}
    timer = [x for x in samples if x.kind == "timer" and x.trigger_at in start_times]
    expected = notifications + 1  # each control changes the limit, and so does the final cancel
    print(
        f"  {len(notes)} samples for {expected} limit-changing notifications"
        f" ({unwritten} limit changes of any kind needed no write; other notifications carried no change)"
    )
    report("notification receipt -> Modbus write", [x.latency_s for x in notes], baseline)
    report("notification receipt -> write verified", [x.verified_at - x.trigger_at for x in notes], baseline)
    breakdown(notes)
    print(f"  (receipt -> core updated, client-side: p50 {pct(receipt, 50) * 1000:.2f} ms)")
    report("DERControl start -> Modbus write", [x.latency_s for x in timer], baseline)
    breakdown(timer)


SIM_TOML = """[site]
name = "{name}"
host = "127.0.0.1"
port = {port}
load = {{ kind = "constant", peak_w = 2000 }}
{devices}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def sim_process(tmp: Path, name: str, devices: list[str]) -> Any:
    """A simulated site in its own process (as a real inverter is its own device); yields its port."""
    port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(SIM_TOML.format(name=name, port=port, devices="\n".join(devices)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "derlink", "sim", "site", "--config", str(config),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        for _ in range(400):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def cpu_part(tmp: Path, seconds: float) -> None:
    devices = []
    for i in range(4):
        devices.append(f'[[device]]\nname = "pv{i}"\nkind = "pv"\nunit_id = {i + 1}\nrated_w = 5000\n'
                       f'response_delay_s = 0.1\nramp_time_s = 0\n'
                       f'pv_profile = {{ kind = "constant", peak_w = 4000 }}\n')  # fmt: skip
    for i in range(3):
        devices.append(f'[[device]]\nname = "bat{i}"\nkind = "battery"\nunit_id = {i + 5}\n'
                       f'response_delay_s = 0.1\nramp_time_s = 0\n')  # fmt: skip
    devices.append('[[device]]\nname = "meter"\nkind = "meter"\nunit_id = 8\n')
    async with sim_process(tmp, "cpu-bench", devices) as port:
        runner = await SiteRunner.connect(
            meter=("127.0.0.1", port, 8),
            pvs={f"pv{i}": ("127.0.0.1", port, i + 1) for i in range(4)},
            batteries={f"bat{i}": ("127.0.0.1", port, i + 5) for i in range(3)},
            config=LoopConfig(period_s=1.0),
        )
        runner.set_limits(SiteLimits(export_w=3000, import_w=5000))
        steps = int(seconds)
        await runner.step()  # warm up: first writes
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            await runner.step()
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))
        loop_cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await runner.close()

        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()
        cpu0, b_wall0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            for unit in range(1, 9):
                await client.read_holding_registers(40000, count=50, device_id=unit)
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))
        base_cpu, b_wall = time.process_time() - cpu0, time.perf_counter() - b_wall0
        client.close()
        print(
            f"{'closed loop, 8 devices at 1 Hz':<44} {loop_cpu / steps * 1000:8.2f} ms CPU/step   "
            f"{loop_cpu / wall * 100:5.2f} % of one core"
        )
        print(
            f"{'baseline: 8 bare pymodbus reads at 1 Hz':<44} {base_cpu / steps * 1000:8.2f} ms CPU/s      "
            f"{base_cpu / b_wall * 100:5.2f} % of one core   ratio x{loop_cpu / base_cpu:.1f}"
        )
        cpu_ratio = loop_cpu / base_cpu
        print(f"RESULT closed_loop_8_devices_cpu {loop_cpu / steps * 1000:.2f} ms/step ratio={cpu_ratio:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notifications", type=int, default=120)
    parser.add_argument("--starts", type=int, default=12)
    parser.add_argument("--cpu-seconds", type=float, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        print(f"gateway latency benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        await latency_parts(Path(tmp), args.notifications, args.starts)
        await cpu_part(Path(tmp), args.cpu_seconds)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
