"""The center's database in a backup: SQLite's online backup, or ``pg_dump``.

SQLite: the ``sqlite3`` backup API copies the database page by page under one read
transaction, so the copy is the database as of one instant while the gateway, the
worker and the web app keep writing (WAL mode lets them).  PostgreSQL: ``pg_dump``
in its custom format reads everything in one repeatable-read snapshot; it must be at
least the server's major version, or it refuses (or worse, misses newer objects).

A restore writes only into an empty target: a SQLite file that does not exist yet,
or a PostgreSQL database with no tables.  Restoring over a live center would mix
two histories, and the audit chain would say so only afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.errors import ConfigurationError
from rdc.backup import BackupCorrupt, BackupError

SQLITE_FILE = "database/rdc.sqlite3"
PG_FILE = "database/rdc.pgdump"


def kind(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return "postgresql"
    scheme = url.split(":", 1)[0]
    raise ConfigurationError(f"backup supports SQLite and PostgreSQL databases, not {scheme!r}")


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


# SQLite -----------------------------------------------------------------------
def backup_sqlite(url: str, target: Path) -> str:
    """Online backup of the center's SQLite database into ``target``; returns the
    schema revision of the copy."""
    source = sqlite_path(url)
    if not source.is_file():
        raise BackupError(f"the database {source} does not exist: nothing to back up")
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(target)
    try:
        src.execute("PRAGMA busy_timeout=60000")
        src.backup(dst)  # all pages in one step: one consistent read transaction
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        check = dst.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise BackupError(f"the SQLite copy of {source} fails its check: {check!r}")
        return _sqlite_revision(dst)
    finally:
        dst.close()
        src.close()


def _sqlite_revision(conn: sqlite3.Connection) -> str:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as e:
        raise BackupError(f"the database has no schema revision (alembic_version): {e}") from e
    return str(row[0]) if row else ""


def sqlite_revision(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _sqlite_revision(conn)
    finally:
        conn.close()


def restore_sqlite(backup_file: Path, url: str) -> None:
    """Put the backed-up SQLite database where ``url`` says; the target must not exist."""
    target = sqlite_path(url)
    if target.exists() and target.stat().st_size > 0:
        raise BackupError(f"the database {target} already exists: a restore writes only "
                          "into a fresh database")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restoring")
    shutil.copyfile(backup_file, tmp)
    conn = sqlite3.connect(tmp)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    if check is None or check[0] != "ok":
        tmp.unlink()
        raise BackupCorrupt(f"the backed-up SQLite database fails its integrity check: {check!r}")
    os.replace(tmp, target)


def sqlite_target_problem(url: str) -> str | None:
    target = sqlite_path(url)
    if target.exists() and target.stat().st_size > 0:
        return f"the database {target} already exists"
    return None


# PostgreSQL -------------------------------------------------------------------
def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and the environment carrying it
    (``PGPASSWORD``), so that the password never shows in a process list."""
    url = re.sub(r"^postgresql\+psycopg://", "postgresql://", url)
    params = conninfo_to_dict(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    url = re.sub(r"^postgresql\+psycopg://", "postgresql://", url)
    try:
        return psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as e:
        raise BackupError(f"cannot connect to the PostgreSQL database: {e}") from e


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)
    if path is None:
        raise ConfigurationError(f"{name} is not installed; install it with: "
                                 "sudo apt-get install postgresql-client")
    return path


def _tool_major(tool: str) -> int:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if m is None:
        raise ConfigurationError(f"cannot tell the version of {tool} from {out!r}")
    return int(m.group(1))


def _server_major(url: str) -> int:
    with _connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(str(row[0])) // 10000


def _check_tool(name: str, url: str) -> str:
    tool = _tool(name)
    tool_major, server_major = _tool_major(tool), _server_major(url)
    if tool_major < server_major:
        raise ConfigurationError(
            f"{tool} is version {tool_major} but the server is PostgreSQL {server_major}: "
            f"install the client of version {server_major} or newer "
            f"(postgresql-client-{server_major})")
    return tool


def pg_revision(url: str) -> str:
    with _connect(url) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except psycopg.Error as e:
            raise BackupError(f"the database has no schema revision (alembic_version): "
                              f"{e}") from e
    return str(row[0]) if row else ""


def backup_postgres(url: str, target: Path) -> str:
    """``pg_dump -Fc`` of the center's database into ``target``; returns the revision."""
    tool = _check_tool("pg_dump", url)
    revision = pg_revision(url)
    conninfo, env = _libpq(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([tool, "--format=custom", "--no-owner", "--no-privileges",
                           f"--file={target}", f"--dbname={conninfo}"],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise BackupError(f"pg_dump failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    with open(target, "rb") as f:
        os.fsync(f.fileno())
    return revision


def postgres_target_problem(url: str) -> str | None:
    """Why ``url`` cannot take a restore (it has relations of its own), or None."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')").fetchone()
    count = int(str(row[0])) if row else 0
    if count:
        return f"the PostgreSQL database is not empty ({count} tables, views or sequences)"
    return None


def restore_postgres(backup_file: Path, url: str) -> None:
    """``pg_restore`` into the empty database at ``url``, all or nothing."""
    problem = postgres_target_problem(url)
    if problem:
        raise BackupError(f"{problem}: a restore writes only into an empty database")
    tool = _check_tool("pg_restore", url)
    conninfo, env = _libpq(url)
    proc = subprocess.run([tool, "--no-owner", "--no-privileges", "--exit-on-error",
                           "--single-transaction", f"--dbname={conninfo}", str(backup_file)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise BackupError(f"pg_restore failed (exit {proc.returncode}); nothing was "
                          f"restored into the database: {proc.stderr.strip()[-800:]}")
