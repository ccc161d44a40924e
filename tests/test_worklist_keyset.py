"""Keyset (cursor) paging of the reading worklist, on SQLite and PostgreSQL: every study
exactly once and in order across pages (ties on the due time included), a county
account's cursor never reaches another site's study, a malformed or altered cursor is a
400; ``studies.report_signed`` follows the study's report; and a small run of the
scale benchmark (``benchmarks.scale_worklist``) gives well-formed results."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from conftest import (
    REPO,
    Center,
    _create_pg_database,
    _drop_pg_database,
    database_with_sites,
    signed_in_client,
)
from core.db import Database, get_database
from core.models import Report, Study
from core.settings import get_settings
from core.sites import SiteSpec, add_site
from viewer import worklist
from viewer.auth import UserContext

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SECRET = b"test cursor key"
SITES = ("county-a", "county-b")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str) -> Iterator[Database]:
    yield from database_with_sites(request.param, tmp_path / "k.sqlite3", pg_admin, SITES)


def ctx(sites: set[str] | None) -> UserContext:
    return UserContext(user_id=None, username="reader", display_name="reader",
                       roles=frozenset({"radiologist"}), all_sites=sites is None,
                       site_ids=frozenset(sites or ()), csrf_token=None)


CENTER, COUNTY_A = ctx(None), ctx({"county-a"})


def fill(db: Database, n: int) -> list[dict[str, Any]]:
    """``n`` complete studies over both sites; many share a due time (ties), some are
    STAT or AI-critical, a few are still arriving (never listed).  Returns the rows with
    their ids."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        due = NOW + timedelta(minutes=10 * (i % 4))  # four due times for all of them
        rows.append({
            "site_id": SITES[i % 3 % 2], "study_uid": f"9.{i}", "patient_id": f"P{i}",
            "patient_name": f"DOE^{i}", "modalities": ["CT"],
            "state": "received" if i % 17 == 5 else "reopened" if i % 11 == 3 else "complete",
            "priority": 9 if i % 7 == 0 else 7 if i % 5 == 0 else 0,
            "ai_critical": i % 6 == 1, "generation": 1,
            "first_received_at": NOW - timedelta(hours=2),
            "last_received_at": NOW - timedelta(hours=1),
            "completed_at": NOW - timedelta(minutes=30), "due_at": due})
    with db.session() as s:
        s.execute(insert(Study), rows)
        ids = {uid: sid for uid, sid in s.execute(select(Study.study_uid, Study.id))}
    for row in rows:
        row["id"] = ids[row["study_uid"]]
    return rows


def key_of(row: dict[str, Any]) -> tuple[bool, bool, datetime, int]:
    """The worklist's order, written out: not STAT, not AI-critical, due, id."""
    return row["priority"] < 9, not row["ai_critical"], row["due_at"], row["id"]


def expected_order(rows: list[dict[str, Any]], sites: set[str] | None = None,
                   skip: set[int] | None = None) -> list[int]:
    listed = [r for r in rows if r["state"] != "received"
              and (sites is None or r["site_id"] in sites) and r["id"] not in (skip or set())]
    return [r["id"] for r in sorted(listed, key=key_of)]


def walk(db: Database, user: UserContext, status: str = "open", page_size: int = 4,
         **filters: Any) -> tuple[list[int], set[int]]:
    """Every page by cursor: the ids in the order served, and the totals seen."""
    seen: list[int] = []
    totals: set[int] = set()
    cursor = None
    for _ in range(1000):
        with db.session() as s:
            page = worklist.worklist_page(s, user, status=status, page_size=page_size,
                                          cursor=cursor, secret=SECRET, now=NOW, **filters)
        seen += [i.study_id for i in page.items]
        totals.add(page.total)
        assert len(page.items) <= page_size
        if page.next_cursor is None:
            return seen, totals
        assert len(page.items) == page_size  # only a full page has a next one
        cursor = page.next_cursor
    raise AssertionError("the cursor never reached the end")


def sign(db: Database, study_id: int, state: str = "final") -> int:
    with db.session() as s:
        report = Report(subject_type="study", subject_id=str(study_id), study_id=study_id,
                        site_id="county-a", template_id="generic", template_version="1.0.0",
                        state=state)
        s.add(report)
        s.flush()
        return int(report.id)


