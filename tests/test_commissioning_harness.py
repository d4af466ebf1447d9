"""Shared pieces for the commissioning tests (a pytest plugin; no tests here).

A bench is: a real PKI (the DNSP's CA), our utility server over real mutual TLS on 127.0.0.1 with the site
pre-registered out-of-band through its admin API, and a simulated PV + battery + meter site (real Modbus
TCP, accelerated clock, quick device responses).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from certs.pki import PkiPaths, init_pki, load_pki
from gateway.commissioning import Options
from gateway.commissioning.common import UI
from server.app import RunningServer, start_server
from server.config import ServerConfig
from simulators.config import default_site_config
from simulators.site import SimulatedSite

NMI = "4102000077"
DNSP_PIN = 246802


class RecordingUI:
    """A non-interactive UI that keeps what was shown (tests read it back)."""

    interactive = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def heading(self, text: str) -> None:
        self.lines.append(f"== {text}")

    def info(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(f"! {text}")

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self.lines.append(title)
        self.lines += [" | ".join(str(c) for c in row) for row in rows]

    def panel(self, title: str, lines: list[str]) -> None:
        self.lines.append(f"[{title}]")
        self.lines += lines

    def ask(self, prompt: str, default: str | None = None) -> str:
        raise AssertionError(f"non-interactive UI asked: {prompt}")

    def confirm(self, prompt: str, default: bool = True) -> bool:
        raise AssertionError(f"non-interactive UI asked: {prompt}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


_: type[UI] = RecordingUI  # RecordingUI satisfies the UI protocol


@pytest.fixture(scope="session")
def dnsp_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    directory = tmp_path_factory.mktemp("dnsp-pki")
    init_pki(directory)
    return load_pki(directory)


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    directory = tmp_path_factory.mktemp("foreign-pki")
    init_pki(directory, organisation="Some Other CA")
    return load_pki(directory)


def sim_config(**overrides: Any) -> Any:
    args: dict[str, Any] = dict(
        pv_available_w=4000.0, load_w=600.0, speed=10.0, response_delay_s=0.5, ramp_time_s=0.0
    )
    meter = overrides.pop("meter", True)
    args.update(overrides)
    cfg = default_site_config(**args)
    if not meter:
        cfg = replace(cfg, devices=[d for d in cfg.devices if d.kind != "meter"]).validate()
    return cfg


@dataclass
class Bench:
    tmp: Path
    pki: PkiPaths
    server: RunningServer
    sim: SimulatedSite
    extra_sims: list[SimulatedSite] = field(default_factory=list)

    @property
    def admin(self) -> Any:
        return self.server.store.admin

    @property
    def dcap_url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}/dcap"

    @property
    def work_dir(self) -> Path:
        return self.tmp / "commissioning"

    def scan(self, sim: SimulatedSite | None = None) -> list[str]:
        return sorted({f"{ep.host}:{ep.port}" for ep in (sim or self.sim).endpoints})

    def options(self, **overrides: Any) -> Options:
        values: dict[str, Any] = dict(
            work_dir=self.work_dir,
            scan=self.scan(),
            units="1-3",
            scan_timeout_s=0.5,
            sign_with_ca=self.pki.directory,
            pin=DNSP_PIN,
            nmi=NMI,
            export_limit_w=3000.0,
            fallback_export_w=1500.0,
            dcap_url=self.dcap_url,
            server_ca=self.pki.ca_chain,
            request_timeout_s=3.0,
            register_timeout_s=10.0,
            verify_window_s=4.0,
            telemetry_timeout_s=10.0,
            loop_period_s=0.5,
        )
        values.update(overrides)
        return Options(**values)

    async def register_site(self, lfdi: str, pin: int = DNSP_PIN) -> None:
        await self.admin.register_site(lfdi, pin=pin, nmi=None, label="commissioning test")

    def pv_limit_pct(self) -> float | None:
        """The limit the simulated PV inverter acts on now (after its response delay)."""
        status = self.sim.status()
        pv = next(d for d in status["devices"] if d["name"] == "pv")
        return pv.get("limit_pct")

    async def settled_pv_limit_pct(self, within: float = 3.0) -> float | None:
        """The PV limit once it stopped changing (writes take effect after the device's response delay)."""
        deadline = time.monotonic() + within
        last = self.pv_limit_pct()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now = self.pv_limit_pct()
            if now == last:
                return now
            last = now
        return last


def server_config(pki: PkiPaths, data_dir: Path) -> ServerConfig:
    return ServerConfig(
        data_dir=data_dir,
        port=0,
        admin_enabled=False,
        headend_enabled=False,
        cert_dir=pki.directory,
        notify_retry_initial=0.1,
        notify_retry_max=0.5,
        notify_timeout=2.0,
        notify_allow=["127.0.0.0/8"],  # the gateway listens on loopback
        poll_rate=1,
        post_rate=2,
    )


@contextlib.asynccontextmanager
async def make_bench(tmp: Path, pki: PkiPaths, **sim_overrides: Any) -> AsyncIterator[Bench]:
    sim = SimulatedSite(sim_config(**sim_overrides))
    server = await start_server(server_config(pki, tmp / "server"))
    await sim.start()
    bench = Bench(tmp, pki, server, sim)
    try:
        yield bench
    finally:
        await stop_server(server)
        await sim.stop()
        for extra in bench.extra_sims:
            await extra.stop()


async def stop_server(server: RunningServer) -> None:
    """Stop the server even when its notification task swallows one cancellation (seen on Python 3.11 when
    the cancel lands inside its store query); cancel again until the tasks are done, then stop."""
    deadline = time.monotonic() + 10
    while any(not t.done() for t in server.tasks) and time.monotonic() < deadline:
        for task in server.tasks:
            task.cancel()
        await asyncio.sleep(0.05)
    await server.stop()


@pytest.fixture
async def bench(tmp_path: Path, dnsp_pki: PkiPaths) -> AsyncIterator[Bench]:
    async with make_bench(tmp_path, dnsp_pki) as made:
        yield made
