"""Restart after a black system: hold generation back when the grid returns, for a randomised delay. Pure.

Why: when a whole network is re-energised, every inverter reconnects after its own fixed AS/NZS 4777.2
delay, so the network would take all of its rooftop generation back in one step (seed 000 GS09, L421;
L569: "generate at 0 or export at 0" during restart). The gateway spreads that out:

* the shell observes the grid from the site meter (voltage) and calls :func:`observe`;
* while the grid is down, and after it returns until ``restored_at + delay_min_s + offset``, the hold
  layer applies ``hold_export_limit_w`` (default 0: zero export) and, if configured,
  ``hold_generation_limit_w``. The offset is in ``[0, window_s]``, deterministic per device and outage
  (:func:`gateway.core.events.random_offset`), so a restarted gateway computes the same moment and a
  fleet spreads uniformly over the window;
* the server can end the hold sooner: an active DERControl that sets ``opModConnect`` or
  ``opModEnergize`` true is the DNSP saying "reconnect now" (its own staged restore then governs);
* the state (outage start, restore time, hold end) is persisted with the controller, so a reboot during
  the hold resumes it;
* cold start: in a black system the gateway loses power with the site, so it never sees the grid go.
  The shell persists a heartbeat (``alive_at``, at most ``HEARTBEAT_S`` old while running); a gateway that
  boots more than ``cold_start_after_s`` after its last heartbeat treats the boot as the grid's return
  (:func:`cold_start`) and holds from then, with the same randomised release. A restart shorter than that
  (an update, a crash) does not hold. With no heartbeat at all (never commissioned) nothing is held.

The hold is a layer of source INSTALLER (the installer configures it): limits still combine to the most
restrictive, so it never relaxes a DOE or a DRM, and the explanation names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.core.events import ControlSettings, ScheduleResult, random_offset
from gateway.core.hierarchy import Layer, Source

HEARTBEAT_S = 30  # the shell persists ``alive_at`` at least this often while running


@dataclass(frozen=True)
class BlackStartConfig:
    enabled: bool = True
    hold_export_limit_w: float = 0.0
    hold_generation_limit_w: float | None = None
    delay_min_s: int = 60
    window_s: int = 600
    grid_lost_below_v: float = 100.0  # the shell's test on the meter voltage: below it the grid is down
    cold_start_after_s: int | None = 120  # booting this long after the last heartbeat holds; None: never

    def __post_init__(self) -> None:
        problems = []
        if not self.grid_lost_below_v > 0:
            problems.append(f"grid_lost_below_v must be > 0, got {self.grid_lost_below_v:g}")
        if self.hold_export_limit_w < 0:
            problems.append(f"hold_export_limit_w must be >= 0, got {self.hold_export_limit_w:g}")
        if self.hold_generation_limit_w is not None and self.hold_generation_limit_w < 0:
            problems.append(f"hold_generation_limit_w must be >= 0, got {self.hold_generation_limit_w:g}")
        if self.delay_min_s < 0:
            problems.append(f"delay_min_s must be >= 0, got {self.delay_min_s}")
        if self.window_s < 0:
            problems.append(f"window_s must be >= 0, got {self.window_s}")
        after = self.cold_start_after_s
        if after is not None and after < 2 * HEARTBEAT_S:
            problems.append(f"cold_start_after_s must be >= {2 * HEARTBEAT_S} (2 heartbeats), got {after}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class BlackStartState:
    grid_down_since: int | None = None  # the grid is down (as last observed) since then
    restored_at: int | None = None  # the grid came back then ...
    hold_until: int | None = None  # ... and generation is held back until then
    dark_since: int | None = None  # cold start: the gateway's last heartbeat before it lost power

    @property
    def grid_up(self) -> bool:
        return self.grid_down_since is None

    def to_dict(self) -> dict[str, Any]:
        return {"grid_down_since": self.grid_down_since, "restored_at": self.restored_at,
                "hold_until": self.hold_until, "dark_since": self.dark_since}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> BlackStartState:
        return cls(**d) if d else cls()


def observe(
    state: BlackStartState, config: BlackStartConfig, device_id: str, now: int, grid_up: bool
) -> BlackStartState:
    """The new state after the shell observed the grid up or down at ``now``."""
    if not grid_up:
        return state if state.grid_down_since is not None else BlackStartState(grid_down_since=now)
    if state.grid_down_since is None:
        return state
    outage = str(state.grid_down_since)
    offset = random_offset(device_id, outage, "black-start", config.window_s)
    return BlackStartState(None, now, now + config.delay_min_s + offset)


def cold_start(
    state: BlackStartState, config: BlackStartConfig, device_id: str, now: int, alive_at: int | None
) -> BlackStartState:
    """The state after booting at ``now`` when the last heartbeat was ``alive_at`` (see module doc)."""
    after = config.cold_start_after_s
    if not config.enabled or after is None or alive_at is None or now - alive_at < after:
        return state
    if state.grid_down_since is not None or (state.hold_until is not None and now < state.hold_until):
        return state  # an outage the gateway saw, or a hold already running, goes on as it was
    offset = random_offset(device_id, f"cold-{alive_at}", "black-start", config.window_s)
    return BlackStartState(None, now, now + config.delay_min_s + offset, dark_since=alive_at)


def released_by_server(schedule: ScheduleResult) -> str | None:
    """The active DERControl that says connect/energize true, if any (it ends the hold)."""
    for name in ("connect", "energize"):
        origin = schedule.origins.get(name)
        if getattr(schedule.settings, name) is True and origin is not None and origin.kind == "event":
            return origin.describe()
    return None


def hold_layer(
    state: BlackStartState, config: BlackStartConfig, now: int, schedule: ScheduleResult
) -> tuple[Layer | None, int | None]:
    """The hold layer now (None: no hold) and when it ends on its own."""
    if not config.enabled:
        return None, None
    if state.grid_down_since is not None:
        why = f"black-start hold: grid down since {state.grid_down_since}"
        until = None
    elif state.hold_until is not None and now < state.hold_until:
        if released_by_server(schedule) is not None:
            return None, None
        why = f"black-start hold: grid back at {state.restored_at}, generation released at {state.hold_until}"
        if state.dark_since is not None:
            why = (
                f"black-start hold: cold start at {state.restored_at} (no power since {state.dark_since}),"
                f" generation released at {state.hold_until}"
            )
        until = state.hold_until
    else:
        return None, None
    settings = ControlSettings(
        export_limit_w=config.hold_export_limit_w, generation_limit_w=config.hold_generation_limit_w
    )
    return Layer(Source.INSTALLER, settings, why), until
