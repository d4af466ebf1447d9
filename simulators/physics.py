"""Site physics: PV, battery, household load and the connection-point meter.

Pure: no clocks, sockets or sleeps. The caller passes simulated time (seconds, any epoch) to
:meth:`SitePhysics.advance`, which integrates in sub-steps of at most ``max_step_s``. Commands
(export limit, connect/disconnect, battery setpoints) are queued with the time they were received and
take effect ``response_delay_s`` later; the export limit then moves linearly to its new value over
the ramp time (SunSpec model 123 ``WMaxLimPct_RmpTms``: "ramp time for moving from current setpoint
to new setpoint").

Sign conventions (documented in simulators/README.md):

* inverter and battery AC power: positive = generating into the site (battery discharging),
  negative = absorbing (battery charging) — as SunSpec model 701 ``W`` ("positive for DER generation
  and negative for absorption");
* meter (connection point) power: positive = import from the grid, negative = export to the grid —
  the SunSpec meter convention (consumer reference frame; ``TotWhImp`` grows while W > 0,
  ``TotWhExp`` while W < 0).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

# ------------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class Profile:
    """A daily curve: W as a function of seconds since local midnight (piecewise linear, wraps)."""

    points: tuple[tuple[float, float], ...]  # (second of day, W), sorted

    def value(self, second_of_day: float) -> float:
        pts = self.points
        if len(pts) == 1:
            return pts[0][1]
        s = second_of_day % 86400.0
        times = [p[0] for p in pts]
        i = bisect.bisect_right(times, s)
        t0, w0 = pts[i - 1] if i > 0 else (pts[-1][0] - 86400.0, pts[-1][1])
        t1, w1 = pts[i] if i < len(pts) else (pts[0][0] + 86400.0, pts[0][1])
        if t1 == t0:
            return w1
        return w0 + (w1 - w0) * (s - t0) / (t1 - t0)

    @classmethod
    def constant(cls, watts: float) -> Profile:
        return cls(((0.0, float(watts)),))

    @classmethod
    def clear_sky(cls, peak_w: float, sunrise_h: float = 6.0, sunset_h: float = 18.0) -> Profile:
        """A sine-shaped clear-sky PV day sampled every 15 minutes."""
        pts = []
        for q in range(96):
            s = q * 900.0
            h = s / 3600.0
            frac = (h - sunrise_h) / (sunset_h - sunrise_h)
            w = peak_w * math.sin(math.pi * frac) ** 1.2 if 0.0 < frac < 1.0 else 0.0
            pts.append((s, w))
        return cls(tuple(pts))

    @classmethod
    def household(cls, base_w: float = 300.0, peak_w: float = 2500.0) -> Profile:
        """A typical residential day: overnight base, a morning bump, an evening peak."""
        shape = [
            (0, 0.0), (5, 0.0), (7, 0.45), (9, 0.2), (12, 0.15), (16, 0.25),
            (18, 0.9), (19.5, 1.0), (22, 0.35), (24, 0.0),
        ]  # fmt: skip
        pts = tuple((h * 3600.0, base_w + (peak_w - base_w) * f) for h, f in shape if h < 24)
        return cls(pts)

    @classmethod
    def from_csv_text(cls, text: str, source: str = "profile") -> Profile:
        """CSV lines "HH:MM[:SS],watts" or "seconds,watts"; '#' comments and a header line allowed."""
        pts: list[tuple[float, float]] = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 2:
                raise ValueError(f"{source}:{lineno}: expected 'time,watts'")
            try:
                if ":" in parts[0]:
                    hms = [float(x) for x in parts[0].split(":")]
                    sec = hms[0] * 3600 + hms[1] * 60 + (hms[2] if len(hms) > 2 else 0)
                else:
                    sec = float(parts[0])
                watts = float(parts[1])
            except ValueError:
                if not pts and lineno == 1:
                    continue  # header
                raise ValueError(f"{source}:{lineno}: cannot parse {raw!r}") from None
            pts.append((sec % 86400.0, watts))
        if not pts:
            raise ValueError(f"{source}: no data rows")
        pts.sort()
        return cls(tuple(pts))


# ------------------------------------------------------------------------------------------------
# Parameters and state


@dataclass(frozen=True)
class InverterParams:
    rated_w: float
    phases: int = 1  # 1 or 3 (power split evenly over phases)
    phase: int = 0  # for single-phase units: which site phase (0=A, 1=B, 2=C)
    response_delay_s: float = 1.0
    default_ramp_s: float = 10.0  # ramp time used when the client does not give one
    reconnect_ramp_s: float = 30.0  # soft start after (re)connection
    grid_reconnect_s: float = 60.0  # after a trip: grid back for this long before reconnecting (4777.2)


@dataclass(frozen=True)
class BatteryParams:
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    charge_efficiency: float = 0.95  # stored Wh per AC Wh absorbed
    discharge_efficiency: float = 0.95  # AC Wh delivered per stored Wh
    min_soc_pct: float = 0.0  # hardware floor
    max_soc_pct: float = 100.0


@dataclass
class Ramp:
    """A value moving linearly from `start` to `target` over [t0, t0+duration]."""

    start: float
    target: float
    t0: float = 0.0
    duration: float = 0.0

    def at(self, t: float) -> float:
        if self.duration <= 0 or t >= self.t0 + self.duration:
            return self.target
        if t <= self.t0:
            return self.start
        return self.start + (self.target - self.start) * (t - self.t0) / self.duration

    def retarget(self, t: float, target: float, duration: float) -> None:
        self.start, self.target, self.t0, self.duration = self.at(t), target, t, max(duration, 0.0)


@dataclass
class Command:
    effective_at: float
    device: str
    kind: str  # "limit" | "connect" | "battery_window"
    args: dict


@dataclass
class InverterState:
    """One AC-coupled unit: a PV inverter or a battery inverter."""

    name: str
    params: InverterParams
    available: Profile | None = None  # PV only
    battery: BatteryParams | None = None  # battery only
    soc_wh: float = 0.0
    reserve_pct: float = 0.0  # client-set minimum reserve (124 MinRsvPct / 802 SoCRsvMin)
    connected: bool = True  # as commanded (SunSpec Conn / ES / SetOp)
    isolated: bool = False  # its AC isolator is open (the installer's hand): no output whatever is commanded
    tripped_until: float | None = None  # anti-islanding trip: no output until then (inf: grid still down)
    limit_pct: float = 100.0  # commanded max-power limit (100 = none)
    limit_w: Ramp = field(default_factory=lambda: Ramp(0.0, 0.0))  # effective max-power limit, ramping
    window: tuple[float, float] | None = None  # battery power window (lo, hi) W, None = self-consumption
    output_w: float = 0.0
    available_w: float = 0.0
    energy_out_wh: float = 0.0  # AC energy generated
    energy_in_wh: float = 0.0  # AC energy absorbed

    @property
    def is_battery(self) -> bool:
        return self.battery is not None

    @property
    def on_grid(self) -> bool:
        """Connected as commanded and not isolated (what the inverter reports as connected)."""
        return self.connected and not self.isolated

    @property
    def soc_pct(self) -> float:
        return 100.0 * self.soc_wh / self.battery.capacity_wh if self.battery else 0.0


@dataclass
class ControllableLoad:
    """An EV charger or a switched load (hot water, pool pump) behind the connection-point meter.

    It draws ``demand`` (what the EV / appliance would take) within what the controller allows: an EV
    charger up to ``allowed_w`` (its current limit x line voltage, 0 below 6 A), a switched load all of
    its demand or nothing. Commands take effect after ``response_delay_s``; a dark site draws nothing.
    """

    name: str
    kind: str  # "evse" | "switched_load"
    rated_w: float
    demand: Profile
    phase: int = 0
    response_delay_s: float = 1.0
    allowed_w: float = math.inf  # EV charger: from the current limit; switched load: inf (on) or 0 (off)
    output_w: float = 0.0  # + consumption


@dataclass
class MeterReading:
    """Connection-point flow. W > 0 import, W < 0 export; per-phase lists have 3 entries."""

    w: float
    w_phase: list[float]
    v_phase: list[float]
    a_phase: list[float]
    hz: float
    import_wh: float
    export_wh: float
    import_wh_phase: list[float]
    export_wh_phase: list[float]


@dataclass
class SitePhysics:
    """All the site's physical state, advanced by :meth:`advance` with simulated time."""

    t: float
    load: Profile
    load_phase_split: tuple[float, float, float] = (1.0, 0.0, 0.0)
    utc_offset_s: float = 0.0  # local time = t + utc_offset_s (for time-of-day profiles)
    nominal_v: float = 230.0
    nominal_hz: float = 50.0
    volts_per_kw_export: float = 0.8  # simple feeder impedance: voltage rises with export
    max_step_s: float = 1.0
    units: dict[str, InverterState] = field(default_factory=dict)
    loads: dict[str, ControllableLoad] = field(default_factory=dict)
    pending: list[Command] = field(default_factory=list)
    grid_up: bool = True
    load_w: float = 0.0
    meter: MeterReading = field(
        default_factory=lambda: MeterReading(0.0, [0.0] * 3, [230.0] * 3, [0.0] * 3, 50.0, 0.0, 0.0,
                                             [0.0] * 3, [0.0] * 3)
    )  # fmt: skip

    # ---------------------------------------------------------------------------------- building
    def add_pv(self, name: str, params: InverterParams, available: Profile) -> InverterState:
        unit = InverterState(name=name, params=params, available=available)
        unit.limit_w = Ramp(params.rated_w, params.rated_w)
        self.units[name] = unit
        self._settle(unit)
        return unit

    def add_battery(
        self, name: str, params: InverterParams, battery: BatteryParams, soc_pct: float
    ) -> InverterState:
        unit = InverterState(name=name, params=params, battery=battery)
        unit.soc_wh = battery.capacity_wh * soc_pct / 100.0
        unit.limit_w = Ramp(params.rated_w, params.rated_w)
        self.units[name] = unit
        return unit

    def add_load(self, load: ControllableLoad) -> ControllableLoad:
        self.loads[load.name] = load
        return load

    # ---------------------------------------------------------------------------------- commands
    def command(self, t_received: float, device: str, kind: str, immediate: bool = False, **args) -> None:
        """Queue a command; it takes effect after the unit's response delay (or now if immediate)."""
        unit = self.units.get(device) or self.loads[device]
        delay = 0.0 if immediate else (
            unit.params.response_delay_s if isinstance(unit, InverterState) else unit.response_delay_s
        )
        self.pending.append(Command(t_received + delay, device, kind, args))
        self.pending.sort(key=lambda c: c.effective_at)

    def _apply(self, cmd: Command) -> None:
        if cmd.kind == "allow":  # a controllable load's new allowance (W)
            self.loads[cmd.device].allowed_w = float(cmd.args["w"])
            return
        unit = self.units[cmd.device]
        t = cmd.effective_at
        if cmd.kind == "limit":
            pct = 100.0 if cmd.args.get("pct") is None else min(max(float(cmd.args["pct"]), 0.0), 100.0)
            target_w = unit.params.rated_w * pct / 100.0
            ramp_s = cmd.args.get("ramp_s")
            rate = cmd.args.get("rate_pct_per_s")  # 704 WRmp style: %rated per second
            if rate:
                ramp_s = abs(target_w - unit.limit_w.at(t)) / (unit.params.rated_w * rate / 100.0)
            elif ramp_s is None:
                ramp_s = unit.params.default_ramp_s
            unit.limit_pct = pct
            unit.limit_w.retarget(t, target_w, ramp_s)
        elif cmd.kind == "connect":
            want = bool(cmd.args["connected"])
            if want and not unit.connected:
                unit.connected = True
                # soft start: the limit climbs from zero to the commanded value
                target = unit.params.rated_w * unit.limit_pct / 100.0
                unit.limit_w = Ramp(0.0, target, t0=t, duration=unit.params.reconnect_ramp_s)
            elif not want:
                unit.connected = False
        elif cmd.kind == "battery_window":
            unit.window = cmd.args.get("window")
        elif cmd.kind == "reserve":
            unit.reserve_pct = float(cmd.args["pct"])
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown command kind {cmd.kind!r}")

    def set_grid(self, t: float, up: bool) -> None:
        """Drop or restore the grid at ``t``. Down: no voltage, every unit trips (anti-islanding) and the
        load is not served. Up: each unit stays tripped for its ``grid_reconnect_s``, then reconnects with
        its soft-start ramp (unless it was commanded off)."""
        self.advance(t)
        if up == self.grid_up:
            return
        self.grid_up = up
        for unit in self.units.values():
            unit.tripped_until = math.inf if not up else t + unit.params.grid_reconnect_s
        self.advance(t)

    def isolate(self, t: float, device: str, isolated: bool) -> None:
        """Open (True) or close the unit's AC isolator at ``t``, as an installer would: open, the unit
        stops and reports itself disconnected; closed, it soft-starts (unless commanded off)."""
        self.advance(t)
        unit = self.units[device]
        if unit.isolated and not isolated and unit.connected:
            target = unit.params.rated_w * unit.limit_pct / 100.0
            unit.limit_w = Ramp(0.0, target, t0=t, duration=unit.params.reconnect_ramp_s)
        unit.isolated = isolated
        self.advance(t)

    def set_source(self, t: float, device: str, watts: float) -> None:
        """From ``t`` the PV unit's panels give a constant ``watts`` (0: covered, or the DC switched off)."""
        self.advance(t)
        unit = self.units[device]
        if unit.is_battery:
            raise ValueError(f"{device} is a battery: it has no PV source")
        unit.available = Profile.constant(float(watts))
        self.advance(t)

    def _untrip(self, unit: InverterState) -> None:
        if unit.tripped_until is not None and self.t >= unit.tripped_until:
            unit.tripped_until = None
            target = unit.params.rated_w * unit.limit_pct / 100.0
            unit.limit_w = Ramp(0.0, target, t0=self.t, duration=unit.params.reconnect_ramp_s)

    def tripped(self, unit: InverterState) -> bool:
        return unit.tripped_until is not None and self.t < unit.tripped_until

    # ---------------------------------------------------------------------------------- stepping
    def advance(self, t: float) -> None:
        """Integrate from self.t to t (no-op if t is not later)."""
        while self.t < t:
            next_cmd = self.pending[0].effective_at if self.pending else math.inf
            step_end = min(t, self.t + self.max_step_s, max(next_cmd, self.t))
            if step_end > self.t:
                self._step(step_end)
            while self.pending and self.pending[0].effective_at <= self.t:
                self._apply(self.pending.pop(0))
                for unit in self.units.values():
                    self._settle(unit)
                self._settle_meter()
        while self.pending and self.pending[0].effective_at <= self.t:
            self._apply(self.pending.pop(0))
        for unit in self.units.values():
            self._settle(unit)
        self._settle_meter()

    def _local_second(self, t: float) -> float:
        return (t + self.utc_offset_s) % 86400.0

    def _step(self, t_end: float) -> None:
        """One sub-step: powers evaluated at the step's end, energy integrated over the step."""
        dt = t_end - self.t
        self.t = t_end
        for unit in self.units.values():
            self._untrip(unit)
        for unit in self.units.values():
            if not unit.is_battery:
                self._settle(unit)
        for unit in self.units.values():
            if unit.is_battery:
                self._integrate_battery(unit, dt)
        for unit in self.units.values():
            hours = dt / 3600.0
            if unit.output_w >= 0:
                unit.energy_out_wh += unit.output_w * hours
            else:
                unit.energy_in_wh += -unit.output_w * hours
        self._settle_meter()
        hours = dt / 3600.0
        m = self.meter
        for ph in range(3):
            if m.w_phase[ph] >= 0:
                m.import_wh_phase[ph] += m.w_phase[ph] * hours
            else:
                m.export_wh_phase[ph] += -m.w_phase[ph] * hours
        if m.w >= 0:
            m.import_wh += m.w * hours
        else:
            m.export_wh += -m.w * hours

    def _battery_bounds(self, unit: InverterState, dt: float = 0.0) -> tuple[float, float]:
        """Feasible AC power range (lo <= 0 <= hi normally) from ratings, limits and SoC."""
        b = unit.battery
        assert b is not None
        lo, hi = -b.max_charge_w, b.max_discharge_w
        hi = min(hi, unit.limit_w.at(self.t))  # the max-power limit caps generation (discharge)
        floor_wh = b.capacity_wh * max(b.min_soc_pct, unit.reserve_pct) / 100.0
        ceil_wh = b.capacity_wh * b.max_soc_pct / 100.0
        if dt > 0:  # do not overshoot the SoC bounds within this step
            hi = min(hi, max(unit.soc_wh - floor_wh, 0.0) * b.discharge_efficiency * 3600.0 / dt)
            lo = max(lo, -max(ceil_wh - unit.soc_wh, 0.0) / b.charge_efficiency * 3600.0 / dt)
        else:
            if unit.soc_wh <= floor_wh + 1e-9:
                hi = min(hi, 0.0)
            if unit.soc_wh >= ceil_wh - 1e-9:
                lo = max(lo, 0.0)
        if not unit.on_grid or self.tripped(unit):
            lo = hi = 0.0
        return lo, max(hi, lo)

    def _settle(self, unit: InverterState, dt: float = 0.0) -> None:
        """Set the unit's instantaneous output at self.t."""
        if not unit.is_battery:
            unit.available_w = (
                max(0.0, unit.available.value(self._local_second(self.t))) if unit.available else 0.0
            )
            unit.available_w = min(unit.available_w, unit.params.rated_w)
            on = unit.on_grid and not self.tripped(unit)
            unit.output_w = min(unit.available_w, unit.limit_w.at(self.t)) if on else 0.0
            return
        lo, hi = self._battery_bounds(unit, dt)
        if unit.window is not None:
            w_lo, w_hi = unit.window
            if w_lo > hi:  # window beyond what is feasible now: get as close as possible
                lo = hi
            elif w_hi < lo:
                hi = lo
            else:
                lo, hi = max(lo, w_lo), min(hi, w_hi)
        # self-consumption: cover the load net of PV, inside the allowed range
        pv = sum(u.output_w for u in self.units.values() if not u.is_battery)
        others = sum(u.output_w for u in self.units.values() if u.is_battery and u is not unit)
        want = self.load.value(self._local_second(self.t)) - pv - others if self.grid_up else 0.0
        unit.output_w = min(max(want, lo), hi)

    def _integrate_battery(self, unit: InverterState, dt: float) -> None:
        b = unit.battery
        assert b is not None
        self._settle(unit, dt)
        p = unit.output_w
        if p >= 0:
            unit.soc_wh -= p * dt / 3600.0 / b.discharge_efficiency
        else:
            unit.soc_wh += -p * dt / 3600.0 * b.charge_efficiency
        unit.soc_wh = min(max(unit.soc_wh, 0.0), b.capacity_wh)

    def _settle_meter(self) -> None:
        sec = self._local_second(self.t)
        self.load_w = self.load.value(sec) if self.grid_up else 0.0  # a dark site serves no load
        w_phase = [self.load_w * f for f in self.load_phase_split]
        for load in self.loads.values():
            load.output_w = min(max(load.demand.value(sec), 0.0), load.allowed_w) if self.grid_up else 0.0
            w_phase[load.phase] += load.output_w
        for unit in self.units.values():
            if unit.params.phases == 3:
                for ph in range(3):
                    w_phase[ph] -= unit.output_w / 3.0
            else:
                w_phase[unit.params.phase] -= unit.output_w
        m = self.meter
        m.w_phase = w_phase
        m.w = sum(w_phase)
        if not self.grid_up:
            m.v_phase, m.a_phase, m.hz = [0.0] * 3, [0.0] * 3, 0.0
            return
        m.v_phase = [self.nominal_v - self.volts_per_kw_export * w / 1000.0 for w in w_phase]
        m.a_phase = [abs(w) / v for w, v in zip(w_phase, m.v_phase, strict=True)]
        m.hz = self.nominal_hz
