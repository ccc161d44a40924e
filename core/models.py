"""SQLAlchemy 2 models of the center's state.

The schema is owned by Alembic migrations in ``core/migrations``; these
classes must stay in step with them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, list[dict[str, Any]]: JSON}


class Site(Base):
    """A county hospital that sends studies and may receive results back."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    allowed_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    accepts_results: Mapped[bool] = mapped_column(Boolean, default=False)
    inactivity_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The site's SCP answers storage commitment (N-ACTION) for delivered results.
    storage_commitment: Mapped[bool] = mapped_column(Boolean, default=False)
    #: HL7 v2 MLLP endpoint for ORU^R01 results, when the site wants them.
    hl7_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hl7_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Output kinds the site takes back besides DICOM: "hl7", "fhir".
    result_formats: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Agreed turnaround from completion to signed report, in minutes (routine work).
    turnaround_target_min: Mapped[int] = mapped_column(Integer, default=240)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The site holds a TLS client certificate and may send over the mutual-TLS port
    #: only: the plain DICOM port refuses its AE title (see pacs_gateway.tls).
    tls_required: Mapped[bool] = mapped_column(Boolean, default=False)
    #: PEM CA certificate(s) that the site's SCP certificate must chain to; when set,
    #: results are delivered over TLS with the gateway's certificate as client identity.
    delivery_tls_ca: Mapped[str | None] = mapped_column(Text, nullable=True)


