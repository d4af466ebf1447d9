"""derlink's own XSD for the CSIP-AUS profile it speaks, and a validator built on xmlschema.

The schema files beside this module are generated from ``sep2.resources`` (see ``xsd.generate``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import xmlschema

SCHEMA_DIR = Path(__file__).parent
SEP_SCHEMA = SCHEMA_DIR / "derlink-sep.xsd"
CSIP_SCHEMA = SCHEMA_DIR / "derlink-csipaus.xsd"


class XsdValidationError(ValueError):
    """A document our profile schema does not accept."""


@cache
def schema() -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10([str(SEP_SCHEMA), str(CSIP_SCHEMA)])


def validate(document: bytes | str) -> None:
    """Raise XsdValidationError naming the first problem if ``document`` is not valid in our profile."""
    if isinstance(document, bytes):
        document = document.decode("utf-8")
    error = next(iter(schema().iter_errors(document)), None)
    if error is not None:
        path = f" at {error.path}" if getattr(error, "path", None) else ""
        raise XsdValidationError(f"{error.reason}{path}")


def is_valid(document: bytes | str) -> bool:
    try:
        validate(document)
    except XsdValidationError:
        return False
    return True
