"""The gateway's configuration file (site.toml): one place that turns TOML into checked settings.

Every error names its field (``server.dcap_url: ...``, ``device[1].port: ...``) and unknown keys are errors,
so a typo never silently falls back to a default. Relative paths are relative to the file's directory.

Example::

    [gateway]
    data_dir = "gw-data"              # state.json, outbox.sqlite3, local_api.json
    # lfdi = "..."                    # optional: derived from [tls].cert

    [server]
    dcap_url = "https://dnsp.example:8443/dcap"
    pin = 123455                      # Registration PIN to check (optional)
    mode = "subscribe"                # or "poll"

    [tls]
    cert = "pki/devices/gw-chain.pem" # our chain (leaf + intermediate)
    key = "pki/devices/gw.key"
    ca = "pki/ca-chain.pem"

    [[device]]                        # one per SunSpec device
    name = "pv"
    role = "pv"                       # pv | battery | meter (exactly one meter) | evse | switched_load
    host = "192.168.1.20"             # Modbus TCP ...
    port = 502
    unit = 1

    [[device]]
    name = "meter"
    role = "meter"
    serial_port = "/dev/ttyUSB0"      # ... or Modbus RTU on RS-485 (instead of host/port); devices on
    baudrate = 9600                   # one line share it, so give them the same settings
    parity = "N"                      # N | E | O; 8 data bits
    stopbits = 1
    unit = 3

    [installer_limits]                # the connection agreement (export_limit_w is required)
    export_limit_w = 5000

    [comms_loss]                      # applied after persistent_loss_s of lost link, or with no default
    export_limit_w = 1500
    comms_timeout_s = 300
    persistent_loss_s = 3600

    [control_loop]
    period_s = 1.0

    [local_api]
    port = 8710                       # 127.0.0.1 only; 0 = pick a free port
    token = "a long random string"    # or token_file = "..."

    [mqtt]
    enabled = true
    host = "127.0.0.1"
    port = 1883

    [black_start]                     # when the grid returns after an outage (gateway/core/black_start.py)
    enabled = true
    hold_export_limit_w = 0           # the hold: zero export ...
    # hold_generation_limit_w = 0     # ... or no generation at all
    delay_min_s = 60                  # held for delay_min_s + a per-device random part of window_s
    window_s = 600
    grid_lost_below_v = 100           # meter voltage below this: grid down
    cold_start_after_s = 120          # booting this long after the last heartbeat is a black start (the
                                      # gateway lost power with the site): hold from boot; 0: off

    [drm]                             # AS/NZS 4755 DRM inputs from a DRED (gateway/README-drm.md)
    source = "modbus"                 # modbus | gpio | local_api
    host = "192.168.1.30"             # modbus: a digital I/O module; DRM n = input address + n
    port = 502
    unit = 1
    table = "discrete_inputs"         # or "coils"
    address = 0
    # gpio_pins = [5, 6, 13, 19, 26, 16, 20, 21, 12]   # gpio: DRM 0..8 (sysfs), or value_files = [...]
    active_low = false
    poll_s = 0.5
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.core import BlackStartConfig, ControlSettings, FallbackConfig


class ConfigError(ValueError):
    """site.toml is not usable; the message names the field."""


ROLES = ("pv", "battery", "meter", "evse", "switched_load")
LOAD_ROLES = ("evse", "switched_load")  # controllable loads (gateway.devices.load_map), Modbus TCP only
MODES = ("poll", "subscribe")
DRM_SOURCES = ("modbus", "gpio", "local_api")
DRM_TABLES = ("discrete_inputs", "coils")


SYSFS_GPIO = Path("/sys/class/gpio")  # drm.gpio_pins: each pin's value file below it
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    role: str  # pv | battery | meter | evse | switched_load (loads: served in their listed order)
    host: str
    port: int  # Modbus TCP port; 0 for a device on a serial line
    unit: int = 1
    # Modbus RTU (RS-485) instead of TCP: the serial device and its settings (8 data bits)
    serial_port: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1

    @property
    def address(self) -> tuple[str, int, int, Any]:
        """(host, port, unit, SerialLine or None): the arguments of ``DeviceConnection.open``."""
        if self.serial_port is None:
            return (self.host, self.port, self.unit, None)
        from gateway.devices.device import SerialLine

        return ("", 0, self.unit, SerialLine(self.serial_port, self.baudrate, self.parity, self.stopbits))


def _nmi(text: str | None) -> str | None:
    from sep2.nmi import NmiError, validate_nmi

    if text is None:
        return None
    try:
        return validate_nmi(text).nmi
    except NmiError as exc:
        raise ConfigError(f"server.nmi: {exc}") from None


@dataclass(frozen=True)
class ServerSettings:
    dcap_url: str
    pin: int | None = None
    mode: str = "poll"
    register_inband: bool = False
    listener_host: str = "127.0.0.1"
    listener_port: int = 0
    notify_host: str | None = None
    notifier_lfdis: tuple[str, ...] = ()  # certificates allowed to notify besides the server's own
    request_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    default_poll_rate_s: int = 900
    default_post_rate_s: int = 300
    nmi: str | None = None  # the site's NMI: PUT as the EndDevice's csipaus ConnectionPoint at discovery


@dataclass(frozen=True)
class TlsSettings:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class LoopSettings:
    period_s: float = 1.0
    modbus_timeout_s: float = 2.0
    self_consumption: bool = True
    startup_apply_timeout_s: float = 5.0  # how long start-up waits for the devices before going online


@dataclass(frozen=True)
class LocalApiSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None


@dataclass(frozen=True)
class MqttSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    topic: str | None = None  # default derlink/gateway/<LFDI>
    interval_s: float = 10.0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class DrmSettings:
    """Where the DRM 0..8 inputs come from (gateway.drm_input); ``source`` None: no DRM input."""

    source: str | None = None
    host: str = "127.0.0.1"
    port: int = 502
    unit: int = 1
    table: str = "discrete_inputs"
    address: int = 0
    value_files: tuple[Path, ...] = ()
    active_low: bool = False
    poll_s: float = 0.5
    timeout_s: float = 1.0


@dataclass(frozen=True)
class GatewaySettings:
    path: Path | None
    data_dir: Path
    lfdi: str
    server: ServerSettings
    tls: TlsSettings
    devices: tuple[DeviceSpec, ...]
    installer_limits: ControlSettings
    fallback: FallbackConfig
    loop: LoopSettings = field(default_factory=LoopSettings)
    local_api: LocalApiSettings = field(default_factory=LocalApiSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    drm: DrmSettings = field(default_factory=DrmSettings)
    black_start: BlackStartConfig = field(default_factory=BlackStartConfig)

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def local_api_file(self) -> Path:
        """Written by the running gateway: the bound port of the local API (so `status` finds it)."""
        return self.data_dir / "local_api.json"

    def device(self, role: str) -> list[DeviceSpec]:
        return [d for d in self.devices if d.role == role]


# ---------------------------------------------------------------------------------------- reading

_LIMIT_KEYS = ("export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w")


class _Section:
    """Typed access to one TOML table; records every key read so leftovers are reported as unknown."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False
    ) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.name(key)}: required")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.name(key)}: expected {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.name(key)}: expected {_kind_name(kinds)}, got {value!r}")
        return value

    def number(self, key: str, default: float | None = None, *, minimum: float | None = None,
               positive: bool = False, required: bool = False) -> float | None:  # fmt: skip
        value = self.get(key, float, default, required)
        if value is None:
            return None
        if positive and not value > 0:
            raise ConfigError(f"{self.name(key)}: must be > 0, got {value:g}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.name(key)}: must be >= {minimum:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int | None = None, *, low: int | None = None,
                high: int | None = None, required: bool = False) -> int | None:  # fmt: skip
        value = self.get(key, int, default, required)
        if value is None:
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{self.name(key)}: must be within {low}..{high}, got {value}")
        return value

    def path(self, key: str, base: Path, required: bool = False) -> Path | None:
        value = self.get(key, str, None, required)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown setting")


