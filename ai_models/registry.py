"""The model registry: which model versions exist, which may run, and proof that
the weights on disk are the ones that were registered.

A model version is a folder (``model.yaml`` + weights).  Registering one
copies it under ``$RDC_HOME/models/<name>/<version>`` (the shipped
demonstration models are used where they lie, in the package).  Every
registration, verification and enable/disable is audited, and a model whose
weights do not match the SHA-256 in its manifest is refused, at registration,
at enabling and again when a worker loads it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_models.manifest import (
    MANIFEST_NAME,
    Manifest,
    WeightsMismatch,
    load_manifest,
    verify_weights,
)
from core import audit
from core.errors import Conflict, NotFound
from core.models import AIModel
from core.settings import Settings

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


@dataclass(frozen=True)
class RegisteredModel:
    row_id: int
    folder: Path
    manifest: Manifest
    enabled: bool


def shipped_model_dirs() -> list[Path]:
    """Folders of the demonstration models that ship with the project."""
    return sorted(p.parent for p in SHIPPED_DIR.glob(f"*/*/{MANIFEST_NAME}"))


def _audit(session: Session, actor: str, action: str, row: AIModel, **detail: object) -> None:
    audit.append(session, actor=actor, action=action, object_type="ai_model",
                 object_id=f"{row.name}@{row.version}",
                 detail={"sha256": row.sha256, **detail})


def add_model(session: Session, settings: Settings, folder: Path, *, actor: str,
              enable: bool = False, copy: bool = True) -> AIModel:
    """Register the model version in ``folder``; verifies the weights first.

    Registering the same version again with the same weights is a no-op; with
    different weights it is refused (a version names exactly one set of weights).
    """
    folder = folder.resolve()
    manifest = load_manifest(folder)
    verify_weights(folder, manifest)
    existing = session.scalar(select(AIModel).where(AIModel.name == manifest.name,
                                                    AIModel.version == manifest.version))
    if existing is not None:
        if existing.sha256 != manifest.weights.sha256:
            raise Conflict(f"{manifest.ref} is already registered with other weights "
                           f"(SHA-256 {existing.sha256[:12]}…); give the new weights a new "
                           "version")
        return existing
    target = folder
    if copy:
        target = settings.models_dir / manifest.name / manifest.version
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in (MANIFEST_NAME, manifest.weights.file):
            shutil.copy2(folder / name, target / name)
        verify_weights(target, manifest)
    row = AIModel(name=manifest.name, version=manifest.version, task=manifest.task,
                  path=str(target), sha256=manifest.weights.sha256, enabled=enable,
                  demonstration=manifest.demonstration,
                  manifest=manifest.model_dump(mode="json", by_alias=True),
                  registered_by=actor, last_verified_at=datetime.now(UTC))
    session.add(row)
    session.flush()
    _audit(session, actor, "model.add", row, path=str(target), enabled=enable,
           demonstration=manifest.demonstration)
    log.info("model.added ref=%s enabled=%s path=%s", manifest.ref, enable, target)
    return row


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def ensure_shipped(session: Session, settings: Settings) -> list[AIModel]:
    """Register the shipped demonstration models once.

    Only the newest shipped version of each model is enabled, and only in development,
    so that ``rdc demo`` shows pre-reads; in production every version is registered
    disabled, and an operator decides.  Older shipped versions stay in the package and
    are registered disabled (ecg-rhythm 1.0.0 since 1.1.0): an install that registered
    them in place keeps verifiable weights, and results that name them keep the weights
    they came from.  When a newer shipped version is registered enabled, the older
    shipped versions this function enabled are disabled in its place (audited, with
    ``superseded_by``), so one ECG does not get a pre-read from each version.
    """
    if not settings.ai_register_shipped:
        return []
    shipped = [(folder, load_manifest(folder)) for folder in shipped_model_dirs()]
    newest: dict[str, str] = {}
    for _, manifest in shipped:
        current = newest.get(manifest.name)
        if current is None or _version_key(manifest.version) > _version_key(current):
            newest[manifest.name] = manifest.version
    added = []
    for folder, manifest in shipped:
        found = session.scalar(select(AIModel.id).where(AIModel.name == manifest.name,
                                                        AIModel.version == manifest.version))
        if found is not None:
            continue
        enable = (settings.environment != "production"
                  and manifest.version == newest[manifest.name])
        row = add_model(session, settings, folder, actor="system", copy=False, enable=enable)
        added.append(row)
        if enable:
            _retire_older_shipped(session, row)
    return added


def _retire_older_shipped(session: Session, newer: AIModel) -> None:
    """Disable the enabled older versions of ``newer``'s model that ensure_shipped
    registered from the package (an operator's own registrations are left alone)."""
    rows = session.scalars(select(AIModel).where(AIModel.name == newer.name,
                                                 AIModel.enabled.is_(True),
                                                 AIModel.registered_by == "system"))
    for row in rows:
        if (row.id != newer.id and _version_key(row.version) < _version_key(newer.version)
                and Path(row.path).resolve().is_relative_to(SHIPPED_DIR)):
            row.enabled = False
            _audit(session, "system", "model.disable", row, superseded_by=newer.version)
            log.info("model.superseded ref=%s@%s by=%s", row.name, row.version,
                     newer.version)


def get_model(session: Session, name: str, version: str | None = None) -> AIModel:
    """A model by name and version; without a version, the newest registered one."""
    q = select(AIModel).where(AIModel.name == name)
    if version is not None:
        q = q.where(AIModel.version == version)
    rows = list(session.scalars(q))
    if not rows:
        what = f"{name}@{version}" if version else name
        raise NotFound(f"no model {what} is registered (see `rdc models list`)")
    return max(rows, key=lambda r: tuple(int(x) for x in r.version.split(".")))


def list_models(session: Session) -> list[AIModel]:
    return list(session.scalars(select(AIModel).order_by(AIModel.name, AIModel.id)))


def verify_model(session: Session, row: AIModel, *, actor: str) -> Manifest:
    """Check the folder's manifest and weights against the registration; audited."""
    folder = Path(row.path)
    try:
        manifest = load_manifest(folder)
        if manifest.weights.sha256 != row.sha256:
            raise WeightsMismatch(f"{row.name}@{row.version}: model.yaml in {folder} now "
                                  f"names other weights than were registered")
        verify_weights(folder, manifest)
    except Exception as e:
        _audit(session, actor, "model.verify", row, ok=False, error=str(e))
        raise
    row.last_verified_at = datetime.now(UTC)
    _audit(session, actor, "model.verify", row, ok=True)
    return manifest


def set_enabled(session: Session, row: AIModel, enabled: bool, *, actor: str) -> None:
    """Enable (after verifying the weights) or disable a model version."""
    if enabled:
        verify_model(session, row, actor=actor)
    if row.enabled != enabled:
        row.enabled = enabled
        _audit(session, actor, "model.enable" if enabled else "model.disable", row)


def enabled_models(session: Session) -> list[RegisteredModel]:
    rows = session.scalars(select(AIModel).where(AIModel.enabled.is_(True))
                           .order_by(AIModel.name, AIModel.id))
    return [RegisteredModel(r.id, Path(r.path), Manifest.model_validate(r.manifest), r.enabled)
            for r in rows]
