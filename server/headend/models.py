"""The head-end API's bodies as pydantic models: what a request may carry (unknown fields forbidden, no
coercion: "5kW" is not a number), what its query string means, and what each answer holds.

The router (server.headend.routing) validates requests and answers against these, and the OpenAPI document
is generated from them, so the description cannot drift from what is served. Rules that need the
database (does the group exist, is the LFDI registered) stay with the store, whose errors name the field too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, model_validator

from sep2.identity import operator_lfdi
from sep2.nmi import validate_nmi
from sep2.validation import FieldError

# ------------------------------------------------------------------------------------------ field types

UINT32 = 2**32 - 1


def _target(value: str) -> str:
    return "all" if value in ("broadcast", "group:all", "group:broadcast") else value


def _nmi(value: str) -> str:
    nmi = validate_nmi(value)  # NmiError is a ValueError naming the problem
    return nmi.with_checksum if nmi.checksum_given else nmi.nmi


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("a non-empty string is required")
    return value


Target = Annotated[
    str,
    Field(min_length=1, description="'all', 'group:NAME', 'site:LFDI' or 'nmi:NMI'"),
    AfterValidator(_target),
]
Reason = Annotated[str, Field(max_length=256, description="why, for the audit log")]
Nmi = Annotated[str, AfterValidator(_nmi), Field(description="AEMO NMI: 10 characters, or 11 with checksum")]
Lfdi = Annotated[str, AfterValidator(operator_lfdi), Field(description="40 hex digits")]
Text = Annotated[str, AfterValidator(_not_blank)]
Watts = Annotated[float, Field(ge=0)]
Int16 = Annotated[int, Field(ge=-(2**15), le=2**15 - 1)]
Seconds = Annotated[int, Field(ge=0, le=UINT32)]
Offset = Annotated[int, Field(ge=0, le=10**12)]
Timestamp = Annotated[int, Field(ge=0, le=10**12, description="Unix seconds")]


class Body(BaseModel):
    """A JSON request body: unknown fields are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """A query string: values arrive as text and are converted; unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Answer(BaseModel):
    """A JSON answer; every key is declared."""

    model_config = ConfigDict(extra="forbid")


class Document(RootModel[dict[str, Any]]):
    """A JSON object whose layout belongs to another module (a DER document, a compliance report)."""


# ------------------------------------------------------------------------------------------ shared parts


class ControlLimits(Body):
    """A DERControlBase in operator units (watts, percent, 1/100 s); every mode is optional."""

    import_limit_w: Watts | None = Field(None, description="opModImpLimW, W")
    export_limit_w: Watts | None = Field(None, description="opModExpLimW, W")
    generation_limit_w: Watts | None = Field(None, description="opModGenLimW, W")
    load_limit_w: Watts | None = Field(None, description="opModLoadLimW, W")
    target_w: float | None = Field(None, description="opModTargetW, W (negative: import)")
    storage_target_w: float | None = Field(
        None, description="csipaus:opModStorageTargetW (CSIP-AUS v1.3), W: + discharge, - charge"
    )
    connect: bool | None = Field(None, description="opModConnect")
    energize: bool | None = Field(None, description="opModEnergize")
    fixed_w_percent: Annotated[int, Field(ge=-10000, le=10000)] | None = Field(
        None, description="opModFixedW, 1/100 % of setMaxW"
    )
    max_lim_w_percent: Annotated[int, Field(ge=0, le=10000)] | None = Field(
        None, description="opModMaxLimW, 1/100 % of setMaxW"
    )
    ramp_tms: Annotated[int, Field(ge=0, le=65535)] | None = Field(None, description="rampTms, 1/100 s")

    def base_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ControlLimits.model_fields}


BASE_FIELDS = tuple(ControlLimits.model_fields)


class Limits(Answer):
    import_limit_w: float | None = None
    export_limit_w: float | None = None
    generation_limit_w: float | None = None
    load_limit_w: float | None = None
    target_w: float | None = None
    storage_target_w: float | None = None
    connect: bool | None = None
    energize: bool | None = None
    fixed_w_percent: int | None = None
    max_lim_w_percent: int | None = None
    ramp_tms: int | None = None


class Control(Answer):
    mrid: str
    program: str
    target: str
    der: int | None = Field(None, description="the DER of the target site it is for alone, if any")
    start: int
    duration: int
    status: str
    limits: Limits
    randomize_start: int | None
    randomize_duration: int | None
    response_required: str | None
    description: str | None
    created: int | None


class Created(Answer):
    id: int
    name: str


class Page(Query):
    offset: Offset = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class ReasonQuery(Query):
    reason: Reason | None = None


class ReasonBody(Body):
    reason: Reason | None = None


class ErrorAnswer(Answer):
    error: str
    field: str | None = Field(None, description="the request field, path or query parameter at fault")


# ------------------------------------------------------------------------------------------ basics


class WhoAmI(Answer):
    name: str
    role: Literal["operator", "viewer"]


# ------------------------------------------------------------------------------------------ sites


class SiteSearch(Page):
    q: str | None = Field(None, description="LFDI or NMI prefix, or part of the label")
    group: str | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class SiteItem(Answer):
    id: int
    lfdi: str
    sfdi: int
    nmi: str | None
    label: str | None
    aggregator: str | None
    groups: list[str]
    registered: int | None
    last_contact: int | None


class SiteList(Answer):
    total: int
    offset: int
    items: list[SiteItem]


class SiteRegister(Body):
    lfdi: str
    sfdi: Annotated[int, Field(ge=0)] | None = None
    nmi: Nmi | None = None
    pin: Annotated[int, Field(ge=0, le=999999)] | None = None
    label: Annotated[str, Field(max_length=128)] | None = None
    groups: list[str] | None = None
    aggregator: str | None = None
    device_category: str | None = None
    reason: Reason | None = None


class SiteRegistered(Answer):
    id: int
    lfdi: str
    href: str


class BulkSite(Body):
    lfdi: Lfdi
    nmi: Nmi | None = None
    pin: Annotated[int, Field(ge=0, le=999999)] | None = None
    label: Annotated[str, Field(max_length=128)] | None = None
    groups: list[str] | None = None
    aggregator: str | None = None
    device_category: str | None = None


class SitesBulk(Body):
    sites: list[BulkSite]
    reason: Reason | None = None


class BulkRegistered(Answer):
    registered: int


class Comms(Answer):
    last_contact: int | None
    seconds_since_contact: int | None
    revoked: bool


class ProgramControls(Answer):
    program: str
    primacy: int
    active: list[Control]
    next: Control | None
    default: Limits | None


class Unsupported(Answer):
    mrid: str
    program: str
    modes: list[str]


class SiteResponse(Answer):
    status: int
    created_time: int | None
    received_at: int | None
    mrid: str


class SiteDetail(Answer):
    id: int
    lfdi: str
    sfdi: int
    nmi: str | None
    pin: int | None
    label: str | None
    aggregator: str | None
    groups: list[str]
    registered: int | None
    edev: str
    comms: Comms
    der: dict[str, Any] = Field(
        description="the site's DER documents (DERCapability, DERSettings ...) as JSON"
    )
    programs: list[ProgramControls]
    unsupported_controls: list[Unsupported]
    telemetry: list[dict[str, Any]]
    responses: list[SiteResponse]
    mirror_usage_points: int


class Removed(Answer):
    controls: int
    does: int
    mups: int


class Deregistered(Answer):
    deregistered: str
    removed: Removed


class Membership(Answer):
    site: str
    group: str
    member: bool


class MupsCleared(Answer):
    site: str
    removed: int


class SiteDoesQuery(Query):
    since: Timestamp | None = None
    limit: Annotated[int, Field(ge=1, le=10000)] = 500


class DoeInterval(Answer):
    start: int
    duration: int
    import_limit_w: float | None
    export_limit_w: float | None
    generation_limit_w: float | None
    load_limit_w: float | None
    mrid: str
    upload: int | None
    row_start: int = Field(description="the uploaded row that set this piece: its start ...")
    row_duration: int = Field(description="... and duration")


class SiteDoes(Answer):
    site: str
    items: list[DoeInterval]


# ------------------------------------------------------------------------------------------ groups


class GroupItem(Answer):
    name: str
    parent: str | None
    description: str | None
    members: int
    builtin: bool


class GroupList(Answer):
    items: list[GroupItem]


def _not_broadcast(name: str) -> str:
    if name in ("all", "broadcast"):
        raise ValueError(f"{name!r} is the built-in broadcast group")
    return name


class GroupCreate(Body):
    name: Annotated[str, Field(min_length=1), AfterValidator(_not_broadcast)]
    parent: str | None = None
    description: Annotated[str, Field(max_length=128)] | None = None
    reason: Reason | None = None


class GroupMember(Answer):
    lfdi: str
    nmi: str | None


class GroupDetail(Answer):
    name: str
    parent: str | None
    description: str | None
    children: list[str]
    programs: list[str]
    fsa: int
    total_sites: int
    sites: list[GroupMember]


# ------------------------------------------------------------------------------------------ programs


Primacy = Annotated[int, Field(ge=0, le=255, description="2030.5 primacy (UInt8): lower wins")]
String32 = Annotated[str, Field(max_length=32, description="2030.5 String32")]


class ProgramItem(Answer):
    id: int
    key: str
    mrid: str
    primacy: int
    description: str | None
    group: str | None
    enabled: bool


class ProgramList(Answer):
    items: list[ProgramItem]


class ProgramCreate(Body):
    key: Annotated[str, Field(min_length=1)]
    primacy: Primacy
    description: String32 | None = None
    group: str | None = None
    reason: Reason | None = None


class ProgramUpdate(Body):
    description: Annotated[String32, Field(min_length=1)] | None = None
    primacy: Primacy | None = None
    group: str | None = Field(None, description='"" = every site')
    enabled: bool | None = None
    reason: Reason | None = None


class ProgramCreated(Answer):
    id: int
    key: str


class ProgramKey(Answer):
    key: str


# ------------------------------------------------------------------------------------------ defaults


class DefaultItem(Answer):
    mrid: str
    program: str
    target: str
    der: int | None = None
    limits: Limits
    set_grad_w: int | None
    changed: int | None


class DefaultList(Answer):
    items: list[DefaultItem]


DerId = Annotated[
    int,
    Field(
        ge=1,
        description="with a site target: the id of one of its DERs (as in GET /api/sites/{site}/ders, "
        "the d of /edev/{e}/der/{d}); the control is then for that DER alone, published in its own "
        "DERProgramList (2030.5 §10.10 DER.AssociatedDERProgramListLink). CSIP-AUS procedures target "
        "the site only.",
    ),
]


class DefaultSet(ControlLimits):
    program: str
    target: Target
    der: DerId | None = None
    set_grad_w: Annotated[int, Field(ge=0, le=UINT32)] | None = Field(None, description="setGradW, 1/100 %/s")
    description: String32 | None = None
    reason: Reason | None = None


class Mrid(Answer):
    mrid: str


# ------------------------------------------------------------------------------------------ controls


class ControlQuery(Page):
    program: str | None = None
    target: Target | None = None
    active: bool = Field(False, description="only controls not yet over, cancelled or superseded")


class ControlList(Answer):
    total: int
    offset: int
    items: list[Control]


class ControlCreate(ControlLimits):
    program: str
    target: Target
    der: DerId | None = None
    start: Timestamp | Literal["now"] | None = Field(None, description='Unix seconds; "now" or absent: now')
    duration: Seconds
    randomize_start: Int16 | None = None
    randomize_duration: Int16 | None = None
    response_required: Annotated[str, Field(pattern="^[0-9a-fA-F]{2}$")] | None = Field(
        "03", description="responseRequired (HexBinary8); default 03: received and started"
    )
    description: String32 | None = None
    reason: Reason | None = None


class UnsupportedSite(Answer):
    lfdi: str
    modes: list[str]


class UnsupportedBy(Answer):
    checked: int
    sites: list[UnsupportedSite]


class ControlCreated(Answer):
    mrid: str
    unsupported: UnsupportedBy


class Acknowledgements(Answer):
    sites_targeted: int
    acknowledged: int
    latest: dict[str, int]
    none: int


class ControlDetail(Control):
    split_from: int | None
    pieces: list[Control]
    acknowledgements: Acknowledgements
    responses: list[dict[str, Any]]


class DoeControl(Answer):
    """A DOE interval seen as a control (its derived mRID)."""

    mrid: str
    program: Literal["doe"]
    target: str
    start: int
    duration: int
    upload: int | None
    limits: Limits
    href_id: int


class AckQuery(Query):
    within: Annotated[int, Field(ge=0, le=10**7, description="seconds a site has to answer")] | None = None
    format: Literal["json", "csv"] = "json"


class AckSummary(Answer):
    mrid: str
    program: str
    target: str
    created: int | None
    response_required: str | None
    within_s: int
    due: int | None
    sites_targeted: int
    acknowledged: int
    by_status: dict[str, int]
    latest: dict[str, int]
    none: int
    late: list[str]
    non_responders: list[str]
    awaiting: list[str]


class ControlCancelled(Answer):
    mrid: str
    status: Literal["cancelled"]


# ------------------------------------------------------------------------------------------ compliance


class Scope(Query):
    site: str | None = Field(None, description="a site's LFDI (or nmi:NMI)")
    group: str | None = None
    to: Timestamp | None = Field(None, description="end of the range (default now)")
    from_: Timestamp | None = Field(None, alias="from", description="start of the range")
    format: Literal["json", "csv"] = "json"


class ComplianceQuery(Scope):
    tolerance_w: Annotated[float, Field(ge=0)] | None = None
    tolerance_pct: Annotated[float, Field(ge=0)] | None = None
    settle_s: Annotated[float, Field(ge=0)] | None = None
    silent_posts: Annotated[int, Field(ge=0)] | None = None
    ack_within_s: Annotated[int, Field(ge=0)] | None = None
    persistent_breach_s: Annotated[int, Field(ge=0)] | None = None
    detail: bool = False


class ComplianceAct(Body):
    site: str
    duration: Annotated[int, Field(ge=1, le=UINT32)] = 3600
    export_limit_w: Watts = 0.0
    reason: Reason


class Telemetry(Document):
    """Readings in real units per site, and totals per group."""


class ComplianceReport(Document):
    """The compliance assessment (server.compliance.assess)."""


# ------------------------------------------------------------------------------------------ emergencies

EMERGENCY_ACTIONS: dict[str, dict[str, Any]] = {
    "zero_export": {"export_limit_w": 0},
    "zero_generation": {"generation_limit_w": 0},
    "generation_limit": {},  # generation_limit_w from the request
    "disconnect": {"connect": False},
    "deenergise": {"energize": False},
}


class Emergency(Body):
    target: Target
    action: Literal["zero_export", "zero_generation", "generation_limit", "disconnect", "deenergise"]
    generation_limit_w: Watts | None = Field(None, description="for action generation_limit only")
    duration: Annotated[int, Field(ge=1, le=UINT32)] = Field(86400, description="until lifted, at most")
    randomize_duration: Int16 | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _limit(self) -> Emergency:
        if self.action == "generation_limit" and self.generation_limit_w is None:
            raise FieldError(("generation_limit_w",), "required for action generation_limit")
        if self.action != "generation_limit" and self.generation_limit_w is not None:
            raise FieldError(("generation_limit_w",), "only for action generation_limit")
        return self


class EmergencyIssued(Answer):
    mrid: str
    action: str
    target: str
    duration: int


class EmergencyLift(Body):
    target: Target | None = None
    mrid: str | None = None
    spread: Annotated[int, Field(ge=1, le=2**15 - 1)] | None = Field(
        None, description="seconds over which sites end it at random (randomizeDuration is Int16)"
    )
    waves: Annotated[list[Target], Field(min_length=1)] | None = Field(None, description="group targets")
    wave_interval: Annotated[int, Field(ge=1, le=UINT32)] | None = None
    reason: Reason | None = None

    @model_validator(mode="after")
    def _mode(self) -> EmergencyLift:
        if (self.target is None) == (self.mrid is None):
            raise FieldError(("target",), "give either target or mrid")
        if self.waves is not None:
            if self.spread is not None:
                raise FieldError(("waves",), "give either spread or waves, not both")
            if self.wave_interval is None:
                raise FieldError(("wave_interval",), "required with waves, a positive number of seconds")
        return self


class Wave(Answer):
    mrid: str
    wave: int
    target: str
    release_at: int


class Lifted(Answer):
    lifted: list[str]
    mode: Literal["immediate", "spread", "waves"]
    spread: int | None
    waves: list[Wave]


# ------------------------------------------------------------------------------------------ DOEs


class DoeUploadQuery(Query):
    format: Literal["csv", "json"] | None = Field(None, description="default: from the Content-Type")
    reason: Reason | None = None


class DoeUploaded(Answer):
    upload_id: int
    rows: int
    sites: int
    first_start: int | None
    last_end: int | None
    seconds: float


class Limit(Query):
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class DoeUpload(Answer):
    id: int
    at: int
    actor: str
    rows: int
    sites: int
    first_start: int | None
    last_end: int | None
    reason: str | None


class DoeUploadList(Answer):
    items: list[DoeUpload]


# ------------------------------------------------------------------------------------------ rates


class RateDefaults(Answer):
    poll_rate: int
    post_rate: int


class RateItem(Answer):
    resource: str
    target: str
    value: int


class RateList(Answer):
    defaults: RateDefaults
    items: list[RateItem]


class RateSet(Body):
    resource: str
    value: Annotated[int, Field(ge=1, le=UINT32, description="seconds")]
    target: Target | None = None
    reason: Reason | None = None


class RateClear(Query):
    resource: str
    target: Target = "all"
    reason: Reason | None = None


class RateCleared(Answer):
    resource: str
    target: str
    removed: bool


# ------------------------------------------------------------------------------------------ clients


class ClientItem(Answer):
    lfdi: str
    kind: str
    aggregator: str | None
    revoked: bool
    first_seen: int | None
    last_seen: int | None


class ClientList(Answer):
    items: list[ClientItem]


class Revoked(Answer):
    lfdi: str
    revoked: bool


class Certificate(Answer):
    lfdi: str
    revoked: bool


class AggregatorItem(Answer):
    name: str
    sites: int
    certificates: list[Certificate]


class AggregatorList(Answer):
    items: list[AggregatorItem]


class AggregatorCreate(Body):
    name: Annotated[str, Field(min_length=1)]
    lfdis: list[str] | None = None
    reason: Reason | None = None


class CertificateAdd(Body):
    lfdi: str
    reason: Reason | None = None


class CertificateAdded(Answer):
    aggregator: str
    added: str


class CertificateRemoved(Answer):
    aggregator: str
    removed: str


# ------------------------------------------------------------------------------------------ audit


class AuditQuery(Page):
    actor: str | None = Field(None, description="* matches anything")
    action: str | None = Field(None, description="* matches anything, e.g. control.*")
    target: str | None = Field(None, description="part of the target")
    since: Timestamp | None = None
    until: Timestamp | None = None
    limit: Annotated[int, Field(ge=1, le=10000)] = 100


class AuditEntry(Answer):
    id: int
    at: int
    actor: str
    action: str
    target: str | None
    reason: str | None
    detail: dict[str, Any] | None


class AuditLog(Answer):
    total: int
    offset: int
    items: list[AuditEntry]


# ------------------------------------------------------------------------------------------ incidents


class IncidentQuery(Query):
    open: bool = False
    subject: str | None = None


class Note(Answer):
    at: float
    actor: str
    text: str
    action: str | None
    from_state: str | None
    to_state: str | None


class Incident(Answer):
    id: str
    subject: str
    kind: str
    severity: str
    reporter: str
    holder: str
    state: str
    referred_to: str | None
    root_cause: str | None
    timeline: list[Note]


class IncidentList(Answer):
    total: int
    items: list[Incident]


class IncidentRaise(Body):
    subject: Text
    kind: Text
    severity: Text
    text: Text
    holder: Text | None = None


class IncidentRaised(Answer):
    created: bool
    incident: Incident


class IncidentsFromCompliance(Body):
    site: str | None = None
    group: str | None = None
    from_: Timestamp | None = Field(None, alias="from")
    to: Timestamp | None = None


class IncidentsRaised(Answer):
    scope: str
    from_: int = Field(alias="from")
    to: int
    findings: int
    created: list[str]
    noted: list[str]


class IncidentAct(Body):
    action: Text
    reason: Text
    referred_to: Text | None = None
    root_cause: Text | None = None
