"""Worklist query time with 10,000 studies, against the baseline a user would write.

(a) the baseline: load every ready study of the user's sites with its report
    state and sort in Python by (STAT, AI-critical, due time), then slice a page;
(b) the center's worklist (:func:`viewer.worklist.query_worklist`): ordering,
    filtering and paging in SQL on the ``ix_studies_worklist`` index.

Both run in the same process on the same freshly filled database (SQLite by
default; ``--database-url postgresql://...`` for PostgreSQL).  Printed: p50/p95
milliseconds per page for each query shape and the ratio (a)/(b).

    .venv/bin/python -m benchmarks.worklist [--studies 10000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert, select, update

from benchmarks.harness import median, nearest_rank, repeat_timed
from core.db import Database, get_database
from core.models import Report, Study
from core.sites import SiteSpec, add_site
from viewer.auth import UserContext
from viewer.worklist import READY, SIGNED, query_worklist

console = Console()
SITES = [f"county-{c}" for c in "abcdefgh"]


def fill(db: Database, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    with db.session() as s:
        for site in SITES:
            add_site(s, SiteSpec(id=site, name=site, ae_title=site.upper()[:16], host="127.0.0.1",
                                 port=104, allowed_addresses=("127.0.0.1",)), actor="bench")
    rows = []
    for i in range(n):
        completed = now - timedelta(minutes=rng.uniform(0, 60 * 24 * 14))
        rows.append({
            "site_id": rng.choice(SITES), "study_uid": f"1.2.826.0.1.{i}",
            "patient_id": f"P{rng.randrange(n // 3)}", "patient_name": f"PATIENT^{i}",
            "modalities": [rng.choice(["CT", "CR", "DX", "MR", "ECG"])],
            "state": rng.choice(["complete"] * 9 + ["received"]),
            "priority": 9 if rng.random() < 0.03 else 5, "ai_critical": rng.random() < 0.05,
            "completed_at": completed, "due_at": completed + timedelta(minutes=240),
            "first_received_at": completed - timedelta(minutes=5),
            "last_received_at": completed - timedelta(minutes=1),
            "generation": 1, "received_instances": 100, "stored_instances": 100})
    with db.session() as s:
        for start in range(0, n, 1000):
            s.execute(insert(Study), rows[start:start + 1000])
        ids = list(s.scalars(select(Study.id)))
        reports = [{"subject_type": "study", "subject_id": str(i), "study_id": i,
                    "site_id": "county-a", "template_id": "generic",
                    "template_version": "1.0.0",
                    "state": rng.choice(["draft", "final"]), "created_at": now,
                    "updated_at": now} for i in rng.sample(ids, n // 3)]
        s.execute(insert(Report), reports)
        # What the ORM's flush sets (core.models.report) for reports written without it.
        s.execute(update(Study).where(Study.id.in_(
            [r["study_id"] for r in reports if r["state"] in SIGNED])).values(report_signed=True))


def baseline(db: Database, user: UserContext, page: int, page_size: int,
             modality: str | None) -> list[int]:
    """What one writes first: fetch everything visible, sort and slice in Python."""
    with db.session() as s:
        q = (select(Study, Report.state).outerjoin(Report, Report.study_id == Study.id)
             .where(Study.state.in_(list(READY))))
        if not user.all_sites:
            q = q.where(Study.site_id.in_(sorted(user.site_ids)))
        rows = [(st, rs) for st, rs in s.execute(q)
                if rs not in SIGNED and (modality is None or modality in st.modalities)]
        far = datetime.max.replace(tzinfo=UTC)
        rows.sort(key=lambda r: (r[0].priority < 9, not r[0].ai_critical,
                                 (r[0].due_at or far),
                                 r[0].id))
        return [st.id for st, _ in rows[(page - 1) * page_size: page * page_size]]


def ours(db: Database, user: UserContext, page: int, page_size: int,
         modality: str | None) -> list[int]:
    with db.session() as s:
        _, items = query_worklist(s, user, modality=modality, page=page, page_size=page_size)
        return [i.study_id for i in items]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="rdc-bench-worklist-")
    url = args.database_url or f"sqlite:///{Path(tmp.name) / 'bench.sqlite3'}"
    db = get_database(url)
    console.print(f"filling {args.studies} studies into {url.split('@')[-1]} ...")
    fill(db, args.studies)
    center = UserContext(user_id=1, username="bench", display_name="bench",
                         roles=frozenset({"radiologist"}), all_sites=True,
                         site_ids=frozenset(), csrf_token=None)
    county = UserContext(user_id=2, username="county", display_name="county",
                         roles=frozenset({"site_user"}), all_sites=False,
                         site_ids=frozenset(SITES[:2]), csrf_token=None)
    shapes: list[tuple[str, UserContext, int, str | None]] = [
        ("all sites, first page", center, 1, None),
        ("all sites, page 20", center, 20, None),
        ("all sites, CT only", center, 1, "CT"),
        ("two sites, first page", county, 1, None),
    ]
    table = Table("query (50 per page)", "(a) baseline p50 ms", "(b) ours p50 ms",
                  "(b) p95 ms", "(a)/(b)")
    results: list[dict[str, Any]] = []
    for name, user, page, modality in shapes:
        a_t, a_ids = repeat_timed(partial(baseline, db, user, page, 50, modality),
                                  max(5, args.repeat // 3))
        b_t, b_ids = repeat_timed(partial(ours, db, user, page, 50, modality), args.repeat)
        if a_ids != b_ids:
            console.print(f"[red]{name}: the two orders differ[/red]")
            return 1
        a50, b50 = median(a_t), median(b_t)
        b95 = nearest_rank(b_t, 0.95)
        table.add_row(name, f"{a50:.1f}", f"{b50:.1f}", f"{b95:.1f}", f"{a50 / b50:.1f}x")
        results.append({"query": name, "baseline_p50_ms": round(a50, 2),
                        "ours_p50_ms": round(b50, 2), "ours_p95_ms": round(b95, 2),
                        "ratio": round(a50 / b50, 2)})
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "worklist.json").write_text(json.dumps(
        {"studies": args.studies, "database": url.split(":")[0], "rows": results,
         "created": datetime.now(UTC).isoformat()}, indent=2))
    console.print(f"results in {args.out / 'worklist.json'}")
    db.dispose()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
