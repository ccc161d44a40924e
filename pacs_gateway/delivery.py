"""Guaranteed delivery of a signed report's outputs back to the county site that sent the exam.

A :class:`~core.models.Delivery` row is the source of truth for one (report version, site,
channel).  Channels: ``dicom`` sends the verified SR and the Encapsulated PDF (both already
in the center's Orthanc) by C-STORE to the site's AE, followed by a Storage Commitment
request where the site supports it; ``hl7`` sends the version's ORU^R01 over MLLP.

Each attempt is one ``deliver`` job, queued by ID after commit, keyed
``deliver:<delivery id>:attempt-<n>``.  Why a job per attempt, and why a failed attempt's
job ends ``failed`` without being retried by the job machinery:

* The retry schedule belongs to the delivery (exponential backoff from
  ``RDC_DELIVERY_RETRY_BASE_S`` up to ``RDC_DELIVERY_RETRY_MAX_S``, dead-lettered once the
  delivery is older than ``RDC_DELIVERY_MAX_AGE_S``).  A :class:`~core.jobs.TransientJobError`
  would hand retries to the job machinery instead (Celery's countdown, at most five
  attempts), a policy that knows nothing of the site and ends in a dead *job* that no
  operator's dead-letter list shows.  So an attempt that fails records its reason,
  ``next_attempt_at`` and the failed/dead state on the delivery first, and only then
  ends its job ``failed`` (:class:`~core.jobs.JobFailed`, no job retry) with the same
  reason, so that ``rdc status`` never counts a failed attempt as a succeeded job.
* :func:`requeue_due`, called by the gateway's monitor, makes the next attempt's job when
  ``next_attempt_at`` has passed.  It reads only the database, so retries survive a
  restarted worker or a broker that lost its messages.

Exactly once, as far as the protocol allows: the handler runs without a database
transaction open around the network (SQLite would otherwise hold its write lock for the
length of an association) and instead *claims* the attempt first, with one conditional
UPDATE that only succeeds for the delivery's current job, for the attempt number the job
was made for, while the delivery is ``pending``/``failed`` and no other attempt is in
flight.  A duplicate message, a stale job or a second worker therefore finds nothing to
do, and a ``sent`` or ``committed`` delivery is never sent again.  An in-flight claim marks
``last_error`` with ``"in flight: ..."`` and sets ``next_attempt_at`` to the end of a lease
longer than the job time limit, so a worker killed mid-attempt leaves a delivery that
:func:`requeue_due` picks up again once the lease has run out.  The one window left is a
worker that dies after the site stored the objects but before the outcome was committed:
the retry then sends them again.  DICOM C-STORE of the same SOP Instance UID is idempotent
at any conformant receiver, so that is the safe side.

Storage commitment: after every C-STORE succeeded, the N-ACTION (Push Model, action type 1)
goes on the same association, which then stays open for ``RDC_DELIVERY_COMMIT_WAIT_S``
(default 10 s) for an N-EVENT-REPORT.  A report that arrives there moves the delivery to
``committed`` (or, if the site lists failed instances, back to ``failed`` for another
attempt).  If none arrives, the delivery stays ``sent`` with its ``commitment_uid``
recorded: many PACS send the report later on an association of their own, which the
gateway's SCP can hand to :func:`apply_commitment_report`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit, jobs
from core.db import Database, after_commit
from core.errors import Conflict, InvalidInput, NotFound, RDCError
from core.models import Delivery, Job, Report, ReportVersion, Site
from core.orthanc_client import OrthancClient, OrthancError
from core.queue import enqueue_job
from core.settings import get_settings
from core.states import DeliveryState, JobState, ReportState, check_transition
from pacs_gateway.tls import center_client_context, describe_failure, probe_handshake

log = logging.getLogger(__name__)

JOB_KIND = "deliver"
QUEUE = "delivery"
CHANNELS = ("dicom", "hl7")

# Network timeouts (seconds).  Explicit, so a site that accepts TCP and then says
# nothing costs one bounded attempt instead of a worker.
CONNECT_TIMEOUT_S = 10.0
ACSE_TIMEOUT_S = 15.0
DIMSE_TIMEOUT_S = 30.0
NETWORK_TIMEOUT_S = 30.0
HL7_TIMEOUT_S = 30.0
HL7_MAX_ACK_BYTES = 1 << 20

#: An attempt in flight for longer than this is taken to be lost (its worker died).
#: It must exceed the Celery time limit, after which the attempt is surely over.
ATTEMPT_LEASE_S = 900.0
IN_FLIGHT = "in flight: "
#: How a failed attempt's job error begins (``attempt 2 failed: ...``).
_ATTEMPT_FAILED = "attempt {} failed:"

STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: PS3.4 J.3.2.2.1 Failure Reason values a site may give for an instance it did not commit.
_COMMIT_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class-instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}

_MLLP_START, _MLLP_END = b"\x0b", b"\x1c\x0d"


class DeliveryFailed(Exception):
    """One attempt failed; the message is the precise reason, stored in ``last_error``."""


# Policy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    base_s: float
    max_backoff_s: float
    max_age_s: float
    commit_wait_s: float

    def backoff(self, attempts: int) -> timedelta:
        """Wait before attempt ``attempts + 1``: base * 2**(attempts-1), capped."""
        exponent = min(max(attempts, 1) - 1, 60)  # 2**60 s is past any cap already
        return timedelta(seconds=min(self.max_backoff_s, self.base_s * 2 ** exponent))


def retry_policy() -> RetryPolicy:
    """The delivery retry policy from the center's settings (``RDC_DELIVERY_*``)."""
    settings = get_settings()
    return RetryPolicy(
        base_s=settings.delivery_retry_base_s,
        max_backoff_s=settings.delivery_retry_max_s,
        max_age_s=settings.delivery_max_age_s,
        commit_wait_s=settings.delivery_commit_wait_s,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every one the center writes is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _lease_s() -> float:
    return max(ATTEMPT_LEASE_S, get_settings().job_time_limit_s + 60.0)


def _move(delivery: Delivery, new: DeliveryState) -> None:
    check_transition(DeliveryState, delivery.state, new)
    delivery.state = new
    delivery.updated_at = _now()


def _in_flight(delivery: Delivery, now: datetime) -> bool:
    lease_end = _aware(delivery.next_attempt_at)
    return (delivery.state in (DeliveryState.PENDING, DeliveryState.FAILED)
            and (delivery.last_error or "").startswith(IN_FLIGHT)
            and lease_end is not None and lease_end > now)


# Scheduling ---------------------------------------------------------------------------
def _check_deliverable(version: ReportVersion, site: Site, channel: str) -> None:
    if channel not in CHANNELS:
        raise InvalidInput(f"unknown delivery channel {channel!r}; one of {list(CHANNELS)}")
    if version.state not in (ReportState.FINAL, ReportState.AMENDED):
        raise Conflict(f"report version {version.id} is {version.state!r}: only signed "
                       "(final) versions are delivered")
    if not site.enabled:
        raise Conflict(f"site {site.id!r} is disabled")
    if not site.accepts_results:
        raise Conflict(f"site {site.id!r} does not accept results "
                       "(register it with --accepts-results)")
    if channel == "dicom":
        if not version.sr_sop_uid and not version.pdf_sop_uid:
            raise InvalidInput(f"report version {version.id} has no DICOM outputs "
                               "(neither sr_sop_uid nor pdf_sop_uid is set)")
        if not site.ae_title or not site.host or not 1 <= site.port <= 65535:
            raise InvalidInput(f"site {site.id!r} has no usable DICOM address "
                               f"({site.ae_title!r}@{site.host!r}:{site.port})")
    else:
        if not site.hl7_host or site.hl7_port is None or not 1 <= site.hl7_port <= 65535:
            raise InvalidInput(f"site {site.id!r} has no HL7 endpoint (hl7_host/hl7_port)")
        if not version.hl7_message or not version.hl7_message.startswith("MSH"):
            raise InvalidInput(f"report version {version.id} has no HL7 message starting "
                               "with an MSH segment")


def _queue_attempt(session: Session, delivery: Delivery, *,
                   kick: bool = False) -> tuple[Job, bool]:
    """Make (or find) the job for the delivery's next attempt and queue it after commit;
    returns (job, whether a message was queued).

    The key carries the attempt number, so a resend or retry makes a new job while a
    second call for the same attempt finds the first one (and queues it again only when
    ``kick``: an operator's nudge, not every tick of the monitor).  A job of that number
    that finished without making the attempt (it found another one in flight) cannot
    run again, so the attempt gets a job under a suffixed key.
    """
    attempt = delivery.attempts + 1
    version = session.get(ReportVersion, delivery.report_version_id)
    report = session.get(Report, version.report_id) if version is not None else None
    base = f"{JOB_KIND}:{delivery.id}:attempt-{attempt}"
    key = base
    for again in range(1, 1000):
        job, created = jobs.create_job(session, jobs.NewJob(
            key=key, kind=JOB_KIND, queue=QUEUE,
            study_id=report.study_id if report is not None else None,
            params={"delivery_id": delivery.id, "attempt": attempt},
        ))
        if created or job.state not in (JobState.SUCCEEDED, JobState.SKIPPED):
            break
        key = f"{base}-again-{again}"
    if not created and job.state in (JobState.FAILED, JobState.DEAD):
        # The job broke outside the attempt (a database error while recording): run it again.
        check_transition(JobState, job.state, JobState.QUEUED)
        job.state = JobState.QUEUED
        job.updated_at = _now()
        created = True
    delivery.job_id = job.id
    queued = created or (kick and job.state == JobState.QUEUED)
    if queued:
        after_commit(session, partial(enqueue_job, job.id, job.key, job.queue, job.priority))
    return job, queued


def schedule_delivery(session: Session, version: ReportVersion, site: Site, *,
                      channel: str = "dicom") -> Delivery:
    """Deliver ``version``'s outputs to ``site`` over ``channel``; idempotent.

    Returns the existing delivery for (version, site, channel) if there is one, else
    creates it ``pending`` and queues its first attempt by ID once the caller commits.
    Raises :class:`InvalidInput` for an unknown channel or missing outputs/endpoint, and
    :class:`Conflict` for an unsigned version or a site that does not take results.
    """
    if version.id is None or not site.id:
        raise InvalidInput("report version and site must be stored before delivery")
    existing = session.scalar(select(Delivery).where(
        Delivery.report_version_id == version.id, Delivery.site_id == site.id,
        Delivery.channel == channel))
    if existing is not None:
        return existing
    _check_deliverable(version, site, channel)
    delivery = Delivery(report_version_id=version.id, site_id=site.id, channel=channel,
                        state=DeliveryState.PENDING, attempts=0)
    try:
        with session.begin_nested():
            session.add(delivery)
            session.flush()
    except IntegrityError:
        # Another process scheduled the same target between our look-up and insert.
        found = session.scalar(select(Delivery).where(
            Delivery.report_version_id == version.id, Delivery.site_id == site.id,
            Delivery.channel == channel))
        assert found is not None
        return found
    job, _ = _queue_attempt(session, delivery)
    audit.append(session, actor="system", action="delivery.schedule", object_type="delivery",
                 object_id=str(delivery.id), detail={
                     "report_version_id": version.id, "site": site.id, "channel": channel,
                     "job_id": job.id})
    log.info("delivery.scheduled delivery_id=%s site=%s channel=%s job_id=%s",
             delivery.id, site.id, channel, job.id)
    return delivery


def schedule_result_deliveries(session: Session, version: ReportVersion) -> list[Delivery]:
    """Schedule everything a newly signed version owes its originating site: the SR and
    PDF by DICOM when the site takes results back, and HL7 ORU when it asked for it.
    A site that takes no results gets nothing (and that is logged, not an error)."""
    report = session.get(Report, version.report_id)
    site = session.get(Site, report.site_id) if report is not None else None
    if site is None:
        raise NotFound(f"report version {version.id} has no originating site")
    if not site.accepts_results:
        log.info("delivery.not_scheduled version_id=%s site=%s reason=no-results-back",
                 version.id, site.id)
        return []
    scheduled = [schedule_delivery(session, version, site, channel="dicom")]
    if "hl7" in (site.result_formats or []) and site.hl7_host and site.hl7_port:
        scheduled.append(schedule_delivery(session, version, site, channel="hl7"))
    return scheduled


def requeue_due(session: Session, now: datetime | None = None) -> list[int]:
    """Queue the next attempt of every delivery whose ``next_attempt_at`` has passed.

    That is a ``failed`` delivery whose backoff is over, or an attempt whose lease ran
    out without an outcome (its worker died).  Idempotent: the next attempt's job is
    keyed by its number, so calling this again finds it instead of making another.
    Returns the IDs of the deliveries that got a new job.  Meant for the gateway's
    periodic monitor; the caller commits.
    """
    now = now or _now()
    due = session.scalars(
        select(Delivery).where(
            Delivery.state.in_([DeliveryState.FAILED, DeliveryState.PENDING]),
            Delivery.next_attempt_at.is_not(None), Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.id)).all()
    queued: list[int] = []
    for delivery in due:
        job, queued_now = _queue_attempt(session, delivery)
        if not queued_now:
            continue  # this attempt's job exists already and is queued or running
        lost = (delivery.last_error or "").startswith(IN_FLIGHT)
        audit.append(session, actor="system", action="delivery.requeue",
                     object_type="delivery", object_id=str(delivery.id), detail={
                         "attempt": delivery.attempts + 1, "job_id": job.id,
                         "reason": "attempt lost (no outcome within its lease)" if lost
                         else "retry due", "last_error": delivery.last_error})
        log.info("delivery.requeued delivery_id=%s attempt=%s job_id=%s", delivery.id,
                 delivery.attempts + 1, job.id)
        queued.append(delivery.id)
    return queued


def list_deliveries(session: Session, state: str | None = None) -> list[Delivery]:
    """Deliveries, oldest first; ``state="dead"`` is the dead-letter list."""
    query = select(Delivery).order_by(Delivery.id)
    if state is not None:
        if state not in {s.value for s in DeliveryState}:
            raise InvalidInput(f"unknown delivery state {state!r}; one of "
                               f"{[s.value for s in DeliveryState]}")
        query = query.where(Delivery.state == state)
    return list(session.scalars(query))


def resend(session: Session, delivery_id: int, actor: str, *, force: bool = False) -> Delivery:
    """Put a dead or failed delivery back to ``pending`` with a new job (operator action).

    A ``pending`` one just gets its job queued again.  A ``sent`` one is refused with
    :class:`Conflict` unless ``force``: then it goes sent -> failed (the operator says the
    site does not have it) -> pending.  A ``committed`` one cannot be resent: the site has
    confirmed it keeps the objects and the state machine has no way out of ``committed``.
    An attempt in flight is never doubled.
    """
    if not actor:
        raise InvalidInput("resend needs the acting user")
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id}")
    now = _now()
    if _in_flight(delivery, now):
        raise Conflict(f"delivery {delivery_id} has an attempt in flight "
                       f"({delivery.last_error}); try again after it ends")
    before = delivery.state
    if before in (DeliveryState.SENT, DeliveryState.COMMITTED) and not force:
        raise Conflict(f"delivery {delivery_id} is already {before}; "
                       "pass force=True to send it again")
    if before == DeliveryState.COMMITTED:
        raise Conflict(f"delivery {delivery_id} is committed: the site confirmed it keeps the "
                       "objects, and a committed delivery is final")
    if before == DeliveryState.SENT:
        _move(delivery, DeliveryState.FAILED)
    if delivery.state != DeliveryState.PENDING:
        _move(delivery, DeliveryState.PENDING)
    delivery.next_attempt_at = None
    job, _ = _queue_attempt(session, delivery, kick=True)
    audit.append(session, actor=actor, action="delivery.resend", object_type="delivery",
                 object_id=str(delivery.id), detail={"from": before, "force": force,
                                                     "job_id": job.id,
                                                     "last_error": delivery.last_error})
    log.info("delivery.resend delivery_id=%s from=%s job_id=%s actor=%s", delivery.id, before,
             job.id, actor)
    return delivery


