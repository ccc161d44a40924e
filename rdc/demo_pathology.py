"""The pathology part of ``rdc demo``: the three ways a county lab's slides reach the
center, each ending as a case in the pathologists' worklist.

1. An imported case of three slides: synthetic pyramidal TIFFs (the first one at full
   scanner size, 40,960 x 30,720 by default) through ``pathology.importer``, as a lab
   that scans with a non-DICOM scanner does with ``rdc pathology import``;
2. A DICOM WSI sent with DCMTK's storescu through the gateway, as the demo sends its
   other studies;
3. A frozen section (intra-operative), also over C-STORE, which the intake marks
   ``frozen`` (it sorts first and pages the pathologist on duty).

Every run uses new accession numbers, so running the demo twice makes new cases rather
than adding slides to the last run's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from core.db import get_database
from core.errors import ConfigurationError, InvalidInput
from core.models import PathologyCase, PathologySlide
from core.settings import Settings
from devkit.dcmtk import storescu
from devkit.samples import chunks
from devkit.synthetic_slide import write_synthetic_slide
from devkit.wsi_samples import synthetic_wsi_dicom
from pathology.cases import worklist
from pathology.importer import import_slides

#: What the issue asks of the demo's slide: a scanner's full size at 0.25 um/px.
FULL_SLIDE = (40960, 30720)


#: The smallest demo slide (the importer's converter and the quality gate need a pyramid).
MIN_SIDE = 1024
MAX_SIDE = 200_000


def parse_slide_size(text: str) -> tuple[int, int]:
    """``"40960x30720"`` -> (40960, 30720); InvalidInput naming the option otherwise."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidInput(f"--slide-size: expected WIDTHxHEIGHT such as 40960x30720, "
                           f"got {text!r}")
    width, height = int(parts[0]), int(parts[1])
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidInput(f"--slide-size: each side must be {MIN_SIDE} to {MAX_SIDE} "
                           f"pixels, got {width}x{height}")
    return width, height


@dataclass(frozen=True)
class DemoCase:
    """One case the demo makes: its accession, how its slides arrive, how many."""

    accession: str
    how: str
    slides: int
    urgency: str


def demo_accessions(now: datetime) -> dict[str, str]:
    """This run's accession numbers (DICOM SH: at most 16 characters)."""
    stamp = now.strftime("%d%H%M%S")
    return {"import": f"DP-IMP-{stamp}", "cstore": f"DP-WSI-{stamp}",
            "frozen": f"DP-FS-{stamp}"}


