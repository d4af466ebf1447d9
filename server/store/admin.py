"""Operator writes and queries (head-end, tests, demos): audited, committed before returning."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from sep2 import resources as r
from sep2.identity import IdentityError, operator_lfdi, sfdi_from_lfdi
from sep2.mrid import new_mrid
from sep2.xml import from_xml
from server.store.base import StoreBase
from server.store.codec import (
    AdminError,
    to_jsonable,
)
from server.store.doe import DOE_PROGRAM, cut_for_control
from server.store.engine import _insert
from server.store.pubsub import _enqueue
from server.store.schema import (
    DER_DOCUMENT_TYPES,
    RATE_NOTIFIES,
    RATE_RESOURCES,
    SUBSCRIPTION_KINDS,
    aggregators,
    audit_log,
    clients,
    controls,
    default_controls,
    der_documents,
    ders,
    groups,
    memberships,
    metadata,
    meter_readings,
    mups,
    programs,
    rate_settings,
    readings,
    responses,
    sites,
)
from server.store.targets import der_key
from server.store.timeline import remainders
from server.store.versions import owners

MAX_DERS = 64  # DER instances per EndDevice
CONTINUATION_BACKDATE_S = 5  # how far a piece continuing a control in force starts before now (clock skew)


def _check_der_count(count: Any) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_DERS:
        raise AdminError(f"ders: must be an integer 1..{MAX_DERS}, got {count!r}")


class Admin:
    """The operator side of the store: what the head-end API, tests and demos call.

    Targets are written ``"all"``, ``"group:<name>"``, ``"site:<LFDI>"`` or ``"nmi:<NMI>"``. Every write
    records an audit entry (``actor``, ``reason``) in the same transaction and commits before returning.
    Notifications for affected subscriptions are queued in that transaction too.
    """

    def __init__(self, store: StoreBase) -> None:
        self.store = store

    # -- helpers

    async def _audit(
        self,
        conn: AsyncConnection,
        actor: str,
        action: str,
        target: str | None,
        reason: str | None,
        **detail: Any,
    ) -> None:
        if len(actor) > 64:
            raise AdminError("actor: at most 64 characters")
        if reason is not None and len(reason) > 256:
            raise AdminError("reason: at most 256 characters")
        await conn.execute(
            audit_log.insert().values(
                at=self.store.clock(),
                actor=actor,
                action=action,
                target=target,
                reason=reason,
                detail=json.dumps(detail, default=str) if detail else None,
            )
        )

    async def _resolve_target(self, conn: AsyncConnection, target: str) -> str:
        if target == "all":
            return "all"
        kind, _, value = target.partition(":")
        if kind == "group":
            row = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == value))).first()
            if row is None:
                raise AdminError(f"target: no group named {value!r}")
            return f"g:{row.id}"
        if kind in ("site", "nmi"):
            if kind == "site":
                try:
                    cond = sites.c.lfdi == operator_lfdi(value)
                except IdentityError as exc:
                    raise AdminError(f"target: {exc}") from None
            else:
                cond = sites.c.nmi == value
            row = (await conn.execute(sa.select(sites.c.id).where(cond))).first()
            if row is None:
                raise AdminError(f"target: no site {target!r}")
            return f"s:{row.id}"
        raise AdminError(f"target: {target!r} is not 'all', 'group:NAME', 'site:LFDI' or 'nmi:NMI'")

    async def _der_target(self, conn: AsyncConnection, key: str, der: int | None) -> str:
        """``key`` itself, or with ``der`` the key of that DER of the site ``key`` (``d:<der id>``): a
        control for that DER alone, published in its own DERProgramList (2030.5 §10.10
        DER.AssociatedDERProgramListLink). AdminError naming ``der`` unless the DER is the site's."""
        if der is None:
            return key
        if not isinstance(der, int) or isinstance(der, bool) or der < 1:
            raise AdminError(f"der: must be a DER id (a positive integer), got {der!r}")
        if not key.startswith("s:"):
            raise AdminError(
                "der: a DER is targeted with its site (target site:LFDI or nmi:NMI), not a group"
            )
        site_id = int(key[2:])
        held = (
            (await conn.execute(sa.select(ders.c.id).where(ders.c.site_id == site_id).order_by(ders.c.id)))
            .scalars()
            .all()
        )
        if der not in held:
            raise AdminError(
                f"der: the site has no DER {der} (its DERs: {', '.join(map(str, held)) or 'none'})"
            )
        self.store.touch(("der", site_id))  # its DER now links (or still links) its own DERProgramList
        return der_key(der)

    async def _program_id(self, conn: AsyncConnection, program: str) -> int:
        row = (await conn.execute(sa.select(programs.c.id).where(programs.c.key == program))).first()
        if row is None:
            raise AdminError(f"program: no program {program!r}")
        return row.id

    async def _group_id(self, conn: AsyncConnection, name: str) -> int:
        row = (await conn.execute(sa.select(groups.c.id).where(groups.c.name == name))).first()
        if row is None:
            raise AdminError(f"group: no group named {name!r}")
        return row.id

    # -- clients, aggregators, sites

    async def create_aggregator(
        self, name: str, *, lfdis: Iterable[str] = (), actor: str = "system", reason: str | None = None
    ) -> int:
        if not name or len(name) > 64:
            raise AdminError("name: must be 1 to 64 characters")
        now = self.store.clock()
        async with self.store.changing(("aggregators", 0)) as conn:  # cached only via its clients' scopes
            if (await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == name))).first():
                raise AdminError(f"name: aggregator {name!r} already exists")
            agg_id = (
                await conn.execute(aggregators.insert().values(name=name, created_at=now))
            ).inserted_primary_key[0]
            for lfdi in lfdis:
                await self._attach_client(conn, agg_id, lfdi)
            await self._audit(conn, actor, "aggregator.create", name, reason, lfdis=list(lfdis))
        return agg_id

    async def _attach_client(self, conn: AsyncConnection, aggregator_id: int, lfdi: str) -> None:
        try:
            lfdi = operator_lfdi(lfdi)
        except IdentityError as exc:
            raise AdminError(f"lfdi: {exc}") from None
        self.store.touch(("client", lfdi))
        stmt = _insert(conn, clients).values(
            lfdi=lfdi, kind="aggregator", aggregator_id=aggregator_id, revoked=False
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["lfdi"], set_={"kind": "aggregator", "aggregator_id": aggregator_id}
            )
        )

    async def add_aggregator_certificate(
        self, aggregator: str, lfdi: str, *, actor: str = "system", reason: str | None = None
    ) -> None:
        """Attach another certificate to an aggregator (rotation: add new, later revoke/remove old)."""
        async with self.store.changing() as conn:
            row = (
                await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == aggregator))
            ).first()
            if row is None:
                raise AdminError(f"aggregator: no aggregator named {aggregator!r}")
            await self._attach_client(conn, row.id, lfdi)
            await self._audit(conn, actor, "aggregator.add_certificate", aggregator, reason, lfdi=lfdi)

    async def aggregator_of(self, lfdi: str) -> str | None:
        async with self.store.read() as conn:
            row = (
                await conn.execute(
                    sa.select(aggregators.c.name)
                    .join(clients, clients.c.aggregator_id == aggregators.c.id)
                    .where(clients.c.lfdi == lfdi.upper())
                )
            ).first()
        return row.name if row else None

    async def set_revoked(
        self, lfdi: str, revoked: bool = True, *, actor: str = "system", reason: str | None = None
    ) -> None:
        """Revoke (or restore) a certificate; effective on its next request."""
        try:
            lfdi = operator_lfdi(lfdi)
        except IdentityError as exc:
            raise AdminError(f"lfdi: {exc}") from None
        async with self.store.changing(("client", lfdi)) as conn:
            stmt = _insert(conn, clients).values(lfdi=lfdi, kind="device", revoked=revoked)
            await conn.execute(stmt.on_conflict_do_update(index_elements=["lfdi"], set_={"revoked": revoked}))
            await self._audit(conn, actor, "client.revoke" if revoked else "client.restore", lfdi, reason)

    async def register_site(
        self,
        lfdi: str,
        *,
        sfdi: int | None = None,
        nmi: str | None = None,
        pin: int | None = None,
        aggregator: str | None = None,
        groups_: Iterable[str] = (),
        label: str | None = None,
        device_category: str | None = None,
        der_count: int = 1,
        actor: str = "system",
        reason: str | None = None,
    ) -> int:
        """Out-of-band registration of a site (EndDevice) with ``der_count`` DERs. Returns the site id."""
        _check_der_count(der_count)
        try:
            lfdi = operator_lfdi(lfdi)
        except IdentityError as exc:
            raise AdminError(f"lfdi: {exc}") from None
        expected = sfdi_from_lfdi(lfdi)
        if sfdi is not None and sfdi != expected:
            raise AdminError(f"sfdi: {sfdi} does not match lfdi {lfdi} (expected {expected})")
        if pin is not None and not 0 <= pin <= 999999:
            raise AdminError(f"pin: must be 0..999999, got {pin}")
        if nmi is not None and not 1 <= len(nmi) <= 32:
            raise AdminError("nmi: must be 1 to 32 characters")
        if label is not None and len(label) > 128:
            raise AdminError("label: at most 128 characters")
        if device_category is not None and len(device_category) > 8:
            raise AdminError("device_category: at most 8 hex digits")
        now = self.store.clock()
        async with self.store.changing() as conn:
            if (await conn.execute(sa.select(sites.c.id).where(sites.c.lfdi == lfdi))).first():
                raise AdminError(f"lfdi: site {lfdi} is already registered")
            if (
                nmi is not None
                and (
                    await conn.execute(
                        sa.select(sites.c.id).where(sa.func.substr(sites.c.nmi, 1, 10) == nmi[:10])
                    )
                ).first()
            ):
                raise AdminError(f"nmi: {nmi} belongs to another site")
            agg_id = None
            if aggregator is not None:
                row = (
                    await conn.execute(sa.select(aggregators.c.id).where(aggregators.c.name == aggregator))
                ).first()
                if row is None:
                    raise AdminError(f"aggregator: no aggregator named {aggregator!r}")
                agg_id = row.id
            site_id = (
                await conn.execute(
                    sites.insert().values(
                        lfdi=lfdi,
                        sfdi=expected,
                        aggregator_id=agg_id,
                        device_category=device_category,
                        enabled=True,
                        changed_time=now,
                        registered_time=now,
                        pin=pin,
                        nmi=nmi,
                        label=label,
                    )
                )
            ).inserted_primary_key[0]
            for _ in range(der_count):
                await conn.execute(ders.insert().values(site_id=site_id))
            self.store.touch(
                ("site", site_id), ("client", lfdi), *(("edev", owner) for owner in owners(lfdi, agg_id))
            )
            # Registering is the operator granting this LFDI access (again, after a deregistration).
            await conn.execute(clients.update().where(clients.c.lfdi == lfdi).values(revoked=False))
            for name in groups_:
                await conn.execute(
                    memberships.insert().values(site_id=site_id, group_id=await self._group_id(conn, name))
                )
            extra = {"ders": der_count} if der_count != 1 else {}
            await self._audit(
                conn, actor, "site.register", lfdi, reason, nmi=nmi, groups=list(groups_), **extra
            )
        return site_id

    async def deregister_site(self, lfdi: str, *, actor: str = "system", reason: str | None = None) -> None:
        """Decommission: the EndDevice and everything under it leave the 2030.5 side (audit keeps history)."""
        async with self.store.changing() as conn:
            key = await self._resolve_target(conn, f"site:{lfdi}")
            site_id = int(key[2:])
            site = (await conn.execute(sa.select(sites).where(sites.c.id == site_id))).one()
            self.store.touch(
                ("site", site_id),
                ("target", key),
                ("rate", key),
                ("der", site_id),
                ("sub", site_id),
                *(
                    (kind, owner)
                    for owner in owners(site.lfdi, site.aggregator_id)
                    for kind in ("edev", "mup", "rsp")
                ),
            )
            der_keys = [
                der_key(i)
                for i in (await conn.execute(sa.select(ders.c.id).where(ders.c.site_id == site_id))).scalars()
            ]
            self.store.touch(*(("target", k) for k in der_keys))
            await conn.execute(controls.delete().where(controls.c.target.in_([key, *der_keys])))
            await conn.execute(
                default_controls.delete().where(default_controls.c.target.in_([key, *der_keys]))
            )
            await conn.execute(rate_settings.delete().where(rate_settings.c.target == key))
            await conn.execute(sites.delete().where(sites.c.id == site_id))
            # Deregistration ends that certificate's access (issue 11 item 4): it cannot re-enrol in-band;
            # register_site grants it again. An aggregator's own certificate is not the site's to revoke.
            lfdi = operator_lfdi(lfdi)
            holder = (await conn.execute(sa.select(clients.c.kind).where(clients.c.lfdi == lfdi))).first()
            if holder is None or holder.kind != "aggregator":
                self.store.touch(("client", lfdi))
                stmt = _insert(conn, clients).values(lfdi=lfdi, kind="device", revoked=True)
                await conn.execute(
                    stmt.on_conflict_do_update(index_elements=["lfdi"], set_={"revoked": True})
                )
            await self._audit(conn, actor, "site.deregister", lfdi, reason)

    async def set_der_count(
        self, lfdi: str, count: int, *, actor: str = "system", reason: str | None = None
    ) -> int:
        """The server creates (or removes, newest first) DER instances until the site's DERList holds
        ``count`` (2030.5 §10.10: the server provides the DERList; the client PUTs each DER's documents).
        Returns the number added (negative: removed, with their documents and history)."""
        _check_der_count(count)
        async with self.store.changing() as conn:
            site_id = int((await self._resolve_target(conn, f"site:{lfdi}"))[2:])
            self.store.touch(("der", site_id))
            query = sa.select(ders.c.id).where(ders.c.site_id == site_id).order_by(ders.c.id)
            ids = list((await conn.execute(query)).scalars().all())
            for _ in range(count - len(ids)):
                await conn.execute(ders.insert().values(site_id=site_id))
            if len(ids) > count:
                gone = [der_key(i) for i in ids[count:]]  # and what targeted those DERs alone
                self.store.touch(*(("target", k) for k in gone))
                await conn.execute(controls.delete().where(controls.c.target.in_(gone)))
                await conn.execute(default_controls.delete().where(default_controls.c.target.in_(gone)))
                await conn.execute(ders.delete().where(ders.c.id.in_(ids[count:])))
            await self._audit(
                conn, actor, "site.ders", operator_lfdi(lfdi), reason, count=count, was=len(ids)
            )
        return count - len(ids)

    async def site_id(self, lfdi: str) -> int:
        async with self.store.read() as conn:
            return int((await self._resolve_target(conn, f"site:{lfdi}"))[2:])

    # -- groups

    async def create_group(
        self,
        name: str,
        *,
        parent: str | None = None,
        description: str | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> int:
        if not name or len(name) > 64 or ":" in name:
            raise AdminError("name: must be 1 to 64 characters without ':'")
        if description is not None and len(description) > 128:
            raise AdminError("description: at most 128 characters")
        async with self.store.changing() as conn:
            if (await conn.execute(sa.select(groups.c.id).where(groups.c.name == name))).first():
                raise AdminError(f"name: group {name!r} already exists")
            parent_id = await self._group_id(conn, parent) if parent else None
            self.store.touch(("groups", 0))
            gid = (
                await conn.execute(
                    groups.insert().values(name=name, parent_id=parent_id, description=description)
                )
            ).inserted_primary_key[0]
            await self._audit(conn, actor, "group.create", name, reason, parent=parent)
        return gid

    async def set_membership(
        self, lfdi: str, group: str, member: bool = True, *, actor: str = "system", reason: str | None = None
    ) -> None:
        """Add (or remove) a site to a group; its FSAs, programs and controls follow at once."""
        now = self.store.clock()
        async with self.store.changing() as conn:
            site_id = int((await self._resolve_target(conn, f"site:{lfdi}"))[2:])
            self.store.touch(("site", site_id))  # its targets, hence programs and controls, change
            gid = await self._group_id(conn, group)
            if member:
                stmt = _insert(conn, memberships).values(site_id=site_id, group_id=gid)
                await conn.execute(stmt.on_conflict_do_nothing())
            else:
                await conn.execute(
                    memberships.delete().where(
                        memberships.c.site_id == site_id, memberships.c.group_id == gid
                    )
                )
            await _enqueue(conn, now, kinds=SUBSCRIPTION_KINDS[1:], site_ids=[site_id])
            await self._audit(
                conn, actor, "group.join" if member else "group.leave", f"{lfdi}->{group}", reason
            )

    # -- programs

    async def create_program(
        self,
        key: str,
        *,
        primacy: int,
        description: str | None = None,
        group: str | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> int:
        """A DERProgram (lower primacy wins). ``group`` limits it to that group's sites (its own FSA)."""
        if not key or len(key) > 32:
            raise AdminError("key: must be 1 to 32 characters")
        if not isinstance(primacy, int) or not 0 <= primacy <= 255:
            raise AdminError(f"primacy: must be an integer 0..255, got {primacy!r}")
        description = description or key
        if len(description) > 32:
            raise AdminError("description: at most 32 characters")
        now = self.store.clock()
        async with self.store.changing() as conn:
            if (await conn.execute(sa.select(programs.c.id).where(programs.c.key == key))).first():
                raise AdminError(f"key: program {key!r} already exists")
            group_id = await self._group_id(conn, group) if group else None
            self.store.touch(("target", f"g:{group_id}" if group_id else "all"))
            pid = (
                await conn.execute(
                    programs.insert().values(
                        key=key,
                        mrid=new_mrid(self.store.pen),
                        description=description,
                        primacy=primacy,
                        group_id=group_id,
                        version=0,
                    )
                )
            ).inserted_primary_key[0]
            await _enqueue(conn, now, kinds=("fsa", "derp"), target=f"g:{group_id}" if group_id else "all")
            await self._audit(conn, actor, "program.create", key, reason, primacy=primacy, group=group)
        return pid

    async def update_program(
        self,
        key: str,
        *,
        description: str | None = None,
        primacy: int | None = None,
        group: str | None = None,
        enabled: bool | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> None:
        """Rename, re-rank, move or switch off a program, the built-in ones included (issue 11 item 9).

        ``group``: a group name moves the program to that group's FSA; ``""`` to every site's (FSA 0).
        A switched-off program is seen by no site; its controls and defaults are kept for when it is
        switched on again. The sites that saw it, or now see it, are notified."""
        values: dict[str, Any] = {}
        if description is not None:
            if not 1 <= len(description) <= 32:
                raise AdminError("description: must be 1 to 32 characters")
            values["description"] = description
        if primacy is not None:
            if isinstance(primacy, bool) or not isinstance(primacy, int) or not 0 <= primacy <= 255:
                raise AdminError(f"primacy: must be an integer 0..255, got {primacy!r}")
            values["primacy"] = primacy
        if enabled is not None:
            values["enabled"] = bool(enabled)
        now = self.store.clock()
        async with self.store.write() as conn:
            row = (await conn.execute(sa.select(programs).where(programs.c.key == key))).first()
            if row is None:
                raise AdminError(f"key: no program {key!r}")
            if group is not None:
                values["group_id"] = await self._group_id(conn, group) if group else None
            if not values:
                raise AdminError("program: nothing to change (description, primacy, group or enabled)")
            await conn.execute(
                programs.update()
                .where(programs.c.id == row.id)
                .values(**values, version=(row.version + 1) % 65536)
            )
            for gid in {row.group_id, values.get("group_id", row.group_id)}:
                await _enqueue(conn, now, kinds=SUBSCRIPTION_KINDS[1:], target=f"g:{gid}" if gid else "all")
            changed = {k: v for k, v in values.items() if k != "group_id"}
            await self._audit(conn, actor, "program.update", key, reason, group=group, **changed)

    async def ensure_standard_programs(self) -> None:
        """The three programs the head-end uses: emergency (primacy 1) > doe (10) > default (20)."""
        async with self.store.read() as conn:
            existing = {row.key for row in (await conn.execute(sa.select(programs.c.key))).all()}
        for key, primacy, description in (
            ("emergency", 1, "Emergency"),
            ("doe", 10, "Dynamic operating envelope"),
            ("default", 20, "Default limits"),
        ):
            if key not in existing:
                try:
                    await self.create_program(key, primacy=primacy, description=description[:32])
                except (AdminError, sa.exc.IntegrityError):  # another server process just created it
                    pass

    # -- controls

    async def create_control(
        self,
        program: str,
        target: str,
        *,
        start: int | None = None,
        duration: int,
        base: r.DERControlBase,
        randomize_start: int | None = None,
        randomize_duration: int | None = None,
        response_required: str | None = "03",
        description: str | None = None,
        supersede: bool = True,
        der: int | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> str:
        """Publish a DERControl on ``program`` for ``target``; returns its mRID. With ``der`` (the id of
        one of the target site's DERs) it is for that DER alone (:meth:`_der_target`).

        With ``supersede`` the new control replaces earlier live controls of the same program and target
        only over its own span: each overlapping one is marked superseded (2030.5 EventStatus 4, so clients
        answer 7) and what is left of it before and after the new span is published again as pieces: new
        DERControls with the same settings whose ``split_from`` is the operator's original
        (:func:`server.store.timeline.remainders`). A piece that continues the original in force starts
        ``CONTINUATION_BACKDATE_S`` before ``now`` (within the original's own span, so it meets no other
        live control), so that a client with a clock a little behind the server's sees no gap. The live
        published controls of a program and target therefore never overlap from now on.
        """
        now = self.store.clock()
        start = now if start is None else start
        if not isinstance(duration, int) or not 0 < duration < 2**32:
            raise AdminError(f"duration: must be a positive number of seconds, got {duration!r}")
        if not isinstance(start, int) or start < 0:
            raise AdminError(f"start: must be a Unix time in seconds, got {start!r}")
        for name, value in (("randomize_start", randomize_start), ("randomize_duration", randomize_duration)):
            if value is not None and not -(2**15) <= value < 2**15:
                raise AdminError(f"{name}: must fit in Int16, got {value}")
        if response_required is not None:
            try:
                if not 0 <= int(response_required, 16) <= 255 or len(response_required) != 2:
                    raise ValueError
            except ValueError:
                raise AdminError(f"response_required: two hex digits, got {response_required!r}") from None
        if description is not None and len(description) > 32:
            raise AdminError("description: at most 32 characters")
        if not isinstance(base, r.DERControlBase):
            raise AdminError("base: must be a sep2 DERControlBase (see build_control_base)")
        mrid = new_mrid(self.store.pen)
        async with self.store.changing() as conn:
            program_id = await self._program_id(conn, program)
            key = await self._der_target(conn, await self._resolve_target(conn, target), der)
            self.store.touch(("target", key))
            pieces: list[str] = []
            if supersede:
                pieces = await self._split_around(conn, program_id, key, start, start + duration, now)
                if program == DOE_PROGRAM and key.startswith("s:"):  # and the site's bulk DOE rows
                    await cut_for_control(conn, int(key[2:]), start, start + duration, now=now, actor=actor,
                                          mrid=mrid)  # fmt: skip
            await conn.execute(
                controls.insert().values(
                    mrid=mrid,
                    program_id=program_id,
                    target=key,
                    start=start,
                    duration=duration,
                    randomize_start=randomize_start,
                    randomize_duration=randomize_duration,
                    response_required=response_required,
                    base=json.dumps(to_jsonable(base), separators=(",", ":")),
                    description=description,
                    creation_time=now,
                    version=0,
                )
            )
            await _enqueue(conn, now, kinds=("derc", "actderc"), program_id=program_id, target=key)
            if der is not None:  # the DER's DERProgramList may have gained the program
                await _enqueue(conn, now, kinds=("derp",), target=key)
            await self._audit(
                conn,
                actor,
                "control.create",
                target,
                reason,
                program=program,
                der=der,
                mrid=mrid,
                start=start,
                duration=duration,
                base=to_jsonable(base),
                pieces=pieces or None,
            )
        return mrid

    async def _split_around(
        self, conn: AsyncConnection, program_id: int, key: str, start: int, end: int, now: int
    ) -> list[str]:
        """Supersede the live controls of (program, target) overlapping [start, end) and publish what is
        left of each as pieces; returns the pieces' mRIDs."""
        overlapping = (
            await conn.execute(
                sa.select(controls).where(
                    controls.c.program_id == program_id,
                    controls.c.target == key,
                    controls.c.cancelled_at.is_(None),
                    controls.c.superseded_at.is_(None),
                    controls.c.start < end,
                    controls.c.start + controls.c.duration > start,
                )
            )
        ).all()
        created = []
        for row in overlapping:
            created += await self.supersede_with_pieces(conn, row, [(start, end)], now)
        return created

    async def supersede_with_pieces(
        self, conn: AsyncConnection, row: Any, cuts: list[tuple[int, int]], now: int
    ) -> list[str]:
        """Mark the control ``row`` superseded and publish what is left of it outside ``cuts`` (and after
        ``now``) as pieces with its settings; returns the pieces' mRIDs."""
        await conn.execute(
            controls.update()
            .where(controls.c.id == row.id)
            .values(superseded_at=now, version=controls.c.version + 1)
        )
        parts = [(row.start, row.start + row.duration)]
        for cut_start, cut_end in cuts:
            parts = [p for a, b in parts for p in remainders(a, b, cut_start, cut_end, now=now)]
        created = []
        for a, b in parts:
            in_force = a < now
            if in_force:
                # The piece continues the original in force. It starts a little before now (never before
                # the original), not at now: to a client whose clock is behind the server's, a piece
                # starting at the server's now would lie in the future, and between the original's end
                # (superseded) and the piece's start nothing would apply.
                a = max(a, now - CONTINUATION_BACKDATE_S)
            piece = new_mrid(self.store.pen)
            await conn.execute(
                controls.insert().values(
                    mrid=piece,
                    program_id=row.program_id,
                    target=row.target,
                    start=a,
                    duration=b - a,
                    # Randomisation only at the original's own edges: a cut edge meets the new
                    # control exactly, so spreading it would open a gap or an overlap.
                    randomize_start=row.randomize_start if a == row.start and not in_force else None,
                    randomize_duration=row.randomize_duration if b == row.start + row.duration else None,
                    response_required=row.response_required,
                    base=row.base,
                    description=row.description,
                    creation_time=now,
                    version=0,
                    split_from=row.split_from or row.id,
                )
            )
            created.append(piece)
        return created

    async def cancel_control(self, mrid: str, *, actor: str = "system", reason: str | None = None) -> None:
        now = self.store.clock()
        async with self.store.changing() as conn:
            row = (await conn.execute(sa.select(controls).where(controls.c.mrid == mrid.upper()))).first()
            if row is None:
                raise AdminError(f"mrid: no control {mrid}")
            self.store.touch(("target", row.target))
            # The control and, for an operator's original that was split, its live pieces. A control
            # already superseded stays superseded (its clients answered 7); its pieces are cancelled.
            live = (
                (
                    await conn.execute(
                        sa.select(controls.c.id).where(
                            sa.or_(controls.c.id == row.id, controls.c.split_from == row.id),
                            controls.c.cancelled_at.is_(None),
                            controls.c.superseded_at.is_(None),
                        )
                    )
                )
                .scalars()
                .all()
            )
            if live:
                await conn.execute(
                    controls.update()
                    .where(controls.c.id.in_(live))
                    .values(cancelled_at=now, version=controls.c.version + 1)
                )
                await _enqueue(
                    conn, now, kinds=("derc", "actderc"), program_id=row.program_id, target=row.target
                )
            await self._audit(conn, actor, "control.cancel", mrid, reason)

    async def set_default_control(
        self,
        program: str,
        target: str,
        *,
        base: r.DERControlBase,
        set_grad_w: int | None = None,
        description: str | None = None,
        der: int | None = None,
        actor: str = "system",
        reason: str | None = None,
    ) -> str:
        """Create or replace the DefaultDERControl of ``program`` for ``target`` (with ``der``: for that
        DER of the site alone, see :meth:`_der_target`); returns its mRID."""
        if set_grad_w is not None and not 0 <= set_grad_w <= 65535:
            raise AdminError(f"set_grad_w: must be 0..65535, got {set_grad_w}")
        if not isinstance(base, r.DERControlBase):
            raise AdminError("base: must be a sep2 DERControlBase (see build_control_base)")
        now = self.store.clock()
        body = json.dumps(to_jsonable(base), separators=(",", ":"))
        async with self.store.changing() as conn:
            program_id = await self._program_id(conn, program)
            key = await self._der_target(conn, await self._resolve_target(conn, target), der)
            self.store.touch(("target", key))
            row = (
                await conn.execute(
                    sa.select(default_controls).where(
                        default_controls.c.program_id == program_id, default_controls.c.target == key
                    )
                )
            ).first()
            if row is None:
                mrid = new_mrid(self.store.pen)
                await conn.execute(
                    default_controls.insert().values(
                        mrid=mrid,
                        program_id=program_id,
                        target=key,
                        base=body,
                        set_grad_w=set_grad_w,
                        description=description,
                        version=0,
                        changed_time=now,
                    )
                )
            else:
                mrid = row.mrid
                await conn.execute(
                    default_controls.update()
                    .where(default_controls.c.id == row.id)
                    .values(
                        base=body,
                        set_grad_w=set_grad_w,
                        description=description,
                        version=(row.version + 1) % 65536,
                        changed_time=now,
                    )
                )
            # Higher-primacy programs inherit the modes it sets (ControlsStore.effective_default): every
            # DefaultDERControl subscription of the target's sites is notified, not only this program's.
            await _enqueue(conn, now, kinds=("dderc",) + (("derp",) if der is not None else ()), target=key)
            await self._audit(
                conn, actor, "default.set", target, reason, program=program, der=der, base=to_jsonable(base)
            )
        return mrid

    async def set_rate(
        self,
        resource: str,
        value: int,
        target: str = "all",
        *,
        actor: str = "system",
        reason: str | None = None,
    ) -> None:
        """Set a pollRate (resource in RATE_RESOURCES) or the MUP postRate ("post") for a target."""
        if resource not in RATE_RESOURCES:
            raise AdminError(f"resource: {resource!r} is not one of {', '.join(RATE_RESOURCES)}")
        if not isinstance(value, int) or not 1 <= value < 2**32:
            raise AdminError(f"value: a rate is a positive number of seconds, got {value!r}")
        async with self.store.changing() as conn:
            key = await self._resolve_target(conn, target)
            self.store.touch(("rate", key))
            stmt = _insert(conn, rate_settings).values(resource=resource, target=key, value=value)
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["resource", "target"], set_={"value": value})
            )
            # A pollRate is part of the list it is on: its subscribers are notified (issue 11 item 7).
            if resource in RATE_NOTIFIES:
                await _enqueue(conn, self.store.clock(), kinds=RATE_NOTIFIES[resource], target=key)
            await self._audit(conn, actor, "rate.set", target, reason, resource=resource, value=value)

    # -- queries for the head-end

    async def responses_for_control(self, mrid: str) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        responses.c.status, responses.c.created_time, responses.c.received_at, sites.c.lfdi
                    )
                    .join(controls, controls.c.id == responses.c.control_id)
                    .join(sites, sites.c.id == responses.c.site_id)
                    .where(controls.c.mrid == mrid.upper())
                    .order_by(responses.c.id)
                )
            ).all()
        return [dict(row._mapping) for row in rows]

    async def site_readings(
        self, lfdi: str, *, since: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Telemetry of a site: one dict per reading with its MUP/MMR mRIDs, ReadingType and time."""
        query = (
            sa.select(
                readings.c.time_start,
                readings.c.duration,
                readings.c.value,
                readings.c.quality_flags,
                meter_readings.c.mrid.label("mmr_mrid"),
                meter_readings.c.description,
                meter_readings.c.reading_type,
                mups.c.mrid.label("mup_mrid"),
            )
            .join(meter_readings, meter_readings.c.id == readings.c.meter_reading_id)
            .join(mups, mups.c.id == meter_readings.c.mup_id)
            .join(sites, sites.c.id == mups.c.site_id)
            .where(sites.c.lfdi == lfdi.upper())
        )
        if since is not None:
            query = query.where(readings.c.time_start >= since)
        async with self.store.read() as conn:
            rows = (
                await conn.execute(query.order_by(readings.c.time_start, readings.c.id).limit(limit))
            ).all()
        out = []
        for row in rows:
            item = dict(row._mapping)
            item["reading_type"] = from_xml(item["reading_type"].encode(), r.ReadingType)
            out.append(item)
        return out

    async def site_der_documents(self, lfdi: str) -> dict[str, Any]:
        """The DERCapability/DERSettings/DERStatus/DERAvailability last PUT by a site, by short name."""
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(der_documents.c.kind, der_documents.c.xml)
                    .join(ders, ders.c.id == der_documents.c.der_id)
                    .join(sites, sites.c.id == ders.c.site_id)
                    .where(sites.c.lfdi == lfdi.upper())
                    .order_by(ders.c.id.desc())  # several DERs: the first one's (dict below)
                )
            ).all()
        return {row.kind: from_xml(row.xml.encode(), DER_DOCUMENT_TYPES[row.kind]) for row in rows}

    async def audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))
            ).all()
        return [dict(row._mapping) for row in rows]

    async def table_dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table except the contact bookkeeping (tests compare before/after)."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        async with self.store.read() as conn:
            for table in metadata.sorted_tables:
                query = sa.select(table)
                if table is clients:
                    query = sa.select(
                        clients.c.lfdi, clients.c.kind, clients.c.aggregator_id, clients.c.revoked
                    )
                elif table is sites:  # last_contact moves with any request (to SITE_CONTACT_EVERY s)
                    query = sa.select(*(c for c in sites.c if c is not sites.c.last_contact))
                out[table.name] = [
                    tuple(row) for row in (await conn.execute(query.order_by(*table.primary_key)))
                ]
        return out
