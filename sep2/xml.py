"""XML encoding and hardened decoding of 2030.5 resources (lxml).

Decoding refuses anything a conforming schema validator would refuse for the types we model — unknown or
out-of-order elements, missing required fields, out-of-range numbers, bad hex, over-long strings, wrong
namespaces — and, before parsing, DTDs/entities and oversized documents. Errors name the offending field.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from sep2 import resources  # noqa: F401  (registers every resource class)
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

MAX_DOCUMENT_BYTES = 256 * 1024
CONTENT_TYPE = "application/sep+xml"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XSI_TYPE = f"{{{NS_XSI}}}type"
_NSMAP = {None: NS_SEP, "csipaus": NS_CSIP}
# The CSIP-AUS v1.3-beta storage schema declares the csipaus elements in a namespace of its own; peers
# built on it (e.g. the Synergy fork of the cactus test definitions) send them there. We read that
# namespace as the CSIP-AUS one and always write the CSIP-AUS namespace (as envoy does).
NS_CSIP_V13_STORAGE = "https://csipaus.org/ns/v1.3-beta/storage"
_READ_AS = {NS_CSIP_V13_STORAGE: NS_CSIP}
_NOTIFICATION_NSMAP = {**_NSMAP, "xsi": NS_XSI}

_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})*$")
# IEEE 2030.5-2023 clients put schemaVer on the root element; 2018 has no such attribute. We accept and
# ignore it there so newer clients interoperate, and never write it.
_SCHEMA_VERSION = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){0,3}$")


class Sep2XmlError(ValueError):
    """A document that is not a well-formed, valid 2030.5 resource. ``path`` locates the field."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# ------------------------------------------------------------------------------------------------ encoding


def to_xml(resource: Sep2Object) -> bytes:
    """Encode a resource as a UTF-8 document with its global element as root.

    Written as text by :func:`_fast_encode` (the byte-for-byte output of :func:`to_xml_lxml`, five to ten
    times faster: a 50-control list was the largest cost of an uncached GET); documents the fast writer does
    not handle (an ``xsi:type``, a character XML cannot hold) go through lxml, which also raises its errors.
    """
    cls = type(resource)
    tag = f"csipaus:{cls.__name__}" if cls.xml_namespace == NS_CSIP else cls.__name__
    parts: list[str] = []
    try:
        head = _NOTIFICATION_NS if cls.__name__ == "Notification" else _ROOT_NS
        _fast_encode(parts, resource, tag, head, cls.__name__)
    except _Fallback:
        return to_xml_lxml(resource)
    return "".join(parts).encode()


def to_xml_lxml(resource: Sep2Object) -> bytes:
    """The reference encoder (lxml tree, then serialised)."""
    cls = type(resource)
    nsmap = _NOTIFICATION_NSMAP if cls.__name__ == "Notification" else _NSMAP
    root = etree.Element(f"{{{cls.xml_namespace}}}{cls.__name__}", nsmap=nsmap)
    _encode_into(root, resource, cls.__name__)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def _encode_into(node: etree._Element, obj: Sep2Object, path: str) -> None:
    for spec in type(obj).field_specs():
        value = getattr(obj, spec.name)
        if value is None or (spec.repeated and not value):
            if spec.required:
                raise Sep2XmlError("required field is missing", f"{path}/{spec.name}")
            continue
        if spec.is_attribute:
            node.set(spec.name, _format_simple(spec, value, f"{path}@{spec.name}"))
            continue
        tag = f"{{{spec.namespace}}}{spec.name}"
        for item in value if spec.repeated else (value,):
            child = etree.SubElement(node, tag)
            child_path = f"{path}/{spec.name}"
            if spec.is_simple:
                child.text = _format_simple(spec, item, child_path)
            else:
                if not isinstance(item, Sep2Object):
                    raise Sep2XmlError(f"expected a {spec.xsd_type}, got {type(item).__name__}", child_path)
                if type(item).__name__ != spec.xsd_type:
                    child.set(_XSI_TYPE, type(item).__name__)
                _encode_into(child, item, child_path)


