"""`derlink demo`: the whole system on one machine, playing a scenario, judged at the end.

What runs (all in this process, on one asyncio loop, each part talking to the others over real sockets):

* a throwaway PKI (``certs.pki``) and data directory in a temp dir (kept with ``--keep``);
* the utility server (``server.app.start_server``: 2030.5 over mutual TLS, SQLite, head-end JSON API), on
  free loopback ports;
* a simulated site (``simulators.site.SimulatedSite``: PV inverter, battery, meter over Modbus TCP);
* the real gateway runtime (``gateway.runtime.GatewayRuntime``) loaded from a ``site.toml`` written here,
  registered out of band through the head-end API;
* two TCP proxies the demo controls: gateway -> server (2030.5 requests) and server -> gateway
  (notifications: the gateway advertises 127.0.0.2, where the proxy listens). An outage cuts both.

The scenario's operator actions go through the head-end API as an operator would issue them (bulk DOE
upload, default control, emergency command, staged lift); the HEMS setpoint goes through the gateway's
local API; faults through the simulator. At the end the site telemetry the server stored is judged against
the limits that applied (:mod:`derlink.demo.compliance`), and a PNG and a JSON summary are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from derlink.demo.compliance import Verdict, check_responses, judge, required_statuses, rules_of
from derlink.demo.samples import Sample
from derlink.demo.scenario import Scenario, Segment, applicable_segments, emergency_end
from simulators.link_proxy import LinkProxy

log = logging.getLogger("derlink.demo")

PIN = 246810
NMI = "4102000001"
SAMPLE_EVERY_S = 0.25
NOTIFY_HOST = "127.0.0.2"  # the gateway advertises this; the downlink proxy listens here


class DemoError(RuntimeError):
    """The demo could not set itself up (not a compliance failure)."""


def _downlink_listener_port() -> int | None:
    """A port free on both 127.0.0.2 and 127.0.0.1 (proxy on .2, gateway listener on .1), or None if
    127.0.0.2 is not usable here (e.g. macOS without an alias): then the gateway polls instead."""
    for _ in range(20):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((NOTIFY_HOST, 0))
                port = a.getsockname()[1]
                b.bind(("127.0.0.1", port))
                return port
        except OSError:
            continue
    return None


# ------------------------------------------------------------------------------------------ helpers


async def _already_done() -> dict[str, Any]:
    return {}


def _profile_csv(s: Scenario, points: tuple[tuple[float, float], ...]) -> str:
    """The scenario's [minute, W] points as a simulator CSV profile (second of the local day, W)."""
    base = s.start_second_of_day
    rows = [(max(0, base - 3600), points[0][1])]
    rows += [(base + m * 60.0, w) for m, w in points]
    rows.append((min(86399, base + s.end_min * 60 + 3600), points[-1][1]))
    out = io.StringIO()
    out.write("# second of day, W (written by derlink demo from the scenario)\n")
    seen: set[float] = set()
    for sec, w in rows:
        if sec in seen:
            continue
        seen.add(sec)
        out.write(f"{sec:.0f},{w:.1f}\n")
    return out.getvalue()


@dataclass
class EventRecord:
    at_min: float
    offset_s: int
    what: str
    done_offset_s: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class DemoResult:
    scenario: Scenario
    verdict: Verdict
    summary: dict[str, Any]
    json_path: Path
    png_path: Path | None
    data_dir: Path | None  # kept (--keep) or None

    @property
    def exit_code(self) -> int:
        return 0 if self.summary["passed"] else 1


# ------------------------------------------------------------------------------------------- the demo


