"""``derlink ctl``: the operator command line over the head-end API (server.headend.api).

Lists print as rich tables, single objects as key/value tables; ``--json`` prints the API's JSON instead.
DOE uploads are streamed from disk with a progress bar. The URL and token default to the environment
(``DERLINK_HEADEND_URL``, ``DERLINK_TOKEN``), then to what the server wrote in its data directory
(``--data-dir``: the head-end's address and generated token) or its configuration (``--config``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8445"
LIMIT_FLAGS = (
    ("import_limit_w", float),
    ("export_limit_w", float),
    ("generation_limit_w", float),
    ("load_limit_w", float),
    ("target_w", float),
    ("storage_target_w", float),  # CSIP-AUS v1.3 opModStorageTargetW: + discharge, - charge
    ("fixed_w_percent", int),
    ("max_lim_w_percent", int),
    ("ramp_tms", int),
)


class CtlError(Exception):
    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.payload = payload
        super().__init__(payload.get("error") if isinstance(payload, dict) else str(payload))


# ------------------------------------------------------------------------------------------ HTTP


def _server_config(args: argparse.Namespace) -> Any:
    """The server's configuration named by --config, or None."""
    if not getattr(args, "config", None):
        return None
    from server.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir)
    config = _server_config(args)
    return Path(config.data_dir) if config is not None else Path("derlink-data")


def _url(args: argparse.Namespace) -> str:
    """--url, $DERLINK_HEADEND_URL, the address a running server wrote in its data directory, the server
    config's headend_host/headend_port, or the default."""
    if args.url or os.environ.get("DERLINK_HEADEND_URL"):
        return args.url or os.environ["DERLINK_HEADEND_URL"]
    recorded = _data_dir(args) / "headend.json"
    try:
        return str(json.loads(recorded.read_text())["url"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    config = _server_config(args)
    if config is not None and config.headend_port:
        host = "127.0.0.1" if config.headend_host in ("0.0.0.0", "::") else config.headend_host
        return f"http://{host}:{config.headend_port}"
    return DEFAULT_URL


def _token(args: argparse.Namespace) -> str:
    """--token, $DERLINK_TOKEN, --token-file, the server config's first operator token, or the token file
    the server generated in its data directory."""
    if args.token:
        return args.token
    if os.environ.get("DERLINK_TOKEN"):
        return os.environ["DERLINK_TOKEN"]
    if args.token_file:
        path = Path(args.token_file)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"error: --token-file {path}: {exc.strerror}") from None
    config = _server_config(args)
    if config is not None and config.headend_tokens:
        tokens = sorted(config.headend_tokens, key=lambda t: t.get("role") != "operator")
        return tokens[0]["token"]
    path = _data_dir(args) / "headend-token"
    if path.exists():
        return path.read_text().strip()
    raise SystemExit(
        f"error: no head-end token: pass --data-dir (the server's), --config (the server's), --token, "
        f"or set DERLINK_TOKEN ({path} does not exist)"
    )


async def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    upload: Path | None = None,
    content_type: str | None = None,
    raw: bool = False,
) -> Any:
    import aiohttp

    url = _url(args).rstrip("/") + path
    headers = {"Authorization": f"Bearer {_token(args)}"}
    params = {k: str(v) for k, v in (query or {}).items() if v is not None}
    data: Any = None
    if body is not None:
        data = json.dumps({k: v for k, v in body.items() if v is not None})
        headers["Content-Type"] = "application/json"
    progress = None
    if upload is not None:
        headers["Content-Type"] = content_type or "text/csv"
        data, progress = _file_stream(upload, quiet=args.json)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(method, url, data=data, params=params, headers=headers) as response:
                text = await response.text()
    finally:
        if progress is not None:
            progress.stop()
    if raw and response.status < 400:
        return text  # CSV: printed as it came
    try:
        payload = json.loads(text) if text else {}
    except json.JSONDecodeError:
        payload = {"error": text}
    if response.status >= 400:
        raise CtlError(response.status, payload)
    return payload


