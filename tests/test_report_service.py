"""Report drafts on a real database: templates, AI prefill of accepted findings only,
editing rules of signed versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from ai_models.report_prefill import review_finding
from core.db import Database, get_database
from core.errors import Conflict, InvalidInput
from core.models import AIFinding, AIResult, ECGAnalysis, Report, Study
from core.sites import SiteSpec, add_site
from reports import registry, service
from reports.templates import get_template, template_for


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = get_database(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    with database.session() as s:
        add_site(s, SiteSpec(id="county-a", name="County A", ae_title="COUNTY_A",
                             host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                 actor="test")
    yield database
    get_database.cache_clear()


def _study_with_findings(db: Database) -> int:
    with db.session() as s:
        study = Study(site_id="county-a", study_uid="1.2.3.4", patient_id="P1",
                      modalities=["DX"], body_part="CHEST")
        s.add(study)
        s.flush()
        result = AIResult(study_id=study.id, series_uid="1.2.3.4.1", model_name="cxr-triage",
                          model_version="1.0.0", device="cpu", duration_ms=10.0,
                          sr_sop_uid="1.2.3.4.9")
        s.add(result)
        s.flush()
        for label, review in (("pneumothorax", "accepted"), ("lung_opacity", "rejected"),
                              ("effusion", "unreviewed")):
            s.add(AIFinding(result_id=result.id, study_id=study.id, label=label,
                            probability=0.91, threshold=0.5, positive=True,
                            critical=label == "pneumothorax", review=review))
        return int(study.id)


def test_templates_are_chosen_by_modality_and_body_part_and_versioned() -> None:
    assert template_for(["CT"], "CHEST").id == "ct-chest"
    assert template_for(["CT"], "", "CT THORAX W/O CONTRAST").id == "ct-chest"
    assert template_for(["DX"], "CHEST").id == "cr-chest"
    assert template_for(["CR"], "", "PA chest").id == "cr-chest"
    # A spine CT or a hand radiograph gets its modality's generic template, never the
    # chest one; a modality without templates gets the generic one.
    assert template_for(["CT"], "CSPINE", "CT cervical spine").id == "ct-generic"
    assert template_for(["CT"]).id == "ct-generic"
    assert template_for(["DX"], "HAND", "Hand 2 views").id == "cr-generic"
    assert template_for(["MR"], "CHEST").id == "generic"
    assert template_for(["ECG"]).id == "ecg"
    t = get_template("ct-chest", "1.0.0")
    assert t.unresolved({"technique": "Axial CT of the chest, {{contrast: with / without}}",
                         "findings": "x", "impression": "y"}) == ["technique"]
    assert t.unresolved({"technique": "Axial CT.", "findings": " ", "impression": "y"}) == [
        "findings"]
    with pytest.raises(InvalidInput, match="no field 'bogus'"):
        t.field("bogus")


def test_only_accepted_ai_findings_prefill_the_draft(db: Database) -> None:
    study_id = _study_with_findings(db)
    with db.session() as s:
        report = service.create_report(s, study_id, actor="dr.li")
        draft = service.current_version(s, report)
        findings = draft.fields["findings"]
        assert "pneumothorax" in findings and "cxr-triage 1.0.0" in findings
        assert "lung opacity" not in findings and "effusion" not in findings
        assert report.template_id == "cr-chest" and draft.state == "draft"
        # Asking again gives the same report, not a second one.
        assert service.create_report(s, study_id, actor="dr.li").id == report.id
        assert s.query(Report).count() == 1


def test_review_decisions_are_checked(db: Database) -> None:
    _study_with_findings(db)
    with db.session() as s:
        finding = s.query(AIFinding).filter_by(label="effusion").one()
        with pytest.raises(InvalidInput, match="accepted' or 'rejected"):
            review_finding(s, finding.id, "maybe", actor="dr.li")
        assert review_finding(s, finding.id, "accepted", "dr.li").review == "accepted"


def test_drafts_are_edited_and_addenda_need_a_signed_version(db: Database) -> None:
    study_id = _study_with_findings(db)
    with db.session() as s:
        report = service.create_report(s, study_id, actor="dr.li")
        v = service.update_draft(s, report.id, {"impression": "No acute findings."}, "dr.li",
                                 state="preliminary")
        assert v.state == "preliminary" and v.fields["impression"] == "No acute findings."
        with pytest.raises(InvalidInput, match="no field"):
            service.update_draft(s, report.id, {"nonsense": "x"}, "dr.li")
        with pytest.raises(InvalidInput, match="sign to make it final"):
            service.update_draft(s, report.id, {}, "dr.li", state="final")
        with pytest.raises(Conflict, match="not signed yet"):
            service.add_addendum(s, report.id, {}, "dr.li")
        v.state = "final"  # as signing leaves it
        s.flush()
        with pytest.raises(Conflict, match="never edited"):
            service.update_draft(s, report.id, {"impression": "changed"}, "dr.li")
        addendum = service.add_addendum(s, report.id, {"impression": "Addendum."}, "dr.li")
        assert addendum.number == 2 and addendum.predecessor_id == v.id
        assert addendum.kind == "addendum" and addendum.state == "draft"


def test_decisions_after_the_draft_exists_update_its_findings(db: Database) -> None:
    study_id = _study_with_findings(db)
    with db.session() as s:
        report = service.create_report(s, study_id, actor="dr.li")
        service.update_draft(s, report.id, {"findings": service.current_version(
            s, report).fields["findings"] + "\nHeart size normal."}, "dr.li")
        effusion = s.query(AIFinding).filter_by(label="effusion").one()
        review_finding(s, effusion.id, "accepted", "dr.li")
        text = service.current_version(s, report).fields["findings"]
        assert "effusion" in text and "pneumothorax" in text and "Heart size normal." in text
        pneumothorax = s.query(AIFinding).filter_by(label="pneumothorax").one()
        review_finding(s, pneumothorax.id, "rejected", "dr.li")
        text = service.current_version(s, report).fields["findings"]
        assert "pneumothorax" not in text and "effusion" in text
        assert "Heart size normal." in text  # the reader's own words stay
        service.current_version(s, report).state = "final"
        s.flush()
        # Signed: the findings it was signed on stay as they are, until an addendum.
        with pytest.raises(Conflict, match=r"signed .*start an addendum"):
            review_finding(s, pneumothorax.id, "accepted", "dr.li")
        assert pneumothorax.review == "rejected"
        assert "pneumothorax" not in service.current_version(s, report).fields["findings"]
        service.add_addendum(s, report.id, {}, "dr.li")
        review_finding(s, pneumothorax.id, "accepted", "dr.li")
        assert "pneumothorax" in service.current_version(s, report).fields["findings"]


def test_a_report_is_stored_from_its_first_save(db: Database) -> None:
    study_id = _study_with_findings(db)
    with db.session() as s:
        template, fields = service.preview_report(s, study_id)
        assert template.id == "cr-chest" and "pneumothorax" in fields["findings"]
        assert service.study_report(s, study_id) is None
        assert s.query(Report).count() == 0
        report = service.create_report(s, study_id, "dr.li", fields={"impression": "Normal."},
                                       state="preliminary")
        version = service.current_version(s, report)
        assert version.fields["impression"] == "Normal." and version.state == "preliminary"
        assert "pneumothorax" in version.fields["findings"]  # the prefill stays under it
        assert report.state == "preliminary"
        with pytest.raises(InvalidInput, match="no field"):
            service.create_report(s, study_id, "dr.li", fields={"bogus": "x"})


def test_a_prefill_kind_no_domain_provides_is_refused_by_name(db: Database) -> None:
    """Reports name no domain: a template field's prefill comes from the domain that
    registered its kind, and a kind nobody registered says where to look."""
    with db.session() as s:
        study = Study(site_id="county-a", study_uid="1.2.3.5", patient_id="P2",
                      modalities=["ECG"])
        s.add(study)
        s.flush()
        with pytest.raises(InvalidInput, match=r"'nodomain_slides'.*rdc/domains\.py"):
            registry.prefill(s, study, "nodomain_slides")
        # The ECG domain's prefix covers every ecg_ kind; the AI domain's kind is exact.
        assert registry.prefill(s, study, "ecg_rhythm") == ""
        assert registry.prefill(s, study, "ai_findings") == ""
        with pytest.raises(InvalidInput, match="'ai_findings_extra'"):
            registry.prefill(s, study, "ai_findings_extra")
    # The ECG template ships in the ECG package and is found through its registration.
    assert get_template("ecg").fields[0].prefill == "ecg_rhythm"
    with pytest.raises(ValueError, match="registered already"):
        registry.register_prefill("ai_findings", lambda s, study, kind: "")


def test_the_ecg_domain_draws_its_tracing_for_the_signed_pdf(db: Database) -> None:
    """The PDF's figures come from the domains that registered them: the ECG's 12-lead
    tracing, drawn from the waveform the caller reads out of the archive."""
    waveform = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    asked: list[tuple[str, str]] = []

    def archived(sop_uid: str, what: str) -> bytes:
        asked.append((sop_uid, what))
        return waveform

    with db.session() as s:
        image_study = Study(site_id="county-a", study_uid="1.2.3.6", patient_id="P3",
                            modalities=["CT"])
        ecg_study = Study(site_id="county-a", study_uid="1.2.3.7", patient_id="P4",
                          modalities=["ECG"])
        s.add_all([image_study, ecg_study])
        s.flush()
        s.add(ECGAnalysis(study_id=ecg_study.id, sop_instance_uid="1.2.3.7.1.1",
                          series_uid="1.2.3.7.1", analysis_version="test", result={}))
        s.flush()
        assert registry.figures(s, image_study, archived) == ()
        (figure,) = registry.figures(s, ecg_study, archived)
    assert asked == [("1.2.3.7.1.1", "waveform")]
    assert figure.title == "12-lead ECG (25 mm/s, 10 mm/mV)" and figure.width_mm == 180.0
    assert figure.png.startswith(b"\x89PNG")
