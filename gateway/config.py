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
    storage_extension = true          # CSIP-AUS v1.3: batteries advertise opModStorageTargetW
                                      # (vppModesSupported); false for a server taking only v1.2

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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gateway.core import BlackStartConfig, ControlSettings, FallbackConfig
from sep2.validation import describe


class ConfigError(ValueError):
    """site.toml is not usable; the message names the field."""


ROLES = ("pv", "battery", "meter", "evse", "switched_load")
LOAD_ROLES = ("evse", "switched_load")  # controllable loads (fieldbus.load_map), Modbus TCP only
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
    storage_extension: bool = True  # CSIP-AUS v1.3: advertise opModStorageTargetW (vppModesSupported)
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
# The file's shape, types and bounds are pydantic models (unknown keys forbidden, no coercion: "502" is not
# a port); rules that join several fields (TCP or RTU, one RS-485 line's settings, one meter) follow in code.

_LIMIT_KEYS = ("export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w")
_Watts = Annotated[float, Field(ge=0)]
_Positive = Annotated[float, Field(gt=0)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_PortOrZero = Annotated[int, Field(ge=0, le=65535)]


def _lfdi(value: str) -> str:
    from sep2.identity import normalise_lfdi

    return normalise_lfdi(value)


def _nmi(value: str) -> str:
    from sep2.nmi import validate_nmi

    return validate_nmi(value).nmi


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _GatewayTable(_Table):
    data_dir: str | None = None
    lfdi: Annotated[str, AfterValidator(_lfdi)] | None = None


class _ServerTable(_Table):
    dcap_url: str
    pin: Annotated[int, Field(ge=0, le=999999)] | None = None
    mode: Literal["poll", "subscribe"] = "poll"
    register_inband: bool = False
    listener_host: str = "127.0.0.1"
    listener_port: _PortOrZero = 0
    notify_host: str | None = None
    notifier_lfdis: list[Annotated[str, AfterValidator(_lfdi)]] = []
    request_timeout_s: _Positive = 10.0
    backoff_initial_s: _Positive = 1.0
    backoff_max_s: _Positive = 300.0
    default_poll_rate_s: Annotated[int, Field(ge=1, le=2**32 - 1)] = 900
    default_post_rate_s: Annotated[int, Field(ge=1, le=2**32 - 1)] = 300
    storage_extension: bool = True
    nmi: Annotated[str, AfterValidator(_nmi)] | None = None

    @field_validator("dcap_url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"must be an https:// URL, got {value!r}")
        return value

    @field_validator("backoff_max_s")
    @classmethod
    def _backoff(cls, value: float, info: ValidationInfo) -> float:
        if value < info.data.get("backoff_initial_s", 0):
            raise ValueError("must be >= server.backoff_initial_s")
        return value


class _TlsTable(_Table):
    cert: str
    key: str
    ca: str


class _DeviceTable(_Table):
    name: Annotated[str, Field(min_length=1)]
    role: Literal["pv", "battery", "meter", "evse", "switched_load"]
    host: str | None = None  # Modbus TCP (default 127.0.0.1) ...
    port: _Port | None = None
    unit: Annotated[int, Field(ge=0, le=255)] = 1
    serial_port: str | None = None  # ... or Modbus RTU
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Annotated[str, AfterValidator(str.upper)] = "N"
    stopbits: Annotated[int, Field(ge=1, le=2)] = 1

    @field_validator("parity")
    @classmethod
    def _parity(cls, value: str) -> str:
        if value not in PARITIES:
            raise ValueError(f"must be N, E or O, got {value!r}")
        return value


class _LimitsTable(_Table):
    export_limit_w: _Watts | None = None
    import_limit_w: _Watts | None = None
    generation_limit_w: _Watts | None = None
    load_limit_w: _Watts | None = None


class _CommsLossTable(_LimitsTable):
    connect: bool | None = None
    comms_timeout_s: Annotated[int, Field(ge=1, le=10**7)] = 300
    persistent_loss_s: Annotated[int, Field(ge=0, le=10**8)] = 3600


class _LoopTable(_Table):
    period_s: _Positive = 1.0
    modbus_timeout_s: _Positive = 2.0
    self_consumption: bool = True
    startup_apply_timeout_s: _Positive = 5.0


class _LocalApiTable(_Table):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: _PortOrZero = 0
    token: str | None = None
    token_file: str | None = None

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if not _is_loopback(value):
            raise ValueError(f"must be a loopback address (127.0.0.1, ::1), got {value!r}")
        return value


class _MqttTable(_Table):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: _Port = 1883
    topic: str | None = None
    interval_s: _Positive = 10.0
    username: str | None = None
    password: str | None = None


class _BlackStartTable(_Table):
    enabled: bool = True
    hold_export_limit_w: _Watts = 0.0
    hold_generation_limit_w: _Watts | None = None
    delay_min_s: Annotated[int, Field(ge=0, le=86400)] = 60
    window_s: Annotated[int, Field(ge=0, le=86400)] = 600
    grid_lost_below_v: _Positive = 100.0
    cold_start_after_s: Annotated[int, Field(ge=0, le=30 * 86400)] = 120

    @field_validator("cold_start_after_s")
    @classmethod
    def _cold(cls, value: int) -> int:
        if 0 < value < 60:
            raise ValueError(f"must be 0 (off) or 60..2592000, got {value}")
        return value


class _DrmTable(_Table):
    source: Literal["modbus", "gpio", "local_api"]
    host: str | None = None
    port: _Port = 502
    unit: Annotated[int, Field(ge=0, le=255)] = 1
    table: Literal["discrete_inputs", "coils"] = "discrete_inputs"
    address: Annotated[int, Field(ge=0, le=65535 - 8)] = 0
    value_files: Annotated[list[str], Field(min_length=9, max_length=9)] | None = None
    gpio_pins: Annotated[list[int], Field(min_length=9, max_length=9)] | None = None
    active_low: bool = False
    poll_s: _Positive = 0.5
    timeout_s: _Positive = 1.0


class _SiteFile(_Table):
    gateway: _GatewayTable = _GatewayTable()
    server: _ServerTable
    tls: _TlsTable
    device: list[_DeviceTable] = []
    installer_limits: _LimitsTable = _LimitsTable()
    comms_loss: _CommsLossTable = _CommsLossTable()
    control_loop: _LoopTable = _LoopTable()
    local_api: _LocalApiTable = _LocalApiTable()
    mqtt: _MqttTable = _MqttTable()
    drm: _DrmTable | None = None
    black_start: _BlackStartTable = _BlackStartTable()


_MESSAGES = {  # where site.toml words it differently from sep2.validation
    "extra_forbidden": "unknown setting",
    "bool_type": "expected a boolean, got {input!r}",
    "too_short": "needs {min_length} entries (DRM 0..8), got {actual_length}",
    "too_long": "needs {max_length} entries (DRM 0..8), got {actual_length}",
}


def _config_error(exc: ValidationError) -> ConfigError:
    """The first problem as ``where: what`` (``device[1].port: expected an integer, got '502'``)."""
    return ConfigError(describe(exc, _MESSAGES))


def _limits(table: _LimitsTable, **switches: Any) -> ControlSettings:
    return ControlSettings(**{k: getattr(table, k) for k in _LIMIT_KEYS}, **switches)


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
    try:
        site = _SiteFile.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc) from None

    def resolve(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base_dir / p

    srv = site.server
    server = ServerSettings(**srv.model_dump(exclude={"notifier_lfdis"}),
                            notifier_lfdis=tuple(srv.notifier_lfdis))
    tls = TlsSettings(resolve(site.tls.cert), resolve(site.tls.key), resolve(site.tls.ca))
    for key in ("cert", "key", "ca"):
        if not getattr(tls, key).is_file():
            raise ConfigError(f"tls.{key}: file not found: {getattr(tls, key)}")
    lfdi = site.gateway.lfdi
    if lfdi is None:
        try:
            lfdi = lfdi_from_cert_file(tls.cert)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"tls.cert: cannot read a certificate from {tls.cert}: {exc}") from None

    devices = _devices(site.device)

    if site.installer_limits.export_limit_w is None:
        raise ConfigError("installer_limits.export_limit_w: required (the connection agreement's limit)")
    cl = site.comms_loss
    try:
        fallback = FallbackConfig(_limits(cl, connect=cl.connect), cl.comms_timeout_s, cl.persistent_loss_s)
    except ValueError as exc:
        raise ConfigError(f"comms_loss: {exc}") from None

    la = site.local_api
    token = la.token
    if token is not None and la.token_file is not None:
        raise ConfigError("local_api.token_file: give token or token_file, not both")
    if la.token_file is not None:
        try:
            token = resolve(la.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"local_api.token_file: {exc}") from None
    if la.enabled and (token is None or len(token) < 16):
        raise ConfigError("local_api.token: required, at least 16 characters (or set token_file)")

    return GatewaySettings(
        path=path,
        data_dir=resolve(site.gateway.data_dir) if site.gateway.data_dir else base_dir / "gateway-data",
        lfdi=lfdi, server=server, tls=tls, devices=devices,
        installer_limits=_limits(site.installer_limits), fallback=fallback,
        loop=LoopSettings(**site.control_loop.model_dump()),
        local_api=LocalApiSettings(la.enabled, la.host, la.port, token),
        mqtt=MqttSettings(**site.mqtt.model_dump()),
        drm=_drm(site.drm, resolve) if site.drm is not None else DrmSettings(),
        black_start=BlackStartConfig(**{**site.black_start.model_dump(),
                                        "cold_start_after_s": site.black_start.cold_start_after_s or None}),
    )  # fmt: skip


def _devices(tables: list[_DeviceTable]) -> tuple[DeviceSpec, ...]:
    """TCP or RTU per device; one RS-485 line has one set of settings and distinct units; one meter."""
    devices: list[DeviceSpec] = []
    for i, d in enumerate(tables):
        if d.name in {x.name for x in devices}:
            raise ConfigError(f"device[{i}].name: must be unique, got {d.name!r}")
        if d.serial_port is None:
            if d.port is None:
                raise ConfigError(f"device[{i}].port: required")
            devices.append(DeviceSpec(d.name, d.role, d.host or "127.0.0.1", d.port, d.unit))
            continue
        if d.role in LOAD_ROLES:
            raise ConfigError(f"device[{i}].serial_port: a {d.role} is driven over Modbus TCP (host, port)")
        for tcp_key in ("host", "port"):
            if getattr(d, tcp_key) is not None:
                raise ConfigError(f"device[{i}].{tcp_key}: not used with serial_port (Modbus RTU)")
        if not d.serial_port:
            raise ConfigError(f"device[{i}].serial_port: must name a serial device, e.g. /dev/ttyUSB0")
        if not 1 <= d.unit <= 247:
            raise ConfigError(f"device[{i}].unit: must be within 1..247 on RTU (0 broadcasts), got {d.unit}")
        dev = DeviceSpec(d.name, d.role, "", 0, d.unit, d.serial_port, d.baudrate, d.parity, d.stopbits)
        first = next(((j, x) for j, x in enumerate(devices) if x.serial_port == d.serial_port), None)
        if first is not None:
            for key in ("baudrate", "parity", "stopbits"):
                if getattr(dev, key) != getattr(first[1], key):
                    raise ConfigError(
                        f"device[{i}].{key}: {getattr(dev, key)} differs from device[{first[0]}] on the same "
                        f"serial_port {dev.serial_port} ({getattr(first[1], key)})"
                    )
        if dev.unit in {x.unit for x in devices if x.serial_port == dev.serial_port}:
            raise ConfigError(f"device[{i}].unit: {dev.unit} is already used on {dev.serial_port}")
        devices.append(dev)
    meters = [d for d in devices if d.role == "meter"]
    if len(meters) != 1:
        raise ConfigError(f'device: exactly one device with role "meter" is needed, found {len(meters)}')
    if not any(d.role in ("pv", "battery") for d in devices):
        raise ConfigError("device: at least one pv or battery device is needed")
    return tuple(devices)


_DRM_KEYS = {
    "modbus": {"host", "port", "unit", "table", "address"},
    "gpio": {"gpio_pins", "value_files"},
    "local_api": set(),
}


def _drm(d: _DrmTable, resolve: Any) -> DrmSettings:
    common = {"source": d.source, "active_low": d.active_low, "poll_s": d.poll_s, "timeout_s": d.timeout_s}
    unused = sorted(d.model_fields_set & (set().union(*_DRM_KEYS.values()) - _DRM_KEYS[d.source]))
    if unused:
        raise ConfigError(f"drm.{unused[0]}: not used with source {d.source!r}")
    if d.source == "modbus":
        if d.host is None:
            raise ConfigError("drm.host: required")
        return DrmSettings(host=d.host, port=d.port, unit=d.unit, table=d.table, address=d.address, **common)
    if d.source == "gpio":
        if (d.value_files is None) == (d.gpio_pins is None):
            raise ConfigError("drm.gpio_pins: give gpio_pins or value_files (9 entries, DRM 0..8), not both")
        files = (tuple(resolve(f) for f in d.value_files) if d.value_files is not None
                 else tuple(SYSFS_GPIO / f"gpio{pin}" / "value" for pin in d.gpio_pins or ()))  # fmt: skip
        return DrmSettings(value_files=files, **common)
    return DrmSettings(**common)


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


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """Write a site.toml (tables of scalars and arrays of tables; None values are left out)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + ("\n" if comments else "") + tomli_w.dumps(clean(data))
