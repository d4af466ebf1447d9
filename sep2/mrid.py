"""Master resource identifiers: 128 bits, with the owner's IANA Private Enterprise Number in the low 32 bits
(IEEE 2030.5 §6.3.2 / B.2)."""

from __future__ import annotations

import secrets

DEFAULT_PEN = 0  # operators configure their own IANA PEN


def new_mrid(pen: int = DEFAULT_PEN) -> str:
    """A fresh random mRID (32 upper-case hex digits) ending in ``pen``."""
    if not 0 <= pen < 2**32:
        raise ValueError(f"IANA PEN must fit in 32 bits, got {pen}")
    return f"{secrets.randbits(96):024X}{pen:08X}"


def mrid_pen(mrid: str) -> int:
    """The PEN carried in an mRID's low 32 bits."""
    return int(mrid[-8:], 16)


def derived_mrid(pen: int, *parts: object) -> str:
    """A stable mRID for a thing named by ``parts`` (e.g. a site's MirrorUsagePoint), so restarts reuse it."""
    import hashlib

    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:24].upper()
    return f"{digest}{pen:08X}"
