"""Structured logs (core/log_format.py, core/log_context.py): JSON lines with the role and
the job, study and site a line is about, where a job runs, where the gateway stores and
where the uploader uploads; the familiar text line for a person at a terminal."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from conftest import REPO, SENDER_AE, Center, wait_until
from core import jobs
from core.db import Database
from core.group_commit import GroupCommitter
from core.log_context import current_context, log_context
from core.log_format import JsonFormatter, TextFormatter, log_handlers, stream_formatter
from core.models import Job, Study
from core.orthanc_client import OrthancUnavailable
from core.states import JobState
from devkit.dcmtk import storescu
from pacs_gateway.spool import Spool
from pacs_gateway.uploader import Receipt, Uploader

KEYS = {"ts", "level", "logger", "proc", "pid", "msg"}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, as the JSON lines a role writes."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _record(msg: str, *args: object, level: int = logging.INFO,
            exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("rdc.test", level, __file__, 1, msg, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    record.__dict__.update(extra)
    return record


# The formatters ---------------------------------------------------------------------------
def test_a_json_line_has_the_keys_and_the_context_of_its_block() -> None:
    fmt = JsonFormatter("worker")
    with log_context(job_id=7, study_id=3):
        with log_context(site_id="county-a"):
            line = json.loads(fmt.format(_record("job.done job_id=%s kind=%s", 7, "route")))
        outer = json.loads(fmt.format(_record("after")))
    plain = json.loads(fmt.format(_record("outside")))
    assert KEYS <= set(line) and line["proc"] == "worker" and line["level"] == "INFO"
    assert line["logger"] == "rdc.test" and line["msg"] == "job.done job_id=7 kind=route"
    assert (line["job_id"], line["study_id"], line["site_id"]) == (7, 3, "county-a")
    assert line["ts"].endswith("+00:00") and "T" in line["ts"]
    assert "site_id" not in outer and outer["job_id"] == 7
    assert set(plain) == KEYS  # no context: no empty keys either


def test_extra_on_the_call_wins_and_a_traceback_goes_in_exc() -> None:
    fmt = JsonFormatter("gateway")
    try:
        raise ValueError("broken \"quoted\" value\nsecond line")
    except ValueError as e:
        error = e
    with log_context(site_id="county-a"):
        line = json.loads(fmt.format(_record("gateway.store_crashed", level=logging.ERROR,
                                             exc=error, site_id="county-b")))
    assert line["site_id"] == "county-b" and line["level"] == "ERROR"
    assert "ValueError" in line["exc"] and "Traceback" in line["exc"]
    assert "\n" not in fmt.format(_record("two\nlines", exc=error))  # one line per record


def test_text_for_a_terminal_and_json_otherwise() -> None:
    assert isinstance(stream_formatter("web", _Tty()), TextFormatter)
    assert isinstance(stream_formatter("web", io.StringIO()), JsonFormatter)
    text = TextFormatter("gateway")
    with log_context(job_id=5, site_id="county-a"):
        out = text.format(_record("job.requeue_stale job_id=%s kind=%s", 5, "deliver"))
    assert " INFO rdc.test proc=gateway job.requeue_stale job_id=5 kind=deliver" in out
    assert out.endswith(" site_id=county-a") and out.count("job_id=5") == 1


def test_the_context_is_per_thread() -> None:
    seen: dict[str, dict[str, int | str]] = {}
    with log_context(job_id=1):
        def other() -> None:
            with log_context(study_id=9):
                seen["other"] = current_context()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        seen["here"] = current_context()
    assert seen == {"other": {"study_id": 9}, "here": {"job_id": 1}}
    assert current_context() == {}


def test_the_log_file_is_json_and_so_is_stderr_when_it_is_a_pipe(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = ("import logging; from core.settings import get_settings; "
              "from rdc.cli import setup_logging; setup_logging(get_settings(), 'scheduler'); "
              "logging.getLogger('core.scheduler').warning('scheduler.start tasks=%s', ['a'])")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       env={"RDC_HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    for text in (r.stderr, (home / "logs" / "scheduler.log").read_text()):
        line = json.loads(text.strip().splitlines()[-1])
        assert line["proc"] == "scheduler" and line["level"] == "WARNING"
        assert line["logger"] == "core.scheduler" and line["msg"] == "scheduler.start tasks=['a']"


def test_log_handlers_write_the_file_as_json_even_for_a_terminal(tmp_path: Path) -> None:
    tty = _Tty()
    handlers = log_handlers("web", tmp_path / "web.log", tty)
    logger = logging.getLogger("rdc.test.handlers")
    logger.propagate = False
    for h in handlers:
        logger.addHandler(h)
    try:
        logger.warning("web.slow route=%s", "/api/worklist")
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
    assert "proc=web web.slow route=/api/worklist" in tty.getvalue()
    line = json.loads((tmp_path / "web.log").read_text())
    assert line["msg"] == "web.slow route=/api/worklist" and line["proc"] == "web"


# Where the center sets the context --------------------------------------------------------
def test_a_job_logs_with_its_job_and_study(env_center: Center, captured: io.StringIO) -> None:
    c = env_center
    c.add_site()

    def handler(_s: Any, job: Job) -> None:
        logging.getLogger("rdc.test.job").info("test.handler_ran kind=%s", job.kind)

    jobs.register_handler("log_context_test", handler)
    with c.db.session() as s:
        study = Study(site_id="county-a", study_uid="1.2.826.0.1.3680043.2.1143.1")
        s.add(study)
        s.flush()
        job, _ = jobs.create_job(s, jobs.NewJob(key="log-context-test", kind="log_context_test",
                                                queue="routing", study_id=study.id))
        job_id, study_id = job.id, study.id
    assert jobs.execute(c.db, job_id) == JobState.SUCCEEDED
    ran = [x for x in lines(captured) if x["msg"].startswith("test.handler_ran")]
    done = [x for x in lines(captured) if x["msg"].startswith("job.done")]
    assert ran and ran[0]["job_id"] == job_id and ran[0]["study_id"] == study_id
    assert done and done[0]["job_id"] == job_id and done[0]["study_id"] == study_id


class _DownOrthanc:
    def upload_instance_file(self, _path: Path) -> dict[str, Any]:
        raise OrthancUnavailable("POST /instances: connection refused")


def test_the_uploader_logs_with_the_site_and_study(tmp_path: Path, captured: io.StringIO) -> None:
    db = Database(f"sqlite:///{tmp_path / 'rdc.sqlite3'}")
    from core.db import migrate

    migrate(db.url)
    committer = GroupCommitter(db)
    try:
        spool = Spool(tmp_path / "spool", 0)
        rid = spool.write(b"not even DICOM")
        uploader = Uploader(db, spool, _DownOrthanc(), committer)  # type: ignore[arg-type]
        uploader.submit(rid, Receipt("county-a", 42, "1.2.3"))
        assert uploader._upload_one(rid) is False  # Orthanc is down: try again later
    finally:
        committer.stop()
        db.dispose()
    down = [x for x in lines(captured) if x["msg"].startswith("uploader.orthanc_down")]
    assert down and down[0]["site_id"] == "county-a" and down[0]["study_id"] == 42


def test_the_gateway_logs_a_store_with_the_site(center: Center) -> None:
    c = center
    c.extra_settings.update(spool_min_free_mb=str(10**12), gateway_processes="1")
    c.add_site()
    c.start_gateway()  # no Orthanc needed: nothing gets as far as an upload
    path = Path(get_testdata_file("CT_small.dcm"))
    result = storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert not result.succeeded, result.output  # 0xA700: the spool is "full"
    log_file = c.home / "logs" / "gateway.log"

    def spool_full() -> list[dict[str, Any]]:
        found = [json.loads(line) for line in log_file.read_text().splitlines()
                 if "gateway.spool_full" in line]
        return found

    found = wait_until(spool_full, 30, f"the refusal logged\n{c.logs()}")
    assert found[0]["site_id"] == "county-a" and found[0]["proc"] == "gateway"
    assert found[0]["level"] == "ERROR" and "study_id" not in found[0]
    # Every line of the file is JSON.
    for line in log_file.read_text().splitlines():
        assert KEYS <= set(json.loads(line)), line
