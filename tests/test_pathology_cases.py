"""The pathology case worklist: order (frozen, STAT, due time, age), filters, claims
that two pathologists racing for one case cannot both win, and the case's state moves
— on real SQLite and PostgreSQL databases.

The helpers here (the ``db`` fixture, ``add_user``, ``add_case``) are shared by
tests/test_pathology_frozen.py and tests/test_pathology_consults.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from conftest import Center, database_with_sites
from core.db import Database
from core.errors import Conflict, Forbidden, InvalidInput, InvalidTransition
from core.models import (
    AIResult,
    AuditRecord,
    PathologyCase,
    PathologyConsult,
    PathologyEvent,
    PathologySlide,
    Report,
    Study,
    User,
    UserSite,
)
from pathology import cases
from reports import service
from reports.keys import ca_certificate_pem, issue_key
from reports.verify import verify_bytes

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SITES = ("county-a", "county-b")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str) -> Iterator[Database]:
    """A migrated database with two sites and no users."""
    yield from database_with_sites(request.param, tmp_path / "p.sqlite3", pg_admin, SITES)


def add_user(db: Database, username: str, *, roles: tuple[str, ...] = ("pathologist",),
             sites: tuple[str, ...] = (), all_sites: bool = False,
             enabled: bool = True) -> int:
    with db.session() as s:
        user = User(username=username, display_name=f"Dr {username}", password_hash="x",
                    totp_secret="x", roles=list(roles), all_sites=all_sites, enabled=enabled)
        s.add(user)
        s.flush()
        for site in sites:
            s.add(UserSite(user_id=user.id, site_id=site))
        return int(user.id)


def add_case(db: Database, site: str, accession: str, *, urgency: str = "routine",
             state: str = "qc_passed", due_in_min: float | None = 60,
             received_ago_min: float = 30, organ: str = "colon",
             slides: tuple[tuple[str, str], ...] = (("H&E", "pass"),)) -> int:
    """A case with one study and ``slides`` as (stain, qc grade)."""
    with db.session() as s:
        study = Study(site_id=site, study_uid=f"1.2.826.0.1.{abs(hash((site, accession)))}",
                      patient_id="P1", patient_name="DOE^JANE", modalities=["SM"],
                      state="complete")
        s.add(study)
        s.flush()
        row = PathologyCase(
            site_id=site, accession_number=accession, patient_id="P1",
            patient_name="DOE^JANE", organ=organ, urgency=urgency, state=state,
            primary_study_id=study.id,
            due_at=None if due_in_min is None else NOW + timedelta(minutes=due_in_min),
            received_at=NOW - timedelta(minutes=received_ago_min))
        s.add(row)
        s.flush()
        for i, (stain, grade) in enumerate(slides):
            s.add(PathologySlide(case_id=row.id, study_id=study.id,
                                 series_uid=f"{study.study_uid}.{i + 1}", part="A",
                                 block=f"A{i + 1}", stain=stain, specimen_id=f"S-{accession}",
                                 qc_grade=grade,
                                 qc_reasons=["pen marks cover 3.1% of the slide"]
                                 if grade == "fail" else []))
        return int(row.id)


def ids(rows: list[cases.CaseSummary]) -> list[int]:
    return [r.id for r in rows]


def test_order_is_frozen_then_stat_then_due_then_age(db: Database) -> None:
    late = add_case(db, "county-a", "A1", due_in_min=-10)
    soon = add_case(db, "county-a", "A2", due_in_min=5)
    older_same_due = add_case(db, "county-b", "B0", due_in_min=5, received_ago_min=90)
    undated = add_case(db, "county-b", "B1", due_in_min=None)
    stat = add_case(db, "county-b", "B2", urgency="stat", due_in_min=50)
    frozen = add_case(db, "county-a", "A3", urgency="frozen", due_in_min=300)
    add_case(db, "county-a", "A4", state="signed")  # not open
    with db.session() as s:
        rows = cases.worklist(s, visible_sites=None, user_id=None)
        assert ids(rows) == [frozen, stat, late, older_same_due, soon, undated]
        assert len(cases.worklist(s, visible_sites=None, user_id=None, status="all")) == 7
        assert ids(cases.worklist(s, visible_sites=None, user_id=None, status="signed")) \
            != []
        with pytest.raises(InvalidInput, match="unknown case status"):
            cases.worklist(s, visible_sites=None, user_id=None, status="bogus")


def test_filters_sites_and_summary_fields(db: Database) -> None:
    li = add_user(db, "li", sites=("county-a",))
    a = add_case(db, "county-a", "A1", organ="breast",
                 slides=(("H&E", "pass"), ("HER2", "fail"), ("HER2", "pass")))
    b = add_case(db, "county-b", "B1", organ="colon", slides=(("H&E", "pending"),))
    c = add_case(db, "county-a", "A2", organ="colon", slides=(("H&E", "pass"),))
    with db.session() as s:
        assert ids(cases.worklist(s, visible_sites={"county-a"}, user_id=li)) == [a, c]
        assert ids(cases.worklist(s, visible_sites=None, user_id=li, site="county-b")) == [b]
        assert ids(cases.worklist(s, visible_sites=None, user_id=li, stain="HER2")) == [a]
        assert ids(cases.worklist(s, visible_sites=None, user_id=li, organ="colon")) == [b, c]
        # A consultant from another site sees the consult's case, nothing else there.
        assert ids(cases.worklist(s, visible_sites={"county-a"}, user_id=li,
                                  also_case_ids={b})) == [a, b, c]
        cases.claim(s, c, li, "li", NOW)
        s.add(PathologyConsult(case_id=a, requested_by=li, consultant_id=li, question="?"))
    with db.session() as s:
        assert ids(cases.worklist(s, visible_sites=None, user_id=li, mine=True)) == [c]
        with pytest.raises(InvalidInput, match="'mine'"):
            cases.worklist(s, visible_sites=None, user_id=None, mine=True)
        rows = {r.id: r for r in cases.worklist(s, visible_sites=None, user_id=li)}
    assert rows[a].stains == ["H&E", "HER2"] and rows[a].slide_count == 3
    assert rows[a].qc == "fail" and rows[a].qc_failed_slides == 1 and rows[a].consult_open
    assert rows[b].qc == "pending" and not rows[b].consult_open
    assert rows[c].qc == "pass" and rows[c].state == "assigned"
    assert rows[c].assigned_to == li and rows[c].assigned_name == "Dr li"
    assert rows[a].assigned_name is None


def test_technician_sees_qc_failures_first(db: Database) -> None:
    stat = add_case(db, "county-a", "A1", urgency="stat")
    failed = add_case(db, "county-a", "A2", state="qc_failed", due_in_min=600,
                      slides=(("H&E", "fail"),))
    with db.session() as s:
        assert ids(cases.worklist(s, visible_sites={"county-a"}, user_id=None)) \
            == [stat, failed]
        assert ids(cases.worklist(s, visible_sites={"county-a"}, user_id=None,
                                  technician=True)) == [failed, stat]


def test_claim_is_exclusive_and_release_is_the_holders(db: Database) -> None:
    li, wang = add_user(db, "li"), add_user(db, "wang")
    cid = add_case(db, "county-a", "A1")
    with db.session() as s:
        row = cases.claim(s, cid, li, "li", NOW)
        assert row.assigned_to == li and row.state == "assigned" and row.assigned_at == NOW
    with db.session() as s:  # again: still theirs, the claim time kept
        assert cases.claim(s, cid, li, "li", NOW + timedelta(minutes=5)).assigned_at == NOW
    with db.session() as s, pytest.raises(Conflict, match=f"case {cid} is being read by Dr li"):
        cases.claim(s, cid, wang, "wang", NOW)
    with db.session() as s, pytest.raises(Forbidden, match="only they or an admin"):
        cases.release(s, cid, wang, "wang", NOW)
    with db.session() as s:
        row = cases.release(s, cid, li, "li", NOW)
        assert row.assigned_to is None and row.state == "qc_passed"
    with db.session() as s:
        assert cases.claim(s, cid, wang, "wang", NOW).assigned_to == wang
        assert cases.release(s, cid, li, "admin", NOW, force=True).assigned_to is None
        actions = list(s.scalars(select(AuditRecord.action)
                                 .where(AuditRecord.object_type == "pathology_case")))
        claims = list(s.scalars(select(PathologyEvent).where(PathologyEvent.step == "claimed")))
    assert actions.count("pathology.case_claim") == 3
    assert actions.count("pathology.case_release") == 2
    assert [e.detail["user_id"] for e in claims] == [li, li, wang]


def test_two_pathologists_racing_for_one_case_exactly_one_wins(db: Database) -> None:
    """Each claimer in its own thread and session, released at once by a barrier."""
    users = [add_user(db, f"dr{i}") for i in range(4)]
    for round_ in range(3):
        cid = add_case(db, "county-a", f"R{round_}")
        barrier = threading.Barrier(len(users))
        won: list[int] = []
        lost: list[str] = []
        errors: list[BaseException] = []

        def claimer(user_id: int, case_id: int = cid, barrier: threading.Barrier = barrier,
                    won: list[int] = won, lost: list[str] = lost,
                    errors: list[BaseException] = errors) -> None:
            try:
                barrier.wait(timeout=10)
                with db.session() as s:
                    cases.claim(s, case_id, user_id, f"u{user_id}", NOW)
                won.append(user_id)
            except Conflict as e:
                lost.append(str(e))
            except BaseException as e:  # reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=claimer, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert len(won) == 1 and len(lost) == len(users) - 1, (won, lost)
        assert all("is being read by Dr dr" in m for m in lost)
        with db.session() as s:
            assert s.get(PathologyCase, cid).assigned_to == won[0]  # type: ignore[union-attr]


def test_state_moves_and_events(db: Database) -> None:
    li, wang = add_user(db, "li"), add_user(db, "wang")
    cid = add_case(db, "county-a", "A1")
    with db.session() as s:
        row = cases.get_case(s, cid)
        with pytest.raises(Conflict, match="must be claimed before it is signed"):
            cases.mark_signed(s, row, "li", NOW)
        with pytest.raises(Conflict, match="must be claimed before review"):
            cases.start_review(s, row, li, NOW)
        cases.claim(s, cid, li, "li", NOW)
        with pytest.raises(Conflict, match="held by Dr li"):
            cases.start_review(s, row, wang, NOW)
        assert cases.start_review(s, row, li, NOW).state == "in_review"
        assert cases.start_review(s, row, li, NOW).state == "in_review"  # idempotent
        with pytest.raises(InvalidTransition, match="in_review -> amended"):
            cases.mark_amended(s, row, "li", NOW)
        assert cases.mark_signed(s, row, "li", NOW + timedelta(minutes=3)).state == "signed"
    with db.session() as s, pytest.raises(Conflict, match="can no longer be claimed"):
        cases.claim(s, cid, wang, "wang", NOW)
    with db.session() as s:
        row = cases.get_case(s, cid)
        cases.mark_amended(s, row, "li", NOW + timedelta(hours=1))
        cases.mark_amended(s, row, "li", NOW + timedelta(hours=2))
        assert row.state == "amended"
        first = cases.record_event(s, cid, "first_tile", "li", NOW)
        again = cases.record_event(s, cid, "first_tile", "wang", NOW + timedelta(minutes=1))
        assert first is not None and again is None
        steps = [(e.step, e.at) for e in s.scalars(
            select(PathologyEvent).where(PathologyEvent.case_id == cid)
            .order_by(PathologyEvent.id))]
    assert steps == [("claimed", NOW), ("signed", NOW + timedelta(minutes=3)),
                     ("amended", NOW + timedelta(hours=1)),
                     ("amended", NOW + timedelta(hours=2)), ("first_tile", NOW)]


# ----------------------------------------------------------------- the signed report
PASSPHRASE = "correct horse battery staple 7"


def test_synoptic_report_is_prefilled_signed_and_amended(env_center: Center) -> None:
    """The case's primary study gets the synoptic template, prefilled from its slides,
    QC notes and an UNVERIFIED heat map, and is signed (and amended) by the existing
    report service, with the case following."""
    c = env_center
    c.start_orthanc()
    c.add_site()
    # The evidence object the signed SR and PDF copy the patient and study from.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName, ds.AccessionNumber = "SM", "P7", "DOE^JO", "S1"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with c.orthanc() as client:
        client.upload_instance(buf.getvalue())
    with c.db.session() as s:
        study = Study(site_id="county-a", study_uid=str(ds.StudyInstanceUID), patient_id="P7",
                      patient_name="DOE^JO", modalities=["SM"], state="complete")
        s.add(study)
        s.flush()
        row = PathologyCase(site_id="county-a", accession_number="S1", patient_id="P7",
                            organ="colon", urgency="frozen", state="qc_failed",
                            primary_study_id=study.id, received_at=NOW)
        s.add(row)
        s.flush()
        for i, (block, stain, grade) in enumerate((("A1", "H&E", "pass"),
                                                   ("A2", "CK20", "fail"))):
            s.add(PathologySlide(
                case_id=row.id, study_id=study.id, series_uid=f"{ds.SeriesInstanceUID}.{i}",
                part="A", block=block, stain=stain, specimen_id="S1-A", qc_grade=grade,
                qc_reasons=["42% of tissue tiles are blurred"] if grade == "fail" else []))
        s.add(AIResult(study_id=study.id, series_uid=f"{ds.SeriesInstanceUID}.0",
                       model_name="tile-demo", model_version="0.1.0", device="cpu",
                       duration_ms=5.0, sr_sop_uid=generate_uid(),
                       heatmap={"rows": 2, "cols": 2, "cell_px": 512,
                                "labels": ["tumour"], "values": [[0.1, 0.9], [0.6, 0.2]]}))
        li = User(username="dr.li", display_name="Dr Li", password_hash="x", totp_secret="x",
                  roles=["pathologist"], all_sites=True)
        s.add(li)
        s.flush()
        issue_key(s, c.settings, reader_id="dr.li", display_name="Dr Li",
                  passphrase=PASSPHRASE, algorithm="ed25519", actor="test")
        case_id, study_id, li_id = row.id, study.id, li.id
    with c.db.session() as s:
        cases.claim(s, case_id, li_id, "dr.li", NOW)
        report = service.create_report(s, study_id, actor="dr.li")
        draft = service.current_version(s, report)
        assert report.template_id == "pathology-synoptic"
        assert list(draft.fields) == ["specimen", "procedure", "diagnosis", "margins",
                                      "grade", "comments"]
        assert draft.fields["specimen"] == ("Organ/site: colon\n"
                                            "Part A, block A1, H&E, specimen S1-A\n"
                                            "Part A, block A2, CK20, specimen S1-A")
        comments = draft.fields["comments"]
        assert "QC (A/A2/CK20): 42% of tissue tiles are blurred" in comments
        assert ("AI heat map tile-demo 0.1.0 (A/A1/H&E), UNVERIFIED — demonstration weights: "
                "tumour: max 0.90, 50.0% of cells >= 0.5") in comments
        report_id = report.id
    with c.db.session() as s, pytest.raises(InvalidInput, match="procedure, diagnosis"):
        service.sign(s, c.settings, report_id, reader_id="dr.li", passphrase=PASSPHRASE)
    with c.db.session() as s:
        service.update_draft(s, report_id, {"procedure": "Frozen section, colon",
                                            "diagnosis": "Adenocarcinoma",
                                            "margins": "Clear (5 mm)", "grade": "G2"},
                             "dr.li")
        signed = service.sign(s, c.settings, report_id, reader_id="dr.li",
                              passphrase=PASSPHRASE)
        assert signed.state == "final" and signed.signed_by == "dr.li"
        assert "Adenocarcinoma" in (signed.canonical or "")
        sr_uid = signed.sr_sop_uid
        cases.mark_signed(s, cases.get_case(s, case_id), "dr.li", NOW + timedelta(minutes=9))
    # The signed SR in Orthanc verifies against the center's CA (the existing checker).
    with c.orthanc() as client:
        found = client.find_instance(str(sr_uid))
        assert found is not None
        checked = verify_bytes(client.instance_file(found), ca_certificate_pem(c.settings))
    assert checked.kind == "sr"
    with c.db.session() as s:
        service.add_addendum(s, report_id, {"comments": "Margin re-measured: 4 mm."}, "dr.li")
        amended = service.sign(s, c.settings, report_id, reader_id="dr.li",
                               passphrase=PASSPHRASE)
        assert amended.number == 2 and amended.state == "final"
        row = cases.mark_amended(s, cases.get_case(s, case_id), "dr.li",
                                 NOW + timedelta(hours=1))
        assert row.state == "amended"
        assert s.get(Report, report_id).state == "amended"  # type: ignore[union-attr]
        steps = [e.step for e in s.scalars(select(PathologyEvent).where(
            PathologyEvent.case_id == case_id).order_by(PathologyEvent.id))]
    assert steps == ["claimed", "signed", "amended"]
