"""Second opinions on real SQLite and PostgreSQL databases: a blinded consultant never
gets the first diagnosis, a consultant at another site reads that one case and nothing
else there, answers and grades are checked, and the dashboard's concordance table
counts per pathologist pair and per organ."""

from __future__ import annotations

from datetime import timedelta

import pytest
import test_pathology_cases as shared
from sqlalchemy import select
from test_pathology_cases import NOW, add_case, add_user

from core.db import Database
from core.errors import Conflict, Forbidden, InvalidInput
from core.models import AuditRecord, PathologySlide
from pathology import cases, consults, dashboard, frozen

#: The shared database fixture (two sites, SQLite and PostgreSQL).
db = shared.db


def people(db: Database) -> dict[str, int]:
    return {"li": add_user(db, "li", sites=("county-a",)),
            "wang": add_user(db, "wang", sites=("county-a",)),
            "zhao": add_user(db, "zhao", sites=("county-b",)),  # the other site's expert
            "rad": add_user(db, "rad", roles=("radiologist",), all_sites=True),
            "off": add_user(db, "off", sites=("county-b",), enabled=False)}


def slide_ids(db: Database, case_id: int) -> list[int]:
    with db.session() as s:
        return list(s.scalars(select(PathologySlide.id)
                              .where(PathologySlide.case_id == case_id)
                              .order_by(PathologySlide.id)))


def test_blinded_consult_to_another_site_round_trip(db: Database) -> None:
    u = people(db)
    cid = add_case(db, "county-a", "A1", slides=(("H&E", "pass"), ("CK7", "pass")))
    other = add_case(db, "county-a", "A2")
    chosen = slide_ids(db, cid)[1:]
    with db.session() as s:
        row = cases.get_case(s, cid)
        consult = consults.request_consult(
            s, row, u["li"], u["zhao"], "  CK7-positive glands: adenocarcinoma?  ", chosen,
            True, "Adenocarcinoma, moderately differentiated", NOW)
        # Nobody held the case: the requester took it; it now waits on the consult.
        assert row.assigned_to == u["li"] and row.state == "consult_requested"
        assert consult.question == "CK7-positive glands: adenocarcinoma?"
        assert consult.slide_ids == chosen and consult.blinded
        as_consultant = consults.consult_out(s, consult, u["zhao"])
        as_requester = consults.consult_out(s, consult, u["li"])
        assert as_consultant["first_diagnosis"] == ""
        assert as_requester["first_diagnosis"] == "Adenocarcinoma, moderately differentiated"
        assert as_consultant["requester_name"] == "Dr li"
        assert as_consultant["consultant_name"] == "Dr zhao"
        assert as_consultant["state"] == "requested" and as_consultant["answered_at"] is None
        assert cases.summary(s, cid).consult_open
        with pytest.raises(Conflict, match="waits on a consult"):
            cases.mark_signed(s, row, "li", NOW)
        consult_id = consult.id
    with db.session() as s:
        # Zhao (county B) may read this case of county A, and no other one.
        assert consults.consultant_case_ids(s, u["zhao"]) == {cid}
        assert consults.consultant_case_ids(s, u["li"]) == set()
        rows = cases.worklist(s, visible_sites={"county-b"}, user_id=u["zhao"],
                              also_case_ids=consults.consultant_case_ids(s, u["zhao"]))
        assert [r.id for r in rows] == [cid] and other not in [r.id for r in rows]
        assert [c.id for c in consults.consults_for(s, u["zhao"])] == [consult_id]
        assert [c.id for c in consults.consults_for(s, u["li"])] == [consult_id]
        assert consults.consults_for(s, u["wang"]) == []
        consult = consults.get_consult(s, consult_id)
        with pytest.raises(Forbidden, match="another consultant"):
            consults.answer_consult(s, consult, u["wang"], "Agree.", NOW)
        with pytest.raises(InvalidInput, match="must not be empty"):
            consults.answer_consult(s, consult, u["zhao"], "   ", NOW)
        with pytest.raises(Conflict, match="no answer to grade"):
            consults.grade_consult(s, consult, u["li"], "concordant")
        consults.answer_consult(s, consult, u["zhao"], "Adenocarcinoma, CK7+/CK20-.",
                                NOW + timedelta(hours=2))
        assert cases.get_case(s, cid).state == "consult_answered"
        with pytest.raises(Conflict, match="answered already"):
            consults.answer_consult(s, consult, u["zhao"], "Again.", NOW)
        with pytest.raises(Forbidden, match="only the pathologist who asked"):
            consults.grade_consult(s, consult, u["zhao"], "concordant")
        with pytest.raises(InvalidInput, match="concordance must be one of"):
            consults.grade_consult(s, consult, u["li"], "mostly")
        consults.grade_consult(s, consult, u["li"], "minor")
        out = consults.consult_out(s, consult, u["zhao"])
    assert out["concordance"] == "minor" and out["state"] == "answered"
    assert out["answered_at"] == (NOW + timedelta(hours=2)).isoformat()
    assert out["first_diagnosis"] == ""  # still blinded after the answer
    with db.session() as s:
        assert consults.consultant_case_ids(s, u["zhao"]) == {cid}  # answered: still readable
        assert not cases.summary(s, cid).consult_open
        steps = frozen.timeline(s, cid)
        audits = list(s.scalars(select(AuditRecord.action)
                                .where(AuditRecord.object_type == "pathology_consult")))
        # The case can be signed after the consult.
        assert cases.mark_signed(s, cases.get_case(s, cid), "li", NOW).state == "signed"
    assert {"claimed", "consult_requested", "consult_answered"} <= set(steps)
    assert audits == ["pathology.consult_request", "pathology.consult_answer",
                      "pathology.consult_grade"]


