"""Import vendor slide files (SVS, NDPI, MRXS, tiled TIFF...) as a pathology study.

A county site whose scanner cannot send DICOM hands the center files instead.
The import takes exactly the path a C-STORE'd slide study takes after it: the
slides end up as DICOM WSI series in Orthanc, a complete core Study row exists
for them, and a ``pathology_intake`` job is submitted for it.

All or nothing: every file is checked before anything is converted (a batch
with one bad file is refused, naming that file and why), every converted
instance is uploaded before the database learns of any, and a failure after
the first upload deletes what was uploaded.  Only the caller's paths are read;
converted files go to a fresh temporary folder that is removed afterwards.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openslide
import tifffile
from pydicom.uid import generate_uid
from sqlalchemy import select

from core import audit, jobs
from core.db import Database
from core.errors import InvalidInput
from core.models import Study
from core.models.site import Site
from core.orthanc_client import OrthancClient, OrthancError, OrthancNotFound
from core.settings import Settings
from core.states import StudyState, check_transition
from pathology.errors import SlideImportError, WSIConversionError
from pathology.specimen import SlideIdentity, finalise_instances
from pathology.wsi_convert import SlideInfo, convert_slide, inspect_slide

log = logging.getLogger(__name__)

URGENCIES = ("routine", "stat", "frozen")
#: Study/job priority of urgent work (the gateway's STAT priority).
URGENT_PRIORITY = 9
ROUTINE_PRIORITY = 5
JOB_KIND = "pathology_intake"
MAX_ACCESSION = 16  # DICOM AccessionNumber is an SH
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImportedSlide:
    """One file, stored: its DICOM series and what the pyramid looks like."""

    file: Path
    series_uid: str
    orthanc_series_id: str
    instances: int
    width: int
    height: int
    levels: int
    mpp: float
    vendor: str
    convert_s: float


@dataclass(frozen=True)
class ImportResult:
    study_id: int
    study_uid: str
    site_id: str
    accession: str
    priority: int
    job_id: int
    slides: list[ImportedSlide] = field(default_factory=list)


def import_slides(db: Database, settings: Settings, files: Sequence[Path], *, site_id: str,
                  accession: str, specimen: str = "", stain: str = "H&E", block: str = "",
                  part: str = "", organ: str = "", urgency: str = "routine",
                  patient_id: str = "", patient_name: str = "", actor: str = "cli",
                  progress: Progress | None = None) -> ImportResult:
    """Validate, convert, store and register ``files`` as one study of ``accession``.

    Raises InvalidInput for bad arguments (unknown site, bad urgency...) and
    SlideImportError(file, reason) for a file that cannot be imported; in both
    cases nothing is left in Orthanc or in the database.
    """
    say = progress or (lambda _msg: None)
    files = [Path(f) for f in files]
    urgency = urgency.strip().lower()
    accession = accession.strip()
    _check_arguments(db, files, site_id=site_id, accession=accession, urgency=urgency)
    infos = [validate_file(f) for f in files]  # all files before any work
    for f, info in zip(files, infos, strict=True):
        say(f"{f.name}: {info.vendor}, {info.width} x {info.height} px, "
            f"{info.level_count} level(s), {info.mpp_x:.3f} µm/px")

    with db.session() as s:
        # more slides for an accession join its slide study (never, say, its CT study)
        existing = next((st for st in s.scalars(
            select(Study).where(Study.site_id == site_id, Study.accession_number == accession)
            .order_by(Study.id)) if "SM" in (st.modalities or [])), None)
        if existing is not None and patient_id and existing.patient_id \
                and patient_id != existing.patient_id:
            # one accession is one patient's case: never file slides under another
            raise InvalidInput(f"accession {accession} at {site_id} belongs to patient "
                               f"{existing.patient_id}, not {patient_id}")
        study_uid = existing.study_uid if existing is not None else str(generate_uid())
        patient_id = patient_id or (existing.patient_id if existing is not None else "")
        patient_name = patient_name or (existing.patient_name if existing is not None else "")

    frozen = urgency == "frozen"
    priority = URGENT_PRIORITY if urgency in ("stat", "frozen") else ROUTINE_PRIORITY
    uploaded: list[str] = []
    slides: list[ImportedSlide] = []
    current: Path = files[0]
    client = OrthancClient.from_settings(settings)
    try:
        first_slide = _slides_in_archive(client, study_uid) + 1
        # converted slides are as large as the originals: keep them on the center's
        # disk (under its home, like all its data), not in a possibly small /tmp
        work_root = settings.home / "tmp"
        work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="slide-import-", dir=work_root) as tmp:
            for i, (f, info) in enumerate(zip(files, infos, strict=True)):
                current = f
                number = first_slide + i
                ident = SlideIdentity(
                    patient_id=patient_id, patient_name=patient_name, accession=accession,
                    study_uid=study_uid, series_uid=str(generate_uid()),
                    specimen_id=specimen or "-".join(x for x in (accession, f"{part}{block}")
                                                     if x),
                    stain=stain, part=part, block=block, organ=organ, frozen=frozen,
                    slide_number=number, study_description="Pathology slides")
                say(f"{f.name}: converting to DICOM WSI")
                try:
                    conv = convert_slide(f, Path(tmp) / f"slide-{i}", info=info)
                    instances = finalise_instances(conv.files, ident)
                except WSIConversionError as e:
                    raise SlideImportError(f, e.reason) from e
                except (OSError, ValueError) as e:
                    raise SlideImportError(f, f"conversion failed: {e}") from e
                say(f"{f.name}: {len(instances)} instance(s) in {conv.seconds:.1f} s "
                    f"({conv.megapixels_per_s:.0f} Mpx/s); uploading")
                series_id = ""
                for path in instances:
                    answer = client.upload_instance_file(path)
                    uploaded.append(str(answer["ID"]))
                    series_id = str(answer["ParentSeries"])
                pyramid = _served_pyramid(client, f, series_id)
                slides.append(ImportedSlide(
                    file=f, series_uid=ident.series_uid, orthanc_series_id=series_id,
                    instances=len(instances), width=info.width, height=info.height,
                    levels=len(list(pyramid.get("Resolutions") or [])), mpp=float(info.mpp_x or 0),
                    vendor=info.vendor, convert_s=conv.seconds))
                say(f"{f.name}: stored, {slides[-1].levels} levels served")
        study_orthanc_id = _study_orthanc_id(client, study_uid)
        result = _register(db, site_id=site_id, accession=accession, study_uid=study_uid,
                           patient_id=patient_id, patient_name=patient_name, urgency=urgency,
                           priority=priority, organ=organ, orthanc_id=study_orthanc_id,
                           slides=slides, actor=actor, instances=len(uploaded))
    except BaseException as e:
        _remove(client, uploaded)
        if isinstance(e, SlideImportError | InvalidInput):
            raise
        if isinstance(e, OrthancError):
            raise SlideImportError(current, f"the archive refused it: {e}") from e
        raise
    finally:
        client.close()
    return result


# ---------------------------------------------------------------- checks


def _check_arguments(db: Database, files: Sequence[Path], *, site_id: str, accession: str,
                     urgency: str) -> None:
    if not files:
        raise InvalidInput("no slide files given")
    if urgency not in URGENCIES:
        raise InvalidInput(f"urgency must be one of {', '.join(URGENCIES)}, not {urgency!r}")
    if not accession:
        raise InvalidInput("an accession number is required (it names the case)")
    if len(accession) > MAX_ACCESSION or any(c in accession for c in "\\\0\r\n"):
        raise InvalidInput(f"accession {accession[:40]!r} is not a DICOM accession number "
                           f"(at most {MAX_ACCESSION} characters, no backslash)")
    with db.session() as s:
        site = s.get(Site, site_id)
        if site is None:
            raise InvalidInput(f"unknown site {site_id!r} (see: rdc sites list)")
        if not site.enabled:
            raise InvalidInput(f"site {site_id!r} is disabled")
    seen: set[Path] = set()
    for f in files:
        key = f.resolve() if f.exists() else f
        if key in seen:
            raise SlideImportError(f, "the file is given twice")
        seen.add(key)


def validate_file(path: Path) -> SlideInfo:
    """Check that ``path`` is a readable, complete whole-slide image OpenSlide opens.

    Raises SlideImportError naming the file and the reason.
    """
    if not path.exists():
        raise SlideImportError(path, "no such file")
    if not path.is_file():
        raise SlideImportError(path, "not a regular file")
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise SlideImportError(path, f"cannot be read: {e.strerror or e}") from e
    if not head:
        raise SlideImportError(path, "the file is empty")
    truncated = _tiff_truncation(path) if head in _TIFF_MAGIC else None
    if truncated:
        raise SlideImportError(path, truncated)
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except OSError as e:
        raise SlideImportError(path, f"cannot be read: {e}") from e
    if vendor is None or vendor == "dicom":
        what = ("a DICOM file; send DICOM slides by C-STORE, not by import"
                if vendor == "dicom" or _is_dicom(path) else
                "OpenSlide recognises no slide format in it")
        raise SlideImportError(path, f"not a whole-slide image ({what})")
    try:
        info = inspect_slide(path)
        with openslide.OpenSlide(path) as slide:
            # decode the smallest level: catches tiles that are present but corrupt
            last = slide.level_count - 1
            w, h = slide.level_dimensions[last]
            slide.read_region((0, 0), last, (min(w, 2048), min(h, 2048)))
    except openslide.OpenSlideError as e:
        raise SlideImportError(path, f"the slide cannot be read: {e}") from e
    if info.mpp_x is None or info.mpp_y is None:
        raise SlideImportError(path, "the slide does not record its pixel size (MPP); "
                                     "export it again with its resolution")
    return info


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _tiff_truncation(path: Path) -> str | None:
    """A sentence when a TIFF's image data runs past its end (a cut-off copy)."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            end = 0
            for page in tif.pages:
                offsets = getattr(page, "dataoffsets", ()) or ()
                counts = getattr(page, "databytecounts", ()) or ()
                for o, c in zip(offsets, counts, strict=False):
                    end = max(end, int(o) + int(c))
    except Exception as e:  # any parse failure of a TIFF header is the answer
        return f"the TIFF structure is damaged or cut off ({type(e).__name__}: {e})"
    if end > size:
        return (f"the file is truncated: it has {size} bytes but its image data runs to "
                f"byte {end}")
    return None


