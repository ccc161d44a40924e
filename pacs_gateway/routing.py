"""Routing rules: which jobs a complete study gets.

Rules live in a versioned TOML file (``pacs_gateway/routing_rules.toml`` or
``RDC_ROUTING_RULES``).  The gateway only queues a ``route`` job by ID when a
study completes; a worker runs this module's handler, which creates the jobs
the rules ask for, keyed so that the same study generation is never routed
twice.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit, jobs
from core.errors import ConfigurationError
from core.models import Instance, Job, Study
from core.settings import get_settings

log = logging.getLogger(__name__)

PRIORITIES = {"stat": 9, "urgent": 7, "routine": 5}
_MATCH_KEYS = {"site", "modality", "sop_class"}


@dataclass(frozen=True)
class Rule:
    id: str
    job: str
    queue: str
    priority: int
    match: dict[str, frozenset[str]] = field(default_factory=dict)
    fallback: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, site: str, modalities: set[str], sop_classes: set[str]) -> bool:
        facts = {"site": {site}, "modality": modalities, "sop_class": sop_classes}
        return all(not allowed or facts[key] & allowed for key, allowed in self.match.items())


@dataclass(frozen=True)
class RuleSet:
    version: int
    rules: tuple[Rule, ...]
    source: str

    def select(self, site: str, modalities: set[str], sop_classes: set[str]) -> list[Rule]:
        facts = (site, modalities, sop_classes)
        hits = [r for r in self.rules if not r.fallback and r.matches(*facts)]
        if hits:
            return hits
        return [r for r in self.rules if r.fallback and r.matches(*facts)]


def parse_rules(text: str, source: str) -> RuleSet:
    """Parse and validate a rules file; every mistake names the rule and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{source}: not valid TOML: {e}") from e
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise ConfigurationError(f"{source}: 'version' must be a positive integer")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("rule", [])):
        where = f"{source}: rule #{i + 1}"
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid:
            raise ConfigurationError(f"{where}: 'id' is required")
        if rid in seen:
            raise ConfigurationError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        match = raw.get("match", {})
        unknown = set(match) - _MATCH_KEYS
        if unknown:
            raise ConfigurationError(f"{where} ({rid}): unknown match keys {sorted(unknown)}")
        prio = raw.get("priority", "routine")
        if prio not in PRIORITIES:
            raise ConfigurationError(f"{where} ({rid}): priority must be one of {list(PRIORITIES)}")
        for key in ("job", "queue"):
            if not isinstance(raw.get(key), str):
                raise ConfigurationError(f"{where} ({rid}): '{key}' is required")
        rules.append(Rule(
            id=rid, job=raw["job"], queue=raw["queue"], priority=PRIORITIES[prio],
            match={k: frozenset(str(v) for v in vals) for k, vals in match.items()},
            fallback=bool(raw.get("fallback", False)), params=dict(raw.get("params", {})),
        ))
    if not rules:
        raise ConfigurationError(f"{source}: no rules")
    return RuleSet(version=version, rules=tuple(rules), source=source)


_cache: dict[Path, tuple[float, RuleSet]] = {}


def load_rules(path: Path) -> RuleSet:
    """Load (and cache by modification time) the rules at ``path``."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError as e:
        raise ConfigurationError(f"routing rules file {path} does not exist") from e
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    rules = parse_rules(path.read_text(encoding="utf-8"), str(path))
    _cache[path] = (mtime, rules)
    return rules


def route_study(session: Session, study: Study, rules: RuleSet) -> list[Job]:
    """Create the jobs the rules give ``study``'s current generation; idempotent."""
    modalities = set(study.modalities)
    sop_classes = set(session.scalars(
        select(Instance.sop_class_uid).where(Instance.study_id == study.id).distinct()))
    selected = rules.select(study.site_id, modalities, sop_classes)
    created: list[Job] = []
    for rule in selected:
        priority = max(rule.priority, study.priority)
        job, new = jobs.submit(session, jobs.NewJob(
            key=f"{rule.job}:study-{study.id}:gen-{study.generation}:{rule.id}",
            kind=rule.job, queue=rule.queue, study_id=study.id, priority=priority,
            rule=f"{rule.id}@v{rules.version}", params=rule.params,
        ))
        study.priority = max(study.priority, priority)
        if new:
            created.append(job)
    audit.append(session, actor="worker", action="study.route", object_type="study",
                 object_id=str(study.id), detail={
                     "generation": study.generation, "rules_version": rules.version,
                     "rules": [r.id for r in selected], "jobs": [j.id for j in created]})
    if not selected:
        log.warning("routing.unrouted study=%s modalities=%s", study.id, sorted(modalities))
    return created


def run_route_job(session: Session, job: Job) -> None:
    """Worker side of a ``route`` job: apply the current rules to the study."""
    if job.study_id is None:
        raise ValueError(f"route job {job.id} has no study")
    study = session.get(Study, job.study_id)
    if study is None:
        raise ValueError(f"route job {job.id}: study {job.study_id} does not exist")
    route_study(session, study, load_rules(get_settings().routing_rules_path()))
