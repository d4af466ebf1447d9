"""National Metering Identifier (NMI) checks, from AEMO's published NMI rules.

An NMI is exactly 10 characters: digits and upper-case letters, except ``O`` and ``I`` (never used, so
they cannot be confused with 0 and 1). The NMI checksum is a separate 11th character that AEMO defines
over the 10 characters: walking from the rightmost character to the left, the ASCII code of every second
character is doubled (the rightmost one included); the decimal digits of all those values are added up,
and the checksum is the amount that takes the sum to the next multiple of 10.

Installers copy the NMI from a bill or the connection offer, often with the checksum appended (11
characters) and sometimes with spaces. :func:`validate_nmi` accepts either form; when the checksum is
given it must match, which catches most single-character typos and adjacent transpositions.

The server applies the same rules to a csipaus ConnectionPoint (``connectionPointId``) and to the head-end's
NMIs, and compares NMIs by their 10 characters (:func:`nmi_key`), so ``4102000000`` and ``41020000002`` are
the same connection point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALLOWED = re.compile(r"^[0-9A-HJ-NP-Z]+$")  # digits and letters without I and O


class NmiError(ValueError):
    """The NMI is malformed; the message says what is wrong with it."""


def nmi_checksum(nmi: str) -> int:
    """AEMO's checksum digit for a 10-character NMI (upper-case)."""
    if len(nmi) != 10:
        raise NmiError(f"the checksum is defined over 10 characters, got {len(nmi)}")
    total = 0
    for position, char in enumerate(reversed(nmi)):
        value = ord(char) * (2 if position % 2 == 0 else 1)
        total += sum(int(d) for d in str(value))
    return (10 - total % 10) % 10


@dataclass(frozen=True)
class Nmi:
    nmi: str  # the 10 characters (what goes into the ConnectionPoint)
    checksum: int
    checksum_given: bool  # True when the installer entered the 11th character and it matched

    @property
    def with_checksum(self) -> str:
        return f"{self.nmi}{self.checksum}"


def validate_nmi(text: str) -> Nmi:
    """Check an NMI as typed (10 characters, or 11 with the checksum; spaces ignored, case folded).

    Raises NmiError naming the problem.
    """
    if not isinstance(text, str):
        raise NmiError(f"must be text, got {type(text).__name__}")
    cleaned = re.sub(r"\s+", "", text).upper()
    if not cleaned:
        raise NmiError("is empty; it is the 10-character meter identifier on the customer's bill")
    if not _ALLOWED.match(cleaned):
        bad = sorted({c for c in cleaned if not _ALLOWED.match(c)})
        hint = " (NMIs never contain the letters I or O)" if set(bad) & {"I", "O"} else ""
        raise NmiError(f"{text!r} contains {', '.join(repr(c) for c in bad)}: only digits and letters{hint}")
    if len(cleaned) not in (10, 11):
        raise NmiError(
            f"{text!r} has {len(cleaned)} characters; an NMI has 10 (or 11 with its checksum digit)"
        )
    nmi, given = cleaned[:10], cleaned[10:]
    checksum = nmi_checksum(nmi)
    if given:
        if not given.isdigit() or int(given) != checksum:
            raise NmiError(
                f"{text!r}: checksum digit {given!r} does not match {nmi} (expected {checksum}); "
                "a character is probably mistyped"
            )
    return Nmi(nmi=nmi, checksum=checksum, checksum_given=bool(given))


def nmi_key(text: str) -> str:
    """The 10-character NMI that identifies a connection point (validated; the checksum dropped)."""
    return validate_nmi(text).nmi