def test_cursor_pages_list_every_study_once_in_order(db: Database) -> None:
    rows = fill(db, 41)
    everyone = expected_order(rows)
    assert len(set(r["due_at"] for r in rows)) == 4  # ties on the due time, by design
    seen, totals = walk(db, CENTER, status="all")
    assert seen == everyone and totals == {len(everyone)}
    # The same order as the offset pages, one by one, and as one big page.
    with db.session() as s:
        one = worklist.worklist_page(s, CENTER, status="all", page_size=200, now=NOW)
        assert [i.study_id for i in one.items] == everyone and one.next_cursor is None
        by_offset = [i.study_id for p in range(1, 12) for i in worklist.query_worklist(
            s, CENTER, status="all", page=p, page_size=4, now=NOW)[1]]
    assert by_offset == everyone
    # Page sizes that divide the list exactly, and one: no empty last page, no repeat.
    for size in (1, len(everyone), len(everyone) - 1):
        assert walk(db, CENTER, status="all", page_size=size)[0] == everyone
    # The county's list, and filters: the same walk, its own rows only.
    a_only = expected_order(rows, {"county-a"})
    assert walk(db, COUNTY_A, status="all")[0] == a_only
    assert walk(db, CENTER, status="all", site="county-a")[0] == a_only


def test_open_list_by_cursor_skips_signed_and_never_repeats(db: Database) -> None:
    rows = fill(db, 30)
    signed = {rows[2]["id"], rows[9]["id"]}
    for sid in signed:
        sign(db, sid)
    open_ = expected_order(rows, skip=signed)
    assert walk(db, CENTER)[0] == open_
    # A study of page 1 signed while the reader looks at it: offset paging would skip
    # a row at page 2; the cursor carries on after page 1's last row.
    with db.session() as s:
        first = worklist.worklist_page(s, CENTER, page_size=5, secret=SECRET, now=NOW)
    sign(db, first.items[0].study_id)
    with db.session() as s:
        second = worklist.worklist_page(s, CENTER, page_size=5, secret=SECRET, now=NOW,
                                        cursor=first.next_cursor)
        shifted = worklist.query_worklist(s, CENTER, page=2, page_size=5, now=NOW)[1]
    assert [i.study_id for i in second.items] == open_[5:10]
    assert [i.study_id for i in shifted] == open_[6:11]  # what offset paging does


def test_a_county_cursor_never_reveals_another_sites_study(db: Database) -> None:
    rows = fill(db, 40)
    a_rows = [r for r in rows if r["site_id"] == "county-a" and r["state"] != "received"]
    scope = worklist.cursor_scope("all", None, None, False)
    # Cursors made by hand (with the key) at other sites' rows, and before everything.
    b_rows = [r for r in rows if r["site_id"] == "county-b" and r["state"] != "received"]
    crafted = [worklist.SortKey(*key_of(r)) for r in b_rows[:6]]
    crafted.append(worklist.SortKey(False, False, datetime(1970, 1, 2, tzinfo=UTC), 1))
    for key in crafted:
        token = worklist.encode_cursor(SECRET, key, scope)
        with db.session() as s:
            page = worklist.worklist_page(s, COUNTY_A, status="all", page_size=200,
                                          cursor=token, secret=SECRET, now=NOW)
        assert {i.site_id for i in page.items} == {"county-a"}
        # Exactly the county's own rows after that position, in order.
        mark = (key.not_stat, key.not_critical, key.due, key.study_id)
        assert [i.study_id for i in page.items] == [
            r["id"] for r in sorted(a_rows, key=key_of) if key_of(r) > mark]
        assert page.total == len(a_rows)
    # Another site's filter through a cursor's scope changes nothing either.
    with db.session() as s:
        page = worklist.worklist_page(s, COUNTY_A, status="all", site="county-b",
                                      cursor=worklist.encode_cursor(
                                          SECRET, crafted[-1],
                                          worklist.cursor_scope("all", "county-b", None,
                                                                False)),
                                      secret=SECRET, now=NOW)
    assert page.items == [] and page.total == 0


def test_cursor_codec_refuses_anything_it_did_not_make() -> None:
    scope = worklist.cursor_scope("open", None, None, False)
    key = worklist.SortKey(True, False, NOW, 1234)
    token = worklist.encode_cursor(SECRET, key, scope)
    assert worklist.decode_cursor(SECRET, token, scope) == key
    assert len(token) == 46 and token.isascii()
    bad = [
        "", "x", token[:-1], token + "A", token + "=", token[:-2] + "==",
        token.replace(token[5], "A" if token[5] != "A" else "B", 1),  # one character
        token[:10] + "+" + token[11:], token[:10] + "/" + token[11:],  # not base64url
        token[:10] + "é" + token[11:], " " + token[1:], "A" * 46, "A" * 5000,
    ]
    # A flipped bit in every byte of the decoded token: all refused.
    raw = base64.urlsafe_b64decode(token + "==")
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:]
        bad.append(base64.urlsafe_b64encode(flipped).rstrip(b"=").decode())
    for wrong in bad:
        with pytest.raises(worklist.InvalidCursor):
            worklist.decode_cursor(SECRET, wrong, scope)
    # Made for other filters, or with another key.
    for other in (worklist.cursor_scope("all", None, None, False),
                  worklist.cursor_scope("open", "county-a", None, False),
                  worklist.cursor_scope("open", None, "CT", False),
                  worklist.cursor_scope("open", None, None, True)):
        with pytest.raises(worklist.InvalidCursor, match="other filters"):
            worklist.decode_cursor(SECRET, token, other)
    with pytest.raises(worklist.InvalidCursor):
        worklist.decode_cursor(b"another key", token, scope)
    # Signed but out of range (a version from the future, id 0): still refused.
    for version, flags, study_id in ((2, 0, 1), (1, 4, 1), (1, 0, 0), (1, 0, -5),
                                     (1, 0, 2**31)):
        payload = struct.pack(">BBqq", version, flags, 0, study_id)
        mac = hmac.new(SECRET, b"worklist\x00" + scope + b"\x00" + payload,
                       hashlib.sha256).digest()[:16]
        forged = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
        with pytest.raises(worklist.InvalidCursor, match=r"out of range|version"):
            worklist.decode_cursor(SECRET, forged, scope)
    assert worklist.InvalidCursor.http_status == 400


