"""Write derlink's own XSD for the CSIP-AUS profile from the sep2 model.

The schema is derived from the same field metadata the codec uses, so the model, the encoder, the decoder
and the schema cannot drift apart. Run ``python -m xsd.generate`` after changing ``sep2.resources``; a test
checks that the committed files are current.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from sep2 import resources  # noqa: F401  (registers the resource classes)
from sep2.base import (
    HEX_MAX_BYTES,
    INTEGER_RANGES,
    NS_CSIP,
    NS_SEP,
    REGISTRY,
    STRING_MAX_CHARS,
    FieldSpec,
    Sep2Object,
)

XS = "http://www.w3.org/2001/XMLSchema"
SCHEMA_DIR = Path(__file__).parent
SEP_SCHEMA_FILE = "derlink-sep.xsd"
CSIP_SCHEMA_FILE = "derlink-csipaus.xsd"

_XSD_BUILTIN_FOR_INTEGER = {
    "UInt8": "unsignedByte",
    "UInt16": "unsignedShort",
    "UInt32": "unsignedInt",
    "UInt40": "unsignedLong",
    "UInt48": "unsignedLong",
    "UInt64": "unsignedLong",
    "Int8": "byte",
    "Int16": "short",
    "Int32": "int",
    "Int48": "long",
    "Int64": "long",
}


def _xs(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{XS}}}{tag}", attrs)


def _document(parent: etree._Element, text: str) -> None:
    _xs(_xs(parent, "annotation"), "documentation").text = text


def _type_ref(xsd_type: str, own_ns: str) -> str:
    if xsd_type == "boolean":
        return "xs:boolean"
    if xsd_type == "anyURI":
        return "xs:anyURI"
    return xsd_type if own_ns == NS_SEP else f"sep:{xsd_type}"


def _simple_types(schema: etree._Element) -> None:
    for name, (low, high) in INTEGER_RANGES.items():
        restriction = _xs(
            _xs(schema, "simpleType", name=name), "restriction", base=f"xs:{_XSD_BUILTIN_FOR_INTEGER[name]}"
        )
        if name in ("UInt40", "UInt48", "Int48"):
            _xs(restriction, "minInclusive", value=str(low))
            _xs(restriction, "maxInclusive", value=str(high))
    for name, octets in HEX_MAX_BYTES.items():
        restriction = _xs(_xs(schema, "simpleType", name=name), "restriction", base="xs:hexBinary")
        _xs(restriction, "maxLength", value=str(octets))
    for name, chars in STRING_MAX_CHARS.items():
        restriction = _xs(_xs(schema, "simpleType", name=name), "restriction", base="xs:string")
        _xs(restriction, "maxLength", value=str(chars))


def _add_fields(container: etree._Element, specs: tuple[FieldSpec, ...]) -> None:
    element_specs = [s for s in specs if not s.is_attribute]
    sequence = _xs(container, "sequence") if element_specs else None
    for spec in element_specs:
        occurs = {
            "minOccurs": "1" if spec.required else "0",
            "maxOccurs": "unbounded" if spec.repeated else "1",
        }
        if spec.namespace == NS_CSIP:
            _xs(sequence, "element", ref=f"csipaus:{spec.name}", **occurs)
        else:
            _xs(sequence, "element", name=spec.name, type=_type_ref(spec.xsd_type, NS_SEP), **occurs)
    for spec in specs:
        if spec.is_attribute:
            _xs(
                container,
                "attribute",
                name=spec.name,
                type=_type_ref(spec.xsd_type, NS_SEP),
                use="required" if spec.required else "optional",
            )


def _complex_type(schema: etree._Element, cls: type[Sep2Object]) -> None:
    node = _xs(schema, "complexType", name=cls.__name__)
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        _document(node, " ".join(cls.__doc__.split()))
    base = cls.sep2_base()
    if base is None:
        _add_fields(node, cls.field_specs())
    else:
        extension = _xs(_xs(node, "complexContent"), "extension", base=base.__name__)
        _add_fields(extension, cls.own_field_specs())


def build_schemas() -> dict[str, bytes]:
    """Return {file name: XSD bytes} for the 2030.5 part and the CSIP-AUS part of the profile."""
    sep = etree.Element(
        f"{{{XS}}}schema",
        {"targetNamespace": NS_SEP, "elementFormDefault": "qualified", "version": "derlink-1"},
        nsmap={None: NS_SEP, "xs": XS, "csipaus": NS_CSIP},
    )
    _document(
        sep,
        "derlink's schema of the IEEE 2030.5-2018 resources it exchanges under the CSIP-AUS "
        "profile. Generated from sep2/resources.py by xsd/generate.py; do not edit by hand.",
    )
    _xs(sep, "import", namespace=NS_CSIP, schemaLocation=CSIP_SCHEMA_FILE)
    _simple_types(sep)

    csip = etree.Element(
        f"{{{XS}}}schema",
        {"targetNamespace": NS_CSIP, "elementFormDefault": "qualified", "version": "derlink-1"},
        nsmap={None: NS_CSIP, "xs": XS, "sep": NS_SEP},
    )
    _document(
        csip,
        "derlink's schema of the CSIP-AUS extension elements it exchanges. Generated from "
        "sep2/resources.py by xsd/generate.py; do not edit by hand.",
    )
    _xs(csip, "import", namespace=NS_SEP, schemaLocation=SEP_SCHEMA_FILE)

    csip_elements: dict[str, str] = {}
    classes = sorted(REGISTRY.values(), key=lambda c: c.__name__)
    for cls in classes:
        _complex_type(sep, cls)
        for spec in cls.own_field_specs():
            if spec.namespace == NS_CSIP:
                previous = csip_elements.setdefault(spec.name, spec.xsd_type)
                if previous != spec.xsd_type:
                    raise ValueError(f"csipaus:{spec.name} declared with two types")
    for cls in classes:
        if cls.is_root:
            target = sep if cls.xml_namespace == NS_SEP else csip
            _xs(target, "element", name=cls.__name__, type=_type_ref(cls.__name__, cls.xml_namespace))
    for name, xsd_type in sorted(csip_elements.items()):
        _xs(csip, "element", name=name, type=_type_ref(xsd_type, NS_CSIP))

    def dump(schema: etree._Element) -> bytes:
        return etree.tostring(schema, pretty_print=True, xml_declaration=True, encoding="UTF-8")

    return {SEP_SCHEMA_FILE: dump(sep), CSIP_SCHEMA_FILE: dump(csip)}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    written = []
    for name, content in build_schemas().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        print(path)
