"""The reading worklist at a year of a regional center's work, on PostgreSQL.

Seeds ``--studies`` studies (100,000 by default) over ``--sites`` county sites (30) as a
year of work leaves them: completed over 365 days at sites of different sizes and
turnaround targets; STAT, urgent and routine requests; AI pre-reads (some critical);
almost every study older than the backlog signed (final, a few amended), the recent ones
unread, claimed or drafted; readers' accounts for the claims and one ``site_user``
account per county.  Then it times :func:`viewer.worklist.query_worklist` (the page, its
total and its AI flags, as ``GET /api/worklist`` runs them) for:

- the first page and a deep page (page 200, or the last page if the list is shorter),
- for an all-sites (center) reader and for one county account (the largest site),
- for the default view (``status=open``) and the year's list (``status=all``),

``--repeat`` runs each (median and p95).  Printed as a table; the route itself is timed
through FastAPI's TestClient for the first pages.

    .venv/bin/python -m benchmarks.scale_worklist [--studies 100000] [--sites 30]
        [--database-url postgresql://...] [--repeat 30]

Without ``--database-url`` a throw-away PostgreSQL database is created on
``--pg-admin-url`` (``$RDC_TEST_PG_URL``, else the local server) and dropped at the end;
a database given with ``--database-url`` must hold no studies yet (it is migrated and
filled, never emptied).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, insert, select, text

from benchmarks.harness import BenchError, median, nearest_rank, write_json
from core.db import Database, get_database
from core.models import AIFinding, AIResult, Report, Site, Study, User, UserSite
from viewer import worklist
from viewer.auth import UserContext

console = Console(width=150)
DEFAULT_PG_ADMIN = os.environ.get("RDC_TEST_PG_URL",
                                  "postgresql://postgres@127.0.0.1:5432/postgres")
PAGE_SIZE = 50
DEEP_PAGE = 200
CHUNK = 5000
#: Modalities of a regional center's year, by share of the studies.
MODALITIES = {"CR": 0.22, "DX": 0.18, "CT": 0.24, "MR": 0.09, "US": 0.14, "MG": 0.05,
              "ECG": 0.08}
#: What the AI pre-reads look at, and the labels they find.
AI_MODALITIES = {"CR", "DX", "CT"}
AI_LABELS = ("pneumothorax", "lung_opacity", "nodule", "effusion", "fracture", "haemorrhage")
TURNAROUND_MIN = (120, 240, 240, 480, 1440)


# Seeding ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seeded:
    """What was put into the database."""

    studies: int
    sites: int
    ready: int  #: complete or reopened: on the worklist with status=all
    open: int  #: ready and not signed: on the default (open) worklist
    reports: int
    ai_findings: int
    readers: int
    county_site: str  #: the county account's site (the largest)
    county_ready: int
    county_open: int
    center_user_id: int
    county_user_id: int
    seconds: float


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start:start + CHUNK]


def seed(db: Database, studies: int, sites: int, *, seed: int = 0, backlog_days: float = 7.0,
         now: datetime | None = None) -> Seeded:
    """Fill ``db`` (migrated, without studies) with a year of ``studies`` over ``sites``.

    Bulk inserts (SQLAlchemy Core, ``CHUNK`` rows per executemany), then ``VACUUM
    ANALYZE`` on PostgreSQL so the planner sees the tables as autovacuum leaves them.
    """
    if studies < 1 or sites < 1:
        raise BenchError("need at least one study and one site")
    started = time.perf_counter()
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    with db.session() as s:
        if s.scalar(select(func.count()).select_from(Study)):
            raise BenchError(f"{db.url.split('@')[-1]} already holds studies: the benchmark "
                             "fills an empty database (or omit --database-url)")
    tag = uuid.uuid4().hex[:6]
    site_ids = [f"bench-{tag}-{i + 1:02d}" for i in range(sites)]
    # Sites of different sizes (a city hospital sends more than a township's).
    weights = [rng.uniform(0.4, 1.6) for _ in site_ids]
    targets = {sid: rng.choice(TURNAROUND_MIN) for sid in site_ids}
    with db.session() as s:
        s.execute(insert(Site), [
            {"id": sid, "name": f"County hospital {i + 1:02d}", "ae_title": f"B{tag}{i:03d}"[:16],
             "host": "127.0.0.1", "port": 104, "allowed_addresses": ["127.0.0.1"],
             "enabled": True, "turnaround_target_min": targets[sid], "created_at": now,
             "result_formats": []}
            for i, sid in enumerate(site_ids)])
        n_readers = max(4, sites + sites // 2)
        s.execute(insert(User), [
            {"username": f"bench-{tag}-dr{i:02d}", "display_name": f"Dr Reader {i:02d}",
             "password_hash": "x", "totp_secret": "x", "roles": ["radiologist"],
             "all_sites": True, "enabled": True, "created_at": now}
            for i in range(n_readers)] + [
            {"username": f"bench-{tag}-clerk-{sid[-2:]}", "display_name": f"Clerk {sid}",
             "password_hash": "x", "totp_secret": "x", "roles": ["site_user"],
             "all_sites": False, "enabled": True, "created_at": now}
            for sid in site_ids])
        users = {name: uid for name, uid in s.execute(
            select(User.username, User.id).where(User.username.like(f"bench-{tag}-%")))}
        readers = [users[f"bench-{tag}-dr{i:02d}"] for i in range(n_readers)]
        s.execute(insert(UserSite), [
            {"user_id": users[f"bench-{tag}-clerk-{sid[-2:]}"], "site_id": sid}
            for sid in site_ids])

    year = timedelta(days=365)
    rows: list[dict[str, Any]] = []
    fate: list[str] = []  # per study: received, unread, claimed, draft, signed
    for i in range(studies):
        site = rng.choices(site_ids, weights=weights)[0]
        age = year * rng.random()
        completed = now - age
        modality = _weighted(rng, MODALITIES)
        r = rng.random()
        priority = 9 if r < 0.05 else 7 if r < 0.17 else 0
        critical = modality in AI_MODALITIES and rng.random() < 0.02
        state = "complete"
        if age < timedelta(hours=2) and rng.random() < 0.3:
            state = "received"  # images still arriving: not on the worklist
        elif rng.random() < 0.003:
            state = "reopened"  # more images after completion
        target = targets[site] if priority < 9 else max(15, targets[site] // 4)
        # Read with a backlog: recent work mostly open, older work signed but for a few
        # stragglers; STAT is read at once.
        if state == "received":
            status = "received"
        else:
            backlog = timedelta(days=backlog_days / (6 if priority >= 9 else 1))
            p_open = 0.9 if age < backlog else (0.002 if priority >= 9 else 0.01)
            if rng.random() < p_open:
                x = rng.random()
                status = "unread" if x < 0.55 else "claimed" if x < 0.70 else "draft"
            else:
                status = "signed"
        birth = now.year - rng.randint(1, 95)
        rows.append({
            "site_id": site, "study_uid": f"1.2.826.0.1.3680043.10.{tag_int(tag)}.{i}",
            "patient_id": f"P{rng.randrange(max(1, studies * 2 // 3)):07d}",
            "patient_name": f"PATIENT^{i}", "patient_birth_date": f"{birth}0{rng.randint(1, 9)}15",
            "patient_sex": rng.choice("MF"), "patient_age": "",
            "description": f"{modality} {rng.choice(['chest', 'head', 'abdomen', 'spine'])}",
            "study_date": completed.strftime("%Y%m%d"),
            "accession_number": f"A{tag}{i:08d}", "body_part": "",
            "modalities": [modality], "state": state,
            "priority": priority, "ai_critical": critical, "generation": 1,
            "expected_instances": None, "received_instances": 40, "stored_instances": 40,
            "first_received_at": completed - timedelta(minutes=rng.uniform(2, 30)),
            "last_received_at": completed - timedelta(minutes=1),
            "completed_at": None if state == "received" else completed,
            "due_at": None if state == "received" else completed + timedelta(minutes=target),
            # Signing releases the claim (reports.service.sign_version) and sets the
            # flag its flush would (the reports below are inserted without the ORM).
            "claimed_by": rng.choice(readers) if status in ("claimed", "draft") else None,
            "claimed_at": (completed + timedelta(minutes=rng.uniform(1, 60))
                           if status in ("claimed", "draft") else None),
            "report_signed": status == "signed",
        })
        fate.append(status)
    with db.session() as s:
        for chunk in _chunks(rows):
            s.execute(insert(Study), chunk)
    with db.session() as s:
        ids = {uid: sid for uid, sid in s.execute(
            select(Study.study_uid, Study.id).where(Study.site_id.in_(site_ids)))}
    reports: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for row, status in zip(rows, fate, strict=True):
        sid = ids[row["study_uid"]]
        row["id"] = sid
        if status in ("draft", "signed"):
            state = (rng.choice(["draft", "preliminary"]) if status == "draft"
                     else "amended" if rng.random() < 0.04 else "final")
            at = row["completed_at"] + timedelta(minutes=rng.uniform(5, 600))
            reports.append({"subject_type": "study", "subject_id": str(sid), "study_id": sid,
                            "site_id": row["site_id"], "template_id": "generic",
                            "template_version": "1.0.0", "state": state,
                            "created_at": at, "updated_at": at})
        if row["modalities"][0] in AI_MODALITIES and status != "received" \
                and rng.random() < 0.6:
            results.append({"study_id": sid, "series_uid": f"{row['study_uid']}.1",
                            "model_name": "cxr-triage", "model_version": "1.0.0",
                            "device": "cpu", "batch_size": 1, "duration_ms": 40.0,
                            "sr_sop_uid": f"{row['study_uid']}.9", "critical":
                            row["ai_critical"], "created_at": row["completed_at"]})
    with db.session() as s:
        for chunk in _chunks(reports):
            s.execute(insert(Report), chunk)
        for chunk in _chunks(results):
            s.execute(insert(AIResult), chunk)
    with db.session() as s:
        result_ids = {study_id: rid for study_id, rid in s.execute(
            select(AIResult.study_id, AIResult.id).join(Study, Study.id == AIResult.study_id)
            .where(Study.site_id.in_(site_ids)))}
    findings: list[dict[str, Any]] = []
    critical_of = {row["id"]: row["ai_critical"] for row in rows}
    for study_id, result_id in result_ids.items():
        labels = rng.sample(AI_LABELS, rng.randint(1, 3))
        for n, label in enumerate(labels):
            positive = critical_of[study_id] if n == 0 else rng.random() < 0.2
            findings.append({"result_id": result_id, "study_id": study_id, "label": label,
                             "probability": rng.random(), "threshold": 0.5,
                             "positive": positive, "critical": positive and n == 0,
                             "review": "unreviewed"})
    with db.session() as s:
        for chunk in _chunks(findings):
            s.execute(insert(AIFinding), chunk)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("sites", "users", "user_sites", "studies", "reports", "ai_results",
                          "ai_findings"):
                conn.execute(text(f"VACUUM ANALYZE {table}"))
    ready = [f for f in fate if f != "received"]
    county = max(site_ids, key=lambda sid: weights[site_ids.index(sid)])
    county_fates = [f for row, f in zip(rows, fate, strict=True)
                    if row["site_id"] == county and f != "received"]
    return Seeded(
        studies=studies, sites=sites, ready=len(ready),
        open=sum(f != "signed" for f in ready), reports=len(reports),
        ai_findings=len(findings), readers=len(readers), county_site=county,
        county_ready=len(county_fates), county_open=sum(f != "signed" for f in county_fates),
        center_user_id=readers[0], county_user_id=users[f"bench-{tag}-clerk-{county[-2:]}"],
        seconds=round(time.perf_counter() - started, 1))


def tag_int(tag: str) -> int:
    """The run's tag as digits (a UID component holds digits only)."""
    return int(tag, 16)


