"""Schedule semantics of the server, pure: live statuses, splitting, and what applied when.

One place for three facts that the 2030.5 documents, the head-end API, the CLI and the compliance service
all need, so they can never disagree:

* **Status.** A control row (``controls`` table, or a DOE interval shaped like one) has a 2030.5
  ``EventStatus.currentStatus`` (IEEE 2030.5-2018 Table 26: 0 scheduled, 1 active, 2 cancelled,
  3 cancelled with randomisation, 4 superseded) and an operator status that adds what 2030.5 leaves to the
  client: ``completed`` (its end has passed) and ``partly superseded`` (a later control replaced part of it
  and the server republished the rest as pieces, see below).
* **Splitting.** A new control replaces earlier controls of its program and target only over its own time
  span (mission: "an operator's 90-second step never removes the hour around it"). 2030.5 events are
  immutable once published (§12.1.3), so an earlier control ``A`` overlapped by ``B`` is marked superseded
  and what is left of it, ``A`` minus ``B``, is published as new events (pieces) with the same settings.
  :func:`remainders` computes those pieces.
* **What applied.** A published control applied at instant ``t`` when ``start <= t < end`` and it was
  published (``creation_time <= t``) and not yet retired (cancelled or superseded). :func:`paint` turns a
  set of such windows into the non-overlapping timeline "at each instant, the newest one wins".
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

SCHEDULED, ACTIVE, CANCELLED, CANCELLED_RANDOM, SUPERSEDED = 0, 1, 2, 3, 4
STATUS_NAMES = {
    SCHEDULED: "scheduled",
    ACTIVE: "active",
    CANCELLED: "cancelled",
    CANCELLED_RANDOM: "cancelled",
    SUPERSEDED: "superseded",
}
# Operator statuses, in the order the CLI explains them.
OPERATOR_STATUSES = ("scheduled", "active", "completed", "cancelled", "superseded", "partly superseded")

T = TypeVar("T")


def event_status(row: Any, now: int) -> tuple[int, int]:
    """(currentStatus, dateTime) of a control row at ``now`` (2030.5 EventStatus).

    A cancelled control with randomisation is 3 (§12.1.3.2: the client spreads its end); a completed one
    keeps 1/0 semantics out of the list because lists only carry events ending after ``now``.
    """
    if row.cancelled_at is not None:
        return (
            CANCELLED_RANDOM if row.randomize_start or row.randomize_duration else CANCELLED
        ), row.cancelled_at
    if row.superseded_at is not None:
        return SUPERSEDED, row.superseded_at
    if row.start <= now < row.start + row.duration:
        return ACTIVE, row.start
    return SCHEDULED, row.creation_time


def operator_status(row: Any, now: int, *, live_pieces: int = 0) -> str:
    """The status an operator sees. ``live_pieces``: how many pieces of this control are still published
    (not retired) after it was split by a later control."""
    if row.cancelled_at is not None:
        return "cancelled"
    if row.superseded_at is not None:
        return "partly superseded" if live_pieces else "superseded"
    if now < row.start:
        return "scheduled"
    if now < row.start + row.duration:
        return "active"
    return "completed"


def remainders(start: int, end: int, cut_start: int, cut_end: int, *, now: int) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` outside ``[cut_start, cut_end)`` that still end after ``now``.

    A part that has already ended is history: the original control covered it while it was published, so
    republishing it would only earn a 253 (expired) Response.
    """
    out = []
    if start < cut_start:
        out.append((start, min(end, cut_start)))
    if cut_end < end:
        out.append((max(start, cut_end), end))
    return [(a, b) for a, b in out if b > now and b > a]


@dataclass(frozen=True, slots=True)
class Window(Generic[T]):
    """An item that applied over ``[start, end)`` from ``published`` until ``retired`` (None: never).

    ``rank`` orders overlapping items: the higher one wins (newer publication)."""

    start: int
    end: int
    published: int
    retired: int | None
    rank: tuple[Any, ...]
    item: T

    @property
    def applies_from(self) -> int:
        return max(self.start, self.published)

    @property
    def applies_to(self) -> int:
        return self.end if self.retired is None else min(self.end, self.retired)


@dataclass(frozen=True, slots=True)
class Piece(Generic[T]):
    start: int
    end: int
    item: T


def paint(
    windows: Iterable[Window[T]], *, since: int | None = None, until: int | None = None
) -> list[Piece[T]]:
    """The timeline of which window applied when: non-overlapping pieces, sorted, adjacent pieces of the same
    item merged. An instant where nothing applied has no piece."""
    lo = since if since is not None else -(2**63)
    hi = until if until is not None else 2**63
    items = []
    for w in windows:
        a = w.start if w.start > w.published else w.published
        b = w.end if w.retired is None or w.retired > w.end else w.retired
        a, b = (a if a > lo else lo), (b if b < hi else hi)
        if a < b:
            items.append((a, b, w.rank, w.item))
    items.sort(key=lambda x: x[0])
    out: list[Piece[T]] = []
    # The common case (a day-ahead DOE): nothing overlaps, every window is a piece.
    if all(items[i][1] <= items[i + 1][0] for i in range(len(items) - 1)):
        for a, b, _rank, item in items:
            if out and out[-1].end == a and out[-1].item is item:
                out[-1] = Piece(out[-1].start, b, item)
            else:
                out.append(Piece(a, b, item))
        return out
    bounds = sorted({t for a, b, _r, _i in items for t in (a, b)})
    heap: list[tuple[Any, int]] = []  # (negated rank, index): the top is the highest-ranked live window
    i = 0
    for a, b in itertools.pairwise(bounds):
        while i < len(items) and items[i][0] <= a:
            heapq.heappush(heap, (_Neg(items[i][2]), i))
            i += 1
        while heap and items[heap[0][1]][1] <= a:
            heapq.heappop(heap)
        if not heap:
            continue
        item = items[heap[0][1]][3]
        if out and out[-1].end == a and out[-1].item is item:
            out[-1] = Piece(out[-1].start, b, item)
        else:
            out.append(Piece(a, b, item))
    return out


class _Neg:
    """Reverses the order of a rank, so heapq (a min-heap) yields the highest rank first."""

    __slots__ = ("rank",)

    def __init__(self, rank: Any) -> None:
        self.rank = rank

    def __lt__(self, other: _Neg) -> bool:
        return self.rank > other.rank

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Neg) and self.rank == other.rank

    __hash__ = None  # type: ignore[assignment]


def value_at(pieces: Sequence[Piece[T]], t: int) -> T | None:
    """The item that applied at ``t`` (pieces as returned by :func:`paint`)."""
    lo, hi = 0, len(pieces)
    while lo < hi:
        mid = (lo + hi) // 2
        if pieces[mid].end <= t:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(pieces) and pieces[lo].start <= t:
        return pieces[lo].item
    return None
