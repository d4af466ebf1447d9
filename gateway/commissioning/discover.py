"""Step 1, ``discover``: scan Modbus TCP/RTU addresses and unit IDs for SunSpec devices and confirm roles."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from typing import Any

from gateway.commissioning.common import (
    ROLES,
    RTU_PREFIX,
    Context,
    StepFailed,
    ask_value,
    fmt_w,
    serial_line_of,
)
from gateway.commissioning.limits import apply_static_limits


def parse_units(text: str) -> list[int]:
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"unit IDs: {part!r} is not a number or a range like 1-3") from None
        if not 0 <= a <= b <= 247:
            raise ValueError(f"unit IDs: {part!r} must be within 0..247")
        units.update(range(a, b + 1))
    if not units:
        raise ValueError("unit IDs: none given")
    return sorted(units)


def _rtu_target(entry: str) -> str:
    """``rtu:PATH[@BAUD[-8PS]]`` (e.g. ``rtu:/dev/ttyUSB0@9600-8N1``) in its canonical, complete form."""
    from gateway.config import BAUDRATES, PARITIES

    path, _, settings = entry.removeprefix(RTU_PREFIX).partition("@")
    baud_text, _, frame = settings.partition("-")
    frame = (frame or "8N1").upper()
    try:
        baudrate = int(baud_text or 9600)
    except ValueError:
        raise ValueError(f"--scan {entry!r}: baud rate {baud_text!r} is not a number") from None
    if not path.startswith("/"):
        raise ValueError(f"--scan {entry!r}: name the serial device, e.g. rtu:/dev/ttyUSB0@9600")
    if baudrate not in BAUDRATES:
        raise ValueError(f"--scan {entry!r}: baud rate must be one of {BAUDRATES}")
    if len(frame) != 3 or frame[0] != "8" or frame[1] not in PARITIES or frame[2] not in "12":
        raise ValueError(f"--scan {entry!r}: frame must be 8N1, 8E1, 8O1 or with 2 stop bits (8N2)")
    return f"{RTU_PREFIX}{path}@{baudrate}-{frame}"


def parse_scan_targets(entries: list[str]) -> list[tuple[str, int]]:
    """``HOST``, ``HOST:PORT``, ``HOST:PORT-PORT``; HOST may be a CIDR block of at most 256 addresses.

    ``rtu:PATH[@BAUD[-8N1]]`` scans a Modbus RTU line instead; its target is ``(canonical form, 0)``.
    """
    out: list[tuple[str, int]] = []
    for entry in entries:
        entry = entry.strip()
        if entry.startswith(RTU_PREFIX):
            out.append((_rtu_target(entry), 0))
            continue
        host, sep, ports = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not sep:
            host, ports = entry, "502"
        lo, _, hi = ports.partition("-")
        try:
            p1, p2 = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--scan {entry!r}: port {ports!r} is not a number or a range") from None
        if not 1 <= p1 <= p2 <= 65535 or p2 - p1 > 64:
            raise ValueError(f"--scan {entry!r}: ports must be within 1..65535, at most 65 per range")
        if "/" in host:
            try:
                net = ipaddress.ip_network(host, strict=False)
            except ValueError as exc:
                raise ValueError(f"--scan {entry!r}: {exc}") from None
            if net.num_addresses > 256:
                raise ValueError(f"--scan {entry!r}: at most 256 addresses per block (a /24)")
            hosts = [str(h) for h in (net.hosts() if net.num_addresses > 2 else net)]
        else:
            if not host:
                raise ValueError(f"--scan {entry!r}: no host")
            hosts = [host]
        out.extend((h, p) for h in hosts for p in range(p1, p2 + 1))
    if not out:
        raise ValueError("--scan: no addresses given")
    return out


def endpoint_label(host: str, port: int) -> str:
    return host if host.startswith(RTU_PREFIX) else f"{host}:{port}"


def address_key(host: str, port: int, unit: int) -> str:
    return f"{endpoint_label(host, port)}:{unit}"


async def scan_one(host: str, port: int, unit: int, timeout_s: float) -> dict[str, Any]:
    from gateway.devices import DeviceConnection, DeviceError, DeviceUnreachable

    try:
        dev = DeviceConnection(host, port, unit, serial_line_of(host), timeout=timeout_s, retries=0)
    except ValueError as exc:  # the same serial device with other settings in one scan
        return {"found": False, "error": str(exc), "refused": False}
    try:
        info = await dev.scan()
        return {"found": True, "info": info.to_dict()}
    except DeviceUnreachable as exc:
        refused = any(text in str(exc) for text in ("cannot connect", "connection refused", "cannot open"))
        return {"found": False, "error": str(exc), "refused": refused}
    except DeviceError as exc:
        return {"found": False, "error": str(exc), "refused": False}
    finally:
        with contextlib.suppress(Exception):
            await dev.close()


def _scan_answer(text: str) -> list[str]:
    entries = [e.strip() for e in text.split(",") if e.strip()]
    parse_scan_targets(entries)
    return entries


def _role_answer(text: str) -> str:
    text = text.strip().lower()
    if text not in ROLES:
        raise ValueError(f"must be one of {', '.join(ROLES)}")
    return text


def _device_name(role: str, taken: set[str]) -> str:
    name, n = role, 2
    while name in taken:
        name, n = f"{role}-{n}", n + 1
    taken.add(name)
    return name


async def step_discover(ctx: Context) -> None:
    opts, ui, state = ctx.opts, ctx.ui, ctx.state
    scan_entries = opts.scan
    if scan_entries is None:
        scan_entries = ask_value(
            ui,
            None,
            "--scan",
            "Modbus addresses to scan (HOST[:PORT[-PORT]] for TCP, rtu:/dev/ttyUSB0@9600 for RS-485; "
            "comma separated)",
            _scan_answer,
        )
    try:
        targets = parse_scan_targets(scan_entries)
    except ValueError as exc:
        raise StepFailed(str(exc), "rerun with --scan HOST:PORT (e.g. 192.168.1.20:502)") from None
    units_text = opts.units or ask_value(ui, None, "--units", "Modbus unit IDs to try", str, default="1-3")
    try:
        units = parse_units(units_text)
    except ValueError as exc:
        raise StepFailed(f"--units: {exc}", "rerun with --units like 1-3 or 1,2,126") from None
    state.step("discover")["inputs_used"] = {"scan": scan_entries, "units": units_text}
    ui.info(f"scanning {len(targets)} address(es) x {len(units)} unit ID(s) for SunSpec devices ...")
    sem = asyncio.Semaphore(32)

    async def probe(host: str, port: int, unit: int) -> tuple[str, int, int, dict[str, Any]]:
        async with sem:
            return host, port, unit, await scan_one(host, port, unit, opts.scan_timeout_s)

    results = await asyncio.gather(*(probe(h, p, u) for h, p in targets for u in units))
    found = [(h, p, u, r["info"]) for h, p, u, r in results if r["found"]]
    silent_ports = sorted(
        {endpoint_label(h, p) for h, p, _, r in results if not r["found"] and r.get("refused")}
        - {endpoint_label(h, p) for h, p, _, _ in found}
    )
    errors = [f"{address_key(h, p, u)}: {r['error']}" for h, p, u, r in results if not r["found"]]
    scan_summary = {
        "addresses": len(targets),
        "units": units,
        "found": len(found),
        "silent_ports": silent_ports,
    }
    rows = []
    devices = []
    taken: set[str] = set()
    for host, port, unit, info in found:
        key = address_key(host, port, unit)
        role = opts.roles.get(key, info["kind"])
        rows.append(
            [
                key,
                info["kind"],
                info["manufacturer"],
                info["model"],
                info["serial"],
                info["firmware"],
                fmt_w(info.get("rated_w")),
                ",".join(str(m) for m in info["models"]),
            ]
        )
        devices.append({"host": host, "port": port, "unit": unit, "key": key, "role": role, "info": info})
    if silent_ports:
        ui.warn("nothing answered on " + ", ".join(silent_ports))
    if not devices:
        raise StepFailed(
            f"no SunSpec device answered at {', '.join(scan_entries)} (unit IDs {units_text})"
            + (f"; no connection at all on {', '.join(silent_ports)}" if silent_ports else ""),
            "check the devices are powered and on the network, their Modbus TCP is enabled and the port/unit "
            "IDs match their settings; then rerun (with --scan HOST:PORT and --units)",
            errors=errors[:20],
        )
    ui.table(
        "SunSpec devices found",
        ["address", "kind", "make", "model", "serial", "firmware", "rated", "models"],
        rows,
    )
    for key, role in opts.roles.items():
        if role not in ROLES:
            raise StepFailed(
                f"--role {key}={role}: role must be one of {', '.join(ROLES)}",
                "rerun with --role HOST:PORT:UNIT=pv|battery|meter|ignore",
            )
        if key not in {d["key"] for d in devices}:
            raise StepFailed(
                f"--role {key}: no SunSpec device found at that address",
                "check the address (HOST:PORT:UNIT as listed) and rerun",
            )
    if ui.interactive and not ui.confirm("Are these roles right (kind column)?", True):
        for dev in devices:
            dev["role"] = ask_value(
                ui,
                None,
                "--role",
                f"role of {dev['key']} ({dev['info']['manufacturer']} "
                f"{dev['info']['model']}) [pv/battery/meter/ignore]",
                _role_answer,
                default=dev["role"],
            )
    confirmed = [d for d in devices if d["role"] != "ignore"]
    for dev in confirmed:
        dev["name"] = _device_name(dev["role"], taken)
    meters = [d for d in confirmed if d["role"] == "meter"]
    state.set("scan", scan_summary)
    state.set("devices", confirmed)
    if len(meters) != 1:
        what = "no SunSpec meter (models 201-204) was found" if not meters else f"{len(meters)} meters"
        raise StepFailed(
            f"{what} among the devices at {', '.join(scan_entries)}; the gateway needs exactly one meter at "
            "the connection point to control the site's export",
            "check the site meter is powered, on the network, has Modbus TCP enabled and answers on the "
            "scanned port and unit IDs (add it with --scan HOST:PORT --units N, or mark one with --role "
            "HOST:PORT:UNIT=meter/ignore); then rerun",
            errors=errors[:20],
        )
    if not any(d["role"] in ("pv", "battery") for d in confirmed):
        raise StepFailed(
            "no PV or battery inverter was confirmed",
            "rerun with --role HOST:PORT:UNIT=pv (or battery) for the site's inverters",
        )
    state.record("devices confirmed", devices={d["name"]: d["key"] for d in confirmed})
    ctx.save()
    if state.get("site") and state.get("site", {}).get("limits"):
        await apply_static_limits(ctx, "devices re-confirmed")
