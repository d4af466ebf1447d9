"""Pure mapping between 2030.5 documents (``sep2`` objects) and the gateway core's dataclasses.

Inbound: DERProgram / DERControl / DefaultDERControl -> :class:`gateway.core.Program` / ``Control`` /
``ControlSettings``. Outbound: core ``Response`` -> ``DERControlResponse``; the devices' state
(:class:`SiteSnapshot`) -> DERCapability / DERSettings / DERStatus / DERAvailability and MirrorUsagePoints
with their MirrorMeterReadings. No I/O here; every builder takes ``now``.

Unit conventions (2030.5 -> core):

* ``ActivePower`` limits (``opModExpLimW`` ...), ``opModTargetW`` and the CSIP-AUS v1.3
  ``opModStorageTargetW``: value x 10^multiplier -> watts.
* ``opModFixedW`` (signed) and ``opModMaxLimW``: hundredths of a percent of setMaxW -> percent.
* ``rampTms``: hundredths of a second -> seconds. ``setGradW`` (DefaultDERControl) is passed unchanged.
* ``randomizeStart``/``randomizeDuration`` absent -> 0. ``responseRequired`` hex -> int bitmap.

Telemetry conventions (IEEE 2030.5-2018 UomType, KindType, FlowDirectionType and PhaseCode; CSIP-AUS
v1.2 telemetry, the quantities the public client procedures ALL-06 / ALL-29 / MUL-02 check: site and DER
active power, reactive power, voltage, frequency). Values are integers scaled by the ReadingType's
``powerOfTenMultiplier``:

==========  ======  ========  ==================  =====================  ==========
quantity    uom     kind      flowDirection       phase                  multiplier
==========  ======  ========  ==================  =====================  ==========
W (site)    38 W    37 power  1 forward           0 (n/a)                0
W (DER)     38 W    37 power  19 reverse          0 (n/a)                0
VAr         63 var  37 power  same as W           0 (n/a)                0
V           29 V    0 (n/a)   0 (n/a)             129 AN / 65 BN / 33 CN  -1
Hz          33 Hz   0 (n/a)   0 (n/a)             0 (n/a)                -2
Wh (DER)    72 Wh   12 energy 0 (n/a)             0 (n/a)                0
==========  ======  ========  ==================  =====================  ==========

Site power is positive when the site imports (delivered to the customer, flowDirection 1) and negative
when it exports. DER power is positive when the DER generates or discharges (received from the customer,
flowDirection 19) and negative when it charges. Every ReadingType carries a real ``uom``: a battery's
state of charge is not a reading (2030.5 has no percent uom) but DERStatus ``stateOfChargeStatus``
(hundredths of a percent), where CSIP-AUS puts it; the energy it holds (SoC x rtgMaxWh) is a DER
reading in Wh, which the storage procedures STO-01 / STO-04 count.
Site MirrorUsagePoint roleFlags: isMirror | isPremisesAggregationPoint (0x0003); DER MirrorUsagePoint:
isMirror | isDER | isSubmeter (0x0049). Commodity 1 (electricity, secondary metered), accumulation 12
(instantaneous), dataQualifier 2 (average over the post interval).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.core.events import Control, ControlSettings, Program, Response, ServerStatus
from sep2 import resources as r
from sep2.mrid import derived_mrid


class MappingError(ValueError):
    """A 2030.5 document the core cannot represent; the message names the field."""


# ------------------------------------------------------------------------------------------- inbound


def _watts(power: r.ActivePower | None, name: str) -> float | None:
    if power is None:
        return None
    if power.value is None or power.multiplier is None:
        raise MappingError(f"{name}: value and multiplier are required")
    return power.to_watts()


def control_settings(
    base: r.DERControlBase | None, *, set_grad_w: int | None = None, where: str = "DERControlBase"
) -> ControlSettings:
    """DERControlBase (+ DefaultDERControl.setGradW) -> ControlSettings. Unmodelled modes are ignored."""
    if base is None:
        raise MappingError(f"{where}: missing")
    return ControlSettings(
        export_limit_w=_watts(base.opModExpLimW, f"{where}.opModExpLimW"),
        import_limit_w=_watts(base.opModImpLimW, f"{where}.opModImpLimW"),
        generation_limit_w=_watts(base.opModGenLimW, f"{where}.opModGenLimW"),
        load_limit_w=_watts(base.opModLoadLimW, f"{where}.opModLoadLimW"),
        connect=base.opModConnect,
        energize=base.opModEnergize,
        fixed_w_pct=base.opModFixedW / 100.0 if base.opModFixedW is not None else None,
        max_lim_w_pct=base.opModMaxLimW / 100.0 if base.opModMaxLimW is not None else None,
        target_w=_watts(base.opModTargetW, f"{where}.opModTargetW"),
        storage_target_w=_watts(base.opModStorageTargetW, f"{where}.opModStorageTargetW"),
        ramp_time_s=base.rampTms / 100.0 if base.rampTms is not None else None,
        set_grad_w=float(set_grad_w) if set_grad_w is not None else None,
    )


def default_settings(default: r.DefaultDERControl) -> ControlSettings:
    return control_settings(
        default.DERControlBase, set_grad_w=default.setGradW, where="DefaultDERControl.DERControlBase"
    )


def program(doc: r.DERProgram, default: r.DefaultDERControl | None = None) -> Program:
    """DERProgram (+ its DefaultDERControl, if the server has one) -> core Program."""
    if not doc.mRID:
        raise MappingError("DERProgram.mRID: missing")
    if doc.primacy is None:
        raise MappingError(f"DERProgram {doc.mRID}.primacy: missing")
    return Program(
        mrid=doc.mRID.upper(),
        primacy=doc.primacy,
        default=default_settings(default) if default is not None else None,
        default_mrid=default.mRID.upper() if default is not None and default.mRID else None,
    )


def control(doc: r.DERControl, program_mrid: str) -> Control:
    """DERControl -> core Control (``reply_to`` stays as published; the shell resolves it)."""
    name = f"DERControl {doc.mRID}"
    if not doc.mRID:
        raise MappingError("DERControl.mRID: missing")
    if doc.interval is None or doc.interval.start is None or doc.interval.duration is None:
        raise MappingError(f"{name}.interval: start and duration are required")
    if doc.EventStatus is None or doc.EventStatus.currentStatus is None:
        raise MappingError(f"{name}.EventStatus.currentStatus: missing")
    try:
        status = ServerStatus(doc.EventStatus.currentStatus)
    except ValueError:
        raise MappingError(
            f"{name}.EventStatus.currentStatus: {doc.EventStatus.currentStatus} is not 0..4"
        ) from None
    return Control(
        mrid=doc.mRID.upper(),
        program_mrid=program_mrid.upper(),
        creation_time=doc.creationTime if doc.creationTime is not None else 0,
        start=doc.interval.start,
        duration=doc.interval.duration,
        settings=control_settings(doc.DERControlBase, where=f"{name}.DERControlBase"),
        randomize_start=doc.randomizeStart or 0,
        randomize_duration=doc.randomizeDuration or 0,
        server_status=status,
        response_required=int(doc.responseRequired, 16) if doc.responseRequired else 0,
        reply_to=doc.replyTo,
    )


def response_document(response: Response, end_device_lfdi: str) -> r.DERControlResponse:
    """Core Response -> the DERControlResponse POSTed to the control's replyTo."""
    return r.DERControlResponse(
        createdDateTime=response.created_time,
        endDeviceLFDI=end_device_lfdi.upper(),
        status=int(response.status),
        subject=response.subject.upper(),
    )


