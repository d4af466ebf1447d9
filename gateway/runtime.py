"""The gateway daemon: wires the pure core, the device shell, the 2030.5 client and the local interfaces.

Start-up order (why: a reboot mid-outage must never start from "unlimited", and must not wait for the
internet):

1. load the persisted state (:mod:`gateway.state_store`) and decide the limits for *now* — the fallback
   regime follows from the persisted last-contact time;
2. connect and scan the SunSpec devices and run one closed-loop step, which writes those limits
   (target: within 2 s of process start; nothing has touched the network yet);
3. persist, then start the local API, the 2030.5 client (discovery, walk, polling or subscriptions) and
   MQTT publishing.

Decision tick: :meth:`GatewayRuntime.decide` calls ``SiteController.decide`` when the schedule changes (the
client's walk, poll or a Notification), when a local input changes (local API), when the link state flips
(lost / back) and at the timer wake-ups the core asks for (``next_wake``: event starts/ends, fallback
timeouts, aggregator expiry). Each decision: the effective limits go to the closed loop (which steps at
once, inside the decision, before anything else), then pending Responses go to the client's durable outbox,
then the state is saved atomically if anything but the clock changed.

Write first, persist after (why this order is safe): the step that applies new limits acts on the last
readings when they are at most one period old, so the limit's Modbus write is the first I/O after the
decision; the control loop's regular step follows at once with fresh reads and corrects. The state file
and the outbox are written after the devices, but before anything is acknowledged: the Notification's
HTTP answer is sent only when ``decide`` (apply, queue Responses, fsync the state) has returned, and a
Response is only handed to the outbox, which commits it before it is ever sent. A crash between the
write and the save loses nothing the server believes we hold: it has no acknowledgement, so it
re-sends the Notification (or the next walk/poll fetches the list again), and a restart re-applies the
last saved limits — exactly the state a crash just before the Notification arrived would leave, which
saving first could not improve on. Saving first would only delay the write by an fsync: applying a
stricter limit sooner is always safe, and a relaxed one is what the server has already published.

The closed loop (:class:`gateway.site_runner.SiteRunner`, pure loop in :mod:`gateway.control_loop`) steps
every ``control_loop.period_s`` and whenever the limits change; each step's device readings also feed the
client's telemetry (MirrorUsagePoints at the server's postRate, DER documents).

``latency_log`` records, for each limit change that led to Modbus writes, what triggered it (a
notification's receipt, a timer wake-up such as a DERControl's start, a local input...) and when the
writes were acknowledged by the devices (read-back verified): ``benchmarks/gateway_latency.py`` uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gateway.config import LOAD_ROLES, GatewaySettings
from gateway.control_loop import DeviceLimits, LoopConfig, SiteLimits
from gateway.core import Decision, GatewayConfig, SiteController, SiteInputs
from gateway.core.black_start import HEARTBEAT_S
from gateway.core.fallback import effective_comms_timeout
from gateway.observability import event, log_decision
from gateway.state_store import controller_to_dict, inputs_to_dict, load_state, save_state

if TYPE_CHECKING:
    from gateway.client import Sep2Client
    from gateway.site_runner import SiteRunner, StepReport

#: SunSpec inverter states (101-103 St, 701 InvSt) in which a DER does not operate.
_IDLE_STATES = frozenset({"OFF", "SLEEPING", "SHUTTING_DOWN", "FAULT", "STANDBY"})
#: SunSpec event bits (101-103 Evt1 = 701 Alrm) -> 2030.5 AlarmStatusType bits: AC over / under voltage
#: (10, 11) -> 1, 2; over / under frequency (8, 9) -> 3, 4.
_ALARM_BITS = ((10, 1), (11, 2), (8, 3), (9, 4))


def device_key(dev: Any) -> str:
    """The id a device is reported under (DeviceSnapshot.device_id): the key of its DER."""
    info = dev.conn.info
    return f"{info.manufacturer}-{info.serial}"[:40] if info.serial else dev.name


def alarm_status(events: int | None) -> int | None:
    """DERStatus.alarmStatus from an inverter's SunSpec events (None when it reports none)."""
    if events is None:
        return None
    return sum(1 << ours for theirs, ours in _ALARM_BITS if events >> theirs & 1)


