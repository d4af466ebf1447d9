"""Send dispatch targets to the gateways as aggregator setpoints (gateway/local_api.py PUT /aggregator).

The gateway's hierarchy ranks an aggregator setpoint below the DNSP's limits, so a target that the
envelope has since tightened is clipped there, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from aggregator.boffer.dispatch import SiteTarget


@dataclass(frozen=True)
class Gateway:
    url: str  # e.g. http://127.0.0.1:8081
    token: str


def setpoint_body(target: SiteTarget, expires_in_s: int, detail: str) -> dict[str, object]:
    """The PUT /aggregator body for one site: a connection-point target (+ export, - import) in W."""
    return {"export_target_w": round(target.connection_point * 1000.0), "expires_in_s": expires_in_s,
            "detail": f"{detail}: {target.site_id}"}  # fmt: skip


async def publish_targets(targets: Sequence[SiteTarget], gateways: Mapping[str, Gateway],
                          session: aiohttp.ClientSession, expires_in_s: int = 300,
                          detail: str = "Boffer dispatch") -> dict[str, int | str]:  # fmt: skip
    """PUT each target to its site's gateway; returns site -> HTTP status (or the error text)."""
    out: dict[str, int | str] = {}
    for target in targets:
        gw = gateways.get(target.site_id)
        if gw is None:
            out[target.site_id] = "no gateway configured"
            continue
        try:
            async with session.put(f"{gw.url.rstrip('/')}/aggregator",
                                   json=setpoint_body(target, expires_in_s, detail),
                                   headers={"Authorization": f"Bearer {gw.token}"}) as resp:  # fmt: skip
                out[target.site_id] = resp.status
        except aiohttp.ClientError as exc:
            out[target.site_id] = f"{type(exc).__name__}: {exc}"
    return out
