"""The web API's request and response bodies: the contract the front end relies on.

Every JSON route declares one of these as its answer, so ``/openapi.json`` (``/docs``
for administrators and the operator token) is the contract, and
``tests/test_api_contract.py`` checks the front end's calls against it.  Field names
and shapes are those the front end and the browser tests read; change them together.

Pure data: no database access here.  Services build these from rows
(:mod:`viewer.worklist`, :mod:`viewer.report_views`, :mod:`viewer.ecg_queue`, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from core.errors import RDCError
from reports.templates import get_template

# Operations ------------------------------------------------------------------------


class DependencyOut(BaseModel):
    """One dependency's state (:class:`core.health.DependencyStatus`)."""

    status: Literal["ok", "down", "timeout"]
    latency_ms: float | None = None
    #: The exception's type when down; details are in the web app's log.
    error: str | None = None


class HealthOut(BaseModel):
    """``status`` is ``ok`` while the process answers (liveness); ``ready`` says whether
    every dependency answered too."""

    status: str
    role: str = "web"
    ready: bool = True
    dependencies: dict[str, DependencyOut] = Field(default_factory=dict)


class SiteCountsOut(BaseModel):
    """A site's instance counts (:class:`core.stats.SiteStatus`, read from its attributes)."""

    model_config = ConfigDict(from_attributes=True)

    site_id: str
    name: str
    enabled: bool
    received: int
    spooled: int
    stored: int
    failed: int


class SiteStatusOut(SiteCountsOut):
    """A site's instance counts and its studies by state (``/api/status``)."""

    studies: dict[str, int]


class StatusOut(BaseModel):
    sites: list[SiteStatusOut]
    jobs: dict[str, dict[str, int]] = Field(description="Job kind → state → count.")


# Sign-in and accounts ----------------------------------------------------------------


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=4096, repr=False)
    totp: str = Field(min_length=1, max_length=32, repr=False,
                      description="The 6-digit code of the user's authenticator app.")


class Me(BaseModel):
    id: int | None
    username: str
    display_name: str
    roles: list[str]
    sites: list[str] | Literal["all"]
    csrf_token: str | None


class LoginOut(BaseModel):
    user: Me
    csrf_token: str


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    roles: list[str]
    sites: list[str] | Literal["all"]
    enabled: bool
    locked_until: datetime | None
    created_at: datetime
    disabled_at: datetime | None


class NewUserIn(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    display_name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=4096, repr=False,
                          description="Initial password, at least 12 characters.")
    roles: list[str] = Field(min_length=1)
    sites: list[str] = Field(default_factory=list)
    all_sites: bool = False


class NewUserOut(BaseModel):
    user: UserOut
    provisioning_uri: str = Field(description="otpauth:// URI for the authenticator app; "
                                              "shown once.")


class TotpOut(BaseModel):
    provisioning_uri: str


# Front door (administrators; no patient data) -------------------------------------------


class FailedInstanceOut(BaseModel):
    receipt_id: str
    site_id: str
    study_uid: str
    sop_instance_uid: str
    received_at: datetime
    error: str
    #: The refused file is still in ``spool/failed`` for someone to look at.
    file_kept: bool


class SpoolFileOut(BaseModel):
    name: str
    size_bytes: int
    modified_at: datetime


class FrontDoorOut(BaseModel):
    failed_total: int
    failed: list[FailedInstanceOut]
    spool: dict[str, int]
    unacknowledged_files: list[SpoolFileOut]
    sites: list[SiteCountsOut]
    checked_at: datetime


# Worklist and studies --------------------------------------------------------------------


class WorkItemOut(BaseModel):
    """One study on the worklist (:class:`viewer.worklist.WorkItem`)."""

    study_id: int
    study_uid: str
    site_id: str
    site_name: str
    patient_id: str
    patient_name: str
    description: str
    modalities: list[str]
    instances: int
    priority: int
    ai_critical: bool
    ai_flags: list[str]
    status: str = Field(description="unread, claimed, reported or signed.")
    claimed_by: str | None
    completed_at: datetime | None
    due_at: datetime | None
    seconds_left: int | None
    report_id: int | None
    priority_label: str = Field(description="STAT, AI CRITICAL, URGENT or ROUTINE.")
    study_date: str = Field(description="DICOM StudyDate, YYYYMMDD.")
    accession_number: str
    patient_sex: str = Field(description='"M", "F", "O" or "".')
    patient_age: str = Field(description='"45y", "6mo" or "".')
    body_part: str


