"""The built web front end in a real browser (Debian's Chromium driven by Playwright).

The SPA is served by :func:`viewer.frontend_routes.mount_frontend` from a tiny FastAPI
app whose API routes are stand-ins (the real ones are tested elsewhere): the login page
shows without console errors, server messages are shown as text (never as HTML), and
the study viewer really draws a DICOM image through Cornerstone3D's wadors loader, the
admin page adds and disables accounts, and the turnaround dashboard shows its table and chart.

These tests read the viewer through its ``window.__rdc`` hook, so they serve the test build
(``viewer/static-test``, ``npm run build:test``; the production build has no hook).
Missing pieces fail loudly, never skip: build the front end with ``./bootstrap.sh``
(``npm ci && npm run build:test`` in ``viewer/``), ``apt-get install chromium``,
``pip install playwright`` (never ``playwright install``: the system Chromium is used).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from viewer.frontend_routes import mount_frontend

REPO = Path(__file__).resolve().parent.parent
VIEWER = REPO / "viewer"
STATIC = VIEWER / "static-test"  # the test build, with the window.__rdc hook
CHROMIUM = Path(os.environ.get("RDC_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(os.environ.get("RDC_SCREENSHOT_DIR", REPO / "var" / "screenshots"))

XSS_NAME = "<img src=x onerror=\"window.__xss=1\">^<script>window.__xss=2</script>"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1.1"
SEG_SERIES_UID = "1.2.826.0.1.3680043.8.498.1.2"
SEG_SOP_UID = "1.2.826.0.1.3680043.8.498.1.2.1"
PRIOR_STUDY_UID = "1.2.826.0.1.3680043.8.498.2"
PRIOR_SERIES_UID = "1.2.826.0.1.3680043.8.498.2.1"
SLICES = 5
SIZE = 64


# Build and browser -----------------------------------------------------------------
@pytest.fixture(scope="module")
def static_dir() -> Path:
    """The test build of the front end; built here only when viewer/static-test/index.html
    is missing."""
    if not (STATIC / "index.html").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is required to build the front end: run ./bootstrap.sh")
        if not (VIEWER / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=VIEWER, check=True,
                           timeout=600)
        subprocess.run([npm, "run", "build:test"], cwd=VIEWER, check=True, timeout=600)
    if not (STATIC / "index.html").is_file():
        pytest.fail("npm run build:test did not produce viewer/static-test/index.html")
    return STATIC


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (./bootstrap.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: .venv/bin/pip install playwright "
                    "(the system Chromium is used; never run 'playwright install')")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            # Headless machines have no GPU: WebGL through SwiftShader.
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist"])
        try:
            yield b
        finally:
            b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# A stand-in API with one synthetic CT study ---------------------------------------------
def _slice(n: int, study_uid: str = STUDY_UID, series_uid: str = SERIES_UID,
           patient_id: str = "P-001") -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"{series_uid}.{n + 1}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = f"{study_uid}.9"
    ds.Modality = "CT"
    ds.PatientName = XSS_NAME
    ds.PatientID = patient_id
    ds.InstanceNumber = n + 1
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, 2.0 * n]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disc = (xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2 < (SIZE / 3) ** 2
    pixels = np.where(disc, 1064 + 20 * n, 24).astype("<i2")  # 40 HU disc in air
    return ds, pixels.tobytes()


SLICE_DATA = [_slice(n) for n in range(SLICES)]
# A prior of "the same" patient from another site, under another local patient ID.
PRIOR_DATA = [_slice(n, PRIOR_STUDY_UID, PRIOR_SERIES_UID, "B-77") for n in range(SLICES)]


def _seg() -> tuple[Dataset, list[bytes]]:
    """A real DICOM SEG (highdicom, BINARY, one segment) of a small blob in the middle
    slices of the CT, and its frames bit-packed as a DICOMweb server answers them."""
    import highdicom as hd
    from pydicom.pixels import pack_bits
    from pydicom.sr.codedict import codes

    sources = []
    for ds, pixels in SLICE_DATA:
        src = ds.copy()
        src.PixelData = pixels
        src.StudyDate, src.StudyTime, src.StudyID = "20260101", "100000", "1"
        src.AccessionNumber, src.ReferringPhysicianName = "A1", ""
        src.PatientBirthDate, src.PatientSex = "", ""
        src.SeriesNumber = 1
        sources.append(src)
    mask = np.zeros((SLICES, SIZE, SIZE), dtype=np.uint8)
    mask[1:4, 20:36, 24:44] = 1  # the middle slice (shown first) has it
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="stand-in", family=codes.cid7162.ArtificialIntelligence, version="1"))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=SEG_SERIES_UID,
        series_number=9002, sop_instance_uid=SEG_SOP_UID, instance_number=1,
        manufacturer="RDC", manufacturer_model_name="stand-in", software_versions="1",
        device_serial_number="1", omit_empty_frames=True)
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)  # as stored: plain pydicom values
    stored = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    frames = [pack_bits(frame) for frame in stored.pixel_array.reshape(-1, SIZE, SIZE)]
    return stored, frames


SEG, SEG_FRAMES = _seg()


def _metadata_json(ds: Dataset) -> dict[str, Any]:
    """DICOM JSON as a DICOMweb server's /metadata: the pixel data is left out."""
    out = ds.to_json_dict()
    out.pop("7FE00010", None)
    return out


