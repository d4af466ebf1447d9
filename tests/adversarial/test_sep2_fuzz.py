"""Fuzz target for the sep2 decoder (``sep2.xml.from_xml``), the parser every 2030.5 request body meets.

Property: for any bytes, ``from_xml`` either returns a resource object or raises ``Sep2XmlError``; never
another exception (which would become a 500). A decoded object that is complete enough to write
encodes again and decodes to an equal object. Inputs are raw bytes, mutations of valid documents, and
grammar-aware trees built from the schema's own element names (sep2's registry), so the decoder's deep
paths are reached.

CI runs 200 examples. Run it longer (see README, "Fuzzing the sep2 parser")::

    DERLINK_FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/adversarial/test_sep2_fuzz.py -q
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sep2.base import REGISTRY
from sep2.xml import Sep2XmlError, from_xml, to_xml
from tests.adversarial.strategies import NOT_XML
from tests.test_server_harness import dera, dercap, derg, ders, end_device, mup, response, subscription

EXAMPLES = int(os.environ.get("DERLINK_FUZZ_EXAMPLES", "200"))
NS = "urn:ieee:std:2030.5:ns"
LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
SEEDS = [
    to_xml(doc)
    for doc in (
        end_device(LFDI),
        derg(),
        dercap(),
        ders(),
        dera(),
        mup(LFDI, "AB" * 16),
        response(LFDI, "CD" * 16),
        subscription("/edev/1/fsa", "https://192.0.2.1/n"),
    )
]
ROOTS = sorted(name for name, cls in REGISTRY.items() if cls.is_root)


def _texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["true", "false", "", " 1 ", "00", "-0", "+5", "1e3", "AB" * 20, "\u0663"]),
        st.text(st.characters(codec="utf-8", exclude_characters="<&\x00"), max_size=20).filter(
            lambda t: (not any(c in t for c in NOT_XML) and "\ud800" > max(t, default="")) or not t
        ),
        st.integers(1, 5000).map(lambda n: "9" * n),
    )


def _element(names: list[str]) -> st.SearchStrategy[str]:
    leaf = st.tuples(st.sampled_from(names), _texts()).map(lambda t: f"<{t[0]}>{t[1]}</{t[0]}>")

    def nest(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.builds(
            lambda name, kids: f"<{name}>{''.join(kids)}</{name}>",
            st.sampled_from(names),
            st.lists(inner, max_size=4),
        )

    return st.recursive(leaf, nest, max_leaves=12)


@st.composite
def grammar_documents(draw: st.DrawFn) -> bytes:
    """A root element of a registered type holding elements named after real 2030.5 fields."""
    root = draw(st.sampled_from(ROOTS))
    names = sorted({spec.name for cls in REGISTRY.values() for spec in cls.field_specs()} | set(REGISTRY))
    own = [spec.name for spec in REGISTRY[root].field_specs()] or names
    children = draw(st.lists(st.one_of(_element(own), _element(names)), max_size=8))
    return f'<{root} xmlns="{NS}">{"".join(children)}</{root}>'.encode()


@st.composite
def mutated_seeds(draw: st.DrawFn) -> bytes:
    doc = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(doc) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        if action == "flip":
            doc[where] = draw(st.integers(0, 255))
        elif action == "insert":
            doc[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del doc[where : where + draw(st.integers(1, 16))]
        else:
            doc[where:where] = doc[where : where + draw(st.integers(1, 32))]
    return bytes(doc)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(st.one_of(st.binary(max_size=512), mutated_seeds(), grammar_documents()))
def test_from_xml_only_ever_raises_sep2xmlerror(data: bytes) -> None:
    try:
        decoded = from_xml(data)
    except Sep2XmlError:
        return
    try:
        encoded = to_xml(decoded)
    except Sep2XmlError:  # e.g. a list without all/results: accepted from clients, required on write
        return
    assert from_xml(encoded) == decoded


def test_the_seeds_decode():
    """The fuzzer starts from valid documents (otherwise its mutations would explore nothing)."""
    for seed in SEEDS:
        assert from_xml(seed) is not None