# Storage commitment results -------------------------------------------------------------
def evaluate_commitment(event_type: int | None, info: Dataset,
                        expected: Sequence[str]) -> tuple[bool, str]:
    """Read a Storage Commitment N-EVENT-REPORT (PS3.4 J.3.3): (all committed, detail)."""
    committed = {str(item.get("ReferencedSOPInstanceUID", ""))
                 for item in info.get("ReferencedSOPSequence", [])}
    failed: dict[str, str] = {}
    for item in info.get("FailedSOPSequence", []):
        reason = int(item.get("FailureReason", 0))
        failed[str(item.get("ReferencedSOPInstanceUID", ""))] = (
            f"0x{reason:04X} {_COMMIT_FAILURE_REASONS.get(reason, 'unknown reason')}")
    missing = [uid for uid in expected if uid not in committed and uid not in failed]
    if not failed and not missing and event_type == 1:
        return True, f"site committed {len(committed)} instance(s)"
    parts = [f"site did not commit {uid}: {why}" for uid, why in failed.items()]
    if missing:
        parts.append(f"report does not mention {', '.join(missing)}")
    if event_type not in (1, 2):
        parts.append(f"unexpected event type {event_type}")
    return False, "storage commitment failed: " + "; ".join(parts)


def _apply_commitment(session: Session, delivery: Delivery, ok: bool, detail: str,
                      actor: str, policy: RetryPolicy | None = None) -> None:
    now = _now()
    if ok:
        _move(delivery, DeliveryState.COMMITTED)
        delivery.committed_at = now
    else:
        _move(delivery, DeliveryState.FAILED)
        delivery.last_error = detail
        delivery.next_attempt_at = now + (policy or retry_policy()).backoff(delivery.attempts)
    audit.append(session, actor=actor, action="delivery.commitment", object_type="delivery",
                 object_id=str(delivery.id), detail={
                     "commitment_uid": delivery.commitment_uid, "committed": ok,
                     "detail": detail})
    log.info("delivery.commitment delivery_id=%s committed=%s detail=%s", delivery.id, ok,
             detail)


