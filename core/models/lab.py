"""The regional lab center: orders from county sites, specimens and their chain of
custody, shipment boxes, analyzer runs and QC, results with their autoverification
verdict and signature, and the closed loop of critical values.

Why here, in core: the center's schema is one Alembic history (``core/migrations``) and
every table is registered on one metadata; the lab's behaviour lives in ``lab/``.  The
state machines are in ``lab/states.py``.  A result row is what the reviewers' worklist
lists, what a signature covers and what goes back to the site.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime
from core.models.base import Base, utcnow


class LabInboundMessage(Base):
    """Every HL7 message (or FHIR bundle) that reached the lab, with the answer it got.

    Kept whether it was accepted or refused, so that nothing a site sent is lost and a
    duplicate message control ID is recognised (unique per sending site).
    """

    __tablename__ = "lab_inbound_messages"
    __table_args__ = (
        UniqueConstraint("sender", "control_id", name="uq_lab_inbound_control"),
        Index("ix_lab_inbound_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: The site id (orders) or analyzer id (instrument ORU) the message came from, as
    #: claimed in MSH-4 and checked against the peer address; "" when unknown.
    sender: Mapped[str] = mapped_column(String(64), default="")
    peer: Mapped[str] = mapped_column(String(64), default="")
    #: "hl7" (MLLP), "fhir" (API) or "astm".
    channel: Mapped[str] = mapped_column(String(8), default="hl7")
    message_type: Mapped[str] = mapped_column(String(16), default="")
    #: MSH-10 (or the FHIR bundle's identifier); refused messages with no usable control
    #: id get a generated "refused-<uuid>" so that they are still kept.
    control_id: Mapped[str] = mapped_column(String(64))
    #: AA (accepted), AE (error: fix and resend) or AR (rejected).
    outcome: Mapped[str] = mapped_column(String(2))
    reason: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[str] = mapped_column(Text, default="")
    order_id: Mapped[int | None] = mapped_column(ForeignKey("lab_orders.id"), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabOrder(Base):
    """One order (ORC/OBR group, or a FHIR ServiceRequest) from a county site."""

    __tablename__ = "lab_orders"
    __table_args__ = (
        UniqueConstraint("site_id", "placer_order_number", name="uq_lab_order_placer"),
        Index("ix_lab_orders_patient", "site_id", "patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    #: ORC-2 / OBR-2 (placer order number): the site's own order id.
    placer_order_number: Mapped[str] = mapped_column(String(64))
    #: The center's filler order number (ORC-3), given on acceptance.
    filler_order_number: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    #: "M", "F" or "U" (reference ranges by sex).
    sex: Mapped[str] = mapped_column(String(1), default="U")
    birth_date: Mapped[str] = mapped_column(String(8), default="")  # YYYYMMDD
    #: PV1-19 visit number: the cumulative PDF is per visit.
    visit_number: Mapped[str] = mapped_column(String(64), default="")
    ordering_provider: Mapped[str] = mapped_column(String(200), default="")
    #: "stat" or "routine".
    priority: Mapped[str] = mapped_column(String(8), default="routine")
    #: lab.states.OrderState
    state: Mapped[str] = mapped_column(String(16), default="ordered")
    #: "hl7" or "fhir".
    source: Mapped[str] = mapped_column(String(8), default="hl7")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabShipment(Base):
    """A shipment box: specimens packed at a site, carried by courier, received here."""

    __tablename__ = "lab_shipments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    #: The box's own barcode.
    box_code: Mapped[str] = mapped_column(String(64), unique=True)
    #: "room", "refrigerated" or "frozen": what the box is meant to keep.
    condition: Mapped[str] = mapped_column(String(16), default="room")
    #: lab.states.ShipmentState: packed → in_transit → received.
    state: Mapped[str] = mapped_column(String(16), default="packed")
    #: The box logger's readings: [[ISO time, °C], ...], appended at each scan.
    temperature_log: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)
    #: Set when a reading left the condition's range (the box's specimens are held).
    excursion: Mapped[str] = mapped_column(Text, default="")
    courier: Mapped[str] = mapped_column(String(128), default="")
    packed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class LabSpecimen(Base):
    """One tube: its label, conditions, custody state and whether it may be analysed."""

    __tablename__ = "lab_specimens"
    __table_args__ = (Index("ix_lab_specimens_order", "order_id"),
                      Index("ix_lab_specimens_box", "shipment_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("lab_orders.id"))
    #: The center's specimen barcode (Code 128 on the label), e.g. "L00000042".
    accession: Mapped[str] = mapped_column(String(32), unique=True)
    #: The site's own specimen id (SPM-2), if it sent one.
    site_specimen_id: Mapped[str] = mapped_column(String(64), default="")
    #: Catalog specimen type and container ("serum"/"SST", "whole blood"/"EDTA", ...).
    specimen_type: Mapped[str] = mapped_column(String(32))
    container: Mapped[str] = mapped_column(String(32), default="")
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Storage condition since collection: "room", "refrigerated" or "frozen".
    condition: Mapped[str] = mapped_column(String(16), default="room")
    spun: Mapped[bool] = mapped_column(Boolean, default=False)
    #: lab.states.CustodyStep of the last scan.
    state: Mapped[str] = mapped_column(String(16), default="ordered")
    shipment_id: Mapped[int | None] = mapped_column(ForeignKey("lab_shipments.id"),
                                                    nullable=True)
    #: Hemolysis / icterus / lipemia indices from the analyzer ({"H": 120, ...}).
    hil: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Coded rejection (lab.custody.REJECTION_CODES) and its free-text note.
    rejection_code: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rejection_note: Mapped[str] = mapped_column(Text, default="")
    #: Why the specimen may not be analysed as it is (stability or temperature);
    #: its results are held while this is set.
    hold_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabCustodyEvent(Base):
    """One scan of a specimen or a box: who, where, when, and the temperature if known."""

    __tablename__ = "lab_custody_events"
    __table_args__ = (Index("ix_lab_custody_specimen", "specimen_id", "at"),
                      Index("ix_lab_custody_box", "shipment_id", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    specimen_id: Mapped[int | None] = mapped_column(ForeignKey("lab_specimens.id"),
                                                    nullable=True)
    shipment_id: Mapped[int | None] = mapped_column(ForeignKey("lab_shipments.id"),
                                                    nullable=True)
    #: lab.states.CustodyStep (collected, packed, courier, received, accessioned,
    #: aliquoted, on_analyzer, stored, disposed, rejected).
    step: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), default="")
    location: Mapped[str] = mapped_column(String(128), default="")
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LabRun(Base):
    """One analyzer run (an ASTM session or an instrument ORU batch)."""

    __tablename__ = "lab_runs"
    __table_args__ = (UniqueConstraint("analyzer_id", "run_code", name="uq_lab_run_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    analyzer_id: Mapped[str] = mapped_column(String(32))
    run_code: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: "receiving" → "received" → "evaluated" (QC and autoverification done).
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    #: Per analyte: "accept", "warning" (1-2s) or "reject" with the rules that fired.
    qc_status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LabControlLot(Base):
    """A QC material lot: the target mean and SD of one analyte at one level."""

    __tablename__ = "lab_control_lots"
    __table_args__ = (UniqueConstraint("analyzer_id", "lot", "test_code", "level",
                                       name="uq_lab_control_lot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    analyzer_id: Mapped[str] = mapped_column(String(32))
    lot: Mapped[str] = mapped_column(String(32))
    test_code: Mapped[str] = mapped_column(String(16))
    level: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float] = mapped_column(Float)
    sd: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabControlResult(Base):
    """One control measurement, and the Westgard rules it broke (with the history)."""

    __tablename__ = "lab_control_results"
    __table_args__ = (Index("ix_lab_control_results_lot", "lot_id", "measured_at"),
                      Index("ix_lab_control_results_run", "run_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lab_control_lots.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("lab_runs.id"))
    value: Mapped[float] = mapped_column(Float)
    #: (value - mean) / sd, kept so that the charts and the rules read the same number.
    z: Mapped[float] = mapped_column(Float)
    #: "accept", "warning" or "reject".
    status: Mapped[str] = mapped_column(String(8), default="accept")
    #: The rules that fired, e.g. ["1-3s"], ["2-2s (across levels)"].
    rules: Mapped[list[str]] = mapped_column(JSON, default=list)
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabResult(Base):
    """One ordered test of one specimen: its value, verdict, review and signature."""

    __tablename__ = "lab_results"
    __table_args__ = (
        UniqueConstraint("specimen_id", "test_code", name="uq_lab_result_test"),
        # The reviewers' worklist: held first by critical, then age.
        Index("ix_lab_results_worklist", "state", "critical", "measured_at"),
        Index("ix_lab_results_patient", "site_id", "patient_id", "test_code"),
        Index("ix_lab_results_run", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("lab_orders.id"))
    specimen_id: Mapped[int] = mapped_column(ForeignKey("lab_specimens.id"))
    #: Copied from the order: every access check and delta look-up reads them here.
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    patient_id: Mapped[str] = mapped_column(String(64))
    #: The catalog's test code ("K", "NA", "CREA", ...) and its LOINC code.
    test_code: Mapped[str] = mapped_column(String(16))
    loinc: Mapped[str] = mapped_column(String(16), default="")
    #: lab.states.ResultState
    state: Mapped[str] = mapped_column(String(16), default="ordered")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The value as the analyzer sent it (e.g. "<0.01", ">70.0"), for the report.
    value_text: Mapped[str] = mapped_column(String(32), default="")
    units: Mapped[str] = mapped_column(String(16), default="")
    ref_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ref_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: HL7 table 0078: "", "L", "H", "LL", "HH", "A".
    abnormal_flag: Mapped[str] = mapped_column(String(2), default="")
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The analyzer's own flags for this result (ASTM R-7 / OBX-8).
    instrument_flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    analyzer_id: Mapped[str] = mapped_column(String(32), default="")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("lab_runs.id"), nullable=True)
    measured_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Earlier measurements of this test on this specimen (reruns): nothing is lost.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: The autoverification verdict: rule set version and every rule that fired.
    rule_set: Mapped[str] = mapped_column(String(32), default="")
    rules_fired: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: A failing control holds the result (the rule named), until rerun or released.
    qc_hold: Mapped[str] = mapped_column(Text, default="")
    #: The reviewer's decision: "approve", "rerun", "reject", "release" (QC hold).
    review_action: Mapped[str] = mapped_column(String(16), default="")
    review_reason: Mapped[str] = mapped_column(Text, default="")
    reviewed_by: Mapped[str] = mapped_column(String(128), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The signature over this one result (canonical form, hash, CMS envelope).
    signed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    signer_key_id: Mapped[int | None] = mapped_column(ForeignKey("reader_keys.id"),
                                                      nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    canonical: Mapped[str | None] = mapped_column(Text, nullable=True)
    hash_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    envelope: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The ORU^R01 that carried it back to the site (core.models.OutboundMessage).
    message_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"),
                                                   nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabCriticalNotice(Base):
    """The closed loop of one critical value: notified, escalated, acknowledged."""

    __tablename__ = "lab_critical_notices"
    __table_args__ = (Index("ix_lab_critical_open", "state", "next_escalation_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("lab_results.id"), unique=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    #: lab.states.NoticeState: notified → (escalated …) → acknowledged.
    state: Mapped[str] = mapped_column(String(16), default="notified")
    #: When the result was known (measured), and when the site was told.
    result_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: 0 = the site's first contact; n = the n-th escalation tier.
    tier: Mapped[int] = mapped_column(Integer, default=0)
    next_escalation_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Each step: [{"tier", "at", "channel", "to", "outcome"}].
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: The acknowledgement with read-back: who took it, the value as repeated, and
    #: whether the repeated value matched the result.
    ack_by: Mapped[str] = mapped_column(String(128), default="")
    ack_name: Mapped[str] = mapped_column(String(200), default="")
    ack_readback: Mapped[str] = mapped_column(String(64), default="")
    ack_matches: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    ack_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The ORU with abnormal flags sent at once (core.models.OutboundMessage).
    message_id: Mapped[int | None] = mapped_column(ForeignKey("outbound_messages.id"),
                                                   nullable=True)


class LabRuleSet(Base):
    """An autoverification rule set version and its validation (CLSI AUTO10 replay).

    A version can be enabled only with a passing replay recorded here; exactly one row
    is enabled at a time.
    """

    __tablename__ = "lab_rule_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(32), unique=True)
    #: sha256 of the rule file as validated: an edited file must be validated again.
    file_sha256: Mapped[str] = mapped_column(String(64))
    validation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    validated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    validated_by: Mapped[str] = mapped_column(String(128), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enabled_by: Mapped[str] = mapped_column(String(128), default="")
