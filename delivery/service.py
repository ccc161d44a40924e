"""Guaranteed delivery of a signed report's outputs back to the county site that sent the exam:
the delivery's state, schedule and operator actions.

A :class:`~core.models.Delivery` row is the source of truth for one (report version, site,
channel).  Channels: ``dicom`` sends the verified SR and the Encapsulated PDF (both already
in the center's Orthanc) by C-STORE to the site's AE, followed by a Storage Commitment
request where the site supports it (:mod:`delivery.dicom_scu`); ``hl7`` sends the
version's ORU^R01 over MLLP (:mod:`delivery.hl7_sender`).

Each attempt is one ``deliver`` job (:mod:`delivery.tasks`), queued by ID after commit,
keyed ``deliver:<delivery id>:attempt-<n>``.  Why a job per attempt, and why a failed
attempt's job ends ``failed`` without being retried by the job machinery:

* The retry schedule belongs to the delivery (exponential backoff from
  ``RDC_DELIVERY_RETRY_BASE_S`` up to ``RDC_DELIVERY_RETRY_MAX_S``, dead-lettered once the
  delivery is older than ``RDC_DELIVERY_MAX_AGE_S``).  A :class:`~core.jobs.TransientJobError`
  would hand retries to the job machinery instead (Celery's countdown, at most five
  attempts), a policy that knows nothing of the site and ends in a dead *job* that no
  operator's dead-letter list shows.  So an attempt that fails records its reason,
  ``next_attempt_at`` and the failed/dead state on the delivery first, and only then
  ends its job ``failed`` (:class:`~core.jobs.JobFailed`, no job retry) with the same
  reason, so that ``rdc status`` never counts a failed attempt as a succeeded job.
* :func:`requeue_due`, called periodically, makes the next attempt's job when
  ``next_attempt_at`` has passed.  It reads only the database, so retries survive a
  restarted worker or a broker that lost its messages.

Why this module holds the state helpers (:func:`move`, :func:`in_flight`, the lease) that
:mod:`delivery.tasks` and :mod:`delivery.commitment` use too: every change of a delivery's
state goes through one transition check and one notion of "an attempt is in flight".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit, jobs
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Delivery, Job, OutboundMessage, Report, ReportVersion, Site
from core.settings import get_settings
from core.states import DeliveryState, JobState, ReportState, check_transition

log = logging.getLogger(__name__)

JOB_KIND = "deliver"
QUEUE = "delivery"
CHANNELS = ("dicom", "hl7")

#: An attempt in flight for longer than this is taken to be lost (its worker died).
#: It must exceed the Celery time limit, after which the attempt is surely over.
ATTEMPT_LEASE_S = 900.0
IN_FLIGHT = "in flight: "


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



def utcnow() -> datetime:
    return datetime.now(UTC)


def lease_s() -> float:
    return max(ATTEMPT_LEASE_S, get_settings().job_time_limit_s + 60.0)


def move(delivery: Delivery, new: DeliveryState) -> None:
    check_transition(DeliveryState, delivery.state, new)
    delivery.state = new
    delivery.updated_at = utcnow()


def in_flight(delivery: Delivery, now: datetime) -> bool:
    lease_end = delivery.next_attempt_at
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


def queue_attempt(session: Session, delivery: Delivery, *,
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
    version = (session.get(ReportVersion, delivery.report_version_id)
               if delivery.report_version_id is not None else None)
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
        job.updated_at = utcnow()
        created = True
    delivery.job_id = job.id
    queued = created or (kick and job.state == JobState.QUEUED)
    if queued:
        jobs.enqueue_after_commit(session, job)
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
    job, _ = queue_attempt(session, delivery)
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


def schedule_message(session: Session, message: OutboundMessage) -> Delivery:
    """Send an outbound HL7 message (a lab result, a critical value) to its site over
    MLLP, through the same retries, dead letters and resend as the reports; idempotent.

    The message must be stored (flushed).  Refused with :class:`Conflict` when the site is
    disabled or takes no results, :class:`InvalidInput` when it has no HL7 endpoint or
    the message does not start with MSH.  The site's ACK is recorded on the message.
    """
    if message.id is None:
        raise InvalidInput("an outbound message must be stored before delivery")
    existing = session.scalar(select(Delivery).where(Delivery.message_id == message.id))
    if existing is not None:
        return existing
    site = session.get(Site, message.site_id)
    if site is None:
        raise NotFound(f"outbound message {message.id} names no known site {message.site_id!r}")
    if not site.enabled:
        raise Conflict(f"site {site.id!r} is disabled")
    if not site.accepts_results:
        raise Conflict(f"site {site.id!r} does not accept results "
                       "(register it with --accepts-results)")
    if not site.hl7_host or site.hl7_port is None or not 1 <= site.hl7_port <= 65535:
        raise InvalidInput(f"site {site.id!r} has no HL7 endpoint (hl7_host/hl7_port)")
    if not message.body.startswith("MSH"):
        raise InvalidInput(f"outbound message {message.id} does not start with an MSH segment")
    delivery = Delivery(report_version_id=None, message_id=message.id, site_id=site.id,
                        channel="hl7", state=DeliveryState.PENDING, attempts=0)
    try:
        with session.begin_nested():
            session.add(delivery)
            session.flush()
    except IntegrityError:
        found = session.scalar(select(Delivery).where(Delivery.message_id == message.id))
        assert found is not None
        return found
    job, _ = queue_attempt(session, delivery)
    audit.append(session, actor="system", action="delivery.schedule", object_type="delivery",
                 object_id=str(delivery.id), detail={
                     "message_id": message.id, "kind": message.kind,
                     "subject": message.subject, "control_id": message.control_id,
                     "site": site.id, "channel": "hl7", "job_id": job.id})
    log.info("delivery.scheduled delivery_id=%s site=%s channel=hl7 message=%s job_id=%s",
             delivery.id, site.id, message.control_id, job.id)
    return delivery


def requeue_due(session: Session, now: datetime | None = None) -> list[int]:
    """Queue the next attempt of every delivery whose ``next_attempt_at`` has passed.

    That is a ``failed`` delivery whose backoff is over, or an attempt whose lease ran
    out without an outcome (its worker died).  Idempotent: the next attempt's job is
    keyed by its number, so calling this again finds it instead of making another.
    Returns the IDs of the deliveries that got a new job.  Meant for the gateway's
    periodic monitor; the caller commits.
    """
    now = now or utcnow()
    due = session.scalars(
        select(Delivery).where(
            Delivery.state.in_([DeliveryState.FAILED, DeliveryState.PENDING]),
            Delivery.next_attempt_at.is_not(None), Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at, Delivery.id)).all()
    queued: list[int] = []
    for delivery in due:
        job, queued_now = queue_attempt(session, delivery)
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
    now = utcnow()
    if in_flight(delivery, now):
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
        move(delivery, DeliveryState.FAILED)
    if delivery.state != DeliveryState.PENDING:
        move(delivery, DeliveryState.PENDING)
    delivery.next_attempt_at = None
    job, _ = queue_attempt(session, delivery, kick=True)
    audit.append(session, actor=actor, action="delivery.resend", object_type="delivery",
                 object_id=str(delivery.id), detail={"from": before, "force": force,
                                                     "job_id": job.id,
                                                     "last_error": delivery.last_error})
    log.info("delivery.resend delivery_id=%s from=%s job_id=%s actor=%s", delivery.id, before,
             job.id, actor)
    return delivery
