"""The commissioning flow: six resumable steps from a bare site to a verified, registered connection.

1. ``discover``  scan Modbus TCP addresses and unit IDs for SunSpec devices, read their common and
   nameplate models, let the installer confirm which is PV, battery and meter;
2. ``identity``  the gateway's key is generated here with a CSR (the key never leaves the gateway), or a
   certificate issued elsewhere is imported; LFDI, SFDI (with check digit) and PIN are shown for the DNSP;
3. ``site``      the static limits of the connection agreement and the comms-loss fallback limits are
   recorded and *applied to the devices at once*, then the NMI is checked (AEMO rules);
4. ``register``  the gateway's site.toml is written and the gateway itself (``GatewayRuntime``) connects to
   the utility server: the server must know this device (out-of-band) or accept in-band registration, its
   Registration PIN must match; the ConnectionPoint (NMI) is PUT and the DER capability/settings the
   gateway reads from the devices must show on the server;
5. ``verify``    a short, safe test limit (half the present PV output) is applied locally: the inverter must
   follow and the meter must see the change; then the gateway runs against the server until the server
   shows fresh telemetry for the site, and any control the server issued has been acknowledged;
6. ``report``    JSON + HTML commissioning report.

Safety: the static limits are applied as an open-loop cap that holds without the gateway running — the
total rated output of the PV and battery inverters is capped (WMaxLimPct, same % on each) at the export
limit (or the generation limit if lower), so even with no load the site cannot export more than the
agreement allows. Every step that lets the gateway's closed loop or a test limit act on the devices puts
that cap back before it returns, so stopping half-way leaves the site limited. ``derlink gateway`` then
replaces the cap by closed-loop control of the connection point.

Every failure raises :class:`StepFailed` with what happened and what to do next; the engine saves the
step as failed and the next run continues there (or at an earlier step whose inputs the installer changed).

Each step is its own module (:mod:`.discover`, :mod:`.identity`, :mod:`.site`, :mod:`.register`,
:mod:`.verify`, :mod:`.report`) over :mod:`.common` (flags, UI, context), :mod:`.limits` (the static cap)
and :mod:`.probe` (server access); this module is the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.commissioning.common import UI, Context, Options, StepFailed, step_inputs
from gateway.commissioning.discover import step_discover
from gateway.commissioning.identity import step_identity
from gateway.commissioning.register import step_register
from gateway.commissioning.report import step_report
from gateway.commissioning.site import step_site
from gateway.commissioning.state import (
    STEP_TITLES,
    STEPS,
    CommissioningState,
    StateError,
    inputs_changed,
    iso,
)
from gateway.commissioning.verify import step_verify

log = logging.getLogger("derlink.gateway.commissioning")


STEP_FUNCTIONS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "discover": step_discover,
    "identity": step_identity,
    "site": step_site,
    "register": step_register,
    "verify": step_verify,
    "report": step_report,
}


@dataclass
class Outcome:
    ok: bool
    failed_step: str | None = None
    message: str | None = None
    next_action: str | None = None
    state_path: Path | None = None


async def run_commissioning(opts: Options, ui: UI) -> Outcome:
    """Run (or resume) the flow; never raises for a step failure (see :class:`Outcome`)."""
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        state = CommissioningState.load(opts.state_path)
    except StateError as exc:
        return Outcome(False, None, str(exc), "move the file away to start over", opts.state_path)
    ctx = Context(opts, state, ui)
    if opts.redo is not None and opts.redo not in STEPS:
        return Outcome(False, None, f"--redo: unknown step {opts.redo!r}", f"one of {', '.join(STEPS)}")
    start = STEPS.index(opts.redo) if opts.redo else None
    for index, name in enumerate(STEPS):
        rec = state.step(name)
        changed = (
            inputs_changed(rec.get("inputs"), step_inputs(name, opts)) if rec.get("status") == "done" else []
        )
        if changed and (start is None or index < start):
            start = index
            ui.info(f"{STEP_TITLES[name]}: inputs changed ({', '.join(changed)}); redoing from here")
    for index, name in enumerate(STEPS):
        rec = state.step(name)
        if rec.get("status") == "done" and (start is None or index < start):
            ui.info(f"[{index + 1}/6] {STEP_TITLES[name]}: done at {rec.get('finished_at')}")
            continue
        ui.heading(f"[{index + 1}/6] {STEP_TITLES[name]}")
        given = {k: v for k, v in step_inputs(name, opts).items() if v is not None}
        rec.update(status="running", started_at=iso(), attempts=int(rec.get("attempts", 0)) + 1)
        rec.pop("error", None)
        state.save()
        try:
            await STEP_FUNCTIONS[name](ctx)
        except StepFailed as exc:
            rec.update(
                status="failed",
                finished_at=iso(),
                error={"message": exc.message, "next": exc.next_action, **exc.details},
            )
            state.record("step failed", step=name, message=exc.message)
            state.save()
            return Outcome(False, name, exc.message, exc.next_action, opts.state_path)
        except Exception as exc:  # a bug or an unexpected device/network state: keep it resumable
            log.exception("commissioning step %s failed unexpectedly", name)
            message = f"{type(exc).__name__}: {exc}"
            rec.update(status="failed", finished_at=iso(), error={"message": message, "next": "rerun"})
            state.record("step failed", step=name, message=message)
            state.save()
            return Outcome(
                False,
                name,
                message,
                "rerun; if it keeps failing, report it with the state file",
                opts.state_path,
            )
        recorded = dict(rec.get("inputs") or {})
        recorded.update(given)
        rec.update(status="done", finished_at=iso(), inputs=recorded)
        state.record("step done", step=name)
        state.save()
    return Outcome(True, state_path=opts.state_path)
