"""Durable gateway state: schedule, defaults, pending Responses, comms/fallback state, local inputs and the
last effective limits, as one JSON file written atomically (temp file, fsync, rename, fsync directory).

A restart (even mid-outage) loads this before any network activity and ``decide(now)`` reproduces the same
limits: the fallback regime is derived from the persisted last-contact time. A missing or unreadable file
gives a controller that has never been in contact with the server, which puts the site under the
installer's comms-loss limits until the server is reached: never "unlimited".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.black_start import BlackStartState
from gateway.core.events import ControlSettings, EventEngine
from gateway.core.hierarchy import EffectiveLimits
from gateway.core.site_controller import (
    AggregatorInput,
    CustomerPrefs,
    GatewayConfig,
    SiteController,
    SiteInputs,
)
from sep2.files import write_atomic

STATE_VERSION = 1


class StateError(ValueError):
    """The state file exists but cannot be used."""


def _settings(d: dict[str, Any] | None) -> ControlSettings | None:
    return ControlSettings.from_dict(d) if d is not None else None


def inputs_to_dict(inputs: SiteInputs) -> dict[str, Any]:
    agg = inputs.aggregator
    return {
        "emergency": inputs.emergency.to_dict() if inputs.emergency else None,
        "emergency_detail": inputs.emergency_detail,
        "drm_modes": sorted(inputs.drm_modes),
        "drm_source": inputs.drm_source,
        "aggregator": None
        if agg is None
        else {
            "settings": agg.settings.to_dict(),
            "export_target_w": agg.export_target_w,
            "expires_at": agg.expires_at,
            "detail": agg.detail,
        },
        "customer": {
            "battery_reserve_pct": inputs.customer.battery_reserve_pct,
            "settings": inputs.customer.settings.to_dict(),
            "detail": inputs.customer.detail,
        },
        "soc_pct": inputs.soc_pct,
    }


def inputs_from_dict(d: dict[str, Any]) -> SiteInputs:
    agg = d["aggregator"]
    cust = d["customer"]
    return SiteInputs(
        emergency=_settings(d["emergency"]),
        emergency_detail=d["emergency_detail"],
        drm_modes=frozenset(d.get("drm_modes", ())),  # absent in state files before DRM inputs
        drm_source=d.get("drm_source", "DRM input"),
        aggregator=None
        if agg is None
        else AggregatorInput(
            ControlSettings.from_dict(agg["settings"]),
            agg["export_target_w"],
            agg["expires_at"],
            agg["detail"],
        ),
        customer=CustomerPrefs(
            cust["battery_reserve_pct"], ControlSettings.from_dict(cust["settings"]), cust["detail"]
        ),
        soc_pct=d["soc_pct"],
    )


def controller_to_dict(controller: SiteController) -> dict[str, Any]:
    last = controller.last_decision
    return {
        "version": STATE_VERSION,
        "device_id": controller.config.device_id,
        "engine": controller.engine.to_dict(),
        "last_contact": controller.last_contact,
        "inputs": inputs_to_dict(controller.inputs),
        "grid": controller.grid.to_dict(),
        # the DERs' own programs, only when there are any (CSIP-AUS sites: the file is as before)
        **(
            {"der_engines": {k: e.to_dict() for k, e in controller.der_engines.items()}}
            if controller.der_engines
            else {}
        ),
        "last_decision": None
        if last is None
        else {
            "now": last.now,
            "regime": last.regime.value,
            "loss_declared_at": last.loss_declared_at,
            "limits": last.limits.to_dict(),
        },
    }


@dataclass(frozen=True)
class LoadedState:
    controller: SiteController
    error: str | None  # why the file could not be used (None: restored, or no file yet)
    last_limits: EffectiveLimits | None  # what was in force when the state was saved
    saved_at: int | None
    alive_at: int | None = None  # the runtime's last heartbeat (cold black start, gateway.core.black_start)


def controller_from_dict(data: dict[str, Any], config: GatewayConfig) -> LoadedState:
    if data.get("version") != STATE_VERSION:
        raise StateError(f"version: expected {STATE_VERSION}, found {data.get('version')!r}")
    if data["device_id"] != config.device_id:
        raise StateError(f"device_id: state is for {data['device_id']!r}, config says {config.device_id!r}")
    engine = EventEngine.from_dict(data["engine"])
    engine.supported_modes = config.supported_modes
    grid = BlackStartState.from_dict(data.get("grid"))  # absent in files from before the black-start hold
    controller = SiteController(config, engine, data["last_contact"], inputs_from_dict(data["inputs"]), grid)
    for key, held in (data.get("der_engines") or {}).items():
        der_engine = EventEngine.from_dict(held)
        der_engine.supported_modes = config.supported_modes
        controller.der_engines[key] = der_engine
    last = data["last_decision"]
    limits = EffectiveLimits.from_dict(last["limits"]) if last else None
    return LoadedState(controller, None, limits, last["now"] if last else None, data.get("alive_at"))


def state_payload(controller: SiteController) -> bytes:
    """The controller's state as the bytes :func:`save_state` writes."""
    return json.dumps(controller_to_dict(controller), separators=(",", ":"), sort_keys=True).encode()


def save_state(
    path: str | os.PathLike[str], controller: SiteController, payload: bytes | None = None
) -> None:
    """Write the controller's state durably; on return it survives a crash or power cut.

    ``payload``: :func:`state_payload` of the controller, if the caller already has it."""
    target = Path(path)
    if payload is None:
        payload = state_payload(controller)
    write_atomic(target, payload)


def load_state(path: str | os.PathLike[str], config: GatewayConfig) -> LoadedState:
    """Restore the controller. Never raises for a bad file: a corrupt file is kept aside as
    ``<path>.corrupt`` and the controller starts safe (no contact ever -> installer comms-loss limits)."""
    target = Path(path)
    if not target.exists():
        return LoadedState(SiteController(config), None, None, None)
    try:
        data = json.loads(target.read_bytes())
        if not isinstance(data, dict):
            raise StateError("top level must be a JSON object")
        return controller_from_dict(data, config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        error = (
            f"state file {target} unusable ({type(exc).__name__}: {exc}); starting under comms-loss limits"
        )
        try:
            os.replace(target, target.with_name(target.name + ".corrupt"))
        except OSError:
            pass
        return LoadedState(SiteController(config), error, None, None)
