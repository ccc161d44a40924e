"""Storage Commitment results (PS3.4 J.3.3): read a site's N-EVENT-REPORT and apply it to
its delivery.

A report arrives either on the delivery's own association, within
``RDC_DELIVERY_COMMIT_WAIT_S`` after the N-ACTION (:mod:`delivery.dicom_scu` evaluates it,
:mod:`delivery.tasks` applies it when recording the attempt), or later on an association
that the site opens to the center's commitment SCP (:mod:`delivery.commitment_scp`,
which calls :func:`apply_commitment_report`).  Both paths end in :func:`apply_commitment`,
so a report means the same whichever way it came.  This module reads no network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.models import Delivery, ReportVersion
from core.states import DeliveryState
from delivery.service import RetryPolicy, move, retry_policy, utcnow

log = logging.getLogger(__name__)

#: PS3.4 J.3.2.2.1 Failure Reason values a site may give for an instance it did not commit.
_COMMIT_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class-instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


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


def apply_commitment(session: Session, delivery: Delivery, ok: bool, detail: str,
                      actor: str, policy: RetryPolicy | None = None) -> None:
    now = utcnow()
    if ok:
        move(delivery, DeliveryState.COMMITTED)
        delivery.committed_at = now
    else:
        move(delivery, DeliveryState.FAILED)
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
    apply_commitment(session, delivery, ok, detail, actor)
    return delivery
