"""Optional notification of incident transitions to a webhook: JSON POST, signed with HMAC-SHA256 when a
secret is configured (header ``X-Derlink-Signature: sha256=<hex>`` over the exact body bytes)."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict
from typing import Any

import aiohttp

from server.incidents.machine import Incident


def payload(incident: Incident) -> dict[str, Any]:
    """The incident as it stands, with the transition (or note) that triggered the notification."""
    last = incident.timeline[-1]
    return {
        "id": incident.id,
        "subject": incident.subject,
        "kind": incident.kind,
        "severity": incident.severity,
        "state": incident.state,
        "reporter": incident.reporter,
        "holder": incident.holder,
        "referred_to": incident.referred_to,
        "root_cause": incident.root_cause,
        "event": asdict(last),
    }


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def notify(session: aiohttp.ClientSession, url: str, incident: Incident, secret: str | None = None,
                 timeout_s: float = 5.0) -> int | str:  # fmt: skip
    """POST the payload; returns the HTTP status, or the error text (a webhook never blocks the workflow)."""
    body = json.dumps(payload(incident), sort_keys=True).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Derlink-Signature"] = signature(body, secret)
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:  # fmt: skip
            return resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
