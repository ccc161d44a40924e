"""``rdc pathology``: bring slide files from a site's scanner into the center."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from core.db import get_database
from core.errors import RDCError
from rdc.console import console, err
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

pathology_app = typer.Typer(help="Pathology: import whole-slide image files.",
                            no_args_is_help=True)


@pathology_app.command("import")
def import_cmd(
    files: Annotated[list[Path], typer.Argument(
        help="Slide files (SVS, NDPI, MRXS, tiled TIFF... anything OpenSlide opens).")],
    site: Annotated[str, typer.Option("--site", help="The site the slides come from.")],
    accession: Annotated[str, typer.Option("--accession", help="The case's accession number.")],
    specimen: Annotated[str, typer.Option(help="Specimen identifier (default: accession-part"
                                               "block).")] = "",
    stain: Annotated[str, typer.Option(help="Stain, e.g. H&E.")] = "H&E",
    block: Annotated[str, typer.Option(help="Block, e.g. 1.")] = "",
    part: Annotated[str, typer.Option(help="Part, e.g. A.")] = "",
    organ: Annotated[str, typer.Option(help="Organ / site of the specimen.")] = "",
    urgency: Annotated[str, typer.Option(help="routine, stat or frozen.")] = "routine",
    patient_id: Annotated[str, typer.Option("--patient-id", help="Patient ID.")] = "",
    patient_name: Annotated[str, typer.Option("--patient-name",
                                              help="Patient name (DICOM Last^First).")] = "",
) -> None:
    """Validate every file, convert each to DICOM WSI, store them and open the case.

    Nothing is stored unless every file is good; the error names the bad file.
    """
    from pathology.importer import import_slides

    s = _settings()
    db = get_database(s.database_url)
    try:
        result = import_slides(
            db, s, files, site_id=site, accession=accession, specimen=specimen, stain=stain,
            block=block, part=part, organ=organ, urgency=urgency, patient_id=patient_id,
            patient_name=patient_name, actor="cli",
            progress=lambda msg: err.print(f"[dim]{escape(msg)}[/dim]"))
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"stored study {result.study_id} ({result.study_uid}) for site "
                  f"{result.site_id}, accession {result.accession}, priority "
                  f"{result.priority}; intake job {result.job_id} submitted", markup=False)
    for sl in result.slides:
        console.print(f"  {sl.file.name}: series {sl.series_uid}, {sl.width} x {sl.height} "
                      f"px, {sl.levels} levels, {sl.mpp:.3f} µm/px, {sl.instances} "
                      f"instance(s), converted in {sl.convert_s:.1f} s", markup=False)