def run_pathology_demo(settings: Settings, console: Console, *, site_id: str,
                       calling_ae: str, timeout: float,
                       slide_size: tuple[int, int] = FULL_SLIDE) -> int:
    """Send the three cases and wait until the worklist lists them, graded by the
    quality gate; 0 when all three are there, 1 otherwise (the reason printed)."""
    work = settings.home / "demo" / "pathology"
    accessions = demo_accessions(datetime.now(UTC))
    cases = [DemoCase(accessions["import"], "imported (rdc pathology import)", 3, "routine"),
             DemoCase(accessions["cstore"], "DICOM WSI over C-STORE", 1, "routine"),
             DemoCase(accessions["frozen"], "frozen section over C-STORE", 1, "frozen")]

    # The C-STORE'd slides first: the center takes them in (the site's inactivity
    # window, their intake) while the large slide is generated.  Clean slides, so that
    # these cases pass the quality gate.
    console.print("pathology: generating DICOM WSI slides (a biopsy and a frozen section)...")
    wsi = synthetic_wsi_dicom(work / "wsi", seed=11, accession=accessions["cstore"],
                              patient_id="DEMO-PATH-2", stain="H&E", organ="breast",
                              blur=False, pen=False)
    frozen = synthetic_wsi_dicom(work / "frozen", seed=12, accession=accessions["frozen"],
                                 patient_id="DEMO-PATH-3", stain="H&E", frozen=True,
                                 organ="lung", blur=False, pen=False)
    for label, files in (("DICOM WSI", wsi), ("frozen section", frozen)):
        sent = 0
        for batch in chunks(files, 25):
            result = storescu(batch, host="127.0.0.1", port=settings.gateway_port,
                              calling_ae=calling_ae, called_ae=settings.gateway_ae)
            if result.rejected or result.failed:
                raise ConfigurationError(f"the gateway refused the demo {label}:\n"
                                         f"{result.output[-800:]}")
            sent += len(result.succeeded)
        console.print(f"pathology: sent the {label} ({sent} instances) with storescu")

    # The imported case: a clean full-size slide, a clean small one, and a small one
    # with blur and pen marks that the quality gate flags for rescanning.
    width, height = slide_size
    small = (max(MIN_SIDE, width // 4), max(MIN_SIDE, height // 4))
    t0 = time.monotonic()
    folder = work / "import"
    folder.mkdir(parents=True, exist_ok=True)
    slides = [folder / f"A1-{n}.tiff" for n in (1, 2, 3)]
    write_synthetic_slide(slides[0], width=width, height=height, seed=21, blur=False,
                          pen=False)
    console.print(f"pathology: generated a {width} x {height} slide "
                  f"({width * height / 1e6:.0f} megapixels) in {time.monotonic() - t0:.0f} s")
    write_synthetic_slide(slides[1], width=small[0], height=small[1], seed=22, blur=False,
                          pen=False)
    write_synthetic_slide(slides[2], width=small[0], height=small[1], seed=24, blur=True,
                          pen=True)
    db = get_database(settings.database_url)
    t0 = time.monotonic()
    imported = import_slides(
        db, settings, slides, site_id=site_id, accession=accessions["import"],
        specimen="Colon, sigmoid, biopsy", stain="H&E", block="A1", part="A",
        organ="colon", patient_id="DEMO-PATH-1", patient_name="DEMO^PATHOLOGY",
        actor="demo")
    console.print(f"pathology: imported 3 slides in {time.monotonic() - t0:.0f} s "
                  f"(study {imported.study_id})")
    return _wait_for_cases(settings, console, site_id, cases, timeout)


def _state(settings: Settings, site_id: str, cases: list[DemoCase],
           ) -> dict[str, tuple[int, int]]:
    """Per accession: (slides, slides graded by the quality gate)."""
    db = get_database(settings.database_url)
    out: dict[str, tuple[int, int]] = {}
    with db.session() as s:
        for case in cases:
            row = s.scalar(select(PathologyCase).where(
                PathologyCase.site_id == site_id,
                PathologyCase.accession_number == case.accession))
            if row is None:
                continue
            slides = list(s.scalars(select(PathologySlide).where(
                PathologySlide.case_id == row.id)))
            out[case.accession] = (len(slides),
                                   sum(1 for sl in slides if sl.qc_grade != "pending"))
    return out


def _wait_for_cases(settings: Settings, console: Console, site_id: str,
                    cases: list[DemoCase], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    busy_noted = False
    while True:
        try:
            state = _state(settings, site_id, cases)
        except OperationalError as e:
            # SQLite (the embedded default) has one writer; a long job may hold it past
            # the busy timeout.  Only this poll waits; it asks again.
            if not busy_noted:
                console.print(f"[yellow]pathology: the database is busy ({e.orig}); "
                              "waiting[/yellow]")
                busy_noted = True
            if time.monotonic() > deadline:
                console.print("[yellow]the database stayed busy[/yellow]: see `rdc status`.")
                return 1
            continue
        done = all(state.get(c.accession, (0, 0)) == (c.slides, c.slides) for c in cases)
        if done:
            break
        now = "; ".join(f"{c.accession}: {state.get(c.accession, (0, 0))[0]} of "
                        f"{c.slides} slides" for c in cases)
        if now != last and not console.is_terminal:
            console.print(f"pathology: waiting for the intake: {now}")
            last = now
        if time.monotonic() > deadline:
            console.print(f"[yellow]the pathology cases did not all arrive in time[/yellow] "
                          f"({now}): is a worker running? See `rdc status`.")
            return 1
        time.sleep(1.0)
    db = get_database(settings.database_url)
    wanted = {c.accession: c for c in cases}
    table = Table("case", "accession", "arrived as", "urgency", "slides", "stains", "QC",
                  "state", title="pathology worklist (demo cases)")
    with db.session() as s:
        listed = [c for c in worklist(s, visible_sites=None, user_id=None, site=site_id,
                                      status="all") if c.accession_number in wanted]
    for item in listed:
        table.add_row(str(item.id), item.accession_number, wanted[item.accession_number].how,
                      item.urgency, str(item.slide_count), ", ".join(item.stains), item.qc,
                      item.state)
    console.print(table)
    missing = set(wanted) - {c.accession_number for c in listed}
    if missing:
        console.print(f"[red]not in the pathology worklist[/red]: {', '.join(sorted(missing))}")
        return 1
    console.print("pathology: the cases are in the worklist (#/pathology); the QC column is "
                  "the quality gate's grade of the slides")
    return 0

