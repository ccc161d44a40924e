"""Several nodes start at once on one empty PostgreSQL database: each process migrates
on first use, and the advisory lock in core.db.migrate lets exactly one do it."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import inspect

from conftest import REPO, _create_pg_database, _drop_pg_database
from core.db import Database


def test_processes_migrating_together_all_succeed(pg_admin: str) -> None:
    name, url = _create_pg_database(pg_admin)
    try:
        code = ("import sys; from core.db import migrate; migrate(sys.argv[1]); "
                "print('migrated')")
        procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, errs) in zip(procs, outs, strict=True):
            assert p.returncode == 0 and "migrated" in out, errs[-2000:]
        db = Database(url)
        try:
            tables = set(inspect(db.engine).get_table_names())
        finally:
            db.dispose()
        assert {"studies", "jobs", "node_heartbeats", "alembic_version"} <= tables
    finally:
        _drop_pg_database(pg_admin, name)