# ----------------------------------------------------------------------------- devices -> server


# DERType
DER_TYPE_VIRTUAL = 1
DER_TYPE_PV = 4
DER_TYPE_STORAGE = 80
DER_TYPE_PV_AND_STORAGE = 83
# DERControlType bits
MODE_CHARGE = 1 << 0
MODE_DISCHARGE = 1 << 1
MODE_CONNECT = 1 << 2
MODE_ENERGIZE = 1 << 3
MODE_FIXED_W = 1 << 7
MODE_MAX_LIM_W = 1 << 20
MODE_TARGET_W = 1 << 22
# csipaus DOEControlType bits
DOE_EXP_LIM_W = 1 << 0
DOE_IMP_LIM_W = 1 << 1
DOE_GEN_LIM_W = 1 << 2
DOE_LOAD_LIM_W = 1 << 3
# csipaus VPPControlType bits (CSIP-AUS v1.3 storage extension)
VPP_STORAGE_TARGET_W = 1 << 0
# DeviceCategoryType bits (IEEE 2030.5-2018 EndDevice.deviceCategory)
CATEGORY_SIMPLE_LOADS = 1 << 10
CATEGORY_EVSE = 1 << 17
CATEGORY_PV = 1 << 21
CATEGORY_PV_AND_STORAGE = 1 << 23
CATEGORY_STORAGE = 1 << 25
# ConnectStatusType bits
CONNECT_CONNECTED = 1 << 0
CONNECT_AVAILABLE = 1 << 1
CONNECT_OPERATING = 1 << 2
CONNECT_FAULT = 1 << 4


