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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import secrets
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from sep2.files import write_atomic

if TYPE_CHECKING:
    from gateway.devices.device import SerialLine
from gateway.commissioning.nmi import NmiError, validate_nmi
from gateway.commissioning.state import (
    STEP_TITLES,
    STEPS,
    CommissioningState,
    StateError,
    inputs_changed,
    iso,
)

log = logging.getLogger("derlink.gateway.commissioning")
T = TypeVar("T")
ROLES = ("pv", "battery", "meter", "ignore")


class StepFailed(Exception):
    """A step could not finish: ``message`` says what happened, ``next_action`` what the installer does."""

    def __init__(self, message: str, next_action: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.next_action = next_action
        self.details = details


# ---------------------------------------------------------------------------------------------- options


@dataclass
class Options:
    """Everything the flow can take from flags. ``None`` = ask (interactive) or fail naming the flag."""

    work_dir: Path
    interactive: bool = False
    redo: str | None = None
    # discover
    scan: list[str] | None = None  # "HOST[:PORT[-PORT]]", HOST may be a CIDR (max 256 addresses)
    units: str | None = None  # "1-3,126"
    roles: dict[str, str] = field(default_factory=dict)  # "host:port:unit" -> pv | battery | meter | ignore
    scan_timeout_s: float = 1.0
    # identity
    cert: Path | None = None
    key: Path | None = None
    sign_with_ca: Path | None = None  # a derlink PKI directory (test lab / installer's own CA)
    name: str | None = None  # certificate CN for the CSR
    pin: int | None = None
    # site
    nmi: str | None = None
    export_limit_w: float | None = None
    import_limit_w: float | None = None
    generation_limit_w: float | None = None
    fallback_export_w: float | None = None
    fallback_import_w: float | None = None
    fallback_generation_w: float | None = None
    comms_timeout_s: int | None = None
    # register
    dcap_url: str | None = None
    discover: bool = False  # find the server by DNS-SD (mDNS) instead of dcap_url
    discover_interface: str | None = None  # local IPv4 address to ask from; all interfaces when None
    discover_timeout_s: float = 3.0
    server_ca: Path | None = None
    register_inband: bool | None = None
    server_mode: str | None = None
    request_timeout_s: float = 5.0
    register_timeout_s: float = 20.0
    # verify
    verify_window_s: float = 30.0
    telemetry_timeout_s: float = 30.0
    test_fraction: float = 0.5  # the test limit, as a fraction of the PV's present output
    loop_period_s: float = 1.0
    # outputs
    site_toml: Path | None = None

    @property
    def state_path(self) -> Path:
        return self.work_dir / "commissioning.json"

    @property
    def identity_dir(self) -> Path:
        return self.work_dir / "identity"

    @property
    def site_toml_path(self) -> Path:
        return self.site_toml or (self.work_dir / "site.toml")


def _file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return f"missing:{path}"


def step_inputs(step: str, opts: Options) -> dict[str, Any]:
    """The flags given on this run that feed ``step`` (None = not given), for change detection."""
    if step == "discover":
        return {"scan": opts.scan, "units": opts.units, "roles": dict(opts.roles) or None}
    if step == "identity":
        return {
            "cert": _file_digest(opts.cert),
            "key": _file_digest(opts.key),
            "sign_with_ca": str(opts.sign_with_ca) if opts.sign_with_ca else None,
            "name": opts.name,
            "pin": opts.pin,
        }
    if step == "site":
        return {
            "nmi": opts.nmi,
            "export_limit_w": opts.export_limit_w,
            "import_limit_w": opts.import_limit_w,
            "generation_limit_w": opts.generation_limit_w,
            "fallback_export_w": opts.fallback_export_w,
            "fallback_import_w": opts.fallback_import_w,
            "fallback_generation_w": opts.fallback_generation_w,
            "comms_timeout_s": opts.comms_timeout_s,
        }
    if step == "register":
        return {
            "dcap_url": opts.dcap_url,
            "server_ca": _file_digest(opts.server_ca),
            "register_inband": opts.register_inband,
            "server_mode": opts.server_mode,
        }
    return {}


# ---------------------------------------------------------------------------------------------------- UI


class UI(Protocol):
    interactive: bool

    def heading(self, text: str) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None: ...
    def panel(self, title: str, lines: list[str]) -> None: ...
    def ask(self, prompt: str, default: str | None = None) -> str: ...
    def confirm(self, prompt: str, default: bool = True) -> bool: ...


def ask_value(
    ui: UI, given: T | None, flag: str, prompt: str, parse: Callable[[str], T], default: str | None = None
) -> T:
    """The flag's value, else (interactive) ask until ``parse`` accepts the answer, else fail naming the flag.

    ``parse`` raises ValueError with a message for bad answers.
    """
    if given is not None:
        return given
    if not ui.interactive:
        if default is not None:
            return parse(default)
        raise StepFailed(f"{flag}: required (not running interactively)", f"rerun with {flag} ...")
    while True:
        answer = ui.ask(prompt, default)
        try:
            return parse(answer)
        except ValueError as exc:
            ui.warn(f"{prompt}: {exc}")


def _number(text: str, *, optional: bool = False) -> float | None:
    text = text.strip()
    if optional and text.lower() in ("", "none", "-"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of watts, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a number >= 0, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------ context


@dataclass
class Context:
    opts: Options
    state: CommissioningState
    ui: UI

    def save(self) -> None:
        self.state.save()


# ------------------------------------------------------------------------------------------- 1. discover


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


RTU_PREFIX = "rtu:"


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


def serial_line_of(host: str) -> SerialLine | None:
    """The SerialLine of a canonical ``rtu:`` scan target; None for a TCP host."""
    if not host.startswith(RTU_PREFIX):
        return None
    from gateway.devices.device import SerialLine

    path, _, settings = host.removeprefix(RTU_PREFIX).rpartition("@")
    baud, _, frame = settings.partition("-")
    return SerialLine(path, int(baud), frame[1], int(frame[2]))


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
                _fmt_w(info.get("rated_w")),
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


def _fmt_w(value: Any) -> str:
    return "-" if value is None else f"{float(value):g} W"


# ------------------------------------------------------------------------------- static limits (safety)


async def _open_devices(devices: list[dict[str, Any]], timeout_s: float = 2.0) -> dict[str, Any]:
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
        await _close_devices(conns)
        raise StepFailed(
            f"{exc} (did not answer on its port)",
            "check the device is powered and on the network and its Modbus TCP settings are unchanged, then "
            "rerun",
        ) from None
    return conns


async def _close_devices(conns: dict[str, Any]) -> None:
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
    conns = await _open_devices(generators)
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
        await _close_devices(conns)
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


# ------------------------------------------------------------------------------------------- 2. identity


def generate_pin() -> int:
    """A 2030.5 registration PIN: five random digits and a check digit (digit sum divisible by 10)."""
    from sep2.identity import sfdi_check_digit

    body = secrets.randbelow(90000) + 10000
    return body * 10 + sfdi_check_digit(body)


def _load_cert(path: Path) -> Any:
    from certs.pki import PkiError, load_certificate

    try:
        return load_certificate(path)
    except (PkiError, OSError, ValueError) as exc:
        raise StepFailed(
            f"--cert {path}: not a certificate: {exc}",
            "pass the PEM certificate file the CA issued for this gateway",
        ) from None


def _key_matches(cert: Any, key_path: Path) -> bool:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


async def step_identity(ctx: Context) -> None:
    from certs.pki import PkiError, create_key_and_csr, describe_certificate, sign_csr
    from sep2.identity import format_lfdi, format_sfdi

    opts, ui, state = ctx.opts, ctx.ui, ctx.state
    d = opts.identity_dir
    d.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = d / "gateway.key", d / "gateway.csr"
    cert_path = d / "gateway-chain.pem"
    previous = state.get("identity") or {}
    if opts.cert is not None and opts.key is not None:  # issued elsewhere, key included
        cert = _load_cert(opts.cert)
        try:
            matches = _key_matches(cert, opts.key)
        except (OSError, ValueError, TypeError) as exc:
            raise StepFailed(
                f"--key {opts.key}: not a usable private key: {exc}",
                "pass the PEM private key that belongs to --cert",
            ) from None
        if not matches:
            raise StepFailed(
                f"--key {opts.key} does not belong to --cert {opts.cert}",
                "pass the key the certificate was issued for",
            ) from None
        write_atomic(key_path, opts.key.read_bytes(), 0o600)
        write_atomic(cert_path, opts.cert.read_bytes())
        csr_path.unlink(missing_ok=True)
        source = "imported (certificate and key issued elsewhere)"
    else:
        if not key_path.exists():
            cn = opts.name or f"derlink-gateway-{secrets.token_hex(4)}"
            try:
                create_key_and_csr(key_path, csr_path, cn)
            except PkiError as exc:
                raise StepFailed(f"--name: {exc}", "rerun with a shorter --name") from None
            state.record("key and CSR generated on the gateway", csr=str(csr_path), common_name=cn)
            ctx.save()
            ui.info(f"generated the gateway's private key ({key_path}) and a CSR ({csr_path})")
        given = opts.cert
        if given is None and opts.sign_with_ca is not None:
            tmp_cert = d / "gateway.pem"
            try:
                sign_csr(opts.sign_with_ca, csr_path, out=tmp_cert, force=True)
            except PkiError as exc:
                raise StepFailed(
                    f"--sign-with-ca {opts.sign_with_ca}: {exc}",
                    "pass a derlink PKI directory (derlink certs init) or import --cert",
                ) from None
            given = tmp_cert.with_name("gateway-chain.pem")
            source = f"generated here, CSR signed by {opts.sign_with_ca}"
        elif (
            given is None
            and previous.get("cert_path")
            and Path(previous["cert_path"]).exists()  # noqa: ASYNC240
            and not csr_path.exists()
        ):
            given = Path(previous["cert_path"])
            source = previous.get("source", "kept")
        elif given is None:
            if ui.interactive:
                ui.panel(
                    "Certificate signing request",
                    [
                        f"send {csr_path} to the DNSP's certificate authority;",
                        "enter the path of the certificate it issues (PEM, with its chain if given)",
                    ],
                )
                given = ask_value(ui, None, "--cert", "certificate file", lambda s: Path(s).expanduser())
            else:
                raise StepFailed(
                    f"waiting for a certificate: the CSR is {csr_path}",
                    f"send {csr_path} to the DNSP's certificate authority and rerun with --cert ISSUED.pem",
                    csr=str(csr_path),
                )
            source = "generated here, CSR signed by the DNSP's CA"
        else:
            source = "generated here, CSR signed by the DNSP's CA"
        cert = _load_cert(given)
        if not _key_matches(cert, key_path):
            raise StepFailed(
                f"--cert {given} was not issued for this gateway's key ({key_path})",
                f"ask the CA to sign {csr_path} (the CSR made on this gateway) and rerun with that --cert",
            )
        if Path(given).resolve() != cert_path.resolve():  # noqa: ASYNC240 (small local files)
            write_atomic(cert_path, Path(given).read_bytes())  # noqa: ASYNC240
    description = describe_certificate(cert_path)
    if description["role"] in ("ca", "server"):
        raise StepFailed(
            f"the certificate is a {description['role']} certificate, not a client certificate",
            "import the gateway's own (client) certificate",
        ) from None
    pin = opts.pin if opts.pin is not None else previous.get("pin") or generate_pin()
    if not 0 <= int(pin) <= 999999:
        raise StepFailed(f"--pin: must be 0..999999, got {pin}", "rerun with the 6-digit PIN")
    lfdi, sfdi = description["lfdi"], description["sfdi"]
    identity = {
        "lfdi": lfdi,
        "lfdi_grouped": format_lfdi(lfdi),
        "sfdi": sfdi,
        "sfdi_grouped": format_sfdi(sfdi),
        "sfdi_check_digit": sfdi % 10,
        "pin": int(pin),
        "cert_path": str(cert_path),
        "key_path": str(key_path),
        "csr_path": str(csr_path) if csr_path.exists() else None,
        "subject": description["subject"],
        "issuer": description["issuer"],
        "serial": description["serial"],
        "not_after": description["not_after"],
        "source": source,
    }
    state.set("identity", identity)
    ui.panel(
        "Gateway identity — give these to the DNSP",
        [
            f"LFDI  {identity['lfdi_grouped']}",
            f"SFDI  {identity['sfdi_grouped']}   (last digit {sfdi % 10} is the check digit)",
            f"PIN   {int(pin):06d}",
            f"certificate: {description['subject']}, issued by {description['issuer']}",
        ],
    )


# ----------------------------------------------------------------------------------------------- 3. site


async def step_site(ctx: Context) -> None:
    opts, ui, state = ctx.opts, ctx.ui, ctx.state
    previous = state.get("site") or {}

    def limit(given: float | None, flag: str, prompt: str, key: str, optional: bool) -> float | None:
        if given is not None:
            return _number(str(given))
        old = previous.get(key)
        if not ui.interactive:
            if old is not None or optional:
                return old
            raise StepFailed(f"{flag}: required (not running interactively)", f"rerun with {flag} WATTS")
        default = f"{old:g}" if old is not None else ("" if optional else None)
        return ask_value(ui, None, flag, prompt, lambda text: _number(text, optional=optional), default)

    try:
        limits = {
            "export_limit_w": limit(
                opts.export_limit_w,
                "--export-limit-w",
                "Static export limit of the connection agreement (W)",
                "export_limit_w",
                False,
            ),
            "import_limit_w": limit(
                opts.import_limit_w,
                "--import-limit-w",
                "Static import limit (W, empty = none)",
                "import_limit_w",
                True,
            ),
            "generation_limit_w": limit(
                opts.generation_limit_w,
                "--generation-limit-w",
                "Static generation limit (W, empty = none)",
                "generation_limit_w",
                True,
            ),
        }
        fallback = {
            "export_limit_w": limit(
                opts.fallback_export_w,
                "--fallback-export-w",
                "Comms-loss fallback export limit (W)",
                "fallback_export_w",
                False,
            ),
            "import_limit_w": limit(
                opts.fallback_import_w,
                "--fallback-import-w",
                "Comms-loss fallback import limit (W, empty = none)",
                "fallback_import_w",
                True,
            ),
            "generation_limit_w": limit(
                opts.fallback_generation_w,
                "--fallback-generation-w",
                "Comms-loss fallback generation limit (W, empty = none)",
                "fallback_generation_w",
                True,
            ),
        }
    except ValueError as exc:
        raise StepFailed(f"limits: {exc}", "rerun with the limits in watts (numbers >= 0)") from None
    timeout = opts.comms_timeout_s or previous.get("comms_timeout_s") or 300
    if (
        fallback["export_limit_w"] is not None
        and limits["export_limit_w"] is not None
        and fallback["export_limit_w"] > limits["export_limit_w"]
    ):
        raise StepFailed(
            f"--fallback-export-w {fallback['export_limit_w']:g} is above the static export limit "
            f"{limits['export_limit_w']:g}: the fallback must be at least as strict",
            "rerun with a fallback export limit <= the static export limit",
        )
    record = {
        "limits": limits,
        "fallback": fallback,
        "comms_timeout_s": int(timeout),
        "fallback_export_w": fallback["export_limit_w"],
        "fallback_import_w": fallback["import_limit_w"],
        "fallback_generation_w": fallback["generation_limit_w"],
        **{k: v for k, v in limits.items()},
    }
    if previous.get("nmi"):
        record["nmi"], record["nmi_checksum"] = previous["nmi"], previous.get("nmi_checksum")
    state.set("site", record)
    ctx.save()
    # Safety first: the limits go to the devices before anything else can fail.
    await apply_static_limits(ctx, "site record")
    nmi_text = opts.nmi
    if nmi_text is None and ui.interactive:
        while True:
            nmi_text = ui.ask("NMI (10 characters, from the customer's bill)", previous.get("nmi"))
            try:
                validate_nmi(nmi_text)
                break
            except NmiError as exc:
                ui.warn(f"NMI {exc}")
    if nmi_text is None:
        if previous.get("nmi"):
            nmi_text = previous["nmi"]
        else:
            raise StepFailed(
                "--nmi: required (not running interactively)",
                "rerun with --nmi and the site's 10-character NMI",
            )
    try:
        nmi = validate_nmi(nmi_text)
    except NmiError as exc:
        raise StepFailed(
            f"NMI malformed: {exc}",
            "rerun with --nmi set to the 10-character NMI from the customer's electricity bill (11 with "
            "its checksum digit); the static limits are already applied",
        ) from None
    record["nmi"], record["nmi_checksum"] = nmi.nmi, nmi.checksum
    record["nmi_checksum_checked"] = nmi.checksum_given
    state.set("site", record)
    ui.panel(
        "Site record",
        [
            f"NMI {nmi.nmi} (checksum {nmi.checksum}{', checked' if nmi.checksum_given else ''})",
            "static limits: " + ", ".join(f"{k} {_fmt_w(v)}" for k, v in limits.items() if v is not None),
            "comms-loss fallback: "
            + ", ".join(f"{k} {_fmt_w(v)}" for k, v in fallback.items() if v is not None)
            + f" after {int(timeout)} s without the server",
        ],
    )


# ---------------------------------------------------------------------------------- server access (probe)


class ServerProbe:
    """Read-only 2030.5 requests as this gateway (mutual TLS): preflight checks and verification reads."""

    def __init__(self, dcap_url: str, ssl_context: ssl.SSLContext, timeout: float = 5.0) -> None:
        self.dcap_url = dcap_url
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._session: Any = None

    async def __aenter__(self) -> ServerProbe:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, href: str) -> str:
        from urllib.parse import urljoin

        return urljoin(self.dcap_url, href)

    async def get(self, href: str, kind: type[T]) -> T:
        from sep2.xml import CONTENT_TYPE, from_xml

        async with self._session.get(self.url(href), headers={"Accept": CONTENT_TYPE}) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise ProbeHttpError(
                    resp.status,
                    f"GET {href}: HTTP {resp.status} {resp.headers.get('X-Error-Detail', '')}".strip(),
                )
        return from_xml(body, kind)  # type: ignore[arg-type, return-value]

    async def get_list(self, href: str, kind: type[T], item: str) -> list[Any]:
        from urllib.parse import urlencode

        out: list[Any] = []
        while True:
            sep = "&" if "?" in href else "?"
            page: Any = await self.get(f"{href}{sep}{urlencode({'s': len(out), 'l': 100})}", kind)
            got = getattr(page, item)
            out.extend(got)
            if not got or len(out) >= (page.all or 0):
                return out


class ProbeHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def diagnose_connection(
    exc: BaseException, dcap_url: str, identity: dict[str, Any], server_ca: Path
) -> StepFailed:
    """Turn a failed first request into what the installer can act on."""
    import aiohttp

    parts = urlsplit(dcap_url)
    where = f"{parts.hostname}:{parts.port or 443}"
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return StepFailed(
            f"the utility server's certificate at {where} is not trusted by this gateway ({text}); "
            "the server "
            f"CA file is {server_ca}",
            "check --dcap-url points at the DNSP's server and pass the DNSP's CA chain with --server-ca, "
            "then "
            "rerun",
        )
    rejected_markers = (
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "certificate required",
        "alert",
        "Server disconnected",
        "Connection reset",
        "ServerDisconnected",
    )
    if isinstance(exc, ProbeHttpError) and exc.status == 403:
        return StepFailed(
            f"the utility server refused this gateway's certificate (HTTP 403: revoked or not allowed) — "
            f"LFDI {identity.get('lfdi')}",
            "ask the DNSP why the certificate is refused (revoked?); a new certificate needs --redo identity",
        )
    if (
        isinstance(exc, aiohttp.ClientConnectorError)
        and not isinstance(exc, aiohttp.ClientSSLError)
        and "ssl" not in text.lower()
    ):
        return StepFailed(
            f"cannot connect to the utility server at {where}: {getattr(exc, 'os_error', exc)}",
            "check --dcap-url (host and port) and that the site's internet connection works, then rerun",
        )
    if any(m.lower() in text.lower() for m in rejected_markers) or isinstance(
        exc, ssl.SSLError | ConnectionError
    ):
        return StepFailed(
            f"the utility server at {where} did not accept this gateway's certificate (TLS handshake "
            f"rejected: {text}). The certificate was issued by {identity.get('issuer')}; the server only "
            "trusts certificates from the DNSP's certificate authority",
            "have the DNSP's CA issue the gateway certificate (send it the CSR made on this gateway, "
            f"{identity.get('csr_path') or 'see --redo identity'}), then rerun with --cert ISSUED.pem "
            "(and --key if the key was made elsewhere)",
        )
    return StepFailed(
        f"the utility server at {where} could not be reached: {text}",
        "check --dcap-url and the network, then rerun",
    )


# ------------------------------------------------------------------------------------------- site.toml


def site_toml_data(ctx: Context, registration: dict[str, Any]) -> dict[str, Any]:
    state, opts = ctx.state, ctx.opts
    identity, site = state.get("identity"), state.get("site")
    token = (state.get("local_api") or {}).get("token") or secrets.token_urlsafe(24)
    state.set("local_api", {"token": token})
    limits = {k: v for k, v in site["limits"].items() if v is not None}
    fallback = {k: v for k, v in site["fallback"].items() if v is not None}
    return {
        "gateway": {"data_dir": str((opts.work_dir / "gateway-data").resolve()), "lfdi": identity["lfdi"]},
        "server": {
            "dcap_url": registration["dcap_url"],
            "pin": identity["pin"],
            "mode": registration["mode"],
            "register_inband": registration["register_inband"],
            "request_timeout_s": opts.request_timeout_s,
            "backoff_initial_s": 0.5,
            "backoff_max_s": 300.0,
        },
        "tls": {
            "cert": str(Path(identity["cert_path"]).resolve()),
            "key": str(Path(identity["key_path"]).resolve()),
            "ca": str(Path(registration["server_ca"]).resolve()),
        },
        "device": [_device_entry(d) for d in state.get("devices")],
        "installer_limits": limits,
        "comms_loss": {**fallback, "comms_timeout_s": site["comms_timeout_s"]},
        "control_loop": {"period_s": opts.loop_period_s},
        "local_api": {"port": 0, "token": token},
    }


def _device_entry(device: dict[str, Any]) -> dict[str, Any]:
    """One ``[[device]]`` of site.toml: host/port for Modbus TCP, serial settings for Modbus RTU."""
    entry = {"name": device["name"], "role": device["role"]}
    line = serial_line_of(device["host"])
    if line is None:
        entry.update(host=device["host"], port=device["port"])
    else:
        entry.update(
            serial_port=line.port, baudrate=line.baudrate, parity=line.parity, stopbits=line.stopbits
        )
    return {**entry, "unit": device["unit"]}


def write_site_toml(ctx: Context, registration: dict[str, Any]) -> Any:
    """Write site.toml for ``derlink gateway --config`` and load it back with the daemon's own reader."""
    from gateway.config import ConfigError, load_settings, to_toml

    path = ctx.opts.site_toml_path
    header = (
        f"derlink gateway configuration written by `derlink gateway commission` at {iso()}\n"
        f"NMI {ctx.state.get('site')['nmi']}; run it with: derlink gateway --config {path}"
    )
    write_atomic(path, to_toml(site_toml_data(ctx, registration), header).encode(), 0o600)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise StepFailed(
            f"the site.toml written at {path} does not load: {exc}", "report this as a bug; the state is kept"
        ) from None
    ctx.state.set("site_toml", str(path))
    return settings


# ----------------------------------------------------------------------------------------- 4. register


@contextlib.asynccontextmanager
async def running_gateway(ctx: Context, settings: Any) -> Any:
    """The real gateway daemon on the commissioned site.toml; the static cap is put back afterwards."""
    from gateway.runtime import GatewayRuntime

    runtime = GatewayRuntime(settings)
    try:
        await runtime.start()
        yield runtime
    finally:
        with contextlib.suppress(Exception):
            await runtime.stop()
        await apply_static_limits(ctx, "after the gateway's test run")


async def _wait_for(predicate: Callable[[], Awaitable[Any]], within: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + within
    last_exc: Exception | None = None
    while True:
        try:
            value = await predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last problem on timeout
            last_exc = exc
        if time.monotonic() > deadline:
            if last_exc is not None:
                raise TimeoutError(str(last_exc)) from last_exc
            raise TimeoutError("condition not met")
        await asyncio.sleep(every)


async def discover_dcap_url(ui: UI, opts: Options) -> str:
    """The DeviceCapability URL of the one utility server that answers DNS-SD (2030.5 clause 7)."""
    from sep2.dnssd import SERVICE_TYPE, discover

    where = opts.discover_interface or "all interfaces"
    ui.info(f"looking for the utility server by DNS-SD ({SERVICE_TYPE} on {where})")
    try:
        servers = await discover(opts.discover_timeout_s, opts.discover_interface)
    except Exception as exc:  # zeroconf reports a bad interface or a busy socket in several ways
        raise StepFailed(
            f"DNS-SD discovery could not run on {where}: {exc}",
            "pass --discover-interface with this gateway's address on the server's network, or --dcap-url",
        ) from None
    if not servers:
        raise StepFailed(
            f"no IEEE 2030.5 server answered DNS-SD on {where} within {opts.discover_timeout_s:g} s",
            "a DNSP's server on the internet is not discoverable: pass its --dcap-url; for a local server "
            "check it advertises (derlink server --dnssd) and that the gateway is on the same network",
        )
    if len(servers) == 1:
        ui.info(f"found {servers[0].instance!r}: {servers[0].dcap_url}")
        return servers[0].dcap_url
    ui.table(
        "utility servers that answered DNS-SD",
        ["#", "instance", "DeviceCapability URL"],
        [[str(n), s.instance, s.dcap_url] for n, s in enumerate(servers, 1)],
    )
    if not ui.interactive:
        raise StepFailed(
            f"{len(servers)} servers answered DNS-SD: " + ", ".join(s.dcap_url for s in servers),
            "rerun with --dcap-url naming the DNSP's server",
        )

    def pick(text: str) -> str:
        if not text.strip().isdigit() or not 1 <= int(text) <= len(servers):
            raise ValueError(f"answer a number from 1 to {len(servers)}")
        return servers[int(text) - 1].dcap_url

    return ask_value(ui, None, "--dcap-url", "Which server is the DNSP's (number)", pick)


async def step_register(ctx: Context) -> None:
    from certs.tls import TlsConfigError, client_ssl_context
    from gateway.client import RegistrationError
    from sep2 import resources as r

    opts, ui, state = ctx.opts, ctx.ui, ctx.state
    identity, site = state.get("identity"), state.get("site")
    previous = state.get("registration") or {}

    def https_url(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"must be an https:// URL, got {text!r}")
        return text.strip()

    try:
        dcap_url = https_url(opts.dcap_url) if opts.dcap_url else None
    except ValueError as exc:
        raise StepFailed(f"--dcap-url: {exc}", "rerun with the DNSP's DeviceCapability URL") from None
    if dcap_url is None and opts.discover:
        dcap_url = await discover_dcap_url(ui, opts)
    dcap_url = (
        dcap_url
        or previous.get("dcap_url")
        or ask_value(
            ui, None, "--dcap-url", "Utility server DeviceCapability URL (https://host:port/dcap)", https_url
        )
    )
    ca_given = opts.server_ca or (Path(previous["server_ca"]) if previous.get("server_ca") else None)
    ca_given = ca_given or ask_value(
        ui, None, "--server-ca", "The DNSP's CA chain file (PEM)", lambda s: Path(s).expanduser()
    )
    server_ca = opts.identity_dir / "server-ca.pem"
    try:
        if Path(ca_given).resolve() != server_ca.resolve():  # noqa: ASYNC240 (small local files)
            write_atomic(server_ca, Path(ca_given).read_bytes())  # noqa: ASYNC240
    except OSError as exc:
        raise StepFailed(f"--server-ca {ca_given}: {exc}", "pass the DNSP's CA chain (PEM)") from None
    register_inband = (
        opts.register_inband if opts.register_inband is not None else previous.get("register_inband", False)
    )
    mode = opts.server_mode or previous.get("mode") or "poll"
    registration: dict[str, Any] = {
        "dcap_url": dcap_url,
        "server_ca": str(server_ca),
        "register_inband": bool(register_inband),
        "mode": mode,
    }
    state.set("registration", registration)
    settings = write_site_toml(ctx, registration)
    ctx.save()
    ui.info(f"wrote {settings.path}")

    try:
        context = client_ssl_context(identity["cert_path"], identity["key_path"], server_ca)
    except (TlsConfigError, ssl.SSLError, OSError) as exc:
        raise StepFailed(
            f"the gateway's TLS files cannot be used: {exc}",
            "check --server-ca is a PEM CA chain; --redo identity for a new certificate",
        ) from None
    # Preflight as this gateway: can we talk TLS to the server, and does it know us already?
    async with ServerProbe(dcap_url, context, opts.request_timeout_s) as probe:
        try:
            dcap = await probe.get(dcap_url, r.DeviceCapability)
        except Exception as exc:
            raise diagnose_connection(exc, dcap_url, identity, server_ca) from None
        known = False
        if dcap.EndDeviceListLink is not None:
            with contextlib.suppress(Exception):
                devices = await probe.get_list(dcap.EndDeviceListLink.href, r.EndDeviceList, "EndDevice")
                known = any((d.lFDI or "").upper() == identity["lfdi"] for d in devices)
    if not known and not register_inband:
        raise StepFailed(
            f"the utility server does not know this gateway (LFDI {identity['lfdi_grouped']}, SFDI "
            f"{identity['sfdi_grouped']})",
            f"give the DNSP the LFDI, SFDI and PIN {identity['pin']:06d} to register the site out-of-band "
            "(or rerun with --register-inband if the DNSP allows in-band registration), then rerun",
        )
    ui.info(
        "server reached over mutual TLS; "
        + ("it knows this gateway (registered out-of-band)" if known else "registering in-band")
    )
    async with running_gateway(ctx, settings) as runtime:
        client = runtime.client
        assert client is not None
        try:
            await client.wait_ready(opts.register_timeout_s)
        except RegistrationError as exc:
            text = str(exc)
            if "pIN" in text or "PIN" in text:
                server_pin = None
                with contextlib.suppress(Exception):
                    server_pin = int(text.split("Registration.pIN ")[1].split()[0])
                raise StepFailed(
                    f"PIN wrong: the server's Registration PIN "
                    f"{'' if server_pin is None else f'{server_pin:06d} '}does not match this gateway's PIN "
                    f"{identity['pin']:06d}",
                    f"ask the DNSP to correct the PIN for SFDI {identity['sfdi_grouped']} to "
                    f"{identity['pin']:06d} and rerun, or if the DNSP's PIN is the right one rerun with "
                    "--pin THAT_PIN",
                    server_pin=server_pin,
                ) from None
            raise StepFailed(
                f"registration failed: {text}",
                "give the DNSP the LFDI/SFDI/PIN shown in the identity step, then rerun",
            ) from None
        except TimeoutError:
            raise StepFailed(
                f"the gateway did not finish discovery with the server within {opts.register_timeout_s:g} s "
                f"(last error: {client.status.last_error})",
                "check the server is up and reachable, then rerun",
            ) from None
        end_device = client.end_device
        assert end_device is not None
        try:
            cp_href = await client.put_connection_point(site["nmi"])
        except Exception as exc:
            raise StepFailed(
                f"the server did not accept the ConnectionPoint (NMI {site['nmi']}): {exc}",
                "check the NMI with the DNSP, then rerun",
            ) from None
        registration.update(
            end_device=end_device.href,
            registered="out-of-band" if known else "in-band",
            pin_verified=True,
            connection_point_href=cp_href,
            at=iso(),
        )
        state.set("registration", registration)
        ctx.save()
        async with ServerProbe(dcap_url, context, opts.request_timeout_s) as probe:
            cp = await probe.get(cp_href, r.ConnectionPoint)
            registration["connection_point_on_server"] = cp.connectionPointId
            if cp.connectionPointId != site["nmi"]:
                raise StepFailed(
                    f"the server shows NMI {cp.connectionPointId!r}, not {site['nmi']!r}",
                    "ask the DNSP to check the site record, then rerun",
                )
            expected_w = sum(
                float(d["info"].get("rated_w") or 0.0)
                for d in state.get("devices")
                if d["role"] in ("pv", "battery")
            )

            async def der_docs() -> dict[str, Any] | None:
                ders = await probe.get_list(end_device.DERListLink.href, r.DERList, "DER")
                found: dict[str, Any] = {"ders": len(ders), "rtg_max_w": 0.0, "modes_supported": []}
                for der in ders:
                    if der.DERCapabilityLink is None:
                        return None
                    cap = await probe.get(der.DERCapabilityLink.href, r.DERCapability)
                    found["rtg_max_w"] += cap.rtgMaxW.to_watts() if cap.rtgMaxW is not None else 0.0
                    found["modes_supported"].append(cap.modesSupported)
                    if der.DERSettingsLink is not None:
                        settings_doc = await probe.get(der.DERSettingsLink.href, r.DERSettings)
                        found.setdefault("set_max_w", 0.0)
                        found["set_max_w"] += settings_doc.setMaxW.to_watts() if settings_doc.setMaxW else 0.0
                return found if ders and found["rtg_max_w"] > 0 else None

            try:
                docs = await _wait_for(der_docs, opts.register_timeout_s)
            except TimeoutError as exc:
                raise StepFailed(
                    f"the server does not show the DER capability read from the devices ({exc})",
                    "check the gateway's connection to the server, then rerun",
                ) from None
            registration["der_on_server"] = docs
            registration["der_rated_w_expected"] = expected_w
    state.set("registration", registration)
    ui.panel(
        "Registered",
        [
            f"server {dcap_url}: EndDevice {registration['end_device']} ({registration['registered']}), "
            "PIN matches",
            f"ConnectionPoint NMI {registration['connection_point_on_server']} stored on the server",
            f"DERCapability on the server: {docs['rtg_max_w']:g} W rated (devices: {expected_w:g} W)",
        ],
    )


# -------------------------------------------------------------------------------------------- 5. verify


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
    conns = await _open_devices(pv_devs + batteries + [meter_dev])
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
            await _wait_for(obeyed, opts.verify_window_s)
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
        await _close_devices(conns)
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
            href, _doc, readings = await _wait_for(fresh, opts.telemetry_timeout_s)
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
                out["test_control"]["responses"] = await _wait_for(acknowledged, opts.telemetry_timeout_s)
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


# -------------------------------------------------------------------------------------------- 6. report


async def step_report(ctx: Context) -> None:
    from gateway.commissioning.report import write_report

    paths = write_report(ctx.state, ctx.opts.work_dir)
    ctx.state.set("report", {k: str(v) for k, v in paths.items()})
    ctx.ui.panel(
        "Commissioning complete",
        [
            f"report: {paths['html']} and {paths['json']}",
            f"gateway configuration: {ctx.opts.site_toml_path}",
            f"start the gateway: derlink gateway --config {ctx.opts.site_toml_path}",
        ],
    )


STEP_FUNCTIONS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "discover": step_discover,
    "identity": step_identity,
    "site": step_site,
    "register": step_register,
    "verify": step_verify,
    "report": step_report,
}


# -------------------------------------------------------------------------------------------- the engine


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


def copy_if_needed(src: Path, dst: Path) -> None:
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