def apply_commitment_report(session: Session, transaction_uid: str, event_type: int | None,
                            info: Dataset, actor: str = "site") -> Delivery | None:
    """Apply a Storage Commitment N-EVENT-REPORT that arrived on another association.

    Finds the ``sent`` delivery whose ``commitment_uid`` is ``transaction_uid`` and moves
    it to ``committed``, or to ``failed`` (retried) when the site lists failures.  Returns
    ``None`` for an unknown or already settled transaction.
    """
    delivery = session.scalar(select(Delivery).where(Delivery.commitment_uid == transaction_uid)
                              .with_for_update())
    if delivery is None or delivery.state != DeliveryState.SENT:
        log.warning("delivery.commitment_unmatched transaction_uid=%s", transaction_uid)
        return None
    version = session.get(ReportVersion, delivery.report_version_id)
    expected = [u for u in (version.sr_sop_uid, version.pdf_sop_uid) if u] if version else []
    ok, detail = evaluate_commitment(event_type, info, expected)
    _apply_commitment(session, delivery, ok, detail, actor)
    return delivery


# The job --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Attempt:
    """What one attempt needs, copied out of the database before the network."""

    delivery_id: int
    number: int
    job_id: int
    channel: str
    site_id: str
    host: str
    port: int
    ae_title: str
    storage_commitment: bool
    objects: tuple[tuple[str, str], ...]  # (label, SOP Instance UID)
    hl7_message: str
    #: Set when the site may no longer receive results (disabled, or stopped taking them
    #: since the delivery was scheduled): the attempt fails without touching the network.
    refusal: str | None = None
    #: PEM CA(s) for the site's SCP certificate: the DICOM channel then goes over TLS.
    tls_ca: str | None = None


