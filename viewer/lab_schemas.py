"""Request and response bodies of the lab API (``/api/lab``).

The front end (``pages/lab*.js``) reads these shapes; change them together.  The rows
of the worklist, a result's detail, the notices and the dashboard are built by the
lab's own services (:mod:`lab.review`, :mod:`lab.critical`, :mod:`lab.lj_chart`) and
passed through as they are: their fields are described in viewer/API_CONTRACT.md and
the models below only fix the envelope, so that a field a service adds reaches the
page without a change here.  Pure data: :mod:`viewer.lab_views` builds them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: The most results one signature request may cover (a worklist page).
MAX_SIGN = 200


class HeldOut(BaseModel):
    """The reviewers' worklist: held results, critical first, then oldest."""

    results: list[dict[str, Any]]


class ReviewIn(BaseModel):
    """A reviewer's decision on one held result (approval is by signing)."""

    action: Literal["rerun", "reject", "release"] = Field(
        description="rerun: measure again; reject: no value goes out; release: clear a "
                    "QC hold (audited) so that the result can be signed.")
    reason: str = Field(min_length=1, max_length=2000,
                        description="Why: required for every decision, kept in the audit.")


class ResultOut(BaseModel):
    """One result as the lab shows it (lab.review.result_detail)."""

    model_config = {"extra": "allow"}

    id: int
    state: str


class LabSignIn(BaseModel):
    """Sign several results at once: each gets its own signature."""

    result_ids: list[int] = Field(min_length=1, max_length=MAX_SIGN)
    passphrase: str = Field(min_length=1, repr=False,
                            description="Unlocks the reviewer's private key; never stored.")
    key_id: int | None = Field(default=None, description="A specific key of the signer.")


class SignedOut(BaseModel):
    results: list[dict[str, Any]]


class NoticesOut(BaseModel):
    """Critical-value notices of the caller's sites (lab.critical.notices)."""

    notices: list[dict[str, Any]]


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


class TimelineOut(BaseModel):
    """A specimen's chain of custody, oldest event first (lab.custody.specimen_timeline)."""

    accession: str
    site_id: str
    state: str
    hold_reason: str
    events: list[dict[str, Any]]


class BoxOut(BaseModel):
    """A shipment box: its events, temperature log and specimens (lab.custody.box_timeline)."""

    model_config = {"extra": "allow"}

    box_code: str
    site_id: str


class QcChartOut(BaseModel):
    """A Levey-Jennings chart's data (lab.lj_chart)."""

    model_config = {"extra": "allow"}


class OrderCreatedOut(BaseModel):
    order_id: int
    filler_order_number: str
    accessions: list[str]


class DashboardOut(BaseModel):
    """Critical values per site: result → notification → acknowledgement times."""

    since: str
    sites: list[dict[str, Any]]