class _Fallback(Exception):
    """The fast writer cannot produce this document exactly as lxml would: use lxml."""


_ROOT_NS = f' xmlns="{NS_SEP}" xmlns:csipaus="{NS_CSIP}"'
_NOTIFICATION_NS = f'{_ROOT_NS} xmlns:xsi="{NS_XSI}"'
# A character to escape (text or attribute) or one XML cannot hold: such text takes the slow path.
_SPECIAL = re.compile('[&<>"\\r\\n\\t]|[^\\x20-\\ud7ff\\ue000-\\ufffd\\U00010000-\\U0010ffff]')
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# How the fast writer formats each simple type: int, bool, hex (no escaping needed once valid), text.
_INT, _BOOL, _HEXT, _TEXT = 0, 1, 2, 3
# (name, attribute?, kind, low/max, high, xml tag, xsd type, spec) per field, by class.
_Plan = list[tuple[str, bool, int, int, int, str, str, FieldSpec]]
_PLANS: dict[type, _Plan] = {}


def _plan(cls: type[Sep2Object]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = []
        for spec in cls.field_specs():
            low = high = 0
            t = spec.xsd_type
            if t in INTEGER_RANGES:
                kind = _INT
                low, high = INTEGER_RANGES[t]
            elif t == "boolean":
                kind = _BOOL
            elif t in HEX_MAX_BYTES:
                kind, high = _HEXT, HEX_MAX_BYTES[t]
            elif t in STRING_MAX_CHARS or t == "anyURI":
                kind, high = _TEXT, STRING_MAX_CHARS.get(t, -1)
            else:
                kind = -1  # a complex type
            tag = f"csipaus:{spec.name}" if spec.namespace == NS_CSIP else spec.name
            plan.append((spec.name, spec.is_attribute, kind, low, high, tag, t, spec))
        _PLANS[cls] = plan
    return plan


def _fast_text(spec: FieldSpec, kind: int, low: int, high: int, value: Any, path: str, attr: bool) -> str:
    """A simple value as escaped XML text, checked as :func:`_check_simple` checks it."""
    if kind == _INT:
        if type(value) is int and low <= value <= high:
            return str(value)
    elif kind == _BOOL:
        if value is True:
            return "true"
        if value is False:
            return "false"
    elif kind == _HEXT:
        if type(value) is str and len(value) // 2 <= high and _HEX.match(value):
            return value
    elif type(value) is str and (high < 0 or len(value) <= high):
        if _NOT_XML.search(value):
            raise _Fallback
        if "&" in value:
            value = value.replace("&", "&amp;")
        if "<" in value:
            value = value.replace("<", "&lt;")
        if ">" in value:
            value = value.replace(">", "&gt;")
        if "\r" in value:
            value = value.replace("\r", "&#13;")
        if attr:
            if '"' in value:
                value = value.replace('"', "&quot;")
            if "\n" in value:
                value = value.replace("\n", "&#10;")
            if "\t" in value:
                value = value.replace("\t", "&#9;")
        return value
    _check_simple(spec.xsd_type, value, path)  # raises the error the lxml encoder raises
    raise _Fallback  # (not reached for a value the checks refuse)


def _fast_encode(out: list[str], obj: Sep2Object, tag: str, head: str, path: str) -> None:
    """Append ``obj`` as element ``tag`` to ``out`` (the bytes, checks and errors of :func:`_encode_into`);
    ``head``: namespace declarations of the root. Each class gets a writer of its own (:func:`_writer`)."""
    writer = _WRITERS.get(type(obj))
    if writer is None:
        writer = _WRITERS[type(obj)] = _writer(type(obj))
    writer(out, obj, tag, head, path)


_WRITERS: dict[type, Any] = {}


def _writer(cls: type[Sep2Object]) -> Any:
    """Generate the writer of one class: its fields unrolled, integers, booleans and plain text formatted
    inline, and child objects of their declared class written inline too (a few levels deep): the generic
    loop over field specs, and a call per child, cost more than the text itself."""
    env: dict[str, Any] = {"_ft": _fast_text, "_enc": _fast_encode, "Sep2XmlError": Sep2XmlError}
    env.update(Sep2Object=Sep2Object, _Fallback=_Fallback, _hex=_HEX.match, _special=_SPECIAL.search)
    code = ["def write(out, o0, tag, head, path):"]
    _emit(cls, 0, "tag", "head", "path", "    ", code, env, 3)
    exec(compile("\n".join(code), f"<sep2 writer {cls.__name__}>", "exec"), env)
    return env["write"]


def _emit(
    cls: type[Sep2Object],
    d: int,
    tag: str,
    head: str,
    path: str,
    ind: str,
    code: list[str],
    env: dict[str, Any],
    inline: int,
) -> None:
    """Append the code writing object ``o<d>`` of ``cls`` as element ``tag`` (expressions: ``tag``, ``head``,
    ``path``, the last evaluated only for errors and children written by :func:`_fast_encode`)."""
    o, at, attrs, kids, v = f"o{d}", f"at{d}", f"attrs{d}", f"kids{d}", f"v{d}"
    code += [
        f"{ind}{at} = len(out)",
        f"{ind}out.append('')",
        f"{ind}{attrs} = {head}",
        f"{ind}{kids} = False",
    ]
    for name, is_attr, kind, low, high, field_tag, xsd_type, spec in _plan(cls):
        key = f"S{len(env)}"
        env[key] = spec
        empty = f"not {v}" if spec.repeated else f"{v} is None"
        code.append(f"{ind}{v} = {o}.{name}")
        if spec.required:
            code.append(
                f"{ind}if {empty}: raise Sep2XmlError('required field is missing', {path} + '/{name}')"
            )
        code.append(f"{ind}if not ({empty}):")
        inner = ind + "    "
        where = f"{path} + '@{name}'" if is_attr else f"{path} + '/{name}'"
        slow = f"_ft({key}, {kind}, {low}, {high}, {v}, {where}, {is_attr})"
        if kind == _INT:
            text = f"(str({v}) if type({v}) is int and {low} <= {v} <= {high} else {slow})"
        elif kind == _BOOL:
            text = f"('true' if {v} is True else 'false' if {v} is False else {slow})"
        elif kind == _HEXT:
            text = f"({v} if type({v}) is str and len({v}) <= {2 * high + 1} and _hex({v}) else {slow})"
        else:  # text that needs no escaping is written as it is
            fits = "" if high < 0 else f" and len({v}) <= {high}"
            text = f"({v} if type({v}) is str{fits} and not _special({v}) else {slow})"
        if is_attr:
            code.append(f"{inner}{attrs} += ' {name}=\"' + {text} + '\"'")
            continue
        code.append(f"{inner}{kids} = True")
        if spec.repeated:
            code.append(f"{inner}for {v} in {v}:")
            inner += "    "
        if kind >= 0:
            code.append(f"{inner}out.append('<{field_tag}>' + {text} + '</{field_tag}>')")
            continue
        child = REGISTRY.get(xsd_type)
        ckey = f"C{len(env)}"
        env[ckey] = child
        generic = [
            f"if not isinstance({v}, Sep2Object):",
            f"    got = type({v}).__name__",
            f"    raise Sep2XmlError('expected a {xsd_type}, got ' + got, {path} + '/{name}')",
            f"if type({v}).__name__ != '{xsd_type}':",
            "    raise _Fallback  # an xsi:type",
            f"_enc(out, {v}, '{field_tag}', '', {path} + '/{name}')",
        ]
        if inline > 0 and child is not None and child is not cls:
            code.append(f"{inner}if type({v}) is {ckey}:")
            code.append(f"{inner}    o{d + 1} = {v}")
            _emit(
                child,
                d + 1,
                repr(field_tag),
                "''",
                f"{path} + '/{name}'",
                inner + "    ",
                code,
                env,
                inline - 1,
            )
            code.append(f"{inner}else:")
            code += [f"{inner}    {line}" for line in generic]
        else:
            code += [f"{inner}{line}" for line in generic]
    code += [
        f"{ind}if {kids}:",
        f"{ind}    out[{at}] = '<' + {tag} + {attrs} + '>'",
        f"{ind}    out.append('</' + {tag} + '>')",
        f"{ind}else:",
        f"{ind}    out[{at}] = '<' + {tag} + {attrs} + '/>'",
    ]


def _format_simple(spec: FieldSpec, value: Any, path: str) -> str:
    _check_simple(spec.xsd_type, value, path)
    if spec.xsd_type == "boolean":
        return "true" if value else "false"
    return str(value)


def _check_simple(xsd_type: str, value: Any, path: str) -> None:
    if xsd_type in INTEGER_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Sep2XmlError(f"expected an integer ({xsd_type}), got {value!r}", path)
        low, high = INTEGER_RANGES[xsd_type]
        if not low <= value <= high:
            raise Sep2XmlError(f"{value} is outside the {xsd_type} range {low}..{high}", path)
    elif xsd_type in HEX_MAX_BYTES:
        if not isinstance(value, str) or not _HEX.match(value):
            raise Sep2XmlError(f"expected hexadecimal octets ({xsd_type}), got {value!r}", path)
        if len(value) // 2 > HEX_MAX_BYTES[xsd_type]:
            raise Sep2XmlError(f"longer than {HEX_MAX_BYTES[xsd_type]} octets ({xsd_type})", path)
    elif xsd_type in STRING_MAX_CHARS:
        if not isinstance(value, str):
            raise Sep2XmlError(f"expected text, got {value!r}", path)
        if len(value) > STRING_MAX_CHARS[xsd_type]:
            raise Sep2XmlError(f"longer than {STRING_MAX_CHARS[xsd_type]} characters ({xsd_type})", path)
    elif xsd_type == "boolean":
        if not isinstance(value, bool):
            raise Sep2XmlError(f"expected true or false, got {value!r}", path)
    elif xsd_type == "anyURI" and not isinstance(value, str):
        raise Sep2XmlError(f"expected a URI, got {value!r}", path)


# ------------------------------------------------------------------------------------------------ decoding

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)


