"""The supervisor of ``rdc up``.

First on real child processes of its own (backoff, give-up, re-arm, the leftovers of a
dead child, the start timeout, the state file and ``rdc status``'s reading of it), then
on the whole center under ``rdc up``: kill -9 of the gateway, and Orthanc killed or
stopped from outside while a site keeps sending.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from rich.console import Console
from sqlalchemy import select

from conftest import REPO, SENDER_AE, Center, free_port, wait_until
from core.db import get_database
from core.models import AuditRecord, Instance, Study
from core.settings import Settings
from core.states import InstanceState, StudyState
from devkit.dcmtk import echoscu, storescu
from dicom_compare import same_dataset
from rdc.restart_policy import FailureHistory, RestartPolicy
from rdc.status_processes import print_processes
from rdc.supervisor import ChildSpec, Supervisor
from rdc.supervisor_audit import SupervisorAudit
from rdc.supervisor_state import (
    ChildRecord,
    SupervisorRecord,
    process_start_ticks,
    read_state,
    state_path,
    write_state,
)

PY = sys.executable
STEADY = (PY, "-c", "import time; time.sleep(300)")
FAILING = (PY, "-c", "import sys; sys.exit(3)")


def test_policy_doubles_caps_resets_after_a_stable_run_and_gives_up_in_a_window() -> None:
    p = RestartPolicy(base_s=1, max_s=30, stable_after_s=60, give_up_failures=5,
                      give_up_window_s=300)
    h = FailureHistory()
    got = [h.record(p, now=t, uptime_s=1) for t in (0, 2, 5, 10, 19)]
    assert [d.backoff_s for d in got] == [1, 2, 4, 8, 16]
    assert [d.give_up for d in got] == [False, False, False, False, True]
    assert got[-1].failures_in_window == 5

    # Crashing after a long run starts again from the base delay, and failures spread
    # wider than the window never add up to a give-up (systemd's StartLimitIntervalSec).
    h = FailureHistory()
    for i in range(20):
        d = h.record(p, now=i * 90.0, uptime_s=89)
        assert d.backoff_s == 1 and d.attempt == 1 and not d.give_up, (i, d)
        assert d.failures_in_window <= 4

    # The delay stops at the cap; a long run of fast failures never overflows.
    h = FailureHistory()
    p_many = RestartPolicy(base_s=1, max_s=30, give_up_failures=1000, give_up_window_s=1)
    ds = [h.record(p_many, now=float(i), uptime_s=0) for i in range(200)]
    assert [d.backoff_s for d in ds[:7]] == [1, 2, 4, 8, 16, 30, 30]
    assert ds[-1].backoff_s == 30 and not ds[-1].give_up

    # Settings carry the documented defaults.
    s = Settings(home=Path("/nonexistent-rdc-home"))
    assert RestartPolicy.from_settings(s) == RestartPolicy(1.0, 30.0, 60.0, 5, 300.0)


class _Run:
    """A Supervisor run on a thread of its own, as ``rdc up`` runs it on its main thread."""

    def __init__(self, sup: Supervisor, start: list[str]) -> None:
        self.sup = sup
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._body, args=(start,), daemon=True)
        self.thread.start()

    def _body(self, start: list[str]) -> None:
        try:
            for name in start:
                self.sup.start(name)
            self.code = self.sup.supervise()
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            self.sup.stop_all()

    def join(self, timeout: float = 60) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the supervisor did not finish"
        if self.error is not None:
            raise self.error
        return self.code


def _state(sup: Supervisor) -> dict[str, ChildRecord]:
    record = read_state(sup.state_file)
    assert record is not None
    return {c.name: c for c in record.children}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _audit_rows(url: str) -> list[AuditRecord]:
    with get_database(url).session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.actor == "supervisor")
                              .order_by(AuditRecord.seq)))


def test_a_failing_child_is_given_up_while_the_other_keeps_running(tmp_path: Path) -> None:
    """Exit code 3 at once, every time: restarted with doubling delays, audited each
    time, given up at the 4th failure within the window; the steady child is never
    touched; SIGUSR1's re-arm starts it again with a fresh count."""
    url = f"sqlite:///{tmp_path / 'rdc.sqlite3'}"
    audit = SupervisorAudit(url)
    policy = RestartPolicy(base_s=0.2, max_s=0.5, stable_after_s=60, give_up_failures=4,
                           give_up_window_s=60)
    sup = Supervisor([ChildSpec("steady", STEADY, tmp_path / "steady.out"),
                      ChildSpec("flaky", FAILING, tmp_path / "flaky.out")],
                     policy, tmp_path / "run" / "supervisor.json", audit.record, tick_s=0.05)
    run = _Run(sup, ["steady", "flaky"])
    try:
        first = wait_until(lambda: _state(sup).get("steady") if (
            sup.state_file.exists() and _state(sup)["steady"].pid) else None, 20,
            "the steady child to start")
        steady_pid = first.pid
        t0 = time.monotonic()
        gave_up = wait_until(lambda: (st := _state(sup)["flaky"]).state == "gave-up" and st,
                             30, "the failing child to be given up")
        elapsed = time.monotonic() - t0
        assert gave_up.restarts == 3, gave_up
        assert gave_up.pid is None and gave_up.gave_up_at is not None
        assert gave_up.last_exit is not None and gave_up.last_exit.code == 3
        # Backoff 0.2 + 0.4 + 0.5 (capped) before the 2nd, 3rd and 4th start.
        assert elapsed >= 1.0, f"given up after {elapsed:.2f} s: the backoff was not applied"

        steady = _state(sup)["steady"]
        assert (steady.state, steady.pid, steady.restarts) == ("running", steady_pid, 0)
        assert _alive(steady_pid)
        time.sleep(0.5)  # given up means it stays stopped
        assert _state(sup)["flaky"].restarts == 3

        rows = wait_until(lambda: r if len(r := _audit_rows(url)) >= 4 else None, 30,
                          "4 supervisor audit records")
        assert [(r.action, r.object_type, r.object_id) for r in rows] == \
            [("process.restart", "process", "flaky")] * 3 + \
            [("process.gave_up", "process", "flaky")]
        assert [r.detail["backoff_s"] for r in rows[:3]] == [0.2, 0.4, 0.5]
        assert [r.detail["attempt"] for r in rows] == [1, 2, 3, 4]
        assert all(r.detail["exit_code"] == 3 and r.detail["signal"] is None
                   and r.detail["name"] == "flaky" for r in rows)
        assert rows[-1].detail["give_up_failures"] == 4

        sup.rearm()
        again = wait_until(lambda: (st := _state(sup)["flaky"]).state == "gave-up"
                           and st.restarts == 7 and st, 30,
                           "the re-armed child to be started again and given up again")
        assert again.last_exit is not None and again.last_exit.code == 3
        assert _state(sup)["steady"].pid == steady_pid
    finally:
        sup.request_stop()
        code = run.join()
        audit.close()
    assert code == 1, "a given-up child makes rdc up's exit status 1"
    final = read_state(sup.state_file)
    assert final is not None and final.state == "stopped"
    assert {c.name: c.state for c in final.children} == {"steady": "stopped",
                                                         "flaky": "gave-up"}
    wait_until(lambda: not _alive(steady_pid), 5, "the steady child to be gone")
    actions = [r.action for r in _audit_rows(url)]
    assert actions.count("process.rearm") == 1 and actions.count("process.gave_up") == 2


