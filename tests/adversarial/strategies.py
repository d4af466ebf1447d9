"""Hypothesis strategies for requests that must be refused: every value drawn here is wrong on purpose,
in a way the server must notice (a malformed or invalid document, an impossible id, a bad parameter, a
bad token). Nothing drawn here is a valid write, so the database must not change."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from hypothesis import strategies as st

# Characters XML 1.0 cannot carry (and JSON strings must not smuggle into 2030.5 documents).
NOT_XML = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20))] + ["\ufffe", "\uffff"]


@dataclass(frozen=True)
class Bad:
    """One request: what, where, and which class of bad input it exercises."""

    kind: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


# ------------------------------------------------------------------------------------------- 2030.5

huge_digits = st.integers(11, 60).map(lambda n: "9" * n)
odd_digits = st.sampled_from(["\u0663", "\u00b2", "\u0669\u0669", "\uff11", "\u0661" * 12, "1\u0663"])
impossible_ids = st.one_of(huge_digits, st.integers(1000, 2**31 - 1).map(str), st.just("2147483648"))

ID_PATHS = [
    "/edev/{}",
    "/edev/{}/fsa",
    "/edev/{}/derp/1/derc",
    "/edev/{}/der/1/derg",
    "/edev/{}/sub",
    "/edev/1/derp/{}",
    "/edev/1/derp/1/derc/{}",
    "/edev/1/fsa/{}",
    "/edev/1/der/{}",
    "/edev/1/sub/{}",
    "/mup/{}",
    "/rsps/{}/rsp",
    "/rsps/1/rsp/{}",
]
LIST_PATHS = ["/edev", "/mup", "/rsps", "/edev/1/fsa", "/edev/1/der", "/edev/1/sub", "/rsps/1/rsp"]
WRONG_METHODS = [
    ("PUT", "/dcap"),
    ("DELETE", "/tm"),
    ("POST", "/edev/1/fsa"),
    ("PATCH", "/edev"),
    ("DELETE", "/edev/1/rg"),
    ("PUT", "/rsps"),
    ("POST", "/tm"),
]


def bad_ids() -> st.SearchStrategy[Bad]:
    return st.builds(
        lambda template, value, method: Bad("path id", method, template.format(quote(value))),
        st.sampled_from(ID_PATHS),
        st.one_of(impossible_ids, odd_digits),
        st.sampled_from(["GET", "HEAD"]),
    )


def bad_paging() -> st.SearchStrategy[Bad]:
    junk = st.one_of(
        huge_digits,
        odd_digits,
        st.sampled_from(["-1", "1e3", "0x10", " 5", "5 ", "", "1.5", "+3", "NaN"]),
        st.text(st.characters(codec="utf-8", exclude_characters="0123456789"), min_size=1, max_size=8),
    )

    def build(path: str, name: str, value: str) -> Bad:
        if name == "a" and value.lstrip("-").isascii() and value.lstrip("-").isdigit() and len(value) < 19:
            value += "x"  # a plain integer is a valid 'a'
        if name in "sl" and value == "":
            value = "-"
        return Bad("paging", "GET", f"{path}?{name}={quote(value)}")

    return st.builds(build, st.sampled_from(LIST_PATHS), st.sampled_from(["s", "l", "a"]), junk)


def wrong_methods() -> st.SearchStrategy[Bad]:
    return st.sampled_from(WRONG_METHODS).map(lambda mp: Bad("method", mp[0], mp[1], b"", None))


# Elements whose text is a 2030.5 integer (never hex): safe places for number mutations.
INTEGER_ELEMENTS = {
    "sFDI", "changedTime", "serviceCategoryKind", "status", "value", "multiplier", "start", "duration",
    "createdDateTime", "limit", "encoding", "setGradW", "updatedTime", "type", "readingTime",
}  # fmt: skip


def _integer_spots(text: str) -> list[int]:
    """Offsets of the '>' that opens the text of an integer element."""
    spots = []
    for name in INTEGER_ELEMENTS:
        start = 0
        while (i := text.find(f"<{name}>", start)) >= 0:
            spots.append(i + len(name) + 1)
            start = i + 1
    return sorted(spots)


def _mutations(doc: bytes) -> st.SearchStrategy[tuple[str, bytes]]:
    doc = doc.strip()
    text = doc.decode()
    first_close = text.index(">")
    root_name = text[1:first_close].split()[0]
    # Offsets just after a start tag's '>' (inside element content).
    content_spots = [
        i + 1 for i, c in enumerate(text) if c == ">" and i + 1 < len(text) and text[i + 1] != "<"
    ]
    numbers = _integer_spots(text)

    truncated = st.integers(1, len(doc) - 1).map(lambda n: ("truncated", doc[:n]))
    control = st.tuples(st.sampled_from(content_spots or [first_close + 1]), st.sampled_from(NOT_XML)).map(
        lambda p: ("control character", (text[: p[0]] + p[1] + text[p[0] :]).encode())
    )
    renamed = st.sampled_from(["Nope", "script", "EndDeviceList", "Error"]).map(
        lambda name: ("wrong root", text.replace(root_name, name).encode())
    )
    namespace = st.sampled_from(["urn:other", "", "https://csipaus.org/ns"]).map(
        lambda ns: ("wrong namespace", text.replace("urn:ieee:std:2030.5:ns", ns, 1).encode())
    )
    doctype = st.just(("doctype", b'<!DOCTYPE x [<!ENTITY e "x">]>' + doc))
    unknown_child = st.just(
        (
            "unknown element",
            (text[: first_close + 1] + "<bogusElement>1</bogusElement>" + text[first_close + 1 :]).encode(),
        )
    )
    options = [truncated, control, renamed, namespace, doctype, unknown_child]
    if numbers:

        def big(spot_and_digits: tuple[int, int]) -> tuple[str, bytes]:
            spot, n = spot_and_digits
            end = text.index("<", spot + 1)
            return "huge integer", (text[: spot + 1] + "7" * n + text[end:]).encode()

        options.append(st.tuples(st.sampled_from(numbers), st.integers(21, 6000)).map(big))
        options.append(
            st.sampled_from(numbers).map(
                lambda spot: (
                    "not a number",
                    (text[: spot + 1] + "12ab" + text[text.index("<", spot + 1) :]).encode(),
                )
            )
        )
    return st.one_of(options)


def bad_documents(documents: dict[tuple[str, str], bytes]) -> st.SearchStrategy[Bad]:
    """Mutations of valid documents for each (method, path) that accepts a body."""
    per_target = [
        _mutations(doc).map(lambda m, mp=mp: Bad(f"xml {m[0]}", mp[0], mp[1], m[1], "application/sep+xml"))
        for mp, doc in documents.items()
    ]
    wrong_type = st.tuples(
        st.sampled_from(sorted(documents)),
        st.sampled_from(["application/json", "text/plain", "application/xml"]),
    ).map(lambda t: Bad("content type", t[0][0], t[0][1], documents[t[0]], t[1]))
    return st.one_of(*per_target, wrong_type)


def bad_2030_5(documents: dict[tuple[str, str], bytes]) -> st.SearchStrategy[Bad]:
    return st.one_of(bad_ids(), bad_paging(), wrong_methods(), bad_documents(documents))


# --------------------------------------------------------------------------------------------- head-end

HEADEND_WRITES = {
    ("POST", "/api/groups"): {"name": "string"},
    ("POST", "/api/sites"): {"lfdi": "string"},
    ("POST", "/api/programs"): {"key": "string"},
}


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def json_bodies(required: dict[str, str]) -> st.SearchStrategy[tuple[str, str]]:
    field = next(iter(required))
    wrong_values = st.one_of(
        st.integers(-5, 5), st.booleans(), st.lists(st.integers(), max_size=3), st.just({})
    )
    return st.one_of(
        st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5), st.none()).map(
            lambda v: ("not an object", json.dumps(v))
        ),
        st.text(st.characters(codec="ascii", categories=["Ll"]), min_size=1, max_size=8).map(
            lambda k: ("unknown field", json.dumps({field: "x", "zz" + k: 1}))
        ),
        wrong_values.map(lambda v: ("wrong type", json.dumps({field: v}))),
        st.just(("missing field", json.dumps({"reason": "no required field"}))),
        st.tuples(st.text(max_size=5), st.sampled_from(NOT_XML)).map(
            lambda t: ("control character", json.dumps({field: t[0] + t[1] + "x"}))
        ),
        st.integers(33, 50_000).map(lambda n: ("deep nesting", '{"' + field + '": ' + _deep(n) + "}")),
        st.integers(21, 6000).map(
            lambda n: ("huge number", '{"' + field + '": "x", "pin": ' + "9" * n + "}")
        ),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]).map(
            lambda c: ("non-finite number", '{"' + field + '": ' + c + "}")
        ),
        st.integers(1, 12).map(lambda n: ("malformed", ('{"' + field + '": "abc", "x": [1, 2')[:n])),
        st.just(("not utf-8", '{"name": "\udcff"}')),
    )


def bad_headend(token: str) -> st.SearchStrategy[Bad]:
    auth = (("Authorization", f"Bearer {token}"),)
    writes = [
        json_bodies(required).map(
            lambda kb, mp=mp: Bad(
                f"json {kb[0]}",
                mp[0],
                mp[1],
                kb[1].encode("utf-8", "surrogateescape"),
                "application/json",
                auth,
            )
        )
        for mp, required in HEADEND_WRITES.items()
    ]
    bad_tokens = st.one_of(
        # Printable latin-1 (the HTTP parser itself refuses other control bytes before any handler runs).
        st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0xFF).filter(lambda c: not 0x7F <= ord(c) < 0xA0),
            min_size=1,
            max_size=40,
        ),
        st.just("\xff\xfe"),
    ).map(lambda t: Bad("token", "GET", "/api/whoami", None, None, (("Authorization", "Bearer " + t),)))
    no_scheme = st.sampled_from(["", "Basic abc", "Bearer", "bearer  ", token]).map(
        lambda h: Bad("token", "GET", "/api/sites", None, None, (("Authorization", h),) if h else ())
    )
    refs = st.one_of(
        st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=30),
        huge_digits,
        st.just("nmi:0000000000"),
    )
    missing = st.tuples(st.sampled_from(["GET", "DELETE"]), refs).map(
        lambda t: Bad("unknown site", t[0], "/api/sites/" + quote(t[1], safe=""), None, None, auth)
    )
    control_query = st.tuples(st.sampled_from(["q", "group"]), st.sampled_from([*NOT_XML, "\r\n"])).map(
        lambda t: Bad("control in query", "GET", f"/api/sites?{t[0]}=a{quote(t[1])}b", None, None, auth)
    )
    bad_limits = st.one_of(huge_digits, st.sampled_from(["-1", "x", "1e3"])).map(
        lambda v: Bad("query integer", "GET", f"/api/sites?limit={quote(v)}", None, None, auth)
    )
    return st.one_of(*writes, bad_tokens, no_scheme, missing, control_query, bad_limits)