def parse_document(data: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> etree._Element:
    """Parse untrusted bytes into an element tree, refusing DTDs, entities and oversized input."""
    if len(data) > max_bytes:
        raise Sep2XmlError(f"document is {len(data)} bytes; the limit is {max_bytes}")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise Sep2XmlError("DTDs and entity declarations are not allowed")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise Sep2XmlError(f"malformed XML: {exc}") from None
    if root is None:
        raise Sep2XmlError("empty document")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise Sep2XmlError("DTDs and entity declarations are not allowed")
    return root


def from_xml(
    data: bytes,
    expected: type[Sep2Object] | tuple[type[Sep2Object], ...] | None = None,
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> Any:
    """Decode a document into its resource object; raise Sep2XmlError on anything invalid."""
    root = parse_document(data, max_bytes=max_bytes)
    qname = etree.QName(root)
    cls = REGISTRY.get(qname.localname)
    if cls is None or not cls.is_root:
        raise Sep2XmlError(f"unknown root element {qname.localname!r}")
    if _READ_AS.get(qname.namespace, qname.namespace) != cls.xml_namespace:
        raise Sep2XmlError(
            f"root element {qname.localname!r} must be in namespace {cls.xml_namespace!r}, "
            f"not {qname.namespace!r}"
        )
    if expected is not None and not issubclass(cls, expected):
        names = ", ".join(c.__name__ for c in (expected if isinstance(expected, tuple) else (expected,)))
        raise Sep2XmlError(f"expected {names}, got {cls.__name__}")
    schema_version = root.attrib.pop("schemaVer", None)
    if schema_version is not None and not _SCHEMA_VERSION.match(schema_version):
        raise Sep2XmlError(f"schemaVer must look like 2.1, got {schema_version!r}", cls.__name__)
    return _decode(root, cls, cls.__name__)


def _decode(node: etree._Element, cls: type[Sep2Object], path: str) -> Sep2Object:
    specs = cls.field_specs()
    values: dict[str, Any] = {}
    attribute_specs = {s.name: s for s in specs if s.is_attribute}
    for name, raw in node.attrib.items():
        if name.startswith(f"{{{NS_XSI}}}"):
            continue
        spec = attribute_specs.get(name)
        if spec is None:
            raise Sep2XmlError(f"unexpected attribute {name!r}", path)
        values[name] = _parse_simple(spec.xsd_type, raw, f"{path}@{name}")
    if node.text and node.text.strip():
        raise Sep2XmlError("unexpected text content", path)

    element_specs = [s for s in specs if not s.is_attribute]
    position = 0
    for child in node:
        child_name = etree.QName(child)
        child_ns = _READ_AS.get(child_name.namespace, child_name.namespace)
        child_path = f"{path}/{child_name.localname}"
        if child.tail and child.tail.strip():
            raise Sep2XmlError("unexpected text content", path)
        index = position
        while index < len(element_specs) and not (
            element_specs[index].name == child_name.localname and element_specs[index].namespace == child_ns
        ):
            index += 1
        if index == len(element_specs):
            known = any(s.name == child_name.localname for s in element_specs)
            reason = "out of order or repeated" if known else "unexpected element"
            raise Sep2XmlError(f"{reason} {{{child_name.namespace}}}{child_name.localname}", child_path)
        spec = element_specs[index]
        if not spec.repeated and spec.name in values:
            raise Sep2XmlError("element may occur only once", child_path)
        position = index if spec.repeated else index + 1
        if spec.is_simple:
            if len(child):
                raise Sep2XmlError("expected a simple value, found child elements", child_path)
            value = _parse_simple(spec.xsd_type, child.text or "", child_path)
        else:
            value = _decode(child, _child_class(child, spec, child_path), child_path)
        if spec.repeated:
            values.setdefault(spec.name, []).append(value)
        else:
            values[spec.name] = value

    for spec in specs:
        if spec.values is not None and spec.name in values and values[spec.name] not in spec.values:
            raise Sep2XmlError(f"{values[spec.name]} is a reserved value", f"{path}/{spec.name}")
        if spec.required and spec.required_on_read and spec.name not in values:
            kind = "attribute" if spec.is_attribute else "element"
            raise Sep2XmlError(f"required {kind} {spec.name!r} is missing", path)
    return cls(**values)


def _child_class(child: etree._Element, spec: FieldSpec, path: str) -> type[Sep2Object]:
    declared = REGISTRY[spec.xsd_type] if spec.xsd_type != "Resource" else REGISTRY["Resource"]
    xsi_type = child.get(_XSI_TYPE)
    if xsi_type is None:
        return declared
    local = xsi_type.split(":", 1)[-1]
    actual = REGISTRY.get(local)
    if actual is None or not issubclass(actual, declared) or not actual.is_root:
        raise Sep2XmlError(f"xsi:type {xsi_type!r} is not a {declared.__name__}", path)
    return actual


def _parse_simple(xsd_type: str, raw: str, path: str) -> Any:
    text = raw.strip()
    if xsd_type in INTEGER_RANGES:
        if not _INTEGER.match(text):
            raise Sep2XmlError(f"expected an integer ({xsd_type}), got {raw[:40]!r}", path)
        if len(text.lstrip("+-").lstrip("0")) > 20:  # no 2030.5 integer type has more digits than this
            low, high = INTEGER_RANGES[xsd_type]
            raise Sep2XmlError(f"{text[:20]}... is outside the {xsd_type} range {low}..{high}", path)
        value: Any = int(text)
    elif xsd_type == "boolean":
        if text in ("true", "1"):
            value = True
        elif text in ("false", "0"):
            value = False
        else:
            raise Sep2XmlError(f"expected true or false, got {raw!r}", path)
    elif xsd_type in HEX_MAX_BYTES:
        value = text
    else:
        value = raw if xsd_type in STRING_MAX_CHARS else text
    _check_simple(xsd_type, value, path)
    return value
