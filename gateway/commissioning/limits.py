"""The static limits as an open-loop cap on the PV/battery inverters (safety): see :mod:`.flow`."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from gateway.commissioning.common import Context, StepFailed, serial_line_of
from gateway.commissioning.state import iso


async def open_devices(devices: list[dict[str, Any]], timeout_s: float = 2.0) -> dict[str, Any]:
    from gateway.devices import DeviceConnection, DeviceError

    conns: dict[str, Any] = {}
    try:
        for dev in devices:
            conn = DeviceConnection(
                dev["host"], dev["port"], dev["unit"], serial_line_of(dev["host"]), timeout=timeout_s
            )
            conns[dev["name"]] = conn
            await conn.scan()
    except DeviceError as exc:
        await close_devices(conns)
        raise StepFailed(
            f"{exc} (did not answer on its port)",
            "check the device is powered and on the network and its Modbus TCP settings are unchanged, then "
            "rerun",
        ) from None
    return conns


async def close_devices(conns: dict[str, Any]) -> None:
    for conn in conns.values():
        with contextlib.suppress(Exception):
            await conn.close()


def static_cap(devices: list[dict[str, Any]], limits: dict[str, Any]) -> tuple[float, float]:
    """(cap W, % of rating) that keeps PV + battery output, hence export, within the static limits."""
    rated = sum(float(d["info"].get("rated_w") or 0.0) for d in devices if d["role"] in ("pv", "battery"))
    cap = min(
        v for v in (limits.get("export_limit_w"), limits.get("generation_limit_w"), math.inf) if v is not None
    )
    if rated <= 0:
        return cap, 0.0  # unknown ratings: the only safe open-loop cap is zero output
    pct = 100.0 if cap >= rated else math.floor(cap / rated * 1000.0) / 10.0
    return cap, pct


async def write_static_cap(devices: list[dict[str, Any]], limits: dict[str, Any]) -> dict[str, Any]:
    """Write the open-loop cap to every PV/battery inverter and read it back (no process needs to stay)."""
    from gateway.devices import DeviceError

    cap, pct = static_cap(devices, limits)
    generators = [d for d in devices if d["role"] in ("pv", "battery")]
    conns = await open_devices(generators)
    applied: dict[str, Any] = {}
    try:
        for dev in generators:
            conn = conns[dev["name"]]
            try:
                await conn.set_active_power_limit_pct(pct, ramp_s=0)
                if dev["role"] == "battery":
                    await conn.set_storage_power(None)
                m = await conn.read_measurements()
            except DeviceError as exc:
                raise StepFailed(
                    f"could not apply the static limit to {dev['name']} ({dev['key']}): {exc}",
                    "check the inverter accepts remote control over Modbus (its 'remote control' or "
                    "'external control' setting) and rerun",
                ) from None
            applied[dev["name"]] = {"limit_pct": pct, "read_back_pct": m.limit_pct, "w": m.w}
    finally:
        await close_devices(conns)
    return {"at": iso(), "cap_w": cap, "limit_pct": pct, "devices": applied}


async def apply_static_limits(ctx: Context, reason: str) -> dict[str, Any]:
    limits = ctx.state.get("site", {}).get("limits")
    devices = ctx.state.get("devices") or []
    if not limits or not devices:
        return {}
    record = await write_static_cap(devices, limits)
    record["reason"] = reason
    ctx.state.set("static_limits_applied", record)
    ctx.state.record("static limits applied", reason=reason, cap_w=record["cap_w"], pct=record["limit_pct"])
    ctx.save()
    ctx.ui.info(
        f"static limit applied: PV/battery output capped at {record['limit_pct']:g} % of rating "
        f"(<= {record['cap_w']:g} W) — holds even if commissioning stops here"
    )
    return record