def test_nothing_left_ends_the_supervisor_and_a_stop_is_clean(tmp_path: Path) -> None:
    records: list[tuple[str, str, dict[str, Any]]] = []
    policy = RestartPolicy(base_s=0.05, max_s=0.1, give_up_failures=2, give_up_window_s=60)
    sup = Supervisor([ChildSpec("flaky", FAILING, tmp_path / "flaky.out")], policy,
                     tmp_path / "supervisor.json", lambda *a: records.append(a), tick_s=0.05)
    assert _Run(sup, ["flaky"]).join(30) == 1
    assert [a for a, _, _ in records] == ["process.restart", "process.gave_up"]

    # Asked to stop with everything healthy: exit status 0, children terminated.
    sup2 = Supervisor([ChildSpec("steady", STEADY, tmp_path / "steady.out")], policy,
                      tmp_path / "supervisor2.json", lambda *a: records.append(a), tick_s=0.05)
    run = _Run(sup2, ["steady"])
    pid = wait_until(lambda: sup2.state_file.exists() and _state(sup2)["steady"].pid, 20,
                     "the steady child")
    sup2.request_stop()
    assert run.join() == 0
    wait_until(lambda: not _alive(pid), 5, "the stopped child to be gone")


def test_what_a_dead_child_left_in_its_group_is_killed_before_the_restart(
        tmp_path: Path) -> None:
    """Like the gateway's listeners or Orthanc under its wrapper: a grandchild that
    outlives its parent would keep the port the restarted process needs."""
    pids = tmp_path / "grandchildren"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pids)!r}, 'a').write(f'{{p.pid}}\\n')\n"
        "time.sleep(0.3)\n"
        "sys.exit(1)\n")
    policy = RestartPolicy(base_s=0.3, max_s=0.3, give_up_failures=3, give_up_window_s=60)
    sup = Supervisor([ChildSpec("parent", (PY, "-c", script), tmp_path / "parent.out")],
                     policy, tmp_path / "supervisor.json", lambda *a: None, tick_s=0.05)
    run = _Run(sup, ["parent"])
    try:
        wait_until(lambda: pids.exists() and len(pids.read_text().split()) >= 2, 30,
                   "a restarted parent")
        first = int(pids.read_text().split()[0])
        wait_until(lambda: not _alive(first), 5, f"grandchild {first} to be killed")
    finally:
        sup.request_stop()
        run.join()
    # SIGKILL is delivered asynchronously: gone within moments, not at once.
    wait_until(lambda: not any(_alive(int(p)) for p in pids.read_text().split()), 5,
               "every grandchild to be gone after the stop")