def test_report_signed_follows_the_studys_report(db: Database) -> None:
    rows = fill(db, 3)
    one, two = rows[0]["id"], rows[1]["id"]

    def flags() -> dict[int, bool]:
        with db.session() as s:
            return {sid: signed for sid, signed in s.execute(
                select(Study.id, Study.report_signed))}

    report_id = sign(db, one, state="draft")
    assert flags()[one] is False
    with db.session() as s:
        study = s.get(Study, one)
        report = s.get(Report, report_id)
        assert study is not None and report is not None and study.report_signed is False
        report.state = "final"
        s.flush()
        assert study.report_signed is True  # the loaded study sees it at once
        assert worklist.worklist_page(s, CENTER, now=NOW).total == 2  # off the open list
    with db.session() as s:
        report = s.get(Report, report_id)
        assert report is not None
        report.state = "amended"
    assert flags()[one] is True
    with db.session() as s:  # the report moved to another study: both recomputed
        report = s.get(Report, report_id)
        assert report is not None
        report.study_id, report.subject_id = two, str(two)
    assert flags()[one] is False and flags()[two] is True
    with db.session() as s:  # a report of another kind does not sign the study
        report = s.get(Report, report_id)
        assert report is not None
        report.subject_type = "ecg"
    assert flags()[two] is False
    with db.session() as s:
        report = s.get(Report, report_id)
        assert report is not None
        report.subject_type = "study"
    assert flags()[two] is True
    with db.session() as s:
        report = s.get(Report, report_id)
        assert report is not None
        s.delete(report)
    assert not any(flags().values())


def test_migration_0011_fills_report_signed_from_the_reports(db: Database) -> None:
    from alembic import command

    from core.db import alembic_config

    command.downgrade(alembic_config(db.url), "0010")
    with db.engine.begin() as conn:
        for i, state in enumerate(("final", "amended", "draft", None)):
            conn.execute(text(
                "INSERT INTO studies (site_id, study_uid, patient_id, patient_name, "
                "patient_birth_date, issuer_of_patient_id, description, study_date, "
                "accession_number, patient_sex, patient_age, body_part, modalities, state, "
                "generation, received_instances, stored_instances, priority, ai_critical, "
                "first_received_at, last_received_at) VALUES ('county-a', :uid, '', '', '', "
                "'', '', '', '', '', '', '', '[]', 'complete', 1, 1, 1, 0, false, :t, :t)"),
                {"uid": f"m.{i}", "t": NOW})
            if state is not None:
                conn.execute(text(
                    "INSERT INTO reports (subject_type, subject_id, study_id, site_id, "
                    "template_id, template_version, state, created_at, updated_at) "
                    "SELECT 'study', CAST(id AS VARCHAR(64)), id, 'county-a', 'generic', "
                    "'1.0.0', :state, :t, :t FROM studies WHERE study_uid = :uid"),
                    {"uid": f"m.{i}", "state": state, "t": NOW})
    command.upgrade(alembic_config(db.url), "head")
    with db.session() as s:
        flags = {uid: signed for uid, signed in s.execute(
            select(Study.study_uid, Study.report_signed))}
        assert flags == {"m.0": True, "m.1": True, "m.2": False, "m.3": False}
        assert worklist.worklist_page(s, CENTER, now=NOW).total == 2


