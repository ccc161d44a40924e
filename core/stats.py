"""Counts an operator watches: per site, what arrived and where it is now."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Instance, Job, Site, Study


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


def job_counts(session: Session) -> dict[str, dict[str, int]]:
    """{kind: {state: count}}"""
    out: dict[str, dict[str, int]] = {}
    for kind, state, n in session.execute(
        select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)):
        out.setdefault(kind, {})[state] = n
    return out
