"""A Boffer Site from derlink's own data: the DER documents a site last PUT (DERCapability, DERSettings,
DERAvailability: IEEE 2030.5 clause 10.10), the DOE in force for the period, and recent telemetry.

Pure: the caller fetches the documents (``server.store...site_der_documents``), the DOE and the readings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aggregator.boffer.model import Site


def _w(doc: Any, name: str) -> float | None:
    value = getattr(doc, name, None) if doc is not None else None
    return None if value is None else value.to_float()


def _least(*watts: float | None) -> float:
    known = [w for w in watts if w is not None]
    return max(0.0, min(known)) if known else 0.0


def site_from_der_documents(
    site_id: str,
    ders: Sequence[Mapping[str, Any]],
    *,
    import_limit_w: float | None,
    export_limit_w: float | None,
    recent_load_w: Sequence[float] = (),
    uncontrolled_gen_w: float = 0.0,
) -> Site:
    """One Site: each DER is storage when its capability rates charge or discharge, else generation.

    Generation available = least of rtgMaxW, setMaxW and statWAvail; storage rates likewise from
    rtgMaxCharge/DischargeRateW and setMaxCharge/DischargeRateW.  Native load is the mean of the recent
    site load readings (a persistence forecast).  Watts in, kW out; DOE limits are magnitudes.
    """
    gen = charge = discharge = 0.0
    for der in ders:
        cap, settings, avail = der.get("cap"), der.get("settings"), der.get("availability")
        if cap is None:
            raise ValueError(f"{site_id}: DERCapability: required for every DER")
        if _w(cap, "rtgMaxChargeRateW") is not None or _w(cap, "rtgMaxDischargeRateW") is not None:
            charge += _least(_w(cap, "rtgMaxChargeRateW"), _w(settings, "setMaxChargeRateW"))
            discharge += _least(_w(cap, "rtgMaxDischargeRateW") or _w(cap, "rtgMaxW"),
                                _w(settings, "setMaxDischargeRateW"), _w(avail, "statWAvail"))  # fmt: skip
        else:
            gen += _least(_w(cap, "rtgMaxW"), _w(settings, "setMaxW"), _w(avail, "statWAvail"))
    native = sum(recent_load_w) / len(recent_load_w) if recent_load_w else 0.0
    for name, value in (("import_limit_w", import_limit_w), ("export_limit_w", export_limit_w)):
        if value is not None and value < 0:
            raise ValueError(f"{site_id}: {name}: a magnitude >= 0, got {value}")
    return Site(
        site_id,
        native_load=max(native, 0.0) / 1000,
        uncontrolled_gen=uncontrolled_gen_w / 1000,
        controlled_gen=gen / 1000,
        ess_charge=charge / 1000,
        ess_discharge=discharge / 1000,
        import_limit=None if import_limit_w is None else import_limit_w / 1000,
        export_limit=None if export_limit_w is None else export_limit_w / 1000,
    )