def test_an_unblinded_consult_shows_the_first_diagnosis(db: Database) -> None:
    u = people(db)
    cid = add_case(db, "county-a", "A1")
    with db.session() as s:
        consult = consults.request_consult(s, cases.get_case(s, cid), u["li"], u["wang"],
                                           "Margin?", [], False, "Clear margins", NOW)
        assert consults.consult_out(s, consult, u["wang"])["first_diagnosis"] == "Clear margins"
        assert consult.slide_ids == []


def test_bad_consult_requests_are_refused(db: Database) -> None:
    u = people(db)
    cid = add_case(db, "county-a", "A1")
    foreign_slide = slide_ids(db, add_case(db, "county-b", "B1"))[0]
    signed = add_case(db, "county-a", "A2", state="signed")
    with db.session() as s:
        row = cases.get_case(s, cid)
        for consultant, question, slides, match in (
                (u["zhao"], " ", [], "needs a question"),
                (u["rad"], "?", [], "not an active pathologist"),
                (u["off"], "?", [], "not an active pathologist"),
                (9999, "?", [], "not an active pathologist"),
                (u["li"], "?", [], "cannot ask themselves"),
                (u["zhao"], "?", [foreign_slide], "are not slides of case")):
            with pytest.raises(InvalidInput, match=match):
                consults.request_consult(s, row, u["li"], consultant, question, slides,
                                         False, "", NOW)
        with pytest.raises(Conflict, match="amend it instead"):
            consults.request_consult(s, cases.get_case(s, signed), u["li"], u["zhao"], "?",
                                     [], False, "", NOW)
        cases.claim(s, cid, u["wang"], "wang", NOW)
        with pytest.raises(Conflict, match="held by another pathologist"):
            consults.request_consult(s, row, u["li"], u["zhao"], "?", [], False, "", NOW)
        assert row.state == "assigned"  # nothing changed


def test_consultants_list_every_active_pathologist_with_sites(db: Database) -> None:
    u = people(db)
    add_user(db, "chen", all_sites=True)
    with db.session() as s:
        listed = consults.consultants(s, exclude_user_id=u["li"])
    assert listed == [{"id": listed[0]["id"], "display_name": "Dr chen", "sites": ["*"]},
                      {"id": u["wang"], "display_name": "Dr wang", "sites": ["county-a"]},
                      {"id": u["zhao"], "display_name": "Dr zhao", "sites": ["county-b"]}]


def test_concordance_table_per_pair_and_organ(db: Database) -> None:
    u = people(db)
    plan = [  # (site, organ, requester, consultant, grade or None for unanswered/ungraded)
        ("county-a", "breast", "li", "zhao", "concordant"),
        ("county-a", "breast", "li", "zhao", "major"),
        ("county-a", "colon", "li", "zhao", "concordant"),
        ("county-a", "colon", "wang", "zhao", "minor"),
        ("county-b", "", "zhao", "li", "concordant"),
        ("county-a", "colon", "wang", "li", None),
    ]
    for i, (site, organ, req, con, grade) in enumerate(plan):
        cid = add_case(db, site, f"C{i}", organ=organ)
        with db.session() as s:
            c = consults.request_consult(s, cases.get_case(s, cid), u[req], u[con], "?", [],
                                         True, "dx", NOW)
            if grade is not None:
                consults.answer_consult(s, c, u[con], "answer", NOW)
                consults.grade_consult(s, c, u[req], grade)
    with db.session() as s:
        table = dashboard.concordance_table(s, None)
        only_b = dashboard.concordance_table(s, {"county-b"})

    def row(**kw: object) -> dict[str, object]:
        return {"concordant": 0, "minor": 0, "major": 0, **kw}
    assert table["pairs"] == [
        row(requester="Dr li", consultant="Dr zhao", concordant=2, major=1, n=3),
        row(requester="Dr wang", consultant="Dr zhao", minor=1, n=1),
        row(requester="Dr zhao", consultant="Dr li", concordant=1, n=1),
    ]
    assert table["organs"] == [
        row(organ="breast", concordant=1, major=1, n=2),
        row(organ="colon", concordant=1, minor=1, n=2),
        row(organ="unspecified", concordant=1, n=1),
    ]
    assert only_b == {"pairs": [row(requester="Dr zhao", consultant="Dr li", concordant=1,
                                    n=1)],
                      "organs": [row(organ="unspecified", concordant=1, n=1)]}
