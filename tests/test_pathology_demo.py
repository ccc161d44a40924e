"""The pathology part of ``rdc demo`` against a real center (Orthanc, the gateway, a
worker process): an imported case of three slides, a DICOM WSI over
C-STORE and a frozen section all end up in the pathologists' worklist, graded by the
quality gate.  Smaller slides (8192 x 6144) than the demo's default, so that it runs
in a minute."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from rich.console import Console
from sqlalchemy import select

from conftest import Center
from core.errors import InvalidInput
from core.models import AuditRecord, PathologyCase, PathologySlide
from pathology.cases import worklist
from rdc.demo import DEMO_SITE
from rdc.demo_pathology import demo_accessions, parse_slide_size, run_pathology_demo


@pytest.fixture
def live(env_center: Center) -> Iterator[Center]:
    c = env_center
    c.start_orthanc()
    c.add_site(DEMO_SITE.id, DEMO_SITE.ae_title, inactivity_s=1, accepts_results=True)
    c.start_gateway()
    c.start_worker()
    yield c


def test_slide_size_option() -> None:
    assert parse_slide_size("40960x30720") == (40960, 30720)
    assert parse_slide_size("4096X3072") == (4096, 3072)
    for bad in ("40960", "axb", "40960x30720x3", "-5x100", "100x100", "400000x1024"):
        with pytest.raises(InvalidInput, match="--slide-size"):
            parse_slide_size(bad)


def test_demo_refuses_a_bad_slide_size_with_a_clear_message(center: Center) -> None:
    done = center.rdc("demo", "--slide-size", "big")
    assert done.returncode != 0
    assert "--slide-size: expected WIDTHxHEIGHT" in done.stdout + done.stderr


def test_accessions_fit_dicom_short_strings() -> None:
    from datetime import UTC, datetime

    names = demo_accessions(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert len(set(names.values())) == 3
    assert all(len(a) <= 16 for a in names.values()), names


@pytest.mark.timeout(900)
def test_demo_cases_reach_the_worklist(live: Center) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    code = run_pathology_demo(live.settings, console, site_id=DEMO_SITE.id,
                              calling_ae=DEMO_SITE.ae_title, timeout=600,
                              slide_size=(8192, 6144))
    text = out.getvalue()
    assert code == 0, text + live.logs()
    assert "8192 x 6144 slide" in text, text
    with live.db.session() as s:
        cases = {c.accession_number: c for c in s.scalars(select(PathologyCase).where(
            PathologyCase.site_id == DEMO_SITE.id))}
        assert len(cases) == 3, cases
        by_kind = {a.split("-")[1]: cases[a] for a in cases}
        assert set(by_kind) == {"IMP", "WSI", "FS"}, cases
        slides = {kind: list(s.scalars(select(PathologySlide).where(
            PathologySlide.case_id == case.id))) for kind, case in by_kind.items()}
        order = [c.accession_number for c in worklist(
            s, visible_sites=None, user_id=None, site=DEMO_SITE.id, status="all")]
        listed = {c.accession_number: c for c in worklist(
            s, visible_sites=None, user_id=None, site=DEMO_SITE.id, status="all")}
    # The imported case: three slides through the importer.
    imported = slides["IMP"]
    assert len(imported) == 3 and {sl.source for sl in imported} == {"import"}
    with live.db.session() as s:
        imports = list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "pathology.import")))
        # One import (the importer's audit record) made the case's one study.
        assert [r.object_id for r in imports] == [str(imported[0].study_id)], imports
        assert len({sl.study_id for sl in imported}) == 1
    assert {sl.block for sl in imported} == {"A1"} and {sl.part for sl in imported} == {"A"}
    assert sorted(sl.width for sl in imported) == [2048, 2048, 8192]
    assert by_kind["IMP"].organ == "colon"
    # The two C-STORE'd cases: one slide each, through the gateway.
    for kind in ("WSI", "FS"):
        assert len(slides[kind]) == 1 and slides[kind][0].source == "cstore", slides[kind]
    assert by_kind["FS"].urgency == "frozen"
    assert by_kind["WSI"].urgency == "routine"
    # Every slide went through the quality gate: the clean ones pass, the one drawn with
    # blur and pen marks is flagged; the worklist lists all three, the frozen one first.
    for kind, rows in slides.items():
        assert all(sl.qc_grade in ("pass", "fail") for sl in rows), (kind, rows)
    assert [sl.qc_grade for sl in slides["WSI"] + slides["FS"]] == ["pass", "pass"]
    grades = sorted((sl.width, sl.qc_grade, sl.qc_reasons) for sl in imported)
    assert [g[1] for g in grades] == ["fail", "pass", "pass"], grades
    assert any("pen marks" in reason for reason in grades[0][2]), grades
    for rows in slides.values():
        assert all(sl.levels >= 1 and sl.width > 0 and sl.orthanc_series_id for sl in rows)
    assert set(listed) == set(cases), listed
    assert listed[by_kind["IMP"].accession_number].slide_count == 3
    assert order[0] == by_kind["FS"].accession_number, order
    for accession in cases:
        assert accession in text, text
