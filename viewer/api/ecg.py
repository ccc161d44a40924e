"""HTTP routes of the cardiologists' ECG queue; the logic is in :mod:`viewer.ecg_queue`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from viewer import ecg_queue
from viewer.deps import Cardiologist, DatabaseDep, SessionDep
from viewer.schemas import EcgEditOut, EcgOut, EcgQueueOut, EditIn

router = APIRouter(prefix="/api/ecg", tags=["ecg"])


@router.get("/queue", response_model=EcgQueueOut)
def queue(s: SessionDep, user: Cardiologist, status: str = "open",
          page: Annotated[int, Query(ge=1)] = 1,
          page_size: Annotated[int, Query(ge=1, le=200)] = 50,
          study_id: int | None = None) -> object:
    """ECGs to read: critical first, then those that need a human measurement, then
    poor quality, then the longest waiting.  ``status`` is ``open`` or ``all``;
    ``study_id`` narrows it to one study's ECGs (the worklist opens a study's ECG so)."""
    return ecg_queue.queue(s, user, status=status, page=page, page_size=page_size,
                           study_id=study_id)


@router.get("/{analysis_id}", response_model=EcgOut, response_model_exclude_unset=True)
def get_ecg(analysis_id: int, db: DatabaseDep, user: Cardiologist,
            tracing: bool = True) -> object:
    """One ECG: analysis, current (edited) measurements and statements, the tracing
    (unless ``tracing=false``), and the same patient's previous ECG for comparison
    (audited as a view)."""
    return ecg_queue.open_ecg(db, user, analysis_id, tracing)


@router.put("/{analysis_id}", response_model=EcgEditOut)
def edit_ecg(analysis_id: int, body: EditIn, s: SessionDep, user: Cardiologist) -> object:
    """The cardiologist's corrections; the automatic result is kept unchanged beside."""
    statements = (None if body.statements is None
                  else [st.model_dump() for st in body.statements])
    return ecg_queue.edit_ecg(s, user, analysis_id, body.measurements, statements)
