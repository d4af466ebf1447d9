"""Step 4, ``register``: site.toml written, the gateway connects, registers and PUTs its ConnectionPoint."""

from __future__ import annotations

import contextlib
import secrets
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.commissioning.common import (
    UI,
    Context,
    Options,
    StepFailed,
    ask_value,
    serial_line_of,
    wait_for,
)
from gateway.commissioning.probe import ServerProbe, diagnose_connection, running_gateway
from gateway.commissioning.state import iso
from sep2.files import write_atomic


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
                docs = await wait_for(der_docs, opts.register_timeout_s)
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