def _kind_name(kinds: tuple[type, ...]) -> str:
    return " or ".join({bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                        dict: "a table", list: "an array"}[k] for k in kinds)  # fmt: skip


def _limits(section: _Section, *, with_switches: bool = False) -> ControlSettings:
    values: dict[str, Any] = {k: section.number(k, minimum=0) for k in _LIMIT_KEYS}
    if with_switches:
        values["connect"] = section.get("connect", bool)
    return ControlSettings(**values)


def _lfdis(section: _Section, key: str) -> tuple[str, ...]:
    from sep2.identity import normalise_lfdi

    out = []
    for i, item in enumerate(section.get(key, list, [])):
        try:
            out.append(normalise_lfdi(item))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{section.name(key)}[{i}]: {exc}") from None
    return tuple(out)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lfdi_from_cert_file(path: Path) -> str:
    """The LFDI of the first certificate in a PEM file (our leaf)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from sep2.identity import lfdi_from_cert_der

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return lfdi_from_cert_der(cert.public_bytes(Encoding.DER))


def settings_from_dict(data: dict[str, Any], base_dir: Path, path: Path | None = None) -> GatewaySettings:
    """Check and convert a parsed site.toml. Raises ConfigError naming the first bad field."""
    top = _Section(data, "")
    sections = {k: top.get(k, dict) for k in
                ("gateway", "server", "tls", "installer_limits", "comms_loss", "control_loop", "local_api",
                 "mqtt", "drm", "black_start")}  # fmt: skip
    devices_raw = top.get("device", list, [])
    top.finish()

    gw = _Section(sections["gateway"], "gateway")
    data_dir = gw.path("data_dir", base_dir) or (base_dir / "gateway-data")
    lfdi_given = gw.get("lfdi", str)
    gw.finish()

    srv = _Section(sections["server"], "server")
    dcap_url = srv.get("dcap_url", str, required=True)
    parts = urlsplit(dcap_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"server.dcap_url: must be an https:// URL, got {dcap_url!r}")
    mode = srv.get("mode", str, "poll")
    if mode not in MODES:
        raise ConfigError(f"server.mode: must be one of {', '.join(MODES)}, got {mode!r}")
    backoff_initial = srv.number("backoff_initial_s", 1.0, positive=True)
    backoff_max = srv.number("backoff_max_s", 300.0, positive=True)
    assert backoff_initial is not None and backoff_max is not None
    if backoff_max < backoff_initial:
        raise ConfigError("server.backoff_max_s: must be >= server.backoff_initial_s")
    server = ServerSettings(
        dcap_url=dcap_url,
        pin=srv.integer("pin", low=0, high=999999),
        mode=mode,
        register_inband=srv.get("register_inband", bool, False),
        listener_host=srv.get("listener_host", str, "127.0.0.1"),
        listener_port=srv.integer("listener_port", 0, low=0, high=65535),  # type: ignore[arg-type]
        notify_host=srv.get("notify_host", str),
        notifier_lfdis=_lfdis(srv, "notifier_lfdis"),
        request_timeout_s=srv.number("request_timeout_s", 10.0, positive=True),  # type: ignore[arg-type]
        backoff_initial_s=backoff_initial,
        backoff_max_s=backoff_max,
        default_poll_rate_s=srv.integer("default_poll_rate_s", 900, low=1, high=2**32 - 1),  # type: ignore[arg-type]
        default_post_rate_s=srv.integer("default_post_rate_s", 300, low=1, high=2**32 - 1),  # type: ignore[arg-type]
        nmi=_nmi(srv.get("nmi", str)),
    )
    srv.finish()

    tls_s = _Section(sections["tls"], "tls")
    tls = TlsSettings(*(tls_s.path(k, base_dir, required=True) for k in ("cert", "key", "ca")))  # type: ignore[arg-type]
    tls_s.finish()
    for key in ("cert", "key", "ca"):
        if not getattr(tls, key).is_file():
            raise ConfigError(f"tls.{key}: file not found: {getattr(tls, key)}")
    if lfdi_given is not None:
        from sep2.identity import normalise_lfdi

        try:
            lfdi = normalise_lfdi(lfdi_given)
        except ValueError as exc:
            raise ConfigError(f"gateway.lfdi: {exc}") from None
    else:
        try:
            lfdi = lfdi_from_cert_file(tls.cert)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"tls.cert: cannot read a certificate from {tls.cert}: {exc}") from None

    devices: list[DeviceSpec] = []
    names: set[str] = set()
    for i, raw in enumerate(devices_raw):
        d = _Section(raw, f"device[{i}]")
        name = d.get("name", str, required=True)
        if not name or name in names:
            raise ConfigError(f"device[{i}].name: must be non-empty and unique, got {name!r}")
        names.add(name)
        role = d.get("role", str, required=True)
        if role not in ROLES:
            raise ConfigError(f"device[{i}].role: must be one of {', '.join(ROLES)}, got {role!r}")
        serial_port = d.get("serial_port", str)
        if serial_port is not None and role in LOAD_ROLES:
            raise ConfigError(f"{d.name('serial_port')}: a {role} is driven over Modbus TCP (host, port)")
        if serial_port is None:
            devices.append(DeviceSpec(
                name=name, role=role, host=d.get("host", str, "127.0.0.1"),
                port=d.integer("port", required=True, low=1, high=65535),  # type: ignore[arg-type]
                unit=d.integer("unit", 1, low=0, high=255),  # type: ignore[arg-type]
            ))  # fmt: skip
        else:
            for tcp_key in ("host", "port"):
                if tcp_key in d.data:
                    raise ConfigError(f"{d.name(tcp_key)}: not used with serial_port (Modbus RTU)")
            if not serial_port:
                raise ConfigError(f"{d.name('serial_port')}: must name a serial device, e.g. /dev/ttyUSB0")
            baudrate = d.integer("baudrate", 9600)
            if baudrate not in BAUDRATES:
                raise ConfigError(f"{d.name('baudrate')}: must be one of {BAUDRATES}, got {baudrate}")
            parity = d.get("parity", str, "N").upper()
            if parity not in PARITIES:
                raise ConfigError(f"{d.name('parity')}: must be N, E or O, got {parity!r}")
            devices.append(DeviceSpec(
                name=name, role=role, host="", port=0, serial_port=serial_port, baudrate=baudrate,
                parity=parity, stopbits=d.integer("stopbits", 1, low=1, high=2),  # type: ignore[arg-type]
                unit=d.integer("unit", 1, low=1, high=247),  # type: ignore[arg-type]  # RTU: 0 is broadcast
            ))  # fmt: skip
        d.finish()
    lines: dict[str, tuple[int, DeviceSpec]] = {}
    for i, dev in enumerate(devices):  # one RS-485 line has one set of settings
        if dev.serial_port is None:
            continue
        first = lines.setdefault(dev.serial_port, (i, dev))
        for key in ("baudrate", "parity", "stopbits"):
            if getattr(dev, key) != getattr(first[1], key):
                raise ConfigError(
                    f"device[{i}].{key}: {getattr(dev, key)} differs from device[{first[0]}] on the same "
                    f"serial_port {dev.serial_port} ({getattr(first[1], key)})"
                )
        if dev.unit in {d.unit for d in devices[:i] if d.serial_port == dev.serial_port}:
            raise ConfigError(f"device[{i}].unit: {dev.unit} is already used on {dev.serial_port}")
    meters = [d for d in devices if d.role == "meter"]
    if len(meters) != 1:
        raise ConfigError(f'device: exactly one device with role "meter" is needed, found {len(meters)}')
    if not any(d.role in ("pv", "battery") for d in devices):
        raise ConfigError("device: at least one pv or battery device is needed")

    inst = _Section(sections["installer_limits"], "installer_limits")
    installer = _limits(inst)
    inst.finish()
    if installer.export_limit_w is None:
        raise ConfigError("installer_limits.export_limit_w: required (the connection agreement's limit)")

    cl = _Section(sections["comms_loss"], "comms_loss")
    loss_limits = _limits(cl, with_switches=True)
    timeout = cl.integer("comms_timeout_s", 300, low=1, high=10**7)
    persistent = cl.integer("persistent_loss_s", 3600, low=0, high=10**8)
    cl.finish()
    try:
        fallback = FallbackConfig(loss_limits, timeout, persistent)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"comms_loss: {exc}") from None

    lp = _Section(sections["control_loop"], "control_loop")
    loop = LoopSettings(
        period_s=lp.number("period_s", 1.0, positive=True),  # type: ignore[arg-type]
        modbus_timeout_s=lp.number("modbus_timeout_s", 2.0, positive=True),  # type: ignore[arg-type]
        self_consumption=lp.get("self_consumption", bool, True),
        startup_apply_timeout_s=lp.number("startup_apply_timeout_s", 5.0, positive=True),  # type: ignore[arg-type]
    )
    lp.finish()

    la = _Section(sections["local_api"], "local_api")
    host = la.get("host", str, "127.0.0.1")
    if not _is_loopback(host):
        raise ConfigError(f"local_api.host: must be a loopback address (127.0.0.1, ::1), got {host!r}")
    token = la.get("token", str)
    token_file = la.path("token_file", base_dir)
    enabled = la.get("enabled", bool, True)
    if token is not None and token_file is not None:
        raise ConfigError("local_api.token_file: give token or token_file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"local_api.token_file: {exc}") from None
    if enabled and (token is None or len(token) < 16):
        raise ConfigError("local_api.token: required, at least 16 characters (or set token_file)")
    local_api = LocalApiSettings(enabled, host, la.integer("port", 0, low=0, high=65535), token)  # type: ignore[arg-type]
    la.finish()

    mq = _Section(sections["mqtt"], "mqtt")
    mqtt = MqttSettings(
        enabled=mq.get("enabled", bool, False),
        host=mq.get("host", str, "127.0.0.1"),
        port=mq.integer("port", 1883, low=1, high=65535),  # type: ignore[arg-type]
        topic=mq.get("topic", str),
        interval_s=mq.number("interval_s", 10.0, positive=True),  # type: ignore[arg-type]
        username=mq.get("username", str),
        password=mq.get("password", str),
    )
    mq.finish()

    return GatewaySettings(
        path=path, data_dir=data_dir, lfdi=lfdi, server=server, tls=tls, devices=tuple(devices),
        installer_limits=installer, fallback=fallback, loop=loop, local_api=local_api, mqtt=mqtt,
        drm=_drm(sections["drm"], base_dir), black_start=_black_start(sections["black_start"]),
    )  # fmt: skip


def _black_start(raw: Any) -> BlackStartConfig:
    b = _Section(raw, "black_start")
    cold = b.integer("cold_start_after_s", 120)
    if cold is not None and cold != 0 and not 60 <= cold <= 30 * 86400:
        raise ConfigError(f"{b.name('cold_start_after_s')}: must be 0 (off) or 60..2592000, got {cold}")
    config = BlackStartConfig(
        enabled=b.get("enabled", bool, True),
        hold_export_limit_w=b.number("hold_export_limit_w", 0.0, minimum=0),  # type: ignore[arg-type]
        hold_generation_limit_w=b.number("hold_generation_limit_w", minimum=0),
        delay_min_s=b.integer("delay_min_s", 60, low=0, high=86400),  # type: ignore[arg-type]
        window_s=b.integer("window_s", 600, low=0, high=86400),  # type: ignore[arg-type]
        grid_lost_below_v=b.number("grid_lost_below_v", 100.0, positive=True),  # type: ignore[arg-type]
        cold_start_after_s=cold or None,
    )
    b.finish()
    return config


def _drm(raw: Any, base_dir: Path) -> DrmSettings:
    if raw is None:
        return DrmSettings()
    d = _Section(raw, "drm")
    source = d.get("source", str, required=True)
    if source not in DRM_SOURCES:
        raise ConfigError(f"drm.source: must be one of {', '.join(DRM_SOURCES)}, got {source!r}")
    common = dict(
        active_low=d.get("active_low", bool, False),
        poll_s=d.number("poll_s", 0.5, positive=True),
        timeout_s=d.number("timeout_s", 1.0, positive=True),
    )
    out = DrmSettings(source=source, **common)  # type: ignore[arg-type]
    if source == "modbus":
        table = d.get("table", str, "discrete_inputs")
        if table not in DRM_TABLES:
            raise ConfigError(f"drm.table: must be one of {', '.join(DRM_TABLES)}, got {table!r}")
        out = DrmSettings(
            source=source, host=d.get("host", str, required=True),
            port=d.integer("port", 502, low=1, high=65535), unit=d.integer("unit", 1, low=0, high=255),
            table=table, address=d.integer("address", 0, low=0, high=65535 - 8), **common,
        )  # type: ignore[arg-type]  # fmt: skip
    elif source == "gpio":
        files, pins = d.get("value_files", list), d.get("gpio_pins", list)
        if (files is None) == (pins is None):
            raise ConfigError("drm.gpio_pins: give gpio_pins or value_files (9 entries, DRM 0..8), not both")
        key, items = ("value_files", files) if files is not None else ("gpio_pins", pins)
        if len(items) != 9:
            raise ConfigError(f"drm.{key}: needs 9 entries (DRM 0..8), got {len(items)}")
        kind = str if key == "value_files" else int
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, kind):
                raise ConfigError(f"drm.{key}[{i}]: expected {_kind_name((kind,))}, got {item!r}")
        paths = (tuple(base_dir / Path(f).expanduser() for f in items) if key == "value_files"
                 else tuple(SYSFS_GPIO / f"gpio{pin}" / "value" for pin in items))  # fmt: skip
        out = DrmSettings(source=source, value_files=paths, **common)  # type: ignore[arg-type]
    d.finish()
    return out


def load_settings(path: str | Path) -> GatewaySettings:
    """Read and check site.toml (raises ConfigError naming the field)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return settings_from_dict(data, p.resolve().parent, p)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """Write a site.toml (tables of scalars and arrays of tables; None values are left out)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, section in data.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append("")
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"
