"""Server configuration: a TOML file plus command-line overrides.

Every key has a default so that ``derlink server run`` works with no file at all (SQLite in ``data_dir``).
Unknown keys are errors that name the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration file or flag that is not understood; the message names the field."""


@dataclass
class ServerConfig:
    # Where state lives. database_url defaults to SQLite in data_dir.
    data_dir: Path = Path("derlink-data")
    database_url: str | None = None
    # 2030.5 listener (mutual TLS).
    host: str = "127.0.0.1"
    port: int = 8443
    cert_dir: Path | None = None  # PKI directory (certs.pki layout); default data_dir / "pki"
    server_cert: Path | None = None  # explicit files override cert_dir
    server_key: Path | None = None
    ca_cert: Path | None = None
    # Client certificate the server presents when POSTing notifications (needs clientAuth). Default: the
    # server's own certificate.
    notify_cert: Path | None = None
    notify_key: Path | None = None
    tls: bool = True  # False only behind a TLS-terminating proxy (trusted_proxies must be set)
    # Admin listener (/metrics, later the head-end API); port 0 picks a free port.
    admin_enabled: bool = True
    admin_host: str = "127.0.0.1"
    admin_port: int = 8444
    # Behaviour.
    poll_rate: int = 300  # default pollRate (s) for DeviceCapability and polled lists
    post_rate: int = 300  # default postRate (s) for MirrorUsagePoints and EndDevices
    inband_registration: bool = True
    iana_pen: int = 0  # private enterprise number placed in the low 32 bits of generated mRIDs
    max_body_bytes: int = 64 * 1024
    # Connection limits on the 2030.5 listener (server.connlimits).
    handshake_timeout: float = 10.0  # s for a TLS handshake
    idle_timeout: float = 15.0  # s without a complete request header (fresh, slow or keep-alive idle)
    body_timeout: float = 30.0  # s for a request body to arrive
    max_connections: int = 1000  # in total (capped below the file descriptor limit)
    max_connections_per_client: int = 64  # per client certificate (an aggregator may need many)
    # Per-client quotas (server.store.quotas): over one, 409 with a 2030.5 Error and nothing stored.
    max_mups_per_site: int = 16
    max_readings_per_request: int = 1000
    max_subscriptions_per_site: int = 32
    max_responses_per_event: int = 16  # per site and event; a repeated Response (same status) counts once
    max_list_limit: int = 500
    cache_enabled: bool | None = None  # None: on for SQLite, and for PostgreSQL with workers > 1
    # Server processes sharing the 2030.5 port (SO_REUSEPORT) and a PostgreSQL database (server.workers).
    workers: int = 1
    cache_max_bytes: int = 64 * 1024 * 1024  # rendered documents kept, least recently used evicted
    # Running behind a TLS-terminating proxy: the client certificate (PEM, URL-encoded) arrives in
    # proxy_cert_header and is trusted only from these peer addresses/networks.
    proxy_cert_header: str = "X-Client-Cert"
    trusted_proxies: list[str] = field(default_factory=list)
    # Notification outbox.
    notify_retry_initial: float = 1.0
    notify_retry_max: float = 300.0
    notify_timeout: float = 10.0
    notify_concurrency: int = 256  # notifications sent at once (server.notifications) ...
    notify_per_host: int = 4  # ... and at most this many to one subscriber (scheme, host, port)
    # Notification target policy (server.netpolicy): non-public addresses are refused unless covered by a
    # CIDR or host name ("gw.example", "*.example") here, or in the per-client list keyed by certificate LFDI.
    notify_allow: list[str] = field(default_factory=list)
    notify_allow_by_client: dict[str, list[str]] = field(default_factory=dict)
    log_level: str = "INFO"
    # Incidents (seed 002): each raise, note and transition is POSTed as JSON to this http(s) URL, signed
    # with HMAC-SHA256 over the body when a secret is set (server.incidents.webhook). Operator-chosen, so
    # the notification target policy does not apply; delivery never blocks the workflow.
    incident_webhook_url: str | None = None
    incident_webhook_secret: str | None = None
    # Head-end operator API (JSON, its own listener, loopback by default; port 0 picks a free port).
    # Bearer tokens: [{name, token, role = "operator" | "viewer"}]. With none configured, an operator token
    # is generated into data_dir/headend-token on first start (see server.headend.api).
    headend_enabled: bool = True
    headend_host: str = "127.0.0.1"
    headend_port: int = 8445
    headend_tokens: list[dict[str, str]] = field(default_factory=list)
    # TLS on the head-end listener (the server's certificate from the PKI; no client certificate). Plain
    # HTTP is refused on a non-loopback headend_host unless headend_insecure_http forces it.
    headend_tls: bool = False
    headend_insecure_http: bool = False
    # DNS-SD (2030.5 clause 7): advertise _smartenergy._tcp on mDNS so local clients find /dcap. The address
    # is the one clients connect to and the interface mDNS runs on; it defaults to ``host`` unless that is a
    # wildcard.
    dnssd: bool = False
    dnssd_address: str | None = None
    dnssd_instance: str = "derlink"

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
        # PostgreSQL: on when this server's processes tell each other what they changed (workers > 1); a
        # single process may share its database with independently started ones, so it asks every time.
        if self.cache_enabled is None:
            return self.is_sqlite or self.workers > 1
        return self.cache_enabled

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


