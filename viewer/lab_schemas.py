"""Request and response bodies of the lab API (``/api/lab``).

The front end (``pages/lab*.js``) reads these shapes; change them together.  The rows
are built by the lab's own services (:mod:`lab.review`, :mod:`lab.critical`,
:mod:`lab.custody`, :mod:`lab.lj_chart`) and checked against these models on the way
out, so that the OpenAPI document is the contract.  Pure data: :mod:`viewer.lab_views`
builds them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: The most results one signature request may cover (a worklist page).
MAX_SIGN = 200

# Results -----------------------------------------------------------------------------


class QcStatus(BaseModel):
    """The Westgard verdict of the result's analyte on its run."""

    status: str = Field(description="accept, warning (1-2s) or reject")
    rules: list[str] = Field(description="The rules that fired, e.g. ['1-3s'].")


class RuleFired(BaseModel):
    rule: str
    message: str
    source: str = ""
    severity: str = Field(default="hold", description="hold or info")


class PreviousResult(BaseModel):
    """One of the patient's earlier released results of the test (delta history)."""

    result_id: int
    value: float | None
    value_text: str
    flag: str
    measured_at: str | None


class HeldItem(BaseModel):
    """One result as the worklist lists it (lab.review)."""

    id: int
    state: str
    site_id: str
    order_id: int
    placer_order_number: str
    filler_order_number: str
    priority: str
    patient_id: str
    patient_name: str
    sex: str
    birth_date: str
    visit_number: str
    accession: str
    test_code: str
    test_name: str
    loinc: str
    value: float | None
    value_text: str
    units: str
    ref_low: float | None
    ref_high: float | None
    flag: str = Field(description="HL7 table 0078: '', L, H, LL, HH, A")
    critical: bool
    measured_at: str | None
    analyzer_id: str
    run_id: int | None
    run_code: str | None
    qc: QcStatus | None
    qc_hold: str = Field(description="Why a failing control holds it ('' when none).")
    hil: dict[str, float]
    specimen_hold: str
    rules_fired: list[RuleFired]
    rule_set: str
    history: list[PreviousResult]


class HeldOut(BaseModel):
    """The reviewers' worklist: held results, critical first, then oldest."""

    results: list[HeldItem]


class Review(BaseModel):
    action: str
    reason: str
    by: str
    at: str | None


class Signature(BaseModel):
    by: str | None
    key_id: int | None
    at: str | None
    hash_algorithm: str | None
    content_hash: str | None


class MessageRef(BaseModel):
    """The ORU that carried the result to the site, and the site's ACK."""

    id: int
    kind: str
    control_id: str
    ack_code: str | None
    acked_at: str | None


class Rejection(BaseModel):
    code: str | None
    note: str


class ResultOut(HeldItem):
    """Everything about one result (lab.review.result_detail)."""

    attempts: list[dict[str, Any]] = Field(
        description="Earlier measurements of this test on this specimen (reruns).")
    review: Review
    signature: Signature | None
    message: MessageRef | None
    specimen_rejection: Rejection


class ReviewIn(BaseModel):
    """A reviewer's decision on one held result (approval is by signing)."""

    action: Literal["rerun", "reject", "release"] = Field(
        description="rerun: measure again; reject: no value goes out; release: clear a "
                    "QC hold (audited) so that the result can be signed.")
    reason: str = Field(min_length=1, max_length=2000,
                        description="Why: required for every decision, kept in the audit.")


class LabSignIn(BaseModel):
    """Sign several results at once: each gets its own signature."""

    result_ids: list[int] = Field(min_length=1, max_length=MAX_SIGN)
    passphrase: str = Field(min_length=1, repr=False,
                            description="Unlocks the reviewer's private key; never stored.")
    key_id: int | None = Field(default=None, description="A specific key of the signer.")


class SignedOut(BaseModel):
    results: list[ResultOut]


# QC -------------------------------------------------------------------------------------


class QcPoint(BaseModel):
    id: int
    run_id: int
    run_code: str
    measured_at: str
    value: float
    z: float
    status: str
    rules: list[str]


class QcChartOut(BaseModel):
    """A Levey-Jennings chart's data (lab.lj_chart.chart_data): oldest point first."""

    analyzer: str
    test: str
    level: int
    lot: str
    lot_id: int
    mean: float
    sd: float
    lines: dict[str, float] = Field(description="mean, +1sd ... -3sd as values.")
    points: list[QcPoint]


# Critical values ---------------------------------------------------------------------------


class NoticeItem(BaseModel):
    """One critical-value notice (lab.critical.notice_json)."""

    id: int
    result_id: int
    site_id: str
    state: str
    tier: int
    escalated: bool
    patient_id: str
    patient_name: str
    accession: str
    test_code: str
    value: float | None
    value_text: str
    units: str
    flag: str
    result_at: str | None
    notified_at: str | None
    next_escalation_at: str | None
    ack_by: str
    ack_name: str
    ack_readback: str
    ack_at: str | None
    message_id: int | None
    steps: list[dict[str, Any]]


class NoticesOut(BaseModel):
    """Critical-value notices of the caller's sites, open ones first."""

    notices: list[NoticeItem]


class AckIn(BaseModel):
    """Who took the critical value, and the value as they read it back."""

    name: str = Field(min_length=1, max_length=200)
    readback: str = Field(min_length=1, max_length=64)


class NoticeOut(BaseModel):
    id: int
    result_id: int
    site_id: str
    state: str
    ack_by: str
    ack_name: str
    ack_readback: str
    ack_matches: bool | None
    ack_at: str | None


class DashboardSite(BaseModel):
    """Critical values of one site since ``since`` (lab.critical.dashboard)."""

    site_id: str
    count: int
    notices: int
    median_result_to_notification_s: float | None
    median_notification_to_ack_s: float | None
    acknowledged: int
    escalated: int
    open: int
    pending_first_contact: int
    without_notice: int
    closed_loop_pct: float
    closed_loop: bool


class DashboardOut(BaseModel):
    since: str
    sites: list[DashboardSite]


# Custody ------------------------------------------------------------------------------------


class CustodyEvent(BaseModel):
    step: str
    at: str | None
    actor: str
    location: str
    temperature_c: float | None
    detail: dict[str, Any]


class TimelineOut(BaseModel):
    """A specimen's chain of custody, oldest event first (lab.custody.specimen_timeline)."""

    accession: str
    site_id: str
    state: str
    hold_reason: str
    events: list[CustodyEvent]


class Reading(BaseModel):
    at: str
    temperature_c: float
    in_range: bool


class BoxSpecimen(BaseModel):
    accession: str
    specimen_type: str
    state: str
    hold_reason: str
    rejection_code: str | None


class BoxOut(BaseModel):
    """A shipment box: its events, temperature log and specimens (lab.custody.box_timeline)."""

    id: int
    box_code: str
    site_id: str
    condition: str
    state: str
    courier: str
    packed_at: str | None
    received_at: str | None
    excursion: str
    events: list[CustodyEvent]
    temperature_log: list[Reading]
    specimens: list[BoxSpecimen]


# Orders -------------------------------------------------------------------------------------


class OrderCreatedOut(BaseModel):
    order_id: int
    filler_order_number: str
    accessions: list[str]