def _png(width: int = 8, height: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    raw = b"".join(b"\x00" + bytes([128]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _stub_app(static_dir: Path, roles: tuple[str, ...] = ("radiologist",)) -> FastAPI:
    app = FastAPI()
    user = {"id": 1, "username": "reader", "display_name": "Dr Reader", "roles": list(roles),
            "sites": "all", "csrf_token": "csrf-1"}
    study: dict[str, Any] = {
        "study_id": 1, "study_uid": STUDY_UID, "site_id": "county-a", "site_name": "County A",
        "patient_id": "P-001", "patient_name": XSS_NAME, "description": "CT head <b>bold</b>",
        "modalities": ["CT"], "instances": SLICES, "priority": 9, "priority_label": "STAT",
        "ai_critical": True,
        "ai_flags": ["hemorrhage"], "status": "claimed", "claimed_by": "reader",
        "completed_at": "2026-01-01T10:00:00Z", "due_at": "2026-01-01T11:00:00Z",
        "seconds_left": 1800, "report_id": None, "study_date": "20260101",
        "accession_number": "ACC-77", "patient_sex": "F", "patient_age": "66y",
        "body_part": "HEAD",
        "series": [{"series_uid": SERIES_UID, "modality": "CT", "description": "Axial",
                    "number": 1, "kind": "image",
                    "instances": [ds.SOPInstanceUID for ds, _ in SLICE_DATA]},
                   {"series_uid": SEG_SERIES_UID, "modality": "SEG",
                    "description": "AI segmentation", "number": 9002, "kind": "seg",
                    "instances": [SEG_SOP_UID]}],
        "ai_findings": [{"id": 7, "label": "intracranial hemorrhage", "probability": 0.93,
                         "threshold": 0.5, "positive": True, "critical": True,
                         "volume_ml": 12.5, "review": None, "model": "ich-net",
                         "version": "1.2.0"}],
        "priors": [{"study_id": 2, "study_uid": PRIOR_STUDY_UID, "site_id": "county-b",
                    "date": "20250101", "description": "CT head", "match": "name+birthdate"}],
    }
    prior: dict[str, Any] = {
        **{k: v for k, v in study.items() if k not in ("series", "ai_findings", "priors")},
        "study_id": 2, "study_uid": PRIOR_STUDY_UID, "site_id": "county-b",
        "site_name": "County B", "patient_id": "B-77", "description": "CT head (prior)",
        "status": "signed", "claimed_by": None, "ai_critical": False, "ai_flags": [],
        "series": [{"series_uid": PRIOR_SERIES_UID, "modality": "CT", "description": "Axial",
                    "number": 1, "kind": "image",
                    "instances": [ds.SOPInstanceUID for ds, _ in PRIOR_DATA]}],
        "ai_findings": [], "priors": []}
    # A radiograph of a second patient, signed (its report's PDF is on the worklist).
    radiograph: dict[str, Any] = {
        **{k: v for k, v in study.items() if k not in ("series", "ai_findings", "priors")},
        "study_id": 5, "study_uid": "1.2.826.0.1.3680043.8.498.5", "patient_id": "P-005",
        "patient_name": "Phantom^Demo", "description": "Hand, 2 views", "modalities": ["DX"],
        "priority": 8, "priority_label": "AI CRITICAL", "ai_critical": False, "ai_flags": [],
        "status": "signed", "claimed_by": None, "report_id": 4, "seconds_left": -600,
        "study_date": "20251231", "accession_number": "", "patient_sex": "M",
        "patient_age": "40y", "body_part": "HAND",
        "series": [{"series_uid": SERIES_UID, "modality": "DX", "description": "PA",
                    "number": 1, "kind": "image",
                    "instances": [ds.SOPInstanceUID for ds, _ in SLICE_DATA]}],
        "ai_findings": [], "priors": []}
    report: dict[str, Any] = {
        "id": 3, "study_id": 1, "site_id": "county-a", "template": "ct-head@1", "state": "draft",
        "required_fields": ["findings", "impression"],
        "versions": [{"number": 1, "kind": "original", "state": "draft",
                      "fields": {"findings": "", "impression": ""}, "author": "reader",
                      "signed_by": None, "signed_at": None, "hash_algorithm": None,
                      "content_hash": None, "sr_sop_uid": None, "pdf_sop_uid": None}]}
    seen: dict[str, Any] = {}

    @app.post("/api/auth/login")
    def login() -> JSONResponse:
        return JSONResponse({"detail": "Wrong code <img src=x onerror=\"window.__xss=3\">"},
                            status_code=401)

    @app.get("/api/auth/me")
    def me() -> dict[str, Any]:
        return user

    @app.get("/api/worklist")
    def worklist(request: Request) -> dict[str, Any]:
        seen["worklist_query"] = dict(request.query_params)
        seen.setdefault("worklist_queries", []).append(dict(request.query_params))
        item = {k: v for k, v in study.items() if k not in ("series", "ai_findings", "priors")}
        signed = {k: v for k, v in radiograph.items()
                  if k not in ("series", "ai_findings", "priors")}
        return {"total": 2, "page": 1, "page_size": 50,
                "items": [{**item, "status": "unread", "claimed_by": None}, signed]}

    @app.get("/api/sites")
    def sites() -> dict[str, Any]:
        return {"sites": [{"id": "county-a", "name": "County A Hospital", "enabled": True},
                          {"id": "county-b", "name": "County B <b>Hospital</b>",
                           "enabled": True}]}

    @app.get("/api/lab/critical")
    def lab_critical() -> dict[str, Any]:
        # A county account's banner polls its site's open critical lab values: none here.
        seen["lab_critical_polled"] = True
        return {"notices": []}

    @app.get("/api/studies/5")
    def get_radiograph() -> dict[str, Any]:
        return radiograph

    signed_report: dict[str, Any] = {
        "id": 4, "study_id": 5, "site_id": "county-a", "template": "cr-generic@1.0.0",
        "state": "final", "required_fields": ["technique", "findings", "impression"],
        "versions": [{"number": 1, "kind": "report", "state": "final",
                      "fields": {"technique": "PA and lateral.", "findings": "Normal.",
                                 "impression": "Normal hand."}, "author": "reader",
                      "signed_by": "reader", "signed_at": "2026-01-01T09:00:00Z",
                      "hash_algorithm": "sha256", "content_hash": "ab" * 32,
                      "sr_sop_uid": "1.2.3.4", "pdf_sop_uid": "1.2.3.5"}]}

    @app.get("/api/studies/5/report")
    def radiograph_report() -> dict[str, Any]:
        return signed_report

    @app.get("/api/reports/4")
    def get_signed_report() -> dict[str, Any]:
        seen["signed_report_read"] = True
        return signed_report

    @app.get("/api/reports/4/pdf")
    def signed_pdf() -> Response:
        seen["pdf_opened"] = True
        return Response(b"%PDF-1.4\n% stand-in\n%%EOF\n", media_type="application/pdf")

    @app.post("/api/studies/1/claim")
    def claim(request: Request) -> dict[str, Any]:
        seen["claim_csrf"] = request.headers.get("x-csrf-token")
        return study

    @app.get("/api/studies/1")
    def get_study() -> dict[str, Any]:
        return study

    @app.get("/api/studies/2")
    def get_prior() -> dict[str, Any]:
        seen["prior_opened"] = True
        return prior

    @app.get("/api/studies/1/report")
    def get_report() -> dict[str, Any]:
        return report

    @app.post("/api/studies/1/report", status_code=201)
    def create_report() -> dict[str, Any]:
        return report

    @app.put("/api/reports/3/draft")
    async def save(request: Request) -> dict[str, Any]:
        seen["draft"] = await request.json()
        seen["draft_csrf"] = request.headers.get("x-csrf-token")
        report["versions"][0]["fields"] = seen["draft"]["fields"]
        return report

    @app.post("/api/reports/3/sign")
    async def sign(request: Request) -> Any:
        body = await request.json()
        if body["passphrase"] != "right":
            return JSONResponse({"detail": "wrong passphrase"}, status_code=403)
        seen["sign"] = body
        report["state"] = "final"
        report["versions"][0].update(state="final", signed_by="reader",
                                     signed_at="2026-01-01T10:30:00Z")
        return report

    @app.get("/api/deliveries")
    def deliveries(report_id: int) -> list[dict[str, Any]]:
        return [{"id": 1, "report_version_id": 1, "site_id": "county-a", "channel": "dicom",
                 "state": "sent", "attempts": 1, "last_error": None, "next_attempt_at": None,
                 "sent_at": "2026-01-01T10:31:00Z", "committed_at": None}]

    @app.post("/api/ai-findings/7/review")
    async def review(request: Request) -> dict[str, Any]:
        body = await request.json()
        seen["review_csrf"] = request.headers.get("x-csrf-token")
        return {"id": 7, "label": "intracranial hemorrhage", "review": body["decision"]}

    series_data = {SERIES_UID: SLICE_DATA, PRIOR_SERIES_UID: PRIOR_DATA}

    @app.get("/dicom-web/studies/{st}/series/{se}/metadata")
    def metadata(st: str, se: str) -> Response:
        if se == SEG_SERIES_UID:
            return Response(json.dumps([_metadata_json(SEG)]), media_type="application/dicom+json")
        return Response(json.dumps([ds.to_json_dict() for ds, _ in series_data[se]]),
                        media_type="application/dicom+json")

    @app.get("/dicom-web/studies/{st}/series/{se}/instances/{sop}/metadata")
    def instance_metadata(st: str, se: str, sop: str) -> Response:
        seen.setdefault("instance_metadata", []).append(sop)
        assert (st, se, sop) == (STUDY_UID, SEG_SERIES_UID, SEG_SOP_UID)
        return Response(json.dumps([_metadata_json(SEG)]), media_type="application/dicom+json")

    @app.get("/dicom-web/studies/{st}/series/{se}/instances/{sop}/frames/{n}")
    def frame(st: str, se: str, sop: str, n: int) -> Response:
        if sop == SEG_SOP_UID:
            pixels = SEG_FRAMES[n - 1]
        else:
            pixels = next(p for ds, p in SLICE_DATA + PRIOR_DATA if ds.SOPInstanceUID == sop)
        boundary = "rdc-test-boundary"
        body = (f"--{boundary}\r\nContent-Type: application/octet-stream; "
                f"transfer-syntax={ExplicitVRLittleEndian}\r\n\r\n").encode() + pixels + (
                    f"\r\n--{boundary}--\r\n").encode()
        return Response(body, media_type=f"multipart/related; type=\"application/octet-stream\""
                                         f"; boundary={boundary}")

    @app.get("/dicom-web/studies/{st}/series/{se}/instances/{sop}/rendered")
    def rendered(st: str, se: str, sop: str, viewport: str = "") -> Response:
        seen["thumbnail_viewport"] = viewport
        return Response(_png(), media_type="image/png")

    # Administration (admin role only, as viewer/api/auth.py).
    accounts: list[dict[str, Any]] = [
        {"id": 1, "username": "reader", "display_name": "Dr Reader", "roles": list(roles),
         "sites": "all", "enabled": True, "locked_until": None,
         "created_at": "2026-01-01T08:00:00Z", "disabled_at": None},
        {"id": 2, "username": "tech.b", "display_name": XSS_NAME, "roles": ["site_user"],
         "sites": ["county-b"], "enabled": True, "locked_until": None,
         "created_at": "2026-01-02T08:00:00Z", "disabled_at": None}]

    def admin_only() -> JSONResponse | None:
        if "admin" not in user["roles"]:
            return JSONResponse({"detail": "requires role admin"}, status_code=403)
        return None

    @app.get("/api/admin/users")
    def list_users() -> Any:
        return admin_only() or accounts

    @app.post("/api/admin/users", status_code=201)
    async def add_user(request: Request) -> Any:
        if (denied := admin_only()) is not None:
            return denied
        body = await request.json()
        seen["add_user"] = body
        seen["add_user_csrf"] = request.headers.get("x-csrf-token")
        if any(a["username"] == body["username"] for a in accounts):
            return JSONResponse({"detail": f"username <b>{body['username']}</b> is taken"},
                                status_code=409)
        account = {"id": len(accounts) + 1, "username": body["username"],
                   "display_name": body["display_name"], "roles": sorted(body["roles"]),
                   "sites": "all" if body["all_sites"] else sorted(body["sites"]),
                   "enabled": True, "locked_until": None,
                   "created_at": "2026-01-03T08:00:00Z", "disabled_at": None}
        accounts.append(account)
        return {"user": account, "provisioning_uri":
                f"otpauth://totp/RDC:{body['username']}?secret=JBSWY3DPEHPK3PXP&issuer=RDC"}

    @app.post("/api/admin/users/{user_id}/{action}")
    def user_action(user_id: int, action: str, request: Request) -> Any:
        if (denied := admin_only()) is not None:
            return denied
        seen.setdefault("admin_actions", []).append(
            (user_id, action, request.headers.get("x-csrf-token")))
        account = next(a for a in accounts if a["id"] == user_id)
        if action == "reset-totp":
            return {"provisioning_uri": f"otpauth://totp/RDC:{account['username']}?secret=NEW"}
        account["enabled"] = action == "enable"
        account["disabled_at"] = None if account["enabled"] else "2026-01-03T09:00:00Z"
        return account

    # Turnaround dashboard.
    @app.get("/api/dashboard/turnaround")
    def turnaround(days: int = 30) -> dict[str, Any]:
        seen["dashboard_days"] = days
        rows = [{"site_id": "county-a", "modality": "CT", "interval": name, "count": 12,
                 "p50_min": 14.5, "p90_min": 41.25, "max_min": 95.0}
                for name in ("complete->signed", "opened->signed")]
        if days > 7:
            rows.append({"site_id": "<i>county-b</i>", "modality": "MR",
                         "interval": "complete->signed", "count": 3, "p50_min": 60.0,
                         "p90_min": 120.0, "max_min": 130.5})
        return {"days": days, "stages": [], "rows": rows}

    @app.get("/api/dashboard/turnaround.png")
    def turnaround_png(days: int = 30) -> Response:
        seen["chart_days"] = days
        return Response(_png(160, 90), media_type="image/png")

    # The cardiologists' ECG queue and one ECG of study 1 (viewer/api/ecg.py).
    ecg_measurements = {"heart_rate_bpm": 72.0, "pr_ms": 160.0, "qrs_ms": 92.0, "qt_ms": 380.0,
                        "qtc_bazett_ms": 416.0, "qtc_fridericia_ms": 404.0, "p_axis_deg": 50.0,
                        "qrs_axis_deg": 40.0, "t_axis_deg": 35.0}
    ecg_statements = [
        {"code": "sinus_rhythm", "text": "Sinus rhythm", "critical": False, "evidence": {}},
        {"code": "stemi", "text": "<b>ST elevation</b>", "critical": True, "evidence": {}}]
    ecg_summary = {"id": 9, "study_id": 1, "site_id": "county-a", "site_name": "County A",
                   "patient_id": "P-001", "patient_name": XSS_NAME, "patient_sex": "F",
                   "patient_age": "66y", "critical": True,
                   "quality": "poor", "confidence": 0.41, "heart_rate_bpm": 72.0,
                   "statements": ecg_statements, "waiting_s": 754, "status": "unread",
                   "edited_by": None}

    @app.get("/api/ecg/queue")
    def ecg_queue() -> dict[str, Any]:
        return {"total": 1, "page": 1, "page_size": 50, "items": [ecg_summary]}

    @app.get("/api/ecg/9")
    def ecg_detail() -> dict[str, Any]:
        fs, n = 250.0, 2500
        t = np.arange(n) / fs
        beat = np.exp(-(((t % 1.0) - 0.3) ** 2) / (2 * 0.012 ** 2))  # an R wave a second
        leads = {name: np.round(beat * (0.5 + 0.1 * i), 3).tolist()
                 for i, name in enumerate(("I", "II", "III", "aVR", "aVL", "aVF",
                                           "V1", "V2", "V3", "V4", "V5", "V6"))}
        # QT could not be measured, and one lead is flat: both are said plainly.
        measured = {**ecg_measurements, "qt_ms": None,
                    "not_measurable": {"qt_ms": "T wave end not found on the median beat"}}
        result = {"needs_human_measurement": True,
                  "human_measurement_reasons": {"qt_ms": "T wave end not found"},
                  "quality": {"grade": "poor", "problems": ["limb-lead reversal suspected"],
                              "leads": {"I": {"problems": []},
                                        "V3": {"problems": ["flat: 0.01 mV peak to peak"]}}}}
        return {**ecg_summary, "sop_instance_uid": "1.2.3", "measurements": measured,
                "statements_full": ecg_statements, "result": result,
                "previous": {"id": 8, "study_id": 2, "date": "20250101",
                             "measurements": {**ecg_measurements, "heart_rate_bpm": 64.0},
                             "statements": [{"code": "sinus_rhythm", "text": "Old sinus rhythm",
                                             "critical": False}]},
                "tracing": {"sampling_rate": fs, "duration_s": 10.0, "leads": leads,
                            "derived_leads": []}}

    @app.put("/api/ecg/9")
    async def ecg_edit(request: Request) -> dict[str, Any]:
        body = await request.json()
        seen["ecg_put"] = body
        seen["ecg_put_csrf"] = request.headers.get("x-csrf-token")
        measurements = {**ecg_measurements, **(body.get("measurements") or {})}
        return {"id": 9, "measurements": measurements, "statements": body["statements"],
                "critical": any(s["critical"] for s in body["statements"]),
                "edited_by": "reader"}

    app.state.seen = seen
    mount_frontend(app, static_dir)
    return app


def _collect_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


# Page scripts run under the app's CSP (no eval): predicates are written as functions.

def _fitted(page: Any, hook: str) -> dict[str, float]:
    """The image of a viewport (``imageExtent`` or ``priorImageExtent``) fits its canvas:
    wholly inside it, touching two opposite edges, centred."""
    page.wait_for_function(
        f"() => {{ const e = window.__rdc.{hook}(); return e && e.canvasWidth > 0"
        " && e.width <= e.canvasWidth + 2 && e.height <= e.canvasHeight + 2"
        " && Math.max(e.width / e.canvasWidth, e.height / e.canvasHeight) > 0.97; }",
        timeout=10_000)
    extent: dict[str, float] = page.evaluate(f"window.__rdc.{hook}()")
    assert abs(extent["left"] * 2 + extent["width"] - extent["canvasWidth"]) < 4, extent
    assert abs(extent["top"] * 2 + extent["height"] - extent["canvasHeight"]) < 4, extent
    return extent


# Tests -------------------------------------------------------------------------------
def test_unbuilt_front_end_answers_503(tmp_path: Path) -> None:
    app = FastAPI()
    mount_frontend(app, tmp_path / "missing")
    client = TestClient(app)
    for path in ("/", "/assets/index.js"):
        r = client.get(path)
        assert r.status_code == 503, path
        assert "not built" in r.text and "./bootstrap.sh" in r.text


def test_headers_of_the_built_front_end(static_dir: Path) -> None:
    client = TestClient(_stub_app(static_dir))
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp.split("style-src-attr")[0]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in r.text, "no inline scripts"
    wasm = next((static_dir / "assets").glob("*.wasm"))
    r = client.get(f"/assets/{wasm.name}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/wasm"
    assert "immutable" in r.headers["cache-control"]
    assert client.get("/assets/nope.js").status_code == 404


def test_login_page_renders_without_console_errors(static_dir: Path, browser: Any) -> None:
    with _Server(_stub_app(static_dir)) as server:
        page = browser.new_page()
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/login")
        page.wait_for_selector("[data-testid=login-form]", state="visible", timeout=15_000)
        for testid in ("login-username", "login-password", "login-totp", "login-submit"):
            assert page.get_by_test_id(testid).is_visible(), testid
        page.wait_for_timeout(300)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / "login.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        assert errors == []

        # The API's message is shown as text, never interpreted as HTML.
        page.get_by_test_id("login-username").fill("reader")
        page.get_by_test_id("login-password").fill("secret")
        page.get_by_test_id("login-totp").fill("123456")
        page.get_by_test_id("login-submit").click()
        error = page.get_by_test_id("login-error")
        error.wait_for(state="visible", timeout=10_000)
        assert "Wrong code <img" in error.inner_text()
        assert page.evaluate("window.__xss") is None
        page.close()


def test_worklist_rows_countdown_and_claim(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/worklist")
        row = page.locator("[data-testid=worklist-row][data-study-id='1']")
        row.wait_for(timeout=15_000)
        assert row.get_by_test_id("worklist-patient").inner_text().startswith("<img")
        assert row.get_by_test_id("worklist-ai-critical").is_visible()
        # Priorities by name, not number; the study's own date and DICOM details.
        signed = page.locator("[data-testid=worklist-row][data-study-id='5']")
        assert row.get_by_test_id("worklist-priority").inner_text() == "STAT"
        assert signed.get_by_test_id("worklist-priority").inner_text() == "AI CRITICAL"
        assert row.get_by_test_id("worklist-study-date").inner_text() == "2026-01-01"
        assert row.get_by_test_id("worklist-age-sex").inner_text() == "66y F"
        assert row.get_by_test_id("worklist-accession").inner_text() == "ACC-77"
        assert row.get_by_test_id("worklist-body-part").inner_text() == "HEAD"
        headers = page.locator("[data-testid=worklist-table] th").all_inner_texts()
        for column in ("Age/Sex", "Accession", "Body part", "Study date"):
            assert column in headers, headers
        # A signed study offers its report's PDF, and no claim.
        pdf = signed.get_by_test_id("worklist-pdf")
        assert pdf.get_attribute("href") == "/api/reports/4/pdf"
        assert signed.get_by_test_id("worklist-claim").count() == 0

        # The status filter has "all"; the site filter is a list of the user's sites.
        status = page.get_by_test_id("filter-status")
        assert status.input_value() == "open"
        assert "all" in status.locator("option").evaluate_all("os => os.map(o => o.value)")
        status.select_option("all")
        page.wait_for_function("() => document.querySelector('[data-testid=filter-site]')"
                               ".options.length === 3")
        site = page.get_by_test_id("filter-site")
        assert page.evaluate("document.querySelector('[data-testid=filter-site]').tagName") \
            == "SELECT"
        assert site.locator("option").all_inner_texts() == [
            "All sites", "County A Hospital", "County B <b>Hospital</b>"]
        site.select_option("county-b")
        page.wait_for_function("() => document.querySelector('[data-testid=worklist-row]')")
        page.wait_for_timeout(300)
        last = app.state.seen["worklist_queries"][-1]
        assert last["status"] == "all" and last["site"] == "county-b", last
        site.select_option("")
        status.select_option("open")
        page.wait_for_timeout(300)
        countdown = row.get_by_test_id("worklist-countdown")
        first = countdown.inner_text()
        page.wait_for_function(
            "t => document.querySelector('[data-testid=worklist-countdown]').textContent !== t",
            arg=first, timeout=5_000)
        page.get_by_test_id("filter-mine").check()
        page.wait_for_function(
            "() => document.querySelector('[data-testid=worklist-row]') !== null")
        row.get_by_test_id("worklist-claim").click()
        page.wait_for_timeout(500)
        assert app.state.seen["claim_csrf"] == "csrf-1"
        assert app.state.seen["worklist_query"]["mine"] == "1"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "worklist.png"))
        row.get_by_test_id("worklist-open").click()
        page.wait_for_selector("[data-testid=viewport][data-rendered=true]", timeout=60_000)
        assert page.evaluate("window.__xss") is None
        assert errors == []
        page.close()


def test_study_viewer_renders_an_image(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/study/1")
        page.wait_for_selector("[data-testid=viewport][data-rendered=true]", timeout=60_000)
        page.evaluate("window.__rdc.viewportReady")
        assert page.evaluate("window.__rdc.renderedImageCount") >= 1
        page.wait_for_function("() => window.__rdc.nonBlankPixelCount() > 100", timeout=20_000)

        # Patient-supplied text is text.
        assert page.get_by_test_id("study-patient-name").inner_text().startswith("<img")
        assert page.evaluate("window.__xss") is None
        assert page.get_by_test_id("study-priority").inner_text() == "STAT"
        assert page.get_by_test_id("study-age-sex").inner_text().strip(" ·") == "66y F"

        # CT gets the CT window presets (and no "Default" of radiographs).
        presets = page.get_by_test_id("wl-presets").locator("button").evaluate_all(
            "bs => bs.map(b => b.dataset.testid)")
        assert presets == ["wl-preset-lung", "wl-preset-mediastinum", "wl-preset-bone",
                           "wl-preset-brain"]
        # The overlay text has a dark, semi-transparent backing.
        backing = page.evaluate(
            "getComputedStyle(document.querySelector('[data-testid=viewport-wl]'))"
            ".backgroundColor")
        alpha = float(backing.rsplit(",", 1)[1].strip(" )")) if backing.startswith("rgba") \
            else 1.0
        assert backing.startswith("rgba(0, 0, 0") and 0.3 <= alpha < 1, backing

        # Window presets change the VOI; stack scrolling with the keyboard.
        page.get_by_test_id("wl-preset-lung").click()
        page.wait_for_function("() => document.querySelector('[data-testid=viewport-wl]')"
                               ".textContent === 'W 1500 L -600'")
        before = page.evaluate("window.__rdc.getViewport().getCurrentImageIdIndex()")
        page.get_by_test_id("viewport").focus()
        page.keyboard.press("ArrowDown")
        page.wait_for_function(
            f"() => window.__rdc.getViewport().getCurrentImageIdIndex() === {before + 1}")

        # Accept an AI finding; edit and save the report (CSRF header on both).
        page.get_by_test_id("ai-finding-accept").click()
        page.wait_for_selector("[data-testid=ai-finding][data-review=accepted]")
        assert page.get_by_test_id("prior-warning").is_visible()
        page.get_by_test_id("report-field-findings").fill("Left frontal hemorrhage.")
        page.keyboard.press("Control+s")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=report-status]').textContent"
            ".startsWith('Saved')")
        assert app.state.seen["draft"]["fields"]["findings"] == "Left frontal hemorrhage."
        assert app.state.seen["draft_csrf"] == app.state.seen["review_csrf"] == "csrf-1"
        assert app.state.seen["thumbnail_viewport"] == "128,128"

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "study.png"))
        assert errors == []

        # The sign dialog names the unresolved required field as it opens, and signing
        # stays off until it is filled in.
        page.keyboard.press("Control+Enter")
        unresolved = page.get_by_test_id("sign-unresolved")
        unresolved.wait_for(state="visible")
        assert page.get_by_test_id("sign-unresolved-field").evaluate_all(
            "ls => ls.map(l => l.dataset.field)") == ["impression"]
        assert "Impression" in unresolved.inner_text()
        assert page.get_by_test_id("sign-confirm").is_disabled()
        page.get_by_test_id("sign-cancel").click()
        assert page.evaluate("document.activeElement.dataset.field") == "impression"
        page.get_by_test_id("report-field-impression").fill("Acute hemorrhage.")

        # Sign with the passphrase (Ctrl+Enter); a wrong one is shown, then delivery status.
        page.keyboard.press("Control+Enter")
        assert page.get_by_test_id("sign-unresolved").is_hidden()
        assert page.get_by_test_id("sign-confirm").is_enabled()
        page.get_by_test_id("sign-passphrase").fill("wrong")
        page.get_by_test_id("sign-confirm").click()
        page.get_by_test_id("sign-error").wait_for(state="visible")
        assert page.get_by_test_id("sign-error").inner_text() == "wrong passphrase"
        page.get_by_test_id("sign-passphrase").fill("right")
        page.get_by_test_id("sign-confirm").click()
        page.wait_for_selector("[data-testid=delivery-item][data-state=sent]", timeout=10_000)
        assert app.state.seen["sign"] == {"passphrase": "right", "version": 1}
        assert page.get_by_test_id("report-addendum").is_visible()
        assert not page.get_by_test_id("report-sign").is_visible()
        # The signed report's PDF is one click away.
        assert page.get_by_test_id("report-pdf").get_attribute("href") == "/api/reports/3/pdf"
        page.close()


