"""Bounded fuzzing of every parser that reads outside input (see ``fuzz/``).

Each target runs under atheris/libFuzzer in its own process for ``RDC_FUZZ_SECONDS``
(default 30 s) from its committed seed corpus, which includes every input that once
crashed it.  The run must end with no finding: no exception other than the parser's
documented refusal, no input slower than the per-input limit, no process above the RSS
limit, no partial spool file.  It must also have executed a real number of inputs, so
that a harness that dies early or stalls cannot pass.  The long campaign is
``python -m fuzz.campaign`` (figures in benchmarks/RESULTS.md).

The DICOMweb path grammar also gets property tests (hypothesis): every path the grammar
describes is accepted and rebuilt upstream unchanged, and any escape, dot segment or
separator put into one is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.runner import run_target
from fuzz.targets import TARGETS, corpus, harness
from viewer.dicomweb_paths import BadPath, Resource, Target, parse

SECONDS = int(os.environ.get("RDC_FUZZ_SECONDS", "30"))
#: A run that executes fewer inputs than this did not really fuzz: the slowest target
#: (the DICOM ECG reader, pydicom's waveform decoding under instrumentation) makes about
#: 20-90 a second on a loaded two-core machine, the others 100 to 100,000.
MIN_EXECUTIONS = 10 * SECONDS
#: Per-input limit for the bounded run: generous, as the machine may be busy; the
#: campaign uses 10 s.
TIMEOUT_S = 30


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_target_bounded_run_finds_nothing(target: str, tmp_path: Path) -> None:
    seeds = [p for p in corpus(target).iterdir() if p.is_file()]
    assert seeds, f"fuzz/corpus/{target} has no seeds"
    run = run_target(target, tmp_path, seconds=SECONDS, timeout_s=TIMEOUT_S)
    assert run.clean, (
        f"{target}: libFuzzer exit {run.returncode}, findings "
        f"{[p.name for p in run.findings]} (reproduce: python -m fuzz.run {target} "
        f"<file>)\n{run.output_tail}")
    assert run.executions >= max(MIN_EXECUTIONS, 2 * len(seeds)), (
        f"{target}: only {run.executions} executions in {run.seconds:.0f} s\n"
        f"{run.output_tail}")
    # Coverage guidance worked: the instrumented parser reported its branches (a small
    # parser, such as the PROXY header's, says how many it has in MIN_COVERAGE).
    minimum = getattr(harness(target), "MIN_COVERAGE", 50)
    assert run.coverage > minimum, f"{target}: coverage {run.coverage}\n{run.output_tail}"


# --------------------------------------------------------------- DICOMweb grammar

_component = st.one_of(st.just("0"), st.integers(1, 10**12).map(str))
_uid = st.lists(_component, min_size=2, max_size=8).map(".".join).filter(
    lambda u: len(u) <= 64)
_frames = st.lists(st.integers(1, 999_999_999), min_size=1, max_size=20)


@st.composite
def _targets(draw: st.DrawFn) -> Target:
    resource = draw(st.sampled_from(list(Resource)))
    if resource is Resource.SEARCH_STUDIES:
        return Target(resource)
    study = draw(_uid)
    if resource in (Resource.STUDY, Resource.STUDY_METADATA, Resource.SEARCH_SERIES,
                    Resource.SEARCH_INSTANCES):
        return Target(resource, study)
    series = draw(_uid)
    if resource in (Resource.SERIES, Resource.SERIES_METADATA,
                    Resource.SEARCH_SERIES_INSTANCES):
        return Target(resource, study, series)
    instance = draw(_uid)
    frames = tuple(draw(_frames)) if resource is Resource.FRAMES else ()
    return Target(resource, study, series, instance, frames)


def _raw_path(target: Target) -> str:
    path = target.upstream_path()
    if target.resource is Resource.THUMBNAIL:
        path = path.removesuffix("/rendered") + "/thumbnail"
    return path


@settings(max_examples=1000, deadline=None)
@given(_targets())
def test_every_path_of_the_grammar_is_accepted_and_rebuilt(target: Target) -> None:
    path = _raw_path(target)
    assert parse(path) == target
    if target.resource is not Resource.THUMBNAIL:
        assert parse(path).upstream_path() == path


@settings(max_examples=1000, deadline=None)
@given(_targets(), st.sampled_from(["%2F", "%2e%2e", "/..", "/.", "//", "\\", "?x=1",
                                    "#f", ";p", "%", "/../../..", "%00"]),
       st.integers(min_value=0))
def test_an_escape_or_dot_segment_anywhere_is_refused(target: Target, bad: str,
                                                      where: int) -> None:
    path = _raw_path(target)
    cut = len("/dicom-web/") + where % (len(path) - len("/dicom-web/") + 1)
    with pytest.raises(BadPath):
        parse(path[:cut] + bad + path[cut:])