class SiteCertificate(Base):
    """A TLS client certificate the center's TLS CA issued to a site (core.site_certs).

    The private key is never stored: it goes to the site once.  A handshake on the
    gateway's TLS port is accepted only for a certificate listed here, not revoked, of
    an enabled site, so a revocation takes effect at the next handshake.
    """

    __tablename__ = "site_certificates"
    __table_args__ = (Index("ix_site_certificates_site", "site_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(255))
    cert_pem: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    issued_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(String(200), default="")


class Study(Base):
    """A study as received from one site; completeness is decided here, not by Orthanc."""

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("site_id", "study_uid", name="uq_study_site_uid"),
        # The worklist's order: STAT, AI-critical, then the time left.
        Index("ix_studies_worklist", "state", "priority", "ai_critical", "due_at"),
        Index("ix_studies_patient", "patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(32), default="")
    #: DICOM PatientSex (M, F, O) and PatientAge (e.g. "045Y") as sent, and the body
    #: part examined: what the worklist shows and what picks the report template.
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    patient_age: Mapped[str] = mapped_column(String(4), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    #: When the signed report is due: completion + the site's turnaround target.
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    modalities: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="received")
    #: How many times the study has been completed; job keys include it.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_instances: Mapped[int] = mapped_column(Integer, default=0)
    stored_instances: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: An AI pre-read found a critical label above its threshold (unverified).
    ai_critical: Mapped[bool] = mapped_column(Boolean, default=False)
    orthanc_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The reader who holds the study (claim/lock), so two never read the same one.
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: First time a reader opened it (turnaround: complete → opened).
    first_opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Instance(Base):
    """The receipt of one C-STORE: written before success is answered."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_state", "state"),
        Index("ix_instances_study", "study_id"),
        Index("ix_instances_sop", "sop_instance_uid"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # also the spool file name
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="spooled")
    orthanc_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    """A unit of work passed between stages by ID through the queue."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: Idempotency key: what the job processes; a second job with it is never made.
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True)
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    rule: Mapped[str] = mapped_column(String(128), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRecord(Base):
    """One append-only, hash-chained audit entry."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """Single row serialising appends to the chain across processes."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    last_hash: Mapped[str] = mapped_column(String(64))


class AIModel(Base):
    """A registered model version.  The folder holds ``model.yaml`` and the weights;
    the manifest is copied here so the registry can be listed without the files."""

    __tablename__ = "ai_models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_ai_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    demonstration: Mapped[bool] = mapped_column(Boolean, default=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    registered_by: Mapped[str] = mapped_column(String(128), default="")
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)


class AIResult(Base):
    """One model run on one series.  Unique per (series, model version): a rerun
    after a crash finds it and writes nothing twice."""

    __tablename__ = "ai_results"
    __table_args__ = (UniqueConstraint("series_uid", "model_name", "model_version",
                                       name="uq_ai_results_series_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    series_uid: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    duration_ms: Mapped[float] = mapped_column(Float)
    sr_sop_uid: Mapped[str] = mapped_column(String(64))
    seg_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AIFinding(Base):
    """A label's outcome in one run; always unverified until a reader accepts it."""

    __tablename__ = "ai_findings"
    __table_args__ = (Index("ix_ai_findings_study", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("ai_results.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    critical: Mapped[bool] = mapped_column(Boolean)
    volume_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    review: Mapped[str] = mapped_column(String(16), default="unreviewed")


class ReaderKey(Base):
    """A reader's signing key pair and X.509 certificate from the center's CA.

    The private key is stored only encrypted under the reader's passphrase.  A
    revoked key never signs again, but signatures made before ``revoked_at``
    still verify as made at their time.
    """

    __tablename__ = "reader_keys"
    __table_args__ = (Index("ix_reader_keys_reader", "reader_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reader_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(16))
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    encrypted_private_key: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(String(200), default="")


class Report(Base):
    """One report per reported object (a study; later an ECG, a slide case, a lab
    order), with its versions in :class:`ReportVersion`."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("subject_type", "subject_id", name="uq_reports_subject"),
                      Index("ix_reports_study", "study_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16), default="study")
    subject_id: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    template_id: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="draft")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportVersion(Base):
    """One version of a report.  Once ``final`` it is frozen: its canonical content,
    hash and signature never change; an addendum is a new version that points at it."""

    __tablename__ = "report_versions"
    __table_args__ = (UniqueConstraint("report_id", "number", name="uq_report_versions_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="report")
    state: Mapped[str] = mapped_column(String(16), default="draft")
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    author: Mapped[str] = mapped_column(String(128), default="")
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("report_versions.id"),
                                                       nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    signed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    signer_key_id: Mapped[int | None] = mapped_column(ForeignKey("reader_keys.id"),
                                                      nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Exactly the bytes that were signed (canonical JSON, UTF-8).
    canonical: Mapped[str | None] = mapped_column(Text, nullable=True)
    hash_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    envelope: Mapped[str | None] = mapped_column(Text, nullable=True)
    sr_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sr_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pdf_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pdf_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hl7_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    fhir_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Delivery(Base):
    """Sending one signed version's outputs back to the originating site.

    Unique per (version, site, channel): a retry or a second worker finds the row
    and never sends a result twice once it is ``sent``.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("report_version_id", "site_id", "channel", name="uq_deliveries_target"),
        Index("ix_deliveries_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_version_id: Mapped[int] = mapped_column(ForeignKey("report_versions.id"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    #: "dicom" (C-STORE of SR + PDF) or "hl7" (ORU^R01 over MLLP).
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    commitment_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)


class User(Base):
    """A person who signs in to the web app.  Password (argon2 hash) plus TOTP."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(Text)
    #: The TOTP secret, encrypted with the center's secret key (never in clear at rest).
    totp_secret: Mapped[str] = mapped_column(Text)
    #: Last TOTP time step accepted, so a code is never accepted twice.
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    #: admin, radiologist, cardiologist, pathologist, lab_reviewer, site_user.
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Sees every site's work (center staff); otherwise only ``user_sites``.
    all_sites: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UserSite(Base):
    """A site whose studies, reports and links a user may see."""

    __tablename__ = "user_sites"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)


class WebSession(Base):
    """A server-side session: the cookie holds a random token, this row its hash.
    Deleting or revoking the row ends the session at once (logout, disable)."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_user", "user_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    client: Mapped[str] = mapped_column(String(255), default="")


class LoginThrottle(Base):
    """Failed sign-ins of one username from one client address (see
    :mod:`viewer.login_throttle`).  The row with address ``"*"`` counts the username's
    failures from every address within the current window.  Keyed by the name typed,
    not by a user id, so that an unknown username is throttled exactly like a real one
    and the answers never tell which usernames exist."""

    __tablename__ = "login_throttles"
    __table_args__ = (Index("ix_login_throttles_last_failure", "last_failure_at"),)

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Pair: failures in a row since the last lockout or success.  ``"*"``: failures
    #: in the window that started at ``window_started_at``.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    #: Lockouts of the pair so far; each one waits twice as long as the one before.
    lockouts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Attempts refused while locked (audited at 1, 2, 4, 8 ... so a flood costs few rows).
    refused: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                               nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    #: The last successful sign-in from this address: it makes the address familiar.
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)


class ShareLink(Base):
    """A "cloud film" link to one final report: expiring, revocable, every open audited.
    Only the token's hash is stored."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    report_version_id: Mapped[int] = mapped_column(ForeignKey("report_versions.id"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    opens: Mapped[int] = mapped_column(Integer, default=0)


class ECGAnalysis(Base):
    """The automatic analysis of one ECG waveform object, and a cardiologist's edits.

    ``result`` is what the analysis produced and never changes; ``measurements`` and
    ``statements`` start as its copy and are what the cardiologist edits and signs.
    Unique per SOP instance: a re-run finds the row instead of writing a second one.
    """

    __tablename__ = "ecg_analyses"
    __table_args__ = (Index("ix_ecg_analyses_study", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    analysis_version: Mapped[str] = mapped_column(String(32))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    statements: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    quality: Mapped[str] = mapped_column(String(16), default="")
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    edited_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