def _file_stream(path: Path, quiet: bool) -> tuple[Any, Any]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    size = path.stat().st_size
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=_console(stderr=True),
        disable=quiet,
    )
    task = progress.add_task(f"uploading {path.name}", total=size)
    progress.start()

    async def chunks() -> Any:
        with path.open("rb") as handle:
            while True:
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                progress.update(task, advance=len(chunk))
                yield chunk
        progress.update(task, description=f"{path.name}: sent, server applying")

    return chunks(), progress


# ------------------------------------------------------------------------------------------ output


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


_TIME_WORDS = ("time", "start", "end", "registered", "contact", "until", "created", "updated")


def _is_timestamp(key: str, value: Any) -> bool:
    """Unix seconds the API returns under names like at, start, last_contact (not durations or counts)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    name = key.lower()
    named = name == "at" or name.endswith("_at") or any(word in name for word in _TIME_WORDS)
    return named and "duration" not in name and 1_000_000_000 <= value < 4_102_444_800


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return _fields(value, key)
    if _is_timestamp(key, value):  # the operator's local time with its offset; --json keeps Unix seconds
        return datetime.fromtimestamp(value, UTC).astimezone().isoformat(sep=" ", timespec="seconds")
    if isinstance(value, int | float) and not isinstance(value, bool):
        unit = next((u for suffix, u in _UNITS if key.lower().endswith(suffix)), None)
        if unit is not None:  # the API's field names carry the unit: export_limit_w, duration, soc_pct
            return f"{value:g} {unit}"
    return str(value)


_UNITS = (("_wh", "Wh"), ("_w", "W"), ("_var", "var"), ("_pct", "%"), ("duration", "s"), ("_s", "s"))


def _fields(value: Any, key: str = "") -> str:
    """Nested data as readable fields, not JSON: ``name: value; name: value``, lists comma separated
    (objects in a list separated by `` | ``); ``--json`` keeps the structure."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fields(v, k)}" for k, v in value.items() if v is not None and v != [])
    if isinstance(value, list):
        sep = " | " if any(isinstance(v, dict) for v in value) else ", "
        return sep.join(_fields(v, key) for v in value)
    return _cell(value, key)


def _is_control(value: Any) -> bool:
    return isinstance(value, dict) and "mrid" in value and "start" in value and "duration" in value


def _control_line(control: dict[str, Any]) -> str:
    """One line per control: mRID, status, local start, duration and limits."""
    limits = ", ".join(
        f"{name.removesuffix('_w').replace('_', ' ')} {value:g} W"
        if name.endswith("_w") and isinstance(value, int | float)
        else f"{name} {value}"
        for name, value in (control.get("limits") or {}).items()
    )
    start = _cell(control["start"], "start")
    der = f" (DER {control['der']})" if control.get("der") is not None else ""
    status = f"{control.get('status') or ''}{der}"
    return f"{control['mrid']} {status} {start} for {control['duration']} s: {limits}"


def _nested(value: Any, key: str = "", depth: int = 0) -> Any:
    """A rich renderable for one value of a record: sub-tables for objects and lists of objects, one level
    deep (deeper tables would not fit a terminal), then compact JSON."""
    from rich import box
    from rich.table import Table

    if depth > 0 and isinstance(value, list) and value and all(_is_control(item) for item in value):
        return "\n".join(_control_line(item) for item in value)
    if depth > 0 and isinstance(value, dict | list) and value:
        return _control_line(value) if _is_control(value) else _fields(value, key)
    if isinstance(value, dict) and value:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="dim", no_wrap=True)
        table.add_column(overflow="fold")
        for k, v in value.items():
            table.add_row(k, _nested(v, k, depth + 1))
        return table
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        columns: list[str] = []
        for item in value:
            columns += [k for k in item if k not in columns]
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for item in value:
            table.add_row(*(_nested(item.get(c), c, depth + 1) for c in columns))
        return table
    if isinstance(value, list):
        return ", ".join(_cell(v, key) for v in value)
    return _cell(value, key)


