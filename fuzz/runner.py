"""Run one fuzz target in a child process and read libFuzzer's verdict and figures.

Shared by ``tests/test_fuzz.py`` (a bounded run of every target) and
:mod:`fuzz.campaign` (the long one).  A finding is whatever libFuzzer saves as an
artifact: ``crash-*`` (an exception other than the parser's refusal, or a failed check
in the harness), ``timeout-*`` (one input ran longer than ``timeout_s``), ``oom-*`` (the
process went past ``rss_limit_mb``, or one allocation past ``malloc_limit_mb``), or
``leak-*``/``slow-unit-*``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.targets import FUZZ_DIR, corpus

REPO = FUZZ_DIR.parent
_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-")
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")


@dataclass
class FuzzRun:
    target: str
    returncode: int
    seconds: float
    executions: int = 0
    exec_per_s: float = 0.0
    #: Branches (atheris' Python edges and native PCs) and features libFuzzer has seen.
    coverage: int = 0
    features: int = 0
    corpus_size: int = 0
    peak_rss_mb: int = 0
    findings: list[Path] = field(default_factory=list)
    output_tail: str = ""

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.findings


def run_target(target: str, workdir: Path, *, seconds: int | None = None,
               runs: int | None = None, timeout_s: int = 25, rss_limit_mb: int = 2048,
               malloc_limit_mb: int = 1024, nice: int = 0,
               extra: tuple[str, ...] = ()) -> FuzzRun:
    """Fuzz ``target`` for ``seconds`` or ``runs`` executions, from its committed seeds.

    New inputs go to ``workdir/corpus`` (the committed corpus is only read), findings to
    ``workdir/artifacts``.  The child's output goes to ``workdir/fuzz.log``.
    """
    new_corpus, artifacts = workdir / "corpus", workdir / "artifacts"
    for d in (new_corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    flags = [f"-timeout={timeout_s}", f"-rss_limit_mb={rss_limit_mb}",
             f"-malloc_limit_mb={malloc_limit_mb}", "-print_final_stats=1",
             f"-artifact_prefix={artifacts}/", "-close_fd_mask=0", *extra]
    if seconds is not None:
        flags.append(f"-max_total_time={seconds}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    cmd = [sys.executable, "-m", "fuzz.run", target, *flags, str(new_corpus),
           str(corpus(target))]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    # Scratch space for harnesses that need files (the gateway's spool and database),
    # on tmpfs when there is one, removed when the run ends however it ends.
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private (0700) folder there
    scratch = tempfile.mkdtemp(prefix="rdc-fuzz-",
                               dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RDC_FUZZ_SCRATCH": scratch}
    log = workdir / "fuzz.log"
    started = time.monotonic()
    try:
        with log.open("wb") as out:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = FuzzRun(target, proc.returncode, time.monotonic() - started)
    text = log.read_text(errors="replace")
    result.output_tail = text[-6000:]
    for line in text.splitlines():
        if m := _STATUS.match(line):
            result.executions = int(m[1])
            result.coverage, result.features, result.corpus_size = (
                int(m[3]), int(m[4]), int(m[5]))
        elif m := _STAT.match(line):
            key, value = m[1], int(m[2])
            if key == "number_of_executed_units":
                result.executions = value
            elif key == "average_exec_per_sec":
                result.exec_per_s = float(value)
            elif key == "peak_rss_mb":
                result.peak_rss_mb = value
    result.findings = sorted(p for p in artifacts.iterdir() if _ARTIFACT.match(p.name))
    return result


def keep_findings(run: FuzzRun) -> list[Path]:
    """Copy each finding into the target's corpus as a regression seed (``regress-*``)."""
    kept = []
    for p in run.findings:
        dest = corpus(run.target) / f"regress-{p.name}"
        shutil.copyfile(p, dest)
        kept.append(dest)
    return kept
