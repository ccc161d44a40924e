"""Database engine, sessions and migrations.

SQLite is the embedded default (WAL mode, busy timeout so the gateway, the
worker and the web app can share one file); PostgreSQL is a URL away.  The
schema is always brought to the newest Alembic revision before use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Dialect, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
AFTER_COMMIT = "rdc_after_commit"


class UTCDateTime(TypeDecorator[datetime]):
    """A ``TIMESTAMP WITH TIME ZONE`` column whose values are always aware, in UTC.

    SQLite keeps no offset: it stores the wall-clock digits and hands back a naive
    datetime, so code reading a row used to re-attach UTC itself (a copy of that helper
    sat in every module that compared a stored time with now).  This type does it once,
    at the database boundary: a value read back is aware in UTC on every database, and a
    value written is converted to UTC first, so SQLite never stores another zone's wall
    clock.  A naive value is refused when written: its zone is unknown, and guessing it
    is how wrong times get stored.  The SQL type is plain ``DateTime(timezone=True)``,
    so the schema (and the migrations) are the same as without it.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UTCDateTime takes a datetime, not {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given for a UTCDateTime column: "
                "pass an aware datetime (e.g. datetime.now(UTC))")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: the stored digits are UTC (see above)
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed.

    Used to queue job IDs only when the job rows are visible to workers.
    """
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # SQLAlchemy, not pysqlite, starts transactions (see _sqlite_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    """Every transaction takes SQLite's write lock when it starts.

    In WAL mode a transaction that has read and then writes, after another process
    committed in between, fails at once with "database is locked": its snapshot is
    stale and waiting cannot help, so the busy timeout is never used.  The gateway,
    the worker and the web app all write to one file, so that happened (a routing or
    an ECG job failing under load).  Taking the lock at BEGIN makes such a transaction
    wait its turn instead.  PostgreSQL, for centers that outgrow a file, needs none.
    """
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings every process of the center needs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


#: The PostgreSQL advisory lock that serialises migrations across processes and nodes.
MIGRATION_LOCK_KEY = 0x52444321  # "RDC!"


def migrate(url: str) -> None:
    """Bring the schema at ``url`` to the newest revision (idempotent).

    Every process migrates on first use.  On PostgreSQL several nodes may start at
    once (after a power cut, or ``systemctl start`` on every node): each waits for an
    advisory lock first, so one migrates and the others find the schema at head,
    instead of two creating the same table and one crashing.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        command.upgrade(alembic_config(url), "head")
        return
    if not url.startswith(("postgresql://", "postgresql+")):
        command.upgrade(alembic_config(url), "head")
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            try:
                command.upgrade(alembic_config(url), "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


class Database:
    """Engine plus session factory for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()
        for callback in s.info.pop(AFTER_COMMIT, []):
            callback()

    def dispose(self) -> None:
        self.engine.dispose()


#: Alembic's command API is not thread-safe: the web app's first requests arrive together
#: (a page asks for the worklist, the sites and the pages banner at once), and two threads
#: migrating at once crashed one of them (KeyError in alembic's proxy), answering 500.
_migrate_lock = threading.Lock()


@lru_cache(maxsize=8)
def get_database(url: str) -> Database:
    """One :class:`Database` per URL per process, migrated on first use.

    The cache does not stop two first calls from running together, so the migration is
    serialised; the later one finds the schema at head and does nothing.
    """
    with _migrate_lock:
        migrate(url)
    return Database(url)
