"""DERControl event engine (sans-IO): life cycle, primacy, supersession, defaults, Responses.

Inputs are plain dataclasses shaped like the 2030.5 resources (the client shell maps the XML onto them).
Every method takes ``now`` (Unix seconds); nothing here reads a clock.

Our reading of IEEE 2030.5-2018 §12.1.3 (event rules) and the DER function set, as implemented:

* An event is *scheduled* until its effective start, *active* until its effective end, then *completed*.
  Effective times apply this device's randomisation (see :func:`random_offset`):
  start' = start + offset(randomizeStart), end' = start' + duration + offset(randomizeDuration).
* Events are immutable once received; later copies only change ``server_status`` (and the response
  fields). 2 = cancelled: the event ends when the client sees the cancellation. 3 = cancelled with
  randomisation: an event already running ends at (seen + offset within randomizeDuration, or
  randomizeStart if that is absent), so a fleet does not restore in one step. 4 = superseded by the server.
* Supersession: an event B supersedes an event A when both have the same primacy (same program, or
  different programs of equal primacy), their *nominal* intervals overlap, they control at least one common
  mode (field of :class:`ControlSettings`; controls of disjoint modes run side by side), and B is newer
  (later ``creation_time``; ties broken by the larger mRID so the result is deterministic). If B starts after
  A has started, A runs until B's effective start; otherwise A is superseded as soon as both are known.
  A cancelled event supersedes nothing, nor does one the server has marked superseded (else two controls
  created in the same second, where the mRID tie-break disagrees with the server, would both end and
  leave a gap). Superseded is terminal (sticky) once reached.
* Events of programs with different primacy are *not* superseded: each keeps its own life cycle, and for
  each mode the active event of the lowest primacy number (then the newest) wins.
* DefaultDERControl applies per mode: a mode no active event controls takes the value of the default of
  the lowest-primacy program that defines it.
* Responses (when ``response_required`` asks): bit 0 -> 1 received; bit 1 -> 2 started, then exactly one
  of 3 completed / 6 cancelled / 7 superseded; any bit -> 252/253/254 rejections. Each (event, status)
  is emitted once. An event whose effective end is already past when first received is rejected 253.
  Opt-out (4) is not offered: CSIP-AUS envelopes are not optional for the customer.
* A control that disappears from its program's list before it finished is treated as cancelled.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum, StrEnum
from functools import cached_property
from typing import Any

LIMIT_FIELDS = ("export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w", "max_lim_w_pct")
SWITCH_FIELDS = ("connect", "energize")
SETPOINT_FIELDS = ("fixed_w_pct", "target_w", "storage_target_w")
RAMP_FIELDS = ("ramp_time_s", "set_grad_w")
MODE_FIELDS = LIMIT_FIELDS + SWITCH_FIELDS + SETPOINT_FIELDS


@dataclass(frozen=True)
class ControlSettings:
    """DERControlBase subset used by CSIP-AUS. ``None`` means "this control does not set that mode".

    Powers are plain watts (the shell applies 2030.5 value x 10^multiplier). ``ramp_time_s`` is seconds:
    2030.5 ``rampTms`` is in 1/100 s, so the shell divides by 100. ``set_grad_w`` is 2030.5 ``setGradW``
    unchanged (hundredths of a percent of setMaxW per second). ``fixed_w_pct`` / ``max_lim_w_pct`` are
    percent of setMaxW (``opModFixedW`` is signed: negative charges). ``storage_target_w`` is CSIP-AUS v1.3
    ``opModStorageTargetW``: the aggregate output of the site's storage, watts, + discharge / - charge.
    """

    export_limit_w: float | None = None
    import_limit_w: float | None = None
    generation_limit_w: float | None = None
    load_limit_w: float | None = None
    connect: bool | None = None
    energize: bool | None = None
    fixed_w_pct: float | None = None
    max_lim_w_pct: float | None = None
    target_w: float | None = None
    storage_target_w: float | None = None
    ramp_time_s: float | None = None
    set_grad_w: float | None = None
    # Local only (AS/NZS 4755 DRM 1-3), not a 2030.5 mode: consumption of storage charging and
    # controllable loads, percent of their rating.
    max_consumption_pct: float | None = None
    # Local only, a load-side emergency (seed 000 GS17): controllable loads may not draw more than they
    # drew when it began (True), whatever the import and load limits leave.
    no_load_increase: bool | None = None

    @cached_property
    def modes(self) -> frozenset[str]:
        return frozenset(name for name in MODE_FIELDS if getattr(self, name) is not None)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def errors(self) -> list[str]:
        """Problems with the values, each naming its field (empty list = valid)."""
        problems = []
        for name in (*LIMIT_FIELDS[:4], *RAMP_FIELDS):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name} must be >= 0, got {value}")
        for name in ("max_lim_w_pct", "max_consumption_pct"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                problems.append(f"{name} must be within 0..100, got {value}")
        if self.fixed_w_pct is not None and not -100 <= self.fixed_w_pct <= 100:
            problems.append(f"fixed_w_pct must be within -100..100, got {self.fixed_w_pct}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k in self.__dataclass_fields__ if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlSettings:
        return cls(**data)


class ServerStatus(IntEnum):
    """EventStatus.currentStatus as published by the server."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_RANDOMIZED = 3
    SUPERSEDED = 4


