"""Shared pieces for the gateway runtime and end-to-end tests (a pytest plugin; no tests here).

A "lab" is: a real PKI, our utility server over real mutual TLS on 127.0.0.1, a TCP proxy the test
controls between gateway and server, a simulated SunSpec site (real Modbus TCP), and the gateway's
site.toml pointing at all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certs.pki import DeviceIdentity, PkiPaths, init_pki, issue_device_certificate, load_pki
from gateway.config import GatewaySettings, lfdi_from_cert_file, settings_from_dict, to_toml
from gateway.runtime import GatewayRuntime
from server.app import RunningServer, start_server
from server.config import ServerConfig
from simulators.config import DeviceConfig, default_site_config
from simulators.link_proxy import LinkProxy
from simulators.site import SimulatedSite

PIN = 135791


@dataclass
class Pki:
    paths: PkiPaths
    gateway: DeviceIdentity


@pytest.fixture(scope="session")
def gw_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("gwpki")
    init_pki(directory)
    return Pki(load_pki(directory), issue_device_certificate(directory, "gateway-1"))


async def wait_until(
    predicate: Callable[[], Any], within: float, what: str = "condition", every: float = 0.05
) -> float:
    """Poll ``predicate`` (sync or async) until truthy; returns time.time() when it became true."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.time()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


def tolerance(limit_w: float) -> float:
    """Issue 6: the metered export must be within max(2 %, 100 W) of the limit."""
    return max(0.02 * limit_w, 100.0)


@dataclass
class Lab:
    tmp: Path
    pki: Pki
    server: RunningServer
    proxy: LinkProxy
    sim: SimulatedSite
    runtimes: list[GatewayRuntime] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def admin(self) -> Any:
        return self.server.store.admin

    @property
    def lfdi(self) -> str:
        return self.pki.gateway.lfdi

    @property
    def target(self) -> str:
        return f"site:{self.lfdi}"

    @property
    def notifier_lfdi(self) -> str:
        """The certificate our server presents when it delivers Notifications."""
        chain, _key, _ca = self.server.config.notify_files()
        return lfdi_from_cert_file(chain)

    def export_w(self) -> float:
        return -float(self.sim.meter_reading()["w"])

    def site_toml(self, **overrides: Any) -> dict[str, Any]:
        """The gateway's site.toml as a dict; ``overrides`` replace whole sections (or merge if dicts)."""
        ident = self.pki.gateway
        devices = []
        for ep in self.sim.endpoints:
            role = ep.kind
            devices.append(
                {"name": ep.name, "role": role, "host": ep.host, "port": ep.port, "unit": ep.unit_id}
            )
        data: dict[str, Any] = {
            "gateway": {"data_dir": str(self.tmp / "gw-data"), "lfdi": ident.lfdi},
            "server": {
                "dcap_url": f"https://127.0.0.1:{self.proxy.port}/dcap",
                "pin": PIN,
                "mode": "subscribe",
                "request_timeout_s": 2.0,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.5,
                "default_post_rate_s": 2,
                "notifier_lfdis": [self.notifier_lfdi],
            },
            "tls": {
                "cert": str(ident.chain_path),
                "key": str(ident.key_path),
                "ca": str(self.pki.paths.ca_chain),
            },
            "device": devices,
            "installer_limits": {"export_limit_w": 10000},
            "comms_loss": {"export_limit_w": 1500, "comms_timeout_s": 2, "persistent_loss_s": 10},
            "control_loop": {"period_s": 0.5, "modbus_timeout_s": 1.0},
            "local_api": {"port": 0, "token": self.token},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    def write_site_toml(self, **overrides: Any) -> Path:
        path = self.tmp / "site.toml"
        path.write_text(to_toml(self.site_toml(**overrides)))
        return path

    def settings(self, **overrides: Any) -> GatewaySettings:
        return settings_from_dict(self.site_toml(**overrides), self.tmp)

    async def gateway(self, **overrides: Any) -> GatewayRuntime:
        runtime = GatewayRuntime(self.settings(**overrides))
        self.runtimes.append(runtime)
        await runtime.start()
        return runtime


def _server_config(pki: Pki, data_dir: Path, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        port=0,
        admin_enabled=False,
        headend_enabled=False,
        cert_dir=pki.paths.directory,
        notify_retry_initial=0.1,
        notify_retry_max=0.5,
        notify_timeout=2.0,
        notify_allow=["127.0.0.0/8"],  # the gateway listens on loopback
        poll_rate=1,
        post_rate=2,
    )
    values.update(overrides)
    return ServerConfig(**values)


@contextlib.asynccontextmanager
async def make_lab(
    tmp: Path,
    pki: Pki,
    *,
    sim_kwargs: dict[str, Any] | None = None,
    extra_devices: list[DeviceConfig] | None = None,
    der_count: int = 1,
    **server_overrides: Any,
) -> AsyncIterator[Lab]:
    """``extra_devices`` join the simulated site (e.g. controllable loads); the site is registered with
    ``der_count`` DER instances."""
    sim_args = dict(pv_available_w=5000.0, load_w=500.0, battery=False, response_delay_s=0.1, ramp_time_s=0.0)
    sim_args.update(sim_kwargs or {})
    config = default_site_config(**sim_args)
    if extra_devices:
        config = dataclasses.replace(config, devices=config.devices + extra_devices).validate()
    sim = SimulatedSite(config)
    server = await start_server(_server_config(pki, tmp / "server", **server_overrides))
    proxy = LinkProxy(server.port)
    await proxy.start()
    await sim.start()
    await server.store.admin.register_site(pki.gateway.lfdi, pin=PIN, nmi="4102000077", der_count=der_count)
    lab = Lab(tmp, pki, server, proxy, sim)
    try:
        yield lab
    finally:
        for runtime in lab.runtimes:
            with contextlib.suppress(Exception):
                await runtime.stop()
        await proxy.stop()
        await server.stop()
        await sim.stop()


@pytest.fixture
async def lab(tmp_path: Path, gw_pki: Pki) -> AsyncIterator[Lab]:
    async with make_lab(tmp_path, gw_pki) as made:
        yield made