def test_ai_seg_overlay_and_a_prior_side_by_side(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/study/1")
        page.wait_for_selector("[data-testid=viewport][data-rendered=true]", timeout=60_000)

        # The AI SEG (a real highdicom SEG, bit-packed frames) is drawn over the middle
        # slice, follows the stack, and the toggle and opacity slider act on it.
        page.wait_for_function("() => window.__rdc.segOverlayPixels() > 0", timeout=20_000)
        assert page.evaluate("window.__rdc.segSliceIndices()") == [1, 2, 3]
        assert app.state.seen["instance_metadata"] == [SEG_SOP_UID]
        assert page.get_by_test_id("seg-label").inner_text() == "nodule"
        shown = page.evaluate("window.__rdc.segOverlayPixels()")
        page.get_by_test_id("viewport").focus()
        page.keyboard.press("End")  # the last slice has no mask
        page.wait_for_function("() => window.__rdc.segOverlayPixels() === 0")
        page.keyboard.press("ArrowUp")
        page.wait_for_function("() => window.__rdc.segOverlayPixels() > 0")
        toggle = page.get_by_test_id("seg-toggle")
        assert toggle.is_checked()
        toggle.uncheck()
        page.wait_for_function("() => window.__rdc.segOverlayPixels() === 0")
        toggle.check()
        page.wait_for_function("() => window.__rdc.segOverlayPixels() > 0")
        page.get_by_test_id("seg-opacity").fill("0")
        page.wait_for_function("() => window.__rdc.segOverlayPixels() === 0")
        page.get_by_test_id("seg-opacity").fill("60")
        page.wait_for_function("() => window.__rdc.segOverlayPixels() > 0")
        # Zooming in (the camera) makes the mask cover more canvas pixels.
        page.get_by_test_id("viewport").focus()
        page.keyboard.press("Home")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.wait_for_function(
            "() => window.__rdc.getViewport().getCurrentImageIdIndex() === 2")
        page.wait_for_function(f"() => window.__rdc.segOverlayPixels() === {shown}")
        page.evaluate("() => { const v = window.__rdc.getViewport();"
                      " v.setZoom(v.getZoom() * 2); v.render(); }")
        page.wait_for_function(f"() => window.__rdc.segOverlayPixels() > {shown} * 3")

        # The prior (matched by name and birth date only) opens beside the current study.
        page.get_by_test_id("prior-open").click()
        panel = page.get_by_test_id("prior-viewport")
        panel.wait_for(state="visible")
        warning = panel.get_by_test_id("prior-warning")
        assert warning.is_visible()
        assert warning.inner_text().endswith(
            "matched by name and birth date only: check it is the same patient")
        # The title shows the site's id at once and its name when the prior's own study
        # has been fetched: wait for the name rather than race that request.
        page.wait_for_function(
            "() => (document.querySelector('[data-testid=prior-title]')?.textContent ?? '')"
            ".includes('County B')", timeout=20_000)
        title = panel.get_by_test_id("prior-title").inner_text()
        assert "County B" in title and "2025-01-01" in title and "CT head" in title
        page.wait_for_selector("[data-testid=prior-viewport-image][data-rendered=true]",
                               timeout=60_000)
        page.wait_for_function("() => window.__rdc.priorNonBlankPixelCount() > 100",
                               timeout=20_000)
        assert app.state.seen["prior_opened"]
        assert page.evaluate("window.__rdc.nonBlankPixelCount()") > 100
        assert page.url.endswith("#/study/1")
        # Opening the prior refits the current image (zoomed in above) to its half.
        beside = _fitted(page, "imageExtent")
        _fitted(page, "priorImageExtent")

        # Each viewport keeps its own slice and window.
        main_index = page.evaluate("window.__rdc.getViewport().getCurrentImageIdIndex()")
        prior_index = page.evaluate("window.__rdc.getPriorViewport().getCurrentImageIdIndex()")
        page.get_by_test_id("prior-viewport-image").click()
        page.keyboard.press("ArrowDown")
        page.wait_for_function("() => window.__rdc.getPriorViewport().getCurrentImageIdIndex()"
                               f" === {prior_index + 1}")
        page.get_by_test_id("wl-preset-bone").click()
        page.wait_for_function("() => document.querySelector('[data-testid=prior-viewport-wl]')"
                               ".textContent === 'W 2000 L 300'")
        assert page.evaluate(
            "window.__rdc.getViewport().getCurrentImageIdIndex()") == main_index
        assert page.get_by_test_id("viewport-wl").inner_text() != "W 2000 L 300"
        page.get_by_test_id("viewport").click()
        page.get_by_test_id("wl-preset-lung").click()
        page.wait_for_function("() => document.querySelector('[data-testid=viewport-wl]')"
                               ".textContent === 'W 1500 L -600'")
        assert page.get_by_test_id("prior-viewport-wl").inner_text() == "W 2000 L 300"
        fitted = page.evaluate("window.__rdc.segOverlayPixels()")
        page.evaluate("() => { const v = window.__rdc.getViewport();"
                      " v.setZoom(v.getZoom() * 2); v.render(); }")
        page.wait_for_function(f"() => window.__rdc.segOverlayPixels() > {fitted} * 2")
        zoomed = page.evaluate("window.__rdc.segOverlayPixels()")
        page.get_by_test_id("viewer-reset").click()  # acts on the main viewport only
        page.wait_for_function(
            "() => window.__rdc.segOverlayPixels() > 0"
            f" && window.__rdc.segOverlayPixels() < {zoomed}")
        assert page.get_by_test_id("prior-viewport-wl").inner_text() == "W 2000 L 300"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "study-prior-seg.png"))

        page.get_by_test_id("prior-close").click()
        page.wait_for_selector("[data-testid=prior-viewport]", state="detached")
        assert page.evaluate("window.__rdc.getPriorViewport()") is None
        # Closing it gives the current image its whole width back, fitted again.
        alone = _fitted(page, "imageExtent")
        assert alone["width"] > beside["width"] * 1.4, (alone, beside)
        assert page.evaluate("window.__xss") is None
        assert errors == []
        page.close()


