"""What the web app's routers get from FastAPI, each as one ``Annotated`` type.

A router names what it needs in its signature (``s: SessionDep``, ``user: Reporter``)
and never builds it itself: the settings, the database, a session, and the caller with
the roles the route admits.

Two ways to reach the database, on purpose:

* :data:`SessionDep`, one session per request for routes that only talk to the
  database.  It commits when the route returns, *before* the answer is sent (the
  dependency's ``scope="function"``), so a client that reads right after a change sees
  it, and it rolls back when the route raises, as ``Database.session()`` always did.
* :data:`DatabaseDep`, the database itself, for routes that also wait on something
  else (Orthanc, rendering a tracing): SQLite's write lock is taken when a transaction
  begins (``core.db``), so their services open short sessions of their own instead of
  holding one across the wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException
from sqlalchemy.orm import Session

from core.db import Database, get_database
from core.settings import Settings, get_settings
from viewer.auth import (
    READING_ROLES,
    CurrentUser,
    Operator,
    Reader,
    UserContext,
    require_roles,
)
from viewer.worklist import READER_ROLES

__all__ = [
    "Admin", "Cardiologist", "CurrentUser", "DatabaseDep", "DeliveryWatcher", "Manager",
    "Operator", "Reader", "Releaser", "Reporter", "SessionDep", "SettingsDep",
    "Signer",
]


def settings() -> Settings:
    """The process's settings (``core.settings.get_settings``, cached)."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings)]


def database(settings: SettingsDep) -> Database:
    """The center's database (one per URL per process, migrated on first use)."""
    return get_database(settings.database_url)


DatabaseDep = Annotated[Database, Depends(database)]


def session(db: DatabaseDep) -> Iterator[Session]:
    """One session for the request: committed when the route returns, rolled back if
    it raises (see the module's docstring)."""
    with db.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(session, scope="function")]

# Callers, by what they may do ------------------------------------------------------
#: Account administration and the front door screen.
Admin = Annotated[UserContext, Depends(require_roles("admin"))]
#: The roles that read and report: claim a study, write and sign its report.
Reporter = Annotated[UserContext, Depends(require_roles(*READER_ROLES))]
#: Releasing a claim: a reporter gives a study back; an admin frees one a reader left held.
Releaser = Annotated[UserContext, Depends(require_roles("admin", *READER_ROLES))]
#: The turnaround dashboard: durations per site and modality, no patient data.
Manager = Annotated[UserContext, Depends(require_roles("admin", *READER_ROLES))]
#: Delivery states (no patient data): admins resend them, readers follow their results.
DeliveryWatcher = Annotated[UserContext, Depends(require_roles("admin", *READING_ROLES))]
#: The cardiologists' ECG queue.
Cardiologist = Annotated[UserContext, Depends(require_roles("cardiologist"))]


def _signer(user: Reporter) -> UserContext:
    """Signing is a person's act: the operator token never signs."""
    if not user.is_person:
        raise HTTPException(403, "signing needs a signed-in reader, not the operator token")
    return user


#: A reporter who is a signed-in person (the one who signs).
Signer = Annotated[UserContext, Depends(_signer)]
