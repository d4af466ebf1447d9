"""Does a site say it can do what a control asks? (issue 11 item 12)

A DERControlBase field is checked against the site's last DERCapability: the CSIP-AUS limits against
``csipaus:doeModesSupported`` (bit 0 opModExpLimW, 1 opModImpLimW, 2 opModGenLimW, 3 opModLoadLimW), the
2030.5 modes against ``modesSupported`` (DERControlType bits: 2 opModConnect, 3 opModEnergize, 7 opModFixedW,
20 opModMaxLimW, 22 opModTargetW), and CSIP-AUS v1.3's ``opModStorageTargetW`` against
``csipaus:vppModesSupported`` bit 0. A site that never reported a DERCapability is not flagged: nothing is
known. The head-end still publishes the control; it tells the operator which sites said they cannot apply it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from sep2.xml import from_xml
from server.store import _group_member_sites, der_documents, ders, sites

DOE_BITS = {"opModExpLimW": 0, "opModImpLimW": 1, "opModGenLimW": 2, "opModLoadLimW": 3}
MODE_BITS = {"opModConnect": 2, "opModEnergize": 3, "opModFixedW": 7, "opModMaxLimW": 20, "opModTargetW": 22}
VPP_BITS = {"opModStorageTargetW": 0}  # CSIP-AUS v1.3 csipaus:vppModesSupported
#: At most this many sites' capabilities are read when a control is created (a broadcast to a large fleet
#: reports how many it checked).
CHECK_LIMIT = 10_000


def _bits(hex_text: str | None) -> int | None:
    try:
        return int(hex_text, 16) if hex_text else None
    except ValueError:
        return None


def combined(caps: list[r.DERCapability]) -> r.DERCapability | None:
    """A site with several DERs (issue 16 item 3) can do what any of them can: the union of their mode
    bits (None when none reported a DERCapability)."""
    if not caps:
        return None
    if len(caps) == 1:
        return caps[0]
    doe = modes = 0
    for cap in caps:
        doe |= _bits(cap.doeModesSupported) or 0
        modes |= _bits(cap.modesSupported) or 0
    return r.DERCapability(modesSupported=f"{modes:08X}", doeModesSupported=f"{doe:02X}", type=caps[0].type)


def unsupported_modes(base: r.DERControlBase, cap: r.DERCapability | None) -> list[str]:
    """The fields ``base`` sets that ``cap`` says the DER does not support ([] when cap is None)."""
    if cap is None:
        return []
    out = []
    for bits, field in ((DOE_BITS, "doeModesSupported"), (MODE_BITS, "modesSupported"),
                        (VPP_BITS, "vppModesSupported")):  # fmt: skip
        supported = _bits(getattr(cap, field, None)) or 0
        out += [name for name, bit in bits.items() if getattr(base, name, None) is not None
                and not supported >> bit & 1]  # fmt: skip
    return out


async def unsupported_by_target(
    conn: AsyncConnection, target_key: str, base: r.DERControlBase
) -> dict[str, Any]:
    """{"checked": n, "sites": [{"lfdi", "modes"}]} for the sites of ``target_key`` ("all"/"g:N"/"s:N")."""
    query = (
        sa.select(sites.c.id, sites.c.lfdi, der_documents.c.xml)
        .join(ders, ders.c.site_id == sites.c.id)
        .join(der_documents, sa.and_(der_documents.c.der_id == ders.c.id, der_documents.c.kind == "dercap"))
    )
    if target_key.startswith("s:"):
        query = query.where(sites.c.id == int(target_key[2:]))
    elif target_key.startswith("g:"):
        query = query.where(sites.c.id.in_(_group_member_sites(int(target_key[2:]))))
    elif target_key.startswith("d:"):  # one DER alone: its own capability
        query = query.where(ders.c.id == int(target_key[2:]))
    rows = (await conn.execute(query.order_by(sites.c.id, ders.c.id).limit(CHECK_LIMIT + 1))).all()
    if len(rows) > CHECK_LIMIT:  # the last site may have more DERs than were read: not checked
        rows = [row for row in rows if row.id != rows[-1].id]
    by_site: dict[str, list[r.DERCapability]] = {}
    for row in rows:  # one row per DER
        by_site.setdefault(row.lfdi, []).append(from_xml(row.xml.encode(), r.DERCapability))
    flagged = []
    for lfdi, caps in by_site.items():
        modes = unsupported_modes(base, combined(caps))
        if modes:
            flagged.append({"lfdi": lfdi, "modes": modes})
    return {"checked": len(by_site), "sites": flagged}