# Over HTTP ----------------------------------------------------------------------------------
@pytest.fixture
def app_center(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[Center]:
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    with center.db.session() as s:
        for site in SITES:
            add_site(s, SiteSpec(id=site, name=site, ae_title=site.upper(), host="127.0.0.1",
                                 port=104, allowed_addresses=("127.0.0.1",)), actor="test")
    yield center
    get_settings.cache_clear()


def test_http_cursor_pages_and_refuses_bad_cursors_with_400(app_center: Center) -> None:
    rows = fill(app_center.db, 25)
    reader = signed_in_client(app_center, "dr.keyset", ["radiologist"], None)
    clerk = signed_in_client(app_center, "clerk.a", ["site_user"], ["county-a"])
    every, a_only = expected_order(rows), expected_order(rows, {"county-a"})

    def pages(api: Any, **params: Any) -> list[int]:
        seen: list[int] = []
        query: dict[str, Any] = {"status": "all", "page_size": 4, **params}
        while True:
            r = api.get("/api/worklist", params=query)
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [i["study_id"] for i in body["items"]]
            if body["next_cursor"] is None:
                return seen
            query["cursor"] = body["next_cursor"]

    assert pages(reader) == every
    assert pages(clerk) == a_only
    assert pages(reader, cursor="") == every  # an empty cursor is no cursor
    first = reader.get("/api/worklist", params={"status": "all", "page_size": 4}).json()
    assert first["page"] == 1 and first["total"] == len(every)
    cursor = first["next_cursor"]
    # Offset paging still answers, with a cursor to carry on from there.
    third = reader.get("/api/worklist", params={"status": "all", "page": 3, "page_size": 4})
    assert [i["study_id"] for i in third.json()["items"]] == every[8:12]
    after = reader.get("/api/worklist", params={"status": "all", "page_size": 4,
                                                "cursor": third.json()["next_cursor"]})
    assert [i["study_id"] for i in after.json()["items"]] == every[12:16]
    # A county account with the center reader's cursor: its own rows only (the cursor
    # is valid, the site filter still applies).
    r = clerk.get("/api/worklist", params={"status": "all", "page_size": 50, "cursor": cursor})
    assert r.status_code == 200
    assert [i["study_id"] for i in r.json()["items"]] == [
        sid for sid in every[4:] if sid in a_only]
    tampered = cursor[:-3] + ("AAA" if cursor[-3:] != "AAA" else "BBB")
    for bad, params in ((tampered, {}), ("not-a-cursor", {}), ("%" * 46, {}),
                        (cursor + "==", {}), ("x" * 10_000, {}),
                        (cursor, {"status": "open"}), (cursor, {"site": "county-a"}),
                        (cursor, {"modality": "CT"}), (cursor, {"mine": "true"})):
        r = reader.get("/api/worklist", params={"status": "all", **params, "cursor": bad})
        assert r.status_code == 400, (bad, params, r.text)
        assert "cursor" in r.json()["detail"] and r.json()["error"] == "InvalidCursor"


# The scale benchmark, small (its timings are not judged here) -------------------------------
def test_scale_benchmark_small_run_is_well_formed(pg_admin: str) -> None:
    if str(REPO) not in sys.path:  # CI's pytest has no working directory on sys.path
        sys.path.insert(0, str(REPO))
    from benchmarks.scale_worklist import DEEP_PAGE, ScaleResults, run

    name, url = _create_pg_database(pg_admin)
    try:
        res = run(url, 2000, 5, repeat=3, page_size=20, http=True)
    finally:
        get_database.cache_clear()
        _drop_pg_database(pg_admin, name)
    assert isinstance(res, ScaleResults)
    sd = res.seeded
    assert sd.studies == 2000 and sd.sites == 5 and 0 < sd.open < sd.ready <= 2000
    assert 0 < sd.county_open < sd.county_ready < sd.ready and sd.reports > sd.ready // 2
    shapes = {(t.case, t.status, t.paging, t.via) for t in res.timings}
    for status in ("open", "all"):
        for who in ("all sites", "one county"):
            assert (f"{who}, first page", status, "offset", "function") in shapes
            assert (f"{who}, first page", status, "offset", "http") in shapes
    for paging in ("offset", "keyset"):
        assert ("all sites, deep page", "all", paging, "function") in shapes
    assert ("all sites, deep page", "all", "keyset", "http") in shapes
    lengths = {("center", "open"): sd.open, ("center", "all"): sd.ready,
               ("county", "open"): sd.county_open, ("county", "all"): sd.county_ready}
    for t in res.timings:
        assert t.runs == 3 and 0 < t.median_ms <= t.p95_ms
        assert t.total == lengths[t.account, t.status]
        assert 1 <= t.rows <= res.page_size
        last = -(-t.total // res.page_size)
        assert t.page == (1 if t.case.endswith("first page") else min(DEEP_PAGE, last))
        if t.page == last:
            assert t.rows == t.total - (last - 1) * res.page_size
    assert "all sites, deep page (all)" in res.ratios
    assert all(r > 0 for r in res.ratios.values())
    assert res.worst_p95_ms() > 0
    assert res.as_dict()["seeded"]["studies"] == 2000