# Timing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """``runs`` timings of one request shape, in milliseconds."""

    case: str
    status: str
    account: str  #: center or county
    page: int
    paging: str  #: offset (page number), or keyset (the previous page's next_cursor)
    via: str  #: function (viewer.worklist), or http (GET /api/worklist, TestClient)
    runs: int
    median_ms: float
    p95_ms: float
    rows: int  #: items on the page
    total: int  #: the list's length (the API's ``total``)


@dataclass(frozen=True)
class ScaleResults:
    seeded: Seeded
    page_size: int
    timings: list[Timing] = field(default_factory=list)
    #: "<case> (<status>)" -> the deep page's offset p50 / keyset p50, measured in the
    #: same run on the same database (the baseline is offset paging).
    ratios: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst_p95_ms(self, paging: str = "keyset") -> float:
        """The slowest p95 among first pages and ``paging``'s deep pages."""
        return max(t.p95_ms for t in self.timings
                   if t.paging == paging or t.case.endswith("first page"))


Call = Callable[[], tuple[int, list[int], str | None]]


def _timed(fn: Call, repeat: int) -> tuple[list[float], tuple[int, list[int], str | None]]:
    result = fn()  # warm-up: connection pool, plan cache, buffers
    times: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def _context(user_id: int, site: str | None, roles: str) -> UserContext:
    return UserContext(user_id=user_id, username=f"bench{user_id}", display_name="bench",
                       roles=frozenset({roles}), all_sites=site is None,
                       site_ids=frozenset({site} if site else ()), csrf_token=None)


