"""I/O shell: portfolios from CSV or JSON, offers to and from JSON.

CSV: one row per site and period, header ``site_id,period,native_load,uncontrolled_gen,controlled_load,
controlled_gen,ess_charge,ess_discharge,energy_stored,import_limit,export_limit`` (kW; period 1-based and
optional; empty limit = no DOE).  JSON: ``{"sites": [{"site_id": ..., "native_load": 7.5 | [per period],
...}]}``.  Errors name the file, row and field.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.boffer.model import Arrangement, Offer, PeriodOffer, Portfolio

FIELDS = ("native_load", "uncontrolled_gen", "controlled_load", "controlled_gen", "ess_charge",
          "ess_discharge", "import_limit", "export_limit")  # fmt: skip


class PortfolioFileError(ValueError):
    pass


def _number(text: Any, where: str, field: str, allow_empty: bool) -> float:
    if allow_empty and (text is None or text == ""):
        return np.inf
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PortfolioFileError(f"{where}: {field}: not a number: {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise PortfolioFileError(f"{where}: {field}: must be a finite kW magnitude >= 0, got {text!r}")
    return value


def _portfolio(site_ids: list[str], rows: dict[str, np.ndarray], stored: list[float]) -> Portfolio:
    get = rows.__getitem__
    return Portfolio(
        site_ids=site_ids,
        native_load=get("native_load"),
        uncontrolled_gen=get("uncontrolled_gen"),
        flex_load=get("controlled_load") + get("ess_charge"),
        flex_gen=get("controlled_gen") + get("ess_discharge"),
        import_limit=get("import_limit"),
        export_limit=get("export_limit"),
        energy_stored=np.array(stored, dtype=float),
    )


def read_csv(path: Path) -> Portfolio:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"site_id", *FIELDS[:2]} - set(reader.fieldnames or ())
        if missing:
            raise PortfolioFileError(f"{path}: header: missing column(s) {', '.join(sorted(missing))}")
        records: dict[str, dict[int, list[float]]] = {}
        stored: dict[str, float] = {}
        for n, row in enumerate(reader, start=2):
            where = f"{path}:{n}"
            sid = (row.get("site_id") or "").strip()
            if not sid:
                raise PortfolioFileError(f"{where}: site_id: empty")
            period = int(_number(row.get("period") or "1", where, "period", False))
            if period < 1:
                raise PortfolioFileError(f"{where}: period: must be >= 1")
            per = records.setdefault(sid, {})
            if period in per:
                raise PortfolioFileError(f"{where}: period: {period} given twice for site {sid}")
            per[period] = [_number(row.get(f) or ("" if "limit" in f else "0"), where, f, "limit" in f)
                           for f in FIELDS]  # fmt: skip
            stored[sid] = _number(row.get("energy_stored") or "0", where, "energy_stored", False)
    if not records:
        raise PortfolioFileError(f"{path}: no sites")
    periods = max(max(p) for p in records.values())
    site_ids = list(records)
    data = np.empty((len(FIELDS), len(site_ids), periods))
    for s, sid in enumerate(site_ids):
        if sorted(records[sid]) != list(range(1, periods + 1)):
            raise PortfolioFileError(f"{path}: period: site {sid} does not give every period 1..{periods}")
        for p, values in records[sid].items():
            data[:, s, p - 1] = values
    return _portfolio(site_ids, {f: data[i] for i, f in enumerate(FIELDS)}, [stored[s] for s in site_ids])


def read_json(path: Path) -> Portfolio:
    try:
        doc = json.loads(Path(path).read_text())
        sites = doc["sites"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PortfolioFileError(f"{path}: sites: expected {{\"sites\": [...]}} ({exc})") from None
    lengths = {len(v) for s in sites for v in s.values() if isinstance(v, list)}
    if len(lengths) > 1:
        raise PortfolioFileError(f"{path}: per-period lists have different lengths {sorted(lengths)}")
    periods = lengths.pop() if lengths else 1
    rows = {f: np.empty((len(sites), periods)) for f in FIELDS}
    for i, site in enumerate(sites):
        where = f"{path}: sites[{i}]"
        for f in FIELDS:
            v = site.get(f)
            values = v if isinstance(v, list) else [v] * periods
            rows[f][i] = [_number(x if x is not None else ("" if "limit" in f else 0), where, f, "limit" in f)
                          for x in values]  # fmt: skip
    ids = [str(s.get("site_id") or "") for s in sites]
    if "" in ids or len(set(ids)) != len(ids):
        raise PortfolioFileError(f"{path}: site_id: every site needs a distinct site_id")
    return _portfolio(ids, rows, [_number(s.get("energy_stored", 0), path, "energy_stored", False)
                                  for s in sites])  # fmt: skip


def read_portfolio(path: Path) -> Portfolio:
    path = Path(path)
    return read_json(path) if path.suffix.lower() == ".json" else read_csv(path)


def offer_to_json(offer: Offer) -> dict[str, Any]:
    return {
        "bofferSummationLevel": offer.arrangement.value,
        "prices": list(offer.prices),
        "periods": [
            {"periodId": p.period_id, "maxAvailLoad": p.max_avail_load, "maxAvailGen": p.max_avail_gen,
             "fixedLoad": p.fixed_load, "quantities": list(p.quantities), "accumulated": list(p.accumulated)}
            for p in offer.periods
        ],
    }  # fmt: skip


def offer_from_json(doc: dict[str, Any]) -> Offer:
    try:
        return Offer(
            Arrangement(doc["bofferSummationLevel"]),
            tuple(float(x) for x in doc["prices"]),
            [PeriodOffer(int(p["periodId"]), float(p["maxAvailLoad"]), float(p["maxAvailGen"]),
                         tuple(float(x) for x in p["quantities"]), tuple(float(x) for x in p["accumulated"]),
                         None if p.get("fixedLoad") is None else float(p["fixedLoad"]))
             for p in doc["periods"]],
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise PortfolioFileError(f"offer: malformed ({type(exc).__name__}: {exc})") from None
