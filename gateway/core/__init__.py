"""The gateway's pure core: event engine, control hierarchy, comms-loss fallback, site controller.

No sockets, sleeps or clock reads: every call takes ``now`` (Unix seconds).
"""

from gateway.core.black_start import BlackStartConfig, BlackStartState
from gateway.core.events import (
    Control,
    ControlSettings,
    EventEngine,
    EventState,
    Program,
    Response,
    ResponseStatus,
    ServerStatus,
)
from gateway.core.fallback import FallbackConfig, Regime
from gateway.core.hierarchy import EffectiveLimits, Layer, Limit, Setpoint, Source, combine
from gateway.core.site_controller import (
    AggregatorInput,
    CustomerPrefs,
    Decision,
    GatewayConfig,
    SiteController,
    SiteInputs,
)

__all__ = [
    "AggregatorInput",
    "BlackStartConfig",
    "BlackStartState",
    "Control",
    "ControlSettings",
    "CustomerPrefs",
    "Decision",
    "EffectiveLimits",
    "EventEngine",
    "EventState",
    "FallbackConfig",
    "GatewayConfig",
    "Layer",
    "Limit",
    "Program",
    "Regime",
    "Response",
    "ResponseStatus",
    "ServerStatus",
    "Setpoint",
    "SiteController",
    "SiteInputs",
    "Source",
    "combine",
]
