"""Gateway logs and metrics: what an operator reads when a site misbehaves.

Logs: one line per meaningful event, each carrying ``event`` (a stable name) and ``fields`` in the
record, so the JSON format (``derlink gateway --log-format json``) gives a machine-readable line:

    limits_applied   effective limits changed: each changed limit with its value and source
    regime_changed   fallback regime change (NORMAL / HELD_SCHEDULE / DEFAULT / COMMS_LOSS_LIMITS)
    link_lost        the core declared the link to the utility server lost (no contact for comms_timeout_s)
    link_up          first contact with the utility server since start-up (never in contact before)
    link_back        contact again after a declared loss
    comms_timeout_adjusted  comms_timeout_s raised above the server's pollRate/postRate (or back)
    device_fault     a device fault appeared (Modbus error, device not following, stale/frozen meter)
    device_ok        every device fault cleared
    grid_lost        the meter shows no grid voltage (black start: generation held from now)
    grid_restored    the grid is back; generation is held back until a randomised moment
    drm_changed      the DRED asserts other AS/NZS 4755 demand response modes

Metrics: :class:`GatewayCollector` renders the runtime's current state at scrape time (no second copy
of the state to keep in step). It is registered in a registry per runtime, because a lab or a benchmark
runs many gateways in one process; the local API serves it at ``GET /metrics``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gateway.core import Decision
    from gateway.ports import RuntimeView

LOG_FORMATS = ("text", "json")
_LIMITS = ("export_w", "import_w", "generation_w", "load_w", "max_w_pct", "consumption_pct",
           "battery_reserve_pct")  # fmt: skip
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and the record's ``event`` / ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int, fmt: str = "text") -> None:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: Any) -> None:
    """Log one event line; ``fields`` go into the record (and into the JSON line)."""
    logger.log(level, message, extra={"event": name, "fields": fields})


def _value(v: float | bool | None) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return "unlimited" if v is None else f"{v:g}"


def log_decision(logger: logging.Logger, reason: str, before: Decision | None, after: Decision) -> None:
    """The event lines one decision is worth: link lost/back, regime change, limits applied."""
    if before is not None and before.link_lost != after.link_lost:
        if after.link_lost:
            event(logger, logging.WARNING, "link_lost",
                  f"link to the utility server lost (declared at {after.loss_declared_at})",
                  declared_at=after.loss_declared_at)  # fmt: skip
        elif before.loss_declared_at is None:  # lost only in the sense of "never in contact yet"
            event(logger, logging.INFO, "link_up", "first contact with the utility server")
        else:
            event(logger, logging.INFO, "link_back", "link to the utility server back")
    if before is None or before.regime != after.regime:
        old = before.regime.value if before is not None else None
        event(logger, logging.WARNING if after.regime.value != "NORMAL" else logging.INFO, "regime_changed",
              f"fallback regime {old or 'start'} -> {after.regime.value}", regime=after.regime.value,
              previous=old)  # fmt: skip
    new, old_limits = after.limits.to_dict(), (before.limits.to_dict() if before is not None else {})
    changed = {k: v for k, v in new.items() if old_limits.get(k) != v and (before is not None or v)}
    if not changed:
        return
    parts, fields = [], {}
    for name, item in changed.items():
        if not item or item.get("value") is None:
            parts.append(f"{name}=unlimited" if name in _LIMITS else f"{name}=unset")
            fields[name] = None
        else:
            parts.append(f"{name}={_value(item['value'])} from {item['source']} ({item['detail']})")
            fields[name] = {"value": item["value"], "source": item["source"], "detail": item["detail"]}
    event(logger, logging.INFO, "limits_applied", f"limits applied ({reason}): " + "; ".join(parts),
          reason=reason, limits=fields)  # fmt: skip


class GatewayCollector:
    """Prometheus collector over one runtime's state (read at scrape time)."""

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        d = rt.decision
        limit = GaugeMetricFamily(
            "derlink_gateway_limit", "Effective limit (W, or % for *_pct) and the source that set it",
            labels=["limit", "source"],
        )  # fmt: skip
        switch = GaugeMetricFamily(
            "derlink_gateway_switch", "connect/energize: 1 on, 0 off (absent: no source sets it)",
            labels=["switch", "source"],
        )  # fmt: skip
        regime = GaugeMetricFamily(
            "derlink_gateway_regime", "Fallback regime (1 = current)", labels=["regime"]
        )
        if d is not None:
            for name in _LIMITS:
                item = getattr(d.limits, name)
                if item.value is not None:
                    limit.add_metric([name, item.source.name], float(item.value))
            for name in ("connect", "energize"):
                item = getattr(d.limits, name)
                if item.value is not None:
                    switch.add_metric([name, item.source.name], 1.0 if item.value else 0.0)
            from gateway.core import Regime

            for r in Regime:
                regime.add_metric([r.value], 1.0 if d.regime == r else 0.0)
        yield limit
        yield switch
        yield regime
        yield GaugeMetricFamily(
            "derlink_gateway_link_lost", "1 while the link to the utility server is declared lost",
            value=1.0 if d is not None and d.link_lost else 0.0,
        )  # fmt: skip
        runner = rt.runner
        site = GaugeMetricFamily(
            "derlink_gateway_site_power_watts", "Metered connection-point flow (+ import, - export)"
        )
        device_w = GaugeMetricFamily("derlink_gateway_device_power_watts", "Device output (W)",
                                     labels=["device", "role"])  # fmt: skip
        errors = CounterMetricFamily(
            "derlink_gateway_modbus_errors", "Failed Modbus reads and writes", labels=["device"]
        )
        faults = GaugeMetricFamily("derlink_gateway_device_faults", "Device faults in the last control step")
        allowance = GaugeMetricFamily(
            "derlink_gateway_load_allowance_watts",
            "What a controllable load may draw (W; +Inf: unlimited or switched on, 0: shed)",
            labels=["device"],
        )  # fmt: skip
        if runner is not None:
            meter = runner.meter.last
            if meter is not None and meter.w is not None:
                site.add_metric([], float(meter.w))
            for dev, role in [(x, "pv") for x in runner.pvs] + [(x, "battery") for x in runner.batteries]:
                if dev.last is not None and dev.last.w is not None:
                    device_w.add_metric([dev.name, role], float(dev.last.w))
            for ld in runner.loads:  # consumption is negative output (the SunSpec sign)
                if ld.last is not None:
                    device_w.add_metric([ld.name, ld.conn.kind], -ld.last.w)
            report = runner.last_report
            for name, w in (report.setpoints.load_allow_w if report is not None else {}).items():
                allowance.add_metric([name], w)
            for name, count in sorted(runner.modbus_errors.items()):
                errors.add_metric([name], float(count))
            faults.add_metric([], float(len(runner.faults)))
        drm = GaugeMetricFamily("derlink_gateway_drm", "AS/NZS 4755 DRM asserted (1) or not (0)",
                                labels=["mode"])  # fmt: skip
        if rt.controller is not None:
            for mode in range(9):
                drm.add_metric([str(mode)], 1.0 if mode in rt.controller.inputs.drm_modes else 0.0)
        yield drm
        hold = GaugeMetricFamily(
            "derlink_gateway_black_start_hold", "1 while generation is held back after a grid outage"
        )
        grid = GaugeMetricFamily("derlink_gateway_grid_up", "1 while the meter shows the grid up")
        if rt.controller is not None and d is not None:
            g = rt.controller.grid
            held = rt.controller.config.black_start.enabled and (
                not g.grid_up or (g.hold_until is not None and d.now < g.hold_until)
            )
            hold.add_metric([], 1.0 if held else 0.0)
            grid.add_metric([], 1.0 if g.grid_up else 0.0)
        yield hold
        yield grid
        yield site
        yield device_w
        yield errors
        yield faults
        yield allowance
        yield GaugeMetricFamily(
            "derlink_gateway_outbox_depth", "Telemetry and Responses waiting for delivery to the server",
            value=float(rt.outbox_depth),
        )  # fmt: skip


def metrics_registry(runtime: RuntimeView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(runtime))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
