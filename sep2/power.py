"""2030.5 power-of-ten quantities: an amount is ``value × 10^multiplier``."""

from __future__ import annotations

from sep2.base import INTEGER_RANGES

# Multipliers we choose from when encoding; 2030.5 defines -9..9 but milli to giga covers every DER need.
MULTIPLIER_RANGE = range(-3, 10)


def encode_power_of_ten(amount: float, value_type: str = "Int16") -> tuple[int, int]:
    """Return (value, multiplier) for ``amount`` with the value inside ``value_type``'s range.

    An exact encoding is preferred (multiplier 0 when possible); otherwise the finest multiplier that fits,
    rounding to it. Raises ValueError when no multiplier can carry the amount.
    """
    low, high = INTEGER_RANGES[value_type]
    if amount != amount or amount in (float("inf"), float("-inf")):
        raise ValueError(f"{amount!r} is not a finite number")

    def scaled(multiplier: int) -> tuple[int, float]:
        exact = amount / 10.0**multiplier
        return round(exact), exact

    # Exact first, preferring multiplier 0, then fractional precision, then coarser steps.
    for multiplier in (0, -1, -2, -3, *range(1, MULTIPLIER_RANGE.stop)):
        value, _ = scaled(multiplier)
        if low <= value <= high and abs(value * 10.0**multiplier - amount) <= 1e-9 * max(1.0, abs(amount)):
            return value, multiplier
    # Otherwise the finest multiplier that still fits, rounding to it.
    for multiplier in MULTIPLIER_RANGE:
        value, _ = scaled(multiplier)
        if low <= value <= high:
            return value, multiplier
    raise ValueError(
        f"{amount} cannot be expressed as a {value_type} value × 10^multiplier "
        f"(multiplier {MULTIPLIER_RANGE.start}..{MULTIPLIER_RANGE.stop - 1})"
    )


def decode_power_of_ten(value: int, multiplier: int) -> float:
    return float(value) * 10.0**multiplier
