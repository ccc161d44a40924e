"""``rdc demo``: a demo county site sends real sample studies through the gateway."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from core.db import get_database
from core.errors import ConfigurationError, NotFound
from core.models import AIFinding, AIResult, ECGAnalysis, Instance, Job, Site, Study
from core.orthanc_client import OrthancClient
from core.settings import Settings
from core.sites import SiteSpec, add_site
from devkit.dcmtk import storescu
from devkit.samples import chunks, storage_sample_files, write_chest_radiograph, write_ct_series
from rdc.demo_pathology import FULL_SLIDE, run_pathology_demo

DEMO_SITE = SiteSpec(id="demo-county", name="Demo County Hospital", ae_title="DEMO_COUNTY",
                     host="127.0.0.1", port=11113, allowed_addresses=("127.0.0.1/32", "::1"),
                     accepts_results=True, inactivity_s=15)


class _Note:
    """Progress as plain lines every few seconds when the output is not a terminal
    (scripts, CI logs), where rich's live progress bars are not drawn."""

    def __init__(self, console: Console, every_s: float = 10.0) -> None:
        self.console, self.every_s = console, every_s
        self.last = time.monotonic()

    def __call__(self, text: str) -> None:
        if not self.console.is_terminal and time.monotonic() - self.last >= self.every_s:
            self.console.print(text)
            self.last = time.monotonic()


def _ensure_site(settings: Settings, console: Console) -> None:
    db = get_database(settings.database_url)
    with db.session() as s:
        existing = s.get(Site, DEMO_SITE.id)
        if existing is not None and existing.enabled:
            return
        if existing is not None:
            raise ConfigurationError(f"site {DEMO_SITE.id!r} was removed; pick another home")
        add_site(s, DEMO_SITE, actor="demo")
    console.print(f"registered demo site {DEMO_SITE.id!r} (AE {DEMO_SITE.ae_title})")


def _gateway_listening(settings: Settings) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", settings.gateway_port)) == 0


def run_demo(settings: Settings, console: Console, *, ct_slices: int, timeout: float,
             ai: bool = True, pathology: bool = True,
             slide_size: tuple[int, int] = FULL_SLIDE) -> int:
    if not _gateway_listening(settings):
        raise ConfigurationError(f"no gateway on port {settings.gateway_port}: start the "
                                 "center with `rdc up` first (in another terminal)")
    _ensure_site(settings, console)
    started = datetime.now(UTC)
    work = settings.home / "demo"
    console.print("generating sample studies...")
    dx = write_chest_radiograph(work / "dx", pneumothorax=True)
    ct = write_ct_series(work / "ct", slices=ct_slices)
    groups: list[tuple[str, list[Path]]] = [
        ("pydicom test objects", storage_sample_files()),
        ("chest radiograph (DX)", dx.paths),
        (f"chest CT, {ct_slices} slices", ct.paths),
    ]
    total = sum(len(paths) for _, paths in groups)
    sent_ok = failed = unreadable = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sending with storescu", total=total)
        for label, paths in groups:
            progress.update(task, description=f"sending {label}")
            for batch in chunks(paths, 25):
                result = storescu(batch, host="127.0.0.1", port=settings.gateway_port,
                                  calling_ae=DEMO_SITE.ae_title, called_ae=settings.gateway_ae)
                if result.rejected:
                    raise ConfigurationError(f"the gateway refused the demo site:\n"
                                             f"{result.output[-800:]}")
                sent_ok += len(result.succeeded)
                failed += len(result.failed)
                unreadable += len(batch) - len(result.statuses)
                progress.advance(task, len(batch))
        db = get_database(settings.database_url)
        wait = progress.add_task("waiting for Orthanc", total=sent_ok)
        deadline = time.monotonic() + timeout
        stored = 0
        note = _Note(console)
        while time.monotonic() < deadline:
            with db.session() as s:
                stored = s.scalar(select(func.count()).select_from(Instance).where(
                    Instance.site_id == DEMO_SITE.id, Instance.state == "stored",
                    Instance.received_at >= started)) or 0
            progress.update(wait, completed=min(stored, sent_ok))
            note(f"waiting for Orthanc: {stored} of {sent_ok} stored")
            if stored >= sent_ok:
                break
            time.sleep(0.5)
    console.print(f"sent {sent_ok} instances ({failed} refused by the gateway, {unreadable} "
                  f"files storescu could not read); {stored} stored in Orthanc")
    with OrthancClient.from_settings(settings) as client:
        for study in (dx, ct):
            found = client.lookup(study.study_uid)
            if not found:
                raise NotFound(f"study {study.study_uid} is not in Orthanc")
            info = client.study(found[0]["ID"])
            console.print(f"  in Orthanc: {info['MainDicomTags'].get('StudyDescription')} "
                          f"({len(info['Series'])} series) id {info['ID']}")
        console.print(f"Orthanc holds {client.statistics()['CountStudies']} studies")
    if stored < sent_ok:
        return 1
    code = 0
    if ai:
        code = _show_ai(settings, console, [dx.study_uid, ct.study_uid], timeout)
        code = max(code, _show_ecg(settings, console, started, timeout))
    if pathology:
        # Last: its large slide's intake keeps the worker (and SQLite's writer) busy
        # for a while, which the AI pre-reads above need not wait for.
        code = max(code, run_pathology_demo(settings, console, site_id=DEMO_SITE.id,
                                            calling_ae=DEMO_SITE.ae_title, timeout=timeout,
                                            slide_size=slide_size))
    return code