_CHART_LOADED = ("() => { const i = document.querySelector('[data-testid=dashboard-chart]');"
                 " return i && i.complete && i.naturalWidth > 0; }")


def test_admin_adds_a_user_and_disables_one(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir, roles=("admin",))
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _collect_errors(page)
        page.on("dialog", lambda d: d.accept())  # the confirm() before disable / reset
        # An administrator reads no patient data: "/" lands on account management, and
        # neither the worklist nor a study is offered.
        page.goto(f"{server.url}/")
        page.wait_for_function("() => location.hash === '#/admin'", timeout=15_000)
        assert page.get_by_test_id("nav-worklist").count() == 0
        page.goto(f"{server.url}/#/worklist")
        page.wait_for_function("() => location.hash === '#/admin'", timeout=15_000)
        page.goto(f"{server.url}/#/study/1")
        page.get_by_test_id("page-forbidden").wait_for(timeout=15_000)
        page.get_by_test_id("nav-admin").click()
        users = page.get_by_test_id("admin-users")
        users.locator("[data-testid=admin-user-row][data-user-id='2']").wait_for(timeout=15_000)
        assert page.get_by_test_id("admin-user-row").count() == 2
        # A display name with markup is text; the admin's own row offers no Disable.
        other = users.locator("[data-testid=admin-user-row][data-user-id='2']")
        assert other.get_by_test_id("admin-user-name").inner_text().startswith("<img")
        own = users.locator("[data-testid=admin-user-row][data-user-id='1']")
        assert own.get_by_test_id("admin-disable").count() == 0

        # Client-side check first, then a server error shown as text.
        page.get_by_test_id("admin-add-username").fill("tech.b")
        page.get_by_test_id("admin-add-display-name").fill("Tech B")
        page.get_by_test_id("admin-add-password").fill("short")
        page.get_by_test_id("admin-add-role-site_user").check()
        page.get_by_test_id("admin-add-submit").click()
        error = page.get_by_test_id("admin-error")
        error.wait_for(state="visible")
        assert "at least 12 characters" in error.inner_text()
        page.get_by_test_id("admin-add-password").fill("correct horse battery")
        page.get_by_test_id("admin-add-submit").click()
        page.wait_for_function("() => document.querySelector('[data-testid=admin-error]')"
                               ".textContent.includes('is taken')")
        assert error.inner_text() == "username <b>tech.b</b> is taken"

        # Add a reader with two sites: the provisioning URI is shown once, as text.
        page.get_by_test_id("admin-add-username").fill("dr.new")
        page.get_by_test_id("admin-add-display-name").fill("Dr New")
        page.get_by_test_id("admin-add-role-site_user").uncheck()
        page.get_by_test_id("admin-add-role-radiologist").check()
        page.get_by_test_id("admin-add-sites").fill("county-a, county-b")
        page.get_by_test_id("admin-add-submit").click()
        uri = page.get_by_test_id("admin-provisioning-uri")
        uri.wait_for(state="visible", timeout=10_000)
        assert uri.inner_text().startswith("otpauth://totp/RDC:dr.new?secret=")
        assert error.is_hidden()
        assert app.state.seen["add_user"] == {
            "username": "dr.new", "display_name": "Dr New", "password": "correct horse battery",
            "roles": ["radiologist"], "sites": ["county-a", "county-b"], "all_sites": False}
        assert app.state.seen["add_user_csrf"] == "csrf-1"
        page.locator("[data-testid=admin-user-row][data-username='dr.new']").wait_for()
        assert page.get_by_test_id("admin-add-username").input_value() == ""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "admin.png"), full_page=True)

        # Disable, then enable again, with the CSRF header.
        other.get_by_test_id("admin-disable").click()
        page.wait_for_selector("[data-testid=admin-user-row][data-user-id='2'][data-state=disabled]")
        assert app.state.seen["admin_actions"][-1] == (2, "disable", "csrf-1")
        other.get_by_test_id("admin-enable").click()
        page.wait_for_selector("[data-testid=admin-user-row][data-user-id='2'][data-state=enabled]")
        other.get_by_test_id("admin-reset-totp").click()
        page.wait_for_function(
            "() => document.querySelector('[data-testid=admin-provisioning-uri]')"
            ".textContent.endsWith('tech.b?secret=NEW')")
        assert app.state.seen["admin_actions"] == [
            (2, "disable", "csrf-1"), (2, "enable", "csrf-1"), (2, "reset-totp", "csrf-1")]
        assert page.evaluate("window.__xss") is None
        # Chromium logs every 4xx answer; the one 409 above was asked for.
        assert [e for e in errors if "status of 409" not in e] == []
        page.close()


