"""What a cached document depends on and what a write changed, as versioned tokens.

A token names one thing documents are built from: ``("site", id)`` (the site's row, membership and
existence), ``("target", key)`` (programs, controls and defaults aimed at ``all`` / ``g:<id>`` / ``s:<id>``),
``("rate", key)``, ``("edev", owner)`` / ``("mup", owner)`` / ``("rsp", owner)`` (a client's lists of
EndDevices, mirrors and Responses; ``owner`` is ``d:<LFDI>`` or ``a:<aggregator id>``), ``("der", site)``,
``("sub", site)``, ``("client", LFDI)`` (the certificate's scope), ``("groups", 0)``;
``("aggregators", 0)`` and ``("incidents", 0)`` name writes that no cached document reads.

Readers record the tokens they read (:meth:`Versions.depends`, a no-op outside :meth:`Versions.reading`).
Writers name what they touched; after the commit each named token takes the next value of one global
sequence. A write that names nothing (code outside the store package that does not say what it changed)
moves the epoch, which every document depends on. A document is current while its epoch and every recorded
token are unchanged; one whose tokens moved after its rendering began is never cached (it may hold either
state), so readers may record a token before or after its query.

On PostgreSQL the store also publishes the tokens inside the writing transaction (:func:`announcements` on
:data:`CHANNEL`, sent just before its COMMIT), so every other process on the database hears of exactly the
commits that happened, as they happen (``server.workers`` listens and bumps the same tokens).
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

Token = tuple[str, int | str]

CHANNEL = "derlink_versions"  # the PostgreSQL NOTIFY channel of committed changes
MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 and more
MAX_PAYLOADS = 32  # per transaction; a write touching more than fits says "everything" instead


def announcements(tokens: Iterable[Token] | None, origin: str) -> list[str]:
    """The NOTIFY payloads of one transaction: ``{"o": origin, "t": [[kind, key], ...]}`` in as many
    payloads as the tokens need, or one ``{"o": origin, "t": null}`` (everything) for a write that named
    nothing or touched more than :data:`MAX_PAYLOADS` hold."""
    if tokens is not None:
        texts: list[str] = []
        chunk: list[list[int | str]] = []
        size = 0
        for kind, key in tokens:
            item = json.dumps([kind, key], separators=(",", ":"))
            if chunk and size + len(item.encode()) + 1 > MAX_PAYLOAD - 40:
                texts.append(json.dumps({"o": origin, "t": chunk}, separators=(",", ":")))
                chunk, size = [], 0
            chunk.append([kind, key])
            size += len(item.encode()) + 1
        if chunk:
            texts.append(json.dumps({"o": origin, "t": chunk}, separators=(",", ":")))
        if texts and len(texts) <= MAX_PAYLOADS and all(len(t.encode()) <= MAX_PAYLOAD for t in texts):
            return texts
    return [json.dumps({"o": origin, "t": None}, separators=(",", ":"))]


def heard(payload: str) -> tuple[str | None, list[Token] | None]:
    """(origin, tokens) of a payload; tokens None means everything, also for a payload that does not parse
    (e.g. ``NOTIFY derlink_versions`` typed by hand after an edit in psql)."""
    try:
        message = json.loads(payload)
        tokens = message.get("t")
        origin = message.get("o")
        if tokens is None:
            return (origin if isinstance(origin, str) else None), None
        return (origin if isinstance(origin, str) else None), [(str(t[0]), t[1]) for t in tokens]
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return None, None


def owners(lfdi: str, aggregator_id: int | None) -> list[str]:
    """The clients that list a site: its own device certificate and its aggregator."""
    return [f"d:{lfdi}"] + ([f"a:{aggregator_id}"] if aggregator_id is not None else [])


@dataclass(slots=True)
class Deps:
    """The tokens one document was built from, with the versions seen."""

    epoch: int
    start: int  # the sequence when rendering began
    tokens: dict[Token, int] = field(default_factory=dict)


_reading: ContextVar[Deps | None] = ContextVar("derlink_reading", default=None)
_touched: ContextVar[set[Token] | None] = ContextVar("derlink_touched", default=None)


class Versions:
    def __init__(self) -> None:
        self.seq = 0
        self.epoch = 0
        self._versions: dict[Token, int] = {}
        self.origin = secrets.token_hex(8)  # names this process's announcements (pids repeat across hosts)
        # False while changes made by other processes could go unheard (server.workers lost its listening
        # connection): then no document is current or cacheable.
        self.trusted = True

    def depends(self, *tokens: Token) -> None:
        """Record that the document being built reads ``tokens`` (call before the query)."""
        deps = _reading.get()
        if deps is not None:
            for token in tokens:
                if token not in deps.tokens:
                    deps.tokens[token] = self._versions.get(token, 0)

    @contextmanager
    def reading(self) -> Iterator[Deps]:
        """Collect the dependencies of the document built inside the block."""
        deps = Deps(self.epoch, self.seq)
        reset = _reading.set(deps)
        try:
            yield deps
        finally:
            _reading.reset(reset)

    def current(self, deps: Deps) -> bool:
        """Nothing the document read has changed since it was rendered."""
        if deps.epoch != self.epoch or not self.trusted:
            return False
        versions = self._versions
        return all(versions.get(token, 0) == seen for token, seen in deps.tokens.items())

    def stamp(self, token: Token) -> tuple[int, int]:
        return self.epoch, self._versions.get(token, 0)

    @staticmethod
    def touch(*tokens: Token) -> None:
        """Name what the enclosing write transaction changes (bumped after its commit)."""
        touched = _touched.get()
        if touched is None:
            raise RuntimeError("touch() outside a write transaction")
        touched.update(tokens)

    @contextmanager
    def writing(self, tokens: Iterable[Token]) -> Iterator[set[Token]]:
        touched = set(tokens)
        reset = _touched.set(touched)
        try:
            yield touched
        finally:
            _touched.reset(reset)

    def bump(self, tokens: Iterable[Token] | None) -> None:
        """After a commit, here or heard of from another process: every token written moves on (``None``:
        everything, via the epoch)."""
        self.seq += 1
        if tokens is None:
            self.epoch = self.seq
            return
        versions = self._versions
        for token in tokens:
            versions[token] = self.seq

    def cacheable(self, deps: Deps) -> bool:
        """Current, depends on something, and nothing it read moved while it was being rendered."""
        return bool(deps.tokens) and self.current(deps) and all(v <= deps.start for v in deps.tokens.values())


@dataclass(slots=True)
class _Entry:
    deps: Deps
    until: float
    body: bytes


class DocumentCache:
    """Rendered GET bodies by (client, path, paging), bounded in bytes, least recently used out first.

    An entry is served while its dependencies are current (:class:`Versions`) and before ``until`` (the
    document changes by itself then, e.g. a control starts). Stale entries are dropped when met.
    """

    ENTRY_OVERHEAD = 200  # bytes counted per entry on top of the body (key, deps, bookkeeping)

    def __init__(self, versions: Versions, max_bytes: int) -> None:
        self.versions = versions
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, ...], now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.until or not self.versions.current(entry.deps):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.body

    def put(self, key: tuple[str, ...], deps: Deps, until: float, body: bytes) -> None:
        size = len(body) + self.ENTRY_OVERHEAD
        if size > self.max_bytes or not self.versions.cacheable(deps):
            return  # too big, depends on nothing recorded (never cached blind), or changed meanwhile
        if key in self._entries:
            self._drop(key)
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = _Entry(deps, until, body)
        self.bytes += size

    def _drop(self, key: tuple[str, ...]) -> None:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.body) + self.ENTRY_OVERHEAD
