"""Server configuration: a TOML file plus command-line overrides.

Every key has a default so that ``derlink server run`` works with no file at all (SQLite in ``data_dir``).
The file's shape, types and bounds are a pydantic model (unknown keys forbidden, no coercion: "80" is not a
port), so every error names its key and a typo never silently falls back to a default. Rules that join
several settings follow in :func:`check_config`.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

from sep2.validation import FieldError, describe


class ConfigError(ValueError):
    """A configuration file or flag that is not understood; the message names the field."""


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path):
        raise ValueError(f"expected a path string, got {value!r}")
    return Path(value).expanduser()


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network") from None
    return value


def _allow_entry(value: str) -> str:
    from server.netpolicy import parse_allow_entry

    parse_allow_entry(value)  # its ValueError names the problem
    return value


def _lfdi_key(value: str) -> str:
    if len(value) != 40 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"key {value!r} is not a 40-hex-digit LFDI")
    return value.lower()


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _database_url(value: str) -> str:
    if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
    return value


def _dns_label(value: str) -> str:
    if not value or "." in value or len(value) > 63:
        raise ValueError("1 to 63 characters without dots")
    return value


@with_config(ConfigDict(extra="forbid", strict=True))
class HeadendToken(TypedDict):
    name: Annotated[str, Field(min_length=1)]
    token: Annotated[str, Field(min_length=16)]
    role: Literal["operator", "viewer"]


def _unique_names(tokens: list[HeadendToken]) -> list[HeadendToken]:
    seen: set[str] = set()
    for i, entry in enumerate(tokens):
        if entry["name"] in seen:
            raise FieldError((i, "name"), f"duplicate name {entry['name']!r}")
        seen.add(entry["name"])
    return tokens


_Path = Annotated[Path, BeforeValidator(_path)]
_Count = Annotated[int, Field(ge=0)]
_AtLeastOne = Annotated[int, Field(ge=1)]
_Port = Annotated[int, Field(ge=0, le=65535)]
_Seconds = Annotated[float, Field(gt=0)]
_AllowList = list[Annotated[str, AfterValidator(_allow_entry)]]


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # Where state lives. database_url defaults to SQLite in data_dir.
    data_dir: _Path = Path("derlink-data")
    database_url: Annotated[str, AfterValidator(_database_url)] | None = None
    # 2030.5 listener (mutual TLS).
    host: str = "127.0.0.1"
    port: _Port = 8443
    cert_dir: _Path | None = None  # PKI directory (certs.pki layout); default data_dir / "pki"
    server_cert: _Path | None = None  # explicit files override cert_dir
    server_key: _Path | None = None
    ca_cert: _Path | None = None
    # Client certificate the server presents when POSTing notifications (needs clientAuth). Default: the
    # server's own certificate.
    notify_cert: _Path | None = None
    notify_key: _Path | None = None
    tls: bool = True  # False only behind a TLS-terminating proxy (trusted_proxies must be set)
    # Admin listener (/metrics, later the head-end API); port 0 picks a free port.
    admin_enabled: bool = True
    admin_host: str = "127.0.0.1"
    admin_port: _Port = 8444
    # Behaviour.
    poll_rate: _Count = 300  # default pollRate (s) for DeviceCapability and polled lists
    post_rate: _Count = 300  # default postRate (s) for MirrorUsagePoints and EndDevices
    inband_registration: bool = True
    iana_pen: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # private enterprise number in generated mRIDs
    max_body_bytes: _Count = 64 * 1024
    # Connection limits on the 2030.5 listener (server.connlimits).
    handshake_timeout: _Seconds = 10.0  # s for a TLS handshake
    idle_timeout: _Seconds = 15.0  # s without a complete request header (fresh, slow or keep-alive idle)
    body_timeout: _Seconds = 30.0  # s for a request body to arrive
    max_connections: _Count = 1000  # in total (capped below the file descriptor limit)
    max_connections_per_client: _Count = 64  # per client certificate (an aggregator may need many)
    # Per-client quotas (server.store.quotas): over one, 409 with a 2030.5 Error and nothing stored.
    max_mups_per_site: _Count = 16
    max_readings_per_request: _Count = 1000
    max_subscriptions_per_site: _Count = 32
    max_responses_per_event: _Count = 16  # per site and event; a repeated Response (same status) counts once
    max_list_limit: _Count = 500
    # Response cache of hot GETs. None: on. On PostgreSQL each server process hears what every other process
    # on the database commits (LISTEN/NOTIFY, server.workers); off, every GET asks the database.
    cache_enabled: bool | None = None
    cache_max_bytes: _Count = 64 * 1024 * 1024  # rendered documents kept, least recently used evicted
    # Server processes sharing the 2030.5 port (SO_REUSEPORT) and a PostgreSQL database (server.workers).
    workers: _AtLeastOne = 1
    # Running behind a TLS-terminating proxy: the client certificate (PEM, URL-encoded) arrives in
    # proxy_cert_header and is trusted only from these peer addresses/networks.
    proxy_cert_header: str = "X-Client-Cert"
    trusted_proxies: list[Annotated[str, AfterValidator(_network)]] = []
    # Notification outbox.
    notify_retry_initial: _Seconds = 1.0
    notify_retry_max: _Seconds = 300.0
    notify_timeout: _Seconds = 10.0
    notify_concurrency: _AtLeastOne = 256  # notifications sent at once (server.notifications) ...
    notify_per_host: _AtLeastOne = 4  # ... and at most this many to one subscriber (scheme, host, port)
    # Connections to subscribers kept open for the next notification: this many in all (about 48 KiB and a
    # file descriptor each), each for up to notify_keepalive seconds (the subscriber may close it sooner).
    notify_max_idle: _Count = 256
    notify_keepalive: _Seconds = 30.0
    # Offer subscribers TLS 1.3 too. Off: IEEE 2030.5-2018 6.11 specifies TLS 1.2 (ECDHE-ECDSA-AES128-CCM8),
    # and a resumed TLS 1.2 session costs half the CPU of a resumed TLS 1.3 one (no new key exchange).
    notify_tls13: bool = False
    # Notification target policy (server.netpolicy): non-public addresses are refused unless covered by a
    # CIDR or host name ("gw.example", "*.example") here, or in the per-client list keyed by certificate LFDI.
    notify_allow: _AllowList = []
    notify_allow_by_client: dict[Annotated[str, AfterValidator(_lfdi_key)], _AllowList] = {}
    log_level: Annotated[str, AfterValidator(_log_level)] = "INFO"
    # Incidents (seed 002): each raise, note and transition is POSTed as JSON to this http(s) URL, signed
    # with HMAC-SHA256 over the body when a secret is set (server.incidents.webhook). Operator-chosen, so
    # the notification target policy does not apply; delivery never blocks the workflow.
    incident_webhook_url: Annotated[str, AfterValidator(_http_url)] | None = None
    incident_webhook_secret: str | None = None
    # Head-end operator API (JSON, its own listener, loopback by default; port 0 picks a free port).
    # Bearer tokens: [{name, token, role = "operator" | "viewer"}]. With none configured, an operator token
    # is generated into data_dir/headend-token on first start (see server.headend.api).
    headend_enabled: bool = True
    headend_host: str = "127.0.0.1"
    headend_port: _Port = 8445
    headend_tokens: Annotated[list[HeadendToken], AfterValidator(_unique_names)] = []
    # TLS on the head-end listener (the server's certificate from the PKI; no client certificate). Plain
    # HTTP is refused on a non-loopback headend_host unless headend_insecure_http forces it.
    headend_tls: bool = False
    headend_insecure_http: bool = False
    # DNS-SD (2030.5 clause 7): advertise _smartenergy._tcp on mDNS so local clients find /dcap. The address
    # is the one clients connect to and the interface mDNS runs on; it defaults to ``host`` unless that is a
    # wildcard.
    dnssd: bool = False
    dnssd_address: str | None = None
    dnssd_instance: Annotated[str, AfterValidator(_dns_label)] = "derlink"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(Path(self.data_dir) / 'derlink.sqlite3').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def cache_active(self) -> bool:
        # On for both databases: on PostgreSQL every process writing through a Store announces its commits
        # inside the transaction and every cache listens (server.workers), independently started or not.
        return self.cache_enabled is not False

    @property
    def proxy_mode(self) -> bool:
        return bool(self.trusted_proxies)

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]

    def tls_files(self) -> tuple[Path, Path, Path]:
        """(server certificate chain, server key, CA bundle) from explicit files or the PKI directory."""
        if self.server_cert and self.server_key and self.ca_cert:
            return Path(self.server_cert), Path(self.server_key), Path(self.ca_cert)
        from certs.pki import load_pki

        paths = load_pki(self.cert_dir or Path(self.data_dir) / "pki")
        return (
            Path(self.server_cert or paths.server_chain),
            Path(self.server_key or paths.server_key),
            Path(self.ca_cert or paths.ca_chain),
        )

    def notify_files(self) -> tuple[Path, Path, Path]:
        """(client certificate chain, key, CA bundle) for notification delivery.

        By default the server presents its own certificate (it carries clientAuth as well as serverAuth),
        so a subscriber can accept exactly the identity it already verified when it connected to us.
        """
        chain, key, ca = self.tls_files()
        if self.notify_cert and self.notify_key:
            return Path(self.notify_cert), Path(self.notify_key), ca
        return chain, key, ca


def _config_error(exc: ValidationError) -> ConfigError:
    error = exc.errors(include_url=False)[0]
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        name = str(error["loc"][0])
        close = [n for n in ServerConfig.model_fields if n.split("_")[0] == name.split("_")[0]]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return ConfigError(f"unknown server setting {name!r}{hint}")
    return ConfigError(describe(exc))


def config_from_mapping(values: dict[str, Any], base: ServerConfig | None = None) -> ServerConfig:
    """Apply ``values`` (from TOML ``[server]`` or flags) over ``base``; unknown names are errors."""
    try:
        return ServerConfig.model_validate({**(base.model_dump() if base else {}), **values})
    except ValidationError as exc:
        raise _config_error(exc) from None


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> ServerConfig:
    """Read a TOML file (keys at top level or under ``[server]``) and apply ``overrides`` on top."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        values = document.get("server", document)
        if "server" in document and len(document) > 1:
            extra = sorted(k for k in document if k != "server")
            if any(k in ServerConfig.model_fields for k in extra):
                raise ConfigError(f"{path}: settings {extra} must be inside [server]")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [server] must be a table")
    config = config_from_mapping(values)
    config = config_from_mapping({k: v for k, v in (overrides or {}).items() if v is not None}, config)
    check_config(config)
    return config


