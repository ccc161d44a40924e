"""The worklist's order, filters, paging, claims and site visibility; priors;
turnaround figures — on real SQLite and PostgreSQL databases.  Over HTTP: opening a
study stores no report (it stays unread), and a signed report's inputs answer 409."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import Center, _create_pg_database, _drop_pg_database
from core.db import Database, get_database
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import AIFinding, AIResult, ECGAnalysis, Report, ReportVersion, Study, User
from core.settings import get_settings
from core.sites import SiteSpec, add_site
from viewer import dashboard, studies, worklist
from viewer.accounts import add_user
from viewer.app import create_app
from viewer.auth import UserContext

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str) -> Iterator[Database]:
    if request.param == "sqlite":
        database = get_database(f"sqlite:///{tmp_path / 'w.sqlite3'}")
        name = None
    else:
        name, url = _create_pg_database(pg_admin)
        database = get_database(url)
    with database.session() as s:
        for site in ("county-a", "county-b"):
            add_site(s, SiteSpec(id=site, name=f"{site} hospital", ae_title=site.upper(),
                                 host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                     actor="test")
        for i, name_ in enumerate(("li", "wang")):
            s.add(User(id=i + 1, username=f"dr.{name_}", display_name=f"Dr {name_}",
                       password_hash="x", totp_secret="x", roles=["radiologist"]))
    yield database
    database.dispose()
    get_database.cache_clear()
    if name is not None:
        _drop_pg_database(pg_admin, name)


def ctx(user_id: int | None, sites: set[str] | None, roles: set[str] | None = None,
        ) -> UserContext:
    return UserContext(user_id=user_id, username=f"user{user_id}", display_name="x",
                       roles=frozenset(roles or {"radiologist"}), all_sites=sites is None,
                       site_ids=frozenset(sites or ()), csrf_token=None)


LI, WANG = ctx(1, None), ctx(2, None)
SITE_A_USER = ctx(3, {"county-a"}, {"site_user"})


def add_study(db: Database, site: str, uid: str, *, priority: int = 5, critical: bool = False,
              due_in_min: float = 60, modality: str = "CT", patient: str = "P1",
              name: str = "DOE^JANE", birth: str = "19600101", state: str = "complete",
              date: str = "20261120") -> int:
    with db.session() as s:
        st = Study(site_id=site, study_uid=uid, patient_id=patient, patient_name=name,
                   patient_birth_date=birth, description=f"{modality} chest", study_date=date,
                   modalities=[modality], state=state, priority=priority, ai_critical=critical,
                   completed_at=NOW - timedelta(minutes=30),
                   first_received_at=NOW - timedelta(minutes=40),
                   due_at=NOW + timedelta(minutes=due_in_min))
        s.add(st)
        s.flush()
        return int(st.id)


def test_order_is_stat_then_ai_critical_then_time_left(db: Database) -> None:
    late = add_study(db, "county-a", "1.1", due_in_min=-10)
    soon = add_study(db, "county-a", "1.2", due_in_min=5)
    critical = add_study(db, "county-b", "1.3", critical=True, due_in_min=300)
    stat = add_study(db, "county-b", "1.4", priority=9, due_in_min=50)
    add_study(db, "county-a", "1.5", state="received")  # not complete: not on the worklist
    with db.session() as s:
        total, items = worklist.query_worklist(s, LI, now=NOW)
    assert total == 4
    assert [i.study_id for i in items] == [stat, critical, late, soon]
    assert items[2].seconds_left == -600 and items[3].seconds_left == 300
    assert items[0].status == "unread" and items[0].patient_name == "DOE^JANE"


def test_filters_and_paging(db: Database) -> None:
    ids = [add_study(db, "county-a", f"2.{i}", due_in_min=i, modality="CT" if i % 2 else "DX")
           for i in range(1, 8)]
    add_study(db, "county-b", "2.99", modality="CT")
    with db.session() as s:
        total, page1 = worklist.query_worklist(s, LI, site="county-a", page_size=3, now=NOW)
        _, page3 = worklist.query_worklist(s, LI, site="county-a", page=3, page_size=3,
                                           now=NOW)
        assert total == 7 and [i.study_id for i in page1] == ids[:3]
        assert [i.study_id for i in page3] == ids[6:]
        total_dx, dx = worklist.query_worklist(s, LI, modality="dx", now=NOW)
        assert total_dx == 3 and all(i.modalities == ["DX"] for i in dx)
        with pytest.raises(InvalidInput, match="unknown status"):
            worklist.query_worklist(s, LI, status="bogus")
        with pytest.raises(InvalidInput, match="page_size"):
            worklist.query_worklist(s, LI, page_size=1000)


def test_claim_is_exclusive_and_release_is_the_holders(db: Database) -> None:
    sid = add_study(db, "county-a", "3.1")
    with db.session() as s:
        item = worklist.claim(s, LI, sid)
        assert item.status == "claimed" and item.claimed_by == "dr.li"
    with db.session() as s:
        assert worklist.claim(s, LI, sid).claimed_by == "dr.li"  # again: still theirs
    with db.session() as s, pytest.raises(Conflict, match="being read by Dr li"):
        worklist.claim(s, WANG, sid)
    with db.session() as s, pytest.raises(Forbidden, match="only they or an admin"):
        worklist.release(s, WANG, sid)
    with db.session() as s:
        _, mine = worklist.query_worklist(s, LI, mine=True, now=NOW)
        assert [i.study_id for i in mine] == [sid]
        _, claimed = worklist.query_worklist(s, WANG, status="claimed", now=NOW)
        assert [i.study_id for i in claimed] == [sid]
    with db.session() as s:
        assert worklist.release(s, LI, sid).status == "unread"
    with db.session() as s:
        assert worklist.claim(s, WANG, sid).claimed_by == "dr.wang"
    with db.session() as s, pytest.raises(Forbidden, match="signed-in reader"):
        worklist.claim(s, SITE_A_USER, sid)


def test_status_follows_the_report(db: Database) -> None:
    sid = add_study(db, "county-a", "4.1")
    with db.session() as s:
        report = Report(subject_type="study", subject_id=str(sid), study_id=sid,
                        site_id="county-a", template_id="generic", template_version="1.0.0",
                        state="draft")
        s.add(report)
        s.flush()
        s.add(ReportVersion(report_id=report.id, number=1, state="draft", fields={}))
    with db.session() as s:
        assert worklist.query_worklist(s, LI, now=NOW)[1][0].status == "reported"
        s.get(Report, report.id).state = "final"  # type: ignore[union-attr]
    with db.session() as s:
        assert worklist.query_worklist(s, LI, now=NOW)[0] == 0  # signed: off the open list
        _, signed = worklist.query_worklist(s, LI, status="signed", now=NOW)
        assert [i.study_id for i in signed] == [sid]


def test_another_sites_study_is_not_found(db: Database) -> None:
    a = add_study(db, "county-a", "5.1")
    b = add_study(db, "county-b", "5.2")
    with db.session() as s:
        total, items = worklist.query_worklist(s, SITE_A_USER, now=NOW)
        assert total == 1 and items[0].study_id == a
        with pytest.raises(NotFound):
            worklist.work_item(s, SITE_A_USER, b)
        with pytest.raises(NotFound):
            worklist.get_visible_study(s, SITE_A_USER, b)
        assert worklist.work_item(s, SITE_A_USER, a).study_id == a


def test_priors_by_id_and_by_name_and_birth_date(db: Database) -> None:
    current = add_study(db, "county-a", "6.1", patient="P1", date="20261120")
    by_id = add_study(db, "county-b", "6.2", patient="P1", date="20250101")
    by_name = add_study(db, "county-b", "6.3", patient="OTHER-ID", date="20240101")
    add_study(db, "county-b", "6.4", patient="P2", name="ROE^RICHARD", date="20240101")
    with db.session() as s:
        study = s.get(Study, current)
        assert study is not None
        found = studies.priors(s, LI, study)
        assert [(p["study_id"], p["match"]) for p in found] == [
            (by_id, "id"), (by_name, "name+birthdate")]
        assert studies.priors(s, SITE_A_USER, study) == []  # county-b is not theirs


def test_ai_flags_and_turnaround(db: Database) -> None:
    sid = add_study(db, "county-a", "7.1", critical=True)
    with db.session() as s:
        r = AIResult(study_id=sid, series_uid="7.1.1", model_name="cxr-triage",
                     model_version="1.0.0", device="cpu", duration_ms=5.0, sr_sop_uid="7.1.9",
                     created_at=NOW - timedelta(minutes=20))
        s.add(r)
        s.flush()
        s.add(AIFinding(result_id=r.id, study_id=sid, label="pneumothorax", probability=0.9,
                        threshold=0.5, positive=True, critical=True))
        s.add(AIFinding(result_id=r.id, study_id=sid, label="lung_opacity", probability=0.8,
                        threshold=0.5, positive=True, critical=False, review="rejected"))
        st = s.get(Study, sid)
        assert st is not None
        st.first_received_at = datetime.now(UTC) - timedelta(minutes=40)
        st.completed_at = datetime.now(UTC) - timedelta(minutes=30)
        st.first_opened_at = datetime.now(UTC) - timedelta(minutes=10)
    with db.session() as s:
        item = worklist.query_worklist(s, LI, now=NOW)[1][0]
        assert item.ai_flags == ["pneumothorax"] and item.ai_critical
        data = dashboard.turnaround(s, LI, days=7)
    rows = {r["interval"]: r for r in data["rows"]}
    assert rows["received->complete"]["p50_min"] == pytest.approx(10, abs=0.1)
    assert rows["complete->ai_done"]["count"] == 1
    assert "opened->signed" not in rows  # not signed yet: left out, not zero
    assert dashboard.chart_png(data).startswith(b"\x89PNG")


def test_items_carry_study_date_accession_age_sex_body_part_and_priority_label(
        db: Database) -> None:
    stat = add_study(db, "county-a", "8.1", priority=9, date="20261120")
    critical = add_study(db, "county-a", "8.2", priority=8)
    urgent = add_study(db, "county-a", "8.3", priority=7)
    routine = add_study(db, "county-b", "8.4", priority=0, birth="20260501")
    with db.session() as s:
        st = s.get(Study, stat)
        assert st is not None
        st.accession_number, st.patient_sex, st.body_part = "ACC-1", "F", "CHEST"
        other = s.get(Study, urgent)
        assert other is not None
        other.patient_age = "045Y"  # as sent: wins over the birth date
    with db.session() as s:
        _, items = worklist.query_worklist(s, LI, now=NOW)
    by_id = {i.study_id: i for i in items}
    assert [by_id[i].priority_label for i in (stat, critical, urgent, routine)] == [
        "STAT", "AI CRITICAL", "URGENT", "ROUTINE"]
    first = by_id[stat].as_dict()
    assert first["study_date"] == "20261120" and first["accession_number"] == "ACC-1"
    assert first["patient_sex"] == "F" and first["body_part"] == "CHEST"
    assert first["patient_age"] == "66y"  # born 1960-01-01, studied 2026-11-20
    assert by_id[urgent].patient_age == "45y"
    assert by_id[routine].patient_age == "6mo" and by_id[routine].patient_sex == ""
    assert worklist.priority_label(None) == "ROUTINE"


def test_site_filter_lists_only_the_users_sites(db: Database) -> None:
    with db.session() as s:
        assert [x["id"] for x in worklist.visible_sites(s, LI)] == ["county-a", "county-b"]
        assert worklist.visible_sites(s, SITE_A_USER) == [
            {"id": "county-a", "name": "county-a hospital", "enabled": True}]
        assert worklist.visible_sites(s, ctx(4, set())) == []


def test_turnaround_chart_of_one_row_is_readable() -> None:
    import struct

    row = {"site_id": "county-a", "modality": "CT", "interval": "complete->signed",
           "count": 1, "p50_min": 10.0, "p90_min": 20.0, "max_min": 30.0}
    heights = []
    for n in (0, 1, 12):
        png = dashboard.chart_png({"days": 30, "rows": [row] * n})
        width, height = struct.unpack(">II", png[16:24])
        heights.append(height)
        assert width >= 600
    assert heights[0] >= 300 and heights[1] >= 300  # was 85 px high with one row
    assert heights[2] > heights[1]


# Over HTTP: the report a reader opens, and what a signed report freezes ------------------
PASSWORD = "a long enough password 1"


@dataclass
class Http:
    center: Center
    radiologist: TestClient
    cardiologist: TestClient


@pytest.fixture
def http(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[Http]:
    """The web app on the center's database (no Orthanc: the routes here need none) and
    a signed-in radiologist and cardiologist."""
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    center.add_site()
    clients = []
    for username, role in (("dr.rad", "radiologist"), ("dr.heart", "cardiologist")):
        with center.db.session() as s:
            _, uri = add_user(s, get_settings(), username=username, display_name=username,
                              password=PASSWORD, roles=[role], all_sites=True, actor="test")
        api = TestClient(create_app())
        r = api.post("/api/auth/login", json={"username": username, "password": PASSWORD,
                                              "totp": pyotp.parse_uri(uri).now()})
        assert r.status_code == 200, r.text
        api.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        clients.append(api)
    yield Http(center, *clients)
    get_settings.cache_clear()


def _complete_study(c: Center, uid: str, modality: str) -> int:
    now = datetime.now(UTC)
    with c.db.session() as s:
        st = Study(site_id="county-a", study_uid=uid, patient_id="P9", patient_name="DOE^J",
                   description=f"{modality} study", modalities=[modality], state="complete",
                   completed_at=now, first_received_at=now, due_at=now + timedelta(hours=4))
        s.add(st)
        s.flush()
        return int(st.id)


def _status_of(api: TestClient, study_id: int, status: str = "all") -> str | None:
    items = api.get("/api/worklist", params={"status": status}).json()["items"]
    return next((i["status"] for i in items if i["study_id"] == study_id), None)


def test_opening_a_study_leaves_it_unread_until_the_reader_saves(http: Http) -> None:
    c, api = http.center, http.radiologist
    sid = _complete_study(c, "8.1", "CT")
    # What the report panel asks when the study opens: the draft it would start from.
    r = api.get(f"/api/studies/{sid}/report")
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["id"] is None and preview["state"] == "draft"
    assert preview["versions"][0]["number"] == 1 and "findings" in preview["versions"][0]["fields"]
    assert api.get(f"/api/studies/{sid}/report").json()["id"] is None  # still nothing stored
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 0
    # Nobody has read it: it stays in everyone's "unread" filter.
    assert _status_of(api, sid, "unread") == "unread"
    assert _status_of(http.cardiologist, sid, "unread") == "unread"

    # The first save creates the report, with the reader's text over the prefill.
    r = api.post(f"/api/studies/{sid}/report",
                 json={"fields": {"findings": "Clear lungs."}, "state": "draft"})
    assert r.status_code == 201, r.text
    report = r.json()
    assert isinstance(report["id"], int) and report["versions"][0]["fields"]["findings"] == \
        "Clear lungs."
    assert _status_of(api, sid) == "reported" and _status_of(api, sid, "unread") is None
    # A retried first save changes the same report; the GET now answers it.
    again = api.post(f"/api/studies/{sid}/report",
                     json={"fields": {"findings": "Clear lungs. No effusion."},
                           "state": "preliminary"}).json()
    assert again["id"] == report["id"] and again["state"] == "preliminary"
    assert again["versions"][0]["fields"]["findings"] == "Clear lungs. No effusion."
    assert api.get(f"/api/studies/{sid}/report").json()["id"] == report["id"]
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 1


def _ecg_with_ai_finding(c: Center) -> tuple[int, int, int]:
    sid = _complete_study(c, "8.2", "ECG")
    with c.db.session() as s:
        measurements = {"heart_rate_bpm": 61.0, "pr_ms": 160.0}
        statements = [{"code": "sinus_rhythm", "text": "Sinus rhythm", "critical": False}]
        row = ECGAnalysis(study_id=sid, sop_instance_uid="8.2.1.1", series_uid="8.2.1",
                          analysis_version="1", result={"measurements": measurements},
                          measurements=measurements, statements=statements, quality="good",
                          confidence=0.9)
        result = AIResult(study_id=sid, series_uid="8.2.1", model_name="ecg-rhythm",
                          model_version="1.0.0", device="cpu", duration_ms=3.0,
                          sr_sop_uid="8.2.9.1")
        s.add_all([row, result])
        s.flush()
        finding = AIFinding(result_id=result.id, study_id=sid, label="sinus_rhythm",
                            probability=0.97, threshold=0.5, positive=True, critical=False)
        s.add(finding)
        s.flush()
        return sid, int(row.id), int(finding.id)


def test_a_signed_reports_inputs_answer_409_until_an_addendum(http: Http) -> None:
    c, api = http.center, http.cardiologist
    sid, ecg_id, finding_id = _ecg_with_ai_finding(c)
    # The worklist opens a study's ECG on the ECG screen through the queue.
    found = api.get("/api/ecg/queue", params={"status": "all", "study_id": sid}).json()
    assert [i["id"] for i in found["items"]] == [ecg_id]
    detail = api.get(f"/api/ecg/{ecg_id}", params={"tracing": "false"}).json()
    assert detail["locked"] is None
    assert [(f["id"], f["model"]) for f in detail["ai_findings"]] == [(finding_id, "ecg-rhythm")]

    report = api.post(f"/api/studies/{sid}/report", json={"fields": {}}).json()
    with c.db.session() as s:  # as signing leaves it (signing itself: test_ecg_flow.py)
        version = s.scalar(select(ReportVersion).where(ReportVersion.report_id == report["id"]))
        assert version is not None
        version.state, version.signed_by, version.signed_at = "final", "dr.heart", datetime.now(UTC)
        rep = s.get(Report, report["id"])
        assert rep is not None
        rep.state = "final"

    stemi = {"measurements": {"heart_rate_bpm": 130.0},
             "statements": [{"code": "stemi", "text": "Anterior STEMI", "critical": True}]}
    r = api.put(f"/api/ecg/{ecg_id}", json=stemi)
    assert r.status_code == 409, r.text
    assert "signed" in r.json()["detail"] and "addendum" in r.json()["detail"]
    r = api.post(f"/api/ai-findings/{finding_id}/review", json={"decision": "rejected"})
    assert r.status_code == 409, r.text
    assert "signed" in r.json()["detail"] and "addendum" in r.json()["detail"]
    with c.db.session() as s:
        row = s.get(ECGAnalysis, ecg_id)
        assert row is not None and row.measurements["heart_rate_bpm"] == 61.0
        assert not row.critical and row.edited_by is None
        f = s.get(AIFinding, finding_id)
        assert f is not None and f.review == "unreviewed"
    locked = api.get(f"/api/ecg/{ecg_id}", params={"tracing": "false"}).json()["locked"]
    assert locked and "addendum" in locked
    queue = api.get("/api/ecg/queue", params={"status": "all"}).json()["items"]
    assert [(i["heart_rate_bpm"], i["critical"]) for i in queue] == [(61.0, False)]

    # An addendum reopens them: the change goes into it.
    assert api.post(f"/api/reports/{report['id']}/addenda", json={"fields": {}}).status_code \
        == 201
    r = api.put(f"/api/ecg/{ecg_id}", json=stemi)
    assert r.status_code == 200, r.text
    assert api.post(f"/api/ai-findings/{finding_id}/review",
                    json={"decision": "rejected"}).status_code == 200
    assert api.get(f"/api/ecg/{ecg_id}", params={"tracing": "false"}).json()["locked"] is None
