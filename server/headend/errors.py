"""Head-end request errors and the authenticated operator (shared by the API and the console)."""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import ApiError


class HeadEndError(ApiError):
    """A head-end request error; ``field`` names what was wrong."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.field = field


def bad(detail: str) -> HeadEndError:
    field = detail.split(":", 1)[0] if ":" in detail else None
    return HeadEndError(400, detail, field if field and " " not in field else None)


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "operator"
