"""What every commissioning step shares: the flags (:class:`Options`), the UI protocol, the context, and
:class:`StepFailed`, which carries what happened and what the installer does next."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from gateway.devices.device import SerialLine
from gateway.commissioning.state import CommissioningState

T = TypeVar("T")


ROLES = ("pv", "battery", "meter", "ignore")


class StepFailed(Exception):
    """A step could not finish: ``message`` says what happened, ``next_action`` what the installer does."""

    def __init__(self, message: str, next_action: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.next_action = next_action
        self.details = details


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


@dataclass
class Context:
    opts: Options
    state: CommissioningState
    ui: UI

    def save(self) -> None:
        self.state.save()


RTU_PREFIX = "rtu:"


def serial_line_of(host: str) -> SerialLine | None:
    """The SerialLine of a canonical ``rtu:`` scan target; None for a TCP host."""
    if not host.startswith(RTU_PREFIX):
        return None
    from gateway.devices.device import SerialLine

    path, _, settings = host.removeprefix(RTU_PREFIX).rpartition("@")
    baud, _, frame = settings.partition("-")
    return SerialLine(path, int(baud), frame[1], int(frame[2]))


def fmt_w(value: Any) -> str:
    return "-" if value is None else f"{float(value):g} W"


async def wait_for(predicate: Callable[[], Awaitable[Any]], within: float, every: float = 0.25) -> Any:
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
