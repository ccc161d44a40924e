"""What the AI pre-read puts into a report: the findings a reader accepted.

Registered with :mod:`reports.registry` by :func:`ai_models.plugin.register` as the
``ai_findings`` prefill kind (the image templates' findings field).  AI output that a
reader has not accepted never reaches a report; a reader's later decision on a finding
adds or takes out its line in an open draft (:func:`review_finding`).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.errors import InvalidInput, NotFound
from core.models import AIFinding, AIResult, Study
from reports import service

#: The prefill kind of a template field that takes the accepted AI findings.
PREFILL_KIND = "ai_findings"
#: Ends every line an accepted AI finding puts in a draft, so that lines the reader
#: wrote are told apart from the ones a later decision may take out again.
_AI_MARK = "accepted by the reader)"


def ai_prefill(session: Session, study: Study, kind: str = PREFILL_KIND) -> str:
    """Accepted AI findings as text; AI output a reader has not accepted stays out."""
    rows = session.execute(
        select(AIFinding, AIResult).join(AIResult, AIFinding.result_id == AIResult.id)
        .where(AIFinding.study_id == study.id, AIFinding.review == "accepted")
        .order_by(AIFinding.id)).all()
    lines = []
    for finding, result in rows:
        volume = f", volume {finding.volume_ml:.1f} mL" if finding.volume_ml else ""
        lines.append(f"{finding.label.replace('_', ' ')} (AI pre-read {result.model_name} "
                     f"{result.model_version}, probability {finding.probability:.2f}{volume}, "
                     f"{_AI_MARK}")
    return "\n".join(lines)


def review_finding(session: Session, finding_id: int, decision: str, actor: str) -> AIFinding:
    """A reader accepts or rejects one AI finding; only accepted ones reach a report."""
    if decision not in ("accepted", "rejected"):
        raise InvalidInput(f"decision must be 'accepted' or 'rejected', not {decision!r}")
    finding = session.get(AIFinding, finding_id)
    if finding is None:
        raise NotFound(f"no AI finding {finding_id}")
    service.check_inputs_open(session, finding.study_id, "the review of its AI findings")
    finding.review = decision
    audit.append(session, actor=actor, action=f"ai_finding.{decision}", object_type="ai_finding",
                 object_id=str(finding.id), detail={"study_id": finding.study_id,
                                                    "label": finding.label})
    session.flush()
    _sync_ai_prefill(session, finding.study_id, actor)
    return finding


def _sync_ai_prefill(session: Session, study_id: int, actor: str) -> None:
    """Keep an open draft's AI-prefilled field in step with the reader's decisions: an
    accepted finding's line is added, a rejected one's removed; the reader's own text in
    the field stays as it is.  Signed versions are never touched."""
    draft = service.open_draft(session, study_id)
    if draft is None:
        return
    wanted = [line for line in ai_prefill(session, draft.study).split("\n") if line]
    changed = {}
    for f in service.template_of(draft.report).fields:
        if f.prefill != PREFILL_KIND:
            continue
        current = str(draft.version.fields.get(f.key, ""))
        lines = [ln for ln in current.split("\n") if not ln.endswith(_AI_MARK) or ln in wanted]
        lines += [ln for ln in wanted if ln not in lines]
        text = "\n".join(ln for ln in lines if ln.strip())
        if text != current:
            changed[f.key] = text
    service.apply_prefill(session, draft, changed, actor)