def _show_ecg(settings: Settings, console: Console, since: datetime, timeout: float) -> int:
    """Wait for the analysis of the demo ECG (pydicom's 12-lead waveform) and show it."""
    db = get_database(settings.database_url)
    deadline = time.monotonic() + timeout
    note = _Note(console)
    while True:
        with db.session() as s:
            rows = s.execute(select(ECGAnalysis, Study).join(Study, Study.id ==
                                                             ECGAnalysis.study_id)
                             .where(Study.site_id == DEMO_SITE.id,
                                    ECGAnalysis.created_at >= since)).all()
            failed = s.scalar(select(Job).join(Study, Study.id == Job.study_id).where(
                Study.site_id == DEMO_SITE.id, Job.kind == "ecg_analysis",
                Job.state.in_(["failed", "dead"]), Job.created_at >= since))
        if rows or failed is not None:
            break
        if time.monotonic() > deadline:
            console.print("[yellow]the demo ECG was not analysed in time[/yellow]: is a "
                          "worker running?")
            return 1
        note("waiting for the ECG analysis")
        time.sleep(1.0)
    if failed is not None:
        console.print(f"[red]ECG analysis failed[/red]: {failed.error}")
        return 1
    for analysis, study in rows:
        console.print(
            f"ECG study {study.id}: {ecg_intervals(analysis.measurements)}; "
            + "; ".join(st.get("text", "") for st in analysis.statements)
            + ("  [CRITICAL]" if analysis.critical else "")
            + " — in the cardiologists' queue")
    return 0


def ecg_intervals(m: dict[str, Any]) -> str:
    """HR, PR, QRS and both QTc formulas, each named (a bare "QTc" hides which)."""
    return (f"HR {m.get('heart_rate_bpm')} bpm, PR {m.get('pr_ms')} ms, "
            f"QRS {m.get('qrs_ms')} ms, QTc (Bazett) {m.get('qtc_bazett_ms')} ms, "
            f"QTcF {m.get('qtc_fridericia_ms')} ms")


def _ai_state(settings: Settings, study_uids: list[str]) -> tuple[int, int, list[Job]]:
    """(AI jobs finished, AI jobs in all, failed or skipped jobs) of the studies."""
    db = get_database(settings.database_url)
    with db.session() as s:
        ids = list(s.scalars(select(Study.id).where(Study.study_uid.in_(study_uids))))
        jobs = list(s.scalars(select(Job).where(Job.study_id.in_(ids),
                                                Job.kind.in_(["ai_preread", "ai_inference"]))))
    preread = [j for j in jobs if j.kind == "ai_preread"]
    inference = [j for j in jobs if j.kind == "ai_inference"]
    final = ("succeeded", "skipped", "failed", "dead")
    done = sum(1 for j in inference if j.state in final)
    ready = len(preread) == len(ids) and all(j.state in final for j in preread)
    bad = [j for j in jobs if j.state in ("skipped", "failed", "dead")]
    return done, len(inference) if ready else max(len(inference), done + 1), bad


def _show_ai(settings: Settings, console: Console, study_uids: list[str],
             timeout: float) -> int:
    """Wait for the AI pre-reads of the demo studies and show what they found."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("AI pre-reads (studies complete after the site's "
                                 "inactivity window)", total=None)
        note = _Note(console)
        while True:
            done, total, bad = _ai_state(settings, study_uids)
            progress.update(task, completed=done, total=total)
            note(f"AI pre-reads: {done} of {total or '?'} jobs finished")
            if total and done >= total:
                break
            if time.monotonic() > deadline:
                console.print("[yellow]AI pre-reads did not finish in time[/yellow]: is a "
                              "worker running (`rdc up` starts one)? See `rdc models runs`.")
                return 1
            time.sleep(1.0)
    db = get_database(settings.database_url)
    table = Table("study", "model", "finding", "probability", "result", "worklist priority")
    with db.session() as s:
        for uid in study_uids:
            study = s.scalar(select(Study).where(Study.study_uid == uid))
            if study is None:
                continue
            for result in s.scalars(select(AIResult).where(AIResult.study_id == study.id)):
                for f in s.scalars(select(AIFinding).where(AIFinding.result_id == result.id)):
                    verdict = "CRITICAL" if f.critical else "positive" if f.positive else \
                        "negative"
                    if f.volume_ml is not None and f.positive:
                        verdict += f", {f.volume_ml:.1f} mL"
                    table.add_row(f"{'/'.join(study.modalities)} {study.id}",
                                  f"{result.model_name}@{result.model_version}", f.label,
                                  f"{f.probability:.2f}", verdict, str(study.priority))
    console.print(table)
    console.print("AI findings are unverified pre-reads (demonstration weights, not for "
                  "clinical use); the SR and SEG objects are in Orthanc with the study.")
    for j in bad:
        console.print(f"[yellow]{j.kind} job {j.id} {j.state}[/yellow]: {j.error}")
    return 1 if any(j.state in ("failed", "dead") for j in bad) else 0