@dataclass(frozen=True)
class Measurements:
    """Instantaneous (or interval-average) values. ``None`` = not measured, nothing is sent for it.

    ``w``/``var``: see the module docstring for the sign (site: + import; DER: + generation/discharge).
    ``v``: phase name ("A", "B", "C") -> volts line-to-neutral. ``soc_pct``: battery state of charge.
    """

    w: float | None = None
    var: float | None = None
    v: dict[str, float] = field(default_factory=dict)
    hz: float | None = None
    soc_pct: float | None = None


@dataclass(frozen=True)
class DeviceSnapshot:
    """What the device shell knows about one DER (inverter, battery, EVSE...).

    ``device_id`` must be stable across restarts (e.g. SunSpec manufacturer + serial): it names the DER's
    MirrorUsagePoint. Nameplate (rtg_*), settings (set_*), status and measurements are in SI units.
    ``modes_supported``/``modes_enabled`` are DERControlType bitmaps; ``doe_modes_*`` csipaus
    DOEControlType bitmaps, ``vpp_modes_supported`` the v1.3 VPPControlType bitmap (0: not sent, so a
    PV inverter's documents stay v1.2). Storage fields (``rtg_max_wh``, charge/discharge rates) only for
    batteries.
    """

    device_id: str
    der_type: int
    rtg_max_w: float
    modes_supported: int
    doe_modes_supported: int = DOE_EXP_LIM_W | DOE_IMP_LIM_W | DOE_GEN_LIM_W | DOE_LOAD_LIM_W
    vpp_modes_supported: int = 0
    rtg_max_va: float | None = None
    rtg_max_var: float | None = None
    rtg_max_var_neg: float | None = None  # var absorbed: negative (2030.5 rtgMaxVarNeg)
    rtg_min_pf_over: float | None = None  # minimum PF displacement injecting / absorbing vars, 0..1
    rtg_min_pf_under: float | None = None
    rtg_max_wh: float | None = None
    set_min_wh: float | None = None  # storage: the reserve it keeps (CSIP-AUS v1.3 DERSettings.setMinWh)
    rtg_max_charge_w: float | None = None
    rtg_max_discharge_w: float | None = None
    set_max_w: float | None = None  # None: rtg_max_w
    set_grad_w: int = 0  # hundredths of a percent of setMaxW per second; 0 = no ramp limit
    modes_enabled: int | None = None  # None: modes_supported
    doe_modes_enabled: int | None = None  # None: doe_modes_supported
    connected: bool = True
    available: bool = True
    operating: bool = True
    fault: bool = False
    inverter_status: int | None = None  # InverterStatusType
    operational_mode: int | None = None  # OperationalModeStatusType (100 + n: in AS/NZS 4755 DRM n)
    alarm_status: int | None = None  # AlarmStatusType bitmap; None: the device does not say
    w_available: float | None = None  # DERAvailability.statWAvail
    var_available: float | None = None
    measurements: Measurements = field(default_factory=Measurements)

    @property
    def is_storage(self) -> bool:
        return self.der_type in (DER_TYPE_STORAGE, DER_TYPE_PV_AND_STORAGE) or self.rtg_max_wh is not None


