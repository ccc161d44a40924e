"""One topology against the other, in one run on this machine: what a second node buys.

The multi-node center of the tests (:mod:`devkit.multinode`: HAProxy, two nodes made
by ``rdc deploy systemd``, PostgreSQL, a private RabbitMQ, two Orthancs on one index)
measured in two shapes, alternated round by round so that the machine's drift hits
both alike:

* **ingest**: 4 county senders through the balancer, with one gateway node (the
  other stopped, the balancer sending everything to the first) against two: the
  acknowledged instances/s, and end-to-end (acknowledged and stored in Orthanc);
* **inference**: chest radiograph pre-reads with one worker against two (items/s
  from the first inference job queued to the last one finished);
* **worklist** at a year of a regional center's work (:mod:`benchmarks.scale_worklist`).

Each shape reports the CPU it cost per instance and per item, read from /proc for
every process of the role (the gateways and Orthancs; the workers).  On a 2-core
machine a second node gains little: both nodes share the same two cores.  The CPU
figures are what sizes a deployment: the throughput per added core, and from it the
nodes a center needs per 1,000 studies a day (:func:`sizing`), which the README's
sizing table gives.

    .venv/bin/python -m benchmarks.scale [--rounds 3] [--studies 8] [--radiographs 24]
        [--worklist-studies 100000] [--json results.json]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from benchmarks.harness import BenchError, median, ratio_text, tree_cpu_s, write_json
from core.models import Job, Study
from devkit.multinode import Cluster, SendResult, send, shutdown_cluster, start_cluster
from devkit.ports import wait_until
from devkit.samples import write_chest_radiograph, write_ct_series

console = Console()
DEFAULT_PG_ADMIN = os.environ.get("RDC_BENCH_PG_URL",
                                  "postgresql://postgres@127.0.0.1:5432/postgres")
SENDERS = 4

#: A regional center's study mix for the sizing table: instances per study and the
#: share of studies (CT with 300 slices, radiographs with 2 views, ECGs, MR series).
STUDY_MIX: dict[str, tuple[int, float]] = {
    "CT": (300, 0.25), "radiograph": (2, 0.45), "MR": (200, 0.10), "ECG": (1, 0.20)}
#: Items each study gives the AI workers (one per series a model reads).
PREREADS_PER_STUDY = 1.0
#: Peak hour against the day's average: a center's studies arrive in office hours.
PEAK_FACTOR = 3.0
#: The share of a core a node may use before queues grow (headroom for spikes).
UTILISATION = 0.6


@dataclass
class Shape:
    """One measured round of one topology."""

    nodes: int
    items: int
    seconds: float
    end_to_end_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def end_to_end_per_s(self) -> float:
        return self.items / self.end_to_end_s if self.end_to_end_s > 0 else 0.0

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_s / self.items if self.items else 0.0


@dataclass
class Results:
    ingest: dict[int, list[Shape]] = field(default_factory=dict)
    inference: dict[int, list[Shape]] = field(default_factory=dict)
    worklist: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ingest": {n: [asdict(s) for s in v] for n, v in self.ingest.items()},
                "inference": {n: [asdict(s) for s in v] for n, v in self.inference.items()},
                "worklist": self.worklist,
                "sizing": asdict(sizing(self.cpu_ms("ingest"), self.cpu_ms("inference")))}

    def cpu_ms(self, which: str) -> float:
        """The CPU per instance (item) with one node: with two on these 2 cores, each
        node's threads (ONNX Runtime's above all) compete for the same cores and spin,
        which costs CPU that a node on cores of its own does not spend."""
        shapes = getattr(self, which).get(1, [])
        return median([s.cpu_ms_per_item for s in shapes]) if shapes else float("nan")


@dataclass(frozen=True)
class Sizing:
    """What 1,000 studies a day need, from the CPU per instance and per item."""

    instances_per_study: float
    gateway_cpu_ms: float
    worker_cpu_ms: float
    instances_per_core_s: float
    items_per_core_s: float
    gateway_cores_per_1000: float
    worker_cores_per_1000: float


def sizing(gateway_cpu_ms: float, worker_cpu_ms: float,
           mix: dict[str, tuple[int, float]] | None = None,
           peak: float = PEAK_FACTOR, utilisation: float = UTILISATION) -> Sizing:
    """Cores for 1,000 studies a day: instances (or items) per second at the peak hour,
    times the CPU each costs, over the share of a core a node may use.

    ``gateway_cpu_ms`` is the whole ingest path per instance (gateway and Orthanc),
    ``worker_cpu_ms`` the worker's per pre-read.  Sizing from CPU, not from this
    machine's instances/s, is what carries to other machines: a core of the target
    machine does about the same work per instance.
    """
    mix = mix or STUDY_MIX
    if not math.isfinite(gateway_cpu_ms) or gateway_cpu_ms <= 0 \
            or not math.isfinite(worker_cpu_ms) or worker_cpu_ms <= 0:
        raise BenchError("sizing needs a measured CPU per instance and per item")
    per_study = sum(n * share for n, share in mix.values()) / sum(s for _, s in mix.values())
    studies_peak_s = 1000 / 86400 * peak
    instances_s = studies_peak_s * per_study
    items_s = studies_peak_s * PREREADS_PER_STUDY
    return Sizing(
        instances_per_study=round(per_study, 1), gateway_cpu_ms=round(gateway_cpu_ms, 2),
        worker_cpu_ms=round(worker_cpu_ms, 2),
        instances_per_core_s=round(1000 / gateway_cpu_ms, 1),
        items_per_core_s=round(1000 / worker_cpu_ms, 1),
        gateway_cores_per_1000=round(instances_s * gateway_cpu_ms / 1000 / utilisation, 3),
        worker_cores_per_1000=round(items_s * worker_cpu_ms / 1000 / utilisation, 4))


# Measuring ---------------------------------------------------------------------------
def _cpu(c: Cluster, role: str) -> float:
    total = 0.0
    for svc in c.topo.role(role):
        if svc.proc is not None and svc.proc.poll() is None:
            total += tree_cpu_s(svc.proc.pid)
    return total


def _topology(c: Cluster, role: str, backend: str | None, nodes: int) -> None:
    """One node of ``role`` (n1), or both."""
    second = c.svc("n2", role)
    if nodes == 1 and second.running():
        second.stop()
    elif nodes == 2 and not second.running():
        second.start()
    if backend is not None:
        wait_until(lambda: c.backend_up(backend).get("n2") is (nodes == 2), 60,
                   f"the balancer sees {nodes} {role} node(s)")


def measure_ingest(c: Cluster, nodes: int, studies: int, slices: int, seed: int) -> Shape:
    _topology(c, "gateway", "gateways", nodes)
    work = Path(tempfile.mkdtemp(dir=c.tmp))
    series = [write_ct_series(work / f"s{i}", slices=slices, size=64, seed=seed + i)
              for i in range(studies)]
    paths = [[p for s in series[i::SENDERS] for p in s.paths] for i in range(SENDERS)]
    results = [SendResult() for _ in range(SENDERS)]
    cpu0 = _cpu(c, "gateway") + _cpu(c, "orthanc")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(c, paths[i]),
                                kwargs={"per_association": slices, "result": results[i]})
               for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked = [u for r in results for u in r.acked]
    sent_s = time.perf_counter() - t0
    if len(acked) != studies * slices:
        raise BenchError(f"{len(acked)} of {studies * slices} instances acknowledged")
    wait_until(lambda: c.stored_uids(acked) == set(acked), 600, "every instance stored")
    e2e_s = time.perf_counter() - t0
    cpu = _cpu(c, "gateway") + _cpu(c, "orthanc") - cpu0
    return Shape(nodes, len(acked), sent_s, e2e_s, cpu)


def measure_inference(c: Cluster, nodes: int, radiographs: int, seed: int) -> Shape:
    _topology(c, "worker", None, nodes)
    work = Path(tempfile.mkdtemp(dir=c.tmp))
    studies = [write_chest_radiograph(work / f"r{i}", size=256, seed=seed + i)
               for i in range(radiographs)]
    uids = [s.study_uid for s in studies]
    cpu0 = _cpu(c, "worker")
    send(c, [p for s in studies for p in s.paths], per_association=radiographs)

    def inference() -> tuple[int, Any, Any]:
        with c.db.session() as s:
            q = select(func.count(), func.min(Job.created_at), func.max(Job.updated_at)).join(
                Study, Study.id == Job.study_id).where(
                Study.study_uid.in_(uids), Job.kind == "ai_inference",
                Job.state == "succeeded")
            n, first, last = s.execute(q).one()
            return int(n), first, last

    def finished() -> tuple[int, Any, Any] | None:
        counted = inference()
        return counted if counted[0] == radiographs else None

    done = wait_until(finished, 600, "every pre-read finished")
    assert done is not None  # wait_until returns a truthy value or raises
    n, first, last = done
    cpu = _cpu(c, "worker") - cpu0
    seconds = (last - first).total_seconds()
    return Shape(nodes, n, seconds, seconds, cpu)


@contextmanager
def _databases(admin_url: str) -> Iterator[tuple[str, str]]:
    import uuid

    import psycopg

    names = [f"rdc_scale_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(admin_url: str, *, rounds: int, studies: int, slices: int, radiographs: int,
        worklist_studies: int, progress: Callable[[str], None] = console.print) -> Results:
    out = Results()
    with tempfile.TemporaryDirectory(prefix="rdc-scale-") as tmp, \
            _databases(admin_url) as (db_url, index_url):
        progress("starting the two-node center (HAProxy, 2 x Orthanc/gateway/worker/web)")
        c = start_cluster(Path(tmp), db_url, index_url,
                          settings={"ai_threads": 0, "ai_batch_wait_ms": 50})
        try:
            c.rdc("n1", "models", "list")
            c.rdc("n1", "models", "enable", "cxr-triage")
            for r in range(rounds):
                # Alternate the order each round: the drift of the machine hits both.
                for nodes in ((1, 2) if r % 2 == 0 else (2, 1)):
                    shape = measure_ingest(c, nodes, studies, slices, seed=10_000 * (r + 1)
                                           + 100 * nodes)
                    out.ingest.setdefault(nodes, []).append(shape)
                    progress(f"ingest round {r + 1}, {nodes} gateway(s): "
                             f"{shape.per_s:.1f} acknowledged/s, "
                             f"{shape.end_to_end_per_s:.1f} stored/s, "
                             f"{shape.cpu_ms_per_item:.1f} ms CPU per instance")
                for nodes in ((1, 2) if r % 2 == 0 else (2, 1)):
                    shape = measure_inference(c, nodes, radiographs,
                                              seed=20_000 * (r + 1) + 100 * nodes)
                    out.inference.setdefault(nodes, []).append(shape)
                    progress(f"inference round {r + 1}, {nodes} worker(s): "
                             f"{shape.per_s:.1f} items/s, "
                             f"{shape.cpu_ms_per_item:.1f} ms CPU per item")
        finally:
            shutdown_cluster(c)
    if worklist_studies:
        from benchmarks import scale_worklist

        progress(f"worklist with {worklist_studies:,} studies over 30 sites on PostgreSQL")
        with scale_worklist.throwaway_postgres(admin_url) as url:
            wl = scale_worklist.run(url, worklist_studies, 30)
        out.worklist = wl.as_dict()
        out.worklist["worst_p95_ms"] = wl.worst_p95_ms()
    return out


def report(res: Results) -> None:
    table = Table("measure", "1 node", "2 nodes", "2/1", title="One node against two "
                  f"(medians of {len(res.ingest.get(1, []))} rounds)")
    for label, shapes, attr in (
            ("acknowledged instances/s", res.ingest, "per_s"),
            ("end-to-end instances/s", res.ingest, "end_to_end_per_s"),
            ("ingest CPU ms per instance (gateways + Orthancs)", res.ingest, "cpu_ms_per_item"),
            ("inference items/s", res.inference, "per_s"),
            ("worker CPU ms per item", res.inference, "cpu_ms_per_item")):
        one = median([getattr(s, attr) for s in shapes.get(1, [])]) if shapes.get(1) else 0
        two = median([getattr(s, attr) for s in shapes.get(2, [])]) if shapes.get(2) else 0
        table.add_row(label, f"{one:.1f}", f"{two:.1f}", ratio_text(two / one) if one else "-")
    console.print(table)
    size = sizing(res.cpu_ms("ingest"), res.cpu_ms("inference"))
    console.print(
        f"Per core: {size.instances_per_core_s:.0f} instances/s ingested "
        f"({size.gateway_cpu_ms:.1f} ms each), {size.items_per_core_s:.1f} pre-reads/s "
        f"({size.worker_cpu_ms:.1f} ms each).  Per 1,000 studies a day "
        f"({size.instances_per_study:.0f} instances each, peak hour {PEAK_FACTOR:g}x the "
        f"average, cores {UTILISATION:.0%} busy): {size.gateway_cores_per_1000:.2f} ingest "
        f"cores and {size.worker_cores_per_1000:.3f} CPU inference cores.")
    if res.worklist:
        console.print(f"Worklist, worst p95 over the cases: {res.worklist['worst_p95_ms']:.1f} ms"
                      " (target 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--studies", type=int, default=8, help="CT studies per ingest round")
    parser.add_argument("--slices", type=int, default=25, help="slices per CT study")
    parser.add_argument("--radiographs", type=int, default=24, help="pre-reads per round")
    parser.add_argument("--worklist-studies", type=int, default=100_000,
                        help="0 skips the worklist")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for name in ("rounds", "studies", "slices", "radiographs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        res = run(args.pg_admin_url, rounds=args.rounds, studies=args.studies,
                  slices=args.slices, radiographs=args.radiographs,
                  worklist_studies=args.worklist_studies)
    except BenchError as e:
        console.print(f"[red]error:[/red] {e}")
        raise SystemExit(1) from e
    report(res)
    if args.json:
        write_json(args.json, res.as_dict())


if __name__ == "__main__":
    main()
