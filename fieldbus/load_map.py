"""The Modbus register map of the controllable loads (EV charger, switched load): declared once, here.

SunSpec defines no EVSE or load-control model, so derlink uses a small map of its own, shaped like the
current-limit maps of common AC wallboxes (a writable charging-current limit, read-back of state and
power) and like a metered Modbus relay. The simulators serve it and the gateway drives it. Holding
registers (function 3 to read, 16 to write), unit ID configurable, all values uint16:

====  ========================  ==================================================================
reg   EV charger ("evse")       switched load ("switched_load")
====  ========================  ==================================================================
0     current limit, 0.1 A (rw) relay: 0 open (off), 1 closed (on) (rw)
1     active power, W           active power, W
2     state (IEC 61851-1 A-F)   state: 0 off, 1 on
3     max current, 0.1 A        rated power, W
4     kind: 1 EVSE              kind: 2 switched load
====  ========================  ==================================================================

IEC 61851-1 charging: a limit below 6 A pauses the charge (a PWM duty below 10 % means "no charging
allowed"), so an EV charger's power is 0 or between 6 A and its maximum, at the line voltage (230 V
single-phase here).
"""

from __future__ import annotations

REG_CONTROL = 0
REG_POWER_W = 1
REG_STATE = 2
REG_RATING = 3
REG_KIND = 4
REGISTER_COUNT = 5

KIND_EVSE = 1
KIND_SWITCHED = 2
KINDS = {"evse": KIND_EVSE, "switched_load": KIND_SWITCHED}

EVSE_MIN_A = 6.0
LINE_V = 230.0
# IEC 61851-1 control-pilot states, as their letter's position (A = 1 ... F = 6)
STATE_A_NO_VEHICLE, STATE_B_CONNECTED, STATE_C_CHARGING = 1, 2, 3


def evse_watts(limit_a: float) -> float:
    """The most an EV charger draws at a current limit (0 below the IEC 61851-1 minimum of 6 A)."""
    return 0.0 if limit_a < EVSE_MIN_A else limit_a * LINE_V


def evse_amps(watts: float, max_a: float) -> float:
    """The current limit (0.1 A resolution, rounded down) for a power budget: 0 (pause) below 6 A."""
    if watts >= max_a * LINE_V:
        return max_a
    amps = int(max(watts, 0.0) / LINE_V * 10) / 10.0
    return amps if amps >= EVSE_MIN_A else 0.0