def _show(args: argparse.Namespace, payload: Any, title: str | None = None) -> None:
    if isinstance(payload, str):  # CSV
        sys.stdout.write(payload)
        return
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    from rich.table import Table

    console = _console()
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        items = payload["items"]
        columns: list[str] = []
        for item in items:
            columns += [k for k in item if k not in columns]
        cells = [[_cell(item.get(c), c) for c in columns] for item in items]
        natural = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
        if sum(natural) + 3 * len(columns) + 1 <= console.width:  # a table that fits: nothing cut short
            table = Table(title=title)
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in cells:
                table.add_row(*row)
            console.print(table)
        else:  # too wide for the terminal: one block of fields per item, identifiers whole
            first = int(payload.get("offset") or 0)
            for n, row in enumerate(cells):
                block = Table(show_header=False, box=None, pad_edge=False, title_justify="left",
                              title=f"{title or 'item'} #{first + n + 1}", title_style="bold")  # fmt: skip
                block.add_column(style="dim", no_wrap=True)
                block.add_column(overflow="fold")
                for column, text in zip(columns, row, strict=True):
                    if text:
                        block.add_row(column, text)
                console.print(block)
        extra = {k: v for k, v in payload.items() if k != "items"}
        if extra:
            console.print(" ".join(f"{k}={_cell(v, k)}" for k, v in extra.items()))
        return
    table = Table(show_header=False, title=title)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in payload.items() if isinstance(payload, dict) else [("result", payload)]:
        table.add_row(key, _nested(value, key))
    console.print(table)