@dataclass(frozen=True)
class SiteSnapshot:
    """The site at one instant: the connection-point meter and every DER behind it."""

    site: Measurements
    ders: Sequence[DeviceSnapshot] = ()


def _power(watts: float | None) -> r.ActivePower | None:
    return r.ActivePower.from_watts(watts) if watts is not None else None


def _reactive(var: float | None) -> r.ReactivePower | None:
    return r.ReactivePower.from_float(var) if var is not None else None  # type: ignore[return-value]


def _apparent(va: float | None) -> r.ApparentPower | None:
    return r.ApparentPower.from_float(va) if va is not None else None  # type: ignore[return-value]


def _pf(displacement: float | None) -> r.PowerFactor | None:
    return r.PowerFactor(displacement=round(displacement * 1000), multiplier=-3) if displacement else None


def _wh(wh: float | None) -> r.WattHour | None:
    return r.WattHour.from_float(wh) if wh is not None else None  # type: ignore[return-value]


def _mode_rank(mode: int) -> int:
    if mode >= 100:
        return 1
    return -(2, 3, 1, 0).index(mode) if mode in (0, 1, 2, 3) else -9


def sum_bits(values: Iterable[int]) -> int:
    """The union of bitmaps."""
    bits = 0
    for value in values:
        bits |= value
    return bits


