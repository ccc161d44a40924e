"""Operator API authentication until user accounts land.

Every route but the health probe needs ``Authorization: Bearer <token>``;
the token is generated once under ``$RDC_HOME/secrets/api-token``.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.settings import Settings, get_settings


def api_token(settings: Settings) -> str:
    settings.ensure_dirs()
    path = settings.secrets_dir / "api-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


_bearer = HTTPBearer(auto_error=False)


def require_operator(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if creds is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(creds.credentials.encode(), api_token(get_settings()).encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token",
                            headers={"WWW-Authenticate": "Bearer"})
    return "operator"
