"""One call for the shell: ``SiteController.decide(now, inputs) -> Decision``.

The controller owns the held state (event engine, last server contact, last local inputs); the shell feeds
it what it learns (``engine.sync_program``/``upsert_control``, ``server_contact``) and acts on decisions:
write ``decision.limits`` to the devices, POST ``decision.responses``, wake again at ``decision.next_wake``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core import black_start
from gateway.core.black_start import BlackStartConfig, BlackStartState
from gateway.core.drm import drm_layer, mode_errors
from gateway.core.events import ControlSettings, EventEngine, Response, ScheduleResult
from gateway.core.fallback import FallbackConfig, Regime, decide_fallback
from gateway.core.hierarchy import EffectiveLimits, Layer, Source, combine


@dataclass(frozen=True)
class GatewayConfig:
    """Static configuration from the installer (site.toml)."""

    device_id: str  # LFDI: seeds the per-device randomisation
    installer_limits: ControlSettings  # connection agreement; must include export_limit_w
    fallback: FallbackConfig
    supported_modes: frozenset[str] | None = None  # None: accept every mode
    black_start: BlackStartConfig = field(default_factory=BlackStartConfig)

    def __post_init__(self) -> None:
        problems = [f"installer_limits.{p}" for p in self.installer_limits.errors()]
        if self.installer_limits.export_limit_w is None:
            problems.append("installer_limits.export_limit_w is required (the connection agreement's limit)")
        if not self.device_id:
            problems.append("device_id must be non-empty")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class AggregatorInput:
    """HEMS / market setpoint, only ever applied within the envelope. Ignored from ``expires_at`` on."""

    settings: ControlSettings = field(default_factory=ControlSettings)  # limits and target_w
    export_target_w: float | None = None
    expires_at: int | None = None
    detail: str = "aggregator setpoint"


@dataclass(frozen=True)
class CustomerPrefs:
    battery_reserve_pct: float | None = None
    settings: ControlSettings = field(default_factory=ControlSettings)  # e.g. a self-imposed export limit
    detail: str = "customer preferences"


@dataclass(frozen=True)
class SiteInputs:
    """Local inputs at one instant: ``emergency`` is a local command (e.g. ControlSettings(connect=False)),
    ``drm_modes`` the AS/NZS 4755 demand response modes asserted on the DRM input ``drm_source``."""

    emergency: ControlSettings | None = None
    emergency_detail: str = "local emergency input"
    drm_modes: frozenset[int] = frozenset()
    drm_source: str = "DRM input"
    aggregator: AggregatorInput | None = None
    customer: CustomerPrefs = field(default_factory=CustomerPrefs)
    soc_pct: float | None = None


@dataclass(frozen=True)
class Decision:
    now: int
    limits: EffectiveLimits
    regime: Regime
    link_lost: bool
    loss_declared_at: int | None
    responses: tuple[Response, ...]
    next_wake: int | None
    schedule: ScheduleResult
    # Per DER (key: the device mapped to it): what the DER's own programs (2030.5 §10.10
    # DER.AssociatedDERProgramListLink) set for that device alone, inside the site's limits.
    der_limits: dict[str, EffectiveLimits] = field(default_factory=dict)

    def explain(self) -> list[str]:
        head = f"regime {self.regime.value}" + (
            f" (link lost since {self.loss_declared_at})" if self.loss_declared_at is not None else ""
        )
        per_der = [
            f"DER {key}: {line}"
            for key, limits in sorted(self.der_limits.items())
            for line in limits.explain()
            if "no source sets it" not in line
        ]
        return [head, *self.limits.explain(), *per_der]


class SiteController:
    def __init__(
        self,
        config: GatewayConfig,
        engine: EventEngine | None = None,
        last_contact: int | None = None,
        inputs: SiteInputs | None = None,
        grid: BlackStartState | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or EventEngine(config.device_id, config.supported_modes)
        self.last_contact = last_contact
        self.inputs = inputs or SiteInputs()
        self.grid = grid or BlackStartState()
        self.last_decision: Decision | None = None
        # One event engine per DER that has its own programs (DER.AssociatedDERProgramListLink), by the key
        # of the device mapped to that DER: its controls apply to that device alone.
        self.der_engines: dict[str, EventEngine] = {}
        self.der_labels: dict[str, str] = {}  # key -> how the explanation names the DER (its href)

    def der_engine(self, key: str, label: str | None = None) -> EventEngine:
        """The event engine of the DER mapped to device ``key`` (created on first use); ``label`` names
        the DER in the explanation (e.g. its href)."""
        if label:
            self.der_labels[key] = label
        engine = self.der_engines.get(key)
        if engine is None:
            engine = self.der_engines[key] = EventEngine(self.config.device_id, self.config.supported_modes)
        return engine

    def engines(self) -> list[EventEngine]:
        """The site's engine, then each DER's."""
        return [self.engine, *(self.der_engines[k] for k in sorted(self.der_engines))]

    def pending_responses(self) -> list[Response]:
        """Responses not yet acknowledged, of the site's programs and of every DER's."""
        return [resp for engine in self.engines() for resp in engine.pending_responses()]

    def acknowledge(self, response: Response) -> None:
        """The server accepted ``response``: the engine that emitted it forgets it."""
        for engine in self.engines():
            if response in engine.pending_responses():
                engine.acknowledge(response)
                return

    def grid_observed(self, now: int, up: bool) -> bool:
        """Record the grid state the meter shows (black-start hold); True if it changed."""
        before = self.grid
        self.grid = black_start.observe(before, self.config.black_start, self.config.device_id, now, up)
        return self.grid != before

    def booted(self, now: int, alive_at: int | None) -> bool:
        """Record a boot at ``now``, the last heartbeat having been ``alive_at`` (cold black start);
        True if it starts a hold."""
        before = self.grid
        cfg = self.config
        self.grid = black_start.cold_start(before, cfg.black_start, cfg.device_id, now, alive_at)
        return self.grid != before

    def server_contact(self, now: int) -> None:
        """Record a successful exchange with the server (any 2xx)."""
        if self.last_contact is None or now > self.last_contact:
            self.last_contact = now

    def layers(
        self, now: int, schedule: ScheduleResult
    ) -> tuple[list[Layer], Regime, bool, int | None, int | None]:
        fb = decide_fallback(
            now, self.config.fallback, self.last_contact, schedule, self.engine.has_default()
        )
        inputs = self.inputs
        layers = list(fb.layers)
        if inputs.emergency is not None:
            layers.append(Layer(Source.LOCAL_EMERGENCY, inputs.emergency, inputs.emergency_detail))
        drm = drm_layer(inputs.drm_modes, inputs.drm_source)
        if drm is not None:
            layers.append(drm)
        agg = inputs.aggregator
        agg_expiry = None
        if agg is not None and (agg.expires_at is None or now < agg.expires_at):
            layers.append(
                Layer(Source.AGGREGATOR, agg.settings, agg.detail, export_target_w=agg.export_target_w)
            )
            agg_expiry = agg.expires_at
        cust = inputs.customer
        layers.append(
            Layer(Source.CUSTOMER, cust.settings, cust.detail, battery_reserve_pct=cust.battery_reserve_pct)
        )
        layers.append(
            Layer(Source.INSTALLER, self.config.installer_limits, "installer connection-agreement limits")
        )
        hold, hold_until = black_start.hold_layer(self.grid, self.config.black_start, now, schedule)
        if hold is not None:
            layers.append(hold)
        wake = [t for t in (fb.next_change, agg_expiry, hold_until) if t is not None and t > now]
        return layers, fb.regime, fb.link_lost, fb.loss_declared_at, min(wake) if wake else None

    def decide(self, now: int, inputs: SiteInputs | None = None) -> Decision:
        """Advance the schedule to ``now`` and decide the effective limits (the shell's single entry)."""
        if inputs is not None:
            check_inputs(inputs)
            self.inputs = inputs
        responses = tuple(self.engine.advance(now))
        schedule = self.engine.evaluate(now)
        g = self.grid
        if g.hold_until is not None and now < g.hold_until and black_start.released_by_server(schedule):
            self.grid = BlackStartState(g.grid_down_since, g.restored_at, now)  # the server ended the hold
        layers, regime, lost, declared, fb_wake = self.layers(now, schedule)
        limits = combine(layers, self.inputs.soc_pct)
        wake = [t for t in (fb_wake, self.engine.next_change_time(now)) if t is not None]
        der_limits: dict[str, EffectiveLimits] = {}
        for key in sorted(self.der_engines):
            engine = self.der_engines[key]
            responses += tuple(engine.advance(now))
            held = engine.evaluate(now)
            change = engine.next_change_time(now)
            if change is not None:
                wake.append(change)
            if held.settings.is_empty():
                continue
            der = self.der_labels.get(key, key)
            details = {name: f"DER {der}: {o.describe()}" for name, o in held.origins.items()}
            der_limits[key] = combine([Layer(Source.UTILITY, held.settings, f"DER {der} program", details)])
        decision = Decision(
            now, limits, regime, lost, declared, responses, min(wake) if wake else None, schedule, der_limits
        )
        self.last_decision = decision
        return decision


def check_inputs(inputs: SiteInputs) -> None:
    """Raise ValueError naming every bad field; nothing is changed by a rejected input."""
    problems = [f"drm_modes: {p}" for p in mode_errors(inputs.drm_modes)]
    parts = {
        "emergency": inputs.emergency,
        "aggregator.settings": inputs.aggregator.settings if inputs.aggregator else None,
        "customer.settings": inputs.customer.settings,
    }
    for prefix, settings in parts.items():
        problems += [f"{prefix}.{p}" for p in (settings.errors() if settings else [])]
    reserve = inputs.customer.battery_reserve_pct
    if reserve is not None and not 0 <= reserve <= 100:
        problems.append(f"customer.battery_reserve_pct must be within 0..100, got {reserve}")
    if inputs.soc_pct is not None and not 0 <= inputs.soc_pct <= 100:
        problems.append(f"soc_pct must be within 0..100, got {inputs.soc_pct}")
    if problems:
        raise ValueError("; ".join(problems))