# ------------------------------------------------------------------------------------------ commands


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    out = {name: getattr(args, name) for name, _ in LIMIT_FLAGS if getattr(args, name) is not None}
    for name in ("connect", "energize"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    return out


def _der_count(text: str) -> int:
    from server.store.admin import MAX_DERS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ders: expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_DERS:
        raise argparse.ArgumentTypeError(f"ders: must be 1..{MAX_DERS}, got {value}")
    return value


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


async def _site_register(args: argparse.Namespace) -> Any:
    """Out-of-band registration; ``--ders N``: then the server creates the site's N DER instances
    (checked by argparse first, so that a bad count registers nothing)."""
    payload = await _call(
        args,
        "POST",
        "/api/sites",
        body={
            "lfdi": args.lfdi,
            "sfdi": args.sfdi,
            "nmi": args.nmi,
            "pin": args.pin,
            "label": args.label,
            "groups": args.group or None,
            "aggregator": args.aggregator,
            "reason": args.reason,
        },
    )
    if args.ders is not None and args.ders != 1:
        path = f"/api/sites/{payload['lfdi']}/ders"
        await _call(args, "PUT", path, body={"count": args.ders, "reason": args.reason})
        payload["ders"] = args.ders
    return payload


async def _site_ders(args: argparse.Namespace) -> Any:
    """``sites ders SITE``: each DER's documents and telemetry; ``--history``: what changed, when;
    ``--count N``: the server creates (or removes) DER instances until the DERList holds N."""
    path = f"/api/sites/{args.site}/ders"
    if args.count is not None:
        return await _call(args, "PUT", path, body={"count": args.count, "reason": args.reason})
    if args.history:
        query = {"der": args.der, "kind": args.kind, "since": args.since, "limit": args.limit}
        payload = await _call(args, "GET", path + "/history", query=query)
        if args.json:
            return payload

        def unit(value: Any, name: str, units: dict[str, str]) -> str:
            return f"{_cell(value)} {units[name]}" if value is not None and name in units else _cell(value)

        rows = [
            {"at": item["at"], "der": item["der"], "document": item["document"], "field": field,
             "old": unit(old, field, item["units"]), "new": unit(new, field, item["units"])}
            for item in payload["items"]
            for field, (old, new) in item["changes"].items()
        ]  # fmt: skip
        return {"items": rows, "site": payload["site"]}
    payload = await _call(args, "GET", path)
    if args.json:
        return payload
    out: dict[str, Any] = {"site": payload["site"]}
    for der in payload["ders"]:
        fields = {}
        for kind, doc in der["documents"].items():
            units = doc.pop("units", {})
            fields.update(
                {f"{kind}.{k}": f"{_cell(v, k)} {units[k]}" if k in units else _cell(v, k)
                 for k, v in _flat(doc).items()}
            )  # fmt: skip
        out[f"DER {der['id']}"] = {"href": der["href"], "changes": der["changes"], **fields}
    for point in payload["telemetry"]:
        out[f"telemetry {point['device']}"] = {
            f"{r['description']}": f"{r['value']:g} {r['unit'] or ''}".strip() for r in point["readings"]
        } or "no readings"
    return out


def _commands() -> dict[str, Any]:
    """(noun, verb) -> coroutine function(args) returning the payload to show."""

    def q(args: argparse.Namespace, *names: str) -> dict[str, Any]:
        return {n: getattr(args, n, None) for n in names}

    return {
        ("whoami", None): lambda a: _call(a, "GET", "/api/whoami"),
        ("sites", "list"): lambda a: _call(
            a, "GET", "/api/sites", query=q(a, "q", "group", "offset", "limit")
        ),
        ("sites", "show"): lambda a: _call(a, "GET", f"/api/sites/{a.site}"),
        ("sites", "register"): _site_register,
        ("sites", "bulk"): lambda a: _call(
            a,
            "POST",
            "/api/sites/bulk",
            body={"sites": json.loads(Path(a.file).read_text()), "reason": a.reason},
        ),
        ("sites", "deregister"): lambda a: _call(a, "DELETE", f"/api/sites/{a.site}", query=q(a, "reason")),
        ("sites", "join"): lambda a: _call(
            a, "PUT", f"/api/sites/{a.site}/groups/{a.group}", query=q(a, "reason")
        ),
        ("sites", "leave"): lambda a: _call(
            a, "DELETE", f"/api/sites/{a.site}/groups/{a.group}", query=q(a, "reason")
        ),
        ("sites", "clear-mups"): lambda a: _call(
            a, "DELETE", f"/api/sites/{a.site}/mups", query=q(a, "reason")
        ),
        ("sites", "ders"): _site_ders,
        ("sites", "does"): lambda a: _call(
            a, "GET", f"/api/sites/{a.site}/does", query=q(a, "since", "limit")
        ),
        ("groups", "list"): lambda a: _call(a, "GET", "/api/groups"),
        ("groups", "show"): lambda a: _call(a, "GET", f"/api/groups/{a.name}"),
        ("groups", "create"): lambda a: _call(
            a,
            "POST",
            "/api/groups",
            body={"name": a.name, "parent": a.parent, "description": a.description, "reason": a.reason},
        ),
        ("programs", "list"): lambda a: _call(a, "GET", "/api/programs"),
        ("programs", "create"): lambda a: _call(
            a,
            "POST",
            "/api/programs",
            body={
                "key": a.key,
                "primacy": a.primacy,
                "group": a.group,
                "description": a.description,
                "reason": a.reason,
            },
        ),
        ("defaults", "list"): lambda a: _call(a, "GET", "/api/defaults"),
        ("defaults", "set"): lambda a: _call(
            a,
            "PUT",
            "/api/defaults",
            body={
                "program": a.program,
                "target": a.target,
                "der": a.der,
                "set_grad_w": a.set_grad_w,
                "reason": a.reason,
                **_limits(a),
            },
        ),
        ("controls", "list"): lambda a: _call(
            a,
            "GET",
            "/api/controls",
            query={**q(a, "program", "target", "offset", "limit"), "active": "true" if a.active else None},
        ),
        ("controls", "show"): lambda a: _call(a, "GET", f"/api/controls/{a.mrid}"),
        ("controls", "create"): lambda a: _call(
            a,
            "POST",
            "/api/controls",
            body={
                "program": a.program,
                "target": a.target,
                "der": a.der,
                "start": None if a.start in (None, "now") else int(a.start),
                "duration": a.duration,
                "randomize_start": a.randomize_start,
                "randomize_duration": a.randomize_duration,
                "response_required": a.response_required,
                "description": a.description,
                "reason": a.reason,
                **_limits(a),
            },
        ),
        ("controls", "cancel"): lambda a: _call(
            a, "POST", f"/api/controls/{a.mrid}/cancel", body={"reason": a.reason}
        ),
        ("controls", "acks"): lambda a: _call(
            a,
            "GET",
            f"/api/controls/{a.mrid}/acks",
            query={"within": a.within, "format": "csv" if a.csv else None},
            raw=a.csv,
        ),
        ("telemetry", None): lambda a: _call(
            a,
            "GET",
            "/api/telemetry",
            query={
                "site": a.site,
                "group": a.group,
                "from": a.since,
                "to": a.until,
                "format": "csv" if a.csv else None,
            },
            raw=a.csv,
        ),
        ("compliance", None): lambda a: _call(
            a,
            "GET",
            "/api/compliance",
            query={
                "site": a.site,
                "group": a.group,
                "from": a.since,
                "to": a.until,
                **q(a, "tolerance_w", "tolerance_pct", "settle_s", "silent_posts", "ack_within_s"),
                "format": "csv" if a.csv else None,
            },
            raw=a.csv,
        ),
        ("emergency", "issue"): lambda a: _call(
            a,
            "POST",
            "/api/emergency",
            body={
                "target": a.target,
                "action": a.action,
                "generation_limit_w": a.generation_limit_w,
                "duration": a.duration,
                "reason": a.reason,
            },
        ),
        ("emergency", "lift"): lambda a: _call(
            a,
            "POST",
            "/api/emergency/lift",
            body={
                "target": a.target,
                "mrid": a.mrid,
                "spread": a.spread,
                "waves": a.waves.split(",") if a.waves else None,
                "wave_interval": a.wave_interval,
                "reason": a.reason,
            },
        ),
        ("does", "upload"): lambda a: _call(
            a,
            "POST",
            "/api/does",
            query={"reason": a.reason},
            upload=Path(a.file),
            content_type="application/json"
            if (a.format or Path(a.file).suffix.lstrip(".")) in ("json", "jsonl", "ndjson")
            else "text/csv",
        ),
        ("does", "uploads"): lambda a: _call(a, "GET", "/api/does/uploads", query=q(a, "limit")),
        ("rates", "list"): lambda a: _call(a, "GET", "/api/rates"),
        ("rates", "set"): lambda a: _call(
            a,
            "PUT",
            "/api/rates",
            body={"resource": a.resource, "value": a.value, "target": a.target, "reason": a.reason},
        ),
        ("rates", "clear"): lambda a: _call(
            a, "DELETE", "/api/rates", query=q(a, "resource", "target", "reason")
        ),
        ("clients", "list"): lambda a: _call(a, "GET", "/api/clients"),
        ("clients", "revoke"): lambda a: _call(
            a, "POST", f"/api/clients/{a.lfdi}/revoke", body={"reason": a.reason}
        ),
        ("clients", "restore"): lambda a: _call(
            a, "POST", f"/api/clients/{a.lfdi}/restore", body={"reason": a.reason}
        ),
        ("aggregators", "list"): lambda a: _call(a, "GET", "/api/aggregators"),
        ("aggregators", "create"): lambda a: _call(
            a, "POST", "/api/aggregators", body={"name": a.name, "lfdis": a.lfdi or [], "reason": a.reason}
        ),
        ("aggregators", "add-cert"): lambda a: _call(
            a, "POST", f"/api/aggregators/{a.name}/certificates", body={"lfdi": a.lfdi, "reason": a.reason}
        ),
        ("aggregators", "remove-cert"): lambda a: _call(
            a, "DELETE", f"/api/aggregators/{a.name}/certificates/{a.lfdi}", query=q(a, "reason")
        ),
        ("audit", None): lambda a: _call(
            a,
            "GET",
            "/api/audit",
            query=q(a, "actor", "action", "target", "since", "until", "offset", "limit"),
        ),
    }


def _sfdi(text: str) -> int:
    from sep2.identity import IdentityError, operator_sfdi

    try:
        return operator_sfdi(text)
    except IdentityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    try:
        return _run_command(args)
    except BrokenPipeError:
        # `derlink ctl ... | head`: the reader left; exit quietly (and keep Python from complaining at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run_command(args: argparse.Namespace) -> int:
    from server.incidents.ctl import commands as incident_commands

    key = (args.noun, getattr(args, "verb", None))
    command = {**_commands(), **incident_commands(_call)}[key]
    if getattr(args, "file", None) and not Path(args.file).is_file():  # does upload, sites bulk
        print(f"error: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        payload = asyncio.run(command(args))
    except CtlError as exc:
        if args.json:
            print(
                json.dumps({"status": exc.status, **(exc.payload if isinstance(exc.payload, dict) else {})})
            )
        else:
            console = _console(stderr=True)
            console.print(f"[red]error {exc.status}[/red]: {exc}")
            for item in (exc.payload.get("errors") or [])[:20] if isinstance(exc.payload, dict) else []:
                where = " ".join(f"{k} {v}" for k, v in item.items() if k != "message")
                console.print(f"  {where}: {item.get('message')}")
        return 1
    except OSError as exc:
        print(
            f"error: cannot reach the head-end API at {_url(args)} (is the server running? see --url, "
            f"--data-dir, --config): {exc}",
            file=sys.stderr,
        )
        return 1
    _show(args, payload, title=" ".join(k for k in key if k))
    return 0


# ------------------------------------------------------------------------------------------ parser


def _global_options(parser: argparse.ArgumentParser, shown: bool) -> None:
    """The options every ctl command takes. Below the ctl level they are hidden and, when absent, leave
    the value given before the action alone (SUPPRESS)."""

    def add(*flags: str, help: str, **kwargs: Any) -> None:
        if not shown:
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(*flags, help=help if shown else argparse.SUPPRESS, **kwargs)

    add(
        "--url",
        help="head-end API base URL (default $DERLINK_HEADEND_URL, the address the server wrote "
        f"in DATA_DIR/headend.json, the server config's headend_host/headend_port, or {DEFAULT_URL})",
    )
    add(
        "--token",
        help="bearer token (default $DERLINK_TOKEN, --token-file, the server config's "
        "headend_tokens, or DATA_DIR/headend-token)",
    )
    add("--token-file", help="file holding the token")
    add("--data-dir", help="the server's data directory (default: the server config's, or ./derlink-data)")
    add("--config", help="the server's configuration file (server.toml)")
    add("--json", action="store_true", help="print JSON instead of tables")


class _OptionsAnywhereParser(argparse.ArgumentParser):
    """Accepts ctl's options after the object and the action too (``derlink ctl audit --json``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_options(self, shown=False)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ctl", help="operate the head-end: sites, groups, controls, DOEs, emergency"
    )
    _global_options(parser, shown=True)
    parser.set_defaults(handler=_run)
    nouns = parser.add_subparsers(
        dest="noun", metavar="OBJECT", required=True, parser_class=_OptionsAnywhereParser
    )

    def verbs(name: str, help_text: str) -> Any:
        p = nouns.add_parser(name, help=help_text)
        return p.add_subparsers(dest="verb", metavar="ACTION", required=True)

    def reason(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--reason", help="why (recorded in the audit log)")
        return p

    def limits(p: argparse.ArgumentParser) -> None:
        for name, kind in LIMIT_FLAGS:
            p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
        p.add_argument("--connect", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument("--energize", action=argparse.BooleanOptionalAction, default=None)

    def paging(p: argparse.ArgumentParser) -> None:
        p.add_argument("--offset", type=int)
        p.add_argument("--limit", type=int)

    nouns.add_parser("whoami", help="the token's name and role")

    v = verbs("sites", "sites (EndDevices)")
    p = v.add_parser("list", help="list or search sites")
    p.add_argument("--q", help="LFDI/NMI prefix or label text")
    p.add_argument("--group")
    paging(p)
    v.add_parser("show", help="site detail").add_argument("site", help="LFDI or nmi:NMI")
    p = reason(v.add_parser("register", help="register a site out of band"))
    p.add_argument("lfdi")
    p.add_argument("--sfdi", type=_sfdi, help="checked against the LFDI (spaces and dashes allowed)")
    p.add_argument("--nmi")
    p.add_argument("--pin", type=int)
    p.add_argument("--label")
    p.add_argument("--group", action="append", help="group membership (repeatable)")
    p.add_argument("--aggregator")
    p.add_argument("--ders", type=_der_count, help="how many DERs (devices) the site has (default 1)")
    p = reason(v.add_parser("bulk", help="register sites from a JSON list file"))
    p.add_argument("file")
    reason(v.add_parser("deregister", help="decommission a site")).add_argument("site")
    for verb in ("join", "leave"):
        p = reason(v.add_parser(verb, help=f"{verb} a group"))
        p.add_argument("site")
        p.add_argument("group")
    reason(v.add_parser("clear-mups", help="delete a site's MirrorUsagePoints")).add_argument("site")
    p = reason(v.add_parser("ders", help="a site's DERs: nameplate, settings, status, telemetry, history"))
    p.add_argument("site", help="LFDI or nmi:NMI")
    p.add_argument("--history", action="store_true", help="what changed in the DER documents, and when")
    p.add_argument("--der", type=int, help="with --history: one DER (its id)")
    p.add_argument("--kind", choices=("dercap", "derg", "ders", "dera"), help="with --history: one document")
    p.add_argument("--since", type=int, help="with --history: changes at or after this Unix time")
    p.add_argument("--limit", type=int, help="with --history: at most this many changes (default 100)")
    p.add_argument("--count", type=_der_count, help="set how many DER instances the site's DERList holds")
    p = v.add_parser("does", help="a site's DOE intervals")
    p.add_argument("site")
    p.add_argument("--since", type=int)
    p.add_argument("--limit", type=int)

    v = verbs("groups", "groups (nested; 'all' is the built-in broadcast group)")
    v.add_parser("list", help="list groups")
    v.add_parser("show", help="a group with its members").add_argument("name")
    p = reason(v.add_parser("create", help="create a group, optionally inside another"))
    p.add_argument("name")
    p.add_argument("--parent")
    p.add_argument("--description")

    v = verbs("programs", "DERPrograms (lower primacy wins)")
    v.add_parser("list", help="list programs")
    p = reason(v.add_parser("create", help="create a program with a primacy"))
    p.add_argument("key")
    p.add_argument("--primacy", type=int, required=True)
    p.add_argument("--group")
    p.add_argument("--description")

    v = verbs("defaults", "DefaultDERControls per program and target")
    v.add_parser("list", help="list default controls")
    p = reason(v.add_parser("set", help="set the default control of a program for a target"))
    p.add_argument("program")
    p.add_argument("target", help="all | group:NAME | site:LFDI | nmi:NMI")
    p.add_argument(
        "--der",
        type=int,
        help="with a site target: for that DER alone (its id in `sites ders SITE`); 2030.5 DER."
        "AssociatedDERProgramListLink, not used by CSIP-AUS",
    )
    p.add_argument("--set-grad-w", type=int)
    limits(p)

    v = verbs("controls", "DERControls")
    p = v.add_parser("list", help="list controls")
    p.add_argument("--program")
    p.add_argument("--target")
    p.add_argument("--active", action="store_true")
    paging(p)
    v.add_parser("show", help="a control with its responses").add_argument("mrid")
    p = reason(v.add_parser("create", help="create a control for a site, a group or all"))
    p.add_argument("program")
    p.add_argument("target", help="all | group:NAME | site:LFDI | nmi:NMI")
    p.add_argument(
        "--der",
        type=int,
        help="with a site target: for that DER alone (its id in `sites ders SITE`); 2030.5 DER."
        "AssociatedDERProgramListLink, not used by CSIP-AUS",
    )
    p.add_argument("--start", help="Unix seconds or 'now' (default now)")
    p.add_argument("--duration", type=int, required=True)
    p.add_argument("--randomize-start", type=int)
    p.add_argument("--randomize-duration", type=int)
    p.add_argument("--response-required", help="two hex digits (default 03)")
    p.add_argument("--description")
    limits(p)
    reason(v.add_parser("cancel", help="cancel a control (subscribers are notified)")).add_argument("mrid")
    p = v.add_parser("acks", help="who acknowledged a control, by Response status, and who did not")
    p.add_argument("mrid")
    p.add_argument("--within", type=int, help="seconds allowed to answer (default 300)")
    p.add_argument("--csv", action="store_true", help="one line per targeted site")

    p = nouns.add_parser("telemetry", help="stored readings in real units, by device and phase (CSV/JSON)")
    p.add_argument("--site", help="one site (LFDI)")
    p.add_argument("--group", help="a group and its nested groups (default: all sites)")
    p.add_argument("--since", type=int, help="Unix seconds (default: an hour before --until)")
    p.add_argument("--until", type=int, help="Unix seconds (default: now)")
    p.add_argument("--csv", action="store_true", help="one line per reading")

    p = nouns.add_parser("compliance", help="judge stored telemetry against the limits that were published")
    p.add_argument("--site", help="one site (LFDI)")
    p.add_argument("--group", help="a group and its nested groups (default: all sites)")
    p.add_argument("--since", type=int, help="Unix seconds (default: a day before --until)")
    p.add_argument("--until", type=int, help="Unix seconds (default: now)")
    p.add_argument("--tolerance-w", type=float, help="allowed excess, W (default 100)")
    p.add_argument("--tolerance-pct", type=float, help="allowed excess, %% of the limit (default 2)")
    p.add_argument("--settle-s", type=float, help="seconds not judged after a limit tightens (default 5)")
    p.add_argument("--silent-posts", type=int, help="silent after this many postRates without data (3)")
    p.add_argument("--ack-within-s", type=int, help="non-responder after this long (default 300)")
    p.add_argument("--csv", action="store_true", help="one line per site")

    v = verbs("emergency", "emergency commands (top-primacy program, start now)")
    p = reason(v.add_parser("issue", help="issue an emergency command to a site, a group or all"))
    p.add_argument("target")
    p.add_argument(
        "action", choices=["zero_export", "zero_generation", "generation_limit", "disconnect", "deenergise"]
    )
    p.add_argument("--generation-limit-w", type=float)
    p.add_argument("--duration", type=int)
    p = reason(v.add_parser("lift", help="lift at once, spread (--spread S) or in waves"))
    p.add_argument("--target")
    p.add_argument("--mrid")
    p.add_argument("--spread", type=int, help="randomised restore over S seconds")
    p.add_argument("--waves", help="comma-separated group targets, released in order")
    p.add_argument("--wave-interval", type=int)

    v = verbs("does", "bulk dynamic operating envelopes")
    p = reason(v.add_parser("upload", help="stream a CSV/JSON file of DOE intervals (atomic)"))
    p.add_argument("file")
    p.add_argument("--format", choices=["csv", "json"])
    v.add_parser("uploads", help="upload history").add_argument("--limit", type=int)

    v = verbs("rates", "runtime pollRate/postRate")
    v.add_parser("list", help="list rate settings")
    p = reason(v.add_parser("set", help="set a pollRate or postRate globally, per group or per site"))
    p.add_argument("resource", help="dcap edev fsa derp der mup rsps sub rg tm | post (MUP postRate)")
    p.add_argument("value", type=int)
    p.add_argument("--target", default="all")
    p = reason(v.add_parser("clear", help="remove a rate setting"))
    p.add_argument("resource")
    p.add_argument("--target", default="all")

    v = verbs("clients", "client certificates")
    v.add_parser("list", help="list client certificates")
    reason(v.add_parser("revoke", help="refuse this certificate (403)")).add_argument("lfdi")
    reason(v.add_parser("restore", help="accept this certificate again")).add_argument("lfdi")

    v = verbs("aggregators", "aggregators and certificate rotation")
    v.add_parser("list", help="list aggregators")
    p = reason(v.add_parser("create", help="create an aggregator"))
    p.add_argument("name")
    p.add_argument("--lfdi", action="append")
    for verb in ("add-cert", "remove-cert"):
        p = reason(v.add_parser(verb, help=f"{verb.split('-')[0]} an aggregator certificate"))
        p.add_argument("name")
        p.add_argument("lfdi")

    p = nouns.add_parser("audit", help="query the audit log")
    for name in ("actor", "action", "target"):
        p.add_argument(f"--{name}")
    p.add_argument("--since", type=int)
    p.add_argument("--until", type=int)
    paging(p)

    from server.incidents.ctl import add_parsers

    add_parsers(verbs)
