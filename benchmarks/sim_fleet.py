"""Benchmark: start a fleet of simulated sites in one process; memory, start-up time, CPU per site.

Baseline, measured in the same run: bare pymodbus Modbus TCP servers (one SimDevice holding the
same number of registers as one simulated site, no physics, no SunSpec layer). The ratios say what
our site costs on top of the pymodbus server it is built on.

    /work/venv/bin/python benchmarks/sim_fleet.py [--sites 1000] [--baseline 100] [--family legacy]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.config import default_site_config, with_devices
from simulators.devices import GROUP_COUNTS, model_chain
from simulators.site import (
    SimClock,
    SimulatedFleet,
    SimulatedSite,
    process_cpu_s,
    process_rss_bytes,
)
from simulators.sunspec_map import build_layout

QUICK_ARGS = ["--sites", "100", "--baseline", "100"]  # benchmarks/run_all.py --quick


async def _bare_servers(n: int, registers: int) -> tuple[list[ModbusTcpServer], float, int, float]:
    gc.collect()
    rss0, cpu0, t0 = process_rss_bytes(), process_cpu_s(), time.perf_counter()
    servers = []
    for _ in range(n):
        dev = SimDevice(id=1, simdata=[SimData(40000, values=[0] * registers, datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(dev, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
    return servers, time.perf_counter() - t0, process_rss_bytes() - rss0, process_cpu_s() - cpu0


async def _read_all(fleet: SimulatedFleet, sample: list[SimulatedSite]) -> tuple[float, list[float]]:
    """Read the meter W register of each sampled site over Modbus; returns wall time and latencies."""
    latencies: list[float] = []

    async def one(site: SimulatedSite) -> None:
        ep = site.endpoint("meter")
        slot = site.devices["meter"].layout.point("201.W")
        client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=5, retries=0)
        await client.connect()
        t = time.perf_counter()
        rr = await client.read_holding_registers(40000 + slot.offset, count=1, device_id=ep.unit_id)
        latencies.append(time.perf_counter() - t)
        assert not rr.isError()
        client.close()

    t0 = time.perf_counter()
    for i in range(0, len(sample), 50):  # 50 concurrent clients at a time
        await asyncio.gather(*(one(s) for s in sample[i : i + 50]))
    return time.perf_counter() - t0, latencies


async def main(n_sites: int, n_baseline: int, family: str) -> None:
    base = with_devices(default_site_config(), family=family)
    regs_per_site = sum(build_layout(model_chain(d), GROUP_COUNTS).size for d in base.devices)

    servers, b_time, b_rss, b_cpu = await _bare_servers(n_baseline, regs_per_site)
    bare_time, bare_rss, bare_cpu = b_time / n_baseline, b_rss / n_baseline, b_cpu / n_baseline

    gc.collect()
    rss0, cpu0, t0 = process_rss_bytes(), process_cpu_s(), time.perf_counter()
    configs = [replace(base, name=f"site{i:04d}") for i in range(n_sites)]
    fleet = SimulatedFleet(configs, clock=SimClock(1.0))
    await fleet.start()
    f_time = time.perf_counter() - t0
    f_rss = process_rss_bytes() - rss0
    f_cpu = process_cpu_s() - cpu0

    # idle CPU over 3 s (no timers run per site: physics is advanced lazily on access)
    c0, w0 = process_cpu_s(), time.perf_counter()
    await asyncio.sleep(3.0)
    idle_pct = (process_cpu_s() - c0) / (time.perf_counter() - w0) * 100

    sample = random.Random(1).sample(fleet.sites, min(200, n_sites))
    c0 = process_cpu_s()
    read_wall, lat = await _read_all(fleet, sample)
    read_cpu = process_cpu_s() - c0
    lat.sort()

    site_time, site_rss, site_cpu = f_time / n_sites, f_rss / n_sites, f_cpu / n_sites
    print(
        f"fleet: {n_sites} sites ({family}: PV + battery + meter, {regs_per_site} registers/site, "
        f"one port per site), 2-core machine"
    )
    print(f"  start-up          {f_time:8.2f} s total   {site_time * 1000:8.2f} ms/site")
    print(f"  RSS added         {f_rss / 2**20:8.1f} MiB     {site_rss / 1024:8.1f} KiB/site")
    print(f"  CPU at start-up   {f_cpu:8.2f} s       {site_cpu * 1000:8.2f} ms/site")
    print(f"  CPU idle          {idle_pct:8.2f} %       {idle_pct / n_sites:8.4f} %/site")
    print(
        f"  reads of {len(sample)} sites' meters (connect+read, 50 concurrent): {read_wall:.2f} s wall, "
        f"{read_cpu * 1000 / len(sample):.2f} ms CPU/site, latency p50 {lat[len(lat) // 2] * 1000:.1f} ms "
        f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms"
    )
    print(f"  process RSS now   {process_rss_bytes() / 2**20:8.1f} MiB")
    print(
        f"baseline: {n_baseline} bare pymodbus TCP servers, one SimDevice of {regs_per_site} registers each"
    )
    print(
        f"  start-up {bare_time * 1000:.2f} ms/server   RSS {bare_rss / 1024:.1f} KiB/server   "
        f"CPU {bare_cpu * 1000:.2f} ms/server"
    )
    print("ratio site / bare server:")
    print(
        f"  start-up x{site_time / bare_time:.2f}   RSS x{site_rss / max(bare_rss, 1):.2f}   "
        f"CPU x{site_cpu / max(bare_cpu, 1e-9):.2f}"
    )
    # benchmarks/run_all.py convention (benchmarks/README.md)
    print(f"RESULT sim_site_startup {site_time * 1000:.2f} ms/site ratio={site_time / bare_time:.2f}")
    print(f"RESULT sim_site_rss {site_rss / 1024:.1f} KiB/site ratio={site_rss / max(bare_rss, 1):.2f}")
    cpu_ratio = site_cpu / max(bare_cpu, 1e-9)
    print(f"RESULT sim_site_cpu_startup {site_cpu * 1000:.2f} ms/site ratio={cpu_ratio:.2f}")

    await fleet.stop()
    for s in servers:
        await s.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=1000)
    parser.add_argument("--family", choices=("legacy", "der"), default="legacy")
    a = parser.parse_args()
    asyncio.run(main(a.sites, a.baseline, a.family))
