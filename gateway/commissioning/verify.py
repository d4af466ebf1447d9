"""Step 5, ``verify``: a local test limit the inverter and meter must follow, then telemetry and control
acknowledgement seen on the server."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from gateway.commissioning.common import Context, StepFailed, wait_for
from gateway.commissioning.limits import apply_static_limits, close_devices, open_devices
from gateway.commissioning.probe import ServerProbe, running_gateway
from gateway.commissioning.state import iso


async def _sample(pvs: dict[str, Any], meter: Any, n: int = 3, every: float = 0.2) -> dict[str, Any]:
    """Average of ``n`` concurrent readings of every PV inverter and the meter."""
    pv_sums: list[float] = []
    meters: list[float] = []
    per: dict[str, list[float]] = {name: [] for name in pvs}
    for i in range(n):
        readings = await asyncio.gather(
            *(c.read_measurements() for c in pvs.values()), meter.read_measurements()
        )
        total = 0.0
        for (name, _), m in zip(pvs.items(), readings[:-1], strict=True):
            per[name].append(float(m.w or 0.0))
            total += float(m.w or 0.0)
        pv_sums.append(total)
        meters.append(float(readings[-1].w or 0.0))
        if i + 1 < n:
            await asyncio.sleep(every)
    return {
        "at": iso(),
        "pv_w": sum(pv_sums) / n,
        "meter_w": sum(meters) / n,
        "per_inverter_w": {k: sum(v) / n for k, v in per.items()},
    }


async def local_test(ctx: Context) -> dict[str, Any]:
    """Hold the battery, cap each PV inverter at a fraction of its present output, watch PV and meter."""
    from gateway.devices import DeviceError

    opts, state = ctx.opts, ctx.state
    devices = state.get("devices")
    pv_devs = [d for d in devices if d["role"] == "pv"]
    batteries = [d for d in devices if d["role"] == "battery"]
    meter_dev = next(d for d in devices if d["role"] == "meter")
    if not pv_devs:
        raise StepFailed("no PV inverter to test", "the end-to-end test needs a PV inverter")
    conns = await open_devices(pv_devs + batteries + [meter_dev])
    result: dict[str, Any] = {"started_at": iso()}
    try:
        pvs = {d["name"]: conns[d["name"]] for d in pv_devs}
        meter = conns[meter_dev["name"]]
        for b in batteries:  # the battery would otherwise soak up (or fill in) the change we want to see
            await conns[b["name"]].set_storage_power(0.0)
        for d in pv_devs:
            await conns[d["name"]].set_active_power_limit_pct(100.0, ramp_s=0)
        await asyncio.sleep(min(2.0, opts.verify_window_s / 4))
        before = await _sample(pvs, meter)
        result["before"] = before
        minimum = max(100.0, 0.05 * sum(float(d["info"].get("rated_w") or 0) for d in pv_devs))
        if before["pv_w"] < minimum:
            raise StepFailed(
                f"the PV inverters produce {before['pv_w']:.0f} W, too little to see a test limit act "
                f"(needs >= {minimum:.0f} W)",
                "rerun in daylight, when the PV produces more (the static limits stay applied meanwhile)",
                measured=before,
            )
        targets: dict[str, dict[str, float]] = {}
        for d in pv_devs:
            rated = float(d["info"].get("rated_w") or 0.0)
            present = before["per_inverter_w"][d["name"]]
            target_w = present * opts.test_fraction
            pct = math.floor(target_w / rated * 1000) / 10 if rated > 0 else 0.0
            targets[d["name"]] = {"target_w": pct / 100 * rated, "limit_pct": pct, "rated_w": rated}
            await conns[d["name"]].set_active_power_limit_pct(pct, ramp_s=0)
        limit_at = time.time()
        result["test_limit"] = {"at": iso(limit_at), "inverters": targets}
        tolerance = {n: max(0.03 * t["rated_w"], 50.0) for n, t in targets.items()}

        async def obeyed() -> dict[str, Any] | None:
            s = await _sample(pvs, meter, n=1)
            ok = all(s["per_inverter_w"][n] <= t["target_w"] + tolerance[n] for n, t in targets.items())
            return s if ok else None

        try:
            await wait_for(obeyed, opts.verify_window_s)
        except TimeoutError:
            now = await _sample(pvs, meter, n=1)
            readback = {n: (await c.read_measurements()).limit_pct for n, c in pvs.items()}
            stuck = [n for n, t in targets.items() if now["per_inverter_w"][n] > t["target_w"] + tolerance[n]]
            result["after"] = now
            read = ", ".join(f"{readback[n]} %" for n in stuck)
            stayed = ", ".join(f"{now['per_inverter_w'][n]:.0f} W" for n in stuck)
            wanted = ", ".join(f"{targets[n]['target_w']:.0f} W" for n in stuck)
            raise StepFailed(
                f"the inverter {', '.join(stuck)} ignores writes: it accepted the test limit (reads back "
                f"{read}) but its output stayed at {stayed} for {opts.verify_window_s:g} s (limit {wanted})",
                "check the inverter's remote/external power control is enabled (installer menu or vendor "
                "app), "
                "that no other controller (e.g. a vendor cloud or export limiter) owns it, then rerun",
                measured={"before": before, "after": now, "read_back_pct": readback},
            ) from None
        obeyed_at = time.time()
        await asyncio.sleep(0.5)
        after = await _sample(pvs, meter)
        result["after"] = after
        result["inverter"] = {
            "obeyed": True,
            "response_s": round(obeyed_at - limit_at, 2),
            "pv_before_w": round(before["pv_w"], 1),
            "pv_after_w": round(after["pv_w"], 1),
            "limit_w": round(sum(t["target_w"] for t in targets.values()), 1),
        }
        pv_drop = before["pv_w"] - after["pv_w"]
        meter_rise = after["meter_w"] - before["meter_w"]  # + import: less export when PV drops
        allowed = max(0.25 * pv_drop, 100.0)
        meter_ok = abs(meter_rise - pv_drop) <= allowed
        result["meter"] = {
            "saw_effect": meter_ok,
            "meter_before_w": round(before["meter_w"], 1),
            "meter_after_w": round(after["meter_w"], 1),
            "meter_change_w": round(meter_rise, 1),
            "pv_change_w": round(-pv_drop, 1),
            "tolerance_w": round(allowed, 1),
        }
        if not meter_ok:
            reversed_sign = abs(meter_rise + pv_drop) <= allowed
            raise StepFailed(
                f"the meter did not see the test: PV dropped {pv_drop:.0f} W but the meter changed by "
                f"{meter_rise:+.0f} W (expected about +{pv_drop:.0f} W, i.e. less export)"
                + (" — the meter's sign looks reversed" if reversed_sign else ""),
                "check the meter measures the connection point (grid side of all inverters) and its CT "
                "direction, then rerun",
                measured=result,
            )
    except DeviceError as exc:
        raise StepFailed(f"{exc}", "check the device is on the network and rerun") from None
    finally:
        with contextlib.suppress(Exception):
            for b in batteries:
                await conns[b["name"]].set_storage_power(None)
        await close_devices(conns)
        await apply_static_limits(ctx, "after the local test")
    return result


async def server_test(ctx: Context) -> dict[str, Any]:
    """Run the gateway against the server: fresh telemetry there, and any test control acknowledged."""
    from certs.tls import client_ssl_context
    from gateway.client import mapping
    from gateway.config import load_settings
    from sep2 import resources as r

    opts, state = ctx.opts, ctx.state
    identity, registration = state.get("identity"), state.get("registration")
    settings = load_settings(opts.site_toml_path)
    context = client_ssl_context(identity["cert_path"], identity["key_path"], registration["server_ca"])
    started = int(time.time())
    out: dict[str, Any] = {"started_at": iso(started)}
    site_mrid = mapping.mirror_point(identity["lfdi"], "site").mrid
    async with (
        running_gateway(ctx, settings) as runtime,
        ServerProbe(registration["dcap_url"], context, opts.request_timeout_s) as probe,
    ):
        assert runtime.client is not None
        await runtime.client.wait_ready(opts.register_timeout_s)
        dcap = await probe.get(registration["dcap_url"], r.DeviceCapability)
        sent: list[dict[str, Any]] = []

        async def fresh() -> Any:
            if runtime.runner is not None and runtime.runner.meter.last is not None and not sent:
                sent.append({"at": iso(), "meter_w": runtime.runner.meter.last.w})
            mups = await probe.get_list(
                dcap.MirrorUsagePointListLink.href, r.MirrorUsagePointList, "MirrorUsagePoint"
            )
            mup = next((m for m in mups if (m.mRID or "").upper() == site_mrid), None)
            if mup is None:
                return None
            doc = await probe.get(mup.href, r.MirrorUsagePoint)
            readings = [m for m in doc.MirrorMeterReading if (m.lastUpdateTime or 0) >= started - 1]
            return (mup.href, doc, readings) if readings else None

        try:
            href, _doc, readings = await wait_for(fresh, opts.telemetry_timeout_s)
        except TimeoutError as exc:
            raise StepFailed(
                f"the server shows no fresh telemetry for the site after {opts.telemetry_timeout_s:g} s "
                f"({exc})",
                "check the gateway's connection to the server (outbox pending: "
                f"{await runtime.client.outbox.pending()}), then rerun",
            ) from None
        out["telemetry"] = {
            "mirror_usage_point": href,
            "checked_at": iso(),
            "readings": [
                {"description": m.description, "mrid": m.mRID, "last_update": iso(m.lastUpdateTime)}
                for m in readings
            ],
            "gateway_measured": sent[0] if sent else None,
        }
        decision = runtime.decision
        active = [m for mrids in (decision.schedule.active.values() if decision else []) for m in mrids]
        out["test_control"] = {"issued": bool(active), "controls": active}
        if active and dcap.ResponseSetListLink is not None:

            async def acknowledged() -> list[dict[str, Any]] | None:
                sets = await probe.get_list(dcap.ResponseSetListLink.href, r.ResponseSetList, "ResponseSet")
                found: list[dict[str, Any]] = []
                for rs in sets:
                    if rs.ResponseListLink is None:
                        continue
                    for resp in await probe.get_list(rs.ResponseListLink.href, r.ResponseList, "Response"):
                        if (resp.subject or "").upper() in {m.upper() for m in active} and (
                            resp.endDeviceLFDI or ""
                        ).upper() == identity["lfdi"]:
                            found.append(
                                {
                                    "control": resp.subject,
                                    "status": resp.status,
                                    "created": iso(resp.createdDateTime) if resp.createdDateTime else None,
                                }
                            )
                return found if {f["control"].upper() for f in found} >= {m.upper() for m in active} else None

            try:
                out["test_control"]["responses"] = await wait_for(acknowledged, opts.telemetry_timeout_s)
            except TimeoutError:
                raise StepFailed(
                    f"the server's test control {', '.join(active)} was not acknowledged: no Response "
                    "from this "
                    "gateway reached the server",
                    "check the gateway's connection to the server and rerun",
                ) from None
            out["test_control"]["acknowledged"] = True
            limits = decision.limits if decision else None
            out["test_control"]["effective_export_limit_w"] = limits.export_w.value if limits else None
    out["finished_at"] = iso()
    return out


async def step_verify(ctx: Context) -> None:
    ui = ctx.ui
    ui.info("applying a short test limit locally (half the present PV output) ...")
    local = await local_test(ctx)
    verification: dict[str, Any] = {"local": local}
    ctx.state.set("verification", verification)
    ctx.save()
    inv, met = local["inverter"], local["meter"]
    ui.info(
        f"inverter obeyed in {inv['response_s']:g} s: {inv['pv_before_w']:g} W -> {inv['pv_after_w']:g} W "
        f"(limit {inv['limit_w']:g} W); meter {met['meter_before_w']:g} W -> {met['meter_after_w']:g} W"
    )
    ui.info("running the gateway against the server to check telemetry and control acknowledgements ...")
    verification["server"] = await server_test(ctx)
    verification["passed"] = True
    verification["finished_at"] = iso()
    ctx.state.set("verification", verification)
    tel = verification["server"]["telemetry"]
    ctrl = verification["server"]["test_control"]
    ui.panel(
        "Verified end to end",
        [
            f"inverter obeyed the test limit ({inv['pv_before_w']:g} W -> {inv['pv_after_w']:g} W, "
            f"limit {inv['limit_w']:g} W, {inv['response_s']:g} s)",
            f"meter saw it ({met['meter_change_w']:+g} W at the connection point)",
            f"server has fresh telemetry: {len(tel['readings'])} reading(s), "
            f"last {tel['readings'][-1]['last_update']}",
            (
                "server test control acknowledged: "
                + ", ".join(f"{x['control']} status {x['status']}" for x in ctrl.get("responses", []))
            )
            if ctrl["issued"]
            else "the server issued no test control (nothing to acknowledge)",
        ],
    )