def test_a_child_that_never_listens_is_killed_and_counted_as_a_failure(
        tmp_path: Path) -> None:
    port = free_port()  # nothing will listen on it
    records: list[tuple[str, str, dict[str, Any]]] = []
    policy = RestartPolicy(base_s=0.1, max_s=0.1, give_up_failures=2, give_up_window_s=60)
    sup = Supervisor([ChildSpec("deaf", STEADY, tmp_path / "deaf.out", ready_port=port)],
                     policy, tmp_path / "supervisor.json", lambda *a: records.append(a),
                     start_timeout_s=0.5, tick_s=0.05)
    assert _Run(sup, ["deaf"]).join(30) == 1
    assert [a for a, _, _ in records] == ["process.restart", "process.gave_up"]
    detail = records[0][2]
    assert detail["signal"] == "SIGKILL"
    assert f"not listening on port {port} within 0.5 s" in detail["reason"]


def _status_text(home: Path) -> str:
    out = StringIO()
    print_processes(Settings(home=home), Console(file=out, width=200, color_system=None))
    return out.getvalue()


def test_rdc_status_says_when_rdc_up_is_not_running_or_its_state_is_stale(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert "rdc up is not running (no state file at" in _status_text(home)

    # A state written by a process that has since died (kill -9 of rdc up).
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    now = datetime.now(UTC)
    child = ChildRecord(name="gateway", state="running", pid=dead.pid, started_at=now,
                        restarts=2)
    record = SupervisorRecord(pid=dead.pid, proc_start="1", started_at=now, updated_at=now,
                              state="running", policy="p", children=[child])
    write_state(state_path(home), record)
    text = _status_text(home)
    assert f"rdc up is not running: pid {dead.pid} is gone, the state file is stale" in text

    # This process is alive, but a recycled pid with another start time is not it.
    record.pid = os.getpid()
    write_state(state_path(home), record)
    assert "the state file is stale" in _status_text(home)

    # The real start time: believed, with the restarts shown.
    record.proc_start = process_start_ticks(os.getpid())
    write_state(state_path(home), record)
    text = _status_text(home)
    assert f"Processes (rdc up pid {os.getpid()}, running" in text
    row = next(line for line in text.splitlines() if "gateway" in line)
    assert [c.strip() for c in row.split("│")][1:6] == \
        ["gateway", "running", str(dead.pid), now.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
         "2"]

    record.state = "stopped"
    write_state(state_path(home), record)
    assert "rdc up is not running (it stopped at" in _status_text(home)

    state_path(home).write_text("{not json")
    assert "is not a supervisor state file" in _status_text(home)
    assert not list(state_path(home).parent.glob(".supervisor.*.tmp")), "temp files left"



# The whole center under rdc up ---------------------------------------------------------
#: The first restart waits this long (the default is 1 s): long enough that Orthanc is
#: surely still down while a send to the gateway finishes, and a stricter test of the
#: gateway's 30 s.
BASE_S = 4.0


@dataclass
class Up:
    center: Center
    proc: subprocess.Popen[bytes]
    log: Path

    def children(self) -> dict[str, ChildRecord]:
        record = read_state(state_path(self.center.home))
        assert record is not None, "rdc up wrote no state file"
        assert record.pid == self.proc.pid
        return {c.name: c for c in record.children}

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] + self.center.logs()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One rdc up (embedded SQLite and broker) with one registered site, for the fault
    tests below, which run in order against it and leave it healthy for the next."""
    home = tmp_path_factory.mktemp("supervised") / "home"
    c = Center(home=home, db_url="", broker_url="", extra_env={
        "RDC_SUPERVISOR_RESTART_BASE_S": str(BASE_S),
        # No AI models: the worker stays idle, so the two cores go to the processes
        # under test.
        "RDC_AI_REGISTER_SHIPPED": "false",
    })
    c.add_site()
    log = home / "up.test.log"
    proc = subprocess.Popen([PY, "-m", "rdc", "up"], env=c.env, cwd=REPO,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or "is up" in log.read_text(), 180,
                   "rdc up to come up")
        assert proc.poll() is None, log.read_text()
        yield Up(c, proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        get_database.cache_clear()


def _child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Poller:
    """GETs each URL every ~0.25 s on a thread; every answer must be a 200."""

    def __init__(self, targets: dict[str, tuple[str, tuple[str, str] | None]]) -> None:
        self.targets = targets
        self.polls = dict.fromkeys(targets, 0)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                for name, (url, auth) in self.targets.items():
                    at = time.strftime("%H:%M:%S")
                    try:
                        r = client.get(url, auth=auth) if auth else client.get(url)
                        if r.status_code != 200:
                            self.failures.append(f"{at} {name}: HTTP {r.status_code}")
                    except httpx.HTTPError as e:
                        self.failures.append(f"{at} {name}: {e!r}")
                    self.polls[name] += 1
                self._stop.wait(0.25)


def _web(c: Center) -> dict[str, tuple[str, tuple[str, str] | None]]:
    return {"web": (f"http://127.0.0.1:{c.web_port}/healthz", None)}


def _orthanc(c: Center) -> dict[str, tuple[str, tuple[str, str] | None]]:
    return {"orthanc": (f"http://127.0.0.1:{c.orthanc_http_port}/system",
                        c.settings.orthanc_credentials())}


def _status_row(text: str, name: str) -> list[str]:
    row = next((line for line in text.splitlines() if line.startswith(f"│ {name} ")), None)
    assert row is not None, f"no {name} row in rdc status:\n{text}"
    return [col.strip() for col in row.split("│")[1:-1]]


def _supervisor_audit(c: Center, process: str) -> list[AuditRecord]:
    with c.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(
            AuditRecord.actor == "supervisor", AuditRecord.object_id == process)
            .order_by(AuditRecord.seq)))


@pytest.mark.timeout(400)
def test_kill9_of_the_gateway_leaves_web_and_orthanc_serving_and_it_answers_in_30s(
        up: Up) -> None:
    c = up.center
    before = up.children()
    gw = before["gateway"]
    assert gw.state == "running" and gw.pid is not None and gw.restarts == 0, before
    listeners = _child_pids(gw.pid)
    assert listeners, "the gateway's listener processes were not found"
    others = {n: before[n].pid for n in ("orthanc", "worker", "web")}

    with Poller({**_web(c), **_orthanc(c)}) as poller:
        time.sleep(1.0)
        killed = time.monotonic()
        os.kill(gw.pid, signal.SIGKILL)
        answered_after = None
        attempts: list[str] = []
        while time.monotonic() - killed < 30:
            rc, out = echoscu(host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                              called_ae=c.gateway_ae)
            if rc == 0:
                answered_after = time.monotonic() - killed
                break
            attempts.append(out.strip().splitlines()[-1] if out.strip() else f"rc {rc}")
            time.sleep(0.5)
        assert answered_after is not None, (
            f"no C-ECHO answer within 30 s of the kill; last: {attempts[-3:]}\n{up.logs()}")
        # Its listeners died with it (none keeps the port with a stale state).
        wait_until(lambda: not any(_alive(p) for p in listeners), 10,
                   "the killed gateway's listeners to be gone")
        time.sleep(max(0.0, 32 - (time.monotonic() - killed)))
    assert poller.failures == [], f"{len(poller.failures)} polls failed: " \
                                  f"{poller.failures[:10]}\n{up.logs()}"
    assert min(poller.polls.values()) >= 32, poller.polls

    after = up.children()
    g = after["gateway"]
    assert (g.state, g.restarts) == ("running", 1), g
    assert g.pid != gw.pid and g.last_exit is not None and g.last_exit.signal == "SIGKILL", g
    assert {n: after[n].pid for n in others} == others, "another process was restarted"
    assert all(after[n].restarts == 0 for n in others), after

    status = c.rdc("status")
    assert status.returncode == 0, status.stdout + status.stderr
    cols = _status_row(status.stdout, "gateway")
    assert cols[:3] == ["gateway", "running", str(g.pid)] and cols[4] == "1", status.stdout
    assert "killed by SIGKILL" in cols[5], cols
    assert f"rdc up pid {up.proc.pid}, running" in status.stdout, status.stdout

    rows = _supervisor_audit(c, "gateway")
    assert [r.action for r in rows] == ["process.restart"], rows
    d = rows[0].detail
    assert (d["name"], d["pid"], d["signal"], d["exit_code"], d["attempt"], d["backoff_s"]) \
        == ("gateway", gw.pid, "SIGKILL", None, 1, BASE_S), d


def _fresh_copies(tmp: Path, names: list[str]) -> list[tuple[Path, str, str]]:
    """pydicom's test files with new study, series and instance UIDs (each its own
    study), so every run sends instances Orthanc has never seen: (file, SOP, study)."""
    out = []
    for name in names:
        ds = pydicom.dcmread(str(get_testdata_file(name)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp / name
        ds.save_as(path)
        out.append((path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)))
    return out


def _orthanc_answers(c: Center) -> bool:
    try:
        r = httpx.get(f"http://127.0.0.1:{c.orthanc_http_port}/system",
                      auth=c.settings.orthanc_credentials(), timeout=2.0)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_orthanc_down_the_gateway_keeps_acknowledging_and_nothing_is_lost(
        up: Up, how: signal.Signals, tmp_path: Path) -> None:
    c = up.center
    before = up.children()
    wrapper = before["orthanc"].pid
    assert wrapper is not None and before["orthanc"].state == "running", before
    binary = next((p for p in _child_pids(wrapper) if _comm(p) == "Orthanc"), None)
    assert binary is not None, f"no Orthanc process under rdc orthanc (pid {wrapper})"
    others = {n: before[n].pid for n in ("gateway", "worker", "web")}
    sent = _fresh_copies(tmp_path, ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"])

    with Poller(_web(c)) as poller:
        os.kill(binary, how)
        wait_until(lambda: not _orthanc_answers(c), 30, "Orthanc to go down")
        result = storescu([p for p, _, _ in sent], host="127.0.0.1", port=c.gateway_port,
                          calling_ae=SENDER_AE, called_ae=c.gateway_ae, timeout=120)
        send_done = datetime.now(UTC)
        assert result.returncode == 0 and len(result.succeeded) == len(sent), result.output
        # Acknowledged, and Orthanc had not even been started again when the send ended.
        back = wait_until(lambda: (o := up.children()["orthanc"]).state == "running" and
                          o.restarts == before["orthanc"].restarts + 1 and o, 90,
                          "Orthanc to be restarted")
        assert back.started_at is not None and back.started_at > send_done, (
            f"Orthanc was started again at {back.started_at}, before the send ended at "
            f"{send_done}: the outage was too short to test anything")

        with c.orthanc() as client:
            ids = wait_until(lambda: (found := [client.find_instance(sop) for _, sop, _ in sent])
                             and all(found) and found, 90,
                             "every acknowledged instance to reach Orthanc")
            for (path, sop, _), orthanc_id in zip(sent, ids, strict=True):
                same, why = same_dataset(path.read_bytes(), client.instance_file(orthanc_id))
                assert same, f"{path.name} ({sop}): {why}"

        def complete() -> bool:
            with c.db.session() as s:
                states = [s.scalar(select(Study.state).where(Study.study_uid == uid))
                          for _, _, uid in sent]
            return all(st == StudyState.COMPLETE for st in states)
        wait_until(complete, 60, "the studies to complete")
    assert poller.failures == [], f"{poller.failures[:10]}\n{up.logs()}"

    with c.db.session() as s:
        receipts = list(s.scalars(select(Instance).where(
            Instance.sop_instance_uid.in_([sop for _, sop, _ in sent]))))
    assert sorted(r.state for r in receipts) == [InstanceState.STORED] * len(sent), receipts
    assert c.spool_files("ready") == [] and c.spool_files("failed") == []

    after = up.children()
    assert {n: after[n].pid for n in others} == others, \
        "Orthanc going down restarted another process"
    last = _supervisor_audit(c, "orthanc")[-1]
    assert last.action == "process.restart", last
    # The supervised process is rdc orthanc, which exits 1 when its Orthanc ends.
    assert (last.detail["pid"], last.detail["exit_code"]) == (wrapper, 1), last.detail


def test_a_second_rdc_up_on_the_same_home_is_refused_and_touches_nothing(up: Up) -> None:
    before = up.children()
    second = up.center.rdc("up", timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"rdc up is already running for {up.center.home} (pid {up.proc.pid})" in \
        second.stderr, second.stderr
    assert up.proc.poll() is None
    assert {n: c.pid for n, c in up.children().items()} == \
        {n: c.pid for n, c in before.items()}  # children() also checks the file's pid


def test_a_stop_after_restarts_is_clean_and_rdc_status_says_so(up: Up) -> None:
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(120) == 0, up.logs()
    record = read_state(state_path(up.center.home))
    assert record is not None and record.state == "stopped"
    assert {ch.state for ch in record.children} == {"stopped"}
    assert {ch.name: ch.restarts for ch in record.children} == \
        {"orthanc": 2, "gateway": 1, "worker": 0, "scheduler": 0, "commitment": 0, "lab": 0,
         "web": 0}
    status = up.center.rdc("status")
    assert "rdc up is not running (it stopped at" in status.stdout, status.stdout
