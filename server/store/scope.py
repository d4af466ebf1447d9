"""Who is asking (:class:`RequestScope`), list paging, and what a site sees (:class:`SiteView`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from sep2.identity import IdentityError, normalise_lfdi
from server.errors import BadRequest
from server.store.fast import Query, Writes
from server.store.schema import (
    sites,
)


@dataclass(frozen=True, slots=True)
class RequestScope:
    """Who is asking. Built once per request from the authenticated certificate.

    A device client reaches only the site whose LFDI is its own; an aggregator client reaches the sites
    registered to its aggregator.
    """

    lfdi: str
    kind: Literal["device", "aggregator"]
    aggregator_id: int | None = None

    def site_condition(self) -> sa.ColumnElement[bool]:
        if self.kind == "aggregator":
            return sites.c.aggregator_id == self.aggregator_id
        return sites.c.lfdi == self.lfdi

    def bind(self) -> dict[str, Any]:
        """The parameters of :data:`SCOPE_CONDITIONS` for this client."""
        if self.kind == "aggregator":
            return {"scope_agg": self.aggregator_id}
        return {"scope_lfdi": self.lfdi}

    @property
    def owner(self) -> str:
        """The key of this client's lists (``server.store.versions.owners``)."""
        return f"a:{self.aggregator_id}" if self.kind == "aggregator" else f"d:{self.lfdi}"


#: :meth:`RequestScope.site_condition` with parameters (:meth:`RequestScope.bind`), for prepared reads.
SCOPE_CONDITIONS: dict[str, sa.ColumnElement[bool]] = {
    "device": sites.c.lfdi == sa.bindparam("scope_lfdi"),
    "aggregator": sites.c.aggregator_id == sa.bindparam("scope_agg"),
}


def scoped(build: Any) -> dict[str, Query]:
    """One prepared :class:`Query` per kind of client, from ``build(site condition)``."""
    return {kind: Query(build(cond)) for kind, cond in SCOPE_CONDITIONS.items()}


@dataclass(frozen=True, slots=True)
class Page:
    """List paging from the ``s``/``a``/``l`` query parameters."""

    start: int = 0
    limit: int = 1
    after: int | None = None


#: The target rank of a group the site is a direct member of (server.store.targets._site_targets: 500 - hop).
DIRECT_GROUP_RANK = 499


@dataclass(frozen=True, slots=True)
class SiteView:
    site: sa.Row
    targets: list[tuple[str, int]]
    programs: list[sa.Row]
    # A DER's own view (2030.5 §10.10 DER.AssociatedDERProgramListLink): the programs holding controls or
    # defaults for that DER alone (target ``d:<der id>``), under /edev/{e}/der/{d}/derp.
    der_id: int | None = None

    def program_href(self, program_id: int) -> str:
        """The href of a DERProgram as this view publishes it."""
        if self.der_id is None:
            return f"/edev/{self.site.id}/derp/{program_id}"
        return f"/edev/{self.site.id}/der/{self.der_id}/derp/{program_id}"

    def fsa_keys(self) -> list[int]:
        """The site's FunctionSetAssignments: FSA 0 (programs of every site) when it holds a program, each
        group the operator put the site in (even before it holds a program: a program added later is a
        change of that FSA's DERProgramList), and each ancestor group holding a program."""
        direct = {int(k[2:]) for k, rank in self.targets if k.startswith("g:") and rank == DIRECT_GROUP_RANK}
        return sorted({p.group_id or 0 for p in self.programs} | direct)


_OWN_SITE = scoped(
    lambda cond: sa.select(sites.c.id, sites.c.lfdi, sites.c.aggregator_id).where(
        sites.c.lfdi == sa.bindparam("lfdi"), cond
    )
)


def own_site_lfdi(lfdi: str | None, field: str) -> str:
    """The normalised LFDI of a posted document's EndDevice field; otherwise a 400 naming ``field``."""
    try:
        return normalise_lfdi(lfdi or "")
    except IdentityError as exc:
        raise BadRequest(f"{field}: {exc}") from None


def own_site(db: Writes, scope: RequestScope, device_lfdi: str, field: str) -> Any:
    """This client's EndDevice (id, lfdi, aggregator_id) for ``device_lfdi`` (normalised by
    :func:`own_site_lfdi`), inside a grouped write; otherwise a 400 naming ``field``."""
    site = db.first(_OWN_SITE[scope.kind], lfdi=device_lfdi, **scope.bind())
    if site is None:
        raise BadRequest(f"{field}: {device_lfdi} is not an EndDevice of this client")
    return site