def test_dashboard_table_and_chart(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)  # a radiologist: the dashboard, not the admin page
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/worklist")
        page.get_by_test_id("nav-dashboard").click()
        page.get_by_test_id("dashboard-row").first.wait_for(timeout=15_000)
        assert page.get_by_test_id("nav-admin").count() == 0
        assert page.get_by_test_id("dashboard-row").count() == 3
        assert app.state.seen["dashboard_days"] == 30
        first = page.get_by_test_id("dashboard-row").first.inner_text()
        for text in ("county-a", "CT", "complete \u2192 signed", "12", "14.5", "41.3", "95.0"):
            assert text in first, text
        assert "<i>county-b</i>" in page.get_by_test_id("dashboard-table").inner_text()
        page.wait_for_function(_CHART_LOADED, timeout=10_000)
        assert app.state.seen["chart_days"] == 30
        # However few rows, the chart is readable (the server draws it at least 300 px
        # high; the page never shows it as a sliver).
        assert page.get_by_test_id("dashboard-chart").bounding_box()["height"] >= 240

        page.get_by_test_id("dashboard-days").select_option("7")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=dashboard-row]').length === 2")
        page.wait_for_function(_CHART_LOADED, timeout=10_000)
        assert app.state.seen["dashboard_days"] == app.state.seen["chart_days"] == 7
        assert page.get_by_test_id("dashboard-chart").get_attribute("src").endswith("days=7")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

        # The admin page is not offered, and says so when typed in.
        page.goto(f"{server.url}/#/admin")
        page.get_by_test_id("page-forbidden").wait_for()
        assert page.evaluate("window.__xss") is None
        assert errors == []
        page.close()


