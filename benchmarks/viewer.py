"""Time to first image of a 400-slice CT through the web app, against Orthanc direct.

What a viewer does to show the first image of a study, timed from the first
request to the last byte of the first frame:

(a) baseline, Orthanc's own DICOMweb on loopback with its password: QIDO series
    search, series metadata (WADO-RS), first frame;
(b) the center's web app (a real ``rdc web`` process, authenticated, per-site
    checked): the study view (``GET /api/studies/{id}``: series and instances in
    order, AI findings, priors, audited), series metadata and first frame through
    the DICOMweb proxy.

Also timed: every frame of the series fetched one by one, as a stack viewer
prefetches them.  Printed: p50/p95 and the ratios (b)/(a).

    .venv/bin/python -m benchmarks.viewer [--slices 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.harness import median, wait_port
from core.db import get_database
from core.models import Study
from core.orthanc_client import OrthancClient
from core.sites import SiteSpec, add_site
from devkit.center import Center
from devkit.samples import write_ct_series
from viewer.auth import api_token

console = Console()


def _first_image(http: httpx.Client, study_uid: str, series_uid: str, first_sop: str,
                 study_view: str | None) -> float:
    t0 = time.perf_counter()
    if study_view is not None:
        http.get(study_view).raise_for_status()
    else:
        http.get(f"/dicom-web/studies/{study_uid}/series",
                 headers={"Accept": "application/dicom+json"}).raise_for_status()
    http.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
             headers={"Accept": "application/dicom+json"}).raise_for_status()
    r = http.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/"
                 f"{first_sop}/frames/1", headers={"Accept": "multipart/related; "
                                                   "type=application/octet-stream"})
    r.raise_for_status()
    assert len(r.content) > 512 * 512
    return (time.perf_counter() - t0) * 1000


def _all_frames(http: httpx.Client, study_uid: str, series_uid: str, sops: list[str]) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:  # a browser's connections per host
        list(pool.map(lambda sop: http.get(
            f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop}/frames/1",
            headers={"Accept": "multipart/related; type=application/octet-stream"},
        ).raise_for_status(), sops))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="rdc-bench-viewer-")
    home = Path(tmp.name)
    # A throw-away center (its own home, ports, SQLite database) with its default timings.
    center = Center(home=home, db_url="", broker_url="", taken_ports=set(),
                    quick_timers=False)
    env = center.env
    settings = center.settings
    center.start_orthanc()
    web: subprocess.Popen[bytes] | None = None
    try:
        console.print(f"generating a {args.slices}-slice CT (512x512, 16 bit)...")
        ct = write_ct_series(home / "ct", slices=args.slices)
        with OrthancClient.from_settings(settings) as client, Progress(console=console) as p:
            task = p.add_task("storing in Orthanc", total=len(ct.paths))
            with ThreadPoolExecutor(4) as pool:
                for _ in pool.map(lambda path: client.upload_instance(path.read_bytes()),
                                  ct.paths):
                    p.advance(task)
        sops = [str(pydicom.dcmread(pth, stop_before_pixels=True).SOPInstanceUID)
                for pth in ct.paths]
        db = get_database(settings.database_url)
        with db.session() as s:
            add_site(s, SiteSpec(id="county-a", name="County A", ae_title="COUNTY_A",
                                 host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                     actor="bench")
            study = Study(site_id="county-a", study_uid=ct.study_uid, patient_id="P1",
                          modalities=["CT"], state="complete", stored_instances=len(sops),
                          completed_at=datetime.now(UTC))
            s.add(study)
            s.flush()
            study_id = study.id
        web = subprocess.Popen([sys.executable, "-m", "rdc", "web"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(settings.web_port, 60, web, "the web app")
        user, password = settings.orthanc_credentials()
        direct = httpx.Client(base_url=settings.orthanc_url, auth=(user, password), timeout=60)
        app = httpx.Client(base_url=f"http://127.0.0.1:{settings.web_port}", timeout=60,
                           headers={"Authorization": f"Bearer {api_token(settings)}"})
        results: dict[str, Any] = {}
        for name, http, view in (("(a) Orthanc direct", direct, None),
                                 ("(b) web app", app, f"/api/studies/{study_id}")):
            _first_image(http, ct.study_uid, ct.series_uid, sops[0], view)  # warm
            times = [_first_image(http, ct.study_uid, ct.series_uid, sops[0], view)
                     for _ in range(args.repeat)]
            stack_s = _all_frames(http, ct.study_uid, ct.series_uid, sops)
            results[name] = {"first_image_p50_ms": round(median(times), 1),
                             "first_image_max_ms": round(max(times), 1),
                             "all_frames_s": round(stack_s, 2),
                             "frames_per_s": round(len(sops) / stack_s, 1)}
        a, b = results["(a) Orthanc direct"], results["(b) web app"]
        table = Table("path", "first image p50 ms", "max ms", f"all {len(sops)} frames s",
                      "frames/s")
        for name, r in results.items():
            table.add_row(name, str(r["first_image_p50_ms"]), str(r["first_image_max_ms"]),
                          str(r["all_frames_s"]), str(r["frames_per_s"]))
        console.print(table)
        ratios = {"first_image (b)/(a)": round(b["first_image_p50_ms"]
                                               / a["first_image_p50_ms"], 2),
                  "all_frames (b)/(a)": round(b["all_frames_s"] / a["all_frames_s"], 2)}
        console.print(f"ratios (time, lower is better): {ratios}")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "viewer.json").write_text(json.dumps(
            {"slices": len(sops), "results": results, "ratios": ratios,
             "created": datetime.now(UTC).isoformat()}, indent=2))
        return 0
    finally:
        if web is not None:
            web.terminate()
            web.wait(30)
        center.stop_orthanc()
        tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