class WorklistOut(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[WorkItemOut]
    #: The next page's ``cursor`` (keyset paging); None on the last page.
    next_cursor: str | None = None


class SiteOut(BaseModel):
    id: str
    name: str
    enabled: bool


class SitesOut(BaseModel):
    sites: list[SiteOut]


class SeriesOut(BaseModel):
    series_uid: str
    modality: str
    description: str
    number: str | int
    kind: str = Field(description="image, sr, seg or pdf.")
    instances: list[str] = Field(description="SOP Instance UIDs by InstanceNumber.")


class AIFindingOut(BaseModel):
    id: int
    label: str
    probability: float
    threshold: float
    positive: bool
    critical: bool
    volume_ml: float | None
    review: str
    model: str
    version: str


class PriorOut(BaseModel):
    study_id: int
    study_uid: str
    site_id: str
    date: str
    description: str
    modalities: list[str]
    match: Literal["id", "name+birthdate"]


class StudyOut(WorkItemOut):
    """A study opened to read: its work item, series, AI findings and priors."""

    series: list[SeriesOut]
    ai_findings: list[AIFindingOut]
    priors: list[PriorOut]


class ShareIn(BaseModel):
    hours: float = Field(default=72, gt=0, le=24 * 90)


class ShareOut(BaseModel):
    id: int
    url: str
    expires_at: datetime


class TurnaroundRow(BaseModel):
    site_id: str
    modality: str
    interval: str
    count: int
    p50_min: float
    p90_min: float
    max_min: float


class TurnaroundOut(BaseModel):
    days: int
    stages: list[str]
    rows: list[TurnaroundRow]


# Reports, AI finding review and deliveries -------------------------------------------------


class VersionOut(BaseModel):
    number: int
    kind: str
    state: str
    fields: dict[str, str]
    author: str
    signed_by: str | None
    signed_at: datetime | None
    hash_algorithm: str | None
    content_hash: str | None
    sr_sop_uid: str | None
    pdf_sop_uid: str | None
    hl7_message: str | None = None
    fhir_report: dict[str, Any] | None = None


class ReportOut(BaseModel):
    id: int | None = Field(description="None: not stored yet (a study's report before its "
                                       "first save).")
    study_id: int | None
    site_id: str
    template: str
    state: str
    versions: list[VersionOut]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def required_fields(self) -> list[str]:
        """The template's fields that must be filled (without a ``{{placeholder}}``)
        before signing, so that the sign dialog names them before it is used."""
        template_id, _, version = self.template.partition("@")
        try:
            template = get_template(template_id, version or None)
        except RDCError:
            return []
        return [f.key for f in template.fields if f.required]


class DeliveryOut(BaseModel):
    id: int
    report_version_id: int | None
    message_id: int | None = None
    site_id: str
    channel: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None
    committed_at: datetime | None


class DraftIn(BaseModel):
    fields: dict[str, str] = Field(default_factory=dict,
                                   description="Template field key → text.")
    state: Literal["draft", "preliminary"] | None = None


class SignIn(BaseModel):
    passphrase: str = Field(min_length=1, repr=False,
                            description="Unlocks the reader's private key; never stored.")
    key_id: int | None = Field(default=None, description="A specific key of the signer.")
    version: int | None = Field(default=None, description="Refuse unless this is current.")


class ReviewIn(BaseModel):
    decision: Literal["accepted", "rejected"]


class ReviewOut(BaseModel):
    id: int
    label: str
    review: str


# ECG ---------------------------------------------------------------------------------------


class StatementOut(BaseModel):
    code: str | None
    text: str | None
    critical: bool


class EcgSummaryOut(BaseModel):
    """One ECG on the cardiologists' queue."""

    id: int
    study_id: int
    site_id: str
    site_name: str
    patient_id: str
    patient_name: str
    patient_sex: str
    patient_age: str
    critical: bool
    quality: str
    confidence: float
    heart_rate_bpm: int | float | None
    statements: list[StatementOut]
    waiting_s: int
    status: Literal["unread", "reported", "signed"]
    edited_by: str | None
    needs_human_measurement: bool


class EcgQueueOut(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[EcgSummaryOut]


class PreviousEcgOut(BaseModel):
    id: int
    study_id: int
    date: str
    measurements: dict[str, Any]
    statements: list[dict[str, Any]]


class TracingOut(BaseModel):
    sampling_rate: float
    duration_s: float
    leads: dict[str, list[float]] = Field(description="Lead name → millivolts.")
    derived_leads: list[str]


class EcgOut(EcgSummaryOut):
    """One ECG opened to read (audited as a view)."""

    sop_instance_uid: str
    measurements: dict[str, Any]
    statements_full: list[dict[str, Any]]
    result: dict[str, Any]
    previous: PreviousEcgOut | None
    ai_findings: list[AIFindingOut] = Field(description="The ECG model's findings.")
    locked: str | None = Field(description="Why its measurements, statements and findings "
                                           "are read-only now, or null.")
    tracing: TracingOut | None = Field(default=None, description="Absent with tracing=false.")


class StatementIn(BaseModel):
    code: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=500)
    critical: bool = False
    evidence: dict[str, Any] = Field(default_factory=dict)


class EditIn(BaseModel):
    measurements: dict[str, Any] | None = Field(
        default=None, description="Measurement name → value; only the names given change.")
    statements: list[StatementIn] | None = Field(
        default=None, description="The full list of statements after the edit.")


class EcgEditOut(BaseModel):
    id: int
    measurements: dict[str, Any]
    statements: list[dict[str, Any]]
    critical: bool
    edited_by: str | None
