"""The commissioning state file: what each step did, saved atomically after every change.

One JSON document (``commissioning.json`` in the commissioning directory). A step is ``pending``,
``running`` (the process stopped while it ran), ``failed`` (with the message and what to do next) or
``done``. Re-running the flow continues at the first step that is not done, or earlier if the installer
changed a step's inputs (see :func:`inputs_changed`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from sep2.files import write_atomic

STEPS = ("discover", "identity", "site", "register", "verify", "report")
STEP_TITLES = {
    "discover": "Discover devices",
    "identity": "Gateway identity",
    "site": "Site record and static limits",
    "register": "Register with the utility server",
    "verify": "Verify end to end",
    "report": "Commissioning report",
}
FORMAT = 1


def iso(t: float | None = None) -> str:
    """UTC ISO 8601 with seconds (what the report and the state show)."""
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC).isoformat(timespec="seconds")


class StateError(ValueError):
    """The state file exists but cannot be used."""


class CommissioningState:
    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def load(cls, path: Path) -> CommissioningState:
        if not path.exists():
            now = time.time()
            data: dict[str, Any] = {
                "format": FORMAT,
                "created_at": iso(now),
                "updated_at": iso(now),
                "steps": {name: {"status": "pending"} for name in STEPS},
                "history": [],
            }
            return cls(path, data)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: cannot read the commissioning state: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or "steps" not in data:
            raise StateError(f"{path}: not a commissioning state file (format {FORMAT})")
        for name in STEPS:
            data["steps"].setdefault(name, {"status": "pending"})
        data.setdefault("history", [])
        return cls(path, data)

    def save(self) -> None:
        self.data["updated_at"] = iso()
        write_atomic(self.path, json.dumps(self.data, indent=2, sort_keys=True).encode())

    def step(self, name: str) -> dict[str, Any]:
        return self.data["steps"][name]

    def status(self, name: str) -> str:
        return str(self.step(name).get("status", "pending"))

    def record(self, event: str, **details: Any) -> None:
        """Append to the history (kept in the state and shown in the report)."""
        self.data["history"].append({"at": iso(), "event": event, **details})

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def first_unfinished(self) -> str | None:
        for name in STEPS:
            if self.status(name) != "done":
                return name
        return None


def inputs_changed(recorded: dict[str, Any] | None, given: dict[str, Any]) -> list[str]:
    """The keys of ``given`` (inputs passed on this run) whose value differs from what the step used."""
    recorded = recorded or {}
    return sorted(k for k, v in given.items() if v is not None and recorded.get(k) != v)