def dr_mode_status(limits: Any) -> int | None:
    """DERStatus.operationalModeStatus while a demand response instruction is in force: 100 + the AS/NZS
    4755 DRM it amounts to, as the CSIP-AUS demand response client procedures read it (DRA-02, DRD-01,
    DRG-01, DRL-01): disconnect or de-energise -> DRM 0; an opModFixedW setpoint p (% of setMaxW, - is
    consumption) -> DRM 1 (no consumption, -50 < p < 0), 2 (-75 < p <= -50), 3 (-100 < p <= -75),
    4 (p <= -100, consume more), 5 (no generation, 0 <= p < 50), 6 (50 <= p < 75), 7 (75 <= p < 100),
    8 (p >= 100, generate more). None: no such instruction (the DER reports 1 off / 2 operational)."""
    if limits.connect.value is False or limits.energize.value is False:
        return 100
    if limits.fixed_w_pct is None or limits.fixed_w_pct.value is None:
        return None
    pct = limits.fixed_w_pct.value
    level = next(i for i, bound in enumerate((50.0, 75.0, 100.0, float("inf"))) if abs(pct) < bound)
    return (101 if pct < 0 else 105) + level

log = logging.getLogger("derlink.gateway.runtime")


@dataclass(frozen=True)
class LatencySample:
    """One limit change that led to device writes. Times are server-time seconds (``GatewayRuntime.now``)."""

    kind: str  # "notification" | "timer" | "schedule" | "local" | "comms" | "startup"
    trigger_at: float  # the trigger: a Notification's receipt by the listener, a scheduled start, ...
    decided_at: float  # the new limits were handed to the closed loop
    step_at: float  # the closed-loop step that wrote them began
    acked_at: float  # the last of its device writes was acknowledged by the device
    verified_at: float  # ... and read back (the step's writes all done)
    read_devices: bool  # False: the step acted on the previous period's readings (no reads first)
    writes: tuple[str, ...]

    @property
    def latency_s(self) -> float:
        """Trigger to Modbus write acknowledged."""
        return self.acked_at - self.trigger_at


