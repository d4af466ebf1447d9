"""Declarative machinery behind the 2030.5 resource classes.

Each resource is a kw-only dataclass whose field names are the XML local names. A field's metadata says
whether it is an attribute or an element, its XSD type, whether it is required, whether it repeats, and its
namespace. The XML codec (`sep2.xml`) and our XSD generator (`xsd.generate`) both read this metadata, so a
resource is defined exactly once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

NS_SEP = "urn:ieee:std:2030.5:ns"
NS_CSIP = "https://csipaus.org/ns"

# Built-in XSD simple types of the profile: name -> (kind, minimum, maximum or max length).
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "UInt8": (0, 2**8 - 1),
    "UInt16": (0, 2**16 - 1),
    "UInt32": (0, 2**32 - 1),
    "UInt40": (0, 281474976710655),
    "UInt48": (0, 281474976710655),
    "UInt64": (0, 2**64 - 1),
    "Int8": (-(2**7), 2**7 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "Int48": (-140737488355328, 140737488355328),
    "Int64": (-(2**63), 2**63 - 1),
}
HEX_MAX_BYTES: dict[str, int] = {f"HexBinary{bits}": bits // 8 for bits in (8, 16, 32, 48, 64, 128, 160)}
STRING_MAX_CHARS: dict[str, int] = {f"String{n}": n for n in (6, 16, 20, 32, 42, 192)}
OTHER_SIMPLE = {"boolean", "anyURI"}


def is_simple_type(xsd_type: str) -> bool:
    return (
        xsd_type in INTEGER_RANGES
        or xsd_type in HEX_MAX_BYTES
        or xsd_type in STRING_MAX_CHARS
        or xsd_type in OTHER_SIMPLE
    )


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one dataclass field appears in XML."""

    name: str
    xsd_type: str  # a simple type name above, or the name of a Sep2Object subclass
    is_attribute: bool
    required: bool
    repeated: bool
    namespace: str
    # Required when we write it but optional when a client sends it: ``all``/``results`` of a list are
    # describe the page a GET returns (2030.5 List type), so a client POSTing a list need not send them.
    required_on_read: bool = True
    # The values the 2030.5 enumeration defines; anything else (a "reserved" value) is refused on read.
    values: frozenset[int] | None = None

    @property
    def is_simple(self) -> bool:
        return is_simple_type(self.xsd_type)


def element(
    xsd_type: str, *, required: bool = False, ns: str = NS_SEP, values: frozenset[int] | None = None
) -> Any:
    """A child element that occurs at most once; ``values`` restricts an enumeration to its defined values."""
    meta = {
        "xsd_type": xsd_type,
        "attribute": False,
        "required": required,
        "repeated": False,
        "ns": ns,
        "values": values,
    }
    return field(default=None, metadata=meta)


def elements(xsd_type: str, *, ns: str = NS_SEP) -> Any:
    """A child element that may repeat (0..unbounded); a list on the Python side."""
    meta = {"xsd_type": xsd_type, "attribute": False, "required": False, "repeated": True, "ns": ns}
    return field(default_factory=list, metadata=meta)


def attribute(xsd_type: str, *, required: bool = False, required_on_read: bool = True) -> Any:
    meta = {
        "xsd_type": xsd_type,
        "attribute": True,
        "required": required,
        "repeated": False,
        "ns": "",
        "required_on_read": required_on_read,
    }
    return field(default=None, metadata=meta)


REGISTRY: dict[str, type[Sep2Object]] = {}


@dataclass(kw_only=True)
class Sep2Object:
    """Base of every 2030.5 type. Subclasses are registered by class name.

    ``xml_namespace`` is the namespace of the type's global element (csipaus types override it);
    ``is_root`` marks types that exist as top-level documents (each class decides for itself).
    """

    xml_namespace: ClassVar[str] = NS_SEP
    is_root: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Abstract bases say is_root = False in their own body; it is not inherited.
        cls.is_root = cls.__dict__.get("is_root", True)
        REGISTRY[cls.__name__] = cls

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        cached = cls.__dict__.get("_field_specs_cache")
        if cached is None:
            cached = tuple(
                FieldSpec(
                    name=f.name,
                    xsd_type=f.metadata["xsd_type"],
                    is_attribute=f.metadata["attribute"],
                    required=f.metadata["required"],
                    repeated=f.metadata["repeated"],
                    namespace=f.metadata["ns"],
                    required_on_read=f.metadata.get("required_on_read", True),
                    values=f.metadata.get("values"),
                )
                for f in dataclasses.fields(cls)
                if "xsd_type" in f.metadata
            )
            cls._field_specs_cache = cached
        return cached

    @classmethod
    def own_field_specs(cls) -> tuple[FieldSpec, ...]:
        """Fields this class adds to its base class (for XSD extension)."""
        base = cls.sep2_base()
        inherited = {s.name for s in base.field_specs()} if base is not None else set()
        return tuple(s for s in cls.field_specs() if s.name not in inherited)

    @classmethod
    def sep2_base(cls) -> type[Sep2Object] | None:
        """The nearest 2030.5 base type (skipping plain mixins), or None for a top-level type."""
        for base in cls.__mro__[1:]:
            if issubclass(base, Sep2Object) and base is not Sep2Object:
                return base
        return None


def resolve_type(name: str) -> type[Sep2Object]:
    return REGISTRY[name]