def _sum(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def aggregate_device(devices: Sequence[DeviceSnapshot], device_id: str = "site") -> DeviceSnapshot:
    """One DER standing for several (when the server lists fewer DERs than the site has).

    Ratings and availabilities add up; modes are the union; the type is the common type, 83 for PV +
    storage, or 1 (virtual/mixed); connected/operating if any is; SoC is the energy-weighted mean.
    """
    if not devices:
        raise MappingError("aggregate_device: no devices")
    if len(devices) == 1:
        return devices[0]
    types = {d.der_type for d in devices}
    if len(types) == 1:
        der_type = types.pop()
    elif types <= {DER_TYPE_PV, DER_TYPE_STORAGE, DER_TYPE_PV_AND_STORAGE}:
        der_type = DER_TYPE_PV_AND_STORAGE
    else:
        der_type = DER_TYPE_VIRTUAL
    storage = [d for d in devices if d.is_storage and d.measurements.soc_pct is not None]
    energy = sum(d.rtg_max_wh or 0.0 for d in storage)
    soc = (
        sum(d.measurements.soc_pct * (d.rtg_max_wh or 0.0) for d in storage) / energy  # type: ignore[operator]
        if energy > 0
        else (storage[0].measurements.soc_pct if storage else None)
    )
    phases = sorted({p for d in devices for p in d.measurements.v})
    hz = [d.measurements.hz for d in devices if d.measurements.hz is not None]
    modes = 0
    doe = 0
    vpp = 0
    enabled = 0
    doe_enabled = 0
    for d in devices:
        modes |= d.modes_supported
        doe |= d.doe_modes_supported
        vpp |= d.vpp_modes_supported
        enabled |= d.modes_enabled if d.modes_enabled is not None else d.modes_supported
        doe_enabled |= d.doe_modes_enabled if d.doe_modes_enabled is not None else d.doe_modes_supported
    grads = [d.set_grad_w for d in devices if d.set_grad_w]
    return DeviceSnapshot(
        device_id=device_id,
        der_type=der_type,
        rtg_max_w=sum(d.rtg_max_w for d in devices),
        modes_supported=modes,
        doe_modes_supported=doe,
        vpp_modes_supported=vpp,
        rtg_max_va=_sum([d.rtg_max_va for d in devices]),
        rtg_max_var=_sum([d.rtg_max_var for d in devices]),
        rtg_max_var_neg=_sum([d.rtg_max_var_neg for d in devices]),
        # the aggregate can go as low as its weakest member lets the whole go: the largest minimum
        rtg_min_pf_over=max(
            (d.rtg_min_pf_over for d in devices if d.rtg_min_pf_over is not None), default=None
        ),
        rtg_min_pf_under=max(
            (d.rtg_min_pf_under for d in devices if d.rtg_min_pf_under is not None), default=None
        ),
        rtg_max_wh=_sum([d.rtg_max_wh for d in devices]),
        set_min_wh=_sum([d.set_min_wh for d in devices]),
        rtg_max_charge_w=_sum([d.rtg_max_charge_w for d in devices]),
        rtg_max_discharge_w=_sum([d.rtg_max_discharge_w for d in devices]),
        set_max_w=sum(d.set_max_w if d.set_max_w is not None else d.rtg_max_w for d in devices),
        set_grad_w=min(grads) if grads else 0,
        modes_enabled=enabled,
        doe_modes_enabled=doe_enabled,
        connected=any(d.connected for d in devices),
        available=any(d.available for d in devices),
        operating=any(d.operating for d in devices),
        fault=any(d.fault for d in devices),
        # a demand response mode (100 + DRM) if one is in force, else the most operational of them
        # (2 operational > 3 test > 1 off > 0 unknown)
        operational_mode=max(
            (d.operational_mode for d in devices if d.operational_mode is not None),
            key=_mode_rank,
            default=None,
        ),
        alarm_status=(
            None
            if all(d.alarm_status is None for d in devices)
            else sum_bits(d.alarm_status or 0 for d in devices)
        ),
        w_available=_sum([d.w_available for d in devices]),
        var_available=_sum([d.var_available for d in devices]),
        measurements=Measurements(
            w=_sum([d.measurements.w for d in devices]),
            var=_sum([d.measurements.var for d in devices]),
            v={
                p: sum(d.measurements.v[p] for d in devices if p in d.measurements.v)
                / sum(1 for d in devices if p in d.measurements.v)
                for p in phases
            },
            hz=sum(hz) / len(hz) if hz else None,
            soc_pct=soc,
        ),
    )


def device_category(roles: Sequence[str]) -> str | None:
    """EndDevice.deviceCategory (HexBinary32) of a site with devices of these roles (pv, battery, evse,
    switched_load; a meter adds nothing); None when no role has a category."""
    bits = 0
    for role, bit in (("pv", CATEGORY_PV), ("battery", CATEGORY_STORAGE), ("evse", CATEGORY_EVSE),
                      ("switched_load", CATEGORY_SIMPLE_LOADS)):  # fmt: skip
        if role in roles:
            bits |= bit
    if "pv" in roles and "battery" in roles:
        bits |= CATEGORY_PV_AND_STORAGE
    return f"{bits:08X}" if bits else None


def der_capability(device: DeviceSnapshot) -> r.DERCapability:
    return r.DERCapability(
        modesSupported=f"{device.modes_supported:08X}",
        rtgMaxChargeRateW=_power(device.rtg_max_charge_w),
        rtgMaxDischargeRateW=_power(device.rtg_max_discharge_w),
        rtgMaxVA=_apparent(device.rtg_max_va),
        rtgMaxVar=_reactive(device.rtg_max_var),
        rtgMaxVarNeg=_reactive(device.rtg_max_var_neg),
        rtgMaxW=r.ActivePower.from_watts(device.rtg_max_w),
        rtgMaxWh=_wh(device.rtg_max_wh),
        rtgMinPFOverExcited=_pf(device.rtg_min_pf_over),
        rtgMinPFUnderExcited=_pf(device.rtg_min_pf_under),
        type=device.der_type,
        doeModesSupported=f"{device.doe_modes_supported:02X}",
        vppModesSupported=_vpp(device),
    )


def der_settings(device: DeviceSnapshot, now: int) -> r.DERSettings:
    """The settings in force; where the device has no separate setting, its rating (2030.5 §10.10:
    each setX defaults to rtgX). ``setMinWh`` is the CSIP-AUS v1.3 storage extension's."""
    enabled = device.modes_enabled if device.modes_enabled is not None else device.modes_supported
    doe = device.doe_modes_enabled if device.doe_modes_enabled is not None else device.doe_modes_supported
    return r.DERSettings(
        modesEnabled=f"{enabled:08X}",
        setGradW=device.set_grad_w,
        setMaxChargeRateW=_power(device.rtg_max_charge_w),
        setMaxDischargeRateW=_power(device.rtg_max_discharge_w),
        setMaxVA=_apparent(device.rtg_max_va),
        setMaxVar=_reactive(device.rtg_max_var),
        setMaxVarNeg=_reactive(device.rtg_max_var_neg),
        setMaxW=r.ActivePower.from_watts(
            device.set_max_w if device.set_max_w is not None else device.rtg_max_w
        ),
        setMaxWh=_wh(device.rtg_max_wh),
        setMinPFOverExcited=_pf(device.rtg_min_pf_over),
        setMinPFUnderExcited=_pf(device.rtg_min_pf_under),
        updatedTime=now,
        doeModesEnabled=f"{doe:02X}",
        vppModesEnabled=_vpp(device),
        setMinWh=_wh(device.set_min_wh) if device.vpp_modes_supported else None,
    )


def _vpp(device: DeviceSnapshot) -> str | None:
    return f"{device.vpp_modes_supported:02X}" if device.vpp_modes_supported else None


def _connect_bits(device: DeviceSnapshot) -> str:
    bits = (
        (CONNECT_CONNECTED if device.connected else 0)
        | (CONNECT_AVAILABLE if device.available else 0)
        | (CONNECT_OPERATING if device.operating else 0)
        | (CONNECT_FAULT if device.fault else 0)
    )
    return f"{bits:02X}"


def der_status(device: DeviceSnapshot, now: int) -> r.DERStatus:
    soc = device.measurements.soc_pct
    connect = r.ConnectStatus(dateTime=now, value=_connect_bits(device))
    return r.DERStatus(
        alarmStatus=f"{device.alarm_status:08X}" if device.alarm_status is not None else None,
        genConnectStatus=connect if device.der_type != DER_TYPE_STORAGE else None,
        inverterStatus=r.StatusValue(dateTime=now, value=device.inverter_status)
        if device.inverter_status is not None
        else None,
        operationalModeStatus=r.StatusValue(dateTime=now, value=device.operational_mode)
        if device.operational_mode is not None
        else None,
        readingTime=now,
        stateOfChargeStatus=r.StateOfChargeStatus(dateTime=now, value=round(soc * 100))
        if soc is not None
        else None,
        storConnectStatus=connect if device.is_storage else None,
    )


def der_availability(device: DeviceSnapshot, now: int) -> r.DERAvailability:
    return r.DERAvailability(
        readingTime=now,
        statVarAvail=_reactive(device.var_available),
        statWAvail=_power(device.w_available),
    )


# ------------------------------------------------------------------------------------ telemetry

ROLE_SITE = "0003"  # isMirror | isPremisesAggregationPoint
ROLE_DER = "0049"  # isMirror | isDER | isSubmeter
_PHASES = {"A": 129, "B": 65, "C": 33}
UOM_W, UOM_VAR, UOM_V, UOM_HZ, UOM_WH = 38, 63, 29, 33, 72
KIND_POWER, KIND_ENERGY = 37, 12
FLOW_FORWARD, FLOW_REVERSE = 1, 19


@dataclass(frozen=True)
class Quantity:
    """One telemetry channel of a MirrorUsagePoint: its MirrorMeterReading and ReadingType."""

    key: str  # "w", "var", "v_A", "hz"
    description: str
    uom: int
    kind: int
    flow: int
    phase: int
    multiplier: int


def _quantities(
    m: Measurements, *, is_site: bool, stored_wh: float | None = None
) -> list[tuple[Quantity, float]]:
    flow = FLOW_FORWARD if is_site else FLOW_REVERSE
    out: list[tuple[Quantity, float]] = []
    if m.w is not None:
        out.append((Quantity("w", "Active power (W)", UOM_W, KIND_POWER, flow, 0, 0), m.w))
    if m.var is not None:
        out.append((Quantity("var", "Reactive power (VAr)", UOM_VAR, KIND_POWER, flow, 0, 0), m.var))
    for phase in sorted(m.v):
        if phase not in _PHASES:
            raise MappingError(f"Measurements.v: phase {phase!r} is not one of A, B, C")
        out.append(
            (
                Quantity(f"v_{phase}", f"Voltage phase {phase} (V)", UOM_V, 0, 0, _PHASES[phase], -1),
                m.v[phase],
            )
        )
    if m.hz is not None:
        out.append((Quantity("hz", "Frequency (Hz)", UOM_HZ, 0, 0, 0, -2), m.hz))
    if stored_wh is not None:
        out.append((Quantity("wh", "Stored energy (Wh)", UOM_WH, KIND_ENERGY, 0, 0, 0), stored_wh))
    return out


def reading_type(q: Quantity, interval_s: int) -> r.ReadingType:
    return r.ReadingType(
        accumulationBehaviour=12,
        commodity=1,
        dataQualifier=2,
        flowDirection=q.flow or None,
        intervalLength=interval_s,
        kind=q.kind or None,
        phase=q.phase or None,
        powerOfTenMultiplier=q.multiplier,
        uom=q.uom,
    )


@dataclass(frozen=True)
class MirrorPoint:
    """A MirrorUsagePoint the client keeps: ``key`` is "site" or "der:<device_id>"."""

    key: str
    mrid: str
    role_flags: str
    description: str


def mirror_point(lfdi: str, key: str, pen: int = 0) -> MirrorPoint:
    is_site = key == "site"
    description = "Site connection point" if is_site else f"DER {key.removeprefix('der:')}"[:32]
    return MirrorPoint(
        key=key,
        mrid=derived_mrid(pen, lfdi.upper(), "mup", key),
        role_flags=ROLE_SITE if is_site else ROLE_DER,
        description=description,
    )


def mirror_usage_point(
    point: MirrorPoint, lfdi: str, readings: Sequence[r.MirrorMeterReading] = ()
) -> r.MirrorUsagePoint:
    """The MirrorUsagePoint document POSTed to the MirrorUsagePointList, with its first
    MirrorMeterReadings (each with its ReadingType): some servers refuse a MirrorUsagePoint without."""
    return r.MirrorUsagePoint(
        mRID=point.mrid,
        description=point.description,
        roleFlags=point.role_flags,
        serviceCategoryKind=0,
        status=1,
        deviceLFDI=lfdi.upper(),
        MirrorMeterReading=list(readings),
    )


def meter_readings(
    point: MirrorPoint,
    measurements: Measurements,
    now: int,
    interval_s: int,
    pen: int = 0,
    stored_wh: float | None = None,
) -> r.MirrorMeterReadingList | None:
    """One MirrorMeterReading per measured quantity, each with its ReadingType and one Reading.

    ``mRID``s are derived from the MirrorUsagePoint and the quantity, so they are stable across restarts
    and a server can match readings to its stored MirrorMeterReadings. None if nothing was measured.
    """
    items = []
    for q, value in _quantities(measurements, is_site=point.key == "site", stored_wh=stored_wh):
        scaled = round(value / 10.0**q.multiplier)
        items.append(
            r.MirrorMeterReading(
                mRID=derived_mrid(pen, point.mrid, q.key),
                description=q.description,
                lastUpdateTime=now,
                nextUpdateTime=now + interval_s,
                Reading=r.Reading(
                    timePeriod=r.DateTimeInterval(start=now, duration=interval_s), value=scaled
                ),
                ReadingType=reading_type(q, interval_s),
            )
        )
    if not items:
        return None
    return r.MirrorMeterReadingList(all=len(items), results=len(items), MirrorMeterReading=items)


def site_readings(
    lfdi: str, snapshot: SiteSnapshot, now: int, interval_s: int, pen: int = 0
) -> list[tuple[MirrorPoint, r.MirrorMeterReadingList]]:
    """(MirrorUsagePoint, readings) for the site meter and each DER of a snapshot."""
    out = []
    points = [(mirror_point(lfdi, "site", pen), snapshot.site, None)] + [
        (mirror_point(lfdi, f"der:{d.device_id}", pen), d.measurements, _stored_wh(d)) for d in snapshot.ders
    ]
    for point, measurements, stored_wh in points:
        doc = meter_readings(point, measurements, now, interval_s, pen, stored_wh)
        if doc is not None:
            out.append((point, doc))
    return out


def _stored_wh(device: DeviceSnapshot) -> float | None:
    """A battery's stored energy: state of charge x usable capacity (rtgMaxWh)."""
    soc, capacity = device.measurements.soc_pct, device.rtg_max_wh
    return None if soc is None or not capacity else soc / 100.0 * capacity