class GatewayRuntime:
    """One gateway: ``await start()``, then ``await stop()`` (or ``run_forever()`` from the CLI)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.core_config = GatewayConfig(
            settings.lfdi, settings.installer_limits, settings.fallback, black_start=settings.black_start
        )
        self.controller: SiteController | None = None
        self.decision: Decision | None = None
        self.runner: SiteRunner | None = None
        self.client: Sep2Client | None = None
        self.site_limits: SiteLimits | None = None
        self.last_report: StepReport | None = None
        self.latency_log: deque[LatencySample] = deque(maxlen=5000)
        self.latency_unwritten = 0  # limit changes whose step needed no device write
        self.startup: dict[str, Any] = {}
        self.state_error: str | None = None
        self.local_api_port: int | None = None
        self.outbox_depth = 0  # refreshed by status() and the local API's /metrics
        self.changed = asyncio.Condition()  # notified after every decision and step (MQTT, tests)
        self._decide_lock = asyncio.Lock()
        self._step_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        # the first not-yet-written limit change: kind, trigger time, decided at, limits now pending
        self._trigger: tuple[str, float, float, SiteLimits] | None = None
        self._saved: bytes | None = None
        self._alive_saved = 0  # when the heartbeat (alive_at) was last persisted
        self._local_api: Any = None
        self._mqtt: Any = None
        self._drm_input: Any = None
        self._grid_changed = False
        self.drm_error: str | None = None  # the DRM input's last read error (None: reading fine)
        self._stopping = False

    # ------------------------------------------------------------------------------------ clock

    def now(self) -> float:
        """Server time (local clock + the offset the client measured from /tm; local clock before)."""
        if self.client is not None:
            return time.time() + self.client.status.server_offset
        return time.time()

    # ---------------------------------------------------------------------------------- start/stop

    async def start(self) -> None:
        started = time.monotonic()
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        loaded = load_state(s.state_path, self.core_config)
        self.controller = loaded.controller
        self.state_error = loaded.error
        if loaded.error:
            log.error("%s", loaded.error)
        if self.controller.booted(int(self.now()), loaded.alive_at):
            g = self.controller.grid
            event(log, logging.WARNING, "cold_start",
                  f"cold start: no heartbeat since {g.dark_since}, generation held back until {g.hold_until}",
                  dark_since=g.dark_since, hold_until=g.hold_until)  # fmt: skip
        await self.decide("startup")
        self.startup["state_loaded_s"] = time.monotonic() - started
        self.startup["restored"] = loaded.saved_at is not None
        try:
            await asyncio.wait_for(self._connect_devices(), s.loop.startup_apply_timeout_s)
            await self.step()
            self.startup["limits_applied_s"] = time.monotonic() - started
        except Exception as exc:  # devices down at boot: keep going, the control loop retries
            log.error("devices not ready at start-up (%s); the control loop keeps trying", exc)
            self.startup["device_error"] = str(exc)
        log.info("start-up: limits %s in %.3f s", self.site_limits, time.monotonic() - started)
        await self._start_drm()
        # From here on: network.
        if s.local_api.enabled:
            from gateway.local_api import start_local_api

            self._local_api = await start_local_api(self)
        self.client = self._make_client()
        self._tasks.append(asyncio.create_task(self._control_loop(), name="gateway-control-loop"))
        self._tasks.append(asyncio.create_task(self._decision_loop(), name="gateway-decisions"))
        await self.client.start()
        await self.decide("client")  # hand over Responses still pending from before a restart
        if s.mqtt.enabled:
            from gateway.mqtt import MqttPublisher

            self._mqtt = MqttPublisher(self)
            self._tasks.append(asyncio.create_task(self._mqtt.run(), name="gateway-mqtt"))
        self.startup["online_s"] = time.monotonic() - started

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        # gather, not a suppressing await per task, so a cancellation of stop() itself still propagates.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.client is not None:
            await self.client.stop()
        if self._local_api is not None:
            await self._local_api.cleanup()
            self._local_api = None
        if self.runner is not None:
            await self.runner.close()
        if self._drm_input is not None:
            await self._drm_input.close()
        if self.controller is not None:
            self._save(force=True)

    async def run_forever(self) -> None:
        """Start, run until SIGINT/SIGTERM, stop."""
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def _make_client(self) -> Sep2Client:
        from certs.tls import client_ssl_context, server_ssl_context
        from gateway.client import ClientConfig, Sep2Client
        from gateway.client.mapping import device_category

        s = self.settings
        srv = s.server
        config = ClientConfig(
            dcap_url=srv.dcap_url,
            lfdi=s.lfdi,
            data_dir=s.data_dir,
            pin=srv.pin,
            mode=srv.mode,
            register_inband=srv.register_inband,
            listener_host=srv.listener_host,
            listener_port=srv.listener_port,
            notify_host=srv.notify_host,
            notifier_lfdis=srv.notifier_lfdis,
            request_timeout=srv.request_timeout_s,
            backoff_initial=srv.backoff_initial_s,
            backoff_max=srv.backoff_max_s,
            default_poll_rate=srv.default_poll_rate_s,
            default_post_rate=srv.default_post_rate_s,
            nmi=srv.nmi,
            device_category=device_category([d.role for d in s.devices]),
        )
        listener = None
        if srv.mode == "subscribe":
            listener = server_ssl_context(s.tls.cert, s.tls.key, s.tls.ca)
        assert self.controller is not None
        return Sep2Client(
            config,
            client_ssl_context(s.tls.cert, s.tls.key, s.tls.ca),
            self.controller,
            listener_ssl_context=listener,
            on_schedule_change=self._on_schedule_change,
        )

    # ------------------------------------------------------------------------------------ devices

    async def _connect_devices(self) -> None:
        from gateway.site_runner import SiteRunner

        s = self.settings
        runner = await SiteRunner.connect(
            meter=s.device("meter")[0].address,
            pvs={d.name: d.address for d in s.device("pv")},
            batteries={d.name: d.address for d in s.device("battery")},
            loads={d.name: (d.role, d.host, d.port, d.unit) for d in s.devices if d.role in LOAD_ROLES},
            modbus_timeout_s=s.loop.modbus_timeout_s,
            config=LoopConfig(period_s=s.loop.period_s, self_consumption=s.loop.self_consumption),
        )
        self.runner = runner
        if self.decision is not None:
            self._apply(self.decision, None)

    def _battery_rated_w(self) -> float:
        if self.runner is None:
            return 0.0
        return sum((b.conn.info.rated_w or 0.0) for b in self.runner.batteries)

    async def step(self, *, limits_changed: bool = False) -> StepReport | None:
        """One closed-loop step now (reads, pure loop, writes); records the latency of a limit change.

        ``limits_changed``: the step that applies new limits acts on the last readings if they are at most
        one period old, so the write is the first I/O (the control loop's own step follows at once and
        reads again; see :meth:`SiteRunner.step`).
        """
        if self.runner is None:
            return None
        async with self._step_lock:
            self._kick.clear()
            step_at = self.now()
            reuse = self.settings.loop.period_s if limits_changed else None
            report = await self.runner.step(reuse_readings_s=reuse)
            trigger = self._trigger
            if trigger is not None and report.limits == trigger[3]:
                self._trigger = None
                if report.writes and report.acked_at is not None:
                    acked_at = report.acked_at + self.now() - time.time()
                    sample = LatencySample(
                        *trigger[:3], step_at, acked_at, self.now(), report.read_devices, tuple(report.writes)
                    )
                    self.latency_log.append(sample)
                else:
                    self.latency_unwritten += 1
            self.last_report = report
        self._observe_grid()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.queue_telemetry(self.site_snapshot())
        await self._notify()
        return report

    async def _control_loop(self) -> None:
        period = self.settings.loop.period_s
        delay = 1.0
        while True:
            if self.runner is None:
                try:
                    await self._connect_devices()
                    delay = 1.0
                except Exception as exc:
                    log.warning("devices not reachable (%s); retrying in %.0f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
            try:
                await self.step()
            except Exception:  # a bug in one step must not stop site control
                log.exception("control step failed")
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout rather than wait_for, which can swallow a cancellation on Python 3.11.
                async with asyncio.timeout(period):
                    await self._kick.wait()

    def _observe_grid(self) -> None:
        """Grid down/up from the meter voltage (black-start hold); the decision loop decides on a change."""
        meter = self.runner.meter.last if self.runner is not None else None
        if meter is None or meter.v is None or self.controller is None:
            return
        up = meter.v >= self.settings.black_start.grid_lost_below_v
        if self.controller.grid_observed(int(self.now()), up):
            g = self.controller.grid
            if up:
                event(log, logging.WARNING, "grid_restored",
                      f"grid back ({meter.v:.0f} V): generation held back until {g.hold_until}",
                      hold_until=g.hold_until)  # fmt: skip
            else:
                event(log, logging.WARNING, "grid_lost", f"grid lost (meter {meter.v:.0f} V)")
            self._grid_changed = True
            self._wake.set()

    # ---------------------------------------------------------------------------------- DRM input

    async def _start_drm(self) -> None:
        """Read the DRED once before going online (it needs no internet), then poll it."""
        from gateway.drm_input import open_input

        self._drm_input = open_input(self.settings.drm)
        if self._drm_input is None:
            return
        await self._read_drm()
        self._tasks.append(asyncio.create_task(self._drm_loop(), name="gateway-drm-input"))

    async def _read_drm(self) -> None:
        from gateway.drm_input import DrmInputError

        reader = self._drm_input
        assert reader is not None and self.controller is not None
        try:
            modes = await reader.read()
        except DrmInputError as exc:
            if self.drm_error is None:
                event(log, logging.WARNING, "device_fault", f"DRM input: {exc}; keeping the last known modes",
                      device="drm", fault=str(exc))  # fmt: skip
            if self.runner is not None:
                self.runner.modbus_errors["drm"] = self.runner.modbus_errors.get("drm", 0) + 1
            self.drm_error = str(exc)
            return
        if self.drm_error is not None:
            event(log, logging.INFO, "device_ok", "DRM input readable again", device="drm")
            self.drm_error = None
        inputs = self.controller.inputs
        if modes != inputs.drm_modes or inputs.drm_source != reader.describe:
            event(log, logging.WARNING if modes else logging.INFO, "drm_changed",
                  f"DRM inputs: {', '.join(f'DRM {m}' for m in sorted(modes)) or 'none asserted'}"
                  f" ({reader.describe})", modes=sorted(modes))  # fmt: skip
            await self.set_inputs("drm", drm_modes=modes, drm_source=reader.describe)

    async def _drm_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.drm.poll_s)
            try:
                await self._read_drm()
            except Exception:  # a bug must not stop reading the DRED
                log.exception("DRM input read failed")

    # ---------------------------------------------------------------------------------- decisions

    async def _on_schedule_change(self, _now: int) -> None:
        client = self.client
        received = client.notification_received_at if client is not None else None
        if received is not None:  # fed by a Notification: time it from the listener's receipt
            await self.decide("notification", trigger_at=received)
        else:
            await self.decide("schedule")

    async def decide(
        self, reason: str, inputs: SiteInputs | None = None, *, trigger_at: float | None = None
    ) -> Decision:
        """Decide now, apply, queue Responses, persist. ``inputs`` replaces the local inputs (checked:
        a ValueError naming the field changes nothing)."""
        assert self.controller is not None
        async with self._decide_lock:
            controller = self.controller
            base = inputs or controller.inputs
            soc = self._battery_soc()
            if soc is not None and (base.soc_pct is None or abs(base.soc_pct - soc) >= 1.0):
                base = replace(base, soc_pct=round(soc, 1))
            decision = controller.decide(int(self.now()), base if base is not controller.inputs else None)
            log_decision(log, reason, self.decision, decision)
            self.decision = decision
            changed = self._apply(decision, (reason, trigger_at if trigger_at is not None else self.now()))
            if changed and self.runner is not None and reason != "startup":
                # Step now, before the Responses and the state file: the devices come first, and the
                # client's delivery of those Responses would otherwise compete with the writes.
                try:
                    await self.step(limits_changed=True)
                except Exception:
                    log.exception("control step after a limit change failed; the loop retries")
            if self.client is not None:
                pending = controller.pending_responses()
                if pending:
                    try:
                        await self.client.queue_responses(pending)
                    except Exception:
                        log.exception(
                            "could not queue %d Responses; kept for the next decision", len(pending)
                        )
                    else:
                        for response in pending:
                            controller.acknowledge(response)
            self._save()
        self._wake.set()
        await self._notify()
        return decision

    def _apply(self, decision: Decision, trigger: tuple[str, float] | None) -> bool:
        """Hand the decision's limits to the closed loop; True if they changed."""
        limits = SiteLimits.from_effective(decision.limits, self._battery_rated_w())
        if decision.der_limits and self.runner is not None:  # each DER's own controls, on its device
            by_key = {device_key(d): d.name for d in (*self.runner.pvs, *self.runner.batteries)}
            limits = replace(limits, devices=tuple(
                (by_key[key], DeviceLimits.from_effective(eff))
                for key, eff in sorted(decision.der_limits.items()) if key in by_key
            ))  # fmt: skip
        if limits == self.site_limits and self.runner is not None and self.runner.limits == limits:
            return False
        self.site_limits = limits
        if self.runner is not None:
            self.runner.set_limits(limits)
            # several changes before a write: timed from the first trigger to the write of the last
            if self._trigger is not None:
                self._trigger = (*self._trigger[:3], limits)
            elif trigger is not None:
                self._trigger = (*trigger, self.now(), limits)
            self._kick.set()
        return True

    def _link_lost(self, now: float) -> bool:
        assert self.controller is not None
        last = self.controller.last_contact
        return last is None or now >= last + self.controller.config.fallback.comms_timeout_s

    def _keep_comms_timeout_above_rates(self) -> None:
        """Issue 11 item 15: a comms_timeout_s shorter than the server's pollRate/postRate is adjusted
        (and logged), so the link is never declared lost between two normal exchanges."""
        assert self.controller is not None
        configured = self.settings.fallback.comms_timeout_s
        interval = self.client.contact_interval() if self.client is not None else None
        # slack: the next exchange may take up to the request timeout (no more than an interval)
        slack = min(self.settings.server.request_timeout_s, interval or 0.0)
        needed = effective_comms_timeout(configured, interval, slack)
        config = self.controller.config
        if needed == config.fallback.comms_timeout_s:
            return
        self.controller.config = replace(config, fallback=replace(config.fallback, comms_timeout_s=needed))
        if needed > configured:
            event(log, logging.WARNING, "comms_timeout_adjusted",
                  f"comms_timeout_s {configured} s is shorter than the server's pollRate/postRate "
                  f"(an exchange every {interval:g} s): adjusted to {needed} s",
                  configured=configured, effective=needed, contact_interval=interval)  # fmt: skip
        else:
            event(log, logging.INFO, "comms_timeout_adjusted",
                  f"comms_timeout_s back to the configured {configured} s (an exchange every {interval} s)",
                  configured=configured, effective=needed, contact_interval=interval)  # fmt: skip

    async def _decision_loop(self) -> None:
        """Timer wake-ups (``next_wake``) and link-state flips; everything else calls decide() itself."""
        while True:
            decision = self.decision
            assert decision is not None
            now = self.now()
            wait = 1.0
            if decision.next_wake is not None:
                wait = min(wait, max(decision.next_wake - now, 0.0))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            if self._grid_changed:
                self._grid_changed = False
                await self.decide("grid")
                continue
            self._keep_comms_timeout_above_rates()
            if self.now() - self._alive_saved >= HEARTBEAT_S:
                self._save()  # the heartbeat
            if self.decision is not decision:
                continue  # someone decided meanwhile
            now = self.now()
            due = decision.next_wake is not None and now >= decision.next_wake
            if due:
                await self.decide("timer", trigger_at=float(decision.next_wake))  # type: ignore[arg-type]
            elif self._link_lost(now) != decision.link_lost:
                await self.decide("comms")

    def _save(self, force: bool = False) -> None:
        assert self.controller is not None
        data = controller_to_dict(self.controller)
        decided = data.get("last_decision")
        if decided:  # a decision that only moved the clock is not worth a write
            data["last_decision"] = {k: v for k, v in decided.items() if k != "now"}
        key = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        now = int(self.now())
        heartbeat = now - self._alive_saved >= HEARTBEAT_S
        if force or key != self._saved or heartbeat:
            data["last_decision"] = decided
            data["alive_at"] = now  # the heartbeat a cold start is measured from
            payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
            save_state(self.settings.state_path, self.controller, payload)
            self._saved = key
            self._alive_saved = now

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------------------------- local inputs

    async def set_inputs(self, reason: str, **changes: Any) -> Decision:
        """Replace some local inputs (emergency, aggregator, customer) and decide; persisted on return."""
        assert self.controller is not None
        inputs = replace(self.controller.inputs, **changes)
        return await self.decide(reason, inputs)

    # ------------------------------------------------------------------------------------ reading

    def _battery_soc(self) -> float | None:
        if self.runner is None:
            return None
        socs = [
            b.last.soc_pct for b in self.runner.batteries if b.last is not None and b.last.soc_pct is not None
        ]
        return sum(socs) / len(socs) if socs else None

    def site_snapshot(self) -> Any:
        """The devices' latest readings as the client's SiteSnapshot (telemetry, DER documents)."""
        from gateway.client import mapping as m

        assert self.runner is not None
        meter = self.runner.meter.last
        site = m.Measurements()
        if meter is not None:
            site = m.Measurements(
                w=meter.w, var=meter.var, v={"A": meter.v} if meter.v is not None else {}, hz=meter.hz
            )
        ders = []
        # DERSettings.setGradW reports the ramp rate in force (CSIP-AUS; client procedures ALL-13/ALL-17)
        grad = self.decision.limits.set_grad_w.value if self.decision is not None else None
        dr_mode = dr_mode_status(self.decision.limits) if self.decision is not None else None
        v13 = self.settings.server.storage_extension
        for dev, is_battery in [(d, False) for d in self.runner.pvs] + [
            (d, True) for d in self.runner.batteries
        ]:
            info = dev.conn.info
            last = dev.last
            rated = info.rated_w or 0.0
            # operating (ConnectStatusType bit 2, OperationalModeStatusType 2): connected and in an operating
            # state as the inverter reports it (SunSpec St / InvSt: a battery idling at 0 W, a PV inverter
            # throttled to 0 W operate; one off, asleep for want of sun, in standby or faulted does not);
            # without a state, measured power flows
            if last is not None and last.state is not None:
                running = last.state not in _IDLE_STATES
            else:
                running = last is not None and abs(last.w or 0.0) >= max(10.0, 0.01 * rated)
            operating = last is not None and last.connected is not False and running
            modes = (
                m.MODE_CONNECT
                | m.MODE_MAX_LIM_W
                | (m.MODE_CHARGE | m.MODE_DISCHARGE | m.MODE_FIXED_W | m.MODE_TARGET_W if is_battery else 0)
            )
            ders.append(
                m.DeviceSnapshot(
                    device_id=device_key(dev),
                    der_type=m.DER_TYPE_STORAGE if is_battery else m.DER_TYPE_PV,
                    rtg_max_w=rated,
                    modes_supported=modes,
                    vpp_modes_supported=m.VPP_STORAGE_TARGET_W if is_battery and v13 else 0,  # CSIP-AUS v1.3
                    rtg_max_va=info.rated_va,
                    rtg_max_var=info.rated_var,
                    rtg_max_var_neg=info.rated_var_neg,
                    rtg_min_pf_over=info.min_pf_over,
                    rtg_min_pf_under=info.min_pf_under,
                    rtg_max_wh=info.capacity_wh if is_battery else None,
                    set_min_wh=(
                        info.capacity_wh * info.reserve_pct / 100
                        if is_battery and info.capacity_wh is not None and info.reserve_pct is not None
                        else None
                    ),
                    rtg_max_charge_w=info.max_charge_w if is_battery else None,
                    rtg_max_discharge_w=info.max_discharge_w if is_battery else None,
                    connected=last.connected is not False if last else True,
                    available=last.available is not False if last else True,
                    operating=operating,
                    # OperationalModeStatusType: a demand response mode, else operational / off
                    operational_mode=dr_mode if dr_mode is not None else (2 if operating else 1),
                    alarm_status=alarm_status(last.events) if last is not None else None,
                    set_grad_w=round(grad) if grad is not None else 0,
                    fault=last is None,
                    w_available=(last.available_w if last and not is_battery else None),
                    measurements=m.Measurements(
                        w=last.w if last else None,
                        var=last.var if last else None,
                        v={"A": last.v} if last and last.v is not None else {},
                        hz=last.hz if last else None,
                        soc_pct=last.soc_pct if last and is_battery else None,
                    ),
                )
            )
        return m.SiteSnapshot(site=site, ders=ders)

    async def refresh_outbox_depth(self) -> int:
        if self.client is not None:
            self.outbox_depth = await self.client.outbox.pending()
        return self.outbox_depth

    async def status(self) -> dict[str, Any]:
        """Everything `derlink gateway status`, the local API and MQTT show."""
        assert self.controller is not None and self.decision is not None
        now = int(self.now())
        if self._link_lost(now) != self.decision.link_lost:  # the decision loop ticks each second: now
            await self.decide("comms")
        d = self.decision
        engine = self.controller.engine
        comms: dict[str, Any] = {
            "state": "not started",
            "link_lost": self._link_lost(now),
            "comms_timeout_s": self.controller.config.fallback.comms_timeout_s,
        }
        if self.client is not None:
            st = self.client.status
            comms.update(
                state=st.state, comms_ok=st.comms_ok, last_contact=st.last_contact, last_error=st.last_error,
                server_offset=st.server_offset, subscriptions=st.subscriptions,
                notifications=st.notifications, post_rate=st.post_rate,
                outbox_pending=await self.refresh_outbox_depth(),
                outbox_rejected=await self.client.outbox.rejected(),
                refusals=dict(st.refusals),
            )  # fmt: skip
        comms["last_contact_core"] = self.controller.last_contact
        site: dict[str, Any] = {"devices": []}
        if self.runner is not None:
            meter = self.runner.meter.last
            site["meter_w"] = meter.w if meter else None
            site["export_w"] = -meter.w if meter and meter.w is not None else None
            report = self.last_report
            if report is not None:
                site["mode"] = report.setpoints.mode
                site["faults"] = list(report.faults)
            for dev, role in [(x, "pv") for x in self.runner.pvs] + [
                (x, "battery") for x in self.runner.batteries
            ]:
                last = dev.last
                site["devices"].append({
                    "name": dev.name, "role": role, "w": last.w if last else None,
                    "limit_pct": last.limit_pct if last else None,
                    "soc_pct": last.soc_pct if last else None,
                    "connected": last.connected if last else None,
                })  # fmt: skip
            allow = report.setpoints.load_allow_w if report is not None else {}
            for ld in self.runner.loads:
                site["devices"].append({
                    "name": ld.name, "role": ld.conn.kind, "w": -ld.last.w if ld.last else None,
                    "allowance_w": a if (a := allow.get(ld.name)) != math.inf else None,  # None: any
                })  # fmt: skip
        active = {p: list(m) for p, m in d.schedule.active.items() if m}
        return {
            "lfdi": self.settings.lfdi,
            "now": now,
            "decided_at": d.now,
            "regime": d.regime.value,
            "link_lost": d.link_lost,
            "loss_declared_at": d.loss_declared_at,
            "limits": d.limits.to_dict(),
            "explain": d.explain(),
            "next_change": engine.next_change_time(now),
            "next_wake": d.next_wake,
            "active_controls": active,
            "inputs": inputs_to_dict(self.controller.inputs),
            "comms": comms,
            "site": site,
            "startup": dict(self.startup),
            "state_error": self.state_error,
        }

    def write_local_api_file(self, port: int) -> None:
        """Tell `derlink gateway status` where the local API listens (atomic replace)."""
        self.local_api_port = port
        path = self.settings.local_api_file
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"host": self.settings.local_api.host, "port": port, "pid": os.getpid()}))
        os.replace(tmp, path)
