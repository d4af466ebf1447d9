"""Step 3, ``site``: the connection agreement's static and comms-loss limits (applied at once) and the NMI."""

from __future__ import annotations

import math

from gateway.commissioning.common import (
    Context,
    StepFailed,
    ask_value,
    fmt_w,
)
from gateway.commissioning.limits import (
    apply_static_limits,
)
from gateway.commissioning.nmi import NmiError, validate_nmi


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
            "static limits: " + ", ".join(f"{k} {fmt_w(v)}" for k, v in limits.items() if v is not None),
            "comms-loss fallback: "
            + ", ".join(f"{k} {fmt_w(v)}" for k, v in fallback.items() if v is not None)
            + f" after {int(timeout)} s without the server",
        ],
    )
