"""Counts an operator watches: per site, what arrived and where it is now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Instance, Job, Site, Study
from core.states import InstanceState


@dataclass(frozen=True)
class SiteStatus:
    site_id: str
    name: str
    enabled: bool
    received: int
    spooled: int
    stored: int
    failed: int
    studies: dict[str, int]


def site_status(session: Session) -> list[SiteStatus]:
    inst = dict[tuple[str, str], int]()
    for site_id, state, n in session.execute(
        select(Instance.site_id, Instance.state, func.count()).group_by(Instance.site_id,
                                                                         Instance.state)):
        inst[(site_id, state)] = n
    studies: dict[str, dict[str, int]] = {}
    for site_id, state, n in session.execute(
        select(Study.site_id, Study.state, func.count()).group_by(Study.site_id, Study.state)):
        studies.setdefault(site_id, {})[state] = n
    out = []
    for site in session.scalars(select(Site).order_by(Site.id)):
        spooled = inst.get((site.id, "spooled"), 0)
        stored = inst.get((site.id, "stored"), 0)
        failed = inst.get((site.id, "failed"), 0)
        out.append(SiteStatus(site.id, site.name, site.enabled, spooled + stored + failed,
                              spooled, stored, failed, studies.get(site.id, {})))
    return out


@dataclass(frozen=True)
class FailedInstance:
    """An instance acknowledged to its sender that never reached Orthanc."""

    receipt_id: str
    site_id: str
    study_uid: str
    sop_instance_uid: str
    received_at: datetime
    error: str


def failed_instances(session: Session, limit: int = 20) -> list[FailedInstance]:
    """The most recent receipts in ``failed`` (newest first)."""
    rows = session.execute(
        select(Instance.id, Instance.site_id, Study.study_uid, Instance.sop_instance_uid,
               Instance.received_at, Instance.last_error)
        .join(Study, Study.id == Instance.study_id)
        .where(Instance.state == InstanceState.FAILED)
        .order_by(Instance.received_at.desc()).limit(limit))
    return [FailedInstance(rid, site, study_uid, sop, received, error or "")
            for rid, site, study_uid, sop, received, error in rows]


def spool_counts(spool_dir: Path) -> dict[str, int]:
    """Files per spool folder: ``ready`` (to upload), ``failed`` (Orthanc refused them
    after acknowledgement), ``unacknowledged`` (found after a crash with no receipt)."""
    out = {}
    for sub in ("ready", "failed", "unacknowledged"):
        d = spool_dir / sub
        out[sub] = sum(1 for p in d.iterdir() if p.is_file()) if d.is_dir() else 0
    return out


def job_counts(session: Session) -> dict[str, dict[str, int]]:
    """{kind: {state: count}}"""
    out: dict[str, dict[str, int]] = {}
    for kind, state, n in session.execute(
        select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)):
        out.setdefault(kind, {})[state] = n
    return out
