"""The ingest benchmark runs end to end (a tiny series, two rounds) and reports medians
and the issue's targets; the profile summary puts samples in the right stages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# The benchmarks are run from the repository root (``python -m benchmarks.ingest``),
# which pytest does not put on the path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gateway_profile import CPU, OTHER, breakdown, read_collapsed


def test_ingest_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "--instances", "8",
                        "--senders", "1,4", "--repeat", "2", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "ingest.json").read_text())
    assert data["repeat"] == 2
    assert len(data["runs"]) == 2 * 4 * 2  # rounds x targets x sender counts
    keys = {(m["target"], m["senders"]) for m in data["results"]}
    assert keys == {(t, n) for t in ("storescp", "orthanc", "gateway_ack", "gateway_stored")
                    for n in (1, 4)}
    for m in data["results"]:  # each figure is the median of its two rounds
        rounds = sorted(x["seconds"] for x in data["runs"]
                        if (x["target"], x["senders"]) == (m["target"], m["senders"]))
        assert abs(m["seconds"] - (rounds[0] + rounds[1]) / 2) < 1e-9
        assert m["instances"] == 8 and m["instances_per_s"] > 0
    targets = {(q["numerator"], q["senders"]): q["target"] for q in data["ratios"]}
    assert targets == {("gateway_ack", 1): None, ("gateway_ack", 4): 1.0,
                       ("gateway_stored", 1): None, ("gateway_stored", 4): 0.8}
    assert "PASS" in r.stdout or "FAIL" in r.stdout
    assert (out / "ingest.png").stat().st_size > 0
    # CPU per instance, from /proc: Orthanc in (b), the gateway and Orthanc in (d).
    cpu = {(m["target"], m["senders"]): m["cpu_ms_per_instance"] for m in data["results"]}
    for n in (1, 4):
        assert cpu[("orthanc", n)]["orthanc"] > 0
        assert cpu[("gateway_stored", n)]["gateway"] > 0
        assert cpu[("gateway_stored", n)]["orthanc"] > 0
    budgets = {b["senders"]: b for b in data["cpu_budgets"]}
    assert set(budgets) == {1, 4}
    b4 = budgets[4]
    assert abs(b4["ceiling"] - b4["orthanc_direct_ms"]
               / (b4["gateway_ms"] + b4["orthanc_behind_ms"])) < 1e-3
    assert "CPU per instance" in r.stdout


def test_cpu_budget_arithmetic_and_process_tree_cpu() -> None:
    import os
    import time

    from benchmarks.harness import tree_cpu_s
    from benchmarks.ingest import CpuBudget, Measurement, cpu_budgets

    direct = Measurement("orthanc", 4, 100, 1, 1.0, {"orthanc": 0.4})
    through = Measurement("gateway_stored", 4, 100, 1, 4.0, {"gateway": 1.6, "orthanc": 0.5})
    (b,) = cpu_budgets([direct, through])
    assert (b.orthanc_direct_ms, b.gateway_ms, b.orthanc_behind_ms) == (4.0, 16.0, 5.0)
    assert abs(b.ceiling - 4.0 / 21.0) < 1e-9
    assert abs(b.gateway_budget_ms - (4.0 / 0.8 - 5.0)) < 1e-9  # nothing left for it
    assert CpuBudget(4, 4.0, 0.5, 4.0, 0.8).ceiling > 0.8
    # This process's CPU grows when it works, and a child's counts for its parent.
    before = tree_cpu_s(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert tree_cpu_s(os.getpid()) - before >= 0.2
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt=time.process_time()+0.5\n"
                              "while time.process_time()<t: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_s(child.pid) < 0.4:
            assert time.monotonic() < deadline, "the child's CPU never showed"
            time.sleep(0.1)
        assert tree_cpu_s(os.getpid()) >= tree_cpu_s(child.pid) + before
    finally:
        child.kill()
        child.wait()


def test_profile_stages_take_the_first_matching_marker() -> None:
    lines = [
        "run (pacs_gateway/scp.py:10);write (pacs_gateway/spool.py:88);fsync (libc.so.6) 30",
        "run (pacs_gateway/scp.py:10);write (pacs_gateway/spool.py:80) 10",
        "handle (pacs_gateway/scp.py:50);inspect (pacs_gateway/inspect.py:99);"
        "dcmread (pydicom/filereader.py:1) 20",
        "run_reactor (pynetdicom/dul.py:300);read (pynetdicom/transport.py:9) 15",
        "record (pacs_gateway/receipts.py:47);commit (sqlalchemy/orm/session.py:1) 25",
        "<module> (threading.py:1) 5",
        "Uploader._run (pacs_gateway/uploader.py:1);Queue.get (queue.py:1);"
        "PyThread_acquire_lock_timed (libpython3.11.so) 40",
        "handle (pacs_gateway/scp.py:50);take_gil (libpython3.11.so) 7",
        "not a line",
    ]
    stages = {s.name: s for s in breakdown(read_collapsed(lines), instances=10, rate_hz=100)}
    assert stages["fsync (spool file, directory, SQLite WAL)"].samples == 30
    assert stages["idle threads (locks, queues, select, sleeps)"].samples == 40
    assert stages["waiting for the GIL"].samples == 7
    assert stages["upload to Orthanc"].samples == 0  # its waiting thread is idle, not CPU
    assert stages["spool write"].samples == 10
    assert stages["inspection (pydicom parse, checks)"].samples == 20
    assert stages["pynetdicom: PDU reads and state machine"].samples == 15
    assert stages["receipt commit (SQLite)"].samples == 25
    assert stages[OTHER].samples == 5
    # 30 samples at 100 Hz: 300 ms of CPU, over 10 instances 30 ms per instance.
    assert abs(stages["fsync (spool file, directory, SQLite WAL)"].ms_per_instance - 30.0
               ) < 1e-9
    cpu = [s for s in stages.values() if s.kind == CPU]
    assert abs(sum(s.share for s in cpu) - 1.0) < 1e-9
    assert sum(s.samples for s in cpu) == 10 + 20 + 15 + 25 + 5