class ResponseStatus(IntEnum):
    RECEIVED = 1
    STARTED = 2
    COMPLETED = 3
    OPTED_OUT = 4
    CANCELLED = 6
    SUPERSEDED = 7
    REJECTED_INVALID = 252
    REJECTED_EXPIRED = 253
    REJECTED_NOT_APPLICABLE = 254


class EventState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    COMPLETED = "completed"
    REJECTED = "rejected"


TERMINAL_STATES = frozenset(
    {EventState.CANCELLED, EventState.SUPERSEDED, EventState.COMPLETED, EventState.REJECTED}
)
_TERMINAL_RESPONSE = {
    EventState.COMPLETED: ResponseStatus.COMPLETED,
    EventState.CANCELLED: ResponseStatus.CANCELLED,
    EventState.SUPERSEDED: ResponseStatus.SUPERSEDED,
}
RESPONSE_RECEIVED_BIT = 0x1
RESPONSE_SPECIFIC_BIT = 0x2
RESPONSE_USER_BIT = 0x4


@dataclass(frozen=True)
class Program:
    """DERProgram: ``primacy`` (lower wins) and its DefaultDERControl, if the server published one."""

    mrid: str
    primacy: int
    default: ControlSettings | None = None
    default_mrid: str | None = None


@dataclass(frozen=True)
class Control:
    """DERControl. Times are Unix seconds; randomize_* are signed seconds (2030.5 allows negative)."""

    mrid: str
    program_mrid: str
    creation_time: int
    start: int
    duration: int
    settings: ControlSettings
    randomize_start: int = 0
    randomize_duration: int = 0
    server_status: ServerStatus = ServerStatus.SCHEDULED
    response_required: int = 0
    reply_to: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class Response:
    """A Response to POST to ``reply_to``: ``subject`` is the control's mRID."""

    subject: str
    status: ResponseStatus
    created_time: int
    reply_to: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**_fields(self), "status": int(self.status)}


@dataclass(frozen=True)
class Origin:
    """Where one winning mode value came from."""

    kind: str  # "event" or "default"
    mrid: str | None
    program_mrid: str
    primacy: int

    def describe(self) -> str:
        if self.kind == "event":
            return f"DERControl {self.mrid} program {self.program_mrid} primacy {self.primacy}"
        return (
            f"DefaultDERControl {self.mrid or ''} program {self.program_mrid} primacy {self.primacy}".replace(
                "  ", " "
            )
        )


@dataclass(frozen=True)
class ScheduleResult:
    """What the held schedule says at one instant."""

    settings: ControlSettings
    origins: dict[str, Origin]  # mode field -> origin of its value
    active: dict[str, tuple[str, ...]]  # program mRID -> active control mRIDs (newest first)
    states: dict[str, EventState]

    @property
    def event_active(self) -> bool:
        return any(self.active.values())

    @property
    def default_applied(self) -> bool:
        return any(o.kind == "default" for o in self.origins.values())