def test_ecg_queue_tracing_calipers_and_edit(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir, roles=("cardiologist",))
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/worklist")
        page.get_by_test_id("nav-ecg").click()
        row = page.locator("[data-testid=ecg-row][data-ecg-id='9']")
        row.wait_for(timeout=15_000)
        assert row.get_by_test_id("ecg-critical").is_visible()
        assert "<b>ST elevation</b>" in row.get_by_test_id("ecg-statements").inner_text()
        row.get_by_test_id("ecg-open").click()

        # The 12-lead tracing is drawn on the ECG paper (non-blank trace pixels).
        page.wait_for_selector("[data-testid=ecg-canvas][data-rendered=true]", timeout=15_000)
        assert page.evaluate("window.__rdc.ecgNonBlankPixels()") > 1000
        assert page.get_by_test_id("ecg-quality-warning").is_visible()
        problems = page.get_by_test_id("ecg-lead-problem")
        assert problems.count() == 1 and problems.inner_text() == "V3: flat: 0.01 mV peak to peak"
        assert "limb-lead reversal" in page.get_by_test_id("ecg-record-problem").inner_text()
        unmeasured = page.get_by_test_id("ecg-not-measurable-qt_ms")
        assert unmeasured.inner_text() == ("Not measurable: T wave end not found on the "
                                           "median beat")
        assert page.get_by_test_id("ecg-measurement-qt_ms").input_value() == ""
        assert "QT" in page.get_by_test_id("ecg-needs-human").inner_text()
        previous = page.get_by_test_id("ecg-previous")
        assert "Old sinus rhythm" in previous.inner_text()
        assert "64" in previous.inner_text()
        canvas = page.get_by_test_id("ecg-canvas")
        width = canvas.bounding_box()["width"]
        page.get_by_test_id("ecg-zoom-in").click()
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-canvas]')"
                               f".getBoundingClientRect().width > {width} * 1.2")
        page.get_by_test_id("ecg-zoom-out").click()
        page.wait_for_function("() => Math.abs(document.querySelector('[data-testid=ecg-canvas]')"
                               f".getBoundingClientRect().width - {width}) < 2")

        # Calipers: one second apart on the paper (25 mm) reads 1000 ms, 60 /min.
        px_per_mm = float(canvas.get_attribute("data-px-per-mm") or 0)
        assert px_per_mm > 1
        page.get_by_test_id("ecg-calipers").click()
        canvas.click(position={"x": 100, "y": 60})
        canvas.click(position={"x": 100 + 25 * px_per_mm, "y": 60})
        readout = page.get_by_test_id("ecg-caliper-readout")
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-caliper-dt]')")
        dt = int(readout.get_attribute("data-dt-ms") or 0)
        assert abs(dt - 1000) <= 10, dt
        assert "Δt" in readout.inner_text() and "/min" in readout.inner_text()

        # Paper speed and gain: at 50 mm/s the paper is twice as long and 25 mm are
        # 500 ms; at 20 mm/mV the rows are taller; back to the standard 25 and 10.
        size = canvas.bounding_box()
        page.get_by_test_id("ecg-speed").select_option("50")
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-canvas]')"
                               ".dataset.speed === '50'")
        assert canvas.bounding_box()["width"] > size["width"] * 1.8
        canvas.click(position={"x": 100, "y": 60})
        canvas.click(position={"x": 100 + 25 * px_per_mm, "y": 60})
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-caliper-dt]')")
        assert abs(int(readout.get_attribute("data-dt-ms") or 0) - 500) <= 10
        page.get_by_test_id("ecg-gain").select_option("20")
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-canvas]')"
                               ".dataset.gain === '20'")
        assert canvas.bounding_box()["height"] > size["height"] * 1.5
        assert page.evaluate("window.__rdc.ecgNonBlankPixels()") > 1000
        page.get_by_test_id("ecg-gain").select_option("5")
        page.get_by_test_id("ecg-speed").select_option("25")
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-canvas]')"
                               ".dataset.speed === '25'")
        page.get_by_test_id("ecg-calipers").click()

        # Measurements read as a cardiologist writes them; the header says age and sex.
        labels = page.get_by_test_id("ecg-measurements").locator("label").all_inner_texts()
        assert labels[:5] == ["Heart rate (bpm)", "PR (ms)", "QRS (ms)", "QT (ms)",
                              "QTc Bazett (ms)"], labels
        assert "QTc Fridericia (ms)" in labels and "QRS axis (°)" in labels
        assert not [x for x in labels if "_" in x or x.endswith(" ms")]
        assert page.get_by_test_id("ecg-age-sex").inner_text().strip() == "66y · female"

        # Edit a statement, remove the critical one, add one, change a measurement, save.
        first = page.get_by_test_id("ecg-statement").first
        first.get_by_test_id("ecg-statement-text").fill("Sinus rhythm, edited")
        page.locator("[data-testid=ecg-statement][data-code=stemi]").get_by_test_id(
            "ecg-statement-remove").click()
        page.get_by_test_id("ecg-statement-add-code").fill("lvh")
        page.get_by_test_id("ecg-statement-add-text").fill("Left ventricular hypertrophy")
        page.get_by_test_id("ecg-statement-add").click()
        page.get_by_test_id("ecg-measurement-pr_ms").fill("210")
        page.get_by_test_id("ecg-save").click()
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-save-status]')"
                               ".textContent.startsWith('Saved')")
        assert app.state.seen["ecg_put_csrf"] == "csrf-1"
        put = app.state.seen["ecg_put"]
        assert put["measurements"] == {"pr_ms": 210}
        assert [(s["code"], s["text"], s["critical"]) for s in put["statements"]] == [
            ("sinus_rhythm", "Sinus rhythm, edited", False),
            ("lvh", "Left ventricular hypertrophy", False)]
        # The report panel of the ECG's study is there.
        page.get_by_test_id("report-field-findings").wait_for()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "ecg-stand-in.png"), full_page=True)

        # Signing in the panel makes the header's status "signed" at once.
        status = page.get_by_test_id("ecg-report-status")
        assert status.inner_text() in ("unread", "reported")  # the stand-in has a draft
        page.get_by_test_id("report-field-findings").fill("Sinus rhythm.")
        page.get_by_test_id("report-field-impression").fill("Normal ECG.")
        page.get_by_test_id("report-sign").click()
        page.get_by_test_id("sign-passphrase").fill("right")
        page.get_by_test_id("sign-confirm").click()
        page.wait_for_function("() => document.querySelector('[data-testid=ecg-report-status]')"
                               ".textContent === 'signed'", timeout=10_000)
        assert page.evaluate("window.__xss") is None
        assert errors == []
        page.close()


