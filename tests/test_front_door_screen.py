"""The operator's view of the DICOM front door (issue 11): an instance the archive refuses
after the gateway acknowledged it is audited, shown to administrators by
``GET /api/admin/front-door`` and on the admin area's "DICOM front door" screen, with the
spool folders (``unacknowledged`` included), and to no one else.

The refusal is real: the gateway's uploader hands a spooled file to the center's Orthanc,
which answers that it is not DICOM; a file left in the spool with no receipt is put
aside by the uploader's crash recovery.  (That such an instance never completes a study
is tested in tests/test_gateway_front_door.py, with the gateway's monitor running.)
The screen is checked in Debian's Chromium against ``rdc web`` as a process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from browser_support import (
    Codes,
    Shots,
    collect_errors,
    require_front_end,
    sign_in,
    start_web,
    stop,
)
from conftest import TEST_PASSWORD, Center, _make_center, signed_in_client, wait_until
from core.group_commit import GroupCommitter
from core.models import AuditRecord, Instance
from core.orthanc_client import OrthancClient
from core.settings import get_settings
from pacs_gateway.inspect import InstanceInfo
from pacs_gateway.receipts import record_receipt
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Uploader
from viewer.accounts import add_user
from viewer.app import create_app

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.9.7778.1"
SOP_UID = STUDY_UID + ".1.1"
PATIENT_ID, PATIENT_NAME = "FD-PATIENT-42", "FRONTDOOR^HIDDEN"
ADMIN = "admin.frontdoor"


@dataclass
class Refused:
    center: Center
    receipt_id: str
    orphan: str


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refused]:
    """A center whose Orthanc refused one acknowledged instance, and one orphan file."""
    gen = _make_center(tmp_path_factory.mktemp("front-door-screen"), "sqlite", "", None)
    c = next(gen)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in c.env.items():
            if key.startswith("RDC_"):
                mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            c.start_orthanc()
            c.add_site()
            settings = c.settings
            spool = Spool(settings.spool_dir, 0)
            # What the gateway records when it acknowledges; the bytes are what Orthanc
            # will not take (a sender's file the gateway's checks let through).
            rid = str(uuid.uuid4())
            spool.path(rid).write_bytes(b"\0" * 128 + b"DICM" + b"not a dataset" * 40)
            with c.db.session() as s:
                record_receipt(s, receipt_id=rid, site_id="county-a", info=InstanceInfo(
                    sop_class_uid=CT_IMAGE, sop_instance_uid=SOP_UID, study_uid=STUDY_UID,
                    series_uid=STUDY_UID + ".1", transfer_syntax=ExplicitVRLittleEndian,
                    modality="CT", patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
                    expected_study_instances=None), size=600, calling_ae="COUNTY_A",
                    peer_address="127.0.0.1")
            orphan = str(uuid.uuid4())  # written before a crash, never recorded
            spool.path(orphan).write_bytes(b"\0" * 132)

            committer = GroupCommitter(c.db)
            uploader = Uploader(c.db, spool, OrthancClient.from_settings(settings, retries=0),
                                committer, workers=1, retry_max_s=1.0)
            try:
                found = uploader.recover()
                assert found["unacknowledged"] == 1 and found["resumed"] == 1, found
                uploader.start()

                def state() -> str | None:
                    with c.db.session() as s:
                        return s.scalar(select(Instance.state).where(Instance.id == rid))
                wait_until(lambda: state() == "failed", 60, "Orthanc to refuse the instance")
            finally:
                uploader.stop()
                committer.stop()
            yield Refused(c, rid, orphan)
        finally:
            get_settings.cache_clear()
            gen.close()


def test_refused_after_ack_is_audited_and_shown_to_admins_only(refused: Refused) -> None:
    c, rid = refused.center, refused.receipt_id
    assert [p.name for p in c.spool_files("failed")] == [f"{rid}.dcm"]
    assert [p.name for p in c.spool_files("unacknowledged")] == [f"{refused.orphan}.dcm"]
    with c.db.session() as s:
        audited = [r.detail for r in s.scalars(
            select(AuditRecord).where(AuditRecord.action == "instance.upload_failed"))]
    assert [d["sop_instance_uid"] for d in audited] == [SOP_UID], audited
    assert "Orthanc refused the instance" in audited[0]["error"]

    admin = signed_in_client(c, ADMIN, ["admin"], None)
    r = admin.get("/api/admin/front-door")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    data = r.json()
    assert data["failed_total"] == 1
    [failed] = data["failed"]
    assert (failed["receipt_id"], failed["site_id"], failed["study_uid"],
            failed["sop_instance_uid"]) == (rid, "county-a", STUDY_UID, SOP_UID)
    assert failed["error"].startswith("Orthanc refused the instance") and failed["file_kept"]
    assert data["spool"] == {"ready": 0, "failed": 1, "unacknowledged": 1}
    assert [f["name"] for f in data["unacknowledged_files"]] == [f"{refused.orphan}.dcm"]
    [site] = data["sites"]
    assert (site["site_id"], site["received"], site["stored"], site["failed"]) == (
        "county-a", 1, 0, 1)
    # Administrators read no patient data: not even on this screen.
    assert PATIENT_ID not in r.text and "FRONTDOOR" not in r.text

    with c.db.session() as s:
        views = list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "admin.front_door_viewed")))
    assert [(v.actor, v.detail["failed_total"]) for v in views] == [(ADMIN, 1)]

    reader = signed_in_client(c, "dr.frontdoor", ["radiologist"], None)
    assert reader.get("/api/admin/front-door").status_code == 403
    assert TestClient(create_app()).get("/api/admin/front-door").status_code == 401


@pytest.mark.timeout(300)
def test_admin_screen_shows_the_refused_instance(refused: Refused, browser: Any) -> None:
    require_front_end()
    c = refused.center
    with c.db.session() as s:
        _, uri = add_user(s, c.settings, username="admin.screen", display_name="Admin Screen",
                          password=TEST_PASSWORD, roles=["admin"], all_sites=True,
                          actor="test")
    web = start_web(c)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = collect_errors(page)
        shots = Shots(page, "front-door")
        page.goto(f"http://127.0.0.1:{c.web_port}/#/admin")
        sign_in(page, "admin.screen", Codes(uri))
        page.get_by_test_id("admin-tab-front-door").click()
        row = page.get_by_test_id("front-door-failed-row")
        row.wait_for(state="visible", timeout=30_000)
        assert page.url.endswith("#/admin/front-door")
        assert row.count() == 1
        assert page.get_by_test_id("front-door-failed-sop").inner_text() == SOP_UID
        assert "Orthanc refused the instance" in page.get_by_test_id(
            "front-door-failed-error").inner_text()
        assert page.get_by_test_id("front-door-failed-total").inner_text() == "1"
        assert "unacknowledged 1" in page.get_by_test_id(
            "front-door-spool-unacknowledged").inner_text()
        assert refused.orphan in page.get_by_test_id("front-door-unacknowledged").inner_text()
        assert PATIENT_ID not in page.content()
        shots("refused-instance", full_page=True)
        # The accounts tab is one click back.
        page.get_by_test_id("admin-tab-accounts").click()
        page.get_by_test_id("admin-users").wait_for(state="visible")
        assert errors == [], errors
    finally:
        stop(web)