_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}
_PATH_FIELDS = {"data_dir", "cert_dir", "server_cert", "server_key", "ca_cert", "notify_cert", "notify_key"}


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one value to the type of field ``name``; raise ConfigError naming it."""
    default = _FIELDS[name].default
    if name in _PATH_FIELDS:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{name}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    if name == "trusted_proxies":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of addresses or networks, got {value!r}")
        for v in value:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{name}: {v!r} is not an IP address or network") from exc
        return list(value)
    if name in ("notify_allow", "notify_allow_by_client"):
        return _allow_lists(name, value)
    if name == "headend_tokens":
        return check_tokens(value)
    if name == "incident_webhook_url" and value is not None:
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{name}: expected an http:// or https:// URL, got {value!r}")
        return value
    if name == "cache_enabled":
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{name}: must not be negative, got {value}")
        if name.endswith("port") and value > 65535:
            raise ConfigError(f"{name}: {value} is not a TCP port")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{name}: expected a positive number, got {value!r}")
        return float(value)
    if not isinstance(value, str) and value is not None:
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _allow_lists(name: str, value: Any) -> Any:
    from server.netpolicy import parse_allow_entry

    def entries(where: str, items: Any) -> list[str]:
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where}: expected a list of host names or CIDRs, got {items!r}")
        for item in items:
            try:
                parse_allow_entry(item)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return list(items)

    if name == "notify_allow":
        return entries(name, value)
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table of client LFDI = [hosts or CIDRs], got {value!r}")
    for lfdi in value:
        if not re.fullmatch(r"[0-9a-fA-F]{40}", lfdi):
            raise ConfigError(f"{name}: key {lfdi!r} is not a 40-hex-digit LFDI")
    return {lfdi.lower(): entries(f"{name}.{lfdi}", items) for lfdi, items in value.items()}


def config_from_mapping(values: dict[str, Any], base: ServerConfig | None = None) -> ServerConfig:
    """Apply ``values`` (from TOML ``[server]`` or flags) over ``base``; unknown names are errors."""
    config = dataclasses.replace(base) if base else ServerConfig()
    for name, value in values.items():
        if name not in _FIELDS:
            close = [n for n in _FIELDS if n.split("_")[0] == name.split("_")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown server setting {name!r}{hint}")
        setattr(config, name, _coerce(name, value))
    return config


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
            if any(k in _FIELDS for k in extra):
                raise ConfigError(f"{path}: settings {extra} must be inside [server]")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [server] must be a table")
    config = config_from_mapping(values)
    config = config_from_mapping({k: v for k, v in (overrides or {}).items() if v is not None}, config)
    check_config(config)
    return config


def check_config(config: ServerConfig) -> None:
    """Cross-field rules."""
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
        if not config.dnssd_instance or "." in config.dnssd_instance or len(config.dnssd_instance) > 63:
            raise ConfigError("dnssd_instance: 1 to 63 characters without dots")
    if config.workers > 1 and config.is_sqlite:
        raise ConfigError("workers: more than one server process needs PostgreSQL (set database_url)")
    for name in ("notify_concurrency", "notify_per_host", "workers"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(config, name)}")
    if config.headend_enabled:
        check_headend_transport(config)
    if config.database_url and not config.database_url.startswith(
        ("sqlite+aiosqlite://", "postgresql+asyncpg://")
    ):
        raise ConfigError("database_url: must start with sqlite+aiosqlite:// or postgresql+asyncpg://")


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


ROLES = ("operator", "viewer")  # head-end token roles


def check_tokens(value: Any) -> list[dict[str, str]]:
    """Validate ``headend_tokens`` from the config; errors name the entry and key."""
    if not isinstance(value, list):
        raise ConfigError(f"headend_tokens: expected a list of {{name, token, role}} tables, got {value!r}")
    out = []
    names = set()
    for i, entry in enumerate(value):
        where = f"headend_tokens[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table with name, token and role")
        unknown = set(entry) - {"name", "token", "role"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (expected name, token, role)")
        for key in ("name", "token", "role"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{where}.{key}: required string")
        if entry["role"] not in ROLES:
            raise ConfigError(f"{where}.role: must be operator or viewer, got {entry['role']!r}")
        if len(entry["token"]) < 16:
            raise ConfigError(f"{where}.token: must be at least 16 characters")
        if entry["name"] in names:
            raise ConfigError(f"{where}.name: duplicate name {entry['name']!r}")
        names.add(entry["name"])
        out.append(dict(entry))
    return out
