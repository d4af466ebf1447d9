"""2030.5 time: signed seconds since the Unix epoch (TimeType), UTC."""

from __future__ import annotations

import time as _time

from sep2.resources import Time

# Time.quality: 3 = intermediate (synchronised to a higher-level source), 7 = uncertain/none.
QUALITY_INTERMEDIATE = 3


def now() -> int:
    return int(_time.time())


def time_resource(
    current: int, *, href: str = "/tm", tz_offset: int = 0, poll_rate: int | None = None
) -> Time:
    """A Time resource for UTC-based sites with no daylight saving (dst fields zero)."""
    return Time(
        href=href,
        pollRate=poll_rate,
        currentTime=current,
        dstEndTime=0,
        dstOffset=0,
        dstStartTime=0,
        localTime=current + tz_offset,
        quality=QUALITY_INTERMEDIATE,
        tzOffset=tz_offset,
    )


def server_offset(server_current_time: int, local_now: float) -> float:
    """Seconds to add to local time to get the server's time."""
    return server_current_time - local_now
