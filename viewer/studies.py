"""What a reader sees when opening a study: series from Orthanc, AI findings, priors.

Priors are the patient's other studies from any site the reader may see, matched
by patient ID (and issuer, when both studies have one).  Where IDs do not match,
a study with the same name and birth date is still shown, flagged, because
county hospitals often give the same patient different local IDs.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from core import audit
from core.models import AIFinding, AIResult, Study
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import Settings
from reports.document import Figure
from viewer.auth import UserContext
from viewer.worklist import get_visible_study, visible, work_item

log = logging.getLogger(__name__)
_KIND = {"SR": "sr", "SEG": "seg", "DOC": "pdf", "OT": "image"}


def series_of(client: OrthancClient, study: Study) -> list[dict[str, Any]]:
    """The study's series with their instances in InstanceNumber order."""
    found = [x for x in client.lookup(study.study_uid) if x.get("Type") == "Study"]
    if not found:
        return []
    out = []
    for series in client.study_series(str(found[0]["ID"])):
        tags = series.get("MainDicomTags", {})
        instances = client.get(f"/series/{series['ID']}/instances").json()

        def number(inst: dict[str, Any]) -> int:
            try:
                return int(inst.get("MainDicomTags", {}).get("InstanceNumber", 0) or 0)
            except ValueError:
                return 0
        ordered = sorted(instances, key=number)
        modality = str(tags.get("Modality", ""))
        out.append({
            "series_uid": tags.get("SeriesInstanceUID", ""), "modality": modality,
            "description": tags.get("SeriesDescription", ""),
            "number": tags.get("SeriesNumber", ""),
            "kind": _KIND.get(modality, "image"),
            "instances": [i["MainDicomTags"].get("SOPInstanceUID", "") for i in ordered],
        })
    return sorted(out, key=lambda s: (s["kind"] != "image", str(s["number"]).zfill(6)))


def key_image_figures(settings: Settings, study: Study) -> tuple[Figure, ...]:
    """A key image for the signed report's PDF: the middle image of the study's first
    image series, rendered by Orthanc.  Passed to signing as the ECG tracing is; a
    study without a displayable image (or an archive that cannot render it) gets none,
    which does not stop the signature."""
    try:
        with OrthancClient.from_settings(settings, retries=1) as client:
            for series in series_of(client, study):
                uids = series["instances"]
                if series["kind"] != "image" or not uids:
                    continue
                index = len(uids) // 2
                orthanc_id = client.find_instance(uids[index])
                if orthanc_id is None:
                    continue
                png = client.get(f"/instances/{orthanc_id}/preview", accept="image/png").content
                if not png.startswith(b"\x89PNG"):
                    continue
                what = " ".join(str(p) for p in (series["modality"], "series", series["number"],
                                                 series["description"]) if str(p).strip())
                return (Figure(f"Key image: {what}, image {index + 1} of {len(uids)}", png,
                               width_mm=80.0),)
    except OrthancError as e:
        log.warning("no key image for study %s: %s", study.id, e)
    return ()


def ai_findings(session: Session, study_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(AIFinding, AIResult).join(AIResult, AIFinding.result_id == AIResult.id)
        .where(AIFinding.study_id == study_id).order_by(AIFinding.critical.desc(),
                                                        AIFinding.probability.desc()))
    return [{"id": f.id, "label": f.label, "probability": f.probability,
             "threshold": f.threshold, "positive": f.positive, "critical": f.critical,
             "volume_ml": f.volume_ml, "review": f.review, "model": r.model_name,
             "version": r.model_version} for f, r in rows]


def priors(session: Session, user: UserContext, study: Study) -> list[dict[str, Any]]:
    """Other studies of the same patient that the user may see, newest first."""
    by_id = and_(Study.patient_id != "", Study.patient_id == study.patient_id)
    if study.issuer_of_patient_id:
        by_id = and_(by_id, or_(Study.issuer_of_patient_id == "",
                                Study.issuer_of_patient_id == study.issuer_of_patient_id))
    by_name = and_(Study.patient_name != "", Study.patient_name == study.patient_name,
                   Study.patient_birth_date != "",
                   Study.patient_birth_date == study.patient_birth_date)
    conditions = [by_id] if study.patient_id else []
    if study.patient_name and study.patient_birth_date:
        conditions.append(by_name)
    if not conditions:
        return []
    q = visible(select(Study).where(Study.id != study.id, or_(*conditions)), user)
    out = []
    for other in session.scalars(q.order_by(Study.study_date.desc(), Study.id.desc()).limit(50)):
        same_id = bool(study.patient_id) and other.patient_id == study.patient_id
        out.append({"study_id": other.id, "study_uid": other.study_uid,
                    "site_id": other.site_id, "date": other.study_date,
                    "description": other.description, "modalities": list(other.modalities),
                    "match": "id" if same_id else "name+birthdate"})
    return out


def open_study(session: Session, settings: Settings, user: UserContext,
               study_id: int) -> dict[str, Any]:
    """Everything the viewer needs for one study; the view is audited."""
    study = get_visible_study(session, user, study_id)
    item = work_item(session, user, study_id).as_dict()
    with OrthancClient.from_settings(settings) as client:
        series = series_of(client, study)
    if study.first_opened_at is None and user.user_id is not None:
        study.first_opened_at = datetime.now(UTC)
    audit.append(session, actor=user.username, action="study.view", object_type="study",
                 object_id=str(study.id), detail={"site": study.site_id})
    return {**item, "series": series, "ai_findings": ai_findings(session, study.id),
            "priors": priors(session, user, study)}
