"""Simulated SunSpec devices: register images bound to the site physics, controls and faults.

Each device owns a register image laid out by :mod:`simulators.sunspec_map`. Reads refresh the
measurement points from the physics (lazily, only when a client asks); writes to control points queue
physics commands, so they act through the response delay and ramp rather than instantly. Faults are
applied in the pymodbus ``SimDevice.action`` hook, which sees every request before it is served.

Model chains
    PV, legacy:      1, 101|102|103, 120, 121, 122, 123
    PV, DER:         1, 701, 702, 703, 704, 705
    battery, legacy: 1, 101|102|103, 120, 121, 122, 123, 124
    battery, DER:    1, 701, 702, 703, 704, 713, 714, 802
    meter:           1, 201|202|203|204
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from .config import DeviceConfig
from .physics import InverterState, SitePhysics
from .sunspec_map import SUNSPEC_BASE_ADDRESS, PointSlot, RegisterLayout, build_layout

FAULTS = ("offline", "slow", "stuck", "exception", "frozen")

_INVERTER_MODEL = {"single": 101, "split": 102, "wye": 103, "delta": 103}
_METER_MODEL = {"single": 201, "split": 202, "wye": 203, "delta": 204}
GROUP_COUNTS = {"705.NCrv": 1, "705.NPt": 4, "714.NPrt": 1}


def model_chain(cfg: DeviceConfig) -> tuple[int, ...]:
    if cfg.kind == "meter":
        return (1, _METER_MODEL[cfg.wiring])
    if cfg.family == "legacy":
        chain = (1, _INVERTER_MODEL[cfg.wiring], 120, 121, 122, 123)
        return (*chain, 124) if cfg.kind == "battery" else chain
    if cfg.kind == "pv":
        return (1, 701, 702, 703, 704, 705)
    return (1, 701, 702, 703, 704, 713, 714, 802)


@dataclass
class Fault:
    kind: str  # one of FAULTS
    delay_s: float = 2.0  # slow
    code: int = int(ExcCodes.DEVICE_FAILURE)  # exception


@dataclass
class SunSpecDevice:
    """One simulated device (one Modbus unit ID)."""

    cfg: DeviceConfig
    site_name: str
    physics: SitePhysics
    now: Callable[[], float]  # simulated time source
    layout: RegisterLayout = field(init=False)
    regs: list[int] = field(init=False)
    fault: Fault | None = None
    own_server: bool = False  # True if the device has its own port (offline -> refuse connections)
    on_fault_change: Callable[[SunSpecDevice], Any] | None = None
    reads: int = 0
    writes: int = 0
    _refreshed_at: float = -math.inf

    def __post_init__(self) -> None:
        self.layout = build_layout(model_chain(self.cfg), GROUP_COUNTS)
        self.regs = self.layout.new_image()
        self._init_static()
        self.refresh(force=True)

    # ------------------------------------------------------------------------------ helpers
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def unit(self) -> InverterState | None:
        return self.physics.units.get(self.cfg.name)

    @property
    def model_ids(self) -> tuple[int, ...]:
        return self.layout.model_ids

    def _set(self, name: str, value: float | str | None) -> None:
        if self.layout.has(name):
            self.layout.set(self.regs, name, value)

    def _set_many(self, model_id: int, values: dict[str, float | str | None]) -> None:
        if model_id not in self.layout.model_ids:
            return
        for key, value in values.items():
            self._set(f"{model_id}.{key}", value)

    def get(self, name: str) -> float | str | None:
        """Engineering value of a point as a client would read it (scale factor applied)."""
        return self.layout.get(self.regs, name)

    def sim_device(self) -> SimDevice:
        """The pymodbus SimDevice serving this image at 40000, read-only registers protected."""
        blocks = [
            SimData(
                address=SUNSPEC_BASE_ADDRESS + start,
                values=self.regs[start : start + count],
                datatype=DataType.REGISTERS,
                readonly=not writable,
            )
            for start, count, writable in self.layout.writable_runs()
        ]
        return SimDevice(id=self.cfg.unit_id, simdata=blocks, action=self._action)

    # ------------------------------------------------------------------------------ static values
    def _init_static(self) -> None:
        c = self.cfg
        kind_code = {"pv": "PV", "battery": "BAT", "meter": "MTR"}[c.kind]
        self._set_many(
            1,
            {
                "Mn": "derlink",
                "Md": f"SIM-{kind_code}-{self.layout.model_ids[1]}",
                "Opt": c.family,
                "Vr": "0.1.0",
                "SN": c.serial or f"{self.site_name}-{c.name}"[:32],
                "DA": c.unit_id,
                "Pad": 0,
            },
        )
        if c.kind == "meter":
            self._init_meter_static()
            return
        rated = c.rated_w
        w_sf = _sf_for(max(rated, c.max_charge_w, c.max_discharge_w))
        v_nom = self.physics.nominal_v
        a_rtg = rated / v_nom / (3 if c.wiring in ("wye", "delta") else 1)
        is_bat = c.kind == "battery"
        inv = _INVERTER_MODEL[c.wiring]
        self._set_many(
            inv,
            {
                "A_SF": -2,
                "V_SF": -1,
                "W_SF": w_sf,
                "Hz_SF": -2,
                "VA_SF": w_sf,
                "VAr_SF": w_sf,
                "PF_SF": -2,
                "WH_SF": 0,
                "DCA_SF": -2,
                "DCV_SF": -1,
                "DCW_SF": w_sf,
                "Tmp_SF": -1,
                "VAr": 0,
                "PF": 100,
                "TmpCab": 35.0,
                "Evt1": 0,
                "Evt2": 0,
            },
        )
        self._set_many(
            120,
            {
                "WRtg_SF": w_sf,
                "VARtg_SF": w_sf,
                "VArRtg_SF": w_sf,
                "ARtg_SF": -1,
                "PFRtg_SF": -2,
                "WHRtg_SF": _sf_for(c.capacity_wh) if is_bat else None,
                "AhrRtg_SF": 0 if is_bat else None,
                "MaxChaRte_SF": w_sf if is_bat else None,
                "MaxDisChaRte_SF": w_sf if is_bat else None,
            },
        )
        self._set_many(
            120,
            {
                "DERTyp": 82 if is_bat else 4,
                "WRtg": rated,
                "VARtg": rated,
                "VArRtgQ1": rated * 0.6,
                "VArRtgQ2": rated * 0.6,
                "VArRtgQ3": -rated * 0.6,
                "VArRtgQ4": -rated * 0.6,
                "ARtg": a_rtg,
                "PFRtgQ1": 0.8,
                "PFRtgQ2": 0.8,
                "PFRtgQ3": -0.8,
                "PFRtgQ4": -0.8,
            },
        )
        if is_bat:
            self._set_many(
                120,
                {
                    "WHRtg": c.capacity_wh,
                    "AhrRtg": c.capacity_wh / _BATTERY_V,
                    "MaxChaRte": c.max_charge_w,
                    "MaxDisChaRte": c.max_discharge_w,
                },
            )
        self._set_many(
            121,
            {"WMax_SF": w_sf, "VRef_SF": -1, "VRefOfs_SF": -1, "WMax": rated, "VRef": v_nom, "VRefOfs": 0},
        )
        self._set_many(122, {"VArAval_SF": w_sf, "WAval_SF": w_sf, "TmSrc": "RTC"})
        self._set_many(
            123,
            {
                "WMaxLimPct_SF": -1,
                "OutPFSet_SF": -3,
                "VArPct_SF": -1,
                "Conn": 1,
                "WMaxLimPct": 100.0,
                "WMaxLimPct_RmpTms": c.ramp_time_s,
                "WMaxLimPct_WinTms": 0,
                "WMaxLimPct_RvrtTms": 0,
                "WMaxLim_Ena": 0,
                "OutPFSet": 1.0,
                "OutPFSet_Ena": 0,
                "VArPct_Ena": 0,
                "Conn_WinTms": 0,
                "Conn_RvrtTms": 0,
            },
        )
        self._set_many(
            124,
            {
                "WChaMax_SF": w_sf,
                "WChaDisChaGra_SF": 0,
                "VAChaMax_SF": w_sf,
                "MinRsvPct_SF": -1,
                "ChaState_SF": -1,
                "StorAval_SF": -1,
                "InBatV_SF": -1,
                "InOutWRte_SF": -1,
            },
        )
        self._set_many(
            124,
            {
                "WChaMax": c.max_charge_w,
                "WChaGra": 100,
                "WDisChaGra": 100,
                "StorCtl_Mod": 0,
                "VAChaMax": c.max_charge_w,
                "MinRsvPct": c.min_soc_pct,
                "OutWRte": 100.0,
                "InWRte": 100.0,
                "InOutWRte_WinTms": 0,
                "InOutWRte_RvrtTms": 0,
                "InOutWRte_RmpTms": 0,
                "ChaGriSet": 1,
            },
        )
        # DER (70x) family
        three = c.wiring in ("wye", "delta")
        self._set_many(
            701,
            {
                "A_SF": -2,
                "V_SF": -1,
                "Hz_SF": -3,
                "W_SF": w_sf,
                "PF_SF": -3,
                "VA_SF": w_sf,
                "Var_SF": w_sf,
                "TotWh_SF": 0,
                "TotVarh_SF": 0,
                "Tmp_SF": -1,
            },
        )
        self._set_many(
            701,
            {
                "ACType": 2 if three else (1 if c.wiring == "split" else 0),
                "Alrm": 0,
                "DERMode": 1,
                "Var": 0,
                "PF": 1.0,
                "TmpCab": 35.0,
                "MnAlrmInfo": "",
            },
        )
        self._set_many(
            702, {"W_SF": w_sf, "PF_SF": -3, "VA_SF": w_sf, "Var_SF": w_sf, "V_SF": -1, "A_SF": -1}
        )
        self._set_many(
            702,
            {
                "WMaxRtg": rated,
                "VAMaxRtg": rated,
                "VarMaxInjRtg": rated * 0.6,
                "VarMaxAbsRtg": rated * 0.6,
                "VNomRtg": v_nom,
                "VMaxRtg": v_nom * 1.1,
                "VMinRtg": v_nom * 0.88,
                "AMaxRtg": a_rtg,
                "PFOvrExtRtg": 0.8,
                "PFUndExtRtg": 0.8,
                "NorOpCatRtg": 1,
                "AbnOpCatRtg": 2,
                "CtrlModes": 0x3,
                "WMax": rated,
                "VAMax": rated,
                "VarMaxInj": rated * 0.6,
                "VarMaxAbs": rated * 0.6,
                "VNom": v_nom,
                "VMax": v_nom * 1.1,
                "VMin": v_nom * 0.88,
                "AMax": a_rtg,
            },
        )
        if is_bat:
            self._set_many(
                702,
                {
                    "WChaRteMaxRtg": c.max_charge_w,
                    "WDisChaRteMaxRtg": c.max_discharge_w,
                    "WChaRteMax": c.max_charge_w,
                    "WDisChaRteMax": c.max_discharge_w,
                },
            )
        self._set_many(703, {"V_SF": -1, "Hz_SF": -2})
        self._set_many(
            703,
            {
                "ES": 1,
                "ESVHi": 110.0,
                "ESVLo": 88.0,
                "ESHzHi": 50.15,
                "ESHzLo": 47.5,
                "ESDlyTms": 60,
                "ESRndTms": 0,
                "ESRmpTms": c.reconnect_ramp_s,
                "ESDlyRemTms": 0,
            },
        )
        self._set_many(
            704,
            {
                "PF_SF": -3,
                "WMaxLimPct_SF": -1,
                "WSet_SF": 0 if w_sf <= 0 else w_sf,
                "WSetPct_SF": -1,
                "VarSet_SF": 0,
                "VarSetPct_SF": -1,
            },
        )
        self._set_many(
            704,
            {
                "PFWInjEna": 0,
                "PFWAbsEna": 0,
                "WMaxLimPctEna": 0,
                "WMaxLimPct": 100.0,
                "WMaxLimPctRvrt": 100.0,
                "WMaxLimPctEnaRvrt": 0,
                "WMaxLimPctRvrtTms": 0,
                "WMaxLimPctRvrtRem": 0,
                "WSetEna": 0,
                "WSetMod": 1,
                "WSet": 0,
                "WSetPct": 0,
                "WSetEnaRvrt": 0,
                "WSetRvrtTms": 0,
                "WSetRvrtRem": 0,
                "VarSetEna": 0,
                "VarSetMod": 4,
                "VarSetPri": 0,
                "VarSet": 0,
                "WRmp": _wrmp(c.ramp_time_s),
                "WRmpRef": 1,
                "AntiIslEna": 1,
                "PFWInj.PF": 1.0,
                "PFWInj.Ext": 0,
                "PFWAbs.PF": 1.0,
                "PFWAbs.Ext": 1,
            },
        )
        self._set_many(
            705,
            {
                "V_SF": -1,
                "DeptRef_SF": -1,
                "RspTms_SF": 0,
                "Ena": 0,
                "AdptCrvReq": 0,
                "AdptCrvRslt": 1,
                "RvrtTms": 0,
                "RvrtRem": 0,
                "RvrtCrv": 0,
                "Crv[1].ActPt": 4,
                "Crv[1].DeptRef": 1,
                "Crv[1].Pri": 1,
                "Crv[1].VRef": 100.0,
                "Crv[1].RspTms": 10,
                "Crv[1].ReadOnly": 0,
            },
        )
        # AS/NZS 4777.2:2020 Australia A volt-var points as the shipped default curve
        for i, (v_pct, var_pct) in enumerate([(90.0, 44.0), (95.7, 0.0), (104.3, 0.0), (112.2, -60.0)], 1):
            self._set_many(705, {f"Crv[1].Pt[{i}].V": v_pct, f"Crv[1].Pt[{i}].Var": var_pct})
        self._set_many(713, {"WH_SF": _sf_for(c.capacity_wh), "Pct_SF": -1})
        self._set_many(713, {"WHRtg": c.capacity_wh, "SoH": 100.0, "Sta": 0})
        self._set_many(
            714,
            {
                "DCA_SF": -2,
                "DCV_SF": -1,
                "DCW_SF": w_sf,
                "DCWH_SF": 0,
                "Tmp_SF": -1,
                "PrtAlrms": 0,
                "Prt[1].PrtTyp": 1,
                "Prt[1].ID": 1,
                "Prt[1].IDStr": "BAT1",
                "Prt[1].DCSta": 1,
                "Prt[1].DCAlrm": 0,
                "Prt[1].Tmp": 25.0,
            },
        )
        self._set_many(
            802,
            {
                "AHRtg_SF": 0,
                "WHRtg_SF": _sf_for(c.capacity_wh),
                "WChaDisChaMax_SF": w_sf,
                "DisChaRte_SF": -1,
                "SoC_SF": -1,
                "DoD_SF": -1,
                "SoH_SF": -1,
                "V_SF": -1,
                "CellV_SF": -3,
                "A_SF": -2,
                "AMax_SF": -1,
                "W_SF": w_sf,
            },
        )
        self._set_many(
            802,
            {
                "AHRtg": c.capacity_wh / _BATTERY_V,
                "WHRtg": c.capacity_wh,
                "WChaRteMax": c.max_charge_w,
                "WDisChaRteMax": c.max_discharge_w,
                "SoCMax": 100.0,
                "SoCMin": c.min_soc_pct,
                "SoCRsvMin": c.min_soc_pct,
                "SocRsvMax": 100.0,
                "SoH": 100.0,
                "NCyc": 0,
                "LocRemCtl": 0,
                "Typ": 4,
                "State": 3,
                "Evt1": 0,
                "Evt2": 0,
                "EvtVnd1": 0,
                "EvtVnd2": 0,
                "SetOp": 1,
                "SetInvState": 3,
                "AlmRst": 0,
                "AChaMax": c.max_charge_w / _BATTERY_V,
                "ADisChaMax": c.max_discharge_w / _BATTERY_V,
            },
        )

    def _init_meter_static(self) -> None:
        m = _METER_MODEL[self.cfg.wiring]
        self._set_many(
            m,
            {
                "A_SF": -2,
                "V_SF": -1,
                "Hz_SF": -2,
                "W_SF": 0,
                "VA_SF": 0,
                "VAR_SF": 0,
                "PF_SF": 0,
                "TotWh_SF": 0,
                "TotVAh_SF": 0,
                "TotVArh_SF": 0,
                "Evt": 0,
            },
        )

    # ------------------------------------------------------------------------------ measurements
    def refresh(self, force: bool = False) -> None:
        """Copy the physics state into the measurement points (no-op if time has not moved)."""
        ph = self.physics
        if not force and ph.t == self._refreshed_at:
            return
        self._refreshed_at = ph.t
        if self.cfg.kind == "meter":
            self._refresh_meter()
        else:
            self._refresh_inverter()

    def _phases(self) -> list[int]:
        c = self.cfg
        if c.wiring in ("wye", "delta"):
            return [0, 1, 2]
        if c.wiring == "split":
            return [0, 1]
        return [("A", "B", "C").index(c.phase)]

    def _refresh_meter(self) -> None:
        ph = self.physics
        m = ph.meter
        model = _METER_MODEL[self.cfg.wiring]
        phases = self._phases()
        base = self.cfg.energy_start_wh
        # the meter sees every phase it is wired to; totals are over those phases
        w = sum(m.w_phase[i] for i in phases) if len(phases) < 3 else m.w
        v = [m.v_phase[i] for i in phases]
        a = [m.a_phase[i] for i in phases]
        vals: dict[str, float | None] = {
            "A": sum(a),
            "PhV": sum(v) / len(v),
            "Hz": m.hz,
            "W": w,
            "VA": abs(w),
            "VAR": 0,
            "PF": 100,
            "TotWhImp": base
            + (sum(m.import_wh_phase[i] for i in phases) if len(phases) < 3 else m.import_wh),
            "TotWhExp": base
            + (sum(m.export_wh_phase[i] for i in phases) if len(phases) < 3 else m.export_wh),
        }
        if len(phases) > 1:
            vals["PPV"] = sum(v) / len(v) * math.sqrt(3) if len(phases) == 3 else sum(v)
        for label, i in zip("ABC", phases, strict=False):
            vals[f"Aph{label}"] = m.a_phase[i]
            vals[f"PhVph{label}"] = m.v_phase[i]
            vals[f"Wph{label}"] = m.w_phase[i]
            vals[f"VAph{label}"] = abs(m.w_phase[i])
            vals[f"VARph{label}"] = 0
            vals[f"PFph{label}"] = 100
            vals[f"TotWhImpPh{label}"] = base + m.import_wh_phase[i]
            vals[f"TotWhExpPh{label}"] = base + m.export_wh_phase[i]
        if len(phases) == 3:
            vals.update(
                PhVphAB=m.v_phase[0] * math.sqrt(3),
                PhVphBC=m.v_phase[1] * math.sqrt(3),
                PhVphCA=m.v_phase[2] * math.sqrt(3),
            )
        self._set_many(model, vals)

    def _refresh_inverter(self) -> None:
        unit = self.unit
        assert unit is not None
        ph = self.physics
        c = self.cfg
        phases = self._phases()
        w = unit.output_w
        v_phase = [ph.meter.v_phase[i] for i in phases]
        v = sum(v_phase) / len(v_phase)
        a_total = abs(w) / v if v else 0.0
        a_each = a_total / len(phases)
        limited = unit.limit_pct < 100.0 or unit.limit_w.at(ph.t) < c.rated_w - 1e-6
        if not unit.on_grid:
            st, inv_st = 1, 0  # OFF
        elif unit.is_battery:
            st, inv_st = (5, 4) if limited else (4, 3)
        elif unit.available_w <= 0:
            st, inv_st = 2, 1  # SLEEPING
        else:
            st, inv_st = (5, 4) if limited and unit.output_w < unit.available_w - 1e-6 else (4, 3)
        dc_w = w / 0.97 if w >= 0 else w * 0.97
        dc_v = _BATTERY_V if unit.is_battery else 380.0
        inv = _INVERTER_MODEL[c.wiring]
        vals: dict[str, float | None] = {
            "A": a_total,
            "W": w,
            "Hz": ph.meter.hz,
            "VA": abs(w),
            "WH": c.energy_start_wh + unit.energy_out_wh,
            "DCW": dc_w,
            "DCV": dc_v,
            "DCA": dc_w / dc_v,
            "St": st,
            "PhVphA": v_phase[0],
            "AphA": a_each,
        }
        if len(phases) > 1:
            vals.update(AphB=a_each, PhVphB=v_phase[1], PPVphAB=v_phase[0] + v_phase[1])
        if len(phases) == 3:
            vals.update(
                AphC=a_each,
                PhVphC=v_phase[2],
                PPVphAB=v_phase[0] * math.sqrt(3),
                PPVphBC=v_phase[1] * math.sqrt(3),
                PPVphCA=v_phase[2] * math.sqrt(3),
            )
        self._set_many(inv, vals)
        # CONNECTED|AVAILABLE|OPERATING; commanded off it stays AVAILABLE, isolated it is not
        conn_bits = 0b111 if unit.on_grid else (0b000 if unit.isolated else 0b010)
        self._set_many(
            122,
            {
                "PVConn": 0 if unit.is_battery else conn_bits,
                "StorConn": conn_bits if unit.is_battery else 0,
                "ECPConn": 1 if unit.on_grid else 0,
                "ActWh": c.energy_start_wh + unit.energy_out_wh,
                "WAval": unit.available_w if not unit.is_battery else c.max_discharge_w,
                "StActCtl": 1 if unit.limit_pct < 100.0 else 0,
                "Tms": int(ph.t) % 2**32,
            },
        )
        three = len(phases) == 3
        vals701: dict[str, float | None] = {
            "St": 1 if unit.on_grid else 0,
            "InvSt": inv_st,
            "ConnSt": 1 if unit.on_grid else 0,
            "W": w,
            "VA": abs(w),
            "A": a_total,
            "LNV": v,
            "LLV": v * math.sqrt(3) if three else v,
            "Hz": ph.meter.hz,
            "TotWhInj": unit.energy_out_wh,
            "TotWhAbs": unit.energy_in_wh,
            "ThrotPct": min(100.0, unit.limit_w.at(ph.t) / c.rated_w * 100.0),
            "ThrotSrc": 1 if unit.limit_pct < 100.0 else 0,
        }
        for n, i in enumerate(phases, 1):
            vals701.update(
                {
                    f"WL{n}": w / len(phases),
                    f"VAL{n}": abs(w) / len(phases),
                    f"VarL{n}": 0,
                    f"PFL{n}": 1.0,
                    f"AL{n}": a_each,
                    f"VL{n}": ph.meter.v_phase[i],
                    f"TotWhInjL{n}": unit.energy_out_wh / len(phases),
                    f"TotWhAbsL{n}": unit.energy_in_wh / len(phases),
                }
            )
        self._set_many(701, vals701)
        if not unit.is_battery:
            return
        b = unit.battery
        assert b is not None
        soc = unit.soc_pct
        reserve = max(b.min_soc_pct, unit.reserve_pct)
        if not unit.on_grid:
            cha_st = 1
        elif soc <= reserve + 0.05:
            cha_st = 2
        elif soc >= b.max_soc_pct - 0.05:
            cha_st = 5
        else:
            cha_st = 3 if w > 1 else (4 if w < -1 else 6)
        self._set_many(
            124,
            {
                "ChaState": soc,
                "StorAval": max(soc - reserve, 0) / 100 * b.capacity_wh / _BATTERY_V,
                "InBatV": _BATTERY_V,
                "ChaSt": cha_st,
            },
        )
        self._set_many(713, {"WHAvail": max(unit.soc_wh - b.capacity_wh * reserve / 100, 0.0), "SoC": soc})
        self._set_many(
            714,
            {
                "NPrt": 1,
                "DCA": dc_w / dc_v,
                "DCW": dc_w,
                "DCWhInj": unit.energy_out_wh / 0.97,
                "DCWhAbs": unit.energy_in_wh * 0.97,
                "Prt[1].DCA": dc_w / dc_v,
                "Prt[1].DCV": dc_v,
                "Prt[1].DCW": dc_w,
                "Prt[1].DCWhInj": unit.energy_out_wh / 0.97,
                "Prt[1].DCWhAbs": unit.energy_in_wh * 0.97,
            },
        )
        self._set_many(
            802,
            {
                "SoC": soc,
                "DoD": 100.0 - soc,
                "ChaSt": cha_st,
                "V": dc_v,
                "A": dc_w / dc_v,
                "W": dc_w,
                "State": 3 if unit.on_grid else 1,
                "VMax": dc_v * 1.1,
                "VMin": dc_v * 0.85,
                "CellVAvg": 3.3,
                "CellVMax": 3.35,
                "CellVMin": 3.25,
                "NCyc": int(unit.energy_out_wh / b.capacity_wh),
            },
        )

    # ------------------------------------------------------------------------------ controls
    def _handle_write(self, touched: list[PointSlot], t: float) -> None:
        """Turn written control points into physics commands (through delay and ramp)."""
        names = {s.name for s in touched}
        c = self.cfg
        ph = self.physics
        get = self.get
        if names & {"123.Conn"}:
            ph.command(t, c.name, "connect", connected=get("123.Conn") == 1)
        if names & {"123.WMaxLimPct", "123.WMaxLim_Ena", "123.WMaxLimPct_RmpTms"}:
            enabled = get("123.WMaxLim_Ena") == 1
            ramp = get("123.WMaxLimPct_RmpTms")
            ph.command(
                t,
                c.name,
                "limit",
                pct=get("123.WMaxLimPct") if enabled else None,
                ramp_s=None if ramp is None else float(ramp),
            )
        if names & {"703.ES"}:
            ph.command(t, c.name, "connect", connected=get("703.ES") == 1)
        if names & {"704.WMaxLimPct", "704.WMaxLimPctEna", "704.WRmp"}:
            enabled = get("704.WMaxLimPctEna") == 1
            wrmp = get("704.WRmp")  # %WMax per second; 0 = step change
            ph.command(
                t,
                c.name,
                "limit",
                pct=get("704.WMaxLimPct") if enabled else None,
                ramp_s=0.0 if not wrmp else None,
                rate_pct_per_s=float(wrmp) if wrmp else None,
            )
        if c.kind == "battery":
            if names & {"124.WChaMax", "124.StorCtl_Mod", "124.InWRte", "124.OutWRte"}:
                ph.command(t, c.name, "battery_window", window=self._window_124())
            if names & {"124.MinRsvPct"}:
                ph.command(t, c.name, "reserve", pct=float(get("124.MinRsvPct") or 0.0))
            if names & {"802.SoCRsvMin"}:
                ph.command(t, c.name, "reserve", pct=float(get("802.SoCRsvMin") or 0.0))
            if names & {"704.WSetEna", "704.WSetMod", "704.WSet", "704.WSetPct"}:
                ph.command(t, c.name, "battery_window", window=self._window_704())
            if names & {"802.SetOp"}:
                ph.command(t, c.name, "connect", connected=get("802.SetOp") == 1)
        elif names & {"704.WSetEna", "704.WSetMod", "704.WSet", "704.WSetPct"}:
            window = self._window_704()
            pct = None if window is None else max(window[1], 0.0) / c.rated_w * 100.0
            ph.command(t, c.name, "limit", pct=pct, ramp_s=None)

    def _window_124(self) -> tuple[float, float]:
        """Model 124 -> allowed battery power window (W, + = discharge).

        WChaMax caps charging. StorCtl_Mod bit 0 (CHARGE) limits charging to InWRte % of WChaMax,
        bit 1 (DISCHARGE) limits discharging to OutWRte % of the maximum discharge rate. A negative
        rate reverses the direction, forcing the opposite flow (the convention several vendors use to
        command forced charge/discharge through model 124).
        """
        c = self.cfg
        get = self.get
        cha_max = min(float(get("124.WChaMax") or c.max_charge_w), c.max_charge_w)
        mode = int(get("124.StorCtl_Mod") or 0)
        lo, hi = -cha_max, c.max_discharge_w
        if mode & 1:
            lo = -cha_max * float(get("124.InWRte") or 0.0) / 100.0
        if mode & 2:
            hi = c.max_discharge_w * float(get("124.OutWRte") or 0.0) / 100.0
        return (lo, hi)

    def _window_704(self) -> tuple[float, float] | None:
        """Model 704 WSet: a fixed active-power setpoint (W, + = generate/discharge) when enabled."""
        get = self.get
        if get("704.WSetEna") != 1:
            return None
        if get("704.WSetMod") == 0:
            w = float(get("704.WSetPct") or 0.0) / 100.0 * self.cfg.rated_w
        else:
            w = float(get("704.WSet") or 0.0)
        return (w, w)

    def _validate_write(self, offset: int, values: list[int]) -> ExcCodes | None:
        """Reject enum values the model definition does not list (ILLEGAL_VALUE), changing nothing."""
        image: list[int] | None = None
        for slot in self.layout.points_touching(offset, len(values)):
            if slot.symbols is None or not slot.type.startswith("enum"):
                continue
            if image is None:
                image = self.regs[:]
                image[offset : offset + len(values)] = values
            raw = self.layout.decode_raw(image, slot)
            if raw is not None and int(raw) not in slot.symbols:
                return ExcCodes.ILLEGAL_VALUE
        return None

    # ------------------------------------------------------------------------------ request hook
    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        fault = self.fault
        if fault is not None:
            if fault.kind == "offline":
                # shared port: the unit is gone behind a live TCP endpoint (gateway "no response")
                return ExcCodes.GATEWAY_NO_RESPONSE
            if fault.kind == "exception":
                return ExcCodes(fault.code)
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
        offset = address - SUNSPEC_BASE_ADDRESS
        base = start_address - SUNSPEC_BASE_ADDRESS  # index 0 of current_registers
        t = self.now()
        self.physics.advance(t)
        if set_values is None:
            self.reads += 1
            if fault is None or fault.kind != "frozen":
                self.refresh()
            current_registers[offset - base : offset - base + count] = self.regs[offset : offset + count]
            return None
        self.writes += 1
        values = [int(v) for v in set_values]
        if (error := self._validate_write(offset, values)) is not None:
            return error
        self.regs[offset : offset + len(values)] = values
        if fault is None or fault.kind != "stuck":
            self._handle_write(self.layout.points_touching(offset, len(values)), t)
        return None


_BATTERY_V = 400.0


def _sf_for(max_value: float) -> int:
    """Smallest power-of-ten scale factor (>= 0) that keeps max_value within an int16/uint16."""
    sf = 0
    while max_value / 10**sf > 30000:
        sf += 1
    return sf


def _wrmp(ramp_time_s: float) -> int:
    """704 WRmp (%WMax per second) equivalent to a full-scale ramp over ramp_time_s."""
    return 0 if ramp_time_s <= 0 else max(1, round(100.0 / ramp_time_s))