def random_offset(device_id: str, mrid: str, purpose: str, bound: int) -> int:
    """Deterministic offset in [0, bound] (or [bound, 0] if negative), seeded by device and event.

    The same device computes the same offset after a restart; different devices spread out.
    """
    if bound == 0:
        return 0
    digest = hashlib.sha256(f"{device_id}|{mrid}|{purpose}".encode()).digest()
    magnitude = int.from_bytes(digest[:8], "big") % (abs(bound) + 1)
    return magnitude if bound > 0 else -magnitude


@dataclass
class _Record:
    control: Control
    first_seen: int
    listed: bool = True
    rejected: ResponseStatus | None = None
    reject_reason: str = ""
    cancel_seen_at: int | None = None
    server_superseded_at: int | None = None
    final_state: EventState | None = None
    final_at: int | None = None
    sent: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Timeline:
    start: int
    terminal_at: int
    terminal_state: EventState


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, one level deep (the callers convert nested values)."""
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


class EventEngine:
    """Holds the programs and controls the gateway knows, and derives states, settings and Responses."""

    def __init__(self, device_id: str, supported_modes: frozenset[str] | None = None) -> None:
        if not device_id:
            raise ValueError("device_id must be a non-empty string (e.g. the LFDI)")
        self.device_id = device_id
        self.supported_modes = supported_modes
        self._programs: dict[str, Program] = {}
        self._records: dict[str, _Record] = {}
        self._outbox: list[Response] = []  # emitted, not yet acknowledged by the server
        self._handed_out = 0  # how many of _outbox advance() already returned
        self._timelines: dict[str, _Timeline] | None = None
        self._windows: dict[str, tuple[int, int]] = {}  # mRID -> randomised (start, end), cached

    # ---- inputs -----------------------------------------------------------------------------------
    def set_program(self, program: Program) -> None:
        if program.default is not None and program.default.errors():
            raise ValueError(f"program {program.mrid} default: {'; '.join(program.default.errors())}")
        old = self._programs.get(program.mrid)
        self._programs[program.mrid] = program
        if old is None or old.primacy != program.primacy:
            self._timelines = None

    def remove_program(self, program_mrid: str, now: int) -> None:
        """The program left our FSAs: its unfinished controls are treated as cancelled."""
        for rec in self._records.values():
            if rec.control.program_mrid == program_mrid:
                self._withdraw(rec, now)
        self.advance_only(now)
        self._records = {m: r for m, r in self._records.items() if r.control.program_mrid != program_mrid}
        self._programs.pop(program_mrid, None)
        self._timelines = None
        self._windows = {}

    def upsert_control(self, control: Control, now: int) -> None:
        """Add a newly seen control or apply a status change to a known one."""
        if control.program_mrid not in self._programs:
            raise ValueError(f"control {control.mrid}: program_mrid {control.program_mrid!r} is unknown")
        rec = self._records.get(control.mrid)
        if rec is None:
            self._receive(control, now)
            return
        rec.listed = True
        known = rec.control
        if (known.server_status, known.response_required, known.reply_to) != (
            control.server_status,
            control.response_required,
            control.reply_to,
        ):
            rec.control = replace(
                rec.control,
                server_status=control.server_status,
                response_required=control.response_required,
                reply_to=control.reply_to,
            )
            self._note_status(rec, now)

    def sync_program(self, program: Program, controls: list[Control], now: int) -> None:
        """Replace what we hold for one program with the server's current DERControlList.

        Controls no longer listed are withdrawn (cancelled if unfinished) and, once finished, forgotten.
        """
        self.set_program(program)
        listed = {c.mrid for c in controls}
        for control in controls:
            self.upsert_control(control, now)
        for mrid, rec in list(self._records.items()):
            if rec.control.program_mrid == program.mrid and mrid not in listed:
                self._withdraw(rec, now)
        self.advance_only(now)
        for mrid, rec in list(self._records.items()):
            if not rec.listed and rec.final_state is not None:
                # a finished event can no longer move another event's timeline: no recompute needed
                del self._records[mrid]
                self._windows.pop(mrid, None)
                if self._timelines is not None:
                    self._timelines.pop(mrid, None)

    def _receive(self, control: Control, now: int) -> None:
        rec = _Record(control=control, first_seen=now)
        self._records[control.mrid] = rec
        self._timelines = None
        problems = control.settings.errors()
        if control.duration <= 0:
            problems.append(f"duration must be > 0, got {control.duration}")
        if not control.settings.modes:
            problems.append("settings set no control mode")
        if problems:
            rec.rejected, rec.reject_reason = ResponseStatus.REJECTED_INVALID, "; ".join(problems)
        elif self.supported_modes is not None and not control.settings.modes & self.supported_modes:
            rec.rejected = ResponseStatus.REJECTED_NOT_APPLICABLE
            rec.reject_reason = f"none of the modes {sorted(control.settings.modes)} is supported"
        elif self._natural_window(control)[1] <= now:
            rec.rejected, rec.reject_reason = ResponseStatus.REJECTED_EXPIRED, "ends before it was received"
        if rec.rejected is not None:
            rec.final_state, rec.final_at = EventState.REJECTED, now
            if control.response_required:
                self._emit(rec, rec.rejected, now)
            return
        if control.response_required & RESPONSE_RECEIVED_BIT:
            self._emit(rec, ResponseStatus.RECEIVED, now)
        self._note_status(rec, now)

    def _note_status(self, rec: _Record, now: int) -> None:
        status = rec.control.server_status
        cancelled = status in (ServerStatus.CANCELLED, ServerStatus.CANCELLED_RANDOMIZED)
        if cancelled and rec.cancel_seen_at is None:
            rec.cancel_seen_at = now
            self._timelines = None
        if status == ServerStatus.SUPERSEDED and rec.server_superseded_at is None:
            rec.server_superseded_at = now
            self._timelines = None

    def _withdraw(self, rec: _Record, now: int) -> None:
        rec.listed = False
        if rec.cancel_seen_at is None and rec.final_state is None:
            rec.cancel_seen_at = now
            rec.control = replace(rec.control, server_status=ServerStatus.CANCELLED)
            self._timelines = None

    def _emit(self, rec: _Record, status: ResponseStatus, at: int) -> None:
        if int(status) in rec.sent:
            return
        rec.sent.append(int(status))
        self._outbox.append(Response(rec.control.mrid, status, at, rec.control.reply_to))

    # ---- derivation -------------------------------------------------------------------------------
    def _natural_window(self, c: Control) -> tuple[int, int]:
        window = self._windows.get(c.mrid)
        if window is None:
            window = self._windows[c.mrid] = self._randomised_window(c)
        return window

    def _randomised_window(self, c: Control) -> tuple[int, int]:
        start = c.start + random_offset(self.device_id, c.mrid, "start", c.randomize_start)
        end = start + c.duration + random_offset(self.device_id, c.mrid, "duration", c.randomize_duration)
        return start, max(end, start)

    def _primacy(self, c: Control) -> int:
        return self._programs[c.program_mrid].primacy

    def _compute_timelines(self) -> dict[str, _Timeline]:
        """Effective start and first ending (completion, cancellation or supersession) of each event
        that has not finished yet. Overlap candidates are found by bisecting start-sorted groups of
        equal primacy, so a day of back-to-back DOE intervals costs O(n log n), not O(n^2)."""
        window = self._natural_window
        groups: dict[int, list[_Record]] = {}
        for rec in self._records.values():
            if rec.rejected is None:
                groups.setdefault(self._primacy(rec.control), []).append(rec)
        timelines = {}
        for group in groups.values():
            group.sort(key=lambda r: r.control.start)
            starts = [r.control.start for r in group]
            longest = max(r.control.duration for r in group)
            modes = [r.control.settings.modes for r in group]
            for rec in group:
                if rec.final_state is not None:
                    continue
                a = rec.control
                start, end = window(a)
                ends = [(end, 0, EventState.COMPLETED)]
                if rec.cancel_seen_at is not None:
                    cancel_at = rec.cancel_seen_at
                    if a.server_status == ServerStatus.CANCELLED_RANDOMIZED and cancel_at >= start:
                        bound = a.randomize_duration or a.randomize_start
                        cancel_at += abs(random_offset(self.device_id, a.mrid, "cancel", bound))
                    ends.append((cancel_at, 1, EventState.CANCELLED))
                if rec.server_superseded_at is not None:
                    ends.append((rec.server_superseded_at, 1, EventState.SUPERSEDED))
                a_modes = a.settings.modes
                newer_key = (a.creation_time, a.mrid)
                for i in range(bisect_left(starts, a.start - longest), bisect_left(starts, a.end)):
                    other, b = group[i], group[i].control
                    if (
                        other.cancel_seen_at is not None
                        or other.server_superseded_at is not None
                        or (b.creation_time, b.mrid) <= newer_key
                        or b.end <= a.start
                        or not modes[i] & a_modes
                    ):
                        continue
                    b_start = window(b)[0]
                    takeover = b_start if b_start > start else other.first_seen
                    ends.append((max(other.first_seen, takeover), 1, EventState.SUPERSEDED))
                terminal_at, _, terminal_state = min(ends)
                timelines[a.mrid] = _Timeline(start, terminal_at, terminal_state)
        return timelines

    def _timeline_map(self) -> dict[str, _Timeline]:
        if self._timelines is None:
            self._timelines = self._compute_timelines()
        return self._timelines

    def state_of(self, mrid: str, now: int) -> EventState:
        rec = self._records[mrid]
        if rec.final_state is not None:
            return rec.final_state
        tl = self._timeline_map()[mrid]
        if now >= tl.terminal_at:
            return tl.terminal_state
        return EventState.ACTIVE if now >= tl.start else EventState.SCHEDULED

    def advance_only(self, now: int) -> None:
        """Record transitions up to ``now`` (terminal states become sticky) and queue their Responses."""
        timelines = self._timeline_map()
        due: list[tuple[int, str, ResponseStatus, _Record]] = []
        for mrid, tl in timelines.items():  # timelines exist only for events unfinished when computed
            rec = self._records[mrid]
            if rec.final_state is not None:
                continue
            specific = rec.control.response_required & RESPONSE_SPECIFIC_BIT
            if now >= tl.start and tl.start < tl.terminal_at and specific:
                due.append((tl.start, mrid, ResponseStatus.STARTED, rec))
            if now >= tl.terminal_at:
                rec.final_state, rec.final_at = tl.terminal_state, tl.terminal_at
                if specific:
                    due.append((tl.terminal_at, mrid, _TERMINAL_RESPONSE[tl.terminal_state], rec))
        # at one instant, endings go before starts (a superseded event ends as its successor starts)
        due.sort(key=lambda d: (d[0], d[2] == ResponseStatus.STARTED, d[1]))
        for at, _, status, rec in due:
            self._emit(rec, status, max(at, rec.first_seen))  # a late-received event starts on receipt

    def advance(self, now: int) -> list[Response]:
        """Advance to ``now`` and return the Responses emitted since the last call, oldest first.

        They also stay in :meth:`pending_responses` (and in saved state) until :meth:`acknowledge`, so a
        crash between emitting and POSTing loses nothing.
        """
        self.advance_only(now)
        fresh = self._outbox[self._handed_out :]
        self._handed_out = len(self._outbox)
        return fresh

    def pending_responses(self) -> list[Response]:
        return list(self._outbox)

    def acknowledge(self, response: Response) -> None:
        """The server accepted ``response``: forget it."""
        if response in self._outbox:
            index = self._outbox.index(response)
            del self._outbox[index]
            if index < self._handed_out:
                self._handed_out -= 1

    def evaluate(self, now: int) -> ScheduleResult:
        """Active events, per-mode winners (events, then defaults) and event states at ``now``."""
        timelines = self._timeline_map()
        states = {}
        for mrid, rec in self._records.items():
            if rec.final_state is not None:
                states[mrid] = rec.final_state
                continue
            tl = timelines[mrid]
            if now >= tl.terminal_at:
                states[mrid] = tl.terminal_state
            else:
                states[mrid] = EventState.ACTIVE if now >= tl.start else EventState.SCHEDULED
        active = [self._records[m].control for m, s in states.items() if s == EventState.ACTIVE]
        active.sort(key=lambda c: c.mrid, reverse=True)
        active.sort(key=lambda c: (self._primacy(c), -c.creation_time))  # stable: ties -> larger mRID
        per_program: dict[str, list[str]] = {}
        for c in active:
            per_program.setdefault(c.program_mrid, []).append(c.mrid)
        values: dict[str, Any] = {}
        origins: dict[str, Origin] = {}
        for name in MODE_FIELDS + RAMP_FIELDS:
            for c in active:
                if getattr(c.settings, name) is not None:
                    values[name] = getattr(c.settings, name)
                    origins[name] = Origin("event", c.mrid, c.program_mrid, self._primacy(c))
                    break
        for program in sorted(self._programs.values(), key=lambda p: (p.primacy, p.mrid)):
            if program.default is None:
                continue
            for name in MODE_FIELDS + RAMP_FIELDS:
                if name not in values and getattr(program.default, name) is not None:
                    values[name] = getattr(program.default, name)
                    origins[name] = Origin("default", program.default_mrid, program.mrid, program.primacy)
        return ScheduleResult(
            ControlSettings(**values), origins, {p: tuple(ms) for p, ms in per_program.items()}, states
        )

    def next_change_time(self, now: int) -> int | None:
        """Earliest future instant at which a start or end is due (None when nothing is pending)."""
        times = [
            t
            for mrid, tl in self._timeline_map().items()
            if self._records[mrid].final_state is None
            for t in (tl.start, tl.terminal_at)
            if t > now
        ]
        return min(times) if times else None

    def has_default(self) -> bool:
        return any(p.default is not None for p in self._programs.values())

    @property
    def programs(self) -> dict[str, Program]:
        return dict(self._programs)

    def control(self, mrid: str) -> Control:
        return self._records[mrid].control

    def reject_reason(self, mrid: str) -> str:
        return self._records[mrid].reject_reason

    # ---- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # Shallow, hand-built dicts: dataclasses.asdict deep-copies every field and made this the
        # costliest call of a decision (the state is saved after each one).
        return {
            "device_id": self.device_id,
            "supported_modes": sorted(self.supported_modes) if self.supported_modes is not None else None,
            "programs": [
                {**_fields(p), "default": p.default.to_dict() if p.default else None}
                for p in self._programs.values()
            ],
            "records": [
                {
                    **_fields(r),
                    "control": {
                        **_fields(r.control),
                        "settings": r.control.settings.to_dict(),
                        "server_status": int(r.control.server_status),
                    },
                    "rejected": int(r.rejected) if r.rejected is not None else None,
                    "final_state": r.final_state.value if r.final_state else None,
                    "sent": list(r.sent),
                }
                for r in self._records.values()
            ],
            "outbox": [r.to_dict() for r in self._outbox],
            "handed_out": self._handed_out,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventEngine:
        modes = data.get("supported_modes")
        engine = cls(data["device_id"], frozenset(modes) if modes is not None else None)
        for p in data["programs"]:
            default = ControlSettings.from_dict(p["default"]) if p["default"] is not None else None
            engine.set_program(Program(p["mrid"], p["primacy"], default, p.get("default_mrid")))
        for r in data["records"]:
            c = r["control"]
            control = Control(
                **{**c, "settings": ControlSettings.from_dict(c["settings"])},
            )
            control = replace(control, server_status=ServerStatus(c["server_status"]))
            engine._records[control.mrid] = _Record(
                control=control,
                first_seen=r["first_seen"],
                listed=r["listed"],
                rejected=ResponseStatus(r["rejected"]) if r["rejected"] is not None else None,
                reject_reason=r["reject_reason"],
                cancel_seen_at=r["cancel_seen_at"],
                server_superseded_at=r["server_superseded_at"],
                final_state=EventState(r["final_state"]) if r["final_state"] else None,
                final_at=r["final_at"],
                sent=list(r["sent"]),
            )
        engine._outbox = [
            Response(o["subject"], ResponseStatus(o["status"]), o["created_time"], o["reply_to"])
            for o in data["outbox"]
        ]
        engine._handed_out = data["handed_out"]
        return engine