def _shapes(seeded: Seeded, page_size: int, deep_page: int,
            ) -> Iterator[tuple[str, str, str, int]]:
    """(case, status, account, deep page) of every list measured."""
    lengths = {("center", "open"): seeded.open, ("center", "all"): seeded.ready,
               ("county", "open"): seeded.county_open, ("county", "all"): seeded.county_ready}
    for status in ("open", "all"):
        for account in ("center", "county"):
            last = max(1, -(-lengths[account, status] // page_size))
            name = "all sites" if account == "center" else "one county"
            yield name, status, account, min(deep_page, last)


def _record(out: ScaleResults, case: str, status: str, account: str, page: int, paging: str,
            via: str, times: list[float], result: tuple[int, list[int], str | None],
            expected_total: int | None = None) -> None:
    total, ids, _ = result
    if expected_total is not None and total != expected_total:
        raise BenchError(f"{case} ({status}): total {total}, seeded {expected_total}")
    out.timings.append(Timing(case, status, account, page, paging, via, len(times),
                              round(median(times), 2), round(nearest_rank(times, 0.95), 2),
                              len(ids), total))


def measure(db: Database, seeded: Seeded, *, repeat: int = 30, page_size: int = PAGE_SIZE,
            deep_page: int = DEEP_PAGE, http: bool = True) -> ScaleResults:
    """Time every request shape on ``db`` as :func:`seed` left it: for each list, the first
    page, and the deep page by offset and by keyset (the cursor of the page before it,
    whose rows must be the offset page's, in the same order)."""
    if repeat < 1:
        raise BenchError("repeat must be at least 1")
    accounts = {"center": _context(seeded.center_user_id, None, "radiologist"),
                "county": _context(seeded.county_user_id, seeded.county_site, "site_user")}
    lengths = {("center", "open"): seeded.open, ("center", "all"): seeded.ready,
               ("county", "open"): seeded.county_open, ("county", "all"): seeded.county_ready}
    secret = b"benchmark cursor key"
    out = ScaleResults(seeded=seeded, page_size=page_size)

    def page_of(user: UserContext, status: str, page: int = 1,
                cursor: str | None = None) -> tuple[int, list[int], str | None]:
        with db.session() as s:
            res = worklist.worklist_page(s, user, status=status, page=page,
                                         page_size=page_size, cursor=cursor, secret=secret)
        return res.total, [i.study_id for i in res.items], res.next_cursor

    for name, status, account, deep in _shapes(seeded, page_size, deep_page):
        user, expected = accounts[account], lengths[account, status]
        times, result = _timed(partial(page_of, user, status, 1), repeat)
        _record(out, f"{name}, first page", status, account, 1, "offset", "function", times,
                result, expected)
        if deep == 1:
            continue
        offset_t, offset_r = _timed(partial(page_of, user, status, deep), repeat)
        _record(out, f"{name}, deep page", status, account, deep, "offset", "function",
                offset_t, offset_r, expected)
        cursor = page_of(user, status, deep - 1)[2]
        if cursor is None:
            raise BenchError(f"{name} ({status}): page {deep - 1} answered no next_cursor")
        keyset_t, keyset_r = _timed(partial(page_of, user, status, 1, cursor), repeat)
        if keyset_r[1] != offset_r[1]:
            raise BenchError(f"{name} ({status}): page {deep} by cursor differs from the "
                             "same page by offset")
        _record(out, f"{name}, deep page", status, account, deep, "keyset", "function",
                keyset_t, keyset_r, expected)
        out.ratios[f"{name}, deep page ({status})"] = round(median(offset_t)
                                                            / median(keyset_t), 2)
    if http:
        _measure_http(out, db, seeded, repeat, page_size, deep_page)
    return out


@contextmanager
def _app_environment(db_url: str) -> Iterator[Path]:
    """This process's settings pointed at ``db_url`` and a scratch home, then restored."""
    from core.settings import get_settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("RDC_")}
    with tempfile.TemporaryDirectory(prefix="rdc-bench-scale-") as home:
        for key in saved:
            del os.environ[key]
        os.environ.update({"RDC_HOME": home, "RDC_DATABASE_URL": db_url})
        get_settings.cache_clear()
        try:
            yield Path(home)
        finally:
            for key in [k for k in os.environ if k.startswith("RDC_")]:
                del os.environ[key]
            os.environ.update(saved)
            get_settings.cache_clear()


def _get_page(client: Any, params: dict[str, Any]) -> tuple[int, list[int], str | None]:
    r = client.get("/api/worklist", params=params)
    if r.status_code != 200:
        raise BenchError(f"GET /api/worklist: {r.status_code} {r.text[:200]}")
    body = r.json()
    return int(body["total"]), [i["study_id"] for i in body["items"]], body["next_cursor"]


def _measure_http(out: ScaleResults, db: Database, seeded: Seeded, repeat: int,
                  page_size: int, deep_page: int) -> None:
    """``GET /api/worklist`` through the app (session cookie, access checks, schema): the
    first page and the deep page by cursor (as a client that pages with next_cursor)."""
    from fastapi.testclient import TestClient

    from core.settings import get_settings
    from viewer.app import create_app
    from viewer.auth import SESSION_COOKIE
    from viewer.sessions import create_session

    with _app_environment(db.url), ExitStack() as stack:
        settings = get_settings()
        clients: dict[str, Any] = {}
        for account, user_id in (("center", seeded.center_user_id),
                                 ("county", seeded.county_user_id)):
            with db.session() as s:
                user = s.get(User, user_id)
                assert user is not None
                token, _ = create_session(s, user, "benchmark", settings)
            # Entered, so that one event loop thread serves every request (as uvicorn's
            # does) instead of a new one per request.
            clients[account] = stack.enter_context(TestClient(create_app()))
            clients[account].cookies.set(SESSION_COOKIE, token)
        for name, status, account, deep in _shapes(seeded, page_size, deep_page):
            client, params = clients[account], {"status": status, "page_size": page_size}
            times, result = _timed(partial(_get_page, client, params), repeat)
            _record(out, f"{name}, first page", status, account, 1, "offset", "http", times,
                    result)
            if deep == 1:
                continue
            cursor = _get_page(client, {**params, "page": deep - 1})[2]
            times, result = _timed(partial(_get_page, client, {**params, "cursor": cursor}),
                                   repeat)
            _record(out, f"{name}, deep page", status, account, deep, "keyset", "http", times,
                    result)


def run(database_url: str, studies: int, sites: int, *, repeat: int = 30,
        page_size: int = PAGE_SIZE, deep_page: int = DEEP_PAGE, http: bool = True,
        seed_value: int = 0) -> ScaleResults:
    """Migrate ``database_url``, seed it and measure: the whole benchmark on one database."""
    db = get_database(database_url)
    try:
        seeded = seed(db, studies, sites, seed=seed_value)
        return measure(db, seeded, repeat=repeat, page_size=page_size, deep_page=deep_page,
                       http=http)
    finally:
        db.dispose()
        get_database.cache_clear()


@contextmanager
def throwaway_postgres(admin_url: str = DEFAULT_PG_ADMIN) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``admin_url``'s server, dropped afterwards."""
    name = f"rdc_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        raise BenchError(f"cannot create a database on {admin_url.split('@')[-1]}: {e}") from e
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(res: ScaleResults) -> None:
    sd = res.seeded
    console.print(f"{sd.studies} studies over {sd.sites} sites, seeded in {sd.seconds} s: "
                  f"{sd.ready} on the worklist, {sd.open} open; county {sd.county_site}: "
                  f"{sd.county_ready}, {sd.county_open} open; {sd.reports} reports, "
                  f"{sd.ai_findings} AI findings")
    table = Table("case", "status", "page", "paging", "via", "rows", "total", "p50 ms",
                  "p95 ms", title=f"worklist, {res.page_size} per page")
    for t in res.timings:
        table.add_row(t.case, t.status, str(t.page), t.paging, t.via, str(t.rows),
                      str(t.total), f"{t.median_ms:.1f}", f"{t.p95_ms:.1f}")
    console.print(table)
    for key, ratio in res.ratios.items():
        console.print(f"{key}: offset p50 / keyset p50 = {ratio:.1f}x")
    console.print(f"slowest p95 (first pages, keyset deep pages): {res.worst_p95_ms():.1f} ms "
                  f"(target <= 50 ms)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--sites", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=30, help="runs of each request (>= 20)")
    ap.add_argument("--page-size", type=int, default=PAGE_SIZE)
    ap.add_argument("--deep-page", type=int, default=DEEP_PAGE)
    ap.add_argument("--database-url", default="",
                    help="an empty PostgreSQL database (default: a throw-away one)")
    ap.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN,
                    help="where the throw-away database is created")
    ap.add_argument("--no-http", action="store_true", help="skip timing the HTTP route")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    kwargs: dict[str, Any] = {"repeat": args.repeat, "page_size": args.page_size,
                              "deep_page": args.deep_page, "http": not args.no_http,
                              "seed_value": args.seed}
    try:
        if args.database_url:
            res = run(args.database_url, args.studies, args.sites, **kwargs)
        else:
            with throwaway_postgres(args.pg_admin_url) as url:
                console.print(f"throw-away database {url.rsplit('/', 1)[-1]}")
                res = run(url, args.studies, args.sites, **kwargs)
    except BenchError as e:
        console.print(f"[red]{e}[/red]")
        return 1
    report(res)
    path = args.out / "scale_worklist.json"
    write_json(path, {"created": datetime.now(UTC).isoformat(), **res.as_dict()})
    console.print(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