# ---------------------------------------------------------------- storing


def _served_pyramid(client: OrthancClient, f: Path, series_id: str) -> dict[str, Any]:
    """The pyramid Orthanc's WSI plugin makes of the series (fails the import if none)."""
    try:
        pyramid: dict[str, Any] = client.get(f"/wsi/pyramids/{series_id}").json()
    except OrthancError as e:
        raise SlideImportError(f, f"the archive's slide viewer cannot read the converted "
                                  f"slide: {e}") from e
    return pyramid


def _study_orthanc_id(client: OrthancClient, study_uid: str) -> str | None:
    found = [x for x in client.lookup(study_uid) if x.get("Type") == "Study"]
    return str(found[0]["ID"]) if found else None


def _slides_in_archive(client: OrthancClient, study_uid: str) -> int:
    """How many slide series the study already has (new slides are numbered after)."""
    oid = _study_orthanc_id(client, study_uid)
    return len(client.study_series(oid)) if oid else 0


def _register(db: Database, *, site_id: str, accession: str, study_uid: str, patient_id: str,
              patient_name: str, urgency: str, priority: int, organ: str,
              orthanc_id: str | None, slides: list[ImportedSlide], actor: str,
              instances: int) -> ImportResult:
    """The Study row (complete, a new generation) and its intake job, in one transaction."""
    now = datetime.now(UTC)
    with db.session() as s:
        study = s.scalar(select(Study).where(Study.site_id == site_id,
                                             Study.study_uid == study_uid))
        if study is None:
            study = Study(site_id=site_id, study_uid=study_uid, patient_id=patient_id,
                          patient_name=patient_name, accession_number=accession,
                          description=("FROZEN SECTION " if urgency == "frozen" else "")
                          + "Pathology slides", study_date=now.strftime("%Y%m%d"),
                          body_part=organ[:64], modalities=["SM"],
                          state=StudyState.RECEIVED, generation=0, priority=0,
                          first_received_at=now, last_received_at=now)
            s.add(study)
            s.flush()
        if study.state == StudyState.COMPLETE:
            check_transition(StudyState, study.state, StudyState.REOPENED)
            study.state = StudyState.REOPENED
        check_transition(StudyState, study.state, StudyState.COMPLETE)
        study.state = StudyState.COMPLETE
        study.generation += 1
        study.completed_at = now
        study.last_received_at = now
        study.modalities = sorted(set(study.modalities or []) | {"SM"})
        study.priority = max(study.priority, priority)
        study.received_instances += instances
        study.stored_instances += instances
        if orthanc_id:
            study.orthanc_id = orthanc_id
        if urgency == "frozen" and "frozen" not in study.description.lower():
            study.description = f"FROZEN SECTION {study.description}"[:200]
        site = s.get(Site, site_id)
        target = site.turnaround_target_min if site is not None else 240
        if study.priority >= URGENT_PRIORITY:
            target = max(15, target // 4)
        study.due_at = now + timedelta(minutes=target)
        job, _created = jobs.submit(s, jobs.NewJob(
            key=f"{JOB_KIND}:study-{study.id}:gen-{study.generation}:import",
            kind=JOB_KIND, queue="inference", study_id=study.id,
            priority=URGENT_PRIORITY if priority >= URGENT_PRIORITY else ROUTINE_PRIORITY,
            rule="import"))
        audit.append(s, actor=actor, action="pathology.import", object_type="study",
                     object_id=str(study.id), detail={
                         "site": site_id, "accession": accession, "study_uid": study_uid,
                         "urgency": urgency, "generation": study.generation, "job": job.id,
                         "slides": [{"file": sl.file.name, "series_uid": sl.series_uid,
                                     "vendor": sl.vendor, "width": sl.width,
                                     "height": sl.height, "levels": sl.levels}
                                    for sl in slides]})
        result = ImportResult(study_id=study.id, study_uid=study_uid, site_id=site_id,
                              accession=accession, priority=study.priority, job_id=job.id,
                              slides=list(slides))
    log.info("pathology.import study=%s site=%s accession=%s slides=%d job=%s",
             result.study_id, site_id, accession, len(slides), result.job_id)
    return result


def _remove(client: OrthancClient, orthanc_ids: list[str]) -> None:
    """Delete what this import uploaded (best effort, each failure logged)."""
    for oid in orthanc_ids:
        try:
            client.delete("instances", oid)
        except OrthancNotFound:
            pass
        except OrthancError as e:
            log.error("pathology.import.cleanup_failed instance=%s: %s", oid, e)


