"""Per-client quotas on what one client can make the server store (configurable in ``[server]``).

Over a quota the request is refused with ``409`` and a 2030.5 ``Error`` (reasonCode 2, resource limit
reached) and nothing is stored; other sites are not affected. A repeated Response (same site, event and
status) is the same Response: it is not stored again and counts once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from server.errors import RESOURCE_LIMIT, ApiError


class QuotaExceeded(ApiError):
    status = 409
    default_reason = RESOURCE_LIMIT


@dataclass(frozen=True)
class Quotas:
    mups_per_site: int = 16
    readings_per_request: int = 1000
    subscriptions_per_site: int = 32
    responses_per_event: int = 16

    @classmethod
    def from_config(cls, config: Any) -> Quotas:
        return cls(
            mups_per_site=config.max_mups_per_site,
            readings_per_request=config.max_readings_per_request,
            subscriptions_per_site=config.max_subscriptions_per_site,
            responses_per_event=config.max_responses_per_event,
        )


def reading_count(mmrs: Iterable[Any]) -> int:
    """Readings carried by MirrorMeterReadings: each Reading, and each Reading of each ReadingSet."""
    return sum(
        (1 if m.Reading is not None else 0) + sum(len(s.Reading) for s in m.MirrorReadingSet) for m in mmrs
    )


def check_readings(quotas: Quotas, mmrs: Iterable[Any], field: str) -> None:
    count = reading_count(mmrs)
    if count > quotas.readings_per_request:
        raise QuotaExceeded(
            f"{field}: {count} readings in one request; at most {quotas.readings_per_request}"
        )