@dataclass
class _Outcome:
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    commitment_uid: str | None = None
    commitment_note: str | None = None  # the N-ACTION could not be made (objects are stored)
    commitment: tuple[bool, str] | None = None  # the N-EVENT-REPORT, if one came


def run_delivery_job(db: Database, job: Job) -> None:
    """Make one attempt: claim it, send without a transaction open, record the outcome.

    A db_handler (its own sessions) because the send must not sit inside a transaction;
    see the module docstring.  A failed attempt is recorded on the delivery, then the job
    ends ``failed`` with its reason (the delivery's own schedule retries it); a job with
    nothing to do (delivery already sent, dead, superseded, or its attempt in flight
    elsewhere) ends ``skipped`` with the reason.
    """
    policy = retry_policy()  # a configuration error fails the job before anything is claimed
    attempt = _claim(db, job)
    log.info("delivery.attempt delivery_id=%s attempt=%s channel=%s site=%s",
             attempt.delivery_id, attempt.number, attempt.channel, attempt.site_id)
    outcome = _perform(attempt, policy)
    _record(db, attempt, outcome, policy)
    refused_commitment = outcome.commitment is not None and not outcome.commitment[0]
    if outcome.error is not None or refused_commitment:
        why = outcome.error or (outcome.commitment[1] if outcome.commitment else "")
        raise jobs.JobFailed(f"{_ATTEMPT_FAILED.format(attempt.number)} {why}")