class Demo:
    """One run of a scenario. ``await run()`` sets up, plays, judges, writes and always tears down."""

    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        *,
        keep: bool = False,
        view: Any = None,
        work_dir: Path | None = None,
    ) -> None:
        self.s = scenario
        self.out_dir = out_dir
        self.keep = keep
        self.view = view  # derlink.demo.live.LiveView (or a plain printer)
        self.tmp = work_dir or Path(tempfile.mkdtemp(prefix="derlink-demo-"))
        self.segments: list[Segment] = applicable_segments(scenario)
        self.samples: list[Sample] = []
        self.events: list[EventRecord] = []
        self.t0: int = 0
        self.token = secrets.token_hex(16)
        self.gw_token = secrets.token_hex(16)
        self.emergencies: list[dict[str, Any]] = []
        self.server: Any = None
        self.sim: Any = None
        self.gateway: Any = None
        self.uplink: LinkProxy | None = None
        self.downlink: LinkProxy | None = None
        self.http: aiohttp.ClientSession | None = None
        self.headend_url = ""
        self.lfdi = ""
        self.mode = scenario.gateway.mode
        self._stack = contextlib.AsyncExitStack()
        self._log_handler: logging.Handler | None = None

    # -- logging: everything the parts log goes to demo.log in the work dir, not to the terminal

    def _start_logging(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.tmp / "demo.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        self._log_handler = handler

    def _stop_logging(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def say(self, text: str) -> None:
        log.info("%s", text)
        if self.view is not None:
            self.view.message(text)

    # -- set-up

    async def _setup(self) -> None:
        from certs.pki import init_pki, issue_device_certificate
        from gateway.config import lfdi_from_cert_file, load_settings, to_toml
        from gateway.runtime import GatewayRuntime
        from server.app import start_server
        from server.config import ServerConfig
        from simulators.site import SimClock, SimulatedSite

        s = self.s
        pki_dir = self.tmp / "pki"
        init_pki(pki_dir)
        identity = issue_device_certificate(pki_dir, "demo-gateway")
        self.lfdi = identity.lfdi
        self.say(f"PKI ready; gateway LFDI {identity.lfdi[:12]}... SFDI {identity.sfdi}")

        config = ServerConfig(
            data_dir=self.tmp / "server",
            port=0,
            admin_enabled=False,
            cert_dir=pki_dir,
            headend_port=0,
            headend_tokens=[{"name": "demo-operator", "token": self.token, "role": "operator"}],
            poll_rate=2,
            post_rate=1,
            notify_retry_initial=0.2,
            notify_retry_max=1.0,
            notify_timeout=2.0,
            notify_allow=["127.0.0.0/8"],  # the demo gateway listens on loopback
        )
        self.server = await start_server(config)
        self._stack.push_async_callback(self.server.stop)
        self.headend_url = f"http://127.0.0.1:{self.server.headend_port}"
        self.say(f"utility server: 2030.5 on 127.0.0.1:{self.server.port}, head-end on {self.headend_url}")

        self.uplink = LinkProxy(self.server.port)
        await self.uplink.start()
        self._stack.push_async_callback(self.uplink.stop)
        listener_port = None
        if self.mode == "subscribe":
            listener_port = _downlink_listener_port()
            if listener_port is None:
                self.mode = "poll"
                self.say("127.0.0.2 is not usable here: the gateway polls instead of subscribing")
            else:
                self.downlink = LinkProxy(listener_port, listen_host=NOTIFY_HOST, listen_port=listener_port)
                await self.downlink.start()
                self._stack.push_async_callback(self.downlink.stop)

        # The simulated site: its clock idles at speed 1 just before the scenario start until the play
        # begins, then jumps to the start and runs at the scenario's speed.
        (self.tmp / "pv.csv").write_text(_profile_csv(s, s.site.pv_w))
        (self.tmp / "load.csv").write_text(_profile_csv(s, s.site.load_w))
        self.sim = SimulatedSite(self._site_config(), SimClock(1.0, start=s.start_epoch() - 60))
        await self.sim.start()
        self._stack.push_async_callback(self.sim.stop)

        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._stack.push_async_callback(self.http.close)
        await self.operator("POST", "/api/sites", {
            "lfdi": identity.lfdi, "sfdi": identity.sfdi, "nmi": NMI, "pin": PIN, "label": "demo site",
            "reason": "derlink demo: out-of-band registration",
        })  # fmt: skip
        if s.default is not None:
            await self.operator("PUT", "/api/defaults", {
                "program": "default", "target": f"site:{identity.lfdi}",
                "export_limit_w": s.default.export_limit_w, "import_limit_w": s.default.import_limit_w,
                "reason": "derlink demo: the site's default limits",
            })  # fmt: skip
        self.say(f"site registered out of band (NMI {NMI}, PIN {PIN})")

        chain, _key, _ca = config.notify_files()
        site_toml = self.tmp / "site.toml"
        site_toml.write_text(
            to_toml(self._gateway_config(identity, listener_port, lfdi_from_cert_file(chain)))
        )
        self.gateway = GatewayRuntime(load_settings(site_toml))
        await self.gateway.start()
        self._stack.push_async_callback(self.gateway.stop)
        assert self.gateway.client is not None
        try:
            await self.gateway.client.wait_ready(20)
        except TimeoutError:
            raise DemoError("the gateway did not finish discovery within 20 s (see demo.log)") from None
        self.say(f"gateway online ({self.mode}); local API on 127.0.0.1:{self.gateway.local_api_port}")

    def _site_config(self) -> Any:
        from simulators.config import DeviceConfig, ProfileConfig, SiteConfig

        site = self.s.site
        devices = [
            DeviceConfig(
                name="pv", kind="pv", family=site.family, unit_id=1, rated_w=site.pv_rated_w,
                pv_profile=ProfileConfig(kind="csv", csv="pv.csv"),
            )
        ]  # fmt: skip
        if site.battery:
            devices.append(
                DeviceConfig(
                    name="battery", kind="battery", family=site.family, unit_id=2,
                    rated_w=site.battery_rated_w, capacity_wh=site.battery_capacity_wh,
                    max_charge_w=site.battery_rated_w, max_discharge_w=site.battery_rated_w,
                    initial_soc_pct=site.battery_initial_soc_pct,
                )
            )  # fmt: skip
        devices.append(DeviceConfig(name="meter", kind="meter", unit_id=3))
        return SiteConfig(
            name="demo-site",
            speed=1.0,
            utc_offset_h=self.s.utc_offset_h,
            load=ProfileConfig(kind="csv", csv="load.csv"),
            devices=devices,
            base_dir=self.tmp,
        ).validate()

    def _gateway_config(self, identity: Any, listener_port: int | None, notifier_lfdi: str) -> dict[str, Any]:
        g = self.s.gateway
        server: dict[str, Any] = {
            "dcap_url": f"https://127.0.0.1:{self.uplink.port if self.uplink else 0}/dcap",
            "pin": PIN,
            "mode": self.mode,
            "request_timeout_s": 2.0,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
            "default_poll_rate_s": 2,
            "default_post_rate_s": 1,
            "notifier_lfdis": [notifier_lfdi],
        }
        if listener_port is not None:
            server.update(listener_host="127.0.0.1", listener_port=listener_port, notify_host=NOTIFY_HOST)
        return {
            "gateway": {"data_dir": str(self.tmp / "gateway"), "lfdi": identity.lfdi},
            "server": server,
            "tls": {
                "cert": str(identity.chain_path),
                "key": str(identity.key_path),
                "ca": str(self.tmp / "pki" / "ca-chain.pem"),
            },
            "device": [
                {"name": ep.name, "role": ep.kind, "host": ep.host, "port": ep.port, "unit": ep.unit_id}
                for ep in self.sim.endpoints
            ],
            "installer_limits": {"export_limit_w": g.installer_export_limit_w},
            "comms_loss": {
                "export_limit_w": g.comms_loss_export_limit_w,
                "comms_timeout_s": g.comms_timeout_s,
                "persistent_loss_s": g.persistent_loss_s,
            },
            "control_loop": {
                "period_s": g.loop_period_s,
                "modbus_timeout_s": 1.0,
                "self_consumption": g.self_consumption,
            },
            "local_api": {"port": 0, "token": self.gw_token},
        }

    # -- the operator's and the HEMS's HTTP calls

    async def operator(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """A head-end API call with the operator's bearer token; raises DemoError on a 4xx/5xx."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        data = kwargs.pop("data", None)
        async with self.http.request(
            method, self.headend_url + path, json=body if data is None else None, data=data,
            headers=headers, **kwargs,
        ) as resp:  # fmt: skip
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise DemoError(f"head-end {method} {path}: {resp.status} {payload}")
            return payload

    async def hems(self, method: str, body: Any = None) -> Any:
        assert self.http is not None and self.gateway is not None
        url = f"http://127.0.0.1:{self.gateway.local_api_port}/aggregator"
        headers = {"Authorization": f"Bearer {self.gw_token}"}
        async with self.http.request(method, url, json=body, headers=headers) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise DemoError(f"gateway local API {method} /aggregator: {resp.status} {payload}")
            return payload

    # -- the day-ahead upload

    async def _upload_does(self) -> None:
        s = self.s
        if not s.doe:
            return
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["lfdi", "start", "duration", "import_limit_w", "export_limit_w"])
        for d in sorted(s.doe, key=lambda d: d.at_min):
            start = self.t0 + s.wall(d.at_min)
            duration = s.wall(d.at_min + d.duration_min) - s.wall(d.at_min)
            writer.writerow([self.lfdi, start, duration, f"{d.import_limit_w:g}", f"{d.export_limit_w:g}"])
        result = await self.operator(
            "POST",
            "/api/does?format=csv&reason=derlink+demo+day-ahead+DOEs",
            data=out.getvalue().encode(),
            headers={"Content-Type": "text/csv"},
        )
        self.say(f"operator: day-ahead DOE schedule uploaded ({len(s.doe)} intervals) -> {result}")

    # -- the scenario's actions, in wall-clock order

    def _actions(self) -> list[tuple[int, float, str, Callable[[], Awaitable[dict[str, Any]]]]]:
        s = self.s
        acts: list[tuple[int, float, str, Callable[[], Awaitable[dict[str, Any]]]]] = []

        def add(minute: float, what: str, fn: Callable[[], Awaitable[dict[str, Any]]]) -> None:
            acts.append((s.wall(minute), minute, what, fn))

        for e in s.emergency:
            target = "all" if e.target == "all" else f"site:{self.lfdi}"
            duration = max(1, s.wall(e.at_min + e.duration_min) - s.wall(e.at_min))
            if e.lift_at_min is not None:
                duration = max(duration, s.wall(e.lift_at_min) - s.wall(e.at_min) + 3600)

            async def fire(e: Any = e, target: str = target, duration: int = duration) -> dict[str, Any]:
                result = await self.operator("POST", "/api/emergency", {
                    "target": target, "action": e.action, "duration": duration,
                    "reason": "derlink demo: network emergency",
                })  # fmt: skip
                self.emergencies.append({"mrid": result["mrid"], "scenario": e, "lifted": False})
                return result

            add(
                e.at_min,
                f"operator: emergency {e.action} ({'broadcast' if target == 'all' else 'site'})",
                fire,
            )
            if e.lift_at_min is not None:
                spread = s.wall(e.lift_spread_min) if e.lift_spread_min > 0 else None

                async def lift(target: str = target, spread: int | None = spread) -> dict[str, Any]:
                    body: dict[str, Any] = {"target": target, "reason": "derlink demo: network restored"}
                    if spread:
                        body["spread"] = spread
                    result = await self.operator("POST", "/api/emergency/lift", body)
                    for em in self.emergencies:
                        if em["mrid"] in result.get("lifted", []):
                            em["lifted"] = True
                    return result

                how = f"staged over {e.lift_spread_min:g} min ({spread} s)" if spread else "at once"
                add(e.lift_at_min, f"operator: lift the emergency, {how}", lift)
        for h in s.hems:
            expires = s.wall(h.until_min) - s.wall(h.at_min) + 2

            async def hems_on(h: Any = h, expires: int = expires) -> dict[str, Any]:
                body = {"target_w": h.battery_w, "expires_in_s": expires, "detail": "demo HEMS"}
                result = await self.hems("PUT", body)
                return {"regime": result.get("regime")}

            async def hems_off() -> dict[str, Any]:
                await self.hems("DELETE")
                return {}

            verb = "charge" if h.battery_w < 0 else "discharge"
            add(h.at_min, f"HEMS: battery {verb} {abs(h.battery_w):g} W (local API)", hems_on)
            add(h.until_min, "HEMS: setpoint withdrawn", hems_off)
        for o in s.outage:

            async def cut() -> dict[str, Any]:
                for proxy in (self.uplink, self.downlink):
                    if proxy is not None:
                        proxy.cut()
                return {}

            async def restore() -> dict[str, Any]:
                for proxy in (self.uplink, self.downlink):
                    if proxy is not None:
                        proxy.restore()
                return {}

            add(o.at_min, "comms outage: the link gateway <-> server is cut", cut)
            add(o.until_min, "comms restored", restore)
        for f in s.fault:

            async def fault_on(f: Any = f) -> dict[str, Any]:
                await self.sim.set_fault_async(f.device, f.fault)
                return {}

            async def fault_off(f: Any = f) -> dict[str, Any]:
                await self.sim.set_fault_async(f.device, None)
                return {}

            if f.at_min == 0:  # in place from the start: set before the clock starts (_play)
                add(0, f"simulator: {f.device} fault '{f.fault}' (from the start)", _already_done)
            else:
                add(f.at_min, f"simulator: {f.device} fault '{f.fault}'", fault_on)
            if f.until_min is not None:
                add(f.until_min, f"simulator: {f.device} fault cleared", fault_off)
        acts.sort(key=lambda a: (a[0], a[1]))
        return acts

    # -- sampling (live view and plot)

    def sample(self) -> Sample:
        meter = self.sim.meter_reading()
        d = self.gateway.decision if self.gateway is not None else None
        exp = imp = None
        source, regime, lost = "", "", False
        if d is not None:
            exp, imp = d.limits.export_w.value, d.limits.import_w.value
            source = f"{d.limits.export_w.source.name.lower()}: {d.limits.export_w.detail}"
            regime, lost = d.regime.value, bool(d.link_lost)
        battery = soc = None
        if self.s.site.battery:
            battery, soc = self.sim.battery_power_w(), self.sim.battery_soc()
        return Sample(
            t=time.time(),
            site_w=float(meter["w"]),
            pv_w=self.sim.inverter_output_w(),
            battery_w=battery,
            soc_pct=soc,
            gw_export_w=exp,
            gw_import_w=imp,
            gw_source=source,
            regime=regime,
            link="up" if self.uplink is None or self.uplink.up else "cut",
            gw_link_lost=lost,
        )

    async def _sampler(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                sample = self.sample()
                self.samples.append(sample)
                if self.view is not None:
                    self.view.update(self, sample)
            await asyncio.sleep(SAMPLE_EVERY_S)

    # -- play

    async def _play(self) -> None:
        s = self.s
        actions = self._actions()
        # t0: a whole second, far enough ahead for the day-ahead upload to reach the gateway first.
        self.t0 = math.ceil(time.time()) + 1
        await self._upload_does()
        # A fault from minute 0 is there before the gateway's first write of the scenario: set at t0 it
        # raced the write of the first DOE interval (a stuck inverter then stuck at that interval's limit).
        for f in s.fault:
            if f.at_min == 0:
                await self.sim.set_fault_async(f.device, f.fault)
        await asyncio.sleep(max(0.0, self.t0 - time.time()))
        # The simulated site jumps to the scenario's start and runs at its speed from now on.
        self.sim.clock.jump(s.start_epoch() - self.sim.clock.now())
        self.sim.clock.set_speed(s.speed)
        self.say(
            f"playing '{s.name}': {s.end_min:g} scenario minutes in {s.wall_duration_s} s (speed {s.speed:g})"
        )
        sampler = asyncio.create_task(self._sampler(), name="demo-sampler")
        try:
            for offset, minute, what, fn in actions:
                await asyncio.sleep(max(0.0, self.t0 + offset - time.time()))
                record = EventRecord(minute, offset, what)
                self.events.append(record)
                try:
                    record.result = await fn()
                except Exception as exc:  # a failed operator action is reported, and fails the demo
                    record.error = str(exc)
                    self.say(f"{s.clock_label(minute)}  FAILED: {what}: {exc}")
                else:
                    self.say(f"{s.clock_label(minute)}  {what}")
                record.done_offset_s = round(time.time() - self.t0, 3)
            await asyncio.sleep(max(0.0, self.t0 + s.wall_duration_s - time.time()))
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)  # a Ctrl-C meanwhile still propagates
        # Whatever the scenario did, the link is back for the wrap-up: queued telemetry and Responses.
        for proxy in (self.uplink, self.downlink):
            if proxy is not None:
                proxy.restore()

    async def _drain(self, within_s: float = 20.0) -> int:
        """Wait until the gateway's outbox (telemetry, Responses) has reached the server."""
        client = self.gateway.client
        deadline = time.monotonic() + within_s
        while True:
            pending = await client.outbox.pending()
            if pending == 0 or time.monotonic() > deadline:
                return pending
            await asyncio.sleep(0.2)

    # -- judge

    async def site_readings(self) -> list[tuple[int, float]]:
        """The site power readings the server stored for the scenario: (unix time, W + import)."""
        rows = await self.server.store.admin.site_readings(self.lfdi, since=self.t0, limit=1_000_000)
        out = []
        for row in rows:
            rt = row["reading_type"]
            if (
                rt.uom == 38
                and rt.flowDirection == 1
                and row["time_start"] < self.t0 + self.s.wall_duration_s
            ):
                out.append(
                    (int(row["time_start"]), float(row["value"]) * 10.0 ** (rt.powerOfTenMultiplier or 0))
                )
        return out

    async def server_assessment(self) -> dict[str, Any]:
        """The head-end's own judgement of this site (server.compliance.assess): the same stored telemetry
        and rules, against the limits the server published rather than the scenario's expectations."""
        from server.compliance.assess import assess

        async with self.server.store.read() as conn:
            result = await assess(
                conn,
                f"s:{await self.server.store.admin.site_id(self.lfdi)}",
                self.t0,
                self.t0 + self.s.wall_duration_s,
                now=self.server.store.clock(),
                rules=rules_of(self.s),
                default_post_rate=self.server.config.post_rate,
            )
        (site,) = result.site_results
        return {
            "breaches": site["breaches"],
            "intervals_judged": site["intervals_judged"],
            "intervals_compliant": site["intervals_compliant"],
            "readings_judged": site["readings_judged"],
        }

    async def _responses(self, within_s: float) -> list[dict[str, Any]]:
        """Each emergency's required Responses, polled from the head-end until complete or ``within_s``."""
        deadline = time.monotonic() + within_s
        while True:
            checks = []
            for em in self.emergencies:
                e = em["scenario"]
                ended = self.s.wall(emergency_end(e)) <= self.s.wall_duration_s
                detail = await self.operator("GET", f"/api/controls/{em['mrid']}")
                wanted = required_statuses(detail.get("response_required", "03"), em["lifted"], ended)
                received = [r["status"] for r in detail.get("responses", [])]
                checks.append(check_responses(f"emergency {e.action}", em["mrid"], wanted, received))
            if all(c["ok"] for c in checks) or time.monotonic() > deadline:
                return checks
            await asyncio.sleep(0.3)

    # -- run

    async def run(self) -> DemoResult:
        self._start_logging()
        try:
            async with self._stack:
                await self._setup()
                await self._play()
                pending = await self._drain()
                responses = await self._responses(10.0)
                readings = await self.site_readings()
                verdict = Verdict(judge(self.s, self.segments, self.t0, readings), responses)
                verdict.server = await self.server_assessment()
                if self.view is not None and hasattr(self.view, "reconcile"):
                    verdict.seen_live_not_stored = self.view.reconcile(self, verdict)
                outbox = {"pending_at_end": pending, "rejected": await self.gateway.client.outbox.rejected()}
                return self._write(verdict, readings, outbox)
        finally:
            self._stop_logging()
            if not self.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _write(
        self, verdict: Verdict, readings: list[tuple[int, float]], outbox: dict[str, Any]
    ) -> DemoResult:
        from derlink.demo.plot import plot_demo

        self.out_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.out_dir / "derlink-demo.json"
        png_path = self.out_dir / "derlink-demo.png"
        summary = self.summary(verdict, readings, outbox)
        summary["files"] = {"png": str(png_path.resolve()), "json": str(json_path.resolve())}
        if self.keep:
            summary["files"]["data_dir"] = str(self.tmp.resolve())
            summary["files"]["database"] = str((self.tmp / "server" / "derlink.sqlite3").resolve())
        try:
            plot_demo(self.s, self.t0, self.segments, self.samples, verdict, readings, png_path)
        except Exception as exc:  # the verdict stands without a picture
            log.exception("plot failed")
            summary["files"]["png"] = None
            summary["plot_error"] = str(exc)
            png_path = None  # type: ignore[assignment]
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
        return DemoResult(self.s, verdict, summary, json_path, png_path, self.tmp if self.keep else None)

    def summary(
        self, verdict: Verdict, readings: list[tuple[int, float]], outbox: dict[str, Any]
    ) -> dict[str, Any]:
        s = self.s
        regimes: list[str] = []
        for sample in self.samples:
            if sample.regime and (not regimes or regimes[-1] != sample.regime):
                regimes.append(sample.regime)
        failed_actions = [f"{e.what}: {e.error}" for e in self.events if e.error]
        compliance = verdict.summary()
        if failed_actions:
            compliance["passed"] = False
        return {
            "scenario": {
                "name": s.name,
                "source": s.source,
                "speed": s.speed,
                "start_clock": s.start_clock,
                "end_min": s.end_min,
                "wall_duration_s": s.wall_duration_s,
                "t0_unix": self.t0,
                "settle_s": s.settle_s,
                "tolerance": {"w": s.tolerance_w, "pct": s.tolerance_pct},
            },
            "passed": compliance["passed"],
            "compliance": compliance,
            "intervals": [i.as_json() for i in verdict.intervals],
            "responses": verdict.responses,
            "server_assessment": verdict.server,
            "telemetry": {"site_readings": len(readings), "outbox": outbox, "source": "server store"},
            "gateway": {"lfdi": self.lfdi, "mode": self.mode, "regimes_seen": regimes},
            "events": [
                {
                    "at_min": e.at_min,
                    "clock": s.clock_label(e.at_min),
                    "offset_s": e.offset_s,
                    "done_offset_s": e.done_offset_s,
                    "what": e.what,
                    "error": e.error,
                }
                for e in self.events
            ],
            "failed_actions": failed_actions,
        }
