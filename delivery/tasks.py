"""The ``deliver`` job: claim one attempt, perform it over the network, record the outcome.

Exactly once, as far as the protocol allows: the handler runs without a database
transaction open around the network (SQLite would otherwise hold its write lock for the
length of an association) and instead *claims* the attempt first, with one conditional
UPDATE that only succeeds for the delivery's current job, for the attempt number the job
was made for, while the delivery is ``pending``/``failed`` and no other attempt is in
flight.  A duplicate message, a stale job or a second worker therefore finds nothing to
do, and a ``sent`` or ``committed`` delivery is never sent again.  An in-flight claim marks
``last_error`` with ``"in flight: ..."`` and sets ``next_attempt_at`` to the end of a lease
longer than the job time limit, so a worker killed mid-attempt leaves a delivery that
:func:`delivery.service.requeue_due` picks up again once the lease has run out.  The one
window left is a worker that dies after the site stored the objects but before the outcome
was committed: the retry then sends them again.  DICOM C-STORE of the same SOP Instance
UID is idempotent at any conformant receiver, so that is the safe side.

The retry policy and the delivery's states are :mod:`delivery.service`'s; the protocols
are :mod:`delivery.dicom_scu` and :mod:`delivery.hl7_sender`.  The handler is registered
by :func:`delivery.plugin.register`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, update

from core import audit, jobs, metrics
from core.db import Database
from core.errors import RDCError
from core.log_context import log_context
from core.models import Delivery, Job, OutboundMessage, ReportVersion, Site
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import get_settings
from core.states import DeliveryState
from core.tls import center_client_context
from delivery.commitment import apply_commitment
from delivery.dicom_scu import send_dicom
from delivery.errors import DeliveryFailed
from delivery.hl7_sender import send_hl7
from delivery.service import (
    IN_FLIGHT,
    RetryPolicy,
    in_flight,
    lease_s,
    move,
    retry_policy,
    utcnow,
)

log = logging.getLogger(__name__)


#: How a failed attempt's job error begins (``attempt 2 failed: ...``).
_ATTEMPT_FAILED = "attempt {} failed:"


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
    with log_context(site_id=attempt.site_id):
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
    now = utcnow()
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
        elif in_flight(delivery, now):
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
                        next_attempt_at=now + timedelta(seconds=lease_s()),
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
        assert site is not None  # foreign key
        if delivery.message_id is not None:
            message = s.get(OutboundMessage, delivery.message_id)
            assert message is not None  # foreign key
            objects: tuple[tuple[str, str], ...] = ()
            hl7_message = message.body
        else:
            version = s.get(ReportVersion, delivery.report_version_id)
            assert version is not None  # foreign key
            objects = tuple((label, uid) for label, uid in
                            (("SR", version.sr_sop_uid), ("PDF", version.pdf_sop_uid)) if uid)
            hl7_message = version.hl7_message or ""
        attempt = _Attempt(
            delivery_id=delivery_id, number=number, job_id=job.id, channel=delivery.channel,
            site_id=site.id, host=site.host if delivery.channel == "dicom" else
            (site.hl7_host or ""), port=site.port if delivery.channel == "dicom" else
            (site.hl7_port or 0), ae_title=site.ae_title,
            storage_commitment=site.storage_commitment, objects=objects,
            hl7_message=hl7_message,
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
    now = utcnow()
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
            _count(attempt, "superseded")
            return
        if outcome.error is None:
            move(delivery, DeliveryState.SENT)
            delivery.sent_at = now
            delivery.next_attempt_at = None
            delivery.last_error = outcome.commitment_note
            delivery.commitment_uid = outcome.commitment_uid
            detail.update(outcome="sent", commitment_uid=outcome.commitment_uid,
                          commitment_note=outcome.commitment_note)
            if delivery.message_id is not None:
                # The site's ACK, on the message itself (what the lab's timeline shows).
                message = s.get(OutboundMessage, delivery.message_id)
                if message is not None:
                    message.ack_code = str(outcome.detail.get("ack", ""))[:2]
                    message.ack_detail = {"control_id": outcome.detail.get("control_id"),
                                          "delivery_id": delivery.id,
                                          "attempt": attempt.number}
                    message.acked_at = now
            audit.append(s, actor="worker", action="delivery.attempt", object_type="delivery",
                         object_id=str(delivery.id), detail=detail)
            log.info("delivery.sent delivery_id=%s attempt=%s commitment_uid=%s",
                     delivery.id, attempt.number, outcome.commitment_uid)
            if outcome.commitment is not None:
                apply_commitment(s, delivery, *outcome.commitment, actor="worker",
                                  policy=policy)
            _count(attempt, "sent")
            return
        created = delivery.created_at or now
        delivery.last_error = outcome.error
        if (now - created).total_seconds() > policy.max_age_s:
            move(delivery, DeliveryState.DEAD)
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
            _count(attempt, "dead")
            metrics.DELIVERY_DEAD_LETTERED.labels(channel=attempt.channel).inc()
            return
        move(delivery, DeliveryState.FAILED)
        delivery.next_attempt_at = now + policy.backoff(delivery.attempts)
        detail.update(outcome="failed", error=outcome.error,
                      next_attempt_at=delivery.next_attempt_at.isoformat())
        audit.append(s, actor="worker", action="delivery.attempt", object_type="delivery",
                     object_id=str(delivery.id), detail=detail)
        log.warning("delivery.failed delivery_id=%s attempt=%s next_attempt_at=%s error=%s",
                    delivery.id, attempt.number, delivery.next_attempt_at.isoformat(),
                    outcome.error)
    _count(attempt, "failed")


def _count(attempt: _Attempt, outcome: str) -> None:
    metrics.DELIVERY_ATTEMPTS.labels(channel=attempt.channel, outcome=outcome,
                                     site=attempt.site_id).inc()