def _claim(db: Database, job: Job) -> _Attempt:
    """Claim the job's attempt, or raise :class:`~core.jobs.SkipJob` saying why not."""
    params = job.params or {}
    try:
        delivery_id, number = int(params["delivery_id"]), int(params["attempt"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"deliver job {job.id} has bad params {params!r}") from e
    now = _now()
    with db.session() as s:
        delivery = s.get(Delivery, delivery_id)
        if delivery is None:
            raise LookupError(f"deliver job {job.id}: delivery {delivery_id} does not exist")
        if delivery.attempts >= number and (job.error or "").startswith(
                _ATTEMPT_FAILED.format(number)):
            # A second message for a job whose attempt failed: it stays failed (the job
            # machinery runs a failed job again when a message comes).
            raise jobs.JobFailed(job.error or "")
        why_not = None
        if delivery.state in (DeliveryState.SENT, DeliveryState.COMMITTED):
            why_not = f"delivery {delivery_id} is already {delivery.state}"
        elif delivery.state == DeliveryState.DEAD:
            why_not = f"delivery {delivery_id} is dead-lettered; an operator resends it"
        elif delivery.job_id != job.id or delivery.attempts != number - 1:
            why_not = (f"job {job.id} (attempt {number}) is superseded by job "
                       f"{delivery.job_id} after attempt {delivery.attempts}")
        elif _in_flight(delivery, now):
            why_not = f"delivery {delivery_id}: {delivery.last_error}"
        if why_not is None:
            claimed = s.execute(
                update(Delivery).where(
                    Delivery.id == delivery_id, Delivery.job_id == job.id,
                    Delivery.attempts == number - 1,
                    Delivery.state.in_([DeliveryState.PENDING, DeliveryState.FAILED]),
                    or_(~func.coalesce(Delivery.last_error, "").startswith(
                        IN_FLIGHT, autoescape=True),
                        Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
                .values(attempts=number, updated_at=now,
                        next_attempt_at=now + timedelta(seconds=_lease_s()),
                        last_error=f"{IN_FLIGHT}attempt {number} by job {job.id} "
                                   f"since {now.isoformat(timespec='seconds')}")
                .execution_options(synchronize_session=False))
            if getattr(claimed, "rowcount", 0) != 1:
                why_not = f"delivery {delivery_id}: attempt {number} was claimed by another run"
        if why_not is not None:
            log.info("delivery.nothing_to_do delivery_id=%s job_id=%s reason=%s", delivery_id,
                     job.id, why_not)
            raise jobs.SkipJob(why_not)
        site = s.get(Site, delivery.site_id)
        version = s.get(ReportVersion, delivery.report_version_id)
        assert site is not None and version is not None  # foreign keys
        objects = tuple((label, uid) for label, uid in
                        (("SR", version.sr_sop_uid), ("PDF", version.pdf_sop_uid)) if uid)
        attempt = _Attempt(
            delivery_id=delivery_id, number=number, job_id=job.id, channel=delivery.channel,
            site_id=site.id, host=site.host if delivery.channel == "dicom" else
            (site.hl7_host or ""), port=site.port if delivery.channel == "dicom" else
            (site.hl7_port or 0), ae_title=site.ae_title,
            storage_commitment=site.storage_commitment, objects=objects,
            hl7_message=version.hl7_message or "",
            refusal=None if site.enabled and site.accepts_results else
            f"site {site.id!r} no longer accepts results (disabled or --no-results)",
            # The site's delivery CA covers both channels: DICOM TLS and MLLP over TLS.
            tls_ca=site.delivery_tls_ca)
        audit.append(s, actor="worker", action="delivery.attempt_start",
                     object_type="delivery", object_id=str(delivery_id), detail={
                         "attempt": number, "job_id": job.id, "channel": attempt.channel,
                         "site": site.id, "target": f"{attempt.host}:{attempt.port}",
                         "tls": attempt.tls_ca is not None})
    return attempt


def _perform(attempt: _Attempt, policy: RetryPolicy) -> _Outcome:
    """The network part of an attempt; every failure becomes a precise ``error``."""
    if attempt.refusal is not None:
        return _Outcome(error=attempt.refusal)
    try:
        tls = _tls_context(attempt) if attempt.tls_ca else None
        if attempt.channel == "hl7":
            control_id, ack = send_hl7(attempt.host, attempt.port, attempt.hl7_message,
                                       tls=tls)
            return _Outcome(detail={"control_id": control_id, "ack": ack,
                                    "tls": tls is not None})
        settings = get_settings()
        files = _fetch_outputs(attempt.objects)
        result = send_dicom(
            files, host=attempt.host, port=attempt.port, called_ae=attempt.ae_title,
            calling_ae=settings.gateway_ae, commitment=attempt.storage_commitment,
            commit_wait_s=policy.commit_wait_s, tls=tls)
        return _Outcome(
            detail={"objects": {uid: label for label, uid in attempt.objects},
                    "statuses": result.statuses, "warnings": result.warnings},
            commitment_uid=result.commitment_uid, commitment_note=result.commitment_error,
            commitment=result.commitment_report)
    except DeliveryFailed as e:
        return _Outcome(error=str(e))
    except Exception as e:  # safety net: an attempt never ends without a recorded reason
        log.exception("delivery.attempt_crashed delivery_id=%s", attempt.delivery_id)
        return _Outcome(error=f"unexpected {type(e).__name__}: {e}")


def _tls_context(attempt: _Attempt) -> ssl.SSLContext:
    """The center's client context for this site: its certificate from the TLS CA, the
    site's SCP checked against the site's configured CA and its host name."""
    assert attempt.tls_ca is not None
    try:
        return center_client_context(get_settings(), attempt.tls_ca)
    except (ssl.SSLError, ValueError, OSError, RDCError) as e:
        raise DeliveryFailed(f"cannot set up TLS for site {attempt.site_id!r}: {e} (check "
                             "its delivery CA: rdc sites cert SITE --delivery-ca FILE)") from e


def _fetch_outputs(objects: Sequence[tuple[str, str]]) -> list[bytes]:
    settings = get_settings()
    files: list[bytes] = []
    try:
        with OrthancClient.from_settings(settings, retries=2) as orthanc:
            for label, uid in objects:
                orthanc_id = orthanc.find_instance(uid)
                if orthanc_id is None:
                    raise DeliveryFailed(f"the {label} {uid} is not in the center's Orthanc")
                files.append(orthanc.instance_file(orthanc_id))
    except OrthancError as e:
        raise DeliveryFailed(f"could not read the outputs from the center's Orthanc: {e}") from e
    return files


def _record(db: Database, attempt: _Attempt, outcome: _Outcome, policy: RetryPolicy) -> None:
    now = _now()
    with db.session() as s:
        delivery = s.get(Delivery, attempt.delivery_id, with_for_update=True)
        assert delivery is not None
        detail: dict[str, Any] = {"attempt": attempt.number, "job_id": attempt.job_id,
                                  "channel": attempt.channel, "site": attempt.site_id,
                                  "target": f"{attempt.host}:{attempt.port}", **outcome.detail}
        ours = (delivery.attempts == attempt.number and delivery.job_id == attempt.job_id
                and delivery.state in (DeliveryState.PENDING, DeliveryState.FAILED))
        if not ours:
            # Our lease ran out and another attempt took over: report, change nothing.
            detail.update(outcome="superseded", error=outcome.error, state=delivery.state)
            audit.append(s, actor="worker", action="delivery.attempt", object_type="delivery",
                         object_id=str(delivery.id), detail=detail)
            log.warning("delivery.attempt_superseded delivery_id=%s attempt=%s",
                        delivery.id, attempt.number)
            return
        if outcome.error is None:
            _move(delivery, DeliveryState.SENT)
            delivery.sent_at = now
            delivery.next_attempt_at = None
            delivery.last_error = outcome.commitment_note
            delivery.commitment_uid = outcome.commitment_uid
            detail.update(outcome="sent", commitment_uid=outcome.commitment_uid,
                          commitment_note=outcome.commitment_note)
            audit.append(s, actor="worker", action="delivery.attempt", object_type="delivery",
                         object_id=str(delivery.id), detail=detail)
            log.info("delivery.sent delivery_id=%s attempt=%s commitment_uid=%s",
                     delivery.id, attempt.number, outcome.commitment_uid)
            if outcome.commitment is not None:
                _apply_commitment(s, delivery, *outcome.commitment, actor="worker",
                                  policy=policy)
            return
        created = _aware(delivery.created_at) or now
        delivery.last_error = outcome.error
        if (now - created).total_seconds() > policy.max_age_s:
            _move(delivery, DeliveryState.DEAD)
            delivery.next_attempt_at = None
            detail.update(outcome="dead", error=outcome.error)
            audit.append(s, actor="worker", action="delivery.attempt", object_type="delivery",
                         object_id=str(delivery.id), detail=detail)
            audit.append(s, actor="worker", action="delivery.dead", object_type="delivery",
                         object_id=str(delivery.id), detail={
                             "attempts": delivery.attempts, "last_error": outcome.error,
                             "max_age_s": policy.max_age_s})
            log.error("delivery.dead delivery_id=%s attempts=%s error=%s", delivery.id,
                      delivery.attempts, outcome.error)
            return
        _move(delivery, DeliveryState.FAILED)
        delivery.next_attempt_at = now + policy.backoff(delivery.attempts)
        detail.update(outcome="failed", error=outcome.error,
                      next_attempt_at=delivery.next_attempt_at.isoformat())
        audit.append(s, actor="worker", action="delivery.attempt", object_type="delivery",
                     object_id=str(delivery.id), detail=detail)
        log.warning("delivery.failed delivery_id=%s attempt=%s next_attempt_at=%s error=%s",
                    delivery.id, attempt.number, delivery.next_attempt_at.isoformat(),
                    outcome.error)


# DICOM ----------------------------------------------------------------------------------
@dataclass
class DicomResult:
    """What the site answered to one association that stored every object."""

    statuses: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> "0x0000"
    warnings: list[str] = field(default_factory=list)
    commitment_uid: str | None = None
    commitment_error: str | None = None
    commitment_report: tuple[bool, str] | None = None


class _Watch:
    """Collects what pynetdicom only logs: the peer's ACSE answer and commitment reports."""

    def __init__(self) -> None:
        self.connected = False
        self.acse: Any = None
        self.reports: dict[str, tuple[int | None, Dataset]] = {}
        self.report_arrived = threading.Event()

    def handlers(self) -> list[Any]:
        return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ACSE_RECV, self._on_acse),
                (evt.EVT_N_EVENT_REPORT, self._on_event_report)]

    def _on_open(self, event: evt.Event) -> None:
        self.connected = True

    def _on_acse(self, event: evt.Event) -> None:
        self.acse = event.primitive  # type: ignore[attr-defined]

    def _on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.event_information
        uid = str(info.get("TransactionUID", ""))
        self.reports[uid] = (event.event_type, info)
        self.report_arrived.set()
        return 0x0000, None

    def peer_ended(self, assoc: Association | None = None) -> str:
        """Why the association ended without an answer, as far as the peer said.

        A peer's A-ABORT reaches us only when the association's reactor, paused while we
        waited for a response, gets to read it; give it a moment to.
        """
        deadline = time.monotonic() + 2.0
        while (assoc is not None and assoc.is_established
               and not isinstance(self.acse, (A_ABORT, A_P_ABORT))
               and time.monotonic() < deadline):
            time.sleep(0.02)
        prim = self.acse
        if isinstance(prim, A_ABORT):
            source = {0: "service user", 2: "service provider"}.get(prim.abort_source or 0,
                                                                  str(prim.abort_source))
            return f"the site aborted the association (A-ABORT, source: {source})"
        if isinstance(prim, A_P_ABORT):
            return f"the connection was aborted (A-P-ABORT, reason {prim.provider_reason})"
        return (f"no answer within the DIMSE timeout ({DIMSE_TIMEOUT_S:g} s) "
                "or the connection closed")


def _probe(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return "the connection failed, but the port accepts connections now"
    except OSError as e:
        return str(e) or type(e).__name__


def _not_established(assoc: Association, watch: _Watch, host: str, port: int,
                     called_ae: str, tls: ssl.SSLContext | None = None) -> str:
    where = f"{called_ae}@{host}:{port}"
    if not watch.connected:
        if tls is not None:
            why = probe_handshake(host, port, tls, timeout_s=CONNECT_TIMEOUT_S)
            if why is not None:
                return f"cannot connect to {where} over TLS: {why}"
        return f"cannot connect to {where}: {_probe(host, port)}"
    prim = watch.acse
    if assoc.is_rejected and isinstance(prim, A_ASSOCIATE):
        return (f"association rejected by {where}: {prim.result_str}; source: "
                f"{prim.source_str}; reason: {prim.reason_str}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        refused = ", ".join(sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        return f"{where} accepted none of the proposed presentation contexts ({refused})"
    if prim is None:
        return f"{where} did not answer the association request within {ACSE_TIMEOUT_S:g} s"
    return f"association with {where} failed: {watch.peer_ended()}"


def _parse(data: bytes) -> Dataset:
    try:
        ds = dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError) as e:
        raise DeliveryFailed(f"an output read from Orthanc is not DICOM: {e}") from e
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise DeliveryFailed(f"an output read from Orthanc has no {keyword}")
    return ds


def send_dicom(files: Sequence[bytes], *, host: str, port: int, called_ae: str,
               calling_ae: str, commitment: bool, commit_wait_s: float = 10.0,
               tls: ssl.SSLContext | None = None) -> DicomResult:
    """C-STORE ``files`` (Part 10 bytes) to ``called_ae@host:port`` on one association.

    Each object's SOP class is proposed with its own transfer syntax, then Explicit and
    Implicit VR Little Endian.  Success means every C-STORE answered 0x0000 or a warning
    (0xB000-0xBFFF); anything else raises :class:`DeliveryFailed` with the reason.  With
    ``commitment`` a Storage Commitment N-ACTION follows on the same association, which
    stays open up to ``commit_wait_s`` for the site's N-EVENT-REPORT.  With ``tls`` the
    association runs over TLS with that client context (:mod:`pacs_gateway.tls`), the
    peer's certificate checked for ``host``.
    """
    datasets = [_parse(data) for data in files]
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = CONNECT_TIMEOUT_S
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        own = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
        proposed = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for ts in (own, *_TRANSFER_SYNTAXES):
            if ts not in proposed:
                proposed.append(ts)
    for sop_class, tss in syntaxes.items():
        ae.add_requested_context(sop_class, tss)
    if commitment:
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH, list(_TRANSFER_SYNTAXES))
    watch = _Watch()
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=watch.handlers(),
                             tls_args=(tls, host) if tls is not None else None)
    except OSError as e:  # the host name does not resolve
        raise DeliveryFailed(f"cannot connect to {called_ae}@{host}:{port}: {e}") from e
    if not assoc.is_established:
        raise DeliveryFailed(_not_established(assoc, watch, host, port, called_ae, tls))
    result = DicomResult()
    try:
        for ds in datasets:
            _store(assoc, ds, watch, result, called_ae)
        if commitment:
            _request_commitment(assoc, datasets, watch, result, commit_wait_s)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return result


