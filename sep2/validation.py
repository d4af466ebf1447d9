"""pydantic validation errors as one line that names the field, shared by every configuration file and
request body (``device[1].port: expected an integer, got '502'``)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "int_type": "expected an integer, got {input!r}",
    "int_from_float": "expected an integer, got {input!r}",
    "float_type": "expected a number, got {input!r}",
    "finite_number": "expected a finite number, got {input!r}",
    "bool_type": "expected true or false, got {input!r}",
    "string_type": "expected a string, got {input!r}",
    "list_type": "expected an array, got {input!r}",
    "dict_type": "expected a table, got {input!r}",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "greater_than_equal": "must be >= {ge}, got {input}",
    "greater_than": "must be > {gt}, got {input}",
    "less_than_equal": "must be <= {le}, got {input}",
    "less_than": "must be < {lt}, got {input}",
    "literal_error": "must be one of {expected}, got {input!r}",
    "string_too_short": "must not be empty",
    "string_too_long": "at most {max_length} characters",
    "too_short": "needs at least {min_length} entries, got {actual_length}",
    "too_long": "at most {max_length} entries, got {actual_length}",
}


class FieldError(ValueError):
    """Raised by a validator to name a part below the value it checks (``headend_tokens[1].name``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def location(loc: tuple[Any, ...]) -> str:
    """``("device", 1, "port")`` as ``device[1].port``; a mapping key's own check reads as its key."""
    parts = [p for p in loc if p != "[key]"]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def first_error(exc: ValidationError, messages: dict[str, str] | None = None) -> tuple[str, str]:
    """The first problem as (where, what): ``("device[1].port", "expected an integer, got '502'")``."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        return location(loc + cause.loc), str(cause)
    template = {**MESSAGES, **(messages or {})}.get(error["type"])
    if template is None:  # a validator's own ValueError, or a message pydantic words well enough
        message = str(cause) if cause is not None else error["msg"]
    else:
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
        message = template.format(input=error.get("input"), **ctx)
    return location(loc), message


def describe(exc: ValidationError, messages: dict[str, str] | None = None) -> str:
    where, message = first_error(exc, messages)
    return f"{where}: {message}" if where else message