def check_config(config: ServerConfig) -> None:
    """Rules that join several settings."""
    if not config.tls and not config.trusted_proxies:
        raise ConfigError("tls: may only be false behind a TLS-terminating proxy (set trusted_proxies)")
    if config.dnssd:
        if not config.tls:
            raise ConfigError("dnssd: behind a TLS-terminating proxy, advertise the proxy's address instead")
        try:
            address = ipaddress.ip_address(config.dnssd_address or config.host)
        except ValueError:
            raise ConfigError(
                f"dnssd_address: {config.dnssd_address or config.host!r} is not an IP address"
            ) from None
        if address.is_unspecified:
            raise ConfigError(f"dnssd_address: host is {config.host}; name the address clients connect to")
    if config.workers > 1 and config.is_sqlite:
        raise ConfigError("workers: more than one server process needs PostgreSQL (set database_url)")
    if config.headend_enabled:
        check_headend_transport(config)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_headend_transport(config: ServerConfig) -> None:
    """Operator tokens never cross a network in clear text unless the operator insists."""
    if (
        not config.headend_tls
        and not config.headend_insecure_http
        and not is_loopback_host(config.headend_host)
    ):
        raise ConfigError(
            f"headend_host: {config.headend_host} is not a loopback address and headend_tls is off; set "
            "headend_tls = true (or headend_insecure_http = true to force plain HTTP)"
        )