def _store(assoc: Association, ds: Dataset, watch: _Watch, result: DicomResult,
           called_ae: str) -> None:
    sop_class, sop_uid = UID(str(ds.SOPClassUID)), str(ds.SOPInstanceUID)
    if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
        raise DeliveryFailed(f"{called_ae} did not accept a presentation context for "
                             f"{sop_class.name} ({sop_class}), needed for {sop_uid}")
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, AttributeError, RuntimeError) as e:
        raise DeliveryFailed(f"could not send {sop_uid}: {e}") from e
    if "Status" not in status:
        raise DeliveryFailed(f"no C-STORE response for {sop_uid} ({sop_class.name}): "
                             f"{watch.peer_ended(assoc)}")
    code = int(status.Status)
    result.statuses[sop_uid] = f"0x{code:04X}"
    if code == 0x0000:
        return
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
    comment = f" - {status.ErrorComment}" if "ErrorComment" in status else ""
    if 0xB000 <= code <= 0xBFFF:
        result.warnings.append(f"{sop_uid}: 0x{code:04X} {meaning}{comment}")
        return
    raise DeliveryFailed(f"C-STORE of {sop_uid} ({sop_class.name}) refused by {called_ae} "
                         f"with status 0x{code:04X} ({meaning}){comment}")


def _request_commitment(assoc: Association, datasets: Sequence[Dataset], watch: _Watch,
                        result: DicomResult, wait_s: float) -> None:
    if not any(cx.abstract_syntax == STORAGE_COMMITMENT_PUSH for cx in assoc.accepted_contexts):
        result.commitment_error = ("storage commitment not requested: the site did not "
                                   "accept the Storage Commitment Push Model context")
        return
    transaction_uid = str(generate_uid())
    request = Dataset()
    request.TransactionUID = transaction_uid
    refs = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(item)
    request.ReferencedSOPSequence = refs
    status, _reply = assoc.send_n_action(request, 1, STORAGE_COMMITMENT_PUSH,
                                         STORAGE_COMMITMENT_INSTANCE)
    if "Status" not in status:
        result.commitment_error = ("storage commitment not requested: no N-ACTION response "
                                   f"({watch.peer_ended(assoc)})")
        return
    code = int(status.Status)
    if code != 0x0000:
        result.commitment_error = ("storage commitment not requested: N-ACTION refused with "
                                   f"status 0x{code:04X}")
        return
    result.commitment_uid = transaction_uid
    expected = [str(ds.SOPInstanceUID) for ds in datasets]
    deadline = _now() + timedelta(seconds=wait_s)
    while transaction_uid not in watch.reports and assoc.is_established:
        left = (deadline - _now()).total_seconds()
        if left <= 0:
            break
        watch.report_arrived.wait(min(left, 0.5))
        watch.report_arrived.clear()
    if transaction_uid in watch.reports:
        event_type, info = watch.reports[transaction_uid]
        result.commitment_report = evaluate_commitment(event_type, info, expected)