def test_site_clerk_reads_the_signed_report_and_its_pdf(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir, roles=("site_user",))
    with _Server(app) as server:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/worklist")
        signed = page.locator("[data-testid=worklist-row][data-study-id='5']")
        signed.wait_for(timeout=15_000)
        # A clerk reads; claiming is the readers'.
        assert page.get_by_test_id("worklist-claim").count() == 0
        pdf = signed.get_by_test_id("worklist-pdf")
        assert pdf.get_attribute("href") == "/api/reports/4/pdf"
        assert pdf.get_attribute("target") == "_blank"
        with page.expect_popup() as popup:
            pdf.click()
        popup.value.wait_for_load_state()
        assert app.state.seen.get("pdf_opened")
        popup.value.close()
        # The study's report panel shows the signed report, read-only, with its PDF.
        signed.get_by_test_id("worklist-open").click()
        page.get_by_test_id("report-field-impression").wait_for(timeout=30_000)
        assert app.state.seen.get("signed_report_read")
        assert app.state.seen.get("lab_critical_polled")  # the county's critical-value banner
        assert page.get_by_test_id("report-field-impression").input_value() == "Normal hand."
        assert page.get_by_test_id("report-field-impression").get_attribute("readonly") \
            is not None
        for hidden in ("report-sign", "report-save", "report-addendum", "study-claim"):
            assert not page.get_by_test_id(hidden).is_visible(), hidden
        assert page.get_by_test_id("report-pdf").get_attribute("href") == "/api/reports/4/pdf"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "clerk-signed-report.png"))
        assert errors == []
        page.close()
