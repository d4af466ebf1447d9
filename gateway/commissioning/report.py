"""The commissioning report: one JSON document and a self-contained HTML page for the customer and the DNSP.

Both come from the commissioning state, so they show exactly what was measured and when: devices with
their nameplate (the standing data, seed 000 GS06), the gateway's identity, the site record and limits,
the registration, and the end-to-end verification with measured values and timestamps.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.commissioning.common import Context
from gateway.commissioning.state import STEP_TITLES, STEPS, CommissioningState, iso
from sep2.files import write_atomic


def report_data(state: CommissioningState) -> dict[str, Any]:
    identity = dict(state.get("identity") or {})
    identity.pop("key_path", None)  # where the key lives is nobody else's business; it never leaves
    return {
        "report": "derlink commissioning report",
        "generated_at": iso(),
        "commissioning_started_at": state.get("created_at"),
        "steps": {
            name: {k: v for k, v in state.step(name).items() if k in ("status", "finished_at", "attempts")}
            for name in STEPS
        },
        "devices": [
            {"name": d["name"], "role": d["role"], "address": d["key"], **d["info"]}
            for d in state.get("devices") or []
        ],
        "identity": identity,
        "site": state.get("site"),
        "static_limits_applied": state.get("static_limits_applied"),
        "registration": state.get("registration"),
        "verification": state.get("verification"),
        "gateway_config": state.get("site_toml"),
        "history": state.get("history"),
    }


def _e(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return html.escape(f"{value:g}")
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(items: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</table>"


def render_html(data: dict[str, Any]) -> str:
    ident = data.get("identity") or {}
    site = data.get("site") or {}
    reg = data.get("registration") or {}
    ver = data.get("verification") or {}
    local = ver.get("local") or {}
    server = ver.get("server") or {}
    applied = data.get("static_limits_applied") or {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Commissioning report</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.25em .6em;"
        "text-align:left;vertical-align:top}th{background:#eee}.ok{color:#075}.bad{color:#a00}",
        "code{font-size:1.1em}</style></head><body>",
        "<h1>Site commissioning report</h1>",
        f"<p>Generated {_e(data['generated_at'])}; "
        f"commissioning started {_e(data['commissioning_started_at'])}."
        f" NMI <b>{_e(site.get('nmi'))}</b>.</p>",
        "<h2>Steps</h2>",
        _table(
            ["step", "status", "finished", "attempts"],
            [
                [STEP_TITLES[n], s.get("status"), s.get("finished_at"), s.get("attempts")]
                for n, s in data["steps"].items()
            ],
        ),
        "<h2>Devices</h2>",
        _table(
            ["name", "role", "address", "make", "model", "serial", "firmware", "rated W", "SunSpec models"],
            [
                [
                    d["name"],
                    d["role"],
                    d["address"],
                    d.get("manufacturer"),
                    d.get("model"),
                    d.get("serial"),
                    d.get("firmware"),
                    d.get("rated_w"),
                    ", ".join(str(m) for m in d.get("models", [])),
                ]
                for d in data["devices"]
            ],
        ),
        "<h2>Gateway identity</h2>",
        _pairs(
            [
                ("LFDI", ident.get("lfdi_grouped")),
                ("SFDI", ident.get("sfdi_grouped")),
                ("PIN", f"{ident['pin']:06d}" if ident.get("pin") is not None else None),
                ("certificate subject", ident.get("subject")),
                ("issued by", ident.get("issuer")),
                ("serial", ident.get("serial")),
                ("valid until", ident.get("not_after")),
                ("key", ident.get("source")),
            ]
        ),
        "<h2>Site record and limits</h2>",
        _pairs(
            [
                ("NMI", f"{site.get('nmi')} (checksum {site.get('nmi_checksum')})"),
                ("static export limit W", site.get("export_limit_w")),
                ("static import limit W", site.get("import_limit_w")),
                ("static generation limit W", site.get("generation_limit_w")),
                ("comms-loss export limit W", site.get("fallback_export_w")),
                ("comms-loss import limit W", site.get("fallback_import_w")),
                ("comms-loss generation limit W", site.get("fallback_generation_w")),
                ("comms-loss after s", site.get("comms_timeout_s")),
                (
                    "open-loop cap on the inverters",
                    f"{applied.get('limit_pct')} % of rating (<= {applied.get('cap_w')} W), last applied "
                    f"{applied.get('at')}"
                    if applied
                    else None,
                ),
            ]
        ),
        "<h2>Registration</h2>",
        _pairs(
            [
                ("utility server", reg.get("dcap_url")),
                ("EndDevice", reg.get("end_device")),
                ("registered", reg.get("registered")),
                ("PIN matched", reg.get("pin_verified")),
                ("ConnectionPoint on the server", reg.get("connection_point_on_server")),
                ("DER rated W on the server", (reg.get("der_on_server") or {}).get("rtg_max_w")),
                ("DER rated W read from the devices", reg.get("der_rated_w_expected")),
                ("at", reg.get("at")),
            ]
        ),
        "<h2>Verification</h2>",
    ]
    passed = ver.get("passed")
    parts.append(
        f"<p class='{'ok' if passed else 'bad'}'><b>{'PASSED' if passed else 'NOT PASSED'}</b>"
        f" {_e(ver.get('finished_at'))}</p>"
    )
    inv, met = local.get("inverter") or {}, local.get("meter") or {}
    before, after = local.get("before") or {}, local.get("after") or {}
    parts.append(
        _table(
            ["check", "result", "measured"],
            [
                [
                    "test limit applied",
                    local.get("test_limit", {}).get("at"),
                    f"limit {inv.get('limit_w')} W",
                ],
                [
                    "inverter obeyed",
                    inv.get("obeyed"),
                    f"PV {inv.get('pv_before_w')} W ({before.get('at')}) -> {inv.get('pv_after_w')} W "
                    f"({after.get('at')}) in {inv.get('response_s')} s",
                ],
                [
                    "meter saw the effect",
                    met.get("saw_effect"),
                    f"meter {met.get('meter_before_w')} W -> {met.get('meter_after_w')} W (change "
                    f"{met.get('meter_change_w')} W for a PV change of {met.get('pv_change_w')} W; "
                    "+ = import)",
                ],
                [
                    "server shows fresh telemetry",
                    bool((server.get("telemetry") or {}).get("readings")),
                    "; ".join(
                        f"{r['description']} updated {r['last_update']}"
                        for r in (server.get("telemetry") or {}).get("readings", [])
                    ),
                ],
                [
                    "server test control acknowledged",
                    (server.get("test_control") or {}).get("acknowledged", "no test control issued"),
                    "; ".join(
                        f"{r['control']} status {r['status']} at {r['created']}"
                        for r in (server.get("test_control") or {}).get("responses", [])
                    ),
                ],
            ],
        )
    )
    parts.append(f"<p>Gateway configuration: <code>{_e(data.get('gateway_config'))}</code></p>")
    parts.append("<h2>History</h2>")
    parts.append(
        _table(
            ["at", "event", "details"],
            [
                [h["at"], h["event"], ", ".join(f"{k}={v}" for k, v in h.items() if k not in ("at", "event"))]
                for h in data.get("history") or []
            ],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(state: CommissioningState, directory: Path) -> dict[str, Path]:
    data = report_data(state)
    json_path, html_path = directory / "report.json", directory / "report.html"
    write_atomic(json_path, json.dumps(data, indent=2, sort_keys=True).encode())
    write_atomic(html_path, render_html(data).encode())
    return {"json": json_path, "html": html_path}


async def step_report(ctx: Context) -> None:
    """Step 6, ``report``: write the JSON and HTML reports and say how to start the gateway."""
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