# HL7 over MLLP --------------------------------------------------------------------------
def _hl7_fields(segment: str, separator: str) -> list[str]:
    return segment.split(separator)


def send_hl7(host: str, port: int, message: str, timeout_s: float = HL7_TIMEOUT_S,
             tls: ssl.SSLContext | None = None) -> tuple[str, str]:
    """Send one HL7 v2 message over MLLP and wait for its ACK.

    Success only for MSA-1 ``AA``/``CA`` acknowledging our MSH-10; returns (control ID,
    ACK code).  Anything else raises :class:`DeliveryFailed` with the reason.  With
    ``tls`` (the center's client context for the site, :mod:`pacs_gateway.tls`) the
    MLLP stream runs inside TLS, as IHE ITI's secure node profile has it: the HIS's
    certificate and host name are checked before a byte of the report is sent.
    """
    if not message.startswith("MSH") or len(message) < 8:
        raise DeliveryFailed("the HL7 message does not start with an MSH segment")
    separator = message[3]
    msh = _hl7_fields(message.replace("\n", "\r").split("\r", 1)[0], separator)
    control_id = msh[9] if len(msh) > 9 else ""
    payload = _MLLP_START + message.encode("utf-8") + _MLLP_END
    where = f"HL7 endpoint {host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        raise DeliveryFailed(f"cannot connect to {where}: {e}") from e
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise DeliveryFailed(f"TLS handshake with {where} failed: "
                                 f"{describe_failure(e)[1]} (results go to this site over "
                                 "TLS only)") from e
    try:
        with sock:
            sock.settimeout(timeout_s)
            sock.sendall(payload)
            buffer = b""
            while _MLLP_END not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DeliveryFailed(f"{where} closed the connection without an ACK")
                buffer += chunk
                if len(buffer) > HL7_MAX_ACK_BYTES:
                    raise DeliveryFailed(f"{where} sent more than {HL7_MAX_ACK_BYTES} bytes "
                                         "without an MLLP end block")
    except TimeoutError as e:
        raise DeliveryFailed(f"no ACK from {where} within {timeout_s:g} s") from e
    except OSError as e:
        raise DeliveryFailed(f"connection to {where} failed: {e}") from e
    start = buffer.find(_MLLP_START)
    ack = buffer[start + 1 if start >= 0 else 0:buffer.index(_MLLP_END)]
    text = ack.decode("utf-8", errors="replace")
    segments = [seg for seg in text.replace("\n", "\r").split("\r") if seg]
    ack_sep = segments[0][3] if segments and segments[0].startswith("MSH") else separator
    msa = next((_hl7_fields(seg, ack_sep) for seg in segments if seg.startswith("MSA")), None)
    if msa is None or len(msa) < 2:
        raise DeliveryFailed(f"{where} answered without an MSA segment: {text[:200]!r}")
    code = msa[1]
    acked = msa[2] if len(msa) > 2 else ""
    if code not in ("AA", "CA"):
        why = msa[3] if len(msa) > 3 and msa[3] else "no text"
        raise DeliveryFailed(f"{where} answered {code} (MSA-3: {why})")
    if control_id and acked != control_id:
        raise DeliveryFailed(f"{where} acknowledged message {acked!r}, not ours "
                             f"({control_id!r})")
    return control_id, code
